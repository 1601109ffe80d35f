"""Video through the shared engine: next-token over the (t, h, w) grid, frame by frame (next-X, one latent frame
per step with the KV cache kept), image-to-video by prefill, outputs a user can write as GIF / MP4, and the
trainer and CLI on the built-in moving shapes.

Tiny causal tokenizers (16x16 frames, 5 frames -> 2 latent frames of 2x2) and one-layer GPTs: these check the
plumbing and the promises of the API, not quality (that is `mmgen train configs/moving_shapes/...`).
"""

from __future__ import annotations

import json
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import PIL.Image
import pytest
import torch
import yaml

from mmgen import SamplingConfig
from mmgen.app.cli import main
from mmgen.conditioning import ClassConditioner
from mmgen.data import NUM_VIDEO_CLASSES, MovingShapesDataset, video_caption
from mmgen.generation import teacher_hidden
from pipelines import (ARVideoPipelineOutput, NextTokenPipeline, NextXPipeline, first_frame_prefill, generate_long_video,
                       generation_quality, starts_with_the_first_frame)
from tokenizers_visual import CausalVideoConfig, CausalVideoTokenizer

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SIZE, FRAMES = 16, 5
GPT = {"dim": 32, "n_layers": 1, "n_heads": 2}
GREEDY = SamplingConfig(top_k=1)
NAMES = [video_caption(c) for c in range(NUM_VIDEO_CLASSES)]


def _tokenizer(bottleneck: str) -> CausalVideoTokenizer:
    torch.manual_seed(0)
    return CausalVideoTokenizer(CausalVideoConfig(image_size=SIZE, num_frames=FRAMES, spatial_downsample=8, channels=4,
                                                  bottleneck=bottleneck, fsq_levels=[4, 4], latent_dim=4)).eval()


def _pipe(kind: str) -> NextTokenPipeline | NextXPipeline:
    conditioner = ClassConditioner(ClassConditioner.config_class(dim=GPT["dim"], num_classes=NUM_VIDEO_CLASSES))
    if kind == "next-token":
        pipe = NextTokenPipeline.from_tokenizer(_tokenizer("fsq"), conditioner=conditioner, gpt=GPT, class_names=NAMES)
    elif kind == "next-frame-ids":
        pipe = NextXPipeline.from_tokenizer(_tokenizer("fsq"), conditioner=conditioner, gpt=GPT, class_names=NAMES,
                                            entity="frame", head={"class": "DepthHead", "width": 16, "depth": 1, "n_heads": 2})
    elif kind == "next-scale":
        pipe = NextXPipeline.from_tokenizer(_tokenizer("kl"), conditioner=conditioner, gpt=GPT, class_names=NAMES,
                                            entity="scale", num_flow_steps=2, head={"width": 16, "depth": 1})
    else:
        pipe = NextXPipeline.from_tokenizer(_tokenizer("kl"), conditioner=conditioner, gpt=GPT, class_names=NAMES,
                                            entity="frame", num_flow_steps=2, head={"width": 16, "depth": 1})
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _clips(n: int) -> torch.Tensor:
    return MovingShapesDataset(size=SIZE, num_frames=FRAMES, length=n, seed=1).batch(range(n))["video"]


