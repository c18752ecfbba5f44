"""target="cuda": CUDA source generation and nvcc compilation (CI, no GPU), execution (GPU).

Code generation and the nvcc build for sm_80 + sm_90 run wherever nvcc is installed (it is
on this project's CI machine); they skip with the reason otherwise. Execution tests are
marked ``cuda`` and skip without a GPU. No GPU was available when these were written: the
``cuda``-marked tests have never run (see docs/targets.md).
"""

from __future__ import annotations

import functools
from typing import Any

import pytest
import torch

tvm = pytest.importorskip("tvm")

import rqcompile as rq  # noqa: E402  (after the importorskip guard)
from rqcompile.targets.tvm.device import codegen  # noqa: E402
from rqcompile.testing.models import prepared_tiny  # noqa: E402

pytestmark = pytest.mark.tvm
needs_nvcc = pytest.mark.skipif(
    codegen.find_nvcc() is None, reason="nvcc not found (install the CUDA toolkit)"
)
_FATBIN_MAGIC = bytes.fromhex("50ed55ba")  # 0xBA55ED50, little-endian


@functools.cache
def _lowered(preset: str) -> tuple[Any, tuple[torch.Tensor, ...], Any]:
    torch.manual_seed(0)
    qat, ex = prepared_tiny("mlp", preset)
    return qat, ex, rq.lower(qat, "cuda")


@needs_nvcc
def test_cuda_source_and_fatbin_for_sm80_sm90() -> None:
    _, _, exe = _lowered("A1W1")
    src, fatbin = exe.backend.source, exe.backend.binary
    assert 'extern "C" __global__' in src
    assert "__popc(" in src  # XNOR-popcount
    assert fatbin is not None and fatbin[:4] == _FATBIN_MAGIC
    assert codegen.fatbin_archs(fatbin) == ["sm_80", "sm_90"]  # one cubin per default arch


@needs_nvcc
@pytest.mark.slow
@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_each_arch_compiles_alone(arch: str) -> None:
    _, _, exe = _lowered("A1W1")
    assert codegen.fatbin_archs(codegen.nvcc_fatbin(exe.backend.source, [arch])) == [arch]


@needs_nvcc
def test_bad_arch_is_a_target_error() -> None:
    with pytest.raises(rq.TargetError, match="sm_80"):
        codegen.nvcc_fatbin("", ["ampere"])


def test_missing_nvcc_names_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(codegen, "find_nvcc", lambda: None)
    with pytest.raises(rq.TargetError, match="nvcc.*CUDA toolkit.*opencl"):
        codegen.nvcc_fatbin("__global__ void k() {}")


@needs_nvcc
@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU message")
def test_without_gpu_the_build_saves_but_does_not_run(tmp_path: Any) -> None:
    _, ex, exe = _lowered("A1W1")
    with pytest.raises(rq.TargetError, match="no CUDA GPU"):
        exe(*ex)
    exe.save(tmp_path / "m.rq")
    loaded = rq.load(tmp_path / "m.rq")
    assert loaded.backend.binary == exe.backend.binary
    with pytest.raises(rq.TargetError, match="no CUDA GPU"):
        loaded(*ex)


@needs_nvcc
@pytest.mark.cuda
@pytest.mark.parametrize("preset", ["A4W4", "A1W1", "A4W1+2:4"])
def test_cuda_matches_reference(preset: str) -> None:
    qat, ex, exe = _lowered(preset)
    want = rq.lower(qat, "reference")(*ex)
    got = exe(*(x.cuda() for x in ex))
    assert got.is_cuda
    torch.testing.assert_close(got.cpu(), want, rtol=1e-4, atol=1e-4 * float(want.abs().max()))
