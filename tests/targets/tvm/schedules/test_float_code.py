"""Float schedules (schedules/float_code.py) and fast float math (fast_math.py) against torch.

Each schedule must (a) apply to the TOPI shape it is written for, and (b) compute what the
unscheduled PrimFunc computes: bit-identical for matmuls and elementwise chains (no
reduction is reordered), within float rounding for the norms (lanes reassociate the sums).
"""

from __future__ import annotations

import functools
from typing import Any

import pytest
import torch
import torch.nn.functional as F

tvm = pytest.importorskip("tvm")

from rqcompile.targets.tvm.schedules import float_code as SF  # noqa: E402
from rqcompile.targets.tvm.adapter import (  # noqa: E402
    host_llvm_target,
    make_target,
    relax,
    s_tir,
    te,
    topi,
)
from rqcompile.targets.tvm.kernels.fast_math import FastFloatMath, te_fast_gelu  # noqa: E402

pytestmark = pytest.mark.tvm


@functools.cache
def _target() -> Any:
    return host_llvm_target()


def _func(build: Any, shapes: list[tuple[int, ...]]) -> tuple[Any, list[Any]]:
    phs = [te.placeholder(s, "float32", name=f"x{i}") for i, s in enumerate(shapes)]
    out = build(*phs)
    return te.create_prim_func([*phs, out]).with_attr("global_symbol", "main"), phs


def _run(func: Any, args: list[torch.Tensor], out_shape: tuple[int, ...]) -> torch.Tensor:
    lib = tvm.compile(func, target=_target())
    out = torch.zeros(out_shape)
    lib["main"](*args, out)
    return out


def _n_blocks(func: Any) -> int:
    sch = s_tir.Schedule(func)
    return len(sch.get_child_blocks(sch.get_sblock("root")))


@pytest.mark.parametrize(
    ("a_shape", "b_shape"),
    # batched (two-vector tiles); N = 65 padded to three-vector tiles; N = 48 three unpadded
    [((2, 64, 48), (2, 48, 32)), ((3, 16, 40), (40, 65)), ((12, 24), (24, 48))],
    ids=["batched", "padded-n", "three-vectors"],
)
def test_matmul_schedule_applies_and_is_bit_identical(a_shape: tuple, b_shape: tuple) -> None:
    def mm_masked(a: Any, b: Any) -> Any:  # relax's matmul legalization + an epilogue
        k = te.reduce_axis((0, a_shape[-1]), name="k")

        def body(*i: Any) -> Any:
            bi = i[:-2] if len(b_shape) == 3 else ()
            return te.sum(a[(*i[:-1], k)] * b[(*bi, k, i[-1])], axis=k)

        mm = te.compute((*a_shape[:-1], b_shape[-1]), body, name="matmul")
        return topi.multiply(mm, 0.25) if len(b_shape) == 3 else topi.add(mm, 1.0)

    func, _ = _func(mm_masked, [a_shape, b_shape])
    sch = s_tir.Schedule(func)
    assert SF.schedule_matmul(sch, SF.FloatScheduleConfig.for_target(_target()))
    a, b = torch.randn(a_shape), torch.randn(b_shape)
    out_shape = (*a_shape[:-1], b_shape[-1])
    plain = _run(func, [a, b], out_shape)
    tiled = _run(sch.mod["main"], [a, b], out_shape)
    assert torch.equal(plain, tiled)
    expect = a @ b * 0.25 if len(b_shape) == 3 else a @ b + 1.0
    torch.testing.assert_close(tiled, expect, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("n", "want"), [(32, 16), (64, 16), (65, 24), (48, 24), (768, 24),
                                          (128, 16), (8, 16)])  # fmt: skip
def test_tile_n_takes_three_vectors_unless_that_pads_more(n: int, want: int) -> None:
    assert SF.FloatScheduleConfig(lanes=8).tile_n_for(n) == want


