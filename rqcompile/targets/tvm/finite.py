"""The per-call NaN/Inf check of a compiled model's float inputs, in C (``finite.c``).

Why C and not numpy: the check runs on every call, right after the previous call's kernels
have streamed the weights through the caches, and then each library code path it takes runs
cold. numpy's reductions take several (dispatch, casting, the loop): measured after a
4096 x 4096 A1W1 GEMV on the 2-core Xeon, ~30 µs for a 4096-float input with numpy against
~8 µs through this one C loop, and 4.8 against ~1.5 µs after a 1024 x 1024 A4W4 GEMV.

The C file is compiled once into the cache folder with the launcher's compiler
(``parallel._build``); where there is none, or the build fails, :func:`all_finite` is
``None`` and the caller uses numpy (``compiled.finite_array``).
"""

from __future__ import annotations

import ctypes
import functools
import logging
import subprocess
from collections.abc import Callable
from pathlib import Path

_log = logging.getLogger(__name__)
_SOURCE = Path(__file__).with_name("finite.c")


@functools.cache
def all_finite() -> Callable[[int, int, int], int] | None:
    """``f(address, count, element_size)`` → 1 where no element is NaN/Inf, 0 where one is
    (-1: an element size other than 2, 4, 8); ``None`` where the C helper cannot be built."""
    from rqcompile.targets.tvm import parallel

    try:
        lib = ctypes.CDLL(str(parallel._build(parallel._compiler(), _SOURCE, opt="-O3")))
    except (parallel.LauncherUnavailable, OSError, subprocess.SubprocessError) as e:
        _log.info("the C finiteness check is unavailable (%s); numpy checks inputs", e)
        return None
    fn = lib.rq_all_finite
    fn.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_int]
    fn.restype = ctypes.c_int
    return fn
