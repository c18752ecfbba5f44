"""QAT ``torch.fx`` graph → rq IR (the walker behind ``rq.convert``).

The walker interprets the graph once with concrete shapes (static, from the example inputs
recorded at ``prepare`` or given to ``convert``):

* tensors produced from constants alone (buffers, parameters, shape arithmetic, a causal mask
  sliced to the sequence length, position ids) are **folded** with torch at convert time and
  become IR constants only when an IR op consumes them;
* every other node is mapped through the converter table in ``converters.py`` (float ops) and
  ``quantized.py`` (quantize → ridge-dequant → matmul patterns → integer kernels);
* nodes with no converter are collected, and reported together in one ``UnsupportedOpError``.
"""

from __future__ import annotations

import copy
import warnings
from typing import Any

import torch
from torch import fx
from torch.fx.passes.shape_prop import ShapeProp

from rqcompile.capture.trace import owner_of, source_of
from rqcompile.errors import UnsupportedOpError
from rqcompile.ir import ops_float, ops_int, ops_more  # noqa: F401  (register ops)
from rqcompile.ir.core import Module, Value
from rqcompile.ir.types import TensorType, dtype_of_torch, torch_dtype
from rqcompile.quant.modules import RQQuantize
from rqcompile.translate.aten import ATEN
from rqcompile.translate.attributes import check_call, check_module
from rqcompile.translate.context import Converter, QOperand, TranslateContext
from rqcompile.translate.context import Unsupported as _Unsupported
from rqcompile.translate.converters import FUNCTIONS, METHODS, MODULES
from rqcompile.translate.quantized import QUANTIZED_FUNCTIONS

__all__ = ["Converter", "QOperand", "TranslateContext", "translate"]


def _contains(x: Any, kinds: type | tuple[type, ...]) -> bool:
    """Whether ``x`` or anything nested in it (tuples, lists, dicts) is one of ``kinds``."""
    found = False

    def visit(a: Any) -> Any:
        nonlocal found
        found = found or isinstance(a, kinds)
        return a

    fx.node.map_aggregate(x, visit)
    return found


