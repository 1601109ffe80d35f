"""RVQAudioCodec: frames and padding, lengths, truncation, quantizer dropout, training, streaming, save / load, errors."""

import math

import pytest
import torch
from audio_fixtures import adam_steps, state_of
from loguru import logger

from mmgen import DiscreteContent
from mmgen.protocol import check_tokenizer
from tokenizers_audio.rvq import RVQAudioCodec, RVQAudioConfig

pytestmark = pytest.mark.usefixtures("one_torch_thread")
logger.disable("vector_quantize_pytorch")  # k-means init warns when a tiny batch has fewer frames than codes

TINY = {"strides": (2, 4), "base_channels": 8, "dim": 16, "codebook_size": 32, "num_quantizers": 4, "clip_samples": 1600}
HOP = 8


def tiny_codec(**overrides) -> RVQAudioCodec:
    torch.manual_seed(0)
    return RVQAudioCodec(RVQAudioConfig(**{**TINY, **overrides}))


def tones(batch: int = 4, samples: int = 1600, seed: int = 0) -> torch.Tensor:
    """Sines of different pitch and loudness plus a little noise (a codec's spectral losses need a noise floor)."""
    t = torch.arange(samples) / 16000
    freqs = torch.tensor([220.0, 330.0, 440.0, 550.0, 660.0, 770.0])[:batch, None, None]
    gain = torch.linspace(0.3, 0.6, batch)[:, None, None]
    noise = torch.randn(batch, 1, samples, generator=torch.Generator().manual_seed(seed))
    return gain * torch.sin(2 * math.pi * freqs * t + seed) + 0.01 * noise


def train(codec: RVQAudioCodec, audio: torch.Tensor, steps: int, lr: float = 3e-3) -> list[float]:
    return adam_steps(codec, [audio] * steps, lr=lr)[0]


