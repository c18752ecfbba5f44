"""Training loops for the demos that work on any ``nn.Module``: float, traced or prepared.

The loops only call ``model(x)`` and ``model.parameters()``; they never look at attribute
names, so a ``torch.fx.GraphModule`` returned by ``rq.prepare`` trains exactly like the float
model. Estimators that need an extra loss term or a per-step curriculum plug in through
``aux_loss(model)`` and ``step_hook(model)``.

Non-finite numbers do not raise: a NaN/inf loss, gradient norm or val loss is recorded,
the run stops, and the returned :class:`History` has ``diverged=True``, so a benchmark can
report divergence as a result.

Thread counts are left to the caller (``torch.set_num_threads`` is never called here).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from rqcompile.demo.checkpoint import load_checkpoint, save_checkpoint
from rqcompile.demo.data import CharCorpus, eval_batches, get_batch

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

AuxLoss = Callable[[nn.Module], torch.Tensor]
StepHook = Callable[[nn.Module], None]
LogFn = Callable[[dict[str, float]], None]


@dataclass(frozen=True)
class TrainConfig:
    """Optimizer and loop settings shared by :func:`train_lm` and :func:`train_classifier`.

    AdamW (betas 0.9/0.99) with weight decay on parameters of 2+ dimensions only;
    linear warmup for ``warmup`` steps, then cosine decay to ``min_lr_frac * lr``.

    Attributes:
        steps: Optimizer steps.
        batch_size: Sequences (LM) or images (classifier) per step; also the eval batch size.
        lr: Peak learning rate.
        weight_decay: AdamW decoupled weight decay for matrices/kernels/embeddings.
        warmup: Linear-warmup steps.
        grad_clip: Max global gradient norm; ``0`` disables clipping (the norm is still
            recorded).
        eval_every: Evaluate every this many steps (also at step 0 and at the end);
            ``0`` evaluates only at the start and the end.
        eval_batches: Fixed val batches per LM evaluation (the classifier uses the whole
            test set).
        seed: Seeds the batch sampler only; seed model init yourself.
        progress: Show a tqdm progress bar.
        min_lr_frac: Final learning rate as a fraction of ``lr``.

    Example:
        >>> TrainConfig(steps=10, lr=3e-3).warmup
        50
    """

    steps: int = 500
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.1
    warmup: int = 50
    grad_clip: float = 1.0
    eval_every: int = 100
    eval_batches: int = 20
    seed: int = 0
    progress: bool = False
    min_lr_frac: float = 0.1

    def __post_init__(self) -> None:
        if self.steps < 0 or self.batch_size < 1 or self.eval_batches < 1:
            raise ValueError(
                f"need steps >= 0, batch_size >= 1, eval_batches >= 1; got {self.steps}, "
                f"{self.batch_size}, {self.eval_batches}"
            )
        if self.lr <= 0 or self.warmup < 0 or self.grad_clip < 0 or self.eval_every < 0:
            raise ValueError("lr must be > 0 and warmup, grad_clip, eval_every >= 0")


@dataclass
class History:
    """What a training run did, step by step.

    Attributes:
        steps: Step index (0-based) of each entry in ``train_loss``/``grad_norm``/``lr``.
        train_loss: Task loss (cross-entropy, without ``aux_loss``) per step.
        grad_norm: Global gradient norm before clipping, per step.
        lr: Learning rate used, per step.
        aux_loss: ``aux_loss(model)`` per step, when one was given.
        val_steps: Optimizer steps completed at each evaluation.
        val_loss: Mean cross-entropy on the fixed val/test batches at each evaluation.
        val_acc: Test accuracy at each evaluation (classifier only).
        nan_seen: A non-finite loss, gradient norm or val loss occurred.
        diverged: The run stopped early because of it.
        diverged_step: Step at which it stopped, else ``None``.
        elapsed_s: Wall-clock seconds of the loop, evaluations included.
        items_per_s: Training tokens (LM) or images (classifier) per second.
    """

    steps: list[int] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    grad_norm: list[float] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)
    aux_loss: list[float] = field(default_factory=list)
    val_steps: list[int] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    val_acc: list[float] = field(default_factory=list)
    nan_seen: bool = False
    diverged: bool = False
    diverged_step: int | None = None
    elapsed_s: float = 0.0
    items_per_s: float = 0.0

    @property
    def final_val_loss(self) -> float:
        """Last val loss; NaN if the run diverged or never evaluated."""
        if self.diverged or not self.val_loss:
            return math.nan
        return self.val_loss[-1]

    @property
    def best_val_loss(self) -> float:
        """Lowest finite val loss seen (NaN if none), useful for diverged runs."""
        finite = [v for v in self.val_loss if math.isfinite(v)]
        return min(finite) if finite else math.nan

    def to_dict(self) -> dict[str, Any]:
        """Plain, JSON-serializable dict (NaN/inf stay floats; use ``allow_nan``)."""
        out = asdict(self)
        out["final_val_loss"] = self.final_val_loss
        return out


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Learning rate at ``step``: linear warmup, then cosine to ``min_lr_frac * lr``.

    Example:
        >>> cfg = TrainConfig(steps=100, lr=1.0, warmup=10, min_lr_frac=0.0)
        >>> lr_at(0, cfg), lr_at(9, cfg), round(lr_at(99, cfg), 4)
        (0.1, 1.0, 0.0003)
    """
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    span = max(1, cfg.steps - cfg.warmup - 1)
    progress = min(1.0, (step - cfg.warmup) / span)
    floor = cfg.min_lr_frac * cfg.lr
    return floor + 0.5 * (cfg.lr - floor) * (1.0 + math.cos(math.pi * progress))


