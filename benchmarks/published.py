"""Converted published generators against their own code: LlamaGen's ``generate`` and VAR's ``autoregressive_infer_cfg``.

Both sides hold the same random weights (built with the public classes, converted with ``mmgen convert``'s
functions), draw greedily with the originals' CFG (LlamaGen's constant scale 4, VAR's ramp to 1.5), run
in one process in alternation, and must give the same tokens (LlamaGen) or images (VAR); the script prints
median wall times of ``--repeats`` runs and the ratio. The public code is not installable: pass the
clones (``git clone https://github.com/FoundationVision/LlamaGen``, ``…/VAR``)::

    python benchmarks/published.py --llamagen-repo /tmp/llamagen --var-repo /tmp/var            # GPT-B 16×16, VAR-d16
    python benchmarks/published.py --llamagen-repo /tmp/llamagen --var-repo /tmp/var --quick    # GPT-B 8×8, VAR-d8
"""

from __future__ import annotations

import argparse
import importlib.util
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch

from mmgen.llamagen_weights import llamagen_generator
from mmgen.sampling import GuidanceSchedule
from mmgen.var_weights import VAR_PATCH_NUMS, var_generator
from pipelines import NextScalePipeline, NextTokenPipeline
from tokenizers_visual import VQConfig, VQImageTokenizer
from tokenizers_visual.var_weights import multiscale_vq_from_var


