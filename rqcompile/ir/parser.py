"""Parser for the text that :mod:`rqcompile.ir.printer` writes.

``parse_module(print_module(m, elide_constants=False)) == m`` and
``parse_module(print_module(m), constants=m.constants) == m`` hold for every module whose
values are defined before use (every module that passes :func:`~rqcompile.ir.verify`).

The parser reads MLIR generic syntax only (see the printer for the grammar). It does not
consult the op registry, so it also reads ops that are not registered; run
:func:`~rqcompile.ir.verify.verify` on the result to check it. Errors are
:class:`~rqcompile.errors.ParseError` with line, column and a caret under the spot.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Callable, Iterable, Mapping

import torch

from rqcompile.errors import ParseError, VerifyError
from rqcompile.ir.core import AttrValue, Func, Loc, Module, Op, Value
from rqcompile.ir.types import TensorType, torch_dtype

__all__ = ["parse_module"]

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_$.]*")
_VALUE = re.compile(r"%[A-Za-z0-9_$.\-]+")
# re.ASCII: numbers are ASCII digits only (``\d`` alone also matches Arabic-Indic digits)
_NUMBER = re.compile(
    r"[-+]?(?:0x[0-9A-Fa-f]+|(?:\d+\.?\d*(?:[eE][-+]?\d+)?)|inf|nan)", re.ASCII
)
_DIGITS = re.compile(r"\d+", re.ASCII)

#: explicit limits: attribute nesting depth, characters in one number, text length
MAX_DEPTH = 64
MAX_NUMBER_CHARS = 64
MAX_TEXT_CHARS = 1 << 31
_TYPE = re.compile(r"tensor<[^>]*>")
_HEADER = re.compile(r"//\s*rq\.constants:")
_DECL = re.compile(r"//\s+(\".*)$")


class _Scanner:
    """Character-level scanner with line/column tracking and MLIR token helpers."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    # -- positions and errors ------------------------------------------------------------
    def error(self, message: str, pos: int | None = None) -> ParseError:
        pos = self.pos if pos is None else pos
        line = self.text.count("\n", 0, pos) + 1
        start = self.text.rfind("\n", 0, pos) + 1
        end = self.text.find("\n", pos)
        src = self.text[start : end if end != -1 else len(self.text)]
        col = pos - start + 1
        return ParseError(f"line {line}, column {col}: {message}\n  {src}\n  {' ' * (col - 1)}^")

    def skip(self) -> None:
        """Skip whitespace and ``//`` comments."""
        while self.pos < len(self.text):
            ch = self.text[self.pos]
            if ch in " \t\r\n":
                self.pos += 1
            elif self.text.startswith("//", self.pos):
                end = self.text.find("\n", self.pos)
                self.pos = len(self.text) if end == -1 else end
            else:
                return

    def at_end(self) -> bool:
        self.skip()
        return self.pos >= len(self.text)

    def peek(self, s: str) -> bool:
        self.skip()
        return self.text.startswith(s, self.pos)

    def accept(self, s: str) -> bool:
        if self.peek(s):
            self.pos += len(s)
            return True
        return False

    def expect(self, s: str) -> None:
        if not self.accept(s):
            got = self.text[self.pos : self.pos + 12].split("\n")[0] or "end of input"
            raise self.error(f"expected {s!r}, found {got!r}")

    def regex(self, rx: re.Pattern[str], what: str) -> str:
        self.skip()
        m = rx.match(self.text, self.pos)
        if m is None:
            raise self.error(f"expected {what}")
        self.pos = m.end()
        return m.group(0)

    # -- tokens --------------------------------------------------------------------------
    def string(self) -> str:
        """A quoted string with MLIR escapes (``\\"``, ``\\\\``, ``\\n``, ``\\t``, ``\\XX``)."""
        self.skip()
        start = self.pos
        if not self.text.startswith('"', self.pos):
            raise self.error("expected a string literal")
        self.pos += 1
        out = bytearray()
        while True:
            if self.pos >= len(self.text) or self.text[self.pos] == "\n":
                raise self.error("unterminated string literal", start)
            ch = self.text[self.pos]
            if ch == '"':
                self.pos += 1
                break
            if ch != "\\":
                out += ch.encode("utf-8", "surrogatepass")
                self.pos += 1
                continue
            esc = self.text[self.pos + 1 : self.pos + 3]
            if esc[:1] in ('"', "\\"):
                out += esc[0].encode()
                self.pos += 2
            elif esc[:1] in ("n", "t"):
                out += b"\n" if esc[0] == "n" else b"\t"
                self.pos += 2
            elif re.fullmatch(r"[0-9A-Fa-f]{2}", esc):
                out.append(int(esc, 16))
                self.pos += 3
            else:
                raise self.error("bad escape in string literal")
        try:
            return out.decode("utf-8", "surrogatepass")
        except UnicodeDecodeError:
            raise self.error("string literal is not valid UTF-8", start) from None

    def type(self) -> TensorType:
        start = self.pos
        text = self.regex(_TYPE, "a tensor type like tensor<?x4xf32>")
        try:
            return TensorType.parse(text)
        except VerifyError as e:
            raise self.error(str(e), start) from None

    def type_list(self) -> tuple[TensorType, ...]:
        self.expect("(")
        out: list[TensorType] = []
        if not self.accept(")"):
            out.append(self.type())
            while self.accept(","):
                out.append(self.type())
            self.expect(")")
        return tuple(out)

    def symbol(self) -> str:
        self.expect("@")
        return self.string() if self.peek('"') else self.regex(_IDENT, "a symbol name")

    def key(self) -> str:
        return self.string() if self.peek('"') else self.regex(_IDENT, "an attribute name")

    def attr_value(self, depth: int = 0) -> AttrValue:
        self.skip()
        start = self.pos
        if self.accept("["):
            if depth >= MAX_DEPTH:
                raise self.error(f"attribute lists nested deeper than {MAX_DEPTH}", start)
            items: list[AttrValue] = []
            if not self.accept("]"):
                items.append(self.attr_value(depth + 1))
                while self.accept(","):
                    items.append(self.attr_value(depth + 1))
                self.expect("]")
            return tuple(items)
        if self.peek('"'):
            return self.string()
        for word, val in (("true", True), ("false", False)):
            if self.text.startswith(word, self.pos) and not _continues(
                self.text, self.pos + len(word)
            ):
                self.pos += len(word)
                return val
        num = self.regex(_NUMBER, "an attribute value")
        if len(num) > MAX_NUMBER_CHARS:
            raise self.error(f"number of {len(num)} characters (limit {MAX_NUMBER_CHARS})", start)
        kind = None
        if self.accept(":"):
            kind = self.regex(_IDENT, "a type (i64 or f64)")
            if kind not in ("i64", "f64"):
                raise self.error(f"unsupported attribute type {kind!r}; use i64 or f64")
        return _number(self, num, kind, start)

    def loc(self) -> Loc | None:
        self.expect("loc")
        self.expect("(")
        if self.accept("unknown"):
            self.expect(")")
            return None
        layer = self.string()
        source = None
        if self.accept("("):
            source = self.string()
            if self.accept(":"):  # an MLIR file location "file":line:col
                line = self.regex(_DIGITS, "a line number")
                self.expect(":")
                col = self.regex(_DIGITS, "a column number")
                source = f"{source}:{line}:{col}"
            self.expect(")")
        self.expect(")")
        return Loc(layer, source)


