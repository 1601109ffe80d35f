"""Quality metrics, one module per modality: images (:mod:`.images`), audio (:mod:`.audio`), video (:mod:`.video`) and 3D (:mod:`.shapes3d`);
metrics of whole sample sets in a feature space (:mod:`.distribution`) and feature extractors for them (:mod:`.features`)."""

from . import audio, distribution, features, images, shapes3d, video
from .audio import *  # noqa: F403 (the public names of each modality, listed in its __all__)
from .distribution import *  # noqa: F403
from .features import *  # noqa: F403
from .images import *  # noqa: F403
from .shapes3d import *  # noqa: F403
from .video import *  # noqa: F403

__all__ = [*images.__all__, *audio.__all__, *distribution.__all__, *features.__all__, *video.__all__,
           *shapes3d.__all__]
