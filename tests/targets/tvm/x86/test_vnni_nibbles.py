"""The nibble panels (``int_matmul.*_vnni_w4``, ``int_matmul.avx2_w4``: 4-bit codes two per
byte) and the 2-bit panels (``int_matmul.*_vnni_w2``: four per byte), checked through the
emulated VNNI rows and the AVX2 row on any AVX2 host (and natively where the host has
AVX-512 VNNI)."""

from __future__ import annotations

import pytest
import torch

import rqcompile as rq
from rqcompile.ir.printer import print_module
from rqcompile.passes.infra import PassContext, PassManager
from rqcompile.passes.ir import PackWeights, SelectKernels

pytest.importorskip("tvm")
from rqcompile.targets.tvm.kernels.table import NIBBLE_MAX_ROWS  # noqa: E402

pytestmark = pytest.mark.tvm


def _forced(ir, isa):
    return PassManager([SelectKernels(force=(f"int_matmul:{isa}",)), PackWeights()]).run(
        ir, PassContext())


# nibbles: unsigned (A4W4), signed (A4W1: ±1 codes, biased by +8 in the panel), 2-bit codes;
# 2-bit panels (int_matmul.*_vnni_w2): unsigned (A2W2), signed ±1 (A4W1) and ternary codes
@pytest.mark.parametrize(
    "isa,layout,preset,m",
    [(isa, "panels4", p, m) for isa in ("avx512_vnni_w4_emulated", "avx2_w4")
     for p, m in (("A4W4", 1), ("A4W1", 3), ("A2W2", 16))]
    + [(isa, "panels2", p, m) for isa in ("avx512_vnni_w2_emulated", "avx_vnni_w2_emulated")
       for p, m in (("A2W2", 1), ("A4W1", 3), ("A1.5W1.5", 16))],
)  # fmt: skip
def test_emulated_packed_panels_match_the_reference(isa: str, layout: str, preset: str,
                                                    m: int) -> None:  # fmt: skip
    torch.manual_seed(m)
    x = torch.randn(m, 256)
    qat = rq.prepare(torch.nn.Sequential(torch.nn.Linear(256, 64)).eval(), (x,), preset)
    ir = rq.convert(qat.eval(), example_inputs=(x,))
    forced = _forced(ir, isa)
    assert f'rq.weight_layout = "{layout}"' in print_module(forced)
    assert f'"int_matmul.{isa}"' in print_module(forced)
    with rq.PassContext(disabled=frozenset({"select-kernels", "pack-weights"})):
        exe = rq.build(forced, "llvm")
    want = rq.build(ir, "reference")(x)
    torch.testing.assert_close(exe(x), want, rtol=1e-6, atol=1e-6 * float(want.abs().max()))


@pytest.mark.parametrize(
    "isa,own,wider",
    [("avx512_vnni_w4_emulated", "A4W4", "A8W8"), ("avx2_w4", "A4W4", "A8W8"),
     ("avx512_vnni_w2_emulated", "A2W2", "A4W4")],
)  # fmt: skip
def test_packed_rows_only_take_small_m_and_their_codes(isa: str, own: str, wider: str) -> None:
    torch.manual_seed(0)
    for preset, m, takes in ((own, NIBBLE_MAX_ROWS + 1, False), (wider, 1, False),
                             (own, NIBBLE_MAX_ROWS, True)):  # fmt: skip
        x = torch.randn(m, 128)
        qat = rq.prepare(torch.nn.Sequential(torch.nn.Linear(128, 32)).eval(), (x,), preset)
        text = print_module(_forced(rq.convert(qat.eval(), example_inputs=(x,)), isa))
        assert (f'"int_matmul.{isa}"' in text) is takes, (preset, m)


