"""The op registry: one :class:`OpDef` per op, with its schema and result-type rule.

Each op is declared once. An :class:`OpDef` names the operands, the attribute schema
(:class:`AttrSpec` per attribute: exact Python type, default, allowed values), an ``infer``
function from operand types and attributes to result types, and an optional extra ``verify``
hook for attribute values. The :class:`~rqcompile.ir.builder.Builder` and
:func:`~rqcompile.ir.verify.verify` both go through :meth:`OpDef.result_types`, so building
and verifying can never disagree.

Adding an op (from any module)::

    from rqcompile.ir.ops import AttrSpec, defop, expect_type

    @defop("rq.my_op", ("x",), attrs={"alpha": AttrSpec(float, default=1.0)})
    def _my_op(ts, attrs):
        '''One-line summary shown in the catalogue.'''
        expect_type(ts[0], "x", dtypes=("f32",))
        return (ts[0],)

Duplicate names are errors. The built-in catalogue lives in :mod:`rqcompile.ir.ops_int`
(integer kernels), :mod:`rqcompile.ir.ops_float` (float and layout ops) and
:mod:`rqcompile.ir.ops_more`; they register themselves when imported, which
``rqcompile.ir``'s ``__init__`` does (so any import of the package has the whole catalogue).
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, NoReturn, TypeAlias

from rqcompile.errors import VerifyError
from rqcompile.ir.core import AttrValue
from rqcompile.ir.types import Dim, TensorType

__all__ = [
    "AttrSpec",
    "Dims",
    "InferFn",
    "OpDef",
    "VerifyFn",
    "all_ops",
    "broadcast_shapes",
    "defop",
    "div_dim",
    "expect_type",
    "fail",
    "find_op",
    "get_op",
    "mul_dim",
    "norm_axis",
    "register_op",
    "unify_dims",
]

#: ``infer(operand_types, attrs) -> result_types``; raises VerifyError on bad input.
InferFn: TypeAlias = Callable[
    [tuple[TensorType, ...], Mapping[str, AttrValue]], tuple[TensorType, ...]
]
#: ``verify(operand_types, attrs) -> None``; raises VerifyError on bad attribute values.
VerifyFn: TypeAlias = Callable[[tuple[TensorType, ...], Mapping[str, AttrValue]], None]

_NO_DEFAULT: Any = object()
_TYPE_NAMES = {bool: "bool", int: "int", float: "float", str: "str", tuple: "tuple"}


def fail(message: str) -> NoReturn:
    """Raise the :class:`VerifyError` that ``infer`` / ``verify`` hooks use to reject input."""
    raise VerifyError(message)


@dataclass(frozen=True)
class AttrSpec:
    """Schema of one attribute.

    Types are exact: ``AttrSpec(float)`` rejects ``1`` (the Builder converts ints for float
    attributes; stored ops must be exact) and ``AttrSpec(int)`` rejects ``True``.

    Attributes:
        types: Accepted Python type(s): ``int``, ``float``, ``bool``, ``str`` or ``tuple``.
        default: Value the Builder fills in when the attribute is omitted; without one the
            attribute is required.
        elem: For tuples, the accepted element type(s).
        length: For tuples, the exact length.
        choices: Allowed values.

    Example:
        >>> AttrSpec(tuple, elem=int, length=2).describe()
        'tuple[int] of length 2'
    """

    types: type | tuple[type, ...]
    default: Any = _NO_DEFAULT
    elem: type | tuple[type, ...] | None = None
    length: int | None = None
    choices: tuple[AttrValue, ...] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.types, tuple):
            object.__setattr__(self, "types", (self.types,))
        if self.elem is not None and not isinstance(self.elem, tuple):
            object.__setattr__(self, "elem", (self.elem,))

    @property
    def required(self) -> bool:
        """True when the attribute has no default."""
        return self.default is _NO_DEFAULT

    @property
    def accepted(self) -> tuple[type, ...]:
        """The accepted Python types as a tuple."""
        return self.types if isinstance(self.types, tuple) else (self.types,)

    def describe(self) -> str:
        """Human-readable type, e.g. ``int``, ``int | float`` or ``str in {'none', 'tanh'}``."""
        text = " | ".join(_TYPE_NAMES.get(t, t.__name__) for t in self.accepted)
        if self.elem is not None:
            elem = self.elem if isinstance(self.elem, tuple) else (self.elem,)
            text += "[" + " | ".join(_TYPE_NAMES.get(t, t.__name__) for t in elem) + "]"
        if self.length is not None:
            text += f" of length {self.length}"
        if self.choices is not None:
            text += " in {" + ", ".join(repr(c) for c in self.choices) + "}"
        return text

    def check(self, value: AttrValue) -> str | None:
        """Return why ``value`` does not fit this schema, or ``None`` if it does."""
        if type(value) not in self.accepted:
            return f"has type {type(value).__name__}, expected {self.describe()}"
        if isinstance(value, tuple):
            if self.length is not None and len(value) != self.length:
                return f"has length {len(value)}, expected {self.describe()}"
            elem = self.elem if isinstance(self.elem, tuple) else (self.elem,)
            if self.elem is not None and any(type(v) not in elem for v in value):
                return f"= {value!r} has an element of the wrong type, expected {self.describe()}"
        if self.choices is not None and value not in self.choices:
            return f"= {value!r}, expected {self.describe()}"
        return None


@dataclass(frozen=True)
class OpDef:
    """Declaration of one op.

    Attributes:
        name: Op name, ``rq.`` + what the op computes.
        operands: Operand names; a trailing ``*`` on the last one makes it variadic
            (one or more operands).
        infer: Result-type rule.
        attrs: Attribute schema.
        verify: Optional extra check of attribute values.
        summary: One line for the catalogue (defaults to the first docstring line of infer).
    """

    name: str
    operands: tuple[str, ...]
    infer: InferFn
    attrs: Mapping[str, AttrSpec] = field(default_factory=dict)
    verify: VerifyFn | None = None
    summary: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "operands", tuple(self.operands))
        if any(o.endswith("*") for o in self.operands[:-1]):
            raise ValueError(f"{self.name}: only the last operand may be variadic ('*').")
        object.__setattr__(self, "attrs", MappingProxyType(dict(sorted(self.attrs.items()))))
        if not self.summary:
            doc = (self.infer.__doc__ or "").strip().splitlines()
            object.__setattr__(self, "summary", doc[0] if doc else "")

    @property
    def variadic(self) -> bool:
        """True when the last operand is variadic."""
        return bool(self.operands) and self.operands[-1].endswith("*")

    def check_operands(self, count: int) -> str | None:
        """Return why ``count`` operands are wrong for this op, or ``None``."""
        fixed = len(self.operands) - self.variadic
        if self.variadic and count >= fixed + 1:
            return None
        if not self.variadic and count == fixed:
            return None
        want = f"at least {fixed + 1}" if self.variadic else str(fixed)
        names = ", ".join(self.operands) or "none"
        return f"takes {want} operand(s) ({names}), got {count}"

    def check_attrs(self, attrs: Mapping[str, AttrValue]) -> list[str]:
        """Return every problem with ``attrs``: missing, extra and mistyped attributes."""
        problems = [
            f"missing attribute {k!r} ({s.describe()})"
            for k, s in self.attrs.items()
            if k not in attrs
        ]
        known = ", ".join(self.attrs) or "none"
        problems += [
            f"unexpected attribute {k!r} (known: {known})" for k in attrs if k not in self.attrs
        ]
        for k, v in attrs.items():
            spec = self.attrs.get(k)
            why = spec.check(v) if spec is not None else None
            if why is not None:
                problems.append(f"attribute {k!r} {why}")
        return problems

    def with_defaults(self, attrs: Mapping[str, AttrValue]) -> dict[str, AttrValue]:
        """Return ``attrs`` plus the default of every omitted attribute that has one."""
        out = dict(attrs)
        for k, s in self.attrs.items():
            if k not in out and not s.required:
                out[k] = s.default
        return out

    def result_types(
        self, operand_types: Sequence[TensorType], attrs: Mapping[str, AttrValue]
    ) -> tuple[TensorType, ...]:
        """Check operands and attributes, then infer the result types.

        Raises:
            VerifyError: Listing every schema problem, or the first shape/dtype problem.
        """
        problems = self.check_attrs(attrs)
        why = self.check_operands(len(operand_types))
        if why is not None:
            problems.insert(0, why)
        if problems:
            raise VerifyError("; ".join(problems))
        ts = tuple(operand_types)
        if self.verify is not None:
            self.verify(ts, attrs)
        return tuple(self.infer(ts, attrs))


_REGISTRY: dict[str, OpDef] = {}


def register_op(opdef: OpDef) -> OpDef:
    """Add ``opdef`` to the registry and return it.

    Raises:
        ValueError: If an op with the same name is already registered.
    """
    if opdef.name in _REGISTRY:
        raise ValueError(f"op {opdef.name!r} is already registered; op names must be unique.")
    _REGISTRY[opdef.name] = opdef
    return opdef


def defop(
    name: str,
    operands: Sequence[str],
    *,
    attrs: Mapping[str, AttrSpec] | None = None,
    verify: VerifyFn | None = None,
    summary: str = "",
) -> Callable[[InferFn], InferFn]:
    """Decorator form of :func:`register_op`: the decorated function is the ``infer`` rule."""

    def wrap(infer: InferFn) -> InferFn:
        register_op(OpDef(name, tuple(operands), infer, dict(attrs or {}), verify, summary))
        return infer

    return wrap


def find_op(name: str) -> OpDef | None:
    """Return the OpDef called ``name``, or ``None``."""
    return _REGISTRY.get(name)


def get_op(name: str) -> OpDef:
    """Return the OpDef called ``name``.

    Raises:
        VerifyError: If no such op is registered; suggests close names.
    """
    opdef = _REGISTRY.get(name)
    if opdef is None:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=3)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise VerifyError(
            f"unknown op {name!r}.{hint} Declare new ops with rqcompile.ir.register_op."
        )
    return opdef


def all_ops() -> tuple[OpDef, ...]:
    """Every registered op, sorted by name."""
    return tuple(_REGISTRY[k] for k in sorted(_REGISTRY))


# ---------------------------------------------------------------------------------------------
# Helpers for infer rules (public so that other modules can declare ops the same way).


def expect_type(
    t: TensorType,
    what: str,
    *,
    dtypes: Sequence[str] | None = None,
    rank: int | None = None,
    min_rank: int | None = None,
) -> None:
    """Fail unless ``t`` has one of ``dtypes`` and the given rank (or at least ``min_rank``)."""
    if dtypes is not None and t.dtype not in dtypes:
        fail(f"{what} has type {t}, expected element type {' or '.join(dtypes)}")
    if rank is not None and t.rank != rank:
        fail(f"{what} has type {t}, expected rank {rank}")
    if min_rank is not None and t.rank < min_rank:
        fail(f"{what} has type {t}, expected rank >= {min_rank}")


def unify_dims(a: Dim, b: Dim, what: str) -> Dim:
    """Return the known one of two dims that must be equal (``None`` matches anything)."""
    if a is None:
        return b
    if b is not None and a != b:
        fail(f"{what}: {a} != {b}")
    return a


def broadcast_shapes(a: Sequence[Dim], b: Sequence[Dim]) -> tuple[Dim, ...]:
    """Numpy broadcasting of two shapes; a dynamic dim broadcasts against 1 as dynamic."""
    out: list[Dim] = []
    for i in range(1, max(len(a), len(b)) + 1):
        x = a[-i] if i <= len(a) else 1
        y = b[-i] if i <= len(b) else 1
        if x == 1:
            out.append(y)
        elif y == 1 or y is None:
            out.append(x)
        elif x is None or x == y:
            out.append(y)
        else:
            fail(f"shapes {tuple(a)} and {tuple(b)} do not broadcast (dim -{i}: {x} vs {y})")
    return tuple(reversed(out))


def norm_axis(axis: int, rank: int, what: str = "axis") -> int:
    """Map a possibly negative axis into ``range(rank)``."""
    if not -rank <= axis < rank:
        fail(f"{what}={axis} is out of range for rank {rank}")
    return axis % rank if rank else 0


def div_dim(d: Dim, k: int, what: str) -> Dim:
    """``d // k``, failing unless ``k`` divides ``d``; ``None`` stays ``None``."""
    if k <= 0:
        fail(f"{what}: divisor {k} must be positive")
    if d is None:
        return None
    if d % k:
        fail(f"{what}: {d} is not divisible by {k}")
    return d // k


