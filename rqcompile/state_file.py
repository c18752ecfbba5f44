"""Safetensors checkpoints with JSON metadata, written atomically.

The file holds the model's ``state_dict`` (every tensor cloned and made contiguous, so
tied or otherwise shared tensors are stored once per key and safetensors never sees
aliasing) and, in the safetensors header's metadata, the caller's ``meta`` dict as JSON
under the key ``"rqcompile.meta"``. Writes go to a temporary file in the target's
directory, are fsync'ed, then ``os.replace``'d over the target: a failed write leaves the
old file (or no file) and no temporary behind.
"""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

__all__ = ["META_KEY", "load_checkpoint", "save_checkpoint"]

META_KEY = "rqcompile.meta"


def save_checkpoint(
    model: nn.Module, path: str | os.PathLike[str], meta: dict[str, Any] | None = None
) -> Path:
    """Write ``model.state_dict()`` and ``meta`` to a safetensors file, atomically.

    Args:
        model: Any module; its full ``state_dict`` (parameters and persistent buffers) is
            saved.
        path: Target file; its directory must exist.
        meta: JSON-serializable metadata (config, step, metrics ...).

    Returns:
        The path written.

    Raises:
        TypeError: If ``meta`` is not JSON-serializable or the state dict holds non-tensor
            entries; nothing is written then.

    Example:
        >>> import tempfile, os
        >>> d = tempfile.mkdtemp()
        >>> p = save_checkpoint(nn.Linear(2, 2), os.path.join(d, "m.safetensors"), {"s": 1})
        >>> load_checkpoint(nn.Linear(2, 2), p)
        {'s': 1}
    """
    target = Path(path)
    header = {META_KEY: json.dumps(meta or {}, allow_nan=True), "format": "pt"}
    tensors: dict[str, torch.Tensor] = {}
    for key, value in model.state_dict().items():
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"state_dict entry {key!r} is a {type(value).__name__}, not a tensor")
        tensors[key] = value.detach().to("cpu", copy=True).contiguous()
    from rqcompile.fileio import atomic_path

    with atomic_path(target, what="the checkpoint") as tmp:
        try:
            save_file(tensors, tmp, metadata=header)
        except Exception as e:  # safetensors reports a full disk as its own error type
            if isinstance(e, OSError):
                raise
            raise OSError(errno.EIO, f"{type(e).__name__}: {e}") from e
    return target


def load_checkpoint(
    model: nn.Module, path: str | os.PathLike[str], *, strict: bool = True
) -> dict[str, Any]:
    """Load a :func:`save_checkpoint` file into ``model`` (in place) and return its meta.

    Tensors are copied into the model's existing parameters and buffers, so their devices
    and dtypes are kept and tied parameters stay tied.

    Args:
        model: A module with the same structure as the saved one.
        path: File written by :func:`save_checkpoint`.
        strict: Passed to ``load_state_dict``: require exactly matching keys.

    Returns:
        The ``meta`` dict saved with the weights (``{}`` if the file has none).

    Raises:
        RuntimeError: On missing/unexpected keys (when ``strict``) or shape mismatch.
    """
    from rqcompile.fileio import check_regular

    path = check_regular(path, what="a checkpoint")
    state = load_file(path, device="cpu")
    model.load_state_dict(state, strict=strict)
    with safe_open(path, framework="pt") as fh:
        header = fh.metadata() or {}
    meta: dict[str, Any] = json.loads(header.get(META_KEY, "{}"))
    return meta
