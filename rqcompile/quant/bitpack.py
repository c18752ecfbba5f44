"""Bit packing of integer codes: sign bits, 4-bit nibbles, 2:4 sparse values + indices.

Pure torch (no fx, no tvm). These are the storage layouts that the integer IR ops and the
TVM kernels read; :mod:`rqcompile.quant.reference` unpacks them to define op semantics.
K is always the last dimension; every function works on any number of leading dims.

Layouts (bit 0 is the least significant bit):

* **Sign bits** (``bits=1``, codes ±1) — ``uint32 [..., K/32]``. Element ``k`` is bit
  ``k % 32`` of word ``k // 32``; bit 1 ↔ code +1, bit 0 ↔ code -1. ``K % 32 == 0``.
  A ±1 dot product over ``n`` elements is ``2·popcount(XNOR(a, b)) - n`` and a code sum is
  ``2·popcount(a) - n`` (docs/method.md#binary-popcount).
* **Nibbles** (weights with ``bits <= 4``) — ``uint8 [..., K/2]``. Element ``2t`` is the low
  nibble of byte ``t``, element ``2t+1`` the high nibble. Signed codes are stored as 4-bit
  two's complement (-8..7) and sign-extended when unpacked; unsigned codes (0..15) are
  zero-extended. ``K % 2 == 0``.
* **2:4 sparse** (weights) — per group ``g`` of 4 consecutive K-elements exactly two slots are
  kept: the non-zero ones, padded with the lowest-index zero slots when a group has fewer
  than two non-zeros (a pruned slot is code 0, docs/method.md#sparse-24-storage).

  - ``vals`` ``int8 [..., K/2]``: ``vals[..., 2g + t]`` is the code of the ``t``-th kept slot
    of group ``g`` (``t = 0, 1``, kept slots in ascending index order).
  - ``idx`` ``uint8 [..., K/8]``: the in-group index (0..3) of kept slot ``t`` of group ``g``
    is the 2-bit field at bit ``4·(g % 2) + 2·t`` of byte ``g // 2``. So one byte holds the
    four indices of groups ``2h`` (low nibble) and ``2h+1`` (high nibble), LSB first.
    ``K % 8 == 0``.

  The product against dense activations is ``P = Σ_g Σ_t x[4g + idx(g,t)] · vals[2g+t]``.
* **8-bit affine shift** — affine 8-bit codes 0..255 are stored as ``int8`` ``code - 128``
  with ``offset += 128·scale`` so the dequantized ``scale·code + offset`` is unchanged up to
  one float32 rounding of the offset (docs/method.md#the-affine-shortcut: codes shifted by a constant leave the
  ridge fit and the matmul unchanged).
"""

from __future__ import annotations

import torch

from rqcompile.errors import NumericsError

__all__ = [
    "pack_nibbles",
    "pack_signs",
    "pack_sparse24",
    "shift_affine8",
    "unpack_nibbles",
    "unpack_signs",
    "unpack_sparse24",
]

_WORD = 32


def _check_last(t: torch.Tensor, multiple: int, what: str) -> int:
    if t.dim() == 0:
        raise NumericsError(
            f"{what}: expected a tensor with K as its last dimension, got a scalar."
        )
    k = t.shape[-1]
    if k % multiple:
        raise NumericsError(f"{what}: K={k} must be a multiple of {multiple}.")
    return k


