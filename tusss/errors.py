"""Exception types raised by tusss. Every error message names the offending input."""

from __future__ import annotations


class TusssError(Exception):
    """Base class of all tusss errors."""


class InputError(TusssError, ValueError):
    """An argument has the wrong type, shape, dtype or value (NaN, empty, out of range)."""


class WeightsNotFoundError(TusssError, FileNotFoundError):
    """A checkpoint file is missing and cannot be downloaded (offline machine)."""


class CorruptFileError(TusssError, OSError):
    """A file written by tusss (cache, store, model, engine) is unreadable, truncated or of another version."""
