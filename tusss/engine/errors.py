"""Engine-specific error types (subclasses of tusss.errors.TusssError)."""

from __future__ import annotations

from tusss.errors import TusssError


class BackendUnavailableError(TusssError, RuntimeError):
    """The requested backend cannot run on this machine (no GPU, TensorRT not installed, ...)."""


class EngineMismatchError(TusssError, ValueError):
    """An engine directory was built for other weights, presets, shapes or software versions."""
