"""Demo models: a nanoGPT-style character transformer and a small CNN for 8x8 digits.

Both trace with ``torch.fx.symbolic_trace``: no Python control flow depends on tensor
values, sizes are read with ``Tensor.size(dim)`` (a traced node) and never unpacked, and the
attention is written out with ``torch.matmul`` / ``masked_fill`` / ``softmax`` so a
quantization rewrite sees both attention matmuls. ``forward`` returns logits only; losses
live in :mod:`rqcompile.demo.train`, which keeps the graphs generic.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "MLP",
    "Block",
    "CausalSelfAttention",
    "CharTransformer",
    "DigitsCNN",
    "generate",
    "param_count",
]


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention with explicit matmuls.

    ``c_attn`` projects to q, k, v in one ``Linear(n_embd, 3 * n_embd)``; scores are
    ``matmul(q, k^T) * head_dim**-0.5``, masked with the boolean ``mask`` buffer (lower
    triangular, ``block_size`` square) cut to ``[:t, :t]``, softmax, ``matmul(att, v)``.
    """

    def __init__(self, n_embd: int, n_head: int, block_size: int, dropout: float = 0.0) -> None:
        super().__init__()
        if n_embd % n_head:
            raise ValueError(f"n_embd={n_embd} is not divisible by n_head={n_head}")
        self.n_head = n_head
        self.n_embd = n_embd
        self.head_dim = n_embd // n_head
        self.scale = 1.0 / math.sqrt(self.head_dim)
        self.c_attn = nn.Linear(n_embd, 3 * n_embd)
        self.c_proj = nn.Linear(n_embd, n_embd)
        self.attn_drop = nn.Dropout(dropout)
        self.resid_drop = nn.Dropout(dropout)
        # Persistent so the eager module's and a traced GraphModule's state dicts agree
        # (fx copies buffers it sees through get_attr as persistent buffers).
        mask = torch.tril(torch.ones(block_size, block_size, dtype=torch.bool))
        self.register_buffer("mask", mask)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, C) -> (B, T, C)."""
        b, t = x.size(0), x.size(1)
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        q = q.view(b, t, self.n_head, self.head_dim).transpose(1, 2)
        k = k.view(b, t, self.n_head, self.head_dim).transpose(1, 2)
        v = v.view(b, t, self.n_head, self.head_dim).transpose(1, 2)
        att = torch.matmul(q, k.transpose(-2, -1)) * self.scale
        # mask[:t, :t], written with narrow: the default fx tracer does not proxy buffers, and
        # slicing a real tensor by a traced size fails, while torch.narrow records a node.
        causal = torch.narrow(torch.narrow(self.mask, 0, 0, t), 1, 0, t)
        att = att.masked_fill(~causal, float("-inf"))
        att = self.attn_drop(F.softmax(att, dim=-1))
        y = torch.matmul(att, v)
        y = y.transpose(1, 2).contiguous().view(b, t, self.n_embd)
        return self.resid_drop(self.c_proj(y))


class MLP(nn.Module):
    """``fc`` (4x) -> GELU -> ``proj``."""

    def __init__(self, n_embd: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.fc = nn.Linear(n_embd, 4 * n_embd)
        self.act = nn.GELU()
        self.proj = nn.Linear(4 * n_embd, n_embd)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, C) -> (B, T, C)."""
        return self.drop(self.proj(self.act(self.fc(x))))


