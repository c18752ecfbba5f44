"""Presets on layers that cannot take their format: keep the nearest format that works.

A preset names one format for every layer, but some layers cannot take it: 2:4 sparsity
needs a weight block that is a multiple of 4, and the first conv of an image model often has
K = 9 (1 channel, 3x3) or 27 (3 channels). Raising there (and suggesting a block size that
cannot work for such a K) makes presets useless on ordinary CNNs. So ``quantize-layers``
rewrites each layer through :func:`rewrite_with_fallback`:

1. the layer's format, as configured;
2. if that raises :class:`~rqcompile.errors.FormatError` because of its N:M sparsity, the
   same format dense (the nearest supported one: same bits, same blocks);
3. if that fails too, the layer stays in float.

Every fallback is an ``RQWarning`` and a ``note:`` line in ``rq.inspect(qat)`` (the graph's
``rq_notes``) naming the layer, the format asked for, the one used and why. With
``strict=True`` (``rq.prepare(..., strict=True)``) the original error is raised instead.
A ``FormatError`` that sparsity did not cause (an explicit block size that does not divide K)
is raised as before: its message suggests a block size that does work.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from rqcompile.errors import FormatError, warn

__all__ = ["rewrite_with_fallback"]


def _short(spec: Any) -> str:
    """``A4W1+2:4``-style name of a layer spec."""

    def bits(q: Any) -> str:
        return "" if q is None else ("1.5" if q.bits == 1.5 else str(int(q.bits)))

    a = f"A{bits(spec.activation)}" if spec.activation is not None else ""
    s = f"+{spec.sparsity.n}:{spec.sparsity.m}" if spec.sparsity is not None else ""
    return f"{a}W{bits(spec.weight)}{s}"


def rewrite_with_fallback(
    rewrite: Callable[..., None], gm: Any, node: Any, layer: Any, spec: Any, ctx: Any
) -> Any:
    """Run ``rewrite(gm, node, layer, spec)``; return the spec used, or ``None`` (float)."""
    try:
        rewrite(gm, node, layer, spec)
        return spec
    except FormatError as e:
        if ctx.config.strict is True or spec.sparsity is None:
            raise
        first = str(e).splitlines()[0]
    dense = dataclasses.replace(spec, sparsity=None)
    try:
        rewrite(gm, node, layer, dense)
        used, what = dense, f"dense {dense}"
    except FormatError as e2:
        used, what = None, "float"
        first += f"; dense: {str(e2).splitlines()[0]}"
        ctx.options.setdefault("float_layers", {})[layer.key] = f"fallback from {spec}: {first}"
    if used is not None:
        what = f"dense {_short(dense)}"
    reason = first.removeprefix(f"layer {layer.key!r}: ").split(". ")[0]
    note = (
        f"{layer.key}: cannot take {_short(spec)} ({reason}); kept as {what}. "
        "Pass strict=True to make this an error."
    )
    ctx.options.setdefault("notes", []).append(note)
    warn(f"rq.prepare: {note}", stacklevel=6)
    return used
