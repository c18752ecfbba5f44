"""Fixtures for the demo tests.

The demo tests train tiny models whose ops are too small to gain from intra-op threads, and
on a shared 2-core machine two OpenMP threads that wait on each other at every op run 3-10x
slower than one under load. Each test therefore runs with one intra-op thread; the caller's
setting is restored afterwards (the library itself never changes it).
"""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread: None) -> None:
    """Every test here runs with one intra-op thread (``tests/conftest.py``)."""
