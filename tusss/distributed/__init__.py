"""Scale-out on Ray (optional extra ``tusss[ray]``): dataset-scale extraction and replicated serving.

* :mod:`tusss.distributed.extract` — ``tusss masks --ray`` / ``tusss embed --ray``: images decoded by Ray
  tasks, SAM and DBA-CLIP in actor pools, outputs written by the single-process mask-cache and store writers.
* :mod:`tusss.distributed.serve` — a Ray Serve deployment of the segmentation service (``@serve.batch``,
  health check, the same HTTP endpoints), importable as ``tusss.distributed.serve:app``.
* :mod:`tusss.distributed.cluster` — connect to a cluster or start a local one on loopback only.

Ray is imported lazily: importing this package works without Ray; using it raises
:class:`~tusss.distributed.cluster.RayUnavailableError` naming the extra to install.
"""

from __future__ import annotations

from tusss.distributed.cluster import LOCAL, RayUnavailableError, init_ray, require_ray
from tusss.distributed.extract import (
    ClipSpec,
    GeneratorInfo,
    PoolConfig,
    SamSpec,
    failures_path,
    probe_clip,
    probe_generator,
    ray_cache_masks,
    ray_embed,
    read_failures,
)

__all__ = ["LOCAL", "RayUnavailableError", "init_ray", "require_ray", "ClipSpec", "GeneratorInfo", "PoolConfig",
           "SamSpec", "failures_path", "probe_clip", "probe_generator", "ray_cache_masks", "ray_embed", "read_failures"]
