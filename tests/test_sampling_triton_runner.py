"""Runs the Triton kernel's tests in the CPU interpreter, and compiles the kernel for a GPU.

TRITON_INTERPRET=1 has to be set before triton is imported, and setting it for the whole test
run would also put every other Triton kernel into the (slow) interpreter, so the kernel tests
in test_sampling_triton.py run in a child pytest process that has the variable set.
"""

import importlib.util
import inspect
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"

pytestmark = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed")


@pytest.mark.skipif(INTERPRETED, reason="this process is interpreted: test_sampling_triton.py runs here directly")
def test_triton_kernel_in_the_interpreter():
    env = dict(os.environ, TRITON_INTERPRET="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            str(ROOT / "tests" / "test_sampling_triton.py"),
        ],
        check=False,
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    report = result.stdout[-8000:] + result.stderr[-2000:]
    assert result.returncode == 0, report
    summary = result.stdout.strip().splitlines()[-1]
    assert " passed" in summary and "skipped" not in summary and "failed" not in summary, report


@pytest.mark.skipif(INTERPRETED, reason="the interpreter does not compile")
def test_kernel_compiles_for_a_cuda_target():
    """Lower the kernel with every feature on to PTX and a cubin for sm_90 (no GPU needed)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    if "nvidia" not in getattr(triton.backends, "backends", {}):
        pytest.skip("triton's NVIDIA backend is not installed")
    if "constexprs" not in inspect.signature(ASTSource).parameters:
        pytest.skip("this triton version's ASTSource takes constants differently")
    from mmgen.sampling.triton_kernel import _sample_kernel

    names = list(inspect.signature(_sample_kernel.fn).parameters)
    types = {
        "cond_ptr": "*bf16", "uncond_ptr": "*bf16", "stride_c": "i64", "stride_u": "i64",
        "temp_ptr": "*fp32", "temp": "fp32", "top_k_ptr": "*i64", "top_k": "i32",
        "top_p_ptr": "*fp32", "top_p": "fp32", "min_p_ptr": "*fp32", "min_p": "fp32",
        "cfg_ptr": "*fp32", "cfg": "fp32", "seed_ptr": "*i64", "ids_ptr": "*i64", "valid_ptr": "*i8",
        "V": "i32", "S": "i32",
    }  # fmt: skip
    flags = {name: True for name in names if name.isupper()}
    flags.update(BLOCK=1024, S_BLOCK=4)
    signature = {name: types.get(name, "constexpr") for name in names}
    source = ASTSource(
        fn=_sample_kernel, signature=signature, constexprs={(names.index(k),): v for k, v in flags.items()}
    )
    kernel = triton.compile(
        source, target=GPUTarget("cuda", 90, 32), options={"num_warps": 8, "enable_fp_fusion": True}
    )
    assert ".entry _sample_kernel" in kernel.asm["ptx"]
    assert kernel.asm["cubin"]
