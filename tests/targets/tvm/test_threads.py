"""Threads of the TVM CPU kernels: all cores by default, ``threads=`` overrides, same results."""

from __future__ import annotations

import os

import pytest
import torch

pytestmark = pytest.mark.tvm


def test_environment_defaults_leave_user_settings_alone() -> None:
    from rqcompile.targets.tvm import threads

    env = threads.configure_environment()
    assert set(env) == {"TVM_NUM_THREADS", "TVM_BIND_THREADS"}
    assert all(os.environ[k] == v for k, v in env.items())
    assert threads.pool_size() >= 1


def test_threads_for_call_follows_torch_and_stays_serial_when_small() -> None:
    from rqcompile.targets.tvm.threads import SERIAL_BELOW, pool_size, threads_for_call

    big = max(SERIAL_BELOW, 1) * 4
    assert threads_for_call(None, big) == min(torch.get_num_threads(), pool_size())
    assert threads_for_call(1, big) == 1
    assert threads_for_call(10_000, big) == pool_size()
    if SERIAL_BELOW > 0:
        assert threads_for_call(8, SERIAL_BELOW - 1) == 1


@pytest.mark.parametrize(("shape", "dtype", "rows"),
                         [((2, 16), torch.float32, 2), ((3, 5, 16), torch.float32, 15),
                          ((16,), torch.float32, 1), ((2, 8), torch.int64, 16)])  # fmt: skip
def test_static_rows_are_the_rows_a_call_would_count(shape, dtype, rows) -> None:
    """The serial threshold's rows, read once from the IR type for static shapes
    (``runtime._static_rows``), equal what the call would count from the tensor: float
    activations count every dim but the last, token ids every token (an IR ``f32`` is a
    float, not a token id)."""
    from rqcompile.ir import types as T
    from rqcompile.targets.tvm.runtime import _rows, _static_rows

    x = torch.zeros(shape, dtype=dtype)
    assert _rows(tuple(x.shape), x.is_floating_point()) == rows

    class _Arg:
        type = T.TensorType(shape, {torch.float32: "f32", torch.int64: "i64"}[dtype])

    class _Ir:
        class main:  # noqa: N801
            args = (_Arg(),)

    assert _static_rows(_Ir()) == rows


def test_thread_setter_calls_tvm_only_on_change() -> None:
    from rqcompile.targets.tvm.threads import ThreadSetter

    calls: list[tuple[int, int]] = []
    s = ThreadSetter(lambda mode, n: calls.append((mode, n)))
    s(2)
    s(2)
    s(1)
    assert calls == [(1, 2), (1, 1)]


def test_threads_option_keeps_results_bit_exact(monkeypatch: pytest.MonkeyPatch) -> None:
    import rqcompile as rq
    from rqcompile.targets.tvm import threads
    from rqcompile.testing.models import TinyMLP

    monkeypatch.setattr(threads, "SERIAL_BELOW", 0)  # a tiny model: parallel all the same

    x = torch.randn(64, 64)
    ir = rq.convert(rq.prepare(TinyMLP(), (x,), "A4W4").eval())
    exe = rq.build(ir, "llvm", threads=1)
    assert exe.threads == 1
    one = exe(x)
    exe.threads = None
    assert torch.equal(exe(x), one)
    exe.threads = 2
    assert torch.equal(exe(x), one)
    with pytest.raises(ValueError, match="positive int"):
        exe.threads = 0


def test_a_small_float_layer_stays_serial() -> None:
    """A built layer's per-call work is weight bytes x its activation rows (here 2), so a
    small layer runs on one thread whatever torch's thread count."""
    import rqcompile as rq
    from rqcompile.targets.tvm.threads import SERIAL_BELOW

    x = torch.randn(2, 16)
    exe = rq.lower(rq.prepare(torch.nn.Sequential(torch.nn.Linear(16, 8)), (x,), "A4W4"), "llvm")
    runner = exe._runner
    assert runner._static_work == 2 * runner._weight_bytes < SERIAL_BELOW
    assert runner._threads((x,)) == 1
