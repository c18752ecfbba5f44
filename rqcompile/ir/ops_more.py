"""Ops added for convert: masked fill with a constant mask, and block-parameter refinement."""

from __future__ import annotations

from rqcompile.ir.ops import AttrSpec, defop, expect_type, fail
from rqcompile.ir.types import TensorType

__all__: list[str] = []  # registers ops


@defop("rq.masked_fill", ("x", "mask"), attrs={"value": AttrSpec(float)})
def _masked_fill(ts: tuple[TensorType, ...], attrs: object) -> tuple[TensorType, ...]:
    """``x`` where ``mask`` is false, ``value`` where it is true (mask broadcasts to x)."""
    x, m = ts
    expect_type(x, "x", dtypes=("f32",))
    expect_type(m, "mask", dtypes=("i1",))
    return (x,)


@defop("rq.repeat_blocks", ("x",), attrs={"factor": AttrSpec(int)})
def _repeat_blocks(ts: tuple[TensorType, ...], attrs: object) -> tuple[TensorType, ...]:
    """Repeat each entry of the last dim ``factor`` times (refines per-block parameters)."""
    (x,) = ts
    expect_type(x, "x", dtypes=("f32",), min_rank=1)
    last = x.shape[-1]
    f = attrs["factor"]  # type: ignore[index]
    return (x.with_shape((*x.shape[:-1], None if last is None else last * f)),)


# Float ops added for torch.export / Hugging Face models (Llama RMSNorm, GPT-2 gelu_new,
# grouped-query attention's repeat_kv).


@defop("rq.rsqrt", ("x",))
def _rsqrt(ts: tuple[TensorType, ...], attrs: object) -> tuple[TensorType, ...]:
    """1 / sqrt(x), elementwise."""
    expect_type(ts[0], "x", dtypes=("f32",))
    return (ts[0],)


@defop("rq.pow_scalar", ("x",), attrs={"exponent": AttrSpec(float)})
def _pow_scalar(ts: tuple[TensorType, ...], attrs: object) -> tuple[TensorType, ...]:
    """x ** exponent, elementwise (torch.pow semantics: NaN for negative x, fractional exponent)."""
    expect_type(ts[0], "x", dtypes=("f32",))
    return (ts[0],)


@defop("rq.broadcast_to", ("x",), attrs={"shape": AttrSpec(tuple, elem=int)})
def _broadcast_to(ts: tuple[TensorType, ...], attrs: object) -> tuple[TensorType, ...]:
    """Numpy broadcasting of x to ``shape`` (torch ``expand`` with explicit sizes, copied)."""
    (x,) = ts
    shape: tuple[int, ...] = attrs["shape"]  # type: ignore[index]
    if len(shape) < x.rank:
        fail(f"shape={shape} has fewer dims than x {x}")
    for d, s in zip(reversed(x.shape), reversed(shape), strict=False):
        if d is not None and d not in (1, s):
            fail(f"x {x} cannot be broadcast to {shape}")
    return (TensorType(tuple(shape), x.dtype),)


# Boolean masks (padding masks of batched serving, Hugging Face mask construction).

_LOGICAL = ("and", "or", "xor")
_COMPARE = ("eq", "ne", "lt", "le", "gt", "ge")


@defop("rq.logical", ("a", "b"), attrs={"fn": AttrSpec(str, choices=_LOGICAL)})
def _logical(ts: tuple[TensorType, ...], attrs: object) -> tuple[TensorType, ...]:
    """Elementwise ``a fn b`` of two boolean tensors (numpy broadcasting) -> i1."""
    from rqcompile.ir.ops import broadcast_shapes

    a, b = ts
    expect_type(a, "a", dtypes=("i1",))
    expect_type(b, "b", dtypes=("i1",))
    return (TensorType(broadcast_shapes(a.shape, b.shape), "i1"),)


@defop("rq.logical_not", ("x",))
def _logical_not(ts: tuple[TensorType, ...], attrs: object) -> tuple[TensorType, ...]:
    """Elementwise not of a boolean tensor."""
    expect_type(ts[0], "x", dtypes=("i1",))
    return (ts[0],)


@defop("rq.compare", ("a", "b"), attrs={"fn": AttrSpec(str, choices=_COMPARE)})
def _compare(ts: tuple[TensorType, ...], attrs: object) -> tuple[TensorType, ...]:
    """Elementwise ``a fn b`` (same dtype, numpy broadcasting) -> i1."""
    from rqcompile.ir.ops import broadcast_shapes

    a, b = ts
    if a.dtype != b.dtype:
        fail(f"compare needs one dtype, got {a.dtype} and {b.dtype}")
    return (TensorType(broadcast_shapes(a.shape, b.shape), "i1"),)


@defop("rq.where", ("cond", "a", "b"))
def _where(ts: tuple[TensorType, ...], attrs: object) -> tuple[TensorType, ...]:
    """``a`` where ``cond`` else ``b`` (numpy broadcasting of all three; a and b one dtype)."""
    from rqcompile.ir.ops import broadcast_shapes

    c, a, b = ts
    expect_type(c, "cond", dtypes=("i1",))
    if a.dtype != b.dtype:
        fail(f"where needs a and b of one dtype, got {a.dtype} and {b.dtype}")
    return (TensorType(broadcast_shapes(broadcast_shapes(c.shape, a.shape), b.shape), a.dtype),)


# Ops added for KV-cache generation (passes/ir/kv_cache.py).


@defop("rq.take", ("x", "index"), attrs={"axis": AttrSpec(int)})
def _take(ts: tuple[TensorType, ...], attrs: object) -> tuple[TensorType, ...]:
    """Entries ``index`` (i64/i32[n], run-time) of ``x`` along ``axis`` (``torch.index_select``)."""
    from rqcompile.ir.ops import norm_axis

    x, index = ts
    expect_type(index, "index", dtypes=("i64", "i32"), rank=1)
    axis = norm_axis(attrs["axis"], x.rank)  # type: ignore[index]
    return (x.with_shape((*x.shape[:axis], index.shape[0], *x.shape[axis + 1 :])),)
