"""Dynamic batch and sequence (``rq.lower(..., dynamic_shapes=... | dynamic=True)``).

The symbolic IR (``rqcompile/translate/dynamic.py``) and the per-shape ``DynamicModule``
(``rqcompile/targets/dynamic.py``): lowered vs QAT at shapes drawn inside the declared ranges
(``check_parity``, the project's parity criterion), typed errors outside them, artifacts.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import rqcompile as rq
from rqcompile.demo.models import CharTransformer
from rqcompile.errors import ConfigError, InputError
from rqcompile.ir import parse_module, verify
from rqcompile.ir.printer import print_module
from rqcompile.targets.dynamic import DynamicModule
from rqcompile.translate.dynamic import specialize

Dim = torch.export.Dim
VOCAB, T = 65, 16
_SETTINGS = {
    "deadline": None,
    "database": None,
    "derandomize": True,
    "suppress_health_check": [HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
}


@pytest.fixture(scope="module")
def qat() -> torch.fx.GraphModule:
    torch.manual_seed(0)
    model = CharTransformer(VOCAB, n_layer=1, n_embd=32, block_size=T)
    q = rq.prepare(model, (torch.zeros(2, T, dtype=torch.long),), "A4W4")
    opt = torch.optim.AdamW(q.parameters(), lr=1e-2)
    for _ in range(3):  # a few steps, so the weights are not at their initialization
        x = torch.randint(0, VOCAB, (4, T))
        loss = nn.functional.cross_entropy(q(x).flatten(0, 1), x.roll(-1, 1).flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
    return q.eval()


@pytest.fixture(scope="module")
def ref(qat: torch.fx.GraphModule) -> DynamicModule:
    return rq.lower(qat, "reference", dynamic=True)


def _parity(qat: torch.fx.GraphModule, exe: DynamicModule, x: torch.Tensor) -> None:
    report = rq.check_parity(qat, exe, x)
    assert report.ok, report.line()
    with torch.no_grad():
        want, got = qat(x), exe(x)
    assert got.shape == want.shape
    # within the parity bound of tests/test_parity.py: exact codes, float epilogue
    assert report.verdict != "exact" or float((got - want).abs().max()) <= 1e-5 * max(
        float(want.abs().max()), 1.0
    )


@settings(max_examples=10, **_SETTINGS)
@given(b=st.integers(1, 64), t=st.integers(1, T))
def test_reference_matches_qat_at_any_declared_shape(qat, ref, b, t) -> None:
    x = torch.randint(0, VOCAB, (b, t))
    _parity(qat, ref, x)


@pytest.mark.tvm
def test_llvm_padded_batch_matches_qat(qat) -> None:
    # one llvm build (~5-10 s on 2 cores): batch 3 runs on the kernels of its bucket, 4
    exe = _llvm(qat)
    for b in (3, 4):
        _parity(qat, exe, torch.randint(0, VOCAB, (b, 5)))
    assert exe.cached_shapes == [{"b": 4, "t": 5}]
    assert len(exe.build_seconds) == 1


@pytest.mark.tvm
@pytest.mark.slow  # every new drawn shape is an llvm build of ~5-10 s
@settings(max_examples=4, **_SETTINGS)
@given(b=st.integers(1, 4), t=st.integers(3, 8))
def test_llvm_matches_qat_at_drawn_shapes(qat, b, t) -> None:
    exe = _llvm(qat)
    x = torch.randint(0, VOCAB, (b, t))
    _parity(qat, exe, x)
    assert exe.cached_shapes[-1]["b"] in (1, 2, 4)  # batch ran on its power-of-two bucket


_LLVM: dict[int, DynamicModule] = {}


def _llvm(qat: torch.fx.GraphModule) -> DynamicModule:
    if id(qat) not in _LLVM:
        shapes = {"idx": {0: Dim("b", min=1, max=4), 1: Dim("t", min=3, max=8)}}
        _LLVM[id(qat)] = rq.lower(qat, "llvm", dynamic_shapes=shapes)
    return _LLVM[id(qat)]


def test_symbolic_ir_has_question_marks_and_ranges(qat, ref) -> None:
    text = print_module(ref.ir)
    assert (
        "func.func @main(%0: tensor<?x?xi64>) -> (tensor<?x?x65xf32>) attributes {"
        'rq.dynamic_axes = [[[0 : i64, "batch"], [1 : i64, "seq"]]], rq.dynamic_dims = '
        '[["batch", 1 : i64, 64 : i64], ["seq", 1 : i64, 16 : i64]], rq.input_names = '
        '["idx"], rq.output_dims = [["batch", "seq", "65"]]} {'
    ) in text
    assert 'rq.sym = ["shape.0=batch*seq"]' in text  # the flattened rows of every linear
    assert 'rq.sym = ["shape.0=seq", "shape.1=seq"]' in text  # the causal mask, mask[:T, :T]
    report = rq.inspect(ref)
    assert "dynamic dims: batch in [1, 64] (idx axis 0); seq in [1, 16] (idx axis 1)" in report
    assert "batch rounded up to a power of two" in report
    assert ref.bucket_dim == "batch"


def test_out_of_range_and_wrong_inputs_are_typed_errors_before_any_build(qat) -> None:
    exe = rq.lower(qat, "reference", dynamic_shapes=({0: Dim("batch", min=2, max=8)},))
    good = torch.zeros(2, T, dtype=torch.long)

    def ids(*shape: int) -> torch.Tensor:
        return torch.zeros(shape, dtype=torch.long)

    out_of_range = "outside its declared range [2, 8]"
    cases = [
        (ids(9, T), f"input 0 (idx): dim 0 (batch) is 9, {out_of_range}"),
        (ids(1, T), f"dim 0 (batch) is 1, {out_of_range}"),
        (ids(2, T - 1), "input 0 (idx): dim 1 is 15, expected 16 (static"),
        (good.float(), "input 0 (idx): dtype torch.float32 (expected torch.int64"),
        (ids(2, T, 1), "input 0 (idx): rank 3"),
    ]
    for x, msg in cases:
        with pytest.raises(InputError) as e:
            exe(x)
        assert msg in str(e.value)
    with pytest.raises(InputError, match="takes 1 input"):
        exe(good, good)
    assert exe.cached_shapes == []  # nothing was built for any of them
    with pytest.raises(InputError, match=r"token ids must lie in \[0, 65\)"):
        exe(torch.full((2, T), VOCAB))  # the static build's own checks still run
    assert exe.cached_shapes == [{"batch": 2}]


def test_shared_dim_must_agree_across_inputs() -> None:
    class Two(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(8, 4)

        def forward(self, x, y):
            return self.fc(x + y)

    x = torch.randn(3, 8)
    q = rq.prepare(Two(), (x, x), "A8W8").eval()
    b = Dim("b", min=1, max=8)
    exe = rq.lower(q, "reference", dynamic_shapes={"x": {0: b}, "y": {0: b}})
    y = torch.randn(5, 8)
    torch.testing.assert_close(exe(y, y), q(y, y), rtol=1e-5, atol=1e-5)
    with pytest.raises(
        InputError, match=r"input 1 \(y\): dim 0 \(b\) is 4, but another input has b = 5"
    ):
        exe(y, torch.randn(4, 8))


def test_declaration_errors(qat) -> None:
    with pytest.raises(ConfigError, match="does not have; its inputs are \\['idx'\\]"):
        rq.lower(qat, "reference", dynamic_shapes={"x": {0: Dim("b", min=1, max=4)}})
    with pytest.raises(ConfigError, match="finite range"):
        rq.lower(qat, "reference", dynamic_shapes={"idx": {0: Dim("b")}})
    with pytest.raises(ConfigError, match="not an axis"):
        rq.lower(qat, "reference", dynamic_shapes={"idx": {2: Dim("b", min=1, max=4)}})
    with pytest.raises(ConfigError, match="two different ranges"):
        rq.lower(qat, "reference",
                 dynamic_shapes=([Dim("b", min=1, max=4), Dim("b", min=1, max=5)],))  # fmt: skip
    with pytest.raises(ConfigError, match="not both"):
        rq.lower(qat, "reference", dynamic=True, dynamic_shapes=(None,))


def test_shape_dependent_float_is_refused_not_miscompiled() -> None:
    class Mean(nn.Module):  # scales by 1/batch: a float attribute that depends on the dim
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(8, 4)

        def forward(self, x):
            return self.fc(x) * (1.0 / x.size(0))

    q = rq.prepare(Mean(), (torch.randn(4, 8),), "A8W8").eval()
    with pytest.raises(
        ConfigError, match=r"cannot make this model dynamic in b: attribute .* depends on the dims"
    ):
        rq.lower(q, "reference", dynamic_shapes={"x": {0: Dim("b", min=1, max=8)}})


def test_rows_that_mix_are_not_padded() -> None:
    class Centre(nn.Module):  # subtracts the batch mean: padding rows would change outputs
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(8, 4)

        def forward(self, x):
            return self.fc(x - x.mean(0, keepdim=True))

    q = rq.prepare(Centre(), (torch.randn(4, 8),), "A8W8").eval()
    exe = rq.lower(q, "reference", dynamic_shapes={"x": {0: Dim("b", min=1, max=8)}})
    assert exe.bucket_dim is None
    x = torch.randn(3, 8)
    torch.testing.assert_close(exe(x), q(x), rtol=1e-5, atol=1e-5)
    assert exe.cached_shapes == [{"b": 3}]


def test_save_load_keeps_the_declaration(qat, ref, tmp_path) -> None:
    path = tmp_path / "dyn.rq"
    x = torch.randint(0, VOCAB, (3, 7))
    ref.save(path)
    back = rq.load(path)
    assert isinstance(back, DynamicModule)
    assert back.shapes == ref.shapes and back.bucket_dim == "batch"
    assert print_module(back.ir) == print_module(ref.ir)
    torch.testing.assert_close(back(x), ref(x), rtol=0, atol=0)
    with pytest.raises(InputError, match="outside its declared range"):
        back(torch.zeros(65, 2, dtype=torch.long))


def test_lru_cache_and_prebuild(qat) -> None:
    exe = rq.lower(qat, "reference", dynamic_shapes=({1: Dim("t", min=1, max=T)},),
                   example_inputs=(torch.zeros(2, T, dtype=torch.long),))  # fmt: skip
    exe.cache_size = 2
    exe.prebuild({"t": 4})
    for t in (5, 6, 4):
        exe(torch.zeros(2, t, dtype=torch.long))
    assert exe.cached_shapes == [{"t": 6}, {"t": 4}]  # t=5 evicted, t=4 most recent
    with pytest.raises(InputError, match=r"prebuild: t=17 is outside t in \[1, 16\]"):
        exe.prebuild({"t": 17})


def test_padded_batch_equals_the_exact_build(ref) -> None:
    x = torch.randint(0, VOCAB, (5, 11))  # runs on the batch-8 build, 3 rows of padding
    exact = rq.build(ref.ir_for((x,)), "reference")  # the static IR of (5, 11) itself
    torch.testing.assert_close(ref(x), exact(x), rtol=1e-5, atol=1e-6)
    assert {"batch": 8, "seq": 11} in ref.cached_shapes


def test_recorded_shapes_without_example_inputs() -> None:
    torch.manual_seed(0)
    q = rq.prepare(CharTransformer(VOCAB, n_layer=1, n_embd=32, block_size=T), "A4W4").eval()
    q(torch.zeros(2, 8, dtype=torch.long))  # records (2, 8): the sequence max is 8
    exe = rq.lower(q, "reference", dynamic=True)
    assert exe.shapes.describe() == "batch in [1, 64] (idx axis 0); seq in [1, 8] (idx axis 1)"
    x = torch.randint(0, VOCAB, (5, 8))
    _parity(q, exe, x)


def test_target_refusals_come_at_lower_time(monkeypatch) -> None:
    # an op the TVM emitter has no rule for is refused by rq.lower, once, not by the first
    # call of every shape
    from rqcompile.targets.tvm.emit import module as emit_module

    q = rq.prepare(nn.Sequential(nn.Linear(16, 8)), (torch.randn(2, 16),), "A1W1",
                   grid="minmax").eval()  # fmt: skip
    pytest.importorskip("tvm")
    table = dict(emit_module.EMITTERS)
    del table["rq.quantize"]
    monkeypatch.setattr(emit_module, "EMITTERS", table)
    with pytest.raises(rq.errors.UnsupportedOpError, match="no rule for: rq.quantize"):
        rq.lower(q, "llvm", dynamic=True)
    exe = rq.lower(q, "reference", dynamic=True)
    x = torch.randn(5, 16)
    torch.testing.assert_close(exe(x), q(x), rtol=1e-5, atol=1e-5)


def test_lower_is_build_of_convert_and_the_text_round_trips(qat, ref) -> None:
    ir = rq.convert(qat, dynamic=True)
    assert ir == ref.ir
    back = parse_module(print_module(ir), constants=ir.constants)
    assert back == ir
    exe = rq.build(back, "reference")
    assert isinstance(exe, DynamicModule)
    x = torch.randint(0, VOCAB, (2, 9))
    torch.testing.assert_close(exe(x), ref(x), rtol=0, atol=0)
    static = specialize(ir, {"batch": 2, "seq": 9})  # the static IR of one shape: verifies
    verify(static)
    assert static.main.args[0].type.shape == (2, 9) and not static.main.attrs


def test_hugging_face_gpt2_exported_with_dynamic_dims() -> None:
    pytest.importorskip("transformers")
    from rqcompile.testing.hf import logits_of, tiny_gpt2

    model, ex = tiny_gpt2()
    q = rq.prepare(model, ex, "A4W4").eval()  # auto capture: export at the example's shapes
    with pytest.raises(ConfigError, match="Export the model yourself with dynamic dims"):
        rq.lower(q, "reference", dynamic=True)
    dims = {"input_ids": {0: Dim("batch", min=1, max=4), 1: Dim("seq", min=2, max=8)}}
    ep = torch.export.export(model.eval(), ex, dynamic_shapes=dims, strict=False)
    q = rq.prepare(ep, ex, "A4W4").eval()  # graph with aten.sym_size: converts at any shape
    exe = rq.lower(q, "reference", dynamic_shapes=dims)
    for x in (ex[0][:1, :5], ex[0][:2, :3]):
        with torch.no_grad():
            want, got = logits_of(q(x)), logits_of(exe(x))
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4 * float(want.abs().max()))


def test_concurrent_calls_at_new_shapes(qat) -> None:
    from concurrent.futures import ThreadPoolExecutor

    exe = rq.lower(qat, "reference", dynamic=True)
    xs = [torch.randint(0, VOCAB, (b, t)) for b, t in [(1, 3), (2, 3), (5, 9), (1, 3), (7, 16)]]
    with ThreadPoolExecutor(4) as pool:
        outs = list(pool.map(exe, xs))
    with torch.no_grad():
        for x, y in zip(xs, outs, strict=True):
            torch.testing.assert_close(y, qat(x), rtol=1e-4, atol=1e-5)
    assert len(exe.cached_shapes) == 4  # (1, 3) built once


def test_a_damaged_symbolic_ir_fails_when_built(ref) -> None:
    text = print_module(ref.ir)
    bad = text.replace('rq.sym = ["shape.0=batch*seq"]', 'rq.sym = ["shape.0=batch*seq+1"]', 1)
    assert bad != text
    with pytest.raises(rq.VerifyError):
        rq.build(parse_module(bad, constants=ref.ir.constants), "reference")
    undeclared = text.replace(
        'rq.dynamic_dims = [["batch", 1 : i64, 64 : i64], ', "rq.dynamic_dims = ["
    )
    with pytest.raises(ConfigError, match="bad dynamic-shape declaration"):
        rq.build(parse_module(undeclared, constants=ref.ir.constants), "reference")


@settings(max_examples=60, deadline=None, database=None, derandomize=True)
@given(
    coeffs=st.lists(st.integers(-5, 5), min_size=4, max_size=4),
    b=st.integers(1, 100),
    t=st.integers(1, 100),
)
def test_fit_recovers_any_bilinear_attribute(coeffs, b, t) -> None:
    from rqcompile.translate.dynamic import DimRange, _fit, eval_expr, format_expr, probe_points

    c0, cb, ct, cbt = coeffs

    def f(p):
        return c0 + cb * p["b"] + ct * p["t"] + cbt * p["b"] * p["t"]

    corners, _ = probe_points([DimRange("b", 1, 64), DimRange("t", 1, 16)])
    e = _fit(corners, [f(p) for p in corners], ["b", "t"])
    assert e is not None
    assert eval_expr(format_expr(e), {"b": b, "t": t}) == f({"b": b, "t": t})


def test_last_token_and_sequence_slices_are_symbolic() -> None:
    class LastToken(nn.Module):  # classifier on the last position: slice start = seq - 1
        def __init__(self) -> None:
            super().__init__()
            self.fc, self.head = nn.Linear(16, 16), nn.Linear(16, 3)

        def forward(self, x):
            return self.head(self.fc(x)[:, -1] + x[:, : x.size(1) // 1].mean(1))

    q = rq.prepare(LastToken(), (torch.randn(2, 6, 16),), "A8W8").eval()
    dims = {"x": {0: Dim("b", min=1, max=8), 1: Dim("t", min=1, max=6)}}
    exe = rq.lower(q, "reference", dynamic_shapes=dims)
    assert "=t+-1" in print_module(exe.ir)
    for b, t in [(1, 1), (3, 4), (8, 6)]:
        x = torch.randn(b, t, 16)
        torch.testing.assert_close(exe(x), q(x), rtol=1e-4, atol=1e-5)
    assert exe.symbolic.outputs == (("b", "3"),) and exe.bucket_dim == "b"


def test_a_declaration_with_nothing_dynamic_builds_the_static_model(qat) -> None:
    from rqcompile.targets.compiled import CompiledModule

    exe = rq.lower(qat, "reference", dynamic_shapes={"idx": {0: ("b", 2, 2)}})
    assert type(exe) is CompiledModule and exe.signature[0].shape == (2, T)


def test_a_shape_the_qat_model_rejects_names_the_cause() -> None:
    # quantized attention: att @ v reduces over the sequence in blocks fixed at prepare (16
    # here), so the QAT model itself cannot run at other lengths; the error says why
    q = rq.prepare(CharTransformer(VOCAB, n_layer=1, n_embd=32, block_size=T),
                   (torch.zeros(2, T, dtype=torch.long),), "A4W4",
                   quantize_attention=True).eval()  # fmt: skip
    with pytest.raises(ConfigError, match=r"at batch=2, seq=2 .*NumericsError: .*K=2"):
        rq.lower(q, "reference", dynamic=True)
    exe = rq.lower(q, "reference", dynamic_shapes={"idx": {0: Dim("batch", min=1, max=4)}})
    x = torch.randint(0, VOCAB, (3, T))
    assert rq.check_parity(q, exe, x).ok
