"""The bad-input catalogue: one test per bad input, each a typed error saying what, where, how.

Every entry is also a row of the table in ``docs/guarantees.md``. Each test checks the error
type and that the message names the problem, the place (layer, input, file) and a fix; tests
that write files also check that nothing half-written is left behind.
"""

from __future__ import annotations

import builtins
import errno
import hashlib
import importlib.util
import json
import os
import pickle
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

import rqcompile as rq
from rqcompile.targets.target import KINDS


def _msg(info: pytest.ExceptionInfo[BaseException], *needles: str) -> str:
    """The error text, after checking that it contains every needle (what / where / fix)."""
    text = str(info.value)
    for n in needles:
        assert n in text, f"{n!r} not in message:\n{text}"
    return text


def _lin(k: int = 16, n: int = 4) -> nn.Module:
    return nn.Sequential(nn.Linear(k, n))


@pytest.fixture(scope="module")
def exe() -> Any:
    torch.manual_seed(0)
    x = torch.randn(2, 16)
    return rq.lower(rq.prepare(_lin(), (x,), "A4W4"), target="reference")


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory, exe: Any) -> Path:
    path = tmp_path_factory.mktemp("art") / "m.rq"
    exe.save(path)
    return path


# -- capture and prepare ------------------------------------------------------------------


class _Branchy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.mean() > 0:  # data-dependent control flow: not traceable
            return self.fc(x)
        return x


def test_untraceable_model() -> None:
    with pytest.raises(rq.CaptureError) as info:
        rq.prepare(nn.Sequential(_Branchy()), (torch.randn(2, 8),), "A4W4")
    _msg(info, "'0' (_Branchy)", "if x.mean() > 0", "leaf_modules=[_Branchy]")


