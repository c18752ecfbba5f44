"""pege and gdnsq end to end: prepare, train with rq.aux_loss/rq.step, state_dict, convert."""

from __future__ import annotations

import io
import warnings

import pytest
import torch
import torch.nn.functional as F

import rqcompile as rq
from rqcompile.quant.modules import RQQuantize
from rqcompile.testing.models import tiny_models

OPTS = {"pege": {"ramp_steps": 6}, "gdnsq": {"anneal_steps": 6}}


def _prepare(name: str, preset: str, est: str) -> tuple[torch.nn.Module, tuple]:
    model, ex = tiny_models()[name]
    kw: dict = {"estimator": est, "estimator_options": OPTS.get(est, {})}
    if name == "cnn":
        kw["overrides"] = {"conv1": None, "dw": None}
    return rq.prepare(model, ex, preset, **kw), ex


def _train(qat: torch.nn.Module, ex: tuple, steps: int = 15) -> list[float]:
    torch.manual_seed(0)
    target = torch.randn_like(qat(*ex))
    opt = torch.optim.Adam(qat.parameters(), lr=3e-3)
    losses = []
    for _ in range(steps):
        loss = F.mse_loss(qat(*ex), target)
        opt.zero_grad()
        (loss + rq.aux_loss(qat)).backward()
        opt.step()
        rq.step(qat)
        losses.append(loss.item())
    return losses


def _matrix() -> list:
    """mlp at every preset in the default tier; the CNN at one preset (others are slow)."""
    return [
        pytest.param(name, preset, est, marks=() if name == "mlp" or preset == "A2W2" else
                     pytest.mark.slow)  # fmt: skip
        for name in ("mlp", "cnn")
        for preset in ("A1W1", "A2W2", "A4W4")
        for est in ("pege", "gdnsq")
    ]


@pytest.mark.parametrize(("name", "preset", "est"), _matrix())
def test_training_reduces_loss(name: str, preset: str, est: str) -> None:
    """Once the curriculum / width annealing is over (step 6), the loss keeps going down."""
    qat, ex = _prepare(name, preset, est)
    losses = _train(qat, ex, steps=20)
    assert all(torch.isfinite(torch.tensor(losses)))
    assert min(losses[-3:]) < losses[6]


def test_step_and_aux_loss_hooks() -> None:
    ridge, ex = _prepare("mlp", "A2W2", "ridge")
    assert rq.step(ridge) == 0 and float(rq.aux_loss(ridge)) == 0.0
    pege, _ = _prepare("mlp", "A2W2", "pege")
    pege.train()(*ex)
    aux = rq.aux_loss(pege)
    assert aux.requires_grad and float(aux.detach()) > 0  # γ·mean((W - Q(W))²) of the weights
    assert [rq.step(pege) for _ in range(3)] == [1, 2, 3]
    gd, _ = _prepare("mlp", "A2W2", "gdnsq")
    assert float(rq.aux_loss(gd)) == 0.0  # β starts on the annealed target: feasible
    with torch.no_grad():
        for m in gd.modules():
            if isinstance(m, RQQuantize):
                m.estimator_state.step.fill_(10)  # type: ignore[union-attr]  # annealed to 2
                m.estimator_state.bits_excess.fill_(0.3)  # type: ignore[union-attr]
    assert float(rq.aux_loss(gd).detach()) == pytest.approx(0.09)


@pytest.mark.parametrize("est", ["pege", "gdnsq"])
def test_state_dict_round_trip(est: str) -> None:
    qat, ex = _prepare("mlp", "A2W2", est)
    _train(qat, ex, steps=4)
    buf = io.BytesIO()
    torch.save(qat.state_dict(), buf)
    buf.seek(0)
    fresh, _ = _prepare("mlp", "A2W2", est)
    fresh.load_state_dict(torch.load(buf))
    step_keys = [k for k in fresh.state_dict() if k.endswith("estimator_state.step")]
    assert step_keys and all(int(fresh.state_dict()[k]) == 4 for k in step_keys)
    qat.eval(), fresh.eval()
    with torch.no_grad():
        assert torch.equal(qat(*ex), fresh(*ex))
    assert rq.step(fresh) == 5


def _finish(qat: torch.nn.Module) -> None:
    """Bring every schedule to its end with integer gdnsq widths (no rounding at convert)."""
    with torch.no_grad():
        for m in qat.modules():
            st = getattr(m, "estimator_state", None)
            if st is not None:
                st.step.fill_(10)
                if hasattr(st, "bits_excess"):
                    st.bits_excess.zero_()


