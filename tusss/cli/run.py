"""``tusss run | tune | recipes``: run an experiment of the paper from its recipe (tusss.recipes).

::

    tusss recipes                                   list the shipped recipes with the paper's figures
    tusss recipes show voc-weak                     print a recipe (TOML), overrides applied
    tusss run  --recipe voc-weak --root DATA --work DIR [--set glcc.k=[50,12] ...]
    tusss tune --recipe voc-weak --root DATA --work DIR [--field combine.w ...]

``run`` computes masks -> embed -> fit -> predict -> eval, each stage resumable and skipped when its output is
complete (a second run is a no-op), and prints mIoU and mask F1 beside the paper's figure. ``run --ray
[ADDRESS]`` (and the ``--ray-*`` options of ``tusss masks --ray``; ``tune`` takes them too) computes the masks
and embed stages with SAM and DBA-CLIP actors on a Ray cluster, writing the same cache and stores; fit,
predict and eval stay here.
``tune`` searches the recipe's ``[tune.grid]`` by the best mIoU on the evaluation split's ground truth, as the
authors did: its output is labelled "tuned on ground truth".
"""

from __future__ import annotations

import argparse
import math

from tusss.cli.common import add_common
from tusss.cli.ray_options import add_ray_args

__all__ = ["register"]


def _recipe(args: argparse.Namespace):
    from tusss.recipes import load_recipe

    return load_recipe(args.recipe, args.set)


def _runner_kw(args: argparse.Namespace) -> dict:
    kw = {"device": args.device, "progress": not args.no_progress, "shard_size": args.shard_size,
          "seed": args.seed, "limit": args.limit}
    if getattr(args, "ray", None) is not None:  # `tusss run --ray`: masks and embed stages on the cluster
        from tusss.cli.ray_options import pool_from_args, ray_address
        from tusss.recipes.runner import RayOptions

        kw["ray"] = RayOptions(address=ray_address(args), pool=pool_from_args(args), num_cpus=args.ray_num_cpus)
    return kw


def cmd_run(args: argparse.Namespace) -> int:
    from tusss.recipes.runner import RecipeRunner

    res = RecipeRunner(_recipe(args), args.root, args.work, **_runner_kw(args)).run()
    done = [k for k, v in res.stages.items() if v == "done"]
    print(f"stages: {', '.join(f'{k} {v}' for k, v in res.stages.items())}"
          + ("" if done else "  (nothing to do: every stage was complete)"))
    print(res.table)
    if args.out:
        from tusss.persist import atomic_write_json

        atomic_write_json(args.out, {"recipe": res.recipe, "stages": res.stages, "metrics": res.metrics,
                                     "paths": res.paths, "failures": res.failures}, indent=1)
    return 1 if res.failures else 0


def cmd_tune(args: argparse.Namespace) -> int:
    from tusss.recipes.runner import grid_size, tune

    r = _recipe(args)
    grid = dict(r["tune"]["grid"])
    if args.field:
        missing = [f for f in args.field if f not in grid]
        if missing:
            from tusss.errors import InputError

            raise InputError(f"recipe {r.name!r} has no grid for {missing}; grids: {sorted(grid)}")
        grid = {f: grid[f] for f in args.field}
    print(f"tune {r.name}: {grid_size(grid)} runs over {len(grid)} grid(s), TUNED ON GROUND TRUTH "
          f"({r['dataset']['name']} {r['dataset']['eval_split']}): the authors' protocol, not a held-out result")
    res = tune(r, args.root, args.work, grid=grid, **_runner_kw(args))
    from tusss.recipes.schema import _toml_val

    for t in res.trials:
        f1 = t["mask_F1"]
        print(f"  {t['field']} = {_toml_val(t['value'])}: mIoU {100 * t['mIoU']:.2f}"
              f"{'' if not math.isfinite(f1) else f'  mask F1 {100 * f1:.2f}'}  [tuned on ground truth]")
    print("best (tuned on ground truth): " + " ".join(f"--set {s!r}" for s in res.set_args()))
    print(res.best_result.table + "\n  (tuned on ground truth)")
    if args.out:
        from tusss.persist import atomic_write_json

        atomic_write_json(args.out, {"recipe": r.name, "label": res.label, "trials": res.trials, "best": res.best,
                                     "metrics": res.best_result.metrics}, indent=1)
    return 0


def cmd_recipes(args: argparse.Namespace) -> int:
    from tusss.recipes import list_recipes, load_recipe

    if args.action == "show":
        if not args.name:
            from tusss.errors import InputError

            raise InputError("tusss recipes show NAME_OR_FILE")
        print(load_recipe(args.name, args.set).dumps(), end="")
        return 0
    rows = [("recipe", "supervision", "paper", "mIoU", "F1", "title")]
    for n in list_recipes():
        r = load_recipe(n)
        p = r["paper"]
        rows.append((n, r.kind, p["table"], "-" if math.isnan(p["miou"]) else f"{p['miou']:.1f}",
                     "-" if math.isnan(p["f1"]) else f"{p['f1']:.1f}", r["title"]))
    w = [max(len(x[c]) for x in rows) for c in range(5)]
    for x in rows:
        print("  ".join(x[c].ljust(w[c]) for c in range(5)) + "  " + x[5])
    return 0


def _recipe_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--recipe", required=True, help="shipped recipe name (`tusss recipes`) or a .toml file")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a recipe field, TOML value syntax: glcc.k=[50,12], combine.w=2, "
                        "probe.iter_factor.0=0.5 (repeatable)")
    p.add_argument("--root", required=True, help="dataset root (layout: docs/recipes.md)")
    p.add_argument("--work", required=True, help="work directory: every stage's output, reused when complete")
    p.add_argument("--out", help="also write the result as JSON here")
    p.add_argument("--shard-size", type=int, default=65536, help="embedding-store shard rows (resume granularity)")
    p.add_argument("--limit", type=int, help="only the first N images of each split (a quick look)")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``run``, ``tune`` and ``recipes`` to the ``tusss`` command."""
    p = subparsers.add_parser("run", help="run an experiment of the paper from its recipe (masks -> embed -> fit "
                              "-> predict -> eval, resumable)")
    _recipe_args(p)
    add_common(p)
    add_ray_args(p)
    p.set_defaults(func=cmd_run)

    p = subparsers.add_parser("tune", help="search a recipe's grids by mIoU on ground truth (the authors' protocol)")
    _recipe_args(p)
    p.add_argument("--field", action="append", help="tune only this grid (repeatable; default: all, in order)")
    add_common(p)
    add_ray_args(p)  # masks / embed of trials that change them run on the cluster
    p.set_defaults(func=cmd_tune)

    p = subparsers.add_parser("recipes", help="list the shipped recipes, or show one")
    p.add_argument("action", nargs="?", default="list", choices=["list", "show"])
    p.add_argument("name", nargs="?")
    p.add_argument("--set", action="append", metavar="KEY=VALUE")
    p.set_defaults(func=cmd_recipes)

