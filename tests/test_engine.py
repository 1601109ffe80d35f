"""The one generation engine (:mod:`mmgen.generation`, :mod:`mmgen.programs`) end to end, for every modality.

Every tokenizer here is defined in this file and implements only :class:`mmgen.protocol.Tokenizer`
(a fixed random projection plus nearest-code lookup), so the engine is shown to need nothing else:
an 8-codebook audio codec (delay pattern with a categorical head, parallel pattern with a depth
head), a 1D multi-scale pyramid with its own :class:`~mmgen.protocol.ScaleContext`, a video-like
grid generated frame by frame after a prefilled first frame, and an octree-like :class:`Program`
whose group sizes follow from what was drawn. Each case trains a few steps on a fixed batch, then
generates; greedy generation must equal the argmax of one teacher-forced forward. Tiny sizes, CPU.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
import torch

from mmgen.conditioning import ClassConditioner, ClassConditionerConfig, Conditioning
from mmgen.generation import Decoder, GroupRequest, draw_seeds, generate, teacher_hidden
from mmgen.gpt import GPT, GPTConfig
from mmgen.heads import CategoricalHead, CategoricalHeadConfig, DepthHead
from mmgen.patterns import DelayCodebooks, Frames
from mmgen.programs import PatternProgram, PreviousGroupInputs
from mmgen.protocol import ScaleContext, Tokenizer, TokenSpec, check_tokenizer
from mmgen.sampling import SamplingConfig
from mmgen.tokens import DiscreteContent, TokenLayout
from pipelines import NextScalePipeline, NextTokenPipeline

pytestmark = pytest.mark.usefixtures("one_torch_thread")

DIM = 32
NUM_CLASSES = 4
LABELS = [0, 1, 2, 3]
GREEDY = SamplingConfig(temperature=0.0)
TRAIN_STEPS = 6


# ---- shared helpers --------------------------------------------------------------------------------
def conditioner() -> ClassConditioner:
    torch.manual_seed(0)
    return ClassConditioner(ClassConditionerConfig(dim=DIM, num_classes=NUM_CLASSES))


def train(modules: list[torch.nn.Module], loss_fn, *, steps: int = TRAIN_STEPS) -> list[float]:
    """A few Adam steps on a fixed batch; returns the losses (the caller checks that they fall)."""
    params = [p for m in modules for p in m.parameters()]
    opt = torch.optim.Adam(params, lr=1e-2)
    losses = []
    for _ in range(steps):
        loss = loss_fn()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def fixed_seeds(batch_size: int = len(LABELS)) -> torch.Tensor:
    return draw_seeds(torch.Generator().manual_seed(0), batch_size)


def nearest(z: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """Index of the nearest row of ``codes [V, E]`` for every vector of ``z [..., E]``."""
    return (z.unsqueeze(-2) - codes).pow(2).sum(-1).argmin(-1)


def count_forwards(gpt: GPT) -> list[int]:
    """A list that grows by one per GPT forward (its final norm runs once per forward)."""
    calls: list[int] = []
    gpt.norm.register_forward_hook(lambda module, args, out: calls.append(args[0].shape[1]))
    return calls


def quiet(pipe):
    pipe.set_progress_bar_config(disable=True)
    return pipe


# ---- (a) an 8-codebook audio codec ------------------------------------------------------------------
FRAMES, CODEBOOKS, CODES, FEATURES = 6, 8, 16, 4


class RVQCodec:
    """Audio-like codec: frames ``[B, T, F]`` -> ``[B, T, K]`` ids, codebook k the nearest code of a fixed projection."""

    modality = "audio"
    sample_rate = 16000  # audio tokenizers name the rate of the waveforms they decode to

    def __init__(self) -> None:
        g = torch.Generator().manual_seed(0)
        self.proj_KFE = torch.randn(CODEBOOKS, FEATURES, 3, generator=g)
        self.codes_KVE = torch.randn(CODEBOOKS, CODES, 3, generator=g)

    def token_spec(self) -> TokenSpec:
        return TokenSpec(content=DiscreteContent((CODES,) * CODEBOOKS), shape=(FRAMES,))

    def encode(self, x_BTF: torch.Tensor) -> torch.Tensor:
        z_BTKE = torch.einsum("btf,kfe->btke", x_BTF, self.proj_KFE)
        return torch.stack([nearest(z_BTKE[:, :, k], self.codes_KVE[k]) for k in range(CODEBOOKS)], dim=-1)

    def decode(self, ids_BTK: torch.Tensor) -> torch.Tensor:
        return torch.stack([self.codes_KVE[k][ids_BTK[..., k]] for k in range(CODEBOOKS)], dim=2).flatten(2)

    def to_positions(self, ids_BTK: torch.Tensor) -> torch.Tensor:
        return ids_BTK

    def from_positions(self, positions: torch.Tensor) -> torch.Tensor:
        return positions


def audio_batch() -> torch.Tensor:
    return torch.randn(len(LABELS), FRAMES, FEATURES, generator=torch.Generator().manual_seed(3))


def audio_pipe(**options) -> NextTokenPipeline:
    torch.manual_seed(1)
    return quiet(NextTokenPipeline.from_tokenizer(RVQCodec(), conditioner=conditioner(),
                                                  gpt={"dim": DIM, "n_layers": 1, "n_heads": 2}, **options))


def train_pipe(pipe) -> list[float]:
    seq = pipe.tokenize(pipe_batch(pipe))
    labels = torch.tensor(LABELS)
    return train([pipe.gpt, pipe.head, pipe.conditioner],
                 lambda: pipe.loss(seq, class_labels=labels, cond_drop_prob=0.0)[0])


def pipe_batch(pipe) -> torch.Tensor:
    return pyramid_batch() if isinstance(pipe, NextScalePipeline) else audio_batch()


def engine_run(pipe, *, sampling: SamplingConfig, seed: int = 0, callback=None) -> tuple[torch.Tensor, torch.Tensor, Conditioning]:
    """What ``pipe(...)`` runs, stopping at the generated sequence: ``(seq, valid, cond)``."""
    cond = pipe.conditioner.condition(class_labels=LABELS)
    program = pipe.program()
    seeds = draw_seeds(torch.Generator().manual_seed(seed), cond.batch_size)
    with torch.no_grad():
        seq, valid = generate(pipe.gpt, pipe.head, program, cond, sampling=sampling, seeds_B=seeds,
                              capacity=program.num_positions, callback=callback)
    return seq, valid, cond


def teacher_forced_hidden(pipe, seq: torch.Tensor, cond: Conditioning) -> torch.Tensor:
    program = pipe.program()
    with torch.no_grad():
        return teacher_hidden(pipe.gpt, cond, program.teacher_inputs(seq), program.pattern.layout())


def test_test_tokenizers_implement_the_protocol():
    for tokenizer in (RVQCodec(), PyramidCodec(), VideoCodec()):
        assert isinstance(tokenizer, Tokenizer)
        check_tokenizer(tokenizer)
    assert isinstance(PyramidCodec(), ScaleContext)


def test_delay_codebooks_with_a_categorical_head():
    pipe = audio_pipe(codebook_pattern="delay")
    pattern = pipe.pattern()
    assert isinstance(pattern, DelayCodebooks) and pattern.empty_id == CODES
    assert isinstance(pipe.head, CategoricalHead) and pipe.head.cfg.codebook_sizes == [CODES] * CODEBOOKS
    assert pipe.gpt.cfg.vocab_size == [CODES + 1] * CODEBOOKS, "only the GPT's inputs take the empty id"

    losses = train_pipe(pipe)
    assert losses[-1] < losses[0]

    drawn = []
    seq, valid, cond = engine_run(pipe, sampling=GREEDY, callback=lambda step, tokens: drawn.append(tokens.clone()))
    assert seq.shape == (len(LABELS), FRAMES + CODEBOOKS - 1, CODEBOOKS) and bool(valid.all())
    empty_SK = ~pattern.entry_valid
    assert bool((seq[:, empty_SK] == CODES).all()), "the delay pattern's empty entries must hold the empty id"
    assert not bool((torch.cat(drawn, dim=1)[:, empty_SK] == CODES).all()), "the head drew other ids there: the program set them"

    logits = pipe.head.logits(teacher_forced_hidden(pipe, seq, cond))
    argmax = torch.stack([lg.argmax(-1) for lg in logits], dim=-1)
    real = pattern.entry_valid.expand_as(seq)
    assert torch.equal(seq[real], argmax[real]), "greedy generation must equal the teacher-forced argmax"

    native = pipe.decode_sequence(seq)
    assert native.shape == (len(LABELS), FRAMES, CODEBOOKS)
    assert torch.equal(pattern.to_sequence(native), seq)


def test_parallel_codebooks_with_a_depth_head():
    pipe = audio_pipe(codebook_pattern="parallel", head={"class": "DepthHead", "width": 32, "depth": 1, "n_heads": 2})
    assert isinstance(pipe.head, DepthHead) and pipe.head.cfg.codebook_sizes == [CODES] * CODEBOOKS
    assert pipe.pattern().group_sizes == (1,) * FRAMES

    losses = train_pipe(pipe)
    assert losses[-1] < losses[0]

    calls = count_forwards(pipe.gpt)
    seq, valid, cond = engine_run(pipe, sampling=GREEDY)
    assert len(calls) == FRAMES, "all 8 codebooks of a frame come from one GPT forward"
    assert seq.shape == (len(LABELS), FRAMES, CODEBOOKS) and bool(valid.all())
    assert int(seq.max()) < CODES

    # the depth head drew codebook d greedily given codes < d: its teacher-forced logits reproduce every code
    logits = pipe.head.logits(teacher_forced_hidden(pipe, seq, cond), seq)
    assert torch.equal(torch.stack([lg.argmax(-1) for lg in logits], dim=-1), seq)

    sampled, _, _ = engine_run(pipe, sampling=SamplingConfig(temperature=1.0), seed=5)
    again, _, _ = engine_run(pipe, sampling=SamplingConfig(temperature=1.0), seed=5)
    assert torch.equal(sampled, again)
    assert not torch.equal(sampled, seq)


def test_delay_draws_only_real_codes_at_real_entries():
    pipe = audio_pipe(codebook_pattern="delay")
    seq, _, _ = engine_run(pipe, sampling=SamplingConfig(temperature=1.0))
    native = pipe.decode_sequence(seq)
    assert int(native.max()) < CODES, f"{int((native >= CODES).sum())} generated entries hold the empty id {CODES}"
    pipe.tokenizer.decode(native)


@pytest.mark.parametrize("case", ["delay", "parallel", "scales"])
def test_pipeline_call_returns_native_tokens_for_any_modality(case):
    if case == "scales":
        pipe = pyramid_pipe()
    else:
        head = {"class": "DepthHead", "width": 32, "depth": 1, "n_heads": 2} if case == "parallel" else None
        pipe = audio_pipe(codebook_pattern=case, head=head)
    seq, _, _ = engine_run(pipe, sampling=GREEDY)
    out = pipe(class_labels=LABELS, sampling=GREEDY, output_type="tokens", generator=torch.Generator().manual_seed(0))
    expected = pipe.decode_sequence(seq)
    if isinstance(expected, list):
        assert all(torch.equal(a, b) for a, b in zip(out.tokens, expected))
    else:
        assert torch.equal(out.tokens, expected)


# ---- (b) a 1D multi-scale pyramid -------------------------------------------------------------------
SIDES, PYRAMID_CODES, LATENT = (1, 2, 4), 8, 4


class PyramidCodec:
    """1D residual quantisation coarse to fine: scale k codes the residual, average-pooled to ``SIDES[k]`` cells.

    Its :class:`ScaleContext`: the inputs of scale k + 1 are the running reconstruction (scales <= k,
    each upsampled by repetition to the finest grid) pooled to scale k + 1.
    """

    modality = "audio"
    sample_rate = 16000  # audio tokenizers name the rate of the waveforms they decode to
    context_dim = LATENT

    def __init__(self) -> None:
        self.codes_VC = torch.randn(PYRAMID_CODES, LATENT, generator=torch.Generator().manual_seed(2))

    def token_spec(self) -> TokenSpec:
        return TokenSpec(content=DiscreteContent((PYRAMID_CODES,)), scales=tuple((s,) for s in SIDES))

    @staticmethod
    def _pool(x_BNC: torch.Tensor, side: int) -> torch.Tensor:
        return x_BNC.unflatten(1, (side, SIDES[-1] // side)).mean(2)

    def _up(self, ids_Bn: torch.Tensor) -> torch.Tensor:
        return self.codes_VC[ids_Bn].repeat_interleave(SIDES[-1] // ids_Bn.shape[1], dim=1)

    def encode(self, x_BNC: torch.Tensor) -> list[torch.Tensor]:
        f_hat, ids = torch.zeros_like(x_BNC), []
        for side in SIDES:
            ids.append(nearest(self._pool(x_BNC - f_hat, side), self.codes_VC))
            f_hat = f_hat + self._up(ids[-1])
        return ids

    def decode(self, ids: list[torch.Tensor]) -> torch.Tensor:
        return sum(self._up(x) for x in ids)

    def to_positions(self, ids: list[torch.Tensor]) -> list[torch.Tensor]:
        return list(ids)

    def from_positions(self, positions: list[torch.Tensor]) -> list[torch.Tensor]:
        return list(positions)

    def context_step(self, state: torch.Tensor | None, scale_index: int, ids_Bn: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        f_hat = self._up(ids_Bn) if state is None else state + self._up(ids_Bn)
        if scale_index == len(SIDES) - 1:
            return f_hat, None
        return f_hat, self._pool(f_hat, SIDES[scale_index + 1])

    def teacher_context(self, ids_BL: torch.Tensor) -> torch.Tensor:
        state, inputs = None, []
        for k, ids_Bn in enumerate(ids_BL.split(SIDES, dim=1)[:-1]):
            state, x = self.context_step(state, k, ids_Bn)
            inputs.append(x)
        return torch.cat(inputs, dim=1)


def pyramid_batch() -> torch.Tensor:
    return torch.randn(len(LABELS), SIDES[-1], LATENT, generator=torch.Generator().manual_seed(4))


def pyramid_pipe() -> NextScalePipeline:
    torch.manual_seed(1)
    return quiet(NextScalePipeline.from_tokenizer(PyramidCodec(), conditioner=conditioner(),
                                                  gpt={"dim": DIM, "n_layers": 1, "n_heads": 2}))


def test_one_dimensional_pyramid_takes_one_forward_per_scale():
    pipe = pyramid_pipe()
    assert pipe.pattern().group_sizes == SIDES
    assert pipe.gpt.cfg.coord_rank == 2 and pipe.gpt.cfg.input_dim == LATENT

    losses = train_pipe(pipe)
    assert losses[-1] < losses[0]

    calls = count_forwards(pipe.gpt)
    seq, valid, cond = engine_run(pipe, sampling=GREEDY)
    assert calls == [1 + SIDES[0], *SIDES[1:]], "one GPT forward per scale (the first with the class prefix)"
    assert seq.shape == (len(LABELS), sum(SIDES)) and bool(valid.all())

    logits = pipe.head.logits(teacher_forced_hidden(pipe, seq, cond))
    assert torch.equal(logits.argmax(-1), seq), "greedy generation must equal the teacher-forced argmax"

    native = pipe.decode_sequence(seq)
    assert [tuple(x.shape) for x in native] == [(len(LABELS), s) for s in SIDES]
    assert pipe.tokenizer.decode(native).shape == (len(LABELS), SIDES[-1], LATENT)


# ---- (c) an octree-like program: group sizes follow from the ids drawn ------------------------------
OCT_CODES, OCT_CAP, OCT_DEPTH, OCT_PAD = 4, 3, 4, -1


@dataclass
class OctreeState:
    inputs: torch.Tensor
    sizes_B: torch.Tensor
    group: int = 0
    tokens: list[torch.Tensor] = field(default_factory=list)
    parents: list[torch.Tensor] = field(default_factory=list)
    valid: list[torch.Tensor] = field(default_factory=list)
    next_parents: torch.Tensor | None = None


class OctreeProgram:
    """Group 0 is one root per row; id v is a node with v children, so group g + 1 has as many slots as
    group g's ids sum to (at most ``OCT_CAP``) and a row whose group drew only zeros (leaves) stops.

    Slot i of group g + 1 holds the embedding of its parent's id and has coordinates ``(g + 1, i)``.
    ``result`` is every row's slots packed to the left: ``tokens``, ``parents`` (−1 for the root),
    ``coords``, ``groups`` and ``valid`` ``[B, L]``, padding ``OCT_PAD``.
    """

    num_steps = OCT_DEPTH

    def __init__(self, gpt: GPT) -> None:
        self.gpt = gpt
        self.requests: list[GroupRequest] = []

    def start(self, batch_size: int, device: torch.device) -> OctreeState:
        return OctreeState(inputs=self.gpt.start_inputs(batch_size, 1),
                           sizes_B=torch.ones(batch_size, dtype=torch.long, device=device),
                           next_parents=torch.full((batch_size, 1), OCT_PAD, device=device))

    def next_group(self, state: OctreeState) -> GroupRequest | None:
        if state.group == OCT_DEPTH or not bool((state.sizes_B > 0).any()):
            return None
        B, n = state.sizes_B.shape[0], int(state.sizes_B.max())
        slots = torch.arange(n, device=state.sizes_B.device)
        coords = torch.stack([torch.full((n,), state.group), slots], dim=-1).float().expand(B, n, 2)
        request = GroupRequest(inputs_BnD=state.inputs, coords_BnC=coords, valid_Bn=slots < state.sizes_B.unsqueeze(1))
        self.requests.append(request)
        return request

    def accept(self, state: OctreeState, tokens: torch.Tensor, valid_Bn: torch.Tensor) -> OctreeState:
        tokens = torch.where(valid_Bn, tokens, OCT_PAD)
        state.tokens.append(tokens)
        state.parents.append(torch.where(valid_Bn, state.next_parents, OCT_PAD))
        state.valid.append(valid_Bn)
        children = [row[row > 0].repeat_interleave(row[row > 0])[:OCT_CAP] for row in tokens]  # each child's parent id
        sizes = torch.tensor([len(c) for c in children], dtype=torch.long)
        n = max(int(sizes.max()), 1)
        parents = torch.full((len(children), n), OCT_PAD, dtype=torch.long)
        for b, c in enumerate(children):
            parents[b, : len(c)] = c
        state.next_parents, state.sizes_B = parents, sizes
        state.inputs = self.gpt.embed_tokens(parents.clamp(min=0)) * (parents >= 0).unsqueeze(-1)
        state.group += 1
        return state

    def result(self, state: OctreeState) -> dict[str, torch.Tensor]:
        valid = torch.cat(state.valid, dim=1)
        groups = torch.cat([torch.full_like(v, g, dtype=torch.long) for g, v in enumerate(state.valid)], dim=1)
        slots = torch.cat([torch.arange(v.shape[1]).expand_as(v) for v in state.valid], dim=1)
        columns = {"tokens": torch.cat(state.tokens, dim=1), "parents": torch.cat(state.parents, dim=1),
                   "groups": groups, "slots": slots}
        L = int(valid.sum(1).max())
        packed = {name: torch.full((valid.shape[0], L), OCT_PAD, dtype=torch.long) for name in columns}
        lengths = valid.sum(1)
        for b in range(valid.shape[0]):
            for name, x in columns.items():
                packed[name][b, : lengths[b]] = x[b][valid[b]]
        packed["valid"] = torch.arange(L) < lengths.unsqueeze(1)
        packed["coords"] = torch.stack([packed["groups"], packed["slots"]], dim=-1).float()
        return packed


def octree_model() -> tuple[GPT, CategoricalHead, ClassConditioner]:
    torch.manual_seed(2)
    gpt = GPT(GPTConfig(vocab_size=OCT_CODES, dim=DIM, n_layers=1, n_heads=2, coord_rank=2, start_token=True, max_seq_len=16))
    head = CategoricalHead(CategoricalHeadConfig(dim=DIM, codebook_sizes=[OCT_CODES]))
    return gpt, head, conditioner()


def octree_capacity() -> int:
    return 1 + OCT_CAP * (OCT_DEPTH - 1)


def run_octree(gpt, head, cond, *, sampling, seeds_B) -> tuple[dict[str, torch.Tensor], OctreeProgram]:
    program = OctreeProgram(gpt)
    with torch.no_grad():
        out = generate(gpt, head, program, cond, sampling=sampling, seeds_B=seeds_B, capacity=octree_capacity())
    return out, program


def octree_teacher_hidden(gpt: GPT, cond: Conditioning, out: dict[str, torch.Tensor]) -> torch.Tensor:
    """One forward over the packed rows: layout from the program's coords/groups/valid, inputs from the parents."""
    layout = TokenLayout(out["coords"], out["groups"].clamp(min=0), out["valid"])
    parents = out["parents"]
    inputs = gpt.embed_tokens(parents.clamp(min=0)) * (parents >= 0).unsqueeze(-1)
    root = (out["groups"] == 0) & out["valid"]
    inputs = torch.where(root.unsqueeze(-1), gpt.start_inputs(*parents.shape), inputs)
    return teacher_hidden(gpt, cond, inputs, layout)


