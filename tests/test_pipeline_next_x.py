"""Fast tests of NextXPipeline (xAR next-X) and of the FlowHead it samples continuous entities with.

Tiny random components only: a KL tokenizer and a VQ tokenizer with a 4x4 token grid, one-layer GPTs,
unit-scale class conditioners and a one-block flow head whose zero-initialised layers are perturbed,
so that (as after training) the GPT's hidden states steer the samples. Nothing is downloaded.
"""

from __future__ import annotations

import dataclasses
import json

import diffusers
import numpy as np
import PIL.Image
import pytest
import torch

from mmgen import GPT, GPTConfig
from mmgen.conditioning import ClassConditioner, ClassConditionerConfig
from mmgen.flow_head import FlowHead, FlowHeadConfig
from mmgen.generation import teacher_hidden
from mmgen.heads import CategoricalHead
from mmgen.programs import PatternProgram
from mmgen.sampling import SamplingConfig
from pipeline_fixtures import (  # noqa: F401  (modules_cache is a fixture)
    DIM,
    IMAGE_SIZE,
    build,
    count_gpt_forwards,
    gens,
    images,
    kl_tokenizer,
    modules_cache,
    sequence_of,
    teacher_forced_hidden,
    trainable_parameters,
    vq_tokenizer,
)
from pipelines.next_x import NextXPipeline

pytestmark = pytest.mark.usefixtures("one_torch_thread")

GRID = 4
LATENT_DIM = 4
CODEBOOK = 32
FLOW_STEPS = 3
GROUPS = {"token": GRID * GRID, "cell": 4, "subsample": 4, "scale": 3, "image": 1}  # cell_size 2, scales 1, 2, 4
DISCRETE_ENTITIES = ["token", "cell", "subsample", "image"]


# ---- tiny components -------------------------------------------------------------------------------
def tiny_head(*, latent_dim: int = LATENT_DIM, cond_dim: int = DIM, perturb: bool = True) -> FlowHead:
    """A one-block head; ``perturb`` moves its zero-initialised layers off zero so the condition matters."""
    torch.manual_seed(2)
    head = FlowHead(FlowHeadConfig(latent_dim=latent_dim, cond_dim=cond_dim, width=32, depth=1))
    if perturb:
        with torch.no_grad():
            for p in head.parameters():
                p.add_(torch.randn_like(p) * 0.2)
    return head


def tiny_gpt(*, continuous: bool, coord_rank: int = 2, vocab_size: int = CODEBOOK, input_dim: int = LATENT_DIM,
             max_seq_len: int = 17) -> GPT:
    """A GPT built by hand (what ``from_tokenizer`` derives, unless told otherwise)."""
    torch.manual_seed(1)
    return GPT(GPTConfig(vocab_size=0 if continuous else vocab_size, dim=DIM, n_layers=1, n_heads=2, coord_rank=coord_rank,
                         start_token=True, max_seq_len=max_seq_len, input_dim=input_dim if continuous else 0))


def continuous_pipe(entity: str = "cell", *, head: FlowHead | None = None, **config) -> NextXPipeline:
    return build(NextXPipeline, kl_tokenizer(), head=tiny_head() if head is None else head, entity=entity,
                 num_flow_steps=FLOW_STEPS, **config)


def discrete_pipe(entity: str = "cell", **config) -> NextXPipeline:
    return build(NextXPipeline, vq_tokenizer(), entity=entity, **config)


def clean_program(pipe: NextXPipeline) -> PatternProgram:
    """The pipeline's program with clean teacher-forcing context (what generation feeds)."""
    rule = dataclasses.replace(pipe.input_rule(), noisy_context=False)
    return PatternProgram(gpt=pipe.gpt, pattern=pipe.pattern(), rule=rule)


# ---- generation --------------------------------------------------------------------------------------
@pytest.mark.parametrize("entity", list(GROUPS))
def test_every_continuous_entity_generates_with_one_gpt_step_per_group(entity):
    pipe = continuous_pipe(entity, null_condition_trained=True)
    assert pipe.num_groups == GROUPS[entity]
    sizes = pipe.pattern().group_sizes
    forwards = count_gpt_forwards(pipe)
    steps: list[int] = []
    out = pipe(class_labels=[1, 2], guidance_scale=2.0, generator=gens(0, 1), output_type="pt",
               callback_on_step_end=lambda p, step, t, kw: steps.append(step))
    assert forwards == [1 + sizes[0], *sizes[1:]]  # the class prefix goes with the first group
    assert steps == list(range(GROUPS[entity]))
    assert out.images.shape == (2, 3, IMAGE_SIZE, IMAGE_SIZE)
    assert out.tokens.shape == (2, LATENT_DIM, GRID, GRID) and out.tokens.is_floating_point()
    assert torch.isfinite(out.tokens).all()
    with torch.no_grad():
        torch.testing.assert_close(out.images, (pipe.tokenizer.decode(out.tokens) / 2 + 0.5).clamp(0, 1))


