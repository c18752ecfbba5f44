"""``select-kernels``: record on every integer op which kernel of the target computes it."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, ClassVar

from rqcompile.errors import ConfigError
from rqcompile.ir.core import Module
from rqcompile.passes.infra import PassResult, register_pass
from rqcompile.passes.ir.common import annotate
from rqcompile.passes.ir.kernel_table import KernelRow, kernel_table

__all__ = ["SelectKernels"]


@register_pass
@dataclass(frozen=True)
class SelectKernels:
    """select-kernels: annotate each op the target's kernel table covers with ``rq.kernel``.

    Before:  %5 = "rq.int_matmul"(%2, %3, %4, ...) {block = 128, ...}
    After:   %5 = "rq.int_matmul"(%2, %3, %4, ...) {block = 128, ..., rq.kernel = "int_matmul.avx2"}
    The row is the first of the table (``kernel_table.py``) whose ``requires`` are in
    ``features`` and whose ``supported(op)`` holds. ``force`` names an ISA per op kind
    (``force=int_matmul:avx2+quantize:generic``) to test any row on any host, whatever its
    features: that ISA's row where it takes the op, else the row that requires nothing.
    ``any_rows``: the ops' row counts are symbolic (one build for every shape), so rows that
    take only some row counts (``KernelRow.row_count_specific``) are passed over.
    Requires: nothing. Guarantees: every covered op has a row that takes it.
    Numerics: exact (kernels are bit-exact against the reference target).
    """

    name: ClassVar[str] = "select-kernels"
    table: str = "llvm"
    features: tuple[str, ...] = ()
    force: tuple[str, ...] = ()
    any_rows: bool = False

    @functools.cached_property
    def forced(self) -> dict[str, str]:
        """``force`` as ``{op: isa}`` (parsed once per pass object)."""
        out = {}
        for item in self.force:
            op, sep, isa = item.partition(":")
            if not sep:
                raise ConfigError(f"select-kernels force={item!r}: write <op>:<isa>.")
            out["rq." + op.removeprefix("rq.")] = isa
        return out

    @functools.cached_property
    def rows(self) -> dict[str, list[KernelRow]]:
        """The table's rows by op, in table order (looked up once per pass object)."""
        out: dict[str, list[KernelRow]] = {}
        for r in kernel_table(self.table):
            if not (self.any_rows and r.row_count_specific):
                out.setdefault(r.op, []).append(r)
        return out

    def choose(self, op: Any) -> KernelRow | None:
        rows = self.rows.get(op.name)
        if not rows:
            return None
        want = self.forced.get(op.name)
        if want is not None:
            if not any(r.isa == want for r in rows):
                raise ConfigError(
                    f"select-kernels: no row {op.name} on {want!r}; rows: "
                    f"{', '.join(r.isa for r in rows)}."
                )
            for r in rows:  # the forced ISA's row, else the row that requires nothing
                if (r.isa == want or not r.requires) and r.supported(op):
                    return r
        have = set(self.features)
        for r in rows:
            if r.requires <= have and r.supported(op):
                return r
        raise ConfigError(f"kernel table {self.table!r} has no row for this {op.name}; add a "
                          "row that requires nothing.")  # fmt: skip

    def run(self, mod: Module, ctx: Any) -> PassResult[Module]:
        changed = False
        for f in mod.funcs:
            marks = {}
            for i, op in enumerate(f.ops):
                row = self.choose(op)
                if row is not None:
                    marks[i] = {"kernel": row.name}
            mod, ch = annotate(mod, mod.func(f.name), marks)
            changed |= ch
        return PassResult(mod, changed)