def test_octree_program_rows_of_different_lengths_stop_and_pad(monkeypatch):
    gpt, head, cond_model = octree_model()
    cond = cond_model.condition(class_labels=LABELS)
    seeds = draw_seeds(torch.Generator().manual_seed(0), len(LABELS))

    # the layout the engine builds is captured at every forward: its padding slots must be invalid
    layouts = []
    hidden_states = gpt.hidden_states

    def spy(x, *, layout=None, **kwargs):
        layouts.append(layout.valid.clone())
        return hidden_states(x, layout=layout, **kwargs)

    monkeypatch.setattr(gpt, "hidden_states", spy)
    out, program = run_octree(gpt, head, cond, sampling=SamplingConfig(temperature=1.0), seeds_B=seeds)
    lengths = out["valid"].sum(1)
    assert len(set(lengths.tolist())) > 1, f"rows should end with different lengths, got {lengths.tolist()}"
    assert bool((out["tokens"][~out["valid"]] == OCT_PAD).all())
    assert bool((out["tokens"][out["valid"]] >= 0).all())
    for b in range(len(LABELS)):  # each row obeys the rule: group g + 1 has min(sum of group g's ids, cap) slots
        row_groups, row_tokens = out["groups"][b][out["valid"][b]], out["tokens"][b][out["valid"][b]]
        for g in range(int(row_groups.max())):
            assert int((row_groups == g + 1).sum()) == min(int(row_tokens[row_groups == g].sum()), OCT_CAP)
        last = row_tokens[row_groups == row_groups.max()]
        assert int(row_groups.max()) == OCT_DEPTH - 1 or not bool((last > 0).any()), "a row stops after an all-zero group"

    P, position = cond.num_prefix, cond.num_prefix
    engine_valid = layouts[-1]
    assert bool(engine_valid[:, :P].all())
    for request in program.requests:
        n = request.size
        assert torch.equal(engine_valid[:, position : position + n], request.valid_Bn)
        position += n
    assert not bool(engine_valid[:, position:].any())
    assert not bool(torch.cat([r.valid_Bn for r in program.requests], dim=1).all()), "some slots must be padding"


