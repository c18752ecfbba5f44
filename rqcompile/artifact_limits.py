"""What an artifact zip may contain: exactly the kinds of member ``CompiledModule.save`` writes.

``read_artifact`` checks the archive's directory against these rules *before* reading any
member, so a hostile file cannot make ``rq.load`` inflate gigabytes, read a member twice
under one name, or follow a link:

* members are stored (``ZIP_STORED``): ``save`` never compresses, so a compressed member
  (the zip-bomb vector: 49 KiB that inflate to 48 MiB) is refused, whatever it inflates to;
* every member is a plain file with a name ``save`` writes (:data:`MEMBER_NAMES`); no
  directories, symlinks, encryption, paths (``a/b``, ``..``) or duplicate names;
* each member is at most its limit in :data:`MEMBER_LIMITS` (the manifest 1 MiB; the rest
  :data:`DEFAULT_MEMBER_LIMIT`) and all together at most :data:`TOTAL_LIMIT`;
* at most :data:`MAX_MEMBERS` entries.

The limits are module constants (bytes); raise them here if a real model needs more.
"""

from __future__ import annotations

import stat
import zipfile
from typing import Any

__all__ = [
    "DEFAULT_MEMBER_LIMIT",
    "MAX_MEMBERS",
    "MEMBER_LIMITS",
    "MEMBER_NAMES",
    "TOTAL_LIMIT",
    "check_archive",
]

MiB = 1 << 20
GiB = 1 << 30

#: Every member name ``CompiledModule.save`` can write (CPU TVM and device targets).
MEMBER_NAMES = frozenset(
    {
        "manifest.json",
        "ir.mlir",
        "weights.safetensors",
        "kernels.so",
        "device_plan.json",
        "kernels.cl",
        "kernels.cu",
        "kernels.metal",
        "kernels.fatbin",
    }
)

MEMBER_LIMITS = {
    "manifest.json": 1 * MiB,
    "device_plan.json": 64 * MiB,
    "ir.mlir": 256 * MiB,
    "kernels.cl": 64 * MiB,
    "kernels.cu": 64 * MiB,
    "kernels.metal": 64 * MiB,
}
DEFAULT_MEMBER_LIMIT = 16 * GiB  # weights of a large model, a big kernels.so
TOTAL_LIMIT = 32 * GiB
MAX_MEMBERS = 16


def _size(n: int) -> str:
    return f"{n / MiB:.1f} MiB" if n >= MiB else f"{n} bytes"


def check_archive(z: zipfile.ZipFile) -> str | None:
    """The first way ``z`` differs from what ``save`` writes, or ``None`` when it does not."""
    infos = z.infolist()
    if len(infos) > MAX_MEMBERS:
        return f"{len(infos)} members (an artifact has at most {MAX_MEMBERS})"
    seen: set[str] = set()
    total = 0
    for info in infos:
        name = info.filename
        if name in seen:
            return f"member {name!r} appears more than once (refusing to guess which is real)"
        seen.add(name)
        if name not in MEMBER_NAMES:
            return f"member {name!r} is not a kind that exe.save() writes"
        problem = _member_problem(info)
        if problem:
            return f"member {name!r} {problem}"
        limit = MEMBER_LIMITS.get(name, DEFAULT_MEMBER_LIMIT)
        if info.file_size > limit:
            return f"member {name!r} is {_size(info.file_size)}, over its limit of {_size(limit)}"
        total += info.file_size
        if total > TOTAL_LIMIT:
            return f"members total over {_size(TOTAL_LIMIT)}"
    return None


def _member_problem(info: Any) -> str | None:
    if info.compress_type != zipfile.ZIP_STORED:
        return (
            f"is compressed (method {info.compress_type}); exe.save() stores members "
            "uncompressed, so a compressed one was not written by it"
        )
    if info.flag_bits & 0x1:
        return "is encrypted"
    if info.is_dir():
        return "is a directory"
    unix_mode = info.external_attr >> 16
    if stat.S_IFMT(unix_mode) not in (0, stat.S_IFREG):  # save writes no type bits
        return "is not a plain file (a link or special file)"
    if info.compress_size != info.file_size:
        return (
            f"says it is stored but its sizes differ ({info.compress_size} vs "
            f"{info.file_size} bytes)"
        )
    return None
