"""Deterministic text form of the rq IR in MLIR generic syntax.

The ``rq`` ops printed here are an MLIR dialect of our own; ``rq.export_mlir`` rewrites them
into upstream dialects (integer kernels → ``linalg.contract`` / ``linalg.generic`` on
``i8``/``i32`` with ``arith`` and ``math.ctpop``; float ops → torch-mlir's FX importer). The
op-by-op mapping is in ``docs/mlir.md``.

One op per line, SSA names by definition position (arguments first), attributes sorted,
no object ids. :mod:`rqcompile.ir.parser` reads every text printed here back into an equal
module. The grammar, by example::

    // rq.constants: 1 elided (pass constants= to parse_module)
    //   "fc.w" : tensor<4x8xf32> sha256=5a0c3e2f1b7d
    module {
      func.func @main(%0: tensor<?x8xf32>) -> (tensor<?x4xf32>) {
        %1 = "rq.const"() {dtype = "f32", name = "fc.w", shape = [4 : i64, 8 : i64]} ...
        %2 = "rq.linear"(%0, %1) : (tensor<?x8xf32>, tensor<4x8xf32>) -> tensor<?x4xf32>
        %3 = "rq.relu"(%2) : (tensor<?x4xf32>) -> tensor<?x4xf32> loc("act")
        "func.return"(%3) : (tensor<?x4xf32>) -> ()
      }
    }

Attribute values: ``4 : i64``; floats as the shortest decimal that round-trips (with a ``.``
as MLIR requires, e.g. ``1.0e-05 : f64``) and non-finite floats as their IEEE-754 bits
(``0x7FF0000000000000 : f64``, as MLIR does); ``true``/``false``; strings quoted with ``\\"``,
``\\\\`` and ``\\XX`` byte escapes; tuples as ``[1 : i64, 2.5 : f64]``.

Locations: ``loc("layer")``, or ``loc("layer"("source"))`` (an MLIR name location with a
child name location) when the op has a source position.

Constants: a header comment declares each one (name, type, short sha256 of the raw bytes).
With ``elide_constants=False`` the bytes follow in an MLIR resource section; each blob is the
MLIR hex blob format (4-byte little-endian alignment, then the raw little-endian bytes).
"""

from __future__ import annotations

import hashlib
import math
import re
import struct

from rqcompile.ir import core as _core
from rqcompile.ir.core import AttrValue, Func, Loc, Module, Op, Value, ssa_names, tensor_bytes
from rqcompile.ir.types import TensorType

__all__ = ["format_attr", "format_string", "print_func", "print_module", "print_op"]

_BARE_ID = re.compile(r"[A-Za-z_][A-Za-z0-9_$.]*")


def format_string(s: str) -> str:
    """Quote ``s`` as an MLIR string literal (printable ASCII kept, other bytes as ``\\XX``).

    Example:
        >>> print(format_string('a"b\\n'))
        "a\\"b\\n"
    """
    out = ['"']
    for ch in s:
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif " " <= ch <= "~":
            out.append(ch)
        else:
            out.extend(f"\\{b:02X}" for b in ch.encode("utf-8", "surrogatepass"))
    out.append('"')
    return "".join(out)


def _format_float(v: float) -> str:
    if not math.isfinite(v):
        (bits,) = struct.unpack("<Q", struct.pack("<d", v))
        return f"0x{bits:016X}"
    text = repr(v)
    mantissa, e, exp = text.partition("e")
    if "." not in mantissa:
        mantissa += ".0"
    return mantissa + e + exp


def format_attr(value: AttrValue) -> str:
    """Format one attribute value in MLIR syntax.

    Example:
        >>> format_attr((1, 0.1, True, "x", float("inf")))
        '[1 : i64, 0.1 : f64, true, "x", 0x7FF0000000000000 : f64]'
    """
    t = type(value)
    if t is bool:
        return "true" if value else "false"
    if t is int:
        return f"{value} : i64"
    if t is float:
        return f"{_format_float(value)} : f64"  # type: ignore[arg-type]
    if t is str:
        return format_string(value)  # type: ignore[arg-type]
    return "[" + ", ".join(format_attr(v) for v in value) + "]"  # type: ignore[union-attr]


def _format_key(key: str) -> str:
    return key if _BARE_ID.fullmatch(key) else format_string(key)


