"""Measured run sizes for the demos, so examples and benchmarks agree on "quick" and "full".

Measured in fp32 on the 2-core development machine (torch 2.13 CPU), seed 0. Val loss is the
mean cross-entropy in nats per character on the fixed eval windows of the held-out plays
(``eval_batches=20``, 40,960 characters).

=======  ============================  =====  ======  ===========  ==================
preset   model                         steps  params  val loss     wall time
=======  ============================  =====  ======  ===========  ==================
quick    2 layers, 128 wide, block 64  500    0.42M   1.91         ~1-1.5 min
full     2 layers, 128 wide, block 64  3000   0.42M   1.56         ~6-10 min
=======  ============================  =====  ======  ===========  ==================

Speed is 0.12 s/step (17k tokens/s) with 2 threads on an idle machine, 0.18 s/step with
1 thread while other jobs share the cores, but 0.7 s/step with 2 threads under that load:
two OpenMP threads that wait on each other collapse when a core is taken, so on a shared
machine ``torch.set_num_threads(1)`` is the faster choice. The same model reaches 2.07
(500 steps) at ``lr=1e-3``; ``3e-3`` is better at this size. 1500 steps give 1.65.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from rqcompile.demo.loop import TrainConfig
from rqcompile.demo.models import CharTransformer

__all__ = ["DIGITS_TRAIN", "LM_PRESETS", "LMPreset", "lm_preset"]


@dataclass(frozen=True)
class LMPreset:
    """A CharTransformer size plus the training settings measured with it.

    Attributes:
        name: Preset name.
        n_layer: Transformer blocks.
        n_head: Attention heads.
        n_embd: Model width.
        block_size: Context length (also the training window).
        train: Optimizer and loop settings.
        val_loss: Val loss measured in fp32 at the end of ``train`` (nats/char).

    Example:
        >>> p = lm_preset("quick")
        >>> p.build(71).block_size, p.train.steps
        (64, 500)
    """

    name: str
    n_layer: int
    n_head: int
    n_embd: int
    block_size: int
    train: TrainConfig
    val_loss: float

    def build(self, vocab_size: int, *, dropout: float = 0.0) -> CharTransformer:
        """A freshly initialized model of this size (seed ``torch`` first)."""
        return CharTransformer(
            vocab_size,
            n_layer=self.n_layer,
            n_head=self.n_head,
            n_embd=self.n_embd,
            block_size=self.block_size,
            dropout=dropout,
        )


LM_PRESETS: Mapping[str, LMPreset] = MappingProxyType(
    {
        "quick": LMPreset(
            name="quick",
            n_layer=2,
            n_head=4,
            n_embd=128,
            block_size=64,
            train=TrainConfig(steps=500, batch_size=32, lr=3e-3, warmup=50, eval_every=100),
            val_loss=1.91,
        ),
        "full": LMPreset(
            name="full",
            n_layer=2,
            n_head=4,
            n_embd=128,
            block_size=64,
            train=TrainConfig(steps=3000, batch_size=32, lr=3e-3, warmup=100, eval_every=250),
            val_loss=1.56,
        ),
    }
)

DIGITS_TRAIN = TrainConfig(
    steps=300, batch_size=64, lr=3e-3, warmup=10, weight_decay=0.0, eval_every=100
)
"""Settings for :class:`~rqcompile.demo.models.DigitsCNN` (a few seconds; ~98% test acc)."""


def lm_preset(name: str) -> LMPreset:
    """Look up a preset by name (``"quick"`` or ``"full"``).

    Raises:
        KeyError: For an unknown name; the message lists the known ones.
    """
    try:
        return LM_PRESETS[name]
    except KeyError:
        raise KeyError(f"unknown preset {name!r}; known: {', '.join(LM_PRESETS)}") from None
