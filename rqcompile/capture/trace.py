"""Capture: ``nn.Module`` → float ``torch.fx.GraphModule`` with shapes recorded.

``capture`` deep-copies the model (the caller's model is never touched), traces it with
``torch.fx`` symbolic tracing, and runs the example inputs through the graph once to record
each node's output shape and dtype in ``node.meta["tensor_meta"]`` (passes need K and the
number of MACs).

When tracing fails, the error says which module was being traced, the user's source line, and
what to do (the torch.export fallback is planned: issue 7).
"""

from __future__ import annotations

import copy
import os
import traceback
from collections.abc import Sequence
from typing import Any

import torch
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from rqcompile.errors import CaptureError

__all__ = ["RQTracer", "capture", "owner_of", "source_of"]

_TORCH_DIR = os.path.dirname(torch.__file__)
_OUR_DIR = os.path.dirname(os.path.dirname(__file__))


class RQTracer(fx.Tracer):
    """An ``fx.Tracer`` that records stack traces and the module path being traced."""

    def __init__(self, leaf_modules: Sequence[type[nn.Module]] = ()) -> None:
        super().__init__()
        self.record_stack_traces = True
        self.proxy_buffer_attributes = True  # buffers sliced by traced sizes (causal masks)
        self._leaf_types = tuple(leaf_modules)
        self.module_path: list[str] = []
        self.failed_in: str | None = None  # innermost module being traced when tracing failed

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if self._leaf_types and isinstance(m, self._leaf_types):
            return True
        return super().is_leaf_module(m, module_qualified_name)

    def call_module(self, m: nn.Module, forward: Any, args: Any, kwargs: Any) -> Any:
        name = self.path_of_module(m)
        self.module_path.append(name or "<root>")
        try:
            return super().call_module(m, forward, args, kwargs)
        except Exception:
            if self.failed_in is None:
                self.failed_in = self.module_path[-1]
            raise
        finally:
            self.module_path.pop()


def _is_library(path: str) -> bool:
    """True for torch's and rqcompile's own frames (the models in testing/ and demo/ are user code)."""
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


def capture(
    model: nn.Module,
    example_inputs: tuple[Any, ...],
    *,
    leaf_modules: Sequence[type[nn.Module]] = (),
) -> fx.GraphModule:
    """Trace a deep copy of ``model`` and record shapes from ``example_inputs``.

    Args:
        model: any ``nn.Module`` that ``torch.fx.symbolic_trace`` can follow.
        example_inputs: positional example inputs (a tuple).
        leaf_modules: module types kept as single calls instead of traced through.

    Raises:
        CaptureError: tracing failed; names the module, the source line and the fix.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"capture() needs an nn.Module, got {type(model).__name__}.")
    if not isinstance(example_inputs, tuple):
        example_inputs = (example_inputs,)
    model = copy.deepcopy(model)
    tracer = RQTracer(leaf_modules)
    try:
        graph = tracer.trace(model)
    except Exception as e:
        where = tracer.failed_in or "<root>"
        mod = model.get_submodule(where) if where != "<root>" else model
        line = _user_frame(traceback.extract_tb(e.__traceback__))
        raise CaptureError(
            f"torch.fx could not trace module {where!r} ({type(mod).__name__}).\n"
            f"  at {line or 'unknown source line'}\n"
            f"  cause: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}\n"
            "Fix: symbolic tracing cannot follow Python control flow that depends on tensor "
            "values (if/while on a tensor, len() of a tensor, .item()). Rewrite that code with "
            "tensor ops (torch.where, masking), or make the module a leaf: "
            f"rq.prepare(..., leaf_modules=[{type(mod).__name__}]) keeps it in float as one call."
        ) from e
    gm = fx.GraphModule(model, graph, class_name=type(model).__name__)
    try:
        ShapeProp(gm).propagate(*example_inputs)
    except Exception as e:
        raise CaptureError(
            f"running the traced graph on example_inputs failed: {type(e).__name__}: {e}\n"
            "Fix: pass example_inputs as a tuple of tensors with the shapes and dtypes the model "
            "expects in forward(), e.g. rq.prepare(model, (torch.randn(8, 64),), 'A4W4')."
        ) from e
    return gm


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
