"""SEANet encoder / decoder: frame counts, causality, streaming equals offline, bad input."""

import pytest
import torch

from tokenizers_audio.seanet import SEANetDecoder, SEANetEncoder

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = {"base_channels": 8, "dim": 16, "strides": (2, 4)}


def pair(**overrides) -> tuple[SEANetEncoder, SEANetDecoder]:
    torch.manual_seed(0)
    options = {**TINY, **overrides}
    return SEANetEncoder(**options), SEANetDecoder(**options)


def noise(batch: int = 2, samples: int = 800, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 1, samples, generator=torch.Generator().manual_seed(seed)) * 0.3


@pytest.mark.parametrize("strides", [(2, 4), (2, 4, 5, 8), (3,)])
@pytest.mark.parametrize("causal", [False, True])
def test_frame_counts_follow_the_strides(strides, causal):
    encoder, decoder = pair(strides=strides, causal=causal)
    hop = {(2, 4): 8, (2, 4, 5, 8): 320, (3,): 3}[strides]
    assert encoder.hop_length == decoder.hop_length == hop
    x = noise(samples=hop * 5)
    with torch.no_grad():
        z = encoder(x)
        assert z.shape == (2, 16, 5)
        assert decoder(z).shape == (2, 1, hop * 5)


def test_channels_and_options():
    encoder, decoder = pair(channels=2, num_res_blocks=3, kernel_size=5, weight_norm=False)
    with torch.no_grad():
        assert decoder(encoder(noise(samples=80).repeat(1, 2, 1))).shape == (2, 2, 80)
    dilations = [m.conv.dilation[0] for m in encoder.modules() if type(m).__name__ == "_Conv" and m.conv.kernel_size[0] == 3]
    assert dilations == [1, 2, 4] * 2  # SEANet's dilation base 2, per level


def test_causal_outputs_ignore_the_future_and_non_causal_ones_do_not():
    x = noise(1, 400)
    changed = x.clone()
    changed[..., 200:] = -changed[..., 200:]
    for causal in (True, False):
        encoder, decoder = pair(causal=causal)
        with torch.no_grad():
            z, z2 = encoder(x), encoder(changed)
            y, y2 = decoder(z), decoder(z2)
        same_past = torch.equal(z[..., :25], z2[..., :25]) and torch.equal(y[..., :200], y2[..., :200])
        assert same_past == causal


@pytest.mark.parametrize("weight_norm", [False, True])
def test_streaming_equals_offline_for_uneven_chunks(weight_norm):
    encoder, decoder = pair(causal=True, num_res_blocks=2, weight_norm=weight_norm)
    x = noise(2, 800)
    with torch.no_grad():
        z, y = encoder(x), decoder(encoder(x))
    stream, parts, start = encoder.streaming(), [], 0
    for size in (8, 24, 400, 8, 360):
        parts.append(stream.step(x[..., start:start + size]))
        start += size
    assert (torch.cat(parts, -1) - z).abs().max() <= 1e-5
    stream, parts, start = decoder.streaming(), [], 0
    for size in (1, 3, 50, 1, 45):
        parts.append(stream.step(z[..., start:start + size]))
        start += size
    assert (torch.cat(parts, -1) - y).abs().max() <= 1e-5


def test_bad_input_is_a_clear_error():
    encoder, decoder = pair()
    with pytest.raises(ValueError, match=r"audio_B1T holds 801 samples; need a positive multiple of 8"):
        encoder(noise(samples=801))
    with pytest.raises(ValueError, match=r"audio_B1T must have shape \[B, 1, n\]"):
        encoder(noise(samples=800)[:, 0])
    with pytest.raises(TypeError, match="audio_B1T must be a float tensor"):
        encoder(torch.zeros(1, 1, 8, dtype=torch.long))
    with pytest.raises(ValueError, match=r"latents_BDt must have shape \[B, 16, n\]"):
        decoder(torch.zeros(1, 8, 4))
    with pytest.raises(ValueError, match="streaming needs a causal SEANetEncoder"):
        encoder.streaming()
    causal, _ = pair(causal=True)
    stream = causal.streaming()
    with pytest.raises(ValueError, match="chunk holds 12 samples; need a positive multiple of 8"):
        stream.step(noise(samples=12))
    stream.step(noise(2, 8))
    with pytest.raises(ValueError, match="chunk has batch size 1, but this stream started with 2"):
        stream.step(noise(1, 8))


@pytest.mark.parametrize("option, value, message", [
    ("strides", (), "strides must be a non-empty sequence"),
    ("strides", (2, 0), "strides must be a non-empty sequence of positive ints"),
    ("dim", 0, "dim must be a positive int"),
    ("base_channels", 1, "base_channels must be >= compress=2"),
    ("num_res_blocks", -1, "num_res_blocks must be an int >= 0"),
])
def test_bad_options_name_the_option(option, value, message):
    with pytest.raises(ValueError, match=message):
        SEANetEncoder(**{**TINY, option: value})
    with pytest.raises(ValueError, match=message):
        SEANetDecoder(**{**TINY, option: value})
