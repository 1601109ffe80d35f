"""Lossless speculative decoding: every draft source gives plain decoding's tokens, in fewer forwards when its
candidates are right, and the verified draws follow the target's distribution.

Tiny random pipelines (images, RVQ audio frames, octrees); nothing is timed (speed is benchmarks/decoding.py).
"""

from __future__ import annotations

import itertools

import pytest
import torch
from audio_fixtures import tones_codec
from pipeline_fixtures import build, count_gpt_forwards, gen, vq_tokenizer
from test_sampling_stats import FALSE_ALARM, chi_square_pvalue

from mmgen import GPT, CategoricalHead, GPTConfig, SamplingConfig
from mmgen.conditioning import Conditioning
from mmgen.drafts import JacobiDraft, NGramDraft, RecycledDraft
from mmgen.generation import draw_seeds, generate
from mmgen.heads import CategoricalHeadConfig
from mmgen.patterns import Raster
from mmgen.programs import PatternProgram, PreviousGroupInputs
from mmgen.speculative import DraftTree, chain_parents, generate_speculative, verify_residual
from pipelines import NextTokenPipeline
from tokenizers_visual import OctreeTokenizer

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SOURCES = ["lookahead", "recycling", "jacobi"]


def image_pipe() -> NextTokenPipeline:
    pipe = build(NextTokenPipeline, vq_tokenizer())
    pipe.register_to_config(null_condition_trained=True)
    return pipe


def tokens(pipe, **kwargs) -> torch.Tensor:
    return pipe(class_labels=[0, 1, 2], output_type="tokens", generator=gen(0), **kwargs).tokens


@pytest.mark.parametrize("decoding", SOURCES)
@pytest.mark.parametrize("temperature, guidance", [(0.0, 1.0), (0.0, 3.0), (1.0, 3.0)])
def test_every_source_gives_plain_decodings_tokens_for_images(decoding, temperature, guidance):
    pipe = image_pipe()
    plain = tokens(pipe, temperature=temperature, guidance_scale=guidance)
    for gated in (False, True):  # the second call starts from what the first taught the source
        assert torch.equal(tokens(pipe, temperature=temperature, guidance_scale=guidance, decoding=decoding, gated=gated), plain)
    stats = pipe.decoding_stats
    assert stats.tokens == 16 and stats.forwards <= stats.tokens


def test_a_draft_model_gives_plain_decodings_tokens():
    pipe, small = image_pipe(), image_pipe()
    torch.manual_seed(7)
    for p in small.gpt.parameters():  # a different model of the same tokens
        p.data.add_(0.02 * torch.randn_like(p))
    for temperature in (0.0, 1.0):
        plain = tokens(pipe, temperature=temperature, guidance_scale=3.0)
        drafted = tokens(pipe, temperature=temperature, guidance_scale=3.0, decoding="draft", draft_model=small)
        assert torch.equal(drafted, plain)


