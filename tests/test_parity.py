"""rq.check_parity's near-tie search covers sign and ternary codes, not only 2-8 bits."""

from __future__ import annotations

import pytest
import torch

from rqcompile.parity import _near_ties
from rqcompile.quant import reference as R


@pytest.mark.parametrize(("bits", "symmetric"), [(1, False), (1.5, True), (4, False)])
def test_the_nudged_value_flips_the_code(bits: float, symmetric: bool) -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 64)
    a = {"bits": bits, "symmetric": symmetric, "block": 64, "estimator": "ridge",
         "ridge_lambda": 0.01, "pack": "none"}  # fmt: skip
    cands = _near_ties([(x, a)], tol=0.5, limit=4)  # loose: some element is always this near
    assert cands
    _, qi, j, v = cands[0]
    before = R.quantize(x, bits=bits, symmetric=symmetric, block=64)[0].reshape(-1)[j]
    y = x.clone()
    y.view(-1)[j] = v
    after = R.quantize(y, bits=bits, symmetric=symmetric, block=64)[0].reshape(-1)[j]
    assert qi == 0 and int(after) != int(before)
