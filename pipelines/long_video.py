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

__all__ = ["generate_long_video", "first_frame_prefill", "starts_with_the_first_frame"]


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
    asked = {"prompt": prompt, "class_labels": class_labels, "num_samples_per_prompt": num_samples_per_prompt,
             "guidance_scale": guidance_scale, "generator": generator, "output_type": "pt", "return_dict": False, **call_kwargs}
    video = pipe(**asked)[0] * 2 - 1  # [B, T, 3, H, W]
    while video.shape[1] < num_frames:
        link = pipe(**asked, prefill=first_frame_prefill(pipe, video[:, -1]))[0] * 2 - 1
        video = torch.cat([video, link[:, 1:]], dim=1)
    return video[:, :num_frames]


def starts_with_the_first_frame(pipe: ARPipeline) -> bool:
    """Whether the pipeline's first positions are exactly the first latent frame's, so a frame can prefill it.

    Read from the first coordinate of each position: time for frame-major orders (token by token, frame by
    frame: True), the scale index for a space-time pyramid, whose first scales pool every frame (False).
    """
    time_L = pipe.pattern().layout().coords[0, :, 0]
    first = time_L.numel() // pipe.tokenizer.token_spec().shape[0]
    return bool((time_L[:first] == 0).all()) and bool((time_L[first:] > 0).all())


@torch.no_grad()
def first_frame_prefill(pipe: ARPipeline, frames_B3HW: torch.Tensor) -> torch.Tensor:
    """The ``prefill`` that starts a clip from ``frames_B3HW`` (in [-1, 1]): the sequence positions of the first latent frame.

    The frame is held still for a clip's length and tokenized; the tokenizer is causal, so the first latent frame
    reads that frame alone, whatever the pattern puts in one position (a frame's ids, or one id each).
    """
    if not starts_with_the_first_frame(pipe):
        raise ValueError(f"first_frame_prefill needs a pattern that puts the first latent frame first; this pipeline's "
                         f"{type(pipe.pattern()).__name__} order starts with positions that read later frames (a space-time pyramid does)")
    num_latent_frames = pipe.tokenizer.token_spec().shape[0]
    still = frames_B3HW[:, None].expand(-1, pipe.tokenizer.num_frames_for(num_latent_frames), -1, -1, -1)
    seq = pipe.tokenize(still)
    return seq[:, : seq.shape[1] // num_latent_frames]