@pytest.mark.parametrize("entity", DISCRETE_ENTITIES)
def test_every_discrete_entity_generates_with_one_gpt_step_per_group(entity):
    pipe = discrete_pipe(entity, null_condition_trained=True)
    assert isinstance(pipe.head, CategoricalHead)
    sizes = pipe.pattern().group_sizes
    forwards = count_gpt_forwards(pipe)
    steps: list[int] = []
    out = pipe(class_labels=[1, 2, 3], guidance_scale=2.0, generator=gens(0, 1, 2), output_type="pt",
               callback_on_step_end=lambda p, step, t, kw: steps.append(step))
    assert len(forwards) == GROUPS[entity] == pipe.num_groups
    assert forwards == [1 + sizes[0], *sizes[1:]]
    assert steps == list(range(GROUPS[entity]))
    assert out.images.shape == (3, 3, IMAGE_SIZE, IMAGE_SIZE)
    assert out.tokens.shape == (3, GRID, GRID) and out.tokens.dtype == torch.long
    assert 0 <= int(out.tokens.min()) and int(out.tokens.max()) < CODEBOOK


def test_the_callback_sees_each_group_as_it_is_drawn():
    pipe = continuous_pipe("subsample")
    seen: list[tuple[int, ...]] = []
    pipe(class_labels=[0], generator=gens(0), output_type="tokens",
         callback_on_step_end=lambda p, step, t, kw: seen.append(tuple(kw["tokens"].shape)))
    assert seen == [(1, GRID * GRID // 4, LATENT_DIM)] * 4


def test_tokens_returned_by_the_callback_replace_the_drawn_ones():
    pipe = discrete_pipe("cell")
    everything = pipe(class_labels=[1, 2], generator=gens(0, 1), output_type="tokens",
                      callback_on_step_end=lambda p, step, t, kw: {"tokens": torch.full_like(kw["tokens"], 7)})
    assert torch.equal(everything.tokens, torch.full((2, GRID, GRID), 7))
    # the groups after a replaced one are drawn from it: greedy, they are the argmax of training's forward over it
    first_only = pipe(class_labels=[1, 2], temperature=0.0, generator=gens(0, 1), output_type="tokens",
                      callback_on_step_end=lambda p, step, t, kw: {"tokens": torch.full_like(kw["tokens"], 7)} if step == 0 else None)
    seq = sequence_of(pipe, first_only.tokens)
    with torch.no_grad():
        logits = pipe.head.logits(teacher_forced_hidden(pipe, seq, class_labels=[1, 2]))
    assert torch.equal(seq[:, :4], torch.full((2, 4), 7))
    assert torch.equal(logits[:, 4:].argmax(-1), seq[:, 4:])
    assert not torch.equal(logits[:, :4].argmax(-1), seq[:, :4])  # 7 is not what the model would have drawn


@pytest.mark.parametrize("make", [continuous_pipe, discrete_pipe])
def test_output_types_and_return_dict(make):
    pipe = make("cell")
    pil = pipe(class_labels=[1, 2], generator=gens(0, 1)).images
    assert isinstance(pil, list) and len(pil) == 2
    assert all(isinstance(im, PIL.Image.Image) and im.size == (IMAGE_SIZE, IMAGE_SIZE) for im in pil)
    arr = pipe(class_labels=[1, 2], generator=gens(0, 1), output_type="np").images
    assert isinstance(arr, np.ndarray) and arr.shape == (2, IMAGE_SIZE, IMAGE_SIZE, 3)
    assert arr.min() >= 0 and arr.max() <= 1
    pt = pipe(class_labels=[1, 2], generator=gens(0, 1), output_type="pt").images
    assert pt.shape == (2, 3, IMAGE_SIZE, IMAGE_SIZE) and 0 <= float(pt.min()) and float(pt.max()) <= 1
    np.testing.assert_allclose(arr, pt.permute(0, 2, 3, 1).numpy(), atol=1e-6)
    np.testing.assert_allclose(np.asarray(pil[1]) / 255.0, arr[1], atol=1 / 255 + 1e-6)
    tokens_only = pipe(class_labels=[1, 2], generator=gens(0, 1), output_type="tokens")
    assert tokens_only.images is None
    images_, tokens = pipe(class_labels=[1, 2], generator=gens(0, 1), output_type="pt", return_dict=False)
    torch.testing.assert_close(images_, pt)
    torch.testing.assert_close(tokens, tokens_only.tokens)
    several = pipe(class_labels=[1, 2], num_samples_per_prompt=2, generator=gens(0, 1, 2, 3), output_type="tokens")
    assert several.tokens.shape[0] == 4


@pytest.mark.parametrize("make", [continuous_pipe, discrete_pipe])
def test_same_seed_same_images_and_other_seeds_differ(make):
    pipe = make("cell")
    first = pipe(class_labels=[1, 4], generator=torch.Generator().manual_seed(7), output_type="pt")
    again = pipe(class_labels=[1, 4], generator=torch.Generator().manual_seed(7), output_type="pt")
    other = pipe(class_labels=[1, 4], generator=torch.Generator().manual_seed(8), output_type="pt")
    assert torch.equal(first.tokens, again.tokens)
    torch.testing.assert_close(first.images, again.images)
    assert not torch.equal(first.tokens, other.tokens)


@pytest.mark.parametrize("entity", list(GROUPS))
def test_batch_consistency_with_per_sample_generators(entity):
    pipe = continuous_pipe(entity, null_condition_trained=True)
    for guidance in (1.0, 2.5):
        batch = pipe(class_labels=[1, 2, 3], guidance_scale=guidance, generator=gens(0, 1, 2), output_type="pt")
        single = pipe(class_labels=[2], guidance_scale=guidance, generator=gens(1), output_type="pt")
        torch.testing.assert_close(batch.tokens[1:2], single.tokens, atol=1e-5, rtol=0)
        torch.testing.assert_close(batch.images[1:2], single.images, atol=1e-5, rtol=0)


def test_discrete_batch_consistency_with_per_sample_generators():
    pipe = discrete_pipe("subsample", null_condition_trained=True)
    for guidance in (1.0, 2.5):
        batch = pipe(class_labels=[1, 2, 3], guidance_scale=guidance, generator=gens(0, 1, 2), output_type="pt")
        single = pipe(class_labels=[2], guidance_scale=guidance, generator=gens(1), output_type="pt")
        assert torch.equal(batch.tokens[1:2], single.tokens)
        torch.testing.assert_close(batch.images[1:2], single.images, atol=1e-5, rtol=0)


def test_class_guidance_and_flow_steps_change_continuous_samples():
    pipe = continuous_pipe("cell", null_condition_trained=True)
    base = pipe(class_labels=[1], generator=gens(0), output_type="tokens").tokens
    other_class = pipe(class_labels=[3], generator=gens(0), output_type="tokens").tokens
    guided = pipe(class_labels=[1], guidance_scale=4.0, generator=gens(0), output_type="tokens").tokens
    more_steps = pipe(class_labels=[1], num_flow_steps=FLOW_STEPS + 3, generator=gens(0), output_type="tokens").tokens
    for changed in (other_class, guided, more_steps):
        assert not torch.allclose(base, changed, atol=1e-4)


def test_a_sampling_config_takes_the_pipelines_flow_steps_unless_it_sets_its_own():
    pipe = continuous_pipe("cell")
    default = pipe(class_labels=[1], generator=gens(0), output_type="tokens").tokens
    six = pipe(class_labels=[1], num_flow_steps=6, generator=gens(0), output_type="tokens").tokens
    given = pipe(class_labels=[1], sampling=SamplingConfig(), generator=gens(0), output_type="tokens").tokens
    own = pipe(class_labels=[1], sampling=SamplingConfig(num_flow_steps=6), generator=gens(0), output_type="tokens").tokens
    with_call_steps = pipe(class_labels=[1], sampling=SamplingConfig(), num_flow_steps=6, generator=gens(0),
                           output_type="tokens").tokens
    assert torch.equal(given, default) and torch.equal(own, six) and torch.equal(with_call_steps, six)
    assert not torch.equal(default, six)


def test_untrained_head_at_zero_temperature_returns_the_latent_mean():
    """Zero-initialised head: velocity 0, so with no initial noise every token is the denormalised 0 = latent_mean."""
    pipe = continuous_pipe("cell", head=tiny_head(perturb=False))
    mean = torch.tensor([1.0, -2.0, 3.0, 0.5])
    pipe.head.latent_mean.copy_(mean)
    pipe.head.latent_std.copy_(torch.tensor([2.0, 2.0, 2.0, 2.0]))
    a = pipe(class_labels=[1, 2], temperature=0.0, generator=gens(0, 1), output_type="tokens").tokens
    b = pipe(class_labels=[1, 2], temperature=0.0, generator=gens(5, 6), output_type="tokens").tokens
    torch.testing.assert_close(a, mean.view(1, -1, 1, 1).expand(2, -1, GRID, GRID))
    assert torch.equal(a, b)


def test_guidance_needs_a_null_condition_trained_model():
    with pytest.raises(ValueError, match="null_condition_trained"):
        continuous_pipe("cell")(class_labels=[1], guidance_scale=2.0)
    with pytest.raises(ValueError, match="null_condition_trained"):
        discrete_pipe("cell")(class_labels=[1], guidance_scale=2.0)


@pytest.mark.parametrize(("kwargs", "error", "match"), [
    (dict(temperature=-1.0), ValueError, "temperature"),
    (dict(num_flow_steps=0), ValueError, "num_flow_steps must be a positive int"),
    (dict(output_type="latent"), ValueError, "output_type must be one of"),
    (dict(generator=gens(0, 1)), ValueError, "generator is a list of 2, but 1 samples"),
    (dict(sampling="greedy"), TypeError, "sampling must be an mmgen.SamplingConfig"),
    (dict(guidance_scale="2"), TypeError, "guidance_scale must be a number"),
    (dict(num_samples_per_prompt=0), ValueError, "num_samples_per_prompt must be a positive int"),
    (dict(class_labels=[5]), ValueError, r"class_labels must lie in \[0, 5\)"),
])
def test_bad_call_arguments_are_named(kwargs, error, match):
    pipe = continuous_pipe("cell")
    with pytest.raises(error, match=match):
        pipe(**{"class_labels": [1], **kwargs})


# ---- greedy generation is the argmax of training's forward --------------------------------------------
@pytest.mark.parametrize("entity", DISCRETE_ENTITIES)
def test_greedy_discrete_generation_equals_argmax_of_a_teacher_forced_forward(entity):
    pipe = discrete_pipe(entity)
    out = pipe(class_labels=[1, 2], temperature=0.0, generator=gens(0, 1), output_type="tokens")
    seq = sequence_of(pipe, out.tokens)
    with torch.no_grad():
        logits = pipe.head.logits(teacher_forced_hidden(pipe, seq, class_labels=[1, 2]))
    assert torch.equal(logits.argmax(-1), seq)
    if entity != "image":  # one group of identical start inputs: a random GPT gives every position the same id
        assert not torch.equal(seq, seq[:, :1].expand_as(seq))


@pytest.mark.parametrize("entity", list(GROUPS))
def test_deterministic_continuous_generation_equals_the_flow_of_a_clean_teacher_forced_forward(entity):
    pipe = continuous_pipe(entity)
    sampling = SamplingConfig(temperature=0.0, num_flow_steps=FLOW_STEPS)
    drawn: list[torch.Tensor] = []
    out = pipe(class_labels=[1, 2], sampling=sampling, generator=gens(0, 1), output_type="tokens",
               callback_on_step_end=lambda p, step, t, kw: drawn.append(kw["tokens"]))
    seq = torch.cat(drawn, dim=1)  # the whole sequence, coarse scales included
    torch.testing.assert_close(pipe.decode_sequence(seq), out.tokens)
    program = clean_program(pipe)
    cond = pipe.conditioner.condition(class_labels=[1, 2])
    with torch.no_grad():
        hidden = teacher_hidden(pipe.gpt, cond, program.teacher_inputs(seq), program.pattern.layout())
        flowed = pipe.head.sample(hidden, sampling=sampling, guidance_scale=1.0,
                                  seeds_Bn=torch.zeros(2, seq.shape[1], dtype=torch.long))
    torch.testing.assert_close(flowed, seq, atol=1e-5, rtol=1e-5)


# ---- patterns and entities ---------------------------------------------------------------------------
def test_subsample_groups_are_strided_phases():
    layout = continuous_pipe("subsample").pattern().layout()
    yx = layout.coords[0].long()
    groups = layout.groups[0]
    assert layout.num_groups == 4 and sorted(map(tuple, yx.tolist())) == [(y, x) for y in range(GRID) for x in range(GRID)]
    for g in range(4):
        phases = {(y % 2, x % 2) for y, x in yx[groups == g].tolist()}
        assert phases == {divmod(g, 2)}


@pytest.mark.parametrize("entity", DISCRETE_ENTITIES)
def test_entities_split_the_grid_and_decode_back(entity):
    x = images(2)
    for pipe in (continuous_pipe(entity), discrete_pipe(entity)):
        seq = pipe.tokenize(x)
        parts = pipe.program().split(seq)
        assert len(parts) == GROUPS[entity] and len({p.shape[1] for p in parts}) == 1
        native = pipe.tokenizer.encode(x)
        if isinstance(pipe.head, FlowHead):
            torch.testing.assert_close(pipe.decode_sequence(seq), native, atol=1e-5, rtol=1e-5)
        else:
            assert torch.equal(pipe.decode_sequence(seq), native)


def test_scale_entities_are_area_downsampled_latents():
    pipe = continuous_pipe("scale")
    assert pipe.config.patch_nums == [1, 2, GRID]
    x = images(2)
    latents = pipe.tokenizer.encode(x)
    seq = pipe.tokenize(x)  # unit statistics: the head's space is the tokenizer's
    parts = pipe.program().split(seq)
    assert [p.shape[1] for p in parts] == [1, 4, GRID * GRID]
    torch.testing.assert_close(parts[0][:, 0], latents.mean(dim=(2, 3)))
    torch.testing.assert_close(parts[1][:, 0], latents[:, :, :2, :2].mean(dim=(2, 3)))
    torch.testing.assert_close(parts[2], latents.flatten(2).transpose(1, 2))
    assert torch.equal(pipe.decode_sequence(seq), latents)


# ---- save / load -------------------------------------------------------------------------------------
@pytest.mark.usefixtures("modules_cache")
@pytest.mark.parametrize("make", [continuous_pipe, discrete_pipe])
def test_save_and_load_with_both_loaders_gives_the_same_samples(make, tmp_path):
    pipe = make("subsample", null_condition_trained=True)
    continuous = isinstance(pipe.head, FlowHead)
    if continuous:
        pipe.set_latent_statistics(images())
    folder = tmp_path / "saved"
    pipe.save_pretrained(folder)
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == ["mmgen_pipeline", "NextXPipeline"]
    assert index["entity"] == "subsample" and index["null_condition_trained"] is True
    assert index["head"] == (["mmgen.flow_head", "FlowHead"] if continuous else ["mmgen.heads", "CategoricalHead"])
    assert index["conditioner"] == ["mmgen.conditioning", "ClassConditioner"]
    expected = pipe(class_labels=[0, 3], guidance_scale=2.0, generator=gens(5, 6), output_type="pt")
    for loaded in (NextXPipeline.from_pretrained(folder),
                   diffusers.DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)):
        assert isinstance(loaded, NextXPipeline)
        assert loaded.config.entity == "subsample" and loaded.config.num_flow_steps == pipe.config.num_flow_steps
        assert type(loaded.head) is type(pipe.head)
        if continuous:
            assert torch.equal(loaded.head.latent_mean, pipe.head.latent_mean)
            assert torch.equal(loaded.head.latent_std, pipe.head.latent_std)
        loaded.set_progress_bar_config(disable=True)
        out = loaded(class_labels=[0, 3], guidance_scale=2.0, generator=gens(5, 6), output_type="pt")
        assert torch.equal(out.tokens, expected.tokens)
        torch.testing.assert_close(out.images, expected.images)


# ---- the flow head -----------------------------------------------------------------------------------
def test_flow_head_round_trip_keeps_weights_and_latent_statistics(tmp_path):
    head = tiny_head()
    latents = torch.randn(6, LATENT_DIM, GRID, GRID) * torch.tensor([1.0, 2.0, 0.5, 3.0]).view(1, -1, 1, 1) + 4.0
    head.set_latent_statistics(latents)
    torch.testing.assert_close(head.latent_mean, latents.transpose(0, 1).flatten(1).mean(1))
    unit = head.normalize(latents)
    torch.testing.assert_close(unit.transpose(0, 1).flatten(1).std(1), torch.ones(LATENT_DIM))
    torch.testing.assert_close(head.denormalize(unit), latents)
    head.save_pretrained(tmp_path)
    loaded = FlowHead.from_pretrained(tmp_path)
    assert loaded.cfg == head.cfg
    assert torch.equal(loaded.latent_mean, head.latent_mean) and torch.equal(loaded.latent_std, head.latent_std)
    x, t, z = torch.randn(5, LATENT_DIM), torch.rand(5), torch.randn(5, DIM)
    with torch.no_grad():
        assert torch.equal(loaded.velocity(x, t, z), head.velocity(x, t, z))
        assert torch.equal(loaded.context_time(t), head.context_time(t))


def test_untrained_flow_head_predicts_zero_velocity_and_adds_no_context():
    head = tiny_head(perturb=False)
    x, t, z = torch.randn(5, LATENT_DIM), torch.rand(5), torch.randn(5, DIM)
    assert torch.equal(head.velocity(x, t, z), torch.zeros(5, LATENT_DIM))
    assert head.context_time(torch.rand(2, 3)).shape == (2, 3, DIM)
    assert torch.equal(head.context_time(t), torch.zeros(5, DIM))


def test_trained_flow_head_moves_euler_samples_to_the_conditioned_target():
    """1-D targets: condition (1, 0) → near +2, (0, 1) → near −2, the null condition (0, 0) → either (std 0.3).

    After a few hundred steps Euler samples land at the conditioned mode, guided ones too, and
    unconditional ones split between the two modes.
    """
    torch.manual_seed(0)
    head = FlowHead(FlowHeadConfig(latent_dim=1, cond_dim=2, width=32, depth=1, time_freq_dim=16))
    opt = torch.optim.Adam(head.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    z = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]]).repeat_interleave(32, dim=0)
    modes = torch.tensor([2.0, -2.0]).repeat_interleave(32).unsqueeze(1)
    for _ in range(300):
        either = torch.where(torch.rand(32, 1, generator=gen) < 0.5, 2.0, -2.0)
        x1 = torch.cat([modes, either]) + 0.3 * torch.randn(96, 1, generator=gen)
        loss = head.flow_loss(x1, z, generator=gen)
        opt.zero_grad()
        loss.backward()
        opt.step()
    z_cond = z[:64]
    with torch.no_grad():
        samples = head.sample(z_cond, num_steps=8, noise_NC=torch.randn(64, 1, generator=gen))
        guided = head.sample(z_cond, num_steps=8, noise_NC=torch.randn(64, 1, generator=gen), guidance=2.0,
                             z_uncond_ND=torch.zeros_like(z_cond))
        unconditional = head.sample(torch.zeros_like(z_cond), num_steps=8, noise_NC=torch.randn(64, 1, generator=gen))
    for got in (samples, guided):
        assert abs(float(got[:32].mean()) - 2.0) < 0.5 and abs(float(got[32:].mean()) + 2.0) < 0.5
        assert float(got[:32].std()) < 0.8 and float(got[32:].std()) < 0.8
    assert 0.2 < float((unconditional > 0).float().mean()) < 0.8


