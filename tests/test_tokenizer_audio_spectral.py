"""STFT-domain frontends: zero-phase frames and their inverse, the spectral encoder, the vocos / vocos-if decoders,
the three codecs built on them (training, encode / decode, save / load) and detuned tones for their training data."""

from __future__ import annotations

import math

import pytest
import torch
from audio_fixtures import CLIP, SR, adam_steps, sines
from loguru import logger

from mmgen.data import TonesDataset, render_tone
from mmgen.metrics import judge_tone
from tokenizers_audio.multiscale import MultiScaleAudioCodec, MultiScaleAudioConfig
from tokenizers_audio.rvq import RVQAudioCodec, RVQAudioConfig
from tokenizers_audio.seanet import SEANetDecoder, SEANetEncoder
from tokenizers_audio.single import SingleCodebookAudioCodec, SingleCodebookAudioConfig
from tokenizers_audio.spectral import (
    DEVIATION_WEIGHT,
    LOG_FLOOR,
    InstantaneousFrequencyDecoder,
    SpectralEncoder,
    VocosDecoder,
    frame_spectra,
    synthesize,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")
logger.disable("vector_quantize_pytorch")  # k-means init warns when a tiny batch has fewer frames than codes

HOP = 8  # strides (2, 4)
N_FFT = 4 * HOP


def _wrap(angle: torch.Tensor) -> torch.Tensor:
    return torch.remainder(angle + math.pi, 2 * math.pi) - math.pi


def sine_mixture(batch: int, samples: int, *, seed: int, partials: int = 3) -> torch.Tensor:
    """Sums of ``partials`` sines of random frequency (up to near Nyquist), level and phase, ``[B, 1, samples]``."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(samples) / SR
    freq = 50 + 7500 * torch.rand(batch, partials, 1, generator=g)
    amp = 0.1 + 0.2 * torch.rand(batch, partials, 1, generator=g)
    phase = 2 * math.pi * torch.rand(batch, partials, 1, generator=g)
    return (amp * torch.sin(2 * math.pi * freq * t + phase)).sum(1, keepdim=True)


def target_frames(audio: torch.Tensor, *, hop: int = HOP) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """What an InstantaneousFrequencyDecoder's ``frames`` should give for ``audio``: log magnitude, cos and sin of the deviation."""
    spectra = frame_spectra(audio, n_fft=4 * hop, hop_length=hop)
    return torch.log(spectra.magnitude + LOG_FLOOR), spectra.deviation.cos(), spectra.deviation.sin()


# ---- frame_spectra / synthesize ---------------------------------------------------------------------
@pytest.mark.parametrize("hop", [2, 8, 20])
@pytest.mark.parametrize("seed", [0, 1])
def test_synthesize_inverts_frame_spectra(hop, seed):
    x = sine_mixture(3, 37 * hop, seed=seed)
    spectra = frame_spectra(x, n_fft=4 * hop, hop_length=hop)
    assert spectra.magnitude.shape == spectra.deviation.shape == (3, 2 * hop + 1, 37)
    assert float(spectra.deviation.abs().max()) <= math.pi + 1e-6  # wrapped
    y = synthesize(*spectra, n_fft=4 * hop, hop_length=hop)
    assert y.shape == x.shape
    assert float((y - x).abs().max()) <= 1e-4


def test_frame_spectra_needs_whole_frames():
    with pytest.raises(ValueError, match="multiple of hop_length=8"):
        frame_spectra(torch.zeros(1, 1, 8 * 5 + 3), n_fft=N_FFT, hop_length=HOP)


@pytest.mark.parametrize("bins", [5.3, 10.5, 17.8])
def test_steady_sinusoid_has_a_constant_deviation(bins):
    """A steady partial between bin centres: in its main-lobe bins the deviation does not move from frame to frame,
    so a decoder predicting it from phase-free tokens has a constant target. Per bin it is the partial's advance
    minus the bin centre's (the advance itself, ``ω · hop``, is one number for all those bins).

    Frames whose window reaches into the zero padding (the first three and last three, n_fft = 4 · hop) see a
    clipped sinusoid and are left out; tolerance 5e-3 rad (float32, and leakage of the negative-frequency image).
    """
    hop, n_fft, frames = 16, 64, 40
    t = torch.arange(hop * frames)
    x = (0.5 * torch.cos(2 * math.pi * bins / n_fft * t + 0.7))[None, None]
    spectra = frame_spectra(x, n_fft=n_fft, hop_length=hop)
    lobe = [k for k in range(n_fft // 2 + 1) if abs(k - bins) <= 1.5]
    assert len(lobe) >= 2
    deviation_kt = spectra.deviation[0, lobe, 3:-3]
    magnitude_kt = spectra.magnitude[0, lobe, 3:-3]
    # constant over frames (compared on the circle)
    spread = _wrap(deviation_kt - deviation_kt[:, :1]).abs().max()
    assert float(spread) <= 5e-3, spread
    assert float((magnitude_kt - magnitude_kt[:, :1]).abs().max()) <= 1e-3 * float(magnitude_kt.max())
    # per bin: the partial's advance minus bin k's own advance (zero for a partial on bin k's centre)
    expected_k1 = _wrap(torch.tensor([2 * math.pi * (bins - k) * hop / n_fft for k in lobe]))[:, None]
    assert float(_wrap(deviation_kt - expected_k1).abs().max()) <= 5e-3
    # so the advance (deviation + bin centre's advance) is one number across the main lobe: ω · hop, wrapped
    advance_kt = _wrap(deviation_kt + torch.tensor([2 * math.pi * k * hop / n_fft for k in lobe])[:, None])
    omega_hop = _wrap(torch.tensor(2 * math.pi * bins * hop / n_fft))
    assert float(_wrap(advance_kt - omega_hop).abs().max()) <= 5e-3


def test_constant_frames_synthesize_a_steady_partial():
    """What the decoder predicts for a steady partial (the same magnitude and deviation every frame) renders a steady
    partial at that pitch: re-analysed, the interior frames carry the same deviation."""
    hop, n_fft, frames, bins = 16, 64, 40, 10.3
    x = (0.5 * torch.cos(2 * math.pi * bins / n_fft * torch.arange(hop * frames)))[None, None]
    spectra = frame_spectra(x, n_fft=n_fft, hop_length=hop)
    steady_mag = spectra.magnitude[..., frames // 2:frames // 2 + 1].expand(-1, -1, frames)
    steady_dev = spectra.deviation[..., frames // 2:frames // 2 + 1].expand(-1, -1, frames)
    y = synthesize(steady_mag, steady_dev, n_fft=n_fft, hop_length=hop)
    assert y.shape == x.shape
    again = frame_spectra(y, n_fft=n_fft, hop_length=hop)
    lobe = [9, 10, 11]
    assert float(_wrap(again.deviation[0, lobe, 3:-3] - spectra.deviation[0, lobe, 3:-3]).abs().max()) <= 2e-3
    # the rendered partial has the input's level (it is a sinusoid, not an incoherent smear)
    assert abs(float(y[..., 3 * hop:-3 * hop].abs().max()) - 0.5) <= 0.02


# ---- modules ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("frames", [1, 6])
def test_encoder_and_decoders_keep_frames_times_hop(frames):
    torch.manual_seed(0)
    encoder = SpectralEncoder(dim=16, hop_length=HOP, width=16, num_layers=1)
    latents = encoder(sines(2, frames * HOP))
    assert latents.shape == (2, 16, frames)
    for kind in (InstantaneousFrequencyDecoder, VocosDecoder):
        decoder = kind(dim=16, hop_length=HOP, width=16, num_layers=1)
        audio = decoder(latents)
        assert audio.shape == (2, 1, frames * HOP), kind.__name__
        assert bool(torch.isfinite(audio).all())
    assert encoder.n_fft == 4 * HOP


def test_frame_loss_is_zero_at_the_target_and_positive_elsewhere():
    torch.manual_seed(0)
    decoder = InstantaneousFrequencyDecoder(dim=8, hop_length=HOP, width=16, num_layers=1)
    audio = sines(2, 40 * HOP)
    log_mag, cos, sin = target_frames(audio)
    assert float(decoder.frame_loss((log_mag, cos, sin), audio)) <= 1e-6
    # the log magnitude's L1: off by 0.1 everywhere
    assert float(decoder.frame_loss((log_mag + 0.1, cos, sin), audio)) == pytest.approx(0.1, rel=1e-4)
    # the deviation's unit vector, weighted by the target magnitude: turned by π everywhere, squared error 4
    assert float(decoder.frame_loss((log_mag, -cos, -sin), audio)) == pytest.approx(4.0 * DEVIATION_WEIGHT, rel=1e-4)
    # turned by π only where the target is silent (below 1e-3 of the loudest bin): next to nothing
    magnitude = frame_spectra(audio, n_fft=N_FFT, hop_length=HOP).magnitude
    quiet = magnitude < 1e-3 * magnitude.amax(dim=(1, 2), keepdim=True)
    flip = torch.where(quiet, -1.0, 1.0)
    assert float(decoder.frame_loss((log_mag, flip * cos, flip * sin), audio)) < 1e-2 * DEVIATION_WEIGHT
    # a longer vector of the right angle renders the same audio but is not the target
    assert float(decoder.frame_loss((log_mag, 2 * cos, 2 * sin), audio)) > 0.1
    # a random decoder is far from the target, and the loss trains it
    latents = torch.randn(2, 8, 40)
    loss = decoder.frame_loss(decoder.frames(latents), audio)
    assert float(loss.detach()) > 0.1
    loss.backward()
    assert all(p.grad is not None for p in decoder.parameters())


def test_render_of_the_target_frames_is_the_audio():
    """The decoder's render inverts the frames it is trained towards (and uses only the deviation vector's angle)."""
    decoder = InstantaneousFrequencyDecoder(dim=8, hop_length=HOP, width=16, num_layers=1)
    audio = sine_mixture(2, 30 * HOP, seed=3)
    log_mag, cos, sin = target_frames(audio)
    assert float((decoder.render((log_mag, cos, sin)) - audio).abs().max()) <= 1e-4
    assert float((decoder.render((log_mag, 3 * cos, 3 * sin)) - audio).abs().max()) <= 1e-4


# ---- the codecs with STFT frontends -------------------------------------------------------------------
SMALL_FRONTEND = {"encoder_type": "stft", "encoder_dim": 16, "encoder_layers": 1, "decoder_dim": 16, "decoder_layers": 1}
SMALL_LOSSES = {"stft_resolutions": ((128, 32), (256, 64)), "mel_n_fft": 256, "mel_hop_length": 64, "n_mels": 32}
RVQ_SAMPLES = 1600


def spectral_codec(kind: str, **overrides) -> torch.nn.Module:
    """A tiny codec with an STFT encoder and (unless ``kind`` is ``"rvq-vocos"``) a vocos-if decoder trained on its frames."""
    torch.manual_seed(0)
    decoder = {"decoder_type": "vocos"} if kind == "rvq-vocos" else {"decoder_type": "vocos-if", "frame_weight": 1.0}
    common = {"strides": (2, 4), "base_channels": 8, "dim": 16, "codebook_size": 32, **SMALL_FRONTEND, **decoder, **overrides}
    if kind == "single":
        return SingleCodebookAudioCodec(SingleCodebookAudioConfig(**{"clip_samples": CLIP, **SMALL_LOSSES, **common}))
    if kind == "multiscale":
        return MultiScaleAudioCodec(MultiScaleAudioConfig(**{"clip_samples": CLIP, "codebook_dim": 4, "vq_strides": (4, 2, 1),
                                                             **SMALL_LOSSES, **common}))
    return RVQAudioCodec(RVQAudioConfig(**{"clip_samples": RVQ_SAMPLES, "num_quantizers": 2, **common}))


def batch_for(kind: str, *, seed: int = 0) -> torch.Tensor:
    return sines(4, RVQ_SAMPLES if kind.startswith("rvq") else CLIP, seed=seed)


def check_ids(kind: str, ids, samples: int) -> None:
    frames = samples // HOP
    if kind == "multiscale":
        assert [tuple(level.shape) for level in ids] == [(2, math.ceil(frames / s)) for s in (4, 2, 1)]
        assert all(level.dtype == torch.long for level in ids)
    elif kind == "single":
        assert ids.shape == (2, frames) and ids.dtype == torch.long
    else:
        assert ids.shape == (2, frames, 2) and ids.dtype == torch.long


KINDS = ["single", "multiscale", "rvq", "rvq-vocos"]


@pytest.mark.parametrize("kind", KINDS)
def test_loss_holds_the_frame_term(kind):
    codec = spectral_codec(kind).train()
    assert isinstance(codec.encoder, SpectralEncoder)
    assert isinstance(codec.decoder, VocosDecoder if kind == "rvq-vocos" else InstantaneousFrequencyDecoder)
    loss, logs = codec.loss(batch_for(kind))
    assert loss.dim() == 0 and bool(torch.isfinite(loss))
    if kind == "rvq-vocos":
        assert "frames" not in logs
    else:
        assert math.isfinite(logs["frames"]) and logs["frames"] > 0
    # every weight is 1: the loss is the sum of its logged terms, the frame term included
    terms = ("l1", "stft", "mel", "commit") + (() if kind == "rvq-vocos" else ("frames",))
    assert float(loss.detach()) == pytest.approx(sum(logs[name] for name in terms), rel=1e-4)
    loss.backward()
    assert any(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in codec.encoder.parameters())


@pytest.mark.parametrize("kind", KINDS)
def test_a_few_adam_steps_lower_the_loss(kind):
    """Twenty steps on one batch. The RVQ codec trains without quantizer dropout (each step would draw another
    objective) and with the faster codebook EMA of the other codecs (0.8: at 0.95 the codes lag the moving encoder
    for the first steps). The single codebook (32 codes for every frame) reassigns frames at every EMA step, so a
    large step makes its loss wander, with a course that depends on the thread count: it gets smaller, more steps."""
    rvq = kind.startswith("rvq")
    codec = spectral_codec(kind, **({"quantizer_dropout": False, "decay": 0.8} if rvq else {}))
    steps, lr = (30, 5e-4) if kind == "single" else (20, 1e-3 if rvq else 3e-3)
    losses, logs = adam_steps(codec, [batch_for(kind)] * steps, lr=lr)
    assert all(math.isfinite(value) for value in losses)
    assert min(losses[-5:]) < 0.95 * losses[0], losses
    assert ("frames" in logs) == (kind != "rvq-vocos") and all(math.isfinite(value) for value in logs.values())


@pytest.mark.parametrize("kind", KINDS)
def test_encode_decode_shapes_and_save_load(kind, tmp_path):
    codec = spectral_codec(kind)
    adam_steps(codec, [batch_for(kind)])  # k-means initialises the codebooks
    codec.eval()
    samples = 40 * HOP
    audio = sines(2, samples, seed=5)
    ids = codec.encode(audio)
    check_ids(kind, ids, samples)
    with torch.no_grad():
        decoded = codec.decode(ids)
    assert decoded.shape == (2, 1, samples)
    assert bool(torch.isfinite(decoded).all()) and float(decoded.abs().max()) <= 1.0
    codec.save_pretrained(tmp_path)
    loaded = type(codec).from_pretrained(tmp_path).eval()
    assert (loaded.cfg.encoder_type, loaded.cfg.decoder_type) == (codec.cfg.encoder_type, codec.cfg.decoder_type)
    assert loaded.cfg.frame_weight == codec.cfg.frame_weight
    assert type(loaded.decoder) is type(codec.decoder)
    again = loaded.encode(audio)
    if kind == "multiscale":
        assert all(torch.equal(a, b) for a, b in zip(again, ids))
    else:
        assert torch.equal(again, ids)
    with torch.no_grad():
        assert torch.equal(loaded.decode(ids), decoded)


@pytest.mark.parametrize("encoder_type", ["seanet", "stft"])
@pytest.mark.parametrize("decoder_type", ["seanet", "vocos", "vocos-if"])
def test_every_encoder_decoder_pair_builds_and_keeps_the_frame_count(encoder_type, decoder_type):
    codec = spectral_codec("multiscale", encoder_type=encoder_type, decoder_type=decoder_type,
                           frame_weight=1.0 if decoder_type == "vocos-if" else 0.0).eval()
    assert isinstance(codec.encoder, SpectralEncoder if encoder_type == "stft" else SEANetEncoder)
    assert isinstance(codec.decoder, {"seanet": SEANetDecoder, "vocos": VocosDecoder,
                                      "vocos-if": InstantaneousFrequencyDecoder}[decoder_type])
    ids = codec.encode(sines(2, 20 * HOP))
    assert [level.shape[1] for level in ids] == [5, 10, 20]
    assert codec.decode(ids).shape == (2, 1, 20 * HOP)


def test_rvq_with_stft_frontends_does_not_stream():
    codec = spectral_codec("rvq").eval()
    with pytest.raises(ValueError, match="causal=True"):
        codec.streaming_encoder()
    with pytest.raises(ValueError, match="causal=True"):
        codec.streaming_decoder()


# ---- detuned tones ------------------------------------------------------------------------------------
def test_a_detuned_tone_sounds_at_the_moved_pitch():
    assert judge_tone(render_tone("tone", "C4")) == ("tone", "C4")
    assert judge_tone(render_tone("tone", "C4", detune_semitones=2)) == ("tone", "D4")
    assert judge_tone(render_tone("tone", "D4", detune_semitones=-2.0)) == ("tone", "C4")
    assert torch.equal(render_tone("tone", "E4", detune_semitones=0.0), render_tone("tone", "E4"))


def test_tones_dataset_detune():
    plain, zero = TonesDataset(length=6, seconds=0.25), TonesDataset(length=6, seconds=0.25, detune=0)
    detuned, twin = TonesDataset(length=6, seconds=0.25, detune=3), TonesDataset(length=6, seconds=0.25, detune=3.0)
    for i in range(6):
        a, b = plain[i], zero[i]
        assert torch.equal(a["audio"], b["audio"]) and (a["class_id"], a["caption"]) == (b["class_id"], b["caption"])
        d = detuned[i]
        assert torch.equal(d["audio"], twin[i]["audio"]) and torch.equal(d["audio"], detuned[i]["audio"])
        assert d["audio"].shape == a["audio"].shape
        assert not torch.equal(d["audio"], a["audio"])
        # the detune draws from a stream of its own: the item keeps its level (and timbre), only the pitch moves
        assert float(d["audio"].abs().max()) == pytest.approx(float(a["audio"].abs().max()), rel=0.1)
        assert (d["class_id"], d["caption"]) == (a["class_id"], a["caption"])
