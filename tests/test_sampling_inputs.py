"""Bad input to sample(): each error names the argument and what was expected."""

import math

import pytest
import torch

from mmgen.sampling import sample, triton_available

X = torch.zeros(3, 10)


@pytest.mark.parametrize(
    "logits,kwargs,error,match",
    [
        (torch.zeros(10), {}, ValueError, r"logits must have shape \[N, V\].*got \(10,\)"),
        (torch.zeros(2, 3, 10), {}, ValueError, r"logits must have shape \[N, V\].*got \(2, 3, 10\)"),
        (torch.zeros(3, 0), {}, ValueError, "at least one column"),
        (torch.zeros(3, 10, dtype=torch.int64), {}, TypeError, "logits must have a floating dtype.*torch.int64"),
        ([[0.0, 1.0]], {}, TypeError, "logits must be a torch.Tensor, got list"),
        (
            X,
            {"uncond_logits": torch.zeros(3, 11)},
            ValueError,
            r"uncond_logits must have the shape of logits \(3, 10\), got \(3, 11\)",
        ),
        (
            X,
            {"uncond_logits": torch.zeros(3, 10, dtype=torch.int32)},
            TypeError,
            "uncond_logits must have a floating dtype",
        ),
        (X, {"top_p": 0.0}, ValueError, r"top_p must be a value in \(0, 1\], got 0.0"),
        (X, {"top_p": 1.01}, ValueError, r"top_p must be a value in \(0, 1\], got 1.01"),
        (X, {"top_p": math.nan}, ValueError, r"top_p must be a value in \(0, 1\], got nan"),
        (X, {"top_k": -1}, ValueError, r"top_k must be an integer in \[0, V\] = \[0, 10\] \(0 = off\), got -1"),
        (X, {"top_k": 11}, ValueError, r"top_k must be an integer in \[0, V\] = \[0, 10\] \(0 = off\), got 11"),
        (X, {"top_k": 2.0}, TypeError, "top_k must be an int or an integer tensor"),
        (X, {"top_k": True}, TypeError, "top_k must be an int"),
        (X, {"temperature": -1.0}, ValueError, "temperature must be a finite value >= 0, got -1.0"),
        (X, {"temperature": math.inf}, ValueError, "temperature must be a finite value >= 0, got inf"),
        (X, {"temperature": "hot"}, TypeError, "temperature must be a number or a float tensor"),
        (X, {"min_p": -0.1}, ValueError, r"min_p must be a value in \[0, 1\], got -0.1"),
        (X, {"min_p": 1.5}, ValueError, r"min_p must be a value in \[0, 1\], got 1.5"),
        (X, {"guidance_scale": 2.0}, ValueError, "guidance_scale other than 1.0 needs uncond_logits"),
        (
            X,
            {"guidance_scale": math.inf, "uncond_logits": X},
            ValueError,
            "guidance_scale must be a finite value, got inf",
        ),
        (X, {"top_p": torch.ones(4)}, ValueError, r"top_p as a tensor must have shape \[N\] = \[3\].*got \(4,\)"),
        (X, {"temperature": torch.ones(3, 1)}, ValueError, r"temperature as a tensor must have shape \[N\] = \[3\]"),
        (X, {"top_k": torch.ones(3)}, TypeError, "top_k as a tensor must have an integer dtype, got torch.float32"),
        (X, {"top_p": torch.ones(3, dtype=torch.int64)}, TypeError, "top_p as a tensor must have a floating dtype"),
        (X, {"seed": 1, "generator": torch.Generator()}, ValueError, "pass either generator or seed"),
        (X, {"seed": torch.zeros(3, dtype=torch.int32)}, TypeError, "seed as a tensor must be int64"),
        (X, {"seed": torch.zeros(2, dtype=torch.int64)}, ValueError, r"seed as a tensor must have shape \[N\] = \[3\]"),
        (X, {"seed": 2**63}, ValueError, "seed must fit in int64"),
        (X, {"seed": 1.5}, TypeError, "seed must be an int or an int64 tensor"),
        (X, {"generator": 0}, TypeError, "generator must be a torch.Generator or None, got int"),
        (X, {"num_samples": 0}, ValueError, "num_samples must be None or an int >= 1, got 0"),
        (X, {"return_valid": 1}, TypeError, "return_valid must be a bool"),
        (
            X,
            {"backend": "cuda"},
            ValueError,
            r"backend must be one of \('auto', 'reference', 'fast', 'triton'\), got 'cuda'",
        ),
    ],
)
def test_bad_arguments(logits, kwargs, error, match):
    with pytest.raises(error, match=match):
        sample(logits, **kwargs)


@pytest.mark.skipif(not triton_available(), reason="triton is not installed")
def test_triton_backend_refuses_cpu_tensors_outside_the_interpreter():
    import os

    if os.environ.get("TRITON_INTERPRET") == "1":
        pytest.skip("the interpreter runs CPU tensors")
    with pytest.raises(ValueError, match="backend='triton' needs CUDA tensors"):
        sample(X, backend="triton")


def test_zero_dim_tensor_parameters_apply_to_every_row():
    x = torch.randn(4, 30, generator=torch.Generator().manual_seed(0))
    got = sample(x, top_k=torch.tensor(3), temperature=torch.tensor(0.5), seed=2, num_samples=10)
    assert torch.equal(got, sample(x, top_k=3, temperature=0.5, seed=2, num_samples=10))
