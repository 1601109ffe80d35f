"""Audio tokenizers (codecs): each declares its :class:`mmgen.TokenLayout` and round-trips encode / decode."""
