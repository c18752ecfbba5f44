"""Capture: ``nn.Module`` → float ``torch.fx.GraphModule`` with shapes recorded.

``capture`` deep-copies the model (the caller's model is never touched), traces it with
``torch.fx`` symbolic tracing, and runs the example inputs through the graph once to record
each node's output shape and dtype in ``node.meta["tensor_meta"]`` (passes need K and the
number of MACs).

``method="auto"`` (the default) falls back to ``torch.export`` (``capture/export.py``) when
symbolic tracing fails, e.g. on Hugging Face models or on Python control flow that depends only
on shapes; ``method="fx"`` or ``"export"`` picks one. A ``torch.export.ExportedProgram`` is
accepted directly. When every method fails, the error names the module, the user's source line
and the fix.
"""

from __future__ import annotations

import copy
import os
import traceback
import warnings
from collections.abc import Sequence
from typing import Any

import torch
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from rqcompile.errors import CaptureError

__all__ = ["METHODS", "RQTracer", "capture", "owner_of", "source_of"]

#: Capture methods accepted by ``capture(method=...)`` / ``rq.prepare(capture=...)``.
METHODS = ("auto", "fx", "export")

_TORCH_DIR = os.path.dirname(torch.__file__)
_OUR_DIR = os.path.dirname(os.path.dirname(__file__))


class RQTracer(fx.Tracer):
    """An ``fx.Tracer`` that records stack traces (for source lines) and honours leaf types."""

    def __init__(self, leaf_modules: Sequence[type[nn.Module]] = ()) -> None:
        super().__init__()
        self.record_stack_traces = True
        self.proxy_buffer_attributes = True  # buffers sliced by traced sizes (causal masks)
        self._leaf_types = tuple(leaf_modules)

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if self._leaf_types and isinstance(m, self._leaf_types):
            return True
        return super().is_leaf_module(m, module_qualified_name)


def _is_library(path: str) -> bool:
    """True for torch's and rqcompile's own frames (models in testing/ and demo/ are user code)."""
    if path.startswith(_TORCH_DIR):
        return True
    if path.startswith(_OUR_DIR):
        rel = os.path.relpath(path, _OUR_DIR)
        return not rel.startswith(("testing", "demo"))
    return False


def _user_frame(tb: traceback.StackSummary) -> str | None:
    for frame in reversed(tb):
        f = frame.filename
        if not _is_library(f) and "<" not in f:
            return f"{f}:{frame.lineno}: {(frame.line or '').strip()}"
    return None


def _failing_module(model: nn.Module, tb: Any) -> tuple[str, nn.Module] | None:
    """Innermost user module whose ``forward`` is on the traceback (by the frame's ``self``)."""
    names = {id(m): n for n, m in model.named_modules()}
    found = None
    while tb is not None:
        me = tb.tb_frame.f_locals.get("self")
        if isinstance(me, nn.Module) and id(me) in names:
            found = (names[id(me)] or "<root>", me)
        tb = tb.tb_next
    return found


def _cause(e: BaseException) -> str:
    lines = [ln for ln in str(e).splitlines() if ln.strip()]
    return f"{type(e).__name__}: {lines[0][:300] if lines else ''}"


def _trace_fx(model: nn.Module, leaf_modules: Sequence[type[nn.Module]]) -> fx.GraphModule:
    tracer = RQTracer(leaf_modules)
    graph = tracer.trace(model)
    return fx.GraphModule(model, graph, class_name=type(model).__name__)


def _returns_hf_cache(model: nn.Module, errors: list[tuple[str, BaseException]]) -> bool:
    """A transformers model with ``config.use_cache`` on, whose capture failed on its cache."""
    cfg = getattr(model, "config", None)
    if not getattr(cfg, "use_cache", False):
        return False
    return any("Cache" in str(e) for _, e in errors)


def _capture_error(
    model: nn.Module, errors: list[tuple[str, BaseException]], *, need_examples: bool = False
) -> CaptureError:
    _method, e = errors[-1]
    where = _failing_module(model, e.__traceback__)
    name, mod = where if where else ("<root>", model)
    line = _user_frame(traceback.extract_tb(e.__traceback__))
    causes = "\n".join(f"  {m} failed: {_cause(err)}" for m, err in errors)
    if need_examples:
        causes += ("\n  (without example inputs only torch.fx can capture; pass them, "
                   "rq.prepare(model, (x,), config), to let torch.export try)")  # fmt: skip
    elif len(errors) == 1 and errors[0][0].startswith("torch.fx"):
        causes += "\n  (capture='fx' was asked for; capture='auto' falls back to torch.export)"
    if _returns_hf_cache(model, errors):
        return CaptureError(
            f"could not capture module {name!r} ({type(mod).__name__}): it returns a Hugging "
            "Face KV cache (a transformers Cache object, because config.use_cache is True), "
            f"which a captured graph cannot return.\n{causes}\n"
            "Fix: capture the model without its cache: model.config.use_cache = False (or "
            "from_pretrained(..., use_cache=False)) before rq.prepare. Generation does not need "
            "it: the lowered model keeps its own KV cache (exe.generate)."
        )
    return CaptureError(
        f"could not capture module {name!r} ({type(mod).__name__}).\n"
        f"  at {line or 'unknown source line'}\n{causes}\n"
        "Fix: tracing cannot follow Python control flow that depends on tensor *values* (if/while "
        "on a tensor, .item(), len() of a data-dependent tensor). Rewrite that code with tensor "
        "ops (torch.where, masking); or make the module a leaf with "
        f"rq.prepare(..., capture='fx', leaf_modules=[{type(mod).__name__}]) to keep it in float "
        "as one call; or export it yourself (torch.export.export with dynamic-shape or "
        "torch.cond) and pass the ExportedProgram to rq.prepare."
    )


