"""Tiny deterministic models used by tests, examples and docs (no downloads)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["PARITY_PRESETS", "TinyAttention", "TinyCNN", "TinyMLP", "prepared_tiny", "tiny_models"]


class TinyMLP(nn.Module):
    """Linear(64→128) → ReLU → Linear(128→128) → ReLU → Linear(128→10)."""

    def __init__(self, d_in: int = 64, hidden: int = 128, d_out: int = 10) -> None:
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, d_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.relu(self.fc2(F.relu(self.fc1(x)))))


class TinyCNN(nn.Module):
    """Conv stack with a grouped and a depthwise conv, then a linear head; 1×8×8 inputs."""

    def __init__(self, width: int = 32) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, width, 3, padding=1)
        self.conv2 = nn.Conv2d(width, width * 2, 3, padding=1)
        self.conv3 = nn.Conv2d(width * 2, width * 2, 3, padding=1, groups=2)
        self.dw = nn.Conv2d(width * 2, width * 2, 3, padding=1, groups=width * 2)
        self.fc = nn.Linear(width * 2, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv1(x))
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = F.relu(self.dw(F.relu(self.conv3(x))))
        return self.fc(x.mean(dim=(2, 3)))


class TinyAttention(nn.Module):
    """One pre-LN causal self-attention block with an MLP (explicit matmuls, traceable)."""

    def __init__(self, d: int = 64, heads: int = 2, max_len: int = 16) -> None:
        super().__init__()
        self.heads = heads
        self.ln1 = nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.ln2 = nn.LayerNorm(d)
        self.fc = nn.Linear(d, 4 * d)
        self.out = nn.Linear(4 * d, d)
        self.register_buffer("mask", torch.tril(torch.ones(max_len, max_len, dtype=torch.bool)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(d, dim=2)
        hd = d // self.heads
        q = q.reshape(b, t, self.heads, hd).transpose(1, 2)
        k = k.reshape(b, t, self.heads, hd).transpose(1, 2)
        v = v.reshape(b, t, self.heads, hd).transpose(1, 2)
        att = torch.matmul(q, k.transpose(-2, -1)) * (1.0 / math.sqrt(hd))
        att = att.masked_fill(~self.mask[:t, :t], float("-inf")).softmax(dim=-1)
        y = torch.matmul(att, v).transpose(1, 2).reshape(b, t, d)
        x = x + self.proj(y)
        return x + self.out(F.gelu(self.fc(self.ln2(x))))


def tiny_models() -> dict[str, tuple[nn.Module, tuple[torch.Tensor, ...]]]:
    """Name → (model, example inputs), seeded."""
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    return {
        "mlp": (TinyMLP(), (torch.randn(8, 64, generator=g),)),
        "cnn": (TinyCNN(), (torch.randn(4, 1, 8, 8, generator=g),)),
        "attention": (TinyAttention(), (torch.randn(2, 16, 64, generator=g),)),
    }


#: Presets the parity tests run over.
PARITY_PRESETS = ("A8W8", "A4W4", "A2W2", "A1W1", "A1.5W1.5", "A4W1+2:4", "W4")


def prepared_tiny(
    name: str, preset: str, *, steps: int = 2
) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    """A tiny model prepared with ``preset`` and trained ``steps`` SGD steps, in eval mode.

    The parity recipe shared by the reference and TVM tests: the CNN keeps its 1-channel first
    conv and depthwise conv float under 2:4 presets (their blocks of 9 cannot be 2:4-sparse);
    attention matmuls are quantized except for ternary, where a 1e-7 upstream float
    difference can flip a code at a rounding tie (1 LSB at that quantizer) and propagate.
    """
    import rqcompile as rq

    model, ex = tiny_models()[name]
    kw: dict[str, object] = {}
    if name == "cnn" and "+" in preset:
        kw["overrides"] = {"conv1": None, "dw": None}
    if name == "attention" and preset != "A1.5W1.5":
        kw["quantize_attention"] = True
    qat = rq.prepare(model, ex, preset, **kw)
    opt = torch.optim.SGD(qat.parameters(), lr=1e-2)
    for _ in range(steps):
        loss = qat(*ex).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return qat.eval(), ex
