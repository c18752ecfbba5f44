"""Plain-text tables (no ``tabulate`` dependency)."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["format_table"]


def format_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Left-align text columns, right-align numeric ones; returns the table as a string."""
    cells = [[str(h) for h in header]] + [[_fmt(c) for c in r] for r in rows]
    numeric = [
        all(isinstance(r[i], (int, float)) for r in rows) if rows else False
        for i in range(len(header))
    ]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]

    def line(r: list[str]) -> str:
        return "  ".join(
            c.rjust(w) if num else c.ljust(w) for c, w, num in zip(r, widths, numeric)
        ).rstrip()

    sep = "  ".join("-" * w for w in widths)
    return "\n".join([line(cells[0]), sep, *(line(r) for r in cells[1:])])


def _fmt(c: object) -> str:
    if isinstance(c, float):
        if c == int(c) and abs(c) < 1e6:
            return str(int(c))
        if c == 0:
            return "0"
        if abs(c) >= 1e6 or abs(c) < 1e-2:
            return f"{c:.3g}"
        return f"{c:.3f}".rstrip("0").rstrip(".") if abs(c) < 100 else f"{c:.1f}"
    return str(c)
