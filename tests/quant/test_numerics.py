"""Numerics of quant/: worked examples, gradients, limits, ranges, sparsity."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rqcompile.errors import NumericsError
from rqcompile.quant.estimators import ridge_params
from rqcompile.quant.fake_quant import fake_quant_blocks
from rqcompile.quant.primitives import QFormat, code_range, grid, make_codes, nm_mask, to_blocks

D = torch.float64


def _fq(x: torch.Tensor, bits: float, sym: bool, block: int, **kw: object) -> torch.Tensor:
    r = fake_quant_blocks(to_blocks(x, block), QFormat(bits, sym), **kw)  # type: ignore[arg-type]
    return r.y.reshape(x.shape)


def test_worked_example_a_a2w2() -> None:
    x = torch.tensor([[0.9, -0.3, 0.2, 1.4], [-1.1, 0.5, 0.05, -0.6]], dtype=D)
    w = torch.tensor([[0.5, -0.7], [-0.25, 0.3], [1.0, 0.35], [0.1, -0.2]], dtype=D)
    rx = fake_quant_blocks(to_blocks(x, 4), QFormat(2, False))
    assert rx.codes.reshape(2, 4).tolist() == [[2, 0, 1, 3], [0, 3, 2, 1]]
    torch.testing.assert_close(
        rx.scale.flatten(), torch.tensor([0.575397, 0.540675], dtype=D), atol=1e-6, rtol=0
    )
    y = _fq(x, 2, False, 4) @ _fq(w.t().contiguous(), 2, False, 4).t()
    expect = torch.tensor([[0.979395, -0.971677], [-0.833323, 1.029900]], dtype=D)
    torch.testing.assert_close(y, expect, atol=1e-5, rtol=0)


def test_worked_example_b_a1w1_two_blocks() -> None:
    x = torch.tensor(
        [[0.9, -0.3, 0.2, 1.4, -0.5, 0.8, 0.1, -1.2], [-1.1, 0.5, 0.05, -0.6, 0.7, 0.3, -0.4, 0.9]],
        dtype=D,
    )
    wt = torch.tensor(
        [
            [0.5, -0.25, 1.0, 0.1, -0.6, 0.4, 0.2, -0.3],
            [-0.7, 0.3, 0.35, -0.2, 0.15, -0.45, 0.6, 0.25],
        ],
        dtype=D,
    )
    y = _fq(x, 1, False, 4) @ _fq(wt, 1, False, 4).t()
    expect = torch.tensor([[1.758289, -1.656668], [-1.125564, 1.458104]], dtype=D)
    torch.testing.assert_close(y, expect, atol=1e-5, rtol=0)


def test_worked_example_c_w1_linear_2_4() -> None:
    w = torch.tensor([[0.5, -0.25, 1.0, 0.1]], dtype=D)
    r = fake_quant_blocks(to_blocks(w, 4), QFormat(1, True), nm=(2, 4))
    assert r.codes.flatten().tolist() == [1, 0, 1, 0]
    assert abs(float(r.scale) - 0.735294) < 1e-6
    x = torch.tensor([[0.9, -0.3, 0.2, 1.4]], dtype=D)
    y = _fq(x, 2, False, 4) @ r.y.reshape(1, 4).t()
    assert abs(float(y) - 0.808824) < 1e-5


@pytest.mark.parametrize("linear", [False, True])
@pytest.mark.parametrize("bits", [1, 2, 4])
def test_ridge_gradcheck_float64(bits: int, linear: bool) -> None:
    """Autograd through the ridge statistics matches finite differences (codes frozen)."""
    torch.manual_seed(bits)
    x = torch.randn(3, 2, 16, dtype=D)
    fmt = QFormat(bits, linear)
    with torch.no_grad():
        r = fake_quant_blocks(x, fmt)
    code = r.codes.detach()
    from rqcompile.quant.primitives import grid

    s_f, b_f = grid(x, fmt)
    delta = code - (x - b_f) / s_f  # the rounding residual, frozen (docs/method.md#which-statistics-carry-gradient)

    def f(xx: torch.Tensor) -> torch.Tensor:
        q = (xx - b_f) / s_f + delta
        scale, offset = ridge_params(xx, q, s_f, b_f, 0.01, linear)
        return scale * q + offset

    xr = x.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(f, (xr,), eps=1e-6, atol=1e-6)


def test_ridge_has_corrective_gradient_ste_does_not() -> None:
    """The ridge gradient depends on the rounding residual; STE's does not (docs/method.md#which-statistics-carry-gradient)."""
    torch.manual_seed(0)
    x = torch.randn(1, 1, 32, dtype=D)
    u = torch.randn(1, 1, 32, dtype=D)
    grads = {}
    for est in ("ridge", "ste"):
        xr = x.clone().requires_grad_(True)
        (fake_quant_blocks(xr, QFormat(2, False), estimator=est).y * u).sum().backward()
        grads[est] = xr.grad
    assert grads["ste"] is not None and torch.allclose(grads["ste"], u)
    assert not torch.allclose(grads["ridge"], u, atol=1e-3)


