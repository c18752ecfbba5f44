"""What every subcommand shares: output modes, progress bars, error → exit code, model loading.

Output modes (``--quiet``, ``--json``; the default is text for people):

* text: progress bars on stderr (only when stderr is a terminal) and readable text on stdout;
* quiet: no progress, no chatter; only errors (stderr) and the exit status;
* json: exactly one JSON object on stdout (``{"ok": true, ...}`` or ``{"ok": false,
  "error": ..., "message": ...}``); everything meant for people goes to stderr or nowhere.

Exit status: 0 success, 1 a typed rqcompile error or an OS error (message, no traceback),
2 a usage error (argparse), 130 interrupted.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from rqcompile.errors import ConfigError, RQError

__all__ = [
    "EXIT_ERROR",
    "Output",
    "guarded",
    "load_model_from_args",
    "load_model_or_artifact",
    "wrap",
]

EXIT_ERROR = 1


@dataclass
class Output:
    """The chosen output mode; subcommands talk to the user only through it."""

    mode: str = "text"  # "text" | "quiet" | "json"
    command: str = ""
    debug: bool = False  # --debug: print the traceback of an unexpected error

    @property
    def progress(self) -> bool:
        """Show tqdm bars: text mode and an interactive stderr only."""
        return self.mode == "text" and sys.stderr.isatty()

    def info(self, msg: str) -> None:
        """A line for people (text mode only)."""
        if self.mode == "text":
            print(msg, flush=True)

    def result(self, text: str, data: dict[str, Any]) -> None:
        """The command's result: ``text`` for people, ``data`` for ``--json``."""
        if self.mode == "json":
            print(json.dumps({"ok": True, "command": self.command, **data}, default=str))
        elif self.mode == "text" and text:
            print(text, flush=True)

    @contextlib.contextmanager
    def captured_stdout(self) -> Iterator[None]:
        """Run chatty library code: its prints go to stdout (text), stderr (json) or nowhere."""
        if self.mode == "text":
            yield
            return
        sink: Any = sys.stderr if self.mode == "json" else io.StringIO()
        with contextlib.redirect_stdout(sink):
            yield

    def bar(self, total: int, desc: str) -> Any:
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=desc, disable=not self.progress, leave=False)


def guarded(out: Output, fn: Callable[[], int]) -> int:
    """Run ``fn``; turn expected failures into a readable message and exit status 1.

    Every failure is one line on stderr and exit status 1: typed rqcompile errors and OS
    errors as they are, anything else (a bug, or an input nothing checked) as its type and
    message. The traceback is printed only with ``--debug`` (or ``RQ_DEBUG=1``).
    """
    try:
        return fn()
    except BrokenPipeError:  # reader went away (| head): stop quietly, like other tools
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141
    except Exception as e:
        if out.debug or os.environ.get("RQ_DEBUG"):
            import traceback

            traceback.print_exc(file=sys.stderr)
        if isinstance(e, RQError) or not isinstance(e, OSError):
            from rqcompile.guard import as_rq_error

            e = as_rq_error(e, f"rqcompile {out.command}")
        kind = type(e).__name__
        if isinstance(e, RQError) or not e.filename:
            msg = str(e)
        else:
            msg = f"{e.strerror}: {e.filename}"
        print(f"rqcompile {out.command}: {kind}: {msg}", file=sys.stderr)
        if out.mode == "json":
            print(json.dumps({"ok": False, "command": out.command, "error": kind, "message": msg}))
        return EXIT_ERROR
    except KeyboardInterrupt:
        print(f"rqcompile {out.command}: interrupted", file=sys.stderr)
        return 130


def wrap(text: str) -> str:
    """Wrap a help description to 88 columns (the parsers keep epilog layout verbatim)."""
    import textwrap

    return textwrap.fill(" ".join(text.split()), 88)


def add_model_options(p: Any) -> None:
    """The MODEL_OR_ARTIFACT argument with ``--preset``, ``--keep-float`` and
    ``--allow-import``; :func:`load_model_from_args` resolves them."""
    p.add_argument(
        "model",
        metavar="MODEL_OR_ARTIFACT",
        help="artifact (.rq), QAT checkpoint (.safetensors) or a model name",
    )
    p.add_argument("--preset", default="A1W1", help="for a model name: the config (%(default)s)")
    p.add_argument(
        "--keep-float",
        action="append",
        default=[],
        metavar="LAYER",
        help="for a model name: keep this layer in float (repeatable)",
    )
    p.add_argument(
        "--allow-import",
        action="store_true",
        help="let a checkpoint name its builder by import path (runs that module)",
    )


def sniff(path: str) -> str:
    """``"artifact"`` (zip), ``"checkpoint"`` (safetensors) or ``"unknown"`` by content."""
    from rqcompile.fileio import open_regular

    with open_regular(path, what="an artifact or checkpoint") as fh:
        head = fh.read(9)
    if head[:2] == b"PK":
        return "artifact"
    if len(head) == 9 and head[8:9] == b"{":  # u64 header length, then the JSON header
        return "checkpoint"
    return "unknown"


def load_model_from_args(args: Any) -> tuple[str, Any]:
    """:func:`load_model_or_artifact` for the options of :func:`add_model_options`."""
    return load_model_or_artifact(
        args.model, preset=args.preset, allow_import=args.allow_import, keep_float=args.keep_float
    )


def load_model_or_artifact(
    spec: str, *, preset: str, allow_import: bool, keep_float: Sequence[str] = ()
) -> tuple[str, Any]:
    """Resolve a command-line MODEL_OR_ARTIFACT to ``(kind, object)``.

    ``spec`` is an artifact (``.rq``, a zip: read, never executed), a QAT checkpoint
    (``.safetensors`` written by ``rq.save_qat``: rebuilt and prepared), or the name of a
    registered builder (``char-transformer``: built with defaults and prepared at ``preset``,
    with the layers in ``keep_float`` left in float).

    Raises:
        ArtifactError: a file that is neither. ConfigError: no such file or builder.
    """
    from rqcompile.checkpoint import builders, load_qat

    if os.path.exists(spec):
        kind = sniff(spec)
        if kind == "artifact":
            from rqcompile.targets.compiled import CompiledModule, read_artifact
            from rqcompile.targets.target import Target

            manifest, ir, _ = read_artifact(spec)
            exe = CompiledModule(
                ir,
                Target.parse(manifest["target"]),
                _not_loaded,
                features=manifest.get("features", ()),
            )
            return "artifact", exe
        if kind == "checkpoint":
            return "checkpoint", load_qat(spec, allow_import=allow_import)
        from rqcompile.errors import ArtifactError

        raise ArtifactError(
            f"{spec}: neither an artifact (.rq, from exe.save) nor a QAT checkpoint (.safetensors, "
            "from rq.save_qat or 'rqcompile demo --save-checkpoint')."
        )
    known = builders()
    if spec in known:
        from rqcompile.api import prepare
        from rqcompile.checkpoint import build_float_model

        model, ex = build_float_model(spec)
        return "model", prepare(model, ex, preset, overrides=dict.fromkeys(keep_float))
    raise ConfigError(
        f"{spec!r}: no such file, and not a model name. Give an artifact (.rq), a QAT "
        f"checkpoint (.safetensors) or one of: {', '.join(sorted(known))}."
    )


def _not_loaded(*_: Any) -> Any:
    raise RQError("this artifact was opened for inspection only; use rq.load(path) to run it.")