def test_unsupported_op_all_listed_at_once() -> None:
    class Odd(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(16, 16)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.cumsum(self.fc(x), 1) + torch.erf(x)

    qat = rq.prepare(Odd(), (torch.randn(2, 16),), "A4W4")
    with pytest.raises(rq.UnsupportedOpError) as info:
        rq.convert(qat)
    _msg(info, "cannot convert 2 node", "cumsum", "erf")


def test_nan_weights_at_prepare() -> None:
    model = _lin()
    with torch.no_grad():
        model[0].weight[0, 0] = float("nan")
    with pytest.raises(rq.NumericsError) as info:
        rq.prepare(model, (torch.randn(2, 16),), "A4W4")
    _msg(info, "layer '0'", "1 NaN/Inf", "before prepare()")


def test_inf_example_inputs_at_prepare() -> None:
    x = torch.randn(2, 16)
    x[1, 3] = float("inf")
    with pytest.raises(rq.NumericsError) as info:
        rq.prepare(_lin(), (x,), "A4W4")
    _msg(info, "example_inputs[0]", "1 NaN/Inf", "nan_to_num")


def test_weights_that_diverged_in_training_at_convert() -> None:
    qat = rq.prepare(_lin(), (torch.randn(2, 16),), "A4W4")
    with torch.no_grad():
        qat.get_submodule("0").weight[2, 1] = float("-inf")
    with pytest.raises(rq.NumericsError) as info:
        rq.convert(qat)
    _msg(info, "layer '0'", "trained weight", "NaN/Inf", "before convert()")


def test_nan_activation_in_training_stays_in_its_token() -> None:
    """Not an error by design: the QAT forward is an ordinary module (no per-step host sync,
    nothing that breaks ``torch.compile``), so a NaN reaches the loss, where the training
    loop's finite check sees it. Per-token blocks keep it out of the other tokens."""
    x = torch.randn(3, 16)
    qat = rq.prepare(_lin(), (x,), "A4W4")
    x[1, 5] = float("nan")
    y = qat(x)
    assert torch.isnan(y[1]).all() and torch.isfinite(y[[0, 2]]).all()
    assert not torch.isfinite(y.sum())


def test_bits_zero_and_nine() -> None:
    for bits in (0, 9):
        with pytest.raises(rq.ConfigError) as info:
            rq.QuantSpec(bits=bits)
        _msg(info, f"bits={bits}", "1 (binary), 1.5 (ternary) or an integer 2..8")
    with pytest.raises(rq.ConfigError) as info:
        rq.prepare(_lin(), (torch.randn(2, 16),), "A9W4")
    _msg(info, "preset 'A9W4'", "bit width 9", "1..8 or 1.5")


def test_negative_lambda() -> None:
    with pytest.raises(rq.ConfigError) as info:
        rq.prepare(_lin(), (torch.randn(2, 16),), "A4W4", ridge_lambda=-0.1)
    _msg(info, "ridge_lambda=-0.1", ">= 0", "0.01")


def test_block_size_zero() -> None:
    with pytest.raises(rq.ConfigError) as info:
        rq.prepare(_lin(), (torch.randn(2, 16),), "A4W4", block_size=0)
    _msg(info, "PerGroup(size=0)", "positive int")


def test_block_larger_than_k_is_one_block_of_k() -> None:
    """Not an error (documented): K < block quantizes K as one block."""
    qat = rq.prepare(_lin(16), (torch.randn(2, 16),), "A4W4", block_size=64)
    assert qat.get_submodule("0.weight_quant").block == 16
    assert qat.get_submodule("0.input_quant").block == 16


def test_block_not_dividing_k() -> None:
    with pytest.raises(rq.NumericsError) as info:
        rq.prepare(_lin(24), (torch.randn(2, 24),), "A4W4", block_size=16)
    _msg(info, "layer '0' (weight)", "K=24", "block size 16", "block_size=12")
    _msg(info, "overrides={'0': None}")


def test_two_four_on_dim_not_divisible_by_four() -> None:
    with pytest.raises(rq.NumericsError) as info:
        rq.prepare(_lin(6), (torch.randn(2, 6),), "A4W4+2:4", strict=True)
    _msg(info, "layer '0'", "2:4 sparsity", "weight block (6)", "multiple of 4")


def test_two_four_with_affine_weights() -> None:
    with pytest.raises(rq.ConfigError) as info:
        rq.LayerSpec(weight=rq.QuantSpec(bits=4), sparsity=rq.NMSparsity(2, 4))
    _msg(info, "2:4 sparsity needs symmetric", "symmetric=True")


def test_unknown_preset() -> None:
    with pytest.raises(rq.ConfigError) as info:
        rq.prepare(_lin(), (torch.randn(2, 16),), "A4W1+2/4")
    _msg(info, "'A4W1+2/4'", "Did you mean 'A4W1+2:4'")


def test_unknown_option() -> None:
    with pytest.raises(rq.ConfigError) as info:
        rq.prepare(_lin(), (torch.randn(2, 16),), "A4W4", blocksize=32)
    _msg(info, "'blocksize'", "block_size")


def test_override_matching_no_layer() -> None:
    from collections import OrderedDict

    model = nn.Sequential(OrderedDict(fc1=nn.Linear(16, 8), head=nn.Linear(8, 2)))
    with pytest.raises(rq.ConfigError) as info:
        rq.prepare(model, (torch.randn(2, 16),), "A4W4", overrides={"heads": None})
    _msg(info, "override 'heads' matched no layer", "Nearest keys: 'head'", "strict=False")


# -- targets ------------------------------------------------------------------------------


def test_unknown_target(exe: Any) -> None:
    with pytest.raises(rq.TargetError) as info:
        rq.build(exe.ir, target="tpu")
    _msg(info, "unknown target kind 'tpu'", "reference", "llvm")
    with pytest.raises(rq.TargetError) as info:
        rq.build(exe.ir, target="llvm -mcpu=znver3")
    _msg(info, "option strings", "{'kind': 'llvm', 'mcpu': 'znver3'}")


def test_tvm_not_installed(monkeypatch: pytest.MonkeyPatch, exe: Any) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "tvm" else real(name, *a)
    )
    with pytest.raises(rq.TargetError) as info:
        rq.build(exe.ir, target="llvm")
    _msg(info, "'llvm' needs Apache TVM", "pip install 'rqcompile[tvm]'", "target='reference'")