def test_lambda_to_infinity_gives_block_mean() -> None:
    x = torch.randn(4, 3, 32, dtype=D)
    for fmt in (QFormat(2, False), QFormat(1, False), QFormat(4, False)):
        y = fake_quant_blocks(x, fmt, lam=1e12).y
        torch.testing.assert_close(y, x.mean(-1, keepdim=True).expand_as(x), atol=1e-9, rtol=0)


@pytest.mark.parametrize("estimator", ["ridge", "ste"])
def test_constant_block_lambda_zero_is_finite(estimator: str) -> None:
    """V(q) = 0 with λ = 0: the documented safe path returns the block mean, no NaN."""
    x = torch.full((2, 1, 16), 0.7, dtype=D, requires_grad=True)
    r = fake_quant_blocks(x, QFormat(2, False), lam=0.0, estimator=estimator)
    assert torch.isfinite(r.y).all()
    torch.testing.assert_close(r.y, x.detach(), atol=1e-12, rtol=0)
    r.y.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


@settings(max_examples=60, deadline=None)
@given(
    bits=st.sampled_from([1, 1.5, 2, 3, 4, 5, 6, 7, 8]),
    sym=st.booleans(),
    scale=st.floats(1e-4, 1e4),
    block=st.sampled_from([4, 8, 32]),
)
def test_codes_stay_in_range(bits: float, sym: bool, scale: float, block: int) -> None:
    sym = sym or bits == 1.5
    x = torch.randn(3, 2 * block) * scale
    r = fake_quant_blocks(to_blocks(x, block), QFormat(bits, sym))
    lo, hi = code_range(QFormat(bits, sym))
    assert r.codes.min() >= lo and r.codes.max() <= hi
    assert torch.equal(r.codes, r.codes.round())
    if bits == 1:
        assert set(r.codes.unique().tolist()) <= {-1.0, 1.0}
    assert torch.isfinite(r.y).all()


@settings(max_examples=30, deadline=None)
@given(rows=st.integers(1, 5), groups=st.integers(1, 8))
def test_nm_mask_keeps_exactly_two_of_four(rows: int, groups: int) -> None:
    x = torch.randn(rows, 4 * groups)
    m = nm_mask(x, 2, 4)
    assert torch.equal(m.reshape(rows, groups, 4).sum(-1), torch.full((rows, groups), 2))
    kept = x.abs().masked_fill(~m, -1).reshape(rows, groups, 4)
    dropped = x.abs().masked_fill(m, float("inf")).reshape(rows, groups, 4)
    assert (kept.amax(-1) >= dropped.amin(-1)).all()


