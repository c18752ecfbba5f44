"""Running TVM-built kernels: shared library bytes → relax VM → a callable on torch tensors.

Where it sits: ``build_tvm`` (after a build) and ``rqcompile.targets.compiled.load`` (for an
artifact's ``kernels.so``) both end here, so a freshly built model and a loaded one run the
same code path.

* **Refuse before loading.** Native code built for CPU features this machine lacks would die
  with SIGILL, and code for another architecture cannot be loaded at all; both are checked
  (``pipelines.run_blockers``) before the library is opened, and the error names the fix.
  Kernels built with AMX (``amx_tile``) also need the OS's permission to use the tile
  state, asked once per process there (``cpu_features.amx_permission``); a refusal is a
  reason like the others.
* **Tensors cross by DLPack.** Inputs and weights are handed to TVM without copies (a copy is
  made only for a non-contiguous or under-aligned tensor); outputs come back as torch tensors
  sharing the VM's freshly allocated output memory.
* **Weights are bound once** per loaded model, from ``ir.constants``, in the parameter order
  of ``emit.const_params``. Nothing is cached across models.

* **Thread-safe.** A relax VM keeps per-call state (registers, frames), so one model's VM
  runs one call at a time behind a lock; calls from several threads queue. The kernels
  themselves are parallel, so little is lost (``tests/test_resources.py``).
* **Threads per call** (``threads.py``): the model's ``threads`` (``CompiledModule.threads``)
  or else ``torch.get_num_threads()``, and one thread for a call with little work; the
  parallel loops run on our launcher (``parallel.py``: by default a pool whose caller never
  waits for a worker that has not started), or on TVM's pool where ``RQCOMPILE_PARALLEL=tvm``
  or no launcher can be compiled.
"""

from __future__ import annotations

import math
import os
import tempfile
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.dlpack import from_dlpack

from rqcompile.errors import ArtifactError, TargetError
from rqcompile.ir.core import Module
from rqcompile.ir.types import torch_dtype
from rqcompile.targets.compiled import CompiledModule, finite_array
from rqcompile.targets.target import Target as RQTarget
from rqcompile.targets.tvm import parallel
from rqcompile.targets.tvm import threads as _threads
from rqcompile.targets.tvm.adapter import relax, runtime, tvm
from rqcompile.targets.tvm.emit.module import const_params
from rqcompile.targets.tvm.finite import all_finite as _all_finite
from rqcompile.targets.tvm.pipelines import library_suffix, run_blockers
from rqcompile.targets.tvm.threads import ThreadSetter, pool_size, threads_for_call

__all__ = ["TVMBackend", "compiled_module", "load_library"]

#: TVM's buffers are declared 64-byte aligned; the generated code may rely on it.
_ALIGN = 64
_STRIDED = torch.strided


@dataclass(frozen=True)
class TVMBackend:
    """What a TVM-built :class:`CompiledModule` holds in ``.backend``, for power users.

    Attributes:
        tvm_module: the loaded ``tvm.runtime.Module`` (``None`` when it cannot run here).
        vm: the ``relax.VirtualMachine`` (``None`` when it cannot run here).
        executable: the ``relax.Executable`` right after a build (``None`` after a load).
        tvm_target: the resolved ``tvm.target.Target`` (``None`` after a load).
        parallel: what runs the kernels' parallel loops (``parallel.install``): ``"pool"``
            (our pool, the default), ``"omp"`` (torch's OpenMP threads), ``"tvm"`` (TVM's
            pool) or ``"none"`` (no parallel loop).
    """

    tvm_module: Any
    vm: Any
    executable: Any = None
    tvm_target: Any = None
    parallel: str = "tvm"


_from_dlpack = runtime.from_dlpack


def _to_tvm(x: torch.Tensor) -> Any:
    """A TVM tensor sharing ``x``'s memory (copied only if non-contiguous or under-aligned)."""
    if x.requires_grad:  # DLPack refuses tensors that require grad
        x = x.detach()
    if not x.is_contiguous():
        x = x.contiguous()
    if x.data_ptr() % _ALIGN:  # e.g. a view at an offset; torch's allocator aligns to 64
        buf = torch.empty(x.numel() * x.element_size() + _ALIGN, dtype=torch.uint8)
        off = -buf.data_ptr() % _ALIGN
        x = buf[off : off + x.numel() * x.element_size()].view(x.dtype).view(x.shape).copy_(x)
    return _from_dlpack(x)


