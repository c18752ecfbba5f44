"""Vectorizable ``erf``/``exp``/``tanh`` for the CPU float code: relax ``gelu`` and ``softmax``.

Where it sits: first pass of the ``legalize`` phase of ``pipelines.cpu_phases``. LLVM lowers
``tirx.erf`` to a scalar libm ``erff`` call and ``tirx.exp`` to one ``expf`` call per lane (no
vector math library is linked), so GELU and softmax ran as scalar loops: on the demo
transformer (batch 32x64, one thread, Zen 3) GELU took 7 ms per layer, more than its three
integer matmuls together. TOPI's polynomial ``fast_erf``/``fast_exp``/``fast_tanh`` are plain
arithmetic that the float schedules vectorize (``schedules/float_code.py``):

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

from rqcompile.targets.tvm.adapter import relax, te, tirx, tvm

__all__ = ["FastFloatMath", "exp_poly", "gelu_poly", "te_fast_gelu"]

#: TOPI ``fast_exp``'s constants (``topi/elemwise.h``): input clamp, log2(e), ln 2 and the
#: degree-5 polynomial for ``exp`` on ``[-ln2/2, ln2/2]``, highest power first.
_EXP_CLAMP = (-88.376258850097656, 88.376266479492188)
_LOG2E, _LN2 = 1.4426950216293335, 0.69314718246459961
_EXP_POLY = (
    1.9875691214110702e-4,
    1.3981999363750219e-3,
    8.333452045917511e-3,
    4.1665796190500259e-2,
    0.1666666567325592,
    0.5,
)


#: TOPI ``fast_erf``'s rational approximation (``topi/elemwise.h``, from Eigen): ``x`` clamped
#: to ``±4``, ``erf = x·P(x²) / Q(x²)``; coefficients highest power first.
_ERF_CLAMP = 4.0
_ERF_P = (
    -2.72614225801306e-10,
    2.77068142495902e-08,
    -2.10102402082508e-06,
    -5.69250639462346e-05,
    -7.34990630326855e-04,
    -2.95459980854025e-03,
    -1.60960333262415e-02,
)
_ERF_Q = (
    -1.45660718464996e-05,
    -2.13374055278905e-04,
    -1.68282697438203e-03,
    -7.37332916720468e-03,
    -1.42647390514189e-02,
)


def _consts(x: Any) -> tuple[str, int, Any]:
    """``(dtype, lanes, c)`` of a float32 scalar or vector ``x``; ``c(v)`` a constant like it."""
    fty = str(x.ty) if hasattr(x, "ty") else str(x.dtype)
    lanes = tvm.DataType(fty).lanes

    def c(v: float) -> Any:
        k = tirx.const(v, "float32")
        return tirx.Broadcast(k, lanes) if lanes > 1 else k

    return fty, lanes, c


def _gelu_coefs(coefs: tuple[float, ...], factor: float) -> tuple[float, ...]:
    """``factor·C(u/2)``'s coefficients (highest power first) from ``C(u)``'s."""
    n = len(coefs) - 1
    return tuple(factor * a * 0.5 ** (n - i) for i, a in enumerate(coefs))


#: GELU's rational, with ``x/√2`` and the ``0.5·erf`` folded into the coefficients:
#: ``0.5·erf(x/√2) = xc·P'(xc²)/Q'(xc²)`` with ``xc = clamp(x, ±4√2)``,
#: ``P'(u) = P(u/2)/(2√2)`` and ``Q'(u) = Q(u/2)`` (``P``, ``Q``: :data:`_ERF_P`, :data:`_ERF_Q`).
_GELU_CLAMP = _ERF_CLAMP * 2.0**0.5
_GELU_P = _gelu_coefs(_ERF_P, 0.5 / 2.0**0.5)
_GELU_Q = _gelu_coefs(_ERF_Q, 1.0)


def gelu_poly(x: Any) -> Any:
    """``x·(0.5 + 0.5·erf(x/√2))`` for a float32 scalar or vector ``PrimExpr``, with
    TOPI ``fast_erf``'s rational and the two constant products folded into its coefficients
    (:data:`_GELU_P`): 14 multiply-adds per element instead of 16, which is what bounds
    GELU on CPUs (Zen 3, 1M elements, one thread: 0.57 → 0.50 ms; a division-free variant
    measured 0.53, so the division is not the bound). Error against float64 GELU: ~1.5
    float32 ulps (TOPI's order: ~1), far inside the float tolerance.

    :func:`te_fast_gelu` (the relax GELU) and the fused quantize prologue both compute it,
    so fused and unfused builds give the same floats.
    """
    fty, _, c = _consts(x)
    xv, xc, u = (tirx.Var(n, fty) for n in ("gelu_x", "gelu_xc", "gelu_u"))
    p = c(_GELU_P[0])
    for coef in _GELU_P[1:]:
        p = u * p + c(coef)
    q = c(_GELU_Q[0])
    for coef in _GELU_Q[1:]:
        q = u * q + c(coef)
    y = tirx.Let(u, xc * xc, xv * (xc * p / q + c(0.5)))
    y = tirx.Let(xc, tirx.max(tirx.min(xv, c(_GELU_CLAMP)), c(-_GELU_CLAMP)), y)
    return tirx.Let(xv, x, y)


def te_fast_gelu(x: Any) -> Any:
    """GELU of tensor ``x``: :func:`gelu_poly` per element."""
    return te.compute(x.shape, lambda *i: gelu_poly(x(*i)), name="T_fast_gelu", tag="elemwise")


def exp_poly(x: Any) -> Any:
    """``exp(x)`` for a float32 scalar or vector ``PrimExpr``: TOPI ``fast_exp``'s
    operations, for kernels written in TIR (``kernels/attention.py``).

    ``x`` is clamped to ``±88.38``, split as ``n·ln2 + r``, and ``2ⁿ`` is built in the
    exponent bits; so ``exp(-inf)`` is ~1e-38, not 0 (callers mask it).
    """
    lanes = tvm.DataType(str(x.ty)).lanes

    def c(v: float) -> Any:
        k = tirx.const(v, "float32")
        return tirx.Broadcast(k, lanes) if lanes > 1 else k

    # let-bound so the expression stays linear in size (x, its clamp and r are reused)
    fty, ity = str(x.ty), "int32" if lanes == 1 else f"int32x{lanes}"
    xv, cv, rv = (tirx.Var(n, fty) for n in ("exp_x", "exp_xc", "exp_r"))
    n = tirx.floor(cv * c(_LOG2E) + c(0.5))
    p = c(_EXP_POLY[0])
    for coef in _EXP_POLY[1:]:
        p = p * rv + c(coef)
    p = p * rv * rv + rv + c(1.0)
    two_n = tirx.Cast(ity, n + c(127.0)) << tirx.Cast(ity, c(23.0))
    y = tirx.max(tirx.reinterpret(fty, two_n) * p, xv)
    y = tirx.Let(rv, cv - n * c(_LN2), y)
    y = tirx.Let(cv, tirx.max(tirx.min(xv, c(_EXP_CLAMP[1])), c(_EXP_CLAMP[0])), y)
    return tirx.Let(xv, x, y)


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