@pytest.mark.parametrize("layout,w_bits,per_byte", [("nibbles", 4, 2), ("crumbs", 2, 4)])
def test_packed_panels_hold_fewer_bytes(layout: str, w_bits: int, per_byte: int) -> None:
    from rqcompile.targets.tvm.adapter import te
    from rqcompile.targets.tvm.x86.vnni import te_pack_vnni_panels

    wq = te.placeholder((64, 128), "uint8", "wq")  # K = 256 codes, stored as nibbles
    full = te_pack_vnni_panels(wq, w_bits=w_bits, w_signed=False, name="p", attrs={})
    packed = te_pack_vnni_panels(wq, w_bits=w_bits, w_signed=False, name="p", attrs={},
                                 **{layout: True})  # fmt: skip
    size = lambda t: int(torch.tensor([int(d) for d in t.shape]).prod())  # noqa: E731
    assert size(packed) * per_byte == size(full) == 64 * 256


# The packed rows unpack by a mask alone (x86.vnni._VpdpbusdMasked: the weights are the
# unsigned operand, one accumulator set per part of a byte, the sets shifted and added at
# each block's end). Their integer sums, and so every output bit, must equal the unpacked
# int8 panels' (x + 128 against signed bytes): signed and unsigned weight codes, 8-bit
# activations that reach -128 and 127, one row and a row tile plus a tail.
@pytest.mark.parametrize(
    "row,preset,m",
    [(r, p, m) for r in ("avx512_vnni_w4_emulated", "avx_vnni_w4_emulated")
     for p in ("A4W4", "A8W4", "A4W1") for m in (1, 7)]
    + [(r, p, m) for r in ("avx512_vnni_w2_emulated", "avx_vnni_w2_emulated")
       for p in ("A2W2", "A4W1", "A1.5W1.5") for m in (1, 7)],
)  # fmt: skip
def test_masked_unpacking_gives_the_int8_panels_bits(row: str, preset: str, m: int) -> None:
    torch.manual_seed(m)
    x = torch.randn(m, 512) * 4
    x[0, :3] = torch.tensor([-1e3, 1e3, 0.0])  # the extreme codes, in every block's range
    qat = rq.prepare(torch.nn.Sequential(torch.nn.Linear(512, 64)).eval(), (x,), preset)
    ir = rq.convert(qat.eval(), example_inputs=(x,))
    base = row.split("_w")[0] + "_emulated"  # the int8 panels of the same isa
    outs = {}
    for r in (row, base):
        forced = _forced(ir, r)
        assert f'"int_matmul.{r}"' in print_module(forced)
        with rq.PassContext(disabled=frozenset({"select-kernels", "pack-weights"})):
            outs[r] = rq.build(forced, "llvm")(x)
    assert torch.equal(outs[row], outs[base])
    want = rq.build(ir, "reference")(x)
    torch.testing.assert_close(outs[row], want, rtol=1e-6, atol=1e-6 * float(want.abs().max()))


@pytest.mark.skipif(
    not {"avx512_vnni", "avx2"} <= __import__(
        "rqcompile.targets.tvm.cpu_features", fromlist=["host_features"]).host_features(),
    reason="native vpdpbusd needs an AVX-512 VNNI host (the emulated rows above run anywhere)",
)
def test_native_2bit_panels_match_the_reference() -> None:
    torch.manual_seed(1)
    x = torch.randn(2, 256)
    qat = rq.prepare(torch.nn.Sequential(torch.nn.Linear(256, 64)).eval(), (x,), "A2W2")
    ir = rq.convert(qat.eval(), example_inputs=(x,))
    with rq.PassContext(disabled=frozenset({"select-kernels", "pack-weights"})):
        exe = rq.build(_forced(ir, "avx512_vnni_w2"), "llvm")
    want = rq.build(ir, "reference")(x)
    torch.testing.assert_close(exe(x), want, rtol=1e-6, atol=1e-6 * float(want.abs().max()))


def _forced_s24(ir, isa):
    return PassManager([SelectKernels(force=(f"sparse24_matmul:{isa}",)), PackWeights()]).run(
        ir, PassContext())


