"""The device launch plan: plain data, JSON round-trippable, no TVM needed to read it.

``lower.py`` writes the per-function part (:class:`FuncPlan`: temporaries and launches with
grid/block sizes), ``graph.py`` the model part (:class:`ModelPlan`: values and calls), and
``launcher.Executor`` replays it through a driver. Artifacts store it as
``device_plan.json``, so a saved OpenCL/CUDA model loads without apache-tvm.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from rqcompile.errors import ArtifactError

__all__ = ["Arg", "Call", "FuncPlan", "Launch", "ModelPlan", "Value"]


@dataclass(frozen=True)
class Arg:
    """One kernel argument: a function parameter, a temporary, or an immediate scalar.

    ``kind`` is ``"param"`` (``index`` into the function's parameters: a buffer or a
    scalar), ``"temp"`` (``index`` into :attr:`FuncPlan.temps`) or ``"imm"`` (``value`` of
    ``dtype``).
    """

    kind: str
    index: int = 0
    dtype: str = ""
    value: int = 0

    def to_json(self) -> list[Any]:
        return [self.kind, self.index, self.dtype, self.value]

    @classmethod
    def from_json(cls, v: list[Any]) -> Arg:
        return cls(str(v[0]), int(v[1]), str(v[2]), int(v[3]))


@dataclass(frozen=True)
class Launch:
    """One kernel launch: name, arguments in kernel-parameter order, grid and block sizes."""

    kernel: str
    args: tuple[Arg, ...]
    grid: tuple[int, int, int]
    block: tuple[int, int, int]

    def to_json(self) -> dict[str, Any]:
        return {
            "kernel": self.kernel,
            "args": [a.to_json() for a in self.args],
            "grid": list(self.grid),
            "block": list(self.block),
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Launch:
        return cls(
            str(d["kernel"]),
            tuple(Arg.from_json(a) for a in d["args"]),
            tuple(int(v) for v in d["grid"]),  # type: ignore[arg-type]
            tuple(int(v) for v in d["block"]),  # type: ignore[arg-type]
        )


@dataclass(frozen=True)
class FuncPlan:
    """How to run one PrimFunc: its parameter kinds, its temporaries, its launches."""

    params: tuple[str, ...]  # "buffer" or a scalar dtype ("int64", ...), in call order
    temps: tuple[tuple[str, int], ...] = ()  # (dtype, elements)
    launches: tuple[Launch, ...] = field(default_factory=tuple)

    def to_json(self) -> dict[str, Any]:
        return {
            "params": list(self.params),
            "temps": [list(t) for t in self.temps],
            "launches": [x.to_json() for x in self.launches],
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> FuncPlan:
        return cls(
            tuple(str(p) for p in d["params"]),
            tuple((str(t[0]), int(t[1])) for t in d["temps"]),
            tuple(Launch.from_json(x) for x in d["launches"]),
        )


@dataclass(frozen=True)
class Value:
    """A tensor of the model: every input, weight, intermediate and output is one."""

    shape: tuple[int, ...]
    dtype: str

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


@dataclass(frozen=True)
class Call:
    """A call of one lowered function: its parameters as value ids or int scalars."""

    func: str
    args: tuple[tuple[str, int], ...]  # ("value", id) or (scalar dtype, value)


@dataclass(frozen=True)
class ModelPlan:
    """The whole model: values, which are inputs/weights/outputs, calls, and function plans."""

    values: tuple[Value, ...]
    inputs: tuple[int, ...]
    weights: tuple[tuple[str, int], ...]
    outputs: tuple[int, ...]
    calls: tuple[Call, ...]
    funcs: Mapping[str, FuncPlan]
    consts: tuple[tuple[int, tuple[float, ...]], ...] = ()  # small relax constants, inline

    def to_json(self) -> str:
        return json.dumps(
            {
                "values": [[list(v.shape), v.dtype] for v in self.values],
                "inputs": list(self.inputs),
                "weights": [list(w) for w in self.weights],
                "outputs": list(self.outputs),
                "calls": [[c.func, [list(a) for a in c.args]] for c in self.calls],
                "funcs": {k: f.to_json() for k, f in sorted(self.funcs.items())},
                "consts": [[i, list(d)] for i, d in self.consts],
            },
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str) -> ModelPlan:
        try:
            d = json.loads(text)
            plan = cls(
                tuple(Value(tuple(int(s) for s in v[0]), str(v[1])) for v in d["values"]),
                tuple(int(i) for i in d["inputs"]),
                tuple((str(n), int(i)) for n, i in d["weights"]),
                tuple(int(i) for i in d["outputs"]),
                tuple(
                    Call(str(f), tuple((str(a[0]), int(a[1])) for a in args))
                    for f, args in d["calls"]
                ),
                {k: FuncPlan.from_json(v) for k, v in d["funcs"].items()},
                tuple((int(i), tuple(data)) for i, data in d["consts"]),
            )
        except (KeyError, TypeError, ValueError, IndexError) as e:
            raise ArtifactError(f"device plan is malformed ({type(e).__name__}: {e}).") from e
        plan.check()
        return plan

    def check(self) -> None:
        """Every reference in range (value ids, functions, parameters, temporaries).

        Raises:
            ArtifactError: naming the first bad reference.
        """
        n = len(self.values)
        ids = [*self.inputs, *(i for _, i in self.weights), *self.outputs]
        ids += [i for i, _ in self.consts]
        ids += [v for c in self.calls for k, v in c.args if k == "value"]
        bad = [i for i in ids if not 0 <= i < n]
        if bad:
            raise ArtifactError(f"device plan refers to value {bad[0]}; it has {n} values.")
        for c in self.calls:
            f = self.funcs.get(c.func)
            if f is None or len(f.params) != len(c.args):
                raise ArtifactError(f"device plan calls {c.func!r} with a wrong signature.")
            for ln in f.launches:
                for a in ln.args:
                    limit = len(f.params) if a.kind == "param" else len(f.temps)
                    if a.kind != "imm" and not 0 <= a.index < limit:
                        raise ArtifactError(
                            f"device plan: kernel {ln.kernel} refers to {a.kind} {a.index}."
                        )
