"""The OpenCL driver (pyopencl): compiles TVM's OpenCL source and launches its kernels.

Runs anywhere an OpenCL platform exists; in CI that is PoCL on the CPU
(``pip install 'rqcompile[opencl]'`` installs ``pyopencl`` and
``pocl-binary-distribution``). pyopencl is imported lazily, so ``import rqcompile`` never
needs it. Buffers are ``pyopencl.Buffer``; torch tensors cross through numpy views.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from rqcompile.errors import TargetError

__all__ = ["OpenCLDriver", "opencl_available"]

_NP_SCALARS = {"int32": np.int32, "int64": np.int64, "uint32": np.uint32, "float32": np.float32}
_FIX = "pip install 'rqcompile[opencl]' (pyopencl + pocl-binary-distribution)"


def _cl() -> Any:
    try:
        import pyopencl
    except ImportError as e:
        raise TargetError(f"target 'opencl' needs pyopencl, which is not installed: {_FIX}.") from e
    return pyopencl


@functools.lru_cache(maxsize=1)
def _context() -> tuple[Any, Any]:
    """The first OpenCL device of the first platform that has one (PoCL in CI)."""
    cl = _cl()
    try:
        platforms = cl.get_platforms()
    except Exception as e:  # pyopencl raises its own LogicError when no ICD is found
        raise TargetError(f"no OpenCL platform found ({e}). Install one: {_FIX}.") from e
    for p in platforms:
        devices = p.get_devices()
        if devices:
            ctx = cl.Context(devices[:1])
            return ctx, cl.CommandQueue(ctx)
    raise TargetError(f"OpenCL platforms {platforms} have no devices. Install one: {_FIX}.")


def opencl_available() -> str | None:
    """``None`` when OpenCL can run here, else why not (for test skips and errors)."""
    try:
        _context()
    except TargetError as e:
        return str(e)
    return None


class OpenCLDriver:
    """:class:`~rqcompile.targets.tvm.device.launcher.Driver` over one pyopencl program."""

    def __init__(self, source: str) -> None:
        cl = _cl()
        self._cl = cl
        self.ctx, self.queue = _context()
        try:
            self.program = cl.Program(self.ctx, source).build()
        except Exception as e:
            raise TargetError(f"the OpenCL compiler rejected the generated kernels: {e}") from e
        self._kernels: dict[str, Any] = {}

    def alloc(self, dtype: str, numel: int) -> Any:
        nbytes = numel * np.dtype("bool" if dtype == "bool" else dtype).itemsize
        return self._cl.Buffer(self.ctx, self._cl.mem_flags.READ_WRITE, size=max(nbytes, 4))

    def upload(self, buf: Any, x: torch.Tensor) -> None:
        self._cl.enqueue_copy(self.queue, buf, x.cpu().contiguous().numpy(), is_blocking=True)

    def download(self, buf: Any, dtype: str, shape: Sequence[int]) -> torch.Tensor:
        out = np.empty(tuple(shape), dtype=dtype)
        self._cl.enqueue_copy(self.queue, out, buf, is_blocking=True)
        return torch.from_numpy(out)

    def launch(
        self,
        kernel: str,
        args: Sequence[tuple[str, Any]],
        grid: Sequence[int],
        block: Sequence[int],
    ) -> None:
        k = self._kernels.get(kernel)
        if k is None:
            k = self._kernels[kernel] = getattr(self.program, kernel)
        for i, (kind, v) in enumerate(args):
            k.set_arg(i, v if kind == "buffer" else _NP_SCALARS[kind](v))
        glob = tuple(g * b for g, b in zip(grid, block, strict=True))
        self._cl.enqueue_nd_range_kernel(self.queue, k, glob, tuple(block))

    def finish(self) -> None:
        self.queue.finish()
