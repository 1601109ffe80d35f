"""Built-in data that needs no download, one module per modality: shapes, photos and image folders
(:mod:`.images`); tones, espeak-ng speech and audio folders (:mod:`.audio`); moving shapes and video
folders (:mod:`.video`); 3D primitives and mesh folders (:mod:`.shapes3d`)."""

from . import audio, images, shapes3d, video
from .audio import *  # noqa: F403 (the public names of each modality, listed in its __all__)
from .images import *  # noqa: F403
from .shapes3d import *  # noqa: F403
from .video import *  # noqa: F403

__all__ = [*images.__all__, *audio.__all__, *video.__all__, *shapes3d.__all__]