def _continues(text: str, pos: int) -> bool:
    return pos < len(text) and (text[pos].isalnum() or text[pos] in "_$.")


def _number(sc: _Scanner, num: str, kind: str | None, start: int) -> AttrValue:
    body = num.lstrip("+-")
    is_hex = body.startswith("0x")
    is_float_text = not is_hex and any(c in body for c in ".eEn")  # '.', exponent, inf/nan
    if kind is None:
        kind = "f64" if is_float_text else "i64"
    if kind == "i64":
        if is_float_text:
            raise sc.error(f"{num} is not an integer", start)
        value = int(num, 16 if is_hex else 10)
        if not -(2**63) <= value < 2**63:
            raise sc.error(f"integer {num} does not fit in i64", start)
        return value
    if is_hex:
        bits = int(body, 16)
        if bits >= 2**64 or body != num:
            raise sc.error(f"{num} is not a 64-bit float bit pattern", start)
        return float(struct.unpack("<d", struct.pack("<Q", bits))[0])
    return float(num)


def parse_module(text: str, constants: Mapping[str, torch.Tensor] | None = None) -> Module:
    """Parse the text of a module.

    Args:
        text: Text produced by :func:`~rqcompile.ir.printer.print_module` (or written by hand
            in the same syntax).
        constants: Tensors for constants whose bytes are not in the text. Entries here take
            precedence over the text's resource section.

    Returns:
        The module. When the text declares its constants (the ``// rq.constants:`` header),
        exactly those are kept; otherwise every constant from the resources and
        ``constants`` is kept.

    Raises:
        ParseError: For malformed text, a declared constant with no data, or data whose
            shape or dtype differs from the declaration; the message gives line and column.

    Example:
        >>> from rqcompile.ir import print_module
        >>> m = parse_module("module {\\n}\\n")
        >>> print(print_module(m), end="")
        module {
        }
    """
    if not isinstance(text, str):
        raise ParseError(f"parse_module() takes the IR text (str), got {type(text).__name__}.")
    if len(text) > MAX_TEXT_CHARS:
        raise ParseError(f"IR text of {len(text)} characters, over the limit {MAX_TEXT_CHARS}.")
    try:
        return _parse_module(text, constants)
    except ParseError:
        raise
    except (RecursionError, ValueError, OverflowError, MemoryError, struct.error) as e:
        # a safety net behind the explicit limits: never a raw Python error
        raise ParseError(f"cannot parse the IR text ({type(e).__name__}: {str(e)[:200]}).") from e