def _fold(node: fx.Node, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    if node.op == "call_method":
        self_obj, *rest = args
        return getattr(self_obj, str(node.target))(*rest, **kwargs)
    return node.target(*args, **kwargs)  # type: ignore[operator]


#: Functions and methods whose result depends on their tensor arguments' shape and dtype
#: only, never on their values. With an IR value among the arguments they are still folded
#: at convert time: the value is replaced by a stand-in of its shape and dtype (shapes are
#: static here). ``full_like(att, -inf).triu(1)``, ``zeros_like(x)``, ``x.new_ones(...)``
#: then become constants, and what is computed from them alone folds as usual.
SHAPE_ONLY_FUNCTIONS: frozenset[Any] = frozenset(
    {torch.full_like, torch.zeros_like, torch.ones_like, torch.empty_like}
    | {
        getattr(torch.ops.aten, n).default
        for n in ("full_like", "zeros_like", "ones_like", "empty_like")
    }
    | {torch.ops.aten.new_full.default, torch.ops.aten.new_zeros.default,
       torch.ops.aten.new_ones.default, torch.ops.aten.new_empty.default}  # fmt: skip
)
SHAPE_ONLY_METHODS: frozenset[str] = frozenset({"new_full", "new_zeros", "new_ones", "new_empty"})


#: torch.export's size queries (graphs exported with dynamic shapes): like ``x.size(d)``,
#: they read the input's static shape at convert time (a dynamic dim is probed at several
#: sizes by ``rqcompile/translate/dynamic.py``).
_SYM_SIZE = frozenset({torch.ops.aten.sym_size.int, torch.ops.aten.sym_numel.default})


def _is_shape_only(node: fx.Node) -> bool:
    if node.op == "call_function":
        return node.target in SHAPE_ONLY_FUNCTIONS
    return node.op == "call_method" and str(node.target) in SHAPE_ONLY_METHODS


def _stand_in(x: Any) -> Any:
    """IR values in ``x`` replaced by zero tensors of their shape and dtype (shape-only ops)."""

    def zeros(a: Any) -> Any:
        if not isinstance(a, Value):
            return a
        return torch.zeros(tuple(int(d) for d in a.type.shape), dtype=torch_dtype(a.type.dtype))

    return fx.node.map_aggregate(x, zeros)


def _shape_attr(v: Value, name: str) -> Any:
    shape = tuple(v.type.shape)
    if name == "shape":
        return torch.Size(shape)  # type: ignore[arg-type]
    if name == "dtype":
        return torch.float32
    if name == "device":
        return torch.device("cpu")
    if name == "ndim":
        return len(shape)
    raise AttributeError(name)


def translate(gm: fx.GraphModule, example_inputs: tuple[Any, ...] | None = None) -> Module:
    """Translate a prepared graph (eval semantics) into an rq IR ``Module``."""

    has_q = False
    float_functions = {**FUNCTIONS, **ATEN}
    with warnings.catch_warnings():  # torch's own pytree spec (export graphs) warns on copy
        warnings.filterwarnings("ignore", message=".*LeafSpec.*", category=FutureWarning)
        gm = copy.deepcopy(gm).eval()
    if example_inputs is not None:
        ShapeProp(gm).propagate(*example_inputs)
    cx = TranslateContext(gm)
    env: dict[fx.Node, Any] = {}
    unsupported: list[str] = []
    outputs: Any = None
    for node in gm.graph.nodes:
        cx.node = node
        args = fx.node.map_arg(node.args, lambda n: env[n])
        kwargs = fx.node.map_arg(node.kwargs, lambda n: env[n])
        if node.op == "placeholder":
            tm = node.meta.get("tensor_meta")
            if tm is None:
                raise UnsupportedOpError(
                    f"input {node.name!r} has no recorded shape; pass example_inputs to convert()."
                )
            env[node] = cx.b.arg(TensorType(tuple(tm.shape), dtype_of_torch(tm.dtype)))
            continue
        if node.op == "get_attr":
            obj: Any = gm
            for part in str(node.target).split("."):
                obj = getattr(obj, part)
            if isinstance(obj, torch.Tensor):
                obj = obj.detach()
                cx.names[id(obj)] = str(node.target)
            env[node] = obj
            continue
        if node.op == "output":
            outputs = args[0]
            continue
        if _contains((args, kwargs), _Unsupported):  # nested too: cat([x, <unsupported>])
            env[node] = _Unsupported()
            continue
        conv: Converter | None = None
        if node.op == "call_module":
            mod = gm.get_submodule(str(node.target))
            if isinstance(mod, RQQuantize):
                env[node] = QOperand(mod, args[0], node)
                continue
            conv = MODULES.get(type(mod))
            if conv is not None:
                check_module(mod, f"layer {owner_of(node) or node.target}")  # attributes.py
                env[node] = conv(cx, mod, *args, **kwargs)
                continue
        elif not _contains((args, kwargs), (Value, QOperand, _Unsupported)):
            env[node] = _fold(node, args, kwargs)
            continue
        elif _is_shape_only(node) and not any(isinstance(a, QOperand) for a in args):
            env[node] = _fold(node, _stand_in(args), _stand_in(kwargs))
            continue
        elif node.op == "call_function" and node.target is getattr and isinstance(args[0], Value):
            env[node] = _shape_attr(args[0], args[1])
            continue
        elif node.target in _SYM_SIZE and isinstance(args[0], Value):  # export's sizes
            shape = torch.Size(args[0].type.shape)  # type: ignore[arg-type]
            env[node] = shape[args[1]] if len(args) > 1 else shape.numel()
            continue
        elif (
            node.op == "call_method"
            and node.target in ("size", "dim")
            and isinstance(args[0], Value)
        ):
            shape = torch.Size(args[0].type.shape)  # type: ignore[arg-type]
            env[node] = (
                (shape if len(args) == 1 else shape[args[1]])
                if node.target == "size"
                else len(shape)
            )
            continue
        elif node.op == "call_function":
            has_q = any(isinstance(a, QOperand) for a in args)
            table = QUANTIZED_FUNCTIONS if has_q else float_functions
            conv = table.get(node.target)
        elif node.op == "call_method":
            conv = METHODS.get(str(node.target))
        if conv is None:
            env[node] = _Unsupported()
            unsupported.append(_describe(gm, node))
            continue
        if not (node.op == "call_function" and has_q):
            check_call(node.target, node.op, args, kwargs, _describe(gm, node))  # attributes.py
        env[node] = conv(cx, *args, **kwargs)
    if unsupported:
        raise UnsupportedOpError(
            f"cannot convert {len(unsupported)} node(s) to rq IR:\n"
            + "\n".join(f"  - {u}" for u in unsupported)
            + "\nFix: keep those layers in float via overrides, rewrite them with supported ops, "
            "or add a converter (rqcompile.translate.converters.FUNCTIONS / METHODS / MODULES, or "
            "rqcompile.translate.aten.ATEN for torch.export graphs); "
            "supported: rqcompile.translate.supported_ops()."
        )
    outs = outputs if isinstance(outputs, (tuple, list)) else (outputs,)
    cx.node = None
    cx.b.ret(*(cx.value(o) for o in outs))
    return cx.b.module()


def _describe(gm: fx.GraphModule, node: fx.Node) -> str:
    if node.op == "call_module":
        what = f"module {type(gm.get_submodule(str(node.target))).__name__}"
    elif node.op == "call_method":
        what = f"method .{node.target}()"
    else:
        t = node.target
        what = f"{getattr(t, '__module__', '') or ''}.{getattr(t, '__name__', t)}".lstrip(".")
    key = owner_of(node) or "<root>"
    return f"{key}:{node.name}   {what}   {source_of(node) or ''}".rstrip()


def supported_ops() -> list[str]:
    """Names of every fx target/method/module type the converter handles."""

    names = [getattr(f, "__name__", str(f)) for f in (*FUNCTIONS, *QUANTIZED_FUNCTIONS)]
    names += [str(op) for op in ATEN]
    names += [f".{m}()" for m in METHODS] + [m.__name__ for m in MODULES]
    return sorted(set(names))

