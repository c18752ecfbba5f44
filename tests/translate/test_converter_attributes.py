"""Issue 21, "a converter must honour every attribute or refuse it": the table in
``rqcompile/translate/attributes.py`` against the live torch signatures, and the refusals.
Rows of ``docs/guarantees.md`` 2d."""

from __future__ import annotations

import inspect
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import rqcompile as rq
from rqcompile.translate.attributes import FUNCTION_ATTRS, METHOD_ATTRS, MODULE_ATTRS
from rqcompile.translate.converters import FUNCTIONS, METHODS, MODULES


def _module_params(cls: type) -> set[str]:
    params = set(inspect.signature(cls.__init__).parameters) - {"self"}
    return params | set(getattr(cls, "__constants__", ()))


@pytest.mark.parametrize("cls", list(MODULES), ids=lambda c: c.__name__)
def test_every_module_attribute_is_declared(cls: type) -> None:
    assert cls in MODULE_ATTRS, f"{cls.__name__} has a converter but no attribute row"
    missing = _module_params(cls) - set(MODULE_ATTRS[cls])
    assert not missing, f"{cls.__name__}: attributes {missing} are neither honoured nor refused"


def test_every_function_parameter_is_declared() -> None:
    for fn in FUNCTIONS:
        try:
            params = [
                p for p in inspect.signature(fn).parameters if p not in ("args", "kwargs")
            ]
        except (TypeError, ValueError):
            continue  # a builtin without a signature: its row, if any, is written by hand
        if len(params) <= 2 and fn not in FUNCTION_ATTRS:
            continue  # (a, b) operators: nothing to drop
        assert fn in FUNCTION_ATTRS, f"{fn.__name__} has parameters {params} and no row"
        assert set(params) <= {n for n, _ in FUNCTION_ATTRS[fn]}, fn.__name__
    # builtins whose parameters a converter could drop have hand-written rows
    for fn in (F.conv2d, F.max_pool2d, torch.mean, torch.softmax, torch.div, F.embedding):
        assert fn in FUNCTION_ATTRS
    assert {"mean", "softmax", "div"} <= set(METHOD_ATTRS) and set(METHOD_ATTRS) <= set(METHODS)


class _Wrap(nn.Module):
    def __init__(self, *layers: nn.Module, fn: Any = None) -> None:
        super().__init__()
        self.body = nn.ModuleList(layers)
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for m in self.body:
            x = m(x)
        return self.fn(x) if self.fn is not None else x


def _convert(model: nn.Module, x: torch.Tensor) -> Any:
    return rq.convert(rq.prepare(model, (x,), "A4W4"))


def _img() -> torch.Tensor:
    return torch.randn(2, 4, 8, 8)


@pytest.mark.parametrize("mode", ["reflect", "replicate", "circular"])
def test_conv_padding_mode_kept_in_float_is_refused(mode: str) -> None:
    m = _Wrap(nn.Conv2d(4, 4, 3, padding=1, padding_mode=mode))
    with pytest.raises(rq.UnsupportedOpError) as info:
        _convert(m, _img())
    text = str(info.value)
    assert f"padding_mode={mode!r}" in text and "body.0" in text and "'zeros'" in text


@pytest.mark.parametrize(
    ("layer", "needle"),
    [
        (nn.MaxPool2d(2, ceil_mode=True), "ceil_mode=True"),
        (nn.MaxPool2d(2, dilation=2), "dilation=2"),
    ],
)
def test_pool_attributes_refused(layer: nn.Module, needle: str) -> None:
    with pytest.raises(rq.UnsupportedOpError) as info:
        _convert(_Wrap(nn.Conv2d(4, 4, 1), layer), _img())
    assert needle in str(info.value)


@pytest.mark.parametrize(
    ("fn", "needle"),
    [
        (lambda x: F.max_pool2d(x, 2, ceil_mode=True), "ceil_mode=True"),
        (lambda x: torch.div(x, 3.0, rounding_mode="floor"), "rounding_mode='floor'"),
        (lambda x: x.mean(dim=1, dtype=torch.float64), "dtype=torch.float64"),
        (lambda x: torch.softmax(x, -1, dtype=torch.float64), "dtype=torch.float64"),
    ],
    ids=["max_pool2d-ceil", "div-floor", "mean-dtype", "softmax-dtype"],
)
def test_function_arguments_refused(fn: Any, needle: str) -> None:
    with pytest.raises(rq.UnsupportedOpError) as info:
        _convert(_Wrap(nn.Conv2d(4, 4, 1), fn=fn), _img())
    assert needle in str(info.value)


class _Emb(nn.Module):
    def __init__(self, **kw: Any) -> None:
        super().__init__()
        self.emb = nn.Embedding(20, 8, **kw)
        self.fc = nn.Linear(8, 4)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.fc(self.emb(ids))


def test_embedding_max_norm_refused() -> None:
    ids = torch.randint(0, 20, (2, 5))
    with pytest.raises(rq.UnsupportedOpError) as info:
        rq.convert(rq.prepare(_Emb(max_norm=1.0), (ids,), "A4W4"))
    assert "max_norm=1.0" in str(info.value) and "emb" in str(info.value)


def test_batchnorm_without_running_stats_refused() -> None:
    bn = nn.BatchNorm2d(4, track_running_stats=False)
    with pytest.raises(rq.RQError) as info:
        _convert(_Wrap(nn.ReLU(), bn), _img())
    assert "track_running_stats" in str(info.value)


def test_batchnorm_without_affine_converts_exactly() -> None:
    torch.manual_seed(0)
    bn = nn.BatchNorm2d(4, affine=False)
    bn.running_mean.uniform_(-1, 1)
    bn.running_var.uniform_(0.5, 2)
    m = _Wrap(nn.ReLU(), bn).eval()
    x = _img()
    qat = rq.prepare(m, (x,), "A4W4")
    exe = rq.lower(qat, "reference")
    torch.testing.assert_close(exe(x), qat(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("padding", ["same", "valid"])
def test_float_conv_padding_strings_convert_exactly(padding: str) -> None:
    torch.manual_seed(0)
    m = _Wrap(nn.Conv2d(4, 4, 3, padding=padding, padding_mode="zeros")).eval()
    x = _img()
    qat = rq.prepare(m, (x,), "A4W4", overrides={"body.0": None})
    exe = rq.lower(qat, "reference")
    torch.testing.assert_close(exe(x), qat(x), atol=1e-5, rtol=1e-5)


def test_conv_same_padding_that_needs_asymmetry_refused() -> None:
    m = _Wrap(nn.Conv2d(4, 4, 2, padding="same"))
    with pytest.raises(rq.RQError) as info:
        _convert(m, _img())
    assert "asymmetric" in str(info.value)
