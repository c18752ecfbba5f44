"""Typed errors at every public entry point: one wrapper, applied in ``rqcompile/__init__.py``.

The rule: a public function (``rq.prepare``, ``rq.load``, ...) and every CLI command fail only
with an :class:`~rqcompile.errors.RQError`. Deliberate errors already are; :func:`entry_point`
turns anything else that escapes (a ``KeyError`` from a malformed file, a ``RecursionError``,
a library's own exception type) into the entry point's error class, with the entry point's
name, the original type and message, and the original exception chained (``__cause__``).

So that code which caught the builtin type keeps working, the raised class also derives from
the original builtin class where Python allows it (``ArtifactError`` + ``KeyError``, ...):
``except KeyError`` and ``except rq.RQError`` both catch it. ``KeyboardInterrupt`` and
``SystemExit`` pass through untouched.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

from rqcompile.errors import ArtifactError, RQError

__all__ = ["as_rq_error", "entry_point"]

F = TypeVar("F", bound=Callable[..., Any])

_MIXED: dict[tuple[type, type], type] = {}


def _mixed(rq_cls: type[RQError], orig: type[BaseException]) -> type[RQError]:
    """``rq_cls`` that is also the nearest builtin ancestor of ``orig`` (when layouts allow)."""
    base = next((c for c in orig.__mro__ if c.__module__ == "builtins"), Exception)
    if base in (Exception, BaseException) or issubclass(rq_cls, base):
        return rq_cls
    key = (rq_cls, base)
    if key not in _MIXED:
        try:
            cls = type(
                rq_cls.__name__,
                (rq_cls, base),
                {"__module__": rq_cls.__module__, "__str__": _plain_str},
            )
        except TypeError:  # instance lay-out conflict (e.g. OSError + UnicodeDecodeError)
            cls = rq_cls
        _MIXED[key] = cls
    return _MIXED[key]  # type: ignore[return-value]


def _plain_str(self: BaseException) -> str:
    return str(self.args[0]) if len(self.args) == 1 else BaseException.__str__(self)


def as_rq_error(e: BaseException, where: str, default: type[RQError] = RQError) -> RQError:
    """An :class:`RQError` for ``e`` (``e`` itself when it already is one)."""
    if isinstance(e, RQError):
        return e
    cls: type[RQError] = ArtifactError if isinstance(e, OSError) else default
    if isinstance(e, RecursionError):
        detail = "input nested too deeply"
    else:
        detail = str(e).strip().splitlines()[0][:300] if str(e).strip() else "(no message)"
    msg = (
        f"{where}: {type(e).__name__}: {detail}. This input could not be handled; if it looks "
        "valid, report it with the traceback (RQ_DEBUG=1 / rqcompile --debug shows it)."
    )
    return _mixed(cls, type(e))(msg)


def entry_point(where: str, default: type[RQError] = RQError) -> Callable[[F], F]:
    """Decorate a public function so that it raises only :class:`RQError` (see module doc)."""

    def deco(fn: F) -> F:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                return fn(*args, **kwargs)
            except RQError:
                raise
            except Exception as e:
                raise as_rq_error(e, where, default) from e

        wrapper.__rq_entry_point__ = where  # type: ignore[attr-defined]
        return wrapper  # type: ignore[return-value]

    return deco
