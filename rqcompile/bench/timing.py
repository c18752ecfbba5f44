"""Timing helpers for the benchmarks: interleaved repeats, medians, spread, environment.

Benchmarks here share a machine with other jobs, so every comparison is timed *interleaved*
(one call of each candidate per round, in the same process and thread count) and reported as
a median with its spread. Ratios from one run are what carry over between machines; the
absolute times do not.
"""

from __future__ import annotations

import datetime
import platform
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["CLOCKS", "Stat", "environment", "time_interleaved"]

#: ``wall``: elapsed time; ``cpu``: this process's CPU time (see :func:`time_interleaved`).
CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
#: standalone series: seconds to wait before each candidate so the previous candidate's idle
#: pool threads have stopped spinning. ONNX Runtime's intra-op pool spins for ~40 ms after
#: each ``run`` (``benchmarks/ort_spin.py``: 40 ms of CPU per 100 ms asleep, 2-core Zen 4);
#: libgomp's (torch's) for ~300,000 rounds.
SETTLE_S = 0.1


def settle() -> None:
    """Wait :data:`SETTLE_S` before a standalone candidate, so it runs alone."""
    time.sleep(SETTLE_S)


@dataclass(frozen=True)
class Stat:
    """Seconds per call over ``n`` repeats: the median and the interquartile spread.

    ``spread`` is ``(p75 - p25) / median``: 0.05 means the middle half of the repeats lies
    within 5% of the median, a rough noise figure for the table.
    """

    median: float
    spread: float
    n: int

    @staticmethod
    def of(samples: list[float]) -> Stat:
        s = sorted(samples)
        med = statistics.median(s)
        if len(s) >= 4:
            q = statistics.quantiles(s, n=4)
            spread = (q[2] - q[0]) / med if med > 0 else 0.0
        else:
            spread = (s[-1] - s[0]) / med if med > 0 else 0.0
        return Stat(med, spread, len(s))


def time_interleaved(
    fns: Mapping[str, Callable[[], Any]],
    *,
    budget_s: float = 1.0,
    min_repeats: int = 3,
    max_repeats: int = 30,
    warmup: int = 1,
    clock: str = "wall",
) -> dict[str, Stat]:
    """Time each callable round-robin until ``budget_s`` is spent (within the repeat bounds).

    Interleaving puts every candidate under the same background load: a burst of another job
    slows one round of all of them instead of all repeats of one. ``clock="cpu"`` measures
    this process's CPU time (``time.process_time``) instead of wall time: with one thread on
    a machine whose cores are shared, it leaves out the time the scheduler gave to other
    jobs, which wall time would count (it is only meaningful single-threaded, since idle
    waiting of worker threads is not CPU time and their spinning is).

    Example:
        >>> out = time_interleaved({"a": lambda: None}, budget_s=0.0, min_repeats=3)
        >>> out["a"].n
        3
    """
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    if clock not in CLOCKS:
        raise ValueError(f"clock must be one of {sorted(CLOCKS)}, not {clock!r}")
    now = CLOCKS[clock]
    samples: dict[str, list[float]] = {k: [] for k in fns}
    start = time.perf_counter()
    for r in range(max_repeats):
        if r >= min_repeats and time.perf_counter() - start > budget_s:
            break
        for name, fn in fns.items():
            t0 = now()
            fn()
            samples[name].append(now() - t0)
    return {k: Stat.of(v) for k, v in samples.items()}


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(threads: int) -> dict[str, Any]:
    """Date, CPU model and rqcompile-relevant features, LLVM mcpu, versions, thread count."""
    import torch

    from rqcompile.targets.tvm.adapter import host_llvm_target, tvm_version
    from rqcompile.targets.tvm.cpu_features import host_features

    exported = host_llvm_target().export()
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": _cpu_model(),
        "cores": __import__("os").cpu_count(),
        "features": sorted(host_features()),
        "mcpu": str(exported.get("mcpu", "generic")),
        "threads": threads,
        "torch": torch.__version__,
        "tvm": tvm_version(),
        "python": platform.python_version(),
    }
