"""Generation quality beyond adherence: ``pipelines.generation_quality`` on generators with known answers (one
that draws the data itself, one that draws the same sample for every seed), and ``mmgen eval`` end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from pipeline_fixtures import build, class_conditioner, vq_tokenizer

from mmgen.app.cli import main
from mmgen.conditioning import ClassConditioner, ClassConditionerConfig
from mmgen.data import NUM_CLASSES, ShapesDataset
from mmgen.model_card import set_model_card_section
from pipelines import NextTokenPipeline, generation_quality

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class DataDrawingPipeline:
    """Stands in for a generator: "samples" of class c are shapes of class c rendered by their generator's seed
    (``collapsed``: every seed gets the same one), in the pipeline output format ``generation_quality`` reads."""

    class _Tokenizer:
        modality = "image"

    def __init__(self, *, collapsed: bool) -> None:
        self.tokenizer = self._Tokenizer()
        self.conditioner = ClassConditioner(ClassConditionerConfig(dim=8, num_classes=NUM_CLASSES))
        self.collapsed = collapsed

    def __call__(self, *, class_labels: list[int], generator: list[torch.Generator], **_: object) -> tuple[torch.Tensor]:
        data = ShapesDataset(size=32, length=NUM_CLASSES * 1000, split="train", seed=7)
        seeds = [0 if self.collapsed else int(g.initial_seed()) % 1000 for g in generator]
        images = data.batch([s * NUM_CLASSES + c for s, c in zip(seeds, class_labels)])["image"]
        return ((images + 1) / 2,)


def test_a_generator_that_draws_the_data_scores_like_the_data():
    result = generation_quality(DataDrawingPipeline(collapsed=False), samples_per_class=12, seed=100)
    assert result["adherence"] == 1.0
    attributes = result["distribution"]["attributes"]
    assert attributes["precision"] > 0.9 and attributes["recall"] > 0.9 and attributes["coverage"] > 0.85
    assert result["distribution"]["network"]["recall"] > 0.85
    assert set(result["spread"]) == {"centre_x", "centre_y", "size"} and 0.7 < result["spread_min"] < 1.4
    assert len(result["per_class_distribution"]) == NUM_CLASSES


def test_a_collapsed_generator_keeps_adherence_but_loses_recall_and_spread():
    fair = generation_quality(DataDrawingPipeline(collapsed=False), samples_per_class=12, seed=100)
    collapsed = generation_quality(DataDrawingPipeline(collapsed=True), samples_per_class=12, seed=100)
    assert collapsed["adherence"] == 1.0  # one perfect sample per prompt: adherence cannot tell
    assert collapsed["spread_min"] == 0.0
    assert collapsed["distribution"]["attributes"]["recall"] < fair["distribution"]["attributes"]["recall"] - 0.5
    assert collapsed["distribution"]["attributes"]["frechet"] > 5 * fair["distribution"]["attributes"]["frechet"]


@pytest.fixture(scope="module")
def pipeline_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny untrained 21-class shapes pipeline, saved, with a model card to be extended."""
    folder = tmp_path_factory.mktemp("pipe")
    pipe = build(NextTokenPipeline, vq_tokenizer(), class_conditioner(num_classes=NUM_CLASSES), null_condition_trained=True)
    pipe.save_pretrained(str(folder))
    (folder / "README.md").write_text("# tiny\n\n## How to load\n\ncode\n\n## Measured metrics\n\ntable\n")
    return folder


def test_mmgen_eval_writes_one_row_per_guidance_scale_and_the_model_card(pipeline_dir, tmp_path, capsys):
    out = tmp_path / "eval.json"
    args = ["eval", str(pipeline_dir), "--guidance", "1", "2", "--samples-per-class", "6", "--out", str(out), "--model-card"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "| guidance | adherence | precision | recall" in printed and "\n| 2 | " in printed
    report = json.loads(out.read_text())
    assert [row["guidance_scale"] for row in report["rows"]] == [1.0, 2.0]
    assert report["command"].startswith(f"mmgen eval {pipeline_dir} --samples-per-class 6 --seed 0 --guidance 1 2")
    row = report["rows"][0]
    assert row["num_samples"] == 6 * NUM_CLASSES and 0 <= row["distribution"]["attributes"]["recall"] <= 1
    assert len(row["per_class_distribution"]) == NUM_CLASSES and "network" in row["distribution"]

    assert main(args) == 2  # --out exists
    assert "--overwrite" in capsys.readouterr().err
    assert main([*args, "--overwrite"]) == 0
    card = (pipeline_dir / "README.md").read_text()
    assert card.count("## Generation quality (mmgen eval)") == 1  # replaced, not appended twice
    assert card.startswith("# tiny\n\n## How to load\n\ncode\n\n## Measured metrics\n\ntable\n")
    assert "| guidance | adherence |" in card and "mmgen eval " in card


def test_a_model_card_section_is_replaced_in_place(tmp_path):
    (tmp_path / "README.md").write_text("# card\n\n## A\n\nold a\n\n## B\n\nb\n")
    set_model_card_section(tmp_path, "A", "new a")
    assert (tmp_path / "README.md").read_text() == "# card\n\n## A\n\nnew a\n\n## B\n\nb\n"
    set_model_card_section(tmp_path, "C", "c")
    assert (tmp_path / "README.md").read_text().endswith("## B\n\nb\n\n## C\n\nc\n")
