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
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import fx
from torch.fx.passes.shape_prop import ShapeProp

from rqcompile.capture.trace import owner_of, source_of
from rqcompile.errors import UnsupportedOpError
from rqcompile.ir import ops_float, ops_int, ops_more  # noqa: F401  (register ops)
from rqcompile.ir.builder import Builder
from rqcompile.ir.core import Loc, Module, Value
from rqcompile.ir.types import TensorType, dtype_of_torch
from rqcompile.quant.modules import RQQuantize

__all__ = ["Converter", "QOperand", "TranslateContext", "translate"]


@dataclass(frozen=True)
class QOperand:
    """A quantizer applied to a value: consumed by a quantized-matmul converter."""

    quant: RQQuantize
    source: Value | torch.Tensor
    node: fx.Node


class _Unsupported:
    """Marker for the result of a node that could not be converted."""


class TranslateContext:
    """State of one translation: the IR builder, the graph and constant naming."""

    def __init__(self, gm: fx.GraphModule) -> None:
        self.b = Builder()
        self.gm = gm
        self._n = 0
        self.node: fx.Node | None = None
        self.names: dict[int, str] = {}  # id(tensor) -> parameter/buffer name, for readable IR

    def loc(self) -> Loc | None:
        n = self.node
        if n is None:
            return None
        meta = n.meta.get("rq")
        layer = meta.layer if meta is not None else (owner_of(n) or n.name)
        return Loc(layer, source_of(n))

    def value(self, v: Any, *, name: str | None = None) -> Value:
        """An IR value for ``v``: IR values pass through, tensors become constants."""
        if isinstance(v, Value):
            return v
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            v = torch.tensor(float(v))
        if not isinstance(v, torch.Tensor):
            raise TypeError(f"expected a tensor, got {type(v).__name__}")
        name = name or self.names.get(id(v))
        t = v.detach().contiguous()
        if t.is_floating_point():
            t = t.float()
        elif t.dtype == torch.int32:
            t = t.long()
        self._n += 1
        return self.b.const(name or f"const{self._n}", t, loc=self.loc())

    def const(self, name: str, t: torch.Tensor) -> Value:
        return self.b.const(name, t.detach().contiguous(), loc=self.loc())

    def op(self, name: str, *operands: Value, **attrs: Any) -> Any:
        return self.b.op(name, *operands, loc=self.loc(), **attrs)


Converter = Callable[..., Any]


def _is_ir(x: Any) -> bool:
    if isinstance(x, (Value, QOperand, _Unsupported)):
        return True
    if isinstance(x, (tuple, list)):
        return any(_is_ir(a) for a in x)
    if isinstance(x, dict):
        return any(_is_ir(a) for a in x.values())
    return False


def _fold(node: fx.Node, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    if node.op == "call_method":
        self_obj, *rest = args
        return getattr(self_obj, str(node.target))(*rest, **kwargs)
    return node.target(*args, **kwargs)  # type: ignore[operator]


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
    from rqcompile.translate.aten import ATEN
    from rqcompile.translate.attributes import check_call, check_module
    from rqcompile.translate.converters import FUNCTIONS, METHODS, MODULES
    from rqcompile.translate.quantized import QUANTIZED_FUNCTIONS

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
        if any(isinstance(a, _Unsupported) for a in [*args, *kwargs.values()]):
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
        elif not _is_ir((args, kwargs)):
            env[node] = _fold(node, args, kwargs)
            continue
        elif node.op == "call_function" and node.target is getattr and isinstance(args[0], Value):
            env[node] = _shape_attr(args[0], args[1])
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
    from rqcompile.translate.aten import ATEN
    from rqcompile.translate.converters import FUNCTIONS, METHODS, MODULES
    from rqcompile.translate.quantized import QUANTIZED_FUNCTIONS

    names = [getattr(f, "__name__", str(f)) for f in (*FUNCTIONS, *QUANTIZED_FUNCTIONS)]
    names += [str(op) for op in ATEN]
    names += [f".{m}()" for m in METHODS] + [m.__name__ for m in MODULES]
    return sorted(set(names))