def _parse_module(text: str, constants: Mapping[str, torch.Tensor] | None) -> Module:
    sc = _Scanner(text)
    decls = _read_header(sc)
    funcs: list[Func] = []
    wrapped = sc.accept("module")
    if wrapped:
        sc.expect("{")
    while sc.peek("func.func"):
        funcs.append(_parse_func(sc))
    if wrapped:
        sc.expect("}")
    resources: dict[str, tuple[str, int]] = {}
    if sc.accept("{-#"):
        resources = _parse_resources(sc)
    if not sc.at_end():
        raise sc.error("expected func.func, a resource section or end of input")
    fallback = _const_op_types(funcs)
    consts = _resolve_constants(sc, decls, resources, dict(constants or {}), fallback)
    return Module(tuple(funcs), consts)


def _read_header(sc: _Scanner) -> dict[str, tuple[TensorType, int]]:
    """Read the ``// rq.constants:`` declarations at the top: name -> (type, offset)."""
    decls: dict[str, tuple[TensorType, int]] = {}
    offset = 0
    in_header = False
    for line in sc.text.split("\n"):
        stripped = line.strip()
        if stripped and not stripped.startswith("//"):
            break
        if _HEADER.match(stripped):
            in_header = True
        elif in_header and (m := _DECL.match(stripped)) is not None:
            sub = _Scanner(sc.text)
            sub.pos = offset + line.index(m.group(1))
            pos = sub.pos
            name = sub.string()
            sub.expect(":")
            decls[name] = (sub.type(), pos)
        else:
            in_header = False
        offset += len(line) + 1
    return decls


