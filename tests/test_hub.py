"""Checkpoints: safetensors + JSON in a folder, loaded back exactly; broken ones fail clearly, untouched.

Hub repos are stood in for by local folders: ``huggingface_hub.snapshot_download``, ``create_repo`` and
``upload_folder`` are replaced by fakes that record their arguments, so nothing touches the network.
"""

import json
import shutil
from pathlib import Path

import huggingface_hub
import pytest
import torch
import yaml
from huggingface_hub.utils import filter_repo_objects

from mmgen import GPT, GPTConfig
from mmgen.conditioning import ClassConditioner, ClassConditionerConfig
from mmgen.hub import (
    WEIGHTS_NAME,
    push_folder_to_hub,
    resolve_pipeline_path,
    resolve_pretrained_path,
)
from mmgen.model_card import PACKAGE_LICENSE, loading_code, write_model_card

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_gpt(**overrides) -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(**{**dict(vocab_size=32, dim=32, n_layers=2, n_heads=4, n_kv_heads=2), **overrides})).eval()


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
        assert torch.equal(gpt(ids, condition=cond), loaded(ids, condition=cond))


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


# ---- hub repo ids: resolved to a local snapshot, then checked like a folder --------------------------
def files_in(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


class FakeSnapshots:
    """Stands in for ``huggingface_hub.snapshot_download``: serves one local folder, records every call."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.calls: list[dict] = []

    def __call__(self, repo_id, **kwargs):
        self.calls.append({"repo_id": repo_id, **kwargs})
        return str(self.folder)

    def selected(self) -> list[str]:
        """The snapshot's files that the last call's allow_patterns would have downloaded."""
        return sorted(filter_repo_objects(files_in(self.folder), allow_patterns=self.calls[-1]["allow_patterns"]))


@pytest.fixture
def no_downloads(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("snapshot_download must not be called for a local folder")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", refuse)


def serve(monkeypatch, folder: Path) -> FakeSnapshots:
    fake = FakeSnapshots(folder)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake)
    return fake


def test_local_folder_resolves_to_itself(tmp_path, no_downloads):
    assert resolve_pretrained_path(tmp_path) == tmp_path
    assert resolve_pretrained_path(str(tmp_path)) == tmp_path


def test_path_that_is_no_folder_and_no_repo_id(tmp_path, no_downloads):
    for name in (tmp_path / "missing", "./runs/missing", "runs/a/b"):
        with pytest.raises(ValueError, match="neither a local folder nor a hub repo id"):
            GPT.from_pretrained(name)


def test_repo_id_loads_the_downloaded_snapshot(tmp_path, monkeypatch):
    gpt = tiny_gpt()
    gpt.save_pretrained(tmp_path / "snap")
    (tmp_path / "snap" / "README.md").write_text("card")
    (tmp_path / "snap" / "notes.txt").write_text("not needed to load")
    fake = serve(monkeypatch, tmp_path / "snap")
    loaded = GPT.from_pretrained("someone/tiny-gpt", revision="v1", token="secret")
    call = fake.calls[-1]
    assert (call["repo_id"], call["revision"], call["token"]) == ("someone/tiny-gpt", "v1", "secret")
    assert fake.selected() == ["README.md", "config.json", WEIGHTS_NAME]
    ids = torch.randint(0, 32, (1, 5))
    with torch.no_grad():
        assert torch.equal(gpt(ids), loaded.eval()(ids))


def test_repo_id_snapshot_goes_through_the_prechecks(tmp_path, monkeypatch):
    gpt = tiny_gpt()
    gpt.save_pretrained(tmp_path)
    (tmp_path / WEIGHTS_NAME).unlink()
    torch.save(gpt.state_dict(), tmp_path / "diffusion_pytorch_model.bin")
    fake = serve(monkeypatch, tmp_path)
    with pytest.raises(ValueError, match="only pickled weights .* allow_pickle=True"):
        GPT.from_pretrained("someone/pickled")
    assert fake.calls[-1]["repo_id"] == "someone/pickled"
    assert "diffusion_pytorch_model.bin" not in fake.selected(), "pickles are not even downloaded by default"
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "_class_name": "VQImageTokenizer"}))
    with pytest.raises(ValueError, match="holds a VQImageTokenizer checkpoint, not a GPT"):
        GPT.from_pretrained("someone/pickled")


def test_repo_id_with_subfolder_downloads_only_that_component(tmp_path, monkeypatch):
    gpt = tiny_gpt()
    gpt.save_pretrained(tmp_path / "gpt")
    tiny_gpt(vocab_size=16).save_pretrained(tmp_path / "other")
    (tmp_path / "README.md").write_text("card")
    fake = serve(monkeypatch, tmp_path)
    loaded = GPT.from_pretrained("someone/pipeline", subfolder="gpt")
    assert fake.selected() == ["README.md", "gpt/config.json", f"gpt/{WEIGHTS_NAME}"]
    assert loaded.cfg == gpt.cfg
    with pytest.raises(ValueError, match="expected config.json"):
        GPT.from_pretrained("someone/pipeline", subfolder="head")


def test_pipeline_repo_id_downloads_everything_a_saved_pipeline_needs(tmp_path, monkeypatch):
    from pipelines import NextTokenPipeline
    from tokenizers_visual import VQConfig, VQImageTokenizer

    torch.manual_seed(0)
    tokenizer = VQImageTokenizer(VQConfig(image_size=16, downsample=4, channels=8, channel_mult=[1, 1, 1],
                                          z_channels=8, codebook_size=32, codebook_dim=4))
    conditioner = ClassConditioner(ClassConditionerConfig(dim=32, num_classes=2))
    saved_pipe = NextTokenPipeline.from_tokenizer(tokenizer, conditioner=conditioner, gpt={"dim": 32, "n_layers": 1, "n_heads": 2})
    saved_pipe.save_pretrained(tmp_path)
    saved = files_in(tmp_path)
    assert {"conditioner/config.json", f"conditioner/{WEIGHTS_NAME}", "head/config.json", f"head/{WEIGHTS_NAME}"} <= set(saved)
    (tmp_path / "gpt" / "optimizer.bin").write_bytes(b"pickle")
    fake = serve(monkeypatch, tmp_path)
    kwargs = {"revision": "main", "torch_dtype": torch.float32}
    assert resolve_pipeline_path("someone/pipeline", kwargs) == tmp_path
    assert kwargs == {"torch_dtype": torch.float32}, "download options are taken out, loading options stay"
    assert fake.calls[-1]["revision"] == "main"
    assert fake.selected() == saved
    pipe = NextTokenPipeline.from_pretrained(tmp_path)
    assert isinstance(pipe, NextTokenPipeline) and pipe.gpt.cfg == saved_pipe.gpt.cfg
    assert pipe.conditioner.cfg == conditioner.cfg and pipe.head.cfg == saved_pipe.head.cfg


# ---- uploads: safetensors, config and a model card; pickles never -------------------------------------
class FakeHub:
    """Stands in for ``create_repo`` / ``upload_folder``: copies what would be uploaded into ``uploaded``."""

    def __init__(self, uploaded: Path):
        self.uploaded = uploaded
        self.created: list[dict] = []
        self.uploads: list[dict] = []

    def create_repo(self, repo_id, **kwargs):
        self.created.append({"repo_id": repo_id, **kwargs})

    def upload_folder(self, *, repo_id, folder_path, **kwargs):
        assert self.created and self.created[-1]["repo_id"] == repo_id, "the repo is created before the upload"
        self.uploads.append({"repo_id": repo_id, **kwargs})
        shutil.copytree(folder_path, self.uploaded)
        return "commit-1"


@pytest.fixture
def hub(tmp_path, monkeypatch) -> FakeHub:
    fake = FakeHub(tmp_path / "uploaded")
    monkeypatch.setattr(huggingface_hub, "create_repo", fake.create_repo)
    monkeypatch.setattr(huggingface_hub, "upload_folder", fake.upload_folder)
    return fake


def test_push_to_hub_uploads_safetensors_config_and_a_card(hub, no_downloads):
    gpt = tiny_gpt()
    card = {"data": "200 shapes images, 16x16", "training": {"steps": 300, "lr": 0.001},
            "metrics": {"loss": 1.2345678, "accuracy": 0.875}, "reproduce": "mmgen train configs/tiny.yaml"}
    assert gpt.push_to_hub("someone/tiny-gpt", model_card=card, private=True, token="secret") == "commit-1"
    assert hub.created == [{"repo_id": "someone/tiny-gpt", "token": "secret", "private": True, "exist_ok": True}]
    assert hub.uploads[0]["token"] == "secret"
    assert files_in(hub.uploaded) == ["README.md", "config.json", WEIGHTS_NAME]
    readme = (hub.uploaded / "README.md").read_text()
    for text in ("200 shapes images", "steps: 300", "| loss | 1.2345678 |", "| accuracy | 0.875 |",
                 "mmgen train configs/tiny.yaml", "GPT.from_pretrained('someone/tiny-gpt')", "n_layers: 2"):
        assert text in readme
    loaded = GPT.from_pretrained(hub.uploaded)
    ids = torch.randint(0, 32, (1, 5))
    with torch.no_grad():
        assert torch.equal(gpt(ids), loaded.eval()(ids))


def test_text_encoder_conditioner_card_leaves_the_tokenizer_json_out(hub, tmp_path):
    """The card's config shows what a reader needs; the tokenizer's whole JSON stays in config.json only."""
    from mmgen.conditioning import TextEncoderConditioner
    from text_encoder_fixture import make_tiny_text_encoder

    torch.manual_seed(0)
    cond = TextEncoderConditioner.from_encoder(make_tiny_text_encoder(tmp_path / "encoder"), dim=32, max_len=8,
                                               local_files_only=True)
    cond.push_to_hub("someone/text-conditioner")
    readme = (hub.uploaded / "README.md").read_text()
    shown = yaml.safe_load(readme.split("## Config")[1].split("```yaml\n")[1].split("```")[0])
    assert "tokenizer_json" not in shown and cond.cfg.tokenizer_json not in readme
    assert shown["max_len"] == 8 and shown["encoder_config"]["model_type"] == "bert"
    assert f"`tokenizer_json` ({len(cond.cfg.tokenizer_json):,} characters) is left out" in readme
    assert json.loads((hub.uploaded / "config.json").read_text())["tokenizer_json"] == cond.cfg.tokenizer_json
    loaded = TextEncoderConditioner.from_pretrained(hub.uploaded)
    with torch.no_grad():
        assert torch.equal(loaded.condition(prompt="a red circle").prefix_RPD, cond.condition(prompt="a red circle").prefix_RPD)


def test_push_to_hub_without_card_fields_says_nothing_was_measured(hub):
    tiny_gpt().push_to_hub("someone/bare")
    readme = (hub.uploaded / "README.md").read_text()
    assert "No metrics were measured" in readme and "was not recorded" in readme
    with pytest.raises(ValueError, match=r"unknown field\(s\) \['metric'\]"):
        tiny_gpt().push_to_hub("someone/bare", model_card={"metric": {"fid": 1.0}})


def test_push_folder_refuses_pickles_and_folders_without_a_card(tmp_path, hub):
    folder = tmp_path / "export"
    tiny_gpt().save_pretrained(folder)
    with pytest.raises(ValueError, match="no README.md model card"):
        push_folder_to_hub(folder, "someone/export")
    (folder / "optimizer.bin").write_bytes(b"pickle")
    with pytest.raises(ValueError, match=r"pickled files \['optimizer.bin'\]"):
        push_folder_to_hub(folder, "someone/export", model_card=dict(CARD))
    assert not hub.created and not (folder / "README.md").exists()
    (folder / "optimizer.bin").unlink()
    push_folder_to_hub(folder, "someone/export", model_card=dict(CARD), commit_message="first upload")
    assert hub.uploads[0]["commit_message"] == "first upload"
    assert files_in(hub.uploaded) == ["README.md", "config.json", WEIGHTS_NAME]
    with pytest.raises(FileExistsError, match="README.md already exists"):
        push_folder_to_hub(folder, "someone/export", model_card=dict(CARD))


# ---- model cards -------------------------------------------------------------------------------------
CARD = dict(
    title="Tiny next-token GPT",
    config={"_class_name": "GPT", "dim": 32, "vocab_size": [32, 16]},
    data="The built-in shapes dataset: 512 images of 16x16 pixels, 5 classes.",
    training={"steps": 250, "optim": {"lr": 0.0003, "batch_size": 8}},
    metrics={"eval": {"prompt_adherence": 0.734375, "fid": 41.25}, "train_seconds": 12},
    usage=loading_code("NextTokenPipeline", "someone/tiny"),
)


def front_matter(text: str) -> dict:
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


def test_model_card_holds_the_given_facts(tmp_path):
    card = write_model_card(tmp_path, **CARD, reproduce="mmgen train nt.yaml --output-dir runs/nt", tags=["shapes"])
    text = card.read_text()
    header = front_matter(text)
    assert header["library_name"] == "mmgen" and "shapes" in header["tags"] and "mmgen" in header["tags"]
    assert PACKAGE_LICENSE == "apache-2.0" and header["license"] == "apache-2.0"
    assert "# Tiny next-token GPT" in text and "512 images of 16x16 pixels" in text
    for row in ("| eval.prompt_adherence | 0.734375 |", "| eval.fid | 41.25 |", "| train_seconds | 12 |"):
        assert row in text
    assert "from mmgen import NextTokenPipeline\n\npipe = NextTokenPipeline.from_pretrained('someone/tiny')" in text
    assert "mmgen train nt.yaml --output-dir runs/nt" in text
    yaml_blocks = [yaml.safe_load(block.split("```")[0]) for block in text.split("```yaml\n")[1:]]
    assert yaml_blocks == [CARD["config"], CARD["training"]]


def test_model_card_license_can_be_left_out(tmp_path):
    header = front_matter(write_model_card(tmp_path, **CARD, license=None).read_text())
    assert "license" not in header


def test_model_card_is_not_overwritten_unless_asked(tmp_path):
    card = write_model_card(tmp_path, **CARD)
    card.write_text("hand-written card")
    with pytest.raises(FileExistsError, match="pass overwrite=True"):
        write_model_card(tmp_path, **CARD)
    assert card.read_text() == "hand-written card"
    write_model_card(tmp_path, **{**CARD, "title": "Second run"}, overwrite=True)
    assert "# Second run" in card.read_text()


def test_model_card_refuses_what_is_not_a_measurement(tmp_path):
    with pytest.raises(ValueError, match=r"metrics.eval.fid must be a number .* 'n/a'"):
        write_model_card(tmp_path, **{**CARD, "metrics": {"eval": {"fid": "n/a"}}})
    with pytest.raises(ValueError, match="data must be a non-empty string"):
        write_model_card(tmp_path, **{**CARD, "data": " "})
    with pytest.raises(TypeError, match=r"config.device holds a device"):
        write_model_card(tmp_path, **{**CARD, "config": {"device": torch.device("cpu")}})
    assert not (tmp_path / "README.md").exists()
