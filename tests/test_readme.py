"""Every ```python block in README.md and docs/*.md runs as written.

README blocks run one by one (each stands alone). A docs page runs top to bottom as one script
in a fresh interpreter (``<page>_md.py`` in a temporary directory), as a reader would paste
it. A block that needs something unavailable here carries a visible marker on the line
before it, ``<!-- docs-test: skip: <reason> -->``; use it sparingly.

docs/troubleshooting.md pastes real error messages: its script's output must appear in the
page (directories in paths are compared as ``...``).
"""

from __future__ import annotations

import glob
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, "README.md")
DOCS = sorted(glob.glob(os.path.join(ROOT, "docs", "*.md")))
_BLOCK = re.compile(r"(<!--\s*docs-test:\s*skip:([^>]*)-->\s*\n)?```python\n(.*?)```", re.S)


def blocks(path: str) -> list[tuple[str, str | None]]:
    """``(code, skip_reason)`` for each python block of a markdown file."""
    text = Path(path).read_text(encoding="utf-8")
    return [(m.group(3), m.group(2).strip() if m.group(1) else None) for m in _BLOCK.finditer(text)]


BLOCKS = blocks(README)


def test_readme_has_python_blocks() -> None:
    assert len(BLOCKS) >= 3


@pytest.mark.parametrize("i", range(len(BLOCKS)))
def test_readme_block_runs(i: int) -> None:
    code, skip = BLOCKS[i]
    if skip is not None:
        pytest.skip(f"marked in README.md: {skip}")
    exec(compile(code, f"README.md block {i}", "exec"), {"__name__": "__readme__"})


def test_skip_markers_give_reasons() -> None:
    for path in [README, *DOCS]:
        for _, reason in blocks(path):
            assert reason is None or len(reason) >= 10, f"{path}: skip marker without a reason"


def _run_page(path: str, tmp: Path) -> subprocess.CompletedProcess[str]:
    runnable = [code for code, skip in blocks(path) if skip is None]
    if not runnable:
        pytest.skip(f"{os.path.basename(path)} has no runnable python blocks")
    script = tmp / (Path(path).stem + "_md.py")
    script.write_text("\n".join(runnable), encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": ROOT, "MPLBACKEND": "Agg", "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, script.name],
        cwd=tmp,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )


# optional packages a page needs (all in the `dev` extra), and lines its output must contain
NEEDS = {"models.md": "transformers", "mlir.md": "torch_mlir", "targets.md": "pyopencl"}
EXPECT = {
    "models.md": [
        "note: captured with torch.export",
        "note: lm_head: weight lm_head.weight is tied to transformer.wte",
        "folded into",
    ],
    "estimators.md": ["ridge ", "ste ", "pege ", "gdnsq ", "distilled "],
    "mlir.md": ["max |mlir - reference|"],
}


@pytest.mark.parametrize("path", DOCS, ids=[os.path.basename(p) for p in DOCS])
def test_docs_page_runs(path: str, tmp_path: Path) -> None:
    name = os.path.basename(path)
    if name in NEEDS:
        pytest.importorskip(NEEDS[name], reason=f"{name} needs {NEEDS[name]} (in rqcompile[dev])")
    r = _run_page(path, tmp_path)
    assert r.returncode == 0, f"{path}:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    for want in EXPECT.get(name, []):
        assert want in r.stdout, f"{name}: output lacks {want!r}"
    if path.endswith("troubleshooting.md"):
        norm = re.compile(r"(?:/[^\s/:'\"]+)+/")
        page = norm.sub(".../", Path(path).read_text(encoding="utf-8"))
        for line in r.stdout.splitlines():
            assert norm.sub(".../", line) in page, f"message not pasted as printed: {line}"
