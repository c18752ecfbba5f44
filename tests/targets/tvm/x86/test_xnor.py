"""The XNOR-popcount micro-kernel (x86.xnor) vs the pure-torch reference.

Integer cores bit-exact (through a transparent epilogue), fused layers within 1e-5, the
generic fallbacks (``-avx2`` targets, shapes the kernel does not take), and the AVX-512
VPOPCNTDQ variant: run for the host (see :func:`_need`) and compiled for Ice Lake, where
its assembly must use ``vpopcntq``.
"""

from __future__ import annotations

import functools
from typing import Any

import pytest
import torch

tvm = pytest.importorskip("tvm")

from rqcompile.errors import NumericsError  # noqa: E402  (after the importorskip guard)
from rqcompile.quant import reference as ref  # noqa: E402
from rqcompile.quant.bitpack import unpack_signs  # noqa: E402
from rqcompile.targets.tvm.kernels import integer as K  # noqa: E402
from rqcompile.targets.tvm.adapter import host_llvm_target, make_target, te  # noqa: E402
from rqcompile.targets.tvm.cpu_features import host_features  # noqa: E402
from rqcompile.targets.tvm.x86.xnor import xnor_supported  # noqa: E402
from rqcompile.targets.tvm.schedules.integer import kernel_options, schedule_prim_func  # noqa: E402

pytestmark = pytest.mark.tvm

ICELAKE = (("kind", "llvm"), ("mcpu", "icelake-server"))
NO_AVX2 = (("kind", "llvm"), ("mattr", ("-avx2",)))
_DT = {torch.uint32: "uint32", torch.float32: "float32", torch.int32: "int32"}


@functools.cache
def _build(shapes: tuple[tuple[tuple[int, ...], str], ...], block: int, k: int, isa: str,
           target: tuple[tuple[str, Any], ...] | None) -> tuple[Any, Any]:  # fmt: skip
    """(built module, prim func) of ``te_xnor_popcount_matmul`` for one set of shapes."""
    tgt = host_llvm_target() if target is None else make_target(
        {key: list(v) if isinstance(v, tuple) else v for key, v in target})  # fmt: skip
    phs = [te.placeholder(s, d, name=f"a{i}") for i, (s, d) in enumerate(shapes)]
    y = K.te_xnor_popcount_matmul(*phs, block=block, k=k, isa=isa)
    func = K.prim_func([*phs, y], name="kernel", kernel="xnor_popcount_matmul", block=block)
    func = schedule_prim_func(func, tgt)
    return tvm.compile(func, target=tgt), func


def run(args: list[torch.Tensor], *, block: int, k: int, isa: str,
        target: tuple[tuple[str, Any], ...] | None = None) -> torch.Tensor:  # fmt: skip
    shapes = tuple((tuple(a.shape), _DT[a.dtype]) for a in args)
    lib, _ = _build(shapes, block, k, isa, target)
    y = torch.empty(args[0].shape[0], args[3].shape[0])
    lib["kernel"](*[a.contiguous() for a in args], y)
    return y


def _need(isa: str) -> None:
    """Both variants run on any AVX2 host: built for the host target, the VPOPCNTDQ
    variant's ``llvm.ctpop`` becomes ``vpopcntq`` where the host has it and LLVM's own
    LUT sequence elsewhere, so its lane bookkeeping is checked everywhere."""
    del isa
    if "avx2" not in host_features():
        pytest.skip("host has no AVX2")


