"""VAR's VQVAE (committed fixture of the public code) converted to a MultiScaleVQTokenizer gives its ids, latents and images."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mmgen.weight_maps import WeightsMismatchError
from tokenizers_visual import MultiScaleVQConfig, MultiScaleVQTokenizer
from tokenizers_visual.var_weights import VAR_VQVAE_DEFAULTS, multiscale_vq_from_var

FIXTURE = Path(__file__).parent / "fixtures" / "published" / "var"
TOL = 1e-4  # fp32, max abs; the attention kernel and summation order differ from the original's
SCALES = 4


@pytest.fixture(scope="module")
def weights() -> dict[str, torch.Tensor]:
    return load_file(FIXTURE / "vae.safetensors")


@pytest.fixture(scope="module")
def io() -> dict[str, torch.Tensor]:
    return load_file(FIXTURE / "io.safetensors")


@pytest.fixture(scope="module")
def config() -> dict:
    """The fixture's VQVAE arguments plus the ddconfig it swapped in, at the fixture's 8x8 images."""
    saved = json.loads((FIXTURE / "vae_config.json").read_text())
    return {**saved["vqvae_kwargs"], **saved["encoder_decoder_ddconfig"], "image_size": saved["image_size"]}


@pytest.fixture(scope="module")
def tok(weights, config) -> MultiScaleVQTokenizer:
    return multiscale_vq_from_var(weights, config)


def _var_ids(io: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    return [io[f"vae_idx_{k}"] for k in range(SCALES)]  # [B, pn²] per scale, row-major


def test_ids_latents_images_and_next_scale_inputs_equal_var(tok, io):
    x = io["x"]
    with torch.no_grad():
        assert (tok.features(x) - io["vae_f"]).abs().max() <= TOL
        ids = tok.encode(x)  # [B, pn, pn] per scale
        assert [i.flatten(1).tolist() for i in ids] == [i.tolist() for i in _var_ids(io)]
        assert (tok.ids_to_f_hat(ids) - io["vae_fhat"]).abs().max() <= TOL
        assert (tok.quantizer(tok.features(x)).f_hat_BChw - io["vae_fhat"]).abs().max() <= TOL
        # VAR's idxBl_to_img clamps to [-1, 1] and so does our decode: the two are compared as they come (this
        # fixture's image stays inside the bounds, so the clamp leaves both unchanged)
        assert (tok.decode(_var_ids(io)) - io["vae_dec"]).abs().max() <= TOL
        assert (tok.ids_to_next_scale_inputs(ids) - io["var_input"]).abs().max() <= 1e-5


def test_fields_left_out_are_read_off_the_weights(weights, io, config, tok):
    """The published checkpoint has no config: shapes fix codebook, widths, levels, attention, kernel and φ sharing."""
    inferred = multiscale_vq_from_var(weights, {"v_patch_nums": config["v_patch_nums"], "image_size": 8})
    assert inferred.cfg == tok.cfg
    assert tok.cfg.backbone == "ldm" and tok.cfg.attention and tok.cfg.quant_conv_kernel == 3
    assert tok.cfg.share_quant_resi == 4 and tok.cfg.channel_mult == (1, 1)
    bare = multiscale_vq_from_var(weights, {})
    assert bare.cfg.patch_nums == tuple(VAR_VQVAE_DEFAULTS["v_patch_nums"]) and bare.cfg.image_size == 32


def test_training_buffer_is_dropped_and_usage_starts_afresh(weights, tok):
    assert "quantize.ema_vocab_hit_SV" in weights
    assert not tok.quantizer.ema_hits_SV.any() and int(tok.quantizer.hit_updates) == 0


def test_keys_and_shapes_that_do_not_fit_are_listed_in_var_names(weights, config):
    missing = "decoder.up.1.upsample.conv.weight"  # our decoder.levels.1.resample
    with pytest.raises(WeightsMismatchError, match=r"missing keys: \['decoder\.up\.1\.upsample\.conv\.weight'\]"):
        multiscale_vq_from_var({k: v for k, v in weights.items() if k != missing}, config)
    fused = "decoder.up.1.attn.1.qkv.bias"  # split into our q, k, v: still reported as the one fused key
    with pytest.raises(WeightsMismatchError, match=r"missing keys: \['decoder\.up\.1\.attn\.1\.qkv\.bias'\]"):
        multiscale_vq_from_var({k: v for k, v in weights.items() if k != fused}, config)
    with pytest.raises(WeightsMismatchError,
                       match=r"encoder\.mid\.attn_1\.qkv\.weight: \(90, 32, 1, 1\) where the config needs \(96, 32, 1, 1\)"):
        multiscale_vq_from_var({**weights, "encoder.mid.attn_1.qkv.weight": torch.zeros(90, 32, 1, 1)}, config)
    with pytest.raises(WeightsMismatchError, match=r"unknown keys .*'decoder\.up\.0\.attn\.0\.qkv\.weight'"):
        multiscale_vq_from_var({**weights, "decoder.up.0.attn.0.qkv.weight": torch.zeros(96, 32, 1, 1)}, config)
    with pytest.raises(WeightsMismatchError, match=r"missing keys: \['quantize\.quant_resi\.qresi\.bias'"):
        multiscale_vq_from_var(weights, {**config, "share_quant_resi": 1})  # one shared φ, but the file holds four
    with pytest.raises(WeightsMismatchError, match=r"no key 'encoder\.conv_in\.weight', which fixes ch"):
        multiscale_vq_from_var({k: v for k, v in weights.items() if k != "encoder.conv_in.weight"}, {})


@pytest.mark.parametrize("share, container", [(1, "qresi"), (0, "{k}")])
def test_every_phi_container_of_var_converts(weights, share, container):
    """PhiShared (``quant_resi.qresi``) and PhiNonShared (``quant_resi.{k}``, one per scale) map onto our ``phis``."""
    phis = {k: weights[f"quantize.quant_resi.qresi_ls.{k}.weight"] for k in range(SCALES)}
    count = 1 if share == 1 else SCALES
    layout = {k: v for k, v in weights.items() if ".qresi_ls." not in k}
    for k in range(count):
        prefix = f"quantize.quant_resi.{container.format(k=k)}"
        layout |= {f"{prefix}.weight": phis[k], f"{prefix}.bias": weights[f"quantize.quant_resi.qresi_ls.{k}.bias"]}
    tok = multiscale_vq_from_var(layout, {"v_patch_nums": [1, 2, 3, 4], "image_size": 8})
    assert tok.cfg.share_quant_resi == share and len(tok.quantizer.phis) == count
    assert all(torch.equal(phi.weight, phis[k]) for k, phi in enumerate(tok.quantizer.phis))


@pytest.mark.parametrize("field, value, message", [
    ("using_mid_sa", False, "using_sa=True with using_mid_sa=False"),
    ("default_qresi_counts", 3, "default_qresi_counts=3 with share_quant_resi=0"),
    ("num_res_block", 1, r"does not have: \['num_res_block'\]"),
])
def test_settings_without_a_switch_are_refused_by_name(weights, config, field, value, message):
    extra = {"share_quant_resi": 0} if field == "default_qresi_counts" else {}
    with pytest.raises(ValueError, match=message):
        multiscale_vq_from_var(weights, {**config, **extra, field: value})


def test_converted_tokenizer_saves_and_loads(tok, io, tmp_path):
    tok.save_pretrained(tmp_path / "tok")
    loaded = MultiScaleVQTokenizer.from_pretrained(tmp_path / "tok").eval()
    assert loaded.cfg == tok.cfg
    ids = loaded.encode(io["x"])
    assert [i.flatten(1).tolist() for i in ids] == [i.tolist() for i in _var_ids(io)]
    assert torch.equal(loaded.decode(ids), tok.decode(ids))


@pytest.mark.parametrize("fields, message", [
    ({"attention": True}, "attention=True needs backbone='ldm'"),
    ({"backbone": "ldm", "channels": 48}, "must be multiples of 32"),
    ({"backbone": "unet"}, "backbone must be one of"),
    ({"quant_conv_kernel": 2}, "quant_conv_kernel must be odd"),
])
def test_backbone_and_kernel_fields_are_checked(fields, message):
    with pytest.raises(ValueError, match=message):
        MultiScaleVQConfig(**fields)


def test_defaults_keep_the_original_tokenizer():
    tok = MultiScaleVQTokenizer(MultiScaleVQConfig())
    assert tok.quant_conv.kernel_size == (1, 1) and type(tok.encoder).__name__ == "ConvEncoder"
