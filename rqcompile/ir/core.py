"""Core data structures of the rq integer IR: values, ops, functions and modules.

Everything here is an immutable value. Passes build new objects (``dataclasses.replace`` or a
:class:`~rqcompile.ir.builder.Builder`) instead of editing old ones, and ``==`` is structural,
so a Before/Expected test is a single comparison.

Equality rules, chosen so that ``a == b`` exactly when the two print to the same text:

* Attribute values compare with their Python type: ``4 != 4.0`` and ``True != 1``; floats
  compare bit-for-bit through :meth:`float.hex` (``-0.0 != 0.0``, any NaN equals any NaN).
* A :class:`Func` compares up to renaming of its values: value ids are only identities, and
  two functions are equal when their values line up by definition position (the printer's
  ``%0, %1, ...``). A pass may therefore mint fresh ids without breaking goldens.
* :class:`Module` constants compare by name, dtype, shape and raw bytes (stricter than
  ``torch.equal``: NaN equals NaN and ``-0.0`` differs from ``0.0``, as in the printed text).
"""

from __future__ import annotations

import dataclasses
import functools
import types as _pytypes
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeAlias

import torch

from rqcompile.errors import VerifyError
from rqcompile.ir.types import TensorType, dtype_of_torch

__all__ = [
    "ANNOTATION_PREFIX",
    "AttrValue",
    "Func",
    "Loc",
    "Module",
    "Op",
    "Value",
    "attr_key",
    "is_annotation",
    "normalize_attr",
    "ssa_names",
    "tensor_bytes",
]

#: An attribute value: plain Python scalars and (nested) tuples of them.
AttrValue: TypeAlias = "int | float | bool | str | tuple[AttrValue, ...]"

_I64_MIN, _I64_MAX = -(2**63), 2**63 - 1
_MISSING: Any = object()


def normalize_attr(value: object, *, where: str = "attribute") -> AttrValue:
    """Check an attribute value and return it in canonical form (lists become tuples).

    Args:
        value: A bool, int (signed 64-bit range), float, str, or a tuple/list of those.
        where: Names the attribute in the error message.

    Returns:
        The value with every list turned into a tuple; scalars keep their exact type.

    Raises:
        VerifyError: If the value (or a nested element) has another type or an int is out
            of the 64-bit range.

    Example:
        >>> normalize_attr([1, [2.0, True]])
        (1, (2.0, True))
    """
    t = type(value)
    if t is bool or t is float or t is str:
        return value  # type: ignore[return-value]
    if t is int:
        if not _I64_MIN <= value <= _I64_MAX:  # type: ignore[operator]
            raise VerifyError(f"{where}: integer {value} does not fit in i64.")
        return value  # type: ignore[return-value]
    if t is tuple or t is list:
        return tuple(normalize_attr(v, where=where) for v in value)  # type: ignore[attr-defined]
    raise VerifyError(
        f"{where}: {value!r} of type {t.__name__} is not an attribute value; "
        f"use bool, int, float, str or a tuple of those."
    )


#: Text forms registered by ``ir/printer.py`` (``"module"``), which imports this module and
#: so cannot be imported by it; ``rqcompile.ir`` imports the printer, so it is always set.
PRINTERS: dict[str, Any] = {}

#: Attribute names with this prefix are annotations (see :attr:`Op.annotations`).
ANNOTATION_PREFIX = "rq."


def is_annotation(name: str) -> bool:
    """Whether attribute ``name`` is an annotation, not part of the op's schema."""
    return name.startswith(ANNOTATION_PREFIX)


def attr_key(value: AttrValue) -> object:
    """Return a hashable key that is equal exactly when two attribute values print the same.

    Example:
        >>> attr_key(4) == attr_key(4.0), attr_key(0.0) == attr_key(-0.0)
        (False, False)
    """
    t = type(value)
    if t is float:
        return ("f", value.hex())  # type: ignore[union-attr]
    if t is tuple:
        return ("t", tuple(attr_key(v) for v in value))  # type: ignore[union-attr]
    return (t.__name__[0], value)


