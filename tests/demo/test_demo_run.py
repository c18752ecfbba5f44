"""The demo end to end at toy size, the CLI, and the static-shape sampler."""

from __future__ import annotations

import subprocess
import sys

import torch

from rqcompile.demo.models import CharTransformer
from rqcompile.demo.run import DemoConfig, generate_fixed, run_demo


def test_right_padding_keeps_last_token_logits_exact() -> None:
    torch.manual_seed(0)
    m = CharTransformer(20, n_layer=1, n_embd=32, block_size=16).eval()
    ids = torch.randint(0, 20, (1, 9))
    padded = torch.zeros(2, 16, dtype=torch.long)
    padded[0, :9] = ids[0]
    with torch.no_grad():
        torch.testing.assert_close(m(padded)[0, 8], m(ids)[0, -1], rtol=1e-5, atol=1e-5)
    out = generate_fixed(
        lambda x: m(x), ids[0], batch=2, block=16, n=5, generator=torch.Generator().manual_seed(0)
    )
    assert out.shape == (14,) and torch.equal(out[:9], ids[0])


def test_demo_runs_end_to_end_tiny(capsys: object) -> None:
    res = run_demo(
        DemoConfig(
            steps=3,
            batch_size=4,
            block_size=16,
            n_embd=32,
            n_head=2,
            target="reference",
            progress=False,
            gen_chars=10,
        )
    )
    assert res["lowered_max_diff"] < 1e-3
    assert set(res["runs"]) == {"fp32", "STE", "ridge"}


def test_cli_help() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "rqcompile", "--help"], check=True, capture_output=True, text=True
    ).stdout
    assert "demo" in out and "inspect" in out


def test_quick_flag_and_plain_progress_lines(capsys: object) -> None:
    """--quick shrinks the run unless an option says otherwise; without a bar (not a TTY)
    training prints progress lines with an ETA and CPU time per step."""
    import argparse

    from rqcompile.demo.run import QUICK, add_arguments, config_from_args

    p = argparse.ArgumentParser()
    add_arguments(p)
    argv = ["--quick", "--steps", "7"]
    cfg = config_from_args(p.parse_args(argv), argv)
    assert cfg.steps == 7 and cfg.n_embd == QUICK["n_embd"] and cfg.ste_grid == "minmax"
    argv = ["--ste-grid", "default"]
    assert config_from_args(p.parse_args(argv), argv).ste_grid is None
    res = run_demo(
        DemoConfig(steps=4, batch_size=4, block_size=16, n_embd=32, n_head=2, target="reference",
                   progress=False, gen_chars=5, log_every=2)  # fmt: skip
    )
    out = capsys.readouterr().out  # type: ignore[attr-defined]
    assert "step 2/4 (50%)" in out and "ETA" in out and "ms CPU/step" in out
    assert "STE A1W1, minmax grid" in out and "ridge A1W1, bitnet grid" in out
    assert ("ridge beat STE" in out) != ("ridge did not beat STE" in out)
    assert res["runs"]["ridge"]["cpu_s"] > 0
