"""Speculative decoding vs plain decoding on the shipped next-token models, and the plain step vs transformers.

For the shapes-32 image model, the tones audio model and the octree model (CFG 3 or their card's, batch
1, one sample per prompt, each with its own seed) the script runs plain decoding and every draft source
at temperature 0 and 1, in one process, call by call in turn (so a slow spell of the machine hits every
source alike), and prints per source: target-GPT forwards per sample, the draft model's forwards, the
tokens one forward confirms (plain decoding's forwards / the source's), wall time per sample (median of
all calls) and the ratio plain / source (the median over calls of plain's time over the source's for the same
prompt and seed, run one after the other: the machine's speed drifts by tens of percent over seconds), and
whether the tokens equal plain decoding's (they must).

Each source runs twice: as a pipeline runs it by default, behind its :class:`~mmgen.draft_gate.DraftGate`
(drafting only while it gives more tokens per second than plain steps, as measured while decoding), and
"(every step)": asked for a draft at every step (``gated=False``), on a second copy of the pipeline so the
two do not share what their sources remember. The n-gram and recycling sources live on the pipeline, so
they start from what earlier samples taught them (as in a long-running service); each repeat draws new
seeds, so what they remember are other samples of the same prompts (at temperature 0 those are the same
greedy samples: a repeated prompt). "lookahead-cold" is a new n-gram source per sample, which retrieves
from the sample itself only. Forward counts are those of the last repeat (times: medians). The last table
is the plain step against transformers' ``generate`` on one converted Llama, fp32 and bf16, with mmgen's
step eager, compiled (``GPT.compile_decoding()`` and the head's) and compiled with frozen weights; then the
shipped image model's plain decoding eager vs compiled.

    python benchmarks/decoding.py --threads 1
    python benchmarks/decoding.py --threads 1 --quick     # 3 prompts, 1 repeat, no plain-step tables
"""

from __future__ import annotations

import argparse
import copy
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from mmgen import SamplingConfig
from mmgen.drafts import NGramDraft
from mmgen.programs import continue_tokens
from pipelines import NextTokenPipeline

ROOT = Path(__file__).resolve().parents[1]
MODELS = {  # name: (checkpoint, number of classes, draft checkpoint or None, guidance scale of its card)
    "shapes32 image (8x8 ids)": (ROOT / "checkpoints/shapes32/next-token", 10, ROOT / "checkpoints/shapes32/next-token-draft", 3.0),
    "tones audio (50 frames x 4 codebooks, delay)": (ROOT / "checkpoints/tones/next-token-rvq", 28, None, 3.0),
    "primitives octree by token (16^3)": (ROOT / "checkpoints/primitives/octree-token", 5, None, 2.0),
}
SOURCES = ("plain", "lookahead", "lookahead-cold", "recycling", "jacobi", "draft")
UNGATED = " (every step)"  # suffix of a run whose source is asked every step (gated=False)


def load(path: Path) -> NextTokenPipeline:
    pipe = NextTokenPipeline.from_pretrained(path)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def count_forwards(pipe: NextTokenPipeline) -> list[int]:
    calls: list[int] = []
    trunk = pipe.gpt.hidden_states

    def counted(x: torch.Tensor, **kwargs):
        calls.append(1)
        return trunk(x, **kwargs)

    pipe.gpt.hidden_states = counted
    return calls


def run_call(pipes, draft, c, temperature, decoding, seed, guidance=3.0) -> tuple[float, torch.Tensor, int, int]:
    """Wall seconds, tokens, target forwards and draft forwards of one call (``decoding`` may end in UNGATED).

    ``pipes``: one pipeline, or a pair (gated runs, ungated runs), so the two keep their own sources.
    """
    gated = not decoding.endswith(UNGATED)
    decoding = decoding.removesuffix(UNGATED)
    pipe = pipes if not isinstance(pipes, tuple) else pipes[0 if gated else 1]
    target_calls = count_forwards(pipe)
    draft_calls = count_forwards(draft) if draft is not None else []
    extra = {"draft_model": draft} if decoding == "draft" else {}
    if decoding != "plain":
        extra["gated"] = gated
    source = NGramDraft() if decoding == "lookahead-cold" else decoding  # cold: a new source, only the sample itself
    start = time.perf_counter()
    out = pipe(class_labels=[c], temperature=temperature, guidance_scale=guidance, output_type="tokens",
               generator=torch.Generator().manual_seed(seed + c), decoding=source, **extra).tokens
    seconds = time.perf_counter() - start
    del pipe.gpt.hidden_states  # the counting wrappers go: the class's method again
    if draft is not None:
        del draft.gpt.hidden_states
    return seconds, out, len(target_calls), len(draft_calls)


