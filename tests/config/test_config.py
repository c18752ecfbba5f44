from __future__ import annotations

import pytest

import rqcompile as rq
from rqcompile.config import parse_preset


@pytest.mark.parametrize("name", rq.PRESETS)
def test_every_preset_parses_and_names_itself(name: str) -> None:
    spec = parse_preset(name)
    assert spec.preset == name
    assert rq.LayerSpec.from_dict(spec.to_dict()) == spec


def test_preset_formats_follow_method() -> None:
    a1w1 = parse_preset("A1W1")
    assert a1w1.weight.bits == 1 and not a1w1.weight.symmetric  # binary affine both sides
    sparse = parse_preset("A4W1+2:4")
    assert sparse.weight.symmetric and sparse.sparsity == rq.NMSparsity(2, 4)  # linear + 2:4
    assert parse_preset("A1.5W1.5").weight.symmetric  # ternary is linear
    assert parse_preset("W4").activation is None


def test_unknown_preset_suggests_fix() -> None:
    with pytest.raises(rq.ConfigError, match="Did you mean 'A4W1\\+2:4'"):
        parse_preset("A4W1+2/4")


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"bits": 0}, "bits=0 is not supported"),
        ({"bits": 9}, "bits=9 is not supported"),
        ({"bits": 1.5, "symmetric": False}, "ternary"),
    ],
)
def test_quantspec_validation(kwargs: dict, match: str) -> None:
    with pytest.raises(rq.ConfigError, match=match):
        rq.QuantSpec(**kwargs)


def test_layerspec_validation() -> None:
    w = rq.QuantSpec(bits=4)
    with pytest.raises(rq.ConfigError, match="ridge_lambda=-1"):
        rq.LayerSpec(weight=w, ridge_lambda=-1)
    with pytest.raises(rq.ConfigError, match="estimator='nope'"):
        rq.LayerSpec(weight=w, estimator="nope")
    with pytest.raises(rq.ConfigError, match="symmetric"):
        rq.LayerSpec(weight=w, sparsity=rq.NMSparsity())
    with pytest.raises(rq.ConfigError, match="n < m"):
        rq.NMSparsity(4, 4)


def test_qconfig_json_round_trip_and_precedence() -> None:
    cfg = rq.QConfig.from_preset(
        "A4W1+2:4", overrides={"lm_head": None, r"re:blocks\.\d+\.attn\..*": "A8W8"}
    )
    assert rq.QConfig.from_json(cfg.to_json()) == cfg
    assert cfg.resolve("lm_head") == (None, "lm_head")
    spec, rule = cfg.resolve("blocks.3.attn.c_attn")
    assert spec is not None and spec.preset == "A8W8" and rule.startswith("re:")
    assert cfg.resolve("blocks.3.mlp.fc")[1] == "default"
    assert "lm_head': float" in str(cfg)


def test_keyword_overrides_apply_to_every_spec() -> None:
    from rqcompile.config import as_qconfig

    cfg = as_qconfig(
        "A4W4", estimator="ste", ridge_lambda=0.1, block_size=64, overrides={"fc": "A8W8"}
    )
    for spec in (cfg.default, cfg.overrides[0].spec):
        assert spec is not None and spec.estimator == "ste" and spec.ridge_lambda == 0.1
        assert spec.weight.granularity == rq.PerGroup(64)
    with pytest.raises(rq.ConfigError, match="unknown option"):
        as_qconfig("A4W4", blocksize=64)


def test_grids_are_named_and_validated() -> None:
    """Issue 22: every QuantSpec names its grid; bitnet exists at 1 and 1.5 bits only."""
    from rqcompile.config.spec import LayerSpec, QuantSpec
    from rqcompile.errors import ConfigError

    assert QuantSpec(bits=1).grid == "bitnet" and QuantSpec(bits=1.5, symmetric=True).grid == "bitnet"
    assert QuantSpec(bits=2).grid == "minmax" and QuantSpec(bits=1, grid="minmax").grid == "minmax"
    assert "minmax" in QuantSpec(bits=1, grid="minmax").short()
    with pytest.raises(ConfigError, match="bitnet"):
        QuantSpec(bits=4, grid="bitnet")
    with pytest.raises(ConfigError, match="unknown"):
        QuantSpec(bits=1, grid="plain")
    old = {"bits": 1, "symmetric": False, "granularity": {"kind": "per-group", "size": 128}}
    assert QuantSpec.from_dict(old) == QuantSpec(bits=1)  # files without a grid: the default
    spec = LayerSpec.from_preset("A2W2").with_grid("minmax")
    assert spec == LayerSpec.from_preset("A2W2") and spec.preset == "A2W2"
    a1 = LayerSpec.from_preset("A1W1").with_grid("minmax")
    assert a1.preset is None and LayerSpec.from_dict(a1.to_dict()) == a1
    assert LayerSpec(weight=QuantSpec(bits=1), estimator="ridge_detached").estimator == "ridge_detached"
