"""DAC's weights (transformers' DacModel, random init) converted to an RVQAudioCodec give its codes and waveforms."""

from __future__ import annotations

import pytest
import torch

from mmgen.app.cli import main
from mmgen.weight_maps import WeightsMismatchError
from tokenizers_audio import RVQAudioCodec
from tokenizers_audio.dac_weights import rvq_codec_from_dac

transformers = pytest.importorskip("transformers")


def _dac(strides=(2, 4), seed: int = 0, weight_norm: bool = False):
    torch.manual_seed(seed)
    config = transformers.DacConfig(encoder_hidden_size=4, downsampling_ratios=list(strides), upsampling_ratios=list(reversed(strides)),
                                    decoder_hidden_size=32, n_codebooks=3, codebook_size=64, codebook_dim=4, hidden_size=16,
                                    sampling_rate=8000)
    model = transformers.DacModel(config).eval()
    with torch.no_grad():  # weights at a scale that keeps activations O(1); the init leaves biases at zero
        for name, p in model.named_parameters():
            if name.endswith("alpha"):
                p.uniform_(0.5, 1.5)
            elif name.endswith("bias"):
                p.normal_(std=0.1)
            elif "codebook" in name:
                p.normal_()
            else:
                p.normal_(std=0.5 * p[0].numel() ** -0.5)
    if weight_norm:
        model.apply_weight_norm()
    return model


def _audio(samples: int = 800) -> torch.Tensor:
    return 0.3 * torch.randn(2, 1, samples, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("weight_norm", [False, True])
def test_codes_and_waveforms_equal_dac(weight_norm):
    model = _dac(weight_norm=weight_norm)
    codec = rvq_codec_from_dac(model.state_dict(), model.config.to_dict())
    audio = _audio()
    with torch.no_grad():
        for k in (1, 2, 3):
            codes_BKt = model.encode(audio, n_quantizers=k).audio_codes
            ids_BtK = codec.encode(audio, num_quantizers=k, sample_rate=8000)
            assert torch.equal(ids_BtK, codes_BKt.transpose(1, 2))
            reference = model.decode(audio_codes=codes_BKt).audio_values
            assert (codec.decode(ids_BtK)[:, 0] - reference).abs().max() <= 1e-4


def test_odd_strides_give_dac_codes_and_whole_frames():
    # transformers' DacModel drops DAC's output_padding at odd strides (its waveform comes out short); the codes agree
    model = _dac(strides=(2, 5))
    codec = rvq_codec_from_dac(model.state_dict(), model.config.to_dict())
    audio = _audio(samples=1000)
    with torch.no_grad():
        codes = model.encode(audio).audio_codes
    ids = codec.encode(audio)
    assert torch.equal(ids, codes.transpose(1, 2))
    assert codec.decode(ids).shape[-1] == 1000


def test_keys_that_do_not_fit_are_listed_in_dac_names():
    model = _dac()
    weights = dict(model.state_dict())
    gone = "decoder.block.1.res_unit2.snake2.alpha"
    with pytest.raises(WeightsMismatchError, match=r"missing keys: \['decoder\.block\.1\.res_unit2\.snake2\.alpha'\]"):
        rvq_codec_from_dac({k: v for k, v in weights.items() if k != gone}, model.config.to_dict())
    with pytest.raises(WeightsMismatchError, match=r"quantizer\.quantizers\.0\.codebook\.weight: \(65, 4\) \(converted: \(1, 65, 4\)\) where the config needs \(1, 64, 4\)"):
        rvq_codec_from_dac({**weights, "quantizer.quantizers.0.codebook.weight": torch.zeros(65, 4)}, model.config.to_dict())
    with pytest.raises(ValueError, match="upsampling_ratios"):
        rvq_codec_from_dac(weights, {**model.config.to_dict(), "upsampling_ratios": [2, 4]})


def test_cli_converts_a_dac_folder(tmp_path):
    model = _dac(weight_norm=True)
    model.save_pretrained(tmp_path / "dac")
    assert main(["convert", "--from", "dac", str(tmp_path / "dac"), str(tmp_path / "out")]) == 0
    codec = RVQAudioCodec.from_pretrained(tmp_path / "out")
    audio = _audio()
    with torch.no_grad():
        codes = model.encode(audio).audio_codes
    assert torch.equal(codec.encode(audio), codes.transpose(1, 2))
    assert "mmgen convert --from dac" in (tmp_path / "out" / "README.md").read_text()
