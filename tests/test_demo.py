"""`mmgen demo`: every paradigm's pipeline generates every shapes prompt (PNGs, grids), every tones prompt
(WAVs, spectrograms), every moving-shapes prompt (GIFs, grid GIFs) and every 3D primitives prompt (PLY meshes,
previews, grids); manifest and HTML are written, the page a static summary of every sample."""

import json
import re
from html.parser import HTMLParser
from pathlib import Path

import imageio.v3 as iio
import pytest
import soundfile
import torch
import trimesh
from audio_fixtures import JUDGED_CLIP, SR, tones_codec
from PIL import Image
from pipeline_fixtures import count_gpt_forwards

import mmgen
import pipelines
from mmgen.app.cli import main
from mmgen.app.demo import (
    AUDIO_PARADIGMS,
    DEFAULT_CHECKPOINTS,
    PARADIGMS,
    SHAPE_PARADIGMS,
    SHAPE_SAMPLING,
    VIDEO_PARADIGMS,
    run_demo,
)
from mmgen.conditioning import ClassConditioner, ClassConditionerConfig
from mmgen.data import (
    NUM_CLASSES,
    NUM_SHAPE3D_CLASSES,
    NUM_TONE_CLASSES,
    NUM_VIDEO_CLASSES,
    PRIMITIVES,
    caption,
    shape3d_caption,
    tone_caption,
    video_caption,
    video_class_parts,
)
from mmgen.metrics import judge_primitives
from pipelines import NextScalePipeline, NextTokenPipeline, NextXPipeline
from tokenizers_visual import (
    CausalVideoConfig,
    CausalVideoTokenizer,
    KLConfig,
    KLImageTokenizer,
    MultiScaleVQConfig,
    MultiScaleVQTokenizer,
    OctreeTokenizer,
    VariationalShapeConfig,
    VariationalShapeTokenizer,
    VQConfig,
    VQImageTokenizer,
)

NAMES = [caption(c) for c in range(NUM_CLASSES)]
TONE_NAMES = [tone_caption(c) for c in range(NUM_TONE_CLASSES)]
VIDEO_NAMES = [video_caption(c) for c in range(NUM_VIDEO_CLASSES)]
SHAPE_NAMES = [shape3d_caption(c) for c in range(NUM_SHAPE3D_CLASSES)]
RATE, CLIP = SR, JUDGED_CLIP
FRAMES = 5  # of the tiny video tokenizers: the first frame, then one latent frame per 4
SIDE = 8  # voxels per side of the tiny shape tokenizers: an octree of 3 levels, 1 + 8 + 64 nodes at most


def _pipeline(cls: type, tokenizer: torch.nn.Module, class_names: list[str] = NAMES, **config) -> object:
    """A tiny class-conditional pipeline over ``tokenizer`` with ``class_names`` (default: the shapes captions)."""
    conditioner = ClassConditioner(ClassConditionerConfig(dim=32, num_classes=len(class_names)))
    return cls.from_tokenizer(tokenizer, conditioner=conditioner, gpt={"dim": 32, "n_layers": 1, "n_heads": 2},
                              class_names=class_names, null_condition_trained=True, **config)