@pytest.mark.parametrize("kind", ["next-token", "next-frame", "next-frame-ids", "next-scale"])
def test_each_paradigm_generates_clips_in_every_output_type(kind):
    pipe = _pipe(kind)
    prompts = ["a red square moving left", "a blue circle moving up"]
    out = pipe(prompt=prompts, generator=torch.Generator().manual_seed(0))
    assert isinstance(out, ARVideoPipelineOutput)
    assert len(out.videos) == 2 and all(len(clip) == FRAMES for clip in out.videos)  # "pil" is the default: frames per clip
    assert all(isinstance(f, PIL.Image.Image) and f.size == (SIZE, SIZE) for clip in out.videos for f in clip)
    arr = pipe(prompt=prompts, generator=torch.Generator().manual_seed(0), output_type="np").videos
    assert arr.shape == (2, FRAMES, SIZE, SIZE, 3) and 0.0 <= arr.min() and arr.max() <= 1.0
    pt = pipe(prompt=prompts, generator=torch.Generator().manual_seed(0), output_type="pt").videos
    assert pt.shape == (2, FRAMES, 3, SIZE, SIZE)
    assert np.allclose(pt.permute(0, 1, 3, 4, 2).numpy(), arr)  # same seeds, same clips
    assert np.array_equal(np.asarray(out.videos[1][3]), (arr[1, 3] * 255).round().astype(np.uint8))
    tokens = pipe(prompt=prompts, generator=torch.Generator().manual_seed(0), output_type="tokens")
    assert tokens.videos is None and torch.allclose(pipe.tokenizer.decode(tokens.tokens), pt * 2 - 1, atol=1e-5)


def test_frame_by_frame_is_one_step_per_latent_frame_and_next_token_one_per_position():
    frames = _pipe("next-frame")
    assert frames.num_groups == frames.tokenizer.token_spec().shape[0] == 2
    steps = []
    frames(class_labels=[0], callback_on_step_end=lambda p, i, t, kw: steps.append(kw["tokens"].shape) or {})
    assert steps == [torch.Size([1, 4, 4])] * 2  # each step draws a whole 2x2 latent frame of 4 channels
    tokens = _pipe("next-token")
    steps.clear()
    tokens(class_labels=[0], callback_on_step_end=lambda p, i, t, kw: steps.append(kw["tokens"].shape) or {})
    assert len(steps) == 2 * 2 * 2


def test_frame_by_frame_over_ids_draws_a_frame_as_the_codebooks_of_one_step():
    """FSQ ids frame by frame: one GPT step per latent frame, the depth head drawing its 2x2 ids one after another."""
    pipe = _pipe("next-frame-ids")
    assert pipe.num_groups == 2 and pipe.head.content.codebook_sizes == (16,) * 4
    steps = []
    ids = pipe(class_labels=[3, 40], sampling=GREEDY, output_type="tokens",
               callback_on_step_end=lambda p, i, t, kw: steps.append(kw["tokens"].shape) or {}).tokens
    assert steps == [torch.Size([2, 1, 4])] * 2 and ids.shape == (2, 2, 2, 2)
    seq = pipe.to_sequence(pipe.tokenizer.to_positions(ids))
    assert torch.equal(seq[:, 1], ids[:, 1].flatten(1))  # a frame's ids in raster order are the position's codebooks
    program = pipe.program()
    with torch.inference_mode():
        cond = pipe.conditioner.condition(class_labels=[3, 40], guided=False)
        hidden = teacher_hidden(pipe.gpt, cond, program.teacher_inputs(seq), program.pattern.layout())
        logits = pipe.head.logits(hidden, seq)  # teacher-forced on the drawn ids: each id is the argmax given those before it
    assert torch.equal(torch.stack([lg.argmax(-1) for lg in logits], dim=-1), seq)


def test_next_scale_over_a_space_time_pyramid_of_pooled_latents():
    """entity='scale' on a (t, h, w) grid: (1, 1, 1) is the clip's mean latent, the last scale the latents themselves."""
    pipe = _pipe("next-scale")
    assert pipe.config.patch_nums == [[1, 1, 1], [2, 2, 2]] and pipe.num_groups == 2
    latents = pipe.tokenizer.to_positions(pipe.tokenizer.encode(_clips(2)))  # [2, 2, 2, 2, C]
    seq = pipe.to_sequence(latents)
    assert seq.shape == (2, 1 + 8, latents.shape[-1])
    assert torch.allclose(seq[:, 0], latents.mean(dim=(1, 2, 3)), atol=1e-6)
    assert torch.equal(pipe.from_sequence(seq), latents)
    steps = []
    pipe(class_labels=[0], callback_on_step_end=lambda p, i, t, kw: steps.append(kw["tokens"].shape) or {})
    assert steps == [torch.Size([1, 1, 4]), torch.Size([1, 8, 4])]  # one GPT step per scale
    assert not starts_with_the_first_frame(pipe)  # every scale pools all frames: no first frame to prefill
    with pytest.raises(ValueError, match="first_frame_prefill needs a pattern that puts the first latent frame first"):
        generate_long_video(pipe, num_frames=12, class_labels=[0])


