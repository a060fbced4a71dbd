"""Recipe files: one versioned TOML file per experiment of the paper (schema, validation, round trip).

A recipe is a TOML document with a fixed set of sections and keys (:data:`SCHEMA`). Loading fills in the
defaults, checks every key (an unknown or misspelled key is an error that names the closest valid key) and
every type, and returns a :class:`Recipe`; :func:`dumps_recipe` writes one back so that
``load(dumps(r)) == r`` (round trip). TOML is read with the standard library's ``tomllib``; the writer is
the small emitter below (the schema only holds tables, scalars, arrays and inline tables), so recipes need
no extra dependency.

Conventions:

- ``source`` in each section names the authors' config files the constants come from.
- A per-round value is an array with one entry per bootstrap round (``glcc.k = [50, 12]``).
- ``softmax = false`` means "no softmax" (TOML has no null); a number is the temperature γ.
- ``[tune]`` holds the grids the authors searched **on ground truth** without recording the winner: keys are
  dotted field paths (``"combine.w"``, ``"glcc.lp_alpha_bg.0"`` for round 1), values the candidate lists.
  ``tusss run`` uses the recipe's values; ``tusss tune`` searches these grids on the evaluation split's GT.
"""

from __future__ import annotations

import copy
import difflib
import math
from dataclasses import dataclass
from typing import Any

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the same parser as a package
    import tomli as tomllib  # type: ignore[no-redef]

from tusss.errors import InputError

__all__ = ["SCHEMA", "KINDS", "Recipe", "parse_recipe", "dumps_recipe", "set_path", "get_path", "parse_value",
           "RECIPE_FORMAT", "RECIPE_VERSION"]

RECIPE_FORMAT = "tusss-recipe"
RECIPE_VERSION = 1
KINDS = ("full", "semi", "weak", "ov")

# type tags: "str", "int", "float", "bool", "list[int]", "list[float]", "list[str]", "table" (free inline
# table of scalars/arrays), "fg", "bg", "list[fg]", "grid"
_FG_KEYS = {"softmax": "float|false", "norm": "bool", "L1": "bool", "bypath_suppress": "bool", "is_score": "bool"}
_BG_KEYS = {"method": "str", "pow": "float", "alpha": "float", "thresh": "float"}

# section -> {key: (type, default)}; a default of ... means required
SCHEMA: dict[str, dict[str, tuple[str, Any]]] = {
    "": {
        "format": ("str", RECIPE_FORMAT),
        "version": ("int", RECIPE_VERSION),
        "name": ("str", ...),
        "title": ("str", ""),
        "supervision": ("str", ...),
    },
    "paper": {
        "table": ("str", ""),
        "miou": ("float", math.nan),
        "f1": ("float", math.nan),
        "note": ("str", ""),
    },
    "dataset": {
        "name": ("str", ...),
        "train_split": ("str", "train"),
        "eval_split": ("str", "val"),
        "labeled_ids": ("str", ""),
        "train_ids": ("str", ""),
        "eval_ids": ("str", ""),
        "layout": ("str", ""),
        "source": ("str", ""),
    },
    "masks": {
        "sam": ("str", "vit_h"),
        "checkpoint": ("str", "official"),
        "preset": ("str", "tuss"),
        "overrides": ("table", {}),
        "source": ("str", ""),
    },
    "clip": {
        "model": ("str", "ViT-B-16"),
        "weights": ("str", "openai"),
        "preset": ("str", "reference"),
        "opts": ("table", {}),
        "dtype": ("str", "float32"),
        "source": ("str", ""),
    },
    "text": {
        "vocabulary": ("str", ""),
        "templates": ("str", ""),
        "fg": ("fg", {"softmax": 1.0, "norm": False, "L1": False, "bypath_suppress": True, "is_score": False}),
        "bg": ("bg", {"method": "pow", "pow": 1.0, "alpha": 1.0, "thresh": 0.5}),
        "fill": ("int", 0),
        "source": ("str", ""),
    },
    "semi": {
        "start": ("str", "zero"),
        "semi_balance": ("bool", False),
        "bg_fg_balance": ("str", "eq"),
        "source": ("str", ""),
    },
    "glcc": {
        "rounds": ("int", 1),
        "k": ("list[int]", [50]),
        "alpha": ("float", 0.9),
        "gamma": ("float", 1.0),
        "k_bar": ("int", 0),
        "a_norm": ("str", "rigorous"),
        "order": ("str", "lp_first"),
        "cg_tol": ("float", 1e-6),
        "cg_maxiter": ("int", 200),
        "soft_gamma": ("float", 100.0),
        "lp_alpha_bg": ("list[float]", [1.0]),
        "lp_fg": ("list[fg]", []),
        "probe_alpha_bg": ("float", 1.0),
        "knn_backend": ("str", "torch"),
        "source": ("str", ""),
    },
    "probe": {
        "base_iters": ("int", 60000),
        "base_warmup": ("int", 6000),
        "iter_factor": ("list[float]", [0.25]),
        "warmup_scales": ("bool", True),
        "lr": ("float", 0.02),
        "warmup_start_lr": ("float", 1e-5),
        "momentum": ("float", 0.9),
        "weight_decay": ("float", 0.0),
        "batch_size": ("int", 512),
        "sampler": ("str", "random"),
        "seed": ("int", 0),
        "source": ("str", ""),
    },
    "combine": {
        "w": ("float", 1.5),
        "lp_l1": ("bool", True),
        "alpha_probe": ("float", 1.0),
        "alpha_lp": ("float", 1.0),
        "alpha_final": ("float", 1.0),
        "source": ("str", ""),
    },
    "tune": {"note": ("str", ""), "grid": ("grid", {})},
}

