"""The IR verifier: checks every invariant and reports all problems at once.

Checked, per function: known op names; operands defined before use and with the type of
their definition; no value defined twice; operand count, attributes (missing, unexpected,
mistyped, invalid values) and result types agree with the op registry; ``rq.const`` names
exist in ``Module.constants`` with matching dtype and shape (dynamic dims excluded); outputs
are defined. Per module: function names are unique.

Each problem names the op the way the printer shows it (``@main %7 = rq.int_matmul``) and
its layer, so the message can be matched against ``print_module`` output.
"""

from __future__ import annotations

from rqcompile.errors import VerifyError
from rqcompile.ir.core import Func, Module, Op, ssa_names
from rqcompile.ir.ops import get_op
from rqcompile.ir.types import DTYPES, TensorType, torch_dtype

__all__ = ["collect_problems", "verify"]


def verify(module: Module) -> None:
    """Raise a :class:`VerifyError` listing every invariant ``module`` breaks.

    Args:
        module: The module to check.

    Raises:
        VerifyError: If there is at least one problem; the message lists them all.

    Example:
        >>> from rqcompile.ir import Builder, TensorType
        >>> b = Builder()
        >>> b.ret(b.op("rq.relu", b.arg(TensorType((2,), "f32"))))
        >>> verify(b.module())  # passes silently
    """
    problems = collect_problems(module)
    if problems:
        n = len(problems)
        lines = "\n".join(f"  - {p}" for p in problems)
        raise VerifyError(f"module failed verification with {n} problem{'s' * (n != 1)}:\n{lines}")


def collect_problems(module: Module) -> list[str]:
    """Return every problem :func:`verify` would report, in program order."""
    problems: list[str] = []
    seen: set[str] = set()
    for f in module.funcs:
        if f.name in seen:
            problems.append(f"@{f.name}: function name defined twice")
        seen.add(f.name)
        problems += _check_func(f, module)
    return problems


def _label(func: Func, op: Op, names: dict[int, str]) -> str:
    res = ", ".join(names.get(v.id, "%?") for v in op.results)
    text = f"@{func.name} " + (f"{res} = " if res else "") + op.name
    if op.loc is not None:
        src = f", {op.loc.source}" if op.loc.source is not None else ""
        text += f" (layer {op.loc.layer!r}{src})"
    return text


def _check_func(func: Func, module: Module) -> list[str]:
    problems: list[str] = []
    names = ssa_names(func)
    later: set[int] = {v.id for op in func.ops for v in op.results}
    defined: dict[int, TensorType] = {}
    for i, v in enumerate(func.args):
        if v.id in defined:
            problems.append(f"@{func.name}: argument #{i} redefines value id {v.id}")
        defined[v.id] = v.type
    for op in func.ops:
        label = _label(func, op, names)
        for i, v in enumerate(op.operands):
            if v.id in defined:
                if defined[v.id] != v.type:
                    problems.append(
                        f"{label}: operand #{i} {names[v.id]} is used as {v.type} "
                        f"but defined as {defined[v.id]}"
                    )
            elif v.id in later:
                problems.append(
                    f"{label}: operand #{i} {names[v.id]} is used before its definition"
                )
            else:
                problems.append(f"{label}: operand #{i} (value id {v.id}) is never defined")
        problems += [f"{label}: {p}" for p in _check_op(op, module)]
        for v in op.results:
            if v.id in defined:
                problems.append(f"{label}: result {names[v.id]} redefines value id {v.id}")
            defined.setdefault(v.id, v.type)
    for i, v in enumerate(func.outputs):
        if v.id not in defined:
            problems.append(f"@{func.name}: output #{i} (value id {v.id}) is never defined")
        elif defined[v.id] != v.type:
            problems.append(
                f"@{func.name}: output #{i} {names[v.id]} is returned as {v.type} "
                f"but defined as {defined[v.id]}"
            )
    return problems


def _check_op(op: Op, module: Module) -> list[str]:
    """Schema, type inference and constant checks of one op."""
    try:
        opdef = get_op(op.name)
    except VerifyError as e:
        return [str(e)]
    attrs = op.attrs_dict
    problems = opdef.check_attrs(attrs)
    why = opdef.check_operands(len(op.operands))
    if why is not None:
        problems.insert(0, why)
    if problems:
        return problems
    try:
        inferred = opdef.result_types(tuple(v.type for v in op.operands), attrs)
    except VerifyError as e:
        return [str(e)]
    got = tuple(v.type for v in op.results)
    if len(got) != len(inferred):
        problems.append(f"has {len(got)} results, but {op.name} produces {len(inferred)}")
    else:
        for i, (g, want) in enumerate(zip(got, inferred, strict=True)):
            if g != want:
                problems.append(f"result #{i} has type {g}, but {op.name} infers {want}")
    if op.name == "rq.const":
        problems += _check_const(op, module)
    return problems


def _check_const(op: Op, module: Module) -> list[str]:
    name = op.attr("name")
    tensor = module.constants.get(name)  # type: ignore[arg-type]
    if tensor is None:
        have = ", ".join(repr(n) for n in module.constants) or "none"
        return [f"constant {name!r} is missing from module.constants (have: {have})"]
    problems: list[str] = []
    dtype = op.attr("dtype")
    if isinstance(dtype, str) and dtype in DTYPES and torch_dtype(dtype) != tensor.dtype:
        problems.append(
            f"constant {name!r} is stored as {tensor.dtype}, but dtype {dtype} needs "
            f"{torch_dtype(dtype)}"
        )
    declared = op.results[0].type.shape if len(op.results) == 1 else None
    actual = tuple(tensor.shape)
    if declared is not None and (
        len(declared) != len(actual)
        or any(d is not None and d != a for d, a in zip(declared, actual, strict=False))
    ):
        shown = "x".join("?" if d is None else str(d) for d in declared)
        problems.append(
            f"constant {name!r} has shape {list(actual)}, but the op declares {shown or '()'}"
        )
    return problems
