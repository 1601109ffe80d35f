"""SNAC's weights (the ``snac`` package's model, random init) converted to a MultiScaleAudioCodec give its codes and waveforms."""

from __future__ import annotations

import json

import pytest
import torch

from mmgen.app.cli import main
from mmgen.weight_maps import WeightsMismatchError
from tokenizers_audio import MultiScaleAudioCodec
from tokenizers_audio.snac_weights import multiscale_codec_from_snac

snac = pytest.importorskip("snac")

CONFIG = dict(sampling_rate=8000, encoder_dim=16, encoder_rates=[2, 2], decoder_dim=64, decoder_rates=[2, 2], attn_window_size=4,
              codebook_size=32, codebook_dim=4, vq_strides=[4, 2, 1], noise=True, depthwise=True)


def _snac(**changes):
    torch.manual_seed(0)
    model = snac.SNAC(**{**CONFIG, **changes}).eval()
    with torch.no_grad():  # weight-norm magnitudes and Snake slopes that keep activations O(1); non-zero biases
        for name, p in model.named_parameters():
            if name.endswith("alpha"):
                p.uniform_(0.5, 1.5)
            elif name.endswith("original0"):
                p.uniform_(0.2, 0.5)
            elif name.endswith("bias"):
                p.normal_(std=0.1)
            elif "codebook" in name:
                p.normal_()
            elif "norm" in name:
                p.normal_(1.0, 0.1)
            else:
                p.normal_(std=p[0].numel() ** -0.5)
    return model


def _audio(samples: int = 256) -> torch.Tensor:  # a multiple of hop 4 × lcm(4, 4): SNAC pads nothing
    return 0.3 * torch.randn(2, 1, samples, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("changes", [{}, {"noise": False, "attn_window_size": None}, {"depthwise": False}])
def test_codes_and_waveforms_equal_snac(changes):
    model = _snac(**changes)
    codec = multiscale_codec_from_snac(model.state_dict(), {**CONFIG, **changes})
    audio = _audio()
    with torch.no_grad():
        codes = model.encode(audio)
        ids = codec.encode(audio, sample_rate=8000)
        assert len(ids) == 3 and all(torch.equal(a, b) for a, b in zip(ids, codes))
        torch.manual_seed(5)  # the noise blocks draw from the global generator, in the same order in both
        reference = model.decode(codes)
        torch.manual_seed(5)
        assert (codec.decode(ids) - reference).abs().max() <= 1e-4


def test_mismatched_snac_weights_are_listed():
    model = _snac()
    weights = model.state_dict()
    gone = "decoder.model.3.block.2.linear.parametrizations.weight.original1"
    with pytest.raises(ValueError, match="weight norm of decoder.model.3.block.2.linear is half there"):
        multiscale_codec_from_snac({k: v for k, v in weights.items() if k != gone}, CONFIG)
    with pytest.raises(WeightsMismatchError, match=r"missing keys: \['encoder\.block\.2\.block\.1\.block\.0\.alpha'\]"):
        multiscale_codec_from_snac({k: v for k, v in weights.items() if k != "encoder.block.2.block.1.block.0.alpha"}, CONFIG)
    with pytest.raises(WeightsMismatchError, match="3 codebooks, but vq_strides=\\[2, 1\\]"):
        multiscale_codec_from_snac(weights, {**CONFIG, "vq_strides": [2, 1]})
    with pytest.raises(ValueError, match="does not know: \\['stereo'\\]"):
        multiscale_codec_from_snac(weights, {**CONFIG, "stereo": True})


def test_cli_converts_a_snac_hub_folder(tmp_path):
    model = _snac()
    (tmp_path / "snac").mkdir()
    (tmp_path / "snac" / "config.json").write_text(json.dumps(CONFIG))
    torch.save(model.state_dict(), tmp_path / "snac" / "pytorch_model.bin")
    assert main(["convert", "--from", "snac", str(tmp_path / "snac"), str(tmp_path / "out"), "--allow-pickle"]) == 0
    codec = MultiScaleAudioCodec.from_pretrained(tmp_path / "out")
    audio = _audio()
    with torch.no_grad():
        assert all(torch.equal(a, b) for a, b in zip(codec.encode(audio), model.encode(audio)))
