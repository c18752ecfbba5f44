"""Who runs our kernels' parallel loops: a launcher of ours instead of TVM's thread pool.

Why: TVM's CPU runtime runs a ``parallel`` loop on a pool of its own threads: one static
slice per thread, joined at the end, the workers spinning (``sched_yield``) after each task.
torch runs its operators on OpenMP threads, which spin too, and ONNX Runtime on a third pool.
A program that calls torch between our calls then has two or three pools of spinning threads
on the same cores, and a two-thread call of ours that takes ~300 µs alone took milliseconds
interleaved with torch (issue 19, ``threads.py``): at the join the caller waits for a worker
that the scheduler has not run yet.

How: a TVM-built library calls its parallel loops through a function pointer that the
library itself holds, a writable global named ``__TVMBackendParallelLaunch``, which TVM's
loader points at TVM's pool when it opens the library. The loop arrives as a lambda
``(task_id, env, closure)`` that runs slice ``task_id`` of ``env->num_task`` equal slices, so
any number of slices is valid and the slices are independent. After TVM has opened a library
we point that global at our launcher (:func:`install`), a few lines of C in this package:

* ``pool`` (``pool_launch.c``, the default): "idle threads only". The loop is cut into
  ``RQCOMPILE_POOL_CHUNKS`` (4) chunks per thread; the calling thread and our workers *claim*
  chunks from one atomic word, the caller starting at once. The caller waits only for chunks
  a worker has claimed and not finished, never for a worker that has not started: if the
  scheduler has given the worker's core to torch, ONNX Runtime or another process, the call
  runs at one-thread speed instead of waiting a time slice at a join. Workers spin ~50 µs
  after their last chunk (``RQCOMPILE_POOL_SPIN_US``: the next loop of the same call usually
  follows within microseconds), then sleep on a futex; nothing of ours spins between calls.
  A call that will run on several threads *prewakes* them as it starts (before its input
  checks): waking a sleeping thread takes tens of microseconds on this VM, and paid inside
  the call's first loop (the activation quantize) it left that loop to the caller alone;
  woken early, the workers spin up to 200 µs for it (measured: ``benchmarks/README.md``,
  thread scaling on idle cores).
  One launch at a time: a thread that finds the workers busy runs its loop alone.
* ``omp`` (``omp_launch.c``): the loop's slices in one ``GOMP_parallel`` region of the OpenMP
  runtime torch has loaded, so our loops and torch's operators use the same team of threads
  (no second pool). Its join waits for every team thread, as TVM's pool does. The OpenMP
  entry points are looked up in the library torch loaded and handed to the launcher, which
  links against nothing, so it cannot start a second OpenMP runtime.
* ``tvm``: TVM's pool, unchanged.

Why ``pool`` is the default (``benchmarks/threads_omp.py``, issue 19; a 2-core machine
shared with other jobs): interleaved with torch and ONNX Runtime at 2 threads, ``pool`` took
our M = 1 layers from milliseconds on TVM's pool to about their one-thread time, and was
even with TVM's pool at M >= 64; ``omp`` was the slowest of the three everywhere, 16-20 ms
per call even alone at M = 1, since its region waits for torch's OpenMP worker to be
scheduled at every loop.

* **Built once, at first use** with the C compiler TVM already needs to export libraries
  (``$CC``, else ``cc``/``gcc``/``clang``) into a cache folder (``$RQCOMPILE_CACHE_DIR``, else
  ``$XDG_CACHE_HOME/rqcompile`` or ``~/.cache/rqcompile``; a per-user temporary folder if that
  is not writable), named by a hash of the source and compiler, written under a temporary
  name and renamed, so concurrent first uses are safe. Linux only.
* **Thread count** per calling thread (``rq_<kind>_set_threads``, set by
  ``threads.ThreadSetter``): ``threads=`` or ``torch.get_num_threads()``; 1 runs the slices on
  the calling thread with no other thread involved.
* **Choice** (``RQCOMPILE_PARALLEL``): ``pool`` (also when unset), ``omp`` or ``tvm``. When
  the launcher cannot be made (no C compiler, a compile error, for ``omp`` no OpenMP runtime
  in the process, not Linux), an unset variable falls back to TVM's pool with one
  :class:`~rqcompile.errors.RQWarning`; a launcher named explicitly raises
  :class:`~rqcompile.errors.TargetError` with the cause.
* **Which libraries.** Every library loaded through ``runtime._load_module``: fresh builds,
  ``rq.load``'ed artifacts, the prefill/decode libraries; ``exe.backend.parallel`` says which
  launcher a model's library got. A library with no parallel loop has no such global and is
  left alone; one that also calls TVM's parallel *barrier* (ours do not) stays on TVM's pool,
  since that barrier needs every slice on its own running thread; a global holding anything
  other than TVM's launcher (a future TVM) is left alone too.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rqcompile.errors import ConfigError, TargetError, warn

__all__ = ["DEFAULT", "ENV", "Launcher", "LauncherUnavailable", "cache_dir", "install",
           "launcher", "mode"]  # fmt: skip

_log = logging.getLogger(__name__)

#: ``pool`` (default), ``omp`` or ``tvm``
ENV = "RQCOMPILE_PARALLEL"
_MODES = ("pool", "omp", "tvm")
DEFAULT = "pool"
_SOURCES = {"omp": Path(__file__).with_name("omp_launch.c"),
            "pool": Path(__file__).with_name("pool_launch.c")}  # fmt: skip
#: ``pool``: a worker's spin after its last chunk before it sleeps (µs), chunks per thread
def _env_number(name: str, default: float) -> float:
    try:
        return max(0.0, float(os.environ.get(name, "") or default))
    except ValueError:
        return default


SPIN_US = _env_number("RQCOMPILE_POOL_SPIN_US", 50)
CHUNKS_PER_THREAD = max(1, int(_env_number("RQCOMPILE_POOL_CHUNKS", 4)))
_LAUNCH_SYMBOL = "__TVMBackendParallelLaunch"
_BARRIER_SYMBOL = "__TVMBackendParallelBarrier"
#: basenames of OpenMP runtimes (GNU, LLVM, Intel; pip wheels may add a hash: libgomp-abcd.so.1)
_OPENMP_NAME = re.compile(r"^lib(gomp|omp|iomp5)([-.][^/]*)?\.(so|dylib)(\.[0-9.]+)?$")


class LauncherUnavailable(RuntimeError):
    """A launcher cannot be made here (the message says why)."""


def mode() -> str:
    """``RQCOMPILE_PARALLEL``: ``"pool"`` (also when unset), ``"omp"`` or ``"tvm"``."""
    v = os.environ.get(ENV, "").strip().lower()
    if v in ("", "auto"):
        return DEFAULT
    if v not in _MODES:
        raise ConfigError(f"{ENV}={v!r}: expected one of {', '.join(_MODES)}")
    return v


@dataclass
class Launcher:
    """A compiled launcher (``kind`` ``"pool"`` or ``"omp"``), initialized."""

    kind: str
    path: str
    openmp: str | None
    _lib: ctypes.CDLL = field(repr=False)
    address: int = 0
    #: libraries pointed at this launcher / left on TVM's pool (they need its barrier)
    installed: int = 0
    kept_on_tvm: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self) -> None:
        fn = self._fn
        self.address = ctypes.cast(fn("parallel_launch"), ctypes.c_void_p).value or 0
        fn("set_threads").argtypes = [ctypes.c_int]
        fn("set_threads").restype = None
        fn("get_threads").restype = ctypes.c_int
        fn("launches").restype = ctypes.c_uint64
        fn("team_launches").restype = ctypes.c_uint64
        self.set_threads = fn("set_threads")
        #: wake sleeping workers ahead of a call's first loop (``pool`` only; else a no-op)
        self.prewake: Callable[[], None] = _no_prewake
        if self.kind == "pool":
            self.prewake = fn("prewake")
            self.prewake.restype = None  # type: ignore[attr-defined]

    def _fn(self, name: str) -> Any:
        return getattr(self._lib, f"rq_{self.kind}_{name}")

    def threads(self) -> int:
        """This thread's setting (0: default: ``omp_get_max_threads()`` / all CPUs)."""
        return int(self._fn("get_threads")())

    def launches(self) -> int:
        """Parallel loops run by this launcher so far, serial ones included."""
        return int(self._fn("launches")())

    def team_launches(self) -> int:
        """Those of :meth:`launches` that ran on more than one thread."""
        return int(self._fn("team_launches")())

    def workers(self) -> int | None:
        """``pool``: worker threads started so far (``None`` for ``omp``)."""
        return int(self._fn("workers")()) if self.kind == "pool" else None

    def wait_seconds(self) -> float | None:
        """``pool``: time callers spent waiting for chunks workers had claimed and not
        finished (``None`` for ``omp``): the cost of a worker the scheduler took off its core."""
        if self.kind != "pool":
            return None
        f = self._fn("wait_ns")
        f.restype = ctypes.c_uint64
        return int(f()) * 1e-9

    def worker_chunks(self) -> int | None:
        """``pool``: chunks run by workers, not the calling thread (``None`` for ``omp``)."""
        if self.kind != "pool":
            return None
        f = self._fn("worker_chunks")
        f.restype = ctypes.c_uint64
        return int(f())