class _Page(HTMLParser):
    """What a check of index.html needs: every referenced file, the summary rows, and per figure its hover, media and verdict."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.refs: list[str] = []
        self.rows: list[list[str]] = []
        self.figures: list[dict] = []
        self._in_body = self._in_verdict = False
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list) -> None:
        attrs = dict(attrs)
        self.refs += [attrs[k] for k in ("src", "href") if k in attrs]
        if tag == "tbody":
            self._in_body = True
        elif tag == "tr" and self._in_body:
            self.rows.append([])
        elif tag in ("td", "th") and self._in_body:
            self.rows[-1].append("")
        elif tag == "figure":
            self.figures.append({"title": attrs.get("title", ""), "media": [], "verdict": ""})
        elif tag in ("img", "audio") and self.figures:
            self.figures[-1]["media"].append(attrs["src"])
        self._in_verdict = self._in_verdict or attrs.get("class") == "verdict"

    def handle_endtag(self, tag: str) -> None:
        self._in_body = self._in_body and tag != "tbody"
        self._in_verdict = self._in_verdict and tag != "span"

    def handle_data(self, data: str) -> None:
        if self._in_body and self.rows and self.rows[-1]:
            self.rows[-1][-1] += data
        if self._in_verdict:
            self.figures[-1]["verdict"] += data


def _check_page(out: Path, manifest: dict) -> None:
    """index.html: a header in words, one summary row per paradigm, every sample with its seed on hover and its verdict,
    nothing but files next to it."""
    text = (out / "index.html").read_text(encoding="utf-8")
    page = _Page(text)
    assert '{"' not in text and json.dumps(manifest["sampling"]) not in text and "<script" not in text  # no raw JSON, no code
    assert not re.search(r"(?i)https?:|url\(|@import", text)  # works offline: nothing to fetch
    files = [ref for ref in page.refs if not ref.startswith("#")]
    assert "manifest.json" in files and all(not re.match(r"[a-zA-Z][\w+.-]*:|/", ref) for ref in files)  # relative
    assert all((out / ref).is_file() for ref in files)
    assert f"mmgen {mmgen.__version__}" in text and "guidance scale 3" in text
    infos = [*manifest["paradigms"].items(), *manifest["audio"]["paradigms"].items(), *manifest["video"]["paradigms"].items(),
             *manifest["shapes"]["paradigms"].items()]
    assert [row[0] for row in page.rows] == [p for p, _ in infos]
    for row, (paradigm, info) in zip(page.rows, infos):
        assert row[3:6] == [str(info["gpt_forwards_per_sample"]), str(info["num_samples"]), f"{info['prompt_adherence']:.0%}"]
        assert info["description"] in row[2]
    samples = [*manifest["samples"], *manifest["audio"]["samples"], *manifest["video"]["samples"], *manifest["shapes"]["samples"]]
    assert len(page.figures) == len(samples)
    for figure, sample in zip(page.figures, samples):
        shown = [sample["spectrogram"], sample["file"]] if "spectrogram" in sample else [sample.get("preview", sample["file"])]
        assert figure["media"] == shown
        assert figure["title"].startswith(f"seed {sample['seed']}, generated in ")
        assert figure["verdict"].startswith("✓ right: read " if sample["right"] else "✗ wrong: read ")


def _check_forwards(root: Path, names: dict[str, str], infos: dict) -> None:
    """The manifest's GPT forwards per sample are what generating one sample with that pipeline takes."""
    for paradigm, info in infos.items():
        pipe = getattr(pipelines, names[paradigm]).from_pretrained(str(root / paradigm))
        pipe.set_progress_bar_config(disable=True)
        calls = count_gpt_forwards(pipe)
        pipe(class_labels=[0], guidance_scale=3.0, output_type="tokens")
        assert len(calls) == info["gpt_forwards_per_sample"], paradigm


@pytest.fixture(scope="module")
def tiny_checkpoints(tmp_path_factory) -> Path:
    """One tiny random pipeline per paradigm, saved the way the shipped ones are."""
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("checkpoints")
    vq = VQImageTokenizer(VQConfig(image_size=16, downsample=4, channels=8, channel_mult=[1, 1, 1], z_channels=8,
                                   codebook_size=32, codebook_dim=4))
    _pipeline(NextTokenPipeline, vq).save_pretrained(root / "next-token")
    msvq = MultiScaleVQTokenizer(MultiScaleVQConfig(image_size=16, channels=8, channel_mult=(1, 1, 1), codebook_size=32,
                                                    codebook_dim=4, patch_nums=(1, 2, 4), share_quant_resi=3))
    _pipeline(NextScalePipeline, msvq).save_pretrained(root / "next-scale")
    kl = KLImageTokenizer(KLConfig(image_size=16, downsample=4, channels=8, channel_mult=[1, 1, 1], latent_dim=4))
    _pipeline(NextXPipeline, kl, head={"width": 32, "depth": 1}, num_flow_steps=2).save_pretrained(root / "next-x")
    return root


@pytest.fixture(scope="module")
def tiny_audio_checkpoints(tmp_path_factory) -> Path:
    """One tiny random tones pipeline per audio paradigm, in the sub-folders the shipped ones use."""
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("tones")
    gpt = {"dim": 32, "n_layers": 1, "n_heads": 2}
    codecs = {"next-token-rvq": tones_codec("rvq"), "next-scale": tones_codec("multiscale"), "next-token-single": tones_codec("single")}
    for paradigm, codec in codecs.items():
        cls = NextScalePipeline if paradigm == "next-scale" else NextTokenPipeline
        options = {"codebook_pattern": "delay"} if paradigm == "next-token-rvq" else {}
        conditioner = ClassConditioner(ClassConditionerConfig(dim=gpt["dim"], num_classes=NUM_TONE_CLASSES))
        cls.from_tokenizer(codec, conditioner=conditioner, gpt=gpt, class_names=TONE_NAMES,
                           null_condition_trained=True, **options).save_pretrained(root / paradigm)
    return root


