"""A small MLIR text writer for upstream dialects (func, arith, math, tensor, linalg).

Why text and not the Python builder API: the integer kernels are a handful of fixed
``linalg.generic`` templates, which read best as the MLIR they produce, and text needs no
torch-mlir at import time. The text is always parsed and verified by MLIR afterwards
(:func:`rqcompile.targets.mlir.export.export_mlir`), so a typo here fails loudly, never silently.

Integer types are *signless* in MLIR (``i8``, ``i32``): signedness lives in the ops
(``arith.extsi`` vs ``arith.extui``, ``arith.shrsi`` vs ``arith.shrui``). So our ``ui8``
nibble bytes become ``i8`` and ``ui32`` sign words become ``i32``, with identical bits.
"""

from __future__ import annotations

from collections.abc import Sequence

from rqcompile.errors import UnsupportedOpError
from rqcompile.ir.types import TensorType

__all__ = ["MLIR_DTYPES", "Writer", "affine_map", "tensor_type"]

#: rq IR element type → MLIR element type (signless integers; bits unchanged).
MLIR_DTYPES: dict[str, str] = {
    "i1": "i1",
    "i8": "i8",
    "ui8": "i8",
    "i32": "i32",
    "ui32": "i32",
    "i64": "i64",
    "f32": "f32",
}


def tensor_type(shape: Sequence[int | None], dtype: str) -> str:
    """``tensor<8x64xi8>`` for a static shape; ``dtype`` in rq or MLIR spelling.

    Example:
        >>> tensor_type((8, 2), "ui32")
        'tensor<8x2xi32>'
    """
    if any(d is None for d in shape):
        raise UnsupportedOpError(
            f"MLIR export needs static shapes, got {tuple(shape)}. Convert with concrete "
            "example inputs: rq.export_mlir(qat, example_inputs=(x,))."
        )
    el = MLIR_DTYPES.get(dtype, dtype)
    return "tensor<" + "".join(f"{d}x" for d in shape) + el + ">"


def rq_tensor_type(t: TensorType) -> str:
    """MLIR spelling of an rq :class:`~rqcompile.ir.types.TensorType`."""
    if t.dtype not in MLIR_DTYPES:
        raise UnsupportedOpError(f"MLIR export has no mapping for element type {t.dtype!r}.")
    return tensor_type(t.shape, t.dtype)


def affine_map(rank: int, results: Sequence[int]) -> str:
    """``affine_map<(d0, d1, d2) -> (d0, d2)>``: a projection of the iteration space.

    Example:
        >>> affine_map(3, (0, 2))
        'affine_map<(d0, d1, d2) -> (d0, d2)>'
    """
    dims = ", ".join(f"d{i}" for i in range(rank))
    res = ", ".join(f"d{i}" for i in results)
    return f"affine_map<({dims}) -> ({res})>"


class Writer:
    """Accumulates the lines of one function body with fresh SSA names.

    Every helper returns the SSA name of its result. Names are ``%<prefix><n>`` with one
    counter per writer, so the text is deterministic.
    """

    def __init__(self, indent: str = "    ") -> None:
        self.lines: list[str] = []
        self.indent = indent
        self._n = 0

    def fresh(self, prefix: str = "v") -> str:
        self._n += 1
        return f"%{prefix}{self._n}"

    def emit(self, line: str) -> None:
        self.lines.append(self.indent + line)

    def const(self, value: int | float, el: str) -> str:
        """A scalar ``arith.constant`` (ints exact; floats written with repr, which round-trips)."""
        v = self.fresh("c")
        lit = repr(float(value)) if el.startswith("f") else str(int(value))
        self.emit(f"{v} = arith.constant {lit} : {el}")
        return v

    def empty(self, ty: str) -> str:
        v = self.fresh("e")
        self.emit(f"{v} = tensor.empty() : {ty}")
        return v

    def zeros(self, ty: str, el: str) -> str:
        """A tensor of zeros (the init of a reduction)."""
        zero = self.const(0.0 if el.startswith("f") else 0, el)
        v = self.fresh("z")
        self.emit(f"{v} = linalg.fill ins({zero} : {el}) outs({self.empty(ty)} : {ty}) -> {ty}")
        return v

    def expand(self, x: str, src: str, dst: str, groups: str, shape: Sequence[int]) -> str:
        """``tensor.expand_shape`` (split one dim into several), e.g. ``[[0], [1, 2]]``."""
        v = self.fresh("x")
        out = ", ".join(str(d) for d in shape)
        self.emit(f"{v} = tensor.expand_shape {x} {groups} output_shape [{out}] : {src} into {dst}")
        return v

    def collapse(self, x: str, src: str, dst: str, groups: str) -> str:
        """``tensor.collapse_shape`` (merge adjacent dims), e.g. ``[[0], [1, 2]]``."""
        v = self.fresh("x")
        self.emit(f"{v} = tensor.collapse_shape {x} {groups} : {src} into {dst}")
        return v

    def contract(
        self,
        ins: Sequence[tuple[str, str]],
        out: tuple[str, str],
        maps: Sequence[Sequence[int]],
        *,
        comment: str = "",
    ) -> str:
        """``linalg.contract``: ``out += Π ins`` summed over the dims absent from ``out``'s map.

        Integer inputs are sign-extended to the output type (``cast_signed``, the default), so
        ``i8 × i8 → i32`` is the exact integer product.
        """
        rank = 1 + max(max(m) for m in maps)
        amaps = ", ".join(affine_map(rank, m) for m in maps)
        v = self.fresh("g")
        if comment:
            self.emit(f"// {comment}")
        self.emit(
            f"{v} = linalg.contract indexing_maps = [{amaps}] "
            f"ins({', '.join(s for s, _ in ins)} : {', '.join(t for _, t in ins)}) "
            f"outs({out[0]} : {out[1]}) -> {out[1]}"
        )
        return v

    def generic(
        self,
        ins: Sequence[tuple[str, str, str]],
        out: tuple[str, str, str],
        maps: Sequence[Sequence[int]],
        iterators: Sequence[str],
        body: Sequence[str],
        *,
        comment: str = "",
    ) -> str:
        """One ``linalg.generic`` with a single output.

        Args:
            ins: ``(ssa, tensor type, element type)`` per input.
            out: the same for the output (its init tensor).
            maps: per operand (inputs, then output) the iteration dims it is indexed by.
            iterators: ``"parallel"`` / ``"reduction"`` per iteration dim.
            body: region lines; block arguments are ``%in0``, ``%in1``, ... and ``%out``; the
                last line must ``linalg.yield``.
            comment: a ``//`` line written above the op (why it exists).
        """
        rank = len(iterators)
        amaps = ", ".join(affine_map(rank, m) for m in maps)
        its = ", ".join(f'"{i}"' for i in iterators)
        v = self.fresh("g")
        if comment:
            self.emit(f"// {comment}")
        head = f"{v} = linalg.generic {{indexing_maps = [{amaps}], iterator_types = [{its}]}}"
        if ins:
            head += f" ins({', '.join(s for s, _, _ in ins)} : {', '.join(t for _, t, _ in ins)})"
        head += f" outs({out[0]} : {out[1]}) {{"
        self.emit(head)
        bargs = [f"%in{i}: {el}" for i, (_, _, el) in enumerate(ins)] + [f"%out: {out[2]}"]
        self.emit(f"^bb0({', '.join(bargs)}):")
        for line in body:
            self.emit("  " + line)
        self.emit(f"}} -> {out[1]}")
        return v