#: this Python thread's thread count for the next kernels (the OpenMP launcher's and TVM's
#: pool's settings are both per calling thread)
_set_threads = ThreadSetter(tvm.get_global_func("runtime.config_threadpool"), parallel.launcher)


#: torch's DLPack import without its Python wrapper (~1 µs of a ~10 µs call at batch 1);
#: the public one where a torch build lacks it
_from_capsule = getattr(torch._C, "_from_dlpack", None)


def _outputs(result: Any) -> tuple[torch.Tensor, ...]:
    if type(result) is runtime.Tensor and _from_capsule is not None:  # one output: the usual
        return (_from_capsule(result.__dlpack__()),)
    items = (result,) if isinstance(result, runtime.Tensor) else tuple(result)
    if _from_capsule is None:
        return tuple(from_dlpack(o) for o in items)
    return tuple(_from_capsule(o.__dlpack__()) for o in items)


#: The function ``relax.transform.LiftTransformParams`` makes of ``main``'s weight-only work.
TRANSFORM_PARAMS = "main_transform_params"


def _bind_weights(vm: Any, ir: Module) -> list[Any]:
    """``main``'s trailing arguments: the weights, through ``main_transform_params`` if the
    build lifted weight-only work (packing) out of ``main``; run once, here."""
    weights = [_to_tvm(ir.constant(n)) for n in const_params(ir)]
    if not vm.module.implements_function(TRANSFORM_PARAMS):
        return weights
    return list(vm[TRANSFORM_PARAMS](weights))


def _rows(shape: Sequence[int], floating: bool) -> int:
    """Rows of a call's first input for the serial threshold (:meth:`_VMRunner._threads`):
    every token of an id tensor, else every dim but the last (1 for a vector)."""
    if not floating:
        return math.prod(shape)
    return math.prod(shape[:-1]) if len(shape) >= 2 else 1


def _static_rows(ir: Module) -> int | None:
    """:func:`_rows` of ``main``'s first input from its IR type, where its shape is static."""
    args = ir.main.args
    if not args:
        return 1
    t = args[0].type
    shape = tuple(t.shape)
    if not all(type(d) is int for d in shape):  # dynamic (None or symbolic) dims
        return None
    return _rows(shape, torch_dtype(t.dtype).is_floating_point)


