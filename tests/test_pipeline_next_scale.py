"""NextScalePipeline: VAR-style generation (one GPT step per scale), CFG ramp, save/load, training, checks."""

from __future__ import annotations

import numpy as np
import PIL.Image
import pytest
import torch
from diffusers import DiffusionPipeline

from mmgen import GPT, GPTConfig, SamplingConfig
from mmgen.heads import CategoricalHead, CategoricalHeadConfig
from mmgen.sampling import GuidanceSchedule
from pipeline_fixtures import (
    GPT_SIZE,
    IMAGE_SIZE,
    NUM_CLASSES,
    build,
    class_conditioner,
    count_gpt_forwards,
    gen,
    gens,
    images,
    modules_cache,  # noqa: F401  (a fixture)
    multiscale_tokenizer,
    sequence_of,
    teacher_forced_hidden,
    trainable_parameters,
    vq_tokenizer,
)
from pipelines import ARImagePipelineOutput, NextScalePipeline

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PATCH_NUMS = (1, 2, 4)
NUM_TOKENS = sum(pn * pn for pn in PATCH_NUMS)
CODEBOOK, CODE_DIM = 32, 4
NAMES = ["a", "b", "c", "d", "e"]


def tiny_pipe(conditioner=None, *, gpt=None, **config) -> NextScalePipeline:
    return build(NextScalePipeline, multiscale_tokenizer(), conditioner, gpt=gpt, **config)


def tokens_of(pipe: NextScalePipeline, **kwargs) -> list[torch.Tensor]:
    return pipe(output_type="tokens", **kwargs).tokens


def flat(tokens: list[torch.Tensor]) -> torch.Tensor:
    """The per-scale id maps as one ``[B, L]`` row per sample, scale by scale."""
    return torch.cat([ids.flatten(1) for ids in tokens], dim=1)


@torch.no_grad()
def teacher_logits(pipe: NextScalePipeline, ids_BL: torch.Tensor, labels: list[int]) -> torch.Tensor:
    """Logits ``[B, L, V]`` of one uncached forward over ``[class | start, next-scale inputs of ids_BL]``."""
    return pipe.head.logits(teacher_forced_hidden(pipe, ids_BL, class_labels=torch.tensor(labels)))


def per_scale(values: list[float]) -> torch.Tensor:
    """One value per scale spread over that scale's positions: ``[L, 1]``."""
    return torch.cat([torch.full((pn * pn,), v) for v, pn in zip(values, PATCH_NUMS)]).view(-1, 1)


# ---- outputs -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("output_type", ["pil", "np", "pt", "tokens"])
def test_output_types_have_the_right_shapes_and_ranges(output_type):
    out = tiny_pipe()(class_labels=[0, 4], generator=gen(0), output_type=output_type)
    assert isinstance(out, ARImagePipelineOutput)
    assert [tuple(ids.shape) for ids in out.tokens] == [(2, pn, pn) for pn in PATCH_NUMS]
    assert all(ids.dtype == torch.long for ids in out.tokens)
    assert 0 <= int(flat(out.tokens).min()) and int(flat(out.tokens).max()) < CODEBOOK
    if output_type == "pil":
        assert len(out.images) == 2
        assert all(isinstance(im, PIL.Image.Image) and im.size == (IMAGE_SIZE, IMAGE_SIZE) and im.mode == "RGB" for im in out.images)
    elif output_type == "np":
        assert isinstance(out.images, np.ndarray) and out.images.shape == (2, IMAGE_SIZE, IMAGE_SIZE, 3)
        assert out.images.min() >= 0 and out.images.max() <= 1
    elif output_type == "pt":
        assert isinstance(out.images, torch.Tensor) and out.images.shape == (2, 3, IMAGE_SIZE, IMAGE_SIZE)
        assert out.images.min() >= 0 and out.images.max() <= 1
    else:
        assert out.images is None


def test_images_are_the_tokenizer_decoding_of_the_tokens():
    pipe = tiny_pipe()
    out = pipe(class_labels=[2], generator=gen(0), output_type="pt")
    with torch.no_grad():
        expected = (pipe.tokenizer.decode(out.tokens) / 2 + 0.5).clamp(0, 1)
    torch.testing.assert_close(out.images, expected)


