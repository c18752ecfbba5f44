"""Training loops for the demos that work on any ``nn.Module``: float, traced or prepared.

The loops only call ``model(x)`` and ``model.parameters()``; they never look at attribute
names, so a ``torch.fx.GraphModule`` returned by ``rq.prepare`` trains exactly like the float
model. Estimators that need an extra loss term or a per-step curriculum plug in through
``aux_loss(model)`` and ``step_hook(model)``.

Non-finite numbers do not raise: a NaN/inf loss, gradient norm or val loss is recorded,
the run stops, and the returned :class:`History` has ``diverged=True``, so a benchmark can
report divergence as a result.

Thread counts are left to the caller (``torch.set_num_threads`` is never called here).
:class:`TrainConfig`, :class:`History` and :func:`lr_at` live in
:mod:`rqcompile.demo.loop`; the checkpoint helpers in :mod:`rqcompile.state_file`.
Both are re-exported here so one import serves a training script.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from rqcompile.state_file import load_checkpoint, save_checkpoint
from rqcompile.demo.data import CharCorpus, eval_batches, get_batch
from rqcompile.demo.loop import (
    AuxLoss,
    History,
    LogFn,
    Loop,
    StepHook,
    TrainConfig,
    lr_at,
    model_device,
)

__all__ = [
    "History",
    "TrainConfig",
    "accuracy",
    "evaluate_lm",
    "load_checkpoint",
    "lr_at",
    "save_checkpoint",
    "train_classifier",
    "train_lm",
]


def _lm_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    logits = model(x)
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), y.reshape(-1))


@torch.no_grad()
def _mean_ce(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> float:
    was_training = model.training
    model.eval()
    try:
        device, total, count = model_device(model), 0.0, 0
        for x, y in batches:
            total += _lm_loss(model, x.to(device), y.to(device)).item() * y.numel()
            count += y.numel()
        return total / max(count, 1)
    finally:
        model.train(was_training)


def evaluate_lm(
    model: nn.Module, data: torch.Tensor, *, batch_size: int, block_size: int, n_batches: int
) -> float:
    """Mean next-character cross-entropy (nats) over fixed windows of ``data``.

    Uses :func:`~rqcompile.demo.data.eval_batches`, so the number is comparable across runs
    with the same arguments. Runs under ``torch.no_grad()`` in eval mode; the model's
    training flag is restored afterwards.

    Example:
        >>> from rqcompile.demo.models import CharTransformer
        >>> m = CharTransformer(10, n_layer=1, n_embd=16, block_size=8)
        >>> 2.0 < evaluate_lm(m, torch.arange(100) % 10, batch_size=2, block_size=8,
        ...                   n_batches=2) < 2.6
        True
    """
    return _mean_ce(model, eval_batches(data, batch_size, block_size, n_batches))


def train_lm(
    model: nn.Module,
    corpus: CharCorpus,
    cfg: TrainConfig,
    *,
    block_size: int,
    aux_loss: AuxLoss | None = None,
    step_hook: StepHook | None = None,
    log: LogFn | None = None,
) -> History:
    """Train a next-token model (``(B, T) ids -> (B, T, V) logits``) on ``corpus.train``.

    Each step: random windows (:func:`~rqcompile.demo.data.get_batch`, seeded by
    ``cfg.seed``), cross-entropy ``+ aux_loss(model)`` if given, backward, global-norm
    clipping, AdamW step with the :func:`lr_at` schedule, then ``step_hook(model)``.
    The val loss is measured on ``cfg.eval_batches`` fixed windows of ``corpus.val`` at step
    0, every ``cfg.eval_every`` steps and at the end. The model is left in training mode.

    Args:
        model: Any module returning logits; trained in place.
        corpus: Token streams (``train`` for updates, ``val`` for evaluation).
        cfg: Optimizer and loop settings.
        block_size: Sequence length T of every batch.
        aux_loss: Optional extra loss term, called with the model once per step.
        step_hook: Optional callback after each optimizer step (e.g. estimator curricula).
        log: Optional callback at each evaluation with ``step``, ``train_loss``,
            ``val_loss``, ``lr`` and ``tok_per_s``.

    Returns:
        The run's :class:`History`; ``diverged=True`` if a NaN/inf stopped it.

    Example:
        >>> from rqcompile.demo.data import char_corpus
        >>> from rqcompile.demo.models import CharTransformer
        >>> c = char_corpus()
        >>> m = CharTransformer(c.vocab_size, n_layer=1, n_embd=32, block_size=16)
        >>> h = train_lm(m, c, TrainConfig(steps=3, batch_size=4, eval_batches=1),
        ...              block_size=16)
        >>> len(h.train_loss), h.diverged
        (3, False)
    """
    loop = Loop(model, cfg, "train_lm", aux_loss)
    hist, device = loop.hist, model_device(model)
    gen = torch.Generator().manual_seed(cfg.seed)
    val = eval_batches(corpus.val, cfg.batch_size, block_size, cfg.eval_batches)
    tokens_per_step = cfg.batch_size * block_size
    model.train()
    start = time.perf_counter()
    done = 0

    def row() -> dict[str, float]:
        return {
            "step": done,
            "train_loss": hist.train_loss[-1] if hist.train_loss else math.nan,
            "val_loss": hist.val_loss[-1],
            "lr": hist.lr[-1] if hist.lr else 0.0,
            "tok_per_s": done * tokens_per_step / max(time.perf_counter() - start, 1e-9),
        }

    def show(r: dict[str, float]) -> None:
        loss, val_loss, tok_s = r["train_loss"], r["val_loss"], r["tok_per_s"]
        loop.bar.set_postfix(loss=f"{loss:.3f}", val=f"{val_loss:.3f}", tok_s=f"{tok_s:.0f}")

    def evaluate() -> bool:
        ok = loop.record_eval(done, _mean_ce(model, val))
        r = row()
        show(r)
        if log is not None:
            log(r)
        return ok

    ok = evaluate()
    while ok and done < cfg.steps:
        x, y = get_batch(corpus.train, cfg.batch_size, block_size, gen)
        ok = loop.step(done, _lm_loss(model, x.to(device), y.to(device)))
        if not ok:
            break
        if step_hook is not None:
            step_hook(model)
        done += 1
        loop.tick(done)
        if done % 10 == 0 and cfg.progress:
            show(row())
        if loop.due(done):
            ok = evaluate()
    return loop.close(start, done * tokens_per_step)


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1024) -> float:
    """Top-1 accuracy of ``model(x)`` against labels ``y``, in eval mode, without grad.

    Example:
        >>> from rqcompile.demo.models import DigitsCNN
        >>> 0.0 <= accuracy(DigitsCNN(), torch.zeros(4, 1, 8, 8), torch.zeros(4).long()) <= 1
        True
    """
    correct, _ = _classify(model, x, y, batch_size)
    return correct / max(len(y), 1)


@torch.no_grad()
def _classify(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int
) -> tuple[int, float]:
    """(number correct, mean cross-entropy) in eval mode; training flag restored."""
    was_training, device = model.training, model_device(model)
    model.eval()
    try:
        correct, total_ce = 0, 0.0
        for i in range(0, len(y), batch_size):
            logits = model(x[i : i + batch_size].to(device)).float()
            target = y[i : i + batch_size].to(device)
            correct += int((logits.argmax(dim=-1) == target).sum())
            total_ce += float(F.cross_entropy(logits, target, reduction="sum"))
        return correct, total_ce / max(len(y), 1)
    finally:
        model.train(was_training)


def train_classifier(
    model: nn.Module,
    data: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
    cfg: TrainConfig,
    *,
    aux_loss: AuxLoss | None = None,
    step_hook: StepHook | None = None,
) -> History:
    """Train a classifier with minibatch AdamW on ``(x_train, y_train, x_test, y_test)``.

    Minibatches come from shuffled epochs (seeded by ``cfg.seed``). Evaluations (step 0,
    every ``cfg.eval_every`` steps, the end) record the test-set cross-entropy as
    ``val_loss`` and accuracy as ``val_acc``: the digits demo has no separate val split.
    Divergence handling, ``aux_loss`` and ``step_hook`` are as in :func:`train_lm`.

    Example:
        >>> from rqcompile.demo.data import digits
        >>> from rqcompile.demo.models import DigitsCNN
        >>> h = train_classifier(DigitsCNN(), digits(), TrainConfig(steps=2, batch_size=8))
        >>> len(h.val_acc)
        2
    """
    x_train, y_train, x_test, y_test = data
    loop = Loop(model, cfg, "train_classifier", aux_loss)
    hist, device = loop.hist, model_device(model)
    gen = torch.Generator().manual_seed(cfg.seed)
    order = torch.empty(0, dtype=torch.long)
    model.train()
    start = time.perf_counter()
    done = 0

    def evaluate() -> bool:
        correct, ce = _classify(model, x_test, y_test, 1024)
        ok = loop.record_eval(done, ce, correct / max(len(y_test), 1))
        loop.bar.set_postfix(val=f"{ce:.3f}", acc=f"{hist.val_acc[-1]:.3f}")
        return ok

    ok = evaluate()
    while ok and done < cfg.steps:
        if len(order) < cfg.batch_size:
            order = torch.cat([order, torch.randperm(len(y_train), generator=gen)])
        idx, order = order[: cfg.batch_size], order[cfg.batch_size :]
        logits = model(x_train[idx].to(device))
        ok = loop.step(done, F.cross_entropy(logits.float(), y_train[idx].to(device)))
        if not ok:
            break
        if step_hook is not None:
            step_hook(model)
        done += 1
        loop.tick(done)
        if loop.due(done):
            ok = evaluate()
    return loop.close(start, done * cfg.batch_size)