class _VMRunner:
    """Calls the VM's ``main`` with the inputs followed by the bound weights."""

    def __init__(self, vm: Any, ir: Module) -> None:
        self._main = vm["main"]
        self._weights = _bind_weights(vm, ir)
        # an output that is an input or a weight would alias caller/weight memory: copy it
        defined_by_op = {r.id for op in ir.main.ops if op.name != "rq.const" for r in op.results}
        self._copy = tuple(v.id not in defined_by_op for v in ir.main.outputs)
        self._any_copy = any(self._copy)
        self._lock = threading.Lock()
        #: ``None``: follow ``torch.get_num_threads()`` at each call
        self.threads: int | None = None
        # work of one call ~ weight bytes x rows of the first input (the serial threshold)
        self._weight_bytes = sum(
            ir.constant(n).numel() * ir.constant(n).element_size() for n in const_params(ir)
        )
        #: the pool's size, read once: the pools size themselves when they start, and the
        #: environment read costs ~2 µs of a call at batch 1
        self._pool = pool_size()
        #: the work of every call where the first input's shape is static (the usual case):
        #: reading the input's shape on every call costs several torch calls
        self._static_work = _static_rows(ir)
        if self._static_work is not None:
            self._static_work *= self._weight_bytes
        #: the C finiteness check of :meth:`fast_call` (``None``: no compiler here)
        self._finite = _all_finite()

    def _threads(self, inputs: Sequence[torch.Tensor]) -> int:
        work = self._static_work
        if work is None:
            x = inputs[0] if inputs else None
            rows = 1 if x is None else _rows(tuple(x.shape), x.is_floating_point())
            work = self._weight_bytes * rows
        return threads_for_call(self.threads, work, self._pool)

    def prewake(self, inputs: Sequence[torch.Tensor]) -> int:
        """Called before the input checks of a call that will run here: wake the parallel
        launcher's sleeping workers now if the call will use more than one thread
        (``pool_launch.c``, ``rq_pool_prewake``), so they are running when its first loop
        comes. Returns the call's thread count, for :meth:`__call__`'s ``threads``."""
        n = self._threads(inputs)
        if n > 1:
            lch = parallel.launcher()
            if lch is not None:
                lch.prewake()
        return n

    def __call__(self, *inputs: torch.Tensor, threads: int | None = None) -> tuple[torch.Tensor, ...]:
        """``threads``: the call's thread count if the caller already has it (``prewake``'s)."""
        # per-call Python work is kept minimal: at batch 1 it costs as much as the kernels
        args = [_to_tvm(x) for x in inputs]
        return self._run(args, self._threads(inputs) if threads is None else threads)

    def fast_call(
        self, inputs: Sequence[Any], expect: Sequence[tuple[torch.dtype, torch.Size]]
    ) -> tuple[torch.Tensor, ...] | None:
        """The common call in one function: every input a plain, contiguous, 64-byte aligned
        CPU tensor of the static ``(dtype, shape)`` in ``expect`` (float, from
        ``CompiledModule._fast_expect``) that needs no grad and holds no NaN/Inf (the C loop
        of ``finite.py``); ``None`` where anything differs (nothing has run, and the caller's
        full path checks, copies or names the problem).

        Why one function: through ``prewake``, ``_fast_match``, ``run_if_finite`` and
        ``_run``, each a call with its own look-ups, the Python around VM ``main`` was ~8 µs
        of a 22 µs call (A4W4, K = N = 1024, M = 1, Zen 4); in one function the call takes
        ~20 (``benchmarks/call_stages.py``, results/call_stages_2026-12-07_zen4_*.md)."""
        if len(inputs) != len(expect):
            return None
        check = self._finite
        if check is None:
            return None
        work = self._static_work
        if work is not None and work < _threads.SERIAL_BELOW:  # read now: tests change it
            n = 1
        else:
            n = self._threads(inputs)
            if n > 1:  # wake the launcher's workers: they start while the inputs are checked
                lch = parallel.launcher()
                if lch is not None:
                    lch.prewake()
        args = []
        for x, (dtype, shape) in zip(inputs, expect):  # noqa: B905 (lengths checked)
            # CompiledModule._fast_match's conditions, inline (keep the two in step), plus
            # what run_if_finite would otherwise copy or detach for
            if (type(x) is not torch.Tensor or x.dtype is not dtype or x.shape != shape
                    or x.layout is not _STRIDED or x.is_nested or not x.is_cpu
                    or x.requires_grad or not x.is_contiguous()):  # fmt: skip
                return None
            ptr = x.data_ptr()
            if ptr % _ALIGN or check(ptr, shape.numel(), dtype.itemsize) != 1:
                return None
            args.append(_from_dlpack(x))
        return self._run(args, n)

    def run_if_finite(
        self, inputs: Sequence[torch.Tensor], threads: int
    ) -> tuple[torch.Tensor, ...] | None:
        """The call, if every input (all floating point: ``CompiledModule._fast_match``) is
        free of NaN/Inf, checked by one C loop over each contiguous input (``finite.py``:
        cheaper than numpy right after the kernels), else on a numpy view of the array
        passed to the kernels; ``None`` where a value may not be finite (nothing has run;
        the caller's full check names the problem)."""
        check = _all_finite()
        args = []
        for x in inputs:
            a = _to_tvm(x)  # contiguous (copied if x is not)
            if check is not None and x.is_contiguous():
                ok = check(x.data_ptr(), x.numel(), x.element_size()) == 1
            else:
                ok = finite_array(np.from_dlpack(a))
            if not ok:
                return None
            args.append(a)
        return self._run(args, threads)

    def _run(self, args: list[Any], threads: int) -> tuple[torch.Tensor, ...]:
        with self._lock:
            _set_threads(threads)
            result = self._main(*args, *self._weights)
        outs = _outputs(result)
        if not self._any_copy:
            return outs
        return tuple(o.clone() if c else o for o, c in zip(outs, self._copy, strict=True))


