"""``rq.QConfig``: which layers are quantized, and how.

One precedence rule: the first matching override, in the order given, wins; otherwise
``default`` applies. An override's pattern is an exact layer key or ``"re:<regex>"`` (full
match). ``spec=None`` keeps the layer in float. With ``strict=True`` an override that matches
no layer is an error listing the nearest keys.

Layer keys are fully qualified module names (``blocks.0.attn.c_attn``); functional matmuls are
``<owner module>:<node name>`` (``blocks.0.attn:matmul``).
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from rqcompile.config.presets import parse_preset
from rqcompile.config.spec import LayerSpec, PerGroup, QuantSpec
from rqcompile.errors import ConfigError

__all__ = ["ConfigLike", "Override", "QConfig", "as_qconfig"]


@dataclass(frozen=True)
class Override:
    """A per-layer override. ``spec=None`` keeps matching layers in float.

    Example:
        >>> Override("lm_head", None).matches("lm_head")
        True
    """

    pattern: str
    spec: LayerSpec | None

    def __post_init__(self) -> None:
        if not isinstance(self.pattern, str) or not self.pattern:
            raise ConfigError(f"override pattern must be a non-empty string, got {self.pattern!r}.")
        if self.pattern.startswith("re:"):
            try:
                re.compile(self.pattern[3:])
            except re.error as e:
                raise ConfigError(f"override {self.pattern!r}: invalid regex ({e}).") from e

    def matches(self, key: str) -> bool:
        if self.pattern.startswith("re:"):
            return re.fullmatch(self.pattern[3:], key) is not None
        return self.pattern == key


@dataclass(frozen=True, kw_only=True)
class QConfig:
    """What to quantize and how. Frozen, printable, JSON round-trippable.

    Args:
        default: spec for every matmul-like layer not matched by an override (None = float).
        overrides: per-layer overrides; the first match wins.
        quantize_attention: also quantize activation×activation matmuls (QKᵀ, attention·V),
            with the layer's activation spec on both sides. Off by default (docs/method.md#which-format-goes-where).
        strict: ``None`` (default): an override that matches no layer raises
            ``ConfigError``, and a layer that cannot take the preset's format (2:4 on a block
            that is not a multiple of 4) keeps the nearest format that works (dense, else
            float) with an ``RQWarning`` and a ``note:`` line in ``rq.inspect``. ``True``:
            both raise. ``False``: unused overrides are allowed, formats fall back.

    Example:
        >>> cfg = QConfig.from_preset("A4W4", overrides={"lm_head": None})
        >>> cfg.resolve("lm_head")[0] is None
        True
    """

    default: LayerSpec | None
    overrides: tuple[Override, ...] = ()
    quantize_attention: bool = False
    strict: bool | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "overrides", tuple(self.overrides))
        for o in self.overrides:
            if not isinstance(o, Override):
                raise ConfigError(f"overrides must be Override values, got {o!r}.")

    @classmethod
    def from_preset(
        cls,
        name: str,
        overrides: Mapping[str, LayerSpec | str | None] | None = None,
        **fields: Any,
    ) -> QConfig:
        """Build from a preset string plus ``{pattern: spec | preset | None}`` overrides."""
        return cls(default=parse_preset(name), overrides=_overrides(overrides or {}), **fields)

    def resolve(self, key: str) -> tuple[LayerSpec | None, str]:
        """The spec for a layer key and the rule that chose it (``"default"`` or the pattern)."""
        for o in self.overrides:
            if o.matches(key):
                return o.spec, o.pattern
        return self.default, "default"

    def check_overrides(self, keys: Iterable[str]) -> None:
        """Raise if ``strict`` and an override matches none of ``keys``."""
        keys = list(keys)
        if self.strict is False:
            return
        bad = [o for o in self.overrides if not any(o.matches(k) for k in keys)]
        if bad:
            lines = []
            for o in bad:
                target = o.pattern[3:] if o.pattern.startswith("re:") else o.pattern
                near = difflib.get_close_matches(target, keys, n=3, cutoff=0.3)
                lines.append(
                    f"override {o.pattern!r} matched no layer."
                    + (f" Nearest keys: {', '.join(repr(k) for k in near)}." if near else "")
                )
            raise ConfigError(
                "\n".join(lines)
                + "\nList all layer keys with rq.explain(model, example_inputs=...), or pass "
                "QConfig(..., strict=False) to allow unused overrides."
            )

    def with_layer_fields(self, **changes: Any) -> QConfig:
        """Apply ``estimator=``, ``estimator_options=``, ``ridge_lambda=``, ``block_size=`` and
        ``grid=`` (both operands; docs/method.md#grids) to every spec."""
        allowed = {
            "estimator",
            "grid",
            "estimator_options",
            "ridge_lambda",
            "block_size",
            "quantize_attention",
            "strict",
        }
        unknown = set(changes) - allowed
        if unknown:
            raise ConfigError(
                f"unknown option(s) {sorted(unknown)}; prepare() accepts "
                f"{sorted(allowed | {'overrides'})} as keyword overrides."
            )
        cfg_fields = {k: changes.pop(k) for k in ("quantize_attention", "strict") if k in changes}

        def edit(spec: LayerSpec | None) -> LayerSpec | None:
            if spec is None or not changes:
                return spec
            kw = {k: v for k, v in changes.items() if k not in ("block_size", "grid")}
            if "grid" in changes:
                spec = spec.with_grid(changes["grid"])
            if "block_size" in changes:
                kw["weight"] = _with_block(spec.weight, changes["block_size"])
                if spec.activation is not None:
                    kw["activation"] = _with_block(spec.activation, changes["block_size"])
            return dataclasses.replace(spec, **kw)

        return dataclasses.replace(
            self,
            default=edit(self.default),
            overrides=tuple(Override(o.pattern, edit(o.spec)) for o in self.overrides),
            **cfg_fields,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": 1,
            "default": None if self.default is None else self.default.to_dict(),
            "overrides": [
                {"pattern": o.pattern, "spec": None if o.spec is None else o.spec.to_dict()}
                for o in self.overrides
            ],
            "quantize_attention": self.quantize_attention,
            "strict": self.strict,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> QConfig:
        if d.get("format") != 1:
            raise ConfigError(f"QConfig JSON has format {d.get('format')!r}; this version reads 1.")
        dflt = d.get("default")
        return cls(
            default=None if dflt is None else LayerSpec.from_dict(dflt),
            overrides=tuple(
                Override(
                    o["pattern"], None if o["spec"] is None else LayerSpec.from_dict(o["spec"])
                )
                for o in d.get("overrides", ())
            ),
            quantize_attention=bool(d.get("quantize_attention", False)),
            strict=None if d.get("strict", None) is None else bool(d["strict"]),
        )

    @classmethod
    def from_json(cls, text: str) -> QConfig:
        try:
            return cls.from_dict(json.loads(text))
        except (KeyError, TypeError, json.JSONDecodeError) as e:
            raise ConfigError(f"not a valid QConfig JSON document: {e}") from e

    def __str__(self) -> str:
        lines = [f"QConfig(default: {self.default.short() if self.default else 'float'}"]
        for o in self.overrides:
            lines.append(f"  {o.pattern!r}: {o.spec.short() if o.spec else 'float'}")
        if self.quantize_attention:
            lines.append("  attention matmuls: quantized")
        return "\n".join(lines) + ")"


def _with_block(q: QuantSpec, size: int | None) -> QuantSpec:
    from rqcompile.config.spec import PerChannel

    gran = PerChannel() if size is None else PerGroup(size=size)
    return dataclasses.replace(q, granularity=gran)


def _overrides(m: Mapping[str, LayerSpec | str | None]) -> tuple[Override, ...]:
    out = []
    for pattern, spec in m.items():
        if isinstance(spec, str):
            spec = parse_preset(spec)
        out.append(Override(pattern, spec))
    return tuple(out)


ConfigLike = QConfig | LayerSpec | str


def as_qconfig(config: ConfigLike, **changes: Any) -> QConfig:
    """Normalize a preset string, LayerSpec or QConfig (+ keyword overrides) to a QConfig."""
    overrides = changes.pop("overrides", None)
    if isinstance(config, str):
        cfg = QConfig(default=parse_preset(config))
    elif isinstance(config, LayerSpec):
        cfg = QConfig(default=config)
    elif isinstance(config, QConfig):
        cfg = config
    else:
        raise ConfigError(
            f"config must be a preset string like 'A4W4', an rq.LayerSpec or an rq.QConfig; "
            f"got {type(config).__name__}."
        )
    if overrides:
        cfg = dataclasses.replace(cfg, overrides=_overrides(overrides) + cfg.overrides)
    return cfg.with_layer_fields(**changes) if changes else cfg