@pytest.mark.parametrize(
    "patch_nums,match",
    [
        ([[1, 1, 1], [2, 1, 1]], r"patch_nums must end at the latent grid \(2, 2, 2\)"),
        ([[2, 1, 1], [1, 2, 2], [2, 2, 2]], r"no axis shrinking, got \(2, 1, 1\) then \(1, 2, 2\)"),
        ([[1, 1], [2, 2, 2]], r"list of \(t, h, w\) scales, got the entry \[1, 1\]"),
        ([1, 2], r"list of \(t, h, w\) scales, got the entry 1"),
    ],
)
def test_space_time_scales_are_checked_by_name(patch_nums, match):
    conditioner = ClassConditioner(ClassConditioner.config_class(dim=GPT["dim"], num_classes=NUM_VIDEO_CLASSES))
    with pytest.raises(ValueError, match=match):
        NextXPipeline.from_tokenizer(_tokenizer("kl"), conditioner=conditioner, gpt=GPT, entity="scale", patch_nums=patch_nums)
    with pytest.raises(ValueError, match="entity='scale' needs continuous latents"):
        NextXPipeline.from_tokenizer(_tokenizer("fsq"), conditioner=conditioner, gpt=GPT, entity="scale")


def test_greedy_next_token_video_is_the_argmax_of_the_training_forward():
    pipe = _pipe("next-token")
    ids = pipe(class_labels=[3, 40], sampling=GREEDY, output_type="tokens").tokens
    seq = pipe.to_sequence(pipe.tokenizer.to_positions(ids))
    program = pipe.program()
    with torch.inference_mode():
        cond = pipe.conditioner.condition(class_labels=[3, 40], guided=False)
        hidden = teacher_hidden(pipe.gpt, cond, program.teacher_inputs(seq), program.pattern.layout())
        assert torch.equal(pipe.head.logits(hidden).argmax(-1).reshape(seq.shape), seq)


@pytest.mark.parametrize("kind", ["next-token", "next-frame", "next-frame-ids"])
def test_image_to_video_keeps_the_given_first_frame(kind):
    """The tokenizer is causal: an image's tokens are a clip's first latent frame, so they prefill generation."""
    pipe = _pipe(kind)
    images = _clips(2)[:, 0]
    assert starts_with_the_first_frame(pipe)
    first = first_frame_prefill(pipe, images)  # the image held still for a clip; only frame 0 reaches the first latent frame
    alone = pipe.tokenizer.to_positions(pipe.tokenizer.encode(images))
    assert torch.allclose(first.float(), pipe.head.normalize_tokens(alone).reshape(first.shape).float(), atol=1e-5)
    out = pipe(num_samples_per_prompt=2, prefill=first, output_type="tokens", generator=torch.Generator().manual_seed(0))
    video = pipe.tokenizer.decode(out.tokens)
    reconstructed = pipe.tokenizer.decode(pipe.tokenizer.encode(images))
    assert torch.allclose(video[:, :1], reconstructed, atol=1e-4)  # the first frame decodes as the image's own reconstruction
    if kind == "next-frame":  # a frame is one group: part of it cannot be given
        with pytest.raises(ValueError, match="must cover whole groups"):
            pipe(num_samples_per_prompt=2, prefill=first[:, :1], output_type="tokens")


