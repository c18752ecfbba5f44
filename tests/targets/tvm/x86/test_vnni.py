"""The VNNI panel GEMM (``x86.vnni``): bit-exact through its AVX2 emulation on any
AVX2 host, through ``vpdpbusd`` itself where the host has it; compile-only checks that VNNI
targets emit ``vpdpbusd``, and that a VNNI-built model refuses to run on a host without it.

The core is checked through the *transparent* epilogue of ``test_x86/panel.py``
(``xs = B``, ``ws = 1``, zero offsets: ``y = B·Σ_b P_b`` exactly), and whole layers against
the AVX2 panel kernel: both compute the same integer ``P`` and run the same float epilogue,
so their outputs must be equal to the bit.
"""

from __future__ import annotations

import contextlib
from typing import Any

import pytest
import torch

tvm = pytest.importorskip("tvm")

import rqcompile as rq  # noqa: E402
from rqcompile.errors import NumericsError  # noqa: E402
from rqcompile.quant import reference as ref  # noqa: E402
from rqcompile.quant.bitpack import pack_nibbles  # noqa: E402
from rqcompile.targets.tvm.adapter import te  # noqa: E402
from rqcompile.targets.tvm.cpu_features import host_features  # noqa: E402
from rqcompile.targets.tvm.kernels import integer as K  # noqa: E402
from rqcompile.targets.tvm.kernels import matmul as matmul_kernels  # noqa: E402
from rqcompile.targets.tvm.schedules.integer import kernel_options  # noqa: E402
from rqcompile.targets.tvm.x86.vnni import (  # noqa: E402
    VNNI_EMULATED,
    VNNI_ISAS,
    vnni_panel_matmul,
    vnni_tile,
)
from rqcompile.testing.kernels import build_kernel as _build  # noqa: E402
from rqcompile.testing.kernels import code_bounds, packed_int_matmul, random_codes  # noqa: E402

pytestmark = [
    pytest.mark.tvm,
    pytest.mark.skipif("avx2" not in host_features(), reason="host has no AVX2"),
]
#: the emulation runs everywhere; the real instruction where this host has it
ISAS = [
    *VNNI_EMULATED,
    *(pytest.param(isa, marks=pytest.mark.skipif(isa not in host_features(),
                                                 reason=f"host has no {isa}"))
      for isa in ("avx512_vnni", "avx_vnni")),
]  # fmt: skip


_layer = packed_int_matmul
_codes = random_codes
_range = code_bounds


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize(
    ("m", "n", "k", "block", "w_bits", "w_signed"),
    [(1, 8, 64, 32, 8, True), (5, 32, 256, 128, 8, True), (7, 24, 192, 64, 8, True),
     (13, 16, 128, 64, 8, True), (17, 40, 256, 128, 8, True), (2, 8, 32, 4, 8, True),
     (3, 16, 128, 32, 4, True), (6, 40, 256, 64, 4, False), (4, 32, 128, 128, 2, True)],
    ids=["gemv", "nv4-rest-row", "nv3-rest-rows", "nv2-rest-row", "nv1-2tiles+rest",
         "block4-8blocks", "s4", "u4", "s2"],
)  # fmt: skip
def test_vnni_core_exact(m: int, n: int, k: int, block: int, w_bits: int, w_signed: bool,
                         isa: str) -> None:  # fmt: skip
    nb = k // block
    lo, hi = _range(w_bits, w_signed)
    xq, wq = _codes((m, k), -30, 30, seed=k + m), _codes((n, k), lo, hi, seed=k + n)
    xq[0, :4] = torch.tensor([-128, 127, -128, 127], dtype=torch.int8)  # x + 128: 0 and 255
    y = _layer(isa, xq, torch.full((m, nb), float(block)), torch.zeros(m, nb), wq,
               torch.ones(n, nb), torch.zeros(n, nb), block=block, w_bits=w_bits,
               w_signed=w_signed)  # fmt: skip
    want = block * ref.int_matmul_core(xq, wq, block).to(torch.int64).sum(-1)
    assert torch.equal(y.to(torch.int64), want)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize(("w_bits", "w_signed"), [(8, True), (4, True), (4, False)])
