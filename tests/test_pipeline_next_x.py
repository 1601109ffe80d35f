"""Fast tests of NextXPipeline (xAR next-X) and of the FlowHead it samples continuous entities with.

Tiny random components only: a KL tokenizer and a VQ tokenizer with a 4x4 latent grid, one-layer GPTs
and a one-block flow head whose zero-initialised layers are perturbed, so that (as after training) the
GPT's hidden states steer the samples. Nothing is downloaded.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import diffusers
import numpy as np
import PIL.Image
import pytest
import torch
from diffusers.utils import dynamic_modules_utils

from mmgen import GPT, GPTConfig
from mmgen.flow_head import FlowHead, FlowHeadConfig
from pipelines.next_x import NextXPipeline, subsample_layout
from tokenizers_visual import KLConfig, KLImageTokenizer, VQConfig, VQImageTokenizer

pytestmark = pytest.mark.usefixtures("one_torch_thread")

IMAGE_SIZE = 16
GRID = 4
LATENT_DIM = 4
CODEBOOK = 32
NUM_CLASSES = 5
DIM = 32
FLOW_STEPS = 3
GROUPS = {"token": GRID * GRID, "cell": 4, "subsample": 4, "scale": 3, "image": 1}  # cell_size 2, scales 1, 2, 4
DISCRETE_ENTITIES = ["token", "cell", "subsample", "image"]


# ---- tiny components -------------------------------------------------------------------------------
def kl_tokenizer() -> KLImageTokenizer:
    torch.manual_seed(0)
    return KLImageTokenizer(KLConfig(image_size=IMAGE_SIZE, downsample=4, channels=8, channel_mult=[1, 1, 1],
                                     latent_dim=LATENT_DIM))


def vq_tokenizer() -> VQImageTokenizer:
    torch.manual_seed(0)
    return VQImageTokenizer(VQConfig(image_size=IMAGE_SIZE, downsample=4, channels=8, channel_mult=[1, 1, 1],
                                     z_channels=8, codebook_size=CODEBOOK, codebook_dim=4))


def tiny_gpt(*, continuous: bool, coord_rank: int = 2, vocab_size: int = CODEBOOK, input_dim: int = LATENT_DIM) -> GPT:
    """A random GPT with unit-scale class embeddings, so the class visibly steers samples."""
    torch.manual_seed(1)
    gpt = GPT(GPTConfig(vocab_size=vocab_size, dim=DIM, n_layers=1, n_heads=2, coord_rank=coord_rank,
                        num_classes=NUM_CLASSES, start_token=True, max_seq_len=64,
                        input_dim=input_dim if continuous else 0))
    torch.nn.init.normal_(gpt.class_embedding.weight, std=1.0)
    return gpt


def tiny_head(*, latent_dim: int = LATENT_DIM, cond_dim: int = DIM, perturb: bool = True) -> FlowHead:
    """A one-block head; ``perturb`` moves its zero-initialised layers off zero so the condition matters."""
    torch.manual_seed(2)
    head = FlowHead(FlowHeadConfig(latent_dim=latent_dim, cond_dim=cond_dim, width=32, depth=1))
    if perturb:
        with torch.no_grad():
            for p in head.parameters():
                p.add_(torch.randn_like(p) * 0.2)
    return head


def continuous_pipe(entity: str = "cell", **config) -> NextXPipeline:
    gpt = tiny_gpt(continuous=True, coord_rank=3 if entity == "scale" else 2)
    pipe = NextXPipeline(gpt=gpt, tokenizer=kl_tokenizer(), head=tiny_head(), entity=entity,
                         num_flow_steps=FLOW_STEPS, **config)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def discrete_pipe(entity: str = "cell", **config) -> NextXPipeline:
    pipe = NextXPipeline(gpt=tiny_gpt(continuous=False), tokenizer=vq_tokenizer(), entity=entity, **config)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def gens(*seeds: int) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(s) for s in seeds]


def images_batch(batch_size: int = 4) -> torch.Tensor:
    torch.manual_seed(3)
    return torch.rand(batch_size, 3, IMAGE_SIZE, IMAGE_SIZE) * 2 - 1


def count_gpt_forwards(pipe: NextXPipeline, monkeypatch) -> list[int]:
    calls: list[int] = []
    forward = pipe.gpt.hidden_states

    def counted(*args, **kwargs):
        calls.append(1)
        return forward(*args, **kwargs)

    monkeypatch.setattr(pipe.gpt, "hidden_states", counted)
    return calls


# ---- generation --------------------------------------------------------------------------------------
@pytest.mark.parametrize("entity", list(GROUPS))
def test_every_continuous_entity_generates_with_one_gpt_step_per_group(entity, monkeypatch):
    pipe = continuous_pipe(entity, null_condition_trained=True)
    assert pipe.num_groups == GROUPS[entity]
    forwards = count_gpt_forwards(pipe, monkeypatch)
    steps: list[int] = []
    out = pipe(class_labels=[1, 2], guidance_scale=2.0, generator=gens(0, 1), output_type="pt",
               callback_on_step_end=lambda p, step, t, kw: steps.append(step))
    assert len(forwards) == GROUPS[entity]
    assert steps == list(range(GROUPS[entity]))
    assert out.images.shape == (2, 3, IMAGE_SIZE, IMAGE_SIZE)
    assert out.tokens.shape == (2, LATENT_DIM, GRID, GRID) and out.tokens.is_floating_point()
    assert torch.isfinite(out.tokens).all()
    with torch.no_grad():
        torch.testing.assert_close(out.images, (pipe.tokenizer.decode(out.tokens) / 2 + 0.5).clamp(0, 1))


@pytest.mark.parametrize("entity", DISCRETE_ENTITIES)
def test_every_discrete_entity_generates_with_one_gpt_step_per_group(entity, monkeypatch):
    pipe = discrete_pipe(entity, null_condition_trained=True)
    forwards = count_gpt_forwards(pipe, monkeypatch)
    steps: list[int] = []
    out = pipe(class_labels=[1, 2, 3], guidance_scale=2.0, generator=gens(0, 1, 2), output_type="pt",
               callback_on_step_end=lambda p, step, t, kw: steps.append(step))
    assert len(forwards) == GROUPS[entity] == pipe.num_groups
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
    images, tokens = pipe(class_labels=[1, 2], generator=gens(0, 1), output_type="pt", return_dict=False)
    torch.testing.assert_close(images, pt)
    torch.testing.assert_close(tokens, tokens_only.tokens)
    with pytest.raises(ValueError, match="output_type"):
        pipe(class_labels=[1], output_type="latent")


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
    pipe = discrete_pipe("subsample")
    batch = pipe(class_labels=[1, 2, 3], generator=gens(0, 1, 2), output_type="pt")
    single = pipe(class_labels=[2], generator=gens(1), output_type="pt")
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


def test_untrained_head_at_zero_temperature_returns_the_latent_mean():
    """Zero-initialised head: velocity 0, so with no initial noise every token is the denormalised 0 = latent_mean."""
    pipe = NextXPipeline(gpt=tiny_gpt(continuous=True), tokenizer=kl_tokenizer(), head=tiny_head(perturb=False),
                         entity="cell", num_flow_steps=2)
    pipe.set_progress_bar_config(disable=True)
    mean = torch.tensor([1.0, -2.0, 3.0, 0.5])
    pipe.head.latent_mean.copy_(mean)
    pipe.head.latent_std.copy_(torch.tensor([2.0, 2.0, 2.0, 2.0]))
    a = pipe(class_labels=[1, 2], temperature=0.0, generator=gens(0, 1), output_type="tokens").tokens
    b = pipe(class_labels=[1, 2], temperature=0.0, generator=gens(5, 6), output_type="tokens").tokens
    torch.testing.assert_close(a, mean.view(1, -1, 1, 1).expand(2, -1, GRID, GRID))
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match="temperature"):
        pipe(class_labels=[1], temperature=-1.0)
    with pytest.raises(ValueError, match="num_flow_steps"):
        pipe(class_labels=[1], num_flow_steps=0)


def test_guidance_needs_a_null_condition_trained_model():
    with pytest.raises(ValueError, match="null_condition_trained"):
        continuous_pipe("cell")(class_labels=[1], guidance_scale=2.0)


# ---- layouts and entities ----------------------------------------------------------------------------
def test_subsample_groups_are_strided_phases():
    layout = subsample_layout((GRID, GRID), 2)
    yx = layout.coords[0].long()
    groups = layout.groups[0]
    assert layout.num_groups == 4 and sorted(map(tuple, yx.tolist())) == [(y, x) for y in range(GRID) for x in range(GRID)]
    for g in range(4):
        phases = {(y % 2, x % 2) for y, x in yx[groups == g].tolist()}
        assert phases == {divmod(g, 2)}


@pytest.mark.parametrize("entity", ["token", "cell", "subsample", "image"])
def test_entities_split_the_grid_and_assemble_back(entity):
    for pipe in (continuous_pipe(entity), discrete_pipe(entity)):
        tokens = pipe.tokenize(images_batch(2))
        parts = pipe.entities(tokens)
        assert len(parts) == GROUPS[entity] and len({p.shape[1] for p in parts}) == 1
        assert torch.equal(pipe.assemble(parts), tokens)


def test_scale_entities_are_area_downsampled_latents():
    pipe = continuous_pipe("scale")
    assert pipe.config.patch_nums == [1, 2, GRID]
    latents = pipe.tokenize(images_batch(2))
    parts = pipe.entities(latents)
    assert [p.shape[1] for p in parts] == [1, 4, GRID * GRID]
    torch.testing.assert_close(parts[0][:, 0], latents.mean(dim=(2, 3)))
    torch.testing.assert_close(parts[1][:, 0], latents[:, :, :2, :2].mean(dim=(2, 3)))
    assert torch.equal(pipe.assemble(parts), latents)


# ---- save / load -------------------------------------------------------------------------------------
@pytest.fixture
def modules_cache(tmp_path, monkeypatch) -> Path:
    """Keep diffusers' copies of the shim module in tmp_path (its cache folder is read once at import)."""
    cache = tmp_path / "hf_modules"
    monkeypatch.setattr(dynamic_modules_utils, "HF_MODULES_CACHE", str(cache))
    monkeypatch.setattr(sys, "path", list(sys.path))
    return cache


