"""Fast tests of NextTokenPipeline and of what every pipeline inherits from ARPipeline.

Tiny random components only (tests/pipeline_fixtures.py): a VQ tokenizer with a 4x4 grid, a Flex
tokenizer with 8 tokens, a multi-codebook code tokenizer defined here, class / byte-text / AdaLN
conditioners and one-layer GPTs. Nothing is downloaded.
"""

from __future__ import annotations

import json
import math

import diffusers
import numpy as np
import PIL.Image
import pytest
import torch

from mmgen import GPT, GPTConfig, SamplingConfig
from mmgen.conditioning import TEXT_PAD_ID
from mmgen.heads import CategoricalHead, CategoricalHeadConfig, DepthHead
from mmgen.protocol import TokenSpec
from mmgen.sampling import GuidanceSchedule
from mmgen.tokens import DiscreteContent
from pipeline_fixtures import (
    GPT_SIZE,
    IMAGE_SIZE,
    NUM_CLASSES,
    TEXT_MAX_LEN,
    build,
    class_conditioner,
    count_gpt_forwards,
    flex_tokenizer,
    gen,
    gens,
    images,
    kl_tokenizer,
    modules_cache,  # noqa: F401  (a fixture)
    multiscale_tokenizer,
    sequence_of,
    teacher_forced_hidden,
    text_conditioner,
    trainable_parameters,
    vq_tokenizer,
)
from pipelines import ARImagePipelineOutput, NextTokenPipeline

pytestmark = pytest.mark.usefixtures("one_torch_thread")

VQ_GRID = (4, 4)
VQ_CODEBOOK = 32
VQ_LEN = VQ_GRID[0] * VQ_GRID[1]
FLEX_TOKENS = 8
FLEX_CODEBOOK = 16
CLASS_NAMES = ["a red circle", "a blue square", "a green triangle", "a yellow star", "a purple heart"]
FRAMES, CODEBOOKS, CODES = 6, 4, 16


# ---- tiny components -------------------------------------------------------------------------------
def vq_pipe(**config) -> NextTokenPipeline:
    return build(NextTokenPipeline, vq_tokenizer(), **config)


def flex_pipe(**config) -> NextTokenPipeline:
    return build(NextTokenPipeline, flex_tokenizer(), **config)


def text_pipe(**config) -> NextTokenPipeline:
    """Byte-text conditioned; a GPT with larger weights, whose attention visibly reads the prompt.

    (At the default init_std a random one-layer GPT attends almost uniformly, and the average over a
    prompt's bytes barely moves its greedy choices.)
    """
    return build(NextTokenPipeline, vq_tokenizer(), text_conditioner(), gpt={"init_std": 0.1}, **config)


class CodeTokenizer:
    """A tiny multi-codebook tokenizer (RVQ-audio-like): 6 frames of 4 codebooks of 16 ids; native ids are positions.

    Its modality is "image" (decode draws the code grid as a tiny picture) because pipeline outputs exist
    only for images so far.
    """

    modality = "image"

    def token_spec(self) -> TokenSpec:
        return TokenSpec(content=DiscreteContent((CODES,) * CODEBOOKS), shape=(FRAMES,))

    def encode(self, codes: torch.Tensor) -> torch.Tensor:
        return codes

    def decode(self, ids: torch.Tensor) -> torch.Tensor:
        return (ids.float() / (CODES - 1) * 2 - 1).transpose(1, 2).unsqueeze(1).expand(-1, 3, -1, -1)

    def to_positions(self, ids: torch.Tensor) -> torch.Tensor:
        return ids

    def from_positions(self, positions: torch.Tensor) -> torch.Tensor:
        return positions


DEPTH_HEAD = {"class": "DepthHead", "width": 32, "depth": 1, "n_heads": 2}
CODEBOOK_SETUPS = [("delay", None), ("flatten", None), ("parallel", None), ("parallel", DEPTH_HEAD)]
CODEBOOK_IDS = ["delay", "flatten", "parallel", "parallel-depth"]


def code_pipe(pattern: str, head: dict | None) -> NextTokenPipeline:
    return build(NextTokenPipeline, CodeTokenizer(), codebook_pattern=pattern, head=head)


def code_batch() -> torch.Tensor:
    return torch.randint(0, CODES, (4, FRAMES, CODEBOOKS), generator=gen(3))


@torch.no_grad()
def decode_to_unit(pipe: NextTokenPipeline, tokens: torch.Tensor) -> torch.Tensor:
    """What the "pt" output should be for ``tokens``: the tokenizer's decoding mapped to [0, 1]."""
    return (pipe.tokenizer.decode(tokens) / 2 + 0.5).clamp(0, 1)