@pytest.fixture(scope="module")
def trained() -> RVQAudioCodec:
    """A tiny non-causal codec trained with quantizer dropout, shared by the read-only tests (in eval mode).

    Waveform L1 only: in a few dozen steps the spectral terms first drive a tiny codec's output away from
    the waveform, and these tests are about the quantizer, not the loss mix.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    codec = tiny_codec(stft_weight=0.0, mel_weight=0.0)
    train(codec, tones(), 60)
    torch.set_num_threads(threads)
    return codec.eval()


def eval_loss(codec: RVQAudioCodec, audio: torch.Tensor) -> float:
    codec.eval()
    with torch.no_grad():
        return codec.loss(audio)[0].item()


# ---- shapes, spec, protocol ----------------------------------------------------------------------
def test_shapes_frames_and_properties(trained):
    ids = trained.encode(tones(3))
    assert ids.shape == (3, 1600 // HOP, 4) and ids.dtype == torch.long
    assert int(ids.min()) >= 0 and int(ids.max()) < 32
    audio = trained.decode(ids).detach()
    assert audio.shape == (3, 1, 1600) and float(audio.abs().max()) <= 1.0
    assert (trained.hop_length, trained.codebook_size, trained.num_codebooks, trained.sample_rate) == (8, 32, 4, 16000)
    assert trained.frame_rate == 2000.0
    assert RVQAudioConfig().hop_length == 320 and RVQAudioConfig().sample_rate / RVQAudioConfig().hop_length == 50


def test_token_spec_and_positions():
    codec = tiny_codec().eval()
    spec = check_tokenizer(codec)
    assert codec.modality == "audio"
    assert spec.content == DiscreteContent((32,) * 4) and spec.shape == (200,)
    ids = codec.encode(tones(2))
    assert torch.equal(codec.from_positions(codec.to_positions(ids)), ids)
    spec.content.check_ids(codec.to_positions(ids))
    two = tiny_codec(generator_quantizers=2)
    assert two.token_spec().content == DiscreteContent((32, 32))
    assert torch.equal(two.to_positions(ids), ids[..., :2])
    one = tiny_codec(generator_quantizers=1)
    positions = one.to_positions(ids)
    assert positions.shape == (2, 200) and torch.equal(positions, ids[..., 0])
    assert one.decode(one.from_positions(positions)).shape == (2, 1, 1600)
    with pytest.raises(ValueError, match="ids has 1 codebooks; the generator models 2"):
        two.to_positions(ids[..., :1])


def test_audio_is_padded_to_a_whole_frame():
    codec = tiny_codec(causal=True)
    train(codec, tones(), 2)
    codec.eval()
    x = tones(2, 1603)
    ids = codec.encode(x)
    assert ids.shape == (2, 201, 4) and codec.decode(ids).shape == (2, 1, 201 * HOP)
    # the zeros padded on the right are the future of every complete frame: a causal codec keeps those ids
    assert torch.equal(ids[:, :200], codec.encode(x[..., :1600]))
    assert codec.num_frames(torch.tensor([1603, 1600, 1])).tolist() == [201, 200, 1]


@pytest.mark.parametrize("causal", [True, False])
def test_lengths_mask_the_padding(causal):
    codec = tiny_codec(causal=causal)
    train(codec, tones(), 2)
    codec.eval()
    x = tones(2)
    short = x[:1, :, :1000].clone()
    padded = x.clone()
    padded[0, :, 1000:] = 0.9 * (2 * torch.rand(600) - 1)  # junk beyond the length: must be ignored
    ids = codec.encode(padded, lengths=torch.tensor([1000, 1600]))
    frames = int(codec.num_frames(torch.tensor(1000)))
    alone = codec.encode(short)
    assert alone.shape[1] == frames == 125
    assert torch.equal(ids[1], codec.encode(x[1:])[0])
    if causal:
        assert torch.equal(ids[0, :frames], alone[0])
    else:  # the last frames see their right neighbours (conv outputs of zeros vs the conv's own padding)
        assert torch.equal(ids[0, :frames - 8], alone[0, :frames - 8])
    assert torch.equal(ids, codec.encode(torch.cat([torch.cat([short, torch.zeros(1, 1, 600)], -1), x[1:]]),
                                         lengths=torch.tensor([1000, 1600])))


# ---- bitrates ------------------------------------------------------------------------------------
def test_fewer_quantizers_are_the_first_columns(trained):
    x = tones(3, seed=1)
    full = trained.encode(x)
    for k in range(1, 5):
        assert torch.equal(trained.encode(x, num_quantizers=k), full[..., :k])
    latents = trained.ids_to_latents(full[..., :2])
    library = trained.quantizer.get_output_from_indices(full[..., :2]).transpose(1, 2)  # ResidualVQ's own decode
    assert torch.allclose(latents, library)


def test_quality_rises_with_the_number_of_codebooks(trained):
    x = tones(4, seed=2)
    ids = trained.encode(x)
    with torch.no_grad():
        latents = trained.encoder(x)
    latent_errors = [(trained.ids_to_latents(ids[..., :k]) - latents).pow(2).mean().item() for k in range(1, 5)]
    assert latent_errors == sorted(latent_errors, reverse=True)
    with torch.no_grad():
        waveform_errors = [(trained.decode(ids[..., :k]) - x).abs().mean().item() for k in range(1, 5)]
    assert max(waveform_errors[1:]) < 0.8 * waveform_errors[0]  # a 60-step codec: finer levels help, not yet in order


def counts_used(ids_BtN: torch.Tensor) -> list[int]:
    """Codebooks each item used in one training forward (dropped levels hold -1 on every frame)."""
    used_BN = (ids_BtN >= 0).all(dim=1)
    assert torch.equal(used_BN, (ids_BtN >= 0).any(dim=1)), "a level is kept or dropped for a whole item"
    assert torch.equal(used_BN, used_BN.cummin(dim=1).values), "a kept level follows kept levels only"
    return used_BN.sum(-1).tolist()


def test_quantizer_dropout_varies_per_item_in_training_only():
    codec = tiny_codec()
    train(codec, tones(), 1)  # the first batch (k-means init) uses every level
    z = torch.randn(16, 16, 10)
    drawn = []
    for _ in range(8):
        _, ids, _ = codec.quantize(z)
        drawn.append(counts_used(ids))
    flat = [c for counts in drawn for c in counts]
    assert set(flat) == {1, 2, 3, 4}, "every count 1..N is drawn"
    assert any(len(set(counts)) > 1 for counts in drawn), "items of one batch draw their own count"
    codec.eval()
    _, ids, _ = codec.quantize(z)
    assert counts_used(ids) == [4] * 16
    for overrides in ({"quantizer_dropout": False}, {"quantizer_dropout_fraction": 0.0}):
        plain = tiny_codec(**overrides)
        plain.train()
        assert counts_used(plain.quantize(z)[1]) == [4] * 16
    half = tiny_codec(quantizer_dropout_fraction=0.5)
    train(half, tones(), 1)
    counts = [c for _ in range(8) for c in counts_used(half.quantize(z)[1])]
    assert 0.3 < counts.count(4) / len(counts) < 0.8  # half keep all N, a quarter of the others draw N too


def test_library_forward_draws_one_count_per_batch():
    """Why the codec runs the layers itself: ResidualVQ.forward drops the same levels for the whole batch."""
    codec = tiny_codec()
    rvq = codec.quantizer.train()
    counts = set()
    for seed in range(12):
        _, ids, _ = rvq(torch.randn(8, 10, 16), rand_quantize_dropout_fixed_seed=seed)
        per_item = (ids >= 0).all(dim=1).sum(-1)
        assert len(per_item.unique()) == 1
        counts.add(int(per_item[0]))
    assert len(counts) > 1


def test_encode_changes_no_state_in_either_mode():
    codec = tiny_codec()  # k-means init pending: the library would initialise on its first forward, even in eval
    for _ in range(2):
        for mode in (True, False):
            codec.train(mode)
            before = state_of(codec)
            codec.encode(tones(2))
            for name, value in codec.state_dict().items():
                assert torch.equal(value, before[name]), f"{name} changed by encode in {'train' if mode else 'eval'} mode"
        train(codec, tones(), 1)
    assert all(bool(layer._codebook.initted) for layer in codec.quantizer.layers)


# ---- training ------------------------------------------------------------------------------------
def test_training_reduces_the_loss():
    codec = tiny_codec()
    x = tones()
    codec.train()
    loss, logs = codec.loss(x)
    assert loss.dim() == 0
    assert set(logs) == {"l1", "stft", "mel", "commit", "si_sdr", "quantizers", "usage"}
    assert all(isinstance(v, float) for v in logs.values())
    before = eval_loss(codec, x)
    train(codec, x, 30)
    assert eval_loss(codec, x) < 0.8 * before
    usage = codec.codebook_usage()
    assert len(usage) == 4 and all(0 < level["usage"] <= 1 and level["perplexity"] >= 1 for level in usage)


def test_discriminator_option_separates_the_gradients():
    codec = tiny_codec(use_discriminator=True)
    x = tones(2)
    codec.train()
    loss, logs = codec.loss(x)
    assert {"adversarial", "feature"} <= set(logs)
    loss.backward()
    assert all(p.grad is None for p in codec.discriminator.parameters()), "loss() must not train the discriminator"
    assert codec.decoder.net[0].conv.parametrizations.weight.original1.grad is not None
    codec.zero_grad(set_to_none=True)
    d_loss, d_logs = codec.discriminator_loss(x)
    assert set(d_logs) == {"disc_real", "disc_fake"}
    d_loss.backward()
    assert all(p.grad is None for name, p in codec.named_parameters() if not name.startswith("discriminator."))
    assert all(p.grad is not None for p in codec.discriminator.parameters())
    with pytest.raises(ValueError, match="use_discriminator=True"):
        tiny_codec().discriminator_loss(x)


# ---- streaming -----------------------------------------------------------------------------------
def test_streaming_equals_offline_for_the_causal_codec():
    codec = tiny_codec(causal=True)
    train(codec, tones(), 3)
    codec.eval()
    x = tones(2, 1600, seed=3)
    ids = codec.encode(x, num_quantizers=3)
    audio = codec.decode(ids)
    encoder, parts, start = codec.streaming_encoder(num_quantizers=3), [], 0
    for size in (8, 160, 96, 1336):
        parts.append(encoder.step(x[..., start:start + size]))
        start += size
    assert torch.equal(torch.cat(parts, 1), ids)
    decoder, parts, start = codec.streaming_decoder(), [], 0
    for size in (1, 20, 7, 172):
        parts.append(decoder.step(ids[:, start:start + size]))
        start += size
    assert (torch.cat(parts, -1) - audio).abs().max() <= 1e-5
    with pytest.raises(ValueError, match="streaming needs a codec built with causal=True"):
        tiny_codec().streaming_encoder()


# ---- save / load -----------------------------------------------------------------------------------
def test_save_and_load_give_identical_ids(tmp_path, trained):
    trained.save_pretrained(tmp_path)
    loaded = RVQAudioCodec.from_pretrained(tmp_path).eval()
    assert loaded.cfg == trained.cfg and loaded.cfg.strides == (2, 4)
    x = tones(2, seed=4)
    ids = trained.encode(x)
    assert torch.equal(loaded.encode(x), ids)
    assert torch.equal(loaded.decode(ids), trained.decode(ids))
    assert loaded.codebook_usage() == trained.codebook_usage()


# ---- errors -------------------------------------------------------------------------------------------
def test_bad_audio_is_a_clear_error():
    codec = tiny_codec().eval()
    x = tones(2)
    with pytest.raises(ValueError, match="audio has 2 channels, but this codec is mono: mix down first"):
        codec.encode(x.repeat(1, 2, 1))
    with pytest.raises(ValueError, match="sample_rate=44100, but this codec works at 16000 Hz"):
        codec.encode(x, sample_rate=44100)
    codec.encode(x, sample_rate=16000)
    nan = x.clone()
    nan[0, 0, 5] = float("nan")
    with pytest.raises(ValueError, match="audio holds NaN"):
        codec.encode(nan)
    with pytest.raises(ValueError, match=r"audio items \[1\] are silent"):
        codec.encode(torch.cat([x[:1], torch.zeros(1, 1, 1600)]))
    with pytest.raises(ValueError, match="audio holds 7 samples, shorter than one frame of this codec"):
        codec.encode(x[..., :7])
    with pytest.raises(ValueError, match=r"audio must hold samples in \[-1, 1\]"):
        codec.encode(x * 32768)
    with pytest.raises(ValueError, match="lengths must be at least one frame"):
        codec.encode(x, lengths=torch.tensor([1600, 4]))
    with pytest.raises(ValueError, match="lengths must lie in"):
        codec.encode(x, lengths=torch.tensor([1600, 1601]))
    with pytest.raises(ValueError, match="audio has 2 channels"):
        codec.loss(x.repeat(1, 2, 1))


def test_bad_ids_and_codebook_counts_are_clear_errors():
    codec = tiny_codec().eval()
    ids = codec.encode(tones(2))
    with pytest.raises(ValueError, match=r"ids holds 32, outside the codebook \[0, 32\)"):
        codec.decode(torch.full_like(ids, 32))
    with pytest.raises(ValueError, match="ids holds -1, outside the codebook"):
        codec.decode(torch.full_like(ids, -1))
    with pytest.raises(ValueError, match="ids holds 5 codebooks, but this codec was trained with 4"):
        codec.decode(torch.cat([ids, ids[..., :1]], -1))
    with pytest.raises(ValueError, match=r"ids must have shape \[B, t, K\]"):
        codec.decode(ids[..., 0])
    with pytest.raises(TypeError, match="ids must be an integer tensor"):
        codec.decode(ids.float())
    for bad in (5, 0, True):
        with pytest.raises(ValueError, match=r"num_quantizers must be an int in \[1, 4\]"):
            codec.encode(tones(2), num_quantizers=bad)


@pytest.mark.parametrize("field, value, message", [
    ("generator_quantizers", 5, "generator_quantizers=5 exceeds num_quantizers=4"),
    ("clip_samples", 4, "clip_samples=4 is shorter than one frame"),
    ("strides", (2, 0), "strides must be a positive int"),
    ("codebook_size", 0, "codebook_size must be a positive int"),
    ("quantizer_dropout_fraction", 1.5, r"quantizer_dropout_fraction must be in \[0, 1\]"),
    ("decay", 1.0, r"decay must be in \[0, 1\)"),
    ("mel_weight", -1.0, "mel_weight must be >= 0"),
])
def test_config_validation_names_the_field(field, value, message):
    with pytest.raises(ValueError, match=message):
        RVQAudioConfig(**{**TINY, field: value})
