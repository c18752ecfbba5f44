"""Bind a compiled kernel library to the IR, weights and build options it was built from.

An artifact's checksums prove its members were not damaged, not that they belong together:
``kernels.so`` from an A8W4 build of a model, dropped into the A4W4 artifact of the same model
with the checksums recomputed, loads and runs with wrong outputs (the kernels read the weights
with another layout). So the library carries its own identity: a trailer appended to the
library bytes (the dynamic loader ignores bytes after the ELF/Mach-O image, and the trailer is
stripped before loading anyway)::

    <library bytes> b"RQBIND1\\0" <32-byte SHA-256> <8-byte little-endian library length>

where the SHA-256 is :func:`binding_digest` of the IR text (constants elided), every
constant's name, dtype, shape and bytes, the target and the CPU features. ``exe.save`` writes
the trailer; ``rq.load(..., trust_kernels=True)`` recomputes the digest from the artifact's
own IR and weights and refuses a library whose trailer is missing or differs.

This catches swapped or stale libraries. It is not a signature: someone who edits a file on
purpose can recompute the trailer too; load files you do not trust with
``trust_kernels=False`` (the kernels are rebuilt from the IR).
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Sequence
from typing import Any

from rqcompile.errors import ArtifactError

__all__ = ["MAGIC", "bind", "binding_digest", "check_binding", "unbind"]

MAGIC = b"RQBIND1\x00"
_TRAILER = len(MAGIC) + 32 + 8


def binding_digest(ir: Any, target: Any, features: Sequence[str]) -> bytes:
    """SHA-256 of everything a kernel library depends on."""
    import torch

    from rqcompile.ir.printer import print_module

    h = hashlib.sha256()
    h.update(print_module(ir).encode())
    for name in sorted(ir.constants):
        t = ir.constants[name].detach().cpu().contiguous()
        h.update(json.dumps([name, str(t.dtype), list(t.shape)]).encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    h.update(json.dumps(target.to_dict(), sort_keys=True).encode())
    h.update(json.dumps(sorted(features)).encode())
    return h.digest()


def bind(library: bytes, digest: bytes) -> bytes:
    """``library`` with its binding trailer (replacing an older one)."""
    lib, _ = unbind(library)
    return lib + MAGIC + digest + struct.pack("<Q", len(lib))


def unbind(data: bytes) -> tuple[bytes, bytes | None]:
    """``(library, digest)``; ``digest`` is ``None`` when ``data`` has no valid trailer."""
    if len(data) < _TRAILER or data[-_TRAILER : -_TRAILER + len(MAGIC)] != MAGIC:
        return data, None
    (n,) = struct.unpack("<Q", data[-8:])
    if n != len(data) - _TRAILER:
        return data, None
    return data[:n], data[-40:-8]


def check_binding(path: str, data: bytes, ir: Any, target: Any, features: Sequence[str]) -> bytes:
    """The library in ``data`` if its trailer matches ``ir``/``target``/``features``.

    Raises:
        ArtifactError: no trailer, or a library built from another IR, weights or options.
    """
    lib, digest = unbind(data)
    if digest is None:
        raise ArtifactError(
            f"{path}: kernels.so carries no binding to this artifact's IR and weights (written "
            "by an older rqcompile, or replaced). Re-save it from the model, or load it with "
            "rq.load(path, trust_kernels=False) to rebuild the kernels from the IR."
        )
    if digest != binding_digest(ir, target, features):
        raise ArtifactError(
            f"{path}: kernels.so was built from another IR, weights or build options than the "
            "ones in this artifact (its binding hash differs): the library was swapped or is "
            "stale. Rebuild the artifact, or load it with rq.load(path, trust_kernels=False)."
        )
    return lib
