"""The min/max grids at 1 and 1.5 bits on TVM (issue 22): every quantize kernel vs the IR semantics.

``rq.quantize`` with ``estimator`` ``ridge_minmax`` / ``ste_minmax`` (and ``gdnsq``, whose 1-bit
grid is the same {0, 1}-code min/max grid) against ``rqcompile/ir/semantics.py``: codes
bit-exact, scale/offset within 1e-6 (as every quantize kernel). Each kernel row is built
explicitly: the TE stages (``quantize.generic``, plain and scheduled), the AVX2 micro-kernel
(``quantize.avx2``) and the fused GELU / layer-norm prologues that share it. Inputs hit the
grid's edges: constant and all-zero blocks, exact zeros, ties, values one ulp either side of
the {0, 1} grid's mid-range threshold, and λ = 0 with constant codes.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import pytest
import torch

tvm = pytest.importorskip("tvm")

from rqcompile.ir.semantics import KERNELS  # noqa: E402  (after the importorskip guard)
from rqcompile.targets.tvm.adapter import host_llvm_target, te  # noqa: E402
from rqcompile.targets.tvm.cpu_features import host_features  # noqa: E402
from rqcompile.targets.tvm.kernels import integer as K  # noqa: E402
from rqcompile.targets.tvm.kernels.common import STAGE_ATTR  # noqa: E402
from rqcompile.targets.tvm.schedules.integer import schedule_prim_func  # noqa: E402
from rqcompile.targets.tvm.x86.prologue import te_prologue_quantize  # noqa: E402
from rqcompile.targets.tvm.x86.quant import quantize_micro_supported  # noqa: E402

pytestmark = pytest.mark.tvm

_DT = {"uint32": torch.uint32, "int8": torch.int8, "float32": torch.float32}


def _semantics(x: torch.Tensor, **attrs: Any) -> tuple[torch.Tensor, ...]:
    """``rq.quantize`` as the IR semantics define it."""
    return tuple(KERNELS["rq.quantize"]((x,), attrs))


def _need_avx2() -> None:
    if "avx2" not in host_features():
        pytest.skip("host has no AVX2 to run the quantize.avx2 row")


@functools.cache
def _built(shape: tuple[int, ...], attrs: tuple[tuple[str, Any], ...], isa: str,
           scheduled: bool) -> tuple[Any, list[tuple[tuple[int, ...], str]]]:  # fmt: skip
    x = te.placeholder(shape, "float32", name="x")
    outs = K.te_quantize(x, **dict(attrs), isa=isa)
    func = K.prim_func([x, *outs], name="kernel", kernel="quantize", block=dict(attrs)["block"])
    micro = f'"{STAGE_ATTR}": "micro"' in str(func)
    assert micro == (isa == "avx2"), f"isa={isa!r} built the {'micro' if micro else 'TE'} kernel"
    if scheduled:
        func = schedule_prim_func(func, host_llvm_target())
    specs = [(tuple(int(d) for d in o.shape), str(o.dtype)) for o in outs]
    return tvm.compile(func, target=host_llvm_target())["kernel"], specs


def _check(x: torch.Tensor, isa: str, scheduled: bool, **attrs: Any) -> None:
    fn, specs = _built(tuple(x.shape), tuple(sorted(attrs.items())), isa, scheduled)
    codes, scale, offset = (torch.empty(s, dtype=_DT[d]) for s, d in specs)
    fn(x.contiguous(), codes, scale, offset)
    rc, rs, ro = _semantics(x, **attrs)
    assert codes.dtype == rc.dtype and codes.shape == rc.shape
    differ = int((codes != rc).sum())
    assert differ == 0, f"{differ} of {rc.numel()} codes differ"
    torch.testing.assert_close(scale, rs, rtol=1e-6, atol=1e-6 * float(rs.abs().max()))
    torch.testing.assert_close(offset, ro, rtol=1e-6, atol=1e-6 * float(x.abs().max()))


def _mid_range_row(block: int, lo: float, hi: float) -> torch.Tensor:
    """A block spanning [lo, hi] whose other values sit at, and one ulp either side of, the
    {0, 1} grid's threshold ``lo + (hi - lo)/2`` as the kernels compute it (float32)."""
    lo32, hi32 = torch.tensor(lo), torch.tensor(hi)
    s = hi32 - lo32
    mid = lo32 + s / 2
    near = [mid, torch.nextafter(mid, hi32), torch.nextafter(mid, lo32)]
    # values whose float32 x - lo is exactly s/2 and its neighbours (z = 0.5 rounds to 0)
    for d in (s / 2, torch.nextafter(s / 2, s), torch.nextafter(s / 2, torch.tensor(0.0))):
        near.append(lo32 + d)
    row = torch.stack(near).repeat(math.ceil(block / len(near)))[:block].clone()
    row[0], row[1] = lo32, hi32
    return row


