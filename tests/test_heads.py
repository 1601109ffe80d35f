"""Fast tests of the heads behind one interface (mmgen.heads): categorical, depth and flow.

Tiny random heads on random hidden states. The categorical head with one codebook is checked bit for
bit against today's pipeline sampling (``ARImagePipeline.sample_ids``, re-implemented here) and the flow
head against ``NextXPipeline._draw_latents`` / ``group_noise``, so switching the pipelines to the heads
keeps every seeded sample.
"""

from __future__ import annotations

import pytest
import torch

from mmgen import GPT, GPTConfig
from mmgen.flow_head import DEFAULT_NUM_FLOW_STEPS
from mmgen.heads import (
    CODEBOOK_SEED_STRIDE,
    CategoricalHead,
    CategoricalHeadConfig,
    DepthHead,
    DepthHeadConfig,
    FlowHead,
    FlowHeadConfig,
    Head,
)
from mmgen.sampling import SamplingConfig, sample
from mmgen.tokens import ContinuousContent, DiscreteContent

pytestmark = pytest.mark.usefixtures("one_torch_thread")

DIM = 32
LATENT_DIM = 3
SIZES = [7, 5, 6]
B, N = 2, 5


# ---- tiny heads ------------------------------------------------------------------------------------
def categorical(sizes: list[int] = SIZES) -> CategoricalHead:
    torch.manual_seed(0)
    head = CategoricalHead(CategoricalHeadConfig(dim=DIM, codebook_sizes=sizes))
    with torch.no_grad():
        for p in head.parameters():
            p.normal_(std=0.5)  # logits of order 1: draws depend on the hidden states
    return head


def depth(sizes: list[int] = SIZES, *, tied: bool = False) -> DepthHead:
    torch.manual_seed(0)
    return DepthHead(DepthHeadConfig(dim=DIM, codebook_sizes=sizes, width=16, depth=1, n_heads=2, tied=tied))


def tied_depth(sizes: list[int]) -> DepthHead:
    return depth(sizes, tied=True)


def flow(*, perturb: bool = True) -> FlowHead:
    """A one-block flow head; ``perturb`` moves its zero-initialised layers off zero so hidden states matter."""
    torch.manual_seed(0)
    head = FlowHead(FlowHeadConfig(latent_dim=LATENT_DIM, cond_dim=DIM, width=16, depth=1, time_freq_dim=8))
    if perturb:
        with torch.no_grad():
            for p in head.parameters():
                p.add_(torch.randn_like(p) * 0.2)
    return head


def hidden(rows: int = B, n: int = N, *, seed: int = 1) -> torch.Tensor:
    return torch.randn(rows, n, DIM, generator=torch.Generator().manual_seed(seed))


def ids_for(sizes: list[int], *, rows: int = B, n: int = N, seed: int = 2) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    ids = torch.stack([torch.randint(0, v, (rows, n), generator=gen) for v in sizes], dim=-1)
    return ids[..., 0] if len(sizes) == 1 else ids


def seeds(base: list[int], slot: int = 0, n: int = N) -> torch.Tensor:
    """The engine's per-position seeds: sample seed + slot of the position."""
    return torch.tensor(base).view(-1, 1) + torch.arange(slot, slot + n).view(1, n)


def greedy(**kw) -> SamplingConfig:
    return SamplingConfig(temperature=0.0, **kw)


def tiny_gpt(sizes: list[int] | int) -> GPT:
    torch.manual_seed(3)
    return GPT(GPTConfig(vocab_size=sizes, dim=DIM, n_layers=1, n_heads=2, input_dim=LATENT_DIM))


def fit(head: Head, hidden_BLD: torch.Tensor, targets: torch.Tensor, *, steps: int = 40) -> list[float]:
    """Losses while Adam fits a fixed batch (flow: a fixed generator seed, so every step sees the same noise)."""
    opt = torch.optim.Adam(head.parameters(), lr=1e-2)
    losses = []
    for _ in range(steps):
        loss, _ = head.loss(hidden_BLD, targets, generator=torch.Generator().manual_seed(0))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


