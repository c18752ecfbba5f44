"""Bad inputs, issue 21, class "silent wrong results" (besides the converter attribute table,
``tests/translate/test_converter_attributes.py``): ids reaching a gather through reshapes,
the lowering check that must block the write, kernels bound to their IR, and the tie-aware
parity check (``rq.check_parity``). Rows of ``docs/guarantees.md`` 2d."""

from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import rqcompile as rq
from rqcompile.targets.compiled import CompiledModule

_HAS_TVM = __import__("importlib").util.find_spec("tvm") is not None
_TARGETS = ["reference", pytest.param("llvm", marks=pytest.mark.skipif(not _HAS_TVM, reason="tvm"))]


class _Emb(nn.Module):
    def __init__(self, how: str) -> None:
        super().__init__()
        self.how = how
        self.emb = nn.Embedding(20, 8)
        self.fc = nn.Linear(8, 4)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if self.how == "reshape":
            ids = ids.reshape(-1)
        elif self.how == "view":
            ids = ids.view(ids.shape[0] * ids.shape[1])
        elif self.how == "slice":
            ids = ids[:, 1:]
        return self.fc(self.emb(ids))


@pytest.mark.parametrize("target", _TARGETS)
@pytest.mark.parametrize("how", ["reshape", "view", "slice"])
@pytest.mark.parametrize("bad", [25, -1, 10**7])
def test_ids_reaching_the_gather_through_reshapes(target: str, how: str, bad: int) -> None:
    ids = torch.randint(0, 20, (2, 5))
    exe = rq.lower(rq.prepare(_Emb(how), (ids,), "A4W4"), target)
    assert exe(ids).shape[-1] == 4
    bad_ids = ids.clone()
    bad_ids[1, 3] = bad
    with pytest.raises(rq.InputError) as info:
        exe(bad_ids)
    text = str(info.value)
    assert "embedding 'emb'" in text and "[0, 20)" in text and str(bad) in text


def test_reference_gather_never_raises_index_error() -> None:
    from rqcompile.targets.reference import KERNELS

    with pytest.raises(rq.InputError):
        KERNELS["rq.embedding"]((torch.tensor([3, 25]), torch.randn(20, 4)), {})


# -- rqcompile lower: a failed check blocks the write -------------------------------------


@pytest.fixture
def ckpt(tmp_path: Path) -> Path:
    from rqcompile.testing.models import TinyMLP

    torch.manual_seed(0)
    ex = (torch.randn(8, 64),)
    p = tmp_path / "c.safetensors"
    return rq.save_qat(rq.prepare(TinyMLP(), ex, "A4W4"), p, builder="tiny-mlp", example_inputs=ex)


def _noisy_relu(monkeypatch: pytest.MonkeyPatch) -> None:
    """A 'converter bug': the reference kernels' ReLU scales by 1.09 (9% noise downstream)."""
    from rqcompile.targets import reference as TR

    monkeypatch.setitem(TR.KERNELS, "rq.relu", lambda t, a: torch.relu(t[0]) * 1.09)


