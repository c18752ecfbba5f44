"""Bad inputs, issue 21, class "failures that come late or crash builds".

Mechanisms: ``rqcompile/names.py`` (one identifier sanitiser where the IR reaches code
generation, for every target), ``rqcompile/prepare_checks.py`` (prepare refuses or handles
what convert would refuse, naming the layer), ``rqcompile/config/fallback.py`` (presets keep a
layer that cannot take their format in the nearest one that works; ``strict=True`` raises).
Rows of ``docs/guarantees.md`` 2e.
"""

from __future__ import annotations

import importlib.util
import re
import warnings
from typing import Any

import pytest
import torch
from torch import nn

import rqcompile as rq
from rqcompile.names import identifier

_HAS_TVM = importlib.util.find_spec("tvm") is not None


def _msg(info: pytest.ExceptionInfo[BaseException], *needles: str) -> str:
    text = str(info.value)
    for n in needles:
        assert n in text, f"{n!r} not in message:\n{text}"
    return text


# -- names: nn.Sequential on every target -----------------------------------------------


def test_identifier_sanitiser() -> None:
    c_ident = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
    names = ["0.wq", "0.1.weight", "a.b", "a_b", "é.w", "x-y", "bias", "__x"]
    out = [identifier(n) for n in names]
    assert all(c_ident.fullmatch(o) for o in out)
    assert len(set(out)) == len(out)  # still distinct
    assert identifier("bias") == "bias" and identifier("0.wq") == identifier("0.wq")


def _seq_cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(4, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 4 * 4, 4)
    )


def _can_build(kind: str) -> bool:
    if not _HAS_TVM:
        return False
    if kind == "opencl":
        return importlib.util.find_spec("pyopencl") is not None
    return True


@pytest.mark.parametrize("kind", ["c", "opencl", "llvm"])
@pytest.mark.parametrize("model", ["mlp", "cnn"])
def test_sequential_builds_on_every_target(kind: str, model: str) -> None:
    if not _can_build(kind):
        pytest.skip(f"{kind} toolchain not installed")
    torch.manual_seed(0)
    if model == "mlp":
        m, x = nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 4)), torch.randn(2, 16)
    else:
        m, x = _seq_cnn(), torch.randn(2, 4, 4, 4)
    qat = rq.prepare(m, (x,), "A4W4")
    try:
        exe = rq.lower(qat, kind)
    except rq.TargetError as e:
        if "not available" in str(e) or "no OpenCL" in str(e):
            pytest.skip(str(e))
        raise
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = rq.check_parity(qat, exe, x)
    assert report.ok, str(report)


# -- prepare refuses (or handles) what convert would refuse -------------------------------


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_non_float32_models_are_handled_up_front(dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 4)).to(dtype)
    x = torch.randn(2, 16, dtype=dtype)
    with pytest.warns(rq.RQWarning, match=r"layer '0': parameter '0.weight' is ") as rec:
        qat = rq.prepare(m, (x,), "A4W4")
    assert "float32" in str(rec[0].message)
    qat(x).sum().backward()  # trains in its own precision
    exe = rq.lower(qat, "reference")
    assert exe.signature[0].dtype == "f32"
    with torch.no_grad():
        want = qat(x).float()
    tol = {torch.float64: 1e-5, torch.float16: 2e-2, torch.bfloat16: 1e-1}[dtype]
    torch.testing.assert_close(exe(x.float()), want, atol=tol, rtol=tol)
    with pytest.raises(rq.InputError, match="dtype"):
        exe(x)  # says to convert the input


def test_quantized_conv_padding_same_converts() -> None:
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(4, 8, 3, padding="same"), nn.ReLU())
    x = torch.randn(2, 4, 6, 6)
    qat = rq.prepare(m, (x,), "A8W8")
    assert rq.check_parity(qat, rq.lower(qat, "reference"), x).ok