def test_nvcc_missing_for_cuda(monkeypatch: pytest.MonkeyPatch, exe: Any) -> None:
    """The error must come from the nvcc lookup itself (issue 21: on a host with CUDA in
    /usr/local/cuda the old test, which only emptied PATH, passed for another reason)."""
    assert "cuda" in KINDS
    pytest.importorskip("tvm")
    from rqcompile.targets.tvm.device import codegen

    calls: list[int] = []

    def no_nvcc() -> None:
        calls.append(1)
        return None

    monkeypatch.setattr(codegen, "find_nvcc", no_nvcc)
    with pytest.raises(rq.TargetError) as info:
        rq.build(exe.ir, target="cuda")
    assert calls, "the build failed before it looked for nvcc"
    _msg(info, "nvcc", "CUDA toolkit", "CUDA_HOME", "target='opencl'")


def test_find_nvcc_looks_beyond_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """find_nvcc also finds $CUDA_HOME/bin/nvcc: emptying PATH does not simulate 'missing'."""
    import shutil

    pytest.importorskip("tvm")
    from rqcompile.targets.tvm.device import codegen

    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "nvcc").write_text("#!/bin/sh\n")
    monkeypatch.setattr(shutil, "which", lambda *a, **k: None)
    monkeypatch.setenv("CUDA_HOME", str(tmp_path))
    assert codegen.find_nvcc() == str(tmp_path / "bin" / "nvcc")


# -- calling a compiled model -------------------------------------------------------------


def test_wrong_dtype(exe: Any) -> None:
    with pytest.raises(rq.InputError) as info:
        exe(torch.randn(2, 16, dtype=torch.float64))
    _msg(info, "input 0", "dtype torch.float64", "x.to(torch.float32)")


def test_wrong_device(exe: Any) -> None:
    with pytest.raises(rq.InputError) as info:
        exe(torch.empty(2, 16, device="meta"))
    _msg(info, "input 0", "device meta", "x.cpu()")


def test_wrong_rank(exe: Any) -> None:
    with pytest.raises(rq.InputError) as info:
        exe(torch.randn(2, 16, 1))
    _msg(info, "input 0", "shape (2, 16, 1)", "expected (2, 16)", "example_inputs=")


def test_wrong_shape(exe: Any) -> None:
    with pytest.raises(rq.InputError) as info:
        exe(torch.randn(3, 16))
    _msg(info, "input 0", "shape (3, 16)", "expected (2, 16)", "rq.lower(qat, example_inputs")


def test_wrong_number_or_kind_of_inputs(exe: Any) -> None:
    with pytest.raises(rq.InputError) as info:
        exe(torch.randn(2, 16), torch.randn(2, 16))
    _msg(info, "takes 1 input(s)", "tensor<2x16xf32>", "got 2")
    with pytest.raises(rq.InputError) as info:
        exe([[0.0] * 16] * 2)
    _msg(info, "input 0", "expected a torch.Tensor", "got list")


def test_nan_input_to_compiled_model(exe: Any) -> None:
    x = torch.randn(2, 16)
    x[0, 0] = float("nan")
    with pytest.raises(rq.InputError) as info:
        exe(x)
    _msg(info, "input 0", "1 NaN/Inf", "nan_to_num")
    x[0, 0] = 1.0
    x[1, 1:3] = torch.tensor([float("inf"), float("-inf")])  # the sum is NaN: still caught
    with pytest.raises(rq.InputError, match="2 NaN/Inf"):
        exe(x)
    big = torch.full((2, 16), 3e38)  # finite, but its sum overflows to inf
    exe(big)  # raises InputError if the overflowing sum were taken for a NaN


def test_token_ids_out_of_range() -> None:
    from rqcompile.demo.models import CharTransformer

    m = CharTransformer(20, n_layer=1, n_embd=32, block_size=8)
    ex = (torch.zeros(2, 8, dtype=torch.long),)
    exe = rq.lower(rq.prepare(m, ex, "A4W4"), target="reference")
    with pytest.raises(rq.InputError) as info:
        exe(torch.full((2, 8), 25, dtype=torch.long))
    _msg(info, "input 0", "token ids must lie in [0, 20), got [25, 25]")


# -- artifacts ----------------------------------------------------------------------------


