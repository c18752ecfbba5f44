"""The one way rqcompile writes and opens files.

Writing (:func:`atomic_write`, :func:`atomic_path`): every file rqcompile writes (artifacts,
QAT checkpoints, ``rqcompile opt -o``, pictures, IR dumps, benchmark reports) goes through
here, so every writer has the same guarantees:

* the data goes to a *unique* temporary file created exclusively (``O_CREAT | O_EXCL``, by
  :func:`tempfile.mkstemp`) in the target's directory: a symlink planted at a predictable
  name cannot redirect the write, and concurrent writers never share a temporary file;
* the temporary file is flushed and ``fsync``'ed, then renamed over the target (atomic on
  POSIX): readers see the old file or the new one, never a half-written one; a symlink *at*
  the target is replaced, not followed;
* the new file gets the mode an ordinary ``open(path, "w")`` would give it: an existing
  file keeps its mode, a new one gets ``0o666 & ~umask`` (``mkstemp`` alone makes 0600);
* on any failure (full disk, permission, an exception in the writer, Ctrl-C) the temporary
  file is removed and the target is untouched; ``OSError`` becomes
  :class:`~rqcompile.errors.ArtifactError` (still an ``OSError``) saying what, why and how.

Reading (:func:`open_regular`, :func:`check_regular`): only regular files are opened. A FIFO,
socket or device would block ``open``/``read`` forever (``rq.load(fifo)``), so the file is
opened non-blocking, checked with ``fstat`` on the open descriptor (no check-then-open race),
and refused unless it is a regular file. Permission errors are reported as such.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from collections.abc import Callable, Iterator
from typing import IO, Any

from rqcompile.errors import ArtifactError, RQError

__all__ = [
    "atomic_path",
    "atomic_write",
    "check_regular",
    "fspath",
    "new_file_mode",
    "open_regular",
    "read_text",
]


def fspath(path: Any, *, what: str = "path") -> str:
    """``path`` as ``str``: ``str``, ``bytes`` (decoded as the OS does) or ``os.PathLike``.

    Raises:
        ArtifactError: anything else (``None``, a number, an open file object).
    """
    try:
        p = os.fspath(path)
    except TypeError:
        raise ArtifactError(
            f"{what} must be a str, bytes or os.PathLike file name, got "
            f"{type(path).__name__} {_short(path)}."
        ) from None
    if isinstance(p, bytes):
        p = os.fsdecode(p)
    if not p or "\x00" in p:
        raise ArtifactError(f"{what} {p!r} is not a valid file name (empty or contains NUL).")
    return p


def _short(x: Any) -> str:
    r = repr(x)
    return r if len(r) <= 60 else r[:57] + "..."


def _umask() -> int:
    """The process umask, without changing it (``/proc``) where possible."""
    with contextlib.suppress(OSError, ValueError):
        with open("/proc/self/status", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    mask = os.umask(0o022)  # no /proc: read it the classic way (not thread-safe, brief)
    os.umask(mask)
    return mask


def new_file_mode(path: str) -> int:
    """The mode ``path`` should get: its current mode if it is an existing regular file, else
    what ``open(path, "w")`` would create (``0o666 & ~umask``)."""
    try:
        st = os.stat(path)
    except OSError:
        return 0o666 & ~_umask()
    if stat.S_ISREG(st.st_mode):
        return stat.S_IMODE(st.st_mode)
    return 0o666 & ~_umask()


def _write_error(path: str, e: OSError, what: str) -> ArtifactError:
    d = os.path.dirname(os.path.abspath(path))
    return ArtifactError(
        f"{path}: cannot write {what} ({type(e).__name__}: {e.strerror or e}); nothing was "
        f"written. Check that {d} exists, is writable and has free space, or save elsewhere."
    )
    return err


@contextlib.contextmanager
def atomic_path(path: Any, *, what: str = "the file") -> Iterator[str]:
    """Yield a fresh temporary path beside ``path``; on normal exit it replaces ``path``.

    For writers that need a file *name* (``safetensors.save_file``, ``savefig``, a
    subprocess). The temporary file exists (empty, created exclusively) when the block starts.

    Raises:
        ArtifactError: the directory is missing or not writable, the disk is full, ...
    """
    p = fspath(path)
    d = os.path.dirname(os.path.abspath(p))
    base = os.path.basename(p)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=d, prefix=f".{base}.", suffix=".rqtmp")
        os.close(fd)
        yield tmp
        mode = new_file_mode(p)
        with open(tmp, "rb+") as fh:  # the writer may have closed (or replaced) the file
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, p)
        tmp = None
        with contextlib.suppress(OSError):  # make the rename itself durable
            dfd = os.open(d, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
    except OSError as e:
        if isinstance(e, RQError):
            raise
        raise _write_error(p, e, what) from e
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)


def atomic_write(
    path: Any,
    data: bytes | str | Callable[[IO[bytes]], None],
    *,
    what: str = "the file",
) -> str:
    """Write ``data`` (bytes, text as UTF-8, or a function given the open binary file) to
    ``path`` atomically; return the path as ``str``.

    Raises:
        ArtifactError: as :func:`atomic_path`; nothing is written and no temporary is left.
    """
    p = fspath(path)
    with atomic_path(p, what=what) as tmp, open(tmp, "wb") as fh:
        if callable(data):
            data(fh)
        else:
            fh.write(data.encode("utf-8") if isinstance(data, str) else data)
        fh.flush()
    return p


def _read_error(path: str, e: OSError, what: str) -> ArtifactError:
    if isinstance(e, PermissionError):
        msg = (
            f"{path}: permission denied: cannot read {what} ({e.strerror}). Check the file's "
            f"permissions (ls -l {path}) or run as a user who may read it."
        )
    elif isinstance(e, FileNotFoundError):
        msg = f"{path}: no such file."
    elif isinstance(e, IsADirectoryError):
        msg = f"{path}: is a directory, not {what}."
    else:
        msg = f"{path}: cannot read {what} ({type(e).__name__}: {e.strerror or e})."
    return ArtifactError(msg)


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISFIFO, "a FIFO (named pipe)"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISDIR, "a directory"),
    ):
        if test(mode):
            return name
    return "not a regular file"


def open_regular(path: Any, *, what: str = "the file") -> IO[bytes]:
    """Open ``path`` for binary reading if, and only if, it is a regular file.

    Never blocks on a FIFO: the open is non-blocking and the type is checked on the open
    descriptor.

    Raises:
        ArtifactError: missing, unreadable (permission), or not a regular file.
    """
    p = fspath(path)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0)
    try:
        fd = os.open(p, flags)
    except OSError as e:
        raise _read_error(p, e, what) from e
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ArtifactError(
                f"{p}: is {_kind(st.st_mode)}, not {what}; rqcompile reads only regular files "
                "(copy the data to a file first)."
            )
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def check_regular(path: Any, *, what: str = "the file") -> str:
    """Raise :class:`ArtifactError` unless ``path`` is a readable regular file; return it as
    ``str``. For readers that need a file name (``safetensors.safe_open``)."""
    p = fspath(path)
    with open_regular(p, what=what):
        return p


def read_text(path: Any, *, what: str = "the file", limit: int | None = None) -> str:
    """A regular file's text (UTF-8), with typed errors for everything that can go wrong.

    Raises:
        ArtifactError: as :func:`open_regular`, larger than ``limit`` bytes, or not UTF-8.
    """
    p = fspath(path)
    with open_regular(p, what=what) as fh:
        data = fh.read() if limit is None else fh.read(limit + 1)
    if limit is not None and len(data) > limit:
        raise ArtifactError(f"{p}: {what} is larger than {limit} bytes; refusing to read it.")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ArtifactError(
            f"{p}: {what} is not UTF-8 text (byte {e.object[e.start]:#04x} at offset "
            f"{e.start}); give the text file rqcompile wrote, or re-encode it as UTF-8."
        ) from e
