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


def _positions(pos: TensorType, lead: tuple[object, ...], what: str) -> None:
    """``pos`` is i64/i32 ``(P,)``: one position for all rows (P = 1) or one per row of the
    leading axis 0 (P = ``lead[0]``, which must then not be the sequence axis)."""
    expect_type(pos, "pos", dtypes=("i64", "i32"), rank=1)
    p = pos.shape[0]
    if p is not None and p != 1 and (not lead or lead[0] not in (None, p)):
        fail(f"{what}: pos {pos} must hold 1 position or one per row of axis 0 ({lead[:1]})")


@defop("rq.cache_write", ("cache", "row", "pos"), attrs={"axis": AttrSpec(int)})
def _cache_write(ts: tuple[TensorType, ...], attrs: object) -> tuple[TensorType, ...]:
    """``cache`` with ``row`` (``cache``'s shape, 1 along ``axis``) written at position ``pos``
    along ``axis``; ``pos`` (P,) is one position (P = 1) or one per row of axis 0 (the batch).
    Targets may update ``cache`` in place (TVM does): the operand is consumed."""
    from rqcompile.ir.ops import norm_axis

    c, r, pos = ts
    axis = norm_axis(attrs["axis"], c.rank)  # type: ignore[index]
    if r.dtype != c.dtype or r.rank != c.rank:
        fail(f"row {r} must have the dtype and rank of the cache {c}")
    for i, (dc, dr) in enumerate(zip(c.shape, r.shape, strict=True)):
        want = 1 if i == axis else dc
        if dr is not None and want is not None and dr != want:
            fail(f"row {r} must match the cache {c} except for size 1 along axis {axis}")
    lead = c.shape[:axis]
    if pos.shape[0] not in (None, 1) and axis == 0:
        fail(f"per-row positions {pos} need the batch on axis 0, not the sequence")
    _positions(pos, lead, "cache_write")
    return (c,)


@defop(
    "rq.cache_attention",
    ("q", "k", "v", "pos"),
    attrs={"scale": AttrSpec(float), "key_axis": AttrSpec(int, choices=(-1, -2))},
)
def _cache_attention(ts: tuple[TensorType, ...], attrs: object) -> tuple[TensorType, ...]:
    """One query row over the live prefix of a key/value cache: ``softmax(q·kᵀ·scale)·v``
    over keys ``j <= pos`` only. q ``(..., 1, E)``; k ``(..., E, T)`` (``key_axis = -1``, the
    sequence last) or ``(..., T, E)`` (``-2``); v ``(..., T, Ev)``; pos (P,) one position
    (P = 1) or one per row of axis 0. Result ``(..., 1, Ev)``."""
    q, k, v, pos = ts
    for name, t in (("q", q), ("k", k), ("v", v)):
        expect_type(t, name, dtypes=("f32",), min_rank=2)
    if not (q.rank == k.rank == v.rank):
        fail(f"q {q}, k {k} and v {v} must have one rank")
    lead = q.shape[:-2]
    if k.shape[:-2] != lead or v.shape[:-2] != lead:
        fail(f"q {q}, k {k} and v {v} must have the same leading dims")
    if q.shape[-2] not in (None, 1):
        fail(f"q {q} must hold one query row")
    e, t = (k.shape[-2], k.shape[-1]) if attrs["key_axis"] == -1 else (k.shape[-1], k.shape[-2])  # type: ignore[index]
    if e != q.shape[-1] or t != v.shape[-2]:
        fail(f"k {k} (key_axis {attrs['key_axis']}) does not match q {q} and v {v}")  # type: ignore[index]
    _positions(pos, lead, "cache_attention")
    return (TensorType((*lead, 1, v.shape[-1]), "f32"),)
