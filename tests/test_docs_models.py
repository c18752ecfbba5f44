"""docs/models.md: every ```python block runs as written, top to bottom, in a fresh interpreter."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOC = os.path.join(ROOT, "docs", "models.md")
with open(DOC, encoding="utf-8") as _f:
    BLOCKS = re.findall(r"```python\n(.*?)```", _f.read(), re.S)


def test_models_doc_has_python_blocks() -> None:
    assert len(BLOCKS) >= 3


def test_models_doc_runs_top_to_bottom() -> None:
    pytest.importorskip("transformers")
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run(
        [sys.executable, "-c", "\n".join(BLOCKS)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = proc.stdout
    assert "note: captured with torch.export" in out
    assert "note: lm_head: weight lm_head.weight is tied to transformer.wte" in out
    assert "folded into" in out