@pytest.mark.usefixtures("modules_cache")
@pytest.mark.parametrize("make", [continuous_pipe, discrete_pipe])
def test_save_and_load_with_both_loaders_gives_the_same_samples(make, tmp_path):
    pipe = make("subsample", null_condition_trained=True)
    if pipe.is_continuous:
        pipe.set_latent_statistics(images_batch())
    folder = tmp_path / "saved"
    pipe.save_pretrained(folder)
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == ["mmgen_pipeline", "NextXPipeline"]
    assert index["entity"] == "subsample" and index["null_condition_trained"] is True
    assert index["head"] == (["mmgen.flow_head", "FlowHead"] if pipe.is_continuous else [None, None])
    expected = pipe(class_labels=[0, 3], guidance_scale=2.0, generator=gens(5, 6), output_type="pt")
    for loaded in (NextXPipeline.from_pretrained(folder),
                   diffusers.DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)):
        assert isinstance(loaded, NextXPipeline)
        assert loaded.config.entity == "subsample" and loaded.config.num_flow_steps == pipe.config.num_flow_steps
        assert (loaded.head is None) == (not pipe.is_continuous)
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
    images = images_batch(6)
    pipe.set_latent_statistics(images)
    latents = pipe.tokenize(images)
    per_channel = latents.transpose(0, 1).flatten(1)
    torch.testing.assert_close(per_channel.mean(1), torch.zeros(LATENT_DIM), atol=1e-5, rtol=0)
    torch.testing.assert_close(per_channel.std(1), torch.ones(LATENT_DIM), atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="continuous"):
        discrete_pipe("cell").set_latent_statistics(images)