def tokens_of(pipe: NextTokenPipeline, **kwargs) -> torch.Tensor:
    return pipe(output_type="tokens", **kwargs).tokens


@torch.no_grad()
def teacher_logits(pipe: NextTokenPipeline, seq: torch.Tensor, **condition) -> torch.Tensor:
    """Logits ``[B, L, V]`` of one uncached forward over ``[prefix | start, seq[:-1]]`` (one codebook)."""
    return pipe.head.logits(teacher_forced_hidden(pipe, seq, **condition))


@torch.no_grad()
def teacher_argmax(pipe: NextTokenPipeline, seq: torch.Tensor, **condition) -> torch.Tensor:
    """Greedy ids of every entry under teacher forcing: ``[B, L]`` or ``[B, L, D]``."""
    hidden = teacher_forced_hidden(pipe, seq, **condition)
    logits = pipe.head.logits(hidden, seq) if isinstance(pipe.head, DepthHead) else pipe.head.logits(hidden)
    if isinstance(logits, list):
        return torch.stack([lg.argmax(-1) for lg in logits], dim=-1)
    return logits.argmax(-1)


def adam_steps(pipe: NextTokenPipeline, seq: torch.Tensor, steps: int, **condition) -> tuple[float, float, dict]:
    """``steps`` Adam steps on one batch; returns (first loss, last loss, last logs)."""
    optimizer = torch.optim.Adam(trainable_parameters(pipe), lr=1e-2)
    first = None
    for _ in range(steps):
        loss, _ = pipe.loss(seq, cond_drop_prob=0.0, **condition)
        first = loss.item() if first is None else first
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    last, logs = pipe.loss(seq, cond_drop_prob=0.0, **condition)
    return first, last.item(), logs


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
    images_ = pipe(class_labels=[1, 2], generator=gen(0), output_type="np").images
    assert isinstance(images_, np.ndarray)
    assert images_.shape == (2, IMAGE_SIZE, IMAGE_SIZE, 3)
    assert np.issubdtype(images_.dtype, np.floating)
    assert images_.min() >= 0.0 and images_.max() <= 1.0


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
    out = flex_pipe()(class_labels=[0, 4], generator=gen(0), output_type="tokens")
    assert out.images is None
    assert out.tokens.shape == (2, FLEX_TOKENS)
    assert 0 <= int(out.tokens.min()) and int(out.tokens.max()) < FLEX_CODEBOOK


def test_tokens_are_what_the_images_decode_from(pipe):
    out = pipe(class_labels=[0, 1], generator=gen(2), output_type="pt")
    torch.testing.assert_close(out.images, decode_to_unit(pipe, out.tokens))


def test_unknown_output_type_raises(pipe):
    with pytest.raises(ValueError, match="output_type"):
        pipe(class_labels=[0], output_type="latent")


def test_return_dict_false_gives_an_images_tokens_tuple(pipe):
    result = pipe(class_labels=[1, 2], generator=gen(0), output_type="pt", return_dict=False)
    assert isinstance(result, tuple) and len(result) == 2
    images_, tokens = result
    out = pipe(class_labels=[1, 2], generator=gen(0), output_type="pt")
    torch.testing.assert_close(images_, out.images)
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


# ---- one step, one forward, one callback per token ---------------------------------------------------
def recording_callback(calls: list):
    def callback(pipe, step, timestep, callback_kwargs):
        calls.append((step, timestep, callback_kwargs["tokens"].clone()))
        return callback_kwargs
    return callback


def test_callback_is_called_once_per_token_with_that_steps_tokens(pipe):
    calls: list = []
    out = pipe(class_labels=[1, 2], generator=gen(0), output_type="tokens",
               callback_on_step_end=recording_callback(calls))
    assert [(step, timestep) for step, timestep, _ in calls] == [(k, k) for k in range(VQ_LEN)]
    step_tokens = torch.cat([tokens for _, _, tokens in calls], dim=1)
    assert step_tokens.shape == (2, VQ_LEN)
    assert torch.equal(step_tokens, out.tokens.flatten(1))


@pytest.mark.parametrize(("make", "prefix"), [(vq_pipe, 1), (text_pipe, TEXT_MAX_LEN)], ids=["class", "text"])
def test_one_gpt_forward_per_token_the_first_with_the_prefix(make, prefix):
    pipe = make()
    lengths = count_gpt_forwards(pipe)
    tokens_of(pipe, generator=gen(0))
    assert lengths == [prefix + 1] + [1] * (VQ_LEN - 1)