def test_vnni_extreme_codes_exact(w_bits: int, w_signed: bool, isa: str) -> None:
    """The overflow corners: ``x + 128`` at 0 and 255 against the extreme weights, so
    ``vpdpbusd`` quads reach ``±4·255·128``. With ``xs = 1`` the epilogue is exact (``y = P``)
    where a row's codes or a column's are constant: rows 0-1 are (-128, 127) against any
    columns, row 2 varies along K (not periodic in quads) against constant columns 0-7."""
    m, n, k, block = 3, 16, 128, 64
    lo, hi = _range(w_bits, w_signed)
    xq = torch.full((m, k), -128, dtype=torch.int8)
    xq[1] = 127
    xq[2, :8] = xq[2, 64:76] = xq[2, 101] = 127
    wq = torch.full((n, k), lo, dtype=torch.int8)
    wq[1:8:2] = hi
    wq[8:] = torch.where(_codes((8, k), 0, 1, seed=5) == 1, hi, lo).to(torch.int8)
    nb = k // block
    y = _layer(isa, xq, torch.ones(m, nb), torch.zeros(m, nb), wq, torch.ones(n, nb),
               torch.zeros(n, nb), block=block, w_bits=w_bits, w_signed=w_signed)  # fmt: skip
    want = ref.int_matmul_core(xq, wq, block).double().sum(-1)
    assert torch.equal(y[:2].double(), want[:2])
    assert torch.equal(y[2, :8].double(), want[2, :8])


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize(("w_bits", "w_signed"), [(8, True), (4, True), (4, False), (2, True)])
def test_vnni_layer_equals_avx2_panels_bitwise(w_bits: int, w_signed: bool, isa: str) -> None:
    """Quantized data with real scales and offsets, full code ranges: the VNNI layer equals
    the AVX2 panel layer to the bit, and the reference within float32 rounding."""
    m, n, k, block = 9, 48, 256, 64
    g = torch.Generator().manual_seed(w_bits)
    x, w = torch.randn(m, k, generator=g) + 0.5, torch.randn(n, k, generator=g)
    xq, xs, xc = ref.quantize(x, bits=8, symmetric=False, block=block)
    wq, ws, wc = ref.quantize(w, bits=w_bits, symmetric=w_signed, block=block)
    args = (xq, xs, xc, wq, ws, wc)
    kw = dict(block=block, w_bits=w_bits, w_signed=w_signed)
    y = _layer(isa, *args, **kw)
    assert torch.equal(y, _layer("avx2", *args, **kw))
    stored = pack_nibbles(wq, signed=w_signed) if w_bits <= 4 else wq
    want = ref.int_matmul(xq, xs, xc, stored, ws, wc, ref.code_sums(wq, block), **kw)
    assert (y - want).abs().max().item() <= 1e-5 * want.abs().max().item()


