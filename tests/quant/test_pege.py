"""PEGE (docs/method.md#pege): curriculum, element-wise mixing, discretization loss, gradients."""

from __future__ import annotations

import math

import pytest
import torch

from rqcompile.quant.pege import PEGEState, group_loss, pege_ratio

D = torch.float64


def test_ratio_is_the_logarithmic_curriculum() -> None:
    assert pege_ratio(0, 100) == 0.0
    assert pege_ratio(100, 100) == pege_ratio(250, 100) == 1.0
    for t in (10, 37, 80):
        assert pege_ratio(t, 100) == pytest.approx(math.log(1 + (math.e - 1) * t / 100))
    r = [pege_ratio(t, 100) for t in range(101)]
    assert all(a < b for a, b in zip(r, r[1:]))  # strictly increasing up to T
    assert pege_ratio(5, 0) == 1.0  # no ramp: quantized from the start


def test_mixing_quantizes_a_fraction_r_of_elements() -> None:
    st = PEGEState(role="activation", ramp_steps=100, gamma=1e-4).train()
    st.step.fill_(40)
    x, y = torch.zeros(200_000), torch.ones(200_000)
    torch.manual_seed(0)
    frac = float(st.after_forward(x, y).mean())
    assert frac == pytest.approx(st.ratio(), abs=0.01)
    assert st.aux_loss() is None  # activations carry no discretization loss


def test_eval_and_finished_ramp_are_fully_quantized() -> None:
    st = PEGEState(role="weight", ramp_steps=10, gamma=1e-4)
    x, y = torch.zeros(64), torch.ones(64)
    assert torch.equal(st.eval().after_forward(x, y), y)
    st.train().step.fill_(10)
    assert torch.equal(st.after_forward(x, y), y)


def test_discretization_loss_is_gamma_times_mse_to_the_grid() -> None:
    st = PEGEState(role="weight", ramp_steps=0, gamma=0.5).train()
    x = torch.tensor([0.0, 1.0, 2.0, 3.0])
    y = torch.tensor([0.0, 0.0, 2.0, 4.0])
    st.after_forward(x, y)
    loss = group_loss([st])
    assert loss is not None and float(loss) == pytest.approx(0.5 * (1 + 0 + 1) / 4)
    assert group_loss([PEGEState(role="activation", ramp_steps=0, gamma=1.0)]) is None


def test_gradcheck_float64_mixed_forward() -> None:
    """Fixed mask, rounding noise frozen: autograd of the mix matches finite differences."""
    torch.manual_seed(0)
    x = torch.randn(4, 16, dtype=D)
    s_f, b_f = 0.3, -0.1
    delta = (torch.round((x - b_f) / s_f) - (x - b_f) / s_f).detach()  # frozen rounding noise
    st = PEGEState(role="activation", ramp_steps=100, gamma=0.7).train()
    st.step.fill_(50)

    def f(xx: torch.Tensor) -> torch.Tensor:
        y = s_f * ((xx - b_f) / s_f + delta) + b_f  # STE fake quant (noise injection)
        torch.manual_seed(1)  # the same Bernoulli mask on every call
        return st.after_forward(xx, y)

    assert torch.autograd.gradcheck(f, (x.clone().requires_grad_(True),), eps=1e-6, atol=1e-6)


def test_discretization_loss_gradient_pulls_weights_to_the_grid() -> None:
    """∂/∂W γ·mean((W - detach(Q(W)))²) = 2γ(W - Q(W))/n: the target is a stop-gradient."""
    x = torch.tensor([0.1, 0.9, 2.2, 2.8], dtype=D, requires_grad=True)
    q = torch.round(x.detach())
    st = PEGEState(role="weight", ramp_steps=0, gamma=0.5).train()
    st.after_forward(x, x + (q - x).detach())
    st.aux_loss().backward()  # type: ignore[union-attr]
    torch.testing.assert_close(x.grad, 2 * 0.5 * (x.detach() - q) / 4)