@pytest.mark.parametrize("kind", ["next-token", "next-frame", "next-frame-ids"])
def test_long_videos_chain_clips_through_their_last_frame(kind):
    pipe = _pipe(kind)
    pipe.register_to_config(null_condition_trained=True)  # guidance on every link, prefilled ones included
    seeds = lambda: [torch.Generator().manual_seed(s) for s in (3, 4)]  # noqa: E731
    long = generate_long_video(pipe, num_frames=12, class_labels=[7, 50], guidance_scale=2.0, generator=seeds())
    assert long.shape == (2, 12, 3, SIZE, SIZE) and float(long.abs().max()) <= 1.0  # 5 + 4 + 4 frames, cut to 12
    first = pipe(class_labels=[7, 50], guidance_scale=2.0, generator=seeds(), output_type="pt").videos * 2 - 1
    assert torch.allclose(long[:, :FRAMES], first, atol=1e-5)  # the first link is a plain call with the same seeds
    again = generate_long_video(pipe, num_frames=12, class_labels=[7, 50], guidance_scale=2.0, generator=seeds())
    assert torch.equal(long, again)
    with pytest.raises(ValueError, match="num_frames must be a positive int, got 0"):
        generate_long_video(pipe, num_frames=0, class_labels=[7])


def test_image_to_video_evaluation_with_and_without_the_class():
    from pipelines import moving_shapes_image_to_video

    pipe = _pipe("next-token")
    free = moving_shapes_image_to_video(pipe, clips_per_class=1, batch_size=84)
    asked = moving_shapes_image_to_video(pipe, clips_per_class=1, conditioned=True, batch_size=84)
    assert free["num_samples"] == asked["num_samples"] == NUM_VIDEO_CLASSES
    assert free["videos"].shape == (NUM_VIDEO_CLASSES, FRAMES, 3, SIZE, SIZE)
    assert not torch.equal(free["videos"], asked["videos"])  # the class is a condition only when asked for


def test_image_to_video_can_draw_the_class_from_the_models_posterior_given_the_frame(monkeypatch):
    from pipelines import moving_shapes_image_to_video

    pipe = _pipe("next-token")
    inferred = moving_shapes_image_to_video(pipe, clips_per_class=1, infer_class=True, batch_size=84)
    assert inferred["videos"].shape == (NUM_VIDEO_CLASSES, FRAMES, 3, SIZE, SIZE)
    weighed = []

    def certain(prefill, *, candidates=None):  # a posterior sure of each clip's own class
        weighed.append(prefill.shape[0])
        return torch.eye(NUM_VIDEO_CLASSES)[: prefill.shape[0]].log()

    monkeypatch.setattr(pipe, "class_posterior", certain)
    sure = moving_shapes_image_to_video(pipe, clips_per_class=1, infer_class=True, batch_size=84)
    asked = moving_shapes_image_to_video(pipe, clips_per_class=1, conditioned=True, batch_size=84)
    assert weighed == [NUM_VIDEO_CLASSES] and torch.equal(sure["videos"], asked["videos"])
    with pytest.raises(ValueError, match="not both"):
        moving_shapes_image_to_video(pipe, clips_per_class=1, conditioned=True, infer_class=True)


def test_a_video_grid_takes_frame_token_or_image_entities_only():
    conditioner = ClassConditioner(ClassConditioner.config_class(dim=GPT["dim"], num_classes=NUM_VIDEO_CLASSES))
    with pytest.raises(ValueError, match="a \\(t, h, w\\) token grid \\(video\\) takes entity 'frame', 'token', 'image' or 'scale'; got entity='cell'"):
        NextXPipeline.from_tokenizer(_tokenizer("kl"), conditioner=conditioner, gpt=GPT, entity="cell")
    pipe = NextXPipeline.from_tokenizer(_tokenizer("kl"), conditioner=conditioner, gpt=GPT, entity="token", head={"width": 16, "depth": 1})
    assert pipe.num_groups == 2 * 2 * 2  # one latent position per step, in (t, h, w) raster order


def test_generation_quality_points_video_pipelines_to_their_own_judge():
    with pytest.raises(ValueError, match="generation_quality covers image and audio pipelines; this one makes video"):
        generation_quality(_pipe("next-token"), samples_per_class=1)


