"""The decode benchmark's peer setup: torch int8 must quantize GPT-2's layers, not skip them."""

from __future__ import annotations

import pytest
import torch
from torch import nn

pytest.importorskip("transformers")

from rqcompile.bench.decode import _hf_gpt2, conv1d_to_linear  # noqa: E402
from rqcompile.bench.layers import dynamic_int8  # noqa: E402


def test_conv1d_swap_keeps_the_function_and_lets_int8_quantize_every_layer() -> None:
    cfg = {"n_layer": 2, "n_embd": 32, "n_head": 2, "vocab": 64}
    model = _hf_gpt2(cfg, 16)
    ids = torch.randint(0, 64, (1, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = model(ids).logits
        swapped = conv1d_to_linear(model)
        assert not [m for m in swapped.modules() if type(m).__name__ == "Conv1D"]
        torch.testing.assert_close(swapped(ids).logits, ref, rtol=1e-5, atol=1e-5)
        q = dynamic_int8(swapped)
    kinds = [type(m).__name__ for n, m in q.named_modules() if n.startswith("transformer.h.")]
    # 4 linears per block (c_attn, c_proj, mlp.c_fc, mlp.c_proj), all dynamically quantized
    assert kinds.count("Linear") == 2 * 4 and all(
        type(m).__module__.startswith("torch.ao.nn.quantized") for n, m in q.named_modules()
        if n.startswith("transformer.h.") and isinstance(m, nn.Module) and type(m).__name__ == "Linear")
