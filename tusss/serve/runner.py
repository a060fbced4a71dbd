"""Run the service with uvicorn (graceful SIGTERM: in-flight requests finish, then exit 0)."""

from __future__ import annotations

import importlib
import os
import signal
import threading
from collections.abc import Callable
from typing import Any

from tusss.errors import InputError

from .app import ServeConfig, create_app

FACTORY_ENV = "TUSSS_SERVE_PREDICTOR_FACTORY"


def load_factory(spec: str) -> Callable[[], Any]:
    """``"package.module:function"`` -> the function (a zero-argument predictor factory)."""
    mod, sep, fn = spec.partition(":")
    if not sep or not mod or not fn:
        raise InputError(f"{FACTORY_ENV} must be 'module:function', got {spec!r}")
    try:
        f = getattr(importlib.import_module(mod), fn)
    except (ImportError, AttributeError) as e:
        raise InputError(f"{FACTORY_ENV}={spec!r}: {e}") from e
    if not callable(f):
        raise InputError(f"{FACTORY_ENV}={spec!r} is not callable")
    return f


def serve(predictor: Any | Callable[[], Any], host: str = "127.0.0.1", port: int = 8000,
          config: ServeConfig | None = None, log_level: str = "info", graceful_timeout_s: float = 30.0) -> None:
    """Serve ``predictor`` (or a zero-argument factory of one, loaded after the socket is open) until SIGINT /
    SIGTERM. Needs the ``[serve]`` extra (fastapi, uvicorn, prometheus_client, python-multipart, pycocotools)."""
    try:
        import uvicorn
    except ImportError as e:  # pragma: no cover - the [serve] extra is missing
        raise InputError("tusss serve needs the [serve] extra: pip install 'tusss[serve]'") from e
    if os.environ.get(FACTORY_ENV):
        predictor = load_factory(os.environ[FACTORY_ENV])
    app = create_app(predictor, config)
    # uvicorn handles SIGTERM itself (stop accepting, finish in-flight requests, lifespan shutdown) and then
    # re-raises the signal to the handler that was installed before it: make that one a no-op so that a
    # graceful stop exits with status 0 instead of dying of the re-raised SIGTERM.
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, lambda *_: None)
    try:
        uvicorn.run(app, host=host, port=int(port), log_level=log_level, access_log=False,
                    timeout_graceful_shutdown=graceful_timeout_s)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
