"""TiTok's tokenizer (committed fixture of the public code) converted to a TiTokTokenizer gives its ids, logits and images."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mmgen.weight_maps import WeightsMismatchError
from tokenizers_visual import TiTokTokenizer
from tokenizers_visual.titok_weights import tokenizer_from_titok

FIXTURE = Path(__file__).parent / "fixtures" / "published" / "titok"
TOL = 1e-4  # fp32, max abs; the attention kernel and summation order differ from the original's


@pytest.fixture(scope="module")
def weights() -> dict[str, torch.Tensor]:
    return load_file(FIXTURE / "titok.safetensors")


@pytest.fixture(scope="module")
def io() -> dict[str, torch.Tensor]:
    return load_file(FIXTURE / "io.safetensors")


@pytest.fixture(scope="module")
def config() -> dict:
    """TiTok's config as the fixture saved it; the tiny ViTs' head counts are not in TiTok's size table."""
    saved = json.loads((FIXTURE / "titok_config.json").read_text())
    vq_model = {**saved["model"]["vq_model"], "vit_enc_num_heads": 4, "vit_dec_num_heads": 4}
    return {"model": {"vq_model": vq_model}, "dataset": saved["dataset"]}


@pytest.fixture(scope="module")
def tok(weights, config) -> TiTokTokenizer:
    return tokenizer_from_titok(weights, config)


def _ids(io: dict[str, torch.Tensor]) -> torch.Tensor:
    return io["ids"].squeeze(1)  # TiTok's min_encoding_indices are [B, 1, N]


def _tokens(tensor_BT1N: torch.Tensor) -> torch.Tensor:
    return tensor_BT1N.squeeze(2).transpose(1, 2)  # TiTok's [B, T, 1, N] -> our [B, N, T]


def test_ids_logits_and_images_equal_titok(tok, io):
    x = io["images"] * 2 - 1  # TiTok's images are in [0, 1], ours in [-1, 1]
    with torch.no_grad():
        assert (tok.encode_latents(x) - _tokens(io["encoder_out"])).abs().max() <= TOL
        ids = tok.encode(x)
        assert torch.equal(ids, _ids(io))
        codes = tok.codes(ids)
        assert (codes - _tokens(io["z_quantized"])).abs().max() <= TOL
        logits = tok.proxy_logits(codes)
        assert (logits - io["decoder_logits"]).abs().max() <= TOL
        latents = torch.einsum("bkhw,kd->bdhw", logits.softmax(dim=1), tok.pixel_codebook.weight)
        assert (latents - io["pixel_latents"]).abs().max() <= TOL
        assert (tok.decode_raw(ids) - io["decoded_tokens"]).abs().max() <= TOL
        assert (tok.decode_raw(ids) - io["decoded"]).abs().max() <= TOL
        assert (tok.decode(ids) - (io["decoded_tokens"].clamp(0, 1) * 2 - 1)).abs().max() <= 2 * TOL


def test_fields_left_out_are_read_off_the_weights(weights, io, tok):
    """Only the head counts are not in the weights; the flat vq_model form is accepted too."""
    inferred = tokenizer_from_titok(weights, {"vit_enc_model_size": "tiny", "vit_dec_model_size": "tiny",
                                              "vit_enc_num_heads": 4, "vit_dec_num_heads": 4})
    assert inferred.cfg == tok.cfg
    assert tok.cfg.pixel_widths == [64, 32, 32] and tok.cfg.image_size == 16 and tok.cfg.dec_width == 48
    with pytest.raises(ValueError, match="give vit_enc_num_heads"):
        tokenizer_from_titok(weights, {"vit_enc_model_size": "tiny"})
    with pytest.raises(ValueError, match="'large' means width 1024 and 24 layers"):
        tokenizer_from_titok(weights, {"vit_enc_num_heads": 4, "vit_dec_num_heads": 4, "vit_enc_model_size": "large"})


def test_keys_and_shapes_that_do_not_fit_are_listed(weights, config):
    missing = "pixel_decoder.up.0.block.0.nin_shortcut.weight"  # our pixel_decoder.levels.0.res.0.skip.weight
    with pytest.raises(WeightsMismatchError, match=r"missing keys: \['pixel_decoder\.up\.0\.block\.0\.nin_shortcut\.weight'\]"):
        tokenizer_from_titok({k: v for k, v in weights.items() if k != missing}, config)
    wrong = "decoder.transformer.1.attn.in_proj_weight"
    with pytest.raises(WeightsMismatchError,
                       match=r"decoder\.transformer\.1\.attn\.in_proj_weight: \(5, 48\) where the config needs \(144, 48\)"):
        tokenizer_from_titok({**weights, wrong: torch.zeros(5, 48)}, config)
    with pytest.raises(WeightsMismatchError, match=r"unknown keys .*'encoder\.transformer\.0\.attn\.bias_k'"):
        tokenizer_from_titok({**weights, "encoder.transformer.0.attn.bias_k": torch.zeros(1)}, config)


@pytest.mark.parametrize("field, value, message", [
    ("quantize_mode", "vae", "quantize_mode='vae'"),
    ("finetune_decoder", False, "finetune_decoder=False"),
    ("is_legacy", False, "is_legacy=False"),
    ("use_l2_norm", False, "use_l2_norm=False"),
    ("vit_dec_patch_size", 8, "vit_dec_patch_size=8"),
    ("num_latent_token", 8, r"does not have: \['num_latent_token'\]"),
])
def test_settings_without_a_switch_are_refused_by_name(weights, config, field, value, message):
    vq_model = {**config["model"]["vq_model"], field: value}
    with pytest.raises(ValueError, match=message):
        tokenizer_from_titok(weights, {**config, "model": {"vq_model": vq_model}})


def test_converted_tokenizer_saves_and_loads(tok, io, tmp_path):
    tok.save_pretrained(tmp_path / "tok")
    loaded = TiTokTokenizer.from_pretrained(tmp_path / "tok").eval()
    assert loaded.cfg == tok.cfg
    x = io["images"] * 2 - 1
    with torch.no_grad():
        assert torch.equal(loaded.encode(x), _ids(io))
        assert torch.equal(loaded.decode(_ids(io)), tok.decode(_ids(io)))
    assert loaded.token_spec().shape == (8,) and not loaded.token_spec().prefix_decodable


def test_loss_trains_through_the_straight_through_codes(weights, config, io):
    tok = tokenizer_from_titok(weights, config).train()  # its own copy: training updates the usage statistics
    loss, logs = tok.loss(io["images"] * 2 - 1)
    loss.backward()
    assert torch.isfinite(loss) and logs["usage"] > 0
    assert tok.to_token.weight.grad.abs().sum() > 0  # the encoder learns through the straight-through codes


def test_cli_converts_a_titok_hub_folder(weights, config, io, tmp_path):
    import shutil

    from mmgen.app.cli import main

    src = tmp_path / "titok"
    src.mkdir()
    shutil.copy(FIXTURE / "titok.safetensors", src / "model.safetensors")
    (src / "config.json").write_text(json.dumps(config))
    assert main(["convert", "--from", "titok", str(src), str(tmp_path / "out")]) == 0
    converted = TiTokTokenizer.from_pretrained(tmp_path / "out")
    assert torch.equal(converted.encode(io["images"] * 2 - 1), _ids(io))
