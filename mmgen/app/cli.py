"""The ``mmgen`` command line."""

from __future__ import annotations

import argparse
import contextlib
import inspect
import json
import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mmgen.files import write_atomically
from mmgen.meshes import MESH_FORMATS

from .evaluate import EVAL_CARD_HEADING
from .shipped import (
    AUDIO_CHECKPOINTS,
    AUDIO_PARADIGMS,
    DEFAULT_CHECKPOINTS,
    SHAPE_CHECKPOINTS,
    SHAPE_PARADIGMS,
    VIDEO_CHECKPOINTS,
    VIDEO_PARADIGMS,
)

if TYPE_CHECKING:
    import torch

AUTO_DEVICE = "auto"  # --device default, resolved when parsed: `--help` then needs no torch


def _demo(args: argparse.Namespace) -> int:
    """Every shapes, tones, moving-shapes and 3D primitives prompt with each paradigm's shipped checkpoint: PNGs, grids,
    WAVs, GIFs, PLY meshes with previews, manifest.json and index.html."""
    from .demo import run_demo

    start = time.perf_counter()
    with _quiet_loading():  # the demo prints a summary
        manifest = run_demo(checkpoints=args.checkpoints, out_dir=args.out, samples_per_prompt=args.samples_per_prompt,
                            seed=args.seed, overwrite=args.overwrite, paradigms=args.paradigm,
                            audio_checkpoints=args.audio_checkpoints, audio_paradigms=args.audio_paradigm,
                            video_checkpoints=args.video_checkpoints, video_paradigms=args.video_paradigm,
                            shape_checkpoints=args.shape_checkpoints, shape_paradigms=args.shape_paradigm)
    audio, video, shapes = manifest["audio"], manifest["video"], manifest["shapes"]
    rows = [*manifest["paradigms"].items(), *((f"tones/{p}", info) for p, info in audio["paradigms"].items()),
            *((f"video/{p}", info) for p, info in video["paradigms"].items()),
            *((f"shapes/{p}", info) for p, info in shapes["paradigms"].items())]
    width = max((len(name) for name, _ in rows), default=0)
    for paradigm, info in rows:
        print(f"{paradigm:>{width}}: {info['num_samples']} samples, prompt adherence {info['prompt_adherence']:.0%}, "
              f"{info['seconds_per_sample'] * 1000:.0f} ms/sample")
    for name, folder, prompts, part, root in (("audio", "tones", "tones", audio, args.audio_checkpoints),
                                              ("video", "video", "moving-shapes", video, args.video_checkpoints),
                                              ("shape", "shapes", "primitives", shapes, args.shape_checkpoints)):
        if part["skipped"] and not part["paradigms"]:
            print(f"{name} section skipped: no {prompts} pipelines in {root} (pass --{name}-checkpoints DIR)")
        else:
            for paradigm, why in part["skipped"].items():
                print(f"{folder}/{paradigm}: skipped, {why}")
    print(f"wrote {len(manifest['samples'])} PNGs, grids, {len(audio['samples'])} WAVs with spectrograms, "
          f"{len(video['samples'])} GIFs with grids, {len(shapes['samples'])} PLY meshes with previews and grids, "
          f"manifest.json and index.html to {args.out} in {time.perf_counter() - start:.1f} s")
    return 0


def _train(args: argparse.Namespace) -> int:
    """Train what a YAML config describes (a tokenizer or a generator pipeline) with accelerate.

    Everything that can be checked without building a model (the config, the overrides, the output folder, the
    checkpoint to resume from) is checked first, so a typo fails in a second, not after the set-up.
    """
    from .training import (
        Trainer,
        TrainingInterrupted,
        check_run_start,
        load_config,
        parse_override,
    )

    overrides = dict(parse_override(text) for text in args.set)
    if args.output_dir:
        overrides["output_dir"] = str(args.output_dir)
    cfg = load_config(args.config, overrides=overrides)
    check_run_start(cfg, resume=args.resume)
    try:
        report = Trainer(cfg, config_path=str(args.config)).fit(resume=args.resume, max_steps=args.max_steps)
    except TrainingInterrupted as stop:
        print(f"mmgen train: {stop}", file=sys.stderr)
        return 130
    if report.get("already_finished"):
        print(f"mmgen train: the run in {cfg.output_dir} already finished at step {report['steps']} (eval.json); nothing "
              "to do. Train longer with --set optim.steps=N, or start a new run with --output-dir")
    elif "stopped_at" in report:
        print(f"mmgen train: stopped at step {report['stopped_at']} of {cfg.optim.steps} (--max-steps); saved checkpoint "
              f"{report['checkpoint']}; continue with --resume latest")
    elif "eval" in report:
        print(json.dumps(report["eval"], indent=2, default=float))
    return 0