def test_vnni_tile_fits_registers() -> None:
    for m, n in [(1, 8), (64, 1024), (5, 24), (512, 768), (3, 40), (64, 16)]:
        for isa in VNNI_ISAS:
            mr, nv = vnni_tile(m, n, isa)
            assert (n // 8) % nv == 0 and 1 <= mr <= min(m, 8)
            assert vnni_tile(m, n, VNNI_EMULATED.get(isa, isa)) == (mr, nv)  # emulation: same
            if "avx512" in isa:  # zmm on panel pairs; the epilogue's float32x8 sums fit too
                vecs = nv // 2 if nv % 2 == 0 else nv
                assert mr * vecs + mr * nv + vecs + 1 <= 32, (m, n, isa)
            else:  # ymm accumulators + weight vectors + the broadcast
                assert mr * nv + nv + 1 <= 16, (m, n, isa)
    assert vnni_tile(64, 1024, "avx512_vnni")[0] > vnni_tile(64, 1024, "avx_vnni")[0]


@pytest.mark.parametrize(("mcpu", "isa", "n", "encoding"),
                         [("icelake-server", "avx512_vnni", 32, "%zmm"),
                          ("icelake-server", "avx512_vnni", 24, "%ymm"),
                          ("alderlake", "avx_vnni", 32, "{vex}\tvpdpbusd\t")],
                         ids=["avx512-zmm", "avx512-odd-panels-ymm", "avx-vnni"])  # fmt: skip
def test_vnni_compiles_to_vpdpbusd(mcpu: str, isa: str, n: int, encoding: str) -> None:
    """Compile only (any host): the target's ``vpdpbusd`` (EVEX zmm on panel pairs, ymm
    where a tile has an odd number of panels; VEX ymm), and no ``vpdpbusd`` in the
    emulation."""
    m, k, block = 4, 256, 128
    pk = tuple(sorted(dict(block=block, w_bits=8, w_signed=True, isa=isa).items()))
    wspec = (((n, k), "int8"), ((n, 2), "float32"), ((n, 2), "float32"), ((n, 2), "int32"))
    _, packed = _build("te_pack_int_matmul_weights", "pack_weights", wspec, pk, mcpu)
    xspec = (((m, k), "int8"), ((m, 2), "float32"), ((m, 2), "float32"))
    lib, _ = _build("te_int_matmul_packed", "int_matmul", (*xspec, *packed), pk, mcpu)
    asm = lib.mod.inspect_source("asm")
    dp = [line for line in asm.splitlines() if "vpdpbusd" in line]
    assert dp and all(encoding in line for line in dp) and "vpmaddwd" not in asm
    emu = dict(pk) | {"isa": f"{isa}_emulated"}
    lib, _ = _build("te_int_matmul_packed", "int_matmul", (*xspec, *packed),
                    tuple(sorted(emu.items())), mcpu)  # fmt: skip
    asm = lib.mod.inspect_source("asm")
    assert "vpdpbusd" not in asm and "vpmaddwd" in asm


def test_kernel_options_pick_vnni_for_int_matmul_only() -> None:
    def isa(mcpu: str, kernel: str = "int_matmul", **extra: Any) -> str:
        return str(kernel_options({"kind": "llvm", "mcpu": mcpu, **extra})[kernel]["isa"])

    assert isa("znver3") == "avx2"
    assert isa("icelake-server") == isa("sapphirerapids") == isa("znver4") == "avx512_vnni"
    assert isa("alderlake") == "avx_vnni"
    assert isa("sapphirerapids", mattr=["-avx512vnni"]) == "avx_vnni"
    assert isa("sapphirerapids", mattr=["-avx512vnni", "-avxvnni"]) == "avx2"  # forced AVX2
    # the ymm vpdpbusd of AVX-512 needs VL: without it the VEX form, or none (LLVM would abort)
    assert isa("sapphirerapids", mattr=["-avx512vl"]) == "avx_vnni"
    assert isa("znver3", mattr=["+avx512vnni"]) == "avx2"
    assert isa("icelake-server", "sparse24_matmul") == isa("icelake-server", "quantize") == "avx2"


def test_vnni_shapes_and_isas_are_typed_errors() -> None:
    assert K.int_matmul_packs((2, 64), 16, block=32, w_bits=8, isa="avx512_vnni")
    assert not K.int_matmul_packs((2, 12), 16, block=6, w_bits=8, isa="avx512_vnni")  # quads
    assert not K.int_matmul_packs((2, 64), 12, block=32, w_bits=8, isa="avx_vnni")  # panels
    assert not K.int_matmul_packs((2, 64), 16, block=32, w_bits=8, isa="vnni")
    phs = [te.placeholder(s, d) for s, d in (((2, 64), "int8"), ((1, 16, 1, 32), "int8"))]
    fmt = dict(block=32, w_bits=8, w_signed=True, name="mm", attrs={})
    with pytest.raises(NumericsError, match="unknown VNNI isa"):
        vnni_panel_matmul(*phs, [], [], isa="avx2", **fmt)
    with pytest.raises(NumericsError, match="packed for K=64"):
        vnni_panel_matmul(phs[0], te.placeholder((1, 8, 1, 32), "int8"), [], [],
                          isa="avx_vnni", **fmt)  # fmt: skip
    # unpacked (3-D x, say), the VNNI isas take the AVX2 micro-kernel, not an error
    w = [te.placeholder(s, d) for s, d in (((2, 64), "int8"), ((2, 2), "float32"),
         ((2, 2), "float32"), ((16, 64), "int8"), ((16, 2), "float32"),
         ((16, 2), "float32"), ((16, 2), "int32"))]  # fmt: skip
    K.te_int_matmul(*w, block=32, w_bits=8, w_signed=True, isa="avx512_vnni")


def _mlp(preset: str) -> tuple[Any, torch.Tensor]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(128, 48), torch.nn.ReLU(), torch.nn.Linear(48, 16))
    x = torch.randn(3, 128)
    qat = rq.prepare(model.eval(), (x,), preset).eval()
    return rq.convert(qat, example_inputs=(x,)), x


