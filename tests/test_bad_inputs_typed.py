"""Bad inputs, issue 21, class "typed errors everywhere".

Mechanisms: ``rqcompile/guard.py`` (every public entry point and the CLI raise only RQError;
the CLI prints one line and exits 1, the traceback only with ``--debug``), schema checks for
artifact manifests (``targets/compiled.py``) and QAT checkpoint descriptions
(``checkpoint.py``), explicit parser limits with ASCII-only numbers (``ir/parser.py``,
``ir/types.py``), and dense-only inputs to compiled models. Rows of ``docs/guarantees.md`` 2c.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import zipfile
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import rqcompile as rq
from rqcompile.cli import main
from rqcompile.errors import ParseError
from rqcompile.ir.parser import parse_module


def _msg(info: pytest.ExceptionInfo[BaseException], *needles: str) -> str:
    text = str(info.value)
    for n in needles:
        assert n in text, f"{n!r} not in message:\n{text}"
    return text


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)


@pytest.fixture(scope="module")
def qat() -> Any:
    torch.manual_seed(0)
    return rq.prepare(_Net(), (torch.randn(2, 16),), "A4W4")


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory, qat: Any) -> Path:
    path = tmp_path_factory.mktemp("art") / "m.rq"
    rq.lower(qat, "reference").save(path)
    return path


def _rewrite(src: Path, dst: Path, *, manifest: Any = None, **members: bytes) -> Path:
    """Copy an artifact, replacing members and recomputing checksums (a careful forger)."""
    with zipfile.ZipFile(src) as z:
        m = {n: z.read(n) for n in z.namelist()}
    old = json.loads(m.pop("manifest.json"))
    m.update(members)
    if manifest is None:
        manifest = old
        manifest["sha256"] = {k: hashlib.sha256(v).hexdigest() for k, v in m.items()}
    with zipfile.ZipFile(dst, "w") as z:
        data = manifest if isinstance(manifest, bytes) else json.dumps(manifest).encode()
        z.writestr("manifest.json", data)
        for k, v in m.items():
            z.writestr(k, v)
    return dst


# -- artifact manifests with wrong types --------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value", "needle"),
    [
        ("features", "avx2", "'features' must be a list"),
        ("features", [1, 2], "'features' must be a list"),
        ("format", "1", "format '1'"),
        ("target", 5, "'target' must be a target object"),
        ("inputs", {"a": 1}, "'inputs' must be a list"),
        ("sha256", ["x"], "'sha256' must be an object"),
        ("extra", 1, "unknown field(s) 'extra'"),
    ],
)
def test_manifest_field_of_wrong_type(
    tmp_path: Path, saved: Path, field: str, value: Any, needle: str
) -> None:
    with zipfile.ZipFile(saved) as z:
        manifest = json.loads(z.read("manifest.json"))
    manifest[field] = value
    bad = _rewrite(saved, tmp_path / "m.rq", manifest=manifest)
    with pytest.raises(rq.ArtifactError) as info:
        rq.load(bad)
    _msg(info, "m.rq", needle)


def test_manifest_nested_5000_deep(tmp_path: Path, saved: Path) -> None:
    bad = _rewrite(saved, tmp_path / "m.rq", manifest=b"[" * 5000 + b"]" * 5000)
    with pytest.raises(rq.ArtifactError) as info:
        rq.load(bad)
    _msg(info, "m.rq")


def test_manifest_not_utf8(tmp_path: Path, saved: Path) -> None:
    bad = _rewrite(saved, tmp_path / "m.rq", manifest=b'{"format": "\xff\xfe"}')
    with pytest.raises(rq.ArtifactError) as info:
        rq.load(bad)
    _msg(info, "m.rq", "corrupt")


def test_foreign_shared_library_with_trust_kernels(tmp_path: Path, qat: Any) -> None:
    pytest.importorskip("tvm")
    exe = rq.lower(qat, "llvm")
    exe.save(tmp_path / "a.rq")
    import ctypes.util

    libm = ctypes.util.find_library("m")
    cands = [p for p in ("/lib/x86_64-linux-gnu/libm.so.6", "/usr/lib/libm.so.6") if Path(p).exists()]
    if not cands:
        pytest.skip(f"no libm to plant ({libm})")
    from rqcompile.targets.binding import bind, binding_digest
    from rqcompile.targets.compiled import read_artifact
    from rqcompile.targets.target import Target

    # a careful forger: the foreign library carries a valid binding trailer, so loading it
    # gets past the binding check into TVM's loader, which must fail typed
    manifest, ir, _ = read_artifact(tmp_path / "a.rq")
    digest = binding_digest(ir, Target.parse(manifest["target"]), manifest["features"])
    lib = bind(Path(cands[0]).read_bytes(), digest)
    bad = _rewrite(tmp_path / "a.rq", tmp_path / "b.rq", **{"kernels.so": lib})
    with pytest.raises(rq.ArtifactError) as info:
        rq.load(bad, trust_kernels=True)
    _msg(info, "rq.load")
    assert "binding" not in str(info.value)  # it failed in the loader, not the binding check


def test_non_utf8_opencl_source(tmp_path: Path, qat: Any) -> None:
    pytest.importorskip("pyopencl")
    try:
        exe = rq.lower(qat, "opencl")
    except rq.TargetError as e:
        pytest.skip(f"no OpenCL here: {e}")
    exe.save(tmp_path / "a.rq")
    bad = _rewrite(tmp_path / "a.rq", tmp_path / "b.rq", **{"kernels.cl": b"\xff\xfe kernel"})
    with pytest.raises(rq.ArtifactError) as info:
        rq.load(bad)
    _msg(info, "UnicodeDecodeError")


# -- QAT checkpoints of the wrong structure ----------------------------------------------


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from rqcompile.testing.models import TinyMLP

    ex = (torch.randn(8, 64),)
    p = tmp_path_factory.mktemp("ck") / "c.safetensors"
    return rq.save_qat(rq.prepare(TinyMLP(), ex, "A4W4"), p, builder="tiny-mlp", example_inputs=ex)


def _edit_ckpt(src: Path, dst: Path, edit: Any) -> Path:
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from rqcompile.state_file import META_KEY

    with safe_open(str(src), framework="pt") as fh:
        header = dict(fh.metadata())
    head = json.loads(header[META_KEY])
    head = edit(head)
    header[META_KEY] = json.dumps(head)
    save_file(load_file(str(src)), str(dst), metadata=header)
    return dst


def _set(key: str, value: Any) -> Any:
    def f(h: dict[str, Any]) -> Any:
        h[key] = value
        return h

    return f


@pytest.mark.parametrize(
    ("edit", "needle"),
    [
        (lambda h: [h], "description is a list"),
        (_set("builder", 7), "'builder' must be a string"),
        (_set("builder_kwargs", [1]), "'builder_kwargs' must be an object"),
        (_set("example_inputs", "x"), "'example_inputs' must be a list"),
        (_set("example_inputs", [{"shape": [-1], "dtype": "float32"}]), "['shape'] must be"),
        (_set("example_inputs", [{"shape": [8, 64], "dtype": "os.system"}]), "'dtype'"),
        (_set("example_inputs", [{"shape": [1 << 20, 1 << 20], "dtype": "float32"}]), "limit"),
        (_set("example_inputs", [[8, 64]]), "example_inputs[0] must be"),
        (_set("config", {"format": 1}), "'config' must be a QConfig JSON string"),
    ],
    ids=["list", "builder-int", "kwargs-list", "inputs-str", "neg-shape", "dtype", "huge",
         "spec-list", "config-dict"],  # fmt: skip
)
def test_qat_checkpoint_of_wrong_structure(tmp_path: Path, ckpt: Path, edit: Any, needle: str) -> None:
    bad = _edit_ckpt(ckpt, tmp_path / "bad.safetensors", edit)
    with pytest.raises(rq.ArtifactError) as info:
        rq.load_qat(bad)
    _msg(info, "bad.safetensors", needle)


def test_qat_checkpoint_with_bad_builder_kwargs(tmp_path: Path, ckpt: Path) -> None:
    bad = _edit_ckpt(ckpt, tmp_path / "bad.safetensors", _set("builder_kwargs", {"nope": 1}))
    with pytest.raises(rq.ConfigError) as info:
        rq.load_qat(bad)
    _msg(info, "'tiny-mlp' failed", "nope", "TypeError")


def test_qat_checkpoint_with_malformed_config(tmp_path: Path, ckpt: Path) -> None:
    bad = _edit_ckpt(ckpt, tmp_path / "bad.safetensors", _set("config", "[1, 2"))
    with pytest.raises(rq.RQError):
        rq.load_qat(bad)


# -- compiled models given tensors of other layouts ----------------------------------------


@pytest.mark.parametrize("layout", ["sparse_coo", "sparse_csr", "nested", "mkldnn"])
def test_non_dense_input_to_compiled_model(qat: Any, layout: str) -> None:
    exe = rq.lower(qat, "reference")
    x = torch.randn(2, 16)
    if layout == "sparse_coo":
        y = x.to_sparse()
    elif layout == "sparse_csr":
        y = x.to_sparse_csr()
    elif layout == "nested":
        y = torch.nested.nested_tensor([x[0], x[1]])
    else:
        if not torch.backends.mkldnn.is_available():
            pytest.skip("no mkldnn")
        y = x.to_mkldnn()
    with pytest.raises(rq.InputError) as info:
        exe(y)
    _msg(info, "input 0", "dense")


# -- the IR parser's limits --------------------------------------------------------------


def _attr_ir(value: str) -> str:
    return (
        "module {\n  func.func @main(%0: tensor<2xf32>) -> (tensor<2xf32>) {\n"
        f'    %1 = "rq.identity"(%0) {{v = {value}}} : (tensor<2xf32>) -> tensor<2xf32>\n'
        '    "func.return"(%1) : (tensor<2xf32>) -> ()\n  }\n}\n'
    )


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        (_attr_ir("[" * 5000 + "1" + "]" * 5000), "nested deeper"),
        (_attr_ir("9" * 5000), "characters"),
        (_attr_ir("0x" + "f" * 5000), "characters"),
        (_attr_ir("1." + "5" * 5000), "characters"),
        (_attr_ir("\u0663"), "expected an attribute value"),  # Arabic-Indic three
        (_attr_ir("1\u0660"), ""),  # ASCII one, then an Arabic-Indic zero
        (_attr_ir("1").replace("tensor<2xf32>", "tensor<" + "9" * 5000 + "xf32>"), "too large"),
        (_attr_ir("1").replace("tensor<2xf32>", "tensor<" + "65536x" * 6 + "f32>"), "limit"),
        (_attr_ir("1").replace("tensor<2xf32>", "tensor<" + "1x" * 40 + "f32>"), "rank"),
        (_attr_ir("1").replace("tensor<2xf32>", "tensor<\u0662xf32>"), "tensor type"),
    ],
    ids=["deep", "int-digits", "hex-digits", "float-digits", "arabic", "mixed-digits",
         "dim-digits", "numel", "rank", "arabic-dim"],  # fmt: skip
)
def test_parser_limits(text: str, needle: str) -> None:
    with pytest.raises(ParseError) as info:
        parse_module(text)
    _msg(info, needle)


def test_parser_given_bytes() -> None:
    with pytest.raises(ParseError) as info:
        parse_module(b"module {}")  # type: ignore[arg-type]
    _msg(info, "takes the IR text (str)")


# -- the CLI: one line, exit 1, traceback only with --debug ------------------------------


def test_cli_non_utf8_ir_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "x.mlir"
    f.write_bytes(b"module {\xff\xfe}")
    assert main(["opt", "--passes", "x", str(f)]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_cli_non_utf8_ir_file_with_known_pass(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from rqcompile.passes import infra

    monkeypatch.setitem(infra._REGISTRY, "test-nop-21", object)
    f = tmp_path / "x.mlir"
    f.write_bytes(b"module {\xff\xfe}")
    assert main(["opt", "--passes", "test-nop-21", str(f)]) == 1
    err = capsys.readouterr().err
    assert "not UTF-8" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_cli_bad_constants_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from rqcompile.passes import infra

    monkeypatch.setitem(infra._REGISTRY, "test-nop-21", object)
    f = tmp_path / "x.mlir"
    f.write_text("module {\n}\n")
    c = tmp_path / "c.safetensors"
    c.write_bytes(b"\x05\x00\x00\x00\x00\x00\x00\x00{oops")
    assert main(["opt", "--passes", "test-nop-21", "--constants", str(c), str(f)]) == 1
    err = capsys.readouterr().err
    assert "--constants must be a safetensors file" in err and "Traceback" not in err


def test_cli_unexpected_error_is_one_line_traceback_with_debug(
    ckpt: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import rqcompile.cli.inspect_cmd as ic

    def boom(*a: Any, **k: Any) -> Any:
        raise KeyError("surprise")

    monkeypatch.setattr(ic, "load_model_from_args", boom, raising=False)
    monkeypatch.setattr("rqcompile.cli.common.load_model_or_artifact", boom)
    assert main(["inspect", str(ckpt)]) == 1
    err = capsys.readouterr().err
    assert "KeyError" in err and "surprise" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert main(["--debug", "inspect", str(ckpt)]) == 1
    assert "Traceback" in capsys.readouterr().err


# -- the entry-point guard ---------------------------------------------------------------


def test_unexpected_error_inside_convert_is_typed_and_keeps_its_builtin_type(
    qat: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import rqcompile.translate as tr

    def boom(*a: Any, **k: Any) -> Any:
        raise KeyError("no such node")

    monkeypatch.setattr(tr, "translate", boom)
    with pytest.raises(rq.UnsupportedOpError) as info:
        rq.convert(qat)
    assert isinstance(info.value, KeyError)  # old `except KeyError` still works
    _msg(info, "rq.convert", "KeyError", "no such node")
    assert isinstance(info.value.__cause__, KeyError)


def test_every_public_function_is_guarded() -> None:
    guarded = {"prepare", "convert", "build", "lower", "load", "load_qat", "save_qat",
               "register_builder", "inspect", "explain", "draw", "draw_diff", "export_mlir"}  # fmt: skip
    for name in guarded:
        assert hasattr(getattr(rq, name), "__rq_entry_point__"), name
    assert hasattr(rq.CompiledModule.save, "__rq_entry_point__")
    assert hasattr(rq.CompiledModule.__call__, "__rq_entry_point__")
