"""Scoring known tokens: ``ARPipeline.log_likelihood`` (teacher-forced log p of a sequence's first positions under
a condition) and ``class_posterior`` (which condition the model reads in them, e.g. for image-to-video without a
caption). Tiny random pipelines: these check that the numbers are the model's own probabilities, not quality.
"""

from __future__ import annotations

import itertools

import pytest
import torch
from audio_fixtures import JUDGED_CLIP, SR, tones_codec
from pipeline_fixtures import NUM_CLASSES, build, kl_tokenizer, text_conditioner, vq_tokenizer

from mmgen.conditioning import ClassConditioner
from mmgen.data import NUM_TONE_CLASSES, TonesDataset
from pipelines import NextTokenPipeline, NextXPipeline

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _next_token(codebook_size: int = 4) -> NextTokenPipeline:
    return build(NextTokenPipeline, vq_tokenizer(codebook_size=codebook_size))


def test_the_likelihoods_of_every_prefix_sum_to_one():
    """Over all 4**2 values of the first two positions, p(prefix | class) is a distribution: no position sees its own target."""
    pipe = _next_token()
    prefixes = torch.tensor(list(itertools.product(range(4), repeat=2)))
    for label in (0, NUM_CLASSES - 1):
        ll = pipe.log_likelihood(prefixes, class_labels=[label] * len(prefixes))
        assert ll.shape == (16,) and bool((ll < 0).all())
        assert float(ll.exp().sum()) == pytest.approx(1.0, abs=1e-5)


def test_only_the_given_positions_are_scored_whatever_follows():
    pipe = _next_token(codebook_size=32)
    seq = pipe(class_labels=[1, 2], output_type="tokens", generator=torch.Generator().manual_seed(0)).tokens
    seq = pipe.to_sequence(pipe.tokenizer.to_positions(seq))
    other = seq.clone()
    other[:, 5:] = (other[:, 5:] + 1) % 32
    prefix = pipe.log_likelihood(seq[:, :5], class_labels=[1, 2])
    assert torch.allclose(prefix, pipe.log_likelihood(other[:, :5], class_labels=[1, 2]))
    whole = pipe.log_likelihood(seq, class_labels=[1, 2])
    assert bool((whole < prefix).all())  # every further position costs probability
    with pytest.raises(ValueError, match="seq holds 17 positions; this pipeline's sequences have 16"):
        pipe.log_likelihood(torch.cat([seq, seq[:, :1]], dim=1), class_labels=[1, 2])


def test_a_whole_delayed_sequence_scores_minus_its_training_loss():
    """Audio's delay pattern leaves entries out of the loss; the likelihood sums exactly the entries training counts."""
    conditioner = ClassConditioner(ClassConditioner.config_class(dim=32, num_classes=NUM_TONE_CLASSES))
    pipe = NextTokenPipeline.from_tokenizer(tones_codec("rvq"), conditioner=conditioner, gpt={"dim": 32, "n_layers": 1, "n_heads": 2},
                                            codebook_pattern="delay")
    batch = TonesDataset(length=3, seconds=JUDGED_CLIP / SR, seed=2).batch(range(3))
    seq = pipe.tokenize(batch["audio"])
    labels = batch["class_id"].tolist()
    ll = pipe.log_likelihood(seq, class_labels=labels)
    entries = int(pipe.program().teacher(seq).mask[0].sum())
    for b in range(3):
        with torch.no_grad():
            loss, _ = pipe.loss(seq[b : b + 1], class_labels=[labels[b]], cond_drop_prob=0.0)
        assert float(ll[b]) == pytest.approx(-float(loss) * entries, rel=1e-5)


def test_the_class_posterior_is_bayes_rule_over_the_likelihoods_in_any_batch():
    pipe = _next_token(codebook_size=32)
    seq = pipe.tokenize(torch.rand(2, 3, 16, 16) * 2 - 1)[:, :4]
    posterior = pipe.class_posterior(seq, batch_size=3)
    assert posterior.shape == (2, NUM_CLASSES)
    ll = torch.stack([pipe.log_likelihood(seq, class_labels=[c, c]) for c in range(NUM_CLASSES)], dim=1)
    assert torch.allclose(posterior, ll.log_softmax(-1), atol=1e-5)
    assert torch.allclose(pipe.class_posterior(seq, batch_size=1), posterior, atol=1e-5)
    some = pipe.class_posterior(seq, candidates=[3, 1])
    assert torch.allclose(some, ll[:, [3, 1]].log_softmax(-1), atol=1e-5)


def test_text_pipelines_weigh_the_prompts_they_are_given():
    pipe = build(NextTokenPipeline, vq_tokenizer(codebook_size=32), conditioner=text_conditioner())
    seq = pipe.tokenize(torch.rand(1, 3, 16, 16) * 2 - 1)
    prompts = ["a red square", "a blue circle", ""]
    posterior = pipe.class_posterior(seq, candidates=prompts)
    ll = torch.stack([pipe.log_likelihood(seq, prompt=[p]) for p in prompts], dim=1)
    assert torch.allclose(posterior, ll.log_softmax(-1), atol=1e-5)
    with pytest.raises(ValueError, match="candidates must list the prompts to weigh"):
        pipe.class_posterior(seq)


def test_scoring_refuses_what_it_cannot_score():
    pipe = _next_token()
    with pytest.raises(ValueError, match="candidates must be a non-empty list of class ids or of prompts"):
        pipe.class_posterior(torch.zeros(1, 2, dtype=torch.long), candidates=[1, "a"])
    with pytest.raises(ValueError, match="seq must be a tensor"):
        pipe.log_likelihood(torch.zeros(2, dtype=torch.long), class_labels=[0, 0])
    with pytest.raises(ValueError, match="seq"):
        pipe.log_likelihood(torch.full((1, 2), 4), class_labels=[0])  # id 4 of a 4-code book
    flow = build(NextXPipeline, kl_tokenizer())
    with pytest.raises(ValueError, match="log_likelihood scores ids"):
        flow.log_likelihood(torch.zeros(1, 1, 4), class_labels=[0])