MANIFEST = "manifest.json"
VIDEO_FORMATS = ("gif", "mp4")
VIDEO_FPS = 8  # frames per second of written videos: 9 frames of moving shapes play for about a second


@contextlib.contextmanager
def _quiet_loading() -> Iterator[None]:
    """No "Loading pipeline components" bars or loading warnings from diffusers and transformers: a command prints its own."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    libraries = (diffusers_logging, transformers_logging)
    before = [(library.get_verbosity(), library.is_progress_bar_enabled()) for library in libraries]
    for library in libraries:
        library.set_verbosity_error()
        library.disable_progress_bar()
    try:
        yield
    finally:
        for library, (verbosity, bar) in zip(libraries, before):
            library.set_verbosity(verbosity)
            if bar:
                library.enable_progress_bar()


def _default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _device(text: str) -> str:
    """argparse type: a torch device name such as cpu, cuda or cuda:1; ``auto`` is cuda if available, else cpu."""
    import torch

    if text == AUTO_DEVICE:
        return _default_device()
    try:
        torch.device(text)
    except RuntimeError:
        raise argparse.ArgumentTypeError(f"expected a torch device such as cpu, cuda or cuda:1, got {text!r}") from None
    return text


def _positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


# ---- tokenize ------------------------------------------------------------------------------------------
def _tokens_folder(args: argparse.Namespace, cfg: Any) -> Path:
    """--output-dir, else the config's data.tokens, else <output_dir>/tokens; refused if it holds files."""
    if args.output_dir:
        folder, origin = Path(args.output_dir), "--output-dir"
    elif cfg.data.tokens:
        folder, origin = Path(cfg.data.tokens), "data.tokens of the config"
    else:
        folder, origin = Path(cfg.output_dir) / "tokens", "output_dir/tokens of the config"
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise FileExistsError(f"{str(folder)!r} ({origin}) exists and is not an empty folder; "
                              "choose a new one with --output-dir or delete it first")
    return folder


def _token_meta(cfg: Any, pipe: Any, tokens: torch.Tensor) -> dict[str, Any]:
    """What training checks and needs besides the tokens: the paradigm, its tokenizer, the data, latent statistics."""
    data = cfg.data
    meta: dict[str, Any] = {
        "pipeline": cfg.pipeline, "pipeline_args": cfg.pipeline_args, "tokenizer": cfg.tokenizer, "condition": cfg.condition,
        "data": {"dataset": data.dataset, "path": data.path, "image_size": data.image_size, "num_items": data.num_items, "seed": data.seed},
        "token_shape": list(tokens.shape[1:]), "token_dtype": str(tokens.dtype).removeprefix("torch."),
    }
    if getattr(pipe.head, "latent_mean", None) is not None:  # continuous tokens: the statistics they are normalised by
        meta["latent_mean"] = pipe.head.latent_mean.cpu().tolist()
        meta["latent_std"] = pipe.head.latent_std.cpu().tolist()
    return meta


def _tokenize(args: argparse.Namespace) -> int:
    """Encode a generator config's dataset once into token shards that `train` reads through data.tokens."""
    import torch

    from .training import build_pipeline, encode_dataset, load_config
    from .training.data import build_source, save_token_shards
    from .training.trainer import fit_latent_statistics

    cfg = load_config(args.config)
    if cfg.kind != "generator":
        raise ValueError(f"{args.config}: kind is {cfg.kind!r}; tokenize needs a generator config (kind: generator)")
    folder = _tokens_folder(args, cfg)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    start = time.perf_counter()
    pipe = build_pipeline(cfg).to(args.device)
    source = build_source(cfg.data)
    fit_latent_statistics(pipe, source)  # continuous tokens are stored normalised by the data's statistics
    tokens, labels = encode_dataset(pipe, source, batch_size=args.batch_size)
    shards = save_token_shards(folder, tokens, labels, shard_size=args.shard_size, meta=_token_meta(cfg, pipe, tokens))
    seconds = time.perf_counter() - start
    print(f"mmgen tokenize: {tokens.shape[0]} items ({cfg.pipeline}, tokens {tuple(tokens.shape[1:])} {tokens.dtype}) "
          f"in {len(shards)} shard(s) written to {folder} ({seconds:.1f} s)")
    print(f"train from them with `data: {{tokens: {folder}}}` in the run config")
    return 0