def test_pipeline_round_trips_through_save_pretrained(tmp_path):
    pipe = _pipe("next-token")
    pipe.save_pretrained(tmp_path / "pipe")
    loaded = NextTokenPipeline.from_pretrained(tmp_path / "pipe")
    loaded.set_progress_bar_config(disable=True)
    a = pipe(prompt=["a green triangle moving down"], generator=torch.Generator().manual_seed(5), output_type="pt").videos
    b = loaded(prompt=["a green triangle moving down"], generator=torch.Generator().manual_seed(5), output_type="pt").videos
    assert torch.equal(a, b)


# ---- trainer and CLI on the built-in moving shapes ----------------------------------------------------
def _write(path: Path, config: dict) -> Path:
    path.write_text(yaml.safe_dump(config))
    return path


def test_train_a_video_tokenizer_then_a_generator_then_generate_gif_and_mp4(tmp_path):
    data = {"dataset": "moving_shapes", "image_size": SIZE, "num_frames": FRAMES, "num_items": 64}
    tok_cfg = _write(tmp_path / "tok.yaml", {
        "kind": "tokenizer", "output_dir": str(tmp_path / "tok"), "threads": 1, "log_every": 1,
        "tokenizer": {"class": "CausalVideoTokenizer", "image_size": SIZE, "num_frames": FRAMES, "channels": 4,
                      "fsq_levels": [4, 4]},
        "data": data, "optim": {"steps": 2, "batch_size": 2}, "eval": {"num_items": 4},
    })
    assert main(["train", str(tok_cfg)]) == 0
    report = json.loads((tmp_path / "tok" / "eval.json").read_text())["eval"]
    clips = report["moving_shapes_heldout"]
    assert len(clips["psnr_per_frame"]) == FRAMES and {"psnr_first", "psnr_rest", "judged_right", "usage"} <= set(clips)
    assert set(report["shapes_heldout_as_images"]) == {"psnr", "ssim", "judged_right"}
    gen_cfg = _write(tmp_path / "gen.yaml", {
        "kind": "generator", "pipeline": "NextTokenPipeline", "tokenizer": str(tmp_path / "tok" / "tokenizer"),
        "output_dir": str(tmp_path / "gen"), "threads": 1, "log_every": 1, "gpt": GPT, "data": data,
        "optim": {"steps": 2, "batch_size": 4}, "eval": {"samples_per_class": 1, "batch_size": 42},
    })
    assert main(["train", str(gen_cfg)]) == 0
    evaluated = json.loads((tmp_path / "gen" / "eval.json").read_text())["eval"]
    assert evaluated["num_samples"] == NUM_VIDEO_CLASSES and 0.0 <= evaluated["adherence"] <= 1.0
    assert {"shape_right", "colour_right", "direction_right"} <= set(evaluated)
    assert set(evaluated["image_to_video"]) == set(evaluated["image_to_video_inferred"]) == {"kept", "moving", "num_samples"}
    long = evaluated["long_video"]
    assert long["num_frames"] == 4 * FRAMES and long["num_segments"] == 4 and long["num_samples"] == NUM_VIDEO_CLASSES
    gif = iio.imread(tmp_path / "gen" / "samples.gif", index=None)
    assert gif.shape[0] == FRAMES
    pipeline = str(tmp_path / "gen" / "pipeline")
    for fmt in ("gif", "mp4"):
        out = tmp_path / f"out-{fmt}"
        assert main(["generate", pipeline, "--prompt", "a red square moving left", "--num-samples", "2", "--video-format", fmt,
                     "--out", str(out)]) == 0
        manifest = json.loads((out / "manifest.json").read_text())
        assert manifest["modality"] == "video" and [s["file"].endswith(f".{fmt}") for s in manifest["samples"]] == [True, True]
        frames = iio.imread(out / manifest["samples"][0]["file"], index=None, **({"plugin": "pyav"} if fmt == "mp4" else {}))
        assert frames.shape == (FRAMES, SIZE, SIZE, 3)
