"""Tiny Hugging Face ``transformers`` models built from a config (random weights, no download).

Each builder returns ``(model, example_inputs)`` with the model in eval mode. Sizes are the
smallest that still exercise every feature of the family (2 layers, hidden 32): GPT-2 (tied
embedding / LM head, ``Conv1D`` = ``addmm`` with a (K, N) weight), BERT (masked-LM head,
token-type embeddings), Llama (RMSNorm, rotary embeddings, SwiGLU, grouped-query attention with
``num_key_value_heads < num_attention_heads``) and ResNet (conv + batch norm + residual). The
attention implementation is ``"eager"`` (explicit matmuls, which ``quantize_attention=True`` can
quantize) unless ``attn_implementation="sdpa"`` (HF's default) is given; ``use_cache=False``
because ``torch.export`` cannot return a ``DynamicCache``. The GPT-2 and Llama builders also
take ``positions`` (the longest context), ``seq``/``batch`` (the example ids) and
``init_range`` (weight init std; ~0.2 gives informative logits without training).

``transformers`` is imported lazily: ``pip install transformers`` (part of the ``dev`` extra).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

__all__ = ["HF_MODELS", "logits_of", "tiny_bert", "tiny_gpt2", "tiny_llama", "tiny_resnet"]

VOCAB = 64
SEQ = 8


def _ids(batch: int = 2, seq: int = SEQ) -> tuple[torch.Tensor, ...]:
    return (torch.randint(0, VOCAB, (batch, seq), generator=torch.Generator().manual_seed(0)),)


def _common(attn_implementation: str = "eager") -> dict[str, Any]:
    if attn_implementation not in ("eager", "sdpa"):
        raise ValueError(
            f"attn_implementation must be 'eager' or 'sdpa', got {attn_implementation!r}"
        )
    return {"attn_implementation": attn_implementation, "use_cache": False, "bos_token_id": 0,
            "eos_token_id": 0, "pad_token_id": 0}  # fmt: skip


def _init(init_range: float | None) -> dict[str, Any]:
    return {} if init_range is None else {"initializer_range": init_range}


def tiny_gpt2(
    *,
    positions: int = 32,
    seq: int = SEQ,
    batch: int = 2,
    init_range: float | None = None,
    attn_implementation: str = "eager",
) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    """GPT2LMHeadModel: 2 layers, hidden 32, 2 heads, vocab 64 (LM head tied to ``wte``).

    ``positions``: the position table's length (``n_positions``, the longest context);
    ``seq``/``batch``: the example ids' shape (the converted length and batch);
    ``init_range``: the weights' init std (HF's ``initializer_range``, default 0.02, which
    gives nearly flat logits; ~0.2 makes greedy generation informative without training);
    ``attn_implementation``: ``"eager"`` or ``"sdpa"`` (HF's default).
    """
    import transformers as T

    torch.manual_seed(0)
    cfg = T.GPT2Config(
        n_layer=2, n_embd=32, n_head=2, vocab_size=VOCAB, n_positions=positions,
        **_init(init_range), **_common(attn_implementation),
    )  # fmt: skip
    return T.GPT2LMHeadModel(cfg).eval(), _ids(batch, seq)


def tiny_bert() -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    """BertForMaskedLM: 2 layers, hidden 32, 2 heads, FFN 64, vocab 64."""
    import transformers as T

    torch.manual_seed(0)
    cfg = T.BertConfig(
        num_hidden_layers=2, hidden_size=32, num_attention_heads=2, intermediate_size=64,
        vocab_size=VOCAB, max_position_embeddings=32, **_common(),
    )  # fmt: skip
    return T.BertForMaskedLM(cfg).eval(), _ids()


def tiny_llama(
    *,
    positions: int = 32,
    seq: int = SEQ,
    batch: int = 2,
    init_range: float | None = None,
    attn_implementation: str = "eager",
) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    """LlamaForCausalLM: 2 layers, hidden 32, 4 query heads sharing 2 key/value heads.

    The keyword arguments are those of :func:`tiny_gpt2` (``positions`` sets
    ``max_position_embeddings``).
    """
    import transformers as T

    torch.manual_seed(0)
    cfg = T.LlamaConfig(
        num_hidden_layers=2, hidden_size=32, num_attention_heads=4, num_key_value_heads=2,
        intermediate_size=64, vocab_size=VOCAB, max_position_embeddings=positions,
        **_init(init_range), **_common(attn_implementation),
    )  # fmt: skip
    return T.LlamaForCausalLM(cfg).eval(), _ids(batch, seq)


def tiny_resnet() -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    """ResNetModel (basic blocks): stem 16 channels, stages of 16 and 32 channels, 32×32 input.

    Batch-norm statistics are randomised so that folding them into the convs is not a no-op.
    """
    import transformers as T

    torch.manual_seed(0)
    cfg = T.ResNetConfig(
        num_channels=3, embedding_size=16, hidden_sizes=[16, 32], depths=[1, 1], layer_type="basic"
    )
    model = T.ResNetModel(cfg).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    return model, (torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)),)


#: family name → builder.
HF_MODELS: dict[str, Callable[[], tuple[nn.Module, tuple[torch.Tensor, ...]]]] = {
    "gpt2": tiny_gpt2,
    "bert": tiny_bert,
    "llama": tiny_llama,
    "resnet": tiny_resnet,
}


def logits_of(out: Any) -> torch.Tensor:
    """The main tensor of a model output: ``logits`` of a ModelOutput, ``last_hidden_state``
    of a base model, the first element of a tuple (a compiled model returns a tuple)."""
    for name in ("logits", "last_hidden_state"):
        if hasattr(out, name):
            return getattr(out, name)  # type: ignore[no-any-return]
    if isinstance(out, (tuple, list)):
        return out[0]  # type: ignore[no-any-return]
    return out  # type: ignore[no-any-return]