# ---- today's sampling code, re-implemented (pipelines/base.py, pipelines/next_x.py) ----------------
def sample_ids_today(logits_RnV, *, guidance, seeds_B, slot_offset, options):
    if logits_RnV.shape[0] == 2 * seeds_B.shape[0]:
        cond, uncond = logits_RnV.chunk(2)
    else:
        cond, uncond = logits_RnV, None
    b, n, V = cond.shape
    row_seeds = (seeds_B.view(b, 1) + torch.arange(slot_offset, slot_offset + n).view(1, n)).reshape(-1)
    ids = sample(cond.reshape(b * n, V).float(),
                 uncond_logits=None if uncond is None else uncond.reshape(b * n, V).float(),
                 guidance_scale=guidance, temperature=options["temperature"], top_k=options["top_k"],
                 top_p=options["top_p"], min_p=options["min_p"], seed=row_seeds)
    return ids.view(b, n)


def draw_latents_today(head, hidden_RnD, *, guidance, seeds_B, slot_offset, options):
    b, n, D = seeds_B.shape[0], hidden_RnD.shape[1], hidden_RnD.shape[2]
    cond, uncond = hidden_RnD.chunk(2) if hidden_RnD.shape[0] == 2 * b else (hidden_RnD, None)
    rows = [torch.randn(n, head.latent_dim, generator=torch.Generator().manual_seed(int(s) + slot_offset))
            for s in seeds_B.tolist()]
    noise = torch.cat(rows) * options["temperature"]
    latents = head.sample(cond.reshape(b * n, D), num_steps=options["num_flow_steps"], noise_NC=noise,
                          guidance=guidance,
                          z_uncond_ND=None if uncond is None or guidance == 1.0 else uncond.reshape(b * n, D))
    return latents.view(b, n, -1)


# ---- interface ---------------------------------------------------------------------------------------
def test_heads_declare_their_content():
    assert categorical().content == DiscreteContent(tuple(SIZES))
    assert depth([4]).content == DiscreteContent((4,))
    assert flow().content == ContinuousContent(LATENT_DIM)
    assert all(isinstance(h, Head) for h in (categorical(), depth(), flow()))


# ---- training ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("make,sizes", [(categorical, [7]), (categorical, SIZES), (depth, SIZES), (tied_depth, [6] * 4)],
                         ids=["categorical-1", "categorical-3", "depth-3", "tied-depth-4"])
def test_discrete_loss_falls_when_fitting_a_batch(make, sizes):
    head = make(sizes)
    losses = fit(head, hidden(), ids_for(sizes))
    assert losses[-1] < 0.5 * losses[0]
    _, logs = head.loss(hidden(), ids_for(sizes))
    assert set(logs) == {"ce", "accuracy"} and all(isinstance(v, float) for v in logs.values())
    assert logs["accuracy"] > 0.8


def test_flow_loss_falls_when_fitting_a_batch():
    head = flow(perturb=False)
    targets = torch.randn(B, N, LATENT_DIM, generator=torch.Generator().manual_seed(4))
    losses = fit(head, hidden(), targets, steps=40)
    assert losses[-1] < 0.7 * losses[0]
    _, logs = head.loss(hidden(), targets)
    assert set(logs) == {"flow"} and isinstance(logs["flow"], float)


def test_categorical_loss_is_todays_cross_entropy_and_accuracy():
    head = categorical([7])
    h, ids = hidden(), ids_for([7])
    loss, logs = head.loss(h, ids)
    logits = head.logits(h)
    torch.testing.assert_close(loss, torch.nn.functional.cross_entropy(logits.flatten(0, 1), ids.flatten()))
    assert logs["accuracy"] == pytest.approx((logits.argmax(-1) == ids).float().mean().item())


@pytest.mark.parametrize("make", [categorical, depth])
def test_masked_positions_and_entries_do_not_affect_the_discrete_loss(make):
    head = make(SIZES)
    h, ids = hidden(), ids_for(SIZES)
    positions = torch.rand(B, N, generator=torch.Generator().manual_seed(5)) < 0.6
    other = torch.where(positions.unsqueeze(-1), ids, ids_for(SIZES, seed=9))
    assert not torch.equal(other, ids)
    loss, _ = head.loss(h, ids, mask=positions)
    assert torch.equal(head.loss(h, other, mask=positions)[0], loss)
    assert not torch.equal(head.loss(h, ids)[0], loss)
    # the kept positions alone give the same mean
    torch.testing.assert_close(head.loss(h[positions].unsqueeze(0), ids[positions].unsqueeze(0))[0], loss)


