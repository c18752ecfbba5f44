"""Tiny models: export → parse with torch-mlir's bindings → JIT-run vs the reference target."""

from __future__ import annotations

import functools

import pytest
import torch

pytest.importorskip("torch_mlir", reason="torch-mlir not installed: pip install 'rqcompile[mlir]'")

import rqcompile as rq
from rqcompile.errors import TargetError, UnsupportedOpError
from rqcompile.ir import Builder, TensorType
from rqcompile.targets.mlir import parse_mlir, run_mlir
from rqcompile.testing.models import prepared_tiny

#: preset → (kernel function suffix, text that only its integer core contains)
KERNEL = {
    "A4W4": ("int_matmul", "linalg.contract"),
    "A8W8": ("int_matmul", "linalg.contract"),  # int8 weights; traces the 8-bit code shift
    "A1W1": ("xnor_popcount_matmul", "math.ctpop"),
    "A4W4+2:4": ("sparse24_matmul", "tensor.extract"),
}


@functools.cache
def _exported(name: str, preset: str) -> tuple[object, tuple[torch.Tensor, ...], str]:
    qat, ex = prepared_tiny(name, preset)
    return qat, ex, rq.export_mlir(qat)


def _check_runs(qat: object, ex: tuple[torch.Tensor, ...], text: str) -> None:
    got = run_mlir(text, *ex)
    want = rq.lower(qat, target="reference")(*ex)
    want = want if isinstance(want, tuple) else (want,)
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        # Integer cores are exact; the activation quantizers' float statistics (mean, ridge
        # fit) are summed in another order in MLIR than in torch, ~1e-7 relative.
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5 * float(w.abs().max()))


@pytest.mark.parametrize("preset", list(KERNEL))
def test_mlp_exports_parses_and_runs(preset: str) -> None:
    qat, ex, text = _exported("mlp", preset)
    kernel, core = KERNEL[preset]
    assert str(parse_mlir(text)) == text  # MLIR's own printer: parse(print(m)) is stable
    for layer in ("fc1", "fc2", "head"):
        assert f"call @{layer}.{kernel}(" in text
    assert core in text
    assert "linalg.matmul" not in text, "a quantized layer was exported as a float matmul"
    assert "torch." not in text.split("{-#")[0], "torch dialect ops left in the module"
    if preset == "A1W1":
        assert "call @fc1.pack_signs(" in text
    _check_runs(qat, ex, text)


def test_attention_exports_and_runs() -> None:
    """Layer norm, GELU (erf), softmax, causal mask and activation × activation ``rq.qbmm``."""
    qat, ex, text = _exported("attention", "A4W4")
    assert "math.erf" in text and text.count(".qbmm(") >= 2
    _check_runs(qat, ex, text)


def test_cnn_sparse_exports_and_runs() -> None:
    """im2col, grouped conv (slice + concat), max-pool and 2:4 kernels; dw/conv1 stay float."""
    qat, ex, text = _exported("cnn", "A4W4+2:4")
    assert "call @conv3.g1.sparse24_matmul(" in text
    _check_runs(qat, ex, text)


def test_xnor_conv_exports_and_runs() -> None:
    """An A1W1 conv with 32 | C: sign words are packed after the quantize's segment and
    im2col runs on them in the next one, then the XNOR kernel."""
    torch.manual_seed(0)
    conv = torch.nn.Sequential(torch.nn.Conv2d(64, 64, 3, padding=1, bias=False))
    ex = (torch.randn(1, 64, 6, 6),)
    qat = rq.prepare(conv, ex, "A1W1")
    qat(*ex)
    text = rq.export_mlir(qat)
    assert "pack_signs(" in text and "xnor_popcount_matmul(" in text and "math.ctpop" in text
    _check_runs(qat, ex, text)


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["A4W4", "A1W1"])
def test_cnn_depthwise_exports_and_runs(preset: str) -> None:
    """A quantized depthwise conv is 64 kernels; minutes to trace and JIT on 2 cores."""
    _check_runs(*_exported("cnn", preset))


def test_accepts_ir_and_compiled_model_and_new_shapes() -> None:
    qat, _, text = _exported("mlp", "A4W4")
    assert rq.export_mlir(rq.lower(qat, "reference")) == text  # deterministic, same IR
    x = torch.randn(3, 64)
    other = rq.export_mlir(qat, example_inputs=(x,))
    assert "func.func @main(%arg0: tensor<3x64xf32>) -> tensor<3x10xf32>" in other
    torch.testing.assert_close(
        run_mlir(other, x)[0],
        rq.lower(qat, "reference", example_inputs=(x,))(x),
        rtol=1e-5,
        atol=1e-6,
    )


def test_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    qat, ex, text = _exported("mlp", "A4W4")
    with pytest.raises(TypeError, match=r"rq\.prepare"):
        rq.export_mlir(torch.nn.Linear(4, 4))
    with pytest.raises(TypeError, match="example_inputs only applies"):
        rq.export_mlir(rq.convert(qat), example_inputs=ex)
    b = Builder()
    b.ret(b.op("rq.relu", b.arg(TensorType((None, 4), "f32"))))  # type: ignore[arg-type]
    with pytest.raises(UnsupportedOpError, match="static shapes"):
        rq.export_mlir(b.module())
    with pytest.raises(rq.InputError, match="input 0 of @main must be float32"):
        run_mlir(text, ex[0].double())
    import rqcompile.targets.mlir.bindings as bindings

    monkeypatch.setattr(bindings, "have_torch_mlir", lambda: False)
    with pytest.raises(TargetError, match=r"pip install 'rqcompile\[mlir\]'"):
        rq.export_mlir(qat)
