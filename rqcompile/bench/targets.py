"""The speed targets of the peers benchmark, checked against one run's rows.

``table(data)`` turns the JSON of :func:`rqcompile.bench.peers.run` into the targets table the
report ends with (and ``rqcompile bench --peers`` prints): per target, the ratio over the
shapes with ``1024 <= K = N <= 4096``, worst and best, at 1 thread and at the most threads of
the run, in the interleaved and the standalone series, and whether the worst shape meets it.
A ratio is ``time of the thing compared against / our time`` (> 1: ours faster):

* ``best peer``: the fastest peer of the same shape, thread count and series;
* a named peer (``ort-nbits4-acc0``): that peer, as in "W4 vs ORT MatMulNBits acc 0";
* a preset (``A4W4``): our own dense layer, as in "2:4 vs dense, same bits";
* ``scaling``: the same preset's time at 1 thread over its time at the most threads;
* ``e2e``: the demo char transformer (tokens/s) against torch fp32 eager.

A target with no rows in the run (a preset or peer left out, one thread count) shows ``–``.
Nothing here times anything: it reads what the run measured.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["TARGETS", "Target", "evaluate", "table"]

_K_RANGE = (1024, 4096)


@dataclass(frozen=True)
class Target:
    """One row of the targets table: ``presets`` against ``against`` on rows where ``m_ok``."""

    case: str
    presets: tuple[str, ...]
    against: str  # "best peer", a peer name, a preset, "scaling" or "e2e"
    m_ok: Callable[[int], bool]
    goal: float
    goal_avx2: float | None = None  # a different goal on hosts without AVX-512


def _m1(m: int) -> bool:
    return m == 1


def _m64(m: int) -> bool:
    return m >= 64


def _any(m: int) -> bool:
    return True


_ALL = ("A8W8", "A4W4", "A2W2", "A1W1", "A4W4+2:4", "W4", "A8W4")

TARGETS: tuple[Target, ...] = (
    Target("thread scaling 1 → all cores, every preset, M ≥ 64", _ALL, "scaling", _m64, 1.7),
    Target("A8W8 vs best peer, M ≥ 64", ("A8W8",), "best peer", _m64, 1.0),
    Target("A4W4 vs best peer, M = 1", ("A4W4",), "best peer", _m1, 1.3),
    Target("A2W2 vs best peer, M = 1", ("A2W2",), "best peer", _m1, 1.6),
    Target("A4W4 vs best peer, M ≥ 64", ("A4W4",), "best peer", _m64, 1.0),
    Target("A2W2 vs best peer, M ≥ 64", ("A2W2",), "best peer", _m64, 1.3),
    Target("A1W1 vs best peer, M ≥ 64 (AVX-512 / AVX2)", ("A1W1",), "best peer", _m64, 3.0, 2.0),
    Target("W4 vs ORT MatMulNBits acc 0", ("W4",), "ort-nbits4-acc0", _any, 1.0),
    Target("A8W4 vs ORT MatMulNBits acc 4", ("A8W4",), "ort-nbits4-acc4", _any, 1.0),
    Target("2:4 vs dense, same bits (A4W4+2:4 vs A4W4)", ("A4W4+2:4",), "A4W4", _any, 1.3),
    Target("char transformer A1W1 end to end vs torch fp32", ("A1W1",), "e2e", _any, 3.0),
)


def _ratios(t: Target, data: dict[str, Any], threads: int, series: str) -> list[float]:
    """Every ratio the run gives for ``t`` at ``threads`` in ``series``."""
    if t.against == "e2e":
        rows = [r for r in data.get("e2e", []) if r["threads"] == threads
                and r.get("series", "interleaved") == series]  # fmt: skip
        fp32 = next((r["seconds"] for r in rows if r["name"] == "fp32"), None)
        return [fp32 / r["seconds"] for r in rows if fp32 and r["name"] in t.presets]
    rows = [r for r in data["rows"] if r["series"] == series and t.m_ok(r["m"])
            and _K_RANGE[0] <= min(r["k"], r["n"]) and max(r["k"], r["n"]) <= _K_RANGE[1]]  # fmt: skip
    cells: dict[tuple[int, int, int], dict[tuple[str, int], float]] = {}
    for r in rows:
        cells.setdefault((r["k"], r["n"], r["m"]), {})[(r["name"], r["threads"])] = r["seconds"]
    out = []
    top = max((r["threads"] for r in data["rows"]), default=1)
    for cell in cells.values():
        for p in t.presets:
            ours = cell.get((p, threads))
            if not ours:
                continue
            if t.against == "scaling":
                one = cell.get((p, 1))
                if threads == top and threads > 1 and one:
                    out.append(one / ours)
                continue
            if t.against == "best peer":
                peer = [s for (n, th), s in cell.items() if th == threads and n in data["peers"]]
                other = min(peer) if peer else None
            else:
                other = cell.get((t.against, threads))
            if other:
                out.append(other / ours)
    return out


def evaluate(data: dict[str, Any], avx512: bool) -> list[dict[str, Any]]:
    """Per target and per (threads, series) column: worst and best ratio and whether the worst
    meets the goal (``None`` where the run has nothing for it)."""
    threads = sorted({r["threads"] for r in data["rows"]} | {r["threads"] for r in data.get("e2e", [])})
    cols = [(t, s) for t in sorted({threads[0], threads[-1]}) for s in ("interleaved", "standalone")]
    out = []
    for t in TARGETS:
        goal = t.goal if avx512 or t.goal_avx2 is None else t.goal_avx2
        cells = {}
        for th, s in cols:
            r = _ratios(t, data, th, s)
            cells[(th, s)] = (min(r), max(r), min(r) >= goal) if r else None
        out.append({"target": t, "goal": goal, "cells": cells})
    return out


def table(data: dict[str, Any]) -> list[str]:
    """The targets table as markdown lines (empty when the run has no rows)."""
    if not data.get("rows"):
        return []
    avx512 = "avx512f" in data["env"].get("features", ())
    rows = evaluate(data, avx512)
    cols = list(rows[0]["cells"])
    isa = "an AVX-512 host" if avx512 else "an AVX2 host without AVX-512"
    out = [f"## Targets on {isa}: worst–best ratio over K = N in "
           f"{_K_RANGE[0]}–{_K_RANGE[1]}, ✓ where the worst shape meets the goal", ""]
    head = ["case", "goal", *[f"{th} thread{'s' if th > 1 else ''}, {s}" for th, s in cols]]
    out += ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for r in rows:
        line = [r["target"].case, f"≥ {r['goal']:.1f}x"]
        for c in cols:
            v = r["cells"][c]
            if v is None:
                line.append("–")
                continue
            lo, hi = f"{v[0]:.2f}", f"{v[1]:.2f}"
            line.append(f"{'✓' if v[2] else '✗'} {lo}" + (f"–{hi}x" if hi != lo else "x"))
        out.append("| " + " | ".join(line) + " |")
    return [*out, ""]