def test_masked_codebook_entries_are_left_out_of_the_categorical_loss():
    head = categorical(SIZES)
    h, ids = hidden(), ids_for(SIZES)
    entries = torch.rand(B, N, len(SIZES), generator=torch.Generator().manual_seed(6)) < 0.5
    other = torch.where(entries, ids, ids_for(SIZES, seed=9))
    loss, logs = head.loss(h, ids, mask=entries)
    assert torch.equal(head.loss(h, other, mask=entries)[0], loss)
    by_hand = torch.cat([torch.nn.functional.cross_entropy(l[entries[..., d]], ids[..., d][entries[..., d]], reduction="none")
                         for d, l in enumerate(head.logits(h))]).mean()
    torch.testing.assert_close(loss, by_hand)


def test_masked_positions_do_not_affect_the_flow_loss():
    head = flow()
    h = hidden()
    targets = torch.randn(B, N, LATENT_DIM)
    keep = torch.rand(B, N, generator=torch.Generator().manual_seed(5)) < 0.6
    other = torch.where(keep.unsqueeze(-1), targets, targets + 10.0)

    def loss_of(t, mask=keep):
        return head.loss(h, t, mask=mask, generator=torch.Generator().manual_seed(0))[0]

    assert torch.equal(loss_of(other), loss_of(targets))
    assert not torch.equal(loss_of(other, None), loss_of(targets, None))
    flat = head.flow_loss(targets[keep], h[keep], generator=torch.Generator().manual_seed(0))
    assert torch.equal(loss_of(targets), flat)


# ---- sampling: categorical ---------------------------------------------------------------------------
@pytest.mark.parametrize("sizes", [[7], SIZES], ids=["1-codebook", "3-codebooks"])
def test_greedy_categorical_sample_is_the_argmax(sizes):
    head = categorical(sizes)
    h = hidden()
    ids = head.sample(h, sampling=greedy(), guidance_scale=1.0, seeds_Bn=seeds([0, 1]))
    logits = head.logits(h)
    expected = logits.argmax(-1) if len(sizes) == 1 else torch.stack([l.argmax(-1) for l in logits], dim=-1)
    assert torch.equal(ids, expected)


@pytest.mark.parametrize("make", [categorical, depth])
def test_discrete_draws_follow_their_seeds(make):
    head = make(SIZES)
    h = hidden()
    cfg = SamplingConfig(temperature=1.5)
    draw = lambda s: head.sample(h, sampling=cfg, guidance_scale=1.0, seeds_Bn=s)  # noqa: E731
    first = draw(seeds([10, 20]))
    assert first.shape == (B, N, len(SIZES)) and first.dtype == torch.long
    assert torch.equal(draw(seeds([10, 20])), first)
    assert not torch.equal(draw(seeds([11, 21])), first)
    # a sample's draw depends on its own seeds only, not on the batch around it
    alone = head.sample(h[1:], sampling=cfg, guidance_scale=1.0, seeds_Bn=seeds([20]))
    assert torch.equal(alone, first[1:])


def test_categorical_codebooks_use_the_seed_stride():
    head = categorical(SIZES)
    h, s = hidden(), seeds([3, 4])
    cfg = SamplingConfig(temperature=1.0, top_k=4)
    ids = head.sample(h, sampling=cfg, guidance_scale=1.0, seeds_Bn=s)
    for d, logits in enumerate(head.logits(h)):
        by_hand = cfg.sample(logits.reshape(B * N, -1), seed=(s + d * CODEBOOK_SEED_STRIDE).reshape(-1))
        assert torch.equal(ids[..., d], by_hand.view(B, N))


@pytest.mark.parametrize("guidance,guided_rows", [(1.0, False), (1.0, True), (2.5, True)])
@pytest.mark.parametrize("options", [dict(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0),
                                     dict(temperature=0.8, top_k=4, top_p=0.9, min_p=0.05)])
