"""The 2:4 sparse integer core as a gather: two multiply-accumulates per group of four.

Layout (:mod:`rqcompile.quant.bitpack`): ``vals i8 [N, K/2]`` holds the two kept codes of
each group of 4, ``idx [N, K/8]`` their in-group positions as 2-bit fields (bit
``4·(g % 2) + 2·t`` of byte ``g // 2``). The core is
``P[m, n, b] = Σ_{g∈b} Σ_{t<2} x[m, 4g + idx(n, g, t)] · vals[n, 2g + t]``: the activation is
*gathered* with ``tensor.extract`` at the decoded index, so the exported kernel does the
sparse amount of work (K/2 MACs per output, not K) exactly as the storage describes.
"""

from __future__ import annotations

from rqcompile.targets.mlir.text import Writer, tensor_type

__all__ = ["sparse24_core"]


def _decode_idx(w: Writer, widx: str, n: int, k: int) -> str:
    """``idx i8 [N, K/8]`` bytes → positions ``i8 [N, K/4, 2]`` (group, kept slot)."""
    out4 = tensor_type((n, k // 8, 2, 2), "i8")
    g = w.generic(
        [(widx, tensor_type((n, k // 8), "i8"), "i8")],
        (w.empty(out4), out4, "i8"),
        [(0, 1), (0, 1, 2, 3)],
        ["parallel"] * 4,
        [
            "%b_par = linalg.index 2 : index",
            "%b_t = linalg.index 3 : index",
            "%b_pi = arith.index_cast %b_par : index to i8",
            "%b_ti = arith.index_cast %b_t : index to i8",
            "%b_2 = arith.constant 2 : i8",
            "%b_3 = arith.constant 3 : i8",
            "%b_4 = arith.constant 4 : i8",
            "%b_hi = arith.muli %b_pi, %b_4 : i8",
            "%b_lo = arith.muli %b_ti, %b_2 : i8",
            "%b_sh = arith.addi %b_hi, %b_lo : i8",
            "%b_v = arith.shrui %in0, %b_sh : i8",
            "%b_f = arith.andi %b_v, %b_3 : i8",
            "linalg.yield %b_f : i8",
        ],
        comment="decode 2-bit in-group positions: bit 4·(g%2) + 2·t of byte g/2",
    )
    return w.collapse(g, out4, tensor_type((n, k // 4, 2), "i8"), "[[0], [1, 2], [3]]")


def sparse24_core(
    w: Writer, xq: str, xshape: tuple[int, ...], wvals: str, widx: str, n: int, block: int
) -> str:
    """Write the gather core; returns ``P i32 [M, N, nb]``."""
    m, k = xshape
    nb, gpb = k // block, block // 4
    pos = _decode_idx(w, widx, n, k)
    pos4 = w.expand(
        pos,
        tensor_type((n, k // 4, 2), "i8"),
        tensor_type((n, nb, gpb, 2), "i8"),
        "[[0], [1, 2], [3]]",
        (n, nb, gpb, 2),
    )
    vals_t = tensor_type((n, nb, gpb, 2), "i8")
    vals4 = w.expand(
        wvals, tensor_type((n, k // 2), "i8"), vals_t, "[[0], [1, 2, 3]]", (n, nb, gpb, 2)
    )
    x_t = tensor_type((m, nb, gpb, 4), "i8")
    x4 = w.expand(xq, tensor_type((m, k), "i8"), x_t, "[[0], [1, 2, 3]]", (m, nb, gpb, 4))
    out_t = tensor_type((m, n, nb), "i32")
    return w.generic(
        [(vals4, vals_t, "i8"), (pos4, vals_t, "i8")],
        (w.zeros(out_t, "i32"), out_t, "i32"),
        [(1, 2, 3, 4), (1, 2, 3, 4), (0, 1, 2)],
        ["parallel", "parallel", "parallel", "reduction", "reduction"],
        [
            "%b_m = linalg.index 0 : index",
            "%b_b = linalg.index 2 : index",
            "%b_g = linalg.index 3 : index",
            "%b_slot = arith.index_cast %in1 : i8 to index",
            f"%b_xv = tensor.extract {x4}[%b_m, %b_b, %b_g, %b_slot] : {x_t}",
            "%b_x = arith.extsi %b_xv : i8 to i32",
            "%b_w = arith.extsi %in0 : i8 to i32",
            "%b_p = arith.muli %b_x, %b_w : i32",
            "%b_s = arith.addi %out, %b_p : i32",
            "linalg.yield %b_s : i32",
        ],
        comment="2:4 core P[m, n, b] = Σ_g∈b Σ_t x[m, 4g + idx] · vals[n, 2g + t] (gather)",
    )