def mul_dim(d: Dim, k: int) -> Dim:
    """``d * k``; ``None`` stays ``None``."""
    return None if d is None else d * k


class Dims:
    """Binds named dims (``M``, ``K``, ``nb``...) across operands of one op.

    Example:
        >>> env = Dims()
        >>> env.match(TensorType((None, 8), "f32"), "x", ("M", "K"))
        >>> env.match(TensorType((4, 8), "f32"), "y", ("M", "K"))
        >>> env["M"], env["K"]
        (4, 8)
    """

    def __init__(self) -> None:
        self._dims: dict[str, Dim] = {}

    def __getitem__(self, sym: str) -> Dim:
        return self._dims.get(sym)

    def bind(self, sym: str, dim: Dim, what: str) -> None:
        """Unify symbol ``sym`` with ``dim`` (from ``what``)."""
        old = self._dims.get(sym)
        if dim is not None and old is not None and dim != old:
            fail(f"{what}: {sym} = {dim} here but {sym} = {old} elsewhere")
        if old is None:
            self._dims[sym] = dim

    def match(
        self, t: TensorType, what: str, syms: Sequence[str], dtype: str | None = None
    ) -> None:
        """Check ``t`` has rank ``len(syms)`` (and ``dtype``), binding each dim to its symbol."""
        if dtype is not None and t.dtype != dtype:
            fail(f"{what} has type {t}, expected {dtype}[{', '.join(syms)}]")
        if t.rank != len(syms):
            fail(f"{what} has type {t}, expected rank {len(syms)} [{', '.join(syms)}]")
        for s, d in zip(syms, t.shape, strict=True):
            self.bind(s, d, f"{what} {t}")