def _bits(rows: int, k: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 2**32, (rows, k // 32), generator=g, dtype=torch.int64).to(
        torch.uint32
    )


#: (M, N, K, block): GEMV, M not a multiple of the row tile, N not a multiple of 8 columns,
#: K of 1, 2, 4 and 8 blocks, blocks below, at and above one 256-bit step; K of less than
#: whole steps (zero-padded to them, with zero-weight padding blocks).
CORE_SHAPES = [
    (2, 9, 128, 128),
    (3, 8, 96, 32),
    (1, 8, 256, 256),
    (3, 13, 256, 128),
    (64, 20, 512, 128),
    (3, 5, 256, 64),
    (1, 9, 256, 32),
    (5, 16, 1024, 512),
    (2, 11, 1024, 1024),
]


@pytest.mark.parametrize("isa", ["avx2", "avx512_vpopcntdq"])
@pytest.mark.parametrize(("m", "n", "k", "block"), CORE_SHAPES)
def test_xnor_micro_core_exact(isa: str, m: int, n: int, k: int, block: int) -> None:
    """Each block's ``P`` bit-exact: with ``xs = B`` on one block and zero elsewhere the
    epilogue is ``B·P_b`` exactly (integers below 2**24 in float32)."""
    _need(isa)
    assert xnor_supported(k=-(-k // 256) * 256, block=block)
    nb = k // block
    xb, wb = _bits(m, k, k + m), _bits(n, k, k + n + 1)
    xb[0, 0], wb[0, 0] = 0xFFFFFFFF, 0  # one all-different word, one all-equal below
    wb[-1, -1] = xb[-1, -1]
    p = ref.xnor_popcount_core(xb, wb, block=block)
    assert torch.equal(p, ref.int_matmul_core(unpack_signs(xb), unpack_signs(wb), block))
    wsum = ref.code_sums(unpack_signs(wb), block)
    for b in range(nb):
        xs = torch.zeros(m, nb)
        xs[:, b] = float(block)
        args = [xb, xs, torch.zeros(m, nb), wb, torch.ones(n, nb), torch.zeros(n, nb), wsum]
        y = run(args, block=block, k=k, isa=isa)
        assert torch.equal(y.double() / block, p[..., b].double()), f"block {b}"


def _layer_args(m: int, n: int, k: int, block: int, seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(m, k, generator=g) + 0.3  # non-zero means exercise the offsets
    w = torch.randn(n, k, generator=g) - 0.2
    xb, xs, xc = ref.quantize(x, bits=1, symmetric=False, block=block, pack="bits32")
    wb, ws, wc = ref.quantize(w, bits=1, symmetric=False, block=block, pack="bits32")
    return [xb, xs, xc, wb, ws, wc, ref.code_sums(unpack_signs(wb), block)]


def _assert_rel(out: torch.Tensor, expect: torch.Tensor, tol: float = 1e-5) -> None:
    err = (out.double() - expect.double()).abs().max().item()
    scale = expect.double().abs().max().item()
    assert err <= tol * max(scale, 1e-30), f"max error {err:.3e} vs magnitude {scale:.3e}"


@pytest.mark.parametrize(
    ("m", "n", "k", "block", "isa", "target"),
    [
        (1, 24, 768, 128, "avx2", None),
        (7, 13, 512, 64, "avx2", None),
        (4, 16, 512, 512, "avx2", None),
        (2, 9, 8192, 8192, "avx2", None),  # 32 steps per block: byte counts in 2 groups
        (3, 10, 256, 32, "avx512_vpopcntdq", None),
        (5, 16, 768, 128, "avx512_vpopcntdq", None),
        (5, 12, 256, 128, "generic", NO_AVX2),  # the forced generic path
        (3, 8, 96, 32, "avx2", None),  # K not whole 256-bit steps: zero-padded to one
    ],
    ids=["gemv", "block64", "block512", "block8192", "vpopcnt-block32", "vpopcnt", "no-avx2", "k96"],
)
def test_xnor_matmul_matches_reference(
    m: int, n: int, k: int, block: int, isa: str, target: Any
) -> None:
    if isa != "generic":
        _need(isa)
    args = _layer_args(m, n, k, block, seed=m * 100 + k)
    y = run(args, block=block, k=k, isa=isa, target=target)
    _assert_rel(y, ref.xnor_popcount_matmul(*args, block=block, k=k))


def test_micro_kernel_only_where_it_fits() -> None:
    """The micro-kernel is one ``rq.stage = "micro"`` block; unfit shapes stay generic TE."""
    from rqcompile.targets.tvm.adapter import s_tir

    def stages(k: int, block: int, isa: str) -> set[str]:
        shapes = (((2, k // 32), "uint32"), ((2, k // block), "float32"),
                  ((2, k // block), "float32"), ((8, k // 32), "uint32"),
                  ((8, k // block), "float32"), ((8, k // block), "float32"),
                  ((8, k // block), "int32"))  # fmt: skip
        phs = [te.placeholder(s, d) for s, d in shapes]
        y = K.te_xnor_popcount_matmul(*phs, block=block, k=k, isa=isa)
        sch = s_tir.Schedule(te.create_prim_func([*phs, y]))
        blocks = sch.get_child_blocks(sch.get_sblock("root"))
        return {str(sch.get(b).annotations.get(K.STAGE_ATTR, "")) for b in blocks}

    assert "micro" in stages(256, 128, "avx2")
    assert "micro" in stages(512, 512, "avx512_vpopcntdq")
    assert "micro" not in stages(256, 128, "generic")
    assert "micro" in stages(96, 32, "avx2")  # K padded to whole 256-bit steps
    assert "micro" not in stages(384, 96, "avx2")  # a block that does not tile 256 bits
    assert not xnor_supported(k=65536, block=32768)  # int32 centring would overflow
    with pytest.raises(NumericsError, match="unknown isa"):
        stages(256, 128, "neon")


def test_vpopcntdq_variant_compiles_to_vpopcntq() -> None:
    """Built for Ice Lake (any host: compile only): the inner loop uses ``vpopcntq``."""
    shapes = (((2, 16), "uint32"), ((2, 4), "float32"), ((2, 4), "float32"),
              ((16, 16), "uint32"), ((16, 4), "float32"), ((16, 4), "float32"),
              ((16, 4), "int32"))  # fmt: skip
    lib, _ = _build(shapes, 128, 512, "avx512_vpopcntdq", ICELAKE)
    asm = lib.mod.inspect_source("asm") if hasattr(lib, "mod") else lib.inspect_source("asm")
    assert "vpopcntq" in asm
    lib2, _ = _build(shapes, 128, 512, "avx2", ICELAKE)
    asm2 = lib2.mod.inspect_source("asm") if hasattr(lib2, "mod") else lib2.inspect_source("asm")
    assert "vpshufb" in asm2 and "vpsadbw" in asm2


def test_kernel_options_pick_the_popcount() -> None:
    assert kernel_options({"kind": "llvm", "mcpu": "znver3"})["xnor_popcount_matmul"] == {
        "isa": "avx2"
    }
    ice = kernel_options({"kind": "llvm", "mcpu": "icelake-server"})
    assert ice["xnor_popcount_matmul"] == {"isa": "avx512_vpopcntdq"}
    no_pop = {"kind": "llvm", "mcpu": "icelake-server", "mattr": ["-avx512vpopcntdq"]}
    assert kernel_options(no_pop)["xnor_popcount_matmul"] == {"isa": "avx2"}
    assert "xnor_popcount_matmul" not in kernel_options({"kind": "llvm", "mattr": ["-avx2"]})


@pytest.mark.parametrize("target", ["llvm", {"kind": "llvm", "mattr": ["-avx2"]}],
                         ids=["host", "no-avx2"])  # fmt: skip
def test_a1w1_layer_matches_reference_target(target: Any) -> None:
    """A whole lowered A1W1 layer (quantize, micro-kernel or generic matmul, bias)."""
    import rqcompile as rq

    torch.manual_seed(0)
    lin = torch.nn.Sequential(torch.nn.Linear(512, 20)).eval()
    x = torch.randn(3, 512) + 0.1
    ir = rq.convert(rq.prepare(lin, (x,), "A1W1").eval(), example_inputs=(x,))
    want = rq.build(ir, target="reference")(x)
    _assert_rel(rq.build(ir, target=target)(x), want)