class _Unrunnable:
    """Runner of a model built for another machine: every call explains why it can't run."""

    def __init__(self, target: RQTarget, reasons: Sequence[str]) -> None:
        self._message = (
            f"this model was built for target {target} and cannot run on this machine: "
            f"{'; '.join(reasons)}. Save it (exe.save(path)) and run it where it was built "
            "for, or build for this machine with rq.build(exe.ir, 'llvm')."
        )

    def __call__(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        raise TargetError(self._message)


def _load_module(lib_bytes: bytes, suffix: str) -> tuple[Any, str]:
    """The loaded library and what runs its parallel loops (``parallel.install``'s answer)."""
    # dlopen keeps the mapping after the file is gone, so the temp dir can go at once; the
    # parallel launcher is installed while the file is there (parallel.install finds the
    # library TVM opened by its path)
    with tempfile.TemporaryDirectory(prefix="rq-kernels-") as d:
        path = os.path.join(d, "kernels" + suffix)
        with open(path, "wb") as f:
            f.write(lib_bytes)
        mod = runtime.load_module(path)
        return mod, parallel.install(path)


def compiled_module(
    ir: Module,
    target: RQTarget,
    lib_bytes: bytes,
    features: Sequence[str],
    *,
    executable: Any = None,
    tvm_target: Any = None,
    func_libraries: Mapping[str, bytes] | None = None,
) -> CompiledModule:
    """Wrap built kernels as a :class:`CompiledModule`; runnable here unless blocked.

    A model this machine cannot run (another architecture, or CPU features it lacks) is
    still returned, so it can be saved; calling it raises :class:`TargetError`.
    """
    reasons = run_blockers(target.to_dict(), features)
    if reasons:
        backend = TVMBackend(None, None, executable, tvm_target)
        return CompiledModule(
            ir,
            target,
            _Unrunnable(target, reasons),
            library=lib_bytes,
            features=features,
            backend=backend,
            func_libraries=func_libraries,
        )
    suffix = library_suffix(target.to_dict())
    mod, par = _load_module(lib_bytes, suffix)
    vm = relax.VirtualMachine(mod, tvm.cpu())
    generation = None
    if func_libraries:  # kv-cache prefill / decode: one library each (build.py)
        from rqcompile.passes.ir.kv_cache import GENERATION_FUNCS, func_as_main

        runners = []
        for name in GENERATION_FUNCS:
            fvm = relax.VirtualMachine(_load_module(func_libraries[name], suffix)[0], tvm.cpu())
            runners.append(_VMRunner(fvm, func_as_main(ir, name)))
        generation = (runners[0], runners[1])
    return CompiledModule(
        ir,
        target,
        _VMRunner(vm, ir),
        library=lib_bytes,
        features=features,
        backend=TVMBackend(mod, vm, executable, tvm_target, par),
        generation=generation,
        func_libraries=func_libraries,
    )


def load_library(
    ir: Module,
    target: RQTarget,
    lib_bytes: bytes,
    features: Sequence[str],
    func_libraries: Mapping[str, bytes] | None = None,
) -> CompiledModule:
    """Load an artifact's ``kernels.so`` (called by ``rq.load``), refusing what can't run here.

    Raises:
        ArtifactError: the kernels need CPU features this machine lacks, or were built for
            another architecture; the message names them and how to rebuild.
    """
    reasons = run_blockers(target.to_dict(), features)
    if reasons:
        raise ArtifactError(
            f"cannot load the kernels of this artifact (target {target}): {'; '.join(reasons)}. "
            "Rebuild them from the stored IR for this machine: "
            "rq.load(path, trust_kernels=False) rebuilds for the stored target, or "
            "rq.build(rq.load(path, trust_kernels=False).ir, 'llvm') builds for this CPU."
        )
    try:
        return compiled_module(ir, target, lib_bytes, features, func_libraries=func_libraries)
    except (OSError, RuntimeError) as e:  # TVM's load errors derive from RuntimeError
        raise ArtifactError(
            f"cannot load the kernels of this artifact: {e}. Rebuild them with "
            "rq.load(path, trust_kernels=False)."
        ) from e
