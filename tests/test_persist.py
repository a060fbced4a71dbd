"""tusss.persist: atomic files and directories, checked readers, failure records, the kill hook.

References: the bytes ``np.save`` / ``np.savez`` / ``json.dumps`` produce into memory (independent of the
atomic writer), and a real subprocess killed by the hook."""

from __future__ import annotations

import errno
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tusss.errors import CorruptFileError
from tusss.persist import (
    FAILURES,
    TMP_SUFFIX,
    FailureLog,
    ItemFailedError,
    atomic_directory,
    atomic_save_npy,
    atomic_save_npz,
    atomic_write,
    atomic_write_json,
    atomic_write_text,
    load_npy,
    load_npz,
    read_json,
    read_recipe,
    remove_stale_temps,
)


def _visible(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if not p.name.startswith("."))


def test_writers_give_the_bytes_of_the_plain_calls(tmp_path: Path) -> None:
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    ref = io.BytesIO()
    np.save(ref, a)
    assert atomic_save_npy(tmp_path / "a.npy", a).read_bytes() == ref.getvalue()
    atomic_save_npz(tmp_path / "b.npz", x=a, y=np.array(["u", "v"]))
    with np.load(tmp_path / "b.npz") as z:
        np.testing.assert_array_equal(z["x"], a)
        assert list(z["y"]) == ["u", "v"]
    assert atomic_write_json(tmp_path / "c.json", {"k": [1, 2]}, indent=1).read_text() == json.dumps(
        {"k": [1, 2]}, indent=1)
    assert atomic_write_text(tmp_path / "sub" / "d.txt", "é").read_bytes() == "é".encode()
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith(TMP_SUFFIX)]


@pytest.mark.parametrize("exc", [KeyboardInterrupt(), OSError(errno.ENOSPC, "No space left on device")])
def test_failed_write_keeps_the_previous_file(tmp_path: Path, exc) -> None:
    p = tmp_path / "f.bin"
    atomic_write_text(p, "old complete content")
    with pytest.raises(type(exc)):
        with atomic_write(p) as f:
            f.write(b"half of the new")
            raise exc
    assert p.read_text() == "old complete content"
    assert [q.name for q in tmp_path.iterdir()] == ["f.bin"]  # the temporary file is gone


