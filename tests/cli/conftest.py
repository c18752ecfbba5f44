"""Fixtures for CLI tests: a small saved QAT checkpoint, and one intra-op thread."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

import rqcompile as rq
from rqcompile.testing.models import TinyMLP


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


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
