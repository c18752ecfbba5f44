"""The AVX2 quantize micro-kernels (x86.quant) vs the pure-torch reference.

Codes (packed sign words, int8 codes) bit-exact, scale/offset within 1e-6 as for the TE
kernel (``test_kernels_llvm.py::test_quantize``), on the edge cases of the grid: constant
and zero blocks, exact zeros (the binary kept count), ties, a quotient ``(x - b)/s`` that
underflows to ``-0`` (binary code +1 although ``x < b``), λ = 0 with constant codes (scale
0), and leading dims. Also: which formats take the kernel, and that ``kernel_options`` picks
it only for AVX2 targets.
"""

from __future__ import annotations

import functools
from typing import Any

import pytest
import torch

tvm = pytest.importorskip("tvm")

from rqcompile.errors import NumericsError  # noqa: E402  (after the importorskip guard)
from rqcompile.quant import reference as ref  # noqa: E402
from rqcompile.targets.tvm.kernels import integer as K  # noqa: E402
from rqcompile.targets.tvm.adapter import host_llvm_target, te  # noqa: E402
from rqcompile.targets.tvm.cpu_features import host_features  # noqa: E402
from rqcompile.targets.tvm.x86.quant import (  # noqa: E402
    avx2_quantize,
    quantize_micro_supported,
)
from rqcompile.targets.tvm.schedules.integer import (  # noqa: E402
    kernel_kind,
    kernel_options,
    schedule_prim_func,
)

pytestmark = pytest.mark.tvm


@pytest.fixture(autouse=True)
def _need_avx2() -> None:
    if "avx2" not in host_features():
        pytest.skip("host has no AVX2")


@functools.cache
def _build(shape: tuple[int, ...], block: int, estimator: str, lam: float, bits: int) -> Any:
    x = te.placeholder(shape, "float32", name="x")
    outs = K.te_quantize(x, bits=bits, symmetric=False, block=block, estimator=estimator,
                         ridge_lambda=lam, pack=_pack(bits), isa="avx2")  # fmt: skip
    func = K.prim_func([x, *outs], name="kernel", kernel="quantize", block=block)
    func = schedule_prim_func(func, host_llvm_target())
    return tvm.compile(func, target=host_llvm_target())["kernel"]




def _pack(bits: int) -> str:
    return "bits32" if bits == 1 else "none"


