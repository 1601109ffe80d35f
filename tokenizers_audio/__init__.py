"""Audio tokenizers (codecs): waveforms ``[B, 1, T]`` in [-1, 1] at ``sample_rate`` ↔ tokens, for any generator.

Every codec is a :class:`mmgen.hub.PretrainedModel` implementing :class:`mmgen.protocol.Tokenizer`
(``modality = "audio"``) with ``encode`` / ``decode``, batch encoding with ``lengths``, and the training
objective ``loss(audio) -> (loss, logs)``:

- :class:`RVQAudioCodec` (EnCodec / DAC): residual VQ, up to N codebooks per frame, any bitrate from one
  model (quantizer dropout), a causal variant that streams.
- :class:`MultiScaleAudioCodec` (SNAC): residual levels at different frame rates, a 1D token pyramid.
- :class:`SingleCodebookAudioCodec` (WavTokenizer): one id per frame, an inverse-STFT (Vocos) decoder.

Each name imports its module on first use (:mod:`mmgen.lazy`): ``import tokenizers_audio`` is cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mmgen.lazy import attach

if TYPE_CHECKING:
    from .multiscale import MultiScaleAudioCodec, MultiScaleAudioConfig
    from .rvq import RVQAudioCodec, RVQAudioConfig
    from .single import SingleCodebookAudioCodec, SingleCodebookAudioConfig

__getattr__, __dir__ = attach(__name__, {
    "multiscale": ("MultiScaleAudioCodec", "MultiScaleAudioConfig"),
    "rvq": ("RVQAudioCodec", "RVQAudioConfig"),
    "single": ("SingleCodebookAudioCodec", "SingleCodebookAudioConfig"),
})

__all__ = [
    "MultiScaleAudioCodec",
    "MultiScaleAudioConfig",
    "RVQAudioCodec",
    "RVQAudioConfig",
    "SingleCodebookAudioCodec",
    "SingleCodebookAudioConfig",
]
