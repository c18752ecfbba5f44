"""QAT checkpoints: one safetensors file that ``rqcompile lower`` / ``rq.load_qat`` can rebuild.

A prepared graph cannot be saved as code without pickling, so the checkpoint stores what is
needed to *rebuild* it: the trained ``state_dict`` (safetensors, via
:func:`rqcompile.state_file.save_checkpoint`) and, in the safetensors header's JSON
metadata, a description::

    {"format": "rqcompile.qat/1",
     "builder": "char-transformer",            # registered name, or "package.module:function"
     "builder_kwargs": {"vocab_size": 65, ...},
     "config": "<QConfig JSON>",
     "example_inputs": [{"shape": [32, 64], "dtype": "int64"}],
     "meta": {...}}                             # the caller's own notes (val loss, steps, ...)

Loading calls the builder with ``builder_kwargs``, runs ``rq.prepare`` with the saved config on
zero tensors of the saved shapes, then loads the weights (strict). Nothing is unpickled. A
builder given as an import path runs code from that module, so :func:`load_qat` only imports it
when asked to (``allow_import=True``, ``rqcompile lower --allow-import``); registered builders
(:func:`register_builder`, and the built-ins listed by :func:`builders`) are always allowed.
"""

from __future__ import annotations

import importlib
import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import fx, nn

from rqcompile.errors import ArtifactError, ConfigError

__all__ = [
    "FORMAT",
    "Builder",
    "build_float_model",
    "builders",
    "is_qat_checkpoint",
    "load_qat",
    "read_qat_meta",
    "register_builder",
    "save_qat",
]

FORMAT = "rqcompile.qat/1"


@dataclass(frozen=True)
class Builder:
    """A named model factory: ``path`` is ``module:attr``; defaults make a usable example."""

    name: str
    path: str
    kwargs: Mapping[str, Any]
    example_inputs: tuple[tuple[tuple[int, ...], str], ...]
    summary: str

    def load(self) -> Callable[..., nn.Module]:
        return _import(self.path)


_BUILDERS: dict[str, Builder] = {}


def register_builder(
    name: str,
    path: str,
    *,
    kwargs: Mapping[str, Any] | None = None,
    example_inputs: Sequence[tuple[Sequence[int], str]] = (),
    summary: str = "",
) -> None:
    """Make a model factory loadable by name from checkpoints (and ``rqcompile inspect NAME``).

    Args:
        name: short name stored in checkpoints, e.g. ``"char-transformer"``.
        path: ``"package.module:function"`` returning an ``nn.Module``.
        kwargs: default keyword arguments (a checkpoint's own kwargs override them).
        example_inputs: default ``(shape, dtype)`` per input, for ``inspect NAME``.
        summary: one line for ``rqcompile inspect --help``.

    Raises:
        ConfigError: the name is taken by a different path, or ``path`` has no ``:``.
    """
    if ":" not in path:
        raise ConfigError(f"builder path {path!r} must look like 'package.module:function'.")
    b = Builder(
        name,
        path,
        dict(kwargs or {}),
        tuple((tuple(int(d) for d in s), str(dt)) for s, dt in example_inputs),
        summary,
    )
    old = _BUILDERS.get(name)
    if old is not None and old.path != path:
        raise ConfigError(f"builder {name!r} is already registered as {old.path!r}.")
    if old is None:  # registering the same path again keeps the first entry's defaults
        _BUILDERS[name] = b


def builders() -> dict[str, Builder]:
    """Registered builders by name (the demo's models are built in)."""
    return dict(_BUILDERS)


register_builder(
    "char-transformer",
    "rqcompile.demo.models:CharTransformer",
    kwargs={"vocab_size": 65, "n_layer": 2, "n_head": 4, "n_embd": 128, "block_size": 64},
    example_inputs=[((4, 64), "int64")],
    summary="the demo's 2-layer char transformer (0.42M parameters)",
)
register_builder(
    "digits-cnn",
    "rqcompile.demo.models:DigitsCNN",
    kwargs={"width": 32},
    example_inputs=[((8, 1, 8, 8), "float32")],
    summary="the 8x8 digits CNN (3 convs with batch norm, then fc)",
)
register_builder(
    "tiny-mlp",
    "rqcompile.testing.models:TinyMLP",
    example_inputs=[((8, 64), "float32")],
    summary="the 64→128→10 test MLP",
)