def _run(x: torch.Tensor, block: int, estimator: str = "ridge", lam: float = 0.01,
         bits: int = 1) -> list[Any]:  # fmt: skip
    *lead, k = x.shape
    codes = (torch.empty(*lead, k // 32, dtype=torch.uint32) if bits == 1
             else torch.empty(*lead, k, dtype=torch.int8))  # fmt: skip
    outs = [codes, torch.empty(*lead, k // block), torch.empty(*lead, k // block)]
    _build(tuple(x.shape), block, estimator, lam, bits)(x.contiguous(), *outs)
    return outs


def _assert_matches(x: torch.Tensor, block: int, estimator: str, lam: float = 0.01,
                    bits: int = 1) -> None:  # fmt: skip
    codes, scale, offset = _run(x, block, estimator, lam, bits)
    rc, rs, ro = ref.quantize(x, bits=bits, symmetric=False, block=block, estimator=estimator,
                              ridge_lambda=lam, pack=_pack(bits))  # fmt: skip
    differ = int((codes != rc).sum())
    assert differ == 0, f"{differ} of {rc.numel()} codes differ"
    torch.testing.assert_close(scale, rs, rtol=1e-6, atol=1e-6 * float(rs.abs().max()))
    torch.testing.assert_close(offset, ro, rtol=1e-6, atol=1e-6 * float(x.abs().max()))


def _hard_input(shape: tuple[int, ...], block: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, generator=g) * 2 + 0.3
    flat = x.reshape(-1, shape[-1])
    flat[0, :block] = 0.0  # an all-zero block: kept count 0, s = EPS
    flat[1, 5:40] = 0.0  # exact zeros change the kept count
    flat[2, :block] = 1.5  # a constant block: x - b = 0 everywhere (codes +1)
    flat[3, : block // 2] = flat[3, : block // 2].round()  # many equal values (ties)
    # (x - b)/s underflows to -0 although x < b: code +1, as the reference's division gives
    flat[4, :block] = 0.0
    flat[4, 0], flat[4, 1], flat[4, 2] = -1000.0, 1000.0, -1e-45
    return x


@pytest.mark.parametrize("estimator", ["ridge", "ste"])
@pytest.mark.parametrize(("shape", "block"), [((6, 128), 128), ((5, 512), 128),
                                              ((2, 3, 192), 64), ((7, 64), 32)])  # fmt: skip
def test_codes_exact_and_stats_close(
    estimator: str, shape: tuple[int, ...], block: int, request: pytest.FixtureRequest
) -> None:
    _assert_matches(_hard_input(shape, block, seed=len(shape) * 7 + block), block, estimator)


@pytest.mark.parametrize("estimator", ["ridge", "ste"])
@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize(("shape", "block"), [((6, 128), 128), ((2, 3, 192), 64),
                                              ((7, 48), 16)])  # fmt: skip
def test_affine_codes_exact_and_stats_close(
    estimator: str, bits: int, shape: tuple[int, ...], block: int
) -> None:
    x = _hard_input(shape, block, seed=bits * 13 + block)
    flat = x.reshape(-1, shape[-1])
    flat[5, :block] = torch.arange(block) * (7.5 / (block - 1))  # ties at half codes
    _assert_matches(x, block, estimator, bits=bits)


def test_affine_lambda_zero_constant_block_gives_scale_zero() -> None:
    x = torch.full((2, 64), -0.25)  # min = max: s = EPS, every code 0, V = 0
    x[1] = torch.linspace(-1, 1, 64)
    _, scale, _ = _run(x, 64, "ridge", lam=0.0, bits=4)
    assert scale[0, 0].item() == 0.0 and torch.isfinite(scale).all()
    _assert_matches(x, 64, "ridge", lam=0.0, bits=4)


def test_underflowing_quotient_gives_code_plus_one() -> None:
    x = torch.zeros(1, 128)
    x[0, 0], x[0, 1], x[0, 2] = -1000.0, 1000.0, -1e-45
    codes, _, _ = _run(x, 128, "ste")
    assert int(codes[0, 0]) >> 2 & 1 == 1  # element 2 is below b = 0, yet its code is +1
    _assert_matches(x, 128, "ste")


@pytest.mark.parametrize("estimator", ["ridge", "ste"])
def test_plain_and_bounded_sign_paths(estimator: str, request: pytest.FixtureRequest) -> None:
    """Pass 3 compares ``x >= b`` when the block's ``s < 2`` and uses the exact bounds
    otherwise; rows of both kinds, also paired in one parallel iteration, and values just
    below ``b`` whose quotient underflows (code +1 on the bounded path only)."""
    g = torch.Generator().manual_seed(7)
    x = torch.randn(9, 256, generator=g)
    x[1::2] *= 300.0  # s >= 2: the bounded path (and odd/even rows share iterations)
    x[3, :3] = torch.tensor([-1e4, 1e4, -1e-45])  # bounded path, quotient underflows to -0
    x[3, 3:64] = 0.0
    _assert_matches(x, 64, estimator)


def test_lambda_zero_constant_codes_give_scale_zero() -> None:
    x = torch.full((2, 128), 0.75)  # every code +1: V = 0, λ = 0, the safe division
    x[1] = torch.linspace(-1, 1, 128)
    _, scale, _ = _run(x, 128, "ridge", lam=0.0)
    assert scale[0, 0].item() == 0.0 and torch.isfinite(scale).all()
    _assert_matches(x, 128, "ridge", lam=0.0)


def test_only_binary_affine_packed_formats_take_the_kernel() -> None:
    assert quantize_micro_supported(bits=1, symmetric=False, block=128, k=512,
                                    estimator="ridge", pack="bits32")  # fmt: skip
    assert quantize_micro_supported(bits=4, symmetric=False, block=16, k=64,
                                    estimator="ste", pack="none")  # fmt: skip
    for kw in ({"bits": 1, "symmetric": True}, {"bits": 4, "pack": "bits32"},
               {"bits": 8, "symmetric": True, "pack": "none"}, {"bits": 1.5, "pack": "none"},
               {"bits": 4, "pack": "none", "block": 24, "k": 48},
               {"bits": 2, "pack": "none", "block": 16, "k": 64, "estimator": "gdnsq"},
               {"symmetric": True, "estimator": "ridge_minmax"},
               {"pack": "none"}, {"block": 48, "k": 96}):  # fmt: skip
        args = {"bits": 1, "symmetric": False, "block": 128, "k": 512, "estimator": "ridge",
                "pack": "bits32", **kw}  # fmt: skip
        assert not quantize_micro_supported(**args), kw
    x = te.placeholder((4, 256), "float32")
    with pytest.raises(NumericsError, match="AVX2 quantizer"):
        avx2_quantize(x, bits=1, block=96, estimator="ridge", ridge_lambda=0.01,
                      pack="bits32", name="q", attrs={})  # fmt: skip
    with pytest.raises(NumericsError, match="unknown isa"):
        K.te_quantize(x, bits=1, symmetric=False, block=128, isa="neon")


def test_micro_kernel_is_one_extern_stage_the_schedules_recognise() -> None:
    x = te.placeholder((4, 256), "float32")
    fit = K.te_quantize(x, bits=1, symmetric=False, block=128, pack="bits32", isa="avx2")
    func = te.create_prim_func([x, *fit])  # one te.extern stage: no root block
    assert kernel_kind(func) == "quantize"
    assert schedule_prim_func(func, host_llvm_target()) is not func  # marked, left as built
    generic = K.te_quantize(x, bits=1, symmetric=False, block=128, pack="bits32")
    assert type(fit[0].op).__name__ == "ExternOp"
    assert type(generic[0].op).__name__ == "ComputeOp"  # isa="generic": the TE stages


def test_kernel_options_pick_the_quantizer_for_avx2_only() -> None:
    assert kernel_options({"kind": "llvm", "mcpu": "znver3"})["quantize"] == {"isa": "avx2"}
    assert "quantize" not in kernel_options({"kind": "llvm", "mattr": ["-avx2"]})
    assert "quantize" not in kernel_options({"kind": "llvm", "mcpu": "x86-64"})