def test_octree_rows_do_not_depend_on_their_batch():
    gpt, head, cond_model = octree_model()
    seeds = draw_seeds(torch.Generator().manual_seed(1), len(LABELS))
    sampling = SamplingConfig(temperature=1.0, guidance_scale=2.0)
    batch, _ = run_octree(gpt, head, cond_model.condition(class_labels=LABELS, guided=True), sampling=sampling, seeds_B=seeds)
    assert len(set(batch["valid"].sum(1).tolist())) > 1
    for b, label in enumerate(LABELS):
        alone, _ = run_octree(gpt, head, cond_model.condition(class_labels=[label], guided=True), sampling=sampling,
                              seeds_B=seeds[b : b + 1])
        n = int(alone["valid"].sum())
        assert int(batch["valid"][b].sum()) == n
        for name in ("tokens", "groups", "slots"):
            assert torch.equal(alone[name][0, :n], batch[name][b, :n]), f"row {b}'s {name} depend on the other rows"


def test_octree_greedy_equals_teacher_forced_argmax():
    gpt, head, cond_model = octree_model()
    sampled, _ = run_octree(gpt, head, cond_model.condition(class_labels=LABELS), sampling=SamplingConfig(temperature=1.0),
                            seeds_B=draw_seeds(torch.Generator().manual_seed(0), len(LABELS)))
    labels = torch.tensor(LABELS)

    def loss():
        cond = cond_model.training_condition(class_labels=labels, batch_size=len(LABELS), cond_drop_prob=0.0)
        hidden = octree_teacher_hidden(gpt, cond, sampled)
        return head.loss(hidden, sampled["tokens"].clamp(min=0), mask=sampled["valid"])[0]

    losses = train([gpt, head, cond_model], loss)
    assert losses[-1] < losses[0]

    cond = cond_model.condition(class_labels=LABELS)
    greedy, _ = run_octree(gpt, head, cond, sampling=GREEDY, seeds_B=fixed_seeds())
    assert len(set(greedy["valid"].sum(1).tolist())) > 1, "the greedy rows should differ in length (padding in play)"
    with torch.no_grad():
        argmax = head.logits(octree_teacher_hidden(gpt, cond, greedy)).argmax(-1)
    valid = greedy["valid"]
    assert torch.equal(argmax[valid], greedy["tokens"][valid])