def _optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    params = list({id(p): p for p in model.parameters() if p.requires_grad}.values())
    if not params:
        raise ValueError("model has no trainable parameters")
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(
        [g for g in groups if g["params"]], lr=cfg.lr, betas=(0.9, 0.99), fused=False
    )


def _device(model: nn.Module) -> torch.device:
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


def _lm_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    logits = model(x)
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), y.reshape(-1))


@torch.no_grad()
def _mean_ce(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> float:
    was_training = model.training
    model.eval()
    try:
        device, total, count = _device(model), 0.0, 0
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


class _Loop:
    """Shared bookkeeping: optimizer, schedule, clipping, divergence, progress bar."""

    def __init__(
        self, model: nn.Module, cfg: TrainConfig, desc: str, aux_loss: AuxLoss | None
    ) -> None:
        self.model, self.cfg, self.aux = model, cfg, aux_loss
        self.opt = _optimizer(model, cfg)
        self.params = [p for g in self.opt.param_groups for p in g["params"]]
        self.hist = History()
        self.bar = tqdm(total=cfg.steps, desc=desc, disable=not cfg.progress, leave=False)

    def step(self, step: int, task_loss: torch.Tensor) -> bool:
        """Backward + clip + update. Returns False (and marks divergence) on NaN/inf."""
        hist, lr = self.hist, lr_at(step, self.cfg)
        loss = task_loss
        if self.aux is not None:
            aux = self.aux(self.model)
            hist.aux_loss.append(float(aux.detach()))
            loss = loss + aux
        hist.steps.append(step)
        hist.train_loss.append(float(task_loss.detach()))
        hist.lr.append(lr)
        if not torch.isfinite(loss.detach()):
            hist.grad_norm.append(math.nan)
            return self._diverge(step)
        for group in self.opt.param_groups:
            group["lr"] = lr
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        max_norm = self.cfg.grad_clip if self.cfg.grad_clip > 0 else math.inf
        norm = float(torch.nn.utils.clip_grad_norm_(self.params, max_norm))
        hist.grad_norm.append(norm)
        if not math.isfinite(norm):
            return self._diverge(step)
        self.opt.step()
        return True

    def _diverge(self, step: int) -> bool:
        self.hist.nan_seen = self.hist.diverged = True
        self.hist.diverged_step = step
        return False

    def record_eval(self, done: int, val_loss: float, val_acc: float | None = None) -> bool:
        self.hist.val_steps.append(done)
        self.hist.val_loss.append(val_loss)
        if val_acc is not None:
            self.hist.val_acc.append(val_acc)
        if not math.isfinite(val_loss):
            return self._diverge(done)
        return True

    def due(self, done: int) -> bool:
        every = self.cfg.eval_every
        return done == 0 or done == self.cfg.steps or (every > 0 and done % every == 0)

    def close(self, start: float, items: int) -> History:
        self.bar.close()
        self.hist.elapsed_s = time.perf_counter() - start
        self.hist.items_per_s = items / max(self.hist.elapsed_s, 1e-9)
        return self.hist


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
    loop = _Loop(model, cfg, "train_lm", aux_loss)
    hist, device = loop.hist, _device(model)
    gen = torch.Generator().manual_seed(cfg.seed)
    val = eval_batches(corpus.val, cfg.batch_size, block_size, cfg.eval_batches)
    tokens_per_step = cfg.batch_size * block_size
    model.train()
    start = time.perf_counter()
    done = 0

    def evaluate() -> bool:
        ok = loop.record_eval(done, _mean_ce(model, val))
        tok_s = done * tokens_per_step / max(time.perf_counter() - start, 1e-9)
        train = hist.train_loss[-1] if hist.train_loss else math.nan
        loop.bar.set_postfix(loss=f"{train:.3f}", val=f"{hist.val_loss[-1]:.3f}", tok_s=f"{tok_s:.0f}")
        if log is not None:
            log({"step": done, "train_loss": train, "val_loss": hist.val_loss[-1],
                 "lr": hist.lr[-1] if hist.lr else 0.0, "tok_per_s": tok_s})  # fmt: skip
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
        loop.bar.update(1)
        if done % 10 == 0 and cfg.progress:
            tok_s = done * tokens_per_step / max(time.perf_counter() - start, 1e-9)
            loop.bar.set_postfix(loss=f"{hist.train_loss[-1]:.3f}",
                                 val=f"{hist.val_loss[-1]:.3f}", tok_s=f"{tok_s:.0f}")  # fmt: skip
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
    was_training, device = model.training, _device(model)
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
    loop = _Loop(model, cfg, "train_classifier", aux_loss)
    hist, device = loop.hist, _device(model)
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
        loop.bar.update(1)
        if loop.due(done):
            ok = evaluate()
    return loop.close(start, done * cfg.batch_size)
