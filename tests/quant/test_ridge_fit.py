"""The fused ridge node (quant/ridge_fit.py) against the autograd definition (ridge_params)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from rqcompile.quant import estimators
from rqcompile.quant.estimators import ridge_params
from rqcompile.quant.fake_quant import fake_quant_blocks
from rqcompile.quant.primitives import QFormat, grid, make_codes
from rqcompile.quant.ridge_fit import ridge_fake_quant

D = torch.float64
FORMATS = [QFormat(1, False), QFormat(1, True), QFormat(1.5, True), QFormat(2, False),
           QFormat(4, False), QFormat(4, True), QFormat(8, False)]  # fmt: skip


@pytest.fixture
def autograd_ridge(monkeypatch: pytest.MonkeyPatch) -> str:
    """An estimator name that runs ``ridge_params`` under autograd (the unfused path)."""
    row = dataclasses.replace(estimators.ESTIMATORS["ridge"], fused=None)
    monkeypatch.setitem(estimators.ESTIMATORS, "ridge_autograd", row)
    return "ridge_autograd"


def _frozen(x: torch.Tensor, fmt: QFormat) -> tuple[torch.Tensor, ...]:
    """Grid, codes and the rounding residual δ at ``x`` (docs/method.md#which-statistics-carry-gradient: δ frozen)."""
    s_f, b_f = grid(x, fmt)
    code = make_codes((x - b_f) / s_f, fmt)
    return s_f, b_f, code, code - (x - b_f) / s_f


@pytest.mark.parametrize("fmt", FORMATS, ids=str)
def test_gradcheck_float64_through_target_and_codes(fmt: QFormat) -> None:
    """Finite differences of the fused node, with codes moving as q = (x - b_f)/s_f + δ.

    The node takes its code *value* from the ``code`` argument and its gradient through the
    codes from ``x``; feeding it q(x) (no gradient through that argument) makes finite
    differences see both paths, so gradcheck tests the closed form end to end, including
    upstream gradients on ``scale`` and ``offset``.
    """
    torch.manual_seed(3)
    x = torch.randn(3, 2, 16, dtype=D)
    s_f, b_f, _, delta = _frozen(x, fmt)

    def f(xx: torch.Tensor) -> tuple[torch.Tensor, ...]:
        y, scale, offset = ridge_fake_quant(xx, (xx - b_f) / s_f + delta, s_f, 0.01, fmt.linear)
        return (y, scale) if fmt.linear else (y, scale, offset)

    assert torch.autograd.gradcheck(f, (x.clone().requires_grad_(True),), eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("lam", [0.01, 0.0, 5.0])
@pytest.mark.parametrize("fmt", FORMATS, ids=str)
def test_matches_ridge_params_under_autograd(fmt: QFormat, lam: float) -> None:
    """Values and the vector-Jacobian product of all three outputs equal the definition."""
    torch.manual_seed(int(fmt.bits * 10) + int(lam))
    x = torch.randn(4, 3, 32, dtype=D) * 2 + 0.5
    x[0, 0] = 0.7  # a constant block: V = 0, the λ = 0 safe path
    s_f, b_f, code, delta = _frozen(x, fmt)
    u, us, uo = torch.randn_like(x), torch.randn_like(s_f), torch.randn_like(s_f)

    xr = x.clone().requires_grad_(True)
    q = (xr - b_f) / s_f + delta
    scale, offset = ridge_params(xr, q, s_f, b_f, lam, fmt.linear)
    y = scale * q + offset
    ((y * u).sum() + (scale * us).sum() + (offset * uo).sum()).backward()

    xf = x.clone().requires_grad_(True)
    yf, sf, of = ridge_fake_quant(xf, code, s_f, lam, fmt.linear)
    loss = (yf * u).sum() + (sf * us).sum()
    if not fmt.linear:  # the linear offset is a constant 0 with no gradient
        loss = loss + (of * uo).sum()
    loss.backward()

    for got, want in ((yf, y), (sf, scale), (of, offset), (xf.grad, xr.grad)):
        torch.testing.assert_close(got, want, atol=1e-10, rtol=1e-10)
    assert torch.isfinite(xf.grad).all()  # type: ignore[union-attr]


# N:M sparsity pairs with linear formats only (docs/method.md#which-format-goes-where): the invalid combinations are
# not generated (they used to be generated and always skipped, issue 21)
@pytest.mark.parametrize(
    ("fmt", "nm"),
    [(f, None) for f in FORMATS] + [(f, (2, 4)) for f in FORMATS if f.linear],
    ids=lambda v: "dense" if v is None else ("2:4" if isinstance(v, tuple) else str(v)),
)
def test_fake_quant_blocks_same_as_unfused(fmt: QFormat, nm: tuple[int, int] | None,
                                           autograd_ridge: str) -> None:  # fmt: skip
    """The estimator table's fused path changes nothing observable (float64)."""
    torch.manual_seed(7)
    x = torch.randn(5, 2, 16, dtype=D)
    u = torch.randn_like(x)
    out = {}
    for est in ("ridge", autograd_ridge):
        xr = x.clone().requires_grad_(True)
        r = fake_quant_blocks(xr, fmt, estimator=est, nm=nm)
        (r.y * u).sum().backward()
        out[est] = (r, xr.grad)
    (a, ga), (b, gb) = out["ridge"], out[autograd_ridge]
    assert torch.equal(a.codes, b.codes)
    if fmt.bits != 1:  # q = z + (code - z) is exactly code here (Sterbenz), so y is bit-equal
        assert torch.equal(a.y, b.y) and torch.equal(a.scale, b.scale)
    for got, want in ((a.y, b.y), (a.scale, b.scale), (a.offset, b.offset), (ga, gb)):
        torch.testing.assert_close(got, want, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("fmt", [QFormat(1, False), QFormat(4, False), QFormat(1, True)], ids=str)
def test_float32_close_to_float64_definition(fmt: QFormat, autograd_ridge: str) -> None:
    """In fp32 (training precision) the fused node stays as close to the fp64 definition as
    the unfused fp32 path is: its sums are centred, not E[xq] - E[x]E[q]."""
    torch.manual_seed(11)
    x = torch.randn(64, 4, 128) * 3 + 20  # a large mean: cancellation would show here
    u = torch.randn_like(x)

    def run(est: str, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        xr = x.to(dtype).clone().requires_grad_(True)
        y = fake_quant_blocks(xr, fmt, estimator=est).y
        (y * u.to(dtype)).sum().backward()
        return y.double(), xr.grad.double()  # type: ignore[union-attr]

    y64, g64 = run(autograd_ridge, D)
    for est in ("ridge", autograd_ridge):  # measured: both ~4e-6 (y ≈ 20) and ~1e-6 (grad)
        y32, g32 = run(est, torch.float32)
        torch.testing.assert_close(y32, y64, atol=2e-5, rtol=0)
        torch.testing.assert_close(g32, g64, atol=5e-6, rtol=0)
