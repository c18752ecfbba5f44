"""Whole models built for llvm vs the reference target; artifacts; targets this host can't run.

Builds dominate the run time (1-8 s each on 2 cores), so every (model, preset) is built at
most once per test session (``_lowered``), and the default tier builds only the matrix of
the brief; the rest is ``slow``.
"""

from __future__ import annotations

import dataclasses

import functools
import os
import subprocess
import sys
from typing import Any

import pytest
import torch

tvm = pytest.importorskip("tvm")

import rqcompile as rq  # noqa: E402  (after the importorskip guard)
from rqcompile.targets.compiled import CompiledModule  # noqa: E402
from rqcompile.targets.tvm import pipelines  # noqa: E402
from rqcompile.targets.tvm.cpu_features import FEATURES, host_features  # noqa: E402
from rqcompile.testing.models import PARITY_PRESETS as PRESETS  # noqa: E402
from rqcompile.testing.models import prepared_tiny as _prepared  # noqa: E402

pytestmark = pytest.mark.tvm

DEFAULT = {("mlp", p) for p in ("A8W8", "A4W4", "A2W2", "A1W1", "A1.5W1.5", "A4W1+2:4", "W4")} | {
    ("cnn", "A4W4"),
    ("attention", "A4W4"),
    ("attention", "A4W1+2:4"),
}
MATRIX = [
    pytest.param(name, preset, marks=() if (name, preset) in DEFAULT else pytest.mark.slow)
    for name in ("mlp", "cnn", "attention")
    for preset in PRESETS
]




@functools.cache
def _lowered(name: str, preset: str) -> tuple[Any, tuple[torch.Tensor, ...], Any]:
    torch.manual_seed(0)
    qat, ex = _prepared(name, preset)
    return qat, ex, rq.lower(qat, "llvm")


@pytest.mark.parametrize(("name", "preset"), MATRIX)
def test_llvm_matches_reference(name: str, preset: str, request: pytest.FixtureRequest) -> None:
    qat, ex, exe = _lowered(name, preset)
    want = rq.lower(qat, "reference")(*ex)
    got = exe(*ex)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4 * float(want.abs().max()))


def test_lower_is_build_of_convert() -> None:
    """``lower`` has no logic of its own: its IR is ``convert``'s, with the build passes'
    annotations (each op's kernel) added and nothing else changed."""
    qat, _, exe = _lowered("mlp", "A4W4")
    converted = rq.convert(qat)
    assert exe.ir == rq.build(converted, "llvm").ir
    f = exe.ir.main
    plain = [dataclasses.replace(op, attrs=tuple(op.attrs_dict.items())) for op in f.ops]
    assert rq.ir.Func(f.name, f.args, tuple(plain), f.outputs) == converted.main
    assert any("rq.kernel" in op.annotations for op in exe.ir.main.ops)
    assert exe.target == rq.Target.parse("llvm")


def test_host_build_records_host_features() -> None:
    _, _, exe = _lowered("mlp", "A1W1")
    target = pipelines.tvm_target(exe.target)
    assert exe.features == pipelines.features_for(target)
    assert set(exe.features) <= host_features()
    assert exe.backend.vm is not None and exe.backend.tvm_module is not None


def test_runner_handles_views_and_outputs_are_not_reused() -> None:
    _, ex, exe = _lowered("mlp", "A4W4")
    y1 = exe(*ex)
    keep = y1.clone()
    big = torch.randn(3, *ex[0].shape)
    view = big[1]  # offset into a larger buffer
    noncontig = ex[0].t().contiguous().t()
    assert not noncontig.is_contiguous()
    y2, y3 = exe(view), exe(noncontig)
    assert torch.equal(y1, keep)  # a later call did not overwrite an earlier result
    assert torch.equal(y3, y1)
    assert torch.equal(y2, exe(view.clone()))
    assert torch.equal(exe(ex[0].clone().requires_grad_()), y1)  # detached on the way in
    with pytest.raises(rq.InputError, match="expected"):
        exe(torch.randn(3, 64))


