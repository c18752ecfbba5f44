"""What every rq IR op computes, as pure-torch functions: the IR's executable semantics.

:data:`KERNELS` maps an op name to ``fn(operands, attrs)``. Integer ops use
:mod:`rqcompile.quant.reference`; float ops use the torch function with the same semantics.
The ``reference`` target (``targets/reference.py``, the oracle every other target is tested
against) runs a module with them, and the ``fold-constants`` pass evaluates constant ops with
them. Always available (no TVM, no compiler).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F

from rqcompile.errors import InputError, UnsupportedOpError
from rqcompile.ir.core import Module, Op
from rqcompile.ir.types import torch_dtype
from rqcompile.quant import reference as R

__all__ = ["KERNELS", "check_ids", "evaluate_op", "run_reference"]

Kernel = Callable[[tuple[torch.Tensor, ...], Mapping[str, Any]], Any]


def _conv2d(t: tuple[torch.Tensor, ...], a: Mapping[str, Any]) -> torch.Tensor:
    return F.conv2d(t[0], t[1], None, a["stride"], a["padding"], a["dilation"], a["groups"])


def _im2col(t: tuple[torch.Tensor, ...], a: Mapping[str, Any]) -> torch.Tensor:
    x = t[0]  # (N, H, W, C) channels last → (N, Ho, Wo, kh*kw*C) in (kh, kw, C) order
    dtype = x.dtype
    (kh, kw), (sh, sw) = a["kernel"], a["stride"]
    (ph, pw), (dh, dw) = a["padding"], a["dilation"]
    # exact for int8, float32 and uint32 bit words (< 2**32 fits float64's 53 bits)
    xp = F.pad(x.to(torch.int64 if dtype == torch.uint32 else torch.float64),
               (0, 0, pw, pw, ph, ph))  # fmt: skip
    n, hp, wp, c = xp.shape
    ho = (hp - dh * (kh - 1) - 1) // sh + 1
    wo = (wp - dw * (kw - 1) - 1) // sw + 1
    taps = []
    for i in range(kh):
        for j in range(kw):
            taps.append(
                xp[
                    :,
                    i * dh : i * dh + sh * (ho - 1) + 1 : sh,
                    j * dw : j * dw + sw * (wo - 1) + 1 : sw,
                    :,
                ]
            )
    return torch.cat(taps, dim=-1).to(dtype)


def check_ids(ids: torch.Tensor, vocab: int, where: str) -> None:
    """Raise :class:`InputError` unless every id lies in ``[0, vocab)`` (every target checks
    the ids of each gather with this; ``targets/gather_check.py`` finds them)."""
    if not ids.numel():
        return
    if ids.is_floating_point():
        ids = ids.to(torch.int64)
    lo, hi = (int(v) for v in torch.aminmax(ids))
    if lo < 0 or hi >= vocab:
        raise InputError(
            f"{where}: token ids must lie in [0, {vocab}), got [{lo}, {hi}]. Ids outside the "
            "table have no row (clean or clamp them before calling the model)."
        )


def _embedding(ids: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    check_ids(ids, table.shape[0], "rq.embedding (reference target)")  # never a raw IndexError
    return F.embedding(ids, table)


def _slice(t: tuple[torch.Tensor, ...], a: Mapping[str, Any]) -> torch.Tensor:
    idx = [slice(None)] * t[0].dim()
    idx[a["axis"]] = slice(a["start"], a["stop"], a["step"])
    return t[0][tuple(idx)].contiguous()


def _causal(t: tuple[torch.Tensor, ...], a: Mapping[str, Any]) -> torch.Tensor:
    x = t[0]
    tq, s = x.shape[-2], x.shape[-1]
    keep = torch.ones(tq, s, dtype=torch.bool).tril(s - tq)
    return x.masked_fill(~keep, a["fill"])


def _take(t: tuple[torch.Tensor, ...], a: Mapping[str, Any]) -> torch.Tensor:
    x, index = t
    axis = a["axis"] % x.dim()
    check_ids(index, x.shape[axis], "rq.take (reference target)")  # never a raw IndexError
    return torch.index_select(x, axis, index.to(torch.int64))


def _row_positions(pos: torch.Tensor, rows: int, length: int, where: str) -> torch.Tensor:
    """``pos`` (P,) as one position per row of axis 0 (``rows``), each checked < ``length``."""
    check_ids(pos, length, where)
    pos = pos.to(torch.int64)
    return pos.expand(rows) if pos.numel() == 1 else pos


def _cache_write(t: tuple[torch.Tensor, ...], a: Mapping[str, Any]) -> torch.Tensor:
    """A new cache with ``row`` at ``pos`` along ``axis`` (functional: targets may write in
    place, which the caller cannot tell apart as long as it does not reuse the operand)."""
    cache, row, pos = t
    axis = a["axis"] % cache.dim()
    out = cache.clone()
    if pos.numel() == 1:
        check_ids(pos, cache.shape[axis], "rq.cache_write (reference target)")
        return out.index_copy_(axis, pos.to(torch.int64).reshape(1), row)
    at = _row_positions(pos, cache.shape[0], cache.shape[axis], "rq.cache_write (reference target)")
    for r in range(cache.shape[0]):
        out[r].index_copy_(axis - 1, at[r : r + 1], row[r])
    return out


def _cache_attention(t: tuple[torch.Tensor, ...], a: Mapping[str, Any]) -> torch.Tensor:
    """``softmax(q·kᵀ·scale)·v`` over keys ``j <= pos`` (per row of axis 0): the masked form
    over all ``T`` cache rows, so hidden keys weigh exactly 0."""
    q, k, v, pos = t
    kt = k if a["key_axis"] == -1 else k.transpose(-1, -2)
    s = torch.matmul(q, kt) * a["scale"]
    length = s.shape[-1]
    rows = s.shape[0] if s.dim() > 2 else 1
    at = _row_positions(pos, rows, length, "rq.cache_attention (reference target)")
    hidden = torch.arange(length)[None, :] > at[:, None]  # (rows, T)
    s = s.masked_fill(hidden.reshape(rows, *(1,) * (s.dim() - 2), length), -math.inf)
    return torch.matmul(torch.softmax(s, dim=-1), v)


def _sdpa(t: tuple[torch.Tensor, ...], a: Mapping[str, Any]) -> torch.Tensor:
    return F.scaled_dot_product_attention(t[0], t[1], t[2], is_causal=a["causal"], scale=a["scale"])


KERNELS: dict[str, Kernel] = {
    # integer core (quant/reference.py is the oracle)
    "rq.quantize": lambda t, a: R.quantize(
        t[0],
        bits=a["bits"],
        symmetric=a["symmetric"],
        block=a["block"],
        estimator=a["estimator"],
        ridge_lambda=a["ridge_lambda"],
        pack=a["pack"],
    ),
    "rq.int_matmul": lambda t, a: R.int_matmul(
        *t, block=a["block"], w_bits=a["w_bits"], w_signed=a["w_signed"]
    ),
    "rq.xnor_popcount_matmul": lambda t, a: R.xnor_popcount_matmul(*t, block=a["block"], k=a["k"]),
    "rq.sparse24_matmul": lambda t, a: R.sparse24_matmul(*t, block=a["block"], w_bits=a["w_bits"]),
    "rq.qbmm": lambda t, a: R.qbmm(*t, block=a["block"]),
    "rq.wo_matmul": lambda t, a: R.wo_matmul(
        *t, block=a["block"], w_bits=a["w_bits"], w_signed=a["w_signed"]
    ),
    "rq.repeat_blocks": lambda t, a: t[0].repeat_interleave(a["factor"], dim=-1),
    # float ops
    "rq.linear": lambda t, a: F.linear(t[0], t[1]),
    "rq.add": lambda t, a: t[0] + t[1],
    "rq.sub": lambda t, a: t[0] - t[1],
    "rq.mul": lambda t, a: t[0] * t[1],
    "rq.div": lambda t, a: t[0] / t[1],
    "rq.add_scalar": lambda t, a: t[0] + a["value"],
    "rq.mul_scalar": lambda t, a: t[0] * a["value"],
    "rq.matmul": lambda t, a: torch.matmul(t[0], t[1]),
    "rq.layer_norm": lambda t, a: F.layer_norm(t[0], t[0].shape[-1:], t[1], t[2], a["eps"]),
    "rq.rms_norm": lambda t, a: F.rms_norm(t[0], t[0].shape[-1:], t[1], a["eps"]),
    "rq.softmax": lambda t, a: torch.softmax(t[0], dim=a["axis"]),
    "rq.gelu": lambda t, a: F.gelu(t[0], approximate=a["approximate"]),
    "rq.relu": lambda t, a: torch.relu(t[0]),
    "rq.silu": lambda t, a: F.silu(t[0]),
    "rq.tanh": lambda t, a: torch.tanh(t[0]),
    "rq.sigmoid": lambda t, a: torch.sigmoid(t[0]),
    "rq.embedding": lambda t, a: _embedding(t[0], t[1]),
    "rq.reshape": lambda t, a: t[0].reshape(a["shape"]),
    "rq.permute": lambda t, a: t[0].permute(a["dims"]).contiguous(),
    "rq.slice": _slice,
    "rq.concat": lambda t, a: torch.cat(t, dim=a["axis"]),
    "rq.causal_mask": _causal,
    "rq.masked_fill": lambda t, a: t[0].masked_fill(t[1], a["value"]),
    "rq.logical": lambda t, a: getattr(torch, f"logical_{a['fn']}")(t[0], t[1]),
    "rq.logical_not": lambda t, a: torch.logical_not(t[0]),
    "rq.compare": lambda t, a: getattr(torch, a["fn"])(t[0], t[1]),
    "rq.where": lambda t, a: torch.where(t[0], t[1], t[2]),
    "rq.sdpa": _sdpa,
    "rq.conv2d": _conv2d,
    "rq.im2col": _im2col,
    "rq.max_pool2d": lambda t, a: F.max_pool2d(t[0], a["kernel"], a["stride"], a["padding"]),
    "rq.adaptive_avg_pool2d": lambda t, a: F.adaptive_avg_pool2d(t[0], a["output_size"]),
    "rq.mean": lambda t, a: t[0].mean(dim=a["axes"], keepdim=a["keepdim"]),
    "rq.cast": lambda t, a: t[0].to(torch_dtype(a["dtype"])),
    "rq.rsqrt": lambda t, a: torch.rsqrt(t[0]),
    "rq.pow_scalar": lambda t, a: torch.pow(t[0], a["exponent"]),
    "rq.broadcast_to": lambda t, a: t[0].expand(a["shape"]).contiguous(),
    "rq.take": _take,
    "rq.cache_write": _cache_write,
    "rq.cache_attention": _cache_attention,
}


def run_reference(
    module: Module, *inputs: torch.Tensor, func: str = "main"
) -> tuple[torch.Tensor, ...]:
    """Execute ``module`` on ``inputs`` with the reference kernels; returns the outputs."""
    f = module.func(func)
    missing = sorted({op.name for op in f.ops if op.name not in KERNELS and op.name != "rq.const"})
    if missing:
        raise UnsupportedOpError(f"the reference target has no kernel for: {', '.join(missing)}")
    env: dict[int, torch.Tensor] = {v.id: x for v, x in zip(f.args, inputs)}
    for op in f.ops:
        env.update(zip((r.id for r in op.results), _results(module, op, env)))
    return tuple(env[v.id] for v in f.outputs)


def _results(module: Module, op: Op, env: dict[int, torch.Tensor]) -> tuple[torch.Tensor, ...]:
    if op.name == "rq.const":
        return (module.constant(str(op.attr("name"))),)
    return evaluate_op(op, tuple(env[v.id] for v in op.operands))


def evaluate_op(op: Op, operands: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    """The results of ``op`` on ``operands`` (annotations do not change them)."""
    out = KERNELS[op.name](operands, op.attrs_dict)
    return tuple(out) if isinstance(out, (tuple, list)) else (out,)