def test_one_codebook_matches_todays_sample_ids_bit_for_bit(guidance, guided_rows, options):
    head = categorical([7])
    h = hidden(2 * B if guided_rows else B)
    seeds_B, slot = torch.tensor([12345, 777]), 6
    expected = sample_ids_today(head.logits(h), guidance=guidance, seeds_B=seeds_B, slot_offset=slot, options=options)
    got = head.sample(h, sampling=SamplingConfig(**options), guidance_scale=guidance,
                      seeds_Bn=seeds(seeds_B.tolist(), slot))
    assert torch.equal(got, expected)


def test_categorical_guidance_combines_the_uncond_rows():
    head = categorical(SIZES)
    h = hidden(2 * B)
    s = seeds([0, 1])
    for d, logits in enumerate(head.logits(h)):
        cond, uncond = logits[:B], logits[B:]
        combined = cond + (torch.tensor(3.0) - 1.0) * (cond - uncond)
        ids = head.sample(h, sampling=greedy(), guidance_scale=3.0, seeds_Bn=s)[..., d]
        assert torch.equal(ids, combined.argmax(-1))
        drawn = head.sample(h, sampling=SamplingConfig(), guidance_scale=3.0, seeds_Bn=s)[..., d]
        by_hand = sample(combined.reshape(B * N, -1), seed=(s + d * CODEBOOK_SEED_STRIDE).reshape(-1))
        assert torch.equal(drawn, by_hand.view(B, N))
    # at guidance 1 the uncond rows are ignored
    unguided = head.sample(h[:B], sampling=SamplingConfig(), guidance_scale=1.0, seeds_Bn=s)
    assert torch.equal(head.sample(h, sampling=SamplingConfig(), guidance_scale=1.0, seeds_Bn=s), unguided)
    assert not torch.equal(head.sample(h, sampling=greedy(), guidance_scale=3.0, seeds_Bn=s),
                           head.sample(h[:B], sampling=greedy(), guidance_scale=1.0, seeds_Bn=s))


# ---- sampling: depth ---------------------------------------------------------------------------------
def test_greedy_depth_sample_is_the_argmax_of_its_teacher_forced_logits():
    head = depth(SIZES)
    h = hidden()
    with torch.no_grad():
        ids = head.sample(h, sampling=greedy(), guidance_scale=1.0, seeds_Bn=seeds([0, 1]))
        logits = head.logits(h, ids)
    assert torch.equal(ids, torch.stack([l.argmax(-1) for l in logits], dim=-1))
    # each codebook is drawn knowing the codes before it: other previous codes change the logits
    other = (ids + 1) % torch.tensor(SIZES)
    moved = head.logits(h, torch.cat([other[..., :1], ids[..., 1:]], dim=-1))
    assert torch.equal(moved[0], logits[0]) and not torch.allclose(moved[1], logits[1])


def test_a_tied_depth_head_shares_one_table_and_projection_across_its_steps():
    """tied: the entries of one vocabulary (a video frame's ids) share the code table and the output projection."""
    head = tied_depth([6] * 4)
    assert len(head.code_embeddings) == len(head.projections) == 1
    untied = depth([6] * 4)
    assert len(untied.code_embeddings) == 3 and len(untied.projections) == 4
    h = hidden()
    with torch.no_grad():
        ids = head.sample(h, sampling=greedy(), guidance_scale=1.0, seeds_Bn=seeds([0, 1]))
        logits = head.logits(h, ids)
    assert torch.equal(ids, torch.stack([l.argmax(-1) for l in logits], dim=-1))
    with pytest.raises(ValueError, match=r"tied=True needs codebooks of one size .* got codebook_sizes=\[4, 6\]"):
        DepthHeadConfig(dim=DIM, codebook_sizes=[4, 6], tied=True)


def test_depth_guidance_runs_cond_and_uncond_rows_on_their_own_hidden_states():
    head = depth(SIZES)
    h = hidden(2 * B)
    with torch.no_grad():
        ids = head.sample(h, sampling=greedy(), guidance_scale=2.0, seeds_Bn=seeds([0, 1]))
        codes = torch.zeros(B, N, len(SIZES), dtype=torch.long)
        for d in range(len(SIZES)):  # by hand: both halves see the codes drawn so far
            cond, uncond = head.logits(h[:B], codes)[d], head.logits(h[B:], codes)[d]
            codes[..., d] = (cond + (cond - uncond)).argmax(-1)
        unguided = head.sample(h[:B], sampling=greedy(), guidance_scale=1.0, seeds_Bn=seeds([0, 1]))
    assert torch.equal(ids, codes)
    assert not torch.equal(ids, unguided)
    assert torch.equal(head.sample(h, sampling=greedy(), guidance_scale=1.0, seeds_Bn=seeds([0, 1])), unguided)


