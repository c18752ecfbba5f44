"""Capture with ``torch.export``: for models that ``torch.fx`` symbolic tracing cannot follow.

``torch.export`` runs the model on fake tensors and records ATen ops, so Python control flow
that depends only on shapes (Hugging Face models, ``if x.dim() == 3:``) is fine, and the graph
keeps the module structure in ``node.meta["nn_module_stack"]`` and the user's source line in
``node.stack_trace``. :func:`graph_from_export` turns an ``ExportedProgram`` into a plain,
trainable ``fx.GraphModule`` that the same rewrite passes understand:

* parameters and buffers become ``get_attr`` nodes with their **original qualified names**
  (``transformer.h.0.attn.c_attn.weight``), so ``state_dict`` keys are those of the model;
* bookkeeping nodes (the input guard, ``aten._assert_tensor_metadata``) are dropped and
  in-place ATen ops whose input has no other user (``aten.add_`` in ResNet blocks) become their
  out-of-place form, so convert sees a pure dataflow graph;
* inputs and outputs keep their pytree structure (a Hugging Face model still returns its
  ``ModelOutput``).

What differs from fx capture (docs/models.md): the model is exported in **eval mode**, so
dropout is off and batch norm uses its running statistics during QAT (``fold_batchnorm=True``
folds it into the conv); shapes are specialised to the example inputs; ``leaf_modules`` does
not apply (export has no opaque calls: keep a layer in float with ``overrides`` instead).
"""

from __future__ import annotations

import operator
from typing import Any

import torch
from torch import fx, nn

__all__ = ["INPLACE", "export_model", "graph_from_export"]

_aten = torch.ops.aten

#: In-place ATen ops rewritten to their out-of-place form when that is safe.
INPLACE: dict[Any, Any] = {
    _aten.add_.Tensor: _aten.add.Tensor,
    _aten.sub_.Tensor: _aten.sub.Tensor,
    _aten.mul_.Tensor: _aten.mul.Tensor,
    _aten.div_.Tensor: _aten.div.Tensor,
    _aten.relu_.default: _aten.relu.default,
}

#: Nodes that only check things at run time; the graph is correct without them.
_DROP = (_aten._assert_tensor_metadata.default,)


def export_model(model: nn.Module, example_inputs: tuple[Any, ...]) -> Any:
    """``torch.export.export`` ``model`` in eval mode (non-strict). Sets ``model.eval()``:
    pass a copy (``capture`` does)."""
    return torch.export.export(model.eval(), example_inputs, strict=False)


def graph_from_export(ep: Any) -> fx.GraphModule:
    """A plain trainable ``fx.GraphModule`` from a ``torch.export.ExportedProgram``."""
    unlifted = ep.module()  # params/buffers as get_attr, original names; .train() is blocked
    graph = unlifted.graph
    for n in list(graph.nodes):
        guard = n.op == "call_module" and str(n.target) == "_guards_fn"
        if guard or (n.op == "call_function" and n.target in _DROP and not n.users):
            graph.erase_node(n)
        elif n.op == "call_function" and n.target in INPLACE:
            src = n.args[0]
            if isinstance(src, fx.Node) and len(src.users) == 1 and src.op == "call_function":
                n.target = INPLACE[n.target]
    graph.eliminate_dead_code(is_impure_node=_impure)
    # A new GraphModule of the base class: ``train()`` works again (autograd through the
    # graph was always fine); attributes referenced by get_attr are copied over by name.
    gm = fx.GraphModule(unlifted, graph, class_name=type(unlifted).__name__)
    if "_guards_fn" in gm._modules:
        del gm._modules["_guards_fn"]
    _keep_unused_state(unlifted, gm)
    _mark_non_persistent(gm, set(ep.state_dict))
    gm.meta["rq_capture"] = "export"
    return gm


def _keep_unused_state(src: nn.Module, gm: fx.GraphModule) -> None:
    """Register the parameters and buffers no node reads (the second name of a tied weight,
    such as GPT-2's ``transformer.wte.weight``), so ``state_dict`` keys match the model's."""
    have = set(gm.state_dict())
    for name, t in src.state_dict(keep_vars=True).items():
        if name in have:
            continue
        *path, leaf = name.split(".")
        mod: nn.Module = gm
        for p in path:
            if not hasattr(mod, p):
                mod.add_module(p, nn.Module())
            mod = getattr(mod, p)
        if isinstance(t, nn.Parameter):
            mod.register_parameter(leaf, t)
        else:
            mod.register_buffer(leaf, t)


def _mark_non_persistent(gm: fx.GraphModule, persistent: set[str]) -> None:
    """Buffers the model did not save (``persistent=False``: BERT's ``position_ids``, Llama's
    ``inv_freq``) stay out of ``state_dict``, as in the model."""
    for name, _ in list(gm.named_buffers()):
        if name not in persistent:
            owner, _, leaf = name.rpartition(".")
            (gm.get_submodule(owner) if owner else gm)._non_persistent_buffers_set.add(leaf)


def _impure(n: fx.Node) -> bool:
    if n.op in ("placeholder", "output"):
        return True
    if n.op == "call_function" and n.target is operator.getitem:
        return False
    schema = getattr(n.target, "_schema", None) if n.op == "call_function" else None
    return schema is not None and bool(schema.is_mutable)