def capture(
    model: Any,
    example_inputs: tuple[Any, ...] | None,
    *,
    leaf_modules: Sequence[type[nn.Module]] = (),
    method: str = "auto",
) -> fx.GraphModule:
    """Trace a deep copy of ``model`` and record shapes from ``example_inputs``.

    Args:
        model: an ``nn.Module``, or a ``torch.export.ExportedProgram``.
        example_inputs: positional example inputs (a tuple), or ``None``: fx tracing only,
            and no shapes recorded (``prepare`` records them at the first forward).
        leaf_modules: module types kept as single calls instead of traced through (fx only).
        method: ``"auto"`` (fx, then torch.export if fx fails), ``"fx"`` or ``"export"``.

    Raises:
        CaptureError: every method failed; names the module, the source line and the fix.
    """
    from rqcompile.capture.export import export_model, graph_from_export
    from rqcompile.errors import ConfigError

    if method not in METHODS:
        raise ConfigError(
            f"capture={method!r} is not a capture method. Use one of "
            f"{', '.join(repr(m) for m in METHODS)} ('auto' tries fx, then torch.export)."
        )
    if example_inputs is None:
        if method == "export" or isinstance(model, torch.export.ExportedProgram):
            raise CaptureError(
                "torch.export capture needs example inputs (it traces with real shapes). Fix: "
                "rq.prepare(model, (x,), config) with a batch x, or capture='fx'."
            )
        method = "fx"
    elif not isinstance(example_inputs, tuple):
        example_inputs = (example_inputs,)
    if isinstance(model, torch.export.ExportedProgram):
        with warnings.catch_warnings():  # torch's own pytree spec warns on copy
            warnings.filterwarnings("ignore", message=".*LeafSpec.*", category=FutureWarning)
            gm = copy.deepcopy(graph_from_export(model))  # ep.module() shares the ep's tensors
        _record_shapes(gm, example_inputs)
        return gm
    if not isinstance(model, nn.Module):
        raise TypeError(f"capture() needs an nn.Module, got {type(model).__name__}.")
    model = copy.deepcopy(model)
    errors: list[tuple[str, BaseException]] = []
    gm = None
    if method in ("auto", "fx"):
        try:
            gm = _trace_fx(model, leaf_modules)
        except Exception as e:
            errors.append(("torch.fx symbolic tracing", e))
    if gm is None and example_inputs is None:
        raise _capture_error(model, errors, need_examples=True) from errors[-1][1]
    if gm is None and method in ("auto", "export"):
        try:
            gm = graph_from_export(export_model(model, example_inputs))
        except Exception as e:
            errors.append(("torch.export", e))
    if gm is None:
        raise _capture_error(model, errors) from errors[-1][1]
    if errors:  # fx failed, export worked: say so in rq.inspect
        gm.meta["rq_capture_notes"] = [
            f"captured with torch.export (ATen ops, eval mode: dropout off, batch norm uses "
            f"running statistics) because {errors[0][0]} failed: {_cause(errors[0][1])}"
        ]
    gm.meta.setdefault("rq_capture", "fx")
    if example_inputs is not None:
        _record_shapes(gm, example_inputs)
    return gm


def _record_shapes(gm: fx.GraphModule, example_inputs: tuple[Any, ...]) -> None:
    try:
        with torch.no_grad():
            ShapeProp(gm).propagate(*example_inputs)
    except Exception as e:
        raise CaptureError(
            f"running the traced graph on example_inputs failed: {type(e).__name__}: {e}\n"
            "Fix: pass example_inputs as a tuple of tensors with the shapes and dtypes the model "
            "expects in forward(), e.g. rq.prepare(model, (torch.randn(8, 64),), 'A4W4')."
        ) from e


def owner_of(node: fx.Node) -> str:
    """Qualified name of the innermost module that produced ``node`` ('' for the root)."""
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return ""
    return str(list(stack.values())[-1][0])


def source_of(node: fx.Node) -> str | None:
    """``file:line`` of the user's code that created ``node``, when recorded."""
    st = node.stack_trace
    if not st:
        return None
    lines = [ln.strip() for ln in st.strip().splitlines() if ln.strip().startswith("File ")]
    for ln in reversed(lines):
        parts = ln.split('"')
        if len(parts) >= 3 and not _is_library(parts[1]):
            lineno = parts[2].split(",")[1].strip().removeprefix("line ")
            return f"{os.path.basename(parts[1])}:{lineno}"
    return None