@dataclass(frozen=True)
class Value:
    """An SSA value: an id that is unique within its function, plus its type.

    Attributes:
        id: Identity within the function. Only identity matters: the printer renames values
            by definition position.
        type: The value's tensor type.
    """

    id: int
    type: TensorType


@dataclass(frozen=True)
class Loc:
    """Where an op came from: the layer key and, optionally, a source position.

    Attributes:
        layer: Layer key (fully qualified module name, or ``module:node`` for functional ops).
        source: Free-form source position such as ``"model.py:41"``.
    """

    layer: str
    source: str | None = None

    def __str__(self) -> str:
        return self.layer if self.source is None else f"{self.layer} ({self.source})"


@dataclass(frozen=True, eq=False)
class Op:
    """One operation: ``results = name(operands) {attrs}``.

    ``attrs`` may be given as a mapping or pairs; it is stored as a tuple of ``(key, value)``
    pairs sorted by key, with lists turned into tuples.

    Attributes:
        name: Registered op name, e.g. ``"rq.int_matmul"``.
        operands: Input values.
        results: Output values.
        attrs: Sorted ``(name, value)`` pairs.
        loc: Provenance, or ``None``.

    Example:
        >>> x = Value(0, TensorType((2,), "f32"))
        >>> op = Op("rq.softmax", (x,), (Value(1, x.type),), {"axis": -1})
        >>> op.attr("axis")
        -1
    """

    name: str
    operands: tuple[Value, ...] = ()
    results: tuple[Value, ...] = ()
    attrs: tuple[tuple[str, AttrValue], ...] = ()
    loc: Loc | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise VerifyError(f"op name must be a non-empty string, got {self.name!r}.")
        for fname in ("operands", "results"):
            vals = tuple(getattr(self, fname))
            for v in vals:
                if not isinstance(v, Value):
                    raise VerifyError(f"{self.name}: {fname} must be Values, got {v!r}.")
            object.__setattr__(self, fname, vals)
        items = self.attrs.items() if isinstance(self.attrs, Mapping) else self.attrs
        pairs: dict[str, AttrValue] = {}
        for k, v in items:
            if not isinstance(k, str) or not k:
                raise VerifyError(f"{self.name}: attribute names must be non-empty strings.")
            if k in pairs:
                raise VerifyError(f"{self.name}: attribute {k!r} given twice.")
            pairs[k] = normalize_attr(v, where=f"{self.name} attribute {k!r}")
        object.__setattr__(self, "attrs", tuple(sorted(pairs.items())))
        if self.loc is not None and not isinstance(self.loc, Loc):
            raise VerifyError(f"{self.name}: loc must be a Loc or None, got {self.loc!r}.")

    def _key(self) -> tuple[object, ...]:
        attrs = tuple((k, attr_key(v)) for k, v in self.attrs)
        return (self.name, self.operands, self.results, attrs, self.loc)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Op):
            return NotImplemented
        return self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def attr(self, name: str, default: Any = _MISSING) -> AttrValue:
        """Return attribute ``name`` (or ``default`` if given and the attribute is absent).

        Raises:
            KeyError: If the attribute is absent and no default was given.
        """
        for k, v in self.attrs:
            if k == name:
                return v
        if default is not _MISSING:
            return default  # type: ignore[no-any-return]
        have = ", ".join(k for k, _ in self.attrs) or "none"
        raise KeyError(f"{self.name} has no attribute {name!r} (has: {have}).")

    @property
    def attrs_dict(self) -> Mapping[str, AttrValue]:
        """The op's own attributes (its schema's, without annotations) as a read-only mapping.

        These define what the op computes: verifiers, kernels and the reference target read
        them. Annotations (:attr:`annotations`) are left out.
        """
        return _pytypes.MappingProxyType({k: v for k, v in self.attrs if not is_annotation(k)})

    @property
    def annotations(self) -> Mapping[str, AttrValue]:
        """The lowering decisions recorded on the op by IR passes (``rq.kernel``, ``rq.fused``,
        ...): attributes named ``rq.<name>``. Like MLIR's discardable attributes they never
        change what the op computes, only how a target computes it; no op schema checks them.
        """
        return _pytypes.MappingProxyType({k: v for k, v in self.attrs if is_annotation(k)})

    def annotate(self, **changes: AttrValue | None) -> Op:
        """A copy with annotations set (``rq_kernel="x"`` sets ``rq.kernel``; ``None`` removes)."""
        attrs = dict(self.attrs)
        for k, v in changes.items():
            key = ANNOTATION_PREFIX + k.removeprefix("rq_")
            if v is None:
                attrs.pop(key, None)
            else:
                attrs[key] = v
        return dataclasses.replace(self, attrs=tuple(attrs.items()))

    @property
    def result(self) -> Value:
        """The single result of a one-result op.

        Raises:
            VerifyError: If the op does not have exactly one result.
        """
        if len(self.results) != 1:
            raise VerifyError(f"{self.name} has {len(self.results)} results, not one.")
        return self.results[0]


