"""The C per-call finiteness check (``targets/tvm/finite.c``) against numpy's answer."""

from __future__ import annotations

import pytest
import torch

from rqcompile.targets.tvm.finite import all_finite

pytestmark = pytest.mark.tvm


@pytest.fixture
def check():
    fn = all_finite()
    if fn is None:
        pytest.skip("no C compiler here: inputs are checked with numpy")
    return fn


def _c(fn, x: torch.Tensor) -> int:
    return fn(x.data_ptr(), x.numel(), x.element_size())


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32, torch.float64])
@pytest.mark.parametrize("n", [0, 1, 7, 64, 1000, 65537])
def test_every_position_of_nan_and_inf_is_seen(check, dtype: torch.dtype, n: int) -> None:
    torch.manual_seed(n)
    x = torch.randn(n).to(dtype)
    assert _c(check, x) == 1
    big = torch.full((n,), torch.finfo(dtype).max, dtype=dtype)  # the largest finite values
    assert _c(check, big) == 1 and _c(check, -big) == 1
    tiny = torch.full((n,), torch.finfo(dtype).tiny / 4, dtype=dtype)  # subnormals
    assert _c(check, tiny) == 1
    for pos in {0, n // 2, n - 1} if n else set():
        for bad in (float("nan"), float("inf"), float("-inf")):
            y = x.clone()
            y[pos] = bad
            assert _c(check, y) == 0, (pos, bad)
            assert bool(torch.isfinite(y).all()) is False


def test_other_element_sizes_are_refused(check) -> None:
    x = torch.zeros(4, dtype=torch.int8)
    assert check(x.data_ptr(), x.numel(), 1) == -1


def test_a_view_at_an_offset_is_checked_from_its_own_start(check) -> None:
    x = torch.randn(100)
    x[10] = float("nan")
    assert _c(check, x[11:]) == 1 and _c(check, x[10:]) == 0 and _c(check, x[:10]) == 1
