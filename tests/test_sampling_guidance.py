"""Guidance schedules against the anchors' own formulas, and SamplingConfig."""

import math

import pytest
import torch

from mmgen.sampling import GuidanceSchedule, SamplingConfig, apply_guidance, sample


def test_constant_schedule():
    schedule = GuidanceSchedule(scale=4.0)
    assert [schedule.scale_at(i, 5) for i in range(5)] == [4.0] * 5


@pytest.mark.parametrize("cfg", [1.5, 3.0])
def test_linear_schedule_reproduces_var(cfg):
    """VAR: t = cfg * si / (K - 1); logits = (1 + t) * cond - t * uncond."""
    K = 10
    g = torch.Generator().manual_seed(0)
    cond, uncond = torch.randn(4, 4096, generator=g), torch.randn(4, 4096, generator=g)
    schedule = GuidanceSchedule.from_var(cfg=cfg)
    for si in range(K):
        t = cfg * si / (K - 1)
        var_logits = (1 + t) * cond - t * uncond
        ours = apply_guidance(cond, uncond, schedule.scale_at(si, K))
        torch.testing.assert_close(ours, var_logits, rtol=1e-5, atol=1e-5)
    assert schedule.scale_at(0, K) == 1.0 and schedule.scale_at(K - 1, K) == 1.0 + cfg


def test_linear_schedule_with_one_step_is_the_full_scale():
    assert GuidanceSchedule(scale=3.0, kind="linear").scale_at(0, 1) == 3.0


@pytest.mark.parametrize("scale_pow", [1.0, 2.5])
def test_power_cosine_schedule_reproduces_rar(scale_pow):
    """RAR: cfg = (guidance_scale - 1) * (1 - cos((step / K) ** pow * pi)) / 2 + 1."""
    K, guidance_scale = 256, 8.0
    schedule = GuidanceSchedule.from_rar(guidance_scale=guidance_scale, guidance_scale_pow=scale_pow)
    for step in range(K):
        rar = (guidance_scale - 1) * (1 - math.cos(((step / K) ** scale_pow) * math.pi)) / 2 + 1
        assert schedule.scale_at(step, K) == pytest.approx(rar, rel=1e-12)
    assert schedule.scale_at(0, K) == 1.0
    assert schedule.scale_at(K // 2, K) < schedule.scale_at(K - 1, K) < guidance_scale


@pytest.mark.parametrize("cfg_interval", [-1, 0, 3, 10, 30])
def test_interval_reproduces_llamagen_cfg_interval(cfg_interval):
    """LlamaGen: token 0 (prefill) is guided; decode step i samples token i + 1 and is guided
    unless cfg_interval > -1 and i > cfg_interval."""
    K = 16
    guided = [True] + [not (cfg_interval > -1 and i > cfg_interval) for i in range(K - 1)]
    schedule = GuidanceSchedule.from_llamagen(cfg_scale=4.0, cfg_interval=cfg_interval, num_steps=K)
    assert [schedule.scale_at(t, K) != 1.0 for t in range(K)] == guided
    assert {schedule.scale_at(t, K) for t in range(K) if guided[t]} == {4.0}


def test_llamagen_scale_at_most_one_means_no_guidance():
    assert GuidanceSchedule.from_llamagen(cfg_scale=0.5, num_steps=4).scale_at(2, 4) == 1.0


def test_interval_gates_a_ramp():
    schedule = GuidanceSchedule(scale=5.0, kind="linear", interval=(0.25, 0.75))
    scales = [schedule.scale_at(i, 8) for i in range(8)]
    assert scales[:2] == [1.0, 1.0] and scales[6:] == [1.0, 1.0]
    assert scales[2:6] == [1.0 + 4.0 * i / 7 for i in range(2, 6)]


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"kind": "cosine"}, "kind must be one of"),
        ({"power": 0.0}, "power must be"),
        ({"scale": math.inf}, "scale must be a finite number"),
        ({"interval": (0.5, 0.5)}, "interval must be"),
        ({"interval": (-0.1, 0.5)}, "interval must be"),
    ],
)
def test_bad_schedules(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GuidanceSchedule(**kwargs)


def test_bad_steps():
    schedule = GuidanceSchedule(scale=2.0)
    with pytest.raises(ValueError, match="num_steps must be >= 1"):
        schedule.scale_at(0, 0)
    with pytest.raises(ValueError, match=r"step must be in \[0, num_steps\) = \[0, 4\), got 4"):
        schedule.scale_at(4, 4)


def test_config_samples_like_sample_with_the_scheduled_scale():
    config = SamplingConfig(temperature=0.9, top_k=20, top_p=0.9, guidance_scale=3.0, guidance_schedule="linear")
    g = torch.Generator().manual_seed(0)
    cond, uncond = torch.randn(4, 100, generator=g), torch.randn(4, 100, generator=g)
    got = config.sample(cond, uncond_logits=uncond, step=2, num_steps=5, seed=1)
    want = sample(cond, uncond_logits=uncond, temperature=0.9, top_k=20, top_p=0.9, guidance_scale=2.0, seed=1)
    assert config.guidance_scale_at(2, 5) == 2.0
    assert torch.equal(got, want)


def test_config_needs_uncond_exactly_when_guiding():
    config = SamplingConfig(guidance_scale=3.0, guidance_interval=(0.0, 0.5))
    cond = torch.randn(2, 10, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="guidance scale at step 0 of 4 is 3.0; pass uncond_logits"):
        config.sample(cond, step=0, num_steps=4)
    assert torch.equal(config.sample(cond, step=3, num_steps=4, seed=0), sample(cond, seed=0))


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"top_p": 0.0}, r"top_p must be a value in \(0, 1\], got 0.0"),
        ({"top_k": -1}, r"top_k must be an integer >= 0 \(0 = off\), got -1"),
        ({"temperature": -0.5}, "temperature must be a finite value >= 0"),
        ({"min_p": 2.0}, r"min_p must be a value in \[0, 1\]"),
        ({"backend": "cuda"}, "backend must be one of"),
        ({"guidance_schedule": "cos"}, "guidance_schedule must be one of"),
    ],
)
def test_bad_configs(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SamplingConfig(**kwargs)
