"""Image, video and 3D tokenizers: each declares its :class:`mmgen.TokenLayout` and round-trips encode / decode.

Every tokenizer is a :class:`mmgen.hub.PretrainedModel` with ``encode``, ``decode``, ``layout`` and
the training objective ``loss(images) -> (loss, logs)``; images are ``[B, 3, H, W]`` in [-1, 1], videos
``[B, T, 3, H, W]`` (:mod:`.video`, causal in time, so an image is a 1-frame video); 3D shapes are
occupancy grids ``[B, R, R, R]`` (their ``loss`` takes grids).
Each name imports its module on first use (:mod:`mmgen.lazy`): ``import tokenizers_visual`` is cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mmgen.lazy import attach

if TYPE_CHECKING:
    from .condensed import CondensedVideoConfig, CondensedVideoTokenizer
    from .flex import FlexImageTokenizer, FlexImageTokenizerConfig
    from .kl import KLConfig, KLImageTokenizer
    from .multiscale_vq import MultiScaleVQConfig, MultiScaleVQTokenizer
    from .octree import OctreeConfig, OctreeTokenizer
    from .titok import TiTokConfig, TiTokTokenizer
    from .variational_shape import VariationalShapeConfig, VariationalShapeTokenizer
    from .video import CausalVideoConfig, CausalVideoTokenizer
    from .vq import VQConfig, VQImageTokenizer

__getattr__, __dir__ = attach(__name__, {
    "condensed": ("CondensedVideoConfig", "CondensedVideoTokenizer"),
    "flex": ("FlexImageTokenizer", "FlexImageTokenizerConfig"),
    "kl": ("KLConfig", "KLImageTokenizer"),
    "multiscale_vq": ("MultiScaleVQConfig", "MultiScaleVQTokenizer"),
    "octree": ("OctreeConfig", "OctreeTokenizer"),
    "titok": ("TiTokConfig", "TiTokTokenizer"),
    "variational_shape": ("VariationalShapeConfig", "VariationalShapeTokenizer"),
    "video": ("CausalVideoConfig", "CausalVideoTokenizer"),
    "vq": ("VQConfig", "VQImageTokenizer"),
})

__all__ = [
    "CausalVideoConfig",
    "CausalVideoTokenizer",
    "CondensedVideoConfig",
    "CondensedVideoTokenizer",
    "FlexImageTokenizer",
    "FlexImageTokenizerConfig",
    "KLConfig",
    "KLImageTokenizer",
    "MultiScaleVQConfig",
    "MultiScaleVQTokenizer",
    "OctreeConfig",
    "OctreeTokenizer",
    "TiTokConfig",
    "TiTokTokenizer",
    "VQConfig",
    "VQImageTokenizer",
    "VariationalShapeConfig",
    "VariationalShapeTokenizer",
]