def _no_prewake() -> None:
    return None


def _loaded_libraries() -> list[str]:
    """Paths of the shared libraries mapped into this process (Linux ``/proc/self/maps``)."""
    try:
        with open("/proc/self/maps") as f:
            lines = f.read().splitlines()
    except OSError:
        return []
    out: list[str] = []
    for line in lines:
        parts = line.split(None, 5)
        if len(parts) == 6 and parts[5].startswith("/") and parts[5] not in out:
            out.append(parts[5])
    return out


def _noload(path: str) -> ctypes.CDLL:
    """A handle on an already loaded library (never loads a second copy)."""
    return ctypes.CDLL(path, mode=os.RTLD_NOLOAD | os.RTLD_NOW)


def _openmp_runtime() -> tuple[str, ctypes.CDLL]:
    """The OpenMP runtime loaded in this process (torch's), as (path, handle)."""
    import torch  # noqa: F401  (loads torch's OpenMP runtime if it has one)

    for path in _loaded_libraries():
        if not _OPENMP_NAME.match(os.path.basename(path)):
            continue
        try:
            lib = _noload(path)
            lib.GOMP_parallel  # noqa: B018  (the entry point we call)
        except (OSError, AttributeError):
            continue
        return path, lib
    raise LauncherUnavailable(
        "no OpenMP runtime with GOMP_parallel is loaded in this process (torch's parallel "
        "backend is not OpenMP here)"
    )


