"""exe.generate on Hugging Face GPT-2 and Llama (built from a config) against rq.generate.

The tiny models get a position table of 96 and are converted at T = 72 (an 8-token prompt +
64 new tokens); their weights are drawn with ``initializer_range=0.2`` instead of HF's 0.02,
whose nearly flat logits make greedy decoding repeat one token. HF graphs are captured by
``torch.export`` at one length, so ``rq.generate`` re-runs the QAT model on the prefix padded
at the end to T (exact for a causal model) for every new token.

Greedy tokens must be equal. Where they are not, :func:`assert_same_or_tie` proves the first
difference is a near-tie: either ``rq.check_parity`` on that prefix finds only rounding-tie
code flips, or the QAT logits of the two competing tokens are equal to float tolerance.
The default run checks 16 tokens at A8W8 on the reference target per family (an llvm build
of the three functions takes ~25 s on 2 cores); the 64-token matrix is slow.
"""

from __future__ import annotations

import functools

import pytest
import torch

import rqcompile as rq

pytest.importorskip("transformers")
from rqcompile.testing import hf

PROMPT_LEN, NEW = 8, 64
T = PROMPT_LEN + NEW
SHORT = 24  # the default run's converted length: 8 + 16 tokens
BUILDERS = {"gpt2": hf.tiny_gpt2, "llama": hf.tiny_llama}


@functools.cache
def qat_model(
    family: str, config: str, attn: str = "eager", batch: int = 1, seq: int = T
) -> torch.fx.GraphModule:
    """Converted at ``seq`` tokens: T = 72 for the 64-token matrix, 24 for the default run's
    short checks (each QAT re-run and decode step costs ~T)."""
    model, ex = BUILDERS[family](
        positions=96, seq=seq, batch=batch, init_range=0.2, attn_implementation=attn
    )
    return rq.prepare(model, ex, config).eval()


def prompt(batch: int = 1, length: int = PROMPT_LEN, seed: int = 1) -> torch.Tensor:
    return torch.randint(
        0, hf.VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed)
    )


def assert_same_or_tie(qat, exe, ids: torch.Tensor, got: torch.Tensor, want: torch.Tensor,
                       rtol: float = 1e-4) -> int:  # fmt: skip
    """``got == want`` (B, L + n), or the first differing token is a proven near-tie.

    At the first difference (position ``p``), on the common prefix padded to ``T``: every
    difference between the compiled model and QAT must be explained (``rq.check_parity``:
    ``"exact"``, or ``"ties only"``: code flips at rounding ties), and the QAT logits of the
    two tokens must differ by no more than twice the largest difference between the compiled
    and QAT logits at ``p - 1`` (plus ``rtol`` of their scale): a difference too small to
    swap the two tokens cannot explain the swap. Returns the number of leading new tokens
    that agree in every row."""
    assert got.shape == want.shape
    diff = (got != want).any(0).nonzero()
    if not len(diff):
        return got.shape[1] - ids.shape[1]
    p = int(diff[0])
    assert p >= ids.shape[1], "the prompt itself differs"
    length = int(qat.meta["rq_input_shapes"][0][0][1])  # the converted length
    padded = torch.zeros(got.shape[0], length, dtype=got.dtype)
    padded[:, :p] = want[:, :p]  # the common prefix
    report = rq.check_parity(qat, exe, padded)
    assert report.verdict in ("exact", "ties only"), report
    with torch.no_grad():
        lq = hf.logits_of(qat(padded))[:, p - 1].double()
        le = hf.logits_of(exe(padded))[:, p - 1].double()
    rows = (got[:, p] != want[:, p]).nonzero().reshape(-1)
    gap = (lq[rows, want[rows, p]] - lq[rows, got[rows, p]]).abs().max()
    moved = (le - lq)[rows].abs().max()
    scale = float(lq.abs().max())
    assert float(gap) <= 2 * float(moved) + rtol * scale, (
        f"token {p}: exe picked {got[:, p].tolist()}, QAT {want[:, p].tolist()}; their QAT "
        f"logits differ by {float(gap):.2e}, more than the compiled logits move "
        f"({float(moved):.2e}, {report.verdict}): not a near-tie"
    )
    return p - ids.shape[1]


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_hf_greedy_generate_matches_qat_short(family: str) -> None:
    """Default run: 16 greedy tokens at A8W8 on the reference target, token for token."""
    qat = qat_model(family, "A8W8", seq=SHORT)
    ids = prompt()
    want = rq.generate(qat, ids, 16)
    assert len(set(want[0, PROMPT_LEN:].tolist())) > 3  # informative logits, not a constant run
    got = rq.lower(qat, "reference", generate=True).generate(ids, 16)
    assert torch.equal(got, want), (got != want).nonzero()[:1].tolist()