def test_sparse_quantization_prunes_to_code_zero_with_identity_gradient() -> None:
    x = torch.randn(2, 1, 16, requires_grad=True)
    r = fake_quant_blocks(x, QFormat(4, True), nm=(2, 4))
    assert torch.equal(
        (r.codes.reshape(2, 4, 4) != 0).sum(-1) <= 2, torch.ones(2, 4, dtype=torch.bool)
    )
    r.y.sum().backward()
    assert x.grad is not None and (x.grad != 0).all()  # pruned weights still get gradient


def test_to_blocks_error_names_fix() -> None:
    with pytest.raises(NumericsError, match="not a multiple of the block size 128"):
        to_blocks(torch.zeros(2, 200), 128, where="layer 'fc'")


_SPECIALS = [0.0, -0.0, 1e-45, -1e-45, 0.5, -0.5, 1.5, 2.5, -2.5, 15.5, 16.0, -1.0, 1.0,
             float("inf"), float("-inf"), float("nan")]  # fmt: skip


@pytest.fixture(params=[True, False], ids=["eager", "traced"])
def reuse(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> bool:
    """Both forms of the primitives: eager (buffers reused) and traced (functional)."""
    if not request.param:
        monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    return bool(request.param)


@pytest.mark.parametrize("fmt", [QFormat(1, False), QFormat(1.5, True), QFormat(4, False),
                                 QFormat(4, True)], ids=str)  # fmt: skip
@pytest.mark.parametrize("dtype", [torch.float32, D])
def test_make_codes_equals_its_definition(fmt: QFormat, dtype: torch.dtype, reuse: bool) -> None:
    """Codes equal the definition in docs/method.md#grids bit for bit, signed zeros, ties, inf and NaN
    included (binary: sign with sign(0) = +1 and NaN -> -1, as ``z >= 0`` selects)."""
    z = torch.cat([torch.tensor(_SPECIALS, dtype=dtype), torch.randn(4000, dtype=dtype) * 3])
    if fmt.bits == 1:
        want = torch.where(z >= 0, 1.0, -1.0).to(dtype)
    else:
        lo, hi = code_range(fmt)
        want = torch.clamp(torch.round(z), lo, hi)
    zz = z.clone()
    for got in (make_codes(z, fmt), make_codes(zz, fmt, out=zz)):  # a new tensor; in place
        torch.testing.assert_close(got, want, rtol=0, atol=0, equal_nan=True)
        assert torch.equal(got.signbit(), want.signbit())


@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "sparse"])
@pytest.mark.parametrize("fmt", [QFormat(1, False), QFormat(1, True), QFormat(1.5, True)], ids=str)
def test_binary_grid_equals_float64_definition(fmt: QFormat, sparse: bool, reuse: bool) -> None:
    """The bitnet grid: float64 sums rounded once (docs/method.md#grids), bit for bit, with
    exact zeros, an all-zero block and a 2:4 block. Means divide by the block size for dense
    blocks and by the kept (non-zero) count only when the block is N:M-sparse."""
    torch.manual_seed(5)
    xs = torch.randn(6, 3, 128) * 2 + 0.3
    xs[0, 0] = 0.0
    xs[1, 1, ::3] = 0.0
    xs[2] = xs[2] * nm_mask(xs[2], 2, 4)
    s, b = grid(xs, fmt, sparse=sparse)
    x64 = xs.double()
    kept = (xs != 0).sum(-1, keepdim=True).clamp_min(1).double() if sparse else 128.0
    b_want = (x64.sum(-1, keepdim=True) / 128).float() if fmt.bits == 1 and not fmt.symmetric \
        else torch.zeros_like(xs[..., :1])  # fmt: skip
    s_want = ((xs - b_want).abs().double().sum(-1, keepdim=True) / kept).float().clamp_min(1e-12)
    assert torch.equal(b, b_want) and torch.equal(s, s_want)


