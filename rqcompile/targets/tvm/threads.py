"""How TVM-built kernels use the cores: all of them by default, like torch, without fighting it.

Who runs a kernel's ``parallel`` loop (``parallel.py``): by default not TVM's thread pool
but our own launcher, installed into every library we load. TVM 0.27's pool (the calling
thread runs task 0, one pool worker each other task, all joined at the end) took
milliseconds for a two-thread call of ~300 µs when torch's OpenMP threads and ONNX Runtime's
pool ran on the same cores between our calls (issue 19): at the join the caller waits for a
worker the scheduler has not run yet, and TVM's workers spin (``sched_yield``) for 300,000
rounds after each task, taking cores from torch's threads. What was tried on TVM's pool
first, measured in ``benchmarks/README.md`` (threads section): unpinning its workers (kept,
below) and a shorter spin (slower: a sleeping worker must be woken). The launchers
(``RQCOMPILE_PARALLEL``):

* ``pool`` (default): a few worker threads of ours that *claim* chunks of the loop alongside
  the calling thread; the caller never waits for a worker that has not started, only for
  chunks already claimed, and workers sleep on a futex ~50 µs after their last chunk. A busy
  core costs us the second thread, not a scheduler time slice.
* ``omp``: the loop's tasks in one OpenMP parallel region of torch's own OpenMP runtime, so
  our loops and torch's run on one team of threads (no second pool at all), but the region's
  join waits for every team thread like TVM's pool.
* ``tvm``: TVM's pool, as before; also the fallback (with a warning) where no launcher can
  be compiled.

TVM's pool variables still matter where TVM's pool runs, so :func:`configure_environment`
sets them before the pool first starts, each only where the user has not set it:

* ``TVM_NUM_THREADS``: the pool's size. TVM's default is *half* the logical CPUs on x86 (it
  assumes hyper-threading), i.e. one thread on a 2-core machine. We size it to all usable
  CPUs (``os.sched_getaffinity``); it also caps the threads per call for every launcher.
* ``TVM_BIND_THREADS=0``: TVM pins worker *i* to core *i + 1*. A pinned worker whose core is
  busy cannot move to an idle one, and the caller spins in the join until the scheduler
  comes back to it: milliseconds per call.
* ``TVM_THREAD_POOL_SPIN_COUNT`` is left at TVM's 300,000 ``sched_yield`` rounds.

Threads per call (:func:`threads_for_call`, set by :class:`ThreadSetter`): the compiled
model's ``threads`` if given, else ``torch.get_num_threads()`` at call time (so
``torch.set_num_threads`` governs both), capped by the pool size; a call whose work is small
(:data:`SERIAL_BELOW`) runs on the calling thread alone, since waking a worker costs more than
it saves there.
"""

from __future__ import annotations

import os
import threading
from typing import Any

import torch

__all__ = ["SERIAL_BELOW", "SPIN_COUNT", "ThreadSetter", "configure_environment", "pool_size",
           "threads_for_call"]

#: TVM's own spin (``sched_yield`` rounds after a task before a worker sleeps); not changed.
SPIN_COUNT = 300000
#: calls below this much work (weight bytes x rows; see ``runtime._VMRunner``) run serially;
#: ``RQCOMPILE_SERIAL_BELOW`` overrides it (0: never serial, as before issue 19).
SERIAL_BELOW = int(os.environ.get("RQCOMPILE_SERIAL_BELOW", 1 << 19))

_configured: dict[str, str] = {}
#: ``torch.get_num_threads``, looked up once (an ``import`` per call cost ~0.2 µs of a
#: ~20 µs batch-1 call)
_torch_threads = torch.get_num_threads


def _usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def configure_environment() -> dict[str, str]:
    """Set TVM's thread-pool variables that the user has not set (read when the pool starts).

    Returns the values now in effect. Idempotent; called when the TVM adapter is imported,
    before any kernel runs.
    """
    if not _configured:
        defaults = {
            "TVM_NUM_THREADS": str(_usable_cpus()),
            "TVM_BIND_THREADS": "0",
        }
        for k, v in defaults.items():
            os.environ.setdefault(k, v)
            _configured[k] = os.environ[k]
    return dict(_configured)


def pool_size() -> int:
    """The most threads a call can use: ``TVM_NUM_THREADS`` (all usable CPUs by default)."""
    try:
        return max(1, int(os.environ.get("TVM_NUM_THREADS", "") or _usable_cpus()))
    except ValueError:
        return _usable_cpus()


def threads_for_call(threads: int | None, work: int, pool: int | None = None) -> int:
    """Threads for one call: 1 below :data:`SERIAL_BELOW` work, else ``threads`` (``None``:
    ``torch.get_num_threads()`` now), capped by ``pool`` (``None``: :func:`pool_size`, which
    reads the environment)."""
    if work < SERIAL_BELOW:
        return 1
    if threads is None:
        threads = _torch_threads()
    return max(1, min(int(threads), pool_size() if pool is None else pool))


class ThreadSetter:
    """Sets this thread's thread count for the next kernels to ``n``.

    Both settings are per calling thread: the OpenMP launcher's (``parallel.py``,
    ``rq_omp_set_threads``) and TVM's pool's (``runtime.config_threadpool``, mode 1 = all
    cores, ``n`` threads). TVM's is set only where its pool runs some of our loops (no
    launcher, or a library left on TVM's pool), so TVM's workers are not even started
    otherwise. The current setting is remembered per Python thread and the setters are called
    only when ``n`` changes: a dict look-up per call otherwise.

    Args:
        config_threadpool: TVM's ``runtime.config_threadpool``.
        launcher: a callable returning the OpenMP launcher or ``None`` (``parallel.launcher``),
            called at the first change, after the first library was loaded.
    """

    def __init__(self, config_threadpool: Any, launcher: Any = None) -> None:
        self._config = config_threadpool
        self._launcher = launcher
        self._local = threading.local()

    def __call__(self, n: int) -> None:
        if getattr(self._local, "n", None) != n:
            lch = self._launcher() if self._launcher is not None else None
            if lch is not None:
                lch.set_threads(n)
            if lch is None or lch.kept_on_tvm:
                self._config(1, n)
            self._local.n = n
