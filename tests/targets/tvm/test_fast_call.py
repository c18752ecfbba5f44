"""The one-function common call (``runtime._VMRunner.fast_call``): the same bits as the full
path for a plain input, and ``None`` (the full path takes over) for anything else."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import rqcompile as rq
from rqcompile.errors import InputError

pytestmark = pytest.mark.tvm


@pytest.fixture(scope="module")
def exe():
    torch.manual_seed(0)
    lin = nn.Sequential(nn.Linear(64, 32, bias=False)).eval()
    x = torch.randn(3, 64)
    built = rq.build(rq.convert(rq.prepare(lin, (x,), "A8W8").eval(), example_inputs=(x,)),
                     target="llvm")  # fmt: skip
    if built._fast_call is None or built._runner._finite is None:
        pytest.skip("no C compiler here: calls take the full path")
    return built


def test_plain_input_gives_the_full_paths_bits(exe) -> None:
    x = torch.randn(3, 64)
    (fast,) = exe._fast_call((x,), exe._fast_expect)
    (full,) = exe._runner(x)
    assert torch.equal(fast, full) and torch.equal(exe(x), full)


def _offset(x: torch.Tensor) -> torch.Tensor:
    """``x``'s values in memory 4 bytes past a 64-byte boundary."""
    buf = torch.empty(x.numel() + 16)
    view = buf[1 : 1 + x.numel()].view(x.shape)
    view.copy_(x)
    assert view.data_ptr() % 64
    return view


@pytest.mark.parametrize("make", [
    pytest.param(lambda x: x.clone().requires_grad_(), id="requires_grad"),
    pytest.param(lambda x: x.t().contiguous().t(), id="non_contiguous"),
    pytest.param(_offset, id="under_aligned"),
    pytest.param(lambda x: x.double(), id="other_dtype"),
    pytest.param(lambda x: x[:2], id="other_shape"),
])  # fmt: skip
def test_unusual_inputs_go_the_full_way_with_the_same_result(exe, make) -> None:
    x = torch.randn(3, 64)
    y = make(x)
    assert exe._fast_call((y,), exe._fast_expect) is None
    if y.shape == x.shape and y.dtype == x.dtype:  # runs after a copy: the same bits
        assert torch.equal(exe(y), exe(x))
    else:
        with pytest.raises(InputError):
            exe(y)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_a_non_finite_input_is_named_not_run(exe, bad: float) -> None:
    x = torch.randn(3, 64)
    x[2, 17] = bad
    assert exe._fast_call((x,), exe._fast_expect) is None
    with pytest.raises(InputError, match="NaN/Inf"):
        exe(x)


def test_wrong_count_or_a_non_tensor_goes_the_full_way(exe) -> None:
    x = torch.randn(3, 64)
    assert exe._fast_call((x, x), exe._fast_expect) is None
    assert exe._fast_call((x.numpy(),), exe._fast_expect) is None
    with pytest.raises(InputError):
        exe(x, x)


def test_the_serial_threshold_is_read_at_each_call(exe, monkeypatch) -> None:
    """The thread count of a plain call follows ``threads.SERIAL_BELOW`` as it is now (the
    parallel tests lower it to 0 to run tiny models on several threads)."""
    from rqcompile.targets.tvm import runtime, threads

    x = torch.randn(3, 64)
    exe.threads = 2
    try:
        monkeypatch.setattr(threads, "SERIAL_BELOW", 0)
        exe(x)
        assert runtime._set_threads._local.n == min(2, exe._runner._pool)
        monkeypatch.setattr(threads, "SERIAL_BELOW", 1 << 62)
        exe(x)
        assert runtime._set_threads._local.n == 1
    finally:
        exe.threads = None