def test_depth_head_with_one_codebook_gives_position_ids():
    head = depth([6])
    ids = head.sample(hidden(), sampling=SamplingConfig(), guidance_scale=1.0, seeds_Bn=seeds([0, 1]))
    assert ids.shape == (B, N)
    assert head.logits(hidden(), ids).shape == (B, N, 6)


# ---- sampling: flow ----------------------------------------------------------------------------------
@pytest.mark.parametrize("guidance,guided_rows", [(1.0, False), (1.0, True), (2.5, True)])
@pytest.mark.parametrize("temperature,steps", [(1.0, 3), (0.7, None)])
def test_flow_sample_matches_todays_draw_latents_bit_for_bit(guidance, guided_rows, temperature, steps):
    head = flow()
    h = hidden(2 * B if guided_rows else B)
    seeds_B, slot = torch.tensor([12345, 777]), 6
    options = {"temperature": temperature, "num_flow_steps": steps or DEFAULT_NUM_FLOW_STEPS}
    with torch.no_grad():
        expected = draw_latents_today(head, h, guidance=guidance, seeds_B=seeds_B, slot_offset=slot, options=options)
        got = head.sample(h, sampling=SamplingConfig(temperature=temperature, num_flow_steps=steps),
                          guidance_scale=guidance, seeds_Bn=seeds(seeds_B.tolist(), slot))
    assert got.shape == (B, N, LATENT_DIM)
    assert torch.equal(got, expected)


def test_flow_draws_follow_their_seeds_and_guidance_uses_the_uncond_rows():
    head = flow()
    h = hidden(2 * B)
    cfg = SamplingConfig(num_flow_steps=4)
    with torch.no_grad():
        first = head.sample(h[:B], sampling=cfg, guidance_scale=1.0, seeds_Bn=seeds([10, 20]))
        assert torch.equal(head.sample(h[:B], sampling=cfg, guidance_scale=1.0, seeds_Bn=seeds([10, 20])), first)
        assert not torch.equal(head.sample(h[:B], sampling=cfg, guidance_scale=1.0, seeds_Bn=seeds([11, 21])), first)
        guided = head.sample(h, sampling=cfg, guidance_scale=3.0, seeds_Bn=seeds([10, 20]))
        noise = torch.cat([torch.randn(N, LATENT_DIM, generator=torch.Generator().manual_seed(s)) for s in (10, 20)])
        by_hand = head.sample(h[:B].reshape(B * N, DIM), num_steps=4, noise_NC=noise, guidance=3.0,
                              z_uncond_ND=h[B:].reshape(B * N, DIM))
        assert torch.equal(guided, by_hand.view(B, N, LATENT_DIM))
        assert not torch.equal(guided, first)
        # temperature 0: no noise, a deterministic sample whatever the seeds
        still = SamplingConfig(temperature=0.0, num_flow_steps=4)
        assert torch.equal(head.sample(h[:B], sampling=still, guidance_scale=1.0, seeds_Bn=seeds([1, 2])),
                           head.sample(h[:B], sampling=still, guidance_scale=1.0, seeds_Bn=seeds([3, 4])))


# ---- GPT inputs, corruption, normalisation ------------------------------------------------------------
def test_discrete_heads_embed_with_the_gpts_tables_and_leave_ids_clean():
    gpt = tiny_gpt(SIZES)
    ids = ids_for(SIZES)
    for head in (categorical(), depth()):
        assert torch.equal(head.embed(gpt, ids), gpt.embed_tokens(ids))
        assert head.corrupt(ids) == (ids, None)
        assert head.normalize_tokens(ids) is ids and head.denormalize_tokens(ids) is ids


