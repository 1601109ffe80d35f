"""The draft gate: drafting where it gives more tokens per second than plain steps, plain steps elsewhere.

Time is a fake clock here (nothing is timed): each GPT forward of n positions "takes" 1 + cost * (n - 1).
"""

from __future__ import annotations

import pytest
import torch
from pipeline_fixtures import build, count_gpt_forwards, gen, vq_tokenizer

from mmgen.draft_gate import DraftGate
from mmgen.generation import draw_seeds, generate
from mmgen.sampling import SamplingConfig
from mmgen.speculative import DecodingStats, DraftTree, chain_parents, generate_speculative
from pipelines import NextTokenPipeline

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def run_steps(gate: DraftGate, clock: FakeClock, outcomes, *, plain_seconds: float = 1.0) -> list[bool]:
    """Drive the gate: ``outcomes(step)`` gives (tokens kept, seconds) of a drafting step. Returns who drafted."""
    asked = []
    for step in range(len(outcomes)):
        drafting = gate.wants_draft()
        tokens, seconds = outcomes[step] if drafting else (1, plain_seconds)
        clock.now += seconds
        gate.end_step(tokens=tokens, drafted=drafting)
        asked.append(drafting)
    return asked


def test_a_draft_that_pays_keeps_drafting_apart_from_refreshing_the_plain_rate():
    clock = FakeClock()
    gate = DraftGate(clock=clock, refresh_every=50)
    asked = run_steps(gate, clock, [(3, 1.5)] * 200)
    assert not asked[0]  # the plain step's time comes first
    plain_steps = [i for i, a in enumerate(asked) if not a]
    assert plain_steps == [0, 51, 102, 153]  # one plain step after every 50 drafting ones
    assert gate.drafting and gate.draft_rate == pytest.approx(2.0) and gate.plain_rate == pytest.approx(1.0)


def test_a_draft_that_does_not_pay_is_asked_ever_more_rarely():
    clock = FakeClock()
    gate = DraftGate(clock=clock, probe_length=3, probe_every=8, max_probe_every=32)
    asked = run_steps(gate, clock, [(1, 1.5)] * 300)
    drafted = [i for i, a in enumerate(asked) if a]
    assert not gate.drafting
    assert drafted[:6] == [1, 2, 3, 12, 13, 14]  # drafting from the start until the evidence says otherwise, then probes
    gaps = [b - a for a, b in zip(drafted, drafted[1:]) if b - a > 1]
    assert gaps[:3] == [9, 17, 33] and set(gaps[3:]) == {33}  # probes of 3 steps, waits doubling up to 32
    assert sum(asked) < 0.15 * len(asked)


def test_a_source_that_gets_better_is_noticed_at_a_probe():
    clock = FakeClock()
    gate = DraftGate(clock=clock, probe_every=4, max_probe_every=16)
    outcomes = [(1, 1.5)] * 100 + [(4, 1.5)] * 100
    asked = run_steps(gate, clock, outcomes)
    assert sum(asked[:100]) < 40 and sum(asked[150:]) >= 49 and gate.drafting


@pytest.mark.parametrize("name, value", [("token_decay", 1.0), ("time_decay", 0), ("margin", -1.0), ("probe_length", 0), ("probe_every", True), ("refresh_every", -1)])
def test_bad_gate_arguments_are_named(name, value):
    with pytest.raises(ValueError, match=name):
        DraftGate(**{name: value})
    with pytest.raises(ValueError, match="max_probe_every"):
        DraftGate(probe_every=8, max_probe_every=4)
    with pytest.raises(RuntimeError, match="wants_draft"):
        DraftGate().end_step(tokens=1, drafted=False)


class WrongChains:
    """A source whose chains are always wrong (the id after the target's): it never saves a forward."""

    topk, max_nodes = 0, 4

    def __init__(self) -> None:
        self.proposed = 0

    def begin(self, batch_size, prefill):
        self.batch_size = batch_size

    def propose(self):
        self.proposed += 1
        chain = torch.full((self.batch_size, 4), 10_000)  # out of the vocabulary: never equal to a draw
        return DraftTree(chain % 32, chain_parents(4), torch.zeros(self.batch_size, 4, dtype=torch.bool) | True)

    def observe(self, step):
        pass

    def end(self, sequences, valid):
        pass


def test_a_gated_call_stays_lossless_and_stops_asking_a_source_that_costs_time():
    pipe = build(NextTokenPipeline, vq_tokenizer())
    pipe.register_to_config(null_condition_trained=True)
    clock = FakeClock()
    lengths = count_gpt_forwards(pipe)
    trunk = pipe.gpt.hidden_states

    def timed(x, **kwargs):
        clock.now += 1.0 + 0.25 * (x.shape[1] - 1)
        return trunk(x, **kwargs)

    pipe.gpt.hidden_states = timed
    cond = pipe.conditioner.condition(class_labels=[0, 1], guided=False)
    program = pipe.program(start_inputs=cond.start_R1D)
    sampling = SamplingConfig(temperature=1.0)
    seeds = draw_seeds(gen(3), 2)
    plain = generate(pipe.gpt, pipe.head, program, cond, sampling=sampling, seeds_B=seeds, capacity=program.num_positions)[0]
    gate, source = DraftGate(clock=clock, probe_every=4), WrongChains()
    for _ in range(4):
        stats = DecodingStats()
        seq = generate_speculative(pipe.gpt, pipe.head, pipe.program(start_inputs=cond.start_R1D), cond, draft=source,
                                   sampling=sampling, seeds_B=seeds, capacity=program.num_positions, gate=gate,
                                   stats=stats)[0]
        assert torch.equal(seq, plain)
        assert stats.forwards == 16  # wrong chains never save a forward
    assert not gate.drafting and source.proposed < 0.3 * 4 * 16
    assert lengths  # the forwards went through the wrapped trunk
    with pytest.raises(TypeError, match="gate"):
        generate_speculative(pipe.gpt, pipe.head, program, cond, draft=source, sampling=sampling, seeds_B=seeds,
                             capacity=program.num_positions, gate="on")
    with pytest.raises(TypeError, match="gated"):
        pipe(class_labels=[0], decoding="jacobi", gated="yes")
