"""Conditioners: prefix shapes and masks, guidance rows, null conditions, condition dropout, save / load, checks."""

from __future__ import annotations

import dataclasses
import json
import shutil

import pytest
import torch

from mmgen.conditioning import (
    TEXT_PAD_ID,
    ByteTextConditioner,
    ByteTextConditionerConfig,
    ClassConditioner,
    ClassConditionerConfig,
    Conditioning,
    TextEncoderConditioner,
    TextEncoderConditionerConfig,
)
from mmgen.data import NUM_CLASSES, caption
from text_encoder_fixture import make_tiny_text_encoder

DIM = 16
MAX_LEN = 24  # bytes of the longest caption, and well within the tiny encoder's 32 positions
CAPTIONS = [caption(c) for c in range(NUM_CLASSES)]
KINDS = ("class", "byte", "encoder")


@pytest.fixture(scope="module")
def encoder_folder(tmp_path_factory):
    return make_tiny_text_encoder(tmp_path_factory.mktemp("tiny_encoder"))


def build(kind: str, folder, *, adaln_dim: int = 0, **options):
    torch.manual_seed(0)
    if kind == "class":
        return ClassConditioner(ClassConditionerConfig(dim=DIM, num_classes=NUM_CLASSES, adaln_dim=adaln_dim, **options))
    if kind == "byte":
        return ByteTextConditioner(ByteTextConditionerConfig(dim=DIM, max_len=MAX_LEN, adaln_dim=adaln_dim))
    return TextEncoderConditioner.from_encoder(folder, dim=DIM, max_len=MAX_LEN, adaln_dim=adaln_dim,
                                               local_files_only=True, **options)


def request(kind: str, classes: list[int]) -> dict:
    """condition() kwargs asking for ``classes`` (labels for the class conditioner, captions for text)."""
    return {"class_labels": classes} if kind == "class" else {"prompt": [CAPTIONS[c] for c in classes]}


def training_request(kind: str, classes: list[int]) -> dict:
    return {"class_labels": torch.tensor(classes)} if kind == "class" else {"prompt": [CAPTIONS[c] for c in classes]}


def assert_rows_equal(a: Conditioning, rows_a, b: Conditioning, rows_b) -> None:
    assert torch.equal(a.prefix_RPD[rows_a], b.prefix_RPD[rows_b])
    assert torch.equal(a.prefix_valid_RP[rows_a], b.prefix_valid_RP[rows_b])
    if a.adaln_RA is not None:
        assert torch.equal(a.adaln_RA[rows_a], b.adaln_RA[rows_b])


# ---- class conditioner --------------------------------------------------------------------------
def test_class_rows_are_label_major_then_null_rows():
    conditioner = build("class", None)
    cond = conditioner.condition(class_labels=[3, 5], num_samples_per_prompt=2, guided=True)
    table = conditioner.embedding.weight
    ids = [3, 3, 5, 5] + [NUM_CLASSES] * 4
    assert cond.prefix_RPD.shape == (8, 1, DIM) and cond.num_prefix == 1
    assert torch.equal(cond.prefix_RPD[:, 0], table[ids])  # one class token: the table row of the id
    assert cond.prefix_valid_RP.shape == (8, 1) and bool(cond.prefix_valid_RP.all())
    assert (cond.batch_size, cond.guided, cond.adaln_RA) == (4, True, None)
    assert cond.class_ids == [3, 3, 5, 5] and cond.prompts == [""] * 4
    assert table.shape == (NUM_CLASSES + 1, DIM)


def test_class_unconditional_is_the_null_class():
    conditioner = build("class", None)
    cond = conditioner.condition(num_samples_per_prompt=3)
    assert torch.equal(cond.prefix_RPD[:, 0], conditioner.embedding.weight[[conditioner.null_class_id] * 3])
    assert cond.class_ids == [None] * 3 and cond.prompts == [""] * 3 and not cond.guided


def test_class_prompts_match_class_names_ignoring_case_and_spaces():
    conditioner = build("class", None)
    cond = conditioner.condition(prompt=["  A  Red circle ", CAPTIONS[4]], class_names=CAPTIONS)
    expected = conditioner.condition(class_labels=[CAPTIONS.index("a red circle"), 4])
    assert torch.equal(cond.prefix_RPD, expected.prefix_RPD)
    assert cond.class_ids == expected.class_ids
    assert cond.prompts == ["  A  Red circle ", CAPTIONS[4]]


