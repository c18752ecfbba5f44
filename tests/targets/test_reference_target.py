"""convert + reference target vs the QAT forward; artifacts; API contracts."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
import zipfile

import pytest
import torch

import rqcompile as rq
from rqcompile.ir.parser import parse_module
from rqcompile.ir.printer import print_module
from rqcompile.testing.models import PARITY_PRESETS, prepared_tiny, tiny_models

PRESETS = list(PARITY_PRESETS)
KERNEL = {
    "A1W1": "rq.xnor_popcount_matmul",
    "A4W1+2:4": "rq.sparse24_matmul",
    "A8W8": "rq.int_matmul",
}
_prepared = prepared_tiny


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("name", ["mlp", "cnn", "attention"])
def test_reference_matches_qat_forward(name: str, preset: str) -> None:
    qat, ex = _prepared(name, preset)
    irm = rq.convert(qat)
    with torch.no_grad():
        want = qat(*ex)
    got = rq.build(irm, "reference")(*ex)
    # float tolerance: the integer core is exact; the epilogue and upstream float ops differ in
    # summation order (~1e-7 relative)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4 * float(want.abs().max()))
    if preset in KERNEL and name == "mlp":
        assert KERNEL[preset] in {op.name for op in irm.main.ops}


@pytest.mark.parametrize("name", ["mlp", "cnn", "attention"])
def test_ir_text_round_trips(name: str) -> None:
    qat, _ = _prepared(name, "A4W1+2:4" if name != "cnn" else "A4W4")
    irm = rq.convert(qat)
    assert parse_module(print_module(irm), constants=irm.constants) == irm
    assert parse_module(print_module(irm, elide_constants=False)) == irm


def test_lower_is_build_of_convert_and_does_not_mutate() -> None:
    qat, ex = _prepared("mlp", "A2W2")
    qat.train()
    before = copy.deepcopy(qat.state_dict())
    text = rq.inspect(qat)
    a = rq.lower(qat, target="reference")
    b = rq.build(rq.convert(qat), target="reference")
    assert a.ir == b.ir and torch.equal(a(*ex), b(*ex))
    assert qat.training and rq.inspect(qat) == text
    assert all(torch.equal(v, before[k]) for k, v in qat.state_dict().items())


def test_convert_is_deterministic() -> None:
    qat, _ = _prepared("attention", "A4W4")
    assert print_module(rq.convert(qat), elide_constants=False) == print_module(
        rq.convert(qat), elide_constants=False
    )


def test_save_load_in_fresh_process(tmp_path: os.PathLike) -> None:
    qat, ex = _prepared("cnn", "A4W4")
    exe = rq.lower(qat, target="reference")
    path = os.path.join(tmp_path, "cnn.rq")
    exe.save(path)
    torch.save(ex[0], os.path.join(tmp_path, "x.pt"))
    torch.save(exe(*ex), os.path.join(tmp_path, "y.pt"))
    code = (
        "import torch, rqcompile as rq, sys\n"
        f"d = {str(tmp_path)!r}\n"
        "exe = rq.load(d + '/cnn.rq')\n"
        "assert torch.equal(exe(torch.load(d + '/x.pt')), torch.load(d + '/y.pt'))\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_corrupt_truncated_and_tampered_artifacts(tmp_path: os.PathLike) -> None:
    qat, ex = _prepared("mlp", "A4W4")
    path = os.path.join(tmp_path, "m.rq")
    rq.lower(qat, target="reference").save(path)
    data = open(path, "rb").read()
    trunc = os.path.join(tmp_path, "trunc.rq")
    open(trunc, "wb").write(data[: len(data) // 2])
    with pytest.raises(rq.ArtifactError, match="corrupt or truncated"):
        rq.load(trunc)
    with pytest.raises(rq.ArtifactError, match="no such artifact"):
        rq.load(os.path.join(tmp_path, "missing.rq"))
    tampered = os.path.join(tmp_path, "tampered.rq")
    with zipfile.ZipFile(path) as zin, zipfile.ZipFile(tampered, "w") as zout:
        for item in zin.namelist():
            blob = zin.read(item)
            if item == "ir.mlir":
                blob = blob.replace(b"rq.relu", b"rq.tanh")
            zout.writestr(item, blob)
    with pytest.raises(rq.ArtifactError, match="checksum"):
        rq.load(tampered)


def test_failed_save_leaves_nothing(tmp_path: os.PathLike) -> None:
    qat, _ = _prepared("mlp", "A4W4")
    exe = rq.lower(qat, target="reference")
    bad = os.path.join(tmp_path, "no-such-dir", "m.rq")
    with pytest.raises(OSError):
        exe.save(bad)
    assert os.listdir(tmp_path) == []


def test_input_errors_name_the_signature() -> None:
    qat, ex = _prepared("mlp", "A4W4")
    exe = rq.lower(qat, target="reference")
    with pytest.raises(rq.InputError, match="expected \\(8, 64\\)"):
        exe(torch.randn(3, 64))
    with pytest.raises(rq.InputError, match="dtype torch.float64"):
        exe(ex[0].double())
    with pytest.raises(rq.InputError, match="takes 1 input"):
        exe(ex[0], ex[0])


def test_stage_functions_reject_wrong_forms() -> None:
    model, ex = tiny_models()["mlp"]
    with pytest.raises(TypeError, match="rq.prepare\\(model"):
        rq.lower(model)
    qat = rq.prepare(model, ex, "A4W4")
    with pytest.raises(TypeError, match="rq.lower"):
        rq.build(qat)
    with pytest.raises(rq.TargetError, match="unknown target kind 'gpu'"):
        rq.lower(qat, target="gpu")
    with pytest.raises(rq.TargetError, match="option strings"):
        rq.lower(qat, target="llvm -mcpu=znver3")


def test_unsupported_ops_reported_together() -> None:
    class Odd(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = torch.nn.Linear(16, 16)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.cumsum(self.fc(x), 1) + torch.erf(x)

    qat = rq.prepare(Odd(), (torch.randn(2, 16),), "A4W4")
    with pytest.raises(rq.UnsupportedOpError, match="(?s)cannot convert 2 node.*cumsum.*erf"):
        rq.convert(qat)


def test_out_of_range_token_ids_are_a_typed_error() -> None:
    from rqcompile.demo.models import CharTransformer

    m = CharTransformer(20, n_layer=1, n_embd=32, block_size=8)
    ex = (torch.zeros(2, 8, dtype=torch.long),)
    exe = rq.lower(rq.prepare(m, ex, "A4W4"), target="reference")
    with pytest.raises(rq.InputError, match=r"token ids must lie in \[0, 20\), got \[0, 25\]"):
        exe(torch.full((2, 8), 25, dtype=torch.long).index_fill_(1, torch.tensor([0]), 0))


class _Conv1dNet(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1 = torch.nn.Conv1d(32, 64, 3, padding=1)
        self.c2 = torch.nn.Conv1d(64, 64, 5, padding=2, groups=2)
        self.fc = torch.nn.Linear(64, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.c2(torch.relu(self.c1(x)))).mean(-1))


@pytest.mark.parametrize("preset", ["A4W4", "A1W1"])
def test_conv1d_prepares_trains_and_lowers(preset: str) -> None:
    ex = (torch.randn(2, 32, 16),)
    qat = rq.prepare(_Conv1dNet(), ex, preset)
    assert {n.meta["rq"].layer for n in qat.graph.nodes if "rq" in n.meta} == {"c1", "c2", "fc"}
    loss = qat(*ex).pow(2).mean()
    loss.backward()
    qat.eval()
    with torch.no_grad():
        want = qat(*ex)
    got = rq.lower(qat, target="reference")(*ex)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4 * float(want.abs().max()))


def test_reference_target_works_without_tvm() -> None:
    code = (
        "import sys; sys.modules['tvm'] = None  # make 'import tvm' fail\n"
        "import importlib.util\n"
        "importlib.util.find_spec = (lambda f: (lambda name, *a: None if name == 'tvm' else f(name, *a)))(importlib.util.find_spec)\n"
        "import torch, rqcompile as rq\n"
        "qat = rq.prepare(torch.nn.Linear(64, 8), (torch.randn(2, 64),), 'A4W4')\n"
        "assert rq.lower(qat, target='reference')(torch.randn(2, 64)).shape == (2, 8)\n"
        "try:\n"
        "    rq.lower(qat, target='llvm')\n"
        "except rq.TargetError as e:\n"
        "    assert 'pip install' in str(e) and 'apache-tvm' in str(e), e\n"
        "else:\n"
        "    raise SystemExit('expected TargetError')\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
