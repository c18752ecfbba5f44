"""The XNOR panel GEMM (``x86.xnor_panel``): counts bit-exact (whole layers: panel tests).

As in ``test_x86/panel.py``, the core is checked through a *transparent* epilogue
(``xs = B``, ``ws = 1``, zero offsets): then ``y = Σ_b B·P_b`` with every term an integer
below 2**24, which float32 holds exactly, so it must equal the reference's integers bit for
bit. Both ISA variants run on any AVX2 host: built for the host, the VPOPCNTDQ variant's
``llvm.ctpop`` becomes LLVM's own popcount sequence; a cross build checks it is ``vpopcntd``
where the target has it.
"""

from __future__ import annotations

import pytest
import torch

tvm = pytest.importorskip("tvm")

from rqcompile.errors import NumericsError  # noqa: E402
from rqcompile.quant import reference as ref  # noqa: E402
from rqcompile.targets.tvm.kernels import integer as K  # noqa: E402
from rqcompile.targets.tvm.adapter import te  # noqa: E402
from rqcompile.targets.tvm.cpu_features import host_features  # noqa: E402
from rqcompile.targets.tvm.x86.xnor_panel import xnor_panel_tile  # noqa: E402
from rqcompile.testing.kernels import build_kernel as _build  # noqa: E402
from rqcompile.testing.kernels import run_kernel as _run  # noqa: E402

