"""The AMX-INT8 GEMM (``x86.amx``): bit-exact through its plain-TIR emulation on any host,
through ``tdpbusd`` itself where the host has AMX-INT8; compile-only checks that AMX targets
emit the tile instructions; the kernel table picks the row for GEMM-shaped calls only; a
model built with AMX refuses to run where the host lacks it or the OS refuses the tiles.

As in ``test_vnni.py``: the core through the transparent epilogue (``xs = B``, ``ws = 1``,
zero offsets: ``y = B·Σ_b P_b`` exactly), whole layers against the AVX2 panel kernel (the
same integer ``P`` and the same float epilogue: equal to the bit).
"""

from __future__ import annotations

import contextlib
import re
from typing import Any

import pytest
import torch

tvm = pytest.importorskip("tvm")

import rqcompile as rq  # noqa: E402
from rqcompile.errors import NumericsError  # noqa: E402
from rqcompile.ir.printer import print_module  # noqa: E402
from rqcompile.passes.infra import PassContext, PassManager  # noqa: E402
from rqcompile.passes.ir import SelectKernels  # noqa: E402
from rqcompile.quant import reference as ref  # noqa: E402
from rqcompile.quant.bitpack import pack_nibbles  # noqa: E402
from rqcompile.targets.tvm import cpu_features, pipelines  # noqa: E402
from rqcompile.targets.tvm.adapter import te  # noqa: E402
from rqcompile.targets.tvm.cpu_features import host_features  # noqa: E402
from rqcompile.targets.tvm.kernels import integer as K  # noqa: E402
from rqcompile.targets.tvm.kernels import matmul as matmul_kernels  # noqa: E402
from rqcompile.targets.tvm.schedules.integer import kernel_features, kernel_options  # noqa: E402
from rqcompile.targets.tvm.x86.amx import AMX_MIN_ROWS, amx_matmul, amx_tile  # noqa: E402
from rqcompile.testing.kernels import build_kernel as _build  # noqa: E402
from rqcompile.testing.kernels import code_bounds, packed_int_matmul, random_codes  # noqa: E402

pytestmark = [
    pytest.mark.tvm,
    pytest.mark.skipif("avx2" not in host_features(), reason="host has no AVX2"),
]
#: the emulation runs everywhere; the real instruction where this host has it
ISAS = [
    "amx_emulated",
    pytest.param("amx", marks=pytest.mark.skipif(
        not {"amx_tile", "amx_int8"} <= host_features(), reason="host has no AMX-INT8")),
]  # fmt: skip


