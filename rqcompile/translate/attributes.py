"""Which attributes each float converter honours: a converter honours every attribute of the
module or function it converts, or refuses it with ``UnsupportedOpError`` naming it.

Every module type in ``converters.MODULES`` has a row in :data:`MODULE_ATTRS` listing *every*
constructor parameter and ``__constants__`` entry of that type (``tests/translate/
test_converter_attributes.py`` checks the rows against the live signatures, so a torch
upgrade that adds an attribute fails the test until someone decides). Each attribute is either
:data:`HONOURED` (the converter reproduces it, or it cannot change the inference forward:
``inplace``, gradient-only options) or :class:`Only` (the converter supports only these values;
``convert`` refuses the layer otherwise). Functions and methods with parameters a converter
does not model have the same kind of row in :data:`FUNCTION_ATTRS` / :data:`METHOD_ATTRS`,
keyed by the parameter's position and name in torch's signature.

The check runs for every node in ``translate/from_fx.py`` before its converter.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from rqcompile.errors import UnsupportedOpError

__all__ = [
    "FUNCTION_ATTRS",
    "HONOURED",
    "METHOD_ATTRS",
    "MODULE_ATTRS",
    "Only",
    "check_call",
    "check_module",
]

HONOURED = "honoured"


@dataclass(frozen=True)
class Only:
    """The converter supports only these values of the attribute."""

    values: tuple[Any, ...]
    why: str = ""

    def __init__(self, *values: Any, why: str = "") -> None:
        object.__setattr__(self, "values", values)
        object.__setattr__(self, "why", why)

    def allows(self, v: Any) -> bool:
        return any(_same(v, a) for a in self.values)


def _same(v: Any, a: Any) -> bool:
    if isinstance(v, (tuple, list)) and not isinstance(a, (tuple, list)):
        return all(_same(x, a) for x in v)
    if isinstance(v, (tuple, list)) and isinstance(a, (tuple, list)):
        return len(v) == len(a) and all(_same(x, y) for x, y in zip(v, a, strict=True))
    return type(v) is type(a) and v == a or (v is a)


H = HONOURED
_NOT_FORWARD = HONOURED  # gradient/training-only options: the inference forward is the same

MODULE_ATTRS: dict[type, dict[str, Any]] = {
    nn.Linear: {"in_features": H, "out_features": H, "bias": H, "device": H, "dtype": H},
    nn.Conv2d: {
        "in_channels": H,
        "out_channels": H,
        "kernel_size": H,
        "stride": H,
        "padding": H,  # ints, pairs, "valid", and "same" where the padding is symmetric
        "dilation": H,
        "groups": H,
        "bias": H,
        "padding_mode": Only("zeros", why="the IR's conv pads with zeros"),
        "output_padding": Only((0, 0), 0, why="not a transposed conv"),
        "transposed": Only(False),
        "device": H,
        "dtype": H,
    },
    nn.ReLU: {"inplace": H},
    nn.GELU: {"approximate": H},
    nn.SiLU: {"inplace": H},
    nn.Tanh: {"args": H, "kwargs": H},
    nn.LayerNorm: {
        "normalized_shape": H,  # one dim; more is refused by the converter
        "eps": H,
        "elementwise_affine": H,
        "bias": H,
        "device": H,
        "dtype": H,
    },
    nn.Embedding: {
        "num_embeddings": H,
        "embedding_dim": H,
        "padding_idx": _NOT_FORWARD,
        "max_norm": Only(None, why="max_norm renormalizes the table inside forward"),
        "norm_type": _NOT_FORWARD,  # only used with max_norm
        "scale_grad_by_freq": _NOT_FORWARD,
        "sparse": _NOT_FORWARD,
        "_weight": H,
        "_freeze": _NOT_FORWARD,
        "device": H,
        "dtype": H,
    },
    nn.Dropout: {"p": H, "inplace": H},  # identity at inference
    nn.Identity: {"args": H, "kwargs": H},
    nn.Flatten: {"start_dim": H, "end_dim": H},
    nn.BatchNorm2d: {
        "num_features": H,
        "eps": H,
        "momentum": _NOT_FORWARD,
        "affine": H,
        "track_running_stats": Only(
            True, why="without running statistics, eval batch norm uses each batch's own"
        ),
        "bias": H,
        "device": H,
        "dtype": H,
    },
    nn.MaxPool2d: {
        "kernel_size": H,
        "stride": H,
        "padding": H,
        "dilation": Only(1, why="the IR's max_pool2d has no dilation"),
        "return_indices": Only(False),
        "ceil_mode": Only(False, why="the IR's max_pool2d rounds the output size down"),
    },
    nn.AdaptiveAvgPool2d: {"output_size": H},
    nn.Softmax: {"dim": H},
}

#: torch function -> its parameters in torch's order, each HONOURED or Only(...)
FUNCTION_ATTRS: dict[Any, tuple[tuple[str, Any], ...]] = {
    F.conv2d: (
        ("input", H), ("weight", H), ("bias", H), ("stride", H), ("padding", H),
        ("dilation", H), ("groups", H),
    ),
    F.max_pool2d: (
        ("input", H), ("kernel_size", H), ("stride", H), ("padding", H),
        ("dilation", Only(1, why="the IR's max_pool2d has no dilation")),
        ("ceil_mode", Only(False, why="the IR's max_pool2d rounds the output size down")),
        ("return_indices", Only(False)),
    ),
    F.embedding: (
        ("input", H), ("weight", H), ("padding_idx", H),
        ("max_norm", Only(None, why="max_norm renormalizes the table inside forward")),
        ("norm_type", H), ("scale_grad_by_freq", H), ("sparse", H),
    ),
    F.layer_norm: (("input", H), ("normalized_shape", H), ("weight", H), ("bias", H), ("eps", H)),
    F.softmax: (("input", H), ("dim", H), ("_stacklevel", H), ("dtype", Only(None))),
    torch.softmax: (("input", H), ("dim", H), ("dtype", Only(None))),
    torch.mean: (("input", H), ("dim", H), ("keepdim", H), ("dtype", Only(None))),
    F.gelu: (("input", H), ("approximate", H)),
    F.relu: (("input", H), ("inplace", H)),
    torch.relu: (("input", H),),
    F.silu: (("input", H), ("inplace", H)),
    F.dropout: (("input", H), ("p", H), ("training", H), ("inplace", H)),
    F.linear: (("input", H), ("weight", H), ("bias", H)),
    F.adaptive_avg_pool2d: (("input", H), ("output_size", H)),
    torch.split: (("tensor", H), ("split_size_or_sections", H), ("dim", H)),
    torch.cat: (("tensors", H), ("dim", H)),
    torch.flatten: (("input", H), ("start_dim", H), ("end_dim", H)),
    torch.add: (("input", H), ("other", H), ("alpha", H)),
    torch.sub: (("input", H), ("other", H), ("alpha", H)),
    torch.mul: (("input", H), ("other", H)),
    torch.div: (("input", H), ("other", H), ("rounding_mode", Only(None))),
    operator.add: (("a", H), ("b", H)),
    operator.sub: (("a", H), ("b", H)),
    operator.mul: (("a", H), ("b", H)),
    operator.truediv: (("a", H), ("b", H)),
}  # fmt: skip

#: tensor method name -> its parameters after ``self``
METHOD_ATTRS: dict[str, tuple[tuple[str, Any], ...]] = {
    "mean": (("dim", H), ("keepdim", H), ("dtype", Only(None))),
    "softmax": (("dim", H), ("dtype", Only(None))),
    "div": (("other", H), ("rounding_mode", Only(None))),
    "add": (("other", H), ("alpha", H)),
    "sub": (("other", H), ("alpha", H)),
    "mul": (("other", H),),
    "flatten": (("start_dim", H), ("end_dim", H)),
}


def _symbolic(v: Any) -> bool:
    """A value known only when the model runs (an fx node at prepare time)."""
    return isinstance(v, torch.fx.Node)


def _refuse(where: str, what: str, name: str, value: Any, rule: Only) -> UnsupportedOpError:
    allowed = " or ".join(repr(v) for v in rule.values)
    why = f" ({rule.why})" if rule.why else ""
    return UnsupportedOpError(
        f"{where}: {what} has {name}={value!r}; its converter supports only {name}={allowed}"
        f"{why}. Change the model, or give it a converter that honours {name}."
    )


def check_module(mod: nn.Module, where: str) -> None:
    """Refuse ``mod`` if an attribute has a value its converter does not honour."""
    rows = MODULE_ATTRS.get(type(mod), {})
    for name, rule in rows.items():
        if isinstance(rule, Only) and hasattr(mod, name):
            value = getattr(mod, name)
            if not rule.allows(value):
                raise _refuse(where, type(mod).__name__, name, value, rule)


def _check_params(
    where: str, what: str, params: tuple[tuple[str, Any], ...], args: Sequence[Any],
    kwargs: dict[str, Any], skip: int,
) -> None:  # fmt: skip
    names = [n for n, _ in params]
    given = dict(zip(names[skip:], args[skip:], strict=False))
    if len(args) > len(names):
        raise UnsupportedOpError(
            f"{where}: {what} called with {len(args)} positional arguments; its converter "
            f"knows {len(names)} ({', '.join(names)})."
        )
    for k, v in kwargs.items():
        if k not in names:
            raise UnsupportedOpError(
                f"{where}: {what} called with {k}={v!r}, which its converter does not "
                f"honour (it knows {', '.join(names)})."
            )
        given[k] = v
    for name, rule in params:
        if (
            isinstance(rule, Only)
            and name in given
            and not _symbolic(given[name])
            and not rule.allows(given[name])
        ):
            raise _refuse(where, what, name, given[name], rule)


def check_call(target: Any, op: str, args: Sequence[Any], kwargs: dict[str, Any], where: str) -> None:
    """Refuse a ``call_function`` / ``call_method`` node whose arguments its converter drops."""
    if op == "call_function" and target in FUNCTION_ATTRS:
        name = getattr(target, "__name__", str(target))
        _check_params(where, f"{name}()", FUNCTION_ATTRS[target], args, kwargs, 0)
    elif op == "call_method" and target in METHOD_ATTRS:
        params = (("self", H), *METHOD_ATTRS[target])
        _check_params(where, f".{target}()", params, args, kwargs, 1)
