"""``--ray [ADDRESS]`` for ``tusss masks``, ``tusss embed`` and ``tusss serve`` (and ``tusss run``, whose recipe
runner takes the same options, :mod:`tusss.cli.run`): the same outputs on a Ray cluster.

This module adds no subcommand: its :func:`register` runs after the modules that define ``masks``, ``embed``
and ``serve``, adds the Ray options to those parsers and routes a run with ``--ray`` to
:mod:`tusss.distributed.extract` / :mod:`tusss.distributed.serve` (a run without ``--ray`` is the single-process
command, untouched). ``tusss serve --ray`` starts ``--ray-actors`` Ray Serve replicas of the same service::

    tusss masks --dataset coco_object --root COCO --split train --cache-dir MASKS --ray            # local cluster
    tusss embed --dataset coco_object --root COCO --split train --mask-cache MASKS --out STORE \\
                --ray 10.0.0.1:6379 --ray-actors 8                                               # running cluster

Ray options: ``--ray [ADDRESS]`` (no address: a local cluster on 127.0.0.1), ``--ray-actors N`` (SAM /
DBA-CLIP replicas), ``--ray-gpus-per-actor G`` (default 1 where the cluster has GPUs, else 0),
``--ray-cpus-per-actor C`` (default: 1 with GPUs, else ``min(1, 0.5 * CPUs / actors)``), ``--ray-read-cpus``
(per read task, 0.25), ``--ray-num-cpus`` (size of a local cluster). Failed images are skipped and listed in
``failures.jsonl`` of the cache / store folder, as without ``--ray`` (``--fail-fast`` stops at the first one);
the exit status is 1 when any image failed.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from tusss.errors import InputError

__all__ = ["add_ray_args", "pool_from_args", "ray_address", "register", "run_embed", "run_masks"]

RAY_COMMANDS = ("masks", "embed", "serve")


def add_ray_args(p: argparse.ArgumentParser) -> None:
    """The ``--ray`` option group (see the module docstring)."""
    g = p.add_argument_group("Ray (scale-out; needs the extra tusss[ray])")
    g.add_argument("--ray", nargs="?", const="local", default=None, metavar="ADDRESS",
                   help="run on Ray: a local cluster on 127.0.0.1 without ADDRESS, else the cluster at ADDRESS "
                        "(host:port of the head node, 'auto' or ray://host:port)")
    g.add_argument("--ray-actors", type=int, default=1, metavar="N", help="model actors (replicas), default 1")
    g.add_argument("--ray-gpus-per-actor", type=float, metavar="G",
                   help="GPUs per actor (default: 1 when the cluster has GPUs, else 0)")
    g.add_argument("--ray-cpus-per-actor", type=float, metavar="C",
                   help="CPUs per actor (default: 1 with GPUs, else min(1, 0.5 * cluster CPUs / actors))")
    g.add_argument("--ray-read-cpus", type=float, default=0.25, metavar="C", help="CPUs per read task (0.25)")
    g.add_argument("--ray-num-cpus", type=int, metavar="N", help="CPUs of a local cluster (default: all)")


def pool_from_args(args: argparse.Namespace) -> object:
    """The :class:`tusss.distributed.PoolConfig` of the ``--ray-*`` options."""
    from tusss.distributed import PoolConfig

    return PoolConfig(actors=args.ray_actors, cpus_per_actor=args.ray_cpus_per_actor,
                      gpus_per_actor=args.ray_gpus_per_actor, read_cpus=args.ray_read_cpus)


def ray_address(args: argparse.Namespace) -> str | None:
    """The cluster address of ``--ray [ADDRESS]`` (None: a local cluster); checks ``--ray-num-cpus`` against it."""
    if args.ray != "local" and getattr(args, "inputs", None) is not None and Path(args.ray).exists():
        args.inputs.append(args.ray)  # `tusss masks --ray DIR`: argparse took the image folder for ADDRESS
        args.ray = "local"
    if args.ray_num_cpus is not None and args.ray != "local":
        raise InputError("--ray-num-cpus sizes a local cluster; it cannot be used with --ray ADDRESS")
    return None if args.ray == "local" else args.ray


def _workers(res: dict) -> str:
    """``"actor pids 123:4 456:2"``: which model actors handled how many images."""
    return "actor pids " + " ".join(f"{p}:{n}" for p, n in sorted(res["workers"].items())) if res["workers"] else \
        "no model calls"


def _report_failures(res: dict, out: str) -> int:
    failed = res["failed"]
    for i, rec in failed.items():
        print(f"  failed {i} ({rec['stage']}): {rec['error']}", file=sys.stderr)
    if failed:
        print(f"  {len(failed)} failure(s) recorded in {res['failures_file']}", file=sys.stderr)
    return 1 if failed else 0


def run_masks(args: argparse.Namespace) -> int:
    """``tusss masks --ray``: SAM actors fill the mask cache exactly as ``tusss masks --keep-going`` does."""
    from tusss.cli.common import ImageSource, parse_opts
    from tusss.distributed import SamSpec, init_ray, probe_generator, ray_cache_masks, require_ray
    from tusss.masks.cache import check_manifest, write_manifest
    from tusss.weights import parse_weight_source

    address = ray_address(args)
    src = ImageSource(args)
    spec = SamSpec(args.sam, parse_weight_source(args.checkpoint), args.preset, parse_opts(args.sam_opt, "--sam-opt"),
                   seed=args.seed, device=args.device)
    started = init_ray(address, num_cpus=args.ray_num_cpus)
    try:
        info = probe_generator(spec)
        check_manifest(args.cache_dir, info, args.overwrite)
        res = ray_cache_masks(spec, src.ids, src.image, args.cache_dir, overwrite=args.overwrite,
                              pool=pool_from_args(args), progress=not args.no_progress, info=info,
                              fail_fast=bool(getattr(args, "fail_fast", False)))
    finally:
        if started:
            require_ray().shutdown()
    write_manifest(args.cache_dir, info)
    print(f"masks (ray): {len(res['generated'])} generated, {len(res['skipped'])} already cached, "
          f"{len(res['failed'])} failed -> {args.cache_dir} [{_workers(res)}]")
    return _report_failures(res, args.cache_dir)


def run_embed(args: argparse.Namespace) -> int:
    """``tusss embed --ray``: DBA-CLIP actors; the driver writes the store exactly as ``tusss embed`` does."""
    from tusss.cli.common import parse_opts
    from tusss.data.datasets import get_dataset
    from tusss.distributed import ClipSpec, ray_embed
    from tusss.masks.cache import open_mask_cache
    from tusss.weights import parse_weight_source

    ds = get_dataset(args.dataset, args.root, args.split, ids_file=args.ids_file)
    ids = list(ds.ids[: args.limit] if args.limit else ds.ids)
    if not ids:
        raise InputError(f"{args.dataset} split {args.split!r} has no images")
    cache = open_mask_cache(args.mask_cache)
    has_gt = not args.no_gt and ds.label(ids[0]) is not None
    # the store's index meta of the single-process `tusss embed`: the same function, plus the embedder identity
    # (weights sha256 ...) that `tusss embed` takes from its model, here from one build in a Ray task
    from tusss.cli.glcc import embed_store_meta
    from tusss.distributed import init_ray, probe_clip, require_ray

    spec = ClipSpec(args.clip, parse_weight_source(args.weights, official="openai"), args.clip_preset,
                    parse_opts(args.clip_opt, "--clip-opt"), seed=args.seed, device=args.device)
    started = init_ray(ray_address(args), num_cpus=args.ray_num_cpus)
    try:
        meta = {**embed_store_meta(args, ds, cache), "embedder": probe_clip(spec)}
        res = ray_embed(ds, cache.root, cache.config_hash, args.out, spec, ids=ids, dtype=args.dtype,
                        shard_size=args.shard_size, with_gt=has_gt, meta=meta, pool=pool_from_args(args),
                        progress=not args.no_progress, fail_fast=bool(getattr(args, "fail_fast", False)))
    finally:
        if started:
            require_ray().shutdown()
    print(f"embed (ray): {len(res['embedded'])} image(s) embedded, {len(res['skipped'])} already stored, "
          f"{len(res['failed'])} failed -> {args.out} [{_workers(res)}]")
    return _report_failures(res, args.out)


def run_serve(args: argparse.Namespace) -> int:
    """``tusss serve --ray``: the same service as Ray Serve replicas (``--ray-actors`` of them) behind Serve's HTTP
    proxy on ``--host:--port``; each replica builds the predictor of the command's options. Blocks until
    Ctrl-C / SIGTERM, then removes the application."""
    import functools
    import signal
    import threading

    from tusss.cli.serve import predictor_from_args
    from tusss.distributed import init_ray, require_ray
    from tusss.distributed.cluster import cluster_resources

    chosen = [n for n in ("vocabulary", "classes", "glcc") if getattr(args, n, None)]
    if len(chosen) != 1:
        raise InputError("give exactly one of --vocabulary, --classes or --glcc")
    for n, v in (("--max-batch", args.max_batch), ("--max-pixels", args.max_pixels)):
        if v < 1:
            raise InputError(f"{n} must be >= 1, got {v}")
    address = ray_address(args)
    started = init_ray(address, num_cpus=args.ray_num_cpus)
    try:
        from ray import serve

        from tusss.distributed.serve import run

        res = cluster_resources()
        cpus, gpus = pool_from_args(args).resolve(res.cpus, res.gpus)
        settings = {"num_replicas": args.ray_actors, "num_cpus": cpus, "num_gpus": gpus,
                    "max_batch_size": args.max_batch, "batch_wait_timeout_s": args.max_wait_ms / 1000.0,
                    "max_upload_bytes": int(args.max_upload_mb * (1 << 20)), "max_pixels": args.max_pixels}
        run(functools.partial(predictor_from_args, args), host=args.host, port=args.port, settings=settings)
        print(f"serve (ray): {args.ray_actors} replica(s) on http://{args.host}:{args.port} "
              "(Ctrl-C or SIGTERM to stop)", flush=True)
        stop = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        stop.wait()
        if not started:  # a shared cluster: remove only this application (a local cluster goes with shutdown)
            serve.delete("tusss", _blocking=False)
    finally:
        if started:
            require_ray().shutdown()
    return 0


_RUNNERS: dict[str, Callable[[argparse.Namespace], int]] = {"masks": run_masks, "embed": run_embed,
                                                             "serve": run_serve}


def _dispatch(single: Callable[[argparse.Namespace], int], ray_run: Callable[[argparse.Namespace], int]):
    def func(args: argparse.Namespace) -> int:
        return ray_run(args) if getattr(args, "ray", None) is not None else single(args)

    func.__doc__ = f"{single.__name__}, or {ray_run.__name__} with --ray"
    return func


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the Ray options to the ``masks`` and ``embed`` parsers already registered (no new subcommand)."""
    for name in RAY_COMMANDS:
        p = subparsers.choices.get(name)
        if p is None:  # the defining module is not registered: nothing to extend
            continue
        add_ray_args(p)
        p.set_defaults(func=_dispatch(p.get_default("func"), _RUNNERS[name]))