def test_class_adaln_vector_and_adaln_only_conditioner():
    with_adaln = build("class", None, adaln_dim=6).condition(class_labels=[1, 2], guided=True)
    assert with_adaln.adaln_RA.shape == (4, 6) and with_adaln.num_prefix == 1
    assert torch.equal(with_adaln.adaln_RA[2], with_adaln.adaln_RA[3])  # both null rows
    only = build("class", None, adaln_dim=6, prefix=False)
    cond = only.condition(class_labels=[1, 2], guided=True)
    assert only.max_prefix == 0 and only.embedding is None
    assert cond.prefix_RPD.shape == (4, 0, DIM) and cond.prefix_valid_RP.shape == (4, 0)
    assert torch.equal(cond.adaln_RA, only.adaln_embedding.weight[[1, 2, NUM_CLASSES, NUM_CLASSES]])


# ---- text conditioners --------------------------------------------------------------------------
def test_byte_prefix_is_the_byte_embeddings_and_null_prompt_is_padding():
    conditioner = build("byte", None, adaln_dim=4)
    cond = conditioner.condition(prompt=["ab", "a red circle"], guided=True)
    assert cond.prefix_RPD.shape == (4, MAX_LEN, DIM) and conditioner.max_prefix == MAX_LEN
    assert cond.prefix_valid_RP.sum(1).tolist() == [2, len("a red circle"), 0, 0]
    ids = torch.full((MAX_LEN,), TEXT_PAD_ID)
    ids[:2] = torch.tensor([ord("a"), ord("b")])
    assert torch.equal(cond.prefix_RPD[0], conditioner.embedding(ids))
    assert torch.equal(cond.prefix_RPD[2], conditioner.embedding(torch.full((MAX_LEN,), TEXT_PAD_ID)))
    assert torch.allclose(cond.adaln_RA[0], conditioner.adaln_proj(conditioner.embedding(ids[:2]).mean(0)))
    assert torch.equal(cond.adaln_RA[2], conditioner.adaln_null) and torch.equal(cond.adaln_RA[3], conditioner.adaln_null)
    assert cond.class_ids == [None, None] and cond.prompts == ["ab", "a red circle"]


def test_encoder_valid_is_the_attention_mask_and_null_prompt_is_all_invalid(encoder_folder):
    conditioner = build("encoder", encoder_folder, adaln_dim=4)
    cond = conditioner.condition(prompt=["a red circle", "blue"], num_samples_per_prompt=2, guided=True)
    assert cond.prefix_RPD.shape == (8, MAX_LEN, DIM) and cond.adaln_RA.shape == (8, 4)
    assert cond.prefix_valid_RP.sum(1).tolist() == [5, 5, 3, 3, 0, 0, 0, 0]  # [CLS] words [SEP]
    assert bool(cond.prefix_valid_RP[:4, 0].all())  # right padding
    padding = cond.prefix_RPD[~cond.prefix_valid_RP]
    assert torch.equal(padding, torch.zeros_like(padding))  # padding holds zeros
    assert torch.equal(cond.adaln_RA[4:], conditioner.adaln_null.expand(4, 4))
    assert cond.prompts == ["a red circle", "a red circle", "blue", "blue"]
    ids, mask = conditioner.encode(["a red circle"])
    assert ids[0, :5].tolist() == conditioner.tokenizer("a red circle")["input_ids"] and mask.sum() == 5


@pytest.mark.parametrize("kind", ("byte", "encoder"))
def test_text_unconditional_is_the_null_prompt(kind, encoder_folder):
    conditioner = build(kind, encoder_folder, adaln_dim=3)
    cond = conditioner.condition(num_samples_per_prompt=2)
    guided = conditioner.condition(prompt="a red circle", num_samples_per_prompt=2, guided=True)
    assert not bool(cond.prefix_valid_RP.any())
    assert_rows_equal(cond, slice(None), guided, slice(2, None))
    assert cond.prompts == ["", ""] and cond.class_ids == [None, None]


# ---- training: condition dropout ----------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
def test_training_condition_without_dropout_is_the_condition(kind, encoder_folder):
    conditioner = build(kind, encoder_folder, adaln_dim=3)
    classes = [0, 4, 7, 4]
    train = conditioner.training_condition(**training_request(kind, classes), batch_size=4, cond_drop_prob=0.0)
    assert_rows_equal(train, slice(None), conditioner.condition(**request(kind, classes)), slice(None))
    assert train.batch_size == 4 and not train.guided