def test_return_dict_false_gives_images_and_tokens():
    pipe = tiny_pipe()
    images_, tokens = pipe(class_labels=1, generator=gen(0), output_type="pt", return_dict=False)
    out = pipe(class_labels=1, generator=gen(0), output_type="pt")
    assert images_.shape == (1, 3, IMAGE_SIZE, IMAGE_SIZE) and flat(tokens).shape == (1, NUM_TOKENS)
    torch.testing.assert_close(images_, out.images)
    assert torch.equal(flat(tokens), flat(out.tokens))


def test_unknown_output_type_is_refused():
    with pytest.raises(ValueError, match="output_type must be one of"):
        tiny_pipe()(class_labels=1, output_type="latent")


# ---- seeds -------------------------------------------------------------------------------------------
def test_same_seed_same_output_and_different_seeds_differ():
    pipe = tiny_pipe()
    a = pipe(class_labels=[1, 1], generator=gen(7), output_type="pt")
    b = pipe(class_labels=[1, 1], generator=gen(7), output_type="pt")
    c = flat(tokens_of(pipe, class_labels=[1, 1], generator=gen(8)))
    assert torch.equal(flat(a.tokens), flat(b.tokens)) and torch.equal(a.images, b.images)
    assert not torch.equal(flat(a.tokens), c)
    assert not torch.equal(flat(a.tokens)[0], flat(a.tokens)[1]), "two samples of one call must not share their draws"


def test_a_sample_does_not_depend_on_the_rest_of_its_batch():
    pipe = tiny_pipe()
    batch = flat(tokens_of(pipe, class_labels=[1, 2, 3], generator=gens(0, 1, 2)))
    alone = flat(tokens_of(pipe, class_labels=[2], generator=gens(1)))
    assert torch.equal(batch[1], alone[0])


def test_prompts_select_classes_by_name():
    pipe = tiny_pipe(class_names=NAMES)
    by_name = flat(tokens_of(pipe, prompt=["b", " D "], generator=gens(3, 4)))
    by_id = flat(tokens_of(pipe, class_labels=[1, 3], generator=gens(3, 4)))
    assert torch.equal(by_name, by_id)


def test_num_samples_per_prompt_repeats_each_class():
    pipe = tiny_pipe()
    repeated = flat(tokens_of(pipe, class_labels=[0, 3], num_samples_per_prompt=2, generator=gens(0, 1, 2, 3)))
    listed = flat(tokens_of(pipe, class_labels=[0, 0, 3, 3], generator=gens(0, 1, 2, 3)))
    assert repeated.shape == (4, NUM_TOKENS) and torch.equal(repeated, listed)


# ---- one step per scale ------------------------------------------------------------------------------
def test_one_gpt_forward_and_one_callback_per_scale():
    pipe = tiny_pipe()
    lengths = count_gpt_forwards(pipe)
    calls: list[tuple[int, int, torch.Tensor]] = []

    def callback(p, step, timestep, kwargs):
        calls.append((step, timestep, kwargs["tokens"]))
        return {}

    out = pipe(class_labels=[1, 2], generator=gen(0), output_type="tokens", callback_on_step_end=callback)
    prefix = 1  # the class token
    assert lengths == [prefix + PATCH_NUMS[0] ** 2] + [pn * pn for pn in PATCH_NUMS[1:]]
    assert [(step, timestep) for step, timestep, _ in calls] == [(k, k) for k in range(len(PATCH_NUMS))]
    assert [tuple(ids.shape) for _, _, ids in calls] == [(2, pn * pn) for pn in PATCH_NUMS]
    assert torch.equal(torch.cat([ids for _, _, ids in calls], dim=1), flat(out.tokens))


