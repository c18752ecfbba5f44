"""The parallel launchers (``parallel.py``): our kernels' parallel loops off TVM's pool.

Bit-exact outputs on every launcher and thread count, the library's launch pointer really
replaced (the launcher's counters move), saved artifacts too, and the fallback to TVM's pool
when a launcher cannot be made. No timings.
"""

from __future__ import annotations

import threading
import warnings

import pytest
import torch

pytestmark = pytest.mark.tvm


@pytest.fixture(scope="module")
def built():
    """A4W4 TinyMLP built once (its GEMMs have parallel loops), with its input."""
    import rqcompile as rq
    from rqcompile.testing.models import TinyMLP

    torch.manual_seed(0)
    x = torch.randn(64, 64)
    ir = rq.convert(rq.prepare(TinyMLP(), (x,), "A4W4").eval())
    exe = rq.build(ir, "llvm", threads=1)
    return exe, x


@pytest.fixture
def parallel_always(monkeypatch: pytest.MonkeyPatch):
    """Every call parallel, however small (the serial threshold off), up to 2 threads even on
    a 1-CPU machine."""
    from rqcompile.targets.tvm import parallel, threads

    monkeypatch.setattr(threads, "SERIAL_BELOW", 0)
    if threads.pool_size() < 2:
        monkeypatch.setenv("TVM_NUM_THREADS", "2")
    return parallel


def _reload(exe):
    """The same library loaded again (so the launcher in force now is installed into it)."""
    from rqcompile.targets.tvm.runtime import compiled_module

    return compiled_module(exe.ir, exe.target, exe._library, exe.features)


def _with_launcher(monkeypatch: pytest.MonkeyPatch, parallel, lch) -> None:
    monkeypatch.setattr(parallel, "launcher", lambda: lch)


def _on_two_pool_threads(exe, parallel, lch, monkeypatch: pytest.MonkeyPatch):
    """``exe``'s library loaded again with ``lch`` installed, both set to 2 threads."""
    _with_launcher(monkeypatch, parallel, lch)
    other = _reload(exe)
    lch.set_threads(2)
    other.threads = 2
    return other


def test_default_launcher_is_installed_and_runs_the_loops(built, parallel_always) -> None:
    parallel = parallel_always
    exe, x = built
    lch = parallel.launcher()
    assert lch is not None, "the default launcher could not be made on this machine"
    assert lch.kind == parallel.DEFAULT
    assert exe.backend.parallel == lch.kind
    before, team = lch.launches(), lch.team_launches()
    exe.threads = 2
    exe(x)
    assert lch.launches() > before  # the library's launch pointer leads to our function
    assert lch.team_launches() > team
    exe.threads = 1
    team = lch.team_launches()
    n = lch.launches()
    exe(x)
    assert lch.launches() > n and lch.team_launches() == team  # 1 thread: no team at all


def test_torch_set_num_threads_governs_the_launcher(built, parallel_always) -> None:
    exe, x = built
    lch = parallel_always.launcher()
    if lch is None:
        pytest.skip("no launcher here (TVM's pool)")
    exe.threads = None  # follow torch
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        team = lch.team_launches()
        exe(x)
        assert lch.team_launches() == team
        torch.set_num_threads(2)
        exe(x)
        assert lch.team_launches() > team
    finally:
        torch.set_num_threads(old)