@pytest.mark.parametrize(("preset", "isa"), [("A8W8", "avx512_vnni_emulated"),
                                             ("A4W4", "avx_vnni_emulated"),
                                             ("A2W2", "avx512_vnni_emulated")])  # fmt: skip
def test_emulated_vnni_model_matches_host_build(preset: str, isa: str, monkeypatch: Any) -> None:
    """The emitter plumbing (pack lifted out of ``main``, packed kernel) with the VNNI layout:
    forced to the emulation, a whole model gives the host build's output to the bit."""
    ir, x = _mlp(preset)
    host = rq.build(ir, target="llvm")(x)
    calls: list[int] = []
    pack = matmul_kernels.te_pack_vnni_panels

    def counting_pack(*a: Any, **kw: Any) -> Any:
        calls.append(1)
        return pack(*a, **kw)

    from rqcompile.passes.infra import PassContext, PassManager
    from rqcompile.passes.ir import SelectKernels

    # the row is forced by the kernel table, whatever this host has
    forced = PassManager([SelectKernels(force=(f"int_matmul:{isa}",))]).run(ir, PassContext())
    monkeypatch.setattr(matmul_kernels, "te_pack_vnni_panels", counting_pack)
    with rq.PassContext(disabled=frozenset({"select-kernels"})):
        exe = rq.build(forced, target="llvm")
    assert calls and exe.backend.vm.module.implements_function("main_transform_params")
    assert torch.equal(exe(x), host)


def _asm(mod: Any) -> str:
    parts = []
    with contextlib.suppress(Exception):  # modules without assembly (the VM's own)
        parts.append(mod.inspect_source("asm"))
    return "\n".join([*parts, *(_asm(sub) for sub in mod.imports)])


def test_vnni_model_refused_on_host_without_vnni() -> None:
    """Built for Alder Lake (AVX-VNNI, no AVX-512): the model uses ``vpdpbusd``, records
    ``avx_vnni``, and calling it here is the runtime's typed error."""
    if "avx_vnni" in host_features():
        pytest.skip("this host has AVX-VNNI")
    ir, x = _mlp("A8W8")
    exe = rq.build(ir, target={"kind": "llvm", "mcpu": "alderlake"})
    assert "avx_vnni" in exe.features
    assert "vpdpbusd" in _asm(exe.backend.executable.mod)
    with pytest.raises(rq.TargetError, match="avx_vnni"):
        exe(x)
