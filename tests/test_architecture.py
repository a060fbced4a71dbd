"""Dependencies point one way: no import cycle among tusss modules, no library module imports the CLI,
tusss.glcc is independent of the CLI and of the open-vocabulary pipeline, and every module imports on its own
in a fresh interpreter.

The import graph is read from the source with :mod:`ast` (an independent path from Python's import system):
module-level imports are the edges that can form a cycle at import time; imports anywhere (including inside
functions) count for the "who may import the CLI" rules.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "tusss"
CLI_MODULES_OK = ("tusss.cli", "tusss.engine.cli")  # these (and tusss.cli.*) may import tusss.cli


def _modules() -> dict[str, Path]:
    out = {}
    for p in sorted(ROOT.rglob("*.py")):
        rel = p.relative_to(ROOT.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = p
    return out


MODULES = _modules()


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING"
    )


def _imports(mod: str, path: Path) -> tuple[set[str], set[str]]:
    """(module-level imports, all imports) of ``mod`` as absolute tusss module names."""
    tree = ast.parse(path.read_text(), str(path))
    is_pkg = path.name == "__init__.py"
    base = mod.split(".") if is_pkg else mod.split(".")[:-1]

    def names(node: ast.AST) -> set[str]:
        got: set[str] = set()
        if isinstance(node, ast.Import):
            got |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                pkg = base[: len(base) - node.level + 1]
                src = ".".join(pkg + ([node.module] if node.module else []))
            else:
                src = node.module or ""
            got.add(src)
            got |= {f"{src}.{a.name}" for a in node.names if f"{src}.{a.name}" in MODULES}
        return {n for n in got if n == "tusss" or n.startswith("tusss.")}

    top: set[str] = set()
    every: set[str] = set()

    def visit(body: list[ast.stmt], module_level: bool) -> None:
        for node in body:
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                n = names(node)
                every.update(n)
                if module_level:
                    top.update(n)
            elif isinstance(node, ast.If) and _is_type_checking(node):
                continue
            sub_level = module_level and isinstance(node, (ast.If, ast.Try, ast.With))
            for field in ("body", "orelse", "finalbody", "handlers"):
                blk = getattr(node, field, None)
                if isinstance(blk, list) and blk and isinstance(blk[0], (ast.stmt, ast.ExceptHandler)):
                    stmts = [s for h in blk for s in (h.body if isinstance(h, ast.ExceptHandler) else [h])]
                    visit(stmts, sub_level)

    visit(tree.body, True)
    return top, every


GRAPH = {m: _imports(m, p) for m, p in MODULES.items()}


def _imports_cli(names: set[str]) -> bool:
    return any(n == "tusss.cli" or n.startswith("tusss.cli.") for n in names)


def test_scan_sees_known_edges():
    # the scanner itself must see the imports it is meant to police (else the tests below pass vacuously)
    assert "tusss.cli.common" in GRAPH["tusss.cli.ov"][0]
    assert "tusss.errors" in GRAPH["tusss.io"][0]
    assert "tusss.masks.cache" in GRAPH["tusss.cli.glcc"][1]  # a function-level import
    assert len(MODULES) > 40


def test_no_library_module_imports_the_cli():
    bad = sorted(m for m, (_, every) in GRAPH.items()
                 if _imports_cli(every) and not (m in CLI_MODULES_OK or m.startswith("tusss.cli.")))  # fmt: skip
    assert not bad, f"library modules importing tusss.cli: {bad}"


def test_glcc_is_independent_of_cli_and_pipeline():
    bad = {m: sorted(n for n in every if _imports_cli({n}) or n == "tusss.pipeline")
           for m, (_, every) in GRAPH.items() if m.startswith("tusss.glcc")}  # fmt: skip
    assert not any(bad.values()), f"tusss.glcc imports: { {k: v for k, v in bad.items() if v} }"


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def strong(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in edges:
                continue
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in edges:
        if v not in index:
            strong(v)
    return out


def test_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_module_level_import_cycle():
    # a package's __init__ importing its submodules is not a cycle by itself: edges to a module's own parent
    # packages are dropped (Python imports parents first, without coming back to the child)
    edges = {m: {n for n in top if n in MODULES and not m.startswith(n + ".")} for m, (top, _) in GRAPH.items()}
    assert _cycles(edges) == []


_IMPORT_ALL = """
import importlib, sys
bad = []
for m in sys.argv[1:]:
    try:
        importlib.import_module(m)
    except ModuleNotFoundError as e:  # optional GPU-only packages
        if (e.name or "").split(".")[0] not in ("tensorrt", "cupy"):
            bad.append(f"{m}: {e!r}")
    except Exception as e:
        bad.append(f"{m}: {e!r}")
print("\\n".join(bad))
sys.exit(1 if bad else 0)
"""


@pytest.mark.slow
def test_every_module_imports_in_a_fresh_interpreter():
    code = _IMPORT_ALL
    mods = sorted(m for m in MODULES if not m.endswith("__main__"))
    # two import orders: a cycle that happens to resolve in one order can fail in the other
    for order in (mods, mods[::-1]):
        r = subprocess.run([sys.executable, "-c", code, *order], capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stdout.strip() or r.stderr.strip()[-2000:]


def test_engine_and_export_public_apis():
    import tusss.engine
    import tusss.export

    for pkg in (tusss.engine, tusss.export):
        assert len(pkg.__all__) >= 8 and "placeholder" not in (pkg.__doc__ or "")
        for name in pkg.__all__:
            obj = getattr(pkg, name)
            assert obj.__name__ == name and obj.__module__.startswith(pkg.__name__ + "."), (pkg.__name__, name)
    from tusss.engine import Engine, build_engine, check_engine  # the imports users write
    from tusss.engine.runtime import Engine as E

    assert Engine is E and callable(build_engine) and callable(check_engine)
    # lazy: importing the packages loads no exporter / runtime
    code = ("import sys, tusss.engine, tusss.export\n"
            "print(sorted(m for m in ('onnx', 'onnxruntime', 'tensorrt') if m in sys.modules))")  # fmt: skip
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.strip() == "[]", r.stdout + r.stderr