# ---- generate ------------------------------------------------------------------------------------------
def _pipeline_source(text: str) -> str:
    """A local folder, or a hub repo id ("owner/name"); a path-like name that does not exist is an error."""
    path = Path(text).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ValueError(f"pipeline {text!r} is a file; expected a saved pipeline folder or a hub repo id")
        return str(path)
    if text.startswith((".", "/", "~")) or text.count("/") != 1:
        raise FileNotFoundError(f"pipeline folder {text!r} does not exist (a hub repo id looks like owner/name)")
    return text


def _load_pipeline(source: str, *, device: str) -> Any:
    """``ARPipeline.from_pretrained`` (it builds the saved class) on ``device``, quietly and without progress bars;
    a hub failure names both readings of ``source``."""
    import pipelines

    try:
        with _quiet_loading():
            pipe = pipelines.ARPipeline.from_pretrained(source).to(device)
    except OSError as err:
        if Path(source).is_dir():
            raise
        raise FileNotFoundError(f"{source!r} is not a local folder, and loading it as a hub repo id failed: {err}") from err
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:40] or "x"


def _sample_plan(args: argparse.Namespace, *, suffix: str) -> list[dict[str, Any]]:
    """One entry per sample: its condition, seed and file name; samples of one condition are consecutive."""
    if args.prompt:
        conditions = [{"prompt": p, "class_id": None} for p in args.prompt]
    elif args.class_label:
        conditions = [{"prompt": None, "class_id": c} for c in args.class_label]
    else:
        conditions = [{"prompt": None, "class_id": None}]
    plan = []
    for cond in conditions:
        for _ in range(args.num_samples):
            index, seed = len(plan), args.seed + len(plan)
            name = _slug(cond["prompt"]) if cond["prompt"] else f"class-{cond['class_id']}" if cond["class_id"] is not None else "unconditional"
            plan.append({**cond, "seed": seed, "file": f"{index:04d}-{name}-seed{seed}{suffix}"})
    return plan


def _check_targets(out: Path, plan: list[dict[str, Any]], *, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"--out {str(out)!r} is a file, not a folder")
    files = [name for item in plan for name in (item["file"], item.get("preview")) if name]  # shapes: mesh + preview
    existing = [name for name in [MANIFEST, *files] if (out / name).exists()]
    if existing and not overwrite:
        raise FileExistsError(f"--out {str(out)!r} already holds {existing[:3]}{' ...' if len(existing) > 3 else ''}; "
                              "pass --overwrite to replace them, or choose another folder")


def _sampling_options(pipe: Any, args: argparse.Namespace) -> dict[str, Any]:
    """Sampling options (``_add_sampling_arguments``) for the pipeline's __call__; --num-flow-steps only where the
    pipeline draws latents with a flow head."""
    from mmgen.tokens import ContinuousContent

    options: dict[str, Any] = {"temperature": args.temperature, "top_k": args.top_k, "top_p": args.top_p}
    if args.num_flow_steps is not None:
        flow = isinstance(pipe.head.content, ContinuousContent)
        if not flow or "num_flow_steps" not in inspect.signature(pipe.__call__).parameters:
            raise ValueError(f"--num-flow-steps: this {type(pipe).__name__} has no flow head ({type(pipe.head).__name__})")
        options["num_flow_steps"] = args.num_flow_steps
    return options


def _resolve_classes(pipe: Any, plan: list[dict[str, Any]]) -> None:
    """Fill each image's class id (prompts map to class names); checks every condition before anything is generated."""
    prompts = [item["prompt"] for item in plan if item["prompt"] is not None]
    labels = [item["class_id"] for item in plan if item["class_id"] is not None]
    if not prompts and not labels:
        return
    cond = pipe.conditioner.condition(prompt=prompts or None, class_labels=labels or None,
                                      class_names=pipe.config.get("class_names"))
    for item, class_id in zip(plan, cond.class_ids):
        item["class_id"] = class_id


def _condition_kwargs(batch: list[dict[str, Any]]) -> dict[str, Any]:
    if batch[0]["prompt"] is not None:
        return {"prompt": [item["prompt"] for item in batch]}
    if batch[0]["class_id"] is not None:
        return {"class_labels": [item["class_id"] for item in batch]}
    return {"num_samples_per_prompt": len(batch)}


