"""Phase lists per TVM target kind: everything target-specific about a build lives here.

Where it sits: ``build_tvm`` (``targets/tvm/build.py``) resolves the rq :class:`Target` into a
``tvm.target.Target`` with :func:`tvm_target`, asks :func:`pipeline_for` for the phases and
runs them in order. It knows nothing else about targets. One phase function per kind, as in
TVM's ``relax/backend/<target>/pipeline.py``:

============== ============================== ===========================================
phase          takes → gives                  what
============== ============================== ===========================================
emit           rq ``Module`` → relax IRModule ``emit.emit_module`` (weights are parameters)
lift-params    IRModule → IRModule            weight-only work (packing, transposes) moves
                                              to ``main_transform_params``, run once at load
legalize       IRModule → IRModule            relax ops → TOPI PrimFuncs; fuse float ops
                                              (our kernels are opaque to fusion)
schedule       IRModule → IRModule            ``schedules.schedule_module``
schedule-float IRModule → IRModule            ``schedules.float_code``: tiled matmuls,
                                              vectorized float code
build          IRModule → relax Executable    ``relax.build``: dataflow lowering, memory
                                              planning, VM codegen, TIR → LLVM
============== ============================== ===========================================

``llvm`` and ``c`` use :func:`cpu_phases`; device kinds (``opencl``, ``cuda``, ``metal``) build
through ``rqcompile/targets/tvm/device/`` instead.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from rqcompile.errors import RQError, TargetError
from rqcompile.passes.infra import PassResult
from rqcompile.targets.target import Target as RQTarget
from rqcompile.targets.tvm.adapter import (
    Target,
    host_llvm_target,
    make_target,
    relax,
    target_features,
    tvm,
)
from rqcompile.targets.tvm.cpu_features import amx_permission, host_features
from rqcompile.targets.tvm.emit.module import emit_module
from rqcompile.targets.tvm.kernels.fast_math import FastFloatMath
from rqcompile.targets.tvm.lowering import ir_passes
from rqcompile.targets.tvm.schedules.integer import kernel_features, schedule_module
from rqcompile.targets.tvm.schedules.float_code import FloatScheduleConfig, schedule_float_cpu

__all__ = [
    "Phase",
    "cpu_phases",
    "kernel_features",
    "features_for",
    "legalize_passes",
    "library_suffix",
    "pipeline_for",
    "rq_passes",
    "run_blockers",
    "schedule_float_cpu",
    "tvm_target",
]


@dataclass(frozen=True)
class Phase:
    """One named TVM step of a build, run by the same ``PassManager`` as the rq-IR passes
    (so ``PrintAfter``, ``Timing`` and ``DumpIR`` see it): ``fn(x) -> y``."""

    name: str
    fn: Callable[[Any], Any]

    def run(self, ir: Any, ctx: Any) -> PassResult[Any]:
        try:
            return PassResult(self.fn(ir), True)
        except RQError:
            raise
        except Exception as e:  # TVM's own error types; keep them as the cause
            last = str(e).strip().splitlines()[-1] if str(e).strip() else ""
            raise TargetError(f"TVM build phase {self.name!r} failed: {type(e).__name__}: "
                              f"{last}") from e  # fmt: skip


def _passes(target: Target, passes: Sequence[Any]) -> Callable[[Any], Any]:
    seq = tvm.transform.Sequential(list(passes))

    def run(mod: Any) -> Any:
        with target:
            return seq(mod)

    return run


def legalize_passes() -> list[Any]:
    """relax ops → TOPI PrimFuncs, float code fused; shared with the device targets."""
    return [
        relax.transform.LegalizeOps(),
        relax.transform.AnnotateTIROpPattern(),
        relax.transform.FoldConstant(),
        relax.transform.FuseOps(),
        relax.transform.FuseTIR(),
        relax.transform.DeadCodeElimination(),
    ]


def rq_passes(target: Target) -> list[Any]:
    """The rq-IR passes of a CPU build: ``lowering.ir_passes`` for ``target``'s features
    and float vector width."""
    cfg = FloatScheduleConfig.for_target(target)
    return ir_passes(kernel_features(target), lanes=cfg.lanes if cfg.vectorize else None)


def cpu_phases(target: Target) -> tuple[Phase, ...]:
    """The ``llvm`` (and later ``c``) phases for ``target``.

    First the rq-IR passes (:func:`rq_passes`: fuse-attention, select-kernels,
    fuse-prologue, pack-weights), which record every lowering decision on the IR; then the
    TVM phases. ``legalize`` is TVM's CPU legalization minus library dispatch (we emit no sort/sampling
    ops), after :class:`FastFloatMath` (vectorizable GELU/softmax, ``fast_math.py``).
    ``FuseOps`` fuses only the float code around our kernels: emit marks kernel
    PrimFuncs ``op_pattern = kOpaque``, so they reach ``schedule`` whole and still carry the
    ``rq.kernel`` annotations the schedules look for. ``build`` then runs the rest of TVM's
    CPU pipeline (dataflow lowering and finalization, including static memory planning).
    """
    legalize = [FastFloatMath(), *legalize_passes()]
    lower = tvm.transform.Sequential(
        [
            relax.transform.RewriteDataflowReshape(),
            relax.transform.ToNonDataflow(),
            relax.transform.RemovePurityChecking(),
            relax.transform.CallTIRRewrite(),
            relax.transform.StaticPlanBlockMemory(),
            relax.transform.LowerAllocTensor(),
            relax.transform.KillAfterLastUse(),
            relax.transform.LowerRuntimeBuiltin(),
            relax.transform.ComputePrimValue(),
            relax.transform.VMShapeLower(),
            relax.transform.AttachGlobalSymbol(),
        ]
    )
    return (
        *rq_passes(target),
        Phase("emit", emit_module),
        Phase("lift-params", _passes(target, [relax.transform.LiftTransformParams()])),
        Phase("legalize", _passes(target, legalize)),
        Phase("schedule", lambda mod: schedule_module(mod, target)),
        Phase("schedule-float", lambda mod: schedule_float_cpu(mod, target)),
        Phase("build", lambda mod: relax.build(mod, target=target, relax_pipeline=lower)),
    )


#: ``c`` runs the same phases: TVM's C backend emits C for the host code and kernels, and
#: ``export_library`` compiles it with the host compiler (g++, or $CXX/$CC).
_PHASES: dict[str, Callable[[Target], tuple[Any, ...]]] = {"llvm": cpu_phases, "c": cpu_phases}


def pipeline_for(target: Target) -> tuple[Any, ...]:
    """The phase list for a resolved ``tvm.target.Target`` (see :func:`tvm_target`).

    Raises:
        TargetError: no phases for this kind yet.
    """
    kind = str(target.kind.name)
    if kind not in _PHASES:
        raise TargetError(
            f"no TVM build pipeline for target kind {kind!r}; supported: {sorted(_PHASES)}."
        )
    return _PHASES[kind](target)


# -- targets --------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _host_spec() -> tuple[tuple[str, Any], ...]:
    """``mcpu``/``mattr`` of this machine (cached: the host does not change under us)."""
    exported = host_llvm_target().export()
    return tuple((k, exported[k]) for k in ("mcpu", "mattr") if k in exported)


def _mattr_list(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [v for v in value.split(",") if v]
    return [str(v) for v in value]


def tvm_target(target: RQTarget) -> Target:
    """The ``tvm.target.Target`` to build for an rq ``Target``.

    ``{"kind": "llvm"}`` with neither ``mcpu`` nor ``mtriple`` means *this machine*: its
    ``mcpu`` with the instruction sets it lacks switched off (``adapter.host_llvm_target``),
    with any ``mattr`` the user gave applied after the host's. Otherwise the dict goes to TVM
    as given, so ``mcpu``/``mattr``/``mtriple`` build for another CPU (possibly one this
    machine cannot run; see :func:`run_blockers`).

    Raises:
        TargetError: a kind without a TVM pipeline, or attributes TVM rejects.
    """
    spec = target.to_dict()
    if spec["kind"] not in _PHASES:
        raise TargetError(
            f"target kind {spec['kind']!r} has no TVM build pipeline; supported: {sorted(_PHASES)}."
        )
    if spec["kind"] == "c":
        from rqcompile.targets.tvm import c_intrinsics

        c_intrinsics.register()
    if spec["kind"] == "llvm" and "mcpu" not in spec and "mtriple" not in spec:
        host = dict(_host_spec())
        user_mattr = _mattr_list(spec.pop("mattr", None))
        mattr = _mattr_list(host.pop("mattr", None)) + user_mattr
        spec.update({k: str(v) for k, v in host.items()})
        if mattr:
            spec["mattr"] = mattr
    return make_target(spec)


def features_for(target: Target) -> tuple[str, ...]:
    """The CPU features (``/proc/cpuinfo`` spelling) code built for ``target`` may use.

    Recorded in the artifact; a machine that lacks one refuses to load the kernels.
    """
    return tuple(sorted(target_features(target)))


def _arch(triple: str) -> str:
    return triple.split("-", 1)[0]


def _host_triple() -> str:
    return str(tvm.target.codegen.llvm_get_system_triple())


def library_suffix(target_dict: dict[str, Any]) -> str:
    """``.so`` for a library this machine can link; ``.tar`` of objects for another arch.

    A cross-compiled library can't be linked with the host compiler, so it is stored as the
    tar of object files that ``export_library`` writes; link it on the device.
    """
    triple = str(target_dict.get("mtriple", "") or "")
    return ".tar" if triple and _arch(triple) != _arch(_host_triple()) else ".so"


def run_blockers(target_dict: dict[str, Any], features: Sequence[str]) -> list[str]:
    """Why this machine cannot run code built for ``target_dict`` with ``features`` (empty: it can).

    Args:
        target_dict: the rq target as a dict (``Target.to_dict()``).
        features: the CPU features the code was built for (:func:`features_for`).
    """
    reasons = []
    triple = str(target_dict.get("mtriple", "") or "")
    host = _host_triple()
    if triple and _arch(triple) != _arch(host):
        reasons.append(f"it was built for {triple!r} and this machine is {host!r}")
    missing = sorted(set(features) - host_features())
    if missing:
        reasons.append(f"it uses CPU features this machine lacks: {', '.join(missing)}")
    elif "amx_tile" in features:  # the OS hands out AMX tile state only on request
        refused = amx_permission()
        if refused:
            reasons.append(refused)
    return reasons
