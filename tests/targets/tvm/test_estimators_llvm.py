"""pege and gdnsq through TVM llvm: the same kernels, matching the reference target."""

from __future__ import annotations

import pytest
import torch

import rqcompile as rq
from rqcompile.testing.models import tiny_models

pytestmark = pytest.mark.tvm


def _trained(preset: str, est: str) -> tuple[torch.nn.Module, tuple]:
    torch.manual_seed(0)
    model, ex = tiny_models()["mlp"]
    key = {"pege": "ramp_steps", "gdnsq": "anneal_steps"}[est]
    qat = rq.prepare(model, ex, preset, estimator=est, estimator_options={key: 2})
    opt = torch.optim.SGD(qat.parameters(), lr=1e-2)
    for _ in range(3):
        loss = qat(*ex).pow(2).mean() + rq.aux_loss(qat)
        opt.zero_grad()
        loss.backward()
        opt.step()
        rq.step(qat)
    with torch.no_grad():  # integer learned widths, so convert deploys the trained model
        for m in qat.modules():
            st = getattr(m, "estimator_state", None)
            if st is not None and hasattr(st, "bits_excess"):
                st.bits_excess.zero_()
    return qat.eval(), ex


@pytest.mark.parametrize(
    ("preset", "est"), [("A1W1", "gdnsq"), ("A2W2", "gdnsq"), ("A2W2", "pege")]
)
def test_llvm_matches_reference_and_qat(preset: str, est: str) -> None:
    qat, ex = _trained(preset, est)
    irm = rq.convert(qat)
    want = rq.build(irm, "reference")(*ex)
    got = rq.build(irm, "llvm")(*ex)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4 * float(want.abs().max()))
    with torch.no_grad():
        qat_out = qat(*ex)
    torch.testing.assert_close(got, qat_out, rtol=1e-4, atol=1e-4 * float(qat_out.abs().max()))
    quantize = [op for op in irm.main.ops if op.name == "rq.quantize"]
    assert quantize and all(
        dict(op.attrs)["estimator"] == ("ste" if est == "pege" else "gdnsq") for op in quantize
    )

