"""Activation quantization with the float op before it fused in: GELU or layer norm → codes.

Where it sits: ``emit.emit_module`` emits :func:`te_prologue_quantize` for each chain that
:mod:`patterns.prologue` finds (``[add bias] → gelu → quantize`` of a transformer MLP,
``layer_norm → quantize`` before the q/k/v and MLP projections), on targets whose quantize
runs as the AVX2 micro-kernel (:mod:`x86.quant`). The PrimFunc carries
``rq.kernel = "prologue_quantize"`` and ``rq.scheduled``, so neither schedule phase touches it.

Measured (demo transformer, batch 32x64, Zen 3, one thread): the three fused layer norms
(with their residual adds) per layer save ~0.2 ms of ~11; the fused GELU + quantize runs no
faster than the two kernels apart (both are compute-bound: the GELU on its polynomial, the
quantizer on its float64 sums), so ``pipelines.PROLOGUE_OPS`` fuses ``gelu`` only on request.

Why: unfused, the float op writes its whole output (the demo's GELU: 2048 x 512 float32, 4
MB per layer, past L2) and the quantizer reads it back three times. Here the quantize
micro-kernel reads each row block through a :class:`~rqcompile.targets.tvm.x86.quant.RowSource` that
first computes the op on that block into a per-row scratch of ``block`` floats (512 bytes
at block 128: a stack buffer, in L1), then runs its passes on the scratch. The op's output
never reaches memory; its input is read once (layer norm: twice more for the row's mean and
variance, from L1).

Numerics:

* **GELU** is :func:`fast_math.gelu_poly` (TOPI's ``fast_erf`` rational, constants folded),
  the same expression the unfused ``gelu`` computes (a test checks the floats are
  identical), so fused and unfused builds give the same codes. A bias add before
  it is the same float32 add as the unfused one.
* **Layer norm** is ``(x - mean)·rstd·γ + β`` with ``rstd = 1/sqrt(var + eps)``, the mean
  summed in float64 and rounded once, the variance of ``x - mean`` in a second pass (8
  float32 lanes, reassociated): ~1e-6 relative from torch's, like TOPI's (which uses
  ``E[x²] - mean²``). Codes near a rounding tie may
  differ from the unfused build, as for any float change upstream (README, known limits).
* **Codes** are bit-exact against ``reference.quantize`` *of the floats the kernel
  computed*: ``float_out`` returns them, and the tests compare on them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rqcompile.errors import NumericsError
from rqcompile.targets.tvm.adapter import T, tirx, tvm
from rqcompile.targets.tvm.kernels.common import dim
from rqcompile.targets.tvm.kernels.fast_math import gelu_poly
from rqcompile.targets.tvm.x86.quant import (
    RowSource,
    SourceFactory,
    _Sum64,
    avx2_quantize,
    quantize_micro_supported,
)

__all__ = ["PROLOGUES", "prologue_quantize_supported", "te_prologue_quantize"]

#: The fused ops and their parameter tensors (after ``x``): ``gelu`` takes an optional
#: bias ``[K]`` added first; ``layer_norm`` takes ``γ [K]`` and ``β [K]``.
PROLOGUES = ("gelu", "layer_norm")
_F32 = "float32"
_LANES = 8
_ANALYZER = tvm.sym.Analyzer()


def _bc(v: Any) -> Any:
    return tirx.Broadcast(v, _LANES)


def _ramp(col: Any, n: int = _LANES) -> Any:
    return tirx.Ramp(col, 1, n)


class _BlockSource(RowSource):
    """A row source whose blocks are computed into a scratch of ``block`` floats.

    ``value(col)`` (subclasses) is the op's float32x8 at columns ``col .. col + 7`` of the
    row; ``fout`` (optional) receives a copy of every value (``float_out``).
    """

    wide_loads = True
    streams = True

    def __init__(self, x: Any, idx: list[Any], block: int, fout: Any | None) -> None:
        super().__init__(x, idx, block)
        self.fout = fout
        # "global": a stack buffer while under TVM's 1 KB alloca limit (x86.quant)
        self.scratch = T.decl_buffer((block,), _F32, scope="global")
        self.base: Any = 0

    def value(self, col: Any) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def start_block(self, b: Any, *, streaming: bool = False) -> None:
        self.base = b * self.block
        if not streaming:
            with T.serial(0, self.block // _LANES) as c:
                self.fill(self.base + c * _LANES)

    def fill(self, col: Any) -> Any:
        """Compute the 8 values at ``col`` into the scratch (and ``fout``); return them."""
        T.buffer_store(self.scratch, self.value(col), [_ramp(_ANALYZER.simplify(col - self.base))])
        if self.fout is not None:
            T.buffer_store(self.fout, self.vec(col), [*self.idx, _ramp(col)])
        return self.vec(col)

    def vec(self, col: Any, n: int = _LANES) -> Any:
        # simplified here: TIR's region analysis fails on the unsimplified ``b·B + i - b·B``
        return self.scratch[_ramp(_ANALYZER.simplify(col - self.base), n)]


class _GeluSource(_BlockSource):
    """``gelu(x [+ bias])`` per block (:func:`fast_math.gelu_poly`)."""

    def __init__(self, x: Any, idx: list[Any], block: int, bias: Any | None,
                 fout: Any | None) -> None:  # fmt: skip
        super().__init__(x, idx, block, fout)
        self.bias = bias

    def value(self, col: Any) -> Any:
        v = self.x[(*self.idx, _ramp(col))]
        if self.bias is not None:
            v = v + self.bias[_ramp(col)]
        return gelu_poly(v)


class _LayerNormSource(_BlockSource):
    """``(h - mean)·rstd·γ + β`` per block; mean and ``rstd`` once per row.

    ``h`` is ``x``, or with ``residual`` the sum ``x + r`` (``residual = (r,)``) or
    ``x + (y + bias)`` (``(y, bias)``: a linear's output and bias added to the residual
    stream, the unfused ops' order): then ``start_row`` computes the row of ``h`` into a
    scratch of ``K`` floats, and writes it to ``hout`` (its other users read it there).
    """

    def __init__(self, x: Any, idx: list[Any], block: int, gamma: Any, beta: Any, eps: float,
                 fout: Any | None, residual: Sequence[Any] = (),
                 hout: Any | None = None) -> None:  # fmt: skip
        super().__init__(x, idx, block, fout)
        self.gamma, self.beta, self.eps = gamma, beta, eps
        self.residual, self.hout = tuple(residual), hout
        self.k = int(x.shape[-1])
        self.sum64 = _Sum64()
        self.acc = T.decl_buffer((_LANES,), _F32, scope="global")
        self.stats = T.decl_buffer((2,), _F32, scope="global")  # mean, rstd
        self.hrow = T.decl_buffer((self.k,), _F32, scope="global") if self.residual else None

    def _h(self, col: Any) -> Any:
        """``h`` at columns ``col .. col + 7`` of the row."""
        if self.hrow is not None:
            return self.hrow[_ramp(col)]
        return self.x[(*self.idx, _ramp(col))]

    def _fill_h(self) -> None:
        with T.serial(0, self.k // _LANES) as c:
            at = _ramp(c * _LANES)
            r = self.residual[0][(*self.idx, at)]
            if len(self.residual) == 2:
                r = r + self.residual[1][at]
            T.buffer_store(self.hrow, self.x[(*self.idx, at)] + r, [at])
            if self.hout is not None:
                T.buffer_store(self.hout, self.hrow[at], [*self.idx, at])

    def start_row(self) -> None:
        """[``h``,] mean (float64 sum, rounded once: exact for a constant row, whose output
        is then exactly β), then the variance of ``h - mean`` (float32 lanes)."""
        k = self.k
        if self.hrow is not None:
            self._fill_h()
        self.sum64.zero()
        with T.serial(0, k // _LANES) as c:
            self.sum64.add(self._h(c * _LANES), 0)
        T.buffer_store(self.stats, (self.sum64.total() / tirx.const(k, "float64")).astype(_F32),
                       [0])  # fmt: skip
        mean, lanes = _bc(self.stats[0]), _ramp(0)
        T.buffer_store(self.acc, _bc(tirx.const(0, _F32)), [lanes])
        with T.serial(0, k // _LANES) as c:
            d = self._h(c * _LANES) - mean
            T.buffer_store(self.acc, self.acc[lanes] + d * d, [lanes])
        var = self.acc[0]
        for i in range(1, _LANES):
            var = var + self.acc[i]
        var = var / tirx.const(k, _F32)
        one = tirx.const(1, _F32)
        T.buffer_store(self.stats, one / tirx.sqrt(var + tirx.const(self.eps, _F32)), [1])

    def value(self, col: Any) -> Any:
        y = (self._h(col) - _bc(self.stats[0])) * _bc(self.stats[1])
        return y * self.gamma[_ramp(col)] + self.beta[_ramp(col)]


def prologue_quantize_supported(*, prologue: str, bits: float, symmetric: bool, block: int,
                                k: int, estimator: str, pack: str) -> bool:  # fmt: skip
    """Whether :func:`te_prologue_quantize` takes this op and quantizer: the quantize
    micro-kernel's formats (:func:`x86.quant.quantize_micro_supported`)."""
    return prologue in PROLOGUES and quantize_micro_supported(
        bits=bits, symmetric=symmetric, block=block, k=k, estimator=estimator, pack=pack
    )


def te_prologue_quantize(
    x: Any,
    params: Sequence[Any],
    *,
    prologue: str,
    bits: float,
    block: int,
    estimator: str = "ridge",
    ridge_lambda: float = 0.01,
    pack: str = "none",
    eps: float = 1e-5,
    residual: Sequence[Any] = (),
    h_out: bool = False,
    float_out: bool = False,
    name: str = "prologue_quantize",
) -> tuple[Any, ...]:
    """``quantize(op(x, *params))`` of ``x f32 [..., K]`` as one AVX2 kernel (TE tensors).

    Args:
        x: the op's input.
        params: ``gelu``: ``()`` or ``(bias [K],)``; ``layer_norm``: ``(γ [K], β [K])``.
        prologue: ``"gelu"`` or ``"layer_norm"`` (over the last dim, ``eps``).
        residual: ``layer_norm`` only: normalize ``h = x + r`` (``(r,)``, ``r`` shaped as
            ``x``) or ``h = x + (y + bias)`` (``(y, bias [K])``) instead of ``x``.
        h_out: with ``residual``, also return ``h`` (``f32``, shaped as ``x``).
        float_out: also return the op's output (``f32 [..., K]``), for tests.
        bits, block, estimator, ridge_lambda, pack: the affine quantizer, as
            ``kernels.te_quantize``.

    Returns:
        ``(codes, scale, offset)`` as ``te_quantize``, then ``h`` with ``h_out``, then the
        floats with ``float_out``.

    Raises:
        NumericsError: an op or quantizer this kernel does not take, or wrong parameters.
    """
    *_, k = xdims = tuple(dim(d) for d in x.shape)
    ok = prologue_quantize_supported(prologue=prologue, bits=bits, symmetric=False,
                                     block=block, k=k, estimator=estimator, pack=pack)
    if not ok:
        raise NumericsError(
            f"{name}: no fused {prologue!r} quantize for bits={bits}, pack={pack!r}, K={k}, "
            f"block={block}, estimator={estimator!r}; ops {PROLOGUES}, quantizers as "
            "x86.quant.quantize_micro_supported."
        )
    want = {"gelu": (0, 1), "layer_norm": (2,)}[prologue]
    if len(params) not in want or any(tuple(int(d) for d in p.shape) != (k,) for p in params):
        raise NumericsError(
            f"{name}: {prologue} takes {' or '.join(map(str, want))} parameter tensor(s) of "
            f"shape [{k}], got {[tuple(p.shape) for p in params]}."
        )
    # as printed: a symbolic build's row counts are equal expressions, not one object
    rshapes = [tuple(str(dim(d)) for d in r.shape) for r in residual]
    xdims_s, k_s = tuple(str(d) for d in xdims), str(k)
    if residual and (prologue != "layer_norm" or len(rshapes) > 2 or rshapes[0] != xdims_s
                     or rshapes[1:] not in ([], [(k_s,)])):  # fmt: skip
        raise NumericsError(
            f"{name}: a residual is (r,) shaped as x {list(xdims)} or (y, bias [{k}]), for "
            f"layer_norm only; got {prologue} with {rshapes}."
        )
    if h_out and not residual:
        raise NumericsError(f"{name}: h_out needs a residual (h is x itself otherwise).")
    nres = len(residual)

    def prologue_source(ins: list[Any], outs: list[Any]) -> SourceFactory:
        hout = outs[3] if h_out else None
        fout = outs[3 + int(h_out)] if float_out else None
        if prologue == "gelu":
            bias = ins[1] if len(ins) > 1 else None
            return lambda xb, idx, blk: _GeluSource(xb, idx, blk, bias, fout)
        res, (gamma, beta) = ins[1 : 1 + nres], ins[1 + nres :]
        return lambda xb, idx, blk: _LayerNormSource(xb, idx, blk, gamma, beta, eps, fout,
                                                     res, hout)  # fmt: skip

    return avx2_quantize(
        x, bits=bits, block=block, estimator=estimator, ridge_lambda=ridge_lambda, pack=pack,
        name=name, attrs={"rq.prologue": prologue}, params=[*residual, *params],
        prologue=prologue_source, extra_outs=int(h_out) + int(float_out),
    )  # fmt: skip
