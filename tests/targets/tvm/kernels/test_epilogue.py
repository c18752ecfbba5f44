"""The shared float epilogue (``targets/tvm/epilogue.py``): origins at the integer zero points.

* the float32 evaluation of ``I`` is exact wherever :func:`exact_in_f32` allows it (checked on
  the worst-case magnitudes, in numpy float32 with and without fused multiply-adds);
* every kernel family (generic TE, AVX2 K-lane micro-kernel, panel GEMMs for dense, 2:4 and
  XNOR weights) stays within ``1e-6·Σ|x̂||ŵ|`` of the float64 reference on operands whose
  zero points sit inside the code range (origins ≠ 0), at the block sizes where the float32
  and the int32 evaluations of ``I`` meet;
* operands whose non-zero values never meet give exactly 0 (the regression of the centred
  epilogue it replaced).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

tvm = pytest.importorskip("tvm")

from rqcompile.quant import reference as ref  # noqa: E402
from rqcompile.quant.bitpack import pack_nibbles, pack_signs, pack_sparse24  # noqa: E402
from rqcompile.targets.tvm.kernels import integer as K  # noqa: E402
from rqcompile.targets.tvm.cpu_features import host_features  # noqa: E402
from rqcompile.targets.tvm.kernels.epilogue import exact_in_f32  # noqa: E402
from rqcompile.testing.kernels import run_kernel as _run  # noqa: E402

pytestmark = pytest.mark.tvm
AVX2 = pytest.mark.skipif("avx2" not in host_features(), reason="host has no AVX2")


def test_exact_in_f32_limits() -> None:
    assert exact_in_f32(256, 128, 128) and not exact_in_f32(512, 128, 128)  # 65536·B ≤ 2²⁴
    assert exact_in_f32(1008, 1, 1) and not exact_in_f32(1009, 1, 1)  # 16641·B ≤ 2²⁴
    assert exact_in_f32(128, 128, 15, bias_x=128) and not exact_in_f32(1024, 128, 15, bias_x=128)


@pytest.mark.parametrize(("block", "x_max", "w_max", "bias_x", "bias_w"),
                         [(256, 128, 128, 0, 0), (1008, 1, 1, 0, 0), (256, 128, 8, 0, 8),
                          (128, 128, 15, 128, 0)])  # fmt: skip
def test_float32_integer_evaluation_is_exact_at_the_limit(
    block: int, x_max: int, w_max: int, bias_x: int, bias_w: int
) -> None:
    """``(P - cw·S̃_X) - cx·S_W`` in float32 equals the integer, for every sign combination of
    the largest operands :func:`exact_in_f32` admits, with and without FMA contraction."""
    assert exact_in_f32(block, x_max, w_max, bias_x, bias_w)
    f32 = np.float32
    tops = {"p": block * (x_max + bias_x) * (w_max + bias_w), "cw": 128 + bias_w,
            "sxt": block * (x_max + 128), "cx": 128 + bias_x,
            "sw": block * (w_max + bias_w)}  # fmt: skip
    for signs in np.ndindex(*(2,) * 5):
        v = {k: t * (1 - 2 * s) for (k, t), s in zip(tops.items(), signs, strict=True)}
        exact = v["p"] - v["cw"] * v["sxt"] - v["cx"] * v["sw"]
        plain = (f32(v["p"]) - f32(v["cw"]) * f32(v["sxt"])) - f32(v["cx"]) * f32(v["sw"])
        t = np.float64(v["p"]) - np.float64(v["cw"]) * np.float64(v["sxt"])  # one rounding
        fused = f32(np.float64(f32(t)) - np.float64(v["cx"]) * np.float64(v["sw"]))
        assert int(plain) == exact and int(fused) == exact, (v, plain, fused, exact)


def _operand(rows: int, k: int, block: int, lo: int, hi: int, seed: int) -> list[torch.Tensor]:
    """Codes over the whole range (extremes included) and scales/offsets whose zero point is
    an interior code (``offset = -scale·c`` plus a small shift), so the origins are ≠ 0."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randint(lo, hi + 1, (rows, k), generator=g).to(torch.int8)
    q[0, :2] = torch.tensor([lo, hi], dtype=torch.int8)
    nb = k // block
    scale = 0.01 + torch.rand(rows, nb, generator=g)
    zero = torch.randint(lo, hi + 1, (rows, nb), generator=g).float()
    offset = -scale * zero + 0.1 * scale * torch.randn(rows, nb, generator=g)
    return [q, scale, offset]


