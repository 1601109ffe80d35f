"""SingleCodebookAudioCodec (WavTokenizer-style) and its Vocos iSTFT head: sizes, padding, training, state, errors."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
from audio_fixtures import CLIP, SR, adam_steps, same_state, sines, state_of
from pipeline_fixtures import build, gen

from mmgen.protocol import check_tokenizer, has_scale_context
from pipelines import NextTokenPipeline
from tokenizers_audio.single import SingleCodebookAudioCodec, SingleCodebookAudioConfig
from tokenizers_audio.vocos import ISTFTHead, VocosBackbone, istft_same, stft_same

pytestmark = pytest.mark.usefixtures("one_torch_thread")



def tiny_config(**overrides) -> SingleCodebookAudioConfig:
    return SingleCodebookAudioConfig(**{**dict(
        clip_samples=CLIP, strides=(2, 4), base_channels=8, dim=16, codebook_size=32, decoder_dim=32, decoder_layers=2,
        stft_resolutions=((128, 32), (256, 64)), mel_n_fft=256, mel_hop_length=64, n_mels=32,
    ), **overrides})


def tiny_codec(**overrides) -> SingleCodebookAudioCodec:
    torch.manual_seed(0)
    return SingleCodebookAudioCodec(tiny_config(**overrides)).eval()




@functools.lru_cache(maxsize=1)
def _trained_state() -> dict[str, torch.Tensor]:
    codec = tiny_codec()
    adam_steps(codec, [sines(4, seed=step) for step in range(2)])
    return state_of(codec)


def trained_codec(**overrides) -> SingleCodebookAudioCodec:
    """A fresh codec holding the weights of two training steps: codebook k-means initialised and EMA-updated."""
    codec = tiny_codec(**overrides)
    codec.load_state_dict(_trained_state())
    return codec


# ---- the iSTFT head ------------------------------------------------------------------------------------
@pytest.mark.parametrize("hop", [2, 8, 320])
def test_same_padded_istft_inverts_its_stft(hop):
    x = torch.randn(2, 7 * hop, generator=torch.Generator().manual_seed(0))
    spec = stft_same(x, n_fft=4 * hop, hop_length=hop)
    assert spec.shape == (2, 2 * hop + 1, 7)
    assert torch.allclose(istft_same(spec, n_fft=4 * hop, hop_length=hop), x, atol=1e-5)


@pytest.mark.parametrize("frames", [1, 2, 13])
def test_istft_head_gives_exactly_t_times_hop_samples(frames):
    torch.manual_seed(0)
    head = ISTFTHead(dim=16, hop_length=8, n_fft=32)
    features = VocosBackbone(input_dim=4, dim=16, intermediate_dim=48, num_layers=2)(torch.randn(3, 4, frames))
    assert features.shape == (3, 16, frames)
    audio = head(features)
    assert audio.shape == (3, 1, frames * 8) and bool(torch.isfinite(audio).all())
    with torch.no_grad():
        head.out.bias.fill_(1e3)  # a huge log-magnitude is clipped, not overflowed
        assert bool(torch.isfinite(head(features)).all())


def test_istft_head_refuses_padding_it_cannot_centre():
    with pytest.raises(ValueError, match="n_fft - hop_length even"):
        ISTFTHead(dim=4, hop_length=3, n_fft=12)
    with pytest.raises(ValueError, match="must be even"):
        tiny_config(strides=(3,))


# ---- sizes ---------------------------------------------------------------------------------------------
def test_sizes_rates_and_token_spec():
    codec = tiny_codec()
    assert (codec.sample_rate, codec.hop_length, codec.codebook_size, codec.frame_rate) == (SR, 8, 32, 2000.0)
    assert codec.cfg.n_fft == 32 and codec.num_tokens == 250 and codec.modality == "audio"
    spec = check_tokenizer(codec)
    assert spec.shape == (250,) and spec.content.codebook_sizes == (32,) and not has_scale_context(codec)
    default = SingleCodebookAudioConfig()  # WavTokenizer's one 4096-code codebook at 50 tokens/s
    assert (default.codebook_size, default.hop_length, default.clip_frames, default.n_fft) == (4096, 320, 50, 1280)


# ---- encode / decode -----------------------------------------------------------------------------------
@pytest.mark.parametrize("samples, frames", [(CLIP, 250), (CLIP - 1, 250), (CLIP + 3, 251), (8, 1)])
def test_encode_pads_to_whole_frames_and_round_trips(samples, frames):
    codec = trained_codec()
    x = sines(2, samples)
    ids = codec.encode(x)
    assert ids.shape == (2, frames) and ids.dtype == torch.long and 0 <= int(ids.min()) and int(ids.max()) < 32
    assert torch.equal(ids, codec.encode(torch.nn.functional.pad(x, (0, frames * 8 - samples))))
    assert torch.equal(codec.to_positions(ids), ids) and torch.equal(codec.from_positions(ids), ids)
    audio = codec.decode(ids)
    assert audio.shape == (2, 1, frames * 8) and audio.dtype == torch.float32 and audio.abs().max() <= 1


def test_lengths_zero_each_item_beyond_its_end():
    codec = trained_codec()
    x = sines(2)
    lengths = torch.tensor([CLIP, 1001])
    cut = x.clone()
    cut[1, :, 1001:] = 0
    ids = codec.encode(x, lengths=lengths, sample_rate=SR)
    assert torch.equal(ids, codec.encode(cut)) and torch.equal(ids[0], codec.encode(x)[0])
    assert codec.frame_lengths(lengths, max_len=CLIP).tolist() == [250, 126]


# ---- training and state --------------------------------------------------------------------------------
def test_training_steps_reduce_the_loss_on_a_fixed_batch():
    codec = tiny_codec()
    losses, logs = adam_steps(codec, [sines(4)] * 30)
    assert set(logs) == {"l1", "stft", "mel", "commit", "usage"}
    assert all(isinstance(v, float) and np.isfinite(v) for v in logs.values()) and 0 < logs["usage"] <= 1
    assert min(losses[-5:]) < 0.8 * losses[0], losses
    assert bool(codec.quantizer._codebook.initted)  # k-means ran on the first batch
    # dead codes: under a quarter of a uniform share of this batch's 4 x 250 frames
    assert codec.quantizer._codebook.threshold_ema_dead_code == pytest.approx(0.25 * 1000 / 32)


def test_encode_is_deterministic_and_changes_no_state_in_either_mode():
    fresh = tiny_codec()
    before = state_of(fresh)
    fresh.encode(sines())
    assert same_state(before, state_of(fresh))  # not even the k-means init

    codec = trained_codec()
    before = state_of(codec)
    x = sines(seed=5)
    ids = codec.encode(x)
    assert torch.equal(ids, codec.encode(x))
    codec.train()
    assert torch.equal(ids, codec.encode(x))
    codec.eval()
    with torch.no_grad():
        rec, forward_ids, _ = codec(x)  # an eval forward quantises as encode does
        codec.loss(x)
        assert torch.equal(rec.clamp(-1, 1), codec.decode(ids))
    assert torch.equal(ids, forward_ids)
    assert same_state(before, state_of(codec))


def test_save_and_load_round_trip(tmp_path):
    codec = trained_codec()
    codec.save_pretrained(tmp_path)
    loaded = SingleCodebookAudioCodec.from_pretrained(tmp_path).eval()
    assert loaded.cfg == codec.cfg
    assert same_state(state_of(codec), state_of(loaded))
    x = sines(seed=7)
    ids = codec.encode(x)
    assert torch.equal(ids, loaded.encode(x))
    with torch.no_grad():
        assert torch.equal(codec.decode(ids), loaded.decode(ids))


def test_next_token_pipeline_generates_audio():
    codec = trained_codec(clip_samples=160)  # 20 tokens: a short generation
    pipe = build(NextTokenPipeline, codec)
    out = pipe(class_labels=[0, 3], output_type="np", generator=gen(0))
    assert out.tokens.shape == (2, 20) and int(out.tokens.max()) < 32
    assert out.audios.shape == (2, 160) and out.sample_rate == SR and np.abs(out.audios).max() <= 1


# ---- bad input -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("audio, kwargs, error, match", [
    (torch.zeros(2, 2, CLIP) + 0.1, {}, ValueError, "audio has 2 channels"),
    (sines(), {"sample_rate": 8000}, ValueError, "sample_rate=8000"),
    (sines().index_fill(2, torch.tensor([5]), float("inf")), {}, ValueError, "audio holds NaN or infinite"),
    (torch.zeros(2, 1, CLIP), {}, ValueError, "audio items .* silent"),
    (sines(2, 7), {}, ValueError, "audio holds 7 samples, shorter than one frame"),
    (sines()[:, 0], {}, ValueError, r"audio must have shape \[B, 1, T\]"),
    (sines(), {"lengths": torch.tensor([0, CLIP])}, ValueError, r"lengths must lie in \[1, 2000\]"),
])
def test_bad_audio_is_refused_naming_the_argument(audio, kwargs, error, match):
    codec = tiny_codec()
    with pytest.raises(error, match=match):
        codec.encode(audio, **kwargs)
    if not kwargs:
        with pytest.raises(error, match=match):
            codec.loss(audio)


def test_bad_ids_are_refused_naming_the_argument():
    codec = tiny_codec()
    with pytest.raises(ValueError, match=r"ids holds 32, outside the codebook \[0, 32\)"):
        codec.decode(torch.full((2, 10), 32))
    with pytest.raises(ValueError, match=r"ids must have shape \[B, t\]"):
        codec.decode(torch.zeros(2, 10, 1, dtype=torch.long))
    with pytest.raises(TypeError, match="ids must be an integer tensor"):
        codec.decode(torch.zeros(2, 10))
    with pytest.raises(ValueError, match="positions holds -1"):
        codec.from_positions(torch.full((2, 10), -1))