def test_flow_head_rejects_bad_shapes():
    head = tiny_head()
    with pytest.raises(ValueError, match="x_t must have shape"):
        head.velocity(torch.randn(3, LATENT_DIM + 1), torch.rand(3), torch.randn(3, DIM))
    with pytest.raises(ValueError, match="z must have shape"):
        head.velocity(torch.randn(3, LATENT_DIM), torch.rand(3), torch.randn(3, DIM + 1))
    with pytest.raises(ValueError, match="latent_dim"):
        head.normalize(torch.randn(2, LATENT_DIM + 1, 4, 4))
    with pytest.raises(ValueError, match="num_steps"):
        head.sample(torch.randn(3, DIM), num_steps=0, noise_NC=torch.randn(3, LATENT_DIM))
    with pytest.raises(ValueError, match="time_freq_dim"):
        FlowHeadConfig(latent_dim=4, cond_dim=8, time_freq_dim=7)


# ---- training ----------------------------------------------------------------------------------------
def test_set_latent_statistics_makes_tokenized_latents_unit_scale():
    pipe = continuous_pipe("cell")
    x = images(6)
    pipe.set_latent_statistics(x)
    seq = pipe.tokenize(x)
    assert seq.shape == (6, GRID * GRID, LATENT_DIM)
    per_channel = seq.flatten(0, 1)
    torch.testing.assert_close(per_channel.mean(0), torch.zeros(LATENT_DIM), atol=1e-5, rtol=0)
    torch.testing.assert_close(per_channel.std(0), torch.ones(LATENT_DIM), atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="continuous heads"):
        discrete_pipe("cell").set_latent_statistics(x)


