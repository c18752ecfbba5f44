"""Typed errors. Every user-facing error says what failed, where, why, and how to fix it.

The hierarchy is flat on purpose: catch :class:`RQError` for "anything rqcompile raised", or a
specific subclass. ``ConfigError`` is also a ``ValueError`` so generic validation code works.
"""

from __future__ import annotations

import warnings

__all__ = [
    "ArtifactError",
    "CaptureError",
    "ConfigError",
    "FormatError",
    "InputError",
    "NumericsError",
    "ParseError",
    "PassError",
    "RQError",
    "RQWarning",
    "TargetError",
    "UnsupportedOpError",
    "UsageError",
    "VerifyError",
    "warn",
]


class RQError(Exception):
    """Base class of every error rqcompile raises on purpose."""


class ConfigError(RQError, ValueError):
    """A config, preset string or option is invalid or inconsistent."""


class CaptureError(RQError):
    """The model could not be captured into a graph (symbolic tracing failed)."""


class UnsupportedOpError(RQError):
    """One or more graph nodes have no rewrite or conversion rule."""


class NumericsError(RQError, ValueError):
    """A tensor cannot be quantized as asked (NaN/Inf, shape not divisible, ...)."""


class FormatError(NumericsError):
    """A layer cannot take its quantization format (2:4 on a block that is not a multiple of
    4, a block that does not divide K). Presets fall back to the nearest format that works
    unless ``strict=True`` (``rqcompile/config/fallback.py``)."""


class PassError(RQError):
    """A pass failed; the message names the pass, its position and pipeline."""


class VerifyError(RQError):
    """An IR module or graph violates an invariant."""


class ParseError(RQError):
    """IR text could not be parsed; the message gives line and column."""


class TargetError(RQError):
    """A target is unknown, unavailable here, or lacks a needed toolchain."""


class InputError(RQError, TypeError):
    """A compiled model was called with inputs of the wrong dtype, device, rank or shape."""


class ArtifactError(RQError, OSError):
    """A saved artifact is missing, corrupt, truncated or from another version, or could not be
    written (also an ``OSError``, so code that handles I/O failures keeps working)."""


class UsageError(RQError, TypeError):
    """A public function was given the wrong kind of object (also a ``TypeError``)."""


class RQWarning(UserWarning):
    """Warnings emitted by rqcompile (filter them with this category)."""


def warn(message: str, *, stacklevel: int = 2) -> None:
    """Emit an :class:`RQWarning` pointing at the caller's caller."""
    import sys

    level = stacklevel + 1
    frame = sys._getframe(level - 1) if hasattr(sys, "_getframe") else None
    while frame is not None and frame.f_code.co_filename.endswith("rqcompile/guard.py"):
        level += 1  # the entry-point wrapper (guard.py) is not the caller's code
        frame = frame.f_back
    warnings.warn(message, RQWarning, stacklevel=level)