_CHOICES = {
    ("", "supervision"): KINDS,
    ("semi", "start"): ("zero", "ov"),
    ("semi", "bg_fg_balance"): ("eq", "none"),
    ("glcc", "a_norm"): ("rigorous", "paper", "L1", "none"),
    ("glcc", "order"): ("lp_first", "probe_first"),
    ("probe", "sampler"): ("random", "semi_balance"),
    ("clip", "dtype"): ("float32", "float16"),
}


def _close(key: str, options: Any) -> str:
    m = difflib.get_close_matches(key, list(options), 1)
    return f" (did you mean {m[0]!r}?)" if m else ""


def _check_scalar(v: Any, t: str, where: str) -> Any:
    if t == "str":
        if not isinstance(v, str):
            raise InputError(f"{where} must be a string, got {v!r}")
        return v
    if t == "bool":
        if not isinstance(v, bool):
            raise InputError(f"{where} must be true or false, got {v!r}")
        return v
    if t == "int":
        if isinstance(v, bool) or not isinstance(v, int):
            raise InputError(f"{where} must be an integer, got {v!r}")
        return v
    if t == "float":
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise InputError(f"{where} must be a number, got {v!r}")
        return float(v)
    if t == "float|false":
        if v is False or v is None:
            return False
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise InputError(f"{where} must be a number (softmax temperature) or false (no softmax), got {v!r}")
        return float(v)
    raise AssertionError(t)


def _check_sub(v: Any, keys: dict[str, str], default: dict[str, Any] | None, where: str) -> dict[str, Any]:
    if not isinstance(v, dict):
        raise InputError(f"{where} must be a table, got {v!r}")
    out = dict(default or {})
    for k, x in v.items():
        if k not in keys:
            raise InputError(f"{where} has unknown key {k!r}{_close(k, keys)}; keys: {sorted(keys)}")
        out[k] = _check_scalar(x, keys[k], f"{where}.{k}")
    return out


_FG_DEFAULT = {"softmax": 1.0, "norm": False, "L1": False, "bypath_suppress": True, "is_score": False}


def _check_value(v: Any, t: str, default: Any, where: str) -> Any:
    if t.startswith("list["):
        inner = t[5:-1]
        if not isinstance(v, list):
            raise InputError(f"{where} must be an array, got {v!r}")
        if inner == "fg":
            return [_check_sub(x, _FG_KEYS, _FG_DEFAULT, f"{where}[{i}]") for i, x in enumerate(v)]
        return [_check_scalar(x, inner, f"{where}[{i}]") for i, x in enumerate(v)]
    if t == "fg":
        return _check_sub(v, _FG_KEYS, _FG_DEFAULT, where)
    if t == "bg":
        out = _check_sub(v, _BG_KEYS, default, where)
        if out["method"] not in ("pow", "alpha_bg", "no_bg", "thresh"):
            raise InputError(f"{where}.method must be pow, alpha_bg, no_bg or thresh, got {out['method']!r}")
        return out
    if t == "table":
        if not isinstance(v, dict):
            raise InputError(f"{where} must be a table, got {v!r}")
        return copy.deepcopy(v)
    if t == "grid":
        if not isinstance(v, dict):
            raise InputError(f"{where} must be a table of 'section.key' = [values], got {v!r}")
        for k, vals in v.items():
            if not isinstance(vals, list) or not vals:
                raise InputError(f"{where}.{k!r} must be a non-empty array of candidate values")
            _resolve_path(k)  # the path must name a field
        return copy.deepcopy(v)
    return _check_scalar(v, t, where)


