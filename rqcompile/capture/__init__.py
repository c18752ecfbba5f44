"""Capture an ``nn.Module`` as a float ``torch.fx.GraphModule`` (auxiliary; see api.prepare)."""

from rqcompile.capture.trace import capture, owner_of, source_of

__all__ = ["capture", "owner_of", "source_of"]