def _same_bits_as_the_2to4_panels(isa: str, preset: str, m: int) -> None:
    """The forced ``sparse24_matmul.<isa>`` row gives the AVX2 2:4 panels' output to the bit
    (the same integer sums and block terms), and the reference's within 1e-6."""
    torch.manual_seed(m)
    x = torch.randn(m, 256)
    qat = rq.prepare(torch.nn.Sequential(torch.nn.Linear(256, 64)).eval(), (x,), preset)
    ir = rq.convert(qat.eval(), example_inputs=(x,))
    outs = {}
    for row in (isa, "avx2"):
        forced = _forced_s24(ir, row)
        assert f'rq.kernel = "sparse24_matmul.{row}"' in print_module(forced)
        if row == isa and "_w4" in isa:
            assert 'rq.weight_layout = "panels4"' in print_module(forced)
        with rq.PassContext(disabled=frozenset({"select-kernels", "pack-weights"})):
            outs[row] = rq.build(forced, "llvm")(x)
    assert torch.equal(outs[isa], outs["avx2"])
    want = rq.build(ir, "reference")(x)
    torch.testing.assert_close(outs[isa], want, rtol=1e-6, atol=1e-6 * float(want.abs().max()))


@pytest.mark.parametrize("isa", ["avx512_vnni_w4_emulated", "avx_vnni_w4_emulated"])
@pytest.mark.parametrize(("preset", "m"), [("A4W4+2:4", 1), ("A4W1+2:4", 5),
                                           ("A4W4+2:4", NIBBLE_MAX_ROWS)])  # fmt: skip
def test_sparse24_on_dense_nibble_panels_gives_the_2to4_panels_bits(
    isa: str, preset: str, m: int
) -> None:
    """``sparse24_matmul.*_vnni_w4`` (M <= 16): the 2:4 codes unpacked to dense nibbles at
    load (pruned slots 0) on the VNNI nibble panels."""
    _same_bits_as_the_2to4_panels(isa, preset, m)


@pytest.mark.parametrize("isa", ["avx512_vnni_emulated", "avx_vnni_emulated"])
@pytest.mark.parametrize(("preset", "m"), [("A4W4+2:4", NIBBLE_MAX_ROWS + 1), ("A4W1+2:4", 40)])
def test_sparse24_on_dense_vnni_panels_gives_the_2to4_panels_bits(
    isa: str, preset: str, m: int
) -> None:
    """``sparse24_matmul.<vnni isa>`` (M >= 16): the 2:4 codes unpacked to dense int8 at load
    on the VNNI int8 panels, zmm epilogue where two panels share a vector."""
    _same_bits_as_the_2to4_panels(isa, preset, m)


@pytest.mark.parametrize(("mcpu", "m", "want"),
                         [("znver4", 1, "avx512_vnni_w4"),
                          ("znver4", NIBBLE_MAX_ROWS, "avx512_vnni_w4"),
                          ("znver4", NIBBLE_MAX_ROWS + 1, "avx512_vnni"),
                          ("alderlake", 1, "avx_vnni_w4"),
                          ("alderlake", NIBBLE_MAX_ROWS + 1, "avx_vnni"),
                          ("znver3", 1, "avx2"),
                          ("znver3", NIBBLE_MAX_ROWS + 1, "avx2")])  # fmt: skip
def test_sparse24_takes_the_nibble_panels_at_small_m_on_vnni_hosts(mcpu: str, m: int,
                                                                  want: str) -> None:  # fmt: skip
    import re

    from rqcompile.targets.tvm.schedules.integer import kernel_features

    feats = kernel_features({"kind": "llvm", "mcpu": mcpu})
    x = torch.randn(m, 128)
    qat = rq.prepare(torch.nn.Sequential(torch.nn.Linear(128, 32)).eval(), (x,), "A4W4+2:4")
    ir = rq.convert(qat.eval(), example_inputs=(x,))
    text = print_module(PassManager([SelectKernels(features=feats)]).run(ir, PassContext()))
    assert set(re.findall(r'rq\.kernel = "(sparse24_matmul\.[a-z0-9_]+)"', text)) == {
        f"sparse24_matmul.{want}"}