def test_flow_head_embeds_latents_with_their_noise_level():
    gpt, head = tiny_gpt(4), flow()
    x = torch.randn(B, N, LATENT_DIM)
    with torch.no_grad():
        clean = head.embed(gpt, x)
        assert clean.shape == (B, N, DIM)
        torch.testing.assert_close(clean, gpt.embed_inputs(x) + head.context_time(torch.ones(B)).unsqueeze(1))
        assert torch.equal(head.embed(gpt, x, noise_level=torch.ones(B)), clean)
        assert not torch.allclose(head.embed(gpt, x, noise_level=torch.tensor([0.2, 1.0]))[0], clean[0])


def test_flow_corrupt_interpolates_each_row_towards_noise_at_its_own_level():
    head = flow()
    x = torch.randn(B, N, LATENT_DIM)
    noised, t = head.corrupt(x, generator=torch.Generator().manual_seed(0))
    shifted, t_again = head.corrupt(x + 1.0, generator=torch.Generator().manual_seed(0))
    assert torch.equal(t, t_again) and t.shape == (B,) and bool(((t >= 0) & (t <= 1)).all())
    torch.testing.assert_close(shifted - noised, t.view(B, 1, 1).expand_as(x))  # x_t = t x + (1 - t) eps
    assert not torch.equal(head.corrupt(x, generator=torch.Generator().manual_seed(1))[0], noised)


def test_flow_normalize_tokens_is_channel_last_and_inverts():
    head = flow()
    latents_BChw = torch.randn(4, LATENT_DIM, 3, 3) * torch.tensor([1.0, 2.0, 0.5]).view(1, -1, 1, 1) + 3.0
    head.set_latent_statistics(latents_BChw)
    tokens = latents_BChw.permute(0, 2, 3, 1)  # [B, h, w, C]
    unit = head.normalize_tokens(tokens)
    assert torch.equal(unit, head.normalize(latents_BChw).permute(0, 2, 3, 1))
    torch.testing.assert_close(unit.reshape(-1, LATENT_DIM).std(0), torch.ones(LATENT_DIM))
    torch.testing.assert_close(head.denormalize_tokens(unit), tokens)


# ---- errors ------------------------------------------------------------------------------------------
BAD_CALLS = [
    ("hidden_BLD", lambda h: h.loss(torch.randn(B, N, DIM + 1), ids_for(SIZES))),
    ("targets", lambda h: h.loss(hidden(), ids_for(SIZES)[..., :2])),
    ("targets", lambda h: h.loss(hidden(), ids_for(SIZES, n=N - 1))),
    ("targets", lambda h: h.loss(hidden(), ids_for(SIZES).float())),
    ("mask", lambda h: h.loss(hidden(), ids_for(SIZES), mask=torch.ones(B, N))),
    ("mask", lambda h: h.loss(hidden(), ids_for(SIZES), mask=torch.ones(B, N + 1, dtype=torch.bool))),
    ("mask", lambda h: h.loss(hidden(), ids_for(SIZES), mask=torch.zeros(B, N, dtype=torch.bool))),
    ("hidden_RnD", lambda h: h.sample(torch.randn(B, N), sampling=SamplingConfig(), guidance_scale=1.0, seeds_Bn=seeds([0, 1]))),
    ("seeds_Bn", lambda h: h.sample(hidden(), sampling=SamplingConfig(), guidance_scale=1.0, seeds_Bn=seeds([0, 1, 2]))),
    ("seeds_Bn", lambda h: h.sample(hidden(), sampling=SamplingConfig(), guidance_scale=1.0, seeds_Bn=seeds([0, 1]).int())),
    ("seeds_Bn", lambda h: h.sample(hidden(), sampling=SamplingConfig(), guidance_scale=1.0, seeds_Bn=seeds([0, 1], n=N - 1))),
    ("sampling", lambda h: h.sample(hidden(), sampling={"temperature": 1.0}, guidance_scale=1.0, seeds_Bn=seeds([0, 1]))),
    ("guidance_scale", lambda h: h.sample(hidden(), sampling=SamplingConfig(), guidance_scale=float("nan"), seeds_Bn=seeds([0, 1]))),
    ("noise_level", lambda h: h.embed(tiny_gpt(SIZES), ids_for(SIZES), noise_level=torch.ones(B))),
    ("tokens", lambda h: h.corrupt(ids_for(SIZES)[..., :1])),
]