@pytest.mark.parametrize("entity", list(GROUPS))
def test_noisy_context_changes_inputs_but_not_targets_and_clean_context_matches_generation(entity, monkeypatch):
    pipe = continuous_pipe(entity)
    seq = pipe.tokenize(images(2))
    program = pipe.program()
    noisy = program.teacher_inputs(seq, generator=torch.Generator().manual_seed(0))
    again = program.teacher_inputs(seq, generator=torch.Generator().manual_seed(0))
    clean = clean_program(pipe).teacher_inputs(seq)
    L = pipe.pattern().num_positions
    assert noisy.shape == clean.shape == (2, L, DIM) and torch.equal(noisy, again)
    first = pipe.pattern().group_sizes[0]
    assert torch.equal(noisy[:, :first], clean[:, :first])  # the start embedding is never noised
    if pipe.num_groups > 1:
        assert not torch.allclose(noisy[:, first:], clean[:, first:], atol=1e-3)
    # the loss's targets stay the clean sequence
    targets: list[torch.Tensor] = []
    head_loss = pipe.head.loss
    monkeypatch.setattr(pipe.head, "loss", lambda hidden, t, **kw: (targets.append(t), head_loss(hidden, t, **kw))[1])
    pipe.loss(seq, class_labels=[0, 1], generator=torch.Generator().manual_seed(0))
    assert len(targets) == 1 and torch.equal(targets[0], seq)
    # generation feeds, group by group, exactly the clean teacher-forcing inputs
    gen_program = pipe.program()
    state = gen_program.start(2, pipe.gpt.device)
    fed = []
    with torch.no_grad():
        for part in gen_program.split(seq):
            request = gen_program.next_group(state)
            fed.append(request.inputs_BnD)
            state = gen_program.accept(state, part, request.valid_Bn)
    assert gen_program.next_group(state) is None
    torch.testing.assert_close(clean, torch.cat(fed, dim=1))