def _write_samples(pipe: Any, batch: list[dict[str, Any]], out: Path, *, generators: list[torch.Generator],
                   options: dict[str, Any]) -> None:
    """Generate one batch and write each sample to its file: a PNG per image, a 16-bit WAV per audio clip, a GIF
    or MP4 per video, a mesh (PLY, OBJ or GLB) and its PNG preview per shape."""
    if pipe.tokenizer.modality == "audio":
        import soundfile

        result = pipe(**_condition_kwargs(batch), generator=generators, output_type="np", **options)
        out.mkdir(parents=True, exist_ok=True)
        for item, clip in zip(batch, result.audios):
            write_atomically(out / item["file"], lambda tmp, clip=clip: soundfile.write(str(tmp), clip, result.sample_rate,
                                                                                         subtype="PCM_16", format="WAV"))
        return
    if pipe.tokenizer.modality == "video":
        from mmgen.files import write_video

        videos = pipe(**_condition_kwargs(batch), generator=generators, output_type="np", **options).videos
        out.mkdir(parents=True, exist_ok=True)
        for item, frames in zip(batch, videos):
            write_video(out / item["file"], frames, fps=VIDEO_FPS)
        return
    if pipe.tokenizer.modality == "shape":
        from mmgen.meshes import render_preview, write_mesh

        meshes = pipe(**_condition_kwargs(batch), generator=generators, output_type="mesh", **options).shapes
        out.mkdir(parents=True, exist_ok=True)
        for item, mesh in zip(batch, meshes):
            write_mesh(out / item["file"], mesh, overwrite=True)  # _check_targets refused existing files already
            preview = render_preview(mesh)
            write_atomically(out / item["preview"], lambda tmp, preview=preview: preview.save(tmp, format="PNG"))
        return
    images = pipe(**_condition_kwargs(batch), generator=generators, output_type="pil", **options).images
    out.mkdir(parents=True, exist_ok=True)  # only once something was generated: a failed run leaves no folder
    for item, image in zip(batch, images):
        write_atomically(out / item["file"], lambda tmp, image=image: image.save(tmp, format="PNG"))


def _generate(args: argparse.Namespace) -> int:
    """Samples from a saved pipeline, one PNG (images), WAV (audio), GIF / MP4 (video) or mesh + PNG preview (shapes)
    per sample (seed = --seed + index) and a manifest.json."""
    import torch

    source = _pipeline_source(args.pipeline)
    out = Path(args.out)
    _check_targets(out, [], overwrite=args.overwrite)
    pipe = _load_pipeline(source, device=args.device)
    modality = pipe.tokenizer.modality
    suffix = {"audio": ".wav", "video": f".{args.video_format}", "shape": f".{args.mesh_format}"}.get(modality, ".png")
    plan = _sample_plan(args, suffix=suffix)
    if modality == "shape":
        for item in plan:
            item["preview"] = str(Path(item["file"]).with_suffix(".png"))
    _check_targets(out, plan, overwrite=args.overwrite)
    options = {"guidance_scale": args.guidance_scale, **_sampling_options(pipe, args)}
    _resolve_classes(pipe, plan)
    for first in range(0, len(plan), args.batch_size):
        batch = plan[first:first + args.batch_size]
        generators = [torch.Generator().manual_seed(item["seed"]) for item in batch]
        start = time.perf_counter()
        _write_samples(pipe, batch, out, generators=generators, options=options)
        seconds = (time.perf_counter() - start) / len(batch)
        for item in batch:
            item["seconds"] = seconds
    manifest = {"pipeline": source, "pipeline_class": type(pipe).__name__, "modality": modality,
                "options": options, "samples": plan}
    write_atomically(out / MANIFEST, lambda tmp: tmp.write_text(json.dumps(manifest, indent=2) + "\n"))
    total = sum(item["seconds"] for item in plan)
    print(f"mmgen generate: {len(plan)} sample(s) from {source} written to {out} ({total:.2f} s); see {out / MANIFEST}")
    return 0


