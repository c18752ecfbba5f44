"""One build for every shape of a dynamic model (``specialize="none"``,
``rqcompile/targets/tvm/symbolic.py``): parity against the QAT model at drawn (batch, seq),
exactly one build across shapes, typed errors outside the ranges, artifacts that keep the
kernels.

The llvm build happens once per module (about 10-15 s on 2 cores); every drawn shape after
that is only a run. Nothing here depends on the host's instruction sets: which kernels kept
their fast path (``exe.symbolic_fallbacks``) differs between AVX-512 and AVX2 hosts and is
not asserted.
"""

from __future__ import annotations

import re

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import rqcompile as rq
from rqcompile.demo.models import CharTransformer
from rqcompile.errors import InputError, UsageError
from rqcompile.ir.printer import print_module
from rqcompile.targets.dynamic import DynamicModule

Dim = torch.export.Dim
VOCAB, T, B = 65, 16, 8
_SETTINGS = {
    "deadline": None,
    "database": None,
    "derandomize": True,
    "suppress_health_check": [HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
}


def _qat(preset: str) -> torch.fx.GraphModule:
    torch.manual_seed(0)
    model = CharTransformer(VOCAB, n_layer=1, n_embd=32, block_size=T)
    q = rq.prepare(model, (torch.zeros(2, T, dtype=torch.long),), preset)
    opt = torch.optim.AdamW(q.parameters(), lr=1e-2)
    for _ in range(3):  # a few steps, so the weights are not at their initialization
        x = torch.randint(0, VOCAB, (4, T))
        loss = nn.functional.cross_entropy(q(x).flatten(0, 1), x.roll(-1, 1).flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
    return q.eval()


def _lower(qat: torch.fx.GraphModule) -> DynamicModule:
    shapes = {"idx": {0: Dim("batch", min=1, max=B), 1: Dim("seq", min=1, max=T)}}
    return rq.lower(qat, "llvm", dynamic_shapes=shapes, specialize="none")


@pytest.fixture(scope="module")
def qat() -> torch.fx.GraphModule:
    return _qat("A8W8")


@pytest.fixture(scope="module")
def exe(qat: torch.fx.GraphModule) -> DynamicModule:
    return _lower(qat)


def _parity(qat: torch.fx.GraphModule, exe: DynamicModule, x: torch.Tensor) -> None:
    report = rq.check_parity(qat, exe, x)
    assert report.ok, report.line()
    with torch.no_grad():
        assert exe(x).shape == qat(x).shape


@settings(max_examples=12, **_SETTINGS)
@given(b=st.integers(1, B), t=st.integers(1, T))
def test_one_build_matches_qat_at_drawn_shapes(qat, exe, b, t) -> None:
    x = torch.randint(0, VOCAB, (b, t), generator=torch.Generator().manual_seed(b * 31 + t))
    _parity(qat, exe, x)


def test_only_one_build_across_shapes(qat, exe, monkeypatch) -> None:
    assert exe.specialize == "none" and exe.one_build is not None

    def no_build(*a, **k):
        raise AssertionError("a per-shape build happened")

    monkeypatch.setattr(exe, "_build", no_build)
    one = exe.one_build
    for b, t in [(1, 1), (B, T), (3, 5), (2, T), (B, 1)]:
        exe(torch.randint(0, VOCAB, (b, t)))
    exe.prebuild({"batch": 2, "seq": 3})  # nothing to build
    with pytest.raises(InputError, match="outside"):
        exe.prebuild({"batch": 2, "seq": T + 1})
    assert exe.one_build is one and exe.cached_shapes == []
    assert list(exe.build_seconds) == [()]  # the one build, timed
    assert "one symbolic build" in rq.inspect(exe)


def test_one_build_takes_no_row_for_some_row_counts(exe) -> None:
    """Every kernel is valid for every shape in range: no AMX tiles (16 rows or more) or
    4-/2-bit panels (16 rows or fewer) were chosen, and none fell back to generic."""
    from rqcompile.passes.ir.kernel_table import kernel_table

    specific = {r.name for r in kernel_table("llvm") if r.row_count_specific}
    chosen = set(re.findall(r'rq\.kernel = "([^"]+)"', print_module(exe.one_build.ir)))
    assert chosen and not chosen & specific
    assert exe.symbolic_fallbacks == ()


def test_out_of_range_is_a_typed_error(exe) -> None:
    with pytest.raises(InputError, match=r"seq.*outside its declared range \[1, 16\]"):
        exe(torch.zeros(2, T + 1, dtype=torch.long))
    with pytest.raises(InputError, match=r"batch.*outside its declared range \[1, 8\]"):
        exe(torch.zeros(B + 1, 4, dtype=torch.long))
    with pytest.raises(InputError, match="token id"):
        exe(torch.full((2, 4), VOCAB, dtype=torch.long))


def test_save_load_keeps_the_kernels(qat, exe, tmp_path, monkeypatch) -> None:
    path = tmp_path / "one.rq"
    exe.save(path)
    import rqcompile.targets.tvm.symbolic as symbolic

    def no_build(*a, **k):
        raise AssertionError("rq.load rebuilt the kernels")

    monkeypatch.setattr(symbolic, "build_symbolic", no_build)
    back = rq.load(path)
    assert isinstance(back, DynamicModule) and back.specialize == "none"
    for b, t in [(1, 3), (B, T), (5, 9)]:
        x = torch.randint(0, VOCAB, (b, t))
        assert torch.equal(back(x), exe(x))
    with pytest.raises(InputError, match="outside its declared range"):
        back(torch.zeros(1, T + 1, dtype=torch.long))


def test_specialize_argument_checks(qat) -> None:
    with pytest.raises(UsageError, match="specialize must be one of"):
        rq.lower(qat, "reference", dynamic=True, specialize="always")
    with pytest.raises(UsageError, match="applies to dynamic shapes"):
        rq.lower(qat, "reference", specialize="none")
    # the reference target runs any shape as it is: nothing to build once
    ref = rq.lower(qat, "reference", dynamic=True, specialize="none")
    assert ref.specialize == "lru" and ref.one_build is None


@pytest.mark.slow  # a second llvm build (~15 s)
@pytest.mark.parametrize("preset", ["A1W1", "A4W4"])
def test_one_build_other_presets(preset) -> None:
    q = _qat(preset)
    one = _lower(q)
    for b, t in [(1, 1), (3, 7), (B, T)]:
        _parity(q, one, torch.randint(0, VOCAB, (b, t)))


@pytest.mark.slow  # a second llvm build (~15 s)
def test_load_without_trusting_the_kernels_rebuilds_once(exe, tmp_path) -> None:
    path = tmp_path / "one.rq"
    exe.save(path)
    back = rq.load(path, trust_kernels=False)
    assert isinstance(back, DynamicModule) and back.specialize == "none"
    x = torch.randint(0, VOCAB, (3, 5))
    assert torch.equal(back(x), exe(x))


@pytest.mark.parametrize(("b", "t"), [(5, 11), (7, 11)])
def test_target_flips_are_explained_as_ties(qat, b: int, t: int) -> None:
    """Drawn shapes (under hypothesis 6.170) where the llvm build crosses a rounding tie the
    reference does not, checked statically so they do not depend on what hypothesis draws.
    At (5, 11) the build's GELU (vectorized erf, within 3.8e-7) moves one input of the
    8-bit quantizer after it to 3.05e-5 of a code step from its tie and across it (outputs
    1.27e-3 apart); check_parity tried only codes within 1e-5 of a tie and called it a real
    mismatch. At (7, 11) the build also rounds the tie QAT and the reference disagree on as
    QAT does, so the one flip that explains it is found only from the re-fed reference."""
    x = torch.randint(0, VOCAB, (b, t), generator=torch.Generator().manual_seed(b * 31 + t))
    exe = rq.lower(qat, "llvm", example_inputs=(x,))
    report = rq.check_parity(qat, exe, x)
    assert report.ok, report.line()
    if report.target_diff > 1e-5 * report.scale:  # this host's build took the other code
        assert report.verdict == "ties only"
        assert any("reproduces it" in n for n in report.notes), report.notes
