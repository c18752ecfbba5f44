"""Build and run one ``targets/tvm/kernels.py`` builder standalone, on torch tensors.

The kernel tests check each TE builder (and the micro-kernels behind it) against the
pure-torch reference without going through ``rq.lower``: placeholders of the arguments'
shapes, the builder, ``kernels.prim_func``, the CPU schedule, ``tvm.compile``. Builds are
cached per (builder, shapes, parameters, target), since compilation dominates a test's time.
"""

from __future__ import annotations

import functools
from typing import Any

import torch

__all__ = ["build_kernel", "code_bounds", "packed_int_matmul", "random_codes", "run_kernel"]

_TV = {torch.int8: "int8", torch.uint8: "uint8", torch.int16: "int16", torch.int32: "int32",
       torch.uint32: "uint32", torch.float32: "float32"}  # fmt: skip
_DT = {v: k for k, v in _TV.items()}
Spec = tuple[tuple[tuple[int, ...], str], ...]


@functools.cache
def build_kernel(
    builder: str, kind: str, spec: Spec, params: tuple[tuple[str, Any], ...],
    mcpu: str | None = None,
) -> tuple[Any, list[tuple[tuple[int, ...], str]]]:  # fmt: skip
    """``(library, output specs)`` of ``kernels.<builder>`` on placeholders ``spec``.

    Args:
        builder: a ``te_*`` function of ``targets/tvm/kernels.py``.
        kind: its ``rq.kernel`` (selects the schedule).
        spec: ``((shape, dtype), ...)`` of the inputs.
        params: sorted keyword arguments of the builder (``block`` among them).
        mcpu: build for this CPU instead of the host (compile-only checks).
    """
    from rqcompile.targets.tvm.adapter import host_llvm_target, make_target, te, tvm
    from rqcompile.targets.tvm.kernels import integer as K
    from rqcompile.targets.tvm.schedules.integer import schedule_prim_func

    tgt = host_llvm_target() if mcpu is None else make_target({"kind": "llvm", "mcpu": mcpu})
    phs = [te.placeholder(shape, dtype, name=f"a{i}") for i, (shape, dtype) in enumerate(spec)]
    outs = getattr(K, builder)(*phs, **dict(params))
    outs = list(outs) if isinstance(outs, tuple) else [outs]
    func = K.prim_func([*phs, *outs], name="kernel", kernel=kind, block=dict(params)["block"])
    lib = tvm.compile(schedule_prim_func(func, tgt), target=tgt)
    return lib, [(tuple(int(d) for d in o.shape), str(o.dtype)) for o in outs]


def run_kernel(
    builder: str, kind: str, args: list[torch.Tensor], **params: Any
) -> list[torch.Tensor]:
    """Build (cached) and run ``kernels.<builder>`` on ``args``; returns its outputs."""
    from rqcompile.targets.tvm.cpu_features import amx_permission, host_features

    if "amx_tile" in host_features():  # host builds may use AMX tiles (as the runtime does)
        amx_permission()
    spec = tuple((tuple(a.shape), _TV[a.dtype]) for a in args)
    lib, out_specs = build_kernel(builder, kind, spec, tuple(sorted(params.items())))
    outs = [torch.empty(shape, dtype=_DT[dt]) for shape, dt in out_specs]
    lib["kernel"](*[a.contiguous() for a in args], *outs)
    return outs


def packed_int_matmul(isa: str, xq: torch.Tensor, xs: torch.Tensor, xc: torch.Tensor,
                      wq: torch.Tensor, ws: torch.Tensor, wc: torch.Tensor, *, block: int,
                      w_bits: int, w_signed: bool) -> torch.Tensor:  # fmt: skip
    """Pack then run the packed integer-affine layer for ``isa`` (codes ``wq`` as int8; 4-bit
    and narrower stored two per byte as ``rq.int_matmul`` stores them)."""
    from rqcompile.quant import reference as ref
    from rqcompile.quant.bitpack import pack_nibbles

    stored = pack_nibbles(wq, signed=w_signed) if w_bits <= 4 else wq
    pk = dict(block=block, w_bits=w_bits, w_signed=w_signed, isa=isa)
    packed = run_kernel("te_pack_int_matmul_weights", "pack_weights",
                        [stored, ws, wc, ref.code_sums(wq, block)], **pk)  # fmt: skip
    (y,) = run_kernel("te_int_matmul_packed", "int_matmul", [xq, xs, xc, *packed], **pk)
    return y


def random_codes(shape: tuple[int, ...], lo: int, hi: int, seed: int) -> torch.Tensor:
    """Codes drawn uniformly from ``lo..hi`` (int8), reproducibly."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(lo, hi + 1, shape, generator=g).to(torch.int8)


def code_bounds(w_bits: int, signed: bool) -> tuple[int, int]:
    """The code range of ``w_bits``-bit codes."""
    return (-(2 ** (w_bits - 1)), 2 ** (w_bits - 1) - 1) if signed else (0, 2**w_bits - 1)