@pytest.fixture(scope="module")
def tiny_video_checkpoints(tmp_path_factory) -> Path:
    """One tiny random moving-shapes pipeline per video paradigm: next-token over FSQ ids, next-frame over the same ids,
    a frame folded into one position and drawn by a tied depth head (as the shipped preset)."""
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("moving_shapes")
    tokenizer = {"image_size": 16, "num_frames": FRAMES, "spatial_downsample": 8, "channels": 4}
    fsq = CausalVideoTokenizer(CausalVideoConfig(**tokenizer, bottleneck="fsq", fsq_levels=[4, 4])).eval()
    _pipeline(NextTokenPipeline, fsq, VIDEO_NAMES).save_pretrained(root / "next-token")
    _pipeline(NextXPipeline, fsq, VIDEO_NAMES, entity="frame",
              head={"class": "DepthHead", "width": 16, "depth": 1, "n_heads": 2, "tied": True}).save_pretrained(root / "next-frame")
    return root


@pytest.fixture(scope="module")
def tiny_shape_checkpoints(tmp_path_factory) -> Path:
    """One tiny random primitives pipeline per 3D paradigm: octree ids by level and by node, VAT-style ids by scale."""
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("primitives")
    _pipeline(NextScalePipeline, OctreeTokenizer({"resolution": SIDE}), SHAPE_NAMES).save_pretrained(root / "octree-level")
    _pipeline(NextTokenPipeline, OctreeTokenizer({"resolution": SIDE}), SHAPE_NAMES).save_pretrained(root / "octree-token")
    vat = VariationalShapeTokenizer(VariationalShapeConfig(resolution=SIDE, num_points=64, num_latents=4, width=16, depth=1,
                                                           heads=2, latent_dim=4, codebook_size=16, scales=(1, 2, 4),
                                                           num_frequencies=2, num_queries=64)).eval()
    _pipeline(NextScalePipeline, vat, SHAPE_NAMES).save_pretrained(root / "vat-next-scale")
    return root


def test_demo_writes_every_sample_grid_manifest_and_html(tiny_checkpoints, tmp_path, one_torch_thread):
    out = tmp_path / "demo"
    manifest = run_demo(checkpoints=tiny_checkpoints, out_dir=out, samples_per_prompt=2, seed=5, audio_checkpoints=None,
                        video_checkpoints=None, shape_checkpoints=None)
    assert set(manifest["paradigms"]) == set(PARADIGMS)
    assert len(manifest["samples"]) == 3 * NUM_CLASSES * 2
    for paradigm, info in manifest["paradigms"].items():
        assert info["num_samples"] == NUM_CLASSES * 2
        assert 0.0 <= info["prompt_adherence"] <= 1.0
        rows = [s for s in manifest["samples"] if s["paradigm"] == paradigm]
        assert info["prompt_adherence"] == sum(s["right"] for s in rows) / len(rows)
        assert Image.open(out / f"grid-{paradigm}.png").size[0] > 16
    first = manifest["samples"][0]
    assert set(first) >= {"file", "paradigm", "prompt", "class_id", "seed", "seconds"}
    assert [s["seed"] for s in manifest["samples"][:4]] == [5, 6, 7, 8]
    assert [s["prompt"] for s in manifest["samples"][:4]] == [NAMES[0], NAMES[0], NAMES[1], NAMES[1]]
    assert all(Image.open(out / s["file"]).size == (16, 16) for s in manifest["samples"])
    assert json.loads((out / "manifest.json").read_text()) == manifest
    assert manifest["mmgen_version"] == mmgen.__version__ and manifest["samples_per_prompt"] == 2
    # next-token: one forward per token of the 4x4 grid; next-scale: one per scale (1, 2, 4); next-x: one per 2x2 cell
    assert {p: info["gpt_forwards_per_sample"] for p, info in manifest["paradigms"].items()} == \
        {"next-token": 16, "next-scale": 3, "next-x": 4}
    assert {p: info["positions_per_sample"] for p, info in manifest["paradigms"].items()} == \
        {"next-token": 16, "next-scale": 1 + 4 + 16, "next-x": 16}
    _check_forwards(tiny_checkpoints, PARADIGMS, manifest["paradigms"])
    _check_page(out, manifest)


