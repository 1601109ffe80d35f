"""LlamaGen's VQ tokenizer (committed fixture of the public code) converted to a VQImageTokenizer gives its codes and images."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mmgen.weight_maps import WeightsMismatchError
from tokenizers_visual import VQConfig, VQImageTokenizer
from tokenizers_visual.llamagen_weights import vq_tokenizer_from_llamagen

FIXTURE = Path(__file__).parent / "fixtures" / "published" / "llamagen"
TOL = 1e-4  # fp32, max abs; the attention kernel and summation order differ from the original's


@pytest.fixture(scope="module")
def weights() -> dict[str, torch.Tensor]:
    return load_file(FIXTURE / "vq.safetensors")


@pytest.fixture(scope="module")
def io() -> dict[str, torch.Tensor]:
    return load_file(FIXTURE / "io.safetensors")


@pytest.fixture(scope="module")
def config() -> dict:
    """The fixture's ModelArgs plus the encoder's ``ch`` / ``num_res_blocks``, at the fixture's 16x16 images."""
    saved = json.loads((FIXTURE / "vq_config.json").read_text())
    encoder = saved["encoder"]
    return {**saved["model_args"], "ch": encoder["ch"], "num_res_blocks": encoder["num_res_blocks"], "image_size": 16}


def _ids(io: dict[str, torch.Tensor]) -> torch.Tensor:
    b, _, h, w = io["vq_indices_shape"].tolist()
    return io["vq_indices"].reshape(b, h, w)  # flat over (b, h, w), row-major


def test_ids_latents_and_images_equal_llamagen(weights, io, config):
    tok = vq_tokenizer_from_llamagen(weights, config)
    x = io["vq_x"]
    with torch.no_grad():
        features = tok.encoder(x)
        assert (features - io["vq_encoder_out"]).abs().max() <= TOL
        assert (tok.quant_conv(features) - io["vq_pre_quant"]).abs().max() <= TOL
        ids = tok.encode(x)
        assert torch.equal(ids, _ids(io))
        latents = tok.ids_to_latents(ids)
        assert (latents - io["vq_quant"]).abs().max() <= TOL
        # LlamaGen's decode_code returns the decoder's raw output; our decode clamps it to [-1, 1], so compare the
        # raw decoder output as it is and decode against the clamped reference
        assert (tok.decoder(tok.post_quant_conv(latents)) - io["vq_decoded"]).abs().max() <= TOL
        assert (tok.decode(ids) - io["vq_decoded"].clamp(-1, 1)).abs().max() <= TOL
        recon, forward_ids, _ = tok(x)  # straight-through pass, unclamped like VQModel.forward
    assert torch.equal(forward_ids, ids)
    assert (recon - io["vq_recon"]).abs().max() <= TOL


def test_fields_left_out_are_read_off_the_weights(weights, io, config):
    """Published checkpoints have no config: shapes fix codebook, widths, levels and res blocks."""
    inferred = vq_tokenizer_from_llamagen(weights, {"image_size": 16})
    assert inferred.cfg == vq_tokenizer_from_llamagen(weights, config).cfg
    assert torch.equal(inferred.encode(io["vq_x"]), _ids(io))
    no_size = vq_tokenizer_from_llamagen(weights, {})
    assert no_size.cfg.image_size == 256 and no_size.grid_shape() == (128, 128)


def test_training_buffer_is_dropped_and_codes_start_live(weights, io, config):
    tok = vq_tokenizer_from_llamagen({**weights, "quantize.codebook_used": torch.zeros(65536)}, config)
    assert torch.equal(tok.encode(io["vq_x"]), _ids(io))
    assert tok.codebook_usage()["usage"] == 1.0  # converted codes are live: training restarts none of them at once


def test_keys_and_shapes_that_do_not_fit_are_listed(weights, config):
    missing = "decoder.conv_blocks.0.attn.1.q.weight"  # our decoder.levels.1: the name must come back in LlamaGen's
    with pytest.raises(WeightsMismatchError, match=r"missing keys: \['decoder\.conv_blocks\.0\.attn\.1\.q\.weight'\]"):
        vq_tokenizer_from_llamagen({k: v for k, v in weights.items() if k != missing}, config)
    wrong = "encoder.conv_blocks.0.downsample.conv.bias"
    with pytest.raises(WeightsMismatchError,
                       match=r"encoder\.conv_blocks\.0\.downsample\.conv\.bias: \(5,\) where the config needs \(32,\)"):
        vq_tokenizer_from_llamagen({**weights, wrong: torch.zeros(5)}, config)
    with pytest.raises(WeightsMismatchError, match=r"unknown keys .*'decoder\.conv_blocks\.2\.res\.0\.conv1\.weight'"):
        vq_tokenizer_from_llamagen({**weights, "decoder.conv_blocks.2.res.0.conv1.weight": torch.zeros(1)}, config)
    with pytest.raises(WeightsMismatchError, match=r"no key 'encoder\.conv_in\.weight', which fixes ch"):
        vq_tokenizer_from_llamagen({k: v for k, v in weights.items() if k != "encoder.conv_in.weight"}, {})


@pytest.mark.parametrize("field, value, message", [
    ("codebook_l2_norm", False, "codebook_l2_norm=False"),
    ("decoder_ch_mult", [1, 2], r"decoder_ch_mult=\[1, 2\]"),
    ("num_res_block", 1, r"does not have: \['num_res_block'\]"),
])
def test_settings_without_a_switch_are_refused_by_name(weights, config, field, value, message):
    with pytest.raises(ValueError, match=message):
        vq_tokenizer_from_llamagen(weights, {**config, field: value})


def test_converted_tokenizer_saves_and_loads(weights, io, config, tmp_path):
    tok = vq_tokenizer_from_llamagen(weights, config)
    tok.save_pretrained(tmp_path / "tok")
    loaded = VQImageTokenizer.from_pretrained(tmp_path / "tok").eval()
    assert loaded.cfg == tok.cfg
    assert torch.equal(loaded.encode(io["vq_x"]), _ids(io))
    assert torch.equal(loaded.decode(_ids(io)), tok.decode(_ids(io)))


@pytest.mark.parametrize("fields, message", [
    ({"attention": True}, "attention=True needs backbone='ldm'"),
    ({"backbone": "ldm", "channels": 48, "channel_mult": [1, 1], "downsample": 2, "image_size": 16}, "must be multiples of 32"),
    ({"backbone": "unet"}, "backbone must be one of"),
])
def test_backbone_fields_are_checked(fields, message):
    with pytest.raises(ValueError, match=message):
        VQConfig(**fields)


def test_the_ldm_backbone_takes_any_depth_but_the_default_one_keeps_its_factors():
    assert VQConfig(backbone="ldm", downsample=2, channel_mult=[1, 1], image_size=16).channel_mult == [1, 1]
    with pytest.raises(ValueError, match="downsample must be one of"):
        VQConfig(downsample=2, channel_mult=[1, 1], image_size=16)
