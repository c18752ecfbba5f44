"""Tests for rqcompile.state_file: exact round trip, tied weights, atomic writes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.fx as fx

from rqcompile import state_file as checkpoint
from rqcompile.demo.models import CharTransformer, DigitsCNN
from rqcompile.demo.train import load_checkpoint, save_checkpoint


def _lm(seed: int) -> CharTransformer:
    torch.manual_seed(seed)
    return CharTransformer(20, n_layer=1, n_embd=32, block_size=8)


def _leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".tmp"))


def test_round_trip_is_exact(tmp_path: Path) -> None:
    src, dst = _lm(0), _lm(1)
    meta = {"step": 7, "config": {"lr": 1e-3, "bits": "A1W1"}, "loss": float("nan")}
    path = save_checkpoint(src, tmp_path / "m.safetensors", meta)
    got = load_checkpoint(dst, path)
    assert got["step"] == 7 and got["config"] == meta["config"]
    assert got["loss"] != got["loss"]  # NaN survives the JSON round trip
    for key, value in src.state_dict().items():
        assert torch.equal(dst.state_dict()[key], value), key
    assert _leftovers(tmp_path) == []


def test_bn_buffers_and_traced_module(tmp_path: Path) -> None:
    torch.manual_seed(0)
    cnn = DigitsCNN(width=8)
    cnn(torch.randn(4, 1, 8, 8))  # update running stats
    traced = fx.symbolic_trace(cnn)
    save_checkpoint(traced, tmp_path / "c.safetensors", None)
    fresh = DigitsCNN(width=8)
    assert load_checkpoint(fresh, tmp_path / "c.safetensors") == {}
    for key, value in cnn.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value), key


def test_tied_weights(tmp_path: Path) -> None:
    src, dst = _lm(0), _lm(1)
    src.lm_head.weight = src.tok_emb.weight
    dst.lm_head.weight = dst.tok_emb.weight
    save_checkpoint(src, tmp_path / "t.safetensors", {})
    load_checkpoint(dst, tmp_path / "t.safetensors")
    assert dst.lm_head.weight is dst.tok_emb.weight
    assert torch.equal(dst.tok_emb.weight, src.tok_emb.weight)


def test_failed_write_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "m.safetensors"

    def broken_save(tensors: dict[str, torch.Tensor], path: str, metadata: dict[str, str]) -> None:
        Path(path).write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint, "save_file", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(_lm(0), target, {"a": 1})
    assert not target.exists() and _leftovers(tmp_path) == []

    monkeypatch.undo()
    save_checkpoint(_lm(0), target, {"version": 1})
    before = target.read_bytes()
    monkeypatch.setattr(checkpoint, "save_file", broken_save)
    with pytest.raises(OSError):
        save_checkpoint(_lm(1), target, {"version": 2})
    assert target.read_bytes() == before  # the old checkpoint is intact
    assert _leftovers(tmp_path) == []


def test_bad_meta_writes_nothing(tmp_path: Path) -> None:
    with pytest.raises(TypeError):
        save_checkpoint(_lm(0), tmp_path / "m.safetensors", {"obj": object()})
    assert list(tmp_path.iterdir()) == []


def test_strict_load_rejects_other_architecture(tmp_path: Path) -> None:
    save_checkpoint(_lm(0), tmp_path / "m.safetensors", {})
    with pytest.raises(RuntimeError):
        load_checkpoint(DigitsCNN(), tmp_path / "m.safetensors")
