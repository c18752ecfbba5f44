"""The state one translation shares with every converter: builder, graph, constant names.

``from_fx.translate`` (the walker) makes one :class:`TranslateContext` per graph and passes it
to the converters of ``converters.py``, ``aten.py`` and ``quantized.py``; it lives here so the
walker can import the converter tables and the converters this class, with no circle.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import fx

from rqcompile.capture.trace import owner_of, source_of
from rqcompile.ir.builder import Builder
from rqcompile.ir.core import Loc, Value
from rqcompile.quant.modules import RQQuantize

__all__ = ["Converter", "QOperand", "TranslateContext", "Unsupported"]


@dataclass(frozen=True)
class QOperand:
    """A quantizer applied to a value: consumed by a quantized-matmul converter."""

    quant: RQQuantize
    source: Value | torch.Tensor
    node: fx.Node


class Unsupported:
    """Marker for the result of a node that could not be converted."""


class TranslateContext:
    """State of one translation: the IR builder, the graph and constant naming."""

    def __init__(self, gm: fx.GraphModule) -> None:
        self.b = Builder()
        self.gm = gm
        self._n = 0
        self.node: fx.Node | None = None
        self.names: dict[int, str] = {}  # id(tensor) -> parameter/buffer name, for readable IR

    def loc(self) -> Loc | None:
        n = self.node
        if n is None:
            return None
        meta = n.meta.get("rq")
        layer = meta.layer if meta is not None else (owner_of(n) or n.name)
        return Loc(layer, source_of(n))

    def value(self, v: Any, *, name: str | None = None) -> Value:
        """An IR value for ``v``: IR values pass through, tensors become constants."""
        if isinstance(v, Value):
            return v
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            v = torch.tensor(float(v))
        if not isinstance(v, torch.Tensor):
            raise TypeError(f"expected a tensor, got {type(v).__name__}")
        name = name or self.names.get(id(v))
        t = v.detach().contiguous()
        if t.is_floating_point():
            t = t.float()
        elif t.dtype == torch.int32:
            t = t.long()
        self._n += 1
        return self.b.const(name or f"const{self._n}", t, loc=self.loc())

    def const(self, name: str, t: torch.Tensor) -> Value:
        return self.b.const(name, t.detach().contiguous(), loc=self.loc())

    def op(self, name: str, *operands: Value, **attrs: Any) -> Any:
        return self.b.op(name, *operands, loc=self.loc(), **attrs)


Converter = Callable[..., Any]
