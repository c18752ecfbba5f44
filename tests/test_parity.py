"""rq.check_parity's near-tie search covers sign and ternary codes, not only 2-8 bits, on
every deployed grid (the min/max grids at 1 and 1.5 bits too)."""

from __future__ import annotations

import pytest
import torch

from rqcompile.parity import _near_ties
from rqcompile.quant import reference as R


@pytest.mark.parametrize(
    ("bits", "symmetric", "estimator"),
    [(1, False, "ridge"), (1.5, True, "ridge"), (4, False, "ridge"), (1, False, "ridge_minmax"),
     (1, True, "ridge_minmax"), (1.5, True, "ste_minmax"), (1, False, "gdnsq")],
)  # fmt: skip
def test_the_nudged_value_flips_the_code(bits: float, symmetric: bool, estimator: str) -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 64)
    a = {"bits": bits, "symmetric": symmetric, "block": 64, "estimator": estimator,
         "ridge_lambda": 0.01, "pack": "none"}  # fmt: skip
    cands = _near_ties([(x, a)], tol=0.5, limit=4)  # loose: some element is always this near
    assert cands
    _, qi, j, v = cands[0]
    kw = {"bits": bits, "symmetric": symmetric, "block": 64, "estimator": estimator}
    before = R.quantize(x, **kw)[0].reshape(-1)[j]
    y = x.clone()
    y.view(-1)[j] = v
    after = R.quantize(y, **kw)[0].reshape(-1)[j]
    assert qi == 0 and int(after) != int(before)


@pytest.mark.parametrize("estimator", ["ridge_minmax", "gdnsq"])
def test_zero_one_grid_ties_sit_at_mid_range(estimator: str) -> None:
    """On the {0, 1} min/max grid the tie is the mid-range, not the block mean."""
    x = torch.tensor([[0.0, 1.0, 0.5, 0.9, 0.8, 0.7, 0.95, 0.85]])  # mean 0.7125
    a = {"bits": 1, "symmetric": False, "block": 8, "estimator": estimator,
         "ridge_lambda": 0.01, "pack": "none"}  # fmt: skip
    cands = _near_ties([(x, a)], tol=1e-6, limit=4)
    assert [(d, j) for d, _, j, _ in cands] == [(0.0, 2)]


@pytest.mark.parametrize("estimator", ["ste", "ridge"])
def test_tie_distance_of_a_zero_one_code_is_from_mid_range(estimator: str) -> None:
    """A flipped {0, 1} code at the mid-range is at its tie (not 1/2 away, as a sign code)."""
    import dataclasses

    import rqcompile as rq
    from rqcompile.config.spec import LayerSpec
    from rqcompile.parity import _tie_distance
    from rqcompile.quant.modules import RQQuantize

    x = torch.linspace(-1.0, 3.0, 64).reshape(1, 64)  # min -1, max 3: mid-range 1.0
    x[0, 10] = 1.0
    spec = dataclasses.replace(LayerSpec.from_preset("A1W1").with_grid("minmax"),
                               estimator=estimator)  # fmt: skip
    qat = rq.prepare(torch.nn.Sequential(torch.nn.Linear(64, 8)), (x,), rq.QConfig(default=spec))
    (act,) = [q for q in qat.modules() if isinstance(q, RQQuantize) and q.role == "activation"]
    assert act.fmt.zero_one
    flips = torch.zeros(1, 64, dtype=torch.bool)
    flips[0, 10] = True
    assert _tie_distance(act, act.k_last(x), flips) == pytest.approx(0.0, abs=1e-6)
    flips[0, 10], flips[0, 0] = False, True  # the min: z = 0, half a step from the tie
    assert _tie_distance(act, act.k_last(x), flips) == pytest.approx(0.5, abs=1e-6)
