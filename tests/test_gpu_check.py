"""The prepared GPU check (benchmarks/gpu_check.py) rehearsed on the CPU: ``--dry-run`` runs every stage at tiny
sizes and must produce issue 12's table with a figure for every stage, without errors; its bookkeeping (budgets,
a failing stage) is tested in-process."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _module():
    spec = importlib.util.spec_from_file_location("tusss_gpu_check", ROOT / "benchmarks" / "gpu_check.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("gpu_check")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.pop("TUSSS_KERNELS", None)
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--dry-run", "--out", str(out)],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    data = json.loads((out / "gpu_check.json").read_text())
    data["_md"] = (out / "gpu_check.md").read_text()
    return data


@pytest.mark.slow  # the dry run: ~20 s of CPU, up to ~80 s wall on the shared 2-core machine
def test_dry_run_measures_every_stage(dry_run: dict) -> None:
    mod = _module()
    assert dry_run["meta"]["dry_run"] is True and dry_run["meta"]["device"] == "cpu"
    status = {s["stage"]: s["status"] for s in dry_run["stages"]}
    assert status.pop("compile") == "skipped"  # torch.compile is not rehearsed on the CPU (minutes of C++ builds)
    assert set(status.values()) == {"ok"}, status
    measured = {r["stage"] for r in dry_run["rows"] if r["value"] is not None}
    for key in mod.ANCHORS:
        if key == "inductor":  # the block/compiler helper's rows, when its function exists
            continue
        assert key in measured, key
    # the markdown carries each anchor and goal of the table
    for what, anchor, goal, _, _ in mod.ANCHORS.values():
        assert f"| {what} | {anchor} | {goal} |" in dry_run["_md"]


@pytest.mark.slow
def test_dry_run_fast_masks_agree_and_kernels_match(dry_run: dict) -> None:
    rows = {(r["stage"], r["variant"]): r for r in dry_run["rows"]}
    fast = rows[("masks", "fast path, fp32")]
    assert fast["agreement_vs_reference"]["n_ref"] >= 1  # the dry run has masks to compare
    assert fast["agreement_vs_reference"]["matched_0_9"] == 1.0
    assert fast["agreement_vs_reference"]["n_got"] == fast["agreement_vs_reference"]["n_ref"]
    sdpa = rows[("dba_last_block", "SDPA float bias fp32")]
    assert sdpa["rel_err"] < 1e-5
    assert rows[("dba_last_block", "SDPA float bias bf16")]["rel_err"] < 3e-2
    # both the label-propagation helper's gpu_stages and this script's fallbacks ran
    sources = {r.get("source", "fallback") for r in dry_run["rows"] if r["stage"].startswith(("knn", "lp"))}
    assert sources == {"bench_glcc.gpu_stages", "fallback"}


def test_budget_skip_and_stage_error_are_reported(tmp_path) -> None:
    mod = _module()
    ck = mod.Check(tmp_path, total_s=100.0, dry=True, device="cpu")
    calls = []
    ck.run("too_big", 1000.0, lambda c, b: calls.append(b))
    ck.run("broken", 1.0, lambda c, b: (_ for _ in ()).throw(RuntimeError("boom")))
    ck.run("fine", 1.0, lambda c, b: c.add("clip", "x", 3.0, "ms/img"))
    assert calls == []
    st = {s["stage"]: s for s in ck.stages}
    assert st["too_big"]["status"] == "skipped" and "budget" in st["too_big"]["reason"]
    assert st["broken"]["status"] == "error" and "boom" in st["broken"]["error"]
    assert st["fine"]["status"] == "ok"
    data = json.loads((tmp_path / "gpu_check.json").read_text())
    assert data["rows"][0]["value"] == 3.0
    md = (tmp_path / "gpu_check.md").read_text()
    assert "3.000 ms/img, x" in md and "| broken | error |" in md


def test_no_gpu_without_dry_run_is_a_clear_error(tmp_path, monkeypatch) -> None:
    mod = _module()
    monkeypatch.setattr(mod.torch.cuda, "is_available", lambda: False)
    assert mod.main(["--out", str(tmp_path)]) == 2