# ---- info ----------------------------------------------------------------------------------------------
def _eval(args: argparse.Namespace) -> int:
    """Adherence, precision / recall / density / coverage, Fréchet distance and spreads per guidance scale."""
    from mmgen.files import write_text_atomically

    from .evaluate import quality_table, sweep_guidance

    source = _pipeline_source(args.pipeline)
    if args.model_card and not Path(source).is_dir():
        raise ValueError(f"--model-card writes into a local pipeline folder; {source!r} is a hub repo id")
    if args.out.exists() and not args.overwrite:
        raise FileExistsError(f"--out {str(args.out)!r} exists; pass --overwrite to replace it")
    pipe = _load_pipeline(source, device=args.device)
    guided = pipe.config.get("null_condition_trained", False)
    scales = args.guidance or ([1.0, 1.5, 2.0, 3.0, 4.0] if guided else [1.0])
    options = _sampling_options(pipe, args)
    rows = sweep_guidance(pipe, guidance_scales=scales, samples_per_class=args.samples_per_class, seed=args.seed,
                          batch_size=args.batch_size, **options)
    table = quality_table(rows)
    print(table)
    command = f"mmgen eval {args.pipeline} --samples-per-class {args.samples_per_class} --seed {args.seed} " + \
        "--guidance " + " ".join(f"{g:g}" for g in scales) + "".join(f" --{k.replace('_', '-')} {v:g}" for k, v in options.items())
    report = {"pipeline": source, "command": command, "samples_per_class": args.samples_per_class, "seed": args.seed,
              "sampling": options, "rows": rows}
    write_text_atomically(args.out, json.dumps(report, indent=2, default=float))
    print(f"wrote {args.out}")
    if args.model_card:
        body = (f"{args.samples_per_class} samples per class against as many held-out data items of each class, seeds from "
                f"{args.seed}; precision / recall / density / coverage (k = 5) and Fréchet distance in the judge's attribute "
                "space; spread: the samples' standard deviation within a class over the data's (1 = as varied).\n\n"
                f"{table}\n\n```bash\n{command}\n```")
        from mmgen.model_card import set_model_card_section

        print(f"updated {set_model_card_section(source, EVAL_CARD_HEADING, body)}")
    return 0


def _info(args: argparse.Namespace) -> int:
    """Describe a pipeline, model, training run, checkpoint or token folder from headers only (nothing unpickled)."""
    from .inspect_checkpoint import describe, format_description

    info = describe(args.path)
    print(json.dumps(info, indent=2) if args.json else format_description(info))
    return 0


# ---- upgrade -------------------------------------------------------------------------------------------
def _upgrade(args: argparse.Namespace) -> int:
    """Convert a pipeline folder saved by an older mmgen into the current layout (conditioner and head components)."""
    from .upgrade import upgrade_pipeline

    start = time.perf_counter()
    new = upgrade_pipeline(args.old, args.new, overwrite=args.overwrite)
    print(f"mmgen upgrade: {args.old} converted to {new} ({time.perf_counter() - start:.1f} s); "
          f"generate from it with `mmgen generate {new}`")
    return 0


# ---- convert -------------------------------------------------------------------------------------------
def _convert(args: argparse.Namespace) -> int:
    """Write another project's published weights as an mmgen folder."""
    from .convert import convert

    start = time.perf_counter()
    dst = convert(args.source, args.src, args.dst, allow_pickle=args.allow_pickle, overwrite=args.overwrite)
    print(f"mmgen convert: {args.src} ({args.source}) written to {dst} ({time.perf_counter() - start:.1f} s)")
    return 0


# ---- parser --------------------------------------------------------------------------------------------
def _command(commands: Any, name: str, *, summary: str, description: str, example: str) -> argparse.ArgumentParser:
    return commands.add_parser(name, help=summary, description=description, epilog=f"example:\n  {example}",
                               formatter_class=argparse.RawDescriptionHelpFormatter)


def _add_tokenize(commands: Any) -> None:
    cmd = _command(commands, "tokenize", summary="pre-extract a generator config's dataset into token shards",
                   description="Encode every training image of a generator run config (kind: generator) with its tokenizer, "
                               "once, into safetensors shards. A run config with `data: {tokens: DIR}` then trains from them "
                               "without touching the images.",
                   example="mmgen tokenize configs/shapes32/next-token.yaml --output-dir outputs/tokens-shapes32")
    cmd.add_argument("config", type=Path, help="YAML run config with kind: generator")
    cmd.add_argument("--output-dir", type=Path, default=None,
                     help="empty or new folder for the shards (default: the config's data.tokens, else <output_dir>/tokens)")
    cmd.add_argument("--shard-size", type=_positive_int, default=16384, help="items per shard file (default 16384)")
    cmd.add_argument("--batch-size", type=_positive_int, default=256, help="samples encoded at once (default 256)")
    _add_device_argument(cmd)
    cmd.set_defaults(run=_tokenize)


