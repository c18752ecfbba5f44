"""The kernel-selection table: ``(op, isa) → (supported predicate, builder)``, one per target.

A target registers its table once (``targets/tvm/kernel_table.py`` registers ``"llvm"``);
``select-kernels`` reads it to choose a row per op and ``pack-weights`` to choose the weight
layout; the target's emitter looks the chosen row up by name (the op's ``rq.kernel``
annotation) to get the builder. The table is data: a test forces any row by name, so what a
test checks never depends on the host's CPU.

Rows are tried in table order; the first whose ``requires`` the target has and whose
``supported(op)`` holds wins, so a table lists its fastest rows first and ends, per op,
with a row that requires nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from rqcompile.errors import ConfigError
from rqcompile.ir.core import Op

__all__ = [
    "KernelRow",
    "PackRow",
    "find_row",
    "kernel_table",
    "register_kernel_table",
    "registered_tables",
]


def _always(op: Op) -> bool:
    return True


@dataclass(frozen=True)
class PackRow:
    """A weight layout a kernel row can use instead of the plain one.

    Attributes:
        layout: its name, recorded as ``rq.weight_layout`` (``"panels"``).
        supported: ``(op, x_range) -> bool``: whether this op's shapes take the layout;
            ``x_range`` is the activation codes' range where an ``rq.quantize`` of fewer
            than 8 bits makes them, else ``None``.
        pack: the target's builder of the packed weights (run once, when weights are bound).
        kernel: the target's builder of the kernel on packed weights.
        uses_x_range: the packed layout depends on ``x_range`` (``rq.x_range`` is recorded).
        options: keywords for both builders.
    """

    layout: str
    supported: Callable[[Op, tuple[int, int] | None], bool]
    pack: Any = None
    kernel: Any = None
    uses_x_range: bool = False
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class KernelRow:
    """One way to compute one op on one instruction set.

    Attributes:
        op: the IR op (``"rq.int_matmul"``).
        isa: the instruction-set name (``"avx512_vnni"``, ``"avx2"``, ``"generic"``).
        requires: target features the row needs (``/proc/cpuinfo`` spelling).
        supported: ``op -> bool``: formats and shapes the row takes.
        builder: the target's kernel builder (a TE compute for TVM).
        options: keywords for the builder.
        pack: an optional packed weight layout.
    """

    op: str
    isa: str
    requires: frozenset[str] = frozenset()
    supported: Callable[[Op], bool] = _always
    builder: Any = None
    options: Mapping[str, Any] = field(default_factory=dict)
    pack: PackRow | None = None

    @property
    def name(self) -> str:
        """``<op without rq.>.<isa>``: the value of the ``rq.kernel`` annotation."""
        return f"{self.op.removeprefix('rq.')}.{self.isa}"

    @property
    def row_count_specific(self) -> bool:
        """Whether the row takes only some row counts (its packed layout names ``min_rows``
        or ``max_rows``: AMX tiles for large M, 4-/2-bit panels for small M)."""
        opts = self.pack.options if self.pack is not None else {}
        return "min_rows" in opts or "max_rows" in opts


_TABLES: dict[str, tuple[KernelRow, ...]] = {}


def register_kernel_table(kind: str, rows: Sequence[KernelRow]) -> None:
    """Publish target ``kind``'s table (row names must be unique)."""
    names = [r.name for r in rows]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"kernel table {kind!r} names rows twice: {', '.join(dup)}")
    _TABLES[kind] = tuple(rows)


def registered_tables() -> tuple[str, ...]:
    return tuple(sorted(_TABLES))


def kernel_table(kind: str) -> tuple[KernelRow, ...]:
    """Target ``kind``'s rows.

    Raises:
        ConfigError: no table for ``kind`` (a target registers its table when its package is
            imported: ``import rqcompile.targets.tvm.kernels.table`` for ``llvm``).
    """
    if kind not in _TABLES:
        raise ConfigError(
            f"no kernel table for target kind {kind!r} (registered: "
            f"{', '.join(registered_tables()) or 'none'}). Import the target first, e.g. "
            "import rqcompile.targets.tvm.kernels.table."
        )
    return _TABLES[kind]


def find_row(kind: str, name: str) -> KernelRow:
    """The row called ``name`` (``"int_matmul.avx2"``) in ``kind``'s table."""
    for row in kernel_table(kind):
        if row.name == name:
            return row
    have = ", ".join(r.name for r in kernel_table(kind))
    raise ConfigError(f"kernel table {kind!r} has no row {name!r}; rows: {have}.")
