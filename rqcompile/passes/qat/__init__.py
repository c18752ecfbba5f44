"""fx → fx passes run by ``prepare`` (one pass per file)."""

from rqcompile.passes.qat.fold_batchnorm import FoldBatchNorm
from rqcompile.passes.qat.quantize_attention import QuantizeAttention
from rqcompile.passes.qat.quantize_layers import QuantizeLayers

__all__ = ["FoldBatchNorm", "QuantizeAttention", "QuantizeLayers"]