@pytest.mark.parametrize("entity", list(GROUPS))
def test_noisy_context_changes_inputs_but_not_targets_and_clean_context_matches_generation(entity):
    pipe = continuous_pipe(entity)
    latents = pipe.tokenize(images_batch(2))
    noisy, targets = pipe.teacher_inputs(latents, generator=torch.Generator().manual_seed(0))
    clean, clean_targets = pipe.teacher_inputs(latents, noisy_context=False)
    L = pipe.body_layout().seq_len
    assert noisy.shape == clean.shape == (2, L, DIM) and targets.shape == (2, L, LATENT_DIM)
    assert torch.equal(targets, clean_targets)
    assert torch.equal(targets, torch.cat(pipe.entities(latents), dim=1))
    first = pipe.body_layout().groups[0].tolist().count(0)
    assert torch.equal(noisy[:, :first], clean[:, :first])
    if pipe.num_groups > 1:
        assert not torch.allclose(noisy[:, first:], clean[:, first:], atol=1e-3)
    parts = pipe.entities(latents)
    with torch.no_grad():
        generation = torch.cat([pipe.group_inputs(k, parts, 2) for k in range(pipe.num_groups)], dim=1)
    torch.testing.assert_close(clean, generation)


def test_discrete_teacher_inputs_are_the_clean_previous_entity():
    pipe = discrete_pipe("cell")
    ids = pipe.tokenize(images_batch(2))
    assert ids.shape == (2, GRID, GRID) and ids.dtype == torch.long
    inputs, targets = pipe.teacher_inputs(ids)
    parts = pipe.entities(ids)
    assert torch.equal(targets, torch.cat(parts, dim=1))
    torch.testing.assert_close(inputs[:, 4:8], pipe.gpt.embed_tokens(parts[0]))