def test_library_holds_code_not_weights() -> None:
    _, _, exe = _lowered("mlp", "A8W8")
    lib = exe._library
    assert lib is not None
    biggest = max(exe.ir.constants.values(), key=lambda t: t.numel())
    chunk = biggest.contiguous().view(torch.uint8).reshape(-1)[:256].numpy().tobytes()
    assert chunk not in lib


# -- artifacts ------------------------------------------------------------------------------


def test_save_load_fresh_process_and_rebuild(tmp_path: Any) -> None:
    _, ex, exe = _lowered("attention", "A4W4")
    path = os.path.join(tmp_path, "m.rq")
    exe.save(path)
    torch.save(ex[0], os.path.join(tmp_path, "x.pt"))
    torch.save(exe(*ex), os.path.join(tmp_path, "y.pt"))
    code = (
        "import torch, rqcompile as rq\n"
        f"d = {str(tmp_path)!r}\n"
        "x, y = torch.load(d + '/x.pt'), torch.load(d + '/y.pt')\n"
        "exe = rq.load(d + '/m.rq')\n"
        "assert exe.target.kind == 'llvm' and exe.backend.vm is not None\n"
        "assert torch.equal(exe(x), y), 'loaded kernels differ'\n"
        "again = rq.load(d + '/m.rq', trust_kernels=False)\n"
        "assert again.backend.executable is not None  # rebuilt from the IR\n"
        "assert torch.equal(again(x), y), 'rebuilt kernels differ'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=300)


def _lacking() -> str:
    missing = [f for f in FEATURES if f not in host_features()]
    if not missing:
        pytest.skip("this host has every CPU feature rqcompile knows")
    return missing[-1]


def test_artifact_needing_missing_cpu_feature_is_refused(tmp_path: Any) -> None:
    feature = _lacking()
    _, ex, exe = _lowered("mlp", "A4W4")
    fake = CompiledModule(
        exe.ir, exe.target, exe._runner, library=exe._library, features=(*exe.features, feature)
    )
    path = os.path.join(tmp_path, "fake.rq")
    fake.save(path)
    with pytest.raises(rq.ArtifactError, match=f"(?s){feature}.*trust_kernels=False"):
        rq.load(path)
    rebuilt = rq.load(path, trust_kernels=False)  # the stored target is "llvm": this host
    assert torch.equal(rebuilt(*ex), exe(*ex))


def test_named_cpu_this_host_lacks_builds_but_does_not_run(tmp_path: Any) -> None:
    if "avx512f" in host_features():
        pytest.skip("this host has AVX-512")
    qat, ex, _ = _lowered("mlp", "A4W4")
    exe = rq.lower(qat, {"kind": "llvm", "mcpu": "x86-64-v4"})
    assert "avx512f" in exe.features
    with pytest.raises(rq.TargetError, match="avx512f"):
        exe(*ex)
    path = os.path.join(tmp_path, "v4.rq")
    exe.save(path)
    with pytest.raises(rq.ArtifactError, match="avx512f"):
        rq.load(path)


def test_cross_triple_builds_but_does_not_run(tmp_path: Any) -> None:
    qat, ex, _ = _lowered("mlp", "A4W4")
    exe = rq.lower(qat, {"kind": "llvm", "mtriple": "aarch64-linux-gnu"})
    assert exe._library and exe.features == ()
    assert exe.backend.vm is None
    with pytest.raises(rq.TargetError, match="aarch64-linux-gnu"):
        exe(*ex)
    path = os.path.join(tmp_path, "arm.rq")
    exe.save(path)
    with pytest.raises(rq.ArtifactError, match="aarch64"):
        rq.load(path)


def test_target_resolution() -> None:
    host = pipelines.tvm_target(rq.Target.parse("llvm"))
    assert "mtriple" not in rq.Target.parse("llvm").to_dict()
    assert str(host.kind.name) == "llvm"
    named = pipelines.tvm_target(rq.Target.parse({"kind": "llvm", "mcpu": "haswell"}))
    assert str(named.attrs["mcpu"]) == "haswell"
    assert set(pipelines.features_for(named)) >= {"avx2", "fma"}
    extra = pipelines.tvm_target(rq.Target.parse({"kind": "llvm", "mattr": ["-fma"]}))
    assert "fma" not in pipelines.features_for(extra)