def _defs(args: Iterable[Value], ops: Iterable[Op]) -> dict[int, int]:
    """Map value id -> definition position (args first, then op results; first def wins)."""
    pos: dict[int, int] = {}
    n = 0
    for v in args:
        pos.setdefault(v.id, n)
        n += 1
    for op in ops:
        for v in op.results:
            pos.setdefault(v.id, n)
            n += 1
    return pos


def ssa_names(func: Func) -> dict[int, str]:
    """Return the printer's name for every value defined in ``func``: ``%<position>``.

    Values are numbered in definition order, function arguments first, so the names do not
    depend on value ids. A value defined twice keeps the name of its first definition.

    Example:
        >>> v = Value(7, TensorType((), "f32"))
        >>> ssa_names(Func("main", (v,), (), (v,)))
        {7: '%0'}
    """
    return {vid: f"%{p}" for vid, p in _defs(func.args, func.ops).items()}


@dataclass(frozen=True, eq=False)
class Func:
    """A function: arguments, a topologically ordered tuple of ops, and outputs.

    Attributes:
        name: Symbol name (``main`` is the entry point).
        args: Argument values.
        ops: Ops in execution order.
        outputs: Returned values.
        attrs: Sorted ``(name, value)`` pairs describing the function as a whole, printed
            ``func.func @main(...) -> ... attributes {...}`` (MLIR's spelling); empty for
            most functions. ``rq.dynamic_dims`` and friends declare dynamic dims
            (``rqcompile/translate/dynamic.py``).
    """

    name: str
    args: tuple[Value, ...] = ()
    ops: tuple[Op, ...] = ()
    outputs: tuple[Value, ...] = ()
    attrs: tuple[tuple[str, AttrValue], ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise VerifyError(f"func name must be a non-empty string, got {self.name!r}.")
        for fname in ("args", "ops", "outputs"):
            object.__setattr__(self, fname, tuple(getattr(self, fname)))
        items = self.attrs.items() if isinstance(self.attrs, Mapping) else self.attrs
        pairs = {}
        for k, v in items:
            if not isinstance(k, str) or not k or k in pairs:
                raise VerifyError(f"func @{self.name}: bad or repeated attribute name {k!r}.")
            pairs[k] = normalize_attr(v, where=f"func @{self.name} attribute {k!r}")
        object.__setattr__(self, "attrs", tuple(sorted(pairs.items())))

    def attr(self, name: str, default: Any = _MISSING) -> AttrValue:
        """Return function attribute ``name`` (or ``default`` if given and it is absent)."""
        for k, v in self.attrs:
            if k == name:
                return v
        if default is not _MISSING:
            return default  # type: ignore[no-any-return]
        raise KeyError(f"func @{self.name} has no attribute {name!r}.")

    @functools.cached_property
    def _canonical(self) -> tuple[object, ...]:
        pos = _defs(self.args, self.ops)

        def ref(v: Value) -> tuple[object, ...]:
            p = pos.get(v.id)
            return (("free", v.id) if p is None else p, v.type)

        ops = tuple(
            (
                op.name,
                tuple(ref(v) for v in op.operands),
                tuple(ref(v) for v in op.results),
                op._key()[3],
                op.loc,
            )
            for op in self.ops
        )
        return (
            self.name,
            tuple(ref(v) for v in self.args),
            ops,
            tuple(ref(v) for v in self.outputs),
            tuple((k, attr_key(v)) for k, v in self.attrs),
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Func):
            return NotImplemented
        return self is other or self._canonical == other._canonical

    def __hash__(self) -> int:
        return hash(self._canonical)


def tensor_bytes(tensor: torch.Tensor) -> bytes:
    """Return the raw little-endian bytes of a tensor in row-major order.

    Example:
        >>> tensor_bytes(torch.tensor([1, 2], dtype=torch.int8))
        b'\\x01\\x02'
    """
    t = tensor.detach().cpu().contiguous().reshape(-1)
    if t.numel() == 0:
        return b""
    return bytes(t.view(torch.uint8).numpy().tobytes())


def _tensors_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and tensor_bytes(a) == tensor_bytes(b)


@dataclass(frozen=True, eq=False)
class Module:
    """A module: functions plus named constant tensors (the weights).

    ``constants`` is stored as a read-only mapping sorted by name. The tensors are detached
    but not copied: treat them as immutable.

    Attributes:
        funcs: Functions; ``main`` is the entry point.
        constants: Name -> tensor, referenced by ``rq.const`` ops.
    """

    funcs: tuple[Func, ...] = ()
    constants: Mapping[str, torch.Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "funcs", tuple(self.funcs))
        consts: dict[str, torch.Tensor] = {}
        for name in sorted(self.constants):
            t = self.constants[name]
            if not isinstance(name, str) or not name:
                raise VerifyError(f"constant names must be non-empty strings, got {name!r}.")
            if not isinstance(t, torch.Tensor):
                raise VerifyError(f"constant {name!r} must be a torch.Tensor, got {type(t)}.")
            dtype_of_torch(t.dtype)  # raises for dtypes the IR cannot hold
            consts[name] = t.detach()
        object.__setattr__(self, "constants", _pytypes.MappingProxyType(consts))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Module):
            return NotImplemented
        if self is other:
            return True
        if self.funcs != other.funcs or list(self.constants) != list(other.constants):
            return False
        return all(_tensors_equal(t, other.constants[n]) for n, t in self.constants.items())

    def __hash__(self) -> int:
        return hash((self.funcs, tuple(self.constants)))

    def __reduce__(self) -> tuple[Any, ...]:
        # A mappingproxy cannot be pickled or deep-copied; rebuild from a plain dict instead.
        return (Module, (self.funcs, dict(self.constants)))

    def __repr__(self) -> str:
        funcs = ", ".join(f"@{f.name}" for f in self.funcs)
        consts = ", ".join(f"{n}: {TensorType.of(t)}" for n, t in self.constants.items())
        return f"Module(funcs=[{funcs}], constants=[{consts}])"

    def __str__(self) -> str:
        # the printer (which imports this module) registers itself in PRINTERS on import
        printer = PRINTERS.get("module")
        return printer(self) if printer is not None else repr(self)

    @property
    def main(self) -> Func:
        """The function named ``main``.

        Raises:
            VerifyError: If there is none.
        """
        return self.func("main")

    def func(self, name: str) -> Func:
        """Return the function called ``name``.

        Raises:
            VerifyError: If there is none.
        """
        for f in self.funcs:
            if f.name == name:
                return f
        have = ", ".join(f"@{f.name}" for f in self.funcs) or "none"
        raise VerifyError(f"module has no func @{name} (funcs: {have}).")

    def constant(self, name: str) -> torch.Tensor:
        """Return the constant tensor called ``name``.

        Raises:
            KeyError: If there is none; the message lists the known names.
        """
        try:
            return self.constants[name]
        except KeyError:
            have = ", ".join(self.constants) or "none"
            raise KeyError(f"module has no constant {name!r} (constants: {have}).") from None

    def replace(self, **changes: Any) -> Module:
        """Return a copy with fields replaced (``dataclasses.replace``)."""
        return dataclasses.replace(self, **changes)