class _IndexBuf(nn.Module):
    def __init__(self, how: str) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 8)
        self.register_buffer("idx", torch.tensor([0, 2, 5]))
        self.how = how

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.fc(x)
        if self.how == "buffer":
            return y[:, self.idx]
        if self.how == "none":
            return y[None]
        return y[:, [0, 2, 5]]


@pytest.mark.parametrize("how", ["buffer", "none", "list"])
def test_tensor_index_refused_at_prepare(how: str) -> None:
    with pytest.raises(rq.UnsupportedOpError) as info:
        rq.prepare(_IndexBuf(how), (torch.randn(2, 8),), "A4W4")
    _msg(info, "layer", "ints, slices and '...'")


def test_model_containing_a_prepared_model_refused_at_prepare() -> None:
    x = torch.randn(2, 16)
    inner = rq.prepare(nn.Sequential(nn.Linear(16, 8)), (x,), "A4W4")
    outer = nn.Sequential(inner, nn.ReLU(), nn.Linear(8, 4))
    with pytest.raises(rq.UsageError) as info:
        rq.prepare(outer, (x,), "A4W4")
    _msg(info, "layer '0'", "already prepared", "original float model")


def test_reflect_padding_refused_at_prepare_not_after_training() -> None:
    m = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1, padding_mode="reflect"))
    with pytest.raises(rq.UnsupportedOpError) as info:
        rq.prepare(m, (torch.randn(2, 4, 6, 6),), "A4W4")
    _msg(info, "layer '0'", "padding_mode='reflect'")


# -- presets fall back to the nearest format, strict=True raises --------------------------


def _cnn(c: int) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(c, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1),
        nn.Flatten(), nn.Linear(16 * 8 * 8, 12),
    )  # fmt: skip


@pytest.mark.parametrize("c", [1, 3])  # first conv K = 9, 27
def test_preset_keeps_a_layer_that_cannot_take_2_4_dense(c: int) -> None:
    x = torch.randn(2, c, 8, 8)
    with pytest.warns(rq.RQWarning, match=rf"0: cannot take A4W1\+2:4 .*\({9 * c}\).*dense A4W1"):
        qat = rq.prepare(_cnn(c), (x,), "A4W1+2:4")
    notes = [line for line in rq.inspect(qat).splitlines() if line.startswith("note:")]
    assert any("kept as dense A4W1" in n for n in notes), notes
    assert qat.get_submodule("0.weight_quant").sparsity is None
    assert qat.get_submodule("2.weight_quant").sparsity is not None  # K = 144: still 2:4
    assert rq.check_parity(qat, rq.lower(qat, "reference"), x).ok


@pytest.mark.parametrize("c", [1, 3])
def test_preset_strict_raises(c: int) -> None:
    with pytest.raises(rq.FormatError) as info:
        rq.prepare(_cnn(c), (torch.randn(2, c, 8, 8),), "A4W1+2:4", strict=True)
    text = _msg(info, "layer '0'", f"({9 * c})", "overrides={'0': None}")
    assert "Use a block size that is a multiple of 4" not in text  # cannot work for a conv


def test_strict_default_still_checks_overrides() -> None:
    with pytest.raises(rq.ConfigError):
        rq.prepare(nn.Sequential(nn.Linear(8, 4)), (torch.randn(2, 8),), "A4W4",
                   overrides={"nope": None})  # fmt: skip
    rq.prepare(nn.Sequential(nn.Linear(8, 4)), (torch.randn(2, 8),), "A4W4",
               overrides={"nope": None}, strict=False)  # fmt: skip


def _qconfig_roundtrip(strict: Any) -> Any:
    cfg = rq.QConfig.from_preset("A4W4")
    import dataclasses

    cfg = dataclasses.replace(cfg, strict=strict)
    return rq.QConfig.from_json(cfg.to_json()).strict


def test_strict_tristate_survives_checkpoints() -> None:
    assert [_qconfig_roundtrip(s) for s in (None, True, False)] == [None, True, False]
