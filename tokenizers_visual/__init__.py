"""Image, video and 3D tokenizers: each declares its :class:`mmgen.TokenLayout` and round-trips encode / decode."""