def _check(y: torch.Tensor, xq: torch.Tensor, xs: torch.Tensor, xc: torch.Tensor,
           wq: torch.Tensor, ws: torch.Tensor, wc: torch.Tensor, block: int) -> None:  # fmt: skip
    """``|y - Σ x̂·ŵ| ≤ 1e-6·Σ|x̂||ŵ|`` per output (float64 dequantized operands)."""

    def deq(q: torch.Tensor, s: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        r = q.double().reshape(q.shape[0], -1, block)
        return (c.double()[..., None] + s.double()[..., None] * r).reshape(q.shape[0], -1)

    xh, wh = deq(xq, xs, xc), deq(wq, ws, wc)
    err = (y.double() - xh @ wh.T).abs()
    bound = 1e-6 * (xh.abs() @ wh.abs().T)
    assert bool((err <= bound).all()), f"worst err/bound {(err / bound).max().item():.2f}"


@pytest.mark.parametrize("path", ["generic", "avx2", "panel"])
@pytest.mark.parametrize(("w_bits", "block"), [(8, 128), (8, 256), (4, 256), (2, 64)])
def test_int_matmul_nonzero_origins(path: str, w_bits: int, block: int) -> None:
    if path != "generic" and "avx2" not in host_features():
        pytest.skip("host has no AVX2")
    m, n, k = 5, 16, 2 * block
    wlo, whi = (-(2 ** (w_bits - 1)), 2 ** (w_bits - 1) - 1)
    xq, xs, xc = _operand(m, k, block, -128, 127, seed=block + w_bits)
    wq, ws, wc = _operand(n, k, block, wlo, whi, seed=block + w_bits + 1)
    stored = pack_nibbles(wq, signed=True) if w_bits <= 4 else wq
    wsum = ref.code_sums(wq, block)
    kw = dict(block=block, w_bits=w_bits, w_signed=True)
    if path == "panel":
        assert K.int_matmul_packs(xq.shape, n, isa="avx2", **kw)
        packed = _run("te_pack_int_matmul_weights", "pack_weights", [stored, ws, wc, wsum], **kw)
        (y,) = _run("te_int_matmul_packed", "int_matmul", [xq, xs, xc, *packed], **kw)
    else:
        (y,) = _run("te_int_matmul", "int_matmul", [xq, xs, xc, stored, ws, wc, wsum], isa=path,
                    **kw)  # fmt: skip
    _check(y, xq, xs, xc, wq, ws, wc, block)


@AVX2
@pytest.mark.parametrize("block", [64, 128])
def test_sparse24_nonzero_origins(block: int) -> None:
    m, n, k = 5, 16, 2 * block
    xq, xs, xc = _operand(m, k, block, -128, 127, seed=block)
    wq, ws, wc = _operand(n, k, block, -8, 7, seed=block + 1)
    wq = wq.reshape(n, k // 4, 4)
    wq[..., 1::2] = 0  # keep slots 0 and 2 of every 4
    wq = wq.reshape(n, k)
    vals, idx = pack_sparse24(wq)
    kw = dict(block=block, w_bits=4)
    args = [vals, idx, ws, wc, ref.code_sums(wq, block)]
    packed = _run("te_pack_sparse24_weights", "pack_weights", args, **kw)
    (y,) = _run("te_sparse24_matmul_packed", "sparse24_matmul", [xq, xs, xc, *packed], **kw)
    _check(y, xq, xs, xc, wq, ws, wc, block)


@AVX2
@pytest.mark.parametrize(("n", "block"), [(16, 128), (16, 1024), (12, 256)])
def test_xnor_nonzero_origins(n: int, block: int) -> None:
    """Binary operands with one level near 0 (offset ≈ ±scale: origin ±1): the panel kernel
    (N = 16), at the float32 limit of 1008 and beyond it (block 1024: int32 ``I``), and the
    K-lane micro-kernel (N = 12)."""
    m, k = 3, 2 * block
    g = torch.Generator().manual_seed(block + n)
    xq = (torch.randint(0, 2, (m, k), generator=g) * 2 - 1).to(torch.int8)
    wq = (torch.randint(0, 2, (n, k), generator=g) * 2 - 1).to(torch.int8)
    nb = k // block
    xs, ws = 0.5 + torch.rand(m, nb, generator=g), 0.5 + torch.rand(n, nb, generator=g)
    xc = xs * torch.tensor([1.0, -1.0, 0.02]).reshape(m, 1).expand(m, nb)
    wc = -ws * (1.0 + 0.01 * torch.rand(n, nb, generator=g))
    xbits, wbits = pack_signs(xq), pack_signs(wq)
    kw = dict(block=block, k=k, isa="avx2")
    args = [wbits, ws, wc, ref.code_sums(wq, block).to(torch.int32)]
    if K.xnor_packs(xbits.shape, n, **kw):
        packed = _run("te_pack_xnor_weights", "pack_weights", args, **kw)
        (y,) = _run("te_xnor_popcount_matmul_packed", "xnor_popcount_matmul",
                    [xbits, xs, xc, *packed], **kw)  # fmt: skip
    else:
        (y,) = _run("te_xnor_popcount_matmul", "xnor_popcount_matmul", [xbits, xs, xc, *args],
                    **kw)  # fmt: skip
    _check(y, xq, xs, xc, wq, ws, wc, block)


@AVX2
@pytest.mark.parametrize(("isa", "w_bits", "layout"),
                         [("avx2", 8, {}), ("avx2", 4, {"nibbles": True}),
                          ("avx512_vnni_emulated", 4, {"nibbles": True}),
                          ("avx512_vnni_emulated", 2, {"crumbs": True}),
                          ("avx512_vnni_emulated", 8, {})])  # fmt: skip
def test_packed_parts_stored_narrow_keep_the_extreme_origins(
    isa: str, w_bits: int, layout: dict
) -> None:
    """The packed column parts store the origin ``cw`` as int8 and ``S_W`` as int16
    (``matmul._packed_col_parts``); the epilogue widens them before adding the core's code
    bias (``cw + 8`` for nibble and crumb panels). Weights whose zero points lie far outside
    the code range (origins clamped to 127 and -128, the int8 extremes) stay within the
    float64 reference's bound on every packed layout."""
    block, m, n = 128, 3, 16
    k = 2 * block
    lo, hi = -(2 ** (w_bits - 1)), 2 ** (w_bits - 1) - 1
    xq, xs, xc = _operand(m, k, block, -128, 127, seed=7)
    g = torch.Generator().manual_seed(8)
    wq = torch.randint(lo, hi + 1, (n, k), generator=g).to(torch.int8)
    ws = 0.01 + torch.rand(n, k // block, generator=g)
    zero = torch.tensor([300.0, -300.0, 127.0, -128.0, 125.0, 0.0, 3.0, -120.0])
    wc = -ws * zero.repeat(n * (k // block) // len(zero) + 1)[: n * (k // block)].view(n, -1)
    stored = pack_nibbles(wq, signed=True) if w_bits <= 4 else wq
    kw = dict(block=block, w_bits=w_bits, w_signed=True, isa=isa, **layout)
    assert K.int_matmul_packs(xq.shape, n, **kw)
    packed = _run("te_pack_int_matmul_weights", "pack_weights",
                  [stored, ws, wc, ref.code_sums(wq, block)], **kw)  # fmt: skip
    assert {str(p.dtype) for p in packed[1:]} == {"torch.float32", "torch.int8", "torch.int16"}
    (y,) = _run("te_int_matmul_packed", "int_matmul", [xq, xs, xc, *packed], **kw)
    _check(y, xq, xs, xc, wq, ws, wc, block)


def test_f32_row_parts_fold_the_offset_and_convert_once() -> None:
    """Panel kernels take ``cx + bias_x`` and ``S̃_X`` as float32 (one prep stage per call)
    where ``I`` is evaluated in float32, the same integers; elsewhere the parts pass as they
    are, and ``block_term`` refuses float parts it would have to evaluate in integers."""
    from rqcompile.errors import NumericsError
    from rqcompile.targets.tvm.adapter import te, tirx, tvm
    from rqcompile.targets.tvm.kernels.epilogue import block_term, f32_row_parts

    m, nb = 3, 2
    row = [te.placeholder((m, nb), d, name=n) for n, d in
           (("xs", "float32"), ("cx", "int32"), ("sxt", "int32"), ("x0", "float32"),
            ("xk", "float32"))]  # fmt: skip
    folded = f32_row_parts(row, block=128, f32_bounds=(128, 128), bias_x=128, name="t")
    assert [str(t.dtype) for t in folded] == ["float32"] * 5
    assert folded[0] is row[0] and folded[3] is row[3] and folded[4] is row[4]
    f = tvm.compile(te.create_prim_func([row[1], row[2], folded[1], folded[2]]), target="llvm")
    cx = np.array([[-128, 127], [0, -1], [5, 99]], dtype="int32")
    sxt = np.array([[-32640, 32640], [0, 7], [-1, 16383]], dtype="int32")
    out = [tvm.runtime.tensor(np.zeros((m, nb), "float32")) for _ in range(2)]
    f(tvm.runtime.tensor(cx), tvm.runtime.tensor(sxt), *out)
    np.testing.assert_array_equal(out[0].numpy(), (cx + 128).astype("float32"))
    np.testing.assert_array_equal(out[1].numpy(), sxt.astype("float32"))
    # outside float32's exact range (8-bit codes, block 1024) nothing changes
    assert f32_row_parts(row, block=1024, f32_bounds=(128, 128), name="t") == row
    p = tirx.const(0, "int32")
    parts = [tirx.const(1.0, "float32")] * 5
    col = [tirx.const(1.0, "float32"), tirx.const(0, "int8"), tirx.const(0, "int16"),
           tirx.const(1.0, "float32"), tirx.const(1.0, "float32")]  # fmt: skip
    with pytest.raises(NumericsError, match="f32_bounds"):
        block_term(p, parts, col, block=1024, f32_bounds=(128, 128))
    with pytest.raises(NumericsError, match="f32_bounds"):
        block_term(p, parts, col, block=128)
