"""MultiScaleAudioCodec (SNAC-style): level sizes, padding, training, stateless encode, ScaleContext, next-scale generation."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
from audio_fixtures import CLIP, SR, adam_steps, same_state, sines, state_of
from pipeline_fixtures import build, gen

from mmgen.protocol import check_tokenizer, has_scale_context
from pipelines import ARAudioPipelineOutput, NextScalePipeline
from tokenizers_audio.multiscale import MultiScaleAudioCodec, MultiScaleAudioConfig

pytestmark = pytest.mark.usefixtures("one_torch_thread")

LEVELS = (63, 125, 250)


def tiny_config(**overrides) -> MultiScaleAudioConfig:
    return MultiScaleAudioConfig(**{**dict(
        clip_samples=CLIP, strides=(2, 4), base_channels=8, dim=16, codebook_size=32, codebook_dim=4,
        vq_strides=(4, 2, 1), stft_resolutions=((128, 32), (256, 64)), mel_n_fft=256, mel_hop_length=64, n_mels=32,
    ), **overrides})


def tiny_codec(**overrides) -> MultiScaleAudioCodec:
    torch.manual_seed(0)
    return MultiScaleAudioCodec(tiny_config(**overrides)).eval()



@functools.lru_cache(maxsize=1)
def _trained_state() -> dict[str, torch.Tensor]:
    codec = tiny_codec()
    adam_steps(codec, [sines(4, seed=step) for step in range(2)])
    return state_of(codec)


def trained_codec() -> MultiScaleAudioCodec:
    """A fresh codec holding the weights of two training steps: codebooks k-means initialised and EMA-updated."""
    codec = tiny_codec()
    codec.load_state_dict(_trained_state())
    return codec



# ---- sizes -----------------------------------------------------------------------------------------
def test_sizes_rates_and_token_spec():
    codec = tiny_codec()
    assert (codec.sample_rate, codec.hop_length, codec.codebook_size, codec.frame_rate) == (SR, 8, 32, 2000.0)
    assert codec.level_frame_rates == (500.0, 1000.0, 2000.0) and codec.num_levels == 3
    spec = check_tokenizer(codec)
    assert spec.scales == tuple((n,) for n in LEVELS) and spec.content.codebook_sizes == (32,)
    assert spec.num_positions == codec.num_tokens == sum(LEVELS)
    assert has_scale_context(codec) and codec.context_dim == 16 and codec.modality == "audio"
    # SNAC's rates at 16 kHz, hop 320: 12.5 / 25 / 50 Hz; a 1 s clip has 13 (last window partial), 25 and 50 tokens
    default = MultiScaleAudioConfig()
    assert default.hop_length == 320 and default.level_frames(default.clip_frames) == (13, 25, 50)


def test_partial_last_window_averages_what_it_holds():
    codec = tiny_codec()
    x_BDt = torch.arange(10.0).view(1, 1, 10)
    assert torch.equal(codec.quantizer.pool(x_BDt, 0).flatten(), torch.tensor([1.5, 5.5, 8.5]))
    assert torch.equal(codec.quantizer.upsample(torch.tensor([[[1.0], [2.0], [3.0]]]), 0, 10).flatten(),
                       torch.tensor([1.0] * 4 + [2.0] * 4 + [3.0] * 2))


# ---- encode / decode -----------------------------------------------------------------------------------
@pytest.mark.parametrize("samples, levels", [(CLIP, LEVELS), (CLIP - 1, LEVELS), (CLIP + 3, (63, 126, 251)), (8, (1, 1, 1))])
def test_encode_pads_to_whole_frames_and_round_trips(samples, levels):
    codec = trained_codec()
    x = sines(2, samples)
    ids = codec.encode(x)
    assert [tuple(i.shape) for i in ids] == [(2, n) for n in levels]
    assert all(i.dtype == torch.long and 0 <= int(i.min()) and int(i.max()) < 32 for i in ids)
    padded = torch.nn.functional.pad(x, (0, levels[-1] * 8 - samples))
    assert all(torch.equal(a, b) for a, b in zip(ids, codec.encode(padded)))  # padding is with zeros
    audio = codec.decode(ids)
    assert audio.shape == (2, 1, levels[-1] * 8) and audio.dtype == torch.float32 and audio.abs().max() <= 1


def test_flat_form_and_positions_are_the_levels_concatenated():
    codec = trained_codec()
    ids = codec.encode(sines())
    flat = torch.cat(ids, dim=1)
    assert all(torch.equal(a, b) for a, b in zip(codec.to_positions(flat), ids))
    assert all(torch.equal(a, b) for a, b in zip(codec.from_positions(codec.to_positions(ids)), ids))
    with torch.no_grad():
        assert torch.equal(codec.decode(flat), codec.decode(ids))


def test_lengths_zero_each_item_beyond_its_end():
    codec = trained_codec()
    x = sines(2)
    lengths = torch.tensor([CLIP, 1000])
    cut = x.clone()
    cut[1, :, 1000:] = 0
    ids = codec.encode(x, lengths=lengths, sample_rate=SR)
    assert all(torch.equal(a, b) for a, b in zip(ids, codec.encode(cut)))
    assert all(torch.equal(a[0], b[0]) for a, b in zip(ids, codec.encode(x)))
    valid = codec.token_lengths(lengths, max_len=CLIP)
    assert [v.tolist() for v in valid] == [[63, 32], [125, 63], [250, 125]]


# ---- training and state --------------------------------------------------------------------------------
def test_training_steps_reduce_the_loss_on_a_fixed_batch():
    codec = tiny_codec()
    losses, logs = adam_steps(codec, [sines(4)] * 30)
    assert set(logs) == {"l1", "stft", "mel", "commit", "usage", "usage_0", "usage_1", "usage_2"}
    assert all(isinstance(v, float) and np.isfinite(v) for v in logs.values()) and 0 < logs["usage"] <= 1
    assert min(losses[-5:]) < 0.8 * losses[0], losses
    assert all(bool(vq._codebook.initted) for vq in codec.quantizer.levels)  # k-means ran on the first batch
    # dead codes: under a quarter of a uniform share of the level's frames in this batch of 4
    thresholds = [vq._codebook.threshold_ema_dead_code for vq in codec.quantizer.levels]
    assert thresholds == pytest.approx([0.25 * 4 * n / 32 for n in LEVELS])


def test_encode_is_deterministic_and_changes_no_state_in_either_mode():
    fresh = tiny_codec()
    before = state_of(fresh)
    fresh.encode(sines())
    assert same_state(before, state_of(fresh))  # not even the k-means init

    codec = trained_codec()
    before = state_of(codec)
    x = sines(seed=5)
    ids = codec.encode(x)
    assert all(torch.equal(a, b) for a, b in zip(ids, codec.encode(x)))
    codec.train()
    assert all(torch.equal(a, b) for a, b in zip(ids, codec.encode(x)))
    codec.eval()
    with torch.no_grad():
        _, forward_ids, _ = codec(x)  # an eval forward quantises as encode does
        codec.loss(x)
    assert all(torch.equal(a, b) for a, b in zip(ids, forward_ids))
    assert same_state(before, state_of(codec))


def test_save_and_load_round_trip(tmp_path):
    codec = trained_codec()
    codec.save_pretrained(tmp_path)
    loaded = MultiScaleAudioCodec.from_pretrained(tmp_path).eval()
    assert loaded.cfg == codec.cfg
    assert same_state(state_of(codec), state_of(loaded))
    x = sines(seed=7)
    ids = codec.encode(x)
    assert all(torch.equal(a, b) for a, b in zip(ids, loaded.encode(x)))
    with torch.no_grad():
        assert torch.equal(codec.decode(ids), loaded.decode(ids))


# ---- ScaleContext --------------------------------------------------------------------------------------
def test_generation_context_after_the_true_ids_equals_the_teacher_context():
    codec = trained_codec()
    ids = codec.encode(sines())
    with torch.no_grad():
        teacher = codec.teacher_context(torch.cat(ids, dim=1))
        assert teacher.shape == (2, LEVELS[1] + LEVELS[2], codec.context_dim)
        state, stepped = None, []
        for k, ids_k in enumerate(ids):
            state, inputs = codec.context_step(state, k, ids_k)
            if k == len(ids) - 1:
                assert inputs is None
            else:
                assert inputs.shape == (2, LEVELS[k + 1], codec.context_dim)
                stepped.append(inputs)
        assert torch.allclose(torch.cat(stepped, dim=1), teacher, atol=1e-6)
        assert torch.allclose(state, codec.ids_to_latents(ids), atol=1e-6)
        # the finest level's input is the reconstruction of the coarser two, at the latent rate
        q = codec.quantizer
        coarse = sum(q.upsample(q.codes(ids[k], k), k, LEVELS[-1]) for k in (0, 1))
        assert torch.allclose(teacher[:, LEVELS[1]:], coarse.transpose(1, 2), atol=1e-6)


def test_next_scale_pipeline_generates_audio_pyramids():
    codec = trained_codec()
    pipe = build(NextScalePipeline, codec)
    tokens = pipe(class_labels=[0, 3], output_type="tokens", generator=gen(0)).tokens
    assert [tuple(t.shape) for t in tokens] == [(2, n) for n in LEVELS]
    assert all(t.dtype == torch.long and int(t.max()) < 32 for t in tokens)
    out = pipe(class_labels=[0, 3], output_type="np", generator=gen(0))
    assert isinstance(out, ARAudioPipelineOutput) and out.sample_rate == SR
    assert out.audios.shape == (2, CLIP) and np.abs(out.audios).max() <= 1
    assert all(torch.equal(a, b) for a, b in zip(out.tokens, tokens))
    with torch.no_grad():
        assert np.allclose(out.audios, codec.decode(tokens)[:, 0].numpy(), atol=1e-6)
    seq = pipe.tokenize(sines())
    assert seq.shape == (2, sum(LEVELS))
    loss, _ = pipe.loss(seq, class_labels=torch.tensor([1, 2]))
    assert torch.isfinite(loss)


# ---- bad input -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("audio, kwargs, error, match", [
    (torch.zeros(2, 2, CLIP) + 0.1, {}, ValueError, "audio has 2 channels"),
    (sines(), {"sample_rate": 22050}, ValueError, "sample_rate=22050"),
    (sines().index_fill(2, torch.tensor([5]), float("nan")), {}, ValueError, "audio holds NaN"),
    (torch.zeros(2, 1, CLIP), {}, ValueError, "audio items .* silent"),
    (sines(2, 7), {}, ValueError, "audio holds 7 samples, shorter than one frame"),
    (sines().to(torch.int16), {}, TypeError, "audio must be a float"),
    (sines(), {"lengths": torch.tensor([CLIP, CLIP + 1])}, ValueError, r"lengths must lie in \[1, 2000\]"),
    (sines(), {"lengths": torch.tensor([CLIP])}, ValueError, "lengths must be 2 integer"),
])
def test_bad_audio_is_refused_naming_the_argument(audio, kwargs, error, match):
    codec = tiny_codec()
    with pytest.raises(error, match=match):
        codec.encode(audio, **kwargs)


def test_bad_audio_in_the_loss_is_refused_too():
    with pytest.raises(ValueError, match="audio has 2 channels"):
        tiny_codec().train().loss(torch.full((1, 2, CLIP), 0.1))


def test_bad_ids_are_refused_naming_the_argument():
    codec = trained_codec()
    ids = codec.encode(sines())
    with pytest.raises(ValueError, match=r"ids\[2\] holds 32, outside the codebook \[0, 32\)"):
        codec.decode([ids[0], ids[1], torch.full_like(ids[2], 32)])
    with pytest.raises(ValueError, match=r"ids must be a \[B, L\] tensor or a list of 3 per-level tensors"):
        codec.decode(ids[:2])
    with pytest.raises(ValueError, match=r"ids\[1\] must have shape \[2, 125\]"):
        codec.decode([ids[0], ids[0], ids[2]])
    with pytest.raises(ValueError, match=r"flat ids must have shape \[B, 438\]"):
        codec.decode(torch.zeros(2, 437, dtype=torch.long))
    with pytest.raises(ValueError, match="outside the codebook"):
        codec.decode(torch.full((2, 438), -1))
    with pytest.raises(TypeError, match=r"ids\[0\] must be an integer tensor"):
        codec.decode([i.float() for i in ids])
    with pytest.raises(ValueError, match=r"ids_Bn of level 1 must have shape \[B, 125\]"):
        codec.context_step(None, 1, ids[0])
    with pytest.raises(ValueError, match=r"scale_index must be an int in \[0, 3\)"):
        codec.context_step(None, 3, ids[2])
    with pytest.raises(ValueError, match=r"ids_BL must have shape \[B, 438\]"):
        codec.teacher_context(torch.zeros(2, 10, dtype=torch.long))


@pytest.mark.parametrize("overrides, match", [
    ({"vq_strides": (4, 2)}, "end at 1"),
    ({"vq_strides": (2, 4, 1)}, "strictly decreasing"),
    ({"vq_strides": (1,)}, "at least two levels"),
    ({"clip_samples": 4}, "at least one frame"),
    ({"codebook_size": 0}, "codebook_size must be a positive int"),
    ({"ema_decay": 1.0}, "ema_decay must be in"),
])
def test_bad_configs_are_refused(overrides, match):
    with pytest.raises(ValueError, match=match):
        tiny_config(**overrides)
