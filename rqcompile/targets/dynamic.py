"""``DynamicModule``: a compiled model whose declared dims (batch, sequence) vary per call.

It holds the symbolic IR (``rqcompile/translate/dynamic.py``) and runs it in one of two modes
(``specialize=``, :data:`SPECIALIZE`):

* ``"none"``: **one build for every shape** (``targets/tvm/symbolic.py``): relax functions
  over the symbolic dims, every kernel valid for any row count, built once at ``rq.lower``
  (or ``rq.build``); ``exe.save`` stores its kernels, so ``rq.load`` builds nothing. Kernels
  whose fast path needs a static size run their generic version
  (``exe.symbolic_fallbacks`` lists them). If the symbolic build itself fails, the model
  falls back to per-shape builds with a line on stderr saying why
  (``exe.specialize`` is then ``"lru"``).
* ``"lru"``: **one static build per shape**, below. Every static fast path (packed
  weights, fused attention, VNNI kernels) applies to every shape, at the cost of a build
  (seconds) at the first call of each new shape.

Per-shape mode (``"lru"``) holds, per concrete shape, an ordinary static ``CompiledModule``
built by the unchanged static pipeline:

* **Check first.** Each call checks every input's dtype, rank, static dims and dynamic dims
  against the declaration, and raises :class:`~rqcompile.errors.InputError` naming the input,
  the dim and its allowed range before anything is built or run.
* **Batch buckets.** When the batch dim only ever sits on axis 0 of the inputs and of the
  outputs, and rows are independent (checked once, at ``rq.lower``, on the reference target:
  a row's output does not change when another row is added), a batch ``b`` runs on the
  kernels built for the next power of two (capped at the declared max); the extra rows are
  copies of the last row (so token ids and masks stay valid; zeros would be an all-masked
  row) and the outputs are sliced back to ``b``. Every activation quantizer is per token, so
  padding is exact. Other dims (sequence) are specialized exactly: padding a sequence is only
  exact for causal models, which is not checked.
* **Cache.** Built shapes live in an LRU cache of :data:`CACHE_SIZE` entries
  (``exe.cache_size``). The first call at a new shape builds its kernels (for ``llvm`` a few
  seconds for a small model; a line on stderr says so); ``exe.prebuild(...)`` builds shapes
  ahead of time.
* **Artifacts.** ``exe.save`` stores the symbolic IR, whose ``main`` carries the declaration
  as attributes; ``rq.load`` returns a ``DynamicModule`` that builds shapes as they come
  (no kernels are stored).
"""

from __future__ import annotations

import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from rqcompile.errors import InputError
from rqcompile.ir.core import Module
from rqcompile.ir.types import torch_dtype
from rqcompile.ir.verify import verify
from rqcompile.targets.compiled import CompiledModule
from rqcompile.targets.target import Target
from rqcompile.translate.dynamic import DynamicShapes, SymbolicModule, specialize

__all__ = ["CACHE_SIZE", "DEFAULT_SPECIALIZE", "SPECIALIZE", "DynamicModule", "check_emitters"]

_specialize_ir = specialize  # DynamicModule.__init__'s ``specialize`` keyword shadows it

#: Built shapes kept per dynamic model (least recently used evicted first).
CACHE_SIZE = 8

#: The build modes of a dynamic model: ``"none"`` (one symbolic build for every shape) and
#: ``"lru"`` (a static build per shape, cached).
SPECIALIZE = ("none", "lru")

#: ``rq.lower(..., dynamic_shapes=...)``'s mode when ``specialize`` is not given (see
#: ``api.lower`` for the measurements behind it).
DEFAULT_SPECIALIZE = "lru"


#: ``build(static_ir, target) -> CompiledModule``: ``rq.build``, passed in by ``api.py``
#: (this file sits below it).
Builder = Callable[[Module, Target], CompiledModule]


def check_emitters(ir: Module, target: Target) -> None:
    """Ops the CPU TVM emitter has no rule for, refused when a dynamic model is built rather
    than at the first call of every shape (device targets check their own, per shape)."""
    from rqcompile.errors import UnsupportedOpError
    from rqcompile.targets.tvm.device.build import DEVICE_KINDS
    from rqcompile.targets.tvm.emit.module import EMITTERS

    if target.kind == "reference" or target.kind in DEVICE_KINDS:
        return
    missing = sorted({op.name for op in ir.main.ops if op.name not in EMITTERS} - {"rq.const"})
    if missing:
        raise UnsupportedOpError(
            f"the TVM emitter has no rule for: {', '.join(missing)}. Build with "
            "target='reference', or add an emitter to rqcompile.targets.tvm.emit.module.EMITTERS."
        )