def _format_symbol(name: str) -> str:
    return "@" + (name if _BARE_ID.fullmatch(name) else format_string(name))


def _format_loc(loc: Loc) -> str:
    child = f"({format_string(loc.source)})" if loc.source is not None else ""
    return f"loc({format_string(loc.layer)}{child})"


def _types(ts: tuple[TensorType, ...] | list[TensorType]) -> str:
    return "(" + ", ".join(str(t) for t in ts) + ")"


def _name(v: Value, names: dict[int, str]) -> str:
    # An undefined value (only in unverified IR) gets a name the parser rejects clearly.
    return names.get(v.id, f"%undef.{v.id}")


def print_op(op: Op, names: dict[int, str] | None = None) -> str:
    """Return one op in generic syntax (``names`` maps value id to SSA name).

    Example:
        >>> from rqcompile.ir.core import Value
        >>> x = Value(0, TensorType((2,), "f32"))
        >>> print_op(Op("rq.relu", (x,), (Value(1, x.type),)), {0: "%0", 1: "%1"})
        '%1 = "rq.relu"(%0) : (tensor<2xf32>) -> tensor<2xf32>'
    """
    names = names if names is not None else {}
    parts = []
    if op.results:
        parts.append(", ".join(_name(v, names) for v in op.results) + " = ")
    parts.append(format_string(op.name))
    parts.append("(" + ", ".join(_name(v, names) for v in op.operands) + ")")
    if op.attrs:
        attrs = ", ".join(f"{_format_key(k)} = {format_attr(v)}" for k, v in op.attrs)
        parts.append(" {" + attrs + "}")
    parts.append(" : " + _types([v.type for v in op.operands]) + " -> ")
    res = [v.type for v in op.results]
    parts.append(str(res[0]) if len(res) == 1 else _types(res))
    if op.loc is not None:
        parts.append(" " + _format_loc(op.loc))
    return "".join(parts)


def print_func(func: Func, *, indent: str = "") -> str:
    """Return one ``func.func`` in generic op syntax, without a trailing newline."""
    names = ssa_names(func)
    args = ", ".join(f"{_name(v, names)}: {v.type}" for v in func.args)
    outs = _types([v.type for v in func.outputs])
    attrs = ""
    if func.attrs:
        attrs = " attributes {" + ", ".join(
            f"{_format_key(k)} = {format_attr(v)}" for k, v in func.attrs
        ) + "}"
    lines = [f"{indent}func.func {_format_symbol(func.name)}({args}) -> {outs}{attrs} {{"]
    lines += [f"{indent}  {print_op(op, names)}" for op in func.ops]
    ret = ", ".join(_name(v, names) for v in func.outputs)
    lines.append(f'{indent}  "func.return"({ret}) : {outs} -> ()')
    lines.append(f"{indent}}}")
    return "\n".join(lines)


def _hash(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:12]


def print_module(module: Module, *, elide_constants: bool = True) -> str:
    """Return the text of ``module`` (never prints).

    Args:
        module: The module.
        elide_constants: If true, constants appear only in the header comment (name, type,
            hash) and ``parse_module`` needs ``constants=``. If false, their bytes follow in
            a ``dialect_resources`` section and the text is self-contained.

    Returns:
        The text, ending with a newline.
    """
    lines: list[str] = []
    if module.constants:
        n = len(module.constants)
        how = (
            "elided (pass constants= to parse_module)"
            if elide_constants
            else "in dialect_resources below"
        )
        lines.append(f"// rq.constants: {n} {how}")
        for name, t in module.constants.items():
            lines.append(
                f"//   {format_string(name)} : {TensorType.of(t)} sha256={_hash(tensor_bytes(t))}"
            )
    lines.append("module {")
    lines += [print_func(f, indent="  ") for f in module.funcs]
    lines.append("}")
    if module.constants and not elide_constants:
        lines += ["", "{-#", "  dialect_resources: {", "    rq: {"]
        entries = []
        for name, t in module.constants.items():
            align = struct.pack("<I", t.element_size())
            blob = (align + tensor_bytes(t)).hex().upper()
            entries.append(f'      {format_string(name)}: "0x{blob}"')
        lines.append(",\n".join(entries))
        lines += ["    }", "  }", "#-}"]
    return "\n".join(lines) + "\n"


_core.PRINTERS["module"] = print_module
