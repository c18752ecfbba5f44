"""Device kernels → source text (CUDA, OpenCL, Metal) and, for CUDA, a fatbin via nvcc.

Where it sits: ``device/build.py`` hands the lowered device IRModule to :func:`kernel_source`
(TVM's ``target.build.<kind>`` code generators, which the PyPI wheel ships even though it
has no GPU runtime), then :func:`nvcc_fatbin` for CUDA. The arch list defaults to
:data:`DEFAULT_CUDA_ARCHS` (Ampere and Hopper).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from typing import Any

from rqcompile.errors import TargetError
from rqcompile.targets.tvm.adapter import tvm

__all__ = ["DEFAULT_CUDA_ARCHS", "fatbin_archs", "find_nvcc", "kernel_source", "nvcc_fatbin"]

DEFAULT_CUDA_ARCHS = ("sm_80", "sm_90")
_NVCC_FIX = (
    "install the CUDA toolkit (nvcc) and put it on PATH or set CUDA_HOME; or build with "
    "target='opencl' / 'llvm', which need no CUDA toolkit"
)


def kernel_source(device_mod: Any, target: Any) -> str:
    """The device code TVM generates for ``device_mod`` (one translation unit)."""
    kind = str(target.kind.name)
    build = tvm.get_global_func(f"target.build.{kind}", allow_missing=True)
    if build is None:
        raise TargetError(f"this apache-tvm build has no {kind} code generator.")
    try:
        return _dedupe(str(build(device_mod, target).inspect_source()), kind)
    except Exception as e:  # TVM's own error types; keep them as the cause
        last = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
        if kind == "metal" and "float64" in last:
            raise TargetError(
                "Metal has no float64, and rq.quantize sums its ridge statistics in float64 "
                "(to match the reference bit for bit), so models with quantized activations "
                "cannot be generated for Metal yet. Weight-only presets (W4, W8) and float "
                "models can; or use target='opencl'."
            ) from e
        raise TargetError(f"TVM's {kind} code generator failed: {last}") from e


def _dedupe(src: str, kind: str) -> str:
    """One translation unit from ``inspect_source``'s per-function chunks.

    The source module prints every function as ``// Function: name`` followed by the whole
    preamble (headers, forward declarations) and that function's body; repeating the
    preamble is harmless for OpenCL/CUDA prototypes but not for Metal's ``struct``s or
    CUDA ``#include``-guarded helpers, so only the first preamble is kept.
    """
    chunks = re.split(r"^// Function: .*$", src, flags=re.M)
    chunks = [c for c in chunks if c.strip()]
    if len(chunks) <= 1:
        return src
    head = _preamble(chunks[0]).strip()
    out = [chunks[0]]
    for c in chunks[1:]:
        pre = _preamble(c)
        out.append(c[len(pre) :] if pre.strip() == head else c)
    return "\n".join(out)


_KERNEL_START = re.compile(r'^\s*(extern "C" )?(__kernel|__global__|kernel)\b')


def _preamble(chunk: str) -> str:
    """Everything before the first kernel *definition* (a kernel line not ending in ``;``)."""
    lines = chunk.splitlines(keepends=True)
    for i, line in enumerate(lines):
        if _KERNEL_START.match(line) and not line.rstrip().endswith(";"):
            return "".join(lines[:i])
    return chunk


def find_nvcc() -> str | None:
    """Path of ``nvcc`` (PATH, then ``$CUDA_HOME/bin``, then /usr/local/cuda/bin), or None."""
    found = shutil.which("nvcc")
    if found:
        return found
    for root in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if root and os.path.isfile(os.path.join(root, "bin", "nvcc")):
            return os.path.join(root, "bin", "nvcc")
    return None


def nvcc_fatbin(source: str, archs: Sequence[str] = DEFAULT_CUDA_ARCHS) -> bytes:
    """Compile CUDA ``source`` with nvcc into one fatbin holding a cubin per arch.

    Args:
        source: the CUDA translation unit (:func:`kernel_source`).
        archs: ``sm_XY`` names; each gets SASS (``code=sm_XY``), and the newest also PTX
            so newer GPUs can JIT it.

    Raises:
        TargetError: nvcc is missing (the message names the fix) or rejected the source
            (the message quotes ptxas/nvcc's first error lines).
    """
    nvcc = find_nvcc()
    if nvcc is None:
        raise TargetError(
            f"target 'cuda' compiles kernels with nvcc, which was not found: {_NVCC_FIX}."
        )
    bad = [a for a in archs if not re.fullmatch(r"sm_\d+[a-z]?", a)]
    if bad or not archs:
        raise TargetError(f"cuda arch list {list(archs)!r}: use names like 'sm_80', 'sm_90'.")
    gencode = []
    for a in archs:
        gencode += ["-gencode", f"arch=compute_{a[3:]},code=sm_{a[3:]}"]
    newest = max(archs, key=lambda a: int(re.sub(r"\D", "", a)))
    gencode += ["-gencode", f"arch=compute_{newest[3:]},code=compute_{newest[3:]}"]
    with tempfile.TemporaryDirectory(prefix="rq-nvcc-") as d:
        src, out = os.path.join(d, "kernels.cu"), os.path.join(d, "kernels.fatbin")
        with open(src, "w") as f:
            f.write(source)
        cmd = [nvcc, "--fatbin", "-O3", *gencode, "-o", out, src]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            msg = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[:8])
            raise TargetError(f"nvcc failed to compile the generated CUDA kernels:\n{msg}")
        with open(out, "rb") as f:
            return f.read()


def fatbin_archs(fatbin: bytes) -> list[str]:
    """The ``sm_XY`` of every cubin embedded (uncompressed) in ``fatbin``, in order.

    A cubin is an ELF64 file whose ``e_flags`` (offset 48) carry the SM version in bits
    8-15 (CUDA 12/13 layout: 0x50 = sm_80, 0x5a = sm_90). Used by the tests to check that
    nvcc built every requested arch; compressed entries are not seen.
    """
    out = []
    for m in re.finditer(b"\x7fELF\x02", fatbin):
        flags = int.from_bytes(fatbin[m.start() + 48 : m.start() + 52], "little")
        out.append(f"sm_{(flags >> 8) & 0xFF}")
    return out
