"""Stage functions. Each copies its input and runs a named pipeline; none mutates its input.

``prepare`` (nn.Module → QAT fx graph), ``convert`` (QAT graph → rq IR), ``build`` (rq IR →
compiled model) and ``lower`` (= ``build(convert(...))``, nothing more).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import fx, nn

from rqcompile.capture.trace import capture as capture_graph
from rqcompile.config.qconfig import ConfigLike, as_qconfig
from rqcompile.debug.table import format_table
from rqcompile.ir.verify import verify
from rqcompile.passes.infra import PassContext, PassManager
from rqcompile.pipelines import convert_passes, prepare_passes
from rqcompile.quant.hooks import finalize_for_convert
from rqcompile.translate import translate

__all__ = ["build", "convert", "explain", "export_mlir", "load", "lower", "prepare"]


def _lint(gm: fx.GraphModule) -> None:
    gm.graph.lint()


def prepare(
    model: nn.Module,
    example_inputs: Any,
    config: ConfigLike = "A4W4",
    *,
    leaf_modules: Sequence[type[nn.Module]] = (),
    capture: str = "auto",
    fold_batchnorm: bool = False,
    context: PassContext | None = None,
    **overrides: Any,
) -> fx.GraphModule:
    """Rewrite ``model`` for quantization-aware training. ``model`` is not modified.

    Every ``nn.Linear``, ``nn.Conv1d``/``nn.Conv2d`` and ``F.linear`` with a parameter weight
    becomes quantize → ridge-dequant → matmul (and, with ``quantize_attention=True``, every
    activation × activation matmul). Train the result with any PyTorch loop.

    Args:
        model: the float model, or a ``torch.export.ExportedProgram`` of it.
        example_inputs: a tensor or tuple of tensors for ``forward`` (records shapes).
        config: a preset string (``"A4W4"``, ``"A1W1"``, ``"A4W1+2:4"``, ``"W4"``, ...), an
            ``rq.LayerSpec`` or an ``rq.QConfig``.
        leaf_modules: module types to keep as opaque float calls (fx capture only).
        capture: ``"auto"`` (``torch.fx`` symbolic tracing, falling back to ``torch.export``
            when tracing fails), ``"fx"`` or ``"export"``. See docs/models.md.
        fold_batchnorm: fold every ``BatchNorm`` that follows a conv into that conv's weight
            and bias before quantization (running statistics; the pass ``fold-batchnorm``).
        context: optional ``rq.PassContext`` (instruments such as ``PrintAfter``); default:
            the innermost ``with rq.PassContext(...)`` block.
        **overrides: applied on top of the config: ``estimator="ste"``,
            ``ridge_lambda=0.1``, ``block_size=64`` (``None`` = per-channel),
            ``quantize_attention=True``, ``overrides={"lm_head": None, "re:.*proj": "A8W8"}``.

    Returns:
        A trainable ``torch.fx.GraphModule`` with the same ``state_dict`` keys as ``model``.

    Raises:
        ConfigError: bad preset, option or override. CaptureError: tracing failed.
        NumericsError: a layer's K does not fit the block size, or weights are NaN/Inf.

    Example:
        >>> import torch, rqcompile as rq
        >>> net = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10))
        >>> qat = rq.prepare(net, (torch.randn(4, 64),), "A1W1", overrides={"2": None})
        >>> qat(torch.randn(4, 64)).shape
        torch.Size([4, 10])
    """
    if isinstance(model, fx.GraphModule) and "rq_config" in model.meta:
        raise TypeError(
            "this model is already prepared; call rq.prepare on the original float model, or "
            "rq.lower(qat_model) to compile it."
        )
    if not isinstance(model, (nn.Module, torch.export.ExportedProgram)):
        raise TypeError(
            f"rq.prepare() takes an nn.Module or an ExportedProgram, got {type(model).__name__}."
        )
    cfg = as_qconfig(config, **overrides)
    if not isinstance(example_inputs, tuple):
        example_inputs = (example_inputs,)
    _check_example_inputs(example_inputs)
    was_training = getattr(model, "training", True)
    gm = capture_graph(model, example_inputs, leaf_modules=leaf_modules, method=capture)
    ctx = (context or PassContext.current()).for_stage(config=cfg, example_inputs=example_inputs)
    passes = prepare_passes(fold_batchnorm=fold_batchnorm)
    gm = PassManager(passes, verifier=_lint).run(gm, ctx)
    keys = list(dict.fromkeys(ctx.options.get("layer_keys", [])))
    cfg.check_overrides(keys)
    gm.meta["rq_config"] = cfg
    gm.meta["rq_layer_keys"] = keys
    gm.meta["rq_float_layers"] = dict(ctx.options.get("float_layers", {}))
    gm.meta["rq_notes"] = [*gm.meta.get("rq_capture_notes", []), *ctx.options.get("notes", [])]
    gm.train(was_training)
    return gm


def _check_example_inputs(example_inputs: tuple[Any, ...]) -> None:
    """NaN/Inf in example inputs would poison every shape- and statistics-recording pass."""
    import torch

    from rqcompile.errors import NumericsError

    for i, x in enumerate(example_inputs):
        if isinstance(x, torch.Tensor) and x.is_floating_point() and not torch.isfinite(x).all():
            bad = int((~torch.isfinite(x)).sum())
            raise NumericsError(
                f"example_inputs[{i}] has {bad} NaN/Inf values. prepare() runs the example "
                "inputs through the model; pass a finite batch (e.g. torch.nan_to_num(x) or "
                "real data)."
            )


def _ensure_prepared(obj: Any, verb: str) -> fx.GraphModule:
    if isinstance(obj, fx.GraphModule) and "rq_config" in obj.meta:
        return obj
    if isinstance(obj, nn.Module):
        raise TypeError(
            f"rq.{verb}() takes the graph returned by rq.prepare(), got a plain "
            f"{type(obj).__name__}. Call qat = rq.prepare(model, example_inputs, 'A4W4'), train "
            f"it, then rq.{verb}(qat)."
        )
    raise TypeError(f"rq.{verb}() takes a prepared fx.GraphModule, got {type(obj).__name__}.")


def convert(model: fx.GraphModule, *, example_inputs: Any = None) -> Any:
    """Turn a trained QAT graph into the integer IR (an ``rqcompile.ir.Module``).

    The trained ridge dequantizers are folded into integer weight codes plus per-block
    scale/offset, each layer gets its kernel (XNOR-popcount, 2:4 sparse or integer-affine),
    and activation quantization becomes ``rq.quantize`` ops. Shapes are static: those recorded
    at ``prepare`` unless ``example_inputs`` are given. ``model`` is not modified. The
    translated IR then runs the convert pipeline (``rq.pipelines.describe("convert")``:
    ``fold-constants,eliminate-dead-code``) under the active ``rq.PassContext``.

    Estimators with training state are made final on a copy first: learned ``gdnsq`` widths
    are rounded to an integer in 1..8 (an ``RQWarning`` names each layer where that changes
    the model), and ``pege`` requires its curriculum to have finished.

    Raises:
        UnsupportedOpError: listing every node that has no converter, all at once.
        ConfigError: a ``pege`` curriculum has not reached its last step.
    """
    gm = finalize_for_convert(_ensure_prepared(model, "convert"))  # gdnsq widths, pege check
    if example_inputs is not None and not isinstance(example_inputs, tuple):
        example_inputs = (example_inputs,)
    irm = translate(gm, example_inputs)
    verify(irm)
    ctx = PassContext.current().for_stage(example_inputs=example_inputs)
    return PassManager(convert_passes(), verifier=verify).run(irm, ctx)


def build(module: Any, target: Any = "llvm", *, threads: int | None = None) -> Any:
    """Compile an ``rqcompile.ir.Module`` for ``target`` into a ``CompiledModule``.

    Args:
        module: the result of ``rq.convert``.
        target: ``"reference"`` (pure torch; the oracle), ``"llvm"`` (host CPU via TVM) or a
            dict such as ``{"kind": "llvm", "mcpu": "znver3"}``.
        threads: threads per call of the TVM CPU kernels; ``None`` (the default) follows
            ``torch.get_num_threads()`` at each call (all cores, like torch). The same as
            setting ``exe.threads`` afterwards.

    Raises:
        TargetError: unknown target, or TVM not installed for a TVM target.
    """
    from rqcompile.ir.core import Module as IRModule
    from rqcompile.targets.target import Target

    if isinstance(module, fx.GraphModule):
        raise TypeError(
            "rq.build() takes the IR from rq.convert(qat); use rq.lower(qat, target) "
            "to convert and build in one call."
        )
    if not isinstance(module, IRModule):
        raise TypeError(f"rq.build() takes an rqcompile.ir.Module, got {type(module).__name__}.")
    verify(module)
    tgt = Target.parse(target)
    if tgt.kind == "reference":
        from functools import partial

        from rqcompile.targets.compiled import CompiledModule
        from rqcompile.targets.reference import run_reference

        return CompiledModule(module, tgt, partial(run_reference, module))
    import importlib.util

    from rqcompile.errors import TargetError

    if importlib.util.find_spec("tvm") is None:
        raise TargetError(
            f"target {tgt.kind!r} needs Apache TVM, which is not installed. Install it with "
            "pip install 'rqcompile[tvm]' (package apache-tvm, not tvm), or use "
            "target='reference'."
        )
    from rqcompile.targets.tvm.device.build import DEVICE_KINDS

    if tgt.kind in DEVICE_KINDS:
        from rqcompile.targets.tvm.device.build import build_device

        return build_device(module, tgt)
    from rqcompile.targets.tvm.build import build_tvm

    exe = build_tvm(module, tgt)
    exe.threads = threads
    return exe


def lower(model: fx.GraphModule, target: Any = "llvm", *, example_inputs: Any = None) -> Any:
    """``build(convert(model, example_inputs=...), target)``: QAT graph → compiled model.

    Example:
        >>> import torch, rqcompile as rq
        >>> qat = rq.prepare(torch.nn.Linear(64, 8), (torch.randn(2, 64),), "A4W4")
        >>> exe = rq.lower(qat, target="reference")
        >>> exe(torch.randn(2, 64)).shape
        torch.Size([2, 8])
    """
    _ensure_prepared(model, "lower")
    return build(convert(model, example_inputs=example_inputs), target)


def load(path: str | os.PathLike[str], *, trust_kernels: bool = True) -> CompiledModule:
    """Load an artifact written by ``CompiledModule.save``.

    Raises:
        ArtifactError: missing, corrupt, truncated, tampered or from another format version,
            or built for CPU features this machine lacks.
    """
    from rqcompile.targets.compiled import read_artifact
    from rqcompile.targets.target import Target
    from rqcompile.targets.tvm.device.build import DEVICE_KINDS

    manifest, ir, members = read_artifact(path)
    target = Target.parse(manifest["target"])

    if target.kind in DEVICE_KINDS and trust_kernels:
        from rqcompile.targets.tvm.device.build import load_device

        return load_device(ir, target, members)
    if target.kind == "reference" or "kernels.so" not in members or not trust_kernels:
        return build(ir, target)
    from rqcompile.targets.tvm.runtime import load_library

    return load_library(ir, target, members["kernels.so"], manifest.get("features", []))


def explain(obj: Any, config: Any = None, *, example_inputs: tuple[Any, ...] | None = None) -> str:
    """Per layer: key, kind, the rule that chose its spec, and the spec.

    ``obj`` is a prepared graph, or a plain model with ``config`` and ``example_inputs``.
    """
    if not isinstance(obj, fx.GraphModule) or "rq_config" not in obj.meta:
        if config is None or example_inputs is None:
            raise TypeError(
                "explain(model, config, example_inputs=...) needs both for a plain model."
            )
        obj = prepare(obj, example_inputs, config)
    cfg = obj.meta["rq_config"]
    rows = []
    for key in obj.meta.get("rq_layer_keys", []):
        spec, rule = cfg.resolve(key)
        why = obj.meta.get("rq_float_layers", {}).get(key)
        rows.append(
            [
                key,
                rule,
                "float" if spec is None or why else (spec.preset or "custom"),
                why or (spec.short() if spec else ""),
            ]
        )
    return format_table(["layer", "rule", "format", "details"], rows)


def export_mlir(model: Any, example_inputs: Any = None) -> str:
    """MLIR text (upstream dialects, integer kernels spelled out) of a QAT graph from
    ``rq.prepare`` (converted here), an IR module from ``rq.convert`` or a compiled model.
    See ``rqcompile.targets.mlir.export.export_mlir`` and docs/mlir.md.

    Example:
        >>> import torch, rqcompile as rq
        >>> qat = rq.prepare(torch.nn.Linear(64, 8), (torch.randn(2, 64),), "A4W4")
        >>> text = rq.export_mlir(qat)
        >>> print(text[text.index("func.func @main"):].splitlines()[0])
        func.func @main(%arg0: tensor<2x64xf32>) -> tensor<2x8xf32> {
    """
    from rqcompile.targets.mlir.export import export_mlir as export_ir

    if isinstance(model, fx.GraphModule):
        return export_ir(convert(model, example_inputs=example_inputs))
    return export_ir(model, example_inputs)
