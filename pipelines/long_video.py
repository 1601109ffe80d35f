"""Videos longer than a pipeline was trained on, by chaining clips through their last frame.

A video pipeline makes clips of its tokenizer's length (9 frames for the moving-shapes presets). Because
the video tokenizer is causal, a clip's first latent frame is the tokens of its first frame alone, so a
frame can start a new clip by prefill (image-to-video). :func:`generate_long_video` generates one clip,
then again and again a clip whose first frame is the last frame of the video so far, asked with the same
condition; each link adds ``clip length − 1`` frames. The condition keeps what and where to move (the
prompt names the direction), the given frame keeps the shape where it was — nothing is re-learnt, and the
GPT only ever sees the positions it was trained on.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from mmgen.sampling import GuidanceSchedule

from .base import ARPipeline

__all__ = ["generate_long_video"]


@torch.inference_mode()
def generate_long_video(pipe: ARPipeline, *, num_frames: int, prompt: str | Sequence[str] | None = None,
                        class_labels: int | Sequence[int] | torch.Tensor | None = None,
                        num_samples_per_prompt: int = 1, guidance_scale: float | GuidanceSchedule | None = None,
                        generator: torch.Generator | list[torch.Generator] | None = None, **call_kwargs: Any) -> torch.Tensor:
    """``num_frames`` frames per sample, ``[B, num_frames, 3, H, W]`` in [-1, 1], from a video pipeline with ``prefill``.

    ``prompt`` / ``class_labels`` / ``guidance_scale`` / ``generator`` are those of the pipeline's call and hold
    for every link; ``call_kwargs`` (temperature, num_flow_steps, …) too. A list of generators, one per
    sample, gives each sample its own draws across all links.
    """
    if pipe.tokenizer.modality != "video":
        raise ValueError(f"generate_long_video needs a video pipeline; this one's tokenizer is for {pipe.tokenizer.modality}")
    if isinstance(num_frames, bool) or not isinstance(num_frames, int) or num_frames < 1:
        raise ValueError(f"num_frames must be a positive int, got {num_frames!r}")
    spec = pipe.tokenizer.token_spec()
    clip_frames = pipe.tokenizer.num_frames_for(spec.shape[0])
    if clip_frames < 2:
        raise ValueError("generate_long_video needs clips of at least 2 frames to chain; this tokenizer's clips have 1")
    first_frame_positions = spec.shape[1] * spec.shape[2]
    asked = {"prompt": prompt, "class_labels": class_labels, "num_samples_per_prompt": num_samples_per_prompt,
             "guidance_scale": guidance_scale, "generator": generator, "output_type": "pt", "return_dict": False, **call_kwargs}
    video = pipe(**asked)[0] * 2 - 1  # [B, T, 3, H, W]
    while video.shape[1] < num_frames:
        still = video[:, -1:].expand(-1, clip_frames, -1, -1, -1)  # only frame 0 reaches the first latent frame
        prefill = pipe.tokenize(still)[:, :first_frame_positions]
        link = pipe(**asked, prefill=prefill)[0] * 2 - 1
        video = torch.cat([video, link[:, 1:]], dim=1)
    return video[:, :num_frames]