class DynamicModule(CompiledModule):
    """A compiled model with dynamic dims; call it like a ``CompiledModule``."""

    def __init__(
        self,
        ir: Module,
        target: Target,
        build: Builder,
        *,
        check_rows: bool = True,
        specialize: str = DEFAULT_SPECIALIZE,
        library: bytes | None = None,
        features: Sequence[str] = (),
    ) -> None:
        if specialize not in SPECIALIZE:
            from rqcompile.errors import UsageError

            raise UsageError(f"specialize must be one of {SPECIALIZE}, got {specialize!r}.")
        super().__init__(ir, target, self._run)
        self._build = build
        sm = SymbolicModule.of(ir)
        self.symbolic = sm
        self.shapes: DynamicShapes = sm.shapes
        self.cache_size = CACHE_SIZE
        self._cache: OrderedDict[tuple[int, ...], CompiledModule] = OrderedDict()
        self._lock = threading.RLock()
        self._threads: int | None = None
        self.build_seconds: dict[tuple[int, ...], float] = {}
        # a damaged or hand-edited symbolic IR fails here (rq.build, rq.load), not at a call
        verify(_specialize_ir(sm, {d.name: d.max for d in self.shapes.dims}))
        #: the one symbolic build (``specialize="none"``), else None
        self.one_build: CompiledModule | None = None
        self.symbolic_fallbacks: tuple[str, ...] = ()
        self.specialize = specialize
        if specialize == "none" and target.kind == "reference":
            self.specialize = "lru"  # nothing to build: the reference runs any shape as is
        if self.specialize == "none":
            self._build_once(library, features)
        self.bucket_dim = self._bucket_candidate() if self.specialize == "lru" else None
        if self.bucket_dim is not None and check_rows and not self._rows_independent():
            self.bucket_dim = None

    def _build_once(self, library: bytes | None, features: Sequence[str]) -> None:
        """``specialize="none"``: the symbolic build (or an artifact's library of one)."""
        from rqcompile.errors import RQError
        from rqcompile.targets.tvm.device.build import DEVICE_KINDS

        if self.target.kind in DEVICE_KINDS:
            self._no_one_build("device targets build per shape")
            return
        t0 = time.perf_counter()
        try:
            if library is not None:
                from rqcompile.targets.tvm.runtime import compiled_module

                top = specialize(self.symbolic, {d.name: d.max for d in self.shapes.dims})
                one = compiled_module(top, self.target, library, features)
            else:
                from rqcompile.targets.tvm.symbolic import build_symbolic

                one = build_symbolic(self.ir, self.target)
        except RQError as e:
            if library is not None:
                raise
            self._no_one_build(f"the symbolic build failed: {e}")
            return
        self.build_seconds[()] = time.perf_counter() - t0
        one.threads = self._threads
        self.one_build = one
        self.symbolic_fallbacks = tuple(getattr(one, "symbolic_fallbacks", ()))
        self._library, self.features = one._library, one.features  # saved with the IR

    def _no_one_build(self, why: str) -> None:
        print(f"rqcompile: building per shape instead of once ({why})", file=sys.stderr,
              flush=True)  # fmt: skip
        self.specialize = "lru"

    # -- declaration checks ----------------------------------------------------------------

    def _check(self, inputs: tuple[Any, ...]) -> None:
        self._dims(inputs)
        if self.one_build is not None:  # NaN/Inf, token ranges, device (static dims: _dims)
            CompiledModule._check(self, inputs)

    def _dims(self, inputs: Sequence[Any]) -> dict[str, int]:
        """The value of every dim, after checking each input against the declaration."""
        decl, sig = self.shapes, self.signature
        if len(inputs) != len(sig):
            raise InputError(
                f"compiled model takes {len(sig)} input(s) "
                f"{', '.join(f'{n}: {t}' for n, t in zip(decl.inputs, sig, strict=True))}, "
                f"got {len(inputs)}."
            )
        values: dict[str, int] = {}
        for i, (x, t) in enumerate(zip(inputs, sig, strict=True)):
            name = f"input {i} ({decl.inputs[i]})"
            if not isinstance(x, torch.Tensor):
                raise InputError(f"{name}: expected a torch.Tensor {t}, got {type(x).__name__}.")
            want = torch_dtype(t.dtype)
            if x.dtype != want:
                raise InputError(f"{name}: dtype {x.dtype} (expected {want}; use x.to({want})).")
            if x.dim() != len(t.shape):
                raise InputError(
                    f"{name}: rank {x.dim()} (shape {tuple(x.shape)}), expected rank "
                    f"{len(t.shape)} {t}."
                )
            axes = dict(decl.axes[i])
            for a, (d, s) in enumerate(zip(t.shape, x.shape, strict=True)):
                if a in axes:
                    r = decl.dim(axes[a])
                    if not r.min <= s <= r.max:
                        raise InputError(
                            f"{name}: dim {a} ({r.name}) is {s}, outside its declared range "
                            f"[{r.min}, {r.max}]. Lower with a wider torch.export.Dim"
                            f"('{r.name}', min=..., max=...) in dynamic_shapes."
                        )
                    if values.setdefault(r.name, s) != s:
                        raise InputError(
                            f"{name}: dim {a} ({r.name}) is {s}, but another input has "
                            f"{r.name} = {values[r.name]}."
                        )
                elif d != s:
                    raise InputError(
                        f"{name}: dim {a} is {s}, expected {d} (static; the dynamic dims are "
                        f"{self.shapes.describe()})."
                    )
        return values

    # -- running ---------------------------------------------------------------------------

    def _bucket(self, values: Mapping[str, int]) -> dict[str, int]:
        out = dict(values)
        b = self.bucket_dim
        if b is not None:
            r = self.shapes.dim(b)
            out[b] = max(r.min, min(r.max, 1 << (values[b] - 1).bit_length()))
        return out

    def _key(self, values: Mapping[str, int]) -> tuple[int, ...]:
        return tuple(values[d.name] for d in self.shapes.dims)

    def ir_for(self, inputs: Sequence[torch.Tensor]) -> Module:
        """The static IR for these inputs' exact shapes (no bucketing)."""
        return specialize(self.symbolic, self._dims(inputs))

    def executable(self, values: Mapping[str, int]) -> CompiledModule:
        """The static build for these dim values (from the cache, or built now)."""
        key = self._key(values)
        with self._lock:  # thread-safe, as compiled models are; one build at a time
            exe = self._cache.get(key)
            if exe is not None:
                self._cache.move_to_end(key)
                return exe
            return self._build_shape(key, values)

    def _build_shape(self, key: tuple[int, ...], values: Mapping[str, int]) -> CompiledModule:
        shape = ", ".join(f"{k}={v}" for k, v in values.items())
        slow = self.target.kind != "reference"
        if slow:
            print(
                f"rqcompile: building {self.target.kind} kernels for a new shape ({shape}); "
                "later calls with this shape reuse them",
                file=sys.stderr,
                flush=True,
            )
        t0 = time.perf_counter()
        exe = self._build(specialize(self.symbolic, values), self.target)
        exe.threads = self._threads
        self.build_seconds[key] = time.perf_counter() - t0
        if slow:
            print(f"rqcompile: built ({shape}) in {self.build_seconds[key]:.1f} s",
                  file=sys.stderr, flush=True)  # fmt: skip
        self._cache[key] = exe
        while len(self._cache) > max(1, self.cache_size):
            self._cache.popitem(last=False)
        return exe

    def prebuild(self, *shapes: Mapping[str, int]) -> None:
        """Build these dim values now (``exe.prebuild({"batch": 8, "seq": 32})``); with one
        build for every shape (``specialize="none"``) only the values are checked."""
        for values in shapes:
            unknown = set(values) ^ {d.name for d in self.shapes.dims}
            if unknown:
                raise InputError(f"prebuild needs exactly the dims {self.shapes.describe()}.")
            for d in self.shapes.dims:
                if not d.min <= values[d.name] <= d.max:
                    raise InputError(f"prebuild: {d.name}={values[d.name]} is outside {d}.")
            if self.one_build is None:  # the one build already serves every shape
                self.executable(self._bucket(values))

    @property
    def cached_shapes(self) -> list[dict[str, int]]:
        """The dim values built so far, least recently used first."""
        return [dict(zip((d.name for d in self.shapes.dims), k, strict=True)) for k in self._cache]

    def _run(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if self.one_build is not None:  # checked by _check (every call goes through it)
            return self.one_build._runner(*inputs)
        values = self._dims(inputs)
        run = self._bucket(values)
        exe = self.executable(run)
        b = self.bucket_dim
        if b is not None and run[b] != values[b]:
            pad = run[b] - values[b]
            axes = self.shapes.axes
            inputs = tuple(  # copies of the last row: valid ids and masks, like the real ones
                torch.cat([x, x[-1:].expand(pad, *x.shape[1:])]) if (0, b) in axes[i] else x
                for i, x in enumerate(inputs)
            )
            outs = exe._runner(*_checked(exe, inputs))
            return tuple(
                o[: values[b]] if e[0] == b else o
                for o, e in zip(outs, self.symbolic.outputs, strict=True)
            )
        return exe._runner(*_checked(exe, inputs))

    @property
    def threads(self) -> int | None:
        return self._threads

    @threads.setter
    def threads(self, n: int | None) -> None:
        if n is not None and (not isinstance(n, int) or n < 1):
            raise ValueError(f"threads must be a positive int or None, not {n!r}")
        self._threads = n
        for exe in self._cache.values():
            exe.threads = n
        if getattr(self, "one_build", None) is not None:
            self.one_build.threads = n  # type: ignore[union-attr]

    # -- bucketing analysis ----------------------------------------------------------------

    def _bucket_candidate(self) -> str | None:
        """The dim that sits only on axis 0 of inputs, and of outputs exactly or not at all."""
        for d in self.shapes.dims:
            on_inputs = [a for ax in self.shapes.axes for a, n in ax if n == d.name]
            if not on_inputs or any(a != 0 for a in on_inputs):
                continue
            ok = all(
                not any(d.name in e.replace("*", " ").replace("+", " ").split() for e in out)
                or (out and out[0] == d.name
                    and not any(d.name in e.replace("*", " ").split() for e in out[1:]))
                for out in self.symbolic.outputs
            )  # fmt: skip
            if ok:
                return d.name
        return None

    def _rows_independent(self) -> bool:
        """Whether one row's outputs stay the same when another row is added (reference
        target, at the dims' smallest values): the condition for padding the batch."""
        b = self.bucket_dim
        assert b is not None
        r = self.shapes.dim(b)
        if r.max < 2:
            return False
        lo = {d.name: d.min for d in self.shapes.dims}
        ref = Target.parse("reference")
        one = self._build(specialize(self.symbolic, {**lo, b: 1}), ref)
        two = self._build(specialize(self.symbolic, {**lo, b: 2}), ref)
        gen = torch.Generator().manual_seed(0)
        xs1, xs2 = [], []
        for i, t in enumerate(one.signature):
            shape = tuple(int(s) for s in t.shape)  # type: ignore[arg-type]
            row2 = [_sample(one, i, torch_dtype(t.dtype), shape, gen) for _ in range(2)]
            has_b = (0, b) in self.shapes.axes[i]
            xs1.append(row2[0])
            xs2.append(torch.cat(row2) if has_b else row2[0])
        with torch.no_grad():
            o1, o2 = one._runner(*xs1), two._runner(*xs2)
        for y1, y2, e in zip(o1, o2, self.symbolic.outputs, strict=True):
            y2 = y2[:1] if e and e[0] == b else y2
            if y1.shape != y2.shape:
                return False
            if y1.is_floating_point():
                tol = 1e-4 * max(float(y1.abs().max()), 1.0)
                if not bool(((y1 - y2).abs() <= tol).all()):
                    return False
            elif not torch.equal(y1, y2):
                return False
        return True

    # -- reporting and artifacts -----------------------------------------------------------

    def inspect_text(self) -> str:
        from rqcompile.debug.summary import compiled_summary

        built = (
            ", ".join(
                "(" + ", ".join(f"{k}={v}" for k, v in s.items()) + ")" for s in self.cached_shapes
            )
            or "none yet"
        )
        bucket = (
            f"{self.bucket_dim} rounded up to a power of two (padded rows sliced off)"
            if self.bucket_dim
            else "none (every shape built exactly)"
        )
        if self.one_build is not None:
            fb = "; ".join(dict.fromkeys(self.symbolic_fallbacks)) or "none"
            return (
                f"{compiled_summary(self)}\n"
                f"build: one symbolic build for every shape (specialize='none'); "
                f"generic-kernel fallbacks: {fb}"
            )
        return (  # the summary lists the dynamic dims (read off the IR, as for artifacts)
            f"{compiled_summary(self)}\n"
            f"buckets: {bucket}; shapes built: {built} (cache {self.cache_size})"
        )


def _sample(exe: CompiledModule, i: int, dtype: torch.dtype, shape: tuple[int, ...],
            gen: torch.Generator) -> torch.Tensor:  # fmt: skip
    """A random valid input: token ids below the vocabulary, 0/1 masks, normal floats."""
    if dtype.is_floating_point:
        return torch.randn(shape, generator=gen).to(dtype)
    if dtype == torch.bool:
        return torch.rand(shape, generator=gen) < 0.5
    hi = exe._id_ranges.get(i, 2)
    return torch.randint(0, hi, shape, generator=gen, dtype=dtype)


def _checked(exe: CompiledModule, inputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    """The static build's own checks (NaN/Inf, token ranges, device) before its kernels."""
    exe._check(inputs)
    return inputs
