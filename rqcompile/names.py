"""One place that turns model names into identifiers every code generator accepts.

Layer and constant names come from the model: ``nn.Sequential`` names its layers ``0``, ``1``,
..., and constant names join them with dots (``0.wq``). C, OpenCL, CUDA and Metal need
``[A-Za-z_][A-Za-z0-9_]*``; TVM passes names through to the generated source. So every name
that becomes a symbol in generated code goes through :func:`identifier` exactly once, where the
IR is handed to a code generator (``targets/tvm/emit/module.py``, shared by every TVM and device
target). The result is deterministic, and names that had to change get a short hash so that
``a.b`` and ``a_b`` stay distinct.
"""

from __future__ import annotations

import hashlib
import re

__all__ = ["identifier"]

_VALID = re.compile(r"[A-Za-z_][A-Za-z0-9_]*", re.ASCII)
_BAD = re.compile(r"[^A-Za-z0-9_]", re.ASCII)


def identifier(name: str, *, prefix: str = "w_") -> str:
    """A valid C identifier for ``name``: ``name`` itself when it already is one.

    >>> identifier("fc.weight"), identifier("0.wq"), identifier("bias")
    ('w_fc_weight_cb60d2', 'w_0_wq_ac05d5', 'bias')
    """
    if _VALID.fullmatch(name) and not name.startswith("__"):
        return name
    tag = hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:6]
    return f"{prefix}{_BAD.sub('_', name)}_{tag}"
