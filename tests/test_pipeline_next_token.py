"""Fast tests of NextTokenPipeline and of what every pipeline inherits from ARImagePipeline.

Tiny random components only: a VQ tokenizer with a 4x4 grid, a Flex tokenizer with 8 tokens, and
one-layer GPTs (class-conditional, text-conditional, unconditional). Nothing is downloaded.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import diffusers
import numpy as np
import PIL.Image
import pytest
import torch
from diffusers.utils import dynamic_modules_utils

from mmgen import GPT, GPTConfig
from mmgen.sampling import GuidanceSchedule
from pipelines import ARImagePipelineOutput, NextTokenPipeline
from tokenizers_visual import (
    FlexImageTokenizer,
    FlexImageTokenizerConfig,
    KLConfig,
    KLImageTokenizer,
    VQConfig,
    VQImageTokenizer,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

IMAGE_SIZE = 16
VQ_GRID = (4, 4)
VQ_CODEBOOK = 32
FLEX_TOKENS = 8
FLEX_LEVELS = [4, 4]
NUM_CLASSES = 5
CLASS_NAMES = ["a red circle", "a blue square", "a green triangle", "a yellow star", "a purple heart"]


# ---- tiny components -------------------------------------------------------------------------------
def vq_tokenizer() -> VQImageTokenizer:
    torch.manual_seed(0)
    return VQImageTokenizer(VQConfig(image_size=IMAGE_SIZE, downsample=4, channels=8, channel_mult=[1, 1, 1],
                                     z_channels=8, codebook_size=VQ_CODEBOOK, codebook_dim=4))


def flex_tokenizer() -> FlexImageTokenizer:
    torch.manual_seed(0)
    return FlexImageTokenizer(FlexImageTokenizerConfig(
        image_size=IMAGE_SIZE, patch_size=4, num_tokens=FLEX_TOKENS, fsq_levels=FLEX_LEVELS,
        enc_dim=16, enc_layers=1, enc_heads=2, dec_dim=16, dec_layers=1, dec_heads=2, mlp_ratio=2.0,
    ))


def tiny_gpt(*, vocab_size: int = VQ_CODEBOOK, coord_rank: int = 2, num_classes: int = NUM_CLASSES,
             text_max_len: int = 0, start_token: bool = True) -> GPT:
    """A random GPT with unit-scale condition embeddings: as after training, the condition visibly steers samples."""
    torch.manual_seed(1)
    gpt = GPT(GPTConfig(vocab_size=vocab_size, dim=32, n_layers=1, n_heads=2, coord_rank=coord_rank,
                        num_classes=num_classes, text_max_len=text_max_len, start_token=start_token,
                        max_seq_len=64))
    for table in (gpt.class_embedding, gpt.text_embedding):
        if table is not None:
            torch.nn.init.normal_(table.weight, std=1.0)
    return gpt


def quiet(pipe: NextTokenPipeline) -> NextTokenPipeline:
    pipe.set_progress_bar_config(disable=True)
    return pipe


def vq_pipe(**config) -> NextTokenPipeline:
    return quiet(NextTokenPipeline(gpt=tiny_gpt(), tokenizer=vq_tokenizer(), **config))


def flex_pipe(**config) -> NextTokenPipeline:
    tokenizer = flex_tokenizer()
    gpt = tiny_gpt(vocab_size=tokenizer.codebook_size, coord_rank=1)
    return quiet(NextTokenPipeline(gpt=gpt, tokenizer=tokenizer, **config))


def text_pipe(**config) -> NextTokenPipeline:
    return quiet(NextTokenPipeline(gpt=tiny_gpt(num_classes=0, text_max_len=16), tokenizer=vq_tokenizer(), **config))


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def gens(*seeds: int) -> list[torch.Generator]:
    return [gen(s) for s in seeds]


@torch.no_grad()
def decode_to_unit(pipe: NextTokenPipeline, tokens: torch.Tensor) -> torch.Tensor:
    """What the "pt" output should be for ``tokens``: the tokenizer's decoding mapped to [0, 1]."""
    return (pipe.tokenizer.decode(tokens) / 2 + 0.5).clamp(0, 1)


def tokens_of(pipe: NextTokenPipeline, **kwargs) -> torch.Tensor:
    return pipe(output_type="tokens", **kwargs).tokens


@pytest.fixture
def pipe() -> NextTokenPipeline:
    return vq_pipe()


