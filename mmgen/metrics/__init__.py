"""Quality metrics, one module per modality: images (:mod:`.images`) and audio (:mod:`.audio`)."""

from . import audio, images
from .audio import *  # noqa: F403 (the public names of each modality, listed in its __all__)
from .images import *  # noqa: F403

__all__ = [*images.__all__, *audio.__all__]
