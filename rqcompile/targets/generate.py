"""Text generation with a KV cache: ``exe.generate`` on a model lowered with ``generate=True``.

The model's IR has the ``prefill`` and ``decode`` functions of the ``kv-cache`` pass
(``passes/ir/kv_cache.py``). :class:`KVGenerator` holds the cache (one tensor per cached
attention operand, length ``T`` = the converted sequence length, batch = the converted batch)
and runs:

1. ``prefill`` once on the prompt padded at the end to ``T`` (exact for a causal model: a
   position only sees positions before it), which fills the whole cache;
2. ``decode`` once per new token: the token at position ``pos`` and the cache in, the logits
   and the updated cache out. Decode writes each new row into the cache itself
   (``rq.cache_write``): a TVM build writes the row in place into the tensor the generator
   passed, so the outputs are that same memory and nothing is copied per token; the reference
   target returns new tensors, which replace the old ones. (An IR from before in-place
   writes returns only the new rows; they are copied into the cache at ``pos`` here.)

Ragged batches (``lengths=`` or a right-padded ``attention_mask=``): each prompt is padded at
the end, prefill reads row ``b``'s logits at ``lengths[b] - 1``, and decode's ``pos`` is
``(B,)``: row ``b``'s ``i``-th new token is at ``lengths[b] + i``, and its cache rows are
written there. A row's positions ``>= lengths[b]`` in the cache hold prefill's padding until
decode overwrites them, and the causal mask hides them until then, so each row generates
exactly what it would alone.

Sampling (:func:`sample_next`) is shared with ``rq.generate``, the QAT-side oracle, so greedy
decoding picks the same token from the same logits (the first maximum).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from rqcompile.errors import InputError, UsageError
from rqcompile.ir.core import Module
from rqcompile.ir.types import TensorType, torch_dtype

__all__ = ["KVGenerator", "check_generate_args", "prompt_lengths", "sample_next"]

Runner = Callable[..., tuple[torch.Tensor, ...]]


def check_generate_args(max_new_tokens: Any, temperature: Any, top_k: Any, seed: Any) -> None:
    """Raise :class:`UsageError` for options ``generate`` cannot use."""
    if (
        not isinstance(max_new_tokens, int)
        or isinstance(max_new_tokens, bool)
        or max_new_tokens < 0
    ):
        raise UsageError(f"max_new_tokens must be an int >= 0, got {max_new_tokens!r}.")
    if (
        not isinstance(temperature, (int, float))
        or isinstance(temperature, bool)
        or not (temperature >= 0 and temperature < float("inf"))
    ):
        raise UsageError(f"temperature must be a finite number >= 0, got {temperature!r}.")
    if top_k is not None and (not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 1):
        raise UsageError(f"top_k must be None or an int >= 1, got {top_k!r}.")
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
        raise UsageError(f"seed must be None or an int, got {seed!r}.")


def prompt_lengths(
    ids: torch.Tensor, lengths: Any = None, attention_mask: Any = None
) -> torch.Tensor:
    """Each prompt's length, ``(B,)`` int64, for ids ``(B, L)``: ``lengths`` (B ints in
    ``[1, L]``), or ``attention_mask`` (B, L) in Hugging Face's spelling, 1 for a prompt
    token and 0 for padding, which must be at the end (``tokenizer.padding_side = "right"``);
    neither: every row is ``L`` long. Else :class:`InputError`."""
    b, n = ids.shape
    if lengths is not None and attention_mask is not None:
        raise InputError("generate: give lengths= or attention_mask=, not both.")
    if attention_mask is not None:
        m = torch.as_tensor(attention_mask)
        if m.shape != ids.shape or not bool(((m == 0) | (m == 1)).all()):
            raise InputError(
                f"generate: attention_mask must be 0/1 of the ids' shape {tuple(ids.shape)}, got "
                f"{tuple(m.shape)}."
            )
        m = m != 0
        lens = m.sum(1).to(torch.int64).cpu()
        if not torch.equal(m.cpu(), torch.arange(n)[None, :] < lens[:, None]):
            raise InputError(
                "generate: attention_mask has padding before a prompt token; pad prompts at "
                "the end (tokenizer.padding_side = 'right'): each row's new tokens are written "
                "at its own position, so left padding is not needed."
            )
        lengths = lens
    if lengths is None:
        return torch.full((b,), n, dtype=torch.int64)
    try:
        lens = torch.as_tensor(lengths)
    except (TypeError, ValueError, RuntimeError):
        raise InputError(f"generate: lengths must be B ints, got {lengths!r}.") from None
    if lens.dtype.is_floating_point or lens.dtype == torch.bool or lens.dim() != 1:
        raise InputError(f"generate: lengths must be a 1-D sequence of ints, got {lengths!r}.")
    if lens.shape[0] != b:
        raise InputError(f"generate: {lens.shape[0]} lengths for a batch of {b} prompts.")
    lens = lens.to(torch.int64).cpu()
    if bool((lens < 1).any()) or bool((lens > n).any()):
        raise InputError(
            f"generate: each prompt length must lie in [1, {n}] (the ids' width), got "
            f"{lens.tolist()}."
        )
    return lens


def sample_next(
    logits: torch.Tensor,
    temperature: float = 0.0,
    top_k: int | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Next token ids ``(B,)`` from last-position logits ``(B, V)``, as HF ``generate`` does.

    ``temperature == 0``: greedy, the first maximum (``argmax``). Otherwise the logits are
    divided by ``temperature``, all but the ``top_k`` largest dropped (if given), and a
    token drawn from the softmax with ``generator``.
    """
    logits = logits.float()
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def _generator(seed: int | None) -> torch.Generator | None:
    return None if seed is None else torch.Generator().manual_seed(seed)