# ---- output types ----------------------------------------------------------------------------------
def test_pil_output_is_a_list_of_images_of_the_image_size(pipe):
    out = pipe(class_labels=[1, 2], generator=gen(0))
    assert isinstance(out, ARImagePipelineOutput)
    assert len(out.images) == 2
    for image in out.images:
        assert isinstance(image, PIL.Image.Image)
        assert image.size == (IMAGE_SIZE, IMAGE_SIZE)
        assert image.mode == "RGB"


def test_np_output_is_BHW3_floats_in_unit_range(pipe):
    images = pipe(class_labels=[1, 2], generator=gen(0), output_type="np").images
    assert isinstance(images, np.ndarray)
    assert images.shape == (2, IMAGE_SIZE, IMAGE_SIZE, 3)
    assert np.issubdtype(images.dtype, np.floating)
    assert images.min() >= 0.0 and images.max() <= 1.0


def test_pt_output_is_B3HW_in_unit_range_and_matches_np(pipe):
    pt = pipe(class_labels=[1, 2], generator=gen(0), output_type="pt").images
    arr = pipe(class_labels=[1, 2], generator=gen(0), output_type="np").images
    assert isinstance(pt, torch.Tensor)
    assert pt.shape == (2, 3, IMAGE_SIZE, IMAGE_SIZE)
    assert pt.min() >= 0.0 and pt.max() <= 1.0
    np.testing.assert_allclose(pt.permute(0, 2, 3, 1).numpy(), arr, atol=1e-6)


def test_pil_pixels_are_the_np_images_in_bytes(pipe):
    arr = pipe(class_labels=[3], generator=gen(4), output_type="np").images
    pil = pipe(class_labels=[3], generator=gen(4), output_type="pil").images
    np.testing.assert_array_equal(np.asarray(pil[0]), (arr[0] * 255).round().astype(np.uint8))


def test_tokens_output_has_no_images_and_a_vq_id_grid(pipe):
    out = pipe(class_labels=[1, 2, 3], generator=gen(0), output_type="tokens")
    assert out.images is None
    assert out.tokens.shape == (3, *VQ_GRID)
    assert out.tokens.dtype == torch.long
    assert 0 <= int(out.tokens.min()) and int(out.tokens.max()) < VQ_CODEBOOK


def test_tokens_output_of_a_flex_pipeline_is_a_1d_sequence():
    pipe = flex_pipe()
    out = pipe(class_labels=[0, 4], generator=gen(0), output_type="tokens")
    assert out.images is None
    assert out.tokens.shape == (2, FLEX_TOKENS)
    assert 0 <= int(out.tokens.min()) and int(out.tokens.max()) < math.prod(FLEX_LEVELS)


def test_tokens_are_what_the_images_decode_from(pipe):
    out = pipe(class_labels=[0, 1], generator=gen(2), output_type="pt")
    torch.testing.assert_close(out.images, decode_to_unit(pipe, out.tokens))


def test_unknown_output_type_raises(pipe):
    with pytest.raises(ValueError, match="output_type"):
        pipe(class_labels=[0], output_type="latent")


def test_return_dict_false_gives_an_images_tokens_tuple(pipe):
    result = pipe(class_labels=[1, 2], generator=gen(0), output_type="pt", return_dict=False)
    assert isinstance(result, tuple) and len(result) == 2
    images, tokens = result
    out = pipe(class_labels=[1, 2], generator=gen(0), output_type="pt")
    torch.testing.assert_close(images, out.images)
    assert torch.equal(tokens, out.tokens)


# ---- seeds -----------------------------------------------------------------------------------------
def test_same_seed_gives_the_same_output(pipe):
    a = pipe(class_labels=[1, 2], generator=gen(7), output_type="pt")
    b = pipe(class_labels=[1, 2], generator=gen(7), output_type="pt")
    assert torch.equal(a.tokens, b.tokens)
    assert torch.equal(a.images, b.images)


def test_different_seeds_give_different_tokens(pipe):
    assert not torch.equal(tokens_of(pipe, class_labels=[1, 2], generator=gen(0)),
                           tokens_of(pipe, class_labels=[1, 2], generator=gen(1)))


def test_the_samples_of_one_batch_differ(pipe):
    tokens = tokens_of(pipe, class_labels=[1, 1], generator=gen(0))
    assert not torch.equal(tokens[0], tokens[1])


def test_a_list_of_generators_gives_one_seed_per_sample(pipe):
    tokens = tokens_of(pipe, class_labels=[1, 1], generator=gens(3, 3))
    assert torch.equal(tokens[0], tokens[1])


def test_generator_list_of_the_wrong_length_raises(pipe):
    with pytest.raises(ValueError, match="generator"):
        pipe(class_labels=[1, 2], generator=gens(0, 1, 2))


