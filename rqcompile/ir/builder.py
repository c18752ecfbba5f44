"""A small builder that makes IR construction read like the program it builds.

Example:
    >>> import torch
    >>> from rqcompile.ir import Builder, Loc, TensorType, print_module
    >>> b = Builder()
    >>> x = b.arg(TensorType((None, 4), "f32"))
    >>> w = b.const("fc.w", torch.zeros(3, 4))
    >>> y = b.op("rq.linear", x, w, loc=Loc("fc"))
    >>> b.ret(b.op("rq.relu", y, loc=Loc("act")))
    >>> print(print_module(b.module()).splitlines()[-4])
        %3 = "rq.relu"(%2) : (tensor<?x3xf32>) -> tensor<?x3xf32> loc("act")
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from rqcompile.errors import VerifyError
from rqcompile.ir.core import AttrValue, Func, Loc, Module, Op, Value, normalize_attr, tensor_bytes
from rqcompile.ir.ops import get_op
from rqcompile.ir.types import TensorType, dtype_of_torch, torch_dtype

__all__ = ["Builder"]


class Builder:
    """Builds functions op by op, inferring result types through the op registry.

    Values are numbered in creation order within each function, so two builders fed the
    same calls produce equal modules and identical text. Call :meth:`func` to finish a
    function and start the next one; :meth:`module` finishes the pending one as ``main``.

    Args:
        constants: Constants to start from (more are added by :meth:`const`).
    """

    def __init__(self, constants: Mapping[str, torch.Tensor] | None = None) -> None:
        self._constants: dict[str, torch.Tensor] = dict(constants or {})
        self._funcs: list[Func] = []
        self._reset()

    def _reset(self) -> None:
        self._next_id = 0
        self._args: list[Value] = []
        self._ops: list[Op] = []
        self._defined: dict[int, Value] = {}
        self._outputs: tuple[Value, ...] | None = None

    def _new_value(self, t: TensorType) -> Value:
        v = Value(self._next_id, t)
        self._next_id += 1
        self._defined[v.id] = v
        return v

    def _check_defined(self, values: tuple[Value, ...], what: str) -> None:
        for i, v in enumerate(values):
            if not isinstance(v, Value) or self._defined.get(v.id) != v:
                raise VerifyError(
                    f"{what} #{i} ({v!r}) is not a value of the function being built; values "
                    f"from another Builder or an earlier func cannot be used."
                )

    def arg(self, type: TensorType | str) -> Value:
        """Add a function argument of ``type`` (a TensorType or text like ``tensor<?x4xf32>``)."""
        t = TensorType.parse(type) if isinstance(type, str) else type
        v = self._new_value(t)
        self._args.append(v)
        return v

    def const(
        self,
        name: str,
        tensor: torch.Tensor,
        *,
        dtype: str | None = None,
        loc: Loc | None = None,
    ) -> Value:
        """Register constant ``name`` and emit the ``rq.const`` op that reads it.

        Args:
            name: Constant name (unique per module; re-registering the same data is fine).
            tensor: The data. Treated as immutable from now on.
            dtype: IR element type when it differs from the storage type, e.g. ``"i4"`` for
                4-bit codes stored in an int8 tensor. Defaults to the tensor's own type.
            loc: Provenance of the op.

        Returns:
            The constant's value.

        Raises:
            VerifyError: If ``name`` already holds different data, or ``dtype`` cannot be
                stored in ``tensor.dtype``.
        """
        natural = dtype_of_torch(tensor.dtype)
        ir_dtype = natural if dtype is None else dtype
        if torch_dtype(ir_dtype) != tensor.dtype:
            raise VerifyError(
                f"constant {name!r}: element type {ir_dtype} is stored as "
                f"{torch_dtype(ir_dtype)}, but the tensor is {tensor.dtype}."
            )
        old = self._constants.get(name)
        if (
            old is not None
            and old is not tensor
            and (
                old.dtype != tensor.dtype
                or old.shape != tensor.shape
                or tensor_bytes(old) != tensor_bytes(tensor)
            )
        ):
            raise VerifyError(f"constant {name!r} is already registered with different data.")
        self._constants[name] = tensor.detach()
        shape = tuple(int(d) for d in tensor.shape)
        out = self.op("rq.const", loc=loc, attrs={"name": name, "shape": shape, "dtype": ir_dtype})
        return out  # type: ignore[return-value]

    def op(
        self,
        opname: str,
        /,
        *operands: Value,
        loc: Loc | None = None,
        attrs: Mapping[str, object] | None = None,
        **kwattrs: object,
    ) -> Value | tuple[Value, ...]:
        """Emit op ``opname`` and return its result (or a tuple for multi-result ops).

        Attributes come from ``attrs`` and keyword arguments. Lists become tuples, ints given
        for float attributes become floats, and omitted attributes with a default get it,
        so the stored op always carries every attribute with its exact type.

        Raises:
            VerifyError: For an unknown op, bad operands or attributes, or a shape error;
                the message names the op and its layer.
        """
        opdef = get_op(opname)
        where = opname + (f" (layer {loc.layer!r})" if loc is not None else "")
        self._check_defined(operands, f"{where}: operand")
        merged: dict[str, object] = {**(attrs or {}), **kwattrs}
        norm: dict[str, AttrValue] = {}
        for k, v in merged.items():
            val = normalize_attr(v, where=f"{where} attribute {k!r}")
            spec = opdef.attrs.get(k)
            wants_float = spec is not None and spec.accepted == (float,)
            if wants_float and type(val) is int:
                val = float(val)
            norm[k] = val
        norm = opdef.with_defaults(norm)
        try:
            types = opdef.result_types(tuple(v.type for v in operands), norm)
        except VerifyError as e:
            raise VerifyError(f"{where}: {e}") from e
        results = tuple(self._new_value(t) for t in types)
        self._ops.append(Op(opname, tuple(operands), results, tuple(norm.items()), loc))
        return results[0] if len(results) == 1 else results

    def ret(self, *values: Value) -> None:
        """Set the function's outputs."""
        self._check_defined(values, "return value")
        self._outputs = tuple(values)

    def func(self, name: str = "main") -> Func:
        """Finish the function being built as ``name`` and start a new, empty one."""
        if self._outputs is None:
            raise VerifyError(f"func @{name} has no outputs yet; call Builder.ret(...) first.")
        f = Func(name, tuple(self._args), tuple(self._ops), self._outputs)
        self._funcs.append(f)
        self._reset()
        return f

    def module(self) -> Module:
        """Return a Module of the finished functions plus the pending one as ``main``.

        The pending function is finished only if it has content or no function was finished
        yet.
        """
        if self._args or self._ops or self._outputs is not None or not self._funcs:
            self.func("main")
        return Module(tuple(self._funcs), dict(self._constants))
