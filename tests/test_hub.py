"""Checkpoints: safetensors + JSON in a folder, loaded back exactly; broken ones fail clearly, untouched."""

import json

import pytest
import torch

from mmgen import GPT, GPTConfig
from mmgen.hub import WEIGHTS_NAME


def tiny_gpt(**overrides) -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(**{**dict(vocab_size=32, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, num_classes=3), **overrides})).eval()


def folder_state(path):
    return {p.name: p.read_bytes() for p in sorted(path.iterdir())}


def test_round_trip_gives_identical_outputs(tmp_path):
    gpt = tiny_gpt(vocab_size=[32, 16], coord_rank=2, qk_norm=True, adaln_dim=4)
    gpt.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", WEIGHTS_NAME]
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["_class_name"] == "GPT" and config["vocab_size"] == [32, 16] and config["qk_norm"] is True
    loaded = GPT.from_pretrained(tmp_path).eval()
    assert loaded.cfg == gpt.cfg
    ids = torch.randint(0, 16, (2, 6, 2))
    cond = torch.randn(2, 4)
    with torch.no_grad():
        for a, b in zip(gpt(ids, condition=cond), loaded(ids, condition=cond)):
            assert torch.equal(a, b)


def test_tied_model_round_trip(tmp_path):
    gpt = tiny_gpt(tie_embeddings=True)
    gpt.save_pretrained(tmp_path)
    loaded = GPT.from_pretrained(tmp_path)
    ids = torch.randint(0, 32, (1, 5))
    with torch.no_grad():
        assert torch.equal(gpt(ids), loaded(ids))


def test_missing_folder_files_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="expected config.json"):
        GPT.from_pretrained(tmp_path)
    tiny_gpt().save_pretrained(tmp_path)
    (tmp_path / WEIGHTS_NAME).unlink()
    with pytest.raises(ValueError, match="has no weights"):
        GPT.from_pretrained(tmp_path)


def test_config_that_does_not_match_weights(tmp_path):
    tiny_gpt().save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["vocab_size"] = 40
    (tmp_path / "config.json").write_text(json.dumps(config))
    before = folder_state(tmp_path)
    with pytest.raises(ValueError, match=r"tensor 'tok_embeddings.0.weight' has shape \(32, 32\), the config expects \(40, 32\)"):
        GPT.from_pretrained(tmp_path)
    config["n_layers"] = 3
    config["vocab_size"] = 32
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="missing tensors"):
        GPT.from_pretrained(tmp_path)
    assert (tmp_path / WEIGHTS_NAME).read_bytes() == before[WEIGHTS_NAME]


def test_unknown_config_key(tmp_path):
    tiny_gpt().save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["hidden_sise"] = 3
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"unknown GPTConfig key\(s\) \['hidden_sise'\]"):
        GPT.from_pretrained(tmp_path)


def test_truncated_weights_fail_and_change_nothing(tmp_path):
    tiny_gpt().save_pretrained(tmp_path)
    weights = tmp_path / WEIGHTS_NAME
    weights.write_bytes(weights.read_bytes()[:200])
    before = folder_state(tmp_path)
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        GPT.from_pretrained(tmp_path)
    assert folder_state(tmp_path) == before


def test_pickled_weights_are_refused(tmp_path):
    gpt = tiny_gpt()
    gpt.save_pretrained(tmp_path)
    (tmp_path / WEIGHTS_NAME).unlink()
    torch.save(gpt.state_dict(), tmp_path / "diffusion_pytorch_model.bin")
    before = folder_state(tmp_path)
    with pytest.raises(ValueError, match="only pickled weights .* allow_pickle=True"):
        GPT.from_pretrained(tmp_path)
    assert folder_state(tmp_path) == before


def test_wrong_class_in_folder(tmp_path):
    tiny_gpt().save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["_class_name"] = "VQImageTokenizer"
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="holds a VQImageTokenizer checkpoint, not a GPT"):
        GPT.from_pretrained(tmp_path)