def run_source(pipes, draft, classes, temperature, decoding, seed, guidance=3.0) -> tuple[float, list[torch.Tensor], int, int]:
    """Wall seconds, tokens per prompt, target forwards and draft forwards for one pass over the prompts."""
    seconds, outs, forwards, draft_forwards = 0.0, [], 0, 0
    for c in classes:
        s, out, f, d = run_call(pipes, draft, c, temperature, decoding, seed, guidance)
        seconds, forwards, draft_forwards = seconds + s, forwards + f, draft_forwards + d
        outs.append(out)
    return seconds, outs, forwards, draft_forwards


def speculative_table(name: str, path: Path, num_classes: int, draft_path: Path | None, guidance: float, prompts: int,
                      repeats: int) -> None:
    pipe = load(path)
    pipes = (pipe, load(path))
    draft = load(draft_path) if draft_path is not None and draft_path.exists() else None
    classes = [round(i * num_classes / prompts) % num_classes for i in range(prompts)]
    sources = [s for s in SOURCES if s != "draft" or draft is not None]
    sources += [s + UNGATED for s in sources if s != "plain"]
    positions = pipe.program().num_steps
    steps = "up to " if pipe.tokenizer.token_spec().octree_depth else ""  # an octree's length is its own
    print(f"\n### {name}: `{path.relative_to(ROOT)}`, {steps}{positions} steps a sample, {prompts} prompts, batch 1, "
          f"CFG {guidance:g}\n")
    print("| T | decoding | target forwards / sample | draft forwards / sample | tokens / forward | ms / sample | plain / this | same tokens |")
    print("|---|---|---|---|---|---|---|---|")
    for temperature in (0.0, 1.0):
        for decoding in sources:  # warm-up: first calls, and the sources' (and their gates') first lessons
            run_source(pipes, draft, classes[:1], temperature, decoding, seed=10_000, guidance=guidance)
        seconds = {s: [] for s in sources}  # per call, in the order run: call i of every source is the same prompt and seed
        result = {}
        for repeat in range(repeats):  # new seeds each repeat: what a source remembers is other samples, not these
            outs = {s: [] for s in sources}
            forwards = {s: [0, 0] for s in sources}
            for c in classes:  # call by call in turn, so a slow spell of the machine hits every source alike
                for decoding in sources:
                    sec, out, f, d = run_call(pipes, draft, c, temperature, decoding, seed=100 * repeat, guidance=guidance)
                    seconds[decoding].append(sec)
                    outs[decoding].append(out)
                    forwards[decoding][0] += f
                    forwards[decoding][1] += d
            for decoding in sources:
                result[decoding] = (outs[decoding], *forwards[decoding])
        plain_outs = result["plain"][0]
        for decoding in sources:
            outs, forwards, draft_forwards = result[decoding]
            ratio = statistics.median(p / t for p, t in zip(seconds["plain"], seconds[decoding]))
            same = all(torch.equal(a, b) for a, b in zip(outs, plain_outs))
            print(f"| {temperature:g} | {decoding} | {forwards / prompts:.1f} | {draft_forwards / prompts:.1f} | "
                  f"{result['plain'][1] / forwards:.2f} | {1000 * statistics.median(seconds[decoding]):.0f} | {ratio:.2f}x | "
                  f"{same} |", flush=True)