# ---- (d) frames, the first one prefilled ------------------------------------------------------------
VIDEO_FRAMES, VIDEO_GRID, VIDEO_CODES, VIDEO_CHANNELS = 3, (2, 2), 8, 3


class VideoCodec:
    """Video-like: ``[B, T, h, w, C]`` -> ids ``[B, T, h, w]``, the nearest code of a fixed projection."""

    modality = "video"

    def __init__(self) -> None:
        g = torch.Generator().manual_seed(5)
        self.proj_CE = torch.randn(VIDEO_CHANNELS, 2, generator=g)
        self.codes_VE = torch.randn(VIDEO_CODES, 2, generator=g)

    def token_spec(self) -> TokenSpec:
        return TokenSpec(content=DiscreteContent((VIDEO_CODES,)), shape=(VIDEO_FRAMES, *VIDEO_GRID))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return nearest(x @ self.proj_CE, self.codes_VE)

    def decode(self, ids: torch.Tensor) -> torch.Tensor:
        return self.codes_VE[ids]

    def to_positions(self, ids: torch.Tensor) -> torch.Tensor:
        return ids

    def from_positions(self, positions: torch.Tensor) -> torch.Tensor:
        return positions


def video_model():
    pattern = Frames(VIDEO_FRAMES, VIDEO_GRID)
    torch.manual_seed(3)
    gpt = GPT(GPTConfig(vocab_size=VIDEO_CODES, dim=DIM, n_layers=1, n_heads=2, coord_rank=3, start_token=True, max_seq_len=16))
    head = CategoricalHead(CategoricalHeadConfig(dim=DIM, codebook_sizes=[VIDEO_CODES]))
    return pattern, gpt, head, conditioner(), PatternProgram(gpt=gpt, pattern=pattern, rule=PreviousGroupInputs(gpt=gpt, head=head))