def _resolve_path(path: str) -> tuple[str, str, int | None]:
    """'section.key[.index]' (or 'key' of the top level) -> (section, key, index) with checks."""
    parts = path.split(".")
    if len(parts) == 1:
        sec, key, idx = "", parts[0], None
    elif len(parts) in (2, 3):
        sec, key = parts[0], parts[1]
        idx = None
        if len(parts) == 3:
            if not parts[2].isdigit():
                raise InputError(f"{path!r}: the third part must be a round index (0, 1, ...)")
            idx = int(parts[2])
    else:
        raise InputError(f"{path!r} is not a recipe field path ('section.key' or 'section.key.index')")
    if sec not in SCHEMA:
        raise InputError(f"{path!r}: unknown section {sec!r}{_close(sec, SCHEMA)}; sections: {sorted(SCHEMA)}")
    if key not in SCHEMA[sec]:
        raise InputError(f"{path!r}: section [{sec}] has no key {key!r}{_close(key, SCHEMA[sec])}")
    if idx is not None and not SCHEMA[sec][key][0].startswith("list["):
        raise InputError(f"{path!r}: {sec}.{key} is not a per-round array")
    return sec, key, idx


def parse_recipe(doc: dict[str, Any], origin: str = "recipe") -> dict[str, Any]:
    """Validate a parsed TOML document and fill in defaults -> the canonical nested dict."""
    if not isinstance(doc, dict):
        raise InputError(f"{origin}: a recipe must be a TOML table")
    out: dict[str, Any] = {}
    sections = {k for k in SCHEMA if k}
    top = SCHEMA[""]
    for k in doc:
        if k not in top and k not in sections:
            raise InputError(f"{origin}: unknown key or section {k!r}{_close(k, list(top) + sorted(sections))}")
    for sec, fields in SCHEMA.items():
        src = doc if sec == "" else doc.get(sec, {})
        if not isinstance(src, dict):
            raise InputError(f"{origin}: [{sec}] must be a table")
        dst = out if sec == "" else out.setdefault(sec, {})
        if sec:
            for k in src:
                if k not in fields:
                    raise InputError(f"{origin}: [{sec}] has unknown key {k!r}{_close(k, fields)}; "
                                     f"keys: {sorted(fields)}")
        for k, (t, default) in fields.items():
            if sec == "" and k in sections:
                continue
            if k in src:
                dst[k] = _check_value(src[k], t, default if isinstance(default, dict) else None,
                                      f"{origin}: {sec + '.' if sec else ''}{k}")
            elif default is ...:
                raise InputError(f"{origin}: required key {(sec + '.' if sec else '') + k!r} is missing")
            else:
                dst[k] = copy.deepcopy(default)
            choices = _CHOICES.get((sec, k))
            if choices is not None and dst[k] not in choices:
                raise InputError(f"{origin}: {(sec + '.' if sec else '') + k} must be one of {choices}, "
                                 f"got {dst[k]!r}")
    if out["format"] != RECIPE_FORMAT:
        raise InputError(f"{origin}: format must be {RECIPE_FORMAT!r}, got {out['format']!r}")
    if out["version"] != RECIPE_VERSION:
        raise InputError(f"{origin}: recipe version {out['version']} is not supported (this tusss reads "
                         f"version {RECIPE_VERSION})")
    g, p = out["glcc"], out["probe"]
    if g["rounds"] < 1:
        raise InputError(f"{origin}: glcc.rounds must be >= 1")
    kind = out["supervision"]
    n_rounds = g["rounds"] if kind in ("semi", "weak") else 1
    for sec, key, n in (("glcc", "k", n_rounds), ("glcc", "lp_alpha_bg", n_rounds), ("probe", "iter_factor", n_rounds)):
        if len(out[sec][key]) != n:
            raise InputError(f"{origin}: {sec}.{key} needs one entry per round ({n}), got {out[sec][key]}")
    if g["lp_fg"] and len(g["lp_fg"]) != n_rounds:
        raise InputError(f"{origin}: glcc.lp_fg needs one entry per round ({n_rounds}) or none, got {len(g['lp_fg'])}")
    if any(f <= 0 for f in p["iter_factor"]):
        raise InputError(f"{origin}: probe.iter_factor entries must be > 0")
    if kind in ("weak", "ov") or out["semi"]["start"] == "ov":
        if not out["text"]["vocabulary"]:
            raise InputError(f"{origin}: text.vocabulary is needed for {kind} supervision")
    return out


