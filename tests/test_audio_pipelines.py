"""Audio through the shared engine: every codec with the paradigm that suits it, outputs a user can write to WAV,
continuation from a prompt clip, and the trainer and CLI on the built-in tones.

Tiny codecs (0.25 s clips, hop 20) and one-layer GPTs with random or a few steps of training: these check the
plumbing and the promises of the API, not quality (that is `mmgen train configs/tones/...`).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
import yaml
from audio_fixtures import JUDGED_CLIP, SR, TINY_TONES_CODEC, tones_codec

from mmgen import SamplingConfig
from mmgen.app.cli import main
from mmgen.conditioning import ClassConditioner
from mmgen.data import NUM_TONE_CLASSES, TonesDataset, tone_caption
from pipelines import ARAudioPipelineOutput, NextScalePipeline, NextTokenPipeline
from tokenizers_audio import (
    RVQAudioCodec,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

RATE, CLIP = SR, JUDGED_CLIP
GPT = {"dim": 32, "n_layers": 1, "n_heads": 2}
GREEDY = SamplingConfig(top_k=1)


def _pipe(kind: str, **options) -> NextTokenPipeline | NextScalePipeline:
    conditioner = ClassConditioner(ClassConditioner.config_class(dim=GPT["dim"], num_classes=NUM_TONE_CLASSES))
    cls = NextScalePipeline if kind == "multiscale" else NextTokenPipeline
    names = [tone_caption(c) for c in range(NUM_TONE_CLASSES)]
    pipe = cls.from_tokenizer(tones_codec(kind), conditioner=conditioner, gpt=GPT, class_names=names, **options)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.mark.parametrize("kind, options", [
    ("rvq", {"codebook_pattern": "delay"}),
    ("rvq", {"codebook_pattern": "parallel", "head": {"class": "DepthHead", "width": 16, "depth": 1, "n_heads": 2}}),
    ("multiscale", {}),
    ("single", {}),
])
def test_every_codec_generates_audio_through_its_paradigm(kind, options):
    pipe = _pipe(kind, **options)
    out = pipe(prompt=["a C4 tone", "a rising chirp from G4"], generator=torch.Generator().manual_seed(0))
    assert isinstance(out, ARAudioPipelineOutput) and out.sample_rate == RATE
    assert isinstance(out.audios, np.ndarray) and out.audios.dtype == np.float32  # "np" is the audio default
    assert out.audios.shape == (2, CLIP) and float(np.abs(out.audios).max()) <= 1.0
    again = pipe(prompt=["a C4 tone", "a rising chirp from G4"], generator=torch.Generator().manual_seed(0), output_type="pt")
    assert torch.equal(again.audios, torch.from_numpy(out.audios))  # same seeds, same clips
    tokens = pipe(class_labels=[0, 1], output_type="tokens").tokens
    assert pipe(class_labels=[0, 1], output_type="tokens").audios is None
    assert pipe.tokenizer.decode(tokens).shape == (2, 1, CLIP)


def test_audio_refuses_image_output_types():
    pipe = _pipe("single")
    with pytest.raises(ValueError, match="output_type='pil' is not defined for audio"):
        pipe(class_labels=[0], output_type="pil")


def test_pipeline_tokenize_and_loss_train_on_tones():
    pipe = _pipe("rvq", codebook_pattern="delay")
    batch = TonesDataset(length=8, seconds=CLIP / RATE).batch(range(8))
    tokens = pipe.tokenize(batch["audio"])
    assert tokens.shape == (8, CLIP // 20 + 1, 2)  # delay: one extra step per further codebook
    params = [p for m in (pipe.gpt, pipe.head, pipe.conditioner) for p in m.parameters()]
    optimizer = torch.optim.Adam(params, lr=3e-3)
    losses = []
    for _ in range(15):
        loss, _ = pipe.loss(tokens, class_labels=batch["class_id"], cond_drop_prob=0.0)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss))
    assert losses[-1] < 0.8 * losses[0]


def test_continuation_keeps_the_prompt_clip_and_generates_the_rest():
    """Given the first 0.1 s of a clip (its codes as a prefill), the pipeline continues it to a whole clip."""
    pipe = _pipe("single")
    clip = TonesDataset(length=1, seconds=CLIP / RATE).batch([0])["audio"]
    prompt_frames = 80  # 0.1 s at 800 frames/s
    prefill = pipe.tokenize(clip)[:, :prompt_frames]
    out = pipe(class_labels=[0], prefill=prefill, output_type="tokens", generator=torch.Generator().manual_seed(1))
    assert out.tokens.shape == (1, CLIP // 20)
    assert torch.equal(out.tokens[:, :prompt_frames], prefill)


def test_tones_continuation_judges_whole_clips_continued_from_a_prompt():
    """Every held-out clip is continued from its first frames; the judge reads the whole generated clip."""
    from pipelines import tones_continuation

    pipe = _pipe("rvq", codebook_pattern="delay")
    result = tones_continuation(pipe, clips_per_class=1, prompt_seconds=0.05, batch_size=28)
    assert result["audios"].shape == (NUM_TONE_CLASSES, 1, JUDGED_CLIP)
    assert result["num_samples"] == NUM_TONE_CLASSES and 0.0 <= result["adherence"] <= 1.0
    assert result["prompt_seconds"] == pytest.approx(0.05)
    with pytest.raises(ValueError, match="prompt_seconds"):
        tones_continuation(pipe, clips_per_class=1, prompt_seconds=JUDGED_CLIP / SR)


def test_continuation_can_draw_the_class_from_the_models_posterior_given_the_prompt(monkeypatch):
    from pipelines import tones_continuation

    pipe = _pipe("rvq", codebook_pattern="delay")
    inferred = tones_continuation(pipe, clips_per_class=1, prompt_seconds=0.05, infer_class=True)
    assert inferred["audios"].shape == (NUM_TONE_CLASSES, 1, JUDGED_CLIP)
    labels = [TonesDataset(length=NUM_TONE_CLASSES, split="heldout", seconds=JUDGED_CLIP / SR)[i]["class_id"]
              for i in range(NUM_TONE_CLASSES)]
    monkeypatch.setattr(pipe, "class_posterior", lambda prefill, *, candidates=None: torch.eye(NUM_TONE_CLASSES)[labels].log())
    sure = tones_continuation(pipe, clips_per_class=1, prompt_seconds=0.05, infer_class=True)
    asked = tones_continuation(pipe, clips_per_class=1, prompt_seconds=0.05, conditioned=True)
    assert torch.equal(sure["audios"], asked["audios"])  # a certain posterior asks for the clips' own classes
    with pytest.raises(ValueError, match="not both"):
        tones_continuation(pipe, clips_per_class=1, prompt_seconds=0.05, conditioned=True, infer_class=True)


# ---- trainer and CLI -----------------------------------------------------------------------------------
def _write(path: Path, values: dict) -> Path:
    path.write_text(yaml.safe_dump(values))
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """`mmgen train` of a tiny RVQ codec on tones, then of a delay-pattern generator over it."""
    root = tmp_path_factory.mktemp("audio-run")
    data = {"dataset": "tones", "sample_rate": RATE, "clip_seconds": CLIP / RATE, "num_items": 56}
    codec = {"kind": "tokenizer", "tokenizer": {"class": "RVQAudioCodec", **TINY_TONES_CODEC, "num_quantizers": 4, "generator_quantizers": 2},
             "data": data, "optim": {"steps": 3, "batch_size": 4}, "eval": {"num_items": 4}, "threads": 1,
             "output_dir": str(root / "codec")}
    assert main(["train", str(_write(root / "codec.yaml", codec))]) == 0
    generator = {"kind": "generator", "pipeline": "NextTokenPipeline", "tokenizer": str(root / "codec" / "tokenizer"),
                 "gpt": GPT, "data": data, "optim": {"steps": 3, "batch_size": 8},
                 "eval": {"samples_per_class": 1, "batch_size": 28}, "threads": 1, "output_dir": str(root / "gen")}
    assert main(["train", str(_write(root / "gen.yaml", generator))]) == 0
    return {"root": root, "codec": root / "codec", "gen": root / "gen"}


def test_codec_training_reports_reconstruction_on_tones_and_speech(trained):
    report = json.loads((trained["codec"] / "eval.json").read_text())["eval"]
    for split in ("tones_heldout", "speech"):
        metrics = report[split]
        for name in ("si_sdr", "mel_distance", "stft_distance", "si_sdr@q=1", "si_sdr@q=2", "si_sdr@q=4"):
            assert np.isfinite(metrics[name]), (split, name)
    assert 0.0 <= report["tones_heldout"]["judged_right"] <= 1.0
    assert "usage/level3" in report["tones_heldout"]
    loaded = RVQAudioCodec.from_pretrained(str(trained["codec"] / "tokenizer"))
    assert loaded.token_spec().content.num_codebooks == 2


def test_generator_training_reports_tones_adherence_and_writes_wavs(trained):
    report = json.loads((trained["gen"] / "eval.json").read_text())["eval"]
    assert report["num_samples"] == NUM_TONE_CLASSES and 0.0 <= report["adherence"] <= 1.0
    assert 0.0 <= report["continuation"]["adherence"] <= 1.0
    assert 0.0 <= report["continuation_inferred"]["adherence"] <= 1.0
    wavs = sorted((trained["gen"] / "samples").glob("*.wav"))
    assert len(wavs) == NUM_TONE_CLASSES
    audio, rate = soundfile.read(str(wavs[0]))
    assert rate == RATE and audio.shape == (CLIP,)
    pipe = NextTokenPipeline.from_pretrained(str(trained["gen"] / "pipeline"))
    assert pipe.config.class_names[5] == "a A4 tone"


def test_cli_generate_writes_one_wav_per_sample(trained, tmp_path, capsys):
    out = tmp_path / "wavs"
    code = main(["generate", str(trained["gen"] / "pipeline"), "--prompt", "a falling chirp from E4", "--num-samples", "2",
                 "--out", str(out)])
    assert code == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["modality"] == "audio" and [s["seed"] for s in manifest["samples"]] == [0, 1]
    for sample in manifest["samples"]:
        audio, rate = soundfile.read(str(out / sample["file"]))
        assert sample["file"].endswith(".wav") and rate == RATE and audio.shape == (CLIP,)
    assert main(["generate", str(trained["gen"] / "pipeline"), "--class-label", "3", "--out", str(out)]) == 2  # never overwrites
    assert "--overwrite" in capsys.readouterr().err