def test_a_generator_of_the_wrong_type_raises(pipe):
    with pytest.raises(TypeError, match="generator"):
        pipe(class_labels=[1], generator=0)


# ---- batch consistency -----------------------------------------------------------------------------
def test_a_sample_does_not_depend_on_the_rest_of_its_batch(pipe):
    batch = pipe(class_labels=[1, 2, 3], generator=gens(0, 1, 2), output_type="pt")
    alone = pipe(class_labels=[2], generator=gens(1), output_type="pt")
    assert torch.equal(batch.tokens[1], alone.tokens[0])
    torch.testing.assert_close(batch.images[1], alone.images[0], atol=1e-5, rtol=1e-5)


def test_a_prompted_sample_does_not_depend_on_the_rest_of_its_batch():
    pipe = text_pipe()
    batch = pipe(prompt=["a red circle", "a blue square", "a green star"], generator=gens(0, 1, 2), output_type="pt")
    alone = pipe(prompt="a blue square", generator=gens(1), output_type="pt")
    assert torch.equal(batch.tokens[1], alone.tokens[0])
    torch.testing.assert_close(batch.images[1], alone.images[0], atol=1e-5, rtol=1e-5)


def test_a_flex_sample_does_not_depend_on_the_rest_of_its_batch():
    pipe = flex_pipe()
    batch = tokens_of(pipe, class_labels=[1, 2, 3], generator=gens(0, 1, 2))
    alone = tokens_of(pipe, class_labels=[2], generator=gens(1))
    assert torch.equal(batch[1], alone[0])


def test_num_samples_per_prompt_repeats_each_label_in_order(pipe):
    out = pipe(class_labels=[3, 1], num_samples_per_prompt=3, generator=gens(*range(6)), output_type="pt")
    assert out.images.shape[0] == 6 and out.tokens.shape[0] == 6
    for row, label in enumerate([3, 3, 3, 1, 1, 1]):
        alone = tokens_of(pipe, class_labels=[label], generator=gens(row))
        assert torch.equal(out.tokens[row], alone[0]), f"row {row} is not a sample of class {label}"


def test_num_samples_per_prompt_must_be_a_positive_int(pipe):
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="num_samples_per_prompt"):
            pipe(class_labels=[1], num_samples_per_prompt=bad)


# ---- callback --------------------------------------------------------------------------------------
def recording_callback(calls: list):
    def callback(pipe, step, timestep, callback_kwargs):
        calls.append((step, callback_kwargs["tokens"].clone()))
        return callback_kwargs
    return callback


def test_callback_is_called_once_per_token_with_that_steps_tokens(pipe):
    calls: list = []
    out = pipe(class_labels=[1, 2], generator=gen(0), output_type="tokens",
               callback_on_step_end=recording_callback(calls))
    n = VQ_GRID[0] * VQ_GRID[1]
    assert [step for step, _ in calls] == list(range(n))
    step_tokens = torch.cat([tokens for _, tokens in calls], dim=1)
    assert step_tokens.shape == (2, n)
    assert torch.equal(step_tokens, out.tokens.flatten(1))


def test_callback_runs_k_steps_for_a_flex_prefix_of_k_tokens():
    calls: list = []
    pipe = flex_pipe()
    out = pipe(class_labels=[1], num_tokens=3, generator=gen(0), output_type="tokens",
               callback_on_step_end=recording_callback(calls))
    assert [step for step, _ in calls] == [0, 1, 2]
    assert torch.equal(torch.cat([tokens for _, tokens in calls], dim=1), out.tokens)


def test_the_kv_cache_is_released_after_a_call_and_after_a_failing_callback(pipe):
    tokens_of(pipe, class_labels=[1], generator=gen(0))
    assert pipe.gpt.cache_shape is None

    def failing(pipe, step, timestep, callback_kwargs):
        if step == 2:
            raise RuntimeError("stop at step 2")
        return callback_kwargs

    with pytest.raises(RuntimeError, match="stop at step 2"):
        pipe(class_labels=[1], generator=gen(0), callback_on_step_end=failing)
    assert pipe.gpt.cache_shape is None


# ---- flexible length -------------------------------------------------------------------------------
@pytest.mark.parametrize("k", [1, 3, FLEX_TOKENS])
def test_flex_num_tokens_gives_k_tokens_and_decodes(k):
    pipe = flex_pipe()
    out = pipe(class_labels=[2, 3], num_tokens=k, generator=gen(0), output_type="pt")
    assert out.tokens.shape == (2, k)
    assert out.images.shape == (2, 3, IMAGE_SIZE, IMAGE_SIZE)
    torch.testing.assert_close(out.images, decode_to_unit(pipe, out.tokens))


