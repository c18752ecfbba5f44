"""Fixtures for CLI tests: a small saved QAT checkpoint, and one intra-op thread."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import rqcompile as rq
from rqcompile.testing.models import TinyMLP


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread: None) -> None:
    """Every test here runs with one intra-op thread (``tests/conftest.py``)."""


@pytest.fixture
def ckpt(tmp_path: Path) -> Path:
    """A TinyMLP prepared at A4W4 (head float), a few steps trained, saved with rq.save_qat."""
    ex = (torch.randn(8, 64),)
    qat = rq.prepare(TinyMLP(), ex, "A4W4", overrides={"head": None})
    opt = torch.optim.SGD(qat.parameters(), lr=0.1)
    for _ in range(3):
        loss = qat(ex[0]).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return rq.save_qat(qat, tmp_path / "mlp.safetensors", builder="tiny-mlp", example_inputs=ex)
