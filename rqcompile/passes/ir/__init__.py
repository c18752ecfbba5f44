"""rq IR → rq IR passes, one file each; importing this package registers them all.

``convert`` runs ``fold-constants,eliminate-dead-code``; a target's pipeline runs its own list
(``targets/tvm/pipelines.py`` for llvm: ``fuse-attention``, ``select-kernels``,
``fuse-prologue``, ``pack-weights``) before it emits code; ``rq.lower(..., generate=True)``
runs ``kv-cache`` after convert. Lowering decisions are recorded as
annotations on the ops (``rq.kernel``, ``rq.fused``, ``rq.weight_layout``: attributes named
``rq.<name>``), so they show in the IR text, ``rq.inspect`` and ``DumpIR``, and
``rqcompile opt --passes ...`` replays any pass on an IR file.
"""

from rqcompile.passes.ir.eliminate_dead_code import EliminateDeadCode
from rqcompile.passes.ir.fold_constants import FoldConstants
from rqcompile.passes.ir.fuse_attention import FuseAttention
from rqcompile.passes.ir.fuse_prologue import FusePrologue
from rqcompile.passes.ir.kv_cache import KVCache
from rqcompile.passes.ir.pack_weights import PackWeights
from rqcompile.passes.ir.pad_columns import PadColumns
from rqcompile.passes.ir.select_kernels import SelectKernels

__all__ = [
    "EliminateDeadCode",
    "FoldConstants",
    "FuseAttention",
    "FusePrologue",
    "KVCache",
    "PackWeights",
    "PadColumns",
    "SelectKernels",
]