def plain_step_table(repeats: int) -> None:
    """The plain step on one converted Llama: transformers `generate` vs mmgen eager / compiled, fp32 and bf16."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from decode import PROMPT_LEN, VOCAB, build_pair  # the pair benchmarks/decode.py times

    llama, gpt, head = build_pair("20M")
    batch, new_tokens = 8, 64
    prompt = torch.randint(0, VOCAB, (batch, PROMPT_LEN), generator=torch.Generator().manual_seed(batch))
    models = {"fp32": (llama, gpt, head), "bf16": tuple(copy.deepcopy(m).to(torch.bfloat16) for m in (llama, gpt, head))}
    compiled = {}
    for dtype, (_, g, h) in models.items():
        for freeze in (False, True):
            twin, twin_head = copy.deepcopy(g), copy.deepcopy(h)
            twin.compile_decoding(freeze=freeze)
            twin_head.compile_decoding(freeze=freeze)
            compiled[dtype, freeze] = twin, twin_head

    def hf(dtype):
        with torch.inference_mode():
            return models[dtype][0].generate(prompt, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)

    def ours(g, h):
        return continue_tokens(g, h, prompt, max_new_tokens=new_tokens, sampling=SamplingConfig(temperature=0))

    runs = {}
    for dtype in models:
        runs[f"transformers {dtype}"] = (dtype, lambda d=dtype: hf(d))
        runs[f"mmgen {dtype}, eager"] = (dtype, lambda d=dtype: ours(*models[d][1:]))
        runs[f"mmgen {dtype}, compiled"] = (dtype, lambda d=dtype: ours(*compiled[d, False]))
        runs[f"mmgen {dtype}, compiled + frozen weights"] = (dtype, lambda d=dtype: ours(*compiled[d, True]))
    outs = {name: fn() for name, (_, fn) in runs.items()}  # warm-up (and compilation)
    times = {name: [] for name in runs}
    for _ in range(repeats):
        for name, (_, fn) in runs.items():
            start = time.perf_counter()
            outs[name] = fn()
            times[name].append(time.perf_counter() - start)
    tps = {name: batch * new_tokens / statistics.median(t) for name, t in times.items()}
    print("\n### The plain step: mmgen `continue_tokens` vs transformers `generate` (20M Llama, batch 8, greedy, 64 new tokens)\n")
    print("| run | tok/s | vs transformers fp32 | vs transformers, same dtype | same tokens as transformers, same dtype |")
    print("|---|---|---|---|---|")
    for name, (dtype, _) in runs.items():
        peer = f"transformers {dtype}"
        print(f"| {name} | {tps[name]:.0f} | {tps[name] / tps['transformers fp32']:.2f}x | {tps[name] / tps[peer]:.2f}x | "
              f"{torch.equal(outs[name], outs[peer])} |", flush=True)


def compiled_shipped_row(repeats: int) -> None:
    """The shipped image model's plain decoding, eager vs a compiled step with frozen weights (same tokens)."""
    path, num_classes, _, _ = MODELS["shapes32 image (8x8 ids)"]
    eager, fast = load(path), load(path)
    fast.compile_decoding(freeze=True)
    classes = list(range(num_classes))
    times = {"eager": [], "compiled": []}
    outs = {}
    for name, pipe in (("eager", eager), ("compiled", fast)):
        run_source(pipe, None, classes[:1], 1.0, "plain", seed=10_000)
    for repeat in range(repeats):
        for name, pipe in (("eager", eager), ("compiled", fast)):
            seconds, outs[name], _, _ = run_source(pipe, None, classes, 1.0, "plain", seed=100 * repeat)
            times[name].append(seconds)
    e, c = (statistics.median(times[k]) / len(classes) for k in ("eager", "compiled"))
    same = all(torch.equal(a, b) for a, b in zip(outs["eager"], outs["compiled"]))
    print(f"\n### The shipped image model, plain decoding at T 1, batch 1, CFG 3: eager {1000 * e:.0f} ms/sample, "
          f"compiled step with frozen weights {1000 * c:.0f} ms/sample ({e / c:.2f}x), same tokens {same}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--prompts", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="3 prompts, 1 repeat, no plain-step tables")
    parser.add_argument("--only-plain-step", action="store_true", help="only the plain-step tables")
    parser.add_argument("--models", nargs="+", default=None, help="only the models whose name holds one of these words")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    prompts, repeats = (3, 1) if args.quick else (args.prompts, args.repeats)
    print(f"# decoding benchmark: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, median of {repeats}")
    if not args.only_plain_step:
        for name, (path, num_classes, draft_path, guidance) in MODELS.items():
            if args.models is None or any(word in name for word in args.models):
                speculative_table(name, path, num_classes, draft_path, guidance, prompts, repeats)
    if not args.quick:
        plain_step_table(repeats)
        compiled_shipped_row(repeats)


if __name__ == "__main__":
    main()