def test_demo_is_reproducible_and_never_overwrites_unasked(tiny_checkpoints, tmp_path, one_torch_thread):
    image_only = {"checkpoints": tiny_checkpoints, "paradigms": ["next-token"], "audio_checkpoints": None, "video_checkpoints": None,
                  "shape_checkpoints": None}
    a = run_demo(out_dir=tmp_path / "a", **image_only)
    b = run_demo(out_dir=tmp_path / "b", **image_only)
    assert [(tmp_path / "a" / s["file"]).read_bytes() for s in a["samples"]] == \
        [(tmp_path / "b" / s["file"]).read_bytes() for s in b["samples"]]
    with pytest.raises(FileExistsError, match="--overwrite"):
        run_demo(out_dir=tmp_path / "a", **image_only)
    run_demo(out_dir=tmp_path / "a", overwrite=True, **image_only)


def test_demo_command_reports_per_paradigm_and_fails_cleanly(tiny_checkpoints, tmp_path, capsys, one_torch_thread):
    assert main(["demo", "--checkpoints", str(tiny_checkpoints), "--out", str(tmp_path / "o"), "--paradigm", "next-scale",
                 "--audio-checkpoints", str(tmp_path / "no-tones"), "--video-checkpoints", str(tmp_path / "no-video"),
                 "--shape-checkpoints", str(tmp_path / "no-shapes")]) == 0
    out = capsys.readouterr().out
    assert "next-scale: 21 samples, prompt adherence" in out and "index.html" in out
    assert f"audio section skipped: no tones pipelines in {tmp_path / 'no-tones'}" in out
    assert f"video section skipped: no moving-shapes pipelines in {tmp_path / 'no-video'} (pass --video-checkpoints DIR)" in out
    assert f"shape section skipped: no primitives pipelines in {tmp_path / 'no-shapes'} (pass --shape-checkpoints DIR)" in out
    assert main(["demo", "--checkpoints", str(tmp_path / "missing"), "--out", str(tmp_path / "p")]) == 2
    assert "no shipped pipeline" in capsys.readouterr().err



