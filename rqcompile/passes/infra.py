"""Pass infrastructure shared by both IRs (fx graphs during prepare, rq IR during convert).

A pass is a frozen dataclass with a kebab-case ``name`` and ``run(ir, ctx) -> PassResult``.
A :class:`PassManager` runs a list of passes under a :class:`PassContext` that carries the
config, instruments and disabled passes. Any exception inside a pass becomes a
:class:`~rqcompile.errors.PassError` naming the pass, its position and the pipeline, chained
to the original with ``from``. Typed user errors (``ConfigError``, ``NumericsError``, ...)
pass through unchanged: they already say what to fix.

A failing pass saves its input (``PassContext.dump_dir``, set from ``RQ_DUMP_DIR`` by
:meth:`PassContext.from_env`, else a fresh temporary directory) and the ``PassError`` prints
the path and, for rq IR, a command that replays exactly that pass on exactly that input:
``python -m rqcompile opt --passes NAME FILE``. :class:`DumpIR` writes the IR after every pass.
"""

from __future__ import annotations

import dataclasses
import os
import re
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, Protocol, TypeVar

from rqcompile.errors import PassError, RQError
from rqcompile.fileio import atomic_write

__all__ = [
    "DumpIR",
    "Instrument",
    "Pass",
    "PassContext",
    "PassManager",
    "PassResult",
    "PrintAfter",
    "Timing",
    "parse_pipeline",
    "pass_text",
    "register_pass",
    "registered_passes",
]

IR = TypeVar("IR")


@dataclass(frozen=True)
class PassResult(Generic[IR]):
    ir: IR
    changed: bool


class Pass(Protocol[IR]):
    name: ClassVar[str]

    def run(self, ir: IR, ctx: PassContext) -> PassResult[IR]: ...


class Instrument:
    """Hooks around each pass; override only what you need."""

    def should_run(self, p: Any, ir: Any, ctx: PassContext) -> bool:
        return True

    def before(self, p: Any, ir: Any, ctx: PassContext) -> None:
        return None

    def after(self, p: Any, result: PassResult[Any], ctx: PassContext) -> None:
        return None


@dataclass
class PrintAfter(Instrument):
    """Collect the printed IR after the named passes (``"all"`` for every pass).

    Printers return strings; this instrument appends them to ``self.dumps`` and, when
    ``stream`` is given, writes them there (the ``RQ_PRINT_AFTER`` environment variable uses
    ``sys.stderr``).
    """

    passes: Sequence[str] | str = "all"
    stream: Any = None
    dumps: list[tuple[str, str]] = field(default_factory=list)

    def after(self, p: Any, result: PassResult[Any], ctx: PassContext) -> None:
        if self.passes != "all" and p.name not in self.passes:
            return
        _, text = _dump_text(result.ir, constants=False)
        self.dumps.append((p.name, text))
        if self.stream is not None:
            self.stream.write(f"// ----- after {p.name} -----\n{text}\n")


@dataclass
class Timing(Instrument):
    """Record wall time per pass in ``self.seconds`` (asserts nothing)."""

    seconds: dict[str, float] = field(default_factory=dict)
    _t0: float = 0.0

    def before(self, p: Any, ir: Any, ctx: PassContext) -> None:
        self._t0 = time.perf_counter()

    def after(self, p: Any, result: PassResult[Any], ctx: PassContext) -> None:
        self.seconds[p.name] = self.seconds.get(p.name, 0.0) + time.perf_counter() - self._t0


def _dump_text(ir: Any, *, constants: bool) -> tuple[str, str]:
    """``(suffix, text)`` for a dump: rq IR as MLIR text (self-contained when ``constants``),
    an fx graph as its readable printout (fx graphs cannot be parsed back)."""
    from rqcompile.ir.core import Module

    if isinstance(ir, Module):
        from rqcompile.ir.printer import print_module

        return ".mlir", print_module(ir, elide_constants=not constants)
    if hasattr(ir, "script") and not hasattr(ir, "graph"):  # a TVM IRModule (TVMScript)
        return ".tvm.py", str(ir.script())
    if not hasattr(ir, "graph"):  # a built library: no text form
        return ".txt", f"<{type(ir).__module__}.{type(ir).__name__}>"
    from rqcompile.debug.format import inspect

    return ".fx.txt", inspect(ir)


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


