"""EnCodec's weights (transformers' EncodecModel, random init) converted to an RVQAudioCodec give its codes and waveforms."""

from __future__ import annotations

import pytest
import torch

from mmgen.app.cli import main
from mmgen.weight_maps import WeightsMismatchError
from tokenizers_audio import RVQAudioCodec
from tokenizers_audio.encodec_weights import rvq_codec_from_encodec

transformers = pytest.importorskip("transformers")

BANDWIDTHS = {20.0: 2, 40.0: 4, 80.0: 8}  # kbps -> codebooks at 8 kHz, hop 8, 1024 codes


def _encodec(*, causal: bool = True, shortcut: bool = True, pad_mode: str = "reflect", seed: int = 0, **fields):
    torch.manual_seed(seed)
    config = transformers.EncodecConfig(num_filters=4, hidden_size=16, codebook_dim=16, codebook_size=1024,
                                        upsampling_ratios=[4, 2], num_lstm_layers=2, sampling_rate=8000,
                                        target_bandwidths=list(BANDWIDTHS), use_causal_conv=causal,
                                        use_conv_shortcut=shortcut, pad_mode=pad_mode, **fields)
    model = transformers.EncodecModel(config).eval()
    with torch.no_grad():
        for layer in model.quantizer.layers:  # the init leaves the codebooks at zero
            layer.codebook.embed.normal_(std=0.3)
            layer.codebook.embed_avg.copy_(layer.codebook.embed)
            layer.codebook.cluster_size.uniform_(0, 5)
    return model


def _audio(batch: int = 2, samples: int = 800) -> torch.Tensor:
    return (0.3 * torch.randn(batch, 1, samples, generator=torch.Generator().manual_seed(1))).clamp(-1, 1)


@pytest.mark.parametrize("causal, shortcut, pad_mode", [(True, True, "reflect"), (False, False, "reflect"), (True, True, "constant")])
def test_codes_and_waveforms_equal_encodec_at_every_bandwidth(causal, shortcut, pad_mode):
    model = _encodec(causal=causal, shortcut=shortcut, pad_mode=pad_mode)
    codec = rvq_codec_from_encodec(model.state_dict(), model.config.to_dict())
    audio = _audio()
    with torch.no_grad():
        for bandwidth, k in BANDWIDTHS.items():
            encoded = model.encode(audio, bandwidth=bandwidth)
            codes_BKt = encoded.audio_codes[0]
            ids_BtK = codec.encode(audio, num_quantizers=k, sample_rate=8000)
            assert codes_BKt.shape[1] == k
            assert torch.equal(ids_BtK, codes_BKt.transpose(1, 2))
            reference = model.decode(encoded.audio_codes, [None]).audio_values
            assert (codec.decoder(codec.ids_to_latents(ids_BtK)) - reference).abs().max() <= 1e-4
            assert (codec.decode(ids_BtK) - reference.clamp(-1, 1)).abs().max() <= 1e-4


def test_streaming_the_converted_causal_codec_equals_its_offline_pass():
    codec = rvq_codec_from_encodec(_encodec().state_dict(), _encodec().config.to_dict())
    audio = _audio(samples=960)
    ids = codec.encode(audio)
    encoder = codec.streaming_encoder()
    assert torch.equal(torch.cat([encoder.step(audio[..., i:i + 96]) for i in range(0, 960, 96)], dim=1), ids)
    decoder = codec.streaming_decoder()
    streamed = torch.cat([decoder.step(ids[:, i:i + 7]) for i in range(0, ids.shape[1], 7)], dim=-1)
    assert (streamed - codec.decode(ids)).abs().max() <= 1e-5


def test_old_weight_norm_names_convert_too():
    model = _encodec()
    renamed = {k.replace(".parametrizations.weight.original0", ".weight_g").replace(".parametrizations.weight.original1", ".weight_v"): v
               for k, v in model.state_dict().items()}
    codec = rvq_codec_from_encodec(renamed, model.config.to_dict())
    reference = rvq_codec_from_encodec(model.state_dict(), model.config.to_dict())
    audio = _audio()
    assert torch.equal(codec.encode(audio), reference.encode(audio))


def test_keys_and_shapes_that_do_not_fit_are_listed():
    model = _encodec()
    config = model.config.to_dict()
    weights = dict(model.state_dict())
    missing = "encoder.layers.1.shortcut.conv.bias"
    with pytest.raises(WeightsMismatchError, match=r"missing keys: \['encoder\.layers\.1\.shortcut\.conv\.bias'\]"):
        rvq_codec_from_encodec({k: v for k, v in weights.items() if k != missing}, config)
    with pytest.raises(WeightsMismatchError, match=r"unknown keys .*'encoder\.layers\.1\.extra\.weight'"):
        rvq_codec_from_encodec({**weights, "encoder.layers.1.extra.weight": torch.zeros(1)}, config)
    wrong = "decoder.layers.0.conv.bias"
    with pytest.raises(WeightsMismatchError, match=r"decoder\.layers\.0\.conv\.bias: \(3,\) where the config needs \(16,\)"):
        rvq_codec_from_encodec({**weights, wrong: torch.zeros(3)}, config)


@pytest.mark.parametrize("field, value", [("audio_channels", 2), ("normalize", True), ("norm_type", "time_group_norm"),
                                          ("compress", 4)])
def test_settings_without_a_switch_are_refused_by_name(field, value):
    model = _encodec()
    config = {**model.config.to_dict(), field: value}
    with pytest.raises(ValueError, match=f"{field}={value!r}"):
        rvq_codec_from_encodec(model.state_dict(), config)


def test_cli_converts_a_hub_folder_and_the_result_loads(tmp_path, capsys):
    model = _encodec()
    model.save_pretrained(tmp_path / "encodec")
    dst = tmp_path / "converted"
    assert main(["convert", "--from", "encodec", str(tmp_path / "encodec"), str(dst)]) == 0
    codec = RVQAudioCodec.from_pretrained(dst)
    card = (dst / "README.md").read_text()
    assert "EnCodec" in card and "mmgen convert --from encodec" in card and "license" not in card.split("---")[1]
    audio = _audio()
    with torch.no_grad():
        codes = model.encode(audio, bandwidth=80.0).audio_codes[0]
    assert torch.equal(codec.encode(audio, num_quantizers=8), codes.transpose(1, 2))
    # an existing destination is kept unless asked
    assert main(["convert", "--from", "encodec", str(tmp_path / "encodec"), str(dst)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(["convert", "--from", "encodec", str(tmp_path / "encodec"), str(dst), "--overwrite"]) == 0


def test_pickles_load_only_when_allowed(tmp_path, capsys):
    model = _encodec()
    model.config.save_pretrained(tmp_path / "src")
    torch.save({"state_dict": model.state_dict()}, tmp_path / "src" / "pytorch_model.bin")
    assert main(["convert", "--from", "encodec", str(tmp_path / "src"), str(tmp_path / "dst")]) == 2
    assert "--allow-pickle" in capsys.readouterr().err
    assert not (tmp_path / "dst").exists()
    assert main(["convert", "--from", "encodec", str(tmp_path / "src"), str(tmp_path / "dst"), "--allow-pickle"]) == 0
    assert "WARNING: unpickling" in capsys.readouterr().err
    audio = _audio()
    expected = rvq_codec_from_encodec(model.state_dict(), model.config.to_dict()).encode(audio)
    assert torch.equal(RVQAudioCodec.from_pretrained(tmp_path / "dst").encode(audio), expected)
