"""``pack-weights``: choose the weight layout of every kernel that offers a packed one."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from rqcompile.errors import PassError
from rqcompile.ir.core import Module, Op
from rqcompile.ir.uses import Uses
from rqcompile.passes.infra import PassResult, register_pass
from rqcompile.passes.ir.common import annotate
from rqcompile.passes.ir.kernel_table import find_row
from rqcompile.quant.primitives import QFormat, code_range

__all__ = ["PackWeights", "activation_code_range"]


def activation_code_range(g: Uses, op: Op) -> tuple[int, int] | None:
    """The code range of ``op``'s activation operand where an unpacked ``rq.quantize`` of
    fewer than 8 bits defines it (narrower codes allow a faster weight layout), else None."""
    src = g.op_of(op.operands[0])
    if src is None or src.name != "rq.quantize" or str(src.attr("pack")) != "none":
        return None
    bits = float(src.attr("bits"))  # type: ignore[arg-type]
    fmt = QFormat(bits=bits, symmetric=bool(src.attr("symmetric")))
    return code_range(fmt) if bits < 8 else None


@register_pass
@dataclass(frozen=True)
class PackWeights:
    """pack-weights: annotate ops whose kernel row has a packed layout that fits.

    Before:  %5 = "rq.int_matmul"(...) {..., rq.kernel = "int_matmul.avx2"}
    After:   %5 = "rq.int_matmul"(...) {..., rq.kernel = "int_matmul.avx2",
                                         rq.weight_layout = "panels", rq.x_range = [-8, 7]}
    The target packs those weights once, when they are bound (TVM: a pack PrimFunc that
    ``lift-params`` moves out of ``main``). ``rq.x_range`` records the activation codes'
    range for layouts that depend on it (7-bit codes take ``vpmaddubsw`` K-quads).
    Requires: select-kernels. Numerics: exact.
    """

    name: ClassVar[str] = "pack-weights"
    table: str = "llvm"

    def run(self, mod: Module, ctx: Any) -> PassResult[Module]:
        changed = False
        for f in mod.funcs:
            g = Uses(f)
            marks: dict[int, dict[str, Any]] = {}
            for i, op in enumerate(f.ops):
                kernel = op.attr("rq.kernel", None)
                if kernel is None:
                    if op.name in ("rq.int_matmul", "rq.xnor_popcount_matmul",
                                   "rq.sparse24_matmul", "rq.wo_matmul"):  # fmt: skip
                        raise PassError("pack-weights: run select-kernels first (an "
                                        f"{op.name} has no rq.kernel annotation).")  # fmt: skip
                    continue
                pack = find_row(self.table, str(kernel)).pack
                if pack is None:
                    continue
                xr = activation_code_range(g, op) if pack.uses_x_range else None
                if pack.supported(op, xr):
                    marks[i] = {"weight_layout": pack.layout,
                                "x_range": tuple(xr) if xr is not None else None}  # fmt: skip
            mod, ch = annotate(mod, mod.func(f.name), marks)
            changed |= ch
        return PassResult(mod, changed)
