"""Codec speed on the CPU: mmgen's ``RVQAudioCodec`` vs EnCodec, both at 16 kHz, 320x, 8 codebooks of 1024, random weights.

The competitor is ``transformers``' ``EncodecModel`` (the port of the ``encodec`` package's model; that
package imports torchaudio, which has no build for the torch this project tests on), built from an
``EncodecConfig`` of the same strides, filters, latent size and codebooks — nothing is downloaded. Both
encode and decode the same ``--seconds`` of audio in one process, in alternation; the script prints the
median real-time factor (compute seconds per audio second; below 1 is faster than real time) of each and
their ratio as a markdown table.

    python benchmarks/audio_codec.py                 # batch 1 and 8, 10 s of audio, 5 repeats
    python benchmarks/audio_codec.py --causal        # our causal (streamable) variant
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch
from transformers import EncodecConfig, EncodecModel

from tokenizers_audio import RVQAudioCodec, RVQAudioConfig

RATE, STRIDES, FILTERS, LATENT, CODES, QUANTIZERS = 16000, (2, 4, 5, 8), 32, 128, 1024, 8


def build_pair(*, causal: bool, lstm_layers: int) -> tuple[RVQAudioCodec, EncodecModel]:
    torch.manual_seed(0)
    ours = RVQAudioCodec(RVQAudioConfig(sample_rate=RATE, strides=STRIDES, base_channels=FILTERS, dim=LATENT,
                                        codebook_size=CODES, num_quantizers=QUANTIZERS, causal=causal)).eval()
    frame_rate = RATE // (STRIDES[0] * STRIDES[1] * STRIDES[2] * STRIDES[3])
    kbps = QUANTIZERS * frame_rate * 10 / 1000  # log2(1024) = 10 bits per code
    config = EncodecConfig(sampling_rate=RATE, hidden_size=LATENT, num_filters=FILTERS, upsampling_ratios=list(reversed(STRIDES)),
                           codebook_size=CODES, target_bandwidths=[kbps], num_lstm_layers=lstm_layers, use_causal_conv=causal)
    theirs = EncodecModel(config).eval()
    return ours, theirs


def round_trip_ours(codec: RVQAudioCodec, audio: torch.Tensor) -> torch.Tensor:
    return codec.decode(codec.encode(audio))


def round_trip_encodec(model: EncodecModel, audio: torch.Tensor) -> torch.Tensor:
    encoded = model.encode(audio, bandwidth=model.config.target_bandwidths[0])
    return model.decode(encoded.audio_codes, encoded.audio_scales)[0]


def seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0, help="audio per item (default 10)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--causal", action="store_true", help="causal convolutions on both sides")
    parser.add_argument("--lstm-layers", type=int, default=2, help="EnCodec's LSTM layers (2 as released; transformers' port needs at least 1)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    ours, theirs = build_pair(causal=args.causal, lstm_layers=args.lstm_layers)
    params = lambda m: sum(p.numel() for p in m.parameters()) / 1e6  # noqa: E731
    print(f"{platform.processor() or platform.machine()}, torch {torch.__version__}, {args.threads} thread(s); "
          f"mmgen RVQAudioCodec {params(ours):.2f}M params (causal={args.causal}), EnCodec {params(theirs):.2f}M params "
          f"({args.lstm_layers} LSTM layers)\n")
    print("| batch | audio s | mmgen RTF | EnCodec RTF | speed-up |")
    print("|---|---|---|---|---|")
    samples = int(args.seconds * RATE) // 320 * 320
    with torch.inference_mode():
        for batch in args.batch_sizes:
            audio = (0.3 * torch.randn(batch, 1, samples, generator=torch.Generator().manual_seed(batch))).clamp(-1, 1)
            assert round_trip_ours(ours, audio).shape == round_trip_encodec(theirs, audio).shape == audio.shape  # warm-up, same work
            mine, other = [], []
            for _ in range(args.repeats):  # alternate, so a slow phase of the machine hits both
                mine.append(seconds(lambda: round_trip_ours(ours, audio)))
                other.append(seconds(lambda: round_trip_encodec(theirs, audio)))
            audio_seconds = batch * samples / RATE
            rtf_ours, rtf_theirs = statistics.median(mine) / audio_seconds, statistics.median(other) / audio_seconds
            print(f"| {batch} | {audio_seconds:.0f} | {rtf_ours:.4f} | {rtf_theirs:.4f} | {rtf_theirs / rtf_ours:.2f}x |")


if __name__ == "__main__":
    main()