def test_ids_a_callback_returns_replace_the_scale_and_feed_the_finer_scales():
    pipe = tiny_pipe()
    forced = torch.arange(4).view(1, 4).expand(2, 4)

    def force(p, step, timestep, kwargs):
        return {"tokens": forced.clone()} if step == 1 else kwargs

    ids = flat(tokens_of(pipe, class_labels=[1, 2], temperature=0.0, callback_on_step_end=force))
    free = flat(tokens_of(pipe, class_labels=[1, 2], temperature=0.0))
    assert torch.equal(ids[:, 1:5], forced)
    assert not torch.equal(ids[:, 5:], free[:, 5:]), "the forced scale should change the finer greedy choices"
    greedy = teacher_logits(pipe, ids, [1, 2]).argmax(-1)
    drawn = [0, *range(5, NUM_TOKENS)]
    assert torch.equal(greedy[:, drawn], ids[:, drawn]), "the finer scales must see the returned ids"


# ---- the cached loop agrees with one full forward ----------------------------------------------------
def test_teacher_inputs_are_what_greedy_generation_fed_the_gpt():
    pipe = tiny_pipe()
    fed: list[torch.Tensor] = []
    trunk = pipe.gpt.hidden_states
    pipe.gpt.hidden_states = lambda x, **kw: fed.append(x) or trunk(x, **kw)
    ids = flat(tokens_of(pipe, class_labels=[1, 4], temperature=0.0))
    pipe.gpt.hidden_states = trunk

    with torch.no_grad():
        prefix = pipe.conditioner.condition(class_labels=[1, 4]).prefix_RPD
        inputs_BLD = pipe.program().teacher_inputs(ids)
    torch.testing.assert_close(torch.cat(fed, dim=1), torch.cat([prefix, inputs_BLD], dim=1))
    assert torch.equal(teacher_logits(pipe, ids, [1, 4]).argmax(-1), ids)


def test_greedy_generation_under_the_var_ramp_is_the_argmax_of_guided_full_forwards():
    # larger weights than the default init: a random GPT whose greedy choices the class visibly moves
    pipe = tiny_pipe(null_condition_trained=True, gpt={"init_std": 0.05})
    ids = flat(tokens_of(pipe, class_labels=[1, 4], guidance_scale=GuidanceSchedule.from_var(cfg=4.0), temperature=0.0))
    cond = teacher_logits(pipe, ids, [1, 4])
    uncond = teacher_logits(pipe, ids, [NUM_CLASSES, NUM_CLASSES])
    scale_L1 = per_scale([1.0, 3.0, 5.0])
    assert torch.equal((uncond + scale_L1 * (cond - uncond)).argmax(-1), ids)
    assert not torch.equal(cond.argmax(-1), ids), "guidance should change some greedy choice"


def test_a_reference_backend_sampling_config_gives_the_greedy_ids_of_the_keywords():
    pipe = tiny_pipe()
    by_keywords = flat(tokens_of(pipe, class_labels=[1, 2], temperature=0.0, generator=gen(0)))
    by_config = flat(tokens_of(pipe, class_labels=[1, 2], sampling=SamplingConfig(temperature=0.0, backend="reference"),
                               generator=gen(1)))
    assert torch.equal(by_config, by_keywords)


# ---- guidance ----------------------------------------------------------------------------------------
def test_var_guidance_ramp_rises_linearly_over_the_scales():
    pipe = tiny_pipe(null_condition_trained=True)
    scales: list[float] = []
    draw = pipe.head.sample

    def recording(hidden, *, guidance_scale, **kwargs):
        scales.append(guidance_scale)
        return draw(hidden, guidance_scale=guidance_scale, **kwargs)

    pipe.head.sample = recording
    lengths = count_gpt_forwards(pipe)
    guided = pipe(class_labels=[1, 2], guidance_scale=GuidanceSchedule.from_var(cfg=4.0), generator=gens(0, 1), output_type="pt")
    assert scales == pytest.approx([1.0, 3.0, 5.0])
    assert len(lengths) == len(PATCH_NUMS)
    assert guided.images.shape == (2, 3, IMAGE_SIZE, IMAGE_SIZE)
    plain = flat(tokens_of(pipe, class_labels=[1, 2], generator=gens(0, 1)))
    first = PATCH_NUMS[0] ** 2
    assert torch.equal(flat(guided.tokens)[:, :first], plain[:, :first]), "VAR's ramp does not guide the first scale"
    assert not torch.equal(flat(guided.tokens), plain)