def test_matmul_with_gelu_epilogue_builds_and_is_bit_identical() -> None:
    """A weight-only linear + GELU: the epilogue is a DAG (``x * Φ(x)`` reads the biased
    matmul twice). TVM's ``reverse_compute_inline`` does not check that the producer's
    buffer has a single consumer, so inlining ``Φ``'s first stage into the accumulator
    dropped the buffer ``x * ...`` still read ("T_add_intermediate is used before its
    definition" when building attention-W4's MLP)."""

    def mm_gelu(a: Any, b: Any, bias: Any) -> Any:  # relax's legalization of the MLP's fc
        k = te.reduce_axis((0, 16), name="k")
        mm = te.compute((2, 8, 32), lambda n, i, j: te.sum(a[n, i, k] * b[k, j], axis=k))
        return te_fast_gelu(topi.add(mm, bias))

    func, _ = _func(mm_gelu, [(2, 8, 16), (16, 32), (32,)])
    scheduled = SF.schedule_float_func(func, _target())
    assert "T.parallel" in scheduled.script()  # the matmul rule applied
    a, b, bias = torch.randn(2, 8, 16), torch.randn(16, 32), torch.randn(32)
    plain = _run(func, [a, b, bias], (2, 8, 32))
    assert torch.equal(_run(scheduled, [a, b, bias], (2, 8, 32)), plain)
    torch.testing.assert_close(plain, F.gelu(a @ b + bias), rtol=1e-5, atol=1e-5)


def test_elementwise_chain_is_one_block_and_identical() -> None:
    func, _ = _func(lambda x, y: topi.transpose(topi.add(topi.exp(x), y), (1, 0)), [(64, 24)] * 2)
    scheduled = SF.schedule_float_func(func, _target())
    assert _n_blocks(func) == 3 and _n_blocks(scheduled) == 1
    x, y = torch.randn(64, 24), torch.randn(64, 24)
    assert torch.equal(_run(func, [x, y], (24, 64)), _run(scheduled, [x, y], (24, 64)))


def test_layer_norm_schedule_matches_torch() -> None:
    def ln(x: Any, g: Any, b: Any) -> Any:
        return topi.nn.layer_norm(x, g, b, axis=[-1], epsilon=1e-5)

    func, _ = _func(ln, [(4, 32, 128), (128,), (128,)])
    sch = s_tir.Schedule(func)
    assert SF.schedule_norm(sch, SF.FloatScheduleConfig.for_target(_target()))
    x, g, b = torch.randn(4, 32, 128) * 3 + 1, torch.randn(128), torch.randn(128)
    out = _run(sch.mod["main"], [x, g, b], (4, 32, 128))
    torch.testing.assert_close(out, F.layer_norm(x, (128,), g, b, 1e-5), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("fast", [False, True], ids=["exp", "fast_exp"])
def test_softmax_schedule_matches_torch(fast: bool) -> None:
    softmax = topi.nn.fast_softmax if fast else topi.nn.softmax
    func, _ = _func(lambda x: softmax(x, axis=-1), [(2, 4, 16, 64)])
    sch = s_tir.Schedule(func)
    assert SF.schedule_softmax(sch, SF.FloatScheduleConfig.for_target(_target()))
    x = torch.randn(2, 4, 16, 64) * 4
    x[..., 40:] = float("-inf")  # a causal mask's -inf
    out = _run(sch.mod["main"], [x], (2, 4, 16, 64))
    torch.testing.assert_close(out, torch.softmax(x, -1), rtol=1e-5, atol=1e-6)


def test_c_target_gets_no_vector_types() -> None:
    """TVM's C backend prints vector types C lacks: its float schedules must not vectorize."""
    cfg = SF.FloatScheduleConfig.for_target(make_target("c"))
    assert not cfg.vectorize
    func, _ = _func(lambda a, b: topi.matmul(a, b), [(8, 16), (16, 32)])
    scheduled = SF.schedule_float_func(func, make_target("c"), cfg)
    assert "vectorized" not in scheduled.script()


def test_fast_gelu_close_to_torch() -> None:
    x = torch.linspace(-8, 8, 4096)
    func, _ = _func(te_fast_gelu, [(4096,)])
    out = _run(func, [x], (4096,))
    torch.testing.assert_close(out, F.gelu(x), rtol=0, atol=1e-6)


def test_fast_float_math_pass_replaces_gelu_and_softmax() -> None:
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((8, 64), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            y = bb.emit(relax.op.nn.gelu(x))
            z = bb.emit(relax.op.nn.softmax(y, axis=-1))
            out = bb.emit_output(z)
        bb.emit_func_output(out)
    mod = FastFloatMath()(bb.get())
    text = mod.script()
    assert "R.nn.gelu" not in text and "R.nn.softmax" not in text
    assert "fast_erf" in text or "call_tir" in text
    lib = relax.build(relax.transform.LegalizeOps()(mod), target=_target())
    vm = relax.VirtualMachine(lib, tvm.cpu())
    xin = torch.randn(8, 64) * 3
    got = torch.from_dlpack(vm["main"](tvm.runtime.from_dlpack(xin)))
    torch.testing.assert_close(got, torch.softmax(F.gelu(xin), -1), rtol=1e-5, atol=1e-6)