def _hard_input(shape: tuple[int, ...], block: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, generator=g) * 2 + 0.3
    flat = x.reshape(-1, shape[-1])
    flat[0, :block] = 0.0  # an all-zero block: s_f clamps to EPS, V = 0
    flat[1, 5 : block // 2] = 0.0  # exact zeros
    flat[2, :block] = 1.5  # a constant block
    flat[3, : block // 2] = flat[3, : block // 2].round()  # many equal values (ties)
    flat[4, :block] = _mid_range_row(block, -0.3, 0.77)
    flat[5, :block] = _mid_range_row(block, 0.0, 1.0)  # the ternary ties |z| = 1/2 too
    flat[6, :block] = torch.linspace(-1, 1, block)  # ternary: ±1/2 exactly in the block
    return x


#: (bits, symmetric, estimator, pack): the deployed quantizers of the min/max grids.
GRID_QUANTIZERS = [
    (1, False, "ridge_minmax", "bits32"),
    (1, False, "ridge_minmax", "none"),
    (1, True, "ridge_minmax", "bits32"),
    (1.5, True, "ridge_minmax", "none"),
    (1, True, "ste_minmax", "bits32"),
    (1.5, True, "ste_minmax", "none"),
    (1, False, "ste_minmax", "bits32"),
    (1, False, "gdnsq", "bits32"),
]


@pytest.mark.parametrize("scheduled", [False, True], ids=["plain", "sched"])
@pytest.mark.parametrize(("bits", "symmetric", "estimator", "pack"), GRID_QUANTIZERS)
def test_generic_row_matches_semantics(
    bits: float, symmetric: bool, estimator: str, pack: str, scheduled: bool
) -> None:
    x = _hard_input((2, 4, 192), 64, seed=int(bits * 10) + len(estimator))
    for lam in (0.01, 0.0):
        _check(x, "generic", scheduled, bits=bits, symmetric=symmetric, block=64,
               estimator=estimator, ridge_lambda=lam, pack=pack)  # fmt: skip


@pytest.mark.parametrize("estimator", ["ridge_minmax", "gdnsq", "ste_minmax"])
@pytest.mark.parametrize(("shape", "block"), [((7, 128), 128), ((8, 512), 128),
                                              ((2, 4, 192), 64), ((9, 64), 32)])  # fmt: skip
def test_avx2_row_matches_semantics(estimator: str, shape: tuple[int, ...], block: int) -> None:
    _need_avx2()
    assert quantize_micro_supported(bits=1, symmetric=False, block=block, k=shape[-1],
                                    estimator=estimator, pack="bits32")  # fmt: skip
    x = _hard_input(shape, block, seed=block + len(shape))
    for lam in (0.01, 0.0):
        _check(x, "avx2", True, bits=1, symmetric=False, block=block, estimator=estimator,
               ridge_lambda=lam, pack="bits32")  # fmt: skip


@pytest.mark.parametrize("isa", ["avx2", "generic"])
@pytest.mark.parametrize(("spread", "center"), [(1e-2, 50.0), (1e-3, -1000.0)])
def test_ridge_statistics_hold_far_from_zero(isa: str, spread: float, center: float) -> None:
    """Blocks far from 0 relative to their spread (the kernels centre the fit's sums at the
    mid-range, the reference at the means), and blocks with one code apart from the rest."""
    if isa == "avx2":
        _need_avx2()
    g = torch.Generator().manual_seed(int(center))
    x = torch.randn(6, 256, generator=g) * spread + center
    x[1, :128], x[1, 0] = center, center - 5 * spread  # one 0 code, the rest 1
    x[2, :128], x[2, 0] = center, center + 5 * spread  # one 1 code, the rest 0
    for lam in (0.01, 0.0):
        _check(x, isa, isa == "avx2", bits=1, symmetric=False, block=128,
               estimator="ridge_minmax", ridge_lambda=lam, pack="bits32")  # fmt: skip


def test_avx2_row_takes_only_the_zero_one_grid() -> None:
    """The micro-kernel serves the {0, 1} grid at 1 bit packed; linear and ternary min/max
    grids, unpacked codes and blocks of part words stay on the TE stages."""
    ok = functools.partial(quantize_micro_supported, block=64, k=128)
    assert ok(bits=1, symmetric=False, estimator="ridge_minmax", pack="bits32")
    assert not ok(bits=1, symmetric=False, estimator="ridge_minmax", pack="none")
    assert not ok(bits=1, symmetric=True, estimator="ridge_minmax", pack="bits32")
    assert not ok(bits=1.5, symmetric=True, estimator="ste_minmax", pack="none")
    assert not ok(bits=2, symmetric=False, estimator="gdnsq", pack="none")
    assert not quantize_micro_supported(bits=1, symmetric=False, block=48, k=96,
                                        estimator="ridge_minmax", pack="bits32")  # fmt: skip


@functools.cache
def _prologue(prologue: str, shape: tuple[int, ...], nparams: int, block: int,
              estimator: str) -> tuple[Any, list[tuple[tuple[int, ...], str]]]:  # fmt: skip
    x = te.placeholder(shape, "float32", name="x")
    ps = [te.placeholder((shape[-1],), "float32", name=f"p{i}") for i in range(nparams)]
    outs = te_prologue_quantize(x, ps, prologue=prologue, bits=1, block=block,
                                estimator=estimator, pack="bits32", float_out=True)  # fmt: skip
    specs = [(tuple(int(d) for d in o.shape), str(o.dtype)) for o in outs]
    return tvm.compile(te.create_prim_func([x, *ps, *outs]), target=host_llvm_target()), specs


@pytest.mark.parametrize("estimator", ["ridge_minmax", "gdnsq"])
@pytest.mark.parametrize(
    ("prologue", "shape", "block", "nparams"),
    [("gelu", (9, 256), 128, 1), ("layer_norm", (2, 5, 128), 32, 2)],
)
def test_fused_prologue_matches_semantics(
    estimator: str, prologue: str, shape: tuple[int, ...], block: int, nparams: int
) -> None:
    """The fused GELU / layer-norm → quantize kernel quantizes its floats as the semantics."""
    _need_avx2()
    g = torch.Generator().manual_seed(block + nparams)
    x = torch.randn(*shape, generator=g) * 2 + 0.5
    params = [torch.randn(shape[-1], generator=g) for _ in range(nparams)]
    fn, specs = _prologue(prologue, shape, nparams, block, estimator)
    codes, scale, offset, y = outs = [torch.empty(s, dtype=_DT[d]) for s, d in specs]
    fn(x, *params, *outs)
    rc, rs, ro = _semantics(y, bits=1, symmetric=False, block=block, estimator=estimator,
                            ridge_lambda=0.01, pack="bits32")  # fmt: skip
    differ = int((codes != rc).sum())
    assert differ == 0, f"{differ} of {rc.numel()} codes differ"
    torch.testing.assert_close(scale, rs, rtol=1e-6, atol=1e-6 * float(rs.abs().max()))
    torch.testing.assert_close(offset, ro, rtol=1e-6, atol=1e-6 * float(y.abs().max()))


# -- forced kernel-table rows, end to end ---------------------------------------------------

#: (preset, op, row): every quantize row and every matmul row that consumes its codes.
_FORCED = [
    *(("A1W1", "quantize", isa) for isa in ("avx2", "generic")),
    *(("A1W1", "xnor_popcount_matmul", isa) for isa in ("avx512_vpopcntdq", "avx2", "generic")),
    ("A1.5W1.5", "quantize", "generic"),
    *(("A1.5W1.5", "int_matmul", isa) for isa in ("avx512_vnni", "avx_vnni", "avx2", "generic")),
]


@pytest.mark.parametrize(("preset", "op", "isa"), _FORCED)
def test_forced_row_runs_ridge_on_the_minmax_grid(preset: str, op: str, isa: str) -> None:
    """``select-kernels{force=op:isa}`` (never the host's choice) on a ridge min/max-grid
    model: the row is kept and the build matches the reference target."""
    import dataclasses

    import rqcompile as rq
    from rqcompile.config.spec import LayerSpec
    from rqcompile.ir.printer import print_module
    from rqcompile.passes.infra import PassContext, PassManager
    from rqcompile.passes.ir import SelectKernels
    from rqcompile.targets.tvm.kernels.table import CPU_KERNELS
    from rqcompile.targets.tvm.pipelines import tvm_target
    from rqcompile.targets.tvm.schedules.integer import kernel_features

    row = next(r for r in CPU_KERNELS if r.op == f"rq.{op}" and r.isa == isa)
    missing = set(row.requires) - set(kernel_features(tvm_target(rq.Target.parse("llvm"))))
    if missing:
        pytest.skip(f"this CPU lacks {', '.join(sorted(missing))} to run {row.name}")
    torch.manual_seed(0)
    x = torch.randn(16, 256)
    spec = dataclasses.replace(LayerSpec.from_preset(preset).with_grid("minmax"),
                               estimator="ridge")  # fmt: skip
    model = torch.nn.Sequential(torch.nn.Linear(256, 64), torch.nn.ReLU(), torch.nn.Linear(64, 32))
    qat = rq.prepare(model.eval(), (x,), rq.QConfig(default=spec))
    ir = rq.convert(qat.eval(), example_inputs=(x,))
    assert {str(o.attr("estimator")) for o in ir.main.ops if o.name == "rq.quantize"} == {
        "ridge_minmax"
    }
    forced = PassManager([SelectKernels(force=(f"{op}:{isa}",))]).run(ir, PassContext())
    assert f'rq.kernel = "{row.name}"' in print_module(forced)
    with rq.PassContext(disabled=frozenset({"select-kernels"})):
        exe = rq.build(forced, "llvm")
    assert f'rq.kernel = "{row.name}"' in print_module(exe.ir)  # the build kept the forced row
    want = rq.build(ir, "reference")(x)
    torch.testing.assert_close(exe(x), want, rtol=1e-6, atol=1e-6 * float(want.abs().max()))