def test_tokens_a_callback_returns_replace_the_draw_and_feed_the_later_steps(pipe):
    forced = {0: 7, 5: 9}

    def force(pipe, step, timestep, callback_kwargs):
        if step in forced:
            return {"tokens": torch.full_like(callback_kwargs["tokens"], forced[step])}
        return {}  # a dict without "tokens" keeps the draw

    ids = tokens_of(pipe, class_labels=[1, 4], temperature=0.0, callback_on_step_end=force).flatten(1)
    free = tokens_of(pipe, class_labels=[1, 4], temperature=0.0).flatten(1)
    assert (ids[:, 0] == 7).all() and (ids[:, 5] == 9).all()
    assert not torch.equal(ids[:, 1:], free[:, 1:]), "the forced tokens should change later greedy choices"
    drawn = [j for j in range(VQ_LEN) if j not in forced]
    greedy = teacher_argmax(pipe, ids, class_labels=torch.tensor([1, 4]))
    assert torch.equal(greedy[:, drawn], ids[:, drawn]), "later steps must be conditioned on the returned tokens"


def test_callback_runs_k_steps_for_a_flex_prefix_of_k_tokens():
    calls: list = []
    out = flex_pipe()(class_labels=[1], num_tokens=3, generator=gen(0), output_type="tokens",
                      callback_on_step_end=recording_callback(calls))
    assert [step for step, _, _ in calls] == [0, 1, 2]
    assert torch.equal(torch.cat([tokens for _, _, tokens in calls], dim=1), out.tokens)


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
    with pytest.raises(ValueError, match="num_tokens"):
        flex_pipe()(class_labels=[1], num_tokens=bad)


def test_num_tokens_with_a_vq_tokenizer_raises(pipe):
    with pytest.raises(ValueError, match="num_tokens"):
        pipe(class_labels=[1], num_tokens=4)


# ---- prefill (continuation) ------------------------------------------------------------------------
@pytest.mark.parametrize("guidance", [None, 3.0], ids=["plain", "guided"])
def test_prefill_keeps_the_known_tokens_and_greedy_continues_them(guidance):
    pipe = vq_pipe(null_condition_trained=True)
    m = 6
    known = pipe.tokenize(images(2))[:, :m]
    ids = tokens_of(pipe, class_labels=[1, 4], prefill=known, guidance_scale=guidance, temperature=0.0).flatten(1)
    assert torch.equal(ids[:, :m], known)
    logits = teacher_logits(pipe, ids, class_labels=torch.tensor([1, 4]))
    if guidance is not None:
        uncond = teacher_logits(pipe, ids, class_labels=torch.full((2,), NUM_CLASSES))
        logits = uncond + guidance * (logits - uncond)
    assert torch.equal(logits.argmax(-1)[:, m:], ids[:, m:])


def test_prefill_with_a_samples_own_start_reproduces_it(pipe):
    """Prefilled slots count towards the per-slot seeds, so continuing a sample's own start redraws the rest."""
    full = tokens_of(pipe, class_labels=[1, 4], generator=gens(3, 4)).flatten(1)
    continued = tokens_of(pipe, class_labels=[1, 4], prefill=full[:, :5], generator=gens(3, 4)).flatten(1)
    assert torch.equal(continued, full)


def test_prefill_is_fed_in_the_first_forward_and_only_later_steps_call_back(pipe):
    m = 4
    lengths = count_gpt_forwards(pipe)
    calls: list = []
    known = pipe.tokenize(images(1))[:, :m]
    tokens_of(pipe, class_labels=[2], prefill=known, generator=gen(0), callback_on_step_end=recording_callback(calls))
    assert lengths == [1 + m + 1] + [1] * (VQ_LEN - m - 1)
    assert [step for step, _, _ in calls] == list(range(m, VQ_LEN))


@pytest.mark.parametrize("bad", [torch.zeros(3, 4, dtype=torch.long), torch.zeros(2, VQ_LEN + 1, dtype=torch.long),
                                 [[0, 1]], torch.zeros(2, dtype=torch.long)],
                         ids=["wrong-batch", "too-long", "not-a-tensor", "no-positions"])
def test_bad_prefill_raises(pipe, bad):
    with pytest.raises(ValueError, match="prefill"):
        pipe(class_labels=[1, 2], prefill=bad, output_type="tokens")


# ---- sampling config -------------------------------------------------------------------------------
@pytest.mark.parametrize("make", [vq_pipe, flex_pipe], ids=["vq", "flex"])
def test_a_reference_backend_sampling_config_gives_the_greedy_ids_of_the_keywords(make):
    pipe = make()
    by_keywords = tokens_of(pipe, class_labels=[1, 2], temperature=0.0, generator=gen(0))
    by_config = tokens_of(pipe, class_labels=[1, 2], sampling=SamplingConfig(temperature=0.0, backend="reference"),
                          generator=gen(1))
    assert torch.equal(by_config, by_keywords)


