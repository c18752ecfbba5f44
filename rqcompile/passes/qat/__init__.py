"""fx → fx passes run by ``prepare`` (one pass per file)."""

from rqcompile.passes.qat.quantize_attention import QuantizeAttention
from rqcompile.passes.qat.quantize_layers import QuantizeLayers

__all__ = ["QuantizeAttention", "QuantizeLayers"]