def _add_generate(commands: Any) -> None:
    cmd = _command(commands, "generate", summary="generate images (PNG), audio (WAV), video (GIF, MP4) or shapes (PLY, OBJ, GLB) "
                                                  "with a saved pipeline (folder or hub repo)",
                   description="Load a pipeline saved with save_pretrained (a local folder or a hub repo id) and write one "
                               "PNG (images), 16-bit WAV (audio), GIF / MP4 (video, --video-format) or mesh (shapes, "
                               "--mesh-format) with a PNG preview beside it per sample, plus manifest.json (file, preview "
                               "of a shape, prompt, class id, seed, seconds) into --out. "
                               "Sample i is drawn with seed --seed + i, so a rerun reproduces it exactly. Without "
                               "--prompt or --class-label the samples are unconditional.",
                   example='mmgen generate outputs/shapes32/next-token/pipeline --prompt "a red circle" --num-samples 4 --guidance-scale 3')
    cmd.add_argument("pipeline", help="saved pipeline folder (with model_index.json) or hub repo id owner/name")
    which = cmd.add_mutually_exclusive_group()
    which.add_argument("--prompt", action="append", default=None, help="a prompt (repeatable); class models match it to their class names")
    which.add_argument("--class-label", action="append", type=int, default=None, help="a class id (repeatable)")
    cmd.add_argument("--num-samples", type=_positive_int, default=1, help="samples per prompt / class label (default 1)")
    cmd.add_argument("--seed", type=int, default=0, help="seed of the first sample; sample i uses seed + i (default 0)")
    cmd.add_argument("--guidance-scale", type=float, default=1.0,
                     help="classifier-free guidance; != 1 needs a pipeline trained with a null condition (default 1.0)")
    _add_sampling_arguments(cmd)
    cmd.add_argument("--batch-size", type=_positive_int, default=16, help="samples generated at once (default 16)")
    cmd.add_argument("--video-format", choices=VIDEO_FORMATS, default="gif",
                     help=f"file format of generated videos (default gif; mp4 is H.264 at {VIDEO_FPS} frames/s)")
    cmd.add_argument("--mesh-format", choices=MESH_FORMATS, default="ply",
                     help="file format of generated shapes, closed meshes in [-1, 1] with z up (default ply)")
    cmd.add_argument("--out", type=Path, default=Path("mmgen-samples"), help="output folder (default ./mmgen-samples)")
    cmd.add_argument("--overwrite", action="store_true", help="replace samples / manifest already in --out")
    _add_device_argument(cmd)
    cmd.set_defaults(run=_generate)


def _add_device_argument(cmd: argparse.ArgumentParser) -> None:
    cmd.add_argument("--device", type=_device, default=AUTO_DEVICE,
                     help="torch device such as cpu or cuda:1 (default auto: cuda if available, else cpu)")


def _add_sampling_arguments(cmd: argparse.ArgumentParser) -> None:
    """The sampling options ``generate`` and ``eval`` share (read back by ``_sampling_options``)."""
    cmd.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (default 1.0)")
    cmd.add_argument("--top-k", type=int, default=0, help="keep the k likeliest tokens, 0 = all (default 0)")
    cmd.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (default 1.0)")
    cmd.add_argument("--num-flow-steps", type=_positive_int, default=None, help="flow steps per entity (NextXPipeline with a flow head)")


def _add_eval(commands: Any) -> None:
    cmd = _command(commands, "eval", summary="adherence, diversity and distribution figures of a pipeline, per guidance scale",
                   description="Generate --samples-per-class samples of every class of the built-in set the pipeline learnt "
                               "(shapes or tones), judge them, and compare them with as many held-out data items: prompt "
                               "adherence, precision / recall / density / coverage and Fréchet distance on the judge's "
                               "attributes (and the shipped shapes feature net), and the spread of what a class leaves "
                               "free. One row per --guidance value, printed as a table and written to --out.",
                   example="mmgen eval checkpoints/shapes32/next-scale --guidance 1 1.5 2 3 4")
    cmd.add_argument("pipeline", help="saved pipeline folder (with model_index.json) or hub repo id owner/name")
    cmd.add_argument("--guidance", type=float, nargs="+", default=None, metavar="SCALE",
                     help="guidance scales to sweep (default 1 1.5 2 3 4, or 1 for a pipeline without a null condition)")
    cmd.add_argument("--samples-per-class", type=_positive_int, default=10, help="samples per class (default 10)")
    cmd.add_argument("--seed", type=int, default=0, help="seed of the first sample (default 0)")
    _add_sampling_arguments(cmd)
    cmd.add_argument("--batch-size", type=_positive_int, default=None, help="samples generated at once (default: 2 per class of shapes, 1 of tones)")
    cmd.add_argument("--out", type=Path, default=Path("eval.json"), help="where the figures go (default ./eval.json)")
    cmd.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    cmd.add_argument("--model-card", action="store_true",
                     help=f"also put the table into the pipeline folder's README.md (section '{EVAL_CARD_HEADING}')")
    _add_device_argument(cmd)
    cmd.set_defaults(run=_eval)


