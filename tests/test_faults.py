"""Faults survived (issue 14): every artifact corrupted every way, every long command killed and resumed.

* Corruption: for each artifact type (mask cache file and manifest, embedding-store index / embedding shard /
  metadata shard, GLCC metadata and arrays, recipe, SAM and CLIP checkpoints; engine manifest and graphs in
  test_faults_engine.py) and each fault (truncated, empty, garbage, wrong version / format, wrong shape,
  wrong dtype, NaN, missing companion file), the reader raises one CorruptFileError whose one-line message
  names the file; every other file of the artifact is byte-for-byte unchanged.
* Kill: each long command (masks, segment, embed, fit, predict, pseudo-label) runs in a forked child that is
  SIGKILLed after 0, 1 and n-1 items (``TUSSS_FAULT_KILL_AFTER``); what it left visible is a subset of the
  uninterrupted output (no half-written file); the same command run again then leaves exactly the output of
  the uninterrupted run: byte for byte, except ``.npz`` archives (compared member by member: zip headers hold
  a timestamp) and the wall-clock fields of ``glcc.json``.
* Bad items and full disks: a truncated mask-cache file is skipped and recorded by ``tusss embed``;
  ENOSPC half-way through any write leaves the previous complete state.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from _tiny_datasets import make_voc
from conftest import one_intra_op_thread

from tusss.cli import main
from tusss.data.store import EmbeddingStore, StoreWriter
from tusss.errors import CorruptFileError
from tusss.glcc.model import GLCC
from tusss.masks.cache import MaskCache, open_mask_cache
from tusss.persist import FAILURES, TMP_SUFFIX, DiskFullError, FailureLog, read_recipe

N_IMAGES = 4
SAM_OPTS = ["points_per_side=3", "crop_n_layers=0", "pred_iou_thresh=-10", "stability_score_thresh=-10",
            "min_mask_region_area=0", "box_nms_thresh=1.0", "rock_sand_water_thresh=null"]
CLIP_OPTS = ["target_size=64", "window_sizes=[32]", "stride_divisor=1"]


def _opts(flag: str, opts: list[str]) -> list[str]:
    return [x for o in opts for x in (flag, o)]


SAM = ["--sam", "vit_tiny", "--checkpoint", "random", *_opts("--sam-opt", SAM_OPTS)]
CLIP = ["--clip", "tusss-tiny", "--weights", "random", *_opts("--clip-opt", CLIP_OPTS)]


# ------------------------------------------------------------------------------------------------ helpers
def _norm(p: Path) -> object:
    """Content of an output file for comparison: bytes; .npz member by member; glcc.json without timings."""
    if p.suffix == ".npz":
        with np.load(p, allow_pickle=False) as z:
            return {k: (z[k].dtype.str, z[k].shape, z[k].tobytes()) for k in sorted(z.files)}
    if p.name == "glcc.json":
        meta = json.loads(p.read_text())
        for h in meta.get("history", []):
            h.pop("seconds", None)
        return meta
    return p.read_bytes()


def tree(root: Path, hidden: bool = True) -> dict[str, object]:
    """{relative path: normalised content} of every file under ``root``."""
    if not root.exists():
        return {}
    return {str(p.relative_to(root)): _norm(p) for p in sorted(root.rglob("*")) if p.is_file()
            and (hidden or not any(part.startswith(".") for part in p.relative_to(root).parts))}


def digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def run_killed(argv: list[str], n: int, timeout: float = 240.0) -> None:
    """Run ``tusss argv`` in a forked child that SIGKILLs itself after ``n`` items; assert it was killed."""
    import tempfile

    if argv[0] == "fit":
        # fit trains the probe with autograd, which refuses to run in a child forked from a process that already
        # ran a backward pass (an earlier test may have): a fresh interpreter instead, on one thread as well.
        import subprocess
        import sys

        env = {**os.environ, "TUSSS_FAULT_KILL_AFTER": str(n), "OMP_NUM_THREADS": "1"}
        r = subprocess.run([sys.executable, "-m", "tusss.cli", *argv], env=env, capture_output=True, timeout=timeout)
        assert r.returncode == -signal.SIGKILL, (
            f"tusss fit was not killed after {n} items (status {r.returncode}): {r.stderr.decode()[-2000:]}")
        return
    err_path = tempfile.mktemp(suffix=".stderr")
    pid = os.fork()
    if pid == 0:  # child: no pytest machinery, no atexit handlers
        rc = 99
        try:
            # The parent's OpenMP thread team does not survive fork(): a child that enters a parallel region
            # waits forever for threads that no longer exist. One intra-op thread keeps every op inline.
            torch.set_num_threads(1)
            os.environ["TUSSS_FAULT_KILL_AFTER"] = str(n)
            null = os.open(os.devnull, os.O_WRONLY)
            err = os.open(err_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
            os.dup2(null, 1)
            os.dup2(err, 2)
            import sys

            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - the child exits through os._exit
            sys.stderr = open(err, "w", buffering=1, closefd=False)  # noqa: SIM115 - pytest's capture object is not fd 2
            rc = main(argv)
        finally:
            os._exit(rc if isinstance(rc, int) else 98)
    deadline = time.monotonic() + timeout
    while True:
        wpid, status = os.waitpid(pid, os.WNOHANG)
        if wpid:
            break
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail(f"tusss {argv[0]} child hung")
        time.sleep(0.05)
    err_text = Path(err_path).read_text(errors="replace")[-2000:] if os.path.exists(err_path) else ""
    with contextlib.suppress(OSError):
        os.unlink(err_path)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, (
        f"tusss {argv[0]} was not killed after {n} items (status {status}): too few items? stderr: {err_text}")


def quiet_main(argv: list[str]) -> int:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return main(argv)


# ------------------------------------------------------------------------------------------------ the world
_one_thread = pytest.fixture(scope="module", autouse=True)(one_intra_op_thread)


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Path]:
    """A tiny VOC split and the uninterrupted outputs of every long command (the references)."""
    tmp = tmp_path_factory.mktemp("faults")
    root = tmp / "VOC2012"
    make_voc(root, {"train_aug": [f"2007_{i:06d}" for i in range(N_IMAGES)]})
    ds = ["--dataset", "voc", "--root", str(root), "--split", "train_aug", "--no-progress"]
    w = {"tmp": tmp, "root": root}
    cmds = {
        "masks": lambda out: ["masks", *ds, *SAM, "--cache-dir", str(out)],
        "segment": lambda out: ["segment", *ds, *SAM, *CLIP, "--vocabulary", "voc21", "--out", str(out)],
        "embed": lambda out: ["embed", *ds, *CLIP, "--mask-cache", str(w["masks"]), "--out", str(out),
                              "--dtype", "float32", "--shard-size", "30"],
        "fit": lambda out: ["fit", "--store", str(w["embed"]), "--supervision", "full", "--out", str(out),
                            "--k", "5", "--probe-iters", "30", "--no-progress"],
        "predict": lambda out: ["predict", "--model", str(w["fit"]), "--store", str(w["embed"]), "--mask-cache",
                                str(w["masks"]), "--out", str(out), "--no-progress"],
        "pseudo-label": lambda out: ["pseudo-label", "--model", str(w["fit"]), "--store", str(w["embed"]),
                                     "--mask-cache", str(w["masks"]), "--out", str(out), "--no-progress"],
    }
    w["cmds"] = cmds  # type: ignore[assignment]
    for name, argv in cmds.items():  # in order: each command reads the previous ones' outputs
        out = tmp / f"ref_{name}"
        assert quiet_main(argv(out)) == 0, name
        w[name] = out
    assert len(EmbeddingStore(w["embed"]).shards) >= 2  # several shards: a kill can land between them
    return w


# ------------------------------------------------------------------------------------------------ kill + resume
KILL_POINTS = {"masks": (0, 1, N_IMAGES - 1), "segment": (0, 1, N_IMAGES - 1), "embed": (0, 1, N_IMAGES - 1),
               "fit": (0, 1, 4), "predict": (0, 1, N_IMAGES - 1), "pseudo-label": (0, 1, N_IMAGES - 1)}
CASES = [(c, n) for c, ns in KILL_POINTS.items() for n in ns]


def _partial_ok(command: str, killed: dict[str, object], ref: dict[str, object], out: Path, ref_dir: Path) -> None:
    """What a killed run left visible is complete: each visible file equals the reference's."""
    for rel, content in killed.items():
        if command == "embed" and rel == "index.json":  # rewritten after each shard: a readable partial index
            idx = json.loads((out / rel).read_text())
            done = [i for s in idx["shards"] for i in s["images"]]
            assert not idx["complete"] and done == EmbeddingStore(ref_dir).image_ids[: len(done)]
            continue
        assert rel in ref, f"{command}: killed run left {rel}, which the uninterrupted run does not have"
        assert content == ref[rel], f"{command}: killed run left a different (half-written?) {rel}"