def test_discrete_teacher_inputs_are_the_clean_previous_entity():
    pipe = discrete_pipe("cell")
    seq = pipe.tokenize(images(2))
    assert seq.shape == (2, GRID * GRID) and seq.dtype == torch.long
    program = pipe.program()
    inputs = program.teacher_inputs(seq, generator=torch.Generator().manual_seed(0))
    assert torch.equal(inputs, program.teacher_inputs(seq, generator=torch.Generator().manual_seed(1)))  # no noise
    parts = program.split(seq)
    torch.testing.assert_close(inputs[:, 4:8], pipe.gpt.embed_tokens(parts[0]))
    torch.testing.assert_close(inputs[:, 12:16], pipe.gpt.embed_tokens(parts[2]))


@pytest.mark.parametrize(("make", "entity"), [(continuous_pipe, "cell"), (continuous_pipe, "scale"), (discrete_pipe, "subsample")])
def test_training_loss_is_finite_and_decreases_on_a_fixed_batch(make, entity):
    pipe = make(entity)
    tokens = pipe.tokenize(images(4))
    labels = torch.tensor([0, 1, 2, 3])
    opt = torch.optim.Adam(list(trainable_parameters(pipe)), lr=3e-3)
    torch.manual_seed(0)
    losses = []
    for step in range(30):
        loss, logs = pipe.loss(tokens, class_labels=labels, cond_drop_prob=0.1, generator=torch.Generator().manual_seed(step))
        assert torch.isfinite(loss) and set(logs) == ({"flow"} if isinstance(pipe.head, FlowHead) else {"ce", "accuracy"})
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5])
    assert pipe.config.null_condition_trained is True