def _add_info(commands: Any) -> None:
    cmd = _command(commands, "info", summary="show what a checkpoint folder holds (nothing is unpickled)",
                   description="Describe a saved pipeline (model_index.json), a single model (config.json + safetensors), "
                               "a training output folder (checkpoints/, eval.json), one checkpoint or a token folder: "
                               "classes, configs, parameter counts, dtypes and sizes, read from JSON files and safetensors "
                               "headers only. Pickle files (.bin, .pt, .pkl) are listed, never loaded.",
                   example="mmgen info outputs/shapes32/next-token/pipeline --json")
    cmd.add_argument("path", type=Path, help="the folder to describe")
    cmd.add_argument("--json", action="store_true", help="print machine-readable JSON")
    cmd.set_defaults(run=_info)


def _add_upgrade(commands: Any) -> None:
    cmd = _command(commands, "upgrade", summary="convert a pipeline saved by an older mmgen to the current format",
                   description="Pipelines saved before the engine refactor kept the class / text embeddings and the output "
                               "layers inside the GPT. Write the same weights into a new folder with separate conditioner "
                               "and head components, which this mmgen loads; a class-conditional model generates the "
                               "same images as before. OLD is left unchanged.",
                   example="mmgen upgrade outputs/shapes32/next-token/pipeline outputs/shapes32/next-token/pipeline-v2")
    cmd.add_argument("old", type=Path, help="pipeline folder saved by an older mmgen (model_index.json without a conditioner)")
    cmd.add_argument("new", type=Path, help="folder to write the converted pipeline to (must not exist unless --overwrite)")
    cmd.add_argument("--overwrite", action="store_true", help="replace NEW if it exists")
    cmd.set_defaults(run=_upgrade)