@pytest.mark.parametrize("command,n", CASES, ids=[f"{c}-after{n}" for c, n in CASES])
def test_kill_and_resume_gives_the_uninterrupted_output(world, tmp_path, command: str, n: int) -> None:
    ref = tree(world[command])
    out = tmp_path / f"out_{command}"
    argv = world["cmds"][command](out)  # type: ignore[index]
    run_killed(argv, n)
    _partial_ok(command, tree(out, hidden=False), ref, out, world[command])
    if command == "fit":
        assert not out.exists()  # the model directory appears whole or not at all
    assert quiet_main(argv) == 0
    got = tree(out)
    assert sorted(got) == sorted(ref), f"{command}: resumed run has other files"
    for rel in ref:
        assert got[rel] == ref[rel], f"{command}: {rel} differs from the uninterrupted run"
    assert not [p for p in tmp_path.rglob(f"*{TMP_SUFFIX}")], "temporary files left behind"


def test_kill_hook_in_a_fresh_cli_process(world, tmp_path) -> None:
    """The same kill, in a freshly started ``python -m tusss.cli`` (no fork): killed after one image, resumed."""
    import subprocess
    import sys

    out = tmp_path / "masks"
    argv = world["cmds"]["masks"](out)  # type: ignore[index]
    env = {**os.environ, "TUSSS_FAULT_KILL_AFTER": "1", "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "tusss.cli", *argv], env=env, capture_output=True, timeout=300)
    assert r.returncode == -signal.SIGKILL, r.stderr.decode()[-2000:]
    assert len(MaskCache(out, "x").ids()) == 1
    assert quiet_main(argv) == 0
    assert tree(out) == tree(world["masks"])


# ------------------------------------------------------------------------------------------------ corruptions
def truncate(p: Path) -> None:
    b = p.read_bytes()
    p.write_bytes(b[: min(500, len(b) // 2)])


def empty(p: Path) -> None:
    p.write_bytes(b"")


def garbage(p: Path) -> None:
    p.write_bytes(np.random.default_rng(0).integers(0, 256, max(p.stat().st_size, 64), np.uint8).tobytes())


def edit_json(**changes):
    def f(p: Path) -> None:
        d = json.loads(p.read_text())
        for k, v in changes.items():
            if v is None:
                d.pop(k, None)
            else:
                d[k] = v
        p.write_text(json.dumps(d))

    return f


def edit_npz(key: str, fn):
    def f(p: Path) -> None:
        with np.load(p, allow_pickle=False) as z:
            d = {k: z[k] for k in z.files}
        if fn is None:
            del d[key]
        else:
            d[key] = fn(d[key])
        with open(p, "wb") as fh:
            np.savez(fh, **d)

    return f


def edit_npy(fn):
    def f(p: Path) -> None:
        a = np.load(p)
        with open(p, "wb") as fh:
            np.save(fh, fn(a))

    return f


def _nan(a: np.ndarray) -> np.ndarray:
    a = a.astype(a.dtype, copy=True)
    a.reshape(-1)[0] = np.nan
    return a


def _read_cache(d: Path) -> None:
    c = open_mask_cache(d)
    for i in c.ids():
        c.get(i)


def _read_store(d: Path) -> None:
    st = EmbeddingStore(d)
    st.embeddings()
    st.metadata()


def _first(d: Path, pattern: str) -> str:
    return sorted(p.name for p in d.glob(pattern))[0]


# (artifact, fault, which file (glob under the artifact dir), corrupt fn, reader, expected text)
CORRUPTIONS = [
    ("mask cache file", "truncated", "*.npz", truncate, _read_cache, "unreadable"),
    ("mask cache file", "empty", "*.npz", empty, _read_cache, "empty"),
    ("mask cache file", "garbage", "*.npz", garbage, _read_cache, "unreadable"),
    ("mask cache file", "wrong version", "*.npz", edit_npz("__format__", lambda a: np.array(99)), _read_cache,
     "format 99"),
    ("mask cache file", "missing member", "*.npz", edit_npz("masks_packed", None), _read_cache, "corrupt"),
    ("mask cache file", "wrong shape", "*.npz", edit_npz("masks_shape", lambda a: a + 1), _read_cache, "corrupt"),
    ("mask cache file", "NaN", "*.npz", edit_npz("predicted_iou", _nan), _read_cache, "NaN"),
    ("mask cache manifest", "truncated", "tusss-masks.json", truncate, _read_cache, "not valid JSON"),
    ("mask cache manifest", "empty", "tusss-masks.json", empty, _read_cache, "empty"),
    ("mask cache manifest", "garbage", "tusss-masks.json", garbage, _read_cache, "not valid JSON"),
    ("mask cache manifest", "wrong version", "tusss-masks.json", edit_json(version=7), _read_cache, "version 7"),
    ("mask cache manifest", "missing field", "tusss-masks.json", edit_json(config_hash=None), _read_cache,
     "config_hash"),
    ("store index", "truncated", "index.json", truncate, _read_store, "not valid JSON"),
    ("store index", "empty", "index.json", empty, _read_store, "empty"),
    ("store index", "garbage", "index.json", garbage, _read_store, "not valid JSON"),
    ("store index", "wrong version", "index.json", edit_json(version=5), _read_store, "version 5"),
    ("store index", "missing field", "index.json", edit_json(shards=None), _read_store, "shards"),
    ("store embeddings", "truncated", "emb_*.npy", truncate, _read_store, "truncated"),
    ("store embeddings", "empty", "emb_*.npy", empty, _read_store, "empty"),
    ("store embeddings", "garbage", "emb_*.npy", garbage, _read_store, "not a .npy"),
    ("store embeddings", "wrong shape", "emb_*.npy", edit_npy(lambda a: a[:, :-1].copy()), _read_store, "shape"),
    ("store embeddings", "wrong dtype", "emb_*.npy", edit_npy(lambda a: a.astype(np.float64)), _read_store,
     "float64"),
    ("store embeddings", "NaN", "emb_*.npy", edit_npy(_nan), _read_store, "NaN"),
    ("store embeddings", "missing companion", "emb_*.npy", Path.unlink, _read_store, "missing"),
    ("store metadata", "truncated", "meta_*.npz", truncate, _read_store, "truncated"),
    ("store metadata", "empty", "meta_*.npz", empty, _read_store, "empty"),
    ("store metadata", "garbage", "meta_*.npz", garbage, _read_store, "not a valid .npz"),
    ("store metadata", "missing member", "meta_*.npz", edit_npz("area", None), _read_store, "'area'"),
    ("store metadata", "wrong shape", "meta_*.npz", edit_npz("level", lambda a: a[:-1]), _read_store, "'level'"),
    ("store metadata", "NaN", "meta_*.npz", edit_npz("gt_frac", _nan), _read_store, "NaN"),
    ("store metadata", "missing companion", "meta_*.npz", Path.unlink, _read_store, "missing"),
    ("GLCC metadata", "truncated", "glcc.json", truncate, GLCC.load, "not valid JSON"),
    ("GLCC metadata", "empty", "glcc.json", empty, GLCC.load, "empty"),
    ("GLCC metadata", "garbage", "glcc.json", garbage, GLCC.load, "not valid JSON"),
    ("GLCC metadata", "wrong version", "glcc.json", edit_json(format_version=9), GLCC.load, "format_version 9"),
    ("GLCC metadata", "missing field", "glcc.json", edit_json(K=None), GLCC.load, "'K'"),
    ("GLCC metadata", "missing", "glcc.json", Path.unlink, GLCC.load, "glcc.json missing"),
    ("GLCC arrays", "truncated", "pstar.npy", truncate, GLCC.load, "truncated"),
    ("GLCC arrays", "empty", "degree.npy", empty, GLCC.load, "empty"),
    ("GLCC arrays", "garbage", "train_embeddings.npy", garbage, GLCC.load, "not a .npy"),
    ("GLCC arrays", "wrong shape", "probe_weight.npy", edit_npy(lambda a: a.T.copy()), GLCC.load, "shape"),
    ("GLCC arrays", "wrong dtype", "pstar.npy", edit_npy(lambda a: a.astype(np.int32)), GLCC.load, "int32"),
    ("GLCC arrays", "NaN", "train_embeddings.npy", edit_npy(_nan), GLCC.load, "NaN"),
    ("GLCC arrays", "missing companion", "degree.npy", Path.unlink, GLCC.load, "missing"),
]
_SRC = {"mask cache file": "masks", "mask cache manifest": "masks", "store index": "embed",
        "store embeddings": "embed", "store metadata": "embed", "GLCC metadata": "fit", "GLCC arrays": "fit"}


@pytest.mark.parametrize("artifact,fault,pattern,damage,reader,expect", CORRUPTIONS,
                         ids=[f"{c[0]}-{c[1]}".replace(" ", "_") for c in CORRUPTIONS])
def test_every_corruption_is_one_clear_error(world, tmp_path, artifact, fault, pattern, damage, reader,
                                              expect) -> None:
    d = tmp_path / "artifact"
    shutil.copytree(world[_SRC[artifact]], d)
    victim = d / _first(d, pattern)
    before = digest(d)
    damage(victim)
    with pytest.raises(CorruptFileError) as ei:
        reader(d)
    msg = str(ei.value)
    assert str(victim) in msg or (fault == "missing" and str(d) in msg), msg
    assert expect in msg and "\n" not in msg, msg
    after = digest(d)  # nothing else was touched by the reader
    assert {k: v for k, v in after.items() if k != victim.name} == {k: v for k, v in before.items()
                                                                    if k != victim.name}


@pytest.mark.parametrize("fault", ["truncated", "empty", "garbage", "not a mapping"])
def test_recipe_corruptions(tmp_path, fault) -> None:
    p = tmp_path / "recipe.json"
    p.write_text(json.dumps({"fit": {"k": 50}, "embed": {"clip": "ViT-B-16"}}))
    assert read_recipe(p)["fit"] == {"k": 50}
    {"truncated": truncate, "empty": empty, "garbage": garbage,
     "not a mapping": lambda q: q.write_text("[1, 2]")}[fault](p)
    with pytest.raises(CorruptFileError) as ei:
        read_recipe(p)
    assert str(p) in str(ei.value) and "\n" not in str(ei.value)


@pytest.mark.parametrize("fault", ["truncated", "empty", "garbage"])
def test_checkpoint_corruptions(tmp_path, fault) -> None:
    from tusss.clip.model import DBAClip
    from tusss.masks.sam_registry import build_sam, build_sam_vit_tiny

    torch.manual_seed(0)
    sam_p = tmp_path / "sam_tiny.pth"
    torch.save(build_sam_vit_tiny().state_dict(), sam_p)
    clip_p = tmp_path / "clip_tiny.pt"
    torch.save(DBAClip.from_pretrained("tusss-tiny", weights=None).model.state_dict(), clip_p)
    DBAClip.from_pretrained("tusss-tiny", weights=str(clip_p))  # the good files load
    build_sam("vit_tiny", checkpoint=sam_p)
    damage = {"truncated": truncate, "empty": empty, "garbage": garbage}[fault]
    for p, load in ((sam_p, lambda: build_sam("vit_tiny", checkpoint=sam_p)),
                    (clip_p, lambda: DBAClip.from_pretrained("tusss-tiny", weights=str(clip_p)))):
        damage(p)
        with pytest.raises(CorruptFileError) as ei:
            load()
        assert str(p) in str(ei.value) and "\n" not in str(ei.value) and "--" in str(ei.value)  # names the fix


# ------------------------------------------------------------------------------------------------ bad items via CLI
def test_embed_skips_and_records_a_truncated_cache_file(world, tmp_path, capsys) -> None:
    cache = tmp_path / "cache"
    shutil.copytree(world["masks"], cache)
    (cache / "tusss-masks.json").unlink()  # the worst case of the issue: the hash is probed from every file
    bad_id = sorted(MaskCache(cache, "x").ids())[1]
    bad = MaskCache(cache, "x").path(bad_id)
    bad.write_bytes(bad.read_bytes()[:500])
    argv = world["cmds"]["embed"](tmp_path / "store")  # type: ignore[index]
    argv[argv.index("--mask-cache") + 1] = str(cache)
    capsys.readouterr()
    assert quiet_main(argv) == 1
    err = capsys.readouterr().err
    assert str(bad) in err and "Traceback" not in err
    st = EmbeddingStore(tmp_path / "store")
    ref = EmbeddingStore(world["embed"])
    assert st.image_ids == [i for i in ref.image_ids if i != bad_id]  # everything else was written
    assert FailureLog.read(tmp_path / "store" / FAILURES) == [
        {"id": bad_id, "reason": FailureLog.read(tmp_path / "store" / FAILURES)[0]["reason"], "command": "embed"}]
    assert str(bad) in FailureLog.read(tmp_path / "store" / FAILURES)[0]["reason"]
    # --fail-fast stops at the first bad item instead (exit 1, nothing after it embedded)
    assert quiet_main([*argv[:argv.index("--out") + 1], str(tmp_path / "ff"), *argv[argv.index("--out") + 2:],
                       "--fail-fast"]) == 1
    assert "--fail-fast" in capsys.readouterr().err
    idx = json.loads((tmp_path / "ff" / "index.json").read_text())
    done = [i for s in idx["shards"] for i in s["images"]]
    assert not idx["complete"] and done == ref.image_ids[: ref.image_ids.index(bad_id)]  # kept, then stopped


def test_masks_regenerates_a_damaged_cache_file(world, tmp_path) -> None:
    cache = tmp_path / "cache"
    shutil.copytree(world["masks"], cache)
    victim = sorted(cache.glob("*.npz"))[2]
    truncate(victim)
    argv = world["cmds"]["masks"](cache)  # type: ignore[index]
    assert quiet_main(argv) == 0
    assert tree(cache) == tree(world["masks"])


def test_segment_regenerates_a_damaged_cache_file(world, tmp_path, capsys) -> None:
    cache = tmp_path / "cache"
    shutil.copytree(world["masks"], cache)
    victim = sorted(cache.glob("*.npz"))[1]
    truncate(victim)
    out = tmp_path / "seg"
    assert quiet_main([*world["cmds"]["segment"](out), "--mask-cache", str(cache)]) == 0  # type: ignore[index]
    assert str(victim) in capsys.readouterr().err  # reported as a warning
    assert tree(out) == tree(world["segment"]) and tree(cache) == tree(world["masks"])


def test_cli_errors_are_one_line_unless_debug(world, tmp_path, capsys) -> None:
    model = tmp_path / "model"
    shutil.copytree(world["fit"], model)
    truncate(model / "pstar.npy")
    argv = world["cmds"]["predict"](tmp_path / "pred")  # type: ignore[index]
    argv[argv.index("--model") + 1] = str(model)
    capsys.readouterr()
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and str(model / "pstar.npy") in err and "re-run `tusss fit`" in err
    with pytest.raises(CorruptFileError):
        main([*argv, "--debug"])


# ------------------------------------------------------------------------------------------------ full disk
@contextlib.contextmanager
def disk_full_after(n_bytes: int):
    """Every file opened by tusss.persist accepts ``n_bytes`` in total, then raises ENOSPC (half-way)."""
    real_fdopen = os.fdopen

    class Full:
        def __init__(self, f):
            self.f, self.left = f, n_bytes

        def write(self, b):
            b = bytes(b)
            if len(b) > self.left:
                self.f.write(b[: self.left])
                self.left = 0
                raise OSError(errno.ENOSPC, "No space left on device")
            self.left -= len(b)
            return self.f.write(b)

        def __getattr__(self, k):
            return getattr(self.f, k)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    def fdopen(fd, mode="r", *a, **k):
        f = real_fdopen(fd, mode, *a, **k)
        return f if "b" not in mode else Full(f)

    import tusss.persist as persist

    old = persist.os.fdopen
    persist.os.fdopen = fdopen
    try:
        yield
    finally:
        persist.os.fdopen = old


def test_enospc_keeps_the_previous_complete_state(world, tmp_path) -> None:
    # GLCC directory re-saved over a complete model
    model = tmp_path / "model"
    shutil.copytree(world["fit"], model)
    before = digest(model)
    m = GLCC.load(model)
    m.pstar_ = m.pstar_ * 0.5
    with disk_full_after(1000), pytest.raises(DiskFullError, match="no space left"):
        m.save(model)
    assert digest(model) == before and len(list(tmp_path.iterdir())) == 1
    # mask cache file replaced
    cache = tmp_path / "cache"
    shutil.copytree(world["masks"], cache)
    c = open_mask_cache(cache)
    i = c.ids()[0]
    before = digest(cache)
    with disk_full_after(300), pytest.raises(DiskFullError):
        c.put(i, c.get(c.ids()[1]))
    assert digest(cache) == before
    # embedding store: a shard and the index rewrite
    store = tmp_path / "store"
    w = StoreWriter(store, 4, shard_size=2)
    w.add("a", np.ones((2, 4)), area=[1, 2])
    before = digest(store)
    w.add("b", np.ones((1, 4)), area=[3])
    with disk_full_after(100), pytest.raises(DiskFullError):
        w.add("c", np.ones((2, 4)), area=[1, 2])
    assert digest(store) == before
    assert EmbeddingStore(store, require_complete=False).image_ids == ["a"]
    # label PNG of a command output
    from tusss.io import read_label, write_label_png

    lab = np.arange(600, dtype=np.uint8).reshape(20, 30) % 21
    p = write_label_png(tmp_path / "lab.png", lab)
    with disk_full_after(10), pytest.raises(DiskFullError):
        write_label_png(p, lab[::-1].copy())
    np.testing.assert_array_equal(read_label(p), lab)


def test_enospc_through_the_cli_is_one_line(world, tmp_path, capsys) -> None:
    model = tmp_path / "model"
    shutil.copytree(world["fit"], model)
    before = digest(model)
    argv = world["cmds"]["fit"](model)  # type: ignore[index]
    capsys.readouterr()
    with disk_full_after(2000):
        rc = main(argv)
    err = capsys.readouterr().err.strip()
    assert rc == 1 and "no space left" in err and "\n" not in err
    assert digest(model) == before