def test_loss_rejects_tokens_of_the_wrong_kind():
    continuous, discrete = continuous_pipe("cell"), discrete_pipe("cell")
    with pytest.raises(TypeError, match=r"tokens must be a float tensor \[B, n, 4\] \(channel-last latents\)"):
        continuous.loss(torch.zeros(2, GRID * GRID, dtype=torch.long), class_labels=[0, 1])
    with pytest.raises(ValueError, match=r"latent_dim channels last"):
        continuous.loss(torch.zeros(2, GRID * GRID, 3), class_labels=[0, 1])
    with pytest.raises(TypeError, match="must be an integer tensor"):
        discrete.loss(torch.zeros(2, GRID * GRID), class_labels=[0, 1])
    with pytest.raises(ValueError, match=r"tokens must hold 16 positions per sample \(the pattern's L\), got 15"):
        discrete.loss(torch.zeros(2, 15, dtype=torch.long), class_labels=[0, 1])
    with pytest.raises(TypeError, match=r"tokens must be a \[B, L, \.\.\.\] sequence"):
        discrete.loss([[0, 1]], class_labels=[0])


# ---- bad construction --------------------------------------------------------------------------------
def test_construction_errors_name_both_sizes():
    kl, vq = kl_tokenizer(), vq_tokenizer()
    gpt = tiny_gpt(continuous=True)
    cond = continuous_pipe("cell").conditioner
    with pytest.raises(ValueError, match=r"the head models ContinuousContent\(dim=3\), but this pipeline's sequence holds "
                                         r"ContinuousContent\(dim=4\)"):
        NextXPipeline(gpt=gpt, tokenizer=kl, head=tiny_head(latent_dim=3), conditioner=cond)
    with pytest.raises(ValueError, match=r"the GPT's input_dim=2 does not fit NextXPipeline over this tokenizer "
                                         r"\(its tokens need input_dim=4\)"):
        NextXPipeline(gpt=tiny_gpt(continuous=True, input_dim=2), tokenizer=kl, head=tiny_head(), conditioner=cond)
    with pytest.raises(TypeError, match="head must be an mmgen.heads.Head"):
        NextXPipeline(gpt=gpt, tokenizer=kl, head=None, conditioner=cond)
    with pytest.raises(TypeError, match="head must be an mmgen.heads.Head"):
        NextXPipeline(gpt=gpt, tokenizer=kl, head=torch.nn.Linear(2, 2), conditioner=cond)
    with pytest.raises(ValueError, match=r"the head models ContinuousContent\(dim=4\), but this pipeline's sequence holds "
                                         r"DiscreteContent"):
        NextXPipeline(gpt=tiny_gpt(continuous=False), tokenizer=vq, head=tiny_head(), conditioner=cond)
    with pytest.raises(ValueError, match=r"the GPT's vocab_size=16 does not fit NextXPipeline over this tokenizer "
                                         r"\(its tokens need vocab_size=32\)"):
        NextXPipeline(gpt=tiny_gpt(continuous=False, vocab_size=16), tokenizer=vq, head=discrete_pipe().head, conditioner=cond)
    with pytest.raises(TypeError, match="tokenizer must implement mmgen.protocol.Tokenizer"):
        NextXPipeline(gpt=gpt, tokenizer=torch.nn.Linear(2, 2), head=tiny_head(), conditioner=cond)
    with pytest.raises(TypeError, match="gpt must be an mmgen.GPT"):
        NextXPipeline(gpt=torch.nn.Linear(2, 2), tokenizer=kl, head=tiny_head(), conditioner=cond)
    with pytest.raises(TypeError, match="conditioner must be an mmgen.conditioning.Conditioner"):
        NextXPipeline(gpt=gpt, tokenizer=kl, head=tiny_head(), conditioner=None)
    with pytest.raises(ValueError, match="conditioner.dim=16 does not match the GPT's dim=32"):
        NextXPipeline(gpt=gpt, tokenizer=kl, head=tiny_head(),
                      conditioner=ClassConditioner(ClassConditionerConfig(dim=16, num_classes=5)))
    with pytest.raises(ValueError, match=r"gpt: \['vocab_size'\] are fixed by the tokenizer"):
        build(NextXPipeline, vq, gpt={"vocab_size": 16})
    with pytest.raises(ValueError, match="head.class: FlowHead does not model"):
        build(NextXPipeline, vq, head={"class": "FlowHead"})


