"""The CUDA driver: loads the nvcc-built fatbin and launches kernels with cuda-python.

Buffers are torch CUDA tensors (allocated by torch's caching allocator on the current
device), so inputs that are already on the GPU are copied device-to-device and outputs come
back as torch CUDA tensors. Kernels run on torch's current stream. cuda-python
(``cuda.bindings.driver``) is imported lazily; ``pip install 'rqcompile[cuda]'``.

UNVERIFIED: no GPU was available when this was written; the driver calls below have not
been executed (the plan, argument order and grid/block sizes they receive are the ones the
OpenCL target runs exact in CI). Run ``pytest -m cuda`` on a GPU machine to check.
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence
from typing import Any

import torch

from rqcompile.errors import TargetError

__all__ = ["CudaDriver", "cuda_available"]

_CTYPES = {
    "int32": ctypes.c_int32,
    "int64": ctypes.c_int64,
    "uint32": ctypes.c_uint32,
    "float32": ctypes.c_float,
}
_FIX = "pip install 'rqcompile[cuda]' (cuda-python)"


def cuda_available() -> str | None:
    """``None`` when CUDA kernels can run here, else why not."""
    if not torch.cuda.is_available():
        return "no CUDA GPU is visible to torch (torch.cuda.is_available() is False)"
    try:
        from cuda.bindings import driver  # noqa: F401
    except ImportError:
        return f"cuda-python is not installed: {_FIX}"
    return None


def _cu() -> Any:
    try:
        from cuda.bindings import driver
    except ImportError as e:
        raise TargetError(f"target 'cuda' runs kernels with cuda-python: {_FIX}.") from e
    return driver


def _check(cu: Any, result: Any, what: str) -> Any:
    err, *rest = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        _, msg = cu.cuGetErrorString(err)
        raise TargetError(f"CUDA driver call {what} failed: {msg!r} ({err}).")
    return rest[0] if len(rest) == 1 else rest


class CudaDriver:
    """:class:`~rqcompile.targets.tvm.device.launcher.Driver` over one fatbin module."""

    def __init__(self, fatbin: bytes) -> None:
        cu = self._cu = _cu()
        torch.cuda.init()
        self.device = torch.device("cuda", torch.cuda.current_device())
        torch.empty(1, device=self.device)  # torch's runtime makes the primary context current
        _check(cu, cu.cuInit(0), "cuInit")
        ctx = _check(cu, cu.cuCtxGetCurrent(), "cuCtxGetCurrent")
        if not int(ctx):
            dev = _check(cu, cu.cuDeviceGet(self.device.index), "cuDeviceGet")
            ctx = _check(cu, cu.cuDevicePrimaryCtxRetain(dev), "cuDevicePrimaryCtxRetain")
            _check(cu, cu.cuCtxSetCurrent(ctx), "cuCtxSetCurrent")
        self._image = fatbin  # the driver reads it during the call; keep it alive anyway
        self.module = _check(cu, cu.cuModuleLoadData(fatbin), "cuModuleLoadData")
        self._funcs: dict[str, Any] = {}

    def alloc(self, dtype: str, numel: int) -> torch.Tensor:
        from rqcompile.targets.tvm.device.launcher import TORCH_DTYPES

        return torch.empty(max(numel, 1), dtype=TORCH_DTYPES[dtype], device=self.device)

    def upload(self, buf: torch.Tensor, x: torch.Tensor) -> None:
        buf.view(-1)[: x.numel()].copy_(x.reshape(-1), non_blocking=True)

    def download(self, buf: torch.Tensor, dtype: str, shape: Sequence[int]) -> torch.Tensor:
        n = 1
        for d in shape:
            n *= d
        return buf[:n].reshape(tuple(shape)).clone()

    def launch(
        self,
        kernel: str,
        args: Sequence[tuple[str, Any]],
        grid: Sequence[int],
        block: Sequence[int],
    ) -> None:
        cu = self._cu
        f = self._funcs.get(kernel)
        if f is None:
            f = self._funcs[kernel] = _check(
                cu, cu.cuModuleGetFunction(self.module, kernel.encode()), f"get {kernel}"
            )
        holders = [
            ctypes.c_void_p(v.data_ptr()) if kind == "buffer" else _CTYPES[kind](v)
            for kind, v in args
        ]
        params = (ctypes.c_void_p * len(holders))(*(ctypes.addressof(h) for h in holders))
        stream = cu.CUstream(torch.cuda.current_stream(self.device).cuda_stream)
        _check(
            cu,
            # kernelParams as an int: the address of a void*[] (cuda-python passes it through)
            cu.cuLaunchKernel(f, *grid, *block, 0, stream, ctypes.addressof(params), 0),
            f"cuLaunchKernel({kernel})",
        )

    def finish(self) -> None:
        torch.cuda.current_stream(self.device).synchronize()