def test_lower_check_failure_blocks_the_write(
    ckpt: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from rqcompile.cli import main

    _noisy_relu(monkeypatch)
    out = ckpt.with_suffix(".rq")
    assert main(["--json", "lower", str(ckpt), "--target", "reference", "-o", str(out)]) == 1
    assert not out.exists()
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert res["ok"] is False and res["error"] == "NumericsError"
    assert "real mismatch" in res["message"] and "NOT written" in res["message"]


def test_lower_allow_mismatch_writes_with_a_loud_note(
    ckpt: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from rqcompile.cli import main

    _noisy_relu(monkeypatch)
    out = ckpt.with_suffix(".rq")
    argv = ["--json", "lower", str(ckpt), "--target", "reference", "-o", str(out)]
    assert main([*argv, "--allow-mismatch"]) == 0
    cap = capsys.readouterr()
    assert out.exists() and "WARNING" in cap.err and "NOT match" in cap.err
    res = json.loads(cap.out.strip().splitlines()[-1])
    assert res["parity"] == "real mismatch" and res["mismatch_overridden"] is True


def test_lower_prints_the_parity_verdict(ckpt: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from rqcompile.cli import main

    assert main(["lower", str(ckpt), "--target", "reference", "-o", str(ckpt.with_suffix(".rq"))]) == 0
    assert "parity: exact" in capsys.readouterr().out


# -- rq.check_parity ---------------------------------------------------------------------


def test_check_parity_exact() -> None:
    x = torch.randn(4, 32)
    qat = rq.prepare(nn.Sequential(nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 8)), (x,), "A4W4")
    r = rq.check_parity(qat, rq.lower(qat, "reference"), x)
    assert r.verdict == "exact" and r.ok and not r.flips and r.line().startswith("parity: exact")


def test_check_parity_ties_only_on_the_demo_shape() -> None:
    from rqcompile.demo.models import CharTransformer

    torch.manual_seed(0)
    m = CharTransformer(65, n_layer=2, n_head=4, n_embd=128, block_size=64)
    x = torch.randint(0, 65, (8, 64))
    qat = rq.prepare(m, (x,), "A4W4", overrides={"lm_head": None}).eval()
    r = rq.check_parity(qat, rq.lower(qat, "reference", example_inputs=(x,)), x)
    if not r.flips:
        pytest.skip("no near-tie flip with this torch build")
    assert r.verdict == "ties only", str(r)
    assert all(f.tie_distance < 1e-4 for f in r.flips)
    assert r.refed_diff is not None and r.refed_diff <= 1e-5 * r.scale
    assert r.max_abs_diff > 1e-3  # a plain tolerance would have to be loose here


def _noisy(exe: Any, factor: float) -> CompiledModule:
    run = exe._runner
    return CompiledModule(exe.ir, exe.target, lambda *xs: tuple(o * factor for o in run(*xs)))


def test_check_parity_catches_nine_percent_logit_noise() -> None:
    from rqcompile.demo.models import CharTransformer

    torch.manual_seed(0)
    m = CharTransformer(65, n_layer=1, n_head=4, n_embd=32, block_size=16)
    x = torch.randint(0, 65, (2, 16))
    qat = rq.prepare(m, (x,), "A4W4", overrides={"lm_head": None}).eval()
    r = rq.check_parity(qat, _noisy(rq.lower(qat, "reference"), 1.09), x)
    assert r.verdict == "real mismatch" and not r.ok, str(r)
    assert "does not reproduce it" in r.reason


def test_check_parity_catches_a_wrong_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    x = torch.randn(4, 32)
    qat = rq.prepare(nn.Sequential(nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 8)), (x,), "A4W4")
    exe = rq.lower(qat, "reference")
    _noisy_relu(monkeypatch)
    r = rq.check_parity(qat, exe, x)
    assert r.verdict == "real mismatch", str(r)


def test_bench_whole_model_check_is_tie_aware() -> None:
    from rqcompile.bench.model import _check_parity
    from rqcompile.demo.models import CharTransformer

    torch.manual_seed(0)
    m = CharTransformer(65, n_layer=1, n_head=4, n_embd=32, block_size=16)
    x = torch.randint(0, 65, (2, 16))
    qat = rq.prepare(m, (x,), "A4W4", overrides={"lm_head": None}).eval()
    exe = rq.lower(qat, "reference")
    _check_parity(qat, exe, x, "ok model")  # passes
    with pytest.raises(rq.VerifyError) as info:
        _check_parity(qat, _noisy(exe, 1.09), x, "noisy model")
    assert "real mismatch" in str(info.value)


def test_check_parity_given_wrong_forms() -> None:
    x = torch.randn(4, 32)
    qat = rq.prepare(nn.Sequential(nn.Linear(32, 8)), (x,), "A4W4")
    with pytest.raises(rq.UsageError):
        rq.check_parity(qat, object(), x)
    with pytest.raises(rq.UsageError):
        rq.check_parity(qat, rq.lower(qat, "reference"), [1, 2])


# -- kernels bound to the IR and weights they were built from -----------------------------


def _members(p: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(p) as z:
        return {n: z.read(n) for n in z.namelist()}


def _write(p: Path, m: dict[str, bytes]) -> Path:
    man = json.loads(m.pop("manifest.json"))
    man["sha256"] = {k: hashlib.sha256(v).hexdigest() for k, v in m.items()}
    with zipfile.ZipFile(p, "w") as z:
        z.writestr("manifest.json", json.dumps(man))
        for k, v in m.items():
            z.writestr(k, v)
    return p


@pytest.fixture(scope="module")
def two_builds(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, torch.Tensor]:
    pytest.importorskip("tvm")
    d = tmp_path_factory.mktemp("bind")
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 8))
    x = torch.randn(4, 64)
    rq.lower(rq.prepare(m, (x,), "A4W4"), "llvm").save(d / "a4w4.rq")
    rq.lower(rq.prepare(m, (x,), "A8W4"), "llvm").save(d / "a8w4.rq")
    return d / "a4w4.rq", d / "a8w4.rq", x


def test_kernels_from_another_build_are_refused(tmp_path: Path, two_builds: Any) -> None:
    a, b, x = two_builds
    m = _members(a)
    m["kernels.so"] = _members(b)["kernels.so"]
    bad = _write(tmp_path / "swapped.rq", m)
    with pytest.raises(rq.ArtifactError) as info:
        rq.load(bad)
    assert "built from another IR" in str(info.value) and "trust_kernels=False" in str(info.value)
    assert rq.load(bad, trust_kernels=False)(x).shape == (4, 8)  # rebuilt from the IR


def test_kernels_without_binding_are_refused(tmp_path: Path, two_builds: Any) -> None:
    from rqcompile.targets.binding import unbind

    a, _, _ = two_builds
    m = _members(a)
    m["kernels.so"] = unbind(m["kernels.so"])[0]
    with pytest.raises(rq.ArtifactError) as info:
        rq.load(_write(tmp_path / "stripped.rq", m))
    assert "carries no binding" in str(info.value)


def test_bound_artifact_loads_and_matches(two_builds: Any) -> None:
    a, _, x = two_builds
    exe = rq.load(a)
    torch.testing.assert_close(exe(x), rq.load(a, trust_kernels=False)(x), rtol=1e-5, atol=1e-5)
