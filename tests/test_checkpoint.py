"""QAT checkpoints (rq.save_qat / rq.load_qat): round trip, safety, and readable errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

import rqcompile as rq
from rqcompile.checkpoint import FORMAT, read_qat_meta
from rqcompile.testing.models import TinyMLP


def _qat() -> tuple[torch.fx.GraphModule, tuple[torch.Tensor, ...]]:
    ex = (torch.randn(8, 64),)
    return rq.prepare(TinyMLP(), ex, "A2W2", estimator="ste", overrides={"head": None}), ex


def test_round_trip_is_exact_and_keeps_config(tmp_path: Path) -> None:
    qat, ex = _qat()
    with torch.no_grad():
        for p in qat.parameters():
            p.add_(0.01 * torch.randn_like(p))  # "trained" weights, not the init
    p = rq.save_qat(
        qat, tmp_path / "m.safetensors", builder="tiny-mlp", example_inputs=ex, meta={"steps": 3}
    )
    back = rq.load_qat(p)
    assert back.meta["rq_config"] == qat.meta["rq_config"]
    assert back.meta["rq_checkpoint"]["meta"] == {"steps": 3}
    qat.eval()
    assert torch.equal(back(ex[0]), qat(ex[0]))
    assert not back.training


def test_file_is_plain_safetensors_with_json_header(tmp_path: Path) -> None:
    qat, ex = _qat()
    p = rq.save_qat(qat, tmp_path / "m.safetensors", builder=TinyMLP, example_inputs=ex)
    head = read_qat_meta(p)
    assert head["format"] == FORMAT
    assert head["builder"] == "rqcompile.testing.models:TinyMLP"
    assert head["example_inputs"] == [{"shape": [8, 64], "dtype": "float32"}]
    with safe_open(str(p), framework="pt") as fh:
        assert set(fh.keys()) == set(qat.state_dict())


def test_import_path_builders_need_permission(tmp_path: Path) -> None:
    qat, ex = _qat()
    p = rq.save_qat(qat, tmp_path / "m.safetensors", builder=TinyMLP, example_inputs=ex)
    with pytest.raises(rq.ConfigError, match="allow_import=True"):
        rq.load_qat(p)
    assert torch.equal(rq.load_qat(p, allow_import=True)(ex[0]), qat.eval()(ex[0]))
    assert torch.equal(rq.load_qat(p, builder="tiny-mlp")(ex[0]), qat(ex[0]))


def test_errors(tmp_path: Path) -> None:
    qat, ex = _qat()
    with pytest.raises(rq.ConfigError, match="takes the graph returned by rq.prepare"):
        rq.save_qat(TinyMLP(), tmp_path / "x", builder="tiny-mlp", example_inputs=ex)
    with pytest.raises(rq.ConfigError, match="unknown builder 'mlp'"):
        rq.save_qat(qat, tmp_path / "x", builder="mlp", example_inputs=ex)
    with pytest.raises(rq.ConfigError, match="not JSON-serializable"):
        rq.save_qat(
            qat, tmp_path / "x", builder="tiny-mlp", example_inputs=ex, meta={"f": object()}
        )
    assert not (tmp_path / "x").exists()
    with pytest.raises(rq.ArtifactError, match="no such file"):
        rq.load_qat(tmp_path / "missing.safetensors")
    (tmp_path / "junk").write_bytes(b"\x00" * 64)
    with pytest.raises(rq.ArtifactError, match="not a safetensors checkpoint"):
        rq.load_qat(tmp_path / "junk")
    p = rq.save_qat(
        qat,
        tmp_path / "m.safetensors",
        builder="tiny-mlp",
        builder_kwargs={"hidden": 32},
        example_inputs=ex,
    )
    with pytest.raises(rq.ArtifactError, match="do not fit the model built by 'tiny-mlp'"):
        rq.load_qat(p)


def test_register_builder_rejects_conflicts() -> None:
    rq.register_builder("tiny-mlp", "rqcompile.testing.models:TinyMLP")  # same: fine
    with pytest.raises(rq.ConfigError, match="already registered"):
        rq.register_builder("tiny-mlp", "rqcompile.testing.models:TinyCNN")
    with pytest.raises(rq.ConfigError, match="package.module:function"):
        rq.register_builder("x", "no_colon")
    assert json.dumps(list(rq.checkpoint.builders()))  # names are plain strings