@pytest.mark.parametrize("kind", KINDS)
def test_dropped_rows_are_the_null_condition_and_follow_the_generator(kind, encoder_folder):
    conditioner = build(kind, encoder_folder, adaln_dim=3)
    classes = list(range(NUM_CLASSES))
    B = len(classes)
    drop = torch.rand(B, generator=torch.Generator().manual_seed(7)) < 0.7
    assert 0 < int(drop.sum()) < B
    train = conditioner.training_condition(**training_request(kind, classes), batch_size=B, cond_drop_prob=0.7,
                                           generator=torch.Generator().manual_seed(7))
    kept = conditioner.condition(**request(kind, classes))
    null = conditioner.condition(num_samples_per_prompt=B)
    assert_rows_equal(train, ~drop, kept, ~drop)
    assert_rows_equal(train, drop, null, drop)
    names = train.class_ids if kind == "class" else train.prompts
    empty = None if kind == "class" else ""
    assert [name == empty for name in names] == drop.tolist()


def test_class_training_accepts_the_null_class_id():
    train = build("class", None).training_condition(class_labels=[NUM_CLASSES, 2], batch_size=2, cond_drop_prob=0.0)
    assert train.class_ids == [None, 2]


# ---- save / load --------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
def test_save_and_load_give_identical_outputs(kind, tmp_path):
    source = make_tiny_text_encoder(tmp_path / "encoder") if kind == "encoder" else None
    conditioner = build(kind, source, adaln_dim=3)
    json.dumps(dataclasses.asdict(conditioner.cfg))  # configs are plain JSON
    conditioner.save_pretrained(tmp_path / "saved")
    if source is not None:
        shutil.rmtree(source)  # the saved conditioner holds encoder and tokenizer itself
    assert sorted(p.name for p in (tmp_path / "saved").iterdir()) == ["config.json", "diffusion_pytorch_model.safetensors"]
    loaded = type(conditioner).from_pretrained(tmp_path / "saved")
    asked = request(kind, [1, 6])
    before, after = conditioner.condition(**asked, guided=True), loaded.condition(**asked, guided=True)
    assert_rows_equal(before, slice(None), after, slice(None))


# ---- gradients ----------------------------------------------------------------------------------
@pytest.mark.parametrize("freeze", (True, False))
def test_gradients_reach_the_projection_and_only_an_unfrozen_encoder(freeze, encoder_folder):
    conditioner = build("encoder", encoder_folder, adaln_dim=3, freeze_encoder=freeze)
    conditioner.train()
    assert conditioner.encoder.training is not freeze
    cond = conditioner.training_condition(prompt=CAPTIONS[:3], batch_size=3, cond_drop_prob=0.0)
    (cond.prefix_RPD.square().sum() + cond.adaln_RA.sum()).backward()
    assert conditioner.projection.weight.grad.abs().sum() > 0 and conditioner.adaln_proj.weight.grad is not None
    encoder_grads = [p.grad for p in conditioner.encoder.parameters()]
    assert all(not p.requires_grad for p in conditioner.encoder.parameters()) is freeze
    assert all(g is None for g in encoder_grads) is freeze


# ---- bad input ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"class_labels": [NUM_CLASSES]}, ValueError, "unknown class id"),
        ({"class_labels": [-1]}, ValueError, "class_labels must lie in"),
        ({"class_labels": [1.5]}, TypeError, "class_labels must hold ints"),
        ({"class_labels": torch.tensor([0.0])}, TypeError, "class_labels must be"),
        ({"class_labels": []}, ValueError, "class_labels must not be empty"),
        ({"prompt": ""}, ValueError, "prompt must not be empty"),
        ({"prompt": [" "], "class_names": CAPTIONS}, ValueError, "prompt must not be empty"),
        ({"prompt": [3]}, TypeError, "prompt must be a str"),
        ({"prompt": []}, TypeError, "prompt must be a non-empty str"),
        ({"prompt": "a red circle"}, ValueError, "needs class_names"),
        ({"prompt": "a pink circle", "class_names": CAPTIONS}, ValueError, "not one of the class names"),
        ({"prompt": "a red circle", "class_names": CAPTIONS[:2]}, ValueError, "class_names has 2 names"),
        ({"prompt": "a red circle", "class_labels": [0]}, ValueError, "pass prompt or class_labels, not both"),
        ({"class_labels": [0], "num_samples_per_prompt": 0}, ValueError, "num_samples_per_prompt must be a positive int"),
        ({"class_labels": [0], "num_samples_per_prompt": True}, ValueError, "num_samples_per_prompt"),
        ({"class_labels": [0], "guided": 1}, TypeError, "guided must be a bool"),
    ],
)
def test_class_condition_rejects_bad_input(kwargs, error, match):
    with pytest.raises(error, match=match):
        build("class", None).condition(**kwargs)