def test_frames_continue_a_prefilled_first_frame():
    codec = VideoCodec()
    pattern, gpt, head, cond_model, program = video_model()
    frame = pattern.group_sizes[0]

    video = torch.randn(len(LABELS), VIDEO_FRAMES, *VIDEO_GRID, VIDEO_CHANNELS, generator=torch.Generator().manual_seed(6))
    seq = pattern.to_sequence(codec.to_positions(codec.encode(video)))
    labels = torch.tensor(LABELS)

    def loss():
        cond = cond_model.training_condition(class_labels=labels, batch_size=len(LABELS), cond_drop_prob=0.0)
        return head.loss(teacher_hidden(gpt, cond, program.teacher_inputs(seq), pattern.layout()), seq)[0]

    losses = train([gpt, head, cond_model], loss)
    assert losses[-1] < losses[0]

    cond = cond_model.condition(class_labels=LABELS)
    calls = count_forwards(gpt)
    prefill = seq[:, :frame]
    with torch.no_grad():
        out, valid = generate(gpt, head, program, cond, sampling=GREEDY, seeds_B=fixed_seeds(),
                              capacity=pattern.num_positions, prefill=prefill)
    assert len(calls) == VIDEO_FRAMES - 1, "the prefilled frame enters with the first generated one, in one forward"
    assert out.shape == seq.shape and bool(valid.all())
    assert torch.equal(out[:, :frame], prefill)
    native = codec.from_positions(pattern.from_sequence(out))
    assert torch.equal(native[:, 0], codec.encode(video)[:, 0])
    assert codec.decode(native).shape == (len(LABELS), VIDEO_FRAMES, *VIDEO_GRID, 2)

    with torch.no_grad():
        argmax = head.logits(teacher_hidden(gpt, cond, program.teacher_inputs(out), pattern.layout())).argmax(-1)
    assert torch.equal(argmax[:, frame:], out[:, frame:]), "greedy generation must equal the teacher-forced argmax"


