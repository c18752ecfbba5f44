"""Shared machinery of the demo training loops: config, history, schedule, bookkeeping.

:class:`TrainConfig` and :class:`History` are re-exported by :mod:`rqcompile.demo.train`,
which holds the loops themselves; this split keeps both modules short.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

__all__ = ["AuxLoss", "History", "LogFn", "StepHook", "TrainConfig", "lr_at"]

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
        log_every: Print a plain progress line (step, train loss, CPU ms per step, ETA) every
            this many steps; ``0`` prints none. For logs and pipes, where a bar is not shown.

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
    log_every: int = 0

    def __post_init__(self) -> None:
        if self.steps < 0 or self.batch_size < 1 or self.eval_batches < 1:
            raise ValueError(
                f"need steps >= 0, batch_size >= 1, eval_batches >= 1; got {self.steps}, "
                f"{self.batch_size}, {self.eval_batches}"
            )
        if self.lr <= 0 or self.warmup < 0 or self.grad_clip < 0 or self.eval_every < 0:
            raise ValueError("lr must be > 0 and warmup, grad_clip, eval_every >= 0")
        if self.log_every < 0:
            raise ValueError(f"log_every must be >= 0, got {self.log_every}")


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
        cpu_s: CPU seconds of this process during the loop (evaluations included); on a
            shared machine a steadier measure of cost than wall-clock time.
        items_per_s: Training tokens (LM) or images (classifier) per second of
            ``elapsed_s`` (evaluations included).
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
    cpu_s: float = 0.0
    items_per_s: float = 0.0

    @property
    def cpu_ms_per_step(self) -> float:
        """CPU milliseconds per training step (evaluations included)."""
        return 1e3 * self.cpu_s / max(len(self.train_loss), 1)

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
        (0.1, 1.0, 0.0)
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
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=cfg.lr, betas=(0.9, 0.99))


def _duration(seconds: float) -> str:
    """``42s`` or ``3m05s``."""
    s = max(0, int(round(seconds)))
    return f"{s}s" if s < 60 else f"{s // 60}m{s % 60:02d}s"


def model_device(model: nn.Module) -> torch.device:
    """Device of the first parameter (or buffer) of ``model``; CPU if it has none."""
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


class Loop:
    """Shared bookkeeping of one run: optimizer, schedule, clipping, divergence, progress bar.

    Internal to the demo loops (not in ``__all__``); :mod:`rqcompile.demo.train` drives it.
    """

    def __init__(
        self, model: nn.Module, cfg: TrainConfig, desc: str, aux_loss: AuxLoss | None
    ) -> None:
        self.model, self.cfg, self.aux = model, cfg, aux_loss
        self.opt = _optimizer(model, cfg)
        self.params = [p for g in self.opt.param_groups for p in g["params"]]
        self.hist = History()
        self.bar = tqdm(total=cfg.steps, desc=desc, disable=not cfg.progress, leave=False)
        self.desc = desc
        self.cpu0 = time.process_time()
        self.wall0 = time.perf_counter()

    def tick(self, done: int) -> None:
        """One step finished: advance the bar, and print a progress line when one is due."""
        self.bar.update(1)
        every = self.cfg.log_every
        if not every or (done % every and done != self.cfg.steps):
            return
        cpu_ms = 1e3 * (time.process_time() - self.cpu0) / done
        wall = time.perf_counter() - self.wall0
        eta = wall / done * (self.cfg.steps - done)
        loss = self.hist.train_loss[-1] if self.hist.train_loss else math.nan
        print(
            f"   {self.desc}: step {done}/{self.cfg.steps} ({100 * done // max(self.cfg.steps, 1)}%)"
            f" loss {loss:.3f}, {cpu_ms:.0f} ms CPU/step, ETA {_duration(eta)}",
            flush=True,
        )

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
        self.hist.cpu_s = time.process_time() - self.cpu0
        self.hist.elapsed_s = time.perf_counter() - start
        self.hist.items_per_s = items / max(self.hist.elapsed_s, 1e-9)
        return self.hist