@dataclass
class DumpIR(Instrument):
    """Write the IR (or fx graph) after every pass to ``directory``, numbered in run order.

    Files are ``001_<pass>.after.mlir`` (rq IR, readable by ``parse_module``; with
    ``constants=True`` the weights are embedded so the file replays on its own) or
    ``001_<pass>.after.fx.txt`` (fx graphs, as ``rq.inspect`` prints them). ``inputs=True``
    also writes each pass's input as ``001_<pass>.before...``. ``self.files`` lists the paths.

    Example:
        >>> import tempfile, torch, rqcompile as rq
        >>> dump = rq.DumpIR(tempfile.mkdtemp())
        >>> _ = rq.prepare(torch.nn.Linear(64, 8), (torch.randn(2, 64),), "A4W4",
        ...                context=rq.PassContext(instruments=[dump]))
        >>> [f.name for f in dump.files]
        ['001_quantize-layers.after.fx.txt', '002_quantize-attention.after.fx.txt']
    """

    directory: str | os.PathLike[str]
    inputs: bool = False
    constants: bool = False
    files: list[Any] = field(default_factory=list)
    _count: int = field(default=0, init=False, repr=False)

    def _write(self, p: Any, ir: Any, when: str) -> None:
        from pathlib import Path

        d = Path(self.directory)
        d.mkdir(parents=True, exist_ok=True)
        suffix, text = _dump_text(ir, constants=self.constants)
        f = d / f"{self._count:03d}_{_slug(p.name)}.{when}{suffix}"
        atomic_write(f, text + "\n", what="the IR dump")  # rqcompile.fileio
        self.files.append(f)

    def before(self, p: Any, ir: Any, ctx: PassContext) -> None:
        self._count += 1
        if self.inputs:
            self._write(p, ir, "before")

    def after(self, p: Any, result: PassResult[Any], ctx: PassContext) -> None:
        self._write(p, result.ir, "after")


_CURRENT = threading.local()


@dataclass
class PassContext:
    """Options for the passes of ``prepare``, ``convert`` and ``build``: ``instruments`` wrap
    every pass; ``disabled`` skips passes by name.

    Like TVM's, it is a ``with`` block: every stage called inside it uses it::

        with rq.PassContext(instruments=[rq.DumpIR("rq-dump")]):
            exe = rq.lower(qat, "llvm")     # the IR after every convert and build pass

    ``PassContext.current()`` is the innermost active one (or a fresh one from the
    environment, :meth:`from_env`). Stages fill in ``config``/``target``/``example_inputs``
    on a copy, so one context can serve several stages.
    """

    config: Any = None
    target: Any = None
    instruments: Sequence[Instrument] = ()
    disabled: frozenset[str] = frozenset()
    verify: bool = True
    example_inputs: tuple[Any, ...] | None = None
    options: dict[str, Any] = field(default_factory=dict)
    dump_dir: str | None = None

    def __enter__(self) -> PassContext:
        stack = _CURRENT.__dict__.setdefault("stack", [])
        stack.append(self)
        return self

    def __exit__(self, *exc: object) -> None:
        _CURRENT.stack.pop()

    @classmethod
    def current(cls) -> PassContext:
        """The innermost ``with PassContext(...)`` block, else :meth:`from_env`."""
        stack = getattr(_CURRENT, "stack", None)
        return stack[-1] if stack else cls.from_env()

    def for_stage(self, **fields: Any) -> PassContext:
        """A copy with ``fields`` set, sharing the instruments (a stage writes its config,
        target and options there, not into the user's context)."""
        import dataclasses

        return dataclasses.replace(self, options=dict(self.options), **fields)

    @classmethod
    def from_env(cls, **kw: Any) -> PassContext:
        """Read ``RQ_PRINT_AFTER`` (``all`` or comma-separated pass names) and ``RQ_DUMP_DIR``
        (where a failing pass saves its input) once, here."""
        ctx = cls(**kw)
        if ctx.dump_dir is None:
            ctx.dump_dir = os.environ.get("RQ_DUMP_DIR") or None
        spec = os.environ.get("RQ_PRINT_AFTER")
        if spec:
            import sys

            names: Sequence[str] | str = "all" if spec == "all" else spec.split(",")
            ctx.instruments = (*ctx.instruments, PrintAfter(names, stream=sys.stderr))
        return ctx


_REGISTRY: dict[str, type] = {}


def register_pass(cls: type) -> type:
    """Class decorator: make a pass findable by name; duplicate names are errors."""
    name = cls.name  # type: ignore[attr-defined]
    if name in _REGISTRY and _REGISTRY[name] is not cls:
        raise ValueError(f"pass name {name!r} is registered twice")
    _REGISTRY[name] = cls
    return cls


def registered_passes() -> dict[str, type]:
    """Name -> pass class of every registered pass (the IR passes register when
    ``rqcompile.passes.ir`` is imported)."""
    return dict(_REGISTRY)


def pass_text(p: Any) -> str:
    """A pass as it appears in a pipeline string: ``name`` or ``name{field=value,...}`` with
    the fields that differ from their defaults (tuples joined with ``+``)."""
    if not dataclasses.is_dataclass(p) or _REGISTRY.get(p.name) is not type(p):
        return str(p.name)  # not replayable by name (a TVM phase): the name alone
    opts = []
    for f in dataclasses.fields(p):
        if not f.init or f.name.startswith("_"):
            continue
        value = getattr(p, f.name)
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None
        )
        if value == default:
            continue
        if isinstance(value, tuple):
            value = "+".join(str(v) for v in value)
        elif isinstance(value, bool):
            value = str(value).lower()
        opts.append(f"{f.name}={value}")
    return f"{p.name}{{{','.join(opts)}}}" if opts else str(p.name)