@pytest.mark.parametrize("fmt", [QFormat(1, False), QFormat(1, True), QFormat(1.5, True)], ids=str)
def test_relu_zeros_count_in_a_dense_block(fmt: QFormat) -> None:
    """Issue 22: after a ReLU about half of a block is exactly 0. Those zeros are values, so
    s_f is the mean over the whole block (it was the mean over the non-zeros, about 2x)."""
    torch.manual_seed(0)
    x = torch.relu(torch.randn(4, 2, 128))
    s, b = grid(x, fmt)
    want = (x - b).abs().mean(-1, keepdim=True)
    torch.testing.assert_close(s, want)
    nonzero_mean = (x - b).abs().sum(-1, keepdim=True) / (x != 0).sum(-1, keepdim=True)
    assert (nonzero_mean / s).mean() > 1.6  # the old rule's value, about 2x
    # fake-quant of a dense block uses the dense rule; a 2:4 weight keeps the kept-count rule
    r = fake_quant_blocks(x, fmt, estimator="ste")
    torch.testing.assert_close(r.scale, s)
    if fmt.symmetric:
        w = torch.randn(4, 2, 128)
        rs = fake_quant_blocks(w, fmt, estimator="ste", nm=(2, 4))
        kept = (w * nm_mask(w, 2, 4)).abs().sum(-1, keepdim=True) / 64
        torch.testing.assert_close(rs.scale, kept)


@pytest.mark.parametrize("fmt", [QFormat(1, False), QFormat(4, False), QFormat(1, True)], ids=str)
def test_exported_fake_quant_is_functional_and_equal(fmt: QFormat) -> None:
    """Under torch.export the quantizer traces to functional ops only (torch-mlir imports the
    graph without functionalizing it) and computes what eager mode computes."""

    class Q(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return fake_quant_blocks(x, fmt).y

    x = torch.randn(4, 2, 32)
    ep = torch.export.export(Q(), (x,))
    mutating = [
        str(n.target)
        for n in ep.graph.nodes
        if n.op == "call_function" and getattr(n.target, "_schema", None) is not None
        and n.target._schema.is_mutable
    ]  # fmt: skip
    assert mutating == []
    assert torch.equal(ep.module()(x), Q()(x))


@pytest.mark.parametrize("fmt", [QFormat(1, False), QFormat(1, False, "minmax"), QFormat(2, False),
                                 QFormat(1.5, True, "minmax")], ids=str)  # fmt: skip
def test_ridge_detached_same_forward_rescaled_ste_gradient(fmt: QFormat) -> None:
    """ridge_detached: ridge's forward, and the gradient (scale/s_f)·u with no δ path."""
    torch.manual_seed(3)
    x = torch.randn(3, 2, 64, dtype=torch.float64)
    u = torch.randn_like(x)
    grads = {}
    for est in ("ridge", "ridge_detached"):
        xr = x.clone().requires_grad_()
        r = fake_quant_blocks(xr, fmt, estimator=est)
        (r.y * u).sum().backward()
        grads[est] = (r, xr.grad)
    (a, ga), (d, gd) = grads["ridge"], grads["ridge_detached"]
    torch.testing.assert_close(a.y, d.y, rtol=0, atol=1e-12)
    s_f, _ = grid(x, fmt)
    scale = d.scale * (2 if fmt.zero_one else 1)  # stored ±1 scale is half the {0,1} one
    torch.testing.assert_close(gd, scale / s_f * u)
    assert not torch.allclose(ga, gd)


def test_minmax_1bit_codes_are_zero_one_threshold_mid_range() -> None:
    """The plain 1-bit affine grid: codes {0,1} split at (min+max)/2; stored as ±1."""
    x = torch.tensor([[[0.0, 0.1, 0.49, 0.51, 0.9, 1.0, 0.5, 0.2]]])
    fmt = QFormat(1, False, "minmax")
    s, b = grid(x, fmt)
    assert float(s) == 1.0 and float(b) == 0.0 and code_range(fmt) == (0, 1)
    r = fake_quant_blocks(x, fmt, estimator="ste")
    assert r.codes.flatten().tolist() == [-1, -1, -1, 1, 1, 1, -1, -1]  # 0.5 rounds to even: 0
    assert r.y.flatten().tolist() == [0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.0, 0.0]