def test_a_sampling_config_replaces_the_keywords_and_carries_guidance():
    pipe = vq_pipe(null_condition_trained=True)
    greedy = tokens_of(pipe, class_labels=[1, 2], temperature=0.0)
    assert torch.equal(tokens_of(pipe, class_labels=[1, 2], temperature=1.0, sampling=SamplingConfig(temperature=0.0)), greedy)
    rows: list = []
    guided = tokens_of(pipe, class_labels=[1, 2], sampling=SamplingConfig(temperature=0.0, guidance_scale=3.0),
                       callback_on_step_end=cache_rows_callback(rows))
    assert set(rows) == {4}
    assert torch.equal(guided, tokens_of(pipe, class_labels=[1, 2], temperature=0.0, guidance_scale=3.0))


def test_a_sampling_that_is_not_a_sampling_config_raises(pipe):
    with pytest.raises(TypeError, match="sampling"):
        pipe(class_labels=[1], sampling={"temperature": 0.0})


# ---- the cached loop agrees with one full forward --------------------------------------------------
@pytest.mark.parametrize(
    ("make", "condition", "call"),
    [
        (vq_pipe, {"class_labels": torch.tensor([1, 4])}, {"class_labels": [1, 4]}),
        (flex_pipe, {"class_labels": torch.tensor([0, 2])}, {"class_labels": [0, 2]}),
        (text_pipe, {"prompt": ["a red circle", "blue"]}, {"prompt": ["a red circle", "blue"]}),
    ],
    ids=["vq-class", "flex-class", "vq-text"],
)
def test_greedy_cached_generation_is_the_argmax_of_a_full_forward(make, condition, call):
    pipe = make()
    ids = tokens_of(pipe, temperature=0.0, generator=gen(0), **call).flatten(1)
    assert torch.equal(teacher_logits(pipe, ids, **condition).argmax(-1), ids)


@pytest.mark.parametrize("guidance", [3.0, GuidanceSchedule(scale=4.0, kind="linear"),
                                      GuidanceSchedule(scale=3.0, interval=(0.25, 0.75))],
                         ids=["constant", "linear", "interval"])
def test_greedy_guided_generation_is_the_argmax_of_guided_full_forwards(guidance):
    pipe = vq_pipe(null_condition_trained=True)
    ids = tokens_of(pipe, class_labels=[1, 4], guidance_scale=guidance, temperature=0.0).flatten(1)
    n = ids.shape[1]
    schedule = guidance if isinstance(guidance, GuidanceSchedule) else GuidanceSchedule(scale=guidance)
    scale_L1 = torch.tensor([schedule.scale_at(step, n) for step in range(n)]).view(n, 1)
    cond = teacher_logits(pipe, ids, class_labels=torch.tensor([1, 4]))
    uncond = teacher_logits(pipe, ids, class_labels=torch.full((2,), NUM_CLASSES))
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
    pipe.conditioner.embedding.register_forward_hook(lambda module, args, out: seen.append(args[0].tolist()))
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


# ---- prompts ---------------------------------------------------------------------------------------
def test_a_text_conditioner_reads_the_prompt_bytes():
    pipe = text_pipe()
    seen: list = []
    pipe.conditioner.embedding.register_forward_hook(lambda module, args, out: seen.append(args[0].clone()))
    red = tokens_of(pipe, prompt="a red circle", temperature=0.0)
    assert len(seen) == 1
    assert torch.equal(seen[0], pipe.conditioner.encode(["a red circle"]))
    assert not torch.equal(red, tokens_of(pipe, prompt="a blue square", temperature=0.0))


def test_a_text_conditioner_without_a_prompt_uses_the_null_prompt():
    pipe = text_pipe()
    seen: list = []
    pipe.conditioner.embedding.register_forward_hook(lambda module, args, out: seen.append(args[0].clone()))
    tokens_of(pipe, generator=gen(0))
    assert torch.equal(seen[0], pipe.conditioner.encode([""]))


def test_a_guided_text_conditioner_pairs_each_prompt_with_the_null_prompt():
    pipe = text_pipe(null_condition_trained=True)
    seen: list = []
    pipe.conditioner.embedding.register_forward_hook(lambda module, args, out: seen.append(args[0].clone()))
    tokens_of(pipe, prompt=["red", "blue"], guidance_scale=2.0, generator=gen(0))
    assert torch.equal(seen[0], pipe.conditioner.encode(["red", "blue", "", ""]))