@pytest.mark.parametrize(("make", "entity"), [(continuous_pipe, "cell"), (continuous_pipe, "scale"), (discrete_pipe, "subsample")])
def test_training_loss_is_finite_and_decreases_on_a_fixed_batch(make, entity):
    pipe = make(entity)
    tokens = pipe.tokenize(images_batch(4))
    labels = torch.tensor([0, 1, 2, 3])
    modules = [pipe.gpt] + ([pipe.head] if pipe.head is not None else [])
    opt = torch.optim.Adam([p for m in modules for p in m.parameters()], lr=3e-3)
    torch.manual_seed(0)
    losses = []
    for step in range(30):
        loss, logs = pipe.loss(tokens, class_labels=labels, cond_drop_prob=0.1, generator=torch.Generator().manual_seed(step))
        assert torch.isfinite(loss) and set(logs) == ({"flow"} if pipe.is_continuous else {"ce", "accuracy"})
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5])
    assert pipe.config.null_condition_trained is True


def test_teacher_inputs_reject_tokens_of_the_wrong_kind():
    with pytest.raises(ValueError, match="normalised latents"):
        continuous_pipe("cell").teacher_inputs(torch.zeros(2, GRID, GRID, dtype=torch.long))
    with pytest.raises(ValueError, match="ids"):
        discrete_pipe("cell").teacher_inputs(torch.zeros(2, LATENT_DIM, GRID, GRID))


