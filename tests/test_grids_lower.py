"""Issue 22: every grid and estimator converts, and the reference target matches QAT.

The 1-bit min/max grid trains on codes {0, 1}; convert stores them as ±1 with half the scale
(docs/method.md#deployment-of-the-grids), so A1W1 still runs on the XNOR-popcount kernel.
"""

from __future__ import annotations

import dataclasses
import importlib.util

import pytest
import torch

import rqcompile as rq
from rqcompile.config.spec import LayerSpec
from rqcompile.testing.models import tiny_models


def _prepared(name: str, preset: str, grid: str | None, estimator: str) -> tuple:
    model, ex = tiny_models()[name]
    spec = dataclasses.replace(LayerSpec.from_preset(preset).with_grid(grid), estimator=estimator)
    qat = rq.prepare(model, ex, rq.QConfig(default=spec))
    opt = torch.optim.SGD(qat.parameters(), lr=1e-2)
    for _ in range(2):
        loss = qat(*ex).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return qat.eval(), ex


@pytest.mark.parametrize("estimator", ["ridge", "ste", "ridge_detached"])
@pytest.mark.parametrize("preset", ["A1W1", "A1.5W1.5", "A2W2"])
@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_minmax_reference_matches_qat_forward(name: str, preset: str, estimator: str) -> None:
    qat, ex = _prepared(name, preset, "minmax", estimator)
    assert "minmax" in rq.inspect(qat)
    irm = rq.convert(qat)
    with torch.no_grad():
        want = qat(*ex)
    got = rq.build(irm, "reference")(*ex)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4 * float(want.abs().max()))
    if preset == "A1W1" and name == "mlp":
        assert "rq.xnor_popcount_matmul" in {op.name for op in irm.main.ops}


_NEEDS_TVM = pytest.mark.skipif(importlib.util.find_spec("tvm") is None, reason="needs Apache TVM")


@_NEEDS_TVM
@pytest.mark.parametrize(
    ("preset", "estimator", "deployed"),
    [
        ("A1W1", "ridge", "ridge_minmax"),
        ("A1W1", "ridge_detached", "ridge_minmax"),
        ("A1.5W1.5", "ridge", "ridge_minmax"),
        ("A1.5W1.5", "ridge_detached", "ridge_minmax"),
        ("A1.5W1.5", "ste", "ste_minmax"),
    ],
)
def test_minmax_lowers_to_llvm_within_parity(preset: str, estimator: str, deployed: str) -> None:
    """The 1-bit / ternary min/max grids run on TVM with the reference's codes."""
    qat, ex = _prepared("mlp", preset, "minmax", estimator)
    irm = rq.convert(qat)
    assert {str(op.attr("estimator")) for op in irm.main.ops if op.name == "rq.quantize"} == {
        deployed
    }
    exe = rq.build(irm, "llvm")
    report = rq.check_parity(qat, exe, ex)
    assert report.ok, str(report)  # the parity rule: agreement, or flips at near-ties only
    kernels = {str(op.attr("rq.kernel")) for op in exe.ir.main.ops if op.name == "rq.quantize"}
    assert kernels and all(k.startswith("quantize.") for k in kernels), kernels


def _opencl_missing() -> str | None:
    if importlib.util.find_spec("tvm") is None or importlib.util.find_spec("pyopencl") is None:
        return "needs Apache TVM and pyopencl"
    from rqcompile.targets.tvm.device.opencl import opencl_available

    return opencl_available()


@pytest.mark.slow
def test_ridge_minmax_1bit_runs_on_opencl_within_parity() -> None:
    """The device targets share the TE quantizer, so they compute the min/max grids too."""
    missing = _opencl_missing()
    if missing:
        pytest.skip(missing)
    qat, ex = _prepared("mlp", "A1W1", "minmax", "ridge")
    report = rq.check_parity(qat, rq.lower(qat, "opencl"), ex)
    assert report.ok, str(report)


@_NEEDS_TVM
def test_ste_minmax_1bit_builds_for_llvm_and_matches_reference() -> None:
    """STE on the 1-bit min/max grid deploys as gdnsq's fixed-width quantizer, on every target."""
    qat, ex = _prepared("mlp", "A1W1", "minmax", "ste")
    irm = rq.convert(qat)
    assert {str(op.attr("estimator")) for op in irm.main.ops if op.name == "rq.quantize"} == {
        "gdnsq"
    }
    ref = rq.build(irm, "reference")(*ex)
    got = rq.build(irm, "llvm")(*ex)
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4 * float(ref.abs().max()))


def test_grid_json_round_trip() -> None:
    spec = dataclasses.replace(LayerSpec.from_preset("A1W1").with_grid("minmax"), estimator="ridge_detached")
    cfg = rq.QConfig(default=spec)
    back = rq.QConfig.from_json(cfg.to_json())
    assert back == cfg and back.default.weight.grid == "minmax"