def test_flex_prefix_is_the_start_of_the_full_sequence():
    pipe = flex_pipe()
    full = tokens_of(pipe, class_labels=[2], generator=gen(5))
    prefix = tokens_of(pipe, class_labels=[2], num_tokens=3, generator=gen(5))
    assert torch.equal(prefix, full[:, :3])


@pytest.mark.parametrize("bad", [FLEX_TOKENS + 1, 0, -2, 2.0, "4", True])
def test_flex_num_tokens_out_of_range_or_not_an_int_raises(bad):
    pipe = flex_pipe()
    with pytest.raises(ValueError, match="num_tokens"):
        pipe(class_labels=[1], num_tokens=bad)


def test_num_tokens_with_a_vq_tokenizer_raises(pipe):
    with pytest.raises(ValueError, match="num_tokens"):
        pipe(class_labels=[1], num_tokens=4)


# ---- the cached loop agrees with one full forward --------------------------------------------------
def teacher_forced_logits(pipe: NextTokenPipeline, ids: torch.Tensor, **condition) -> torch.Tensor:
    """Logits ``[B, L, V]`` of one uncached forward over ``[prefix | start, ids[:-1]]``."""
    inputs_BLD, _ = pipe.teacher_inputs(ids)
    prefix = pipe.training_prefix(batch_size=ids.shape[0], cond_drop_prob=0.0, **condition)
    P = prefix.shape[1]
    layout = pipe.body_layout().with_prefix(P)
    hidden = pipe.gpt.hidden_states(torch.cat([prefix, inputs_BLD], dim=1), layout=layout)
    return pipe.gpt.logits(hidden[:, P:])


@pytest.mark.parametrize(
    ("make", "condition", "call"),
    [
        (vq_pipe, {"class_labels": torch.tensor([1, 4]), "prompt": None}, {"class_labels": [1, 4]}),
        (flex_pipe, {"class_labels": torch.tensor([0, 2]), "prompt": None}, {"class_labels": [0, 2]}),
        (text_pipe, {"class_labels": None, "prompt": ["a red circle", "blue"]}, {"prompt": ["a red circle", "blue"]}),
    ],
    ids=["vq-class", "flex-class", "vq-text"],
)
def test_greedy_cached_generation_is_the_argmax_of_a_full_forward(make, condition, call):
    pipe = make()
    ids = tokens_of(pipe, temperature=0.0, generator=gen(0), **call).flatten(1)
    with torch.no_grad():
        logits = teacher_forced_logits(pipe, ids, **condition)
    assert torch.equal(logits.argmax(-1), ids)


@pytest.mark.parametrize("guidance", [3.0, GuidanceSchedule(scale=4.0, kind="linear"),
                                      GuidanceSchedule(scale=3.0, interval=(0.25, 0.75))],
                         ids=["constant", "linear", "interval"])
def test_greedy_guided_generation_is_the_argmax_of_guided_full_forwards(guidance):
    pipe = vq_pipe(null_condition_trained=True)
    ids = tokens_of(pipe, class_labels=[1, 4], guidance_scale=guidance, temperature=0.0).flatten(1)
    n = ids.shape[1]
    schedule = guidance if isinstance(guidance, GuidanceSchedule) else GuidanceSchedule(scale=guidance)
    scale_L1 = torch.tensor([schedule.scale_at(step, n) for step in range(n)]).view(n, 1)
    with torch.no_grad():
        cond = teacher_forced_logits(pipe, ids, class_labels=torch.tensor([1, 4]), prompt=None)
        uncond = teacher_forced_logits(pipe, ids, class_labels=torch.full((2,), NUM_CLASSES), prompt=None)
    assert torch.equal((uncond + scale_L1 * (cond - uncond)).argmax(-1), ids)
    assert not torch.equal(cond.argmax(-1), ids), "guidance should change some greedy choice"


# ---- classifier-free guidance ----------------------------------------------------------------------
def cache_rows_callback(rows: list):
    def callback(pipe, step, timestep, callback_kwargs):
        rows.append(pipe.gpt.cache_shape[0])
        return callback_kwargs
    return callback


def test_guidance_doubles_the_batch_and_changes_the_tokens():
    pipe = vq_pipe(null_condition_trained=True)
    rows: list = []
    guided = tokens_of(pipe, class_labels=[1, 2], guidance_scale=3.0, generator=gen(0),
                       callback_on_step_end=cache_rows_callback(rows))
    assert set(rows) == {4}
    rows.clear()
    plain = tokens_of(pipe, class_labels=[1, 2], guidance_scale=1.0, generator=gen(0),
                      callback_on_step_end=cache_rows_callback(rows))
    assert set(rows) == {2}
    assert not torch.equal(guided, plain)


