"""Decode speed: mmgen's engine (``mmgen.programs.continue_tokens``) vs ``transformers`` ``generate`` on the same converted weights.

Both run greedy decoding of ``--new-tokens`` tokens after a 16-token prompt, in one process, in
alternation, and the script prints the median tokens/s of each and their ratio as a markdown table.
The continuations are checked to be identical, so both sides did the same work.

    python benchmarks/decode.py            # 20M and 100M models, batch 1 and 8, 256 new tokens
    python benchmarks/decode.py --quick    # 20M only, 64 new tokens
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from mmgen import GPT, CategoricalHead, SamplingConfig
from mmgen.convert import gpt_from_llama
from mmgen.programs import continue_tokens

MODEL_SIZES = {
    # name: (hidden, layers, heads, kv_heads, ffn); vocab 16384 as in LlamaGen's image codebook
    "20M": (384, 6, 6, 3, 1024),
    "100M": (768, 12, 12, 6, 2048),
}
VOCAB = 16384
PROMPT_LEN = 16


def build_pair(size: str) -> tuple[LlamaForCausalLM, GPT, CategoricalHead]:
    hidden, layers, heads, kv_heads, ffn = MODEL_SIZES[size]
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=hidden,
        intermediate_size=ffn,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=1024,
        eos_token_id=None,
        bos_token_id=None,
        pad_token_id=None,
    )
    torch.manual_seed(0)
    llama = LlamaForCausalLM(config).eval()
    return (llama, *gpt_from_llama(llama))


def timed(fn) -> tuple[float, torch.Tensor]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="20M model, 64 new tokens, 2 repeats")
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    sizes = ["20M"] if args.quick else list(MODEL_SIZES)
    new_tokens = 64 if args.quick else args.new_tokens
    repeats = 2 if args.quick else args.repeats

    print(f"# decode benchmark: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, greedy, prompt {PROMPT_LEN}, {new_tokens} new tokens, median of {repeats}")
    print("| model | params | batch | transformers tok/s | mmgen tok/s | mmgen / transformers | same tokens |")
    print("|---|---|---|---|---|---|---|")
    for size in sizes:
        llama, gpt, head = build_pair(size)
        params = sum(p.numel() for module in (gpt, head) for p in module.parameters()) / 1e6
        for batch in (1, 8):
            prompt = torch.randint(0, VOCAB, (batch, PROMPT_LEN), generator=torch.Generator().manual_seed(batch))

            def run_transformers():
                with torch.inference_mode():
                    return llama.generate(prompt, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)

            def run_mmgen():
                return continue_tokens(gpt, head, prompt, max_new_tokens=new_tokens, sampling=SamplingConfig(temperature=0))

            run_transformers(), run_mmgen()  # warm-up
            hf_times, mm_times = [], []
            for _ in range(repeats):  # alternate so drifts in machine load hit both sides alike
                hf_s, hf_out = timed(run_transformers)
                mm_s, mm_out = timed(run_mmgen)
                hf_times.append(hf_s)
                mm_times.append(mm_s)
            hf_tps = batch * new_tokens / statistics.median(hf_times)
            mm_tps = batch * new_tokens / statistics.median(mm_times)
            same = torch.equal(hf_out, mm_out)
            print(f"| {size} | {params:.1f}M | {batch} | {hf_tps:.0f} | {mm_tps:.0f} | {mm_tps / hf_tps:.2f}x | {same} |", flush=True)


if __name__ == "__main__":
    main()