def test_prefill_continues_exactly_what_generation_would_draw():
    """Prefilling a sample's own first frame, with its seeds, reproduces the whole sample: slot j keeps seed + j."""
    pattern, gpt, head, cond_model, program = video_model()
    cond = cond_model.condition(class_labels=LABELS)
    seeds = draw_seeds(torch.Generator().manual_seed(8), len(LABELS))
    sampling = SamplingConfig(temperature=1.0)
    with torch.no_grad():
        full, _ = generate(gpt, head, program, cond, sampling=sampling, seeds_B=seeds, capacity=pattern.num_positions)
        frame = pattern.group_sizes[0]
        continued, _ = generate(gpt, head, program, cond, sampling=sampling, seeds_B=seeds, capacity=pattern.num_positions,
                                prefill=full[:, :frame])
    assert torch.equal(continued, full)


def test_callback_tokens_replace_the_draw_and_feed_the_next_group():
    pattern, gpt, head, cond_model, program = video_model()
    cond = cond_model.condition(class_labels=LABELS)
    frame = pattern.group_sizes[0]
    forced = torch.arange(len(LABELS) * frame).view(len(LABELS), frame) % VIDEO_CODES
    steps = []

    def callback(step: int, tokens: torch.Tensor) -> torch.Tensor | None:
        steps.append(step)
        return forced if step == 1 else None

    with torch.no_grad():
        out, _ = generate(gpt, head, program, cond, sampling=GREEDY, seeds_B=fixed_seeds(),
                          capacity=pattern.num_positions, callback=callback)
        argmax = head.logits(teacher_hidden(gpt, cond, program.teacher_inputs(out), pattern.layout())).argmax(-1)
    assert steps == list(range(VIDEO_FRAMES))
    assert torch.equal(out[:, frame : 2 * frame], forced)
    assert torch.equal(argmax[:, 2 * frame :], out[:, 2 * frame :]), "the frame after the replaced one follows it"


