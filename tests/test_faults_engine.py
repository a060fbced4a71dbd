"""Faults survived by engine directories (issue 14): corrupted manifests and graphs, a build killed and rerun.

Slow (ONNX exports of the tiny SAM take about a minute each on a loaded CPU): the engine is built once per
module with the two SAM graphs. References: the uninterrupted build (file bytes; the manifest without its
``created`` time stamp) and the one-line-message contract of :func:`tusss.persist.corrupt`.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from pathlib import Path

import pytest
import torch
from _engine_helpers import tiny_models

from tusss.engine.build import build_engine
from tusss.engine.manifest import read_manifest
from tusss.engine.runtime import Engine
from tusss.errors import CorruptFileError, InputError

pytestmark = pytest.mark.slow
GRAPHS_BUILT = ["sam_encoder", "sam_decoder"]


def _build(out: Path) -> None:
    m = tiny_models()
    build_engine(out, sam=m.mask_generator.sam, sam_info=m.sam_info, graphs=GRAPHS_BUILT, optimize=False, log=None)


def _content(d: Path) -> dict[str, object]:
    out: dict[str, object] = {}
    for p in sorted(d.rglob("*")):
        if p.is_file():
            if p.name == "manifest.json":
                man = json.loads(p.read_text())
                man.pop("created", None)
                out[p.name] = man
            else:
                out[p.name] = p.read_bytes()
    return out


@pytest.fixture(scope="module")
def ref_engine(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("engine") / "ref"
    _build(d)
    return d


def _killed_build(out: Path, n: int, timeout: float = 600) -> None:
    pid = os.fork()
    if pid == 0:
        try:
            torch.set_num_threads(1)  # the parent's OpenMP team does not survive fork() (see test_faults.run_killed)
            os.environ["TUSSS_FAULT_KILL_AFTER"] = str(n)
            _build(out)
        finally:
            os._exit(0)
    deadline = time.monotonic() + timeout
    while not (res := os.waitpid(pid, os.WNOHANG))[0]:
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail("engine build child hung")
        time.sleep(0.1)
    assert os.WIFSIGNALED(res[1]) and os.WTERMSIG(res[1]) == signal.SIGKILL


def test_build_killed_after_0_and_1_graphs_then_rebuilt(ref_engine, tmp_path) -> None:
    ref = _content(ref_engine)
    for n in (0, 1):
        out = tmp_path / f"e{n}"
        _killed_build(out, n)  # a first build killed: no engine appears, not even a partial one
        assert not out.exists()
        with pytest.raises(CorruptFileError, match="does not exist"):
            read_manifest(out)
        shutil.copytree(ref_engine, out)  # a complete engine is there: a killed rebuild leaves it as it was
        _killed_build(out, n)
        assert _content(out) == ref
        Engine.load(out)
    assert any(q.name.startswith(".e1.") for q in tmp_path.iterdir())  # the killed build's hidden folder
    _build(tmp_path / "e1")  # the rerun replaces it whole and sweeps the killed builds' temporary folders
    assert _content(tmp_path / "e1") == ref
    assert not any(q.name.startswith(".e1.") for q in tmp_path.iterdir())
    Engine.load(tmp_path / "e1")


def test_build_refuses_a_folder_that_is_not_an_engine(tmp_path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    (tmp_path / "src").mkdir()
    with pytest.raises(InputError, match=r"not an engine's \(notes.txt, src\)"):
        _build(tmp_path)
    assert sorted(q.name for q in tmp_path.iterdir()) == ["notes.txt", "src"]
    assert (tmp_path / "notes.txt").read_text() == "mine"


CASES = [
    ("manifest.json", "truncated", lambda p: p.write_bytes(p.read_bytes()[:200]), "not valid JSON"),
    ("manifest.json", "empty", lambda p: p.write_bytes(b""), "empty"),
    ("manifest.json", "garbage", lambda p: p.write_bytes(os.urandom(300)), "not valid JSON"),
    ("manifest.json", "wrong version", lambda p: p.write_text(json.dumps({**json.loads(p.read_text()),
                                                                           "format_version": 42})), "version 42"),
    ("manifest.json", "missing field", lambda p: p.write_text(json.dumps(
        {k: v for k, v in json.loads(p.read_text()).items() if k != "backend"})), "backend"),
    ("sam_decoder.onnx", "truncated", lambda p: p.write_bytes(p.read_bytes()[:1000]), "truncated"),
    ("sam_decoder.onnx", "garbage", lambda p: p.write_bytes(os.urandom(p.stat().st_size)), "sha256"),
    ("sam_encoder.onnx", "missing", Path.unlink, "missing"),
]


@pytest.mark.parametrize("name,fault,damage,expect", CASES, ids=[f"{c[0]}-{c[1]}" for c in CASES])
def test_engine_corruptions(ref_engine, tmp_path, name, fault, damage, expect) -> None:
    d = tmp_path / "e"
    shutil.copytree(ref_engine, d)
    damage(d / name)
    with pytest.raises(CorruptFileError) as ei:
        Engine.load(d)
    msg = str(ei.value)
    assert (name in msg) and expect in msg and "\n" not in msg, msg
    assert "tusss-engine build" in msg or "rebuild" in msg  # names the fix
    untouched = {q.name: q.read_bytes() for q in sorted(d.iterdir()) if q.name != name}
    assert untouched == {q.name: q.read_bytes() for q in sorted(ref_engine.iterdir()) if q.name != name}
