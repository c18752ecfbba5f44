"""Dynamic batch and sequence dims: the declaration, the symbolic IR, and its specialization.

``rq.lower(qat, target, dynamic_shapes=...)`` (or ``dynamic=True``) goes through here:

1. **Declaration** (:class:`DynamicShapes`): which input axes are dynamic, each a named dim
   with a range ``[min, max]``, parsed from torch.export's spelling
   (``{"x": {0: torch.export.Dim("batch", min=1, max=64)}}`` or a tuple per positional
   input) or from ``dynamic=True`` (axis 0 of every input is ``batch`` in
   ``[1, DEFAULT_MAX_BATCH]``; axis 1 of every integer input of rank >= 2 is ``seq`` in
   ``[1, T]``, T the size seen at conversion).
2. **Symbolic IR** (:func:`symbolic_convert`): the model is converted at probe points, the
   corners of the dims' ranges plus one check point (``2**k + 1`` conversions for ``k``
   dims), with the ordinary static ``rq.convert``. The converted modules must agree op for
   op; every integer attribute that differs between them is fitted exactly (rational
   arithmetic) by a multilinear polynomial in the dims (``batch*seq``, ``3*seq``,
   ``seq+-1``) and checked at the check point. This is the one mechanism for every
   shape-only computation convert folds: reshape targets, slice bounds, and constants
   computed from shapes alone (a causal mask ``mask[:T, :T]``, ``arange(T)``, ``zeros_like``),
   which must equal the prefix of the constant at the dims' maxima (checked at every probe).
   Anything else that depends on a dynamic dim (a float attribute such as ``1/T``, a
   constant that is not a prefix, a different graph) is a :class:`~rqcompile.errors.ConfigError`
   naming the op, so a dynamic model is never silently wrong.

   The result is the module at the maxima with every varying dim printed ``?`` and each
   symbolic attribute annotated: ``rq.sym = ["shape.0=batch*seq"]`` (``attr.index=expr``).
3. **Specialization** (:func:`specialize`): substitute concrete dims, evaluate the
   annotations, slice the prefix constants, and re-infer every result type with the op
   schemas. The result is an ordinary static module, built by the ordinary pipeline (the
   compiled module's per-shape cache lives in ``targets/dynamic.py``).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping, Sequence
from fractions import Fraction
from itertools import product
from typing import Any

import torch

from rqcompile.errors import ConfigError, VerifyError
from rqcompile.ir.core import Func, Module, Op, Value
from rqcompile.ir.ops import get_op
from rqcompile.ir.types import TensorType

__all__ = [
    "DEFAULT_MAX_BATCH",
    "DimRange",
    "DynamicShapes",
    "SymbolicModule",
    "export_hint",
    "is_symbolic",
    "parse_dynamic_shapes",
    "specialize",
    "symbolic_convert",
]

#: The largest batch ``dynamic=True`` declares (give ``dynamic_shapes`` for more).
DEFAULT_MAX_BATCH = 64

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


@dataclasses.dataclass(frozen=True)
class DimRange:
    """A named dynamic dim and its inclusive range."""

    name: str
    min: int
    max: int

    def __str__(self) -> str:
        return f"{self.name} in [{self.min}, {self.max}]"


@dataclasses.dataclass(frozen=True)
class DynamicShapes:
    """Which input axes are dynamic.

    Attributes:
        inputs: the model's input names, in order.
        axes: per input, ``((axis, dim name), ...)``.
        dims: every named dim with its range (one dim may appear on several inputs).
    """

    inputs: tuple[str, ...]
    axes: tuple[tuple[tuple[int, str], ...], ...]
    dims: tuple[DimRange, ...]

    def dim(self, name: str) -> DimRange:
        return next(d for d in self.dims if d.name == name)

    def describe(self) -> str:
        """``batch in [1, 64] (x axis 0); seq in [1, 32] (x axis 1)``."""
        parts = []
        for d in self.dims:
            where = ", ".join(
                f"{self.inputs[i]} axis {a}"
                for i, ax in enumerate(self.axes)
                for a, n in ax
                if n == d.name
            )
            parts.append(f"{d} ({where})")
        return "; ".join(parts)

    def to_json(self) -> dict[str, Any]:
        return {
            "inputs": list(self.inputs),
            "axes": [[[a, n] for a, n in ax] for ax in self.axes],
            "dims": [[d.name, d.min, d.max] for d in self.dims],
        }

    @staticmethod
    def from_json(obj: Any) -> DynamicShapes:
        try:
            dims = tuple(DimRange(str(n), int(lo), int(hi)) for n, lo, hi in obj["dims"])
            axes = tuple(tuple((int(a), str(n)) for a, n in ax) for ax in obj["axes"])
            inputs = tuple(str(s) for s in obj["inputs"])
        except (KeyError, TypeError, ValueError) as e:
            raise ConfigError(f"bad dynamic-shape declaration {obj!r:.200}: {e}") from e
        names = {d.name for d in dims}
        if (
            len(axes) != len(inputs)
            or any(n not in names or a < 0 for ax in axes for a, n in ax)
            or any(not 1 <= d.min <= d.max for d in dims)
        ):
            raise ConfigError(f"bad dynamic-shape declaration {obj!r:.200}")
        return DynamicShapes(inputs, axes, dims)


def _dim_of(spec: Any, where: str) -> tuple[str, int, int]:
    """``(name, min, max)`` of a ``torch.export.Dim`` (or a ``(name, min, max)`` tuple)."""
    if isinstance(spec, tuple) and len(spec) == 3 and isinstance(spec[0], str):
        name, lo, hi = spec
    else:
        name = getattr(spec, "__name__", None)
        lo, hi = getattr(spec, "min", None), getattr(spec, "max", None)
        if not isinstance(name, str) or lo is None or hi is None:
            raise ConfigError(
                f"dynamic_shapes{where}: {spec!r} is not a dim; give "
                "torch.export.Dim('batch', min=1, max=64) (Dim.AUTO/DYNAMIC have no range)."
            )
    try:
        lo, hi = max(int(lo), 1), int(hi)
    except Exception:
        lo, hi = 1, -1
    if hi > 1 << 31:
        hi = -1
    if not _NAME.match(name) or hi < lo:
        raise ConfigError(
            f"dynamic_shapes{where}: dim {name!r} needs an identifier name and a finite range "
            f"1 <= min <= max, e.g. torch.export.Dim('{name}', min=1, max=64); got "
            f"min={getattr(spec, 'min', '?')}, max={getattr(spec, 'max', '?')}."
        )
    return name, lo, hi


def parse_dynamic_shapes(
    spec: Any,
    names: Sequence[str],
    shapes: Sequence[tuple[tuple[int, ...], torch.dtype]],
    *,
    dynamic: bool = False,
) -> DynamicShapes | None:
    """Turn ``dynamic_shapes=`` (torch.export's spelling) or ``dynamic=True`` into a declaration.

    ``spec`` is a dict from input name to ``{axis: Dim}`` (or a per-axis tuple/list of
    ``Dim``/``None``), or a tuple/list with one such entry (or ``None``) per positional input.
    ``shapes`` are the shapes and dtypes the model is converted for (example inputs, or the
    ones recorded in training); ``dynamic=True`` uses them for its defaults. Returns ``None``
    when nothing is dynamic.
    """
    if spec is not None and dynamic:
        raise ConfigError("give dynamic_shapes= or dynamic=True, not both.")
    n = len(names)
    per_input: list[Any] = [None] * n
    if dynamic:
        for i, (shape, dtype) in enumerate(shapes):
            d: dict[int, Any] = {}
            if len(shape) >= 1:
                d[0] = ("batch", 1, max(DEFAULT_MAX_BATCH, shape[0]))
            if len(shape) >= 2 and not dtype.is_floating_point and dtype != torch.bool:
                d[1] = ("seq", 1, shape[1])
            per_input[i] = d
    elif isinstance(spec, Mapping):
        unknown = [k for k in spec if k not in names]
        if unknown:
            raise ConfigError(
                f"dynamic_shapes names input(s) {unknown} the model does not have; its inputs "
                f"are {list(names)}."
            )
        per_input = [spec.get(k) for k in names]
    elif isinstance(spec, (tuple, list)):
        if len(spec) != n:
            raise ConfigError(
                f"dynamic_shapes has {len(spec)} entries; the model takes {n} input(s) "
                f"{list(names)}."
            )
        per_input = list(spec)
    else:
        raise ConfigError(
            "dynamic_shapes must be a dict {input name: {axis: torch.export.Dim(...)}} or a "
            f"tuple with one entry per input, got {type(spec).__name__}."
        )
    ranges: dict[str, tuple[int, int]] = {}
    axes: list[tuple[tuple[int, str], ...]] = []
    for i, entry in enumerate(per_input):
        where = f"[{names[i]!r}]"
        if entry is None:
            axes.append(())
            continue
        if isinstance(entry, (tuple, list)):
            entry = {a: d for a, d in enumerate(entry) if d is not None}
        if not isinstance(entry, Mapping):
            raise ConfigError(
                f"dynamic_shapes{where} must be {{axis: Dim}} or a per-axis tuple, "
                f"got {type(entry).__name__}."
            )
        rank = len(shapes[i][0])
        mine = []
        for a, d in sorted(entry.items()):
            if not isinstance(a, int) or not -rank <= a < rank:
                raise ConfigError(
                    f"dynamic_shapes{where}: axis {a!r} is not an axis of a rank-{rank} input."
                )
            name, lo, hi = _dim_of(d, f"{where}[{a}]")
            if ranges.setdefault(name, (lo, hi)) != (lo, hi):
                raise ConfigError(f"dim {name!r} is declared with two different ranges.")
            mine.append((a % rank, name))
        axes.append(tuple(mine))
    dims = tuple(DimRange(k, lo, hi) for k, (lo, hi) in ranges.items() if lo < hi)
    keep = {d.name for d in dims}
    axes = [tuple((a, nm) for a, nm in ax if nm in keep) for ax in axes]
    if not dims:
        return None
    return DynamicShapes(tuple(names), tuple(axes), dims)


# -- multilinear expressions in the dims -------------------------------------------------

Expr = dict[frozenset[str], Fraction]  # monomial (a set of dim names) -> coefficient


def format_expr(e: Expr) -> str:
    """``{∅: 1, {batch, seq}: 3}`` → ``3*batch*seq+1`` (deterministic order)."""
    terms = []
    for mono, c in sorted(e.items(), key=lambda kv: (-len(kv[0]), sorted(kv[0]))):
        if c == 0:
            continue
        names = sorted(mono)
        if not names:
            terms.append(str(c))
        elif c == 1:
            terms.append("*".join(names))
        else:
            terms.append("*".join([str(c), *names]))
    return "+".join(terms) or "0"


_TERM = re.compile(r"(-?\d+(?:/\d+)?|[A-Za-z_][A-Za-z0-9_]*)\Z")


def eval_expr(text: str, values: Mapping[str, int]) -> int:
    """Evaluate a :func:`format_expr` string at ``values``; the result must be an integer."""
    total = Fraction(0)
    for term in text.split("+"):
        prod = Fraction(1)
        for factor in term.split("*"):
            if not _TERM.match(factor):
                raise VerifyError(f"bad dim expression {text!r}")
            if factor[0] not in "-0123456789" and factor not in values:
                raise VerifyError(f"dim expression {text!r} names an undeclared dim {factor!r}")
            prod *= Fraction(factor) if factor[0] in "-0123456789" else values[factor]
        total += prod
    if total.denominator != 1:
        raise VerifyError(f"dim expression {text!r} is not an integer at {dict(values)}")
    return int(total)


def _fit(
    points: Sequence[Mapping[str, int]], ys: Sequence[int], names: Sequence[str]
) -> Expr | None:
    """The multilinear polynomial through ``(points, ys)`` (one unknown per point), or None."""
    monos = [frozenset(s) for k in range(len(names) + 1) for s in _subsets(names, k)]
    rows = [
        [Fraction(_mono(p, m)) for m in monos] + [Fraction(y)]
        for p, y in zip(points, ys, strict=True)
    ]
    n = len(monos)
    for col in range(n):  # Gauss-Jordan over the rationals
        piv = next((r for r in range(col, n) if rows[r][col] != 0), None)
        if piv is None:
            return None
        rows[col], rows[piv] = rows[piv], rows[col]
        rows[col] = [v / rows[col][col] for v in rows[col]]
        for r in range(n):
            if r != col and rows[r][col] != 0:
                f = rows[r][col]
                rows[r] = [a - f * b for a, b in zip(rows[r], rows[col], strict=True)]
    return {m: rows[i][n] for i, m in enumerate(monos) if rows[i][n] != 0}


def _subsets(names: Sequence[str], k: int) -> list[tuple[str, ...]]:
    from itertools import combinations

    return list(combinations(names, k))


def _mono(p: Mapping[str, int], m: frozenset[str]) -> int:
    out = 1
    for name in m:
        out *= p[name]
    return out


def _eval(e: Expr, p: Mapping[str, int]) -> Fraction:
    return sum((c * _mono(p, m) for m, c in e.items()), Fraction(0))


# -- symbolic conversion -----------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SymbolicModule:
    """A symbolic IR module and the declaration read off its ``main``'s attributes.

    The declaration lives in the IR itself, so it survives printing, parsing and artifacts:

    ``func.func @main(%0: tensor<?x?xi64>) -> tensor<?x?x65xf32> attributes {
    rq.dynamic_axes = [[[0, "batch"], [1, "seq"]]], rq.dynamic_dims = [["batch", 1, 64],
    ["seq", 1, 16]], rq.input_names = ["idx"], rq.output_dims = [["batch", "seq", "65"]]}``

    Attributes:
        ir: the module at the dims' maxima, dynamic dims printed ``?``.
        shapes: the declaration.
        outputs: per output, the expression of each dim (``"batch"``, ``"seq"``, ``"65"``).
    """

    ir: Module
    shapes: DynamicShapes
    outputs: tuple[tuple[str, ...], ...]

    @staticmethod
    def of(ir: Module) -> SymbolicModule:
        f = ir.main
        try:
            shapes = DynamicShapes.from_json({
                "dims": f.attr("rq.dynamic_dims"),
                "axes": f.attr("rq.dynamic_axes"),
                "inputs": f.attr("rq.input_names"),
            })  # fmt: skip
            outs = tuple(tuple(str(e) for e in o) for o in f.attr("rq.output_dims"))  # type: ignore[union-attr]
        except (KeyError, TypeError) as e:
            raise ConfigError(f"func @main has an incomplete dynamic declaration: {e}") from e
        if (
            len(outs) != len(f.outputs)
            or len(shapes.inputs) != len(f.args)
            or any(  # the declared axes are exactly the ``?`` dims of each input
                {a for a, _ in ax} != {k for k, d in enumerate(v.type.shape) if d is None}
                for ax, v in zip(shapes.axes, f.args, strict=True)
            )
        ):
            raise ConfigError("func @main's dynamic declaration does not match its signature.")
        return SymbolicModule(ir, shapes, outs)


def is_symbolic(ir: Module) -> bool:
    """Whether ``ir`` is a symbolic module (its ``main`` declares dynamic dims)."""
    return any(f.name == "main" and f.attr("rq.dynamic_dims", None) for f in ir.funcs)


def _declaration_attrs(shapes: DynamicShapes, outputs: Sequence[Sequence[str]]) -> dict[str, Any]:
    j = shapes.to_json()
    return {
        "rq.dynamic_dims": j["dims"],
        "rq.dynamic_axes": j["axes"],
        "rq.input_names": j["inputs"],
        "rq.output_dims": [list(o) for o in outputs],
    }


def probe_points(dims: Sequence[DimRange]) -> tuple[list[dict[str, int]], dict[str, int]]:
    """The corners (low/high per dim; high = max, low avoids 1 where the range allows) and a
    check point in between (the low value where a range has no third value)."""
    lo, hi, mid = {}, {}, {}
    for d in dims:
        hi[d.name] = d.max
        lo[d.name] = max(d.min, 2) if max(d.min, 2) < d.max else d.min
        inside = [(lo[d.name] + d.max) // 2, d.min, d.max - 1]  # any third value of the range
        rest = [v for v in inside if d.min <= v <= d.max and v not in (lo[d.name], d.max)]
        mid[d.name] = rest[0] if rest else lo[d.name]
    corners = [
        {d.name: (hi if up else lo)[d.name] for d, up in zip(dims, ups, strict=True)}
        for ups in product((False, True), repeat=len(dims))
    ]
    return corners, mid


def _leaves(value: Any, path: str = "") -> list[tuple[str, Any]]:
    if isinstance(value, tuple):
        return [leaf for i, v in enumerate(value) for leaf in _leaves(v, f"{path}.{i}")]
    return [(path, value)]


def _set_leaf(value: Any, idx: Sequence[int], new: int) -> Any:
    if not idx:
        return new
    items = list(value)
    items[idx[0]] = _set_leaf(items[idx[0]], idx[1:], new)
    return tuple(items)


def symbolic_convert(
    convert_at: Callable[[Mapping[str, int]], Module], shapes: DynamicShapes
) -> Module:
    """Convert at the probe points (``convert_at(dims) -> Module``) and merge the results into
    one symbolic module (see :class:`SymbolicModule` for its declaration attributes).

    Raises:
        ConfigError: for anything that depends on the dims and is not expressible.
    """
    names = [d.name for d in shapes.dims]
    corners, check = probe_points(shapes.dims)
    points = [*corners, check] if check not in corners else corners
    mods = [convert_at(p) for p in points]
    top = len(corners) - 1  # all dims at their maxima
    funcs = [m.main for m in mods]
    ref = funcs[top]

    def fail(what: str) -> ConfigError:
        return ConfigError(
            f"cannot make this model dynamic in {', '.join(names)}: {what}. Declare that dim "
            "static (leave it out of dynamic_shapes), or convert for each shape with "
            "rq.lower(qat, example_inputs=(x,))."
        )

    def fit(ys: Sequence[int], what: str) -> str | None:
        if len(set(ys)) == 1:
            return None
        e = _fit(corners, ys[: len(corners)], names)
        if e is None or any(_eval(e, p) != y for p, y in zip(points, ys, strict=True)):
            raise fail(f"{what} takes the values {list(ys)} at dims {points}, which no "
                       "polynomial in the dims matches")  # fmt: skip
        return format_expr(e)

    for i, f in enumerate(funcs):
        if len(f.ops) != len(ref.ops) or len(f.args) != len(ref.args):
            raise fail(
                f"the converted graph differs between dims {points[top]} ({len(ref.ops)} ops) "
                f"and {points[i]} ({len(f.ops)} ops)"
            )
    positions = [_positions(f) for f in funcs]

    def value_type(vals: Sequence[Value], what: str) -> tuple[TensorType, tuple[str, ...]]:
        t0 = vals[top].type
        if any(len(v.type.shape) != len(t0.shape) or v.type.dtype != t0.dtype for v in vals):
            raise fail(f"{what} changes rank or dtype with the dims")
        exprs, shape = [], []
        for k, d in enumerate(t0.shape):
            e = fit([int(v.type.shape[k]) for v in vals], f"dim {k} of {what}")  # type: ignore[arg-type]
            exprs.append(e or str(d))
            shape.append(None if e else d)
        return TensorType(tuple(shape), t0.dtype), tuple(exprs)

    new_vals: dict[int, Value] = {}
    args = []
    for j, v in enumerate(ref.args):
        t, _ = value_type([f.args[j] for f in funcs], f"input {j}")
        new_vals[v.id] = Value(v.id, t)
        args.append(new_vals[v.id])
    ops, constants = [], dict(mods[top].constants)
    for k, op in enumerate(ref.ops):
        peers = [f.ops[k] for f in funcs]
        where = f"op {k} {op.name}" + (f" at {op.loc}" if op.loc else "")
        for p, pos in zip(peers, positions, strict=True):
            if (
                p.name != op.name
                or len(p.results) != len(op.results)
                or [pos[v.id] for v in p.operands] != [positions[top][v.id] for v in op.operands]
                or [kk for kk, _ in p.attrs] != [kk for kk, _ in op.attrs]
            ):
                raise fail(f"{where} differs between probe shapes")
        sym: list[str] = []
        attrs = dict(op.attrs)
        for key, val in op.attrs:
            others = [dict(p.attrs)[key] for p in peers]
            for path, leaf in _leaves(val, key):
                idx = [int(s) for s in path.split(".")[1:]]
                leafs = [_get(o, idx) for o in others]
                if type(leaf) is int and all(type(x) is int for x in leafs):
                    e = fit(leafs, f"attribute {path.lstrip('.')} of {where}")
                    if e is not None:
                        sym.append(f"{key}{''.join('.' + str(i) for i in idx)}={e}")
                elif any(repr(x) != repr(leaf) for x in leafs):
                    raise fail(f"attribute {key} of {where} depends on the dims ({leafs})")
        if sym:
            attrs["rq.sym"] = tuple(sym)
        results = []
        for r, rv in enumerate(op.results):
            t, _ = value_type([p.results[r] for p in peers], f"result {r} of {where}")
            new_vals[rv.id] = Value(rv.id, t)
            results.append(new_vals[rv.id])
        if op.name == "rq.const":
            _check_prefix(str(op.attr("name")), [m.constants for m in mods], top, fail)
        ops.append(Op(op.name, tuple(new_vals[v.id] for v in op.operands), tuple(results),
                      tuple(attrs.items()), op.loc))  # fmt: skip
    outs = []
    for j in range(len(ref.outputs)):
        _, exprs = value_type([f.outputs[j] for f in funcs], f"output {j}")
        outs.append(exprs)
    main = Func(ref.name, tuple(args), tuple(ops), tuple(new_vals[v.id] for v in ref.outputs),
                tuple(_declaration_attrs(shapes, outs).items()))  # fmt: skip
    others = tuple(f for f in mods[top].funcs if f.name != ref.name)
    return Module((main, *others), constants)


def _get(value: Any, idx: Sequence[int]) -> Any:
    for i in idx:
        value = value[i]
    return value


def _positions(f: Func) -> dict[int, int]:
    pos = {v.id: i for i, v in enumerate(f.args)}
    for op in f.ops:
        for r in op.results:
            pos[r.id] = len(pos)
    return pos


def _check_prefix(
    name: str, consts: Sequence[Mapping[str, torch.Tensor]], top: int, fail: Any
) -> None:
    """The constant at every probe must be the leading block of the one at the maxima."""
    big = consts[top][name]
    for c in consts:
        t = c.get(name)
        if t is None or t.dtype != big.dtype or t.dim() != big.dim():
            raise fail(f"constant {name!r} differs between probe shapes")
        if any(a > b for a, b in zip(t.shape, big.shape, strict=True)):
            raise fail(f"constant {name!r} is larger at a smaller shape")
        part = big[tuple(slice(0, s) for s in t.shape)]
        if not torch.equal(part, t):  # no copies: weights are compared here too
            raise fail(
                f"constant {name!r} (a value computed from shapes) at shape {tuple(t.shape)} is "
                f"not the leading block of the one at {tuple(big.shape)}"
            )


# -- specialization ----------------------------------------------------------------------


def specialize(sm: SymbolicModule | Module, values: Mapping[str, int]) -> Module:
    """The static module for concrete dims: annotations evaluated, prefix constants sliced,
    result types re-inferred from the op schemas (so the module verifies as any other)."""
    if isinstance(sm, Module):
        sm = SymbolicModule.of(sm)
    f = sm.ir.main
    decl = sm.shapes
    env: dict[int, Value] = {}
    args = []
    for i, v in enumerate(f.args):
        shape = list(v.type.shape)
        for a, name in decl.axes[i] if i < len(decl.axes) else ():
            shape[a] = values[name]
        if any(d is None for d in shape):
            raise VerifyError(f"input {i} has a dynamic dim the declaration does not name")
        env[v.id] = Value(v.id, TensorType(tuple(shape), v.type.dtype))  # type: ignore[arg-type]
        args.append(env[v.id])
    constants = dict(sm.ir.constants)
    ops = []
    for op in f.ops:
        attrs = dict(op.attrs)
        for item in attrs.pop("rq.sym", ()):  # type: ignore[union-attr]
            path, _, expr = str(item).partition("=")
            key, *idx = path.split(".")
            attrs[key] = _set_leaf(attrs[key], [int(i) for i in idx], eval_expr(expr, values))
        operands = tuple(env[v.id] for v in op.operands)
        schema = {k: a for k, a in attrs.items() if not k.startswith("rq.")}
        types = get_op(op.name).result_types([v.type for v in operands], schema)
        results = tuple(Value(r.id, t) for r, t in zip(op.results, types, strict=True))
        for r in results:
            env[r.id] = r
        if op.name == "rq.const":
            name = str(attrs["name"])
            want = tuple(int(d) for d in attrs["shape"])  # type: ignore[union-attr]
            full = sm.ir.constants[name]
            if tuple(full.shape) != want:  # a value computed from shapes: its leading block
                constants[name] = full[tuple(slice(0, s) for s in want)].contiguous()
        ops.append(Op(op.name, operands, results, tuple(attrs.items()), op.loc))
    main = Func(f.name, tuple(args), tuple(ops), tuple(env[v.id] for v in f.outputs))  # static
    others = tuple(g for g in sm.ir.funcs if g.name != f.name)
    return Module((main, *others), constants)


def export_hint(qat: Any) -> str:
    """Why an export-captured graph fails at other shapes, when that is the reason."""
    sizes = ("sym_size", "sym_numel")
    if qat.meta.get("rq_capture") != "export" or any(
        any(k in str(n.target) for k in sizes) for n in qat.graph.nodes
    ):
        return ""
    return (
        ". This graph was captured with torch.export, which fixes every shape to the "
        "example's. Export the model yourself with dynamic dims, torch.export.export(model, "
        "example_inputs, dynamic_shapes=...), and pass that ExportedProgram to rq.prepare "
        "(docs/models.md, 'Dynamic batch and sequence')."
    )