def test_the_null_rows_of_a_guided_batch_use_the_null_class():
    pipe = vq_pipe(null_condition_trained=True)
    seen: list = []
    pipe.gpt.class_embedding.register_forward_hook(lambda module, args, out: seen.append(args[0].tolist()))
    tokens_of(pipe, class_labels=[1, 2], guidance_scale=2.0, generator=gen(0))
    assert seen == [[1, 2, NUM_CLASSES, NUM_CLASSES]]


def test_a_guidance_schedule_is_accepted_and_guides():
    pipe = vq_pipe(null_condition_trained=True)
    rows: list = []
    schedule = GuidanceSchedule(scale=4.0, kind="linear")
    scheduled = tokens_of(pipe, class_labels=[1, 2], guidance_scale=schedule, generator=gen(0),
                          callback_on_step_end=cache_rows_callback(rows))
    assert set(rows) == {4}
    assert scheduled.shape == (2, *VQ_GRID)
    assert not torch.equal(scheduled, tokens_of(pipe, class_labels=[1, 2], generator=gen(0)))


def test_a_constant_schedule_of_one_is_unguided(pipe):
    rows: list = []
    tokens = tokens_of(pipe, class_labels=[1, 2], guidance_scale=GuidanceSchedule(scale=1.0), generator=gen(0),
                       callback_on_step_end=cache_rows_callback(rows))
    assert set(rows) == {2}
    assert torch.equal(tokens, tokens_of(pipe, class_labels=[1, 2], generator=gen(0)))


def test_guidance_without_a_trained_null_condition_raises(pipe):
    with pytest.raises(ValueError, match="null condition"):
        pipe(class_labels=[1], guidance_scale=3.0)


def test_guidance_on_an_unconditional_gpt_raises():
    gpt = tiny_gpt(num_classes=0)
    pipe = quiet(NextTokenPipeline(gpt=gpt, tokenizer=vq_tokenizer(), null_condition_trained=True))
    with pytest.raises(ValueError, match="conditional"):
        pipe(guidance_scale=2.0)


def test_an_unconditional_gpt_samples_without_a_condition():
    pipe = quiet(NextTokenPipeline(gpt=tiny_gpt(num_classes=0), tokenizer=vq_tokenizer()))
    out = pipe(num_samples_per_prompt=2, generator=gen(0), output_type="pt")
    assert out.images.shape == (2, 3, IMAGE_SIZE, IMAGE_SIZE)
    with pytest.raises(ValueError, match="class_labels"):
        pipe(class_labels=[0])


# ---- prompts ---------------------------------------------------------------------------------------
def test_a_text_gpt_reads_the_prompt_bytes():
    pipe = text_pipe()
    seen: list = []
    pipe.gpt.text_embedding.register_forward_hook(lambda module, args, out: seen.append(args[0].clone()))
    red = tokens_of(pipe, prompt="a red circle", temperature=0.0)
    assert len(seen) == 1
    assert torch.equal(seen[0], pipe.gpt.encode_text(["a red circle"]))
    assert not torch.equal(red, tokens_of(pipe, prompt="a blue square", temperature=0.0))


def test_a_text_gpt_without_a_prompt_uses_the_null_prompt():
    pipe = text_pipe()
    seen: list = []
    pipe.gpt.text_embedding.register_forward_hook(lambda module, args, out: seen.append(args[0].clone()))
    tokens_of(pipe, generator=gen(0))
    assert torch.equal(seen[0], pipe.gpt.encode_text([""]))


def test_a_guided_text_gpt_pairs_each_prompt_with_the_null_prompt():
    pipe = text_pipe(null_condition_trained=True)
    seen: list = []
    pipe.gpt.text_embedding.register_forward_hook(lambda module, args, out: seen.append(args[0].clone()))
    tokens_of(pipe, prompt=["red", "blue"], guidance_scale=2.0, generator=gen(0))
    assert torch.equal(seen[0], pipe.gpt.encode_text(["red", "blue", "", ""]))


def test_a_prompt_longer_than_text_max_len_raises():
    with pytest.raises(ValueError, match="text_max_len"):
        text_pipe()(prompt="x" * 17)


def test_class_names_map_a_prompt_to_its_class():
    pipe = vq_pipe(class_names=CLASS_NAMES)
    by_label = tokens_of(pipe, class_labels=[2, 0], generator=gens(0, 1))
    by_prompt = tokens_of(pipe, prompt=["A Green  Triangle", "  a red circle "], generator=gens(0, 1))
    assert torch.equal(by_prompt, by_label)