class Block(nn.Module):
    """Pre-LN transformer block: ``x + attn(ln1(x))``, then ``x + mlp(ln2(x))``."""

    def __init__(self, n_embd: int, n_head: int, block_size: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(n_embd)
        self.attn = CausalSelfAttention(n_embd, n_head, block_size, dropout)
        self.ln2 = nn.LayerNorm(n_embd)
        self.mlp = MLP(n_embd, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, C) -> (B, T, C)."""
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class CharTransformer(nn.Module):
    """nanoGPT-style pre-LN GPT for character language modelling.

    Token and learned position embeddings, ``n_layer`` blocks, a final LayerNorm and an
    untied, bias-free ``lm_head``. Initialization follows nanoGPT (normal std 0.02,
    residual projections scaled by ``1/sqrt(2 * n_layer)``).

    Module names: ``tok_emb``, ``pos_emb``, ``blocks.{i}.ln1``, ``blocks.{i}.attn.c_attn``,
    ``blocks.{i}.attn.c_proj``, ``blocks.{i}.ln2``, ``blocks.{i}.mlp.fc``,
    ``blocks.{i}.mlp.proj``, ``ln_f``, ``lm_head``.

    Args:
        vocab_size: Number of token ids.
        n_layer: Transformer blocks.
        n_head: Attention heads (must divide ``n_embd``).
        n_embd: Model width.
        block_size: Longest input sequence.
        dropout: Dropout probability (embeddings, attention, residual branches).

    Example:
        >>> m = CharTransformer(65, n_layer=1, n_embd=32, block_size=16)
        >>> m(torch.zeros(2, 10, dtype=torch.long)).shape
        torch.Size([2, 10, 65])
    """

    def __init__(
        self,
        vocab_size: int,
        *,
        n_layer: int = 2,
        n_head: int = 4,
        n_embd: int = 128,
        block_size: int = 64,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.vocab_size = vocab_size
        self.block_size = block_size
        self.tok_emb = nn.Embedding(vocab_size, n_embd)
        self.pos_emb = nn.Embedding(block_size, n_embd)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(
            Block(n_embd, n_head, block_size, dropout) for _ in range(n_layer)
        )
        self.ln_f = nn.LayerNorm(n_embd)
        self.lm_head = nn.Linear(n_embd, vocab_size, bias=False)
        self.apply(self._init_weights)
        for name, p in self.named_parameters():
            if name.endswith(("c_proj.weight", "mlp.proj.weight")):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        """Token ids ``(B, T)`` with ``T <= block_size`` -> logits ``(B, T, vocab_size)``."""
        t = idx.size(1)
        x = self.tok_emb(idx) + self.pos_emb.weight[:t]
        x = self.drop(x)
        for block in self.blocks:
            x = block(x)
        return self.lm_head(self.ln_f(x))


class DigitsCNN(nn.Module):
    """Small CNN for 1x8x8 digits; at ``width=32`` every channel count is a multiple of 32.

    conv1(1->w)-bn1-ReLU, conv2(w->2w)-bn2-ReLU, maxpool 2, conv3(2w->2w)-ReLU,
    global average pool, ``fc`` (2w->10).

    Example:
        >>> DigitsCNN()(torch.zeros(4, 1, 8, 8)).shape
        torch.Size([4, 10])
    """

    def __init__(self, width: int = 32, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(width, 2 * width, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(2 * width)
        self.relu2 = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.conv3 = nn.Conv2d(2 * width, 2 * width, 3, padding=1)
        self.relu3 = nn.ReLU()
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Images ``(B, 1, 8, 8)`` -> logits ``(B, num_classes)``."""
        x = self.relu1(self.bn1(self.conv1(x)))
        x = self.pool(self.relu2(self.bn2(self.conv2(x))))
        x = self.relu3(self.conv3(x))
        return self.fc(torch.flatten(self.gap(x), 1))


def param_count(model: nn.Module, *, trainable_only: bool = False) -> int:
    """Number of parameter elements, counting shared parameters once.

    Example:
        >>> param_count(nn.Linear(3, 2))
        8
    """
    params = {id(p): p for p in model.parameters() if p.requires_grad or not trainable_only}
    return sum(p.numel() for p in params.values())


@torch.no_grad()
def generate(
    model: Callable[[torch.Tensor], torch.Tensor],
    idx: torch.Tensor,
    max_new_tokens: int,
    block_size: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Autoregressive sampling from any callable that maps ids ``(B, T)`` to logits.

    Works with eager, traced, prepared or compiled models: only ``model(idx)[:, -1]`` is
    used. An ``nn.Module`` is put in eval mode for the call and its mode restored after.

    Args:
        model: Callable ``(B, T) -> (B, T, V)`` logits.
        idx: Prompt ids ``(B, T0)``, ``T0 >= 1``.
        max_new_tokens: Tokens to append.
        block_size: Context length; the prompt is cropped to its last ``block_size`` ids.
        temperature: Softmax temperature; ``<= 0`` means greedy (argmax).
        top_k: If given, sample only among the ``top_k`` most likely tokens.
        generator: Random source for sampling.

    Returns:
        ``(B, T0 + max_new_tokens)`` ids.

    Example:
        >>> m = CharTransformer(10, n_layer=1, n_embd=16, block_size=8)
        >>> generate(m, torch.zeros(1, 1, dtype=torch.long), 5, 8).shape
        torch.Size([1, 6])
    """
    was_training = model.training if isinstance(model, nn.Module) else None
    if isinstance(model, nn.Module):
        model.eval()
    try:
        for _ in range(max_new_tokens):
            logits = model(idx[:, -block_size:])[:, -1, :].float()
            if temperature <= 0:
                nxt = logits.argmax(dim=-1, keepdim=True)
            else:
                logits = logits / temperature
                if top_k is not None:
                    kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, -1:]
                    logits = logits.masked_fill(logits < kth, float("-inf"))
                probs = F.softmax(logits, dim=-1)
                nxt = torch.multinomial(probs, 1, generator=generator)
            idx = torch.cat([idx, nxt.to(idx.dtype)], dim=1)
    finally:
        if isinstance(model, nn.Module) and was_training is not None:
            model.train(was_training)
    return idx