def test_the_padding_of_a_byte_prompt_is_masked_out():
    pipe = text_pipe()
    prompts = ["red", "a blue square"]
    seq = pipe.tokenize(images(2))
    before = tokens_of(pipe, prompt=prompts, temperature=0.0)
    loss_before, _ = pipe.loss(seq, prompt=prompts, cond_drop_prob=0.0)
    null_before = tokens_of(pipe, temperature=0.0)
    with torch.no_grad():
        pipe.conditioner.embedding.weight[TEXT_PAD_ID] += 10.0
    assert torch.equal(tokens_of(pipe, prompt=prompts, temperature=0.0), before)
    assert pipe.loss(seq, prompt=prompts, cond_drop_prob=0.0)[0].item() == pytest.approx(loss_before.item(), abs=1e-6)
    assert torch.equal(tokens_of(pipe, temperature=0.0), null_before), "the null prompt is all padding"
    with torch.no_grad():
        pipe.conditioner.embedding.weight[ord("r")] += 10.0
    assert not torch.equal(tokens_of(pipe, prompt=prompts, temperature=0.0), before), "a real byte does count"


def test_a_prompt_longer_than_max_len_raises():
    with pytest.raises(ValueError, match="max_len"):
        text_pipe()(prompt="x" * (TEXT_MAX_LEN + 1))


def test_class_names_map_a_prompt_to_its_class():
    pipe = vq_pipe(class_names=CLASS_NAMES)
    by_label = tokens_of(pipe, class_labels=[2, 0], generator=gens(0, 1))
    by_prompt = tokens_of(pipe, prompt=["A Green  Triangle", "  a red circle "], generator=gens(0, 1))
    assert torch.equal(by_prompt, by_label)


def test_an_unknown_prompt_raises():
    with pytest.raises(ValueError, match="a red square"):
        vq_pipe(class_names=CLASS_NAMES)(prompt="a red square")


def test_a_prompt_without_text_or_class_names_raises(pipe):
    with pytest.raises(ValueError, match="class_names"):
        pipe(prompt="a red circle")


@pytest.mark.parametrize(("prompt", "error"), [("", ValueError), ("   ", ValueError), (["ok", ""], ValueError),
                                               (3, TypeError), ([1], TypeError), ([], TypeError)])
def test_bad_prompts_raise(prompt, error):
    with pytest.raises(error, match="prompt"):
        vq_pipe(class_names=CLASS_NAMES)(prompt=prompt)


def test_prompt_and_class_labels_together_raise():
    with pytest.raises(ValueError, match="prompt or class_labels"):
        vq_pipe(class_names=CLASS_NAMES)(prompt="a red circle", class_labels=[0])


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


def test_no_condition_on_a_class_conditioner_samples_from_the_null_class(pipe):
    seen: list = []
    pipe.conditioner.embedding.register_forward_hook(lambda module, args, out: seen.append(args[0].tolist()))
    out = pipe(num_samples_per_prompt=2, generator=gen(0), output_type="pt")
    assert out.images.shape == (2, 3, IMAGE_SIZE, IMAGE_SIZE)
    assert seen == [[NUM_CLASSES, NUM_CLASSES]]


# ---- AdaLN conditioning ----------------------------------------------------------------------------
@pytest.mark.parametrize("prefix", [True, False], ids=["prefix-and-adaln", "adaln-only"])
def test_adaln_class_conditioning_trains_and_generates(prefix):
    pipe = build(NextTokenPipeline, vq_tokenizer(), class_conditioner(adaln_dim=16, prefix=prefix))
    assert pipe.gpt.cfg.adaln_dim == 16
    labels = torch.tensor([0, 1, 2, 3])
    first, last, _ = adam_steps(pipe, pipe.tokenize(images()), 15, class_labels=labels)
    assert last < first - 0.5
    lengths = count_gpt_forwards(pipe)
    out = pipe(class_labels=[0, 3], generator=gen(0), output_type="pt")
    assert out.images.shape == (2, 3, IMAGE_SIZE, IMAGE_SIZE) and out.tokens.shape == (2, *VQ_GRID)
    assert lengths[0] == (2 if prefix else 1), "an AdaLN-only conditioner has no prefix"
    ids = tokens_of(pipe, class_labels=[0, 3], temperature=0.0).flatten(1)
    assert torch.equal(teacher_logits(pipe, ids, class_labels=torch.tensor([0, 3])).argmax(-1), ids)
    assert not torch.equal(ids[0], ids[1]), "the AdaLN condition should steer the samples"


