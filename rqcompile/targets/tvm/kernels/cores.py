"""The integer GEMM cores per block: integer-affine (int8 × int8 / nibbles), XNOR-popcount and
2:4 sparse, plus the per-block code sums their epilogues need. Bit-exact, int32."""

from __future__ import annotations

from typing import Any

from rqcompile.errors import NumericsError
from rqcompile.targets.tvm.adapter import te, tirx
from rqcompile.targets.tvm.kernels.common import (
    STAGE_ATTR,
    Tensor,
    _attrs,
    _nblocks,
    _shape,
    _stage,
)

__all__ = ["te_code_sums", "te_int_matmul_core", "te_sparse24_core", "te_xnor_popcount_core"]


def te_code_sums(q: Tensor, *, block: int, name: str = "code_sums") -> Tensor:
    """Per-block sums ``i32 [..., nb]`` of ``int8 [..., K]`` codes."""
    *lead, k = _shape(q)
    nb = _nblocks(k, block, "te_code_sums")
    r = te.reduce_axis((0, block), name="r_sum")
    return te.compute(
        [*lead, nb],
        lambda *i: te.sum(q[(*i[:-1], i[-1] * block + r)].astype("int32"), axis=r),
        name=name,
        attrs=_stage("sums"),
    )


def _nibble(byte: Any, high: bool, signed: bool) -> Any:
    v = byte.astype("int32")
    if signed:  # two's-complement nibble: move it to the top, shift back arithmetically
        return (v << (24 if high else 28)) >> 28
    return (v >> 4) if high else (v & 15)


def te_int_matmul_core(
    xq: Tensor,
    wq: Tensor,
    *,
    block: int,
    w_bits: int = 8,
    w_signed: bool = True,
    name: str = "int_matmul_core",
    attrs: dict[str, Any] | None = None,
) -> Tensor:
    """``P i32 [*batch, M, N, nb]`` from ``xq int8 [*batch, M, K]`` and weights
    ``int8 [*batch, N, K]`` (or ``uint8 [*batch, N, K/2]`` nibbles when ``w_bits <= 4``)."""
    *bt, m, k = _shape(xq)
    nb = _nblocks(k, block, "te_int_matmul_core")
    n = _shape(wq)[-2]
    a = attrs if attrs is not None else _attrs("int_matmul_core", block)
    if w_bits <= 4:
        if block % 2:
            raise NumericsError(f"te_int_matmul_core: nibble weights need an even block ({block}).")
        half = block // 2
        r = te.reduce_axis((0, half), name="r")

        def body(*idx: Any) -> Any:
            *bi, i, j, b = idx
            byte = wq[(*bi, j, b * half + r)]
            x0 = xq[(*bi, i, b * block + 2 * r)].astype("int32")
            x1 = xq[(*bi, i, b * block + 2 * r + 1)].astype("int32")
            return te.sum(
                x0 * _nibble(byte, False, w_signed) + x1 * _nibble(byte, True, w_signed), axis=r
            )

    else:
        r = te.reduce_axis((0, block), name="r")

        def body(*idx: Any) -> Any:
            *bi, i, j, b = idx
            kk = b * block + r
            return te.sum(
                xq[(*bi, i, kk)].astype("int32") * wq[(*bi, j, kk)].astype("int32"), axis=r
            )

    return te.compute([*bt, m, n, nb], body, name=name, attrs={**a, STAGE_ATTR: "core"})


def _popc(v: Any) -> Any:
    return tirx.popcount(v).astype("int32")


def te_xnor_popcount_core(
    xbits: Tensor,
    wbits: Tensor,
    *,
    block: int,
    name: str = "xnor_popcount_core",
    attrs: dict[str, Any] | None = None,
) -> Tensor:
    """``P = 2·popcount(XNOR) - block`` per block, ``i32 [M, N, nb]``, from ``uint32`` words."""
    if block % 32:
        raise NumericsError(f"te_xnor_popcount_core: block must be a multiple of 32 ({block}).")
    m, words = _shape(xbits)
    n = _shape(wbits)[0]
    wpb = block // 32
    nb = _nblocks(words * 32, block, "te_xnor_popcount_core")
    r = te.reduce_axis((0, wpb), name="r")
    pc = te.compute(
        [m, n, nb],
        lambda i, j, b: te.sum(_popc(~(xbits[i, b * wpb + r] ^ wbits[j, b * wpb + r])), axis=r),
        name=f"{name}_pc",
        attrs=_stage("core"),
    )
    a = attrs if attrs is not None else _attrs("xnor_popcount_core", block)
    return te.compute(
        [m, n, nb],
        lambda i, j, b: 2 * pc[i, j, b] - block,
        name=name,
        attrs={**a, STAGE_ATTR: "core_out"},
    )


def te_sparse24_core(
    xq: Tensor,
    wvals: Tensor,
    widx: Tensor,
    *,
    block: int,
    name: str = "sparse24_core",
    attrs: dict[str, Any] | None = None,
) -> Tensor:
    """2:4 sparse core ``i32 [M, N, nb]``: gathers ``xq[i, 4g + idx]`` for each kept slot."""
    m, k = _shape(xq)
    n = _shape(wvals)[0]
    nb = _nblocks(k, block, "te_sparse24_core")
    if block % 4:
        raise NumericsError(f"te_sparse24_core: block must be a multiple of 4 ({block}).")
    half = block // 2
    r = te.reduce_axis((0, half), name="r")

    def body(i: Any, j: Any, b: Any) -> Any:
        s = b * half + r  # kept-slot index: group s >> 1, index field 2·(s & 3) of byte s >> 2
        field = ((widx[j, s >> 2].astype("int32") >> ((s & 3) * 2)) & 3).astype("int32")
        xv = xq[i, (s >> 1) * 4 + field].astype("int32")
        return te.sum(xv * wvals[j, s].astype("int32"), axis=r)

    a = attrs if attrs is not None else _attrs("sparse24_core", block)
    return te.compute([m, n, nb], body, name=name, attrs={**a, STAGE_ATTR: "core"})
