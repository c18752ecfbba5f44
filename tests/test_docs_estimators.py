"""docs/estimators.md: every ```python block runs, top to bottom, in a fresh interpreter."""

from __future__ import annotations

import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOC = os.path.join(ROOT, "docs", "estimators.md")


def test_estimators_doc_blocks_run_in_order() -> None:
    blocks = re.findall(r"```python\n(.*?)```", open(DOC, encoding="utf-8").read(), re.S)
    assert len(blocks) >= 4
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    r = subprocess.run(
        [sys.executable, "-c", "\n".join(blocks)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    out = r.stdout
    for est in ("ridge", "ste", "pege", "gdnsq", "distilled"):
        assert f"{est} " in out
    assert "learned bits" not in out or "→" in out
