"""Bad inputs, issue 21, class "files and archives": one writer helper, one archive checker.

Every file rqcompile writes goes through ``rqcompile.fileio`` (unique exclusive temp beside
the target, fsync, rename, umask, cleanup); every artifact is checked by
``rqcompile.artifact_limits.check_archive`` before any member is read, and only regular files
are opened. Each test is a row of the table in ``docs/guarantees.md`` (section 2b).
"""

from __future__ import annotations

import errno
import json
import os
import stat
import threading
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch
from torch import nn

import rqcompile as rq
from rqcompile import artifact_limits, fileio
from rqcompile.passes.infra import PassContext, PassResult, register_pass


def _msg(info: pytest.ExceptionInfo[BaseException], *needles: str) -> str:
    text = str(info.value)
    for n in needles:
        assert n in text, f"{n!r} not in message:\n{text}"
    return text


@pytest.fixture(scope="module")
def exe() -> Any:
    torch.manual_seed(0)
    return rq.lower(rq.prepare(nn.Sequential(nn.Linear(16, 4)), (torch.randn(2, 16),), "A4W4"))


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory, exe: Any) -> Path:
    path = tmp_path_factory.mktemp("art") / "m.rq"
    exe.save(path)
    return path


def _members(path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as z:
        return {n: z.read(n) for n in z.namelist()}


def _rezip(
    dst: Path,
    members: dict[str, bytes] | list[tuple[str, bytes]],
    *,
    compress: int = zipfile.ZIP_STORED,
    tweak: Callable[[zipfile.ZipInfo], None] | None = None,
) -> Path:
    items = members.items() if isinstance(members, dict) else members
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns about duplicate names
        with zipfile.ZipFile(dst, "w") as z:
            for n, data in items:
                info = zipfile.ZipInfo(n, date_time=(1980, 1, 1, 0, 0, 0))
                info.compress_type = compress
                if tweak is not None:
                    tweak(info)
                z.writestr(info, data)
    return dst


def _run_with_timeout(fn: Callable[[], Any], seconds: float = 20.0) -> Any:
    """Run ``fn`` in a thread: a regression (hang on a FIFO) fails instead of blocking CI."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as e:  # noqa: BLE001
            box["error"] = e

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), f"hung for more than {seconds} s"
    if "error" in box:
        raise box["error"]
    return box.get("value")


@pytest.fixture
def umask() -> Any:
    old = os.umask(0o022)
    os.umask(old)

    def set_(mask: int) -> None:
        os.umask(mask)

    yield set_
    os.umask(old)


# -- one atomic writer ------------------------------------------------------------------


@register_pass
@dataclass(frozen=True)
class _Identity:
    name: ClassVar[str] = "test-identity-21"

    def run(self, ir: Any, ctx: PassContext) -> PassResult[Any]:
        return PassResult(ir, False)


def test_opt_output_through_planted_symlink(tmp_path: Path) -> None:
    from rqcompile.cli import main
    from rqcompile.ir.printer import print_module

    ir = rq.convert(rq.prepare(nn.Sequential(nn.Linear(8, 4)), (torch.randn(2, 8),), "A4W4"))
    src = tmp_path / "in.mlir"
    src.write_text(print_module(ir, elide_constants=False))
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    os.symlink(victim, tmp_path / "out.mlir.tmp")  # the old fixed temp name
    rc = main(["-q", "opt", "--passes", "test-identity-21", str(src), "-o", str(tmp_path / "out.mlir")])
    assert rc == 0
    assert victim.read_text() == "precious"
    assert (tmp_path / "out.mlir").read_text().strip()
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "in.mlir", "out.mlir", "out.mlir.tmp", "victim.txt"
    ]  # fmt: skip


def test_concurrent_writers_use_distinct_temporaries(tmp_path: Path) -> None:
    target = tmp_path / "out.bin"
    with fileio.atomic_path(target) as a, fileio.atomic_path(target) as b:
        assert a != b and os.path.dirname(a) == str(tmp_path)
        Path(a).write_bytes(b"a")
        Path(b).write_bytes(b"b")
    assert target.read_bytes() == b"a"  # the last rename wins; neither is torn
    assert os.listdir(tmp_path) == ["out.bin"]


def test_writer_failure_leaves_nothing_and_old_file_intact(tmp_path: Path) -> None:
    target = tmp_path / "out.txt"
    target.write_text("old")

    def boom(fh: Any) -> None:
        fh.write(b"half")
        raise RuntimeError("writer crashed")

    with pytest.raises(RuntimeError):
        fileio.atomic_write(target, boom)
    assert os.listdir(tmp_path) == ["out.txt"] and target.read_text() == "old"


def test_atomic_write_to_missing_directory_is_typed(tmp_path: Path) -> None:
    with pytest.raises(rq.ArtifactError) as info:
        fileio.atomic_write(tmp_path / "nope" / "x.txt", "data", what="the report")
    _msg(info, "cannot write the report", "nothing was written", "exists")
    assert isinstance(info.value, OSError)


def test_save_honours_umask(tmp_path: Path, exe: Any, umask: Any) -> None:
    umask(0o022)
    exe.save(tmp_path / "a.rq")
    assert stat.S_IMODE(os.stat(tmp_path / "a.rq").st_mode) == 0o644
    umask(0o077)
    exe.save(tmp_path / "b.rq")
    assert stat.S_IMODE(os.stat(tmp_path / "b.rq").st_mode) == 0o600


def test_save_keeps_an_existing_files_mode(tmp_path: Path, exe: Any, umask: Any) -> None:
    path = tmp_path / "m.rq"
    path.write_bytes(b"old")
    path.chmod(0o640)
    umask(0o077)
    exe.save(path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o640
    rq.load(path)


def test_save_qat_honours_umask(tmp_path: Path, umask: Any) -> None:
    from rqcompile.testing.models import TinyMLP

    ex = (torch.randn(8, 64),)
    umask(0o022)
    p = rq.save_qat(rq.prepare(TinyMLP(), ex, "A4W4"), tmp_path / "c.safetensors",
                    builder="tiny-mlp", example_inputs=ex)  # fmt: skip
    assert stat.S_IMODE(os.stat(p).st_mode) == 0o644


def test_save_replaces_a_symlink_at_the_target_not_its_pointee(tmp_path: Path, exe: Any) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious")
    os.symlink(victim, tmp_path / "m.rq")
    exe.save(tmp_path / "m.rq")
    assert victim.read_text() == "precious"
    assert not os.path.islink(tmp_path / "m.rq")
    rq.load(tmp_path / "m.rq")


def test_save_qat_disk_full_is_typed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import safetensors.torch

    from rqcompile import state_file as ck
    from rqcompile.testing.models import TinyMLP

    ex = (torch.randn(8, 64),)
    qat = rq.prepare(TinyMLP(), ex, "A4W4")

    def full(*a: Any, **k: Any) -> None:
        raise safetensors.SafetensorError("Error while serializing: IoError(No space left)")

    monkeypatch.setattr(ck, "save_file", full)
    with pytest.raises(rq.ArtifactError) as info:
        rq.save_qat(qat, tmp_path / "c.safetensors", builder="tiny-mlp", example_inputs=ex)
    _msg(info, "c.safetensors", "No space left", "nothing was written")
    assert os.listdir(tmp_path) == []


# -- reading only regular files -------------------------------------------------------


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_load_fifo_does_not_hang(tmp_path: Path) -> None:
    fifo = tmp_path / "m.rq"
    os.mkfifo(fifo)
    with pytest.raises(rq.ArtifactError) as info:
        _run_with_timeout(lambda: rq.load(fifo))
    _msg(info, "FIFO", "regular files")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_cli_inspect_fifo_does_not_hang(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from rqcompile.cli import main

    fifo = tmp_path / "m.rq"
    os.mkfifo(fifo)
    assert _run_with_timeout(lambda: main(["inspect", str(fifo)])) == 1
    err = capsys.readouterr().err
    assert "FIFO" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_load_qat_fifo_does_not_hang(tmp_path: Path) -> None:
    fifo = tmp_path / "c.safetensors"
    os.mkfifo(fifo)
    with pytest.raises(rq.ArtifactError) as info:
        _run_with_timeout(lambda: rq.load_qat(fifo))
    _msg(info, "FIFO")


def test_load_directory(tmp_path: Path) -> None:
    with pytest.raises(rq.ArtifactError) as info:
        rq.load(tmp_path)
    _msg(info, str(tmp_path), "directory")


def test_load_unreadable_file_says_permission(
    tmp_path: Path, saved: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "m.rq"
    path.write_bytes(saved.read_bytes())
    path.chmod(0)
    try:
        if os.access(path, os.R_OK):  # root reads anything: simulate the refusal
            real = os.open

            def refuse(p: Any, *a: Any, **k: Any) -> int:
                if os.fspath(p) == str(path):
                    raise PermissionError(errno.EACCES, "Permission denied", str(path))
                return real(p, *a, **k)

            monkeypatch.setattr(os, "open", refuse)
        with pytest.raises(rq.ArtifactError) as info:
            rq.load(path)
        text = _msg(info, "m.rq", "permission denied", "ls -l")
        assert "corrupt" not in text
    finally:
        path.chmod(0o600)


def test_load_bytes_path(saved: Path) -> None:
    exe = rq.load(os.fsencode(saved))
    assert exe(torch.randn(2, 16)).shape == (2, 4)


@pytest.mark.parametrize("bad", [None, 3, 1.5, ["m.rq"]])
def test_load_non_path(bad: Any) -> None:
    with pytest.raises(rq.ArtifactError) as info:
        rq.load(bad)
    _msg(info, "must be a str, bytes or os.PathLike", type(bad).__name__)


# -- what an archive may contain ----------------------------------------------------------


def test_compressed_member_zip_bomb(tmp_path: Path, saved: Path) -> None:
    m = _members(saved)
    manifest = json.loads(m["manifest.json"])
    manifest["pad"] = " " * (8 << 20)  # inflates to 8 MiB from a few KiB
    m["manifest.json"] = json.dumps(manifest).encode()
    bad = _rezip(tmp_path / "bomb.rq", m, compress=zipfile.ZIP_DEFLATED)
    assert bad.stat().st_size < 256 << 10
    with pytest.raises(rq.ArtifactError) as info:
        rq.load(bad)
    _msg(info, "bomb.rq", "'manifest.json'", "compressed", "exe.save()")


def test_any_compressed_member_is_refused(tmp_path: Path, saved: Path) -> None:
    bad = _rezip(tmp_path / "z.rq", _members(saved), compress=zipfile.ZIP_DEFLATED)
    with pytest.raises(rq.ArtifactError) as info:
        rq.load(bad)
    _msg(info, "compressed")


def test_member_over_its_size_limit(
    tmp_path: Path, saved: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    m = _members(saved)
    monkeypatch.setitem(artifact_limits.MEMBER_LIMITS, "ir.mlir", len(m["ir.mlir"]) - 1)
    with pytest.raises(rq.ArtifactError) as info:
        rq.load(saved)
    _msg(info, "'ir.mlir'", "over its limit")


def test_members_over_the_total_limit(saved: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(artifact_limits, "TOTAL_LIMIT", 1000)
    with pytest.raises(rq.ArtifactError) as info:
        rq.load(saved)
    _msg(info, "total over")


def test_duplicate_member_names(tmp_path: Path, saved: Path) -> None:
    m = _members(saved)
    items = list(m.items()) + [("ir.mlir", b"func.func @main() { }")]
    bad = _rezip(tmp_path / "dup.rq", items)
    with pytest.raises(rq.ArtifactError) as info:
        rq.load(bad)
    _msg(info, "'ir.mlir' appears more than once")


@pytest.mark.parametrize("name", ["../evil.so", "/abs/ir.mlir", "sub/ir.mlir", "notes.txt"])
def test_member_names_save_never_writes(tmp_path: Path, saved: Path, name: str) -> None:
    m = _members(saved)
    m[name] = b"x"
    bad = _rezip(tmp_path / "n.rq", m)
    with pytest.raises(rq.ArtifactError) as info:
        rq.load(bad)
    _msg(info, "not a kind that exe.save() writes")


def test_symlink_member(tmp_path: Path, saved: Path) -> None:
    def link(info: zipfile.ZipInfo) -> None:
        if info.filename == "ir.mlir":
            info.external_attr = (stat.S_IFLNK | 0o777) << 16

    bad = _rezip(tmp_path / "l.rq", _members(saved), tweak=link)
    with pytest.raises(rq.ArtifactError) as info:
        rq.load(bad)
    _msg(info, "'ir.mlir'", "not a plain file")


def test_too_many_members(tmp_path: Path, saved: Path) -> None:
    items = list(_members(saved).items()) * 6
    bad = _rezip(tmp_path / "many.rq", items)
    with pytest.raises(rq.ArtifactError) as info:
        rq.load(bad)
    _msg(info, "members (an artifact has at most")


def test_genuine_artifact_passes_the_checker(saved: Path) -> None:
    with zipfile.ZipFile(saved) as z:
        assert artifact_limits.check_archive(z) is None