def _parse_func(sc: _Scanner) -> Func:
    sc.expect("func.func")
    name = sc.symbol()
    env: dict[str, Value] = {}
    next_id = 0

    def define(tok: str, t: TensorType, pos: int) -> Value:
        nonlocal next_id
        if tok in env:
            raise sc.error(f"value {tok} is defined twice", pos)
        env[tok] = Value(next_id, t)
        next_id += 1
        return env[tok]

    def use(pos: int, tok: str) -> Value:
        if tok not in env:
            raise sc.error(f"use of undefined value {tok}", pos)
        return env[tok]

    args: list[Value] = []
    sc.expect("(")
    if not sc.accept(")"):
        while True:
            sc.skip()
            pos = sc.pos
            tok = sc.regex(_VALUE, "an argument name like %0")
            sc.expect(":")
            args.append(define(tok, sc.type(), pos))
            if not sc.accept(","):
                break
        sc.expect(")")
    out_types: tuple[TensorType, ...] = ()
    if sc.accept("->"):
        out_types = sc.type_list() if sc.peek("(") else (sc.type(),)
    func_attrs: dict[str, AttrValue] = {}
    if sc.accept("attributes"):
        if not sc.peek("{"):
            raise sc.error("expected '{' after attributes")
        func_attrs = _attr_dict(sc)
    sc.expect("{")
    ops: list[Op] = []
    while True:
        sc.skip()
        if sc.peek('"func.return"'):
            ret_pos = sc.pos
            _, returned, attrs, in_types, res_types, _ = _parse_op_body(sc, use)
            if attrs or res_types:
                raise sc.error("func.return takes no attributes and has no results", ret_pos)
            if in_types != out_types:
                raise sc.error("returned types differ from the function signature", ret_pos)
            break
        result_toks: list[tuple[str, int]] = []
        if sc.peek("%"):
            while True:
                sc.skip()
                pos = sc.pos
                result_toks.append((sc.regex(_VALUE, "a result name"), pos))
                if not sc.accept(","):
                    break
            sc.expect("=")
        sc.skip()
        op_pos = sc.pos
        op_name, operands, attrs, in_types, res_types, loc = _parse_op_body(sc, use)
        if len(res_types) != len(result_toks):
            raise sc.error(
                f"{op_name} names {len(result_toks)} results but its type lists {len(res_types)}",
                op_pos,
            )
        results = tuple(
            define(tok, t, pos) for (tok, pos), t in zip(result_toks, res_types, strict=True)
        )
        try:
            ops.append(Op(op_name, operands, results, tuple(attrs.items()), loc))
        except VerifyError as e:
            raise sc.error(str(e), op_pos) from None
    sc.expect("}")
    try:
        return Func(name, tuple(args), tuple(ops), returned, tuple(func_attrs.items()))
    except VerifyError as e:
        raise sc.error(str(e)) from None


def _parse_op_body(
    sc: _Scanner, use: Callable[[int, str], Value]
) -> tuple[
    str,
    tuple[Value, ...],
    dict[str, AttrValue],
    tuple[TensorType, ...],
    tuple[TensorType, ...],
    Loc | None,
]:
    """Parse ``"name"(%a, %b) {attrs} : (types) -> types loc(...)``."""
    name = sc.string()
    sc.expect("(")
    operand_toks: list[tuple[int, str]] = []
    if not sc.accept(")"):
        while True:
            sc.skip()
            operand_toks.append((sc.pos, sc.regex(_VALUE, "an operand like %0")))
            if not sc.accept(","):
                break
        sc.expect(")")
    operands = tuple(use(pos, tok) for pos, tok in operand_toks)
    attrs = _attr_dict(sc)
    sc.expect(":")
    sc.skip()
    tpos = sc.pos
    in_types = sc.type_list()
    if len(in_types) != len(operands):
        raise sc.error(f"{len(operands)} operands but {len(in_types)} operand types", tpos)
    for (pos, tok), v, t in zip(operand_toks, operands, in_types, strict=True):
        if v.type != t:
            raise sc.error(f"{tok} is used as {t} but was defined as {v.type}", pos)
    sc.expect("->")
    res_types = sc.type_list() if sc.peek("(") else (sc.type(),)
    loc = sc.loc() if sc.peek("loc") else None
    return name, operands, attrs, in_types, res_types, loc