# ---- several codebooks per position ----------------------------------------------------------------
@pytest.mark.parametrize(("pattern", "head"), CODEBOOK_SETUPS, ids=CODEBOOK_IDS)
def test_multi_codebook_loss_falls(pattern, head):
    pipe = code_pipe(pattern, head)
    first, last, logs = adam_steps(pipe, pipe.tokenize(code_batch()), 20, class_labels=torch.tensor([0, 1, 2, 3]))
    assert math.isfinite(first) and set(logs) == {"ce", "accuracy"}
    assert first == pytest.approx(math.log(pipe.head.content.codebook_sizes[0]), rel=0.1)
    assert last < first - 0.5


@pytest.mark.parametrize(("pattern", "head", "steps"),
                         [(*setup, n) for setup, n in zip(CODEBOOK_SETUPS, [FRAMES + CODEBOOKS - 1, FRAMES * CODEBOOKS, FRAMES, FRAMES])],
                         ids=CODEBOOK_IDS)
def test_multi_codebook_generation_gives_native_ids_in_range_one_step_per_group(pattern, head, steps):
    pipe = code_pipe(pattern, head)
    assert isinstance(pipe.head, DepthHead if head else CategoricalHead)
    lengths = count_gpt_forwards(pipe)
    calls: list = []
    out = pipe(class_labels=[1, 2], generator=gen(0), output_type="pt", callback_on_step_end=recording_callback(calls))
    assert out.tokens.shape == (2, FRAMES, CODEBOOKS) and out.tokens.dtype == torch.long
    assert 0 <= int(out.tokens.min()) and int(out.tokens.max()) < CODES, "only real codes (never the delay's empty id)"
    torch.testing.assert_close(out.images, decode_to_unit(pipe, out.tokens))
    assert len(calls) == steps and len(lengths) == steps
    batch = tokens_of(pipe, class_labels=[1, 2], generator=gens(0, 1))
    assert torch.equal(batch[1], tokens_of(pipe, class_labels=[2], generator=gens(1))[0])


@pytest.mark.parametrize(("pattern", "head"), CODEBOOK_SETUPS, ids=CODEBOOK_IDS)
def test_multi_codebook_greedy_is_the_argmax_of_teacher_forcing(pattern, head):
    pipe = code_pipe(pattern, head)
    adam_steps(pipe, pipe.tokenize(code_batch()), 3, class_labels=torch.tensor([0, 1, 2, 3]))
    seq = sequence_of(pipe, tokens_of(pipe, class_labels=[1, 2], temperature=0.0))
    greedy = teacher_argmax(pipe, seq, class_labels=torch.tensor([1, 2]))
    entry_valid = getattr(pipe.pattern(), "entry_valid", None)
    if entry_valid is None:
        assert torch.equal(greedy, seq)
    else:  # the delay pattern's empty entries hold its empty id, not a draw
        assert torch.equal(greedy[:, entry_valid], seq[:, entry_valid])
        assert (seq[:, ~entry_valid] == CODES).all()


def test_codebook_patterns_other_than_the_three_raise():
    with pytest.raises(ValueError, match="codebook_pattern"):
        code_pipe("interleave", None)


# ---- continuous tokens -----------------------------------------------------------------------------
def test_a_continuous_tokenizer_gets_a_flow_head_and_generates_latents():
    from mmgen.flow_head import FlowHead

    pipe = build(NextTokenPipeline, kl_tokenizer(), head={"width": 32, "depth": 1})
    assert isinstance(pipe.head, FlowHead) and pipe.gpt.cfg.vocab_size == 0
    out = pipe(class_labels=[1, 2], sampling=SamplingConfig(num_flow_steps=2), generator=gen(0), output_type="pt")
    assert out.tokens.shape == (2, 4, *VQ_GRID) and out.tokens.is_floating_point()
    torch.testing.assert_close(out.images, decode_to_unit(pipe, out.tokens))


# ---- construction ----------------------------------------------------------------------------------
def assemble(tokenizer, *, head=None, **gpt_fields) -> NextTokenPipeline:
    """A pipeline from hand-built parts: a GPT of ``gpt_fields`` over a VQ grid by default."""
    fields = {"vocab_size": VQ_CODEBOOK, "coord_rank": 2, "start_token": True, "max_seq_len": 64, **GPT_SIZE, **gpt_fields}
    head = head or CategoricalHead(CategoricalHeadConfig(dim=GPT_SIZE["dim"], codebook_sizes=[VQ_CODEBOOK]))
    return NextTokenPipeline(gpt=GPT(GPTConfig(**fields)), tokenizer=tokenizer, head=head, conditioner=class_conditioner())


def test_hand_built_parts_that_fit_make_a_pipeline():
    assert isinstance(assemble(vq_tokenizer()), NextTokenPipeline)


