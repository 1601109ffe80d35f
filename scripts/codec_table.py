"""The codec table: reconstruction of held-out tones and espeak-ng speech, untrained → trained, for each tones codec.

    python scripts/codec_table.py configs/tones/codec-rvq.yaml [configs/tones/codec-single.yaml ...] \\
        [--trained outputs/tones/codec-rvq/tokenizer ...]

For every run config, the untrained codec is built from its preset with the config's seed and measured by the
trainer's own evaluation (:func:`mmgen.app.training.evaluation.evaluate_tokenizer`: SI-SDR, mel and STFT distance,
the tones judge on the reconstructions, per codebook count for the RVQ codec). With ``--trained`` folders (one per
config, in order) the trained codec is measured on the same clips. Prints one markdown table.
"""

from __future__ import annotations

import argparse

import torch

from mmgen.app.training import load_config
from mmgen.app.training.builders import build_tokenizer, load_tokenizer
from mmgen.app.training.evaluation import evaluate_tokenizer

COLUMNS = ("si_sdr", "mel_distance", "judged_right")


def rows(name: str, state: str, report: dict) -> list[str]:
    """One row per (split, codebook count): SI-SDR (dB), mel distance and, on tones, the judge's reading rate."""
    lines = []
    for split, metrics in report.items():
        counts = sorted({k.split("@q=")[1] for k in metrics if "@q=" in k}, key=int)
        for suffix in [""] + [f"@q={q}" for q in counts]:
            judged = f"{metrics['judged_right']:.0%}" if split == "tones_heldout" and not suffix else ""
            lines.append(f"| {name} | {state} | {split} | {suffix.removeprefix('@q=') or 'all'} | "
                         f"{metrics['si_sdr' + suffix]:.2f} | {metrics['mel_distance' + suffix]:.3f} | {judged} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("configs", nargs="+", help="kind: tokenizer run configs of audio codecs")
    parser.add_argument("--trained", nargs="*", default=[], help="their trained tokenizer folders, in the same order")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    if args.trained and len(args.trained) != len(args.configs):
        parser.error(f"--trained names {len(args.trained)} folders for {len(args.configs)} configs")
    torch.set_num_threads(args.threads)
    print("| codec | state | clips | codebooks | SI-SDR dB | mel distance | tones judged right |")
    print("|---|---|---|---|---|---|---|")
    for i, path in enumerate(args.configs):
        cfg = load_config(path)
        name = cfg.tokenizer["class"]
        torch.manual_seed(cfg.seed)
        untrained = build_tokenizer(cfg.tokenizer).eval()
        print("\n".join(rows(name, "untrained", evaluate_tokenizer(untrained, cfg))), flush=True)
        if args.trained:
            trained = load_tokenizer(args.trained[i]).float().eval()
            print("\n".join(rows(name, "trained", evaluate_tokenizer(trained, cfg))), flush=True)


if __name__ == "__main__":
    main()
