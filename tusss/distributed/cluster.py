"""Connecting to (or starting) a Ray cluster, with Ray imported only when it is used.

A local cluster (no address) is started on loopback only: the node address is ``127.0.0.1`` and
``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` is set before Ray starts, because otherwise Ray rewrites 127.0.0.1 to the
machine's external address; the dashboard is not started. An address (``host:port`` of a running head node,
``auto``, or ``ray://host:10001`` for Ray Client) connects to that cluster instead.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from tusss.errors import InputError, TusssError

__all__ = ["RayUnavailableError", "require_ray", "init_ray", "cluster_resources", "LOCAL"]

LOCAL = "local"  # the --ray value meaning "start a local cluster"


class RayUnavailableError(TusssError, ImportError):
    """Ray (the optional extra ``tusss[ray]``) is not installed."""


def require_ray() -> ModuleType:
    """Import and return ``ray``; a clear error naming the extra to install when it is missing."""
    try:
        import ray
    except ImportError as e:
        raise RayUnavailableError(
            f"the Ray backend needs Ray Data / Ray Serve: pip install 'tusss[ray]' ({type(e).__name__}: {e})"
        ) from e
    return ray


def loopback_env() -> dict[str, str]:
    """Environment settings that keep a local Ray cluster on 127.0.0.1 (set them before Ray starts)."""
    return {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}


def init_ray(address: str | None = None, num_cpus: int | None = None, num_gpus: int | None = None,
             quiet: bool = True) -> bool:
    """Connect to ``address`` or start a local loopback-only cluster; returns True when this call started Ray
    (the caller then owns the ``ray.shutdown()``), False when Ray was already initialised in this process.

    Args:
        address: None or ``"local"``: a new local cluster on 127.0.0.1; else a cluster address.
        num_cpus / num_gpus: resources of a new local cluster (default: what the machine has).
        quiet: Ray's own log level WARNING and no worker output forwarded to the driver.
    """
    local = address in (None, "", LOCAL)
    if local:  # before Ray is imported: ray_constants reads it at import time (and workers inherit it)
        for k, v in loopback_env().items():
            os.environ.setdefault(k, v)
    ray = require_ray()
    if ray.is_initialized():
        return False
    if local and os.environ.get("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER") == "0":
        _loopback_after_import()
    kw: dict[str, Any] = {"include_dashboard": False, "log_to_driver": not quiet,
                          "logging_level": logging.WARNING if quiet else logging.INFO}
    if local:
        if num_cpus is not None and num_cpus < 1:
            raise InputError(f"a local Ray cluster needs num_cpus >= 1, got {num_cpus}")
        kw.update(num_cpus=num_cpus, num_gpus=num_gpus, _node_ip_address="127.0.0.1")
        ray.init(**kw)
    else:
        if num_cpus is not None or num_gpus is not None:
            raise InputError("num_cpus / num_gpus only apply to a local cluster, not to --ray ADDRESS")
        try:
            ray.init(address=address, **kw)
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise InputError(f"cannot connect to the Ray cluster at {address!r}: {type(e).__name__}: {e}") from e
    return True


def _loopback_after_import() -> None:
    """Ray was imported before the loopback setting was in the environment: apply it to the constant that Ray
    read at import time (``ray._private.ray_constants.ENABLE_RAY_CLUSTER``), where this Ray version has it."""
    try:
        from ray._private import ray_constants
    except ImportError:  # pragma: no cover - layout of another Ray version
        return
    if getattr(ray_constants, "ENABLE_RAY_CLUSTER", False):
        ray_constants.ENABLE_RAY_CLUSTER = False


@dataclass(frozen=True)
class ClusterResources:
    """Total CPUs and GPUs of the connected cluster."""

    cpus: float
    gpus: float


def cluster_resources() -> ClusterResources:
    """Total CPUs / GPUs of the connected cluster (Ray must be initialised)."""
    ray = require_ray()
    r = ray.cluster_resources()
    return ClusterResources(float(r.get("CPU", 0.0)), float(r.get("GPU", 0.0)))