def test_codebook_and_vocabulary_mismatch_raises_naming_both():
    with pytest.raises(ValueError, match=r"(?s)(64.*32|32.*64)"):
        assemble(vq_tokenizer(), vocab_size=64)
    with pytest.raises(ValueError, match=r"(?s)head.*(64.*32|32.*64)"):
        assemble(vq_tokenizer(), head=CategoricalHead(CategoricalHeadConfig(dim=GPT_SIZE["dim"], codebook_sizes=[64])))


@pytest.mark.parametrize(("make_tokenizer", "rank"), [(vq_tokenizer, 1), (flex_tokenizer, 2)])
def test_wrong_coord_rank_raises(make_tokenizer, rank):
    tokenizer = make_tokenizer()
    with pytest.raises(ValueError, match="coord_rank"):
        assemble(tokenizer, vocab_size=tokenizer.codebook_size, coord_rank=rank)


def test_gpt_without_start_token_raises():
    with pytest.raises(ValueError, match="start_token"):
        assemble(vq_tokenizer(), start_token=False)


def test_a_gpt_that_is_not_an_mmgen_gpt_raises():
    head = CategoricalHead(CategoricalHeadConfig(dim=GPT_SIZE["dim"], codebook_sizes=[VQ_CODEBOOK]))
    with pytest.raises(TypeError, match="gpt"):
        NextTokenPipeline(gpt=torch.nn.Linear(2, 2), tokenizer=vq_tokenizer(), head=head, conditioner=class_conditioner())


def test_a_tokenizer_without_the_protocol_or_with_a_pyramid_raises():
    with pytest.raises(TypeError, match="tokenizer"):
        assemble(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="NextScalePipeline"):
        build(NextTokenPipeline, multiscale_tokenizer())


def test_bad_class_names_raise():
    with pytest.raises(ValueError, match="class_names"):
        vq_pipe(class_names=["a", "", "c", "d", "e"])


@pytest.mark.parametrize("names", [CLASS_NAMES[:4], CLASS_NAMES + ["extra"]])
def test_class_names_of_the_wrong_count_raise_at_construction(names):
    with pytest.raises(ValueError, match="class_names"):
        vq_pipe(class_names=names)


# ---- saving and loading ----------------------------------------------------------------------------
@pytest.fixture
def saved(tmp_path):
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
    for component in ("gpt", "tokenizer", "head", "conditioner"):
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
    loaded.set_progress_bar_config(disable=True)
    kwargs = {"class_labels": [1, 2], "guidance_scale": 2.0, "output_type": "pt"}
    before = pipe(generator=gens(0, 1), **kwargs)
    after = loaded(generator=gens(0, 1), **kwargs)
    assert torch.equal(before.tokens, after.tokens)
    torch.testing.assert_close(before.images, after.images)
    by_prompt = tokens_of(loaded, prompt=["a blue square", "a green triangle"], generator=gens(0, 1))
    assert torch.equal(by_prompt, tokens_of(pipe, class_labels=[1, 2], generator=gens(0, 1)))


@pytest.mark.usefixtures("modules_cache")
def test_a_saved_flex_text_pipeline_loads_back(tmp_path):
    pipe = build(NextTokenPipeline, flex_tokenizer(), text_conditioner())
    pipe.save_pretrained(tmp_path / "flex")
    loaded = NextTokenPipeline.from_pretrained(tmp_path / "flex")
    loaded.set_progress_bar_config(disable=True)
    assert loaded.tokenizer.token_spec().prefix_decodable
    before = pipe(prompt="red", num_tokens=5, generator=gen(0), output_type="pt")
    after = loaded(prompt="red", num_tokens=5, generator=gen(0), output_type="pt")
    assert torch.equal(before.tokens, after.tokens)
    torch.testing.assert_close(before.images, after.images)


@pytest.mark.parametrize(("pattern", "head"), [("delay", None), ("parallel", DEPTH_HEAD)], ids=["delay", "parallel-depth"])
def test_a_saved_multi_codebook_gpt_and_head_load_back(tmp_path, pattern, head):
    pipe = code_pipe(pattern, head)
    parts = {}
    for name in ("gpt", "head", "conditioner"):
        getattr(pipe, name).save_pretrained(tmp_path / name)
        parts[name] = type(getattr(pipe, name)).from_pretrained(tmp_path / name)
    loaded = NextTokenPipeline(tokenizer=pipe.tokenizer, codebook_pattern=pattern, **parts)
    loaded.set_progress_bar_config(disable=True)
    assert torch.equal(tokens_of(loaded, class_labels=[1, 2], generator=gen(0)),
                       tokens_of(pipe, class_labels=[1, 2], generator=gen(0)))


