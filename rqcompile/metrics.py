"""Cost metrics from the paper (docs/method.md#metrics): energy proxy and effective bits per element.

* Energy proxy (a first-order lower bound on arithmetic energy; ignores data movement):
  ``E = (1 - sparsity) × ActBits × WeightBits × MACs``; unquantized operands count 16 bits.
* Effective bits per element (weights): ``BPE = ρ·b + (m_s + m_o)/B + ρ·b_idx`` with bf16
  metadata (16 bits per stored scale/offset), density ρ and 2-bit indices for 2:4.
"""

from __future__ import annotations

from rqcompile.config.spec import LayerSpec, PerTensor, QuantSpec

__all__ = ["FLOAT_BITS", "bits_per_element", "energy_units"]

FLOAT_BITS = 16  # the paper's baseline precision for unquantized operands (BF16)


def _density(spec: LayerSpec) -> float:
    return 1.0 if spec.sparsity is None else spec.sparsity.n / spec.sparsity.m


def bits_per_element(spec: LayerSpec | None, block: int, *, with_indices: bool = True) -> float:
    """Stored bits per weight element including per-block metadata (docs/method.md#metrics)."""
    if spec is None:
        return float(FLOAT_BITS)
    w: QuantSpec = spec.weight
    rho = _density(spec)
    code_bits = w.storage_bits
    meta_bits = 16 if w.symmetric else 32  # scale (+ offset for affine)
    per_block = 0.0 if isinstance(w.granularity, PerTensor) else meta_bits / block
    idx = 0.0
    if spec.sparsity is not None and with_indices:
        idx = rho * max(1, (spec.sparsity.m - 1).bit_length())
    return rho * code_bits + per_block + idx


def energy_units(spec: LayerSpec | None, macs: int) -> float:
    """``(1 - sparsity) × ActBits × WeightBits × MACs`` (16 bits for float operands)."""
    if spec is None:
        return float(FLOAT_BITS * FLOAT_BITS * macs)
    abits = FLOAT_BITS if spec.activation is None else spec.activation.bits
    return _density(spec) * abits * spec.weight.bits * macs