# ---- (e) the decoder: rollback and the attention-mask override -------------------------------------
def decoder_setup() -> tuple[GPT, Decoder, list[GroupRequest]]:
    torch.manual_seed(4)
    gpt = GPT(GPTConfig(vocab_size=8, dim=DIM, n_layers=2, n_heads=2, coord_rank=1, max_seq_len=16)).eval()
    cond = conditioner().condition(class_labels=[1, 2], guided=True)  # 4 GPT rows for 2 samples
    g = torch.Generator().manual_seed(7)
    requests, position = [], 0
    for n, valid in [(2, [[True, True], [True, False]]), (3, [[True, True, True], [True, True, False]]),
                     (1, [[True], [True]]), (3, [[True, False, False], [True, True, True]]), (2, [[True, True], [False, False]])]:
        coords = torch.arange(position, position + n, dtype=torch.float32).view(1, n, 1).expand(2, n, 1)
        requests.append(GroupRequest(inputs_BnD=torch.randn(2, n, DIM, generator=g), coords_BnC=coords,
                                     valid_Bn=torch.tensor(valid)))
        position += n
    return gpt, Decoder(gpt, cond, capacity=position), requests


def decoder_snapshot(gpt: GPT, decoder: Decoder) -> list:
    caches = [t.clone() for layer in gpt.layers for t in (layer.attn.cache.k, layer.attn.cache.v)]
    layout = [decoder.layout.coords.clone(), decoder.layout.groups.clone(), decoder.layout.valid.clone()]
    return caches + layout + [decoder.length, decoder.num_groups]