def test_an_unknown_prompt_raises():
    pipe = vq_pipe(class_names=CLASS_NAMES)
    with pytest.raises(ValueError, match="a red square"):
        pipe(prompt="a red square")


def test_a_prompt_without_text_or_class_names_raises(pipe):
    with pytest.raises(ValueError, match="class_names"):
        pipe(prompt="a red circle")


@pytest.mark.parametrize(("prompt", "error"), [("", ValueError), ("   ", ValueError), (["ok", ""], ValueError),
                                               (3, TypeError), ([1], TypeError), ([], TypeError)])
def test_bad_prompts_raise(prompt, error):
    pipe = vq_pipe(class_names=CLASS_NAMES)
    with pytest.raises(error, match="prompt"):
        pipe(prompt=prompt)


def test_prompt_and_class_labels_together_raise():
    pipe = vq_pipe(class_names=CLASS_NAMES)
    with pytest.raises(ValueError, match="prompt or class_labels"):
        pipe(prompt="a red circle", class_labels=[0])


# ---- class labels ----------------------------------------------------------------------------------
@pytest.mark.parametrize("label", [NUM_CLASSES, -1])
def test_unknown_class_ids_raise(pipe, label):
    with pytest.raises(ValueError, match=f"unknown class id {label}"):
        pipe(class_labels=[0, label])


@pytest.mark.parametrize("labels", [torch.tensor([1.0, 2.0]), True, [1, False], [1.0], "1", torch.tensor([[1, 2]])])
def test_class_labels_that_are_not_ints_raise(pipe, labels):
    with pytest.raises(TypeError, match="class_labels"):
        pipe(class_labels=labels)


def test_empty_class_labels_raise(pipe):
    with pytest.raises(ValueError, match="class_labels"):
        pipe(class_labels=[])


def test_class_labels_as_int_list_and_tensor_agree(pipe):
    as_int = tokens_of(pipe, class_labels=3, generator=gen(0))
    as_list = tokens_of(pipe, class_labels=[3], generator=gen(0))
    as_tensor = tokens_of(pipe, class_labels=torch.tensor([3]), generator=gen(0))
    assert torch.equal(as_int, as_list) and torch.equal(as_list, as_tensor)


def test_no_condition_on_a_class_gpt_samples_from_the_null_class(pipe):
    seen: list = []
    pipe.gpt.class_embedding.register_forward_hook(lambda module, args, out: seen.append(args[0].tolist()))
    out = pipe(num_samples_per_prompt=2, generator=gen(0), output_type="pt")
    assert out.images.shape == (2, 3, IMAGE_SIZE, IMAGE_SIZE)
    assert seen == [[NUM_CLASSES, NUM_CLASSES]]


# ---- construction ----------------------------------------------------------------------------------
def test_codebook_and_vocabulary_mismatch_raises_naming_both():
    with pytest.raises(ValueError, match=r"(?s)(64.*32|32.*64)"):
        NextTokenPipeline(gpt=tiny_gpt(vocab_size=64), tokenizer=vq_tokenizer())


@pytest.mark.parametrize(("make_tokenizer", "rank"), [(vq_tokenizer, 1), (flex_tokenizer, 2)])
def test_wrong_coord_rank_raises(make_tokenizer, rank):
    tokenizer = make_tokenizer()
    with pytest.raises(ValueError, match="coord_rank"):
        NextTokenPipeline(gpt=tiny_gpt(vocab_size=tokenizer.codebook_size, coord_rank=rank), tokenizer=tokenizer)


def test_gpt_without_start_token_raises():
    with pytest.raises(ValueError, match="start_token"):
        NextTokenPipeline(gpt=tiny_gpt(start_token=False), tokenizer=vq_tokenizer())


def test_a_gpt_that_is_not_an_mmgen_gpt_raises():
    with pytest.raises(TypeError, match="gpt"):
        NextTokenPipeline(gpt=torch.nn.Linear(2, 2), tokenizer=vq_tokenizer())


def test_wrong_tokenizer_type_raises():
    torch.manual_seed(0)
    kl = KLImageTokenizer(KLConfig(image_size=IMAGE_SIZE, downsample=4, channels=8, channel_mult=[1, 1, 1],
                                   latent_dim=4))
    with pytest.raises(TypeError, match="tokenizer"):
        NextTokenPipeline(gpt=tiny_gpt(), tokenizer=kl)