def pack_signs(codes: torch.Tensor) -> torch.Tensor:
    """Pack ±1 codes ``[..., K]`` into ``uint32 [..., K/32]`` (bit 1 ↔ +1, LSB first).

    Args:
        codes: values in {-1, +1} (any real or integer dtype); ``K % 32 == 0``.

    Returns:
        ``torch.uint32`` words.

    Raises:
        NumericsError: on a code outside {-1, +1} or ``K % 32 != 0``.

    Example:
        >>> w = pack_signs(torch.tensor([1, -1, 1] + [-1] * 29))
        >>> int(w[0])
        5
    """
    k = _check_last(codes, _WORD, "pack_signs")
    if not bool(((codes == 1) | (codes == -1)).all()):
        raise NumericsError("pack_signs: codes must be exactly -1 or +1.")
    bits = (codes == 1).to(torch.int64).reshape(*codes.shape[:-1], k // _WORD, _WORD)
    weights = torch.ones(_WORD, dtype=torch.int64) << torch.arange(_WORD, dtype=torch.int64)
    return (bits * weights).sum(-1).to(torch.uint32)


def unpack_signs(words: torch.Tensor, k: int | None = None) -> torch.Tensor:
    """Inverse of :func:`pack_signs`: ``uint32 [..., K/32]`` → ``int8 [..., K]`` of ±1.

    Args:
        words: packed words (``uint32``; ``int32``/``int64`` holding the same bits also work).
        k: number of elements to return (default ``32 * words.shape[-1]``).

    Example:
        >>> unpack_signs(torch.tensor([5], dtype=torch.uint32))[:4].tolist()
        [1, -1, 1, -1]
    """
    w = words.to(torch.int64) & 0xFFFFFFFF
    shifts = torch.arange(_WORD, dtype=torch.int64)
    bits = (w.unsqueeze(-1) >> shifts) & 1
    out = (2 * bits - 1).to(torch.int8).reshape(*words.shape[:-1], words.shape[-1] * _WORD)
    return out if k is None else out[..., :k]


def pack_nibbles(codes: torch.Tensor, *, signed: bool) -> torch.Tensor:
    """Pack 4-bit codes ``[..., K]`` into ``uint8 [..., K/2]`` (element 2t low, 2t+1 high).

    Args:
        codes: integer-valued codes; -8..7 when ``signed`` else 0..15. ``K`` even.
        signed: store two's-complement nibbles (sign-extended by :func:`unpack_nibbles`).

    Raises:
        NumericsError: on an out-of-range code or odd K.

    Example:
        >>> pack_nibbles(torch.tensor([-1, 2]), signed=True).tolist()
        [47]
    """
    _check_last(codes, 2, "pack_nibbles")
    c = codes.to(torch.int64)
    lo, hi = (-8, 7) if signed else (0, 15)
    if c.numel() and (int(c.min()) < lo or int(c.max()) > hi):
        kind = "signed" if signed else "unsigned"
        raise NumericsError(f"pack_nibbles: {kind} 4-bit codes must lie in [{lo}, {hi}].")
    c = c & 0xF
    return (c[..., 0::2] | (c[..., 1::2] << 4)).to(torch.uint8)


def unpack_nibbles(packed: torch.Tensor, *, signed: bool) -> torch.Tensor:
    """Inverse of :func:`pack_nibbles`: ``uint8 [..., K/2]`` → ``int8 [..., K]``.

    Example:
        >>> unpack_nibbles(torch.tensor([47], dtype=torch.uint8), signed=True).tolist()
        [-1, 2]
    """
    p = packed.to(torch.int64)
    nib = torch.stack([p & 0xF, (p >> 4) & 0xF], dim=-1)
    if signed:
        nib = nib - ((nib & 0x8) << 1)  # sign-extend bit 3
    return nib.reshape(*packed.shape[:-1], packed.shape[-1] * 2).to(torch.int8)


def pack_sparse24(codes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Pack 2:4-sparse codes ``[..., K]`` into ``(vals int8 [..., K/2], idx uint8 [..., K/8])``.

    Each group of 4 must have at most 2 non-zero codes. Kept slots are the non-zeros in
    ascending index order, padded with the lowest-index zero slots (layout in module doc).

    Raises:
        NumericsError: a group with more than 2 non-zeros, or ``K % 8 != 0``.

    Example:
        >>> v, i = pack_sparse24(torch.tensor([1, 0, 1, 0, 0, 0, 0, -1]))
        >>> v.tolist(), i.tolist()
        ([1, 1, 0, -1], [200])
    """
    k = _check_last(codes, 8, "pack_sparse24")
    c = codes.to(torch.int64)
    g = c.reshape(*c.shape[:-1], k // 4, 4)
    nz = g != 0
    if bool((nz.sum(-1) > 2).any()):
        raise NumericsError(
            "pack_sparse24: a group of 4 consecutive codes has more than 2 non-zeros; "
            "apply the 2:4 mask before packing."
        )
    # Sort key: non-zeros first, then by index; stable, so ties keep ascending index.
    slot = torch.arange(4, dtype=torch.int64)
    key = (~nz).to(torch.int64) * 4 + slot
    order = key.argsort(dim=-1)[..., :2]
    order = order.sort(dim=-1).values  # kept slots in ascending index order
    vals = g.gather(-1, order)
    idx = order.reshape(*c.shape[:-1], k // 8, 4)  # (g even: t0, t1, g odd: t0, t1)
    byte = idx[..., 0] | (idx[..., 1] << 2) | (idx[..., 2] << 4) | (idx[..., 3] << 6)
    return vals.reshape(*c.shape[:-1], k // 2).to(torch.int8), byte.to(torch.uint8)


def unpack_sparse24(vals: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`pack_sparse24`: dense ``int8 [..., K]`` codes (pruned slots 0).

    Example:
        >>> v, i = pack_sparse24(torch.tensor([0, 3, 0, 0, 0, 0, -2, 5]))
        >>> unpack_sparse24(v, i).tolist()
        [0, 3, 0, 0, 0, 0, -2, 5]
    """
    half = vals.shape[-1]
    if half % 4 or idx.shape[-1] * 4 != half:
        raise NumericsError(
            f"unpack_sparse24: vals [..., {half}] and idx [..., {idx.shape[-1]}] do not "
            "describe the same K (need vals K/2 and idx K/8)."
        )
    ngroups = half // 2
    b = idx.to(torch.int64)
    fields = torch.stack([(b >> s) & 3 for s in (0, 2, 4, 6)], dim=-1)
    pos = fields.reshape(*idx.shape[:-1], ngroups, 2)
    v = vals.to(torch.int64).reshape(*vals.shape[:-1], ngroups, 2)
    out = torch.zeros(*vals.shape[:-1], ngroups, 4, dtype=torch.int64)
    out.scatter_add_(-1, pos, v)
    return out.reshape(*vals.shape[:-1], ngroups * 4).to(torch.int8)


def shift_affine8(
    codes: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Store 8-bit affine codes 0..255 as ``int8`` ``code - 128``, moving 128·scale to the offset.

    ``scale·(code - 128) + (offset + 128·scale) == scale·code + offset`` exactly in real
    arithmetic; the new float32 offset carries one rounding (``128·scale`` itself is exact).

    Args:
        codes: integer-valued codes in 0..255, ``[..., K]``.
        scale: per-block scale ``f32 [..., nb]``.
        offset: per-block offset ``f32 [..., nb]``.

    Returns:
        ``(int8 codes, scale, offset + 128·scale)``.

    Example:
        >>> scale, offset = torch.tensor([0.5]), torch.tensor([1.0])
        >>> c, s, o = shift_affine8(torch.tensor([0.0, 255.0]), scale, offset)
        >>> c.tolist(), o.tolist()
        ([-128, 127], [65.0])
    """
    c = codes.to(torch.int64)
    # The range check reads values, which torch.export (MLIR export traces rq.quantize with
    # it) cannot; codes there come from the clamp just before, so skipping it loses nothing.
    if c.numel() and not torch.compiler.is_exporting() and (int(c.min()) < 0 or int(c.max()) > 255):
        raise NumericsError("shift_affine8: 8-bit affine codes must lie in [0, 255].")
    return (c - 128).to(torch.int8), scale, offset + 128.0 * scale