def _module(repo: Path, relative: str, name: str) -> Any:
    if str(repo) not in sys.path:
        sys.path.insert(0, str(repo))
    spec = importlib.util.spec_from_file_location(name, repo / relative)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _randomise(model: torch.nn.Module) -> None:
    """Non-zero weights everywhere (the public inits zero some output layers), at the scale of a trained model."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1 and ("norm" in name or name.endswith("weight")):
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=generator))
            elif "scale_mul" in name:
                p.fill_(1.4)
            else:
                p.copy_(0.02 * torch.randn(p.shape, generator=generator))


def _alternate(fns: list[Callable[[], Any]], repeats: int) -> list[tuple[float, Any]]:
    """Median wall time and last output of each function, run in turn ``repeats`` times (so load drifts hit all alike)."""
    times: list[list[float]] = [[] for _ in fns]
    outs: list[Any] = [None] * len(fns)
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            start = time.perf_counter()
            outs[i] = fn()
            times[i].append(time.perf_counter() - start)
    return [(statistics.median(t), out) for t, out in zip(times, outs)]


def bench_llamagen(repo: Path, *, grid: int, batch: int, repeats: int) -> list[tuple[str, float, float]]:
    gpt_module = _module(repo, "autoregressive/models/gpt.py", "llamagen_gpt")
    generate_module = _module(repo, "autoregressive/models/generate.py", "llamagen_generate")
    model = gpt_module.GPT_models["GPT-B"](vocab_size=16384, block_size=grid * grid, num_classes=1000, cls_token_num=1,
                                           model_type="c2i").eval()
    _randomise(model)
    converted = llamagen_generator(model.state_dict(), {"block_size": grid * grid})
    tokenizer = VQImageTokenizer(VQConfig(image_size=4 * grid, downsample=4, channels=8, channel_mult=[1, 1, 1], z_channels=8,
                                          codebook_size=16384))  # carries the grid and vocabulary; tokens are what is timed
    pipe = NextTokenPipeline(gpt=converted.gpt, tokenizer=tokenizer, head=converted.head, conditioner=converted.conditioner,
                             null_condition_trained=True, rotary_coords="input")
    pipe.set_progress_bar_config(disable=True)
    labels = [(207 + 13 * i) % 1000 for i in range(batch)]

    def original() -> torch.Tensor:
        with torch.inference_mode():
            return generate_module.generate(model, torch.tensor(labels), grid * grid, emb_masks=None, cfg_scale=4.0,
                                            cfg_interval=-1, temperature=1.0, top_k=0, top_p=1.0, sample_logits=False).long()

    def ours() -> torch.Tensor:
        return pipe(class_labels=labels, guidance_scale=4.0, temperature=0.0, output_type="tokens").tokens.reshape(batch, -1)

    twin = llamagen_generator(model.state_dict(), {"block_size": grid * grid})  # its own GPT and head to compile
    compiled = NextTokenPipeline(gpt=twin.gpt, tokenizer=tokenizer, head=twin.head, conditioner=twin.conditioner,
                                 null_condition_trained=True, rotary_coords="input")
    compiled.set_progress_bar_config(disable=True)
    compiled.compile_decoding(freeze=True)

    def ours_compiled() -> torch.Tensor:
        return compiled(class_labels=labels, guidance_scale=4.0, temperature=0.0, output_type="tokens").tokens.reshape(batch, -1)

    ours_compiled()  # compiles the step's shapes once, outside the timing
    (t_original, reference), (t_ours, tokens), (t_compiled, tokens_compiled) = _alternate([original, ours, ours_compiled], repeats)
    assert torch.equal(tokens, reference), "the converted LlamaGen drew other tokens than LlamaGen's generate"
    assert torch.equal(tokens_compiled, reference), "the compiled step drew other tokens"
    print(f"GPT-B {grid}x{grid}: the converted pipeline drew LlamaGen's tokens exactly (eager and compiled)")
    return [("LlamaGen generate", t_original, 1.0), ("mmgen NextTokenPipeline", t_ours, t_original / t_ours),
            ("mmgen, compiled + frozen step", t_compiled, t_original / t_compiled)]


def bench_var(repo: Path, *, depth: int, vae_ch: int, batch: int, repeats: int) -> list[tuple[str, float, float]]:
    if str(repo) not in sys.path:
        sys.path.insert(0, str(repo))
    from models.var import VAR
    from models.vqvae import VQVAE

    torch.manual_seed(0)
    vae = VQVAE(vocab_size=4096, z_channels=32, ch=vae_ch, test_mode=True, share_quant_resi=4, v_patch_nums=VAR_PATCH_NUMS).eval()
    var = VAR(vae_local=vae, num_classes=1000, depth=depth, embed_dim=64 * depth, num_heads=depth, mlp_ratio=4.0, norm_eps=1e-6,
              shared_aln=False, cond_drop_rate=0.1, attn_l2_norm=True, patch_nums=VAR_PATCH_NUMS, flash_if_available=False,
              fused_if_available=False).eval()
    _randomise(var)
    generator, patch_nums = var_generator(var.state_dict(), {"num_heads": depth})
    tokenizer = multiscale_vq_from_var(vae.state_dict(), {"v_patch_nums": list(patch_nums), "ch": vae_ch, "image_size": 256})
    pipe = NextScalePipeline(gpt=generator.gpt, tokenizer=tokenizer, head=generator.head, conditioner=generator.conditioner,
                             null_condition_trained=True)
    pipe.set_progress_bar_config(disable=True)
    labels = [(207 + 13 * i) % 1000 for i in range(batch)]

    def original() -> torch.Tensor:
        with torch.inference_mode():
            return var.autoregressive_infer_cfg(B=batch, label_B=torch.tensor(labels), g_seed=0, cfg=1.5, top_k=1, top_p=0.0)

    def ours() -> torch.Tensor:
        return pipe(class_labels=labels, guidance_scale=GuidanceSchedule.from_var(cfg=1.5), temperature=0.0, output_type="pt").images

    (t_original, reference), (t_ours, images) = _alternate([original, ours], repeats)
    gap = float((images - reference).abs().max())
    assert gap <= 1e-3, f"the converted VAR's images differ from VAR's by {gap}"
    print(f"VAR-d{depth}: the converted pipeline's images are within {gap:.1e} of VAR's (max abs, in [0, 1])")
    return [("VAR autoregressive_infer_cfg", t_original, 1.0), ("mmgen NextScalePipeline", t_ours, t_original / t_ours)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--llamagen-repo", type=Path, help="a clone of FoundationVision/LlamaGen")
    parser.add_argument("--var-repo", type=Path, help="a clone of FoundationVision/VAR")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    parser.add_argument("--quick", action="store_true", help="GPT-B over 8×8 tokens, VAR-d8 with a VQVAE of width 32")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"{platform.processor() or platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"batch {args.batch}, median of {args.repeats}, greedy, same weights on both sides\n")
    rows = []
    if args.llamagen_repo:
        grid = 8 if args.quick else 16
        rows += [(f"GPT-B, {grid}×{grid} tokens, CFG 4", *row)
                 for row in bench_llamagen(args.llamagen_repo, grid=grid, batch=args.batch, repeats=args.repeats)]
    if args.var_repo:
        depth, vae_ch = (8, 32) if args.quick else (16, 160)
        rows += [(f"VAR-d{depth}, 10 scales, cfg 1.5 ramp", *row)
                 for row in bench_var(args.var_repo, depth=depth, vae_ch=vae_ch, batch=args.batch, repeats=args.repeats)]
    if not rows:
        parser.error("pass --llamagen-repo and/or --var-repo")
    print("| model | implementation | s / batch | speed vs the original |")
    print("|---|---|---|---|")
    for model, name, seconds, ratio in rows:
        print(f"| {model} | {name} | {seconds:.2f} | {ratio:.2f}x |")


if __name__ == "__main__":
    main()