@pytest.mark.parametrize("names", [CLASS_NAMES[:4], CLASS_NAMES + ["extra"], ["a", "", "c", "d", "e"]])
def test_bad_class_names_raise(names):
    with pytest.raises(ValueError, match="class_names"):
        NextTokenPipeline(gpt=tiny_gpt(), tokenizer=vq_tokenizer(), class_names=names)


# ---- saving and loading ----------------------------------------------------------------------------
@pytest.fixture
def modules_cache(tmp_path, monkeypatch) -> Path:
    """Send diffusers' dynamic-module copies to tmp_path.

    diffusers reads HF_MODULES_CACHE from the environment once, at import, into
    ``dynamic_modules_utils``; setting the variable now would change nothing, so patch that constant
    (and sys.path, which the loader appends the cache folder to).
    """
    cache = tmp_path / "hf_modules"
    monkeypatch.setattr(dynamic_modules_utils, "HF_MODULES_CACHE", str(cache))
    monkeypatch.setattr(sys, "path", list(sys.path))
    return cache


@pytest.fixture
def saved(tmp_path) -> tuple[NextTokenPipeline, Path]:
    pipe = vq_pipe(class_names=CLASS_NAMES, null_condition_trained=True)
    folder = tmp_path / "saved"
    pipe.save_pretrained(folder)
    return pipe, folder


def test_save_pretrained_writes_index_shim_and_safetensors_only(saved):
    _, folder = saved
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == ["mmgen_pipeline", "NextTokenPipeline"]
    assert index["class_names"] == CLASS_NAMES
    assert index["null_condition_trained"] is True
    assert (folder / "mmgen_pipeline.py").is_file()
    for component in ("gpt", "tokenizer"):
        assert list((folder / component).glob("*.safetensors")), f"{component} has no safetensors file"
    pickles = [p for p in folder.rglob("*") if p.suffix in {".bin", ".pt", ".pth", ".pkl", ".ckpt"}]
    assert pickles == []


@pytest.mark.usefixtures("modules_cache")
@pytest.mark.parametrize("loader", ["pipeline", "diffusers"])
def test_a_saved_pipeline_loads_back_and_generates_the_same(saved, loader):
    pipe, folder = saved
    if loader == "pipeline":
        loaded = NextTokenPipeline.from_pretrained(folder)
    else:
        loaded = diffusers.DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)
    assert isinstance(loaded, NextTokenPipeline)
    assert list(loaded.config.class_names) == CLASS_NAMES
    assert loaded.config.null_condition_trained is True
    quiet(loaded)
    kwargs = {"class_labels": [1, 2], "guidance_scale": 2.0, "output_type": "pt"}
    before = pipe(generator=gens(0, 1), **kwargs)
    after = loaded(generator=gens(0, 1), **kwargs)
    assert torch.equal(before.tokens, after.tokens)
    torch.testing.assert_close(before.images, after.images)
    by_prompt = tokens_of(loaded, prompt=["a blue square", "a green triangle"], generator=gens(0, 1))
    assert torch.equal(by_prompt, tokens_of(pipe, class_labels=[1, 2], generator=gens(0, 1)))


@pytest.mark.usefixtures("modules_cache")
def test_a_saved_flex_pipeline_loads_back(tmp_path):
    pipe = flex_pipe()
    pipe.save_pretrained(tmp_path / "flex")
    loaded = quiet(NextTokenPipeline.from_pretrained(tmp_path / "flex"))
    assert loaded.is_flexible
    before = pipe(class_labels=[3], num_tokens=5, generator=gen(0), output_type="pt")
    after = loaded(class_labels=[3], num_tokens=5, generator=gen(0), output_type="pt")
    assert torch.equal(before.tokens, after.tokens)
    torch.testing.assert_close(before.images, after.images)


def test_a_folder_without_model_index_raises(tmp_path):
    with pytest.raises(ValueError, match="model_index.json"):
        NextTokenPipeline.from_pretrained(tmp_path)


@pytest.mark.usefixtures("modules_cache")
def test_a_tampered_shim_is_not_run_without_trust_remote_code(saved, tmp_path):
    _, folder = saved
    marker = tmp_path / "shim_ran"
    (folder / "mmgen_pipeline.py").write_text(
        f"from pathlib import Path\nPath({str(marker)!r}).write_text('ran')\nfrom pipelines import *\n"
    )
    with pytest.raises(ValueError, match="trust_remote_code"):
        NextTokenPipeline.from_pretrained(folder)
    with pytest.raises(ValueError, match="trust_remote_code"):
        diffusers.DiffusionPipeline.from_pretrained(folder)
    assert not marker.exists()