pytestmark = [
    pytest.mark.tvm,
    pytest.mark.skipif("avx2" not in host_features(), reason="host has no AVX2"),
]
def _bits(rows: int, k: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    words = torch.randint(0, 2**32, (rows, k // 32), generator=g, dtype=torch.int64)
    return words.to(torch.uint32)


def _exact(xbits: torch.Tensor, wbits: torch.Tensor, block: int, isa: str) -> None:
    (m, words), n = xbits.shape, wbits.shape[0]
    k, nb = 32 * words, 32 * words // block
    sw = ref._sign_sums(wbits, block)
    pk = dict(block=block, k=k, isa=isa)
    packed = _run("te_pack_xnor_weights", "pack_weights",
                  [wbits, torch.ones(n, nb), torch.zeros(n, nb), sw], **pk)  # fmt: skip
    xs, xc = torch.full((m, nb), float(block)), torch.zeros(m, nb)
    (y,) = _run("te_xnor_popcount_matmul_packed", "xnor_popcount_matmul",
                [xbits, xs, xc, *packed], **pk)  # fmt: skip
    want = block * ref.xnor_popcount_core(xbits, wbits, block=block).to(torch.int64).sum(-1)
    assert torch.equal(y.to(torch.int64), want)


#: (M, N, K, block): GEMV; rows that leave a remainder tile; one and two panels per group;
#: one word per block; a block of 3 words; 32 words per block (byte counters summed in
#: groups of 16); 37 words (groups of one word); many blocks.
SHAPES = [(1, 8, 64, 32), (7, 16, 256, 128), (5, 24, 96, 96), (3, 8, 2048, 1024),
          (2, 16, 1184, 1184), (9, 40, 1024, 64)]  # fmt: skip


@pytest.mark.parametrize("isa", ["avx2", "avx512_vpopcntdq"])
@pytest.mark.parametrize(("m", "n", "k", "block"), SHAPES)
def test_xnor_panel_core_exact(m: int, n: int, k: int, block: int, isa: str) -> None:
    _exact(_bits(m, k, seed=k + m), _bits(n, k, seed=k + n + 1), block, isa)


@pytest.mark.parametrize("isa", ["avx2", "avx512_vpopcntdq"])
def test_xnor_panel_extreme_words_exact(isa: str) -> None:
    """All-ones against all-zeros words for 31+ words per counter: byte counts reach 248."""
    m, n, k, block = 2, 16, 1024, 1024
    xbits = torch.full((m, k // 32), 2**32 - 1, dtype=torch.int64).to(torch.uint32)
    wbits = torch.zeros(n, k // 32, dtype=torch.int64).to(torch.uint32)
    wbits[1::2] = xbits[0]
    _exact(xbits, wbits, block, isa)


def test_xnor_panel_row_chunks_exact() -> None:
    """Enough rows of a long K that they are walked in two L2 chunks, the last one partial,
    then a remainder tile."""
    m, n, k, block = 4 * 33 + 2, 16, 4096, 128
    _exact(_bits(m, k, seed=1), _bits(n, k, seed=2), block, "avx2")


def test_xnor_panel_tile_fits_registers() -> None:
    for m, n in [(1, 8), (64, 1024), (5, 24), (512, 768), (3, 40)]:
        mr, nv = xnor_panel_tile(m, n)
        assert (n // 8) % nv == 0 and 1 <= mr <= m
        assert mr * nv + 2 + 1 + 2 <= 16  # counters + the row's broadcasts + LUT + temps


def test_vpopcntdq_variant_compiles_to_vpopcntd() -> None:
    """Built for Ice Lake (compile only, any host): ``vpopcntd`` counts, no nibble LUT."""
    shapes = (((4, 16), "uint32"), ((4, 4), "float32"), ((4, 4), "float32"),
              ((16, 16), "uint32"), ((16, 4), "float32"), ((16, 4), "float32"),
              ((16, 4), "int32"))  # fmt: skip
    pack_spec = (shapes[3], shapes[4], shapes[5], shapes[6])
    for isa, want in (("avx512_vpopcntdq", "vpopcntd"), ("avx2", "vpshufb")):
        params = tuple(sorted(dict(block=128, k=512, isa=isa).items()))
        _, packed = _build("te_pack_xnor_weights", "pack_weights", pack_spec, params,
                           "icelake-server")  # fmt: skip
        spec = (*shapes[:3], *packed)
        lib, _ = _build("te_xnor_popcount_matmul_packed", "xnor_popcount_matmul", spec, params,
                        "icelake-server")  # fmt: skip
        assert want in lib.mod.inspect_source("asm")


@pytest.mark.parametrize(("isa", "split"), [("avx2", True), ("avx512_vpopcntdq", False)])
def test_only_avx2_splits_the_activations(isa: str, split: bool) -> None:
    """AVX2 splits x into nibbles once per call; VPOPCNTDQ reads ``xbits`` without a copy."""
    params = dict(block=128, k=512, isa=isa)
    pk = [te.placeholder(s, d) for s, d in (((16, 16), "uint32"), ((16, 4), "float32"),
          ((16, 4), "float32"), ((16, 4), "int32"))]  # fmt: skip
    packed = [te.placeholder(t.shape, t.dtype) for t in K.te_pack_xnor_weights(*pk, **params)]
    xs = [te.placeholder(s, d) for s, d in (((4, 16), "uint32"), ((4, 4), "float32"),
          ((4, 4), "float32"))]  # fmt: skip
    y = K.te_xnor_popcount_matmul_packed(*xs, *packed, **params)
    func = K.prim_func([*xs, *packed, y], name="kernel", kernel="xnor_popcount_matmul",
                       block=128)  # fmt: skip
    assert ('sblock("xnor_popcount_matmul_xn")' in func.script()) is split


def test_unsupported_shape_is_a_typed_error() -> None:
    from rqcompile.targets.tvm.x86.xnor_panel import xnor_panel_matmul

    row = [te.placeholder((2, 1), d) for d in ("float32", "int32", "int32", "float32", "float32")]
    col = [te.placeholder((1, 12), d) for d in ("float32", "int32", "int32", "float32", "float32")]
    xn, wn = te.placeholder((2, 4), "uint32"), te.placeholder((1, 4, 1, 2, 8), "uint32")
    with pytest.raises(NumericsError, match="N % 8 == 0"):
        xnor_panel_matmul(xn, wn, row, col, block=128, isa="avx2", name="mm", attrs={})
    assert not K.xnor_packs((2, 4), 12, block=128, k=128, isa="avx2")
    assert not K.xnor_packs((2, 4), 16, block=128, k=128, isa="generic")
    assert K.xnor_packs((2, 4), 16, block=128, k=128, isa="avx2")