class KVGenerator:
    """The cache and the prefill/decode loop of one compiled model."""

    def __init__(self, ir: Module, prefill: Runner, decode: Runner) -> None:
        from rqcompile.passes.ir.kv_cache import cache_axis

        self._prefill, self._decode = prefill, decode
        p, d = ir.func("prefill"), ir.func("decode")
        (ids,) = p.args
        self.batch, self.max_length = (int(n) for n in ids.type.shape)  # type: ignore[arg-type]
        self.ids_dtype = torch_dtype(ids.type.dtype)
        self.vocab = self._vocab(ir)
        self.n_outputs = len(p.outputs) - (len(d.args) - 2)
        caches = d.args[2:]
        rows = d.outputs[self.n_outputs :]
        self.cache_types: tuple[TensorType, ...] = tuple(c.type for c in caches)
        #: decode returns the updated caches (``rq.cache_write``), or, in an IR from before
        #: in-place writes, only the new rows, which this class copies in
        self.returns_caches = all(c.type == r.type for c, r in zip(caches, rows, strict=True))
        self.axes = (
            ()
            if self.returns_caches
            else tuple(cache_axis(c.type, r.type) for c, r in zip(caches, rows, strict=True))
        )
        self.cache: list[torch.Tensor] = []
        #: decode's ``pos`` is (B,): each row its own position (ragged batches); an IR from
        #: before per-row positions has one shared ``pos`` (1,)
        self.per_row = int(d.args[1].type.shape[0]) == self.batch  # type: ignore[arg-type]

    @staticmethod
    def _vocab(ir: Module) -> int | None:
        f = ir.func("prefill")
        for op in f.ops:
            if op.name == "rq.embedding" and op.operands[0].id == f.args[0].id:
                return int(op.operands[1].type.shape[0])  # type: ignore[arg-type]
        return None

    def _check_ids(
        self, ids: Any, max_new_tokens: int, lengths: Any = None, attention_mask: Any = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if not isinstance(ids, torch.Tensor) or ids.dtype not in (torch.int64, torch.int32):
            raise InputError(
                f"generate takes token ids as an integer torch.Tensor (B, L), got "
                f"{getattr(ids, 'dtype', type(ids).__name__)}."
            )
        if ids.dim() == 1:
            ids = ids.unsqueeze(0)
        if ids.dim() != 2 or ids.shape[0] != self.batch:
            raise InputError(
                f"generate: ids have shape {tuple(ids.shape)}; this model was converted for "
                f"batch {self.batch}, so it takes ({self.batch}, L). Convert with an example "
                f"input of the batch you generate for, e.g. torch.zeros({ids.shape[0] if ids.dim() == 2 else 1}, "
                f"{self.max_length}, dtype=torch.long)."
            )
        if ids.shape[1] < 1:
            raise InputError("generate: the prompt is empty; give at least one token.")
        lens = prompt_lengths(ids, lengths, attention_mask)
        if not self.per_row and bool((lens != lens[0]).any()):
            raise InputError(
                "generate: this model's decode has one position for the whole batch (an IR "
                "from before per-row positions); lower it again with generate=True to "
                "generate prompts of different lengths."
            )
        n = int(lens.max())
        if n + max_new_tokens > self.max_length:
            raise InputError(
                f"generate: prompt ({n} tokens) + max_new_tokens ({max_new_tokens}) = "
                f"{n + max_new_tokens} exceeds the maximum context of {self.max_length} tokens "
                f"this model was converted for (the length of its example input). Generate "
                f"fewer tokens, shorten the prompt, or convert with a longer example input, e.g. "
                f"rq.lower(qat, target, generate=True, example_inputs=(torch.zeros({self.batch}, "
                f"{n + max_new_tokens}, dtype=torch.long),)) (at most the model's own limit, "
                f"e.g. its position table)."
            )
        if self.vocab is not None:
            valid = torch.arange(ids.shape[1]) < lens[:, None]  # padding is not checked
            lo, hi = (int(v) for v in torch.aminmax(ids[valid]))
            if lo < 0 or hi >= self.vocab:
                raise InputError(
                    f"generate: token ids must lie in [0, {self.vocab}), got [{lo}, {hi}]."
                )
        return ids.to(self.ids_dtype).cpu(), lens

    def prefill(self, ids: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """Fill the cache from ``ids (B, L)`` (row ``b``'s prompt: its first ``lengths[b]``
        ids, default ``L``); returns each row's logits at its last prompt position."""
        n = ids.shape[1]
        lens = torch.full((self.batch,), n) if lengths is None else lengths
        padded = _place_prompts(ids, lens, self.max_length, self.ids_dtype)
        outs = self._prefill(padded)
        self.cache = [c.contiguous().clone() for c in outs[self.n_outputs :]]
        return outs[0][torch.arange(self.batch), lens - 1]

    def decode(self, token: torch.Tensor, pos: int | torch.Tensor) -> torch.Tensor:
        """Run one token per row ``(B,)`` at position ``pos`` (an int, or (B,): each row's
        own); updates the cache, returns the logits ``(B, V)``."""
        at = torch.as_tensor(pos, dtype=torch.int64).reshape(-1)
        if self.per_row:
            at = at.expand(self.batch).contiguous()
        elif bool((at != at[0]).any()):
            raise InputError("decode: this model has one position for the whole batch.")
        else:
            at = at[:1]
        outs = self._decode(token.reshape(self.batch, 1).to(self.ids_dtype), at, *self.cache)
        if self.returns_caches:  # written in place (same memory: keep ours) or new tensors
            self.cache = [
                c if n.data_ptr() == c.data_ptr() else n
                for c, n in zip(self.cache, outs[self.n_outputs :], strict=True)
            ]
            return outs[0][:, 0]
        for cache, row, axis in zip(self.cache, outs[self.n_outputs :], self.axes, strict=True):
            if len(at) == 1:
                cache.index_copy_(axis, at, row)
            else:  # the kv-cache pass checked: the batch is axis 0 of every cache
                for r in range(self.batch):
                    cache[r].index_copy_(axis - 1, at[r : r + 1], row[r])
        return outs[0][:, 0]

    def generate(
        self,
        ids: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 0.0,
        top_k: int | None = None,
        seed: int | None = None,
        *,
        lengths: Any = None,
        attention_mask: Any = None,
        timings: list[float] | None = None,
    ) -> torch.Tensor:
        """The prompt followed by ``max_new_tokens`` generated ids ``(B, L + max_new_tokens)``.

        ``lengths`` (B,) or a right-padded ``attention_mask`` (B, L): a ragged batch, row
        ``b``'s prompt is ``ids[b, :lengths[b]]``; its new tokens follow at ``lengths[b]``,
        and the ``max(lengths) - lengths[b]`` places after them are 0 (see
        :func:`prompt_lengths`). ``timings``, if given, receives the seconds of prefill then
        of each decode step.
        """
        import time

        check_generate_args(max_new_tokens, temperature, top_k, seed)
        ids, lens = self._check_ids(ids, max_new_tokens, lengths, attention_mask)
        width = int(lens.max()) + max_new_tokens
        out = _place_prompts(ids, lens, width, ids.dtype)
        rows = torch.arange(self.batch)
        if max_new_tokens == 0:
            return out
        gen = _generator(seed)
        t0 = time.perf_counter()
        logits = self.prefill(ids, lens)
        nxt = sample_next(logits, temperature, top_k, gen)
        if timings is not None:
            timings.append(time.perf_counter() - t0)
        out[rows, lens] = nxt.to(ids.dtype)
        for step in range(1, max_new_tokens):
            t0 = time.perf_counter()
            logits = self.decode(nxt, lens + step - 1)
            nxt = sample_next(logits, temperature, top_k, gen)
            if timings is not None:
                timings.append(time.perf_counter() - t0)
            out[rows, lens + step] = nxt.to(ids.dtype)
        return out


def generate_qat(
    model: Callable[..., Any],
    ids: torch.Tensor,
    max_new_tokens: int,
    temperature: float = 0.0,
    top_k: int | None = None,
    seed: int | None = None,
    *,
    pad_to: int | None = None,
    lengths: torch.Tensor | None = None,
) -> torch.Tensor:
    """The plain loop: re-run ``model`` on the whole growing prefix for every new token.

    ``pad_to``: run the model on the prefix padded at the end to this length (for a model
    captured at one fixed length, e.g. by ``torch.export``) and read the logits at the last
    real position: exact for a causal model. ``lengths`` (B,): a ragged batch, row ``b``'s
    prompt is ``ids[b, :lengths[b]]`` (needs ``pad_to``); returns ``(B, max(lengths) +
    max_new_tokens)`` with each row's new tokens right after its own prompt, zeros after.
    """
    check_generate_args(max_new_tokens, temperature, top_k, seed)
    gen = _generator(seed)
    out = ids if ids.dim() == 2 else ids.unsqueeze(0)
    if lengths is None and pad_to is None:
        with torch.no_grad():
            for _ in range(max_new_tokens):
                y = model(out)
                logits = _logits(y)
                nxt = sample_next(logits[:, -1], temperature, top_k, gen)
                out = torch.cat([out, nxt.reshape(-1, 1).to(out.dtype)], dim=1)
        return out
    if pad_to is None:
        raise UsageError("generate with lengths= needs pad_to= (the model's fixed length).")
    b, n = out.shape
    lens = torch.full((b,), n) if lengths is None else lengths.to(torch.int64).reshape(-1)
    width = int(lens.max()) + max_new_tokens
    if width > pad_to:
        raise InputError(
            f"generate: prompt + max_new_tokens = {width} exceeds the model's fixed length "
            f"{pad_to}."
        )
    buf = _place_prompts(out, lens, pad_to, out.dtype)
    rows = torch.arange(b)
    with torch.no_grad():
        for step in range(max_new_tokens):
            logits = _logits(model(buf))
            nxt = sample_next(logits[rows, lens + step - 1], temperature, top_k, gen)
            buf[rows, lens + step] = nxt.to(buf.dtype)
    return buf[:, :width].clone()


def _place_prompts(
    ids: torch.Tensor, lens: torch.Tensor, width: int, dtype: torch.dtype
) -> torch.Tensor:
    """``(B, width)`` zeros with row ``b``'s prompt ``ids[b, :lens[b]]`` at its start."""
    out = torch.zeros(ids.shape[0], width, dtype=dtype)
    for r in range(ids.shape[0]):
        out[r, : int(lens[r])] = ids[r, : int(lens[r])]
    return out


def _logits(y: Any) -> torch.Tensor:
    """A model output's logits: Hugging Face outputs' ``.logits``, a tuple's first element."""
    if hasattr(y, "logits"):
        return y.logits  # type: ignore[no-any-return]
    return y[0] if isinstance(y, Sequence) else y  # type: ignore[no-any-return]
