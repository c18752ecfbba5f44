"""Tests for rqcompile.demo.train: learning signal, divergence handling, generic modules."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.fx as fx
from torch import nn

from rqcompile.demo.data import char_corpus, digits
from rqcompile.demo.models import CharTransformer, DigitsCNN
from rqcompile.demo.train import (
    TrainConfig,
    accuracy,
    evaluate_lm,
    lr_at,
    train_classifier,
    train_lm,
)

BLOCK = 32


def _tiny_lm(vocab_size: int) -> CharTransformer:
    torch.manual_seed(0)
    return CharTransformer(vocab_size, n_layer=2, n_head=4, n_embd=64, block_size=BLOCK)


def test_char_transformer_learns_shakespeare() -> None:
    corpus = char_corpus()
    model = _tiny_lm(corpus.vocab_size)
    cfg = TrainConfig(steps=30, batch_size=16, lr=3e-3, warmup=5, eval_every=0, eval_batches=4)
    hist = train_lm(model, corpus, cfg, block_size=BLOCK)
    assert not hist.diverged and not hist.nan_seen
    assert len(hist.train_loss) == len(hist.grad_norm) == len(hist.lr) == 30
    assert hist.val_steps == [0, 30]
    assert hist.val_loss[0] > math.log(corpus.vocab_size) - 0.2  # starts near uniform
    assert hist.final_val_loss < 0.8 * hist.val_loss[0]
    assert sum(hist.train_loss[-5:]) / 5 < 0.8 * hist.train_loss[0]
    assert model.training
    again = evaluate_lm(model, corpus.val, batch_size=16, block_size=BLOCK, n_batches=4)
    assert again == pytest.approx(hist.final_val_loss, rel=1e-6)
    assert model.training  # evaluate_lm restores the mode
    json.dumps(hist.to_dict())


def test_train_lm_on_traced_module_with_hooks() -> None:
    corpus = char_corpus()
    traced = fx.symbolic_trace(_tiny_lm(corpus.vocab_size))
    calls = {"aux": 0, "hook": 0}

    def aux(model: nn.Module) -> torch.Tensor:
        calls["aux"] += 1
        return 1e-4 * sum(p.square().sum() for p in model.parameters())

    def hook(model: nn.Module) -> None:
        calls["hook"] += 1

    logs: list[dict[str, float]] = []
    cfg = TrainConfig(steps=6, batch_size=4, eval_every=3, eval_batches=1)
    hist = train_lm(
        traced, corpus, cfg, block_size=BLOCK, aux_loss=aux, step_hook=hook, log=logs.append
    )
    assert calls == {"aux": 6, "hook": 6}
    assert len(hist.aux_loss) == 6 and all(a > 0 for a in hist.aux_loss)
    assert hist.val_steps == [0, 3, 6] and [r["step"] for r in logs] == [0, 3, 6]


def _poison(model: nn.Module) -> None:
    with torch.no_grad():
        next(iter(model.parameters())).fill_(math.nan)


def test_nan_weights_mark_divergence_without_raising() -> None:
    corpus = char_corpus()
    cfg = TrainConfig(steps=20, batch_size=4, eval_every=0, eval_batches=1)
    hist = train_lm(_tiny_lm(corpus.vocab_size), corpus, cfg, block_size=BLOCK, step_hook=_poison)
    assert hist.diverged and hist.nan_seen
    assert hist.diverged_step == 1  # step 0 poisoned the weights, step 1 saw NaN
    assert len(hist.train_loss) == 2 and math.isnan(hist.train_loss[-1])
    assert math.isnan(hist.final_val_loss) and math.isfinite(hist.best_val_loss)
    assert json.loads(json.dumps(hist.to_dict()))["diverged"] is True


def test_inf_aux_loss_and_huge_lr_diverge() -> None:
    corpus = char_corpus()
    cfg = TrainConfig(steps=5, batch_size=4, eval_every=0, eval_batches=1)
    model = _tiny_lm(corpus.vocab_size)
    hist = train_lm(model, corpus, cfg, block_size=BLOCK, aux_loss=lambda m: torch.tensor(math.inf))
    assert hist.diverged and hist.diverged_step == 0
    x = digits()
    torch.manual_seed(0)
    wild = TrainConfig(steps=40, batch_size=64, lr=1e30, warmup=0, grad_clip=0.0, eval_every=0)
    hist = train_classifier(DigitsCNN(width=8), x, wild)
    assert hist.diverged and hist.nan_seen and hist.diverged_step is not None


def test_digits_cnn_reaches_80_percent() -> None:
    data = digits()
    torch.manual_seed(0)
    model = DigitsCNN()
    cfg = TrainConfig(steps=120, batch_size=64, lr=3e-3, warmup=10, weight_decay=0.0, eval_every=60)
    hist = train_classifier(model, data, cfg)
    assert not hist.diverged
    assert hist.val_steps == [0, 60, 120]
    acc = accuracy(model, data[2], data[3])
    assert acc > 0.8
    assert acc == pytest.approx(hist.val_acc[-1])


def test_lr_schedule_and_config_validation() -> None:
    cfg = TrainConfig(steps=100, lr=1.0, warmup=10, min_lr_frac=0.1)
    assert lr_at(0, cfg) == pytest.approx(0.1)
    assert lr_at(9, cfg) == pytest.approx(1.0)
    assert lr_at(99, cfg) == pytest.approx(0.1)
    lrs = [lr_at(s, cfg) for s in range(10, 100)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:], strict=False))
    with pytest.raises(ValueError):
        TrainConfig(batch_size=0)
    with pytest.raises(ValueError):
        TrainConfig(lr=0.0)