# ---- bad construction --------------------------------------------------------------------------------
def test_construction_errors_name_both_sizes():
    kl, vq = kl_tokenizer(), vq_tokenizer()
    gpt = tiny_gpt(continuous=True)
    with pytest.raises(ValueError, match=r"head.latent_dim=3 does not match the tokenizer's latent_dim=4"):
        NextXPipeline(gpt=gpt, tokenizer=kl, head=tiny_head(latent_dim=3))
    with pytest.raises(ValueError, match=r"head.cond_dim=16 does not match the GPT's dim=32"):
        NextXPipeline(gpt=gpt, tokenizer=kl, head=tiny_head(cond_dim=16))
    with pytest.raises(ValueError, match=r"input_dim=2 must equal the tokenizer's latent_dim=4"):
        NextXPipeline(gpt=tiny_gpt(continuous=True, input_dim=2), tokenizer=kl, head=tiny_head())
    with pytest.raises(ValueError, match="needs a FlowHead"):
        NextXPipeline(gpt=gpt, tokenizer=kl)
    with pytest.raises(TypeError, match="head must be an mmgen.FlowHead"):
        NextXPipeline(gpt=gpt, tokenizer=kl, head=torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="pass head=None"):
        NextXPipeline(gpt=tiny_gpt(continuous=False), tokenizer=vq, head=tiny_head())
    with pytest.raises(ValueError, match=r"vocabulary \(16,\) does not match the tokenizer's codebook of 32"):
        NextXPipeline(gpt=tiny_gpt(continuous=False, vocab_size=16), tokenizer=vq)
    with pytest.raises(TypeError, match="tokenizer must be"):
        NextXPipeline(gpt=gpt, tokenizer=torch.nn.Linear(2, 2), head=tiny_head())


def test_entity_option_errors():
    kl, vq = kl_tokenizer(), vq_tokenizer()
    gpt = tiny_gpt(continuous=True)
    with pytest.raises(ValueError, match="entity must be one of"):
        NextXPipeline(gpt=gpt, tokenizer=kl, head=tiny_head(), entity="patch")
    with pytest.raises(ValueError, match=r"cell_size=3 must divide the latent grid 4x4"):
        NextXPipeline(gpt=gpt, tokenizer=kl, head=tiny_head(), entity="cell", cell_size=3)
    with pytest.raises(ValueError, match=r"cell_size=3 must divide"):
        NextXPipeline(gpt=gpt, tokenizer=kl, head=tiny_head(), entity="subsample", cell_size=3)
    with pytest.raises(ValueError, match="cell_size must be a positive int"):
        NextXPipeline(gpt=gpt, tokenizer=kl, head=tiny_head(), entity="cell", cell_size=0)
    with pytest.raises(ValueError, match="entity='scale' needs continuous latents"):
        NextXPipeline(gpt=tiny_gpt(continuous=False, coord_rank=3), tokenizer=vq, entity="scale")
    scale_gpt = tiny_gpt(continuous=True, coord_rank=3)
    with pytest.raises(ValueError, match=r"must end at the latent grid size 4, got \[1, 2\]"):
        NextXPipeline(gpt=scale_gpt, tokenizer=kl, head=tiny_head(), entity="scale", patch_nums=[1, 2])
    with pytest.raises(ValueError, match="strictly increasing"):
        NextXPipeline(gpt=scale_gpt, tokenizer=kl, head=tiny_head(), entity="scale", patch_nums=[2, 1, 4])
    with pytest.raises(ValueError, match="patch_nums is for entity='scale'"):
        NextXPipeline(gpt=gpt, tokenizer=kl, head=tiny_head(), entity="cell", patch_nums=[1, 2, 4])
    with pytest.raises(ValueError, match=r"coordinate rank 3; the GPT has coord_rank=2"):
        NextXPipeline(gpt=gpt, tokenizer=kl, head=tiny_head(), entity="scale")
    with pytest.raises(ValueError, match=r"coordinate rank 2; the GPT has coord_rank=3"):
        NextXPipeline(gpt=scale_gpt, tokenizer=kl, head=tiny_head(), entity="cell")
    with pytest.raises(ValueError, match="num_flow_steps must be a positive int"):
        NextXPipeline(gpt=gpt, tokenizer=kl, head=tiny_head(), num_flow_steps=0)


def test_a_body_longer_than_the_gpt_context_is_refused():
    torch.manual_seed(1)
    short = GPT(GPTConfig(vocab_size=CODEBOOK, dim=DIM, n_layers=1, n_heads=2, coord_rank=2, num_classes=NUM_CLASSES,
                          start_token=True, max_seq_len=8, input_dim=LATENT_DIM))
    with pytest.raises(ValueError, match=r"body \(16 positions\) exceed the GPT's max_seq_len=8"):
        NextXPipeline(gpt=short, tokenizer=kl_tokenizer(), head=tiny_head())