def test_enospc_half_way_through_numpy(tmp_path: Path, monkeypatch) -> None:
    """The disk fills up while numpy writes: the previous array stays, no temporary file remains."""
    p = tmp_path / "a.npy"
    atomic_save_npy(p, np.zeros(1000))
    real_save = np.save

    def full_disk(f, arr, **kw):
        buf = io.BytesIO()
        real_save(buf, arr, **kw)
        f.write(buf.getvalue()[: buf.tell() // 2])  # half of the bytes reach the disk, then it is full
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(np, "save", full_disk)
    with pytest.raises(OSError) as ei:
        atomic_save_npy(p, np.ones(1000))
    monkeypatch.undo()
    assert ei.value.errno == errno.ENOSPC
    np.testing.assert_array_equal(np.load(p), np.zeros(1000))
    assert [q.name for q in tmp_path.iterdir()] == ["a.npy"]


def test_atomic_directory(tmp_path: Path) -> None:
    d = tmp_path / "model"
    with atomic_directory(d) as t:
        (t / "a").write_text("1")
        (t / "b").write_text("2")
    assert _visible(tmp_path) == ["model", "model/a", "model/b"]
    with pytest.raises(RuntimeError):
        with atomic_directory(d) as t:
            (t / "a").write_text("new")
            assert not (d / "c").exists() and (d / "a").read_text() == "1"  # invisible while being built
            raise RuntimeError("killed half-way")
    assert (d / "a").read_text() == "1" and _visible(tmp_path) == ["model", "model/a", "model/b"]
    assert list(tmp_path.iterdir()) == [d]
    with atomic_directory(d) as t:
        (t / "c").write_text("3")
    assert _visible(tmp_path) == ["model", "model/c"] and list(tmp_path.iterdir()) == [d]


def test_stale_temps_of_dead_processes_are_removed(tmp_path: Path) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    stale = tmp_path / "s" / f".x.npz.{pid}.abcd{TMP_SUFFIX}"
    stale.parent.mkdir()
    stale.write_bytes(b"half")
    mine = tmp_path / f".y.npz.{os.getpid()}.abcd{TMP_SUFFIX}"
    mine.write_bytes(b"in flight")
    other = tmp_path / ".not-ours.tmp"
    other.write_bytes(b"x")
    assert remove_stale_temps(tmp_path) == [stale]
    assert not stale.exists() and mine.exists() and other.exists()


# ------------------------------------------------------------------------------------------- readers
def _json_cases(p: Path):
    good = {"format": "fmt", "version": 2, "x": 1}
    yield "missing", None, "is missing"
    yield "empty", b"", "empty"
    yield "truncated", json.dumps(good).encode()[:10], "not valid JSON"
    yield "binary", b"\x89PNG\r\n\x1a\n\x00\xff", "not valid JSON"
    yield "not an object", b"[1, 2]", "not a JSON object"
    yield "wrong format", json.dumps({**good, "format": "other"}).encode(), "is not a 'fmt' file"
    yield "wrong version", json.dumps({**good, "version": 3}).encode(), "version 3, this tusss reads 2"
    yield "missing field", json.dumps({"format": "fmt", "version": 2}).encode(), "lacks the field"


@pytest.mark.parametrize("case", [c[0] for c in _json_cases(Path())])
def test_read_json_every_corruption(tmp_path: Path, case: str) -> None:
    p = tmp_path / "meta.json"
    _, data, expect = next(c for c in _json_cases(p) if c[0] == case)
    if data is not None:
        p.write_bytes(data)
    with pytest.raises(CorruptFileError) as ei:
        read_json(p, what="test file", format="fmt", version=2, required=["x"], fix="re-run `tusss foo`")
    msg = str(ei.value)
    assert str(p) in msg and expect in msg and "re-run `tusss foo`" in msg and "\n" not in msg


def test_read_json_good(tmp_path: Path) -> None:
    p = atomic_write_json(tmp_path / "m.json", {"format": "fmt", "version": 2, "x": [1]})
    assert read_json(p, format="fmt", version=(1, 2), required=["x"]) == {"format": "fmt", "version": 2, "x": [1]}


@pytest.mark.parametrize("case", ["missing", "empty", "truncated", "garbage", "npz", "shape", "dtype", "nan"])
def test_load_npy_every_corruption(tmp_path: Path, case: str) -> None:
    p = tmp_path / "a.npy"
    good = np.arange(12, dtype=np.float32).reshape(3, 4)
    atomic_save_npy(p, good)
    expect = {"missing": "missing", "empty": "empty", "truncated": "truncated", "garbage": "not a .npy",
              "npz": "npz", "shape": "shape (4, 3), expected (*, 4)", "dtype": "dtype float64",
              "nan": "NaN"}[case]
    if case == "missing":
        p.unlink()
    elif case == "empty":
        p.write_bytes(b"")
    elif case == "truncated":
        p.write_bytes(p.read_bytes()[:-7])
    elif case == "garbage":
        p.write_bytes(b"\x93NUMPY garbage")
    elif case == "npz":
        np.savez(open(p, "wb"), a=good)  # noqa: SIM115
    elif case == "shape":
        atomic_save_npy(p, good.T.copy())
    elif case == "dtype":
        atomic_save_npy(p, good.astype(np.float64))
    else:
        bad = good.copy()
        bad[1, 2] = np.nan
        atomic_save_npy(p, bad)
    with pytest.raises(CorruptFileError) as ei:
        load_npy(p, shape=(None, 4), dtype="float32", finite=True, fix="re-run `tusss fit`")
    msg = str(ei.value)
    assert str(p) in msg and expect in msg and "re-run `tusss fit`" in msg and "\n" not in msg
    if case in ("shape", "dtype", "nan"):  # the same file passes when that check is not asked for
        load_npy(p)


@pytest.mark.parametrize("case", ["truncated", "garbage", "member", "bad_crc"])
def test_load_npz_every_corruption(tmp_path: Path, case: str) -> None:
    p = tmp_path / "m.npz"
    atomic_save_npz(p, compressed=True, a=np.arange(5000), b=np.ones((30, 30)))
    if case == "truncated":
        p.write_bytes(p.read_bytes()[:500])
    elif case == "garbage":
        p.write_bytes(b"not a zip at all" * 10)
    elif case == "member":
        atomic_save_npz(p, a=np.arange(3))
    else:
        raw = bytearray(p.read_bytes())
        raw[200] ^= 0xFF  # inside the first member's compressed data
        p.write_bytes(bytes(raw))
    with pytest.raises(CorruptFileError) as ei:
        load_npz(p, keys=["a", "b"], what="metadata")
    assert str(p) in str(ei.value) and "\n" not in str(ei.value)


def test_read_recipe(tmp_path: Path) -> None:
    (tmp_path / "r.json").write_text('{"fit": {"k": 50}}')
    (tmp_path / "r.toml").write_text("[fit]\nk = 50\n")
    assert read_recipe(tmp_path / "r.json") == read_recipe(tmp_path / "r.toml") == {"fit": {"k": 50}}
    for name, text, expect in (("t.json", '{"fit": {"k": 5', "not valid json"), ("t.toml", "[fit\nk=", "toml"),
                               ("l.json", "[1]", "mapping"), ("e.json", "", "empty")):
        (tmp_path / name).write_text(text)
        with pytest.raises(CorruptFileError) as ei:
            read_recipe(tmp_path / name)
        assert str(tmp_path / name) in str(ei.value) and expect in str(ei.value).lower()


# ------------------------------------------------------------------------------------------- failures / kill hook
def test_failure_log(tmp_path: Path) -> None:
    log = FailureLog(tmp_path, "embed")
    log.record("img1", ValueError("bad\nthing"))
    assert FailureLog.read(tmp_path / FAILURES) == [{"id": "img1", "reason": "bad thing", "command": "embed"}]
    log.close()
    assert len(log) == 1 and "1 failed" in log.summary()
    clean = FailureLog(tmp_path, "embed")  # a resumed run where nothing fails removes the stale record
    clean.close()
    assert not (tmp_path / FAILURES).exists() and clean.summary() == ""
    ff = FailureLog(tmp_path, "masks", fail_fast=True)
    with pytest.raises(ItemFailedError, match="'x'.*--fail-fast"):
        ff.record("x", "unreadable")
    assert FailureLog.read(tmp_path / FAILURES)[0]["id"] == "x"


def test_failure_log_appends_and_ends_exact(tmp_path: Path, monkeypatch) -> None:
    """F failures cost one atomic rewrite (the first) plus F - 1 appends, not F rewrites of the whole list; an
    item failing twice is listed once, with its last reason, after close(); a torn last line is ignored."""
    import tusss.persist as persist

    (tmp_path / FAILURES).write_text('{"id": "old", "reason": "from the last run", "command": "embed"}\n')
    rewrites = []
    real = persist.atomic_write_text
    monkeypatch.setattr(persist, "atomic_write_text", lambda *a, **kw: rewrites.append(a[0]) or real(*a, **kw))
    log = FailureLog(tmp_path, "embed")
    for i in range(200):
        log.record(f"img{i}", f"reason {i}")
    assert len(rewrites) == 1  # the previous run's list replaced once; the old code rewrote 200 times
    got = FailureLog.read(tmp_path / FAILURES)
    assert [r["id"] for r in got] == [f"img{i}" for i in range(200)] and got[7]["reason"] == "reason 7"
    log.record("img3", "second reason")
    log.close()
    got = FailureLog.read(tmp_path / FAILURES)
    assert len(got) == 200 and {r["id"]: r["reason"] for r in got}["img3"] == "second reason"
    with open(tmp_path / FAILURES, "a") as f:  # a kill in the middle of an append
        f.write('{"id": "img200", "rea')
    assert len(FailureLog.read(tmp_path / FAILURES)) == 200
    (tmp_path / FAILURES).write_text('{"id": "a"}\nnot json\n{"id": "b"}\n')
    with pytest.raises(CorruptFileError, match="line 2 is not JSON"):
        FailureLog.read(tmp_path / FAILURES)


@pytest.mark.parametrize("n", [0, 2])
def test_fault_point_kills_after_n_items(tmp_path: Path, n: int) -> None:
    code = ("import sys; from tusss.persist import fault_point\nfault_point()\n"
            "for i in range(5):\n    print(i, flush=True)\n    fault_point()\nprint('done')")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env={**os.environ, "TUSSS_FAULT_KILL_AFTER": str(n)})
    assert r.returncode == -9
    assert r.stdout.split() == [str(i) for i in range(n)]
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env={k: v for k, v in os.environ.items() if k != "TUSSS_FAULT_KILL_AFTER"})
    assert r.returncode == 0 and r.stdout.split()[-1] == "done"
