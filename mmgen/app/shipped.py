"""Where the shipped demo pipelines are and which pipeline class each paradigm's folder holds.

Kept apart from :mod:`mmgen.app.demo` (torch, PIL, the pipelines) so that ``mmgen --help`` can show them
without importing any of that.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["AUDIO_CHECKPOINTS", "AUDIO_PARADIGMS", "DEFAULT_CHECKPOINTS", "PARADIGMS", "SHAPE_CHECKPOINTS", "SHAPE_PARADIGMS",
           "VIDEO_CHECKPOINTS", "VIDEO_PARADIGMS"]

DEFAULT_CHECKPOINTS = Path(__file__).resolve().parents[2] / "checkpoints" / "shapes32"
PARADIGMS = {"next-token": "NextTokenPipeline", "next-scale": "NextScalePipeline", "next-x": "NextXPipeline"}
AUDIO_CHECKPOINTS = Path(__file__).resolve().parents[2] / "checkpoints" / "tones"
AUDIO_PARADIGMS = {"next-token-rvq": "NextTokenPipeline", "next-scale": "NextScalePipeline", "next-token-single": "NextTokenPipeline"}
VIDEO_CHECKPOINTS = Path(__file__).resolve().parents[2] / "checkpoints" / "moving_shapes"
VIDEO_PARADIGMS = {"next-token": "NextTokenPipeline", "next-frame": "NextXPipeline"}
SHAPE_CHECKPOINTS = Path(__file__).resolve().parents[2] / "checkpoints" / "primitives"
SHAPE_PARADIGMS = {"octree-level": "NextScalePipeline", "octree-token": "NextTokenPipeline", "vat-next-scale": "NextScalePipeline"}
