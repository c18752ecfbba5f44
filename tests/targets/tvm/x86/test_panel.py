"""The AVX2 panel GEMM (``x86.panel``): integer core bit-exact, whole layers = reference.

The core is checked through a *transparent* epilogue (``xs = B``, ``ws = 1``, zero offsets,
so zero origins): then ``y = Σ_b B·P_b`` with every term an integer below 2**24, so float32
holds it exactly and it must equal the reference's integers bit for bit. Shapes cover full and
remainder row tiles, 1-4 panels per tile, one and several blocks, and every weight format.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
import torch

tvm = pytest.importorskip("tvm")

import rqcompile as rq  # noqa: E402
from rqcompile.quant import reference as ref  # noqa: E402
from rqcompile.quant.bitpack import pack_nibbles, pack_sparse24  # noqa: E402
from rqcompile.targets.tvm.kernels import integer as K  # noqa: E402
from rqcompile.targets.tvm.cpu_features import host_features  # noqa: E402
from rqcompile.targets.tvm.x86.panel import (  # noqa: E402
    narrow_tile,
    panel_group,
    panel_tile,
)
from rqcompile.testing.kernels import run_kernel as _run  # noqa: E402

pytestmark = [
    pytest.mark.tvm,
    pytest.mark.skipif("avx2" not in host_features(), reason="host has no AVX2"),
]
def _codes(shape: tuple[int, ...], lo: int, hi: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(lo, hi + 1, shape, generator=g).to(torch.int8)


def _range(w_bits: int, signed: bool) -> tuple[int, int]:
    return (-(2 ** (w_bits - 1)), 2 ** (w_bits - 1) - 1) if signed else (0, 2**w_bits - 1)


@pytest.mark.parametrize(
    ("m", "n", "k", "block", "w_bits", "w_signed"),
    [(1, 8, 64, 32, 8, True), (5, 32, 256, 128, 8, True), (7, 24, 192, 64, 8, True),
     (3, 16, 128, 32, 4, True), (6, 40, 256, 64, 4, False), (2, 8, 512, 128, 4, True),
     (4, 32, 128, 128, 2, True)],
    ids=["gemv-s8", "s8-rest-row", "s8-3panels", "s4", "u4-5panels", "s4-4blocks", "s2"],
)
def test_panel_core_exact(m: int, n: int, k: int, block: int, w_bits: int, w_signed: bool) -> None:
    nb = k // block
    lo, hi = _range(w_bits, w_signed)
    # |x| small enough that B·|P| < 2**24 even at B = 128; the extremes are checked below
    xq, wq = _codes((m, k), -30, 30, seed=k), _codes((n, k), lo, hi, seed=k + 1)
    stored = pack_nibbles(wq, signed=w_signed) if w_bits <= 4 else wq
    wsum = ref.code_sums(wq, block)
    pk = dict(block=block, w_bits=w_bits, w_signed=w_signed)
    packed = _run("te_pack_int_matmul_weights", "pack_weights",
                  [stored, torch.ones(n, nb), torch.zeros(n, nb), wsum], **pk)  # fmt: skip
    xs, xc = torch.full((m, nb), float(block)), torch.zeros(m, nb)
    (y,) = _run("te_int_matmul_packed", "int_matmul", [xq, xs, xc, *packed], **pk)
    # zero offsets put both origins at code 0: y = Σ_b xs·ws·P = Σ_b B·P
    want = block * ref.int_matmul_core(xq, wq, block).to(torch.int64).sum(-1)
    assert torch.equal(y.to(torch.int64), want)


@pytest.mark.parametrize(("w_bits", "w_signed"), [(8, True), (4, True), (4, False)])
def test_panel_extreme_codes_exact(w_bits: int, w_signed: bool) -> None:
    """x = -128 against the extreme weights: int16 pair sums of ``vpmaddubsw`` must not
    saturate (8 steps of ``2·15·128``) and ``vpmaddwd`` must not overflow."""
    m, n, k, block = 2, 8, 64, 64
    lo, hi = _range(w_bits, w_signed)
    xq = torch.full((m, k), -128, dtype=torch.int8)
    wq = torch.full((n, k), lo, dtype=torch.int8)
    wq[1::2] = hi
    stored = pack_nibbles(wq, signed=w_signed) if w_bits <= 4 else wq
    wsum = ref.code_sums(wq, block)
    pk = dict(block=block, w_bits=w_bits, w_signed=w_signed)
    packed = _run("te_pack_int_matmul_weights", "pack_weights",
                  [stored, torch.ones(n, 1), torch.zeros(n, 1), wsum], **pk)  # fmt: skip
    # xs = 1 and zero offsets: y = P, exact in float32 here
    (y,) = _run("te_int_matmul_packed", "int_matmul",
                [xq, torch.full((m, 1), 1.0), torch.zeros(m, 1), *packed], **pk)  # fmt: skip
    assert torch.equal(y.double(), ref.int_matmul_core(xq, wq, block)[..., 0].double())


@pytest.mark.parametrize(("m", "n", "block", "x_range"),
                         [(1, 8, 32, (0, 127)), (7, 16, 128, (-63, 63)), (4, 24, 64, (0, 15)),
                          (3, 32, 256, (-1, 1))],
                         ids=["gemv-u7", "rest-row-s7", "odd-panels-u4",
                              "ternary-b256"])  # fmt: skip
def test_narrow_x_core_exact(m: int, n: int, block: int, x_range: tuple[int, int]) -> None:
    """8-bit weights against ≤ 7-bit activation codes (``_Maddubs7``): ``vpmaddubsw`` on
    ``x + offset`` in 0..127 against weights up to -128 must neither saturate nor lose the
    offset (transparent epilogue, so the output is the exact integer sum)."""
    k = 2 * block
    nb = k // block
    lo, hi = x_range
    xq, wq = _codes((m, k), lo, hi, seed=k + m), _codes((n, k), -128, 127, seed=k + n)
    xq[0, :4], wq[0, :4] = torch.tensor([hi, hi, lo, lo]), torch.tensor([-128, -128, 127, 127])
    pk = dict(block=block, w_bits=8, w_signed=True, x_range=x_range)
    assert K.narrow_x_offset(x_range, block=block, w_bits=8) == -lo
    wargs = [wq, torch.ones(n, nb), torch.zeros(n, nb), ref.code_sums(wq, block)]
    packed = _run("te_pack_int_matmul_weights", "pack_weights", wargs, **pk)
    assert tuple(packed[0].shape[1:]) == (k // 4, narrow_tile(1, n)[1], 32)  # K-quad panels
    xs, xc = torch.full((m, nb), float(block)), torch.zeros(m, nb)
    (y,) = _run("te_int_matmul_packed", "int_matmul", [xq, xs, xc, *packed], **pk)
    want = block * ref.int_matmul_core(xq, wq, block).to(torch.int64).sum(-1)
    assert torch.equal(y.to(torch.int64), want)


def test_narrow_x_needs_seven_bits_or_fewer() -> None:
    assert K.narrow_x_offset((-128, 127), block=128, w_bits=8) is None  # 8-bit codes
    assert K.narrow_x_offset((0, 127), block=128, w_bits=4) is None  # nibble weights: own core
    assert K.narrow_x_offset((0, 127), block=130, w_bits=8) is None  # not whole K-quads
    assert K.narrow_x_offset(None, block=128, w_bits=8) is None


@pytest.mark.parametrize(("preset", "narrow"), [("A7W8", True), ("A8W8", False)])
def test_emitter_picks_the_narrow_core_from_the_quantizer(preset: str, narrow: bool) -> None:
    """The emitter reads the activation codes' range off the ``rq.quantize`` that makes them:
    7-bit codes get K-quad weight panels (``int8 [.., K/4, nv, 32]``), 8-bit ones K-pairs.
    The AVX2 row is forced (``znver3``): on a VNNI host the host target picks other panels."""
    from rqcompile.targets.tvm.adapter import tvm
    from rqcompile.targets.tvm.emit.module import emit_module
    from rqcompile.targets.tvm.schedules.integer import kernel_options

    torch.manual_seed(0)
    x = torch.randn(2, 256)
    qat = rq.prepare(torch.nn.Sequential(torch.nn.Linear(256, 32)).eval(), (x,), preset).eval()
    mod = emit_module(rq.convert(qat, example_inputs=(x,)),
                      options=kernel_options({"kind": "llvm", "mcpu": "znver3"}))  # fmt: skip
    packs = [f for g, f in mod.functions.items() if isinstance(f, tvm.tirx.PrimFunc)
             and g.name_hint.startswith("pack_int_matmul")]  # fmt: skip
    assert len(packs) == 1
    nv = narrow_tile(1, 32)[1] if narrow else panel_group(32)
    panels = (32 // 8 // nv, 256 // 4, nv, 32) if narrow else (32 // 8 // nv, 256 // 2, nv, 16)
    found = re.search(r'_wp: T\.Buffer\(\((.*?)\), "int8"\)', packs[0].script())
    assert found and tuple(int(d) for d in re.findall(r"int64\((\d+)\)", found[1])) == panels


def _sparse_codes(n: int, k: int, lo: int, hi: int, seed: int) -> torch.Tensor:
    """Codes with exactly the 2:4 pattern: 2 of every 4 zeroed at random positions."""
    w = _codes((n, k), lo, hi, seed=seed)
    g = torch.Generator().manual_seed(seed + 7)
    drop = torch.rand(n, k // 4, 4, generator=g).argsort(-1)[..., :2]
    return w.reshape(n, k // 4, 4).scatter(-1, drop, 0).reshape(n, k)


@pytest.mark.parametrize(
    ("m", "n", "k", "block", "lo", "hi"),
    [(1, 8, 64, 32, -8, 7), (5, 32, 256, 128, -7, 7), (7, 24, 128, 64, -8, 7),
     (3, 40, 512, 128, -8, 7)],
    ids=["gemv", "rest-row", "3panels", "5panels-4blocks"],
)
def test_sparse24_core_exact(m: int, n: int, k: int, block: int, lo: int, hi: int) -> None:
    """The ``vpshufb``-gathered 2:4 core, with x = -128 and 127 included (x + 128 spans
    0..255 and the int16 pair sums reach ``2·255·8``)."""
    nb = k // block
    xq, wq = _codes((m, k), -30, 30, seed=k), _sparse_codes(n, k, lo, hi, seed=k + 1)
    xq[0, :8] = torch.tensor([-128, 127] * 4, dtype=torch.int8)
    vals, idx = pack_sparse24(wq)
    wsum = ref.code_sums(wq, block)
    pk = dict(block=block, w_bits=4)
    packed = _run("te_pack_sparse24_weights", "pack_weights",
                  [vals, idx, torch.ones(n, nb), torch.zeros(n, nb), wsum], **pk)  # fmt: skip
    xs, xc = torch.full((m, nb), float(block)), torch.zeros(m, nb)
    (y,) = _run("te_sparse24_matmul_packed", "sparse24_matmul", [xq, xs, xc, *packed], **pk)
    want = block * ref.int_matmul_core(xq, wq, block).to(torch.int64).sum(-1)
    assert torch.equal(y.to(torch.int64), want)


def test_panel_tile_fits_registers() -> None:
    for m, n in [(1, 8), (64, 1024), (5, 24), (512, 768), (3, 40)]:
        mr, nv = panel_tile(m, n)
        assert (n // 8) % nv == 0 and 1 <= mr <= m
        assert mr * nv + nv + 1 <= 16  # accumulators + weight vectors + the broadcast


_NO_VNNI = {"kind": "llvm", "mattr": ["-avx512vnni", "-avxvnni"]}  # this host, AVX2 int8 path


@pytest.mark.parametrize(
    "target",
    ["llvm", pytest.param(_NO_VNNI, marks=pytest.mark.skipif(
        not {"avx512_vnni", "avx_vnni"} & host_features(),
        reason="host has no VNNI: its own build already takes the AVX2 path"))],
    ids=["host", "host-forced-avx2"],
)  # fmt: skip
@pytest.mark.parametrize("preset", ["A8W8", "A7W8", "A4W8", "A4W4", "A2W2", "A4W4+2:4", "A1W1"])
def test_layer_packs_weights_once_and_matches_reference(preset: str, target: Any,
                                                        tmp_path: Any) -> None:  # fmt: skip
    """The build lifts the weight packing out of ``main``; a saved and loaded model binds
    packed weights the same way and gives the same output. On a VNNI host the host build
    runs the VNNI panels, the forced one the AVX2 panels."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(128, 48), torch.nn.ReLU(), torch.nn.Linear(48, 16))
    x = torch.randn(3, 128)
    qat = rq.prepare(model.eval(), (x,), preset).eval()
    ir = rq.convert(qat, example_inputs=(x,))
    exe = rq.build(ir, target=target)
    assert exe.backend.vm.module.implements_function("main_transform_params")
    want = rq.build(ir, target="reference")(x)
    got = exe(x)
    assert (got - want).abs().max().item() <= 1e-5 * want.abs().max().item()
    exe.save(tmp_path / "m.rq")
    assert torch.equal(rq.load(tmp_path / "m.rq")(x), got)