@pytest.mark.parametrize("kind", ("byte", "encoder"))
def test_text_condition_rejects_bad_input(kind, encoder_folder):
    conditioner = build(kind, encoder_folder)
    with pytest.raises(ValueError, match="class_labels given"):
        conditioner.condition(class_labels=[0])
    with pytest.raises(ValueError, match="prompt must not be empty"):
        conditioner.condition(prompt=["a red circle", ""])
    with pytest.raises(ValueError, match=f"max_len={MAX_LEN}"):
        conditioner.condition(prompt=" ".join(["red"] * MAX_LEN))
    with pytest.raises(ValueError, match="num_samples_per_prompt"):
        conditioner.condition(prompt="blue", num_samples_per_prompt=1.0)


@pytest.mark.parametrize(
    ("kind", "kwargs", "error", "match"),
    [
        ("class", {"class_labels": [0, 1], "cond_drop_prob": 1.0}, ValueError, r"cond_drop_prob must be in \[0, 1\)"),
        ("class", {"class_labels": [0, 1], "cond_drop_prob": -0.1}, ValueError, "cond_drop_prob"),
        ("class", {"class_labels": [0, 1], "cond_drop_prob": "0.1"}, TypeError, "cond_drop_prob"),
        ("class", {"class_labels": [0, NUM_CLASSES + 1]}, ValueError, "unknown class id"),
        ("class", {"class_labels": [0]}, ValueError, "batch_size is 2"),
        ("class", {"prompt": ["a", "b"]}, ValueError, "trains on class_labels"),
        ("class", {}, ValueError, "pass class_labels or prompt"),
        ("class", {"class_labels": [0, 1], "batch_size": 0}, ValueError, "batch_size must be a positive int"),
        ("byte", {"prompt": "ab"}, TypeError, "prompt must be a list of str"),
        ("byte", {"prompt": ["ab"]}, ValueError, "batch_size is 2"),
        ("byte", {"class_labels": [0, 1]}, ValueError, "trains on prompts"),
        ("byte", {"prompt": ["a", "b"], "class_labels": [0, 1]}, ValueError, "not both"),
    ],
)
def test_training_condition_rejects_bad_input(kind, kwargs, error, match):
    kwargs = {"batch_size": 2, "cond_drop_prob": 0.1, **kwargs}
    with pytest.raises(error, match=match):
        build(kind, None).training_condition(**kwargs)


@pytest.mark.parametrize(
    ("config", "match"),
    [
        (lambda: ClassConditionerConfig(dim=8, num_classes=0), "num_classes"),
        (lambda: ClassConditionerConfig(dim=0, num_classes=3), "dim"),
        (lambda: ClassConditionerConfig(dim=8, num_classes=3, prefix=False), "prefix=False needs adaln_dim"),
        (lambda: ByteTextConditionerConfig(dim=8, max_len=0), "max_len"),
        (lambda: ByteTextConditionerConfig(dim=8, max_len=4, adaln_dim=-1), "adaln_dim"),
        (lambda: TextEncoderConditionerConfig(dim=8, max_len=4, encoder_config={}, tokenizer_json="{}"), "encoder_config"),
        (lambda: TextEncoderConditionerConfig(dim=8, max_len=4, encoder_config={"model_type": "bert"}, tokenizer_json=""),
         "tokenizer_json"),
    ],
)
def test_configs_reject_bad_values(config, match):
    with pytest.raises(ValueError, match=match):
        config()


def test_encoder_max_len_must_fit_the_encoder_positions(encoder_folder):
    with pytest.raises(ValueError, match="max_len=64 exceeds the encoder's max_position_embeddings=32"):
        TextEncoderConditioner.from_encoder(encoder_folder, dim=DIM, max_len=64, local_files_only=True)


def test_class_as_start_is_the_first_slot_not_a_prefix():
    conditioner = ClassConditioner(ClassConditionerConfig(dim=8, num_classes=4, as_start=True))
    cond = conditioner.condition(class_labels=[1, 3], guided=True)
    assert conditioner.max_prefix == 0 and cond.num_prefix == 0 and conditioner.gives_start
    table = conditioner.embedding.weight
    assert torch.equal(cond.start_R1D[:, 0], table[[1, 3, 4, 4]])  # conditional rows, then the null class
    train = conditioner.training_condition(class_labels=[2, 0], batch_size=2, cond_drop_prob=0.0)
    assert torch.equal(train.start_R1D[:, 0], table[[2, 0]])
    assert ClassConditioner(ClassConditionerConfig(dim=8, num_classes=4)).condition(class_labels=[1]).start_R1D is None
    with pytest.raises(ValueError, match="as_start=True .* needs prefix=True"):
        ClassConditionerConfig(dim=8, num_classes=4, prefix=False, adaln_dim=4, as_start=True)
