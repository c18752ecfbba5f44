"""Shared helpers of the IR-pass tests: run one pass on a module and print the result."""

from __future__ import annotations

from typing import Any

from rqcompile.ir.core import Module
from rqcompile.ir.printer import print_module
from rqcompile.ir.verify import verify
from rqcompile.passes.infra import PassContext, PassManager


def run_pass(p: Any, mod: Module) -> Module:
    """``p`` on ``mod`` through the PassManager (verifier after it), as a pipeline runs it."""
    return PassManager([p], verifier=verify).run(mod, PassContext())


def body(mod: Module) -> str:
    """The function lines of the printed module (no constants header)."""
    return "\n".join(l.strip() for l in print_module(mod).splitlines()
                     if l.strip().startswith(("%", '"func.return')))  # fmt: skip
