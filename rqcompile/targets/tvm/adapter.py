"""The one door to Apache TVM 0.27: every TVM symbol rqcompile uses is imported here.

Other modules in ``rqcompile/targets/tvm/`` import TVM names from this module, never from
``tvm`` directly, and ``tests/targets/tvm/test_api_surface.py`` imports the same set, so a
TVM upgrade breaks in one obvious place. Facts about 0.27 absorbed here:

* TIR is ``tvm.tirx`` (``tvm.tir`` is gone); schedules are ``tvm.s_tir.Schedule`` with
  blocks from ``get_sblock``; kernels build with ``tvm.compile``.
* Targets with attributes must be JSON dicts: ``Target({"kind": "llvm", "mcpu": "znver3"})``;
  the ``"llvm -mcpu=..."`` string form raises. We always pass a ``tvm.target.Target``.
* ``tvm.nd`` is gone: data moves through ``tvm.runtime.tensor`` or DLPack. Compiled
  functions also accept torch CPU tensors directly (DLPack under the hood).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import tvm
from tvm import relax, runtime, s_tir, te, tirx, topi
from tvm.script import tirx as T
from tvm.script.ir_builder import IRBuilder
from tvm.tirx.script.builder import ir as prim_func_builder  # T.prim_func() as a frame
from tvm.target import Target
from tvm.target import codegen as _codegen

from rqcompile.errors import TargetError
from rqcompile.targets.tvm.cpu_features import LLVM_NAMES, host_features

__all__ = [
    "SYMBOLS",
    "IRBuilder",
    "T",
    "prim_func_builder",
    "Target",
    "build_prim_func",
    "dlight_cpu_reduction",
    "host_llvm_target",
    "llvm_features",
    "llvm_version_major",
    "make_target",
    "relax",
    "runtime",
    "s_tir",
    "target_features",
    "te",
    "tirx",
    "topi",
    "tvm",
    "tvm_version",
]

#: Every ``tvm`` attribute path rqcompile relies on; the API-surface test resolves each one.
SYMBOLS: tuple[str, ...] = (
    # building and running
    "tvm.compile",
    "tvm.cpu",
    "tvm.IRModule",
    "tvm.runtime.tensor",
    "tvm.runtime.from_dlpack",
    "tvm.relax.BlockBuilder",
    "tvm.relax.build",
    "tvm.relax.VirtualMachine",
    "tvm.topi",
    # targets
    "tvm.target.Target",
    "tvm.target.codegen.llvm_get_system_cpu",
    "tvm.target.codegen.llvm_get_cpu_features",
    "tvm.target.codegen.llvm_version_major",
    # TE computes (kernels.py)
    "tvm.te.placeholder",
    "tvm.te.compute",
    "tvm.te.reduce_axis",
    "tvm.te.sum",
    "tvm.te.min",
    "tvm.te.max",
    "tvm.te.create_prim_func",
    "tvm.tirx.PrimFunc",
    "tvm.tirx.IterVar.CommReduce",
    "tvm.tirx.IterVar.DataPar",
    "tvm.tirx.const",
    "tvm.tirx.Select",
    "tvm.tirx.nearbyint",
    "tvm.tirx.popcount",
    "tvm.tirx.abs",
    "tvm.tirx.max",
    "tvm.tirx.min",
    # hand-written x86 micro-kernels (x86/micro.py)
    "tvm.script.ir_builder.IRBuilder",
    "tvm.script.tirx.parallel",
    "tvm.script.tirx.unroll",
    "tvm.script.tirx.decl_buffer",
    "tvm.script.tirx.buffer_store",
    "tvm.te.extern",
    "tvm.tirx.call_llvm_pure_intrin",
    "tvm.tirx.Shuffle",
    "tvm.tirx.Cast",
    # KV-cache kernels (kernels/cache.py): PrimFuncs built directly, updated in place
    "tvm.tirx.script.builder.ir.prim_func",
    "tvm.tirx.script.builder.ir.arg",
    "tvm.tirx.script.builder.ir.buffer",
    "tvm.tirx.script.builder.ir.func_name",
    "tvm.tirx.script.builder.ir.func_attr",
    "tvm.script.tirx.bind",
    "tvm.script.tirx.vectorized",
    "tvm.relax.call_tir_inplace",
    "tvm.relax.BlockBuilder.add_func",
    # schedules (schedules.py)
    "tvm.s_tir.Schedule",
    "tvm.s_tir.Schedule.get",
    "tvm.s_tir.Schedule.get_sblock",
    "tvm.s_tir.Schedule.get_child_blocks",
    "tvm.s_tir.Schedule.get_loops",
    "tvm.s_tir.Schedule.split",
    "tvm.s_tir.Schedule.reorder",
    "tvm.s_tir.Schedule.fuse",
    "tvm.s_tir.Schedule.parallel",
    "tvm.s_tir.Schedule.unroll",
    "tvm.s_tir.Schedule.compute_at",
    "tvm.s_tir.Schedule.compute_inline",
    "tvm.s_tir.Schedule.decompose_reduction",
    # float schedules (schedules/float_code.py)
    "tvm.s_tir.Schedule.cache_write",
    "tvm.s_tir.Schedule.reverse_compute_at",
    "tvm.s_tir.Schedule.reverse_compute_inline",
    "tvm.s_tir.Schedule.get_consumers",
    "tvm.s_tir.Schedule.pad_einsum",
    "tvm.s_tir.Schedule.vectorize",
    "tvm.s_tir.dlight.cpu.Reduction",
    # fast float math (fast_math.py)
    "tvm.topi.fast_erf",
    "tvm.topi.add",
    "tvm.topi.multiply",
    "tvm.relax.PyExprMutator",
    "tvm.relax.expr_functor.mutator",
    "tvm.relax.transform.FastMathTransform",
    "tvm.transform.module_pass",
    # device targets (targets/tvm/device/: GPU schedules, TIR lowering, codegen)
    "tvm.s_tir.Schedule.bind",
    "tvm.s_tir.Schedule.add_unit_loop",
    "tvm.s_tir.Schedule.set_scope",
    "tvm.instrument.pass_instrument",
    "tvm.transform.PassContext",
    "tvm.tirx.transform.BindTarget",
    "tvm.tirx.compilation_pipeline.get_tir_pipeline",
    "tvm.tirx.compilation_pipeline.finalize_device_passes",
    "tvm.tirx.IntImm",
    "tvm.tirx.SeqStmt",
    "tvm.tirx.AllocBuffer",
    "tvm.tirx.DeclBuffer",
    "tvm.tirx.Evaluate",
    "tvm.tirx.AttrStmt",
    "tvm.ir.Call",
    "tvm.ir.Op.get",
    "tvm.relax.Var",
    "tvm.relax.Call",
    "tvm.relax.Tuple",
    "tvm.relax.TupleGetItem",
    "tvm.get_global_func",
    # the C backend's extra intrinsic lowerings (tvm/c_intrinsics.py)
    "tvm.tirx.register_intrin_lowering",
    "tvm.tirx.call_pure_extern",
)


def dlight_cpu_reduction() -> Any:
    """TVM dlight's CPU ``Reduction`` schedule rule (softmax, norms), imported on first use:
    ``tvm.s_tir.dlight`` adds ~0.15 s to the import of every build otherwise."""
    from tvm.s_tir.dlight.cpu import Reduction

    return Reduction()


def tvm_version() -> str:
    """The installed apache-tvm version string."""
    return str(tvm.__version__)


def make_target(target: str | Mapping[str, Any] | Target) -> Target:
    """A ``tvm.target.Target`` from a kind string, a TVM JSON dict, or a Target.

    Strings carrying options (``"llvm -mcpu=x"``) are rejected with the dict to write
    instead, since TVM 0.27 no longer parses them.

    Raises:
        TargetError: on an option string or a target TVM rejects.

    Example:
        >>> str(make_target({"kind": "llvm", "mcpu": "znver3"}).kind)
        'llvm'
    """
    if isinstance(target, Target):
        return target
    if isinstance(target, str):
        if " " in target.strip():
            kind, *opts = target.split()
            hint = {"kind": kind, **{o.lstrip("-").split("=")[0]: o.split("=")[-1] for o in opts}}
            raise TargetError(
                f"target string {target!r} carries options, which TVM 0.27 no longer parses. "
                f"Pass a dict instead, e.g. {hint!r}."
            )
        spec: Any = target
    elif isinstance(target, Mapping):
        spec = dict(target)
    else:
        raise TargetError(f"cannot make a TVM target from {type(target).__name__}: {target!r}")
    try:
        return Target(spec)
    except Exception as e:  # TVM raises its own error types; keep them as the cause
        raise TargetError(f"TVM rejected target {spec!r}: {e}") from e


def target_features(target: str | Mapping[str, Any] | Target) -> frozenset[str]:
    """The rqcompile CPU features (cpuinfo spelling) that LLVM enables for an llvm target.

    Asks LLVM (``llvm_get_cpu_features``) rather than a table, so ``mattr`` and new CPUs are
    handled exactly as the code generator will. Non-LLVM targets have none.
    """
    llvm = llvm_features(target)
    return frozenset(name for name, spelled in LLVM_NAMES.items() if spelled in llvm)


def llvm_features(target: str | Mapping[str, Any] | Target) -> frozenset[str]:
    """Every feature LLVM enables for an llvm target, in LLVM spelling (``"avx512vl"``):
    also those rqcompile does not record in artifacts, which a kernel may still need to
    compile (LLVM aborts the process on an instruction it cannot select)."""
    t = make_target(target)
    if str(t.kind.name) != "llvm":
        return frozenset()
    return frozenset(str(f) for f in _codegen.llvm_get_cpu_features(t))


def llvm_version_major() -> int:
    """The major version of the LLVM TVM was built with (intrinsic signatures change)."""
    return int(_codegen.llvm_version_major())


def host_llvm_target(*, num_cores: int | None = None) -> Target:
    """The LLVM target for this machine: host ``mcpu`` with features the host lacks disabled.

    ``llvm_get_system_cpu`` names the CPU model (e.g. ``"znver3"``), but virtual machines
    often mask instruction sets the model implies (AVX-512 in particular), so every feature
    in :data:`~rqcompile.targets.tvm.cpu_features.FEATURES` that LLVM would enable for that
    model but ``/proc/cpuinfo`` does not list is switched off with ``-feature`` in ``mattr``;
    and every one the host lists that the model lacks is switched on with ``+feature``
    (LLVM names a Sapphire Rapids guest ``rocketlake``, which has no AMX).

    Args:
        num_cores: optional ``num-cores`` attribute (TVM's parallel hint).
    """
    cpu = str(_codegen.llvm_get_system_cpu())
    spec: dict[str, Any] = {"kind": "llvm"}
    if cpu and cpu != "generic":
        spec["mcpu"] = cpu
    host = host_features()
    if host and "mcpu" in spec:
        implied = target_features(spec)
        off, on = sorted(implied - host), sorted(host - implied)
        if off or on:
            spec["mattr"] = [*(f"-{LLVM_NAMES[f]}" for f in off),
                             *(f"+{LLVM_NAMES[f]}" for f in on)]  # fmt: skip
    if num_cores is not None:
        spec["num-cores"] = int(num_cores)
    return make_target(spec)


def build_prim_func(func: Any, target: str | Mapping[str, Any] | Target) -> Any:
    """``tvm.compile`` one PrimFunc or IRModule for ``target``; returns the runtime module."""
    return tvm.compile(func, target=make_target(target))
