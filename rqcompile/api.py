"""Stage functions. Each copies its input and runs a named pipeline; none mutates its input.

``prepare`` (nn.Module → QAT fx graph), ``convert`` (QAT graph → rq IR), ``build`` (rq IR →
compiled model) and ``lower`` (= ``build(convert(...))``, nothing more).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import fx, nn

from rqcompile.capture.trace import capture as capture_graph
from rqcompile.config.qconfig import ConfigLike, QConfig, as_qconfig
from rqcompile.config.spec import LayerSpec
from rqcompile.debug.table import format_table
from rqcompile.errors import ConfigError, RQError, UsageError
from rqcompile.ir.verify import verify
from rqcompile.passes.infra import PassContext, PassManager
from rqcompile.pipelines import convert_passes, prepare_passes
from rqcompile.prepare_checks import check_graph, check_model, float32_for_convert
from rqcompile.quant.hooks import finalize_for_convert
import rqcompile.translate as translation
import rqcompile.translate.dynamic as dyn

if TYPE_CHECKING:  # the return annotation of load; imported lazily at run time
    from rqcompile.targets.compiled import CompiledModule

__all__ = [
    "build",
    "convert",
    "explain",
    "export_mlir",
    "generate",
    "load",
    "lower",
    "prepare",
]


def _lint(gm: fx.GraphModule) -> None:
    gm.graph.lint()


def prepare(
    model: nn.Module,
    example_inputs: Any = None,
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
        example_inputs: a tensor or tuple of tensors for ``forward`` (records shapes), or
            ``None`` (``rq.prepare(model)``, ``rq.prepare(model, "A1W1")``): the model is
            traced with torch.fx alone and its input shapes are recorded at the first
            forward (``rq.inspect`` says so until then); ``rq.lower`` then uses them. Only
            ``quantize_attention=True`` and torch.export capture need them up front.
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
            ``grid="minmax"`` (both operands; ``None`` = each format's default),
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
        raise UsageError(
            "this model is already prepared; call rq.prepare on the original float model, or "
            "rq.lower(qat_model) to compile it."
        )
    if not isinstance(model, (nn.Module, torch.export.ExportedProgram)):
        raise UsageError(
            f"rq.prepare() takes an nn.Module or an ExportedProgram, got {type(model).__name__}."
        )
    if isinstance(example_inputs, (str, LayerSpec, QConfig)):  # rq.prepare(model, "A1W1")
        example_inputs, config = None, example_inputs
    cfg = as_qconfig(config, **overrides)
    if example_inputs is not None:
        if not isinstance(example_inputs, tuple):
            example_inputs = (example_inputs,)
        _check_example_inputs(example_inputs)
    check_model(model)  # rqcompile/prepare_checks.py: dtypes, nested prepared models
    was_training = getattr(model, "training", True)
    gm = capture_graph(model, example_inputs, leaf_modules=leaf_modules, method=capture)
    ctx = (context or PassContext.current()).for_stage(config=cfg, example_inputs=example_inputs)
    passes = prepare_passes(fold_batchnorm=fold_batchnorm)
    gm = PassManager(passes, verifier=_lint).run(gm, ctx)
    check_graph(gm)  # rqcompile/prepare_checks.py: what convert would refuse, up front
    keys = list(dict.fromkeys(ctx.options.get("layer_keys", [])))
    cfg.check_overrides(keys)
    gm.meta["rq_config"] = cfg
    gm.meta["rq_layer_keys"] = keys
    gm.meta["rq_float_layers"] = dict(ctx.options.get("float_layers", {}))
    gm.meta["rq_notes"] = [*gm.meta.get("rq_capture_notes", []), *ctx.options.get("notes", [])]
    if example_inputs is not None:
        gm.meta["rq_input_shapes"] = input_signature(example_inputs)
    gm.register_forward_pre_hook(record_input_shapes)
    gm.train(was_training)
    return gm


def input_signature(inputs: tuple[Any, ...]) -> tuple[tuple[tuple[int, ...], torch.dtype], ...]:
    """``((shape, dtype), ...)`` of the tensor inputs."""
    return tuple((tuple(x.shape), x.dtype) for x in inputs if isinstance(x, torch.Tensor))


def record_input_shapes(gm: nn.Module, args: tuple[Any, ...]) -> None:
    """Forward pre-hook of a prepared graph: the first call's input shapes and dtypes go to
    ``gm.meta["rq_input_shapes"]``, which ``convert`` uses when given no example inputs."""
    meta = getattr(gm, "meta", None)
    if meta is not None and "rq_input_shapes" not in meta:
        meta["rq_input_shapes"] = input_signature(args)


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
        raise UsageError(
            f"rq.{verb}() takes the graph returned by rq.prepare(), got a plain "
            f"{type(obj).__name__}. Call qat = rq.prepare(model, example_inputs, 'A4W4'), train "
            f"it, then rq.{verb}(qat)."
        )
    raise UsageError(f"rq.{verb}() takes a prepared fx.GraphModule, got {type(obj).__name__}.")


def _needs_shapes(gm: fx.GraphModule) -> bool:
    return any(n.op == "placeholder" and "tensor_meta" not in n.meta for n in gm.graph.nodes)


def convert(
    model: fx.GraphModule,
    *,
    example_inputs: Any = None,
    dynamic_shapes: Any = None,
    dynamic: bool = False,
) -> Any:
    """Turn a trained QAT graph into the integer IR (an ``rqcompile.ir.Module``).

    The trained ridge dequantizers are folded into integer weight codes plus per-block
    scale/offset, each layer gets its kernel (XNOR-popcount, 2:4 sparse or integer-affine),
    and activation quantization becomes ``rq.quantize`` ops. Shapes are static: those recorded
    at ``prepare`` unless ``example_inputs`` are given. ``model`` is not modified. The
    translated IR then runs the convert pipeline (``rq.pipelines.describe("convert")``:
    ``fold-constants,eliminate-dead-code``) under the active ``rq.PassContext``.

    With ``dynamic_shapes`` or ``dynamic=True`` (as for :func:`lower`) the result is the
    symbolic IR: dynamic dims print ``?``, ``main`` declares them with their ranges as
    attributes, and ``rq.build`` turns it into a ``DynamicModule``
    (``rqcompile/translate/dynamic.py``).

    Estimators with training state are made final on a copy first: learned ``gdnsq`` widths
    are rounded to an integer in 1..8 (an ``RQWarning`` names each layer where that changes
    the model), and ``pege`` requires its curriculum to have finished.

    Raises:
        UnsupportedOpError: listing every node that has no converter, all at once.
        ConfigError: a ``pege`` curriculum has not reached its last step.
    """
    if dynamic_shapes is not None or dynamic:
        _ensure_prepared(model, "convert")
        return _convert_dynamic(model, example_inputs, dynamic_shapes, dynamic)
    gm = finalize_for_convert(_ensure_prepared(model, "convert"))  # gdnsq widths, pege check
    if example_inputs is not None and not isinstance(example_inputs, tuple):
        example_inputs = (example_inputs,)
    if example_inputs is None and _needs_shapes(gm):
        seen = model.meta.get("rq_input_shapes")
        if not seen:
            raise ConfigError(
                "rq.convert/rq.lower needs input shapes: this model was prepared without "
                "example inputs and has not run forward yet. Fix: train it (or call it once "
                "on a batch), or pass example_inputs=(x,)."
            )
        # stand-ins of the shapes seen in training: zeros (valid token ids too)
        example_inputs = tuple(torch.zeros(shape, dtype=dtype) for shape, dtype in seen)
    gm, example_inputs = float32_for_convert(gm, example_inputs)  # prepare_checks.py
    irm = translation.translate(gm, example_inputs)
    verify(irm)
    ctx = PassContext.current().for_stage(example_inputs=example_inputs)
    return PassManager(convert_passes(), verifier=verify).run(irm, ctx)


def _convert_dynamic(qat: Any, example_inputs: Any, dynamic_shapes: Any, dynamic: bool) -> Any:
    """``rq.convert(..., dynamic_shapes=... | dynamic=True)``: the symbolic module (or the
    static one when the declaration makes nothing dynamic)."""
    names = [str(n.target) for n in qat.graph.nodes if n.op == "placeholder"]
    if example_inputs is not None:
        xs = example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)
        seen = input_signature(xs)
    else:
        seen = qat.meta.get("rq_input_shapes")
        if not seen:
            raise ConfigError(
                "a dynamic rq.convert/rq.lower needs the input shapes: this model was prepared "
                "without example inputs and has not run forward yet. Train it (or call it once "
                "on a batch), or pass example_inputs=(x,)."
            )
    if len(seen) != len(names):
        raise ConfigError(f"the model takes inputs {names}, but {len(seen)} shapes are known.")
    decl = dyn.parse_dynamic_shapes(dynamic_shapes, names, seen, dynamic=dynamic)
    if decl is None:  # nothing is dynamic (e.g. every declared min == max)
        return convert(qat, example_inputs=example_inputs)

    def convert_at(values: Any) -> Any:
        xs = []
        for (shape, dtype), axes in zip(seen, decl.axes, strict=True):
            shape = list(shape)
            for a, name in axes:
                shape[a] = values[name]
            xs.append(torch.zeros(shape, dtype=dtype))
        try:
            return convert(qat, example_inputs=tuple(xs))
        except RQError:  # typed already (an unsupported op is one at every shape)
            raise
        except Exception as e:  # e.g. a shape the model's own code rejects
            cause = _root_cause(e)
            raise ConfigError(
                f"cannot convert this model at {', '.join(f'{k}={v}' for k, v in values.items())}"
                f" (a shape inside the declared ranges {decl.describe()}): "
                f"{type(cause).__name__}: {str(cause)[:400]}{dyn.export_hint(qat)}"
            ) from e

    return dyn.symbolic_convert(convert_at, decl)


def _root_cause(e: BaseException) -> BaseException:
    """The first rqcompile error in ``e``'s chain (what the QAT model raised inside
    ``ShapeProp``), else the innermost exception."""
    seen: list[BaseException] = []
    while e is not None and e not in seen:
        seen.append(e)
        e = e.__cause__ or e.__context__  # type: ignore[assignment]
    return next((x for x in seen if isinstance(x, RQError)), seen[-1])


def build(
    module: Any, target: Any = "llvm", *, threads: int | None = None,
    specialize: str | None = None,
) -> Any:  # fmt: skip
    """Compile an ``rqcompile.ir.Module`` for ``target`` into a ``CompiledModule``.

    Args:
        module: the result of ``rq.convert``.
        target: ``"reference"`` (pure torch; the oracle), ``"llvm"`` (host CPU via TVM) or a
            dict such as ``{"kind": "llvm", "mcpu": "znver3"}``.
        threads: threads per call of the TVM CPU kernels; ``None`` (the default) follows
            ``torch.get_num_threads()`` at each call (all cores, like torch). The same as
            setting ``exe.threads`` afterwards.
        specialize: for a symbolic module (dynamic dims), ``"none"`` (one build for every
            shape) or ``"lru"`` (a build per shape); see :func:`lower`.

    Raises:
        TargetError: unknown target, or TVM not installed for a TVM target.
    """
    from rqcompile.ir.core import Module as IRModule
    from rqcompile.targets.target import Target

    if isinstance(module, fx.GraphModule):
        raise UsageError(
            "rq.build() takes the IR from rq.convert(qat); use rq.lower(qat, target) "
            "to convert and build in one call."
        )
    if not isinstance(module, IRModule):
        raise UsageError(f"rq.build() takes an rqcompile.ir.Module, got {type(module).__name__}.")
    tgt = Target.parse(target)
    if dyn.is_symbolic(module):  # dynamic dims: a DynamicModule, built per shape on first use
        from rqcompile.targets.dynamic import DynamicModule, check_emitters

        if tgt.kind != "reference":  # what every shape's build would refuse, refused now
            _require_tvm(tgt.kind)
            check_emitters(module, tgt)
        from rqcompile.targets.dynamic import DEFAULT_SPECIALIZE

        exe = DynamicModule(module, tgt, build, specialize=specialize or DEFAULT_SPECIALIZE)
        exe.threads = threads
        return exe
    if specialize is not None:
        raise UsageError("specialize= applies to a module with dynamic dims (rq.convert(..., "
                         "dynamic_shapes=...)); this one is static.")  # fmt: skip
    verify(module)
    if tgt.kind == "reference":
        from functools import partial

        from rqcompile.targets.compiled import CompiledModule
        from rqcompile.targets.reference import run_reference

        from rqcompile.passes.ir.kv_cache import generation_funcs

        gen = None
        if generation_funcs(module):  # kv-cache functions: exe.generate
            gen = (
                partial(run_reference, module, func="prefill"),
                partial(run_reference, module, func="decode"),
            )
        return CompiledModule(module, tgt, partial(run_reference, module), generation=gen)
    _require_tvm(tgt.kind)
    from rqcompile.targets.tvm.device.build import DEVICE_KINDS

    if tgt.kind in DEVICE_KINDS:
        from rqcompile.targets.tvm.device.build import build_device

        return build_device(module, tgt)
    from rqcompile.targets.tvm.build import build_tvm

    exe = build_tvm(module, tgt)
    exe.threads = threads
    return exe


def _require_tvm(kind: str) -> None:
    import importlib.util

    from rqcompile.errors import TargetError

    if importlib.util.find_spec("tvm") is None:
        raise TargetError(
            f"target {kind!r} needs Apache TVM, which is not installed. Install it with "
            "pip install 'rqcompile[tvm]' (package apache-tvm, not tvm), or use "
            "target='reference'."
        )


def lower(
    model: fx.GraphModule,
    target: Any = "llvm",
    *,
    example_inputs: Any = None,
    generate: bool = False,
    dynamic_shapes: Any = None,
    dynamic: bool = False,
    specialize: str | None = None,
) -> Any:
    """``build(convert(model, example_inputs=...), target)``: QAT graph → compiled model.

    ``generate=True`` (decoder language models taking token ids ``(B, T)``) also runs the
    ``kv-cache`` pass, which adds ``prefill`` and ``decode`` functions to the IR, so
    ``exe.generate(ids, max_new_tokens)`` generates with a KV cache. ``T`` (the example
    input's length) is the longest context it handles, prompt plus new tokens; the batch is
    the example input's. It builds three functions instead of one (llvm: three libraries).
    A model the pass cannot handle raises ``UnsupportedOpError`` naming the op and why.

    With ``dynamic_shapes`` (torch.export's spelling: ``{"x": {0: torch.export.Dim("batch",
    min=1, max=64)}}``, or a tuple with one entry per positional input) or ``dynamic=True``
    (batch on axis 0 up to ``rqcompile.translate.dynamic.DEFAULT_MAX_BATCH``, and for integer token
    inputs the sequence on axis 1 up to the length seen at conversion), the result is a
    ``DynamicModule``: the symbolic IR (``?`` dims), specialized and built per shape on first
    use and cached (``rqcompile/targets/dynamic.py``; costs in docs/models.md).

    ``specialize`` picks how a dynamic model is built: ``"lru"`` (the default) builds each
    shape on its first call, with every static fast path; ``"none"`` builds once, at
    ``rq.lower``, one module for every shape in the declared ranges
    (``rqcompile/targets/tvm/symbolic.py``), with no build at later calls and an artifact
    that stores its kernels. Per-shape stays the default: on the demo char transformer
    the one build's steady state measured 1.14-1.28x the static build's from 256 tokens
    up, but 1.3-1.9x at 1 to 32 tokens, where a fixed ~20 us of relax VM shape bookkeeping
    per call weighs on 30-60 us of kernels (benchmarks/results/dynamic_one_build.md,
    docs/models.md). Choose ``"none"`` when
    shapes are many and build time matters more.

    Example:
        >>> import torch, rqcompile as rq
        >>> qat = rq.prepare(torch.nn.Linear(64, 8), (torch.randn(2, 64),), "A4W4")
        >>> exe = rq.lower(qat, target="reference")
        >>> exe(torch.randn(2, 64)).shape
        torch.Size([2, 8])
    """
    _ensure_prepared(model, "lower")
    if not isinstance(generate, bool):
        raise UsageError(f"generate must be True or False, got {generate!r}.")
    if specialize is not None and not (dynamic or dynamic_shapes is not None):
        raise UsageError("specialize= applies to dynamic shapes; give dynamic_shapes= or "
                         "dynamic=True as well.")  # fmt: skip
    if generate and (dynamic or dynamic_shapes is not None):
        raise UsageError(
            "generate=True builds a KV cache for one batch and context length, so it cannot be "
            "combined with dynamic shapes yet. Lower twice: rq.lower(qat, target, "
            "generate=True) for generation and rq.lower(qat, target, dynamic=True) for scoring."
        )
    ir = convert(model, example_inputs=example_inputs, dynamic_shapes=dynamic_shapes,
                 dynamic=dynamic)  # fmt: skip
    if generate:
        from rqcompile.passes.ir.kv_cache import KVCache

        ctx = PassContext.current().for_stage()
        ir = PassManager([KVCache()], verifier=verify).run(ir, ctx)
    if specialize is not None:
        return build(ir, target, specialize=specialize)
    return build(ir, target)


def generate(
    model: Any,
    ids: torch.Tensor,
    max_new_tokens: int,
    temperature: float = 0.0,
    top_k: int | None = None,
    seed: int | None = None,
    *,
    lengths: Any = None,
    attention_mask: Any = None,
) -> torch.Tensor:
    """Generate with a QAT model (or any causal LM returning logits): the oracle of
    ``exe.generate``.

    A plain loop without a cache: for every new token it re-runs ``model`` on the whole
    growing prefix ``(B, L + i)`` and samples from the logits at the last position, with the
    same sampling rule as ``exe.generate`` (greedy, the first maximum, when ``temperature``
    is 0; else ``softmax(logits / temperature)`` over the ``top_k`` largest, drawn with a
    generator seeded by ``seed``). So the model must accept prefixes shorter than its example
    input, as fx-captured models whose shapes come from ``x.size()`` do. Outputs that are
    tuples use their first element; Hugging Face outputs their ``.logits``. Runs under
    ``torch.no_grad()``; call ``model.eval()`` first.

    A graph captured at one fixed length (``torch.export``, e.g. Hugging Face models) cannot
    take a shorter prefix: it is re-run on the prefix padded at the end to its captured length
    ``T`` and the logits read at the last real position (exact for a causal model).
    ``lengths`` (``(B,)`` ints) or a right-padded ``attention_mask`` (``(B, L)``, as for
    ``exe.generate``): a ragged batch, row ``b``'s prompt is ``ids[b, :lengths[b]]``, and its
    new tokens follow at its own positions; the model is then run on the batch padded at the
    end to its example input's length.

    Example:
        >>> import torch, rqcompile as rq
        >>> from rqcompile.demo.models import CharTransformer
        >>> qat = rq.prepare(CharTransformer(65, n_layer=1, block_size=16),
        ...                  (torch.zeros(1, 16, dtype=torch.long),), "A8W8").eval()
        >>> rq.generate(qat, torch.tensor([[1, 2, 3]]), 5).shape
        torch.Size([1, 8])
    """
    from rqcompile.targets.generate import generate_qat

    if not isinstance(ids, torch.Tensor) or ids.dtype not in (torch.int64, torch.int32):
        raise UsageError("rq.generate takes token ids as an integer torch.Tensor (B, L).")

    pad_to = None
    meta = getattr(model, "meta", None) or {}
    shapes = meta.get("rq_input_shapes")
    ragged = lengths is not None or attention_mask is not None
    if shapes and (meta.get("rq_capture") == "export" or ragged):
        pad_to = int(shapes[0][0][-1])
    elif ragged and isinstance(max_new_tokens, int):  # a model that takes any length
        pad_to = int(ids.shape[-1]) + max_new_tokens
    lens = None
    if ragged:
        from rqcompile.targets.generate import prompt_lengths

        lens = prompt_lengths(ids if ids.dim() == 2 else ids.unsqueeze(0), lengths, attention_mask)
    return generate_qat(
        model, ids, max_new_tokens, temperature, top_k, seed,
        pad_to=pad_to, lengths=lens,
    )  # fmt: skip


def load(path: str | os.PathLike[str], *, trust_kernels: bool = True) -> CompiledModule:
    """Load an artifact written by ``CompiledModule.save``.

    Raises:
        ArtifactError: missing, corrupt, truncated, tampered or from another format version,
            built for CPU features this machine lacks, or kernels not built from this IR.
    """
    from rqcompile.errors import ArtifactError
    from rqcompile.targets.binding import check_binding
    from rqcompile.targets.compiled import read_artifact
    from rqcompile.targets.target import Target
    from rqcompile.targets.tvm.device.build import DEVICE_KINDS

    if not isinstance(trust_kernels, bool):
        raise ArtifactError(f"trust_kernels must be True or False, got {trust_kernels!r}.")
    manifest, ir, members = read_artifact(path)
    target = Target.parse(manifest["target"])
    if dyn.is_symbolic(ir):  # dynamic dims: the one symbolic build's kernels, or per shape
        if "kernels.so" in members and trust_kernels and target.kind not in DEVICE_KINDS:
            from rqcompile.targets.dynamic import DynamicModule

            features = manifest.get("features", [])
            where = os.fsdecode(path) if isinstance(path, bytes) else str(path)
            lib = check_binding(where, members["kernels.so"], ir, target, features)
            return DynamicModule(ir, target, build, specialize="none", library=lib,
                                 features=features)  # fmt: skip
        if "kernels.so" in members:  # saved from one build: rebuild it the same way
            return build(ir, target, specialize="none")
        return build(ir, target)
    if target.kind in DEVICE_KINDS and trust_kernels:
        from rqcompile.targets.tvm.device.build import load_device

        return load_device(ir, target, members)
    if target.kind == "reference" or "kernels.so" not in members or not trust_kernels:
        return build(ir, target)
    from rqcompile.targets.tvm.runtime import load_library

    features = manifest.get("features", [])
    where = os.fsdecode(path) if isinstance(path, bytes) else str(path)
    lib = check_binding(where, members["kernels.so"], ir, target, features)
    from rqcompile.passes.ir.kv_cache import GENERATION_FUNCS, generation_funcs

    libs = {}
    if generation_funcs(ir):  # kv-cache prefill / decode libraries
        for name in GENERATION_FUNCS:
            member = f"kernels.{name}.so"
            if member not in members:
                raise ArtifactError(
                    f"{where}: the IR has a @{name} function but the artifact has no {member}; "
                    "re-save it, or load it with rq.load(path, trust_kernels=False)."
                )
            libs[name] = check_binding(where, members[member], ir, target, features)
    return load_library(ir, target, lib, features, libs)


def explain(obj: Any, config: Any = None, *, example_inputs: tuple[Any, ...] | None = None) -> str:
    """Per layer: key, kind, the rule that chose its spec, and the spec.

    ``obj`` is a prepared graph, or a plain model with ``config`` and ``example_inputs``.
    """
    if not isinstance(obj, fx.GraphModule) or "rq_config" not in obj.meta:
        if config is None or example_inputs is None:
            raise UsageError(
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
    See ``rqcompile.targets.mlir.export.export_mlir`` (its example) and docs/mlir.md.
    """
    from rqcompile.targets.mlir.export import export_mlir as export_ir

    if isinstance(model, fx.GraphModule):
        return export_ir(convert(model, example_inputs=example_inputs))
    return export_ir(model, example_inputs)