@pytest.mark.parametrize("kind", ["pool", "omp", "tvm"])
def test_launchers_are_bit_exact_at_every_thread_count(
    built, parallel_always, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    parallel = parallel_always
    exe, x = built
    exe.threads = 1
    ref = exe(x)
    lch = None if kind == "tvm" else parallel._make(kind)
    _with_launcher(monkeypatch, parallel, lch)
    other = _reload(exe)
    assert other.backend.parallel == kind
    before = lch.launches() if lch else 0
    for t in (1, 2, 3, 1, 2):
        other.threads = t
        if lch is not None:
            lch.set_threads(t)  # the ThreadSetter serves the default launcher; set this one
        assert torch.equal(other(x), ref), (kind, t)
    if lch is not None:
        assert lch.launches() > before


def test_pool_uses_its_workers_and_stays_exact_with_many_chunks(
    built, parallel_always, monkeypatch: pytest.MonkeyPatch
) -> None:
    parallel = parallel_always
    exe, x = built
    exe.threads = 1
    ref = exe(x)
    lch = parallel._make("pool")
    lch._lib.rq_pool_init(-1, 16, None)  # 16 chunks per thread: slices of 1 row and empty ones
    try:
        other = _on_two_pool_threads(exe, parallel, lch, monkeypatch)
        outs = [other(x) for _ in range(20)]
        assert all(torch.equal(o, ref) for o in outs)
        assert lch.worker_chunks() is not None and lch.workers() >= 1
    finally:
        lch._lib.rq_pool_init(-1, parallel.CHUNKS_PER_THREAD, None)


def test_calls_from_several_threads_are_exact(built, parallel_always) -> None:
    exe, x = built
    exe.threads = 1
    ref = exe(x)
    exe.threads = 2
    models = [exe, _reload(exe), _reload(exe)]
    bad: list[int] = []

    def work(i: int) -> None:
        for _ in range(10):
            if not torch.equal(models[i](x), ref):
                bad.append(i)

    ts = [threading.Thread(target=work, args=(i,)) for i in range(3)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert not bad


def test_saved_artifact_gets_the_launcher(built, parallel_always, tmp_path) -> None:
    import rqcompile as rq

    parallel = parallel_always
    exe, x = built
    exe.threads = 1
    ref = exe(x)
    exe.save(tmp_path / "m")
    back = rq.load(tmp_path / "m")
    lch = parallel.launcher()
    assert back.backend.parallel == (lch.kind if lch else "tvm")
    back.threads = 2
    n = lch.launches() if lch else 0
    assert torch.equal(back(x), ref)
    if lch is not None:
        assert lch.launches() > n


def test_unbuildable_launcher_falls_back_to_tvm_with_a_warning(
    built, monkeypatch: pytest.MonkeyPatch, tmp_path
) -> None:
    from rqcompile.errors import RQWarning, TargetError
    from rqcompile.targets.tvm import parallel

    exe, x = built
    exe.threads = 1
    ref = exe(x)
    monkeypatch.setenv("CC", "false")  # a "compiler" that always fails
    monkeypatch.setenv("RQCOMPILE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(parallel, "_build_folders", lambda: [tmp_path / "cache"])
    parallel.launcher.cache_clear()
    try:
        monkeypatch.delenv(parallel.ENV, raising=False)
        with pytest.warns(RQWarning, match="launcher is unavailable"):
            assert parallel.launcher() is None
        other = _reload(exe)
        assert other.backend.parallel == "tvm"
        other.threads = 2
        assert torch.equal(other(x), ref)
        parallel.launcher.cache_clear()
        monkeypatch.setenv(parallel.ENV, "pool")
        with pytest.raises(TargetError, match=r"compiling pool_launch\.c failed"):
            parallel.launcher()
        parallel.launcher.cache_clear()
        monkeypatch.setenv(parallel.ENV, "tvm")
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert parallel.launcher() is None  # chosen: no warning
    finally:
        parallel.launcher.cache_clear()


def test_mode_reads_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from rqcompile.errors import ConfigError
    from rqcompile.targets.tvm import parallel

    monkeypatch.delenv(parallel.ENV, raising=False)
    assert parallel.mode() == parallel.DEFAULT
    for v in ("pool", "omp", "tvm", "TVM "):
        monkeypatch.setenv(parallel.ENV, v)
        assert parallel.mode() == v.strip().lower()
    monkeypatch.setenv(parallel.ENV, "gpu")
    with pytest.raises(ConfigError, match="RQCOMPILE_PARALLEL"):
        parallel.mode()


def test_thread_setter_sets_the_launcher_and_tvm_only_when_needed() -> None:
    from rqcompile.targets.tvm.threads import ThreadSetter

    class Fake:
        kept_on_tvm = 0

        def __init__(self) -> None:
            self.n: list[int] = []

        def set_threads(self, n: int) -> None:
            self.n.append(n)

    fake = Fake()
    calls: list[tuple[int, int]] = []
    s = ThreadSetter(lambda mode, n: calls.append((mode, n)), lambda: fake)
    s(2)
    s(2)
    s(1)
    assert fake.n == [2, 1] and calls == []
    fake.kept_on_tvm = 1  # a library left on TVM's pool: its pool follows too
    s(2)
    assert fake.n == [2, 1, 2] and calls == [(1, 2)]


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs os.fork")
def test_forked_child_starts_its_own_workers(built, parallel_always) -> None:
    import os

    exe, x = built
    exe.threads = 1
    ref = exe(x)
    exe.threads = 2
    assert torch.equal(exe(x), ref)  # the parent's workers exist now
    pid = os.fork()
    if pid == 0:  # only the forking thread exists here: the pool must start anew
        ok = all(torch.equal(exe(x), ref) for _ in range(3))
        os._exit(0 if ok else 3)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0


def test_omp_launcher_without_an_openmp_runtime_is_unavailable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from rqcompile.errors import TargetError
    from rqcompile.targets.tvm import parallel

    monkeypatch.setattr(parallel, "_loaded_libraries", lambda: [])  # no libgomp in sight
    with pytest.raises(parallel.LauncherUnavailable, match="no OpenMP runtime"):
        parallel._make("omp")
    monkeypatch.setenv(parallel.ENV, "omp")
    parallel.launcher.cache_clear()
    try:
        with pytest.raises(TargetError, match="RQCOMPILE_PARALLEL=omp"):
            parallel.launcher()
    finally:
        parallel.launcher.cache_clear()


def test_prewake_wakes_sleeping_workers_and_calls_stay_exact(
    built, parallel_always, monkeypatch: pytest.MonkeyPatch
) -> None:
    import ctypes
    import time

    parallel = parallel_always
    exe, x = built
    exe.threads = 1
    ref = exe(x)
    lch = parallel._make("pool")
    lib = lch._lib
    lib.rq_pool_prewakes.restype = ctypes.c_uint64
    other = _on_two_pool_threads(exe, parallel, lch, monkeypatch)
    assert torch.equal(other(x), ref)  # the workers exist now
    deadline = time.monotonic() + 5
    while lib.rq_pool_sleepers() < lch.workers() and time.monotonic() < deadline:
        time.sleep(0.01)  # they spin ~50 µs after a launch, then sleep on the futex
    assert lib.rq_pool_sleepers() == lch.workers() >= 1
    n = lib.rq_pool_prewakes()
    lch.prewake()
    assert lib.rq_pool_prewakes() == n + 1
    # a prewake without a launch leaves nothing to claim; calls after it stay exact
    for _ in range(10):
        lch.prewake()
        assert torch.equal(other(x), ref)
    # the runner asks for a prewake before the input checks of a call on several threads
    calls: list[int] = []
    monkeypatch.setattr(lch, "prewake", lambda: calls.append(1))
    other(x)
    other.threads = 1
    other(x)
    assert calls == [1]