def _add_convert(commands: Any) -> None:
    from .convert import SOURCES

    sources = ", ".join(f"{name} ({spec.layout} -> {spec.builds})" for name, spec in SOURCES.items())
    cmd = _command(commands, "convert", summary="convert another project's published weights into an mmgen folder",
                   description=f"Read a published checkpoint (a folder with config.json and model.safetensors, or a weights "
                               f"file with config.json beside it) and write the same model as an mmgen folder with a "
                               f"model card naming the source. Sources: {sources}. Pickle checkpoints are refused "
                               f"unless --allow-pickle. Keys or shapes that do not fit are listed in the error.",
                   example="mmgen convert --from encodec encodec_24khz/ outputs/encodec-24khz")
    cmd.add_argument("--from", dest="source", required=True, choices=sorted(SOURCES), help="the project the weights come from")
    cmd.add_argument("src", type=Path, help="the published folder (config.json + weights) or weights file")
    cmd.add_argument("dst", type=Path, help="folder to write (must not exist unless --overwrite)")
    cmd.add_argument("--allow-pickle", action="store_true",
                     help="load a pickle checkpoint (.bin/.pt/.pth/.th/.ckpt); unpickling can run code from the file")
    cmd.add_argument("--overwrite", action="store_true", help="replace DST if it exists")
    cmd.set_defaults(run=_convert)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mmgen", description="Autoregressive multimodal generation on one shared GPT backbone.")
    commands = parser.add_subparsers(dest="command", required=True)
    demo = _command(commands, "demo", summary="generate the shapes, tones, moving-shapes and 3D primitives prompts with every "
                                              "paradigm's shipped checkpoint",
                    description="Load the tiny shipped pipelines (next-token, next-scale, next-X; checkpoints/shapes32), generate "
                                "every shapes prompt with each, judge the pixels, and write one PNG per sample, a grid per "
                                "paradigm, manifest.json and index.html. Then the same for the tones prompts with the audio "
                                "pipelines in checkpoints/tones (next-token-rvq, next-scale, next-token-single; skipped when "
                                "absent): one WAV and spectrogram PNG per clip under tones/. Then the moving-shapes prompts "
                                "with the video pipelines in checkpoints/moving_shapes (next-token, next-frame; skipped when "
                                "absent): one animated GIF per clip and a grid GIF per paradigm under video/. Then the 3D "
                                "primitives prompts with the shape pipelines in checkpoints/primitives (octree-level, "
                                "octree-token, vat-next-scale; skipped when absent): one PLY mesh and PNG preview per shape and "
                                "a grid of previews per paradigm under shapes/. No downloads.",
                    example="mmgen demo --out mmgen-demo")
    demo.add_argument("--out", type=Path, default=Path("mmgen-demo"), help="output folder (default ./mmgen-demo)")
    demo.add_argument("--overwrite", action="store_true", help="replace the contents of a non-empty --out")
    demo.add_argument("--samples-per-prompt", type=_positive_int, default=1, help="samples per prompt and paradigm (default 1)")
    demo.add_argument("--seed", type=int, default=0, help="seed of the first sample; sample i uses seed + i (default 0)")
    demo.add_argument("--paradigm", action="append", choices=["next-token", "next-scale", "next-x"], default=None,
                      help="only this paradigm (repeatable; default: all three)")
    demo.add_argument("--checkpoints", type=Path, default=DEFAULT_CHECKPOINTS,
                      help="folder with next-token/, next-scale/, next-x/ pipelines (default: the shipped ones)")
    demo.add_argument("--audio-checkpoints", type=Path, default=AUDIO_CHECKPOINTS,
                      help=f"folder with {'/, '.join(AUDIO_PARADIGMS)}/ tones pipelines (default: the shipped ones; "
                           "absent ones are skipped)")
    demo.add_argument("--audio-paradigm", action="append", choices=list(AUDIO_PARADIGMS), default=None,
                      help="only this audio paradigm, which must then exist (repeatable; default: every one present)")
    demo.add_argument("--video-checkpoints", type=Path, default=VIDEO_CHECKPOINTS,
                      help=f"folder with {'/, '.join(VIDEO_PARADIGMS)}/ moving-shapes pipelines (default: the shipped ones; "
                           "absent ones are skipped)")
    demo.add_argument("--video-paradigm", action="append", choices=list(VIDEO_PARADIGMS), default=None,
                      help="only this video paradigm, which must then exist (repeatable; default: every one present)")
    demo.add_argument("--shape-checkpoints", type=Path, default=SHAPE_CHECKPOINTS,
                      help=f"folder with {'/, '.join(SHAPE_PARADIGMS)}/ 3D primitives pipelines (default: the shipped ones; "
                           "absent ones are skipped)")
    demo.add_argument("--shape-paradigm", action="append", choices=list(SHAPE_PARADIGMS), default=None,
                      help="only this 3D shape paradigm, which must then exist (repeatable; default: every one present)")
    demo.set_defaults(run=_demo)
    train = _command(commands, "train", summary="train a tokenizer or a generator from a YAML config (accelerate)",
                     description="Train what a YAML run config describes; checkpoints, metrics.jsonl, eval.json and the "
                                 "exported model go to its output_dir.",
                     example="mmgen train configs/shapes32/next-token.yaml --resume latest")
    train.add_argument("config", type=Path, help="YAML run config, e.g. configs/shapes32/next-token.yaml")
    train.add_argument("--resume", default=None, help='"latest" or a checkpoint folder to continue from')
    train.add_argument("--output-dir", type=Path, default=None, help="where checkpoints, logs and the model go (overrides the config)")
    train.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config key, dotted for nested ones, the value read as YAML; repeatable "
                            "(--set optim.lr=1e-3 --set optim.steps=200)")
    train.add_argument("--max-steps", type=_positive_int, default=None, metavar="N",
                       help="stop at step N with a checkpoint; the schedule still follows optim.steps, so --resume "
                            "latest later continues exactly as if never stopped")
    train.set_defaults(run=_train)
    _add_tokenize(commands)
    _add_generate(commands)
    _add_eval(commands)
    _add_info(commands)
    _add_upgrade(commands)
    _add_convert(commands)
    return parser


def _drop_stdout() -> None:
    """Point stdout at devnull after its reader closed the pipe, so the interpreter's final flush fails no more (as the
    Python docs advise for SIGPIPE)."""
    import os

    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code = args.run(args)
        sys.stdout.flush()  # a reader that went away (`mmgen info DIR | head`) shows here at the latest
        return code
    except BrokenPipeError:
        _drop_stdout()
        return 1
    except (ValueError, TypeError, OSError, ImportError) as err:
        print(f"mmgen {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # `train` saves and says where; elsewhere nothing half-written is kept
        print(f"mmgen {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