def test_constant_guidance_changes_the_draws():
    pipe = tiny_pipe(null_condition_trained=True)
    plain = flat(tokens_of(pipe, class_labels=[1, 2], generator=gens(0, 1)))
    guided = flat(tokens_of(pipe, class_labels=[1, 2], guidance_scale=6.0, generator=gens(0, 1)))
    assert guided.shape == plain.shape and not torch.equal(guided, plain)


def test_guidance_needs_a_null_condition_trained_model():
    pipe = tiny_pipe()
    with pytest.raises(ValueError, match="null_condition_trained"):
        pipe(class_labels=[1], guidance_scale=2.0)
    with pytest.raises(ValueError, match="null_condition_trained"):
        pipe(class_labels=[1], guidance_scale=GuidanceSchedule.from_var(cfg=1.5))


# ---- save / load -------------------------------------------------------------------------------------
@pytest.mark.usefixtures("modules_cache")
@pytest.mark.parametrize("load", [
    NextScalePipeline.from_pretrained,
    lambda folder: DiffusionPipeline.from_pretrained(folder, trust_remote_code=True),
], ids=["NextScalePipeline", "DiffusionPipeline"])
def test_save_and_load_gives_the_same_samples(tmp_path, load):
    pipe = tiny_pipe(class_names=NAMES, null_condition_trained=True)
    pipe.save_pretrained(tmp_path / "saved")
    expected = pipe(class_labels=[0, 3], guidance_scale=2.0, generator=gens(5, 6), output_type="pt")
    loaded = load(tmp_path / "saved")
    assert isinstance(loaded, NextScalePipeline)
    assert loaded.config.class_names == NAMES and loaded.config.null_condition_trained
    loaded.set_progress_bar_config(disable=True)
    out = loaded(prompt=["a", "d"], guidance_scale=2.0, generator=gens(5, 6), output_type="pt")
    assert torch.equal(flat(out.tokens), flat(expected.tokens))
    torch.testing.assert_close(out.images, expected.images)


# ---- training ----------------------------------------------------------------------------------------
def test_tokenize_gives_flat_ids_in_layout_order():
    pipe = tiny_pipe()
    images_ = images(3)
    ids = pipe.tokenize(images_)
    assert ids.shape == (3, NUM_TOKENS)
    assert torch.equal(ids, pipe.tokenizer.flatten_ids(pipe.tokenizer.encode(images_)))
    assert pipe.pattern().num_positions == NUM_TOKENS
    assert torch.equal(sequence_of(pipe, pipe.tokenizer.encode(images_)), ids)


def adam_losses(pipe: NextScalePipeline, ids: torch.Tensor, labels: torch.Tensor, steps: int) -> list[float]:
    pipe.gpt.train()
    optimizer = torch.optim.Adam(trainable_parameters(pipe), lr=1e-2)
    losses = []
    for _ in range(steps):
        loss, logs = pipe.loss(ids, class_labels=labels, cond_drop_prob=0.0)
        assert torch.isfinite(loss) and set(logs) == {"ce", "accuracy"}
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    pipe.gpt.eval()
    return losses


def test_loss_is_finite_and_falls_with_training():
    pipe = tiny_pipe()
    losses = adam_losses(pipe, pipe.tokenize(images()), torch.tensor([0, 1, 2, 3]), 8)
    assert losses[-1] < losses[0] - 0.5
    assert not pipe.config.null_condition_trained


