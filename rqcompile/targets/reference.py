"""The ``reference`` target: runs rq IR op by op with pure-torch kernels. It is the oracle.

The kernels are the IR's own semantics (:mod:`rqcompile.ir.semantics`); this module is the
target's name for them. Always available (no TVM, no compiler).
"""

from __future__ import annotations

from rqcompile.ir.semantics import KERNELS, run_reference

__all__ = ["KERNELS", "run_reference"]
