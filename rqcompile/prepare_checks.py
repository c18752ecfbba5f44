"""Refuse at ``prepare`` what ``convert`` would refuse later, naming the layer.

Training a model for hours and then learning at ``convert`` that it can never be lowered is
the worst time to learn it. ``rq.prepare`` calls :func:`check_model` on the float model
before capture and :func:`check_graph` on the prepared graph; both raise the error ``convert``
would raise, with the layer key:

* parameters or buffers that are floating point but not float32 (float16, bfloat16,
  float64): the IR's float ops and the integer epilogues are float32, so ``convert`` lowers
  such a model in float32 (:func:`float32_for_convert`: a float32 copy, float32 inputs) and
  ``prepare`` says so up front with an ``RQWarning`` naming the layers (it used to fail at
  ``convert`` with a ``VerifyError`` naming no layer);
* a submodule that is itself a prepared QAT graph or contains quantizers (``UsageError``;
  prepare the original float model once);
* indexing a tensor with anything but ints, slices and ``...`` (``x[:, self.idx]`` with an
  index tensor, ``x[None]``, a list): ``rq.slice`` is the only gather by index besides
  ``nn.Embedding`` (``UnsupportedOpError``);
* a float layer or call whose attributes the converter cannot honour
  (``translate/attributes.py``: ``padding_mode="reflect"``, ``ceil_mode=True``, ...).

Ops that have no converter at all (``torch.cumsum``) stay a ``convert`` error, listed all at
once (a QAT-only user may train such a model); see ``rq.translate.supported_ops()``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import fx, nn

from rqcompile.errors import UnsupportedOpError, UsageError

__all__ = ["check_graph", "check_model"]


def check_model(model: Any) -> None:
    """Checks on the float model itself (before capture)."""
    if not isinstance(model, nn.Module):
        return
    from rqcompile.quant.modules import RQQuantize

    for name, sub in model.named_modules():
        if not name:
            continue
        if (isinstance(sub, fx.GraphModule) and "rq_config" in sub.meta) or isinstance(
            sub, RQQuantize
        ):
            owner = name.rsplit(".", 1)[0] if isinstance(sub, RQQuantize) and "." in name else name
            raise UsageError(
                f"layer {owner!r} is already prepared (it holds rqcompile quantizers); "
                "rq.prepare takes the original float model: build the outer model around the "
                "float submodule and prepare it once."
            )
    bad = non_float32_layers(model)
    if bad:
        from rqcompile.errors import warn

        warn(
            f"rq.prepare: {_describe_layers(bad)}. QAT trains in that precision, but "
            "rq.convert lowers in float32 (the IR's float ops are float32): the compiled "
            "model takes float32 inputs and its outputs can differ from this QAT model by "
            "float32 rounding. Call model.float() first to train what you deploy.",
            stacklevel=3,
        )


def non_float32_layers(model: nn.Module) -> dict[str, str]:
    """Layer key -> "parameter 'w' is float16" for floating tensors that are not float32."""
    bad: dict[str, str] = {}
    for kind, items in (("parameter", model.named_parameters()), ("buffer", model.named_buffers())):
        for key, t in items:
            if t.is_floating_point() and t.dtype != torch.float32:
                layer = key.rsplit(".", 1)[0] if "." in key else "<root>"
                bad.setdefault(layer, f"{kind} {key!r} is {str(t.dtype).removeprefix('torch.')}")
    return bad


def _describe_layers(bad: dict[str, str]) -> str:
    lines = "; ".join(f"layer {k!r}: {v}" for k, v in list(bad.items())[:8])
    return lines + (f" (and {len(bad) - 8} more layers)" if len(bad) > 8 else "")


def float32_for_convert(gm: fx.GraphModule, example_inputs: Any) -> tuple[fx.GraphModule, Any]:
    """A float32 copy of a prepared graph with non-float32 weights, and float32 example
    inputs of the recorded shapes (``gm`` itself when it is float32 already)."""
    import copy

    bad = non_float32_layers(gm)
    floats_in = [
        n for n in gm.graph.nodes
        if n.op == "placeholder" and (tm := n.meta.get("tensor_meta")) is not None
        and tm.dtype.is_floating_point and tm.dtype != torch.float32
    ]  # fmt: skip
    if not bad and not floats_in and example_inputs is None:
        return gm, example_inputs
    if example_inputs is None:
        ex = []
        for n in gm.graph.nodes:
            if n.op != "placeholder":
                continue
            tm = n.meta.get("tensor_meta")
            if tm is None:
                return gm, None  # convert reports the missing shape
            dt = torch.float32 if tm.dtype.is_floating_point else tm.dtype
            ex.append(torch.zeros(tuple(tm.shape), dtype=dt))
        example_inputs = tuple(ex)
    elif not (bad or floats_in):
        return gm, example_inputs
    example_inputs = tuple(
        x.float() if isinstance(x, torch.Tensor) and x.is_floating_point() else x
        for x in example_inputs
    )
    out = copy.deepcopy(gm).float()
    out.meta.update(gm.meta)
    return out, example_inputs


def _is_tensor_node(n: Any) -> bool:
    if not isinstance(n, fx.Node):
        return False
    if n.op == "get_attr":
        return True
    tm = n.meta.get("tensor_meta")
    val = n.meta.get("val", n.meta.get("example_value"))
    return tm is not None or isinstance(val, torch.Tensor)


def _where(gm: fx.GraphModule, node: fx.Node) -> str:
    from rqcompile.capture.trace import owner_of, source_of

    key = owner_of(node) or "<root>"
    src = source_of(node) or ""
    return f"layer {key!r} ({node.name}{', ' + src if src else ''})"


def _check_index(gm: fx.GraphModule, node: fx.Node) -> None:
    base, idx = node.args[0], node.args[1]
    if not _is_tensor_node(base):
        return  # tuple unpacking, shape arithmetic
    items = idx if isinstance(idx, tuple) else (idx,)
    for it in items:
        if it is Ellipsis or isinstance(it, (int, slice)) and not isinstance(it, bool):
            if isinstance(it, slice) and any(
                isinstance(p, fx.Node) and _is_tensor_node(p) for p in (it.start, it.stop, it.step)
            ):
                pass  # a tensor bound: refused below
            else:
                continue
        if isinstance(it, fx.Node) and not _is_tensor_node(it):
            continue  # a traced int (a size)
        what = "an index tensor" if isinstance(it, fx.Node) else f"index {it!r}"
        raise UnsupportedOpError(
            f"{_where(gm, node)}: indexing with {what}; the IR indexes only with ints, slices "
            "and '...'. Use nn.Embedding for gathers by id, or index with a constant slice "
            "(x[:, 2:5]); for a fixed list of positions, register slices or reorder the "
            "weights instead."
        )


def check_graph(gm: fx.GraphModule) -> None:
    """Checks on the prepared graph (after the QAT passes)."""
    import operator

    from rqcompile.translate.attributes import MODULE_ATTRS, check_call, check_module

    for node in gm.graph.nodes:
        if node.op == "call_module":
            mod = gm.get_submodule(str(node.target))
            if type(mod) in MODULE_ATTRS:
                check_module(mod, _where(gm, node))
        elif node.op == "call_function" and node.target is operator.getitem:
            _check_index(gm, node)
        elif node.op in ("call_function", "call_method"):
            check_call(node.target, node.op, node.args, dict(node.kwargs), _where(gm, node))
