"""CPU feature detection for the LLVM targets. Pure Python: no tvm, no torch.

Kernels and schedules pick instruction-set-specific paths (AVX-512 VNNI dot products,
VPOPCNTDQ popcounts, ...) only when the *target* has the feature, and a runtime refuses to
run code built for features the *host* lacks (it would die with SIGILL). Both questions are
answered here, from ``/proc/cpuinfo`` flags and from the target's ``mcpu``/``mattr``, never
by assumption: CI runners have AVX2 only, other machines have AVX-512 VNNI/VPOPCNTDQ.

Feature names are the ``/proc/cpuinfo`` spellings (``avx512_vnni``); :data:`LLVM_NAMES` maps
them to LLVM's (``avx512vnni``), which ``mattr`` uses.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

__all__ = [
    "FEATURES",
    "LLVM_NAMES",
    "MCPU_FEATURES",
    "amx_permission",
    "host_features",
    "missing_features",
    "parse_cpuinfo",
    "required_features",
]

#: The features rqcompile's CPU kernels care about, in /proc/cpuinfo spelling.
FEATURES: tuple[str, ...] = (
    "avx2",
    "fma",
    "avx512f",
    "avx512bw",
    "avx512_vnni",
    "avx512_vpopcntdq",
    "avx512_bitalg",
    "avx_vnni",
    "amx_tile",
    "amx_int8",
)

#: /proc/cpuinfo spelling -> LLVM ``mattr`` spelling.
LLVM_NAMES: Mapping[str, str] = {
    "avx2": "avx2",
    "fma": "fma",
    "avx512f": "avx512f",
    "avx512bw": "avx512bw",
    "avx512_vnni": "avx512vnni",
    "avx512_vpopcntdq": "avx512vpopcntdq",
    "avx512_bitalg": "avx512bitalg",
    "avx_vnni": "avxvnni",
    "amx_tile": "amx-tile",
    "amx_int8": "amx-int8",
}
_FROM_LLVM = {v: k for k, v in LLVM_NAMES.items()}

_V3 = frozenset({"avx2", "fma"})
_V4 = _V3 | {"avx512f", "avx512bw"}
_ICL = _V4 | {"avx512_vnni", "avx512_vpopcntdq", "avx512_bitalg"}
_SPR = _ICL | {"avx_vnni", "amx_tile", "amx_int8"}

#: Which of :data:`FEATURES` an LLVM ``mcpu`` implies (x86 only; unknown CPUs imply none).
#: Used without TVM; with TVM, ``adapter.target_features`` asks LLVM itself.
MCPU_FEATURES: Mapping[str, frozenset[str]] = {
    "x86-64": frozenset(),
    "x86-64-v2": frozenset(),
    "x86-64-v3": _V3,
    "x86-64-v4": _V4,
    "haswell": _V3,
    "broadwell": _V3,
    "skylake": _V3,
    "skylake-avx512": _V4,
    "cascadelake": _V4 | {"avx512_vnni"},
    "cooperlake": _V4 | {"avx512_vnni"},
    "icelake-client": _ICL,
    "icelake-server": _ICL,
    "tigerlake": _ICL,
    "sapphirerapids": _SPR,
    "emeraldrapids": _SPR,
    "graniterapids": _SPR,
    "alderlake": _V3 | {"avx_vnni"},
    "raptorlake": _V3 | {"avx_vnni"},
    "meteorlake": _V3 | {"avx_vnni"},
    "znver1": _V3,
    "znver2": _V3,
    "znver3": _V3,
    "znver4": _ICL,
    "znver5": _ICL | {"avx_vnni"},
}


def parse_cpuinfo(text: str) -> frozenset[str]:
    """The :data:`FEATURES` present in the first ``flags`` line of ``/proc/cpuinfo`` text.

    Example:
        >>> sorted(parse_cpuinfo("flags\\t: fpu avx2 fma avx512f sse4_2\\n"))
        ['avx2', 'avx512f', 'fma']
    """
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            flags = set(value.split())
            return frozenset(f for f in FEATURES if f in flags)
    return frozenset()


@functools.lru_cache(maxsize=4)
def host_features(path: str = "/proc/cpuinfo") -> frozenset[str]:
    """:data:`FEATURES` of this machine (empty when ``path`` is unreadable, e.g. on macOS)."""
    try:
        return parse_cpuinfo(Path(path).read_text(encoding="utf-8", errors="replace"))
    except OSError:
        return frozenset()


def _as_dict(target: Any) -> Mapping[str, Any]:
    if isinstance(target, Mapping):
        return target
    if isinstance(target, str):
        return {"kind": target}
    export = getattr(target, "export", None)  # tvm.target.Target, without importing tvm
    if callable(export):
        exported = export()
        if isinstance(exported, Mapping):
            return exported
    raise TypeError(f"cannot read CPU features of target {target!r}")


def _mattr(value: Any) -> Iterable[str]:
    if value is None:
        return ()
    if isinstance(value, str):
        return [v for v in value.split(",") if v]
    return [str(v) for v in value]


def required_features(target: Any) -> frozenset[str]:
    """The :data:`FEATURES` that code built for ``target`` may use (so the host must have).

    Reads ``mcpu`` through :data:`MCPU_FEATURES` (``"native"``/absent: the host's features
    for an LLVM target) and applies ``mattr`` (``+feature`` adds, ``-feature`` removes;
    LLVM or cpuinfo spellings). Non-LLVM kinds need no CPU features.

    Args:
        target: a TVM-style dict, a kind string, or a ``tvm.target.Target``.

    Example:
        >>> sorted(required_features({"kind": "llvm", "mcpu": "cascadelake",
        ...                           "mattr": ["-avx512vnni"]}))
        ['avx2', 'avx512bw', 'avx512f', 'fma']
    """
    t = _as_dict(target)
    if t.get("kind", "llvm") not in ("llvm", "c"):
        return frozenset()
    mcpu = t.get("mcpu")
    triple = str(t.get("mtriple", ""))
    if triple and not triple.startswith(("x86_64", "i686", "i386")):
        return frozenset()
    if mcpu in (None, "", "native"):
        feats = set(host_features()) if t.get("kind", "llvm") == "llvm" and mcpu else set()
    else:
        feats = set(MCPU_FEATURES.get(str(mcpu), frozenset()))
    for attr in _mattr(t.get("mattr")):
        sign, name = attr[0], attr[1:]
        name = _FROM_LLVM.get(name, name)
        if name not in FEATURES:
            continue
        if sign == "+":
            feats.add(name)
        elif sign == "-":
            feats.discard(name)
    return frozenset(feats)


def missing_features(target: Any, have: frozenset[str] | None = None) -> frozenset[str]:
    """Features ``target`` needs that the host (or ``have``) lacks; empty means safe to run."""
    return required_features(target) - (host_features() if have is None else have)


#: ``arch_prctl`` (x86-64 syscall 158) request for permission to use an XSAVE feature, and
#: the AMX tile-data feature number (Linux ``ARCH_REQ_XCOMP_PERM``, ``XFEATURE_XTILEDATA``).
_SYS_ARCH_PRCTL, _ARCH_REQ_XCOMP_PERM, _XFEATURE_XTILEDATA = 158, 0x1023, 18


@functools.lru_cache(maxsize=1)
def amx_permission() -> str | None:
    """Ask Linux, once per process, for the AMX tile-data state; ``None`` when granted, else
    why not (for the refusal's message).

    Linux (5.16 and later) keeps the 8 KiB of AMX tile registers out of every thread's saved
    state until the process asks for them; the first AMX instruction of a process that has
    not asked dies with SIGILL. The permission is process-wide (threads started before or
    after share it), so the runtime asks before loading kernels built with ``amx_tile``.
    """
    import ctypes
    import os
    import platform

    if platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64"):
        return f"AMX tiles need Linux on x86-64 (this is {platform.system()} {platform.machine()})"
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        rc = libc.syscall(_SYS_ARCH_PRCTL, _ARCH_REQ_XCOMP_PERM, _XFEATURE_XTILEDATA)
    except (OSError, AttributeError) as e:
        return f"cannot call arch_prctl: {e}"
    if rc != 0:
        err = ctypes.get_errno()
        return (f"Linux refused the AMX tile-data permission (arch_prctl(ARCH_REQ_XCOMP_PERM) "
                f"failed: {os.strerror(err)}; AMX needs Linux 5.16 or later)")  # fmt: skip
    return None