def _error_setter() -> int | None:
    """TVM's ``TVMFFIErrorSetRaisedFromCStr``, to report a failed task on a worker thread."""
    for path in _loaded_libraries():
        if os.path.basename(path).startswith("libtvm_ffi"):
            try:
                fn = _noload(path).TVMFFIErrorSetRaisedFromCStr
            except (OSError, AttributeError):
                continue
            return ctypes.cast(fn, ctypes.c_void_p).value
    return None


def _compiler() -> str:
    for c in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if c:
            found = shutil.which(c.split()[0])
            if found:
                return found
    raise LauncherUnavailable("no C compiler found ($CC, cc, gcc or clang)")


def cache_dir() -> Path:
    """Where the compiled launcher is kept (``$RQCOMPILE_CACHE_DIR`` first)."""
    if os.environ.get("RQCOMPILE_CACHE_DIR"):
        return Path(os.environ["RQCOMPILE_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "rqcompile"


def _build_folders() -> list[Path]:
    """The cache folder, then a per-user temporary one if the cache is not writable."""
    return [cache_dir(), Path(tempfile.gettempdir()) / f"rqcompile-{os.getuid()}"]


def _build(compiler: str, src: Path, opt: str = "-O2") -> Path:
    """Compile ``src`` into the cache (once per source, compiler and ``opt``; atomic)."""
    source = src.read_bytes()
    key = hashlib.sha256(
        source + compiler.encode() + sys.platform.encode() + platform.machine().encode()
        + opt.encode()
    ).hexdigest()[:16]
    suffix = ".dylib" if sys.platform == "darwin" else ".so"
    for folder in _build_folders():
        target = folder / f"rq_{src.stem}-{key}{suffix}"
        if target.exists():
            return target
        try:
            folder.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=target.name + ".", dir=folder)
        except OSError:
            continue  # not writable: try the next folder
        os.close(fd)
        try:
            cmd = [compiler, opt, "-shared", "-fPIC", "-pthread", "-o", tmp, str(src)]
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
            if r.returncode != 0:
                raise LauncherUnavailable(
                    f"compiling {src.name} failed ({' '.join(cmd)}): {r.stderr.strip()}"
                )
            os.replace(tmp, target)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return target
    raise LauncherUnavailable(f"no writable cache folder for the launcher ({cache_dir()})")


def _make(kind: str) -> Launcher:
    if sys.platform != "linux":
        raise LauncherUnavailable(f"the {kind} launcher is built for Linux only")
    if kind == "pool":
        path = _build(_compiler(), _SOURCES["pool"])
        lib = ctypes.CDLL(str(path))
        lib.rq_pool_init.argtypes = [ctypes.c_int64, ctypes.c_int, ctypes.c_void_p]
        lib.rq_pool_init.restype = ctypes.c_int
        lib.rq_pool_init(int(SPIN_US * 1000), CHUNKS_PER_THREAD, _error_setter())
        return Launcher("pool", str(path), None, lib)
    omp_path, omp = _openmp_runtime()
    path = _build(_compiler(), _SOURCES["omp"])
    lib = ctypes.CDLL(str(path))
    addr = [ctypes.cast(getattr(omp, n), ctypes.c_void_p).value for n in
            ("GOMP_parallel", "omp_get_thread_num", "omp_get_num_threads",
             "omp_get_max_threads")]  # fmt: skip
    lib.rq_omp_init.argtypes = [ctypes.c_void_p] * 5
    lib.rq_omp_init.restype = ctypes.c_int
    if lib.rq_omp_init(*addr, _error_setter()) != 0:
        raise LauncherUnavailable(f"{omp_path} lacks an OpenMP entry point the launcher needs")
    return Launcher("omp", str(path), omp_path, lib)


@functools.cache
def launcher() -> Launcher | None:
    """The launcher :func:`mode` picks, made on first use; ``None`` for TVM's pool.

    Raises:
        TargetError: ``RQCOMPILE_PARALLEL=omp`` was set and the launcher cannot be made.
    """
    kind = mode()
    if kind == "tvm":
        return None
    try:
        made = _make(kind)
    except (LauncherUnavailable, OSError, AttributeError, subprocess.SubprocessError) as e:
        if os.environ.get(ENV, "").strip().lower() == kind:
            raise TargetError(
                f"{ENV}={kind}: the {kind} launcher cannot be made: {e}. Unset {ENV} (or set "
                "it to 'tvm') to run on TVM's thread pool."
            ) from e
        warn(
            f"rqcompile's parallel launcher is unavailable ({e}); kernels use TVM's thread "
            f"pool, which can slow calls interleaved with torch. Set {ENV}=tvm to silence this."
        )
        return None
    _log.debug("%s launcher %s (OpenMP: %s)", made.kind, made.path, made.openmp)
    return made


def _tvm_launch_address() -> int | None:
    """The address of TVM's own ``TVMBackendParallelLaunch`` (what TVM's loader stores)."""
    for path in _loaded_libraries():  # libtvm_runtime (wheels) or libtvm (source builds)
        if os.path.basename(path).startswith("libtvm") and "ffi" not in os.path.basename(path):
            try:
                return ctypes.cast(_noload(path).TVMBackendParallelLaunch, ctypes.c_void_p).value
            except (OSError, AttributeError):
                continue
    return None


def install(path: str) -> str:
    """Point the library TVM just loaded from ``path`` (still on disk) at our launcher.

    Returns what its parallel loops now use: ``"pool"`` or ``"omp"`` (our launcher),
    ``"tvm"`` (TVM's pool: chosen, no launcher, or the library needs TVM's barrier) or
    ``"none"`` (the library has no parallel loop).
    """
    lch = launcher()
    if lch is None:
        return "tvm"
    try:
        lib = _noload(path)  # the same mapping TVM opened (the file is matched by path/inode)
    except OSError as e:  # never fail a load over this: the library keeps TVM's pool
        _log.debug("%s: cannot reopen the loaded library (%s): left on TVM's pool", path, e)
        return "tvm"
    try:
        try:
            slot = ctypes.c_void_p.in_dll(lib, _LAUNCH_SYMBOL)
        except ValueError:
            return "none"
        try:
            ctypes.c_void_p.in_dll(lib, _BARRIER_SYMBOL)
            needs_barrier = True
        except ValueError:
            needs_barrier = False
        if needs_barrier:
            with lch._lock:
                lch.kept_on_tvm += 1
            _log.debug("%s uses TVM's parallel barrier: left on TVM's pool", path)
            return "tvm"
        if slot.value not in (_tvm_launch_address(), lch.address):
            _log.debug("%s: %s holds %r, not TVM's launcher: left alone", path, _LAUNCH_SYMBOL,
                       slot.value)  # fmt: skip
            return "tvm"
        slot.value = lch.address
        with lch._lock:
            lch.installed += 1
        return lch.kind
    finally:
        _dlclose(lib)


def _dlclose(lib: ctypes.CDLL) -> None:
    """Drop our reference (TVM's keeps the library open as long as its module lives)."""
    try:
        import _ctypes

        _ctypes.dlclose(lib._handle)  # type: ignore[attr-defined]
    except (ImportError, AttributeError, OSError):
        pass
