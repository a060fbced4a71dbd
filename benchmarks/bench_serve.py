"""Load test of ``tusss serve`` on 127.0.0.1: throughput and p50 / p95 / p99 latency per stage and end to end at
concurrency 1, 4 and 16, micro-batching on (--max-batch 8) and off (--max-batch 1) in the same run (both servers
up at once, each concurrency level run on one then the other, so both see the same machine load), resident
memory of the server after 50 and after 500 requests, and a PNG plot of latency against concurrency.

The server is the public command (``python -m tusss.cli serve``) with SAM vit_tiny / DBA-CLIP tusss-tiny, random
weights, SAM thresholds off so that random weights still give masks (``--sam-opt``), DBA-CLIP short side 224.
The load generator is bounded: a fixed number of requests per concurrency level, ``c`` client threads each
sending its share one after the other (closed loop); every answer must be 200.

    python benchmarks/bench_serve.py [--requests 48] [--leak-requests 500] [--size 240x320]

Writes benchmarks/results/bench_serve.json and benchmarks/results/bench_serve.png (needs matplotlib: the
``[bench]`` extra; without it the plot is skipped).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).parent / "results"
SERVE = ["--sam", "vit_tiny", "--checkpoint", "random", "--clip", "tusss-tiny", "--weights", "random",
         "--classes", "cat,dog,sofa", "--sam-opt", "points_per_side=4", "--sam-opt", "crop_n_layers=0",
         "--sam-opt", "pred_iou_thresh=-10", "--sam-opt", "stability_score_thresh=-10",
         "--sam-opt", "rock_sand_water_thresh=null", "--sam-opt", "min_mask_region_area=0",
         "--clip-opt", "target_size=224", "--log-level", "warning"]
STAGES = ("masks", "embed", "classify", "paint")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def pct(a: list[float]) -> dict[str, float]:
    x = np.asarray(a, np.float64)
    return {"p50_ms": float(np.percentile(x, 50) * 1e3), "p95_ms": float(np.percentile(x, 95) * 1e3),
            "p99_ms": float(np.percentile(x, 99) * 1e3), "mean_ms": float(x.mean() * 1e3)}


class Server:
    def __init__(self, *extra: str) -> None:
        import httpx

        self.port = free_port()
        env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
        self.proc = subprocess.Popen([sys.executable, "-m", "tusss.cli", "serve", *SERVE, "--port", str(self.port),
                                      *extra], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        self.client = httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=300,
                                   limits=httpx.Limits(max_connections=64))
        t0 = time.time()
        while time.time() - t0 < 300:
            if self.proc.poll() is not None:
                raise SystemExit(f"server exited with {self.proc.returncode}")
            try:
                if self.client.get("/readyz").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise SystemExit("server not ready after 300 s")

    def post(self, data: bytes) -> tuple[float, dict]:
        t0 = time.perf_counter()
        r = self.client.post("/v1/segment", files={"image": ("x.png", data, "image/png")})
        dt = time.perf_counter() - t0
        if r.status_code != 200:
            raise SystemExit(f"request failed: {r.status_code} {r.text[:200]}")
        return dt, r.json()["timings"]

    def load(self, images: list[bytes], n: int, conc: int) -> dict:
        lat: list[float] = []
        stages: dict[str, list[float]] = {s: [] for s in STAGES}
        batch: list[float] = []

        def worker(w: int) -> None:
            for i in range(w, n, conc):
                dt, tm = self.post(images[i % len(images)])
                lat.append(dt)
                batch.append(tm.get("batch_size", 1))
                for s in STAGES:
                    stages[s].append(tm.get(s, 0.0))

        t0 = time.perf_counter()
        with ThreadPoolExecutor(conc) as ex:
            list(ex.map(worker, range(conc)))
        wall = time.perf_counter() - t0
        return {"requests": n, "concurrency": conc, "wall_s": wall, "throughput_rps": n / wall,
                "end_to_end": pct(lat), "stages": {s: pct(v) for s, v in stages.items()},
                "mean_batch_size": float(np.mean(batch))}

    def stop(self) -> int:
        self.proc.terminate()
        rc = self.proc.wait(120)
        self.client.close()
        return rc


def plot(res: dict, path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed (pip install 'tusss[bench]'): no plot", file=sys.stderr)
        return False
    fig, ax = plt.subplots(1, 2, figsize=(10, 4))
    for mode, rows in res["modes"].items():
        c = [r["concurrency"] for r in rows]
        for q, ls in (("p50_ms", "-"), ("p95_ms", "--")):
            ax[0].plot(c, [r["end_to_end"][q] for r in rows], ls, marker="o", label=f"{mode} {q[:3]}")
        ax[1].plot(c, [r["throughput_rps"] for r in rows], marker="o", label=mode)
    ax[0].set(xscale="log", xlabel="concurrency", ylabel="end-to-end latency (ms)", title="latency")
    ax[1].set(xscale="log", xlabel="concurrency", ylabel="requests / s", title="throughput")
    for a in ax:
        a.set_xticks([1, 4, 16], ["1", "4", "16"])
        a.legend()
        a.grid(alpha=0.3)
    fig.suptitle(f"tusss serve, {res['config']['size']} PNG, tiny models, random weights (shared CPU)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return True


REPO = Path(__file__).resolve().parents[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--requests", type=int, default=48, help="requests per concurrency level")
    ap.add_argument("--concurrency", default="1,4,16")
    ap.add_argument("--leak-requests", type=int, default=500, help="RSS measured after 50 and after this many")
    ap.add_argument("--size", default="240x320", help="HxW of the test images")
    ap.add_argument("--out", default=str(RESULTS / "bench_serve.json"))
    a = ap.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from PIL import Image

    from tusss.engine.bench import synthetic_images

    H, W = (int(x) for x in a.size.lower().split("x"))
    images = []
    for im in synthetic_images(8, (H, W), seed=0):
        buf = io.BytesIO()
        Image.fromarray(im).save(buf, format="PNG")
        images.append(buf.getvalue())
    config = {**vars(a), "out": os.path.relpath(a.out, REPO)}  # no machine path in results
    res: dict = {"config": config, "machine": {"cpu_count": os.cpu_count(), "load_avg_at_start": os.getloadavg()},
                 "modes": {}}
    conc = [int(c) for c in a.concurrency.split(",")]
    modes = {"batching on (max-batch 8, 10 ms)": ["--max-batch", "8", "--max-wait-ms", "10", "--max-queue", "256"],
             "batching off (max-batch 1)": ["--max-batch", "1", "--max-queue", "256"]}
    servers = {mode: Server(*extra) for mode, extra in modes.items()}  # both up: levels interleaved, same load
    try:
        rss50 = {}
        for mode, s in servers.items():
            s.load(images, 4, 1)  # client / connection warm-up (not recorded)
            s.load(images, 46, 4)  # -> 50 requests served (both modes alike)
            rss50[mode] = rss_mb(s.proc.pid)
            res["modes"][mode] = []
        done = 50
        for c in conc:
            for mode, s in servers.items():
                r = s.load(images, a.requests, c)
                res["modes"][mode].append(r)
                print(f"{mode:34s} c={c:2d}: {r['throughput_rps']:.2f} req/s, end-to-end p50 "
                      f"{r['end_to_end']['p50_ms']:.0f} ms p95 {r['end_to_end']['p95_ms']:.0f} ms p99 "
                      f"{r['end_to_end']['p99_ms']:.0f} ms, mean batch {r['mean_batch_size']:.2f}", flush=True)
            done += a.requests
        res["rss_mb"] = {}
        for mode, s in servers.items():
            if a.leak_requests > done:
                s.load(images, a.leak_requests - done, 16)
            res["rss_mb"][mode] = {"after_50": rss50[mode], f"after_{max(a.leak_requests, done)}": rss_mb(s.proc.pid)}
            print(f"{mode}: server RSS (MiB) {res['rss_mb'][mode]}", flush=True)
    finally:
        res["exit_status"] = {mode: s.stop() for mode, s in servers.items()}
    res["machine"]["load_avg_at_end"] = os.getloadavg()
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1))
    if plot(res, out.with_suffix(".png")):
        print(f"-> {out.with_suffix('.png')}")
    print(f"-> {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