def test_a_folder_without_model_index_raises(tmp_path):
    with pytest.raises(ValueError, match="model_index.json"):
        NextTokenPipeline.from_pretrained(tmp_path)


def test_a_folder_of_the_old_format_points_at_mmgen_upgrade(saved):
    _, folder = saved
    index = json.loads((folder / "model_index.json").read_text())
    del index["conditioner"], index["head"]
    (folder / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(ValueError, match="mmgen upgrade"):
        NextTokenPipeline.from_pretrained(folder)


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
@pytest.mark.parametrize(("make", "length", "codebook"), [(vq_pipe, VQ_LEN, VQ_CODEBOOK), (flex_pipe, FLEX_TOKENS, FLEX_CODEBOOK)])
def test_tokenize_gives_one_row_of_ids_per_image(make, length, codebook):
    ids = make().tokenize(images())
    assert ids.shape == (4, length)
    assert ids.dtype == torch.long
    assert 0 <= int(ids.min()) and int(ids.max()) < codebook


def test_loss_is_finite_and_logs_ce_and_accuracy(pipe):
    loss, logs = pipe.loss(pipe.tokenize(images()), class_labels=torch.tensor([0, 1, 2, 3]), cond_drop_prob=0.0)
    assert loss.dim() == 0 and torch.isfinite(loss)
    assert logs["ce"] == pytest.approx(loss.item())
    assert 0.0 <= logs["accuracy"] <= 1.0
    assert loss.item() == pytest.approx(math.log(VQ_CODEBOOK), rel=0.1)


@pytest.mark.parametrize("bad", [torch.zeros(2, 5, dtype=torch.long), torch.zeros(2, dtype=torch.long), [[0] * VQ_LEN]],
                         ids=["wrong-length", "no-positions", "not-a-tensor"])
def test_loss_rejects_tokens_of_the_wrong_shape(pipe, bad):
    with pytest.raises((ValueError, TypeError), match="tokens"):
        pipe.loss(bad, class_labels=torch.tensor([0, 1]))


def test_a_conditional_loss_needs_a_condition(pipe):
    with pytest.raises(ValueError, match="class_labels or prompt"):
        pipe.loss(pipe.tokenize(images()))


@pytest.mark.parametrize("make", [vq_pipe, flex_pipe], ids=["vq", "flex"])
def test_adam_steps_on_a_fixed_batch_lower_the_loss(make):
    pipe = make()
    first, last, logs = adam_steps(pipe, pipe.tokenize(images()), 30, class_labels=torch.tensor([0, 1, 2, 3]))
    assert last < 0.5 * first
    assert logs["accuracy"] > 0.5


def test_condition_dropout_marks_the_null_condition_trained(pipe):
    ids = pipe.tokenize(images())
    pipe.loss(ids, class_labels=torch.tensor([0, 1, 2, 3]), cond_drop_prob=0.0)
    assert pipe.config.null_condition_trained is False
    pipe.loss(ids, class_labels=torch.tensor([0, 1, 2, 3]), cond_drop_prob=0.5)
    assert pipe.config.null_condition_trained is True
    pipe(class_labels=[1], guidance_scale=2.0, output_type="tokens")


def test_condition_dropout_replaces_labels_by_the_null_class(pipe):
    seen: list = []
    pipe.conditioner.embedding.register_forward_hook(lambda module, args, out: seen.append(args[0].tolist()))
    labels = torch.arange(4).repeat(8)
    pipe.loss(pipe.tokenize(images()).repeat(8, 1), class_labels=labels, cond_drop_prob=0.5, generator=gen(0))
    dropped = [i for i, label in enumerate(seen[0]) if label == NUM_CLASSES]
    assert 0 < len(dropped) < 32
    assert all(seen[0][i] == labels[i] for i in range(32) if i not in dropped)


@pytest.mark.parametrize("bad", [-0.1, 1.0])
def test_cond_drop_prob_outside_unit_interval_raises(pipe, bad):
    with pytest.raises(ValueError, match="cond_drop_prob"):
        pipe.loss(pipe.tokenize(images()), class_labels=torch.tensor([0, 1, 2, 3]), cond_drop_prob=bad)


def test_prompt_conditioned_loss_trains_the_text_embedding():
    pipe = text_pipe()
    loss, logs = pipe.loss(pipe.tokenize(images(2)), prompt=["a red circle", "a blue square"], cond_drop_prob=0.0)
    assert torch.isfinite(loss) and set(logs) >= {"ce", "accuracy"}
    loss.backward()
    grad = pipe.conditioner.embedding.weight.grad
    assert grad is not None and grad.abs().sum() > 0
