"""Ops added for convert: masked fill with a constant mask, and block-parameter refinement."""

from __future__ import annotations

from rqcompile.ir.ops import AttrSpec, defop, expect_type
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
