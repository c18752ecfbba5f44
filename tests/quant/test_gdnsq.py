"""GDNSQ (docs/method.md#gdnsq): learned width and clamp, gradients, penalty, deployment alphabet."""

from __future__ import annotations

import pytest
import torch

from rqcompile.quant.fake_quant import fake_quant_blocks
from rqcompile.quant.gdnsq import GDNSQState, deployed_bits, gdnsq_blocks, group_loss
from rqcompile.quant.gdnsq import OPTIONS as GOPTS
from rqcompile.quant.primitives import QFormat

D = torch.float64


def _state(role: str = "weight", goal: float = 2, **kw: float) -> GDNSQState:
    return GDNSQState(role=role, goal=goal, options={**GOPTS, **kw})


def test_gradcheck_float64_bits_clip_and_x() -> None:
    """∂y/∂(β, clip, x) by autograd match finite differences (rounding noise frozen)."""
    torch.manual_seed(0)
    inner = 0.8 * torch.randn(2, 3, 14, dtype=D)  # inside the fixed ends
    ends = torch.tensor([-3.0, 3.0], dtype=D).expand(2, 3, 2)  # fixed block min/max

    noise = torch.rand(2, 3, 16, dtype=D) - 0.5  # ε frozen: the additive-noise model

    def f(xi: torch.Tensor, bits: torch.Tensor, clip: torch.Tensor) -> torch.Tensor:
        return gdnsq_blocks(torch.cat([ends, xi], -1), bits, clip, noise=noise).y

    args = (
        inner.requires_grad_(True),
        torch.tensor(2.3, dtype=D, requires_grad=True),
        torch.tensor([0.1, 0.2], dtype=D, requires_grad=True),
    )
    assert torch.autograd.gradcheck(f, args, eps=1e-7, atol=1e-6)


def test_grad_wrt_step_is_the_rounding_noise() -> None:
    """y = x_c + Δ·ε, so ∂y/∂Δ = ε (docs/method.md#gdnsq item 4), seen through β."""
    x = torch.tensor([[[0.0, 0.26, 0.5, 0.74, 1.0]]], dtype=D)
    bits = torch.tensor(2.0, dtype=D, requires_grad=True)
    r = gdnsq_blocks(x, bits, torch.zeros(2, dtype=D))
    r.y.sum().backward()
    delta = 1.0 / 3.0
    eps = (torch.round(x / delta) - x / delta).sum()
    ddelta_dbits = -(2.0**2) * torch.log(torch.tensor(2.0, dtype=D)) / 3.0 * delta
    assert float(bits.grad) == pytest.approx(float(eps * ddelta_dbits), rel=1e-9)


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_integer_width_without_clip_is_the_ste_affine_quantizer(bits: int) -> None:
    torch.manual_seed(bits)
    xb = torch.randn(5, 2, 32)
    g = fake_quant_blocks(xb, QFormat(bits, False), estimator="gdnsq")
    s = fake_quant_blocks(xb, QFormat(bits, False), estimator="ste")
    for a, b in ((g.codes, s.codes), (g.scale, s.scale), (g.offset, s.offset), (g.y, s.y)):
        assert torch.equal(a, b)


def test_one_bit_deploys_sign_codes_with_the_same_values() -> None:
    torch.manual_seed(0)
    xb = torch.randn(4, 2, 32)
    r = fake_quant_blocks(xb, QFormat(1, False), estimator="gdnsq")
    assert set(r.codes.unique().tolist()) <= {-1.0, 1.0}
    torch.testing.assert_close(r.scale * r.codes + r.offset, r.y, rtol=0, atol=1e-6)
    mid = (xb.amax(-1, keepdim=True) + xb.amin(-1, keepdim=True)) / 2
    assert torch.equal(r.codes > 0, xb > mid)  # threshold at the block's midpoint


def test_clip_bounds_clamp_the_range() -> None:
    x = torch.linspace(0, 1, 11, dtype=D).reshape(1, 1, 11)
    r = gdnsq_blocks(x, torch.tensor(8.0, dtype=D), torch.tensor([0.2, 0.3], dtype=D))
    assert float(r.y.min()) == pytest.approx(0.2, abs=1e-9)
    assert float(r.y.max()) == pytest.approx(0.7, abs=1e-9)


def test_schedule_and_exterior_point_penalty() -> None:
    st = _state(goal=2, anneal_steps=10, start_bits=8.0, penalty=2.0, epoch_steps=4)
    assert st.target() == 8 and float(st.bits().detach()) == 8
    st.step.fill_(5)
    assert st.target() == pytest.approx(5.0)
    st.step.fill_(12)
    assert st.target() == 2 and st.mu() == pytest.approx(2.0 * 1.5**3)
    loss = group_loss([st])
    assert loss is not None and float(loss.detach()) == 0.0  # at the target: feasible, no penalty
    with torch.no_grad():
        st.bits_excess.fill_(0.5)
    loss = group_loss([st])
    assert float(loss.detach()) == pytest.approx(st.mu() * 0.25)  # type: ignore[union-attr]
    loss.backward()  # type: ignore[union-attr]
    assert float(st.bits_excess.grad) > 0  # descent lowers the width
    with torch.no_grad():
        st.bits_excess.fill_(-0.5)
    assert float(group_loss([st])) == 0.0  # below the target is feasible  # type: ignore[arg-type]


def test_deployed_bits_rounds_to_nearest_supported_width() -> None:
    assert [deployed_bits(b) for b in (1.0, 1.49, 1.5, 2.2, 3.7, 8.0, 0.5)] == [1, 1, 2, 2, 4, 8, 1]


def test_activations_learn_width_but_not_clip() -> None:
    a, w = _state("activation"), _state("weight")
    names_a = {n for n, _ in a.named_parameters()}
    names_w = {n for n, _ in w.named_parameters()}
    assert names_a == {"bits_excess"} and names_w == {"bits_excess", "clip"}
