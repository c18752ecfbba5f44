"""Tensor types of the rq integer IR.

A :class:`TensorType` is a shape plus an element type spelled the MLIR way (``i8``, ``ui32``,
``f32``). A ``None`` dimension is dynamic and prints as ``?``, so ``TensorType((None, 256),
"f32")`` prints as ``tensor<?x256xf32>``.

Element types narrower than a byte (``i1``, ``i2``, ``i4``) describe *values*; when such a
tensor is stored as a constant it uses one byte per element (``torch.bool`` for ``i1``,
``torch.int8`` for ``i2``/``i4``). Packed layouts are spelled explicitly in the op catalogue
(for example ``ui8[N, K/2]`` for two 4-bit codes per byte).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from rqcompile.errors import VerifyError

__all__ = [
    "DTYPES",
    "Dim",
    "TensorType",
    "dtype_of_torch",
    "torch_dtype",
]

#: Element types the IR knows, in MLIR spelling.
DTYPES: tuple[str, ...] = ("i1", "i2", "i4", "i8", "ui8", "i32", "ui32", "i64", "f32")

#: A dimension: a non-negative size, or ``None`` for a dynamic (run-time) size.
Dim = int | None

# IR dtype -> torch dtype used to *store* a constant of that element type.
_STORAGE: dict[str, torch.dtype] = {
    "i1": torch.bool,
    "i2": torch.int8,
    "i4": torch.int8,
    "i8": torch.int8,
    "ui8": torch.uint8,
    "i32": torch.int32,
    "ui32": torch.uint32,
    "i64": torch.int64,
    "f32": torch.float32,
}
# torch dtype -> its natural IR dtype (the inverse for full-width types).
_FROM_TORCH: dict[torch.dtype, str] = {
    torch.bool: "i1",
    torch.int8: "i8",
    torch.uint8: "ui8",
    torch.int32: "i32",
    torch.uint32: "ui32",
    torch.int64: "i64",
    torch.float32: "f32",
}

_TYPE_RE = re.compile(r"tensor<((?:(?:\?|\d+)x)*)([a-z]+\d+)>", re.ASCII)
#: limits on parsed types: rank, and the largest dimension / element count (2**48)
MAX_RANK = 16
MAX_DIM = 1 << 48


def torch_dtype(dtype: str) -> torch.dtype:
    """Return the torch dtype that stores constants of IR element type ``dtype``.

    Args:
        dtype: An IR element type from :data:`DTYPES`.

    Returns:
        The storage dtype (``i2`` and ``i4`` are stored unpacked as ``torch.int8``).

    Raises:
        VerifyError: If ``dtype`` is not an IR element type.

    Example:
        >>> torch_dtype("i4")
        torch.int8
    """
    _check_dtype(dtype)
    return _STORAGE[dtype]


def dtype_of_torch(dtype: torch.dtype) -> str:
    """Return the IR element type for a torch dtype (the inverse of :func:`torch_dtype`).

    Args:
        dtype: One of bool, int8, uint8, int32, uint32, int64, float32.

    Returns:
        The IR spelling, e.g. ``"i8"`` for ``torch.int8``.

    Raises:
        VerifyError: If the IR has no element type for ``dtype``.

    Example:
        >>> dtype_of_torch(torch.float32)
        'f32'
    """
    try:
        return _FROM_TORCH[dtype]
    except KeyError:
        supported = ", ".join(str(d) for d in _FROM_TORCH)
        raise VerifyError(
            f"torch dtype {dtype} has no rq IR element type; supported: {supported}. "
            f"Convert the tensor first (e.g. .float() or .to(torch.int8))."
        ) from None


def _check_dtype(dtype: object) -> None:
    if not isinstance(dtype, str) or dtype not in DTYPES:
        raise VerifyError(
            f"unknown element type {dtype!r}; the rq IR supports {', '.join(DTYPES)}."
        )


@dataclass(frozen=True)
class TensorType:
    """The type of an IR value: a shape (``None`` = dynamic dim) and an element type.

    Attributes:
        shape: One entry per dimension; an ``int >= 0`` or ``None`` for a dynamic size.
        dtype: Element type from :data:`DTYPES`.

    Example:
        >>> str(TensorType((None, 256), "f32"))
        'tensor<?x256xf32>'
        >>> str(TensorType((), "i32"))
        'tensor<i32>'
    """

    shape: tuple[Dim, ...]
    dtype: str

    def __post_init__(self) -> None:
        if not isinstance(self.shape, tuple):
            if isinstance(self.shape, (list, torch.Size)):
                object.__setattr__(self, "shape", tuple(self.shape))
            else:
                raise VerifyError(f"TensorType shape must be a tuple, got {self.shape!r}.")
        for d in self.shape:
            if d is not None and (type(d) is not int or d < 0):
                raise VerifyError(
                    f"bad dimension {d!r} in shape {self.shape!r}: use an int >= 0, "
                    f"or None for a dynamic dimension."
                )
        _check_dtype(self.dtype)

    def __str__(self) -> str:
        dims = "".join(("?" if d is None else str(d)) + "x" for d in self.shape)
        return f"tensor<{dims}{self.dtype}>"

    @property
    def rank(self) -> int:
        """Number of dimensions."""
        return len(self.shape)

    @property
    def is_static(self) -> bool:
        """True when no dimension is dynamic."""
        return all(d is not None for d in self.shape)

    @property
    def numel(self) -> int | None:
        """Number of elements, or ``None`` if a dimension is dynamic."""
        n = 1
        for d in self.shape:
            if d is None:
                return None
            n *= d
        return n

    def with_shape(self, shape: tuple[Dim, ...]) -> TensorType:
        """Return a copy with another shape."""
        return TensorType(tuple(shape), self.dtype)

    def with_dtype(self, dtype: str) -> TensorType:
        """Return a copy with another element type."""
        return TensorType(self.shape, dtype)

    @classmethod
    def parse(cls, text: str) -> TensorType:
        """Parse the printed form, e.g. ``tensor<?x256xf32>``.

        Args:
            text: The exact text produced by ``str(TensorType(...))``.

        Returns:
            The parsed type.

        Raises:
            VerifyError: If ``text`` is not a tensor type.

        Example:
            >>> TensorType.parse("tensor<?x4xi8>")
            TensorType(shape=(None, 4), dtype='i8')
        """
        m = _TYPE_RE.fullmatch(text)
        if m is None:
            raise VerifyError(f"cannot parse tensor type {text!r}; expected e.g. tensor<?x4xf32>.")
        dims = m.group(1).split("x")[:-1] if m.group(1) else []
        if len(dims) > MAX_RANK:
            raise VerifyError(f"tensor type {text[:60]!r} has rank {len(dims)}, over {MAX_RANK}.")
        if any(len(d) > 15 for d in dims):  # int() of a 5000-digit string is slow and raises
            raise VerifyError(f"tensor type {text[:60]!r}: a dimension is too large.")
        shape = tuple(None if d == "?" else int(d) for d in dims)
        numel = 1
        for d in shape:
            numel *= d or 1
        if numel > MAX_DIM:
            raise VerifyError(
                f"tensor type {text[:60]!r} has {numel} elements, over the limit {MAX_DIM}."
            )
        return cls(shape, m.group(2))

    @classmethod
    def of(cls, tensor: torch.Tensor) -> TensorType:
        """Return the static type of a torch tensor.

        Example:
            >>> str(TensorType.of(torch.zeros(2, 3, dtype=torch.int8)))
            'tensor<2x3xi8>'
        """
        return cls(tuple(int(d) for d in tensor.shape), dtype_of_torch(tensor.dtype))