_layer = packed_int_matmul
_codes = random_codes
_range = code_bounds


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize(
    ("m", "n", "k", "block", "w_bits", "w_signed"),
    [(1, 16, 64, 64, 8, True), (32, 32, 256, 128, 8, True), (48, 64, 256, 64, 8, True),
     (21, 48, 192, 64, 8, True), (70, 16, 128, 32, 8, True), (5, 32, 96, 48, 8, True),
     (3, 32, 64, 4, 8, True), (33, 32, 128, 32, 4, True), (16, 48, 256, 64, 4, False),
     (40, 32, 128, 128, 2, True), (300, 16, 64, 32, 8, True)],
    ids=["one-row", "2x2-tiles", "odd-row-tile", "tn1-row-tail", "kstep32-tail",
         "kstep16", "kstep4", "s4", "u4", "s2", "chunk+rest"],
)  # fmt: skip
def test_amx_core_exact(m: int, n: int, k: int, block: int, w_bits: int, w_signed: bool,
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
def test_amx_extreme_codes_exact(isa: str) -> None:
    """The overflow corners: ``x + 128`` at 0 and 255 against -128 and 127, so a K step of
    ``tdpbusd`` sums 64 products of up to ``255·128``. With ``xs = 1`` the epilogue is exact
    (``y = P``) where a row's codes or a column's are constant."""
    m, n, k, block = 3, 32, 128, 64
    xq = torch.full((m, k), -128, dtype=torch.int8)
    xq[1] = 127
    xq[2, :8] = xq[2, 64:76] = xq[2, 101] = 127
    wq = torch.full((n, k), -128, dtype=torch.int8)
    wq[1:16:2] = 127
    wq[16:] = torch.where(_codes((16, k), 0, 1, seed=5) == 1, 127, -128).to(torch.int8)
    nb = k // block
    y = _layer(isa, xq, torch.ones(m, nb), torch.zeros(m, nb), wq, torch.ones(n, nb),
               torch.zeros(n, nb), block=block, w_bits=8, w_signed=True)  # fmt: skip
    want = ref.int_matmul_core(xq, wq, block).double().sum(-1)
    assert torch.equal(y[:2].double(), want[:2])
    assert torch.equal(y[2, :16].double(), want[2, :16])


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize(("w_bits", "w_signed"), [(8, True), (4, True), (4, False), (2, True)])
def test_amx_layer_equals_avx2_panels_bitwise(w_bits: int, w_signed: bool, isa: str) -> None:
    """Quantized data with real scales and offsets, full code ranges: the AMX layer equals
    the AVX2 panel layer to the bit (same ``P``, same epilogue), and the reference within
    float32 rounding."""
    m, n, k, block = 37, 96, 256, 64
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


def test_amx_tile_fits_the_tile_registers() -> None:
    for n in (16, 32, 48, 4096):
        tm, tn = amx_tile(n)
        assert tm * tn + tm + tn <= 8 and (n // 16) % tn == 0


def test_amx_shapes_and_isas_are_typed_errors() -> None:
    assert K.int_matmul_packs((16, 64), 32, block=32, w_bits=8, isa="amx")
    assert not K.int_matmul_packs((16, 64), 24, block=32, w_bits=8, isa="amx")  # N % 16
    assert not K.int_matmul_packs((16, 12), 32, block=6, w_bits=8, isa="amx")  # K-quads
    assert not K.int_matmul_packs((4, 64), 32, block=32, w_bits=8, isa="amx", min_rows=16)
    assert not K.int_matmul_packs((2, 64), 32, block=512, w_bits=8, isa="amx")  # int32 epilogue
    phs = [te.placeholder(s, d) for s, d in (((2, 64), "int8"), ((2, 16, 2, 32), "int8"))]
    fmt = dict(block=32, w_bits=8, w_signed=True, name="mm", attrs={})
    with pytest.raises(NumericsError, match="unknown AMX isa"):
        amx_matmul(*phs, [], [], isa="avx512_vnni", **fmt)
    with pytest.raises(NumericsError, match="packed for it with K=64"):
        amx_matmul(phs[0], te.placeholder((2, 8, 2, 32), "int8"), [], [], isa="amx", **fmt)


def test_amx_compiles_to_tdpbusd() -> None:
    """Compile only (any host): the Sapphire Rapids build configures tiles, loads them, runs
    ``tdpbusd`` on the 2 x 2 tile and releases them; the emulation has no tile instruction."""
    m, n, k, block = 48, 64, 256, 128
    pk = dict(block=block, w_bits=8, w_signed=True, isa="amx")
    wspec = (((n, k), "int8"), ((n, 2), "float32"), ((n, 2), "float32"), ((n, 2), "int32"))
    xspec = (((m, k), "int8"), ((m, 2), "float32"), ((m, 2), "float32"))
    asm = {}
    for isa in ("amx", "amx_emulated"):
        key = tuple(sorted((pk | {"isa": isa}).items()))
        _, packed = _build("te_pack_int_matmul_weights", "pack_weights", wspec, key,
                           "sapphirerapids")  # fmt: skip
        lib, _ = _build("te_int_matmul_packed", "int_matmul", (*xspec, *packed), key,
                        "sapphirerapids")  # fmt: skip
        asm[isa] = lib.mod.inspect_source("asm")
    for insn in ("ldtilecfg", "tileloadd", "tilezero", "tilestored", "tilerelease"):
        assert insn in asm["amx"], insn
    accumulators = set(re.findall(r"tdpbusd\s+%tmm\d, %tmm\d, (%tmm\d)", asm["amx"]))
    assert accumulators == {"%tmm4", "%tmm5", "%tmm6", "%tmm7"}
    assert not re.search(r"\b(tdpbusd|tileloadd|ldtilecfg)\b", asm["amx_emulated"])


def test_amx_features_and_targets() -> None:
    text = "flags\t\t: fpu avx2 fma avx512f amx_bf16 amx_tile amx_int8\n"
    assert {"amx_tile", "amx_int8"} <= cpu_features.parse_cpuinfo(text)
    spr = {"kind": "llvm", "mcpu": "sapphirerapids"}
    assert {"amx_tile", "amx_int8"} <= cpu_features.required_features(spr)
    assert cpu_features.missing_features(spr, frozenset({"avx2"})) >= {"amx_tile", "amx_int8"}
    plus = {"kind": "llvm", "mcpu": "icelake-server", "mattr": ["+amx-tile", "+amx-int8"]}
    assert {"amx_tile", "amx_int8"} <= cpu_features.required_features(plus)
    assert {"amx_tile", "amx_int8"} <= set(kernel_features(plus))
    assert "amx_int8" not in kernel_features({"kind": "llvm", "mcpu": "znver4"})
    # a shape-specific row (M >= 16): the summary keeps naming the VNNI row
    assert kernel_options(spr)["int_matmul"] == {"isa": "avx512_vnni"}


def _mlp(preset: str, m: int) -> tuple[Any, torch.Tensor]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(128, 64), torch.nn.ReLU(), torch.nn.Linear(64, 32))
    x = torch.randn(m, 128)
    qat = rq.prepare(model.eval(), (x,), preset).eval()
    return rq.convert(qat, example_inputs=(x,)), x


def _kernels(mod: Any) -> list[str]:
    return re.findall(r'rq\.kernel = "(int_matmul\.[a-z0-9_]+)"', print_module(mod))


@pytest.mark.parametrize(("preset", "m", "want"),
                         [("A8W8", AMX_MIN_ROWS, "amx"), ("A4W4", 64, "amx"),
                          ("A8W8", AMX_MIN_ROWS - 1, "avx512_vnni"),
                          ("A4W4", AMX_MIN_ROWS - 1, "avx512_vnni_w4")])  # fmt: skip
def test_amx_row_is_picked_for_gemm_shapes(preset: str, m: int, want: str) -> None:
    feats = kernel_features({"kind": "llvm", "mcpu": "sapphirerapids"})
    ir, _ = _mlp(preset, m)
    picked = PassManager([SelectKernels(features=feats)]).run(ir, PassContext())
    assert set(_kernels(picked)) == {f"int_matmul.{want}"}
    zen4 = kernel_features({"kind": "llvm", "mcpu": "znver4"})
    picked = PassManager([SelectKernels(features=zen4)]).run(ir, PassContext())
    assert "int_matmul.amx" not in _kernels(picked)


@pytest.mark.parametrize("preset", ["A8W8", "A4W4"])
def test_emulated_amx_model_matches_host_build(preset: str, monkeypatch: Any) -> None:
    """The emitter plumbing (pack lifted out of ``main``, packed kernel) with the AMX layout:
    forced to the emulation, a whole model gives the host build's output to the bit."""
    ir, x = _mlp(preset, 20)
    host = rq.build(ir, target="llvm")(x)
    calls: list[int] = []
    pack = matmul_kernels.te_pack_amx_panels

    def counting_pack(*a: Any, **kw: Any) -> Any:
        calls.append(1)
        return pack(*a, **kw)

    forced = PassManager([SelectKernels(force=("int_matmul:amx_emulated",))]).run(
        ir, PassContext())  # fmt: skip
    monkeypatch.setattr(matmul_kernels, "te_pack_amx_panels", counting_pack)
    with rq.PassContext(disabled=frozenset({"select-kernels"})):
        exe = rq.build(forced, target="llvm")
    assert calls and exe.backend.vm.module.implements_function("main_transform_params")
    assert set(_kernels(exe.ir)) == {"int_matmul.amx_emulated"}
    assert torch.equal(exe(x), host)


def _asm(mod: Any) -> str:
    parts = []
    with contextlib.suppress(Exception):  # modules without assembly (the VM's own)
        parts.append(mod.inspect_source("asm"))
    return "\n".join([*parts, *(_asm(sub) for sub in mod.imports)])


def test_amx_model_refused_on_host_without_amx() -> None:
    """Built for Sapphire Rapids: the model runs ``tdpbusd``, records ``amx_int8``, and
    calling it on a host without AMX is the runtime's typed error."""
    if {"amx_tile", "amx_int8"} <= host_features():
        pytest.skip("this host has AMX-INT8")
    ir, x = _mlp("A8W8", 32)
    exe = rq.build(ir, target={"kind": "llvm", "mcpu": "sapphirerapids"})
    assert {"amx_tile", "amx_int8"} <= set(exe.features)
    assert "tdpbusd" in _asm(exe.backend.executable.mod)
    with pytest.raises(rq.TargetError, match="amx"):
        exe(x)


def test_amx_model_refused_when_the_os_refuses_tiles(monkeypatch: Any) -> None:
    """Where the host has AMX but Linux refuses the tile state (an old kernel), the model
    is refused with the reason instead of dying on its first tile instruction."""
    have = frozenset({"avx2", "amx_tile", "amx_int8"})
    monkeypatch.setattr(pipelines, "host_features", lambda: have)
    monkeypatch.setattr(pipelines, "amx_permission", lambda: "Linux refused AMX (test)")
    reasons = pipelines.run_blockers({"kind": "llvm"}, sorted(have))
    assert reasons == ["Linux refused AMX (test)"]
    assert pipelines.run_blockers({"kind": "llvm"}, ["avx2"]) == []


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize(("preset", "m"), [("A4W4+2:4", AMX_MIN_ROWS), ("A4W1+2:4", 33)])
def test_sparse24_on_dense_amx_tiles_matches_the_reference(preset: str, m: int, isa: str) -> None:
    """``sparse24_matmul.amx``: the 2:4 codes unpacked to dense int8 at load, AMX tiles."""
    torch.manual_seed(m)
    x = torch.randn(m, 256)
    qat = rq.prepare(torch.nn.Sequential(torch.nn.Linear(256, 64)).eval(), (x,), preset)
    ir = rq.convert(qat.eval(), example_inputs=(x,))
    forced = PassManager([SelectKernels(force=(f"sparse24_matmul:{isa}",))]).run(
        ir, PassContext())  # fmt: skip
    assert f'rq.kernel = "sparse24_matmul.{isa}"' in print_module(forced)
    with rq.PassContext(disabled=frozenset({"select-kernels"})):
        exe = rq.build(forced, "llvm")
    want = rq.build(ir, "reference")(x)
    torch.testing.assert_close(exe(x), want, rtol=1e-6, atol=1e-6 * float(want.abs().max()))


@pytest.mark.parametrize(("m", "want"),
                         [(AMX_MIN_ROWS, "amx"), (AMX_MIN_ROWS - 1, "avx512_vnni_w4")])  # fmt: skip
def test_sparse24_takes_amx_tiles_for_gemm_shapes(m: int, want: str) -> None:
    feats = kernel_features({"kind": "llvm", "mcpu": "sapphirerapids"})
    ir, _ = _mlp("A4W4+2:4", m)
    text = print_module(PassManager([SelectKernels(features=feats)]).run(ir, PassContext()))
    assert set(re.findall(r'rq\.kernel = "(sparse24_matmul\.[a-z0-9_]+)"', text)) == {
        f"sparse24_matmul.{want}"}
