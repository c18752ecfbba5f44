"""Every ```python block of docs/targets.md runs, top to bottom, in one fresh interpreter."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOC = os.path.join(ROOT, "docs", "targets.md")
BLOCKS = re.findall(r"```python\n(.*?)```", open(DOC, encoding="utf-8").read(), re.S)


def test_doc_has_python_blocks() -> None:
    assert len(BLOCKS) >= 3


@pytest.mark.tvm
def test_doc_blocks_run_in_a_fresh_interpreter(tmp_path: object) -> None:
    pytest.importorskip("tvm")
    pytest.importorskip("pyopencl", reason="pyopencl missing: pip install 'rqcompile[opencl]'")
    code = "\n".join(BLOCKS)
    env = {**os.environ, "PYTHONPATH": ROOT}
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, env=env
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