@dataclass
class Recipe:
    """A validated recipe (the canonical nested dict in :attr:`data`) with typed accessors."""

    data: dict[str, Any]

    @property
    def name(self) -> str:
        return self.data["name"]

    @property
    def kind(self) -> str:
        """"full" | "semi" | "weak" | "ov"."""
        return self.data["supervision"]

    def __getitem__(self, section: str) -> dict[str, Any]:
        return self.data[section]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Recipe) and _eq(self.data, other.data)

    def with_overrides(self, pairs: dict[str, Any] | list[str] | None) -> Recipe:
        """A new recipe with ``{"section.key": value}`` (or ``["section.key=value", ...]``) applied and
        re-validated."""
        if not pairs:
            return Recipe(copy.deepcopy(self.data))
        if isinstance(pairs, list):
            kv = {}
            for s in pairs:
                if "=" not in s:
                    raise InputError(f"--set expects section.key=value, got {s!r}")
                k, v = s.split("=", 1)
                kv[k.strip()] = parse_value(v.strip())
            pairs = kv
        d = copy.deepcopy(self.data)
        for path, value in pairs.items():
            set_path(d, path, value)
        return Recipe(parse_recipe(d, f"recipe {self.name!r} with overrides"))

    def dumps(self) -> str:
        return dumps_recipe(self.data)


def _eq(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_eq(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_eq(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b


def parse_value(text: str) -> Any:
    """A ``--set`` value: TOML syntax (``0.5``, ``[50, 12]``, ``true``, ``{softmax = 0.5, L1 = true}``,
    ``"x"``); anything that is not valid TOML is taken as a plain string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def get_path(d: dict[str, Any], path: str) -> Any:
    sec, key, idx = _resolve_path(path)
    v = (d if sec == "" else d[sec])[key]
    return v if idx is None else v[idx]


def set_path(d: dict[str, Any], path: str, value: Any) -> None:
    """Set ``section.key`` (or ``section.key.i``, one round of a per-round array) in a recipe dict."""
    sec, key, idx = _resolve_path(path)
    tgt = d if sec == "" else d.setdefault(sec, {})
    if idx is None:
        tgt[key] = value
        return
    arr = list(tgt.get(key, []))
    if idx >= len(arr):
        raise InputError(f"{path!r}: {sec}.{key} has {len(arr)} entries")
    arr[idx] = value
    tgt[key] = arr


# ---------------------------------------------------------------------------------------------- TOML writer
def _toml_key(k: str) -> str:
    return k if k and all(c.isalnum() or c in "-_" for c in k) else _toml_str(k)


def _toml_str(s: str) -> str:
    out = s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\t", "\\t")
    return f'"{out}"'


def _toml_val(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if isinstance(v, str):
        return _toml_str(v)
    if isinstance(v, list):
        return "[" + ", ".join(_toml_val(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{_toml_key(k)} = {_toml_val(x)}" for k, x in v.items()) + "}"
    raise InputError(f"cannot write {v!r} ({type(v).__name__}) to TOML")


# sections a kind does not read (left out when writing; they load as defaults)
UNUSED_SECTIONS = {"ov": ("semi", "glcc", "probe", "combine"), "full": ("semi", "text"), "weak": ("semi",),
                   "semi": ()}


def dumps_recipe(data: dict[str, Any]) -> str:
    """The canonical TOML text of a recipe dict (top-level keys, then one table per section; sections the
    recipe's kind does not read are left out, ``[tune.grid]`` is written one grid per line)."""
    lines = []
    for k in SCHEMA[""]:
        if k in data:
            lines.append(f"{k} = {_toml_val(data[k])}")
    kind = data.get("supervision")
    skip = set(UNUSED_SECTIONS.get(kind, ()))
    if kind == "semi" and data.get("semi", {}).get("start") != "ov":
        skip.add("text")
    for sec in SCHEMA:
        if not sec or sec not in data or sec in skip:
            continue
        if sec == "tune" and not data[sec].get("grid") and not data[sec].get("note"):
            continue
        lines.append("")
        lines.append(f"[{sec}]")
        subtables = []
        for k, v in data[sec].items():
            if SCHEMA[sec].get(k, ("",))[0] == "grid":
                subtables.append((k, v))
                continue
            lines.append(f"{_toml_key(k)} = {_toml_val(v)}")
        for k, v in subtables:
            lines.append("")
            lines.append(f"[{sec}.{_toml_key(k)}]")
            for gk, gv in v.items():
                lines.append(f"{_toml_key(gk)} = {_toml_val(gv)}")
    return "\n".join(lines) + "\n"