@functools.cache
def _want(family: str, config: str) -> torch.Tensor:
    return rq.generate(qat_model(family, config), prompt(), NEW)


@pytest.mark.slow  # reference: ~10 s (64 QAT re-runs + 64 decodes); llvm: + ~25 s build
@pytest.mark.parametrize("target", ["reference", pytest.param("llvm", marks=pytest.mark.tvm)])
@pytest.mark.parametrize("config", ["A8W8", "A4W4", "A1W1"])
@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_hf_greedy_generate_matches_qat(family: str, config: str, target: str) -> None:
    qat = qat_model(family, config)
    want = _want(family, config)
    assert len(set(want[0, PROMPT_LEN:].tolist())) > 3
    exe = rq.lower(qat, target, generate=True)
    got = exe.generate(prompt(), NEW)
    agreed = assert_same_or_tie(qat, exe, prompt(), got, want)
    assert agreed >= 16, agreed  # a tie this early would leave too little checked


LENGTHS = (5, 9, 12)
RAGGED_CONFIG = {"gpt2": "A8W8", "llama": "A4W4"}  # Llama at A8W8 soon repeats one token


def _ragged() -> torch.Tensor:
    ids = prompt(3, 12, seed=2)
    for r, n in enumerate(LENGTHS):
        ids[r, n:] = 0  # padding: never read
    return ids


def _ragged_check(family: str, target: str, n: int) -> None:
    """A batch of 3 prompts (lengths 5, 9, 12) converted at batch 3 gives, row by row, the
    tokens of each prompt generated alone by the batch-1 model; and the QAT oracle's."""
    config = RAGGED_CONFIG[family]
    seq = SHORT if n <= SHORT - 12 else T
    qat3, qat1 = qat_model(family, config, batch=3, seq=seq), qat_model(family, config, seq=seq)
    exe3 = rq.lower(qat3, target, generate=True)
    exe1 = rq.lower(qat1, target, generate=True)
    ids = _ragged()
    got = exe3.generate(ids, n, lengths=LENGTHS)
    assert torch.equal(got, rq.generate(qat3, ids, n, lengths=LENGTHS))
    for r, k in enumerate(LENGTHS):
        alone = exe1.generate(ids[r : r + 1, :k], n)
        assert torch.equal(got[r, : k + n], alone[0]), (r, got[r].tolist(), alone[0].tolist())
        assert len(set(alone[0, k:].tolist())) > 2


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_hf_ragged_batch_rows_generate_as_if_alone(family: str) -> None:
    """GPT-2's batch-expanded (3, 1, T, T) mask constant and Llama's RoPE tables are
    gathered per row (one copy: the copies are checked equal)."""
    _ragged_check(family, "reference", 8)


@pytest.mark.tvm
@pytest.mark.slow  # four llvm builds
@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_hf_ragged_batch_rows_generate_as_if_alone_on_llvm(family: str) -> None:
    _ragged_check(family, "llvm", 32)


def test_tie_rule_rejects_a_token_that_is_not_a_near_tie() -> None:
    """The rule that excuses a differing token can fail: swapping the QAT model's 4th new
    token for its least likely token is neither a code flip at a tie nor a logit tie."""
    qat = qat_model("gpt2", "A8W8", seq=SHORT)
    ids = prompt()
    want = rq.generate(qat, ids, 4)
    exe = rq.lower(qat, "reference", generate=True)
    assert assert_same_or_tie(qat, exe, ids, want.clone(), want) == 4
    padded = torch.zeros(1, SHORT, dtype=want.dtype)
    padded[:, : PROMPT_LEN + 3] = want[:, : PROMPT_LEN + 3]
    with torch.no_grad():
        worst = hf.logits_of(qat(padded))[0, PROMPT_LEN + 2].argmin()
    got = want.clone()
    got[0, PROMPT_LEN + 3] = worst
    with pytest.raises(AssertionError, match="not a near-tie"):
        assert_same_or_tie(qat, exe, ids, got, want)
