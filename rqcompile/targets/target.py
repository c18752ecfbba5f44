"""``Target``: one frozen value for "where the model runs", parsed from a string or a dict.

``Target.parse("llvm")``, ``Target.parse({"kind": "llvm", "mcpu": "znver3"})`` and
``Target.parse(Target(...))`` all give a ``Target``; attribute names are TVM's.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from rqcompile.errors import TargetError

__all__ = ["KINDS", "PRESETS", "Target", "TargetLike"]

#: Kinds that ``build`` knows. ``reference`` needs nothing; the others need apache-tvm.
KINDS = {
    "reference": "pure-torch interpreter of the rq IR (the oracle; always available)",
    "llvm": "CPU via Apache TVM (host CPU unless mcpu/mtriple are given)",
    "c": "portable C source via TVM's C backend, compiled here with the host C compiler",
    "opencl": "OpenCL kernels via TVM, run with pyopencl (PoCL on CPU in CI)",
    "cuda": "CUDA kernels via TVM + nvcc (fatbin for 'archs', default sm_80, sm_90), run "
    "with cuda-python",
    "metal": "Metal Shading Language source via TVM (generated, not run)",
}

#: Named presets: a string that stands for a full target dict (cross-compiled CPUs).
PRESETS: dict[str, dict[str, Any]] = {
    "aarch64": {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["+neon"]},
    "riscv64": {
        "kind": "llvm",
        "mtriple": "riscv64-unknown-linux-gnu",
        "mcpu": "generic-rv64",
        "mattr": ["+m", "+a", "+f", "+d", "+c", "+v"],
    },
}


@dataclass(frozen=True)
class Target:
    kind: str
    attrs: tuple[tuple[str, Any], ...] = ()

    @classmethod
    def parse(cls, target: TargetLike) -> Target:
        if isinstance(target, Target):
            return target
        if isinstance(target, str):
            text = target.strip()
            if text.startswith("{"):
                return cls.parse(json.loads(text))
            if " " in text:
                raise TargetError(
                    f"target {target!r}: option strings are not accepted (TVM 0.27 removed them). "
                    f"Use a dict, e.g. {{'kind': 'llvm', 'mcpu': 'znver3'}}."
                )
            if text in PRESETS:
                return cls.parse(PRESETS[text])
            return cls._make(text, {})
        if isinstance(target, Mapping):
            d = dict(target)
            kind = d.pop("kind", None)
            if not isinstance(kind, str):
                raise TargetError(
                    f"target dict {target!r} needs a 'kind', e.g. {{'kind': 'llvm'}}."
                )
            return cls._make(kind, d)
        raise TargetError(
            f"target must be a string, dict or rq Target, got {type(target).__name__}."
        )

    @classmethod
    def _make(cls, kind: str, attrs: dict[str, Any]) -> Target:
        if kind not in KINDS:
            known = "\n".join(f"  {k}: {v}" for k, v in KINDS.items())
            known += "\nPresets: " + ", ".join(f"{k} = {v}" for k, v in PRESETS.items())
            raise TargetError(f"unknown target kind {kind!r}. Supported kinds:\n{known}")
        return cls(kind, tuple(sorted((k, _freeze(v)) for k, v in attrs.items())))

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, **{k: _thaw(v) for k, v in self.attrs}}

    def __str__(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)


def _freeze(v: Any) -> Any:
    return tuple(_freeze(x) for x in v) if isinstance(v, list) else v


def _thaw(v: Any) -> Any:
    return [_thaw(x) for x in v] if isinstance(v, tuple) else v


TargetLike = Target | str | Mapping[str, Any]
