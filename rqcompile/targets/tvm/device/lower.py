"""Scheduled PrimFuncs → device kernels + a host-free launch plan per function.

Where it sits: ``device/build.py`` calls :func:`lower_funcs` with the scheduled PrimFuncs of
a model. TVM's own TIR pipeline lowers them; we stop it right after ``SplitHostDevice``
(a pass instrument captures the module there). At that point each function is

* a set of **device kernels** (``calling_conv == 2``), which ``codegen.py`` turns into
  CUDA / OpenCL / Metal source, and
* a small **host function** that only allocates global temporaries and calls kernels
  (``tirx.call_ffi_kernel(name, *args, *launch_extents)``).

The PyPI TVM wheel has no CUDA or OpenCL runtime to run that host function, so we read it
instead (:func:`_read_host`) into a :class:`FuncPlan`, a JSON-able list of launches that
``launcher.py`` replays through any driver. Anything the reader does not understand is a
``TargetError`` naming the construct, never a silent miscompile.
"""

from __future__ import annotations

from typing import Any

from rqcompile.errors import TargetError
from rqcompile.targets.tvm.device.plan import Arg, FuncPlan, Launch
from rqcompile.targets.tvm.adapter import tvm

__all__ = ["lower_funcs"]

_DEVICE_CONV = 2  # CallingConv::kDeviceKernelLaunch
_AXES = ("x", "y", "z")


def _capture_split(mod: Any) -> Any:
    """Run TVM's default TIR pipeline and return the module right after SplitHostDevice."""
    captured: dict[str, Any] = {}

    @tvm.instrument.pass_instrument
    class _Capture:
        def run_after_pass(self, m: Any, info: Any) -> None:
            if info.name == "tirx.SplitHostDevice":
                captured["mod"] = m

    pipeline, _, _ = tvm.tirx.compilation_pipeline.get_tir_pipeline("default")
    with tvm.transform.PassContext(opt_level=3, instruments=[_Capture()]):
        pipeline(mod)
    if "mod" not in captured:  # pragma: no cover - a TVM change renamed the pass
        raise TargetError("TVM's TIR pipeline ran no SplitHostDevice pass; upgrade rqcompile.")
    return captured["mod"]


def _int(e: Any, where: str) -> int:
    if isinstance(e, tvm.tirx.IntImm):
        return int(e.value)
    raise TargetError(f"{where}: launch extent {e} is not a constant (static shapes only).")


def _stmts(s: Any) -> list[Any]:
    return list(s.seq) if isinstance(s, tvm.tirx.SeqStmt) else [s]


def _read_host(name: str, host: Any, kernels: dict[str, Any]) -> FuncPlan:
    """The launches of host function ``host``; see the module docstring."""
    env: dict[Any, Arg] = {}
    params: list[str] = []
    for i, p in enumerate(host.params):
        ty = p.ty
        params.append("buffer" if type(ty).__name__ == "BufferType" else str(ty))
        env[p] = Arg("param", i)
    temps: list[tuple[str, int]] = []
    launches: list[Launch] = []

    def buf(v: Any) -> Arg:
        for key, arg in env.items():
            if key.same_as(v):
                return arg
        raise TargetError(f"{name}: kernel argument {v} is not a parameter or temporary.")

    def visit(s: Any) -> None:
        if isinstance(s, tvm.tirx.SeqStmt):
            for x in s.seq:
                visit(x)
        elif isinstance(s, tvm.tirx.AllocBuffer):
            b = s.buffer
            n = 1
            for d in b.shape:
                n *= _int(d, name)
            env[b] = Arg("temp", len(temps))
            temps.append((str(b.dtype), n))
        elif isinstance(s, tvm.tirx.DeclBuffer):
            if s.buffer.elem_offset is not None and not (
                isinstance(s.buffer.elem_offset, tvm.tirx.IntImm)
                and int(s.buffer.elem_offset) == 0
            ):
                raise TargetError(f"{name}: buffer view at an offset is not supported.")
            env[s.buffer] = buf(s.data.args[0])
        elif isinstance(s, tvm.tirx.Evaluate) and _is_launch(s.value):
            launches.append(_launch(name, s.value, kernels, buf))
        elif isinstance(s, tvm.tirx.AttrStmt):
            visit(s.body)
        else:
            raise TargetError(
                f"{name}: the device lowering met host code it cannot replay "
                f"({type(s).__name__}). Report this with the model; build with target='llvm'."
            )

    visit(host.body)
    return FuncPlan(tuple(params), tuple(temps), tuple(launches))


def _is_launch(call: Any) -> bool:
    return isinstance(call, tvm.ir.Call) and str(call.op.name) == "tirx.call_ffi_kernel"


def _launch(name: str, call: Any, kernels: dict[str, Any], buf: Any) -> Launch:
    kname = str(call.args[0].value)
    kfunc = kernels[kname]
    nparams = len(kfunc.params)
    args: list[Arg] = []
    for a, p in zip(call.args[1 : 1 + nparams], kfunc.params, strict=True):
        if isinstance(a, tvm.ir.Call) and str(a.op.name) == "tirx.buffer_data":
            args.append(buf(a.args[0]))
        elif isinstance(a, tvm.tirx.IntImm):
            args.append(Arg("imm", dtype=str(p.dtype), value=int(a.value)))
        elif isinstance(a, tvm.tirx.Var):
            args.append(buf(a))
        else:
            raise TargetError(f"{name}: kernel {kname} argument {a} is not supported.")
    grid, block = [1, 1, 1], [1, 1, 1]
    tags = [str(t) for t in call.attrs.launch_params]
    for tag, e in zip(tags, call.args[1 + nparams :], strict=True):
        if tag.startswith("blockIdx."):
            grid[_AXES.index(tag[-1])] = _int(e, name)
        elif tag.startswith("threadIdx."):
            block[_AXES.index(tag[-1])] = _int(e, name)
        else:
            raise TargetError(f"{name}: kernel {kname} needs launch parameter {tag!r}.")
    return Launch(kname, tuple(args), tuple(grid), tuple(block))  # type: ignore[arg-type]


def lower_funcs(funcs: dict[str, Any], target: Any) -> tuple[Any, dict[str, FuncPlan]]:
    """Lower scheduled PrimFuncs for a device ``target`` (a ``tvm.target.Target``).

    Args:
        funcs: name → scheduled PrimFunc (every root block bound to threads).
        target: the device target, e.g. ``Target({"kind": "opencl"})``.

    Returns:
        ``(device_mod, plans)``: the device kernels (finalized, ready for
        ``target.build.<kind>``) and, per function name, its :class:`FuncPlan`.
    """
    mod = tvm.IRModule({n: f.with_attr("global_symbol", n) for n, f in funcs.items()})
    mod = tvm.tirx.transform.BindTarget(target.with_host("llvm"))(mod)
    split = _capture_split(mod)
    kernels = {
        gv.name_hint: f
        for gv, f in split.functions.items()
        if f.attrs is not None and int(f.attrs.get("calling_conv", 0)) == _DEVICE_CONV
    }
    plans = {n: _read_host(n, split[n], kernels) for n in funcs}
    device = tvm.IRModule({n: f for n, f in kernels.items()}, attrs=split.attrs)
    with tvm.transform.PassContext(opt_level=3):
        device = tvm.tirx.compilation_pipeline.finalize_device_passes()(device)
    return device, plans