@pytest.mark.parametrize(("name", "preset", "est"), _matrix())
def test_reference_matches_qat_forward(name: str, preset: str, est: str) -> None:
    torch.manual_seed(0)
    qat, ex = _prepare(name, preset, est)
    _train(qat, ex, steps=3)
    _finish(qat)
    qat.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("error", rq.RQWarning)  # integer widths: nothing to warn about
        irm = rq.convert(qat)
    with torch.no_grad():
        want = qat(*ex)
    got = rq.build(irm, "reference")(*ex)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4 * float(want.abs().max()))
    if name == "mlp" and preset == "A1W1":
        assert "rq.xnor_popcount_matmul" in {op.name for op in irm.main.ops}


def test_gdnsq_rounds_learned_widths_with_a_warning_naming_the_layer() -> None:
    qat, ex = _prepare("mlp", "A2W2", "gdnsq")
    _finish(qat)
    with torch.no_grad():
        qat.get_submodule("fc1.weight_quant").estimator_state.bits_excess.fill_(1.3)
    with pytest.warns(rq.RQWarning, match=r"layer 'fc1' \(weight\): learned bit width 3\.300"):
        irm = rq.convert(qat.eval())
    # the deployed width (3) reaches the kernel; the input model keeps its learned width
    learned = qat.get_submodule("fc1.weight_quant").estimator_state.bits().detach()
    assert float(learned) == pytest.approx(3.3)
    mm = [op for op in irm.main.ops if op.name == "rq.int_matmul"]
    assert mm and dict(mm[0].attrs)["w_bits"] == 3
    assert "W 3.30→3" in rq.inspect(qat)


def test_pege_convert_requires_a_finished_curriculum() -> None:
    qat, ex = _prepare("mlp", "A2W2", "pege")
    rq.step(qat)
    with pytest.raises(rq.ConfigError, match=r"pege curriculum is at step 1 of 6.*rq\.step"):
        rq.convert(qat)


def test_inspect_shows_learned_bits_only_for_gdnsq() -> None:
    gd, _ = _prepare("mlp", "A2W2", "gdnsq")
    text = rq.inspect(gd)
    assert "learned bits W/A" in text and "W 8.00→8 / A 8.00→8" in text
    assert "learned bits" not in rq.inspect(_prepare("mlp", "A2W2", "ste")[0])


def test_estimator_options_are_validated() -> None:
    model, ex = tiny_models()["mlp"]
    with pytest.raises(rq.ConfigError, match="'gamma' is not an option of estimator='gdnsq'"):
        rq.prepare(model, ex, "A2W2", estimator="gdnsq", estimator_options={"gamma": 1.0})
    with pytest.raises(rq.ConfigError, match="ramp_steps=1.5 must be a int"):
        rq.prepare(model, ex, "A2W2", estimator="pege", estimator_options={"ramp_steps": 1.5})
    with pytest.raises(rq.ConfigError, match="supports affine, dense specs only"):
        rq.prepare(model, ex, "A4W1+2:4", estimator="gdnsq")
    with pytest.raises(rq.ConfigError, match="its options: none"):
        rq.prepare(model, ex, "A2W2", estimator="ridge", estimator_options={"x": 1})
    spec = rq.LayerSpec.from_preset("A2W2")
    import dataclasses

    s2 = dataclasses.replace(spec, estimator="pege", estimator_options={"gamma": 1e-3})
    assert rq.LayerSpec.from_dict(s2.to_dict()) == s2
    assert "gamma=0.001" in s2.short()


def test_distill_loss_is_symmetric_kl() -> None:
    torch.manual_seed(0)
    a, b = torch.randn(4, 7), torch.randn(4, 7)
    assert float(rq.distill_loss(a, a)) == pytest.approx(0.0, abs=1e-7)
    j = float(rq.distill_loss(a, b))
    assert j > 0 and j == pytest.approx(float(rq.distill_loss(b, a)), rel=1e-5)
    p, q = a.log_softmax(-1), b.log_softmax(-1)
    kl = F.kl_div(q, p, log_target=True, reduction="batchmean")
    kl += F.kl_div(p, q, log_target=True, reduction="batchmean")
    assert j == pytest.approx(float(kl), rel=1e-5)
    s = a.clone().requires_grad_(True)
    rq.distill_loss(s, b).backward()
    assert s.grad is not None and float(s.grad.abs().sum()) > 0
