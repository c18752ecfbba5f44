"""Preset strings in the paper's notation, and the only place preset defaults live.

Grammar: ``A<a>W<w>`` or ``W<w>``, optionally followed by ``+<n>:<m>``; bit widths 1..8 or 1.5
(ternary). ``A`` = activations, ``W`` = weights, the suffix = N:M weight sparsity.

Defaults (docs/method.md#grids and #which-format-goes-where):

* blocks of 128 along K (SCQ128) for weights and activations;
* 1, 2..8 bits affine; 1.5 bits (ternary) symmetric;
* an N:M-sparse weight is symmetric (linear), so pruned slots are code 0;
* estimator ``ridge``, λ = 0.01.
"""

from __future__ import annotations

import difflib
import re

from rqcompile.config.spec import PRESET_GRAMMAR, LayerSpec, NMSparsity, PerGroup, QuantSpec
from rqcompile.errors import ConfigError

__all__ = ["DEFAULT_BLOCK", "PRESETS", "parse_preset", "preset_name"]

DEFAULT_BLOCK = 128

#: The presets documented in the README (any string matching the grammar also works).
PRESETS = ("A8W8", "A4W4", "A2W2", "A1W1", "A1.5W1.5", "A4W1", "A4W1+2:4", "A4W4+2:4", "W8", "W4")

_GRAMMAR = re.compile(r"^(?:A(\d(?:\.5)?))?W(\d(?:\.5)?)(?:\+(\d+):(\d+))?$")


def _bits(text: str, name: str) -> float:
    value = float(text)
    if value == 1.5:
        return 1.5
    if value != int(value) or not 1 <= value <= 8:
        raise ConfigError(f"preset {name!r}: bit width {text} must be 1..8 or 1.5 (ternary).")
    return int(value)


def _spec(bits: float, *, sparse: bool) -> QuantSpec:
    return QuantSpec(
        bits=bits, symmetric=bits == 1.5 or sparse, granularity=PerGroup(DEFAULT_BLOCK)
    )


def parse_preset(name: str) -> LayerSpec:
    """Turn a preset string into a :class:`LayerSpec`.

    Example:
        >>> parse_preset("A1W1").weight.bits
        1
    """
    if not isinstance(name, str):
        raise ConfigError(f"a preset must be a string like 'A4W4', got {type(name).__name__}.")
    m = _GRAMMAR.match(name.strip())
    if m is None:
        close = difflib.get_close_matches(name, PRESETS, n=1, cutoff=0.5)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ConfigError(
            f"unknown preset {name!r}.\nPresets look like A<bits>W<bits> or W<bits>, optionally "
            f"+<n>:<m>; bits 1..8 or 1.5 (ternary). Known: {', '.join(PRESETS)}.{hint}"
        )
    a, w, n, mm = m.groups()
    sparsity = NMSparsity(n=int(n), m=int(mm)) if n is not None else None
    wbits = _bits(w, name)
    abits = None if a is None else _bits(a, name)
    return LayerSpec(
        weight=_spec(wbits, sparse=sparsity is not None),
        activation=None if abits is None else _spec(abits, sparse=False),
        sparsity=sparsity,
    )


def _fmt(b: float) -> str:
    return "1.5" if b == 1.5 else str(int(b))


def preset_name(spec: LayerSpec) -> str | None:
    """The preset string that :func:`parse_preset` maps to ``spec`` (ignoring estimator/λ)."""
    name = f"W{_fmt(spec.weight.bits)}"
    if spec.activation is not None:
        name = f"A{_fmt(spec.activation.bits)}" + name
    if spec.sparsity is not None:
        name += f"+{spec.sparsity.n}:{spec.sparsity.m}"
    base = parse_preset(name)
    same = (
        base.weight == spec.weight
        and base.activation == spec.activation
        and base.sparsity == spec.sparsity
    )
    return name if same else None


PRESET_GRAMMAR["parse"] = parse_preset
PRESET_GRAMMAR["name"] = preset_name
