"""Every experiment of the paper as one versioned recipe file (TOML, shipped in the package).

    >>> from tusss.recipes import load_recipe, list_recipes
    >>> r = load_recipe("voc-weak")                      # or a path to your own .toml
    >>> r = r.with_overrides(["glcc.k=[50, 12]", "probe.iter_factor=[0.5, 0.5]"])

:mod:`tusss.recipes.schema` holds the schema and the loader; :mod:`tusss.recipes.runner` runs a recipe
(masks -> embed -> fit -> predict -> eval, each stage resumable). See ``docs/recipes.md``.
"""

from __future__ import annotations

import os
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the same parser as a package
    import tomli as tomllib  # type: ignore[no-redef]

from tusss.errors import InputError
from tusss.recipes.schema import KINDS, SCHEMA, Recipe, dumps_recipe, parse_recipe, parse_value

__all__ = ["Recipe", "load_recipe", "loads_recipe", "list_recipes", "recipe_path", "dumps_recipe", "parse_value",
           "SCHEMA", "KINDS"]

_DIR = Path(__file__).resolve().parent


def list_recipes() -> list[str]:
    """Names of the recipes shipped with tusss (sorted)."""
    return sorted(p.stem for p in _DIR.glob("*.toml"))


def recipe_path(name_or_path: str | os.PathLike) -> Path:
    """The file of a shipped recipe name (``voc-weak``) or an existing path."""
    p = Path(name_or_path)
    if p.suffix == ".toml" or p.exists():
        if not p.is_file():
            raise InputError(f"recipe file {str(p)!r} does not exist")
        return p
    q = _DIR / f"{name_or_path}.toml"
    if not q.is_file():
        import difflib

        m = difflib.get_close_matches(str(name_or_path), list_recipes(), 1)
        hint = f" (did you mean {m[0]!r}?)" if m else ""
        raise InputError(f"unknown recipe {str(name_or_path)!r}{hint}; shipped recipes: {', '.join(list_recipes())}")
    return q


def loads_recipe(text: str, origin: str = "recipe") -> Recipe:
    """Parse and validate recipe TOML text."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise InputError(f"{origin} is not valid TOML: {e}") from e
    return Recipe(parse_recipe(doc, origin))


def load_recipe(name_or_path: str | os.PathLike, overrides: dict | list[str] | None = None) -> Recipe:
    """Load a shipped recipe by name or a recipe file, validate it, apply ``overrides`` (``--set`` pairs)."""
    p = recipe_path(name_or_path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"cannot read recipe {str(p)!r}: {e}") from e
    r = loads_recipe(text, f"recipe {p.name}")
    return r.with_overrides(overrides) if overrides else r
