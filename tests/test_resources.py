"""Resource safety: bounded memory over repeated prepare/lower/run, thread-safe compiled
models, deterministic builds.

Memory is the resident set size (``/proc/self/statm``) after ``gc.collect()``, measured after
a warm-up (first-call caches: TVM's target registry, torch's dispatcher, allocator pools),
then over several more iterations; the bound is generous (tens of MB) because the allocator
keeps freed pages, but a leak of one model per iteration (weights, a loaded library, a VM)
would exceed it. ``RQ_MEMORY_REPORT=1`` prints the numbers.
"""

from __future__ import annotations

import gc
import hashlib
import os
import subprocess
import sys
import threading
import weakref
import zipfile
from pathlib import Path

import pytest
import torch

import rqcompile as rq
from rqcompile.ir.printer import print_module
from rqcompile.testing.models import prepared_tiny, tiny_models

TVM = pytest.param("llvm", marks=pytest.mark.tvm)


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _cycle(target: str) -> None:
    """One full prepare → lower → run of a small model; nothing is kept."""
    model, ex = tiny_models()["mlp"]
    qat = rq.prepare(model, ex, "A4W4")
    exe = rq.lower(qat.eval(), target=target)
    assert exe(*ex).shape == (8, 10)


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs Linux /proc")
@pytest.mark.parametrize(
    ("target", "warmup", "iters", "bound_mb"),
    [
        ("reference", 2, 8, 48),
        pytest.param("llvm", 2, 6, 96, marks=[pytest.mark.tvm, pytest.mark.slow]),
    ],
)
def test_repeated_prepare_lower_run_memory_is_bounded(
    target: str, warmup: int, iters: int, bound_mb: float
) -> None:
    if target == "llvm":
        pytest.importorskip("tvm")
    for _ in range(warmup):
        _cycle(target)
    gc.collect()
    start = _rss_mb()
    samples = []
    for _ in range(iters):
        _cycle(target)
        gc.collect()
        samples.append(_rss_mb() - start)
    if os.environ.get("RQ_MEMORY_REPORT"):
        print(
            f"\n{target}: RSS after warm-up {start:.1f} MB; growth per iteration (MB): "
            + ", ".join(f"{s:.1f}" for s in samples)
        )
    assert samples[-1] < bound_mb, f"{target}: RSS grew {samples[-1]:.1f} MB over {iters} runs"


def _cycle_refs(target: str) -> list[weakref.ref]:
    """One prepare -> lower -> run cycle; weak references to everything it created."""
    model, ex = tiny_models()["mlp"]
    qat = rq.prepare(model, ex, "A4W4")
    exe = rq.lower(qat.eval(), target=target)
    assert exe(*ex).shape == (8, 10)
    refs = [weakref.ref(model), weakref.ref(qat), weakref.ref(qat.graph), weakref.ref(exe),
            weakref.ref(exe.ir)]  # fmt: skip
    refs += [weakref.ref(m) for m in qat.modules()]
    return refs


@pytest.mark.parametrize("target", ["reference", TVM])
def test_no_model_graph_or_compiled_module_survives_its_cycle(target: str) -> None:
    """RSS cannot see a leak of one small model per cycle; weak references can: after a cycle
    and a collection, no model, QAT graph, fx graph, submodule, IR or compiled module may be
    alive (issue 21)."""
    if target == "llvm":
        pytest.importorskip("tvm")
    for _ in range(3):
        refs = _cycle_refs(target)
        gc.collect()
        alive = [r() for r in refs if r() is not None]
        assert not alive, f"{target}: {len(alive)} object(s) outlived the cycle: " + ", ".join(
            sorted({type(a).__name__ for a in alive})
        )


def test_weakref_check_sees_a_leak() -> None:
    """The check above is not vacuous: a cache that keeps models is caught."""
    leak: list[object] = []
    model, ex = tiny_models()["mlp"]
    qat = rq.prepare(model, ex, "A4W4")
    leak.append(qat)
    ref = weakref.ref(qat)
    del qat, model
    gc.collect()
    assert ref() is not None
    leak.clear()
    gc.collect()
    assert ref() is None


@pytest.mark.parametrize("target", ["reference", TVM])
def test_compiled_model_is_thread_safe(target: str) -> None:
    if target == "llvm":
        pytest.importorskip("tvm")
    qat, ex = prepared_tiny("mlp", "A4W4")
    exe = rq.lower(qat, target=target)
    g = torch.Generator().manual_seed(3)
    inputs = [torch.randn(ex[0].shape, generator=g) for _ in range(24)]
    serial = [exe(x) for x in inputs]
    results: dict[int, torch.Tensor] = {}
    errors: list[BaseException] = []
    barrier = threading.Barrier(4)

    def work(tid: int) -> None:
        try:
            barrier.wait()
            for i in range(tid, len(inputs), 4):
                results[i] = exe(inputs[i])
        except BaseException as e:  # surfaced below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert all(torch.equal(results[i], serial[i]) for i in range(len(inputs)))


def _members(path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as z:
        return {n: z.read(n) for n in z.namelist()}


@pytest.mark.parametrize("target", ["reference", TVM])
def test_builds_are_deterministic(target: str, tmp_path: Path) -> None:
    if target == "llvm":
        pytest.importorskip("tvm")
    qat, ex = prepared_tiny("mlp", "A4W1+2:4")
    a, b = rq.lower(qat, target=target), rq.lower(qat, target=target)
    assert print_module(a.ir, elide_constants=False) == print_module(b.ir, elide_constants=False)
    a.save(tmp_path / "a.rq")
    b.save(tmp_path / "b.rq")
    ma, mb = _members(tmp_path / "a.rq"), _members(tmp_path / "b.rq")
    assert ma.keys() == mb.keys()
    for name in ("ir.mlir", "weights.safetensors", "manifest.json"):
        assert ma[name] == mb[name], f"{name} differs between two builds"
    if target == "reference":  # no native code: the whole file is byte-identical
        assert (tmp_path / "a.rq").read_bytes() == (tmp_path / "b.rq").read_bytes()
    assert torch.equal(a(*ex), b(*ex))


_FRESH = """
import hashlib, torch, rqcompile as rq
from rqcompile.ir.printer import print_module
from rqcompile.testing.models import prepared_tiny
torch.manual_seed(0)
qat, ex = prepared_tiny("attention", "A4W1+2:4")
print(hashlib.sha256(print_module(rq.convert(qat), elide_constants=False).encode()).hexdigest())
"""


def test_ir_is_identical_across_processes() -> None:
    """Same seed in a fresh interpreter (another hash seed) → the same IR text as here."""
    digests = set()
    for seed in ("12345",):
        env = {**os.environ, "PYTHONHASHSEED": seed, "PYTHONPATH": os.getcwd()}
        out = subprocess.run(
            [sys.executable, "-c", _FRESH], env=env, check=True, capture_output=True, text=True
        )
        digests.add(out.stdout.strip())
    torch.manual_seed(0)
    qat, _ = prepared_tiny("attention", "A4W1+2:4")
    here = hashlib.sha256(print_module(rq.convert(qat), elide_constants=False).encode())
    digests.add(here.hexdigest())
    assert len(digests) == 1, digests