def _option_value(field: dataclasses.Field[Any], text: str) -> Any:
    kind = str(field.type)
    if "tuple" in kind:
        return tuple(v for v in text.split("+") if v)
    if kind.startswith("bool"):
        if text not in ("true", "false"):
            raise ValueError(f"expected true or false, got {text!r}")
        return text == "true"
    if kind.startswith("int"):
        return int(text)
    if kind.startswith("float"):
        return float(text)
    return text


def parse_pipeline(text: str) -> list[Any]:
    """Build passes from a pipeline string, ``pass_text``'s inverse:
    ``"fuse-attention{lanes=8},select-kernels{features=avx2+fma}"``.

    Raises:
        ConfigError: an unknown pass or option, or a bad value; the message lists what exists.
    """
    from rqcompile.errors import ConfigError

    out = []
    for m in re.finditer(r"([A-Za-z0-9_-]+)(?:\{([^}]*)\})?(?:,|$)", text.strip()):
        name, opts = m.group(1), m.group(2)
        cls = _REGISTRY.get(name)
        if cls is None:
            raise ConfigError(
                f"unknown pass {name!r}; registered passes: {', '.join(sorted(_REGISTRY))}."
            )
        fields = (
            {f.name: f for f in dataclasses.fields(cls) if f.init}
            if dataclasses.is_dataclass(cls) else {}
        )  # fmt: skip
        kwargs: dict[str, Any] = {}
        for item in filter(None, (opts or "").split(",")):
            key, eq, value = item.partition("=")
            if not eq or key not in fields:
                raise ConfigError(
                    f"pass {name!r} has no option {key!r}; options: "
                    f"{', '.join(fields) or 'none'} (write {name}{{option=value}})."
                )
            try:
                kwargs[key] = _option_value(fields[key], value)
            except ValueError as e:
                raise ConfigError(f"pass {name!r} option {key!r}: {e}.") from None
        out.append(cls(**kwargs))
    if not out:
        raise ConfigError(f"no passes in {text!r}; registered: {', '.join(sorted(_REGISTRY))}.")
    return out


class PassManager(Generic[IR]):
    """Run passes in order with instruments and a verifier after each."""

    def __init__(self, passes: Sequence[Any], *, verifier: Callable[[IR], None] | None = None):
        self.passes = tuple(passes)
        self.verifier = verifier

    def describe(self) -> str:
        """The pipeline string (``parse_pipeline`` reads it back for registered passes)."""
        return ",".join(pass_text(p) for p in self.passes)

    def run(self, ir: IR, ctx: PassContext) -> IR:
        for i, p in enumerate(self.passes):
            if p.name in ctx.disabled:
                continue
            if not all(inst.should_run(p, ir, ctx) for inst in ctx.instruments):
                continue
            for inst in ctx.instruments:
                inst.before(p, ir, ctx)
            try:
                result = p.run(ir, ctx)
                if ctx.verify and self.verifier is not None:
                    self.verifier(result.ir)
            except RQError:
                raise
            except Exception as e:
                raise PassError(
                    f"pass {p.name!r} ({i + 1} of {len(self.passes)} in {self.describe()!r}) "
                    f"failed: {type(e).__name__}: {e}\n" + _save_failing_input(p, i, ir, ctx)
                ) from e
            for inst in ctx.instruments:
                inst.after(p, result, ctx)
            ir = result.ir
        return ir


def _save_failing_input(p: Any, index: int, ir: Any, ctx: PassContext) -> str:
    """Save a failing pass's input; return the message lines naming the file and the replay."""
    try:
        d = ctx.dump_dir or tempfile.mkdtemp(prefix="rq-dump-")
        os.makedirs(d, exist_ok=True)
        suffix, text = _dump_text(ir, constants=True)
        path = os.path.join(d, f"{index + 1:03d}_{_slug(p.name)}.input{suffix}")
        atomic_write(path, text + "\n", what="the pass input")  # rqcompile.fileio
    except Exception as e:  # never hide the pass's own error behind a dump failure
        return f"(could not save the pass input: {type(e).__name__}: {e})"
    if suffix == ".mlir" and _REGISTRY.get(p.name) is type(p):
        text = pass_text(p)
        arg = f"'{text}'" if "{" in text else text  # options need quotes in a shell
        return (
            f"Input IR saved to {path}\n"
            f"Replay: python -m rqcompile opt --passes {arg} {path}"
        )
    if suffix == ".fx.txt":
        return (
            f"Input graph saved to {path} (fx graphs print but do not parse back; rerun with "
            "RQ_PRINT_AFTER=all to see every pass's output)"
        )
    return f"Input saved to {path}"