def test_demo_writes_a_wav_and_a_spectrogram_per_clip(tiny_checkpoints, tiny_audio_checkpoints, tmp_path, one_torch_thread):
    out = tmp_path / "demo"
    manifest = run_demo(checkpoints=tiny_checkpoints, paradigms=["next-token"], audio_checkpoints=tiny_audio_checkpoints,
                        video_checkpoints=None, shape_checkpoints=None, out_dir=out, seed=3)
    audio = manifest["audio"]
    assert set(audio["paradigms"]) == set(AUDIO_PARADIGMS) and audio["skipped"] == {}
    assert len(audio["samples"]) == 3 * NUM_TONE_CLASSES and len(manifest["samples"]) == NUM_CLASSES  # images untouched
    for paradigm, info in audio["paradigms"].items():
        rows = [s for s in audio["samples"] if s["paradigm"] == paradigm]
        assert info["pipeline"] == AUDIO_PARADIGMS[paradigm] and info["num_samples"] == len(rows) == NUM_TONE_CLASSES
        assert info["prompt_adherence"] == sum(s["right"] for s in rows) / len(rows) and info["seconds_per_sample"] > 0
        assert [s["prompt"] for s in rows] == TONE_NAMES and [s["seed"] for s in rows[:3]] == [3, 4, 5]
    first = audio["samples"][0]
    assert set(first) >= {"file", "spectrogram", "paradigm", "prompt", "class_id", "seed", "seconds", "judged", "right"}
    assert set(first["judged"]) == {"kind", "root"} and first["file"].startswith("tones/next-token-rvq/000-a-C4-tone-seed3")
    for sample in audio["samples"]:
        clip, rate = soundfile.read(out / sample["file"], dtype="float32")
        assert rate == RATE and clip.shape == (CLIP,) and soundfile.info(out / sample["file"]).subtype == "PCM_16"
        picture = Image.open(out / sample["spectrogram"])
        assert picture.mode == "L" and picture.size == (CLIP // 128 + 1, 64)  # frames x mel bands
    assert json.loads((out / "manifest.json").read_text()) == manifest
    assert (out / "index.html").read_text(encoding="utf-8").count("<audio controls") == 3 * NUM_TONE_CLASSES
    _check_forwards(tiny_audio_checkpoints, AUDIO_PARADIGMS, audio["paradigms"])
    _check_page(out, manifest)


def test_absent_audio_is_skipped_by_default_and_an_error_when_asked_for(tiny_audio_checkpoints, tmp_path, one_torch_thread):
    partial = tmp_path / "partial-tones"
    partial.mkdir()
    (partial / "next-token-single").symlink_to(tiny_audio_checkpoints / "next-token-single", target_is_directory=True)
    manifest = run_demo(checkpoints=DEFAULT_CHECKPOINTS, paradigms=[], audio_checkpoints=partial, video_checkpoints=None,
                        shape_checkpoints=None, out_dir=tmp_path / "a")
    assert list(manifest["audio"]["paradigms"]) == ["next-token-single"]
    assert set(manifest["audio"]["skipped"]) == {"next-token-rvq", "next-scale"}
    assert "next-scale: skipped, no pipeline in" in (tmp_path / "a" / "index.html").read_text()
    none = run_demo(checkpoints=DEFAULT_CHECKPOINTS, paradigms=[], audio_checkpoints=tmp_path / "nothing", video_checkpoints=None,
                    shape_checkpoints=None, out_dir=tmp_path / "b")
    assert none["audio"]["paradigms"] == {} and set(none["audio"]["skipped"]) == set(AUDIO_PARADIGMS)
    with pytest.raises(FileNotFoundError, match=r"no shipped audio pipeline for \['next-scale'\].*--audio-checkpoints"):
        run_demo(paradigms=[], audio_checkpoints=partial, audio_paradigms=["next-scale"], out_dir=tmp_path / "c")
    with pytest.raises(ValueError, match="unknown audio paradigm"):
        run_demo(paradigms=[], audio_checkpoints=partial, audio_paradigms=["next-x"], out_dir=tmp_path / "c")
    with pytest.raises(ValueError, match="needs audio_checkpoints"):
        run_demo(paradigms=[], audio_checkpoints=None, audio_paradigms=["next-scale"], out_dir=tmp_path / "c")
    assert not (tmp_path / "c").exists()  # refused before anything was written


def test_demo_command_reports_audio_adherence_and_refuses_a_missing_one(tiny_checkpoints, tiny_audio_checkpoints, tmp_path,
                                                                         capsys, one_torch_thread):
    assert main(["demo", "--checkpoints", str(tiny_checkpoints), "--paradigm", "next-token", "--out", str(tmp_path / "o"),
                 "--audio-checkpoints", str(tiny_audio_checkpoints), "--audio-paradigm", "next-scale",
                 "--video-checkpoints", str(tmp_path / "no-video"), "--shape-checkpoints", str(tmp_path / "no-shapes")]) == 0
    out = capsys.readouterr().out
    assert f"tones/next-scale: {NUM_TONE_CLASSES} samples, prompt adherence" in out and f"{NUM_TONE_CLASSES} WAVs" in out
    assert main(["demo", "--checkpoints", str(tiny_checkpoints), "--out", str(tmp_path / "p"),
                 "--audio-checkpoints", str(tmp_path / "missing"), "--audio-paradigm", "next-token-rvq"]) == 2
    assert "no shipped audio pipeline for ['next-token-rvq']" in capsys.readouterr().err


def test_demo_writes_a_gif_per_clip_judged_for_shape_colour_and_direction(tiny_video_checkpoints, tmp_path, one_torch_thread):
    out = tmp_path / "demo"
    manifest = run_demo(paradigms=[], audio_checkpoints=None, video_checkpoints=tiny_video_checkpoints, shape_checkpoints=None,
                        out_dir=out, seed=3)
    video = manifest["video"]
    assert set(video["paradigms"]) == set(VIDEO_PARADIGMS) and video["skipped"] == {}
    assert len(video["samples"]) == 2 * NUM_VIDEO_CLASSES and manifest["samples"] == [] and manifest["audio"]["samples"] == []
    for paradigm, info in video["paradigms"].items():
        rows = [s for s in video["samples"] if s["paradigm"] == paradigm]
        assert info["pipeline"] == VIDEO_PARADIGMS[paradigm] and info["num_samples"] == len(rows) == NUM_VIDEO_CLASSES
        assert info["prompt_adherence"] == sum(s["right"] for s in rows) / len(rows) and info["seconds_per_sample"] > 0
        assert info["num_frames"] == FRAMES and info["fps"] == 8
        assert [s["prompt"] for s in rows] == VIDEO_NAMES and [s["seed"] for s in rows[:3]] == [3, 4, 5]
        grid = iio.imread(out / "video" / f"grid-{paradigm}.gif", index=None)
        assert grid.shape == (FRAMES, 12 * 16, 7 * 16, 3)  # 84 clips: 12 rows of 7
    # next-token: one forward per id of the 2 x 2 x 2 (t, h, w) grid; next-frame: one per latent frame, its 4 ids one position
    assert {p: info["gpt_forwards_per_sample"] for p, info in video["paradigms"].items()} == {"next-token": 8, "next-frame": 2}
    assert {p: info["positions_per_sample"] for p, info in video["paradigms"].items()} == {"next-token": 8, "next-frame": 2}
    first = video["samples"][0]
    assert set(first) >= {"file", "paradigm", "prompt", "class_id", "seed", "seconds", "judged", "right"}
    assert first["file"] == f"video/next-token/000-{VIDEO_NAMES[0].replace(' ', '-')}-seed3.gif"
    for sample in video["samples"]:
        assert set(sample["judged"]) == {"shape", "colour", "direction"}
        assert sample["right"] == (tuple(sample["judged"].values()) == video_class_parts(sample["class_id"]))
        assert iio.imread(out / sample["file"], index=None).shape == (FRAMES, 16, 16, 3)  # animated: every frame
    assert json.loads((out / "manifest.json").read_text()) == manifest
    text = (out / "index.html").read_text(encoding="utf-8")
    assert all(f'<img src="{sample["file"]}"' in text for sample in video["samples"])
    assert "every moving-shapes prompt" in text and "judge_moving_shapes" in text
    _check_forwards(tiny_video_checkpoints, VIDEO_PARADIGMS, video["paradigms"])
    _check_page(out, manifest)


def test_absent_video_is_skipped_by_default_and_an_error_when_asked_for(tiny_video_checkpoints, tmp_path, one_torch_thread):
    none = run_demo(paradigms=[], audio_checkpoints=None, video_checkpoints=tmp_path / "nothing", shape_checkpoints=None,
                    out_dir=tmp_path / "b")
    assert none["video"] == {"samples": [], "paradigms": {}, "sampling": {"guidance_scale": 2.0, "temperature": 0.7},
                             "skipped": {p: f"no pipeline in {tmp_path / 'nothing' / p}" for p in VIDEO_PARADIGMS}}
    assert "next-frame: skipped, no pipeline in" in (tmp_path / "b" / "index.html").read_text()
    partial = tmp_path / "partial-video"
    partial.mkdir()
    (partial / "next-frame").symlink_to(tiny_video_checkpoints / "next-frame", target_is_directory=True)
    with pytest.raises(FileNotFoundError, match=r"no shipped video pipeline for \['next-token'\].*--video-checkpoints"):
        run_demo(paradigms=[], video_checkpoints=partial, video_paradigms=["next-token"], out_dir=tmp_path / "c")
    with pytest.raises(ValueError, match="unknown video paradigm"):
        run_demo(paradigms=[], video_checkpoints=partial, video_paradigms=["next-scale"], out_dir=tmp_path / "c")
    with pytest.raises(ValueError, match="needs video_checkpoints"):
        run_demo(paradigms=[], video_checkpoints=None, video_paradigms=["next-frame"], out_dir=tmp_path / "c")
    assert not (tmp_path / "c").exists()  # refused before anything was written


def test_demo_command_reports_video_adherence_skips_an_absent_one_and_refuses_a_missing_one(
        tiny_checkpoints, tiny_video_checkpoints, tmp_path, capsys, one_torch_thread):
    partial = tmp_path / "partial-video"  # next-frame shipped, next-token not (yet)
    partial.mkdir()
    (partial / "next-frame").symlink_to(tiny_video_checkpoints / "next-frame", target_is_directory=True)
    assert main(["demo", "--checkpoints", str(tiny_checkpoints), "--paradigm", "next-token", "--out", str(tmp_path / "o"),
                 "--audio-checkpoints", str(tmp_path / "no-tones"), "--video-checkpoints", str(partial),
                 "--shape-checkpoints", str(tmp_path / "no-shapes")]) == 0
    out = capsys.readouterr().out
    assert f"video/next-frame: {NUM_VIDEO_CLASSES} samples, prompt adherence" in out and f"{NUM_VIDEO_CLASSES} GIFs" in out
    assert f"video/next-token: skipped, no pipeline in {partial / 'next-token'}" in out
    manifest = json.loads((tmp_path / "o" / "manifest.json").read_text())
    assert list(manifest["video"]["paradigms"]) == ["next-frame"] and len(manifest["video"]["samples"]) == NUM_VIDEO_CLASSES
    assert manifest["video"]["skipped"] == {"next-token": f"no pipeline in {partial / 'next-token'}"}
    assert "next-token: skipped, no pipeline in" in (tmp_path / "o" / "index.html").read_text()
    _check_page(tmp_path / "o", manifest)
    assert main(["demo", "--checkpoints", str(tiny_checkpoints), "--out", str(tmp_path / "p"),
                 "--video-checkpoints", str(partial), "--video-paradigm", "next-token"]) == 2
    assert "no shipped video pipeline for ['next-token']" in capsys.readouterr().err
    assert not (tmp_path / "p").exists()


def test_demo_writes_a_mesh_and_a_preview_per_shape_judged_for_its_primitive(tiny_shape_checkpoints, tmp_path, one_torch_thread):
    out = tmp_path / "demo"
    manifest = run_demo(paradigms=[], audio_checkpoints=None, video_checkpoints=None, shape_checkpoints=tiny_shape_checkpoints,
                        out_dir=out, samples_per_prompt=2, seed=3)
    shapes = manifest["shapes"]
    assert set(shapes["paradigms"]) == set(SHAPE_PARADIGMS) and shapes["skipped"] == {}
    assert shapes["sampling"]["octree-token"] == {"guidance_scale": 2.0, "temperature": 0.5}  # what its config evaluates with
    assert len(shapes["samples"]) == 3 * NUM_SHAPE3D_CLASSES * 2 and manifest["samples"] == [] and manifest["video"]["samples"] == []
    for paradigm, info in shapes["paradigms"].items():
        rows = [s for s in shapes["samples"] if s["paradigm"] == paradigm]
        assert info["pipeline"] == SHAPE_PARADIGMS[paradigm] and info["num_samples"] == len(rows) == 2 * NUM_SHAPE3D_CLASSES
        assert info["num_right"] == sum(s["right"] for s in rows) and info["prompt_adherence"] == info["num_right"] / len(rows)
        assert info["resolution"] == SIDE and info["seconds_per_sample"] > 0
        assert [s["prompt"] for s in rows] == [name for name in SHAPE_NAMES for _ in range(2)]
        assert [s["seed"] for s in rows] == list(range(3, 3 + len(rows)))
        assert Image.open(out / "shapes" / f"grid-{paradigm}.png").size == (NUM_SHAPE3D_CLASSES * 256, 2 * 256)  # a column per prompt
    # by level: one forward per octree level; by token: one per node drawn (the mean tree, at most every cell of every
    # level); VAT: one per scale of its fixed pyramid
    level, token, vat = (shapes["paradigms"][p] for p in ("octree-level", "octree-token", "vat-next-scale"))
    assert level["gpt_forwards_per_sample"] == 3 and (vat["gpt_forwards_per_sample"], vat["positions_per_sample"]) == (3, 1 + 2 + 4)
    assert token["gpt_forwards_per_sample"] == token["positions_per_sample"] and 1 < token["positions_per_sample"] <= 1 + 8 + 64
    assert 1 < level["positions_per_sample"] <= 1 + 8 + 64
    first = shapes["samples"][0]
    assert set(first) >= {"file", "preview", "paradigm", "prompt", "class_id", "seed", "seconds", "judged", "right"}
    assert (first["file"], first["preview"]) == ("shapes/octree-level/000-a-sphere-seed3.ply", "shapes/octree-level/000-a-sphere-seed3.png")
    for sample in shapes["samples"]:
        assert set(sample["judged"]) == {"primitive"} and sample["judged"]["primitive"] in (*PRIMITIVES, None)
        assert sample["right"] == (sample["judged"]["primitive"] == PRIMITIVES[sample["class_id"]])
        mesh = trimesh.load(out / sample["file"], force="mesh")
        assert isinstance(mesh, trimesh.Trimesh) and (len(mesh.faces) == 0 or mesh.is_watertight)
        preview = Image.open(out / sample["preview"])
        assert preview.mode == "RGB" and preview.size == (256, 256)
    pipe = NextScalePipeline.from_pretrained(str(tiny_shape_checkpoints / "octree-level"))  # the judge read what was generated
    pipe.set_progress_bar_config(disable=True)
    again = pipe(prompt=SHAPE_NAMES[:1], generator=[torch.Generator().manual_seed(3)], output_type="voxels", **shapes["sampling"]["octree-level"])
    assert judge_primitives(torch.from_numpy(again.shapes)) == [first["judged"]["primitive"] or "none"]
    assert json.loads((out / "manifest.json").read_text()) == manifest
    text = (out / "index.html").read_text(encoding="utf-8")
    assert all(f'<a href="{s["file"]}" download><img src="{s["preview"]}"' in text for s in shapes["samples"])
    assert "every 3D primitives prompt" in text and "judge_primitives" in text and "octree-level 2 / 0.3" in text
    exact = {p: info for p, info in shapes["paradigms"].items() if p != "octree-token"}  # by token: a bound, the tree's own size
    _check_forwards(tiny_shape_checkpoints, SHAPE_PARADIGMS, exact)
    _check_page(out, manifest)


def test_absent_shapes_are_skipped_by_default_and_an_error_when_asked_for(tiny_shape_checkpoints, tmp_path, one_torch_thread):
    none = run_demo(paradigms=[], audio_checkpoints=None, video_checkpoints=None, shape_checkpoints=tmp_path / "nothing",
                    out_dir=tmp_path / "b")
    assert none["shapes"] == {"samples": [], "paradigms": {}, "sampling": SHAPE_SAMPLING,
                              "skipped": {p: f"no pipeline in {tmp_path / 'nothing' / p}" for p in SHAPE_PARADIGMS}}
    assert "vat-next-scale: skipped, no pipeline in" in (tmp_path / "b" / "index.html").read_text()
    partial = tmp_path / "partial-shapes"
    partial.mkdir()
    (partial / "octree-level").symlink_to(tiny_shape_checkpoints / "octree-level", target_is_directory=True)
    with pytest.raises(FileNotFoundError, match=r"no shipped shape pipeline for \['octree-token'\].*--shape-checkpoints"):
        run_demo(paradigms=[], shape_checkpoints=partial, shape_paradigms=["octree-token"], out_dir=tmp_path / "c")
    with pytest.raises(ValueError, match="unknown shape paradigm"):
        run_demo(paradigms=[], shape_checkpoints=partial, shape_paradigms=["next-scale"], out_dir=tmp_path / "c")
    with pytest.raises(ValueError, match="needs shape_checkpoints"):
        run_demo(paradigms=[], shape_checkpoints=None, shape_paradigms=["octree-level"], out_dir=tmp_path / "c")
    assert not (tmp_path / "c").exists()  # refused before anything was written


def test_demo_command_reports_shape_adherence_skips_an_absent_one_and_refuses_a_missing_one(
        tiny_checkpoints, tiny_shape_checkpoints, tmp_path, capsys, one_torch_thread):
    partial = tmp_path / "partial-shapes"  # octree-level shipped, the others not (yet)
    partial.mkdir()
    (partial / "octree-level").symlink_to(tiny_shape_checkpoints / "octree-level", target_is_directory=True)
    assert main(["demo", "--checkpoints", str(tiny_checkpoints), "--paradigm", "next-token", "--out", str(tmp_path / "o"),
                 "--audio-checkpoints", str(tmp_path / "no-tones"), "--video-checkpoints", str(tmp_path / "no-video"),
                 "--shape-checkpoints", str(partial)]) == 0
    out = capsys.readouterr().out
    assert f"shapes/octree-level: {NUM_SHAPE3D_CLASSES} samples, prompt adherence" in out
    assert f"{NUM_SHAPE3D_CLASSES} PLY meshes with previews" in out
    assert f"shapes/octree-token: skipped, no pipeline in {partial / 'octree-token'}" in out
    manifest = json.loads((tmp_path / "o" / "manifest.json").read_text())
    assert list(manifest["shapes"]["paradigms"]) == ["octree-level"] and len(manifest["shapes"]["samples"]) == NUM_SHAPE3D_CLASSES
    assert set(manifest["shapes"]["skipped"]) == {"octree-token", "vat-next-scale"}
    _check_page(tmp_path / "o", manifest)
    assert main(["demo", "--checkpoints", str(tiny_checkpoints), "--out", str(tmp_path / "p"),
                 "--shape-checkpoints", str(partial), "--shape-paradigm", "vat-next-scale"]) == 2
    assert "no shipped shape pipeline for ['vat-next-scale']" in capsys.readouterr().err
    assert not (tmp_path / "p").exists()


@pytest.mark.skipif(not (DEFAULT_CHECKPOINTS / "next-token" / "model_index.json").is_file(), reason="no shipped checkpoints")
def test_shipped_checkpoints_follow_their_prompts(tmp_path, one_torch_thread):
    """The repository's own demo: each paradigm's shipped pipeline draws what the prompts ask for."""
    manifest = run_demo(out_dir=tmp_path / "demo", audio_checkpoints=None, video_checkpoints=None, shape_checkpoints=None)
    for paradigm, info in manifest["paradigms"].items():
        assert info["prompt_adherence"] >= 0.8, (paradigm, info)