def _rewrite(src: Path, dst: Path, edit: Callable[[dict[str, bytes]], None]) -> Path:
    """Copy an artifact, letting ``edit`` change its members (a hand-crafted file)."""
    with zipfile.ZipFile(src) as z:
        members = {n: z.read(n) for n in z.namelist()}
    edit(members)
    with zipfile.ZipFile(dst, "w") as z:
        for name, blob in members.items():
            z.writestr(name, blob)
    return dst


def _edit_manifest(members: dict[str, bytes], **changes: Any) -> None:
    manifest = json.loads(members["manifest.json"])
    manifest.update(changes)
    members["manifest.json"] = json.dumps(manifest).encode()


def test_missing_artifact(tmp_path: Path) -> None:
    with pytest.raises(rq.ArtifactError) as info:
        rq.load(tmp_path / "nope.rq")
    _msg(info, "nope.rq", "no such artifact")


def test_truncated_artifact(tmp_path: Path, saved: Path) -> None:
    data = saved.read_bytes()
    (tmp_path / "t.rq").write_bytes(data[: len(data) // 2])
    with pytest.raises(rq.ArtifactError) as info:
        rq.load(tmp_path / "t.rq")
    _msg(info, "t.rq", "corrupt or truncated", "exe.save(path)")


def test_corrupt_artifact_bit_flip(tmp_path: Path, saved: Path) -> None:
    data = bytearray(saved.read_bytes())
    with zipfile.ZipFile(saved) as z:
        info = z.getinfo("weights.safetensors")
    at = info.header_offset + 30 + len(info.filename) + info.file_size // 2  # inside the data
    data[at] ^= 0x40
    (tmp_path / "c.rq").write_bytes(bytes(data))
    with pytest.raises(rq.ArtifactError) as err:
        rq.load(tmp_path / "c.rq")
    _msg(err, "c.rq", "weights.safetensors")


def test_version_mismatched_artifact(tmp_path: Path, saved: Path) -> None:
    bad = _rewrite(saved, tmp_path / "v.rq", lambda m: _edit_manifest(m, format=99))
    with pytest.raises(rq.ArtifactError) as info:
        rq.load(bad)
    _msg(info, "v.rq", "artifact format 99", "reads 1", "rebuild from the QAT model")


def test_artifact_for_unknown_target(tmp_path: Path, saved: Path) -> None:
    bad = _rewrite(saved, tmp_path / "u.rq", lambda m: _edit_manifest(m, target={"kind": "tpu"}))
    with pytest.raises(rq.ArtifactError) as info:
        rq.load(bad)
    _msg(info, "u.rq", "{'kind': 'tpu'}", "unknown target kind 'tpu'")


def test_artifact_with_malformed_manifest(tmp_path: Path, saved: Path) -> None:
    def not_an_object(m: dict[str, bytes]) -> None:
        m["manifest.json"] = b"[1, 2]"

    for i, edit in enumerate([not_an_object, lambda m: _edit_manifest(m, sha256=None)]):
        with pytest.raises(rq.ArtifactError) as info:
            rq.load(_rewrite(saved, tmp_path / f"mf{i}.rq", edit))
        _msg(info, f"mf{i}.rq", "not a valid rqcompile artifact", "exe.save()")


class _Payload:
    """Unpickling this creates a marker file: proof that code ran."""

    marker = ""

    def __reduce__(self) -> tuple[Any, ...]:
        return (builtins.open, (self.marker, "w"))


def test_untrusted_artifact_with_pickle_payload(
    tmp_path: Path, saved: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    marker = tmp_path / "PWNED"
    _Payload.marker = str(marker)
    blob = pickle.dumps(_Payload())

    def as_weights(m: dict[str, bytes]) -> None:  # checksum fixed up: only the format stops it
        m["weights.safetensors"] = blob
        digests = json.loads(m["manifest.json"])["sha256"]
        digests["weights.safetensors"] = hashlib.sha256(blob).hexdigest()
        _edit_manifest(m, sha256=digests)

    def as_extra(m: dict[str, bytes]) -> None:
        m["data.pkl"] = blob

    for name, edit in [("w.rq", as_weights), ("x.rq", as_extra)]:
        with pytest.raises(rq.ArtifactError) as info:
            rq.load(_rewrite(saved, tmp_path / name, edit))
        _msg(info, name, "exe.save()")
    (tmp_path / "p.rq").write_bytes(blob)  # a bare pickle
    with pytest.raises(rq.ArtifactError):
        rq.load(tmp_path / "p.rq")
    assert not marker.exists()

    # and loading a genuine artifact works with every unpickler disabled
    def refuse(*a: Any, **k: Any) -> Any:
        raise AssertionError("rq.load unpickled something")

    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "Unpickler", refuse)
    monkeypatch.setattr(torch, "load", refuse)
    assert torch.isfinite(rq.load(saved)(torch.randn(2, 16))).all()


def _fail_midway(monkeypatch: pytest.MonkeyPatch, err: OSError) -> None:
    """Make the second member written fail, as a full disk would."""
    real = zipfile.ZipFile.writestr
    calls = {"n": 0}

    def writestr(self: zipfile.ZipFile, *a: Any, **k: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 2:
            raise err
        return real(self, *a, **k)

    monkeypatch.setattr(zipfile.ZipFile, "writestr", writestr)


def test_disk_full_while_saving(tmp_path: Path, exe: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "m.rq"
    exe.save(path)
    before = path.read_bytes()
    _fail_midway(monkeypatch, OSError(errno.ENOSPC, "No space left on device"))
    with pytest.raises(rq.ArtifactError) as info:
        exe.save(path)
    _msg(info, "m.rq", "No space left on device", "nothing was written", "free space")
    assert isinstance(info.value, OSError)
    assert os.listdir(tmp_path) == ["m.rq"] and path.read_bytes() == before  # old file intact


def test_read_only_output_directory(
    tmp_path: Path, exe: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        if os.access(ro, os.W_OK):  # running as root: simulate the refusal
            import tempfile

            def refuse(*a: Any, **k: Any) -> Any:
                raise PermissionError(errno.EACCES, "Permission denied")

            monkeypatch.setattr(tempfile, "mkstemp", refuse)
        with pytest.raises(rq.ArtifactError) as info:
            exe.save(ro / "m.rq")
        _msg(info, "m.rq", "Permission denied", "writable")
        assert os.listdir(ro) == []
    finally:
        ro.chmod(0o700)


def test_missing_output_directory(tmp_path: Path, exe: Any) -> None:
    with pytest.raises(rq.ArtifactError) as info:
        exe.save(tmp_path / "no-such-dir" / "m.rq")
    _msg(info, "no-such-dir", "exists")
    assert os.listdir(tmp_path) == []


# -- stage functions given the wrong form -------------------------------------------------


def test_stage_function_given_wrong_form() -> None:
    model, x = _lin(), torch.randn(2, 16)
    with pytest.raises(TypeError) as info:
        rq.lower(model)
    _msg(info, "rq.lower() takes the graph returned by rq.prepare()", "rq.prepare(model")
    qat = rq.prepare(model, (x,), "A4W4")
    with pytest.raises(TypeError) as info:
        rq.prepare(qat, (x,), "A4W4")
    _msg(info, "already prepared", "original float model")
    with pytest.raises(TypeError) as info:
        rq.build(qat)
    _msg(info, "rq.build() takes the IR", "rq.lower(qat, target)")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_finiteness_check_sees_nan_and_inf_in_every_float_dtype(dtype: torch.dtype) -> None:
    from rqcompile.targets.compiled import _all_finite

    x = torch.randn(64, 600).to(dtype)
    assert _all_finite(x) and _all_finite(x.t()) and _all_finite(x[:0])
    for bad in (float("nan"), float("inf"), float("-inf")):
        y = x.clone()
        y[63, 599] = bad
        assert not _all_finite(y) and not _all_finite(y.t()[1::2])


@pytest.mark.tvm
@pytest.mark.parametrize("c_check", [True, False])
def test_llvm_fast_input_path_sends_every_problem_to_the_full_check(
    c_check: bool, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The llvm build's lean per-call path (``CompiledModule._fast_match``, then the
    runner's ``run_if_finite`` on the arrays it hands the kernels) takes the plain call and
    nothing else: NaN/Inf, other dtypes, shapes and tensor subclasses reach ``_check`` and
    get its answer; large finite values and non-contiguous views run as they are."""
    import rqcompile.targets.compiled as compiled
    from rqcompile.targets.tvm import runtime

    if not c_check:  # no C compiler: numpy checks the arrays handed to the kernels
        monkeypatch.setattr(runtime, "_all_finite", lambda: None)
    elif runtime._all_finite() is None:
        pytest.skip("no C compiler here")
    torch.manual_seed(0)
    x = torch.randn(2, 16)
    exe = rq.lower(rq.prepare(_lin(), (x,), "A4W4"), target="llvm")
    run = exe._runner
    assert exe._fast_match((x,))
    ref = exe(x)
    assert torch.equal(run.run_if_finite((x,), 1)[0], ref)
    checks = []
    full_check = exe._check
    monkeypatch.setattr(exe, "_check", lambda inputs: (checks.append(1), full_check(inputs)))
    x[0, 0] = float("nan")
    assert exe._fast_match((x,)) and run.run_if_finite((x,), 1) is None
    with pytest.raises(rq.InputError, match="1 NaN/Inf"):
        exe(x)
    big = torch.full((2, 16), 3e38)
    assert run.run_if_finite((big,), 1) is not None  # finite: summed in float64, no overflow
    exe(big)  # runs: finite inputs (its outputs overflow float32, the model's business)
    assert len(checks) == 1
    for bad in (torch.randn(2, 16, dtype=torch.float64), torch.randn(3, 16)):
        assert not exe._fast_match((bad,))
        with pytest.raises(rq.InputError):
            exe(bad)
    x[0, 0] = 0.5
    param = torch.nn.Parameter(x.clone())
    assert not exe._fast_match((param,)) and not exe._fast_match((x, x))
    assert torch.equal(exe(param), exe(x))
    view = torch.randn(16, 2).t()  # non-contiguous: copied on the way in, same answer
    assert exe._fast_match((view,)) and torch.equal(exe(view), exe(view.contiguous()))
    n = len(checks)
    exe(x)
    assert len(checks) == n  # the plain call skips the full check
    # large inputs (numpy check): min and max, not the sum
    monkeypatch.setattr(compiled, "_SUM_BELOW", 1)
    assert run.run_if_finite((x,), 1) is not None and run.run_if_finite((big,), 1) is not None
    for bad in (float("nan"), float("-inf")):
        y = x.clone()
        y[1, 7] = bad
        assert run.run_if_finite((y,), 1) is None
        with pytest.raises(rq.InputError, match="1 NaN/Inf"):
            exe(y)
    assert ref.shape == (2, 4)


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_finite_array_sum_and_min_max_branches(dtype: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    import rqcompile.targets.compiled as compiled

    a = np.random.default_rng(0).standard_normal((8, 40)).astype(dtype)
    for below, one_pass in ((1 << 16, 1 << 30), (1, 1 << 30), (1, 1)):  # sum, min+max, Σ a²
        monkeypatch.setattr(compiled, "_SUM_BELOW", below)
        monkeypatch.setattr(compiled, "_ONE_PASS_FROM", one_pass)
        assert compiled.finite_array(a) and compiled.finite_array(a[:0])
        for bad in (np.nan, np.inf, -np.inf):
            b = a.copy()
            b[7, 39] = bad
            assert not compiled.finite_array(b)
    huge = np.full((8, 40), np.finfo(dtype).max, dtype=dtype)
    monkeypatch.setattr(compiled, "_SUM_BELOW", 1 << 16)
    monkeypatch.setattr(compiled, "_ONE_PASS_FROM", 1 << 30)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no numpy overflow warning reaches the user
        # finite values: float16/32 sum in float64 (finite); a float64 sum overflows, and
        # the caller's full check decides
        assert compiled.finite_array(huge) == (dtype is not np.float64)
        if dtype is np.float32:  # Σ a² overflows: not certain, the full check decides
            monkeypatch.setattr(compiled, "_ONE_PASS_FROM", 1)
            assert not compiled.finite_array(huge)
            assert compiled.finite_array(np.full((8, 40), 1e18, dtype=dtype))
