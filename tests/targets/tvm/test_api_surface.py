"""The TVM API surface rqcompile relies on (adapter.SYMBOLS), targets and CPU features.

An apache-tvm upgrade that moves or drops a symbol fails here, in one obvious place
instead of deep inside a build.
"""

from __future__ import annotations

import importlib

import pytest

tvm = pytest.importorskip("tvm")

from rqcompile.errors import TargetError  # noqa: E402  (after the importorskip guard)
from rqcompile.targets.tvm import adapter, cpu_features  # noqa: E402

pytestmark = pytest.mark.tvm


@pytest.mark.parametrize("path", adapter.SYMBOLS)
def test_symbol_resolves(path: str) -> None:
    parts = path.split(".")
    obj = importlib.import_module(parts[0])
    for name in parts[1:]:
        obj = getattr(obj, name)
    assert obj is not None


def test_adapter_reexports_are_tvm_modules() -> None:
    assert adapter.tvm is tvm
    for name in ("te", "tirx", "s_tir", "relax", "topi", "runtime"):
        assert getattr(adapter, name) is importlib.import_module(f"tvm.{name}")
    assert adapter.Target is tvm.target.Target
    assert adapter.tvm_version().startswith("0.27")


def test_make_target_forms() -> None:
    t = adapter.make_target({"kind": "llvm", "mcpu": "znver3"})
    assert str(t.kind.name) == "llvm" and str(t.attrs["mcpu"]) == "znver3"
    assert adapter.make_target(t) is t
    assert str(adapter.make_target("llvm").kind.name) == "llvm"
    with pytest.raises(TargetError, match=r"\{'kind': 'llvm', 'mcpu': 'znver3'\}"):
        adapter.make_target("llvm -mcpu=znver3")
    with pytest.raises(TargetError):
        adapter.make_target({"kind": "no-such-kind"})


def test_host_target_only_enables_host_features() -> None:
    host = adapter.host_llvm_target()
    assert str(host.kind.name) == "llvm"
    enabled = adapter.target_features(host)
    have = cpu_features.host_features()
    if have:  # /proc/cpuinfo readable: never enable what the host lacks
        assert enabled <= have, f"host target enables {sorted(enabled - have)} not in cpuinfo"
        assert not cpu_features.missing_features(host)


def test_feature_table_agrees_with_llvm() -> None:
    for mcpu, feats in cpu_features.MCPU_FEATURES.items():
        assert adapter.target_features({"kind": "llvm", "mcpu": mcpu}) == feats, mcpu
    t = {"kind": "llvm", "mcpu": "sapphirerapids", "mattr": ["-avx512vnni"]}
    assert adapter.target_features(t) == cpu_features.required_features(t)
    assert "avx512_vnni" not in cpu_features.required_features(t)


def test_parse_cpuinfo() -> None:
    text = (
        "processor\t: 0\n"
        "flags\t\t: fpu sse avx2 fma avx512f avx512bw avx512_vnni avx512_vpopcntdq\n"
    )
    assert cpu_features.parse_cpuinfo(text) == {
        "avx2",
        "fma",
        "avx512f",
        "avx512bw",
        "avx512_vnni",
        "avx512_vpopcntdq",
    }
    assert cpu_features.parse_cpuinfo("no flags here") == frozenset()


def test_required_features_non_x86_and_generic() -> None:
    assert cpu_features.required_features({"kind": "cuda", "arch": "sm_80"}) == frozenset()
    assert cpu_features.required_features("llvm") == frozenset()
    arm = {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a72"}
    assert cpu_features.required_features(arm) == frozenset()
    plus = {"kind": "llvm", "mattr": ["+avx2", "+avx512vpopcntdq"]}
    assert cpu_features.required_features(plus) == {"avx2", "avx512_vpopcntdq"}
    assert cpu_features.missing_features(plus, frozenset({"avx2"})) == {"avx512_vpopcntdq"}


@pytest.mark.parametrize("module", [adapter, cpu_features], ids=["adapter", "cpu_features"])
def test_doctests(module: object) -> None:
    import doctest

    assert doctest.testmod(module).failed == 0  # type: ignore[arg-type]