def test_the_draft_model_itself_as_draft_confirms_whole_chains():
    """A draft that equals the target (a copy) is always right: each forward confirms length + 1 tokens."""
    pipe, twin = image_pipe(), image_pipe()
    twin.gpt.load_state_dict(pipe.gpt.state_dict())
    twin.head.load_state_dict(pipe.head.state_dict())
    twin.conditioner.load_state_dict(pipe.conditioner.state_dict())
    plain = tokens(pipe, temperature=1.0)
    assert torch.equal(tokens(pipe, temperature=1.0, decoding="draft", draft_model=twin, gated=False), plain)
    stats = pipe.decoding_stats
    assert stats.forwards == 1 + -(-15 // 5)  # the first token alone, then 5 a forward (4 drafted + 1)


class Oracle:
    """A draft source that knows the answer: the next ``length`` tokens of a reference sequence."""

    topk, max_nodes = 0, 4

    def __init__(self, answer: torch.Tensor, length: int = 4) -> None:
        self.answer, self.length = answer, length

    def begin(self, batch_size, prefill):
        self.done = 0 if prefill is None else prefill.shape[1]

    def propose(self):
        chain = self.answer[:, self.done:self.done + self.length]
        return DraftTree(chain, chain_parents(chain.shape[1]), torch.ones(chain.shape[:2], dtype=torch.bool))

    def observe(self, step):
        self.done += step.accepted.shape[1]

    def end(self, sequences, valid):
        pass


def test_right_candidates_are_confirmed_length_plus_one_per_forward_and_wrong_ones_cost_nothing():
    pipe = image_pipe()
    plain = tokens(pipe, temperature=1.0)
    seq = pipe.to_sequence(pipe.tokenizer.to_positions(plain))
    calls = count_gpt_forwards(pipe)
    assert torch.equal(tokens(pipe, temperature=1.0, decoding=Oracle(seq), gated=False), plain)
    assert len(calls) == 1 + 3  # 1 + 5 + 5 + 5 = 16 tokens
    wrong = (seq + 1) % 32
    calls.clear()
    assert torch.equal(tokens(pipe, temperature=1.0, decoding=Oracle(wrong), gated=False), plain)
    assert len(calls) == 16


def test_a_callback_that_replaces_tokens_is_obeyed_as_in_plain_decoding():
    pipe = image_pipe()

    def replace(pipeline, step, timestep, kwargs):
        return {"tokens": torch.full_like(kwargs["tokens"], 5)} if step == 3 else {}

    plain = tokens(pipe, temperature=0.0, callback_on_step_end=replace)
    assert torch.equal(tokens(pipe, temperature=0.0, callback_on_step_end=replace, decoding="jacobi"), plain)


def test_prefill_continues_the_same_way():
    pipe = image_pipe()
    known = tokens(pipe, temperature=1.0)
    prefill = pipe.to_sequence(pipe.tokenizer.to_positions(known))[:, :5]
    plain = pipe(class_labels=[0, 1, 2], output_type="tokens", generator=gen(1), prefill=prefill).tokens
    for decoding in SOURCES:
        out = pipe(class_labels=[0, 1, 2], output_type="tokens", generator=gen(1), prefill=prefill, decoding=decoding).tokens
        assert torch.equal(out, plain)


@pytest.mark.parametrize("pattern, head", [("delay", None), ("parallel", None),
                                           ("parallel", {"class": "DepthHead", "width": 16, "depth": 1, "n_heads": 2})])
def test_audio_frames_of_several_codebooks_are_verified_whole(pattern, head):
    pipe = build(NextTokenPipeline, tones_codec("rvq"), codebook_pattern=pattern, head=head)
    plain = pipe(class_labels=[0, 1], output_type="tokens", generator=gen(0)).tokens
    sources = SOURCES if head is None else ["lookahead", "jacobi"]
    for decoding in sources:
        out = pipe(class_labels=[0, 1], output_type="tokens", generator=gen(0), decoding=decoding).tokens
        assert torch.equal(out, plain), decoding
    if head is not None:
        with pytest.raises(ValueError, match="categorical head"):
            pipe(class_labels=[0], output_type="tokens", decoding="recycling")


def test_octrees_by_token_grow_the_same_trees():
    pipe = build(NextTokenPipeline, OctreeTokenizer({"resolution": 8}))
    plain = pipe(class_labels=[0, 1, 2], output_type="tokens", generator=gen(0)).tokens
    for decoding in SOURCES:
        out = pipe(class_labels=[0, 1, 2], output_type="tokens", generator=gen(0), decoding=decoding).tokens
        assert torch.equal(out, plain), decoding


def test_bad_decoding_arguments_are_named():
    pipe = image_pipe()
    with pytest.raises(ValueError, match="decoding must be one of"):
        pipe(class_labels=[0], decoding="fast")
    with pytest.raises(ValueError, match="needs draft_model"):
        pipe(class_labels=[0], decoding="draft")
    with pytest.raises(ValueError, match="goes with decoding"):
        pipe(class_labels=[0], draft_model=image_pipe())
    with pytest.raises(ValueError, match="its own GPT"):
        pipe(class_labels=[0], decoding="draft", draft_model=pipe)
    with pytest.raises(ValueError, match="branching"):
        RecycledDraft(branching=(2, 0))
    with pytest.raises(ValueError, match="window"):
        JacobiDraft(window=0)
    with pytest.raises(ValueError, match="parents"):
        DraftTree(torch.zeros(1, 2, dtype=torch.long), (0, -1), torch.ones(1, 2, dtype=torch.bool))


# ---- distributions ----------------------------------------------------------------------------------
V, L = 4, 3


def tiny_lm() -> tuple[GPT, CategoricalHead]:
    torch.manual_seed(0)
    gpt = GPT(GPTConfig(vocab_size=V, dim=16, n_layers=1, n_heads=2, max_seq_len=16, start_token=True, init_std=0.5))
    head = CategoricalHead(CategoricalHeadConfig(dim=16, codebook_sizes=[V]))
    torch.nn.init.normal_(head.projections[0].weight, std=1.0)
    return gpt.eval(), head.eval()


def exact_sequence_probs(gpt: GPT, head: CategoricalHead, temperature: float) -> torch.Tensor:
    """Probability of each of the V**L sequences under the model (teacher forcing, softmax at ``temperature``)."""
    seqs = torch.tensor(list(itertools.product(range(V), repeat=L)))
    program = PatternProgram(gpt=gpt, pattern=Raster((L,)), rule=PreviousGroupInputs(gpt=gpt, head=head))
    with torch.no_grad():
        teacher = program.teacher(seqs)
        hidden = gpt.hidden_states(teacher.inputs_BLD, layout=teacher.layout)
        logp = torch.log_softmax(head.logits(hidden).double() / temperature, dim=-1)
    return logp.gather(2, seqs.unsqueeze(-1)).squeeze(-1).sum(1).exp()


@pytest.mark.parametrize("draft", [JacobiDraft(window=2), NGramDraft(max_ngram=1, length=2), RecycledDraft(branching=(2, 1))])
def test_speculative_draws_follow_the_models_distribution(draft):
    """20,000 sequences drawn speculatively (one batch, each row its own seed) against the exact V**L probabilities."""
    gpt, head = tiny_lm()
    N, temperature = 20_000, 0.8
    program = PatternProgram(gpt=gpt, pattern=Raster((L,)), rule=PreviousGroupInputs(gpt=gpt, head=head))
    cond = Conditioning.empty(N, 16)
    with torch.inference_mode():
        seq, _ = generate_speculative(gpt, head, program, cond, draft=draft, sampling=SamplingConfig(temperature=temperature),
                                      seeds_B=draw_seeds(gen(5), N), capacity=L)
    index = (seq * torch.tensor([V ** (L - 1 - i) for i in range(L)])).sum(1)
    assert chi_square_pvalue(index, exact_sequence_probs(gpt, head, temperature)) > FALSE_ALARM


def test_speculative_and_plain_draws_are_the_same_draws():
    gpt, head = tiny_lm()
    program = PatternProgram(gpt=gpt, pattern=Raster((L,)), rule=PreviousGroupInputs(gpt=gpt, head=head))
    cond, seeds = Conditioning.empty(64, 16), draw_seeds(gen(6), 64)
    with torch.inference_mode():
        plain, _ = generate(gpt, head, program, cond, sampling=SamplingConfig(), seeds_B=seeds, capacity=L)
        fast, _ = generate_speculative(gpt, head, program, cond, draft=JacobiDraft(window=2), sampling=SamplingConfig(),
                                       seeds_B=seeds, capacity=L)
    assert torch.equal(plain, fast)


@pytest.mark.parametrize("with_q", [False, True])
def test_residual_verification_is_distributed_as_the_target_whatever_the_draft(with_q):
    N = 20_000
    p = torch.tensor([0.05, 0.4, 0.3, 0.2, 0.05])
    q = torch.tensor([0.5, 0.1, 0.1, 0.1, 0.2])
    candidates = torch.multinomial(q, N, replacement=True, generator=gen(2))
    seeds = draw_seeds(gen(3), N)
    out, accepted = verify_residual(p.expand(N, -1), q.expand(N, -1) if with_q else None, candidates, seeds_N=seeds)
    assert chi_square_pvalue(out, p) > FALSE_ALARM
    expected = torch.minimum(p, q).sum() if with_q else (p * q).sum()  # P(accept): sum min(p, q), or E_q[p(c)]
    assert abs(accepted.float().mean() - expected) < 0.02


@pytest.mark.parametrize("resolution", [8, 16])
@torch.inference_mode()
def test_the_one_call_draft_slots_equal_the_per_node_forks(resolution):
    """PatternProgram's and OctreeProgram's draft_slots give what forking the state per node gives."""
    from mmgen.speculative import _forked_slots

    tokenizer = OctreeTokenizer({"resolution": resolution})
    cases = [build(NextTokenPipeline, tokenizer), image_pipe()]
    for pipe in cases:
        seq = pipe.tokenize(torch.rand(2, resolution, resolution, resolution, generator=gen(4)) > 0.6) \
            if pipe is cases[0] else pipe.to_sequence(pipe.tokenizer.to_positions(tokens(pipe)))[:2]
        program = pipe.program()
        state = program.start(2, pipe.gpt.device)
        request = program.next_group(state)
        for i in range(3):  # a few tokens in: the start is behind, the next nodes are known
            state = program.accept(state, seq[:, i:i + 1], request.valid_Bn)
            request = program.next_group(state)
        chain = seq[:, 3:6]
        tree = DraftTree(chain, chain_parents(3), torch.ones(2, 3, dtype=torch.bool))
        fast = program.draft_slots(program.fork(state), chain, tree.depths)
        assert fast is not None
        slow = _forked_slots(program, state, request, tree)
        for a, b in zip(fast, slow):
            assert torch.allclose(a.float(), b.float())