def assert_same_snapshot(a: list, b: list) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert torch.equal(x, y) if isinstance(x, torch.Tensor) else x == y


@torch.no_grad()
def test_rollback_restores_the_cache_and_layout_exactly():
    gpt, decoder, requests = decoder_setup()
    decoder.forward(requests[:2])
    decoder.forward(requests[2:3])
    before = decoder_snapshot(gpt, decoder)
    first = [decoder.forward([r]) for r in requests[3:]]
    k = sum(r.size for r in requests[3:])
    assert decoder.length == before[-2] + k
    decoder.rollback(k)
    assert_same_snapshot(decoder_snapshot(gpt, decoder), before)
    again = [decoder.forward([r]) for r in requests[3:]]
    for h1, h2 in zip(first, again):
        assert torch.equal(h1, h2)

    decoder.rollback(requests[-1].size + 1)  # into the middle of a group: that group's rest is forgotten too
    assert decoder.num_groups == 1 + 4 and decoder.length == before[-2] + requests[3].size - 1
    with pytest.raises(ValueError, match="num_positions"):
        decoder.rollback(100)
    decoder.close()
    assert gpt.cache_shape is None


@torch.no_grad()
def test_attention_mask_override_equal_to_the_layout_mask_changes_nothing():
    gpt, decoder, requests = decoder_setup()
    decoder.forward(requests[:3])
    start = decoder.length
    request = requests[3]
    hidden = decoder.forward([request])
    mask = decoder.layout.attention_mask(start, start + request.size)[:, :, : start + request.size]
    decoder.rollback(request.size)
    assert torch.equal(decoder.forward([request], attention_mask=mask), hidden)

    decoder.rollback(request.size)
    hidden_prefix = mask.clone()
    hidden_prefix[:, :, 0] = False  # hide the class prefix from every query
    assert not torch.allclose(decoder.forward([request], attention_mask=hidden_prefix), hidden)


@torch.no_grad()
def test_rollback_of_nothing_before_the_first_forward_keeps_the_prefix():
    gpt, decoder, requests = decoder_setup()
    decoder.rollback(0)
    hidden = decoder.forward(requests[:1])
    _, fresh, _ = decoder_setup()
    assert torch.equal(hidden, fresh.forward(requests[:1]))


@torch.no_grad()
def test_requests_beyond_the_capacity_are_refused():
    gpt, decoder, requests = decoder_setup()
    decoder.forward(requests)
    before = decoder_snapshot(gpt, decoder)
    with pytest.raises(ValueError, match="capacity"):
        decoder.forward(requests[:1])
    assert_same_snapshot(decoder_snapshot(gpt, decoder), before)
