"""The benchmark package: its pieces work and ``main`` writes a report (speed is never checked)."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

from rqcompile.bench.timing import Stat, time_interleaved


def test_stat_median_and_spread() -> None:
    s = Stat.of([1.0, 2.0, 3.0, 4.0, 100.0])
    assert s.median == 3.0 and s.n == 5
    assert s.spread > 0


def test_time_interleaved_runs_each_candidate_round_robin() -> None:
    calls: list[str] = []
    out = time_interleaved({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")},
                           budget_s=0.0, min_repeats=3, warmup=0)  # fmt: skip
    assert calls == ["a", "b"] * 3
    assert out["a"].n == out["b"].n == 3


@pytest.mark.tvm
def test_check_against_reference_rejects_a_wrong_build() -> None:
    import rqcompile as rq
    from rqcompile.bench.layers import check_against_reference
    from rqcompile.errors import VerifyError
    from rqcompile.testing.models import TinyMLP

    x = torch.randn(8, 64)
    ir = rq.convert(rq.prepare(TinyMLP(), (x,), "A8W8").eval())
    good = rq.build(ir, target="reference")
    check_against_reference(ir, good, (x,), "same")
    with pytest.raises(VerifyError, match="differs from the reference"):
        check_against_reference(ir, lambda x: good(x) + 1.0, (x,), "broken")


@pytest.mark.tvm
def test_main_writes_report(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from rqcompile.bench import main

    monkeypatch.setenv("TVM_NUM_THREADS", "1")
    threads = torch.get_num_threads()
    try:
        rc = main(["--k", "128", "--m", "1,4", "--presets", "A8W8,A1W1", "--budget", "0",
                   "--skip", "e2e,train,lower", "--out", str(tmp_path), "--name", "t"])  # fmt: skip
    finally:
        torch.set_num_threads(threads)
    assert rc == 0
    data = json.loads((tmp_path / "t.json").read_text())
    names = {(r["m"], r["name"]) for r in data["layers"]}
    assert names == {(m, n) for m in (1, 4) for n in ("fp32", "int8-dyn", "A8W8", "A1W1")}
    md = (tmp_path / "t.md").read_text()
    assert "| 128 | 4 |" in md and data["env"]["cpu"] in md


@pytest.mark.tvm
def test_kernel_times_lists_the_models_kernels() -> None:
    import rqcompile as rq
    from rqcompile.bench.profile import format_kernel_times, kernel_times
    from rqcompile.errors import InputError
    from rqcompile.testing.models import TinyMLP

    x = torch.randn(8, 64)
    qat = rq.prepare(TinyMLP(), (x,), "A8W8").eval()
    rows = kernel_times(rq.lower(qat, target="llvm"), x, repeats=2)
    names = {r.name for r in rows}
    assert any(n.startswith("quantize") for n in names)
    assert any(n.startswith("int_matmul") for n in names)
    assert all(r.calls >= 1 and r.seconds >= 0 for r in rows)
    assert sum(r.share for r in rows) == pytest.approx(1.0)
    table = format_kernel_times(rows, top=2)
    assert table.startswith("| kernel |") and "**total**" in table and "more)" in table
    with pytest.raises(InputError, match="TVM CPU target"):
        kernel_times(rq.lower(qat, target="reference"), x)


def test_report_has_one_section_per_end_to_end_model() -> None:
    from rqcompile.bench.report import markdown

    env = {"date": "d", "cpu": "c", "cores": 2, "mcpu": "m", "features": [], "threads": 1,
           "torch": "t", "tvm": "v"}  # fmt: skip
    row = {"name": "A1W1", "tokens_per_s": 1000.0, "vs_fp32": 3.5, "seconds": 0.1,
           "spread": 0.05, "weight_bytes": 2048, "build_s": 1.0}  # fmt: skip
    data = {"mode": "full", "env": env, "e2e": {"batch": [32, 64], "rows": [row]},
            "e2e_block": {"batch": [4, 128], "rows": [{**row, "vs_fp32": 4.25}]}}  # fmt: skip
    md = markdown(data, "cmd")
    assert "## Char transformer end to end (batch 32 x 64)" in md
    assert "## One GPT-2-width block end to end (batch 4 x 128)" in md
    assert "| A1W1 | 1,000 | 3.50 |" in md and "| A1W1 | 1,000 | 4.25 |" in md
    assert "GPT-2-width" not in markdown({**data, "e2e_block": None}, "cmd")


def test_gpt2_block_model_is_gpt2_width() -> None:
    from rqcompile.bench.model import gpt2_block_model

    m = gpt2_block_model()
    assert sum(p.numel() for p in m.parameters()) > 7_000_000
    assert m(torch.randint(0, 65, (1, 128))).shape == (1, 128, 65)


@pytest.mark.tvm
def test_peers_harness_writes_tables_with_whatever_peers_are_installed(tmp_path: Path) -> None:
    """Structure only: each installed peer and each preset is timed; a missing peer is noted."""
    from rqcompile.bench.peers import PEERS, main, missing_packages

    threads = torch.get_num_threads()
    peers = [p for p in PEERS if p != "torch-compile"]  # inductor's first compile takes ~30 s
    try:
        rc = main(["--peers", "--k", "128", "--m", "1", "--threads", "1", "--budget", "0",
                   "--presets", "A8W8,A1W1", "--only-peers", ",".join(peers),
                   "--out", str(tmp_path), "--name", "p"])  # fmt: skip
    finally:
        torch.set_num_threads(threads)
    assert rc == 0
    data = json.loads((tmp_path / "p.json").read_text())
    present = [p for p in peers if not missing_packages(p)]
    assert set(data["peers"]) == set(present)
    assert set(data["skipped"]) == {p for p in peers if missing_packages(p)}
    for series in ("interleaved", "standalone"):
        names = {r["name"] for r in data["rows"] if r["series"] == series}
        assert names == {*present, "A8W8", "A1W1"}
    md = (tmp_path / "p.md").read_text()
    assert "## 1 thread, interleaved" in md and "## 1 thread, standalone" in md
    assert "A1W1 (xbest)" in md and data["env"]["cpu"] in md


def test_bench_does_not_write_into_the_repository_by_default() -> None:
    from rqcompile.bench import DEFAULT_OUT, REPO_RESULTS, _parser
    from rqcompile.bench.peers import _parser as peers_parser

    assert not DEFAULT_OUT.is_absolute() and DEFAULT_OUT != REPO_RESULTS
    assert _parser().parse_args([]).out == DEFAULT_OUT
    assert peers_parser().parse_args([]).out == DEFAULT_OUT


def test_peers_report_has_a_thread_scaling_table() -> None:
    from rqcompile.bench.peers import PeerRow, scaling

    def row(t: int, name: str, sec: float) -> PeerRow:
        return PeerRow(t, "standalone", 64, 64, 64, name, sec, 0.0, 3, 0)

    rows = [row(1, "A8W8", 2.0), row(2, "A8W8", 1.0), row(1, "ort-int8", 3.0),
            row(2, "ort-int8", 2.0)]  # fmt: skip
    text = "\n".join(scaling(rows, ["ort-int8", "A8W8", "A1W1"]))
    assert "## Thread scaling 1 → 2, standalone" in text
    assert "| 64 | 64 | 64 | 1.50x | 2.00x | – |" in text
    assert scaling([r for r in rows if r.threads == 1], ["A8W8"]) == []


def test_targets_table_reads_the_worst_shape_against_each_goal() -> None:
    """Each target's ratio is computed from the run's rows: best peer, a named peer, our own
    dense preset, 1 → N thread scaling, end to end; shapes outside K = N 1024–4096 are left
    out; a goal is met only when the worst shape meets it."""
    from rqcompile.bench.peers import PeerRow
    from rqcompile.bench.targets import table

    def row(t: int, s: str, k: int, m: int, name: str, sec: float) -> dict:
        return asdict(PeerRow(t, s, k, k, m, name, sec, 0.0, 3, 0))

    rows = []
    for s in ("interleaved", "standalone"):
        for t in (1, 2):
            for k in (512, 1024, 2048):
                # ort-int8 is the best peer at M = 64; A8W8 1.2x it at 1024, 0.9x at 2048
                rows += [row(t, s, k, 64, "ort-int8", 9.0 / t), row(t, s, k, 64, "torch-fp32", 50.0),
                         row(t, s, k, 64, "A8W8", (7.5 if k == 1024 else 10.0) / t),
                         row(t, s, k, 64, "A4W4", 6.0 / t if t == 1 else 3.6),
                         row(t, s, k, 64, "A4W4+2:4", 4.0 / t),
                         row(t, s, k, 1, "ort-nbits4-acc0", 4.0), row(t, s, k, 1, "W4", 2.0),
                         row(t, s, k, 1, "ort-nbits4-acc4", 1.0)]  # fmt: skip
    rows.append(row(1, "standalone", 512, 64, "A8W8", 0.1))  # K = 512: outside the range
    data = {"rows": rows, "peers": ["ort-int8", "torch-fp32", "ort-nbits4-acc0", "ort-nbits4-acc4"],
            "env": {"features": ["avx2", "avx512f"]},
            "e2e": [{"threads": 1, "name": "fp32", "seconds": 3.3},
                    {"threads": 1, "name": "A1W1", "seconds": 1.0},
                    {"threads": 1, "series": "standalone", "name": "fp32", "seconds": 2.0},
                    {"threads": 1, "series": "standalone", "name": "A1W1", "seconds": 1.0}]}  # fmt: skip
    lines = {ln.split(" | ")[0].lstrip("| "): ln for ln in table(data)}
    assert "AVX-512 host" in table(data)[0]
    a8 = lines["A8W8 vs best peer, M ≥ 64"]
    assert a8.endswith("| ✗ 0.90–1.20x | ✗ 0.90–1.20x | ✗ 0.90–1.20x | ✗ 0.90–1.20x |")
    # every preset present scales 2x except A4W4 (6.0 → 3.6: 1.67x); 1-thread columns empty
    assert lines["thread scaling 1 → all cores, every preset, M ≥ 64"].endswith(
        "| – | – | ✗ 1.67–2.00x | ✗ 1.67–2.00x |")
    assert "| ✓ 2.00x |" in lines["W4 vs ORT MatMulNBits acc 0"]
    assert lines["2:4 vs dense, same bits (A4W4+2:4 vs A4W4)"].startswith(
        "| 2:4 vs dense, same bits (A4W4+2:4 vs A4W4) | ≥ 1.3x | ✓ 1.50x |")
    assert lines["A8W4 vs ORT MatMulNBits acc 4"].endswith("| – | – | – | – |")  # not run
    e2e = lines["char transformer A1W1 end to end vs torch fp32"]
    assert e2e.endswith("| ✓ 3.30x | ✗ 2.00x | – | – |")
    data["env"]["features"] = ["avx2"]
    assert "AVX2 host without AVX-512" in table(data)[0]
    assert "| ≥ 2.0x |" in {ln.split(" | ")[0].lstrip("| "): ln for ln in table(data)}[
        "A1W1 vs best peer, M ≥ 64 (AVX-512 / AVX2)"]