@pytest.mark.parametrize("prefix", [True, False], ids=["prefix-and-adaln", "adaln-only"])
def test_adaln_class_conditioning_trains_and_generates(prefix):
    pipe = tiny_pipe(class_conditioner(adaln_dim=16, prefix=prefix))
    assert pipe.gpt.cfg.adaln_dim == 16
    losses = adam_losses(pipe, pipe.tokenize(images()), torch.tensor([0, 1, 2, 3]), 8)
    assert losses[-1] < losses[0] - 0.5
    lengths = count_gpt_forwards(pipe)
    out = pipe(class_labels=[0, 3], generator=gen(0), output_type="pt")
    assert out.images.shape == (2, 3, IMAGE_SIZE, IMAGE_SIZE)
    assert lengths[0] == (1 if prefix else 0) + PATCH_NUMS[0] ** 2
    ids = flat(tokens_of(pipe, class_labels=[0, 3], temperature=0.0))
    assert torch.equal(teacher_logits(pipe, ids, [0, 3]).argmax(-1), ids)


def test_condition_dropout_marks_the_pipeline_null_condition_trained():
    pipe = tiny_pipe()
    loss, _ = pipe.loss(pipe.tokenize(images(2)), class_labels=torch.tensor([0, 1]), cond_drop_prob=0.5, generator=gen(0))
    assert torch.isfinite(loss)
    assert pipe.config.null_condition_trained


def test_loss_refuses_ids_of_the_wrong_shape():
    pipe = tiny_pipe()
    with pytest.raises(ValueError, match=rf"tokens must hold {NUM_TOKENS} positions"):
        pipe.loss(torch.zeros(2, NUM_TOKENS - 1, dtype=torch.long), class_labels=torch.tensor([0, 1]))
    with pytest.raises(TypeError, match="tokens must be a"):
        pipe.loss([torch.zeros(2, 1, 1, dtype=torch.long)], class_labels=torch.tensor([0, 1]))


# ---- bad input ---------------------------------------------------------------------------------------
def assemble(tokenizer, **gpt_fields) -> NextScalePipeline:
    fields = {"vocab_size": CODEBOOK, "coord_rank": 3, "input_dim": CODE_DIM, "start_token": True, "max_seq_len": 32,
              **GPT_SIZE, **gpt_fields}
    head = CategoricalHead(CategoricalHeadConfig(dim=GPT_SIZE["dim"], codebook_sizes=[CODEBOOK]))
    return NextScalePipeline(gpt=GPT(GPTConfig(**fields)), tokenizer=tokenizer, head=head, conditioner=class_conditioner())


def test_construction_checks_the_tokenizer_against_the_gpt():
    tok = multiscale_tokenizer()
    assert isinstance(assemble(tok), NextScalePipeline)
    with pytest.raises(ValueError, match=rf"vocab_size=64 .*vocab_size={CODEBOOK}"):
        assemble(tok, vocab_size=64)
    with pytest.raises(ValueError, match=rf"input_dim=8 .*input_dim={CODE_DIM}"):
        assemble(tok, input_dim=8)
    with pytest.raises(ValueError, match="coord_rank=2 .*coord_rank=3"):
        assemble(tok, coord_rank=2)
    with pytest.raises(ValueError, match="start_token=True"):
        assemble(tok, start_token=False)
    with pytest.raises(ValueError, match="max_seq_len=8"):
        assemble(tok, max_seq_len=8)
    with pytest.raises(TypeError, match="NextScalePipeline needs a multi-scale tokenizer.*VQImageTokenizer"):
        assemble(vq_tokenizer(codebook_size=CODEBOOK, codebook_dim=CODE_DIM))


def test_class_names_of_the_wrong_count_are_refused_at_construction():
    with pytest.raises(ValueError, match="class_names has 2 names"):
        tiny_pipe(class_names=["a", "b"])


def test_bad_conditions_are_refused_with_a_reason():
    pipe = tiny_pipe(class_names=NAMES)
    with pytest.raises(ValueError, match="unknown class id 5"):
        pipe(class_labels=[1, 5])
    with pytest.raises(ValueError, match="prompt must not be empty"):
        pipe(prompt="  ")
    with pytest.raises(TypeError, match="got an item of type int"):
        pipe(prompt=["a", 3])
    with pytest.raises(ValueError, match="not one of the class names"):
        pipe(prompt="zebra")
    with pytest.raises(ValueError, match="not both"):
        pipe(prompt="a", class_labels=[0])
    with pytest.raises(TypeError, match="sampling"):
        pipe(class_labels=[0], sampling={"temperature": 0.0})