@pytest.mark.parametrize("make", [categorical, depth])
@pytest.mark.parametrize("name,call", BAD_CALLS, ids=[f"{name}-{i}" for i, (name, _) in enumerate(BAD_CALLS)])
def test_discrete_heads_reject_bad_arguments_by_name(make, name, call):
    with pytest.raises((ValueError, TypeError), match=name):
        call(make())


FLOW_BAD_CALLS = [
    ("hidden_BLD", lambda h: h.loss(torch.randn(B, N, DIM + 1), torch.randn(B, N, LATENT_DIM))),
    ("targets", lambda h: h.loss(hidden(), torch.randn(B, N, LATENT_DIM + 1))),
    ("targets", lambda h: h.loss(hidden(), ids_for([4]))),
    ("mask", lambda h: h.loss(hidden(), torch.randn(B, N, LATENT_DIM), mask=torch.ones(B, N, LATENT_DIM, dtype=torch.bool))),
    ("seeds_Bn", lambda h: h.sample(hidden(3), sampling=SamplingConfig(), guidance_scale=2.0, seeds_Bn=seeds([0, 1]))),
    ("not both", lambda h: h.sample(hidden(), sampling=SamplingConfig(), guidance_scale=1.0, seeds_Bn=seeds([0, 1]), num_steps=3)),
    ("noise_NC", lambda h: h.sample(torch.randn(4, DIM), num_steps=2, noise_NC=torch.randn(3, LATENT_DIM))),
    ("noise_level", lambda h: h.embed(tiny_gpt(4), torch.randn(B, N, LATENT_DIM), noise_level=torch.ones(B, N))),
    ("tokens", lambda h: h.corrupt(torch.randn(B, N, LATENT_DIM + 1))),
    ("tokens", lambda h: h.normalize_tokens(torch.randn(B, LATENT_DIM, 2, 2))),
]


@pytest.mark.parametrize("name,call", FLOW_BAD_CALLS, ids=[f"{name}-{i}" for i, (name, _) in enumerate(FLOW_BAD_CALLS)])
def test_flow_head_rejects_bad_arguments_by_name(name, call):
    with pytest.raises((ValueError, TypeError), match=name):
        call(flow())


@pytest.mark.parametrize("build,name", [
    (lambda: CategoricalHeadConfig(dim=0, codebook_sizes=[4]), "dim"),
    (lambda: CategoricalHeadConfig(dim=8, codebook_sizes=[]), "codebook_sizes"),
    (lambda: CategoricalHeadConfig(dim=8, codebook_sizes=[4, 0]), "codebook_sizes"),
    (lambda: DepthHeadConfig(dim=8, codebook_sizes=[4], width=10, n_heads=4), "n_heads"),
    (lambda: DepthHeadConfig(dim=8, codebook_sizes=[4], depth=0), "depth"),
    (lambda: SamplingConfig(num_flow_steps=0), "num_flow_steps"),
    (lambda: SamplingConfig(num_flow_steps=2.0), "num_flow_steps"),
])
def test_configs_reject_bad_fields_by_name(build, name):
    with pytest.raises(ValueError, match=name):
        build()


# ---- save / load ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("make", [categorical, depth, flow])
def test_save_and_load_round_trip_gives_identical_outputs(make, tmp_path):
    head = make()
    if isinstance(head, FlowHead):
        head.set_latent_statistics(torch.randn(8, LATENT_DIM) * 2 + 1)
        targets = torch.randn(B, N, LATENT_DIM)
    else:
        targets = ids_for(SIZES)
    head.save_pretrained(tmp_path)
    loaded = type(head).from_pretrained(tmp_path)
    assert loaded.cfg == head.cfg
    h, cfg = hidden(2 * B), SamplingConfig(num_flow_steps=2)
    with torch.no_grad():
        for model in (head, loaded):
            model.eval()
        outputs = [(m.loss(h[:B], targets, generator=torch.Generator().manual_seed(0))[0],
                    m.sample(h, sampling=cfg, guidance_scale=2.0, seeds_Bn=seeds([5, 6])),
                    m.normalize_tokens(targets) if isinstance(m, FlowHead) else targets)
                   for m in (head, loaded)]
    for got, expected in zip(*outputs):
        assert torch.equal(got, expected)
