"""TensorType: printing, parsing, validation and the torch dtype mapping."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from rqcompile.errors import VerifyError
from rqcompile.ir.types import DTYPES, TensorType, dtype_of_torch, torch_dtype


@pytest.mark.parametrize(
    ("shape", "dtype", "text"),
    [
        ((None, 256), "f32", "tensor<?x256xf32>"),
        ((), "f32", "tensor<f32>"),
        ((0, 4), "i8", "tensor<0x4xi8>"),
        ((2, None, None), "ui32", "tensor<2x?x?xui32>"),
        ((1,), "i1", "tensor<1xi1>"),
    ],
)
def test_str_and_parse(shape: tuple[int | None, ...], dtype: str, text: str) -> None:
    t = TensorType(shape, dtype)
    assert str(t) == text
    assert TensorType.parse(text) == t


@pytest.mark.parametrize("dtype", DTYPES)
def test_every_dtype_round_trips(dtype: str) -> None:
    t = TensorType((3, None), dtype)
    assert TensorType.parse(str(t)) == t


@pytest.mark.parametrize("dtype", ["f16", "int8", "u8", "", None, "F32"])
def test_unknown_dtype_is_a_verify_error(dtype: object) -> None:
    with pytest.raises(VerifyError, match="unknown element type"):
        TensorType((1,), dtype)  # type: ignore[arg-type]


@pytest.mark.parametrize("dim", [-1, 1.0, True, "3"])
def test_bad_dims(dim: object) -> None:
    with pytest.raises(VerifyError, match="bad dimension"):
        TensorType((dim,), "f32")  # type: ignore[arg-type]


def test_shape_must_be_a_sequence() -> None:
    with pytest.raises(VerifyError, match="must be a tuple"):
        TensorType(3, "f32")  # type: ignore[arg-type]


def test_list_and_size_shapes_become_tuples() -> None:
    assert TensorType([2, None], "f32").shape == (2, None)  # type: ignore[arg-type]
    assert TensorType(torch.Size([2, 3]), "f32").shape == (2, 3)  # type: ignore[arg-type]


def test_frozen_and_hashable() -> None:
    t = TensorType((2,), "f32")
    with pytest.raises(dataclasses.FrozenInstanceError):
        t.dtype = "i8"  # type: ignore[misc]
    assert {t, TensorType((2,), "f32")} == {t}


def test_properties() -> None:
    t = TensorType((None, 4), "f32")
    assert (t.rank, t.is_static, t.numel) == (2, False, None)
    s = TensorType((3, 4), "i8")
    assert (s.rank, s.is_static, s.numel) == (2, True, 12)
    assert TensorType((), "f32").numel == 1
    assert s.with_dtype("f32") == TensorType((3, 4), "f32")
    assert s.with_shape((12,)) == TensorType((12,), "i8")


@pytest.mark.parametrize(
    "text", ["tensor<>", "tensor<4xf64>", "tensor<axf32>", "f32", "tensor<4x>"]
)
def test_parse_errors(text: str) -> None:
    with pytest.raises(VerifyError):
        TensorType.parse(text)


def test_torch_dtype_mapping() -> None:
    assert torch_dtype("i4") == torch.int8
    assert torch_dtype("i2") == torch.int8
    assert torch_dtype("i1") == torch.bool
    assert torch_dtype("ui32") == torch.uint32
    for d in ("i1", "i8", "ui8", "i32", "ui32", "i64", "f32"):
        assert dtype_of_torch(torch_dtype(d)) == d
    with pytest.raises(VerifyError, match="no rq IR element type"):
        dtype_of_torch(torch.float64)
    with pytest.raises(VerifyError):
        torch_dtype("f64")


def test_of_tensor() -> None:
    assert TensorType.of(torch.zeros(2, 3, dtype=torch.int32)) == TensorType((2, 3), "i32")
    assert str(TensorType.of(torch.tensor(1.0))) == "tensor<f32>"