def test_a_head_of_another_width_than_the_gpt_is_refused_at_construction():
    gpt = tiny_gpt(continuous=True)
    with pytest.raises(ValueError, match="head reads hidden states of width 16"):
        NextXPipeline(gpt=gpt, tokenizer=kl_tokenizer(), head=tiny_head(cond_dim=16), conditioner=continuous_pipe().conditioner)


def test_entity_option_errors():
    kl, vq = kl_tokenizer(), vq_tokenizer()
    gpt = tiny_gpt(continuous=True)
    cond = continuous_pipe("cell").conditioner
    make = lambda **kw: NextXPipeline(**{"gpt": gpt, "tokenizer": kl, "head": tiny_head(), "conditioner": cond, **kw})  # noqa: E731
    with pytest.raises(ValueError, match="entity must be one of"):
        make(entity="patch")
    with pytest.raises(ValueError, match=r"cell_size=3 must divide the token grid 4x4"):
        make(entity="cell", cell_size=3)
    with pytest.raises(ValueError, match=r"cell_size=3 must divide"):
        make(entity="subsample", cell_size=3)
    with pytest.raises(ValueError, match="cell_size must be a positive int"):
        make(entity="cell", cell_size=0)
    with pytest.raises(ValueError, match="entity='scale' needs continuous latents"):
        make(gpt=tiny_gpt(continuous=False, coord_rank=3), tokenizer=vq, head=discrete_pipe().head, entity="scale")
    with pytest.raises(ValueError, match="entity='scale' needs continuous latents"):
        build(NextXPipeline, vq, entity="scale")
    scale_gpt = tiny_gpt(continuous=True, coord_rank=3)
    with pytest.raises(ValueError, match=r"must end at the latent grid size 4, got \[1, 2\]"):
        make(gpt=scale_gpt, entity="scale", patch_nums=[1, 2])
    with pytest.raises(ValueError, match="strictly increasing"):
        make(gpt=scale_gpt, entity="scale", patch_nums=[2, 1, 4])
    with pytest.raises(ValueError, match="patch_nums is for entity='scale'"):
        make(entity="cell", patch_nums=[1, 2, 4])
    with pytest.raises(ValueError, match=r"the GPT's coord_rank=2 does not fit NextXPipeline .*coord_rank=3"):
        make(entity="scale")
    with pytest.raises(ValueError, match=r"the GPT's coord_rank=3 does not fit NextXPipeline .*coord_rank=2"):
        make(gpt=scale_gpt, entity="cell")
    with pytest.raises(ValueError, match="num_flow_steps must be a positive int"):
        make(num_flow_steps=0)


def test_a_body_longer_than_the_gpt_context_is_refused():
    short = tiny_gpt(continuous=True, max_seq_len=8)
    with pytest.raises(ValueError, match=r"the prefix \(1\) plus the body \(16 positions\) exceed the GPT's max_seq_len=8"):
        NextXPipeline(gpt=short, tokenizer=kl_tokenizer(), head=tiny_head(), conditioner=continuous_pipe().conditioner)
