"""The docstring examples of rqcompile.ir run as doctests."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = ["builder", "core", "ops", "parser", "printer", "types", "uses", "verify", "__init__"]


@pytest.mark.parametrize("name", MODULES)
def test_doctests(name: str) -> None:
    module = importlib.import_module(
        "rqcompile.ir" if name == "__init__" else f"rqcompile.ir.{name}"
    )
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0