def _import(path: str) -> Callable[..., nn.Module]:
    mod_name, _, attr = path.partition(":")
    try:
        obj: Any = importlib.import_module(mod_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as e:
        raise ConfigError(
            f"cannot import model builder {path!r} ({type(e).__name__}: {e}). Check the module "
            "is importable (on PYTHONPATH) and the name after ':' exists."
        ) from e
    if not callable(obj):
        raise ConfigError(f"model builder {path!r} is not callable.")
    return obj  # type: ignore[no-any-return]


def _builder_ref(builder: str | Callable[..., nn.Module]) -> str:
    if isinstance(builder, str):
        if builder not in _BUILDERS and ":" not in builder:
            raise ConfigError(
                f"unknown builder {builder!r}. Registered: {', '.join(sorted(_BUILDERS))}; or "
                "give an import path 'package.module:function'."
            )
        return builder
    mod, qual = getattr(builder, "__module__", None), getattr(builder, "__qualname__", "")
    if not mod or "<" in qual or mod == "__main__":
        raise ConfigError(
            f"builder {builder!r} is not importable by path (defined in __main__ or locally). "
            "Move it into a module, or pass builder='package.module:function'."
        )
    return f"{mod}:{qual}"


def _input_spec(x: Any) -> dict[str, Any]:
    if not isinstance(x, torch.Tensor):
        raise ConfigError(f"example_inputs must be tensors, got {type(x).__name__}.")
    return {"shape": list(x.shape), "dtype": str(x.dtype).removeprefix("torch.")}


def save_qat(
    qat: fx.GraphModule,
    path: str | os.PathLike[str],
    *,
    builder: str | Callable[..., nn.Module],
    builder_kwargs: Mapping[str, Any] | None = None,
    example_inputs: Any,
    meta: Mapping[str, Any] | None = None,
) -> Path:
    """Save a prepared (trained) graph so that :func:`load_qat` can rebuild it. Atomic.

    Args:
        qat: the graph returned by ``rq.prepare``.
        path: target ``.safetensors`` file.
        builder: registered name (``"char-transformer"``), ``"module:function"``, or the
            class/function itself (stored as its import path).
        builder_kwargs: JSON-serializable keyword arguments for the builder.
        example_inputs: the inputs given to ``prepare`` (only shapes and dtypes are kept).
        meta: extra JSON-serializable notes.

    Raises:
        ConfigError: ``qat`` is not a prepared graph, or the builder cannot be named.

    Example:
        >>> import os, tempfile, torch, rqcompile as rq
        >>> from rqcompile.testing.models import TinyMLP
        >>> ex = (torch.randn(8, 64),)
        >>> qat = rq.prepare(TinyMLP(), ex, "A4W4")
        >>> p = rq.save_qat(qat, os.path.join(tempfile.mkdtemp(), "m.safetensors"),
        ...                 builder="tiny-mlp", example_inputs=ex)
        >>> torch.equal(rq.load_qat(p)(ex[0]), qat(ex[0]))
        True
    """
    from rqcompile.state_file import save_checkpoint

    if not isinstance(qat, fx.GraphModule) or "rq_config" not in qat.meta:
        raise ConfigError(
            f"save_qat() takes the graph returned by rq.prepare(), got {type(qat).__name__}."
        )
    if not isinstance(example_inputs, tuple):
        example_inputs = (example_inputs,)
    header = {
        "format": FORMAT,
        "builder": _builder_ref(builder),
        "builder_kwargs": dict(builder_kwargs or {}),
        "config": qat.meta["rq_config"].to_json(),
        "example_inputs": [_input_spec(x) for x in example_inputs],
        "meta": dict(meta or {}),
    }
    try:
        json.dumps(header)
    except TypeError as e:
        raise ConfigError(f"checkpoint metadata is not JSON-serializable: {e}") from e
    return save_checkpoint(qat, path, header)


def is_qat_checkpoint(path: str | os.PathLike[str]) -> bool:
    """True when ``path`` is a safetensors file whose metadata says ``rqcompile.qat/1``."""
    try:
        return read_qat_meta(path).get("format") == FORMAT
    except ArtifactError:
        return False


def read_qat_meta(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The JSON description stored in a checkpoint (no weights loaded, no code run).

    Raises:
        ArtifactError: missing file, not safetensors, or no rqcompile metadata.
    """
    from safetensors import safe_open

    from rqcompile.state_file import META_KEY

    from rqcompile.fileio import check_regular

    p = check_regular(path, what="a QAT checkpoint")
    try:
        with safe_open(p, framework="pt") as fh:
            header = fh.metadata() or {}
        meta: dict[str, Any] = json.loads(header.get(META_KEY, "{}"))
        if not isinstance(meta, dict):
            raise ValueError(f"the rqcompile description is a {type(meta).__name__}")
    except Exception as e:
        raise ArtifactError(
            f"{p}: not a safetensors checkpoint ({type(e).__name__}: {e}). Save one with "
            "rq.save_qat(qat, path, builder=..., example_inputs=...)."
        ) from e
    return meta


_DTYPES = frozenset(
    {"float32", "float64", "float16", "bfloat16", "int64", "int32", "int16", "int8", "uint8", "bool"}
)
#: largest example input rebuilt from a checkpoint (zeros of this many elements)
MAX_EXAMPLE_NUMEL = 1 << 28


def _head_problem(head: Any) -> str | None:
    """The first field of a checkpoint description that ``save_qat`` would not write."""
    if not isinstance(head, dict):
        return f"the description is a {type(head).__name__}, not an object"
    want = {
        "builder": (str, "a string"),
        "builder_kwargs": (dict, "an object"),
        "config": (str, "a QConfig JSON string"),
        "example_inputs": (list, "a list"),
        "meta": (dict, "an object"),
    }
    for key, (typ, what) in want.items():
        if key not in head and key != "meta":
            return f"'{key}' is missing"
        if key in head and not isinstance(head[key], typ):
            return f"'{key}' must be {what}, got a {type(head[key]).__name__}"
    if not head["builder"] or len(head["builder"]) > 300:
        return "'builder' is empty or too long"
    specs = head["example_inputs"]
    if not 1 <= len(specs) <= 64:
        return f"'example_inputs' lists {len(specs)} inputs (1 to 64)"
    for i, s in enumerate(specs):
        if not isinstance(s, dict) or set(s) != {"shape", "dtype"}:
            return f"example_inputs[{i}] must be {{'shape': [...], 'dtype': '...'}}"
        shape, dt = s["shape"], s["dtype"]
        if not (
            isinstance(shape, list)
            and len(shape) <= 8
            and all(type(d) is int and 0 <= d < 1 << 31 for d in shape)
        ):
            return f"example_inputs[{i}]['shape'] must be a list of at most 8 sizes >= 0"
        numel = 1
        for d in shape:
            numel *= d
        if numel > MAX_EXAMPLE_NUMEL:
            return f"example_inputs[{i}] has {numel} elements (limit {MAX_EXAMPLE_NUMEL})"
        if dt not in _DTYPES:
            return f"example_inputs[{i}]['dtype'] {str(dt)[:40]!r} is not one of {sorted(_DTYPES)}"
    return None


def _qat_head(p: str) -> dict[str, Any]:
    head = read_qat_meta(p)
    if not isinstance(head, dict):
        head = {"format": None, "description": head}
    if head.get("format") != FORMAT:
        raise ArtifactError(
            f"{p}: not an rqcompile QAT checkpoint (format {head.get('format')!r}, expected "
            f"{FORMAT!r}). Plain state_dict files need the model: build it, rq.prepare it, "
            "then load_state_dict; or re-save with rq.save_qat(...)."
        )
    if (problem := _head_problem(head)) is not None:
        raise ArtifactError(
            f"{p}: malformed QAT checkpoint description ({problem}). Re-save it with "
            "rq.save_qat(qat, path, builder=..., example_inputs=...)."
        )
    return head


def _build(
    head: Mapping[str, Any],
    p: str,
    *,
    builder: str | Callable[..., nn.Module] | None,
    allow_import: bool,
) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    ref = head["builder"] if builder is None else _builder_ref(builder)
    if callable(builder):
        factory: Callable[..., nn.Module] = builder
    elif ref in _BUILDERS:
        factory = _BUILDERS[ref].load()
    elif builder is None and not allow_import:
        raise ConfigError(
            f"{p}: the checkpoint names builder {ref!r}, an import path; loading it would import "
            "and run that module. If you trust the file, pass allow_import=True (CLI: "
            "--allow-import), or register it: rq.register_builder(name, path)."
        )
    else:
        factory = _import(ref)
    defaults = dict(_BUILDERS[ref].kwargs) if ref in _BUILDERS else {}
    kwargs = {**defaults, **head.get("builder_kwargs", {})}
    try:
        model = factory(**kwargs)
    except Exception as e:  # noqa: BLE001 - the builder is user code; report what it said
        raise ConfigError(
            f"{p}: builder {ref!r} failed with builder_kwargs {kwargs!r:.200} "
            f"({type(e).__name__}: {str(e)[:200]}). Fix the kwargs in the checkpoint or pass "
            "builder=... to rq.load_qat."
        ) from e
    if not isinstance(model, nn.Module):
        raise ConfigError(
            f"{p}: builder {ref!r} returned a {type(model).__name__}, not an nn.Module."
        )
    ex = tuple(
        torch.zeros(s["shape"], dtype=getattr(torch, s["dtype"])) for s in head["example_inputs"]
    )
    return model, ex


def build_float_model(
    spec: str, *, allow_import: bool = False
) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    """The untrained float model and example inputs behind a checkpoint or a builder name.

    Used to show what ``prepare`` changed (``rqcompile draw --diff``); no weights are loaded.
    """
    if os.path.exists(spec):
        return _build(_qat_head(spec), spec, builder=None, allow_import=allow_import)
    if spec not in _BUILDERS:
        raise ConfigError(
            f"{spec!r}: no such checkpoint or builder; builders: {', '.join(_BUILDERS)}."
        )
    b = _BUILDERS[spec]
    ex = tuple(torch.zeros(s, dtype=getattr(torch, dt)) for s, dt in b.example_inputs)
    return b.load()(**b.kwargs), ex


def load_qat(
    path: str | os.PathLike[str],
    *,
    allow_import: bool = False,
    builder: str | Callable[..., nn.Module] | None = None,
) -> fx.GraphModule:
    """Rebuild a prepared graph from a :func:`save_qat` checkpoint.

    Args:
        path: the checkpoint.
        allow_import: permit a builder stored as ``module:function`` (imports that module).
        builder: use this builder instead of the stored one (you name it, so it is trusted).

    Raises:
        ArtifactError: not an rqcompile QAT checkpoint, or the weights do not fit the model.
        ConfigError: the builder is unknown, or is an import path and ``allow_import`` is off.
    """
    from rqcompile.api import prepare
    from rqcompile.config.qconfig import QConfig
    from rqcompile.fileio import fspath
    from rqcompile.state_file import load_checkpoint

    p = fspath(path, what="checkpoint path")
    head = _qat_head(p)
    model, ex = _build(head, p, builder=builder, allow_import=allow_import)
    ref = _builder_ref(builder) if builder is not None else head["builder"]
    qat = prepare(model, ex, QConfig.from_json(head["config"]))
    try:
        load_checkpoint(qat, p)
    except RuntimeError as e:
        raise ArtifactError(
            f"{p}: the weights do not fit the model built by {ref!r} with "
            f"{head.get('builder_kwargs')}: {str(e).splitlines()[0]}"
        ) from e
    qat.meta["rq_checkpoint"] = {"path": p, "builder": ref, "meta": head.get("meta", {})}
    qat.eval()
    return qat
