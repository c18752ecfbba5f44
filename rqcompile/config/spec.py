"""Quantization specs: frozen, printable, hashable values (no behaviour).

A :class:`LayerSpec` says how one matmul-like layer is quantized: its weight spec, its
activation spec (``None`` = weight-only), optional N:M weight sparsity, the gradient estimator
and the ridge strength λ. Self-consistency is checked here; shape checks (K divisible by the
block, by M of N:M) happen in the passes, where the layer name is known.

Deviation from the usual layout of configs: ``ridge_lambda`` lives on :class:`LayerSpec`, not on
:class:`QuantSpec`, because the issue's override ``ridge_lambda=0.1`` is one knob per layer and
both operands of a layer share one estimator; keeping it in one place gives one spelling.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Union

from rqcompile.errors import ConfigError
from rqcompile.quant.estimators import ESTIMATORS as ESTIMATOR_TABLE

#: ``parse`` (preset string → LayerSpec) and ``name`` (LayerSpec → preset or None), set by
#: ``config/presets.py`` when it is imported (it imports this module, so this one cannot
#: import it; ``rqcompile.config`` imports both).
PRESET_GRAMMAR: dict[str, Any] = {}

__all__ = [
    "ESTIMATORS",
    "GRIDS",
    "Granularity",
    "LayerSpec",
    "NMSparsity",
    "PerChannel",
    "PerGroup",
    "PerTensor",
    "QuantSpec",
    "granularity_from_dict",
]

#: Estimator names accepted by ``LayerSpec.estimator``; implementations live in
#: ``rqcompile.quant.estimators`` (a table, not an if/else chain).
ESTIMATORS = ("ridge", "ste", "ridge_detached", "pege", "gdnsq")

#: Grid (stage-1 rule: ``s_f``, ``b_f`` and the 1-bit alphabet) names accepted by
#: ``QuantSpec.grid`` (docs/method.md#grids):
#:
#: * ``"minmax"``: the plain grid. Affine: ``b_f = min``, ``s_f = (max - min)/(2^b - 1)``, so at
#:   1 bit the codes are {0, 1} with the threshold at mid-range; symmetric:
#:   ``s_f = absmax/(2^(b-1) - 1)`` (ternary and 1-bit linear: ``s_f = absmax``).
#: * ``"bitnet"``: 1 bit and ternary only. Binary affine: ``b_f = mean``,
#:   ``s_f = mean|x - mean|``; binary linear and ternary: ``s_f = mean|x|`` (BitNet style).
#:
#: ``QuantSpec(grid=None)`` resolves to the format's default: ``"bitnet"`` at 1 and 1.5 bits,
#: ``"minmax"`` at 2..8 bits (the rules rqcompile used before grids had names).
GRIDS = ("minmax", "bitnet")

_BITS = (1, 1.5, 2, 3, 4, 5, 6, 7, 8)


@dataclass(frozen=True)
class PerTensor:
    """One scale/offset for the whole tensor (weights only)."""

    def __str__(self) -> str:
        return "per-tensor"


@dataclass(frozen=True)
class PerChannel:
    """One scale/offset per output channel (weights) or per token (activations), over all K."""

    def __str__(self) -> str:
        return "per-channel"


@dataclass(frozen=True)
class PerGroup:
    """One scale/offset per block of ``size`` contiguous elements along K (SCQ).

    If a layer's K is smaller than ``size`` the block is K; if K is larger but not a multiple,
    prepare raises a ``NumericsError`` naming the layer.
    """

    size: int = 128

    def __post_init__(self) -> None:
        if not isinstance(self.size, int) or isinstance(self.size, bool) or self.size < 1:
            raise ConfigError(
                f"PerGroup(size={self.size!r}): size must be a positive int, e.g. 128."
            )

    def __str__(self) -> str:
        return f"block={self.size}"


Granularity = Union[PerTensor, PerChannel, PerGroup]


def granularity_from_dict(d: dict[str, Any]) -> Granularity:
    kind = d.get("kind")
    if kind == "per-tensor":
        return PerTensor()
    if kind == "per-channel":
        return PerChannel()
    if kind == "per-group":
        return PerGroup(size=int(d["size"]))
    raise ConfigError(
        f"unknown granularity {d!r}; expected kind per-tensor, per-channel or per-group."
    )


def _granularity_to_dict(g: Granularity) -> dict[str, Any]:
    if isinstance(g, PerGroup):
        return {"kind": "per-group", "size": g.size}
    return {"kind": str(g)}


@dataclass(frozen=True)
class NMSparsity:
    """Keep the ``n`` largest-magnitude of every ``m`` consecutive weights along K (2:4 default)."""

    n: int = 2
    m: int = 4

    def __post_init__(self) -> None:
        if not (isinstance(self.n, int) and isinstance(self.m, int)) or not 0 < self.n < self.m:
            raise ConfigError(
                f"NMSparsity(n={self.n!r}, m={self.m!r}): need integers 0 < n < m, e.g. NMSparsity(2, 4)."
            )

    def __str__(self) -> str:
        return f"{self.n}:{self.m}"


@dataclass(frozen=True, kw_only=True)
class QuantSpec:
    """How one operand (weight or activation) is quantized.

    Formats (codes, grid; docs/method.md#grids):

    * ``bits=1``, ``grid="bitnet"`` (default): codes {-1,+1} = sign(z); affine
      (``symmetric=False``) centres on the block mean, scale mean|x - mean|.
    * ``bits=1``, ``grid="minmax"``: affine codes {0,1} = round((x - min)/(max - min)) (threshold
      at mid-range); symmetric codes sign(x) with scale absmax.
    * ``bits=1.5``: ternary codes clamp(round(x/s), -1, 1), s = mean|x| (``"bitnet"``, default)
      or s = absmax (``"minmax"``); always symmetric.
    * ``bits=b`` (2..8), affine: ``clamp(round((x - min)/s), 0, 2^b-1)``, s = (max-min)/(2^b-1).
    * ``bits=b``, symmetric: ``clamp(round(x/s), -(2^(b-1)-1), 2^(b-1)-1)``, s = absmax/(2^(b-1)-1).

    ``grid=None`` resolves to the format's default (:data:`GRIDS`), so a spec always names
    its grid.

    Example:
        >>> QuantSpec(bits=4, symmetric=False)
        QuantSpec(bits=4, symmetric=False, granularity=PerGroup(size=128), grid='minmax')
        >>> QuantSpec(bits=1, grid="minmax").short()
        'binary affine minmax block=128'
    """

    bits: float
    symmetric: bool = False
    granularity: Granularity = field(default_factory=PerGroup)
    grid: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.bits, bool) or self.bits not in _BITS:
            raise ConfigError(
                f"bits={self.bits!r} is not supported. Use 1 (binary), 1.5 (ternary) or an "
                f"integer 2..8."
            )
        if isinstance(self.bits, float) and self.bits != 1.5:
            object.__setattr__(self, "bits", int(self.bits))
        if self.bits == 1.5 and not self.symmetric:
            raise ConfigError("bits=1.5 (ternary) is symmetric by definition; pass symmetric=True.")
        if not isinstance(self.granularity, (PerTensor, PerChannel, PerGroup)):
            raise ConfigError(
                f"granularity={self.granularity!r}: use PerTensor(), PerChannel() or PerGroup(size)."
            )
        low = self.bits in (1, 1.5)
        if self.grid is None:
            object.__setattr__(self, "grid", "bitnet" if low else "minmax")
        elif self.grid not in GRIDS:
            raise ConfigError(
                f"grid={self.grid!r} is unknown; choose one of {', '.join(GRIDS)} "
                f"(or None for the format's default)."
            )
        elif self.grid == "bitnet" and not low:
            raise ConfigError(
                f"grid='bitnet' is defined for bits=1 and bits=1.5 only, got bits={self.bits}; "
                f"use grid='minmax' (the default at {self.bits} bits)."
            )

    @property
    def is_binary(self) -> bool:
        return self.bits == 1

    @property
    def is_ternary(self) -> bool:
        return self.bits == 1.5

    @property
    def storage_bits(self) -> int:
        """Bits one packed code occupies (ternary packs into 2)."""
        return 2 if self.bits == 1.5 else int(self.bits)

    def short(self) -> str:
        """Compact text, e.g. ``4b affine minmax block=128``."""
        if self.bits == 1:
            kind = "binary affine" if not self.symmetric else "binary linear"
        elif self.bits == 1.5:
            kind = "ternary"
        else:
            kind = f"{self.bits}b {'symmetric' if self.symmetric else 'affine'}"
        return f"{kind} {self.grid} {self.granularity}"

    @property
    def default_grid(self) -> bool:
        """True when :attr:`grid` is the format's default (see :data:`GRIDS`)."""
        return self.grid == ("bitnet" if self.bits in (1, 1.5) else "minmax")

    def to_dict(self) -> dict[str, Any]:
        return {
            "bits": self.bits,
            "symmetric": self.symmetric,
            "granularity": _granularity_to_dict(self.granularity),
            "grid": self.grid,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> QuantSpec:
        bits = d["bits"]
        return cls(
            bits=1.5 if bits == 1.5 else int(bits),
            symmetric=bool(d["symmetric"]),
            granularity=granularity_from_dict(d["granularity"]),
            grid=d.get("grid"),  # files written before grids had names: the default
        )


@dataclass(frozen=True, kw_only=True)
class LayerSpec:
    """How one layer is quantized. ``activation=None`` means weight-only (e.g. ``"W4"``).

    Example:
        >>> LayerSpec.from_preset("A4W1+2:4").weight.short()
        'binary linear bitnet block=128'
    """

    weight: QuantSpec
    activation: QuantSpec | None = None
    sparsity: NMSparsity | None = None
    estimator: str = "ridge"
    ridge_lambda: float = 0.01
    estimator_options: tuple[tuple[str, Any], ...] = ()
    """Options of the estimator (``pege``: ``ramp_steps``, ``gamma``; ``gdnsq``:
    ``anneal_steps``, ``start_bits``, ``penalty``, ``penalty_growth``, ``epoch_steps``; see
    docs/estimators.md). A dict is accepted and stored as sorted ``(name, value)`` pairs so
    the spec stays hashable."""

    def __post_init__(self) -> None:
        if self.estimator not in ESTIMATORS:
            raise ConfigError(
                f"estimator={self.estimator!r} is unknown; choose one of {', '.join(ESTIMATORS)}."
            )
        object.__setattr__(self, "estimator_options", self._check_options())
        lam = self.ridge_lambda
        if isinstance(lam, bool) or not isinstance(lam, (int, float)) or not lam >= 0:
            raise ConfigError(
                f"ridge_lambda={lam!r} must be a number >= 0 (the paper uses 0.01; 0 can give "
                f"NaN on constant blocks)."
            )
        object.__setattr__(self, "ridge_lambda", float(lam))
        if self.sparsity is not None and not self.weight.symmetric:
            raise ConfigError(
                f"{self.sparsity} sparsity needs symmetric (linear) weights so that a pruned slot "
                f"is exactly code 0 (docs/method.md#sparsity). Use QuantSpec(bits={self.weight.bits}, "
                f"symmetric=True) for the weight."
            )
        if self.activation is not None and isinstance(self.activation.granularity, PerTensor):
            raise ConfigError(
                "per-tensor activation quantization would make one token's codes depend on the "
                "rest of the batch; use PerChannel() (per token) or PerGroup(size) for activations."
            )

    def _check_options(self) -> tuple[tuple[str, Any], ...]:
        row = ESTIMATOR_TABLE[self.estimator]
        opts = self.estimator_options
        items = dict(opts.items() if isinstance(opts, dict) else opts)
        for name, value in items.items():
            if name not in row.options:
                known = ", ".join(row.options) or "none"
                raise ConfigError(
                    f"estimator_options: {name!r} is not an option of estimator="
                    f"{self.estimator!r} (its options: {known})."
                )
            want = type(row.options[name])
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
            if not ok or (want is int and not isinstance(value, int)):
                raise ConfigError(
                    f"estimator_options: {name}={value!r} must be a {want.__name__} "
                    f"(default {row.options[name]!r})."
                )
            items[name] = want(value)
        why = row.check(self) if row.check is not None else None
        if why:
            what = self.preset or self.weight.short()
            raise ConfigError(f"estimator={self.estimator!r} cannot quantize {what}: {why}.")
        return tuple(sorted(items.items()))

    @classmethod
    def from_preset(cls, name: str) -> LayerSpec:
        return PRESET_GRAMMAR["parse"](name)  # type: ignore[no-any-return]

    def with_grid(self, grid: str | None) -> LayerSpec:
        """This spec with ``grid`` on the weight and the activation (``None``: defaults).

        Example:
            >>> LayerSpec.from_preset("A1W1").with_grid("minmax").weight.grid
            'minmax'
        """
        act = self.activation
        return dataclasses.replace(
            self,
            weight=dataclasses.replace(self.weight, grid=grid),
            activation=None if act is None else dataclasses.replace(act, grid=grid),
        )

    @property
    def preset(self) -> str | None:
        """The preset name this spec equals, if any (e.g. ``"A4W1+2:4"``)."""
        return PRESET_GRAMMAR["name"](self)  # type: ignore[no-any-return]

    def short(self) -> str:
        name = self.preset
        head = name if name else f"W{_fmt_bits(self.weight.bits)}"
        parts = [head, f"W: {self.weight.short()}"]
        if self.activation is not None:
            parts.append(f"A: {self.activation.short()}")
        if self.sparsity is not None:
            parts.append(f"sparsity {self.sparsity}")
        parts.append(f"{self.estimator} λ={self.ridge_lambda:g}")
        parts += [f"{k}={v:g}" for k, v in self.estimator_options]
        return ", ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return {
            "weight": self.weight.to_dict(),
            "activation": None if self.activation is None else self.activation.to_dict(),
            "sparsity": None
            if self.sparsity is None
            else {"n": self.sparsity.n, "m": self.sparsity.m},
            "estimator": self.estimator,
            "ridge_lambda": self.ridge_lambda,
            "estimator_options": dict(self.estimator_options),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LayerSpec:
        sp = d.get("sparsity")
        act = d.get("activation")
        return cls(
            weight=QuantSpec.from_dict(d["weight"]),
            activation=None if act is None else QuantSpec.from_dict(act),
            sparsity=None if sp is None else NMSparsity(n=int(sp["n"]), m=int(sp["m"])),
            estimator=str(d.get("estimator", "ridge")),
            ridge_lambda=float(d.get("ridge_lambda", 0.01)),
            estimator_options=dict(d.get("estimator_options", {})),
        )


def _fmt_bits(b: float) -> str:
    return "1.5" if b == 1.5 else str(int(b))
