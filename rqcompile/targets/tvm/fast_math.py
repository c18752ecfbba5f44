"""Vectorizable ``erf``/``exp``/``tanh`` for the CPU float code: relax ``gelu`` and ``softmax``.

Where it sits: first pass of the ``legalize`` phase of ``pipelines.cpu_phases``. LLVM lowers
``tirx.erf`` to a scalar libm ``erff`` call and ``tirx.exp`` to one ``expf`` call per lane (no
vector math library is linked), so GELU and softmax ran as scalar loops: on the demo
transformer (batch 32x64, one thread, Zen 3) GELU took 7 ms per layer, more than its three
integer matmuls together. TOPI's polynomial ``fast_erf``/``fast_exp``/``fast_tanh`` are plain
arithmetic that the float schedules vectorize (``schedules_float.py``):

======== ===================== ================= ========================================
function libm, 1M floats       fast, vectorized  max error vs float64 (measured)
======== ===================== ================= ========================================
erf      17.5 ms               0.39 ms           3.8e-7 absolute (libm 5e-8, torch 3e-8)
exp      2.8 ms                0.43 ms           1.7e-7 relative (libm 6e-8, torch 6e-8)
======== ===================== ================= ========================================

A few float32 ulps: far inside the float tolerance every float op here is held to (the
TVM and torch float ops already differ in summation order). Integer kernels are untouched;
as with any float difference upstream, an activation sitting exactly at a quantization
rounding tie may round the other way (README, known limits).

``exp`` of ``-inf`` (a causal mask) is ``fast_exp``'s clamp, ~1e-38 instead of 0.
"""

from __future__ import annotations

from typing import Any

from rqcompile.targets.tvm.adapter import relax, tirx, topi, tvm

__all__ = ["FastFloatMath", "te_fast_gelu"]


def te_fast_gelu(x: Any) -> Any:
    """``x * (0.5 + 0.5 * erf(x / sqrt 2))``: TOPI's GELU formula with ``fast_erf``."""
    half = tirx.const(0.5, x.dtype)
    erf = topi.fast_erf(topi.multiply(x, tirx.const(0.5**0.5, x.dtype)))
    return topi.multiply(x, topi.add(topi.multiply(erf, half), half))


@relax.expr_functor.mutator
class _FastMath(relax.PyExprMutator):  # type: ignore[misc]
    """``relax.nn.gelu`` (float32) → :func:`te_fast_gelu`; the rest is TVM's
    ``FastMathTransform`` (softmax, exp, erf, tanh)."""

    def visit_call_(self, call: Any) -> Any:
        call = super().visit_call_(call)
        op = getattr(call, "op", None)
        if (
            isinstance(op, tvm.ir.Op)
            and op.name == "relax.nn.gelu"
            and str(getattr(call.args[0].ty, "dtype", "")) == "float32"
        ):
            return self.builder_.call_te(te_fast_gelu, call.args[0], primfunc_name_hint="gelu")
        return call


@tvm.transform.module_pass(opt_level=0, name="rq.FastFloatMath")
class FastFloatMath:
    """Module pass: GELU, softmax, ``exp``, ``erf``, ``tanh`` → TOPI's fast polynomial forms."""

    def transform_module(self, mod: Any, ctx: Any) -> Any:
        mutator = _FastMath(mod)
        for gvar, func in mod.functions_items():
            if isinstance(func, relax.Function):
                mutator.builder_.update_func(gvar, mutator.visit_expr(func))
        return relax.transform.FastMathTransform()(mutator.builder_.get())
