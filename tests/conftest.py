"""Shared fixtures and test tiers.

Markers: ``tvm`` (needs apache-tvm; runs in CI), ``cuda`` (needs an NVIDIA GPU; skipped
without one), ``slow`` (skipped unless ``--runslow``).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator

import pytest
import torch


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--runslow", action="store_true", help="run tests marked slow")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    have_tvm = importlib.util.find_spec("tvm") is not None
    have_cuda = torch.cuda.is_available()
    for item in items:
        if "slow" in item.keywords and not config.getoption("--runslow"):
            item.add_marker(pytest.mark.skip(reason="slow: run with --runslow"))
        if "tvm" in item.keywords and not have_tvm:
            item.add_marker(pytest.mark.skip(reason="apache-tvm not installed"))
        if "cuda" in item.keywords and not have_cuda:
            item.add_marker(pytest.mark.skip(reason="no CUDA GPU"))


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture
def one_torch_thread() -> Iterator[None]:
    """One intra-op thread for the test, the caller's setting restored afterwards.

    Tiny models gain nothing from intra-op threads, and on a shared 2-core machine two
    OpenMP threads that wait on each other at every op run 3-10x slower under load. The
    demo and CLI tests use it for every test (an autouse fixture in their conftest).
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