def _attr_dict(sc: _Scanner) -> dict[str, AttrValue]:
    """An optional ``{key = value, ...}`` (op attributes, or a func's after ``attributes``)."""
    attrs: dict[str, AttrValue] = {}
    if sc.accept("{") and not sc.accept("}"):
        while True:
            sc.skip()
            kpos = sc.pos
            key = sc.key()
            if key in attrs:
                raise sc.error(f"attribute {key!r} given twice", kpos)
            sc.expect("=")
            attrs[key] = sc.attr_value()
            if not sc.accept(","):
                break
        sc.expect("}")
    return attrs


def _parse_resources(sc: _Scanner) -> dict[str, tuple[str, int]]:
    """Parse ``dialect_resources: { rq: { "name": "0x..." } } #-}``: name -> (hex, pos)."""
    out: dict[str, tuple[str, int]] = {}
    while not sc.accept("#-}"):
        section = sc.regex(_IDENT, "a resource section name")
        sc.expect(":")
        sc.expect("{")
        while not sc.accept("}"):
            dialect = sc.key()
            sc.expect(":")
            sc.expect("{")
            while not sc.accept("}"):
                key = sc.key()
                sc.expect(":")
                sc.skip()
                pos = sc.pos
                blob = sc.string()
                if section == "dialect_resources" and dialect == "rq":
                    out[key] = (blob, pos)
                sc.accept(",")
            sc.accept(",")
        sc.accept(",")
    return out


def _decode(sc: _Scanner, name: str, blob: str, t: TensorType, pos: int) -> torch.Tensor:
    if not re.fullmatch(r"0x(?:[0-9A-Fa-f]{2}){4,}", blob):
        raise sc.error(f"resource {name!r} is not a hex blob with an alignment prefix", pos)
    data = bytes.fromhex(blob[10:])
    dtype = torch_dtype(t.dtype)
    shape = tuple(d if d is not None else -1 for d in t.shape)
    size = torch.empty((), dtype=dtype).element_size()
    if t.numel is None or len(data) != t.numel * size:
        raise sc.error(f"resource {name!r} holds {len(data)} bytes, not a {t}", pos)
    if not data:
        return torch.empty(shape, dtype=dtype)
    return torch.frombuffer(bytearray(data), dtype=dtype).reshape(shape).clone()


def _const_op_types(funcs: Iterable[Func]) -> dict[str, TensorType]:
    """Static result types of ``rq.const`` ops by constant name (to decode undeclared blobs)."""
    out: dict[str, TensorType] = {}
    for f in funcs:
        for op in f.ops:
            name = op.attr("name", None)
            if op.name == "rq.const" and isinstance(name, str) and len(op.results) == 1:
                out.setdefault(name, op.results[0].type)
    return out


def _resolve_constants(
    sc: _Scanner,
    decls: dict[str, tuple[TensorType, int]],
    resources: dict[str, tuple[str, int]],
    given: dict[str, torch.Tensor],
    fallback: dict[str, TensorType],
) -> dict[str, torch.Tensor]:
    names = list(decls) if decls else sorted({*resources, *given})
    out: dict[str, torch.Tensor] = {}
    for name in names:
        t, pos = decls.get(name, (None, 0))
        if name in given:
            tensor = given[name]
        elif name in resources:
            blob, bpos = resources[name]
            blob_type = t if t is not None else fallback.get(name)
            if blob_type is None or not blob_type.is_static:
                raise sc.error(
                    f"resource {name!r} has no type: declare it in the '// rq.constants:' "
                    f"header or read it with an rq.const op of static type",
                    bpos,
                )
            tensor = _decode(sc, name, blob, blob_type, bpos)
        else:
            raise sc.error(
                f"constant {name!r} is elided in the text; pass its tensor in "
                f"parse_module(text, constants=...)",
                pos,
            )
        if t is not None and (
            tuple(tensor.shape) != t.shape or tensor.dtype != torch_dtype(t.dtype)
        ):
            raise sc.error(
                f"constant {name!r} is declared {t}, but the tensor given has shape "
                f"{list(tensor.shape)} and dtype {tensor.dtype}",
                pos,
            )
        out[name] = tensor
    return out