# ---- training --------------------------------------------------------------------------------------
def shapes_batch(batch_size: int = 4) -> torch.Tensor:
    torch.manual_seed(3)
    return torch.rand(batch_size, 3, IMAGE_SIZE, IMAGE_SIZE) * 2 - 1


@pytest.mark.parametrize(("make", "length"), [(vq_pipe, VQ_GRID[0] * VQ_GRID[1]), (flex_pipe, FLEX_TOKENS)])
def test_tokenize_gives_one_row_of_ids_per_image(make, length):
    pipe = make()
    ids = pipe.tokenize(shapes_batch())
    assert ids.shape == (4, length)
    assert ids.dtype == torch.long
    assert 0 <= int(ids.min()) and int(ids.max()) < pipe.tokenizer.codebook_size


def test_loss_is_finite_and_logs_ce_and_accuracy(pipe):
    ids = pipe.tokenize(shapes_batch())
    loss, logs = pipe.loss(ids, class_labels=torch.tensor([0, 1, 2, 3]), cond_drop_prob=0.0)
    assert loss.dim() == 0 and torch.isfinite(loss)
    assert logs["ce"] == pytest.approx(loss.item())
    assert 0.0 <= logs["accuracy"] <= 1.0
    assert loss.item() == pytest.approx(math.log(VQ_CODEBOOK), rel=0.1)


def test_loss_rejects_tokens_of_the_wrong_length(pipe):
    with pytest.raises(ValueError, match="tokens"):
        pipe.loss(torch.zeros(2, 5, dtype=torch.long), class_labels=torch.tensor([0, 1]))


def test_a_conditional_loss_needs_a_condition(pipe):
    with pytest.raises(ValueError, match="class_labels or prompt"):
        pipe.loss(pipe.tokenize(shapes_batch()))


@pytest.mark.parametrize("make", [vq_pipe, flex_pipe])
def test_adam_steps_on_a_fixed_batch_lower_the_loss(make):
    pipe = make()
    ids = pipe.tokenize(shapes_batch())
    labels = torch.tensor([0, 1, 2, 3])
    optimizer = torch.optim.Adam(pipe.gpt.parameters(), lr=1e-2)
    first, _ = pipe.loss(ids, class_labels=labels, cond_drop_prob=0.0)
    for _ in range(30):
        loss, logs = pipe.loss(ids, class_labels=labels, cond_drop_prob=0.0)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    last, logs = pipe.loss(ids, class_labels=labels, cond_drop_prob=0.0)
    assert last.item() < 0.5 * first.item()
    assert logs["accuracy"] > 0.5


def test_condition_dropout_marks_the_null_condition_trained(pipe):
    ids = pipe.tokenize(shapes_batch())
    pipe.loss(ids, class_labels=torch.tensor([0, 1, 2, 3]), cond_drop_prob=0.0)
    assert pipe.config.null_condition_trained is False
    pipe.loss(ids, class_labels=torch.tensor([0, 1, 2, 3]), cond_drop_prob=0.5)
    assert pipe.config.null_condition_trained is True
    pipe(class_labels=[1], guidance_scale=2.0, output_type="tokens")


def test_condition_dropout_replaces_labels_by_the_null_class(pipe):
    seen: list = []
    pipe.gpt.class_embedding.register_forward_hook(lambda module, args, out: seen.append(args[0].tolist()))
    labels = torch.arange(4).repeat(8)
    pipe.training_prefix(class_labels=labels, prompt=None, batch_size=32, cond_drop_prob=0.5, generator=gen(0))
    dropped = [i for i, label in enumerate(seen[0]) if label == NUM_CLASSES]
    assert 0 < len(dropped) < 32
    assert all(seen[0][i] == labels[i] for i in range(32) if i not in dropped)


@pytest.mark.parametrize("bad", [-0.1, 1.0])
def test_cond_drop_prob_outside_unit_interval_raises(pipe, bad):
    with pytest.raises(ValueError, match="cond_drop_prob"):
        pipe.loss(pipe.tokenize(shapes_batch()), class_labels=torch.tensor([0, 1, 2, 3]), cond_drop_prob=bad)


def test_prompt_conditioned_loss_trains_the_text_embedding():
    pipe = text_pipe()
    ids = pipe.tokenize(shapes_batch(2))
    loss, logs = pipe.loss(ids, prompt=["a red circle", "a blue square"], cond_drop_prob=0.0)
    assert torch.isfinite(loss) and set(logs) >= {"ce", "accuracy"}
    loss.backward()
    grad = pipe.gpt.text_embedding.weight.grad
    assert grad is not None and grad.abs().sum() > 0
