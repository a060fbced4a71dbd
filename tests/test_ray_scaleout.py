"""Ray scale-out (issue 11) on a local Ray cluster: 2 CPUs, loopback only, shut down at the end.

References: the single-process ``tusss embed`` / ``tusss masks`` writing into other folders of the same
tiny datasets (tusss-tiny CLIP and vit_tiny SAM with random weights; hand-made cached masks for embed). The
Ray outputs must be byte-for-byte the same arrays and the same index. Skips cleanly without Ray.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from _tiny_datasets import grid_masks, make_voc
from conftest import one_intra_op_thread

from tusss.cli import main
from tusss.data.datasets import get_dataset
from tusss.data.store import EmbeddingStore
from tusss.masks.cache import MaskCache, open_mask_cache

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # loopback only; read when Ray is imported
ray = pytest.importorskip("ray")

from tusss.distributed import PoolConfig, failures_path, init_ray, read_failures  # noqa: E402

pytestmark = pytest.mark.slow

CLIP = ["--clip", "tusss-tiny", "--weights", "random", "--clip-opt", "target_size=64", "--clip-opt",
        "window_sizes=[32]", "--clip-opt", "stride_divisor=1", "--no-progress"]
SAM = ["--sam", "vit_tiny", "--checkpoint", "random", "--no-progress"]
for _o in ("points_per_side=3", "crop_n_layers=0", "pred_iou_thresh=-10", "stability_score_thresh=-10",
           "min_mask_region_area=0", "box_nms_thresh=1.0", "rock_sand_water_thresh=null"):
    SAM += ["--sam-opt", _o]
TRAIN = [f"2007_{i:06d}" for i in range(5)]
VAL = [f"2008_{i:06d}" for i in range(10)]
CORRUPT = TRAIN[2]


_one_thread = pytest.fixture(scope="module", autouse=True)(one_intra_op_thread)


@pytest.fixture(scope="module")
def cluster():
    """A local 2-CPU Ray cluster on 127.0.0.1 owned by this module; yields its GCS address."""
    if ray.is_initialized():
        ray.shutdown()
    assert init_ray(num_cpus=2)
    addr = ray.get_runtime_context().gcs_address
    assert addr.startswith("127.0.0.1:"), addr
    yield addr
    try:
        from ray import serve

        serve.shutdown()
    except Exception:
        pass
    ray.shutdown()


@pytest.fixture(scope="module")
def voc(tmp_path_factory):
    """Tiny VOC (train_aug with one corrupt JPEG, clean val) and a mask cache of hand-made masks."""
    tmp = tmp_path_factory.mktemp("ray")
    root = tmp / "VOC2012"
    make_voc(root, {"train_aug": TRAIN, "val": VAL})
    cache = MaskCache(tmp / "cache", "handmade")
    for split in ("train_aug", "val"):
        ds = get_dataset("voc", root, split)
        for n, i in enumerate(ds.ids):
            cache.put(i, grid_masks(ds.image(i).shape[:2], empty_one=n == 0))
    jpg = root / "JPEGImages" / f"{CORRUPT}.jpg"
    jpg.write_bytes(jpg.read_bytes()[:40])  # truncated: PIL cannot decode it
    (tmp / "good.txt").write_text("".join(f"{i}\n" for i in TRAIN if i != CORRUPT))
    return tmp, root


def _embed_args(root: Path, split: str, cache: Path, out: Path, *extra: str) -> list[str]:
    return ["embed", "--dataset", "voc", "--root", str(root), "--split", split, "--mask-cache", str(cache),
            "--out", str(out), *CLIP, *extra]


def _actor_calls(out: str) -> dict[int, int]:
    """{actor pid: images} from the "[actor pids 123:4 ...]" of the command's summary line."""
    seg = out.rsplit("[actor pids ", 1)[1].split("]", 1)[0]
    return {int(p): int(n) for p, n in (x.split(":") for x in seg.split())}


def assert_same_store(a: Path, b: Path) -> None:
    """Same index (shards, boundaries, image lists, meta), same files, same arrays."""
    ia, ib = (json.loads((p / "index.json").read_text()) for p in (a, b))
    assert ia == ib
    assert sorted(p.name for p in a.iterdir()) == sorted(p.name for p in b.iterdir())
    sa, sb = EmbeddingStore(a), EmbeddingStore(b)
    for i in range(len(sa.shards)):
        np.testing.assert_array_equal(sa.shard(i), sb.shard(i))
        ma, mb = sa.shard_meta(i), sb.shard_meta(i)
        for f in ("image_id", "mask_index", "area", "level", "gt_frac"):
            np.testing.assert_array_equal(getattr(ma, f), getattr(mb, f))


def test_embed_ray_equals_single_process_and_records_corrupt_image(cluster, voc, capsys):
    tmp, root = voc
    ref, out = tmp / "ref_train", tmp / "ray_train"
    assert main(_embed_args(root, "train_aug", tmp / "cache", ref, "--shard-size", "40")) == 1  # corrupt image
    rc = main(_embed_args(root, "train_aug", tmp / "cache", out, "--shard-size", "40", "--ray", cluster,
                          "--ray-actors", "2"))
    cap = capsys.readouterr()
    assert rc == 1, cap  # one image failed, the others are stored
    assert "embed (ray): 4 image(s) embedded, 0 already stored, 1 failed" in cap.out
    assert_same_store(ref, out)
    assert len(json.loads((out / "index.json").read_text())["shards"]) >= 2  # several shards, same boundaries
    fails = read_failures(out)
    assert list(fails) == [CORRUPT] and f"{CORRUPT}.jpg" in fails[CORRUPT]
    assert (failures_path(out).read_text() == failures_path(ref).read_text())  # same record as single-process
    # the embeddings were computed in the DBA-CLIP actor pool, not in the driver: 4 model calls in actors
    assert sum(_actor_calls(cap.out).values()) == 4 and os.getpid() not in _actor_calls(cap.out)


def test_embed_ray_killed_half_way_then_resumed(cluster, voc, capsys):
    tmp, root = voc
    ref, out = tmp / "ref_val", tmp / "ray_val"
    assert main(_embed_args(root, "val", tmp / "cache", ref, "--shard-size", "1")) == 0  # one image per shard
    cmd = [sys.executable, "-m", "tusss.cli", *_embed_args(root, "val", tmp / "cache", out, "--shard-size", "1",
                                                          "--ray", cluster)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    idx = out / "index.json"
    n_at_kill = 0
    deadline = time.time() + 240
    try:
        while time.time() < deadline and proc.poll() is None:
            if idx.is_file():
                try:
                    n_at_kill = len(json.loads(idx.read_text())["shards"])
                except (ValueError, OSError):
                    n_at_kill = 0
                if n_at_kill >= 2:
                    break
            time.sleep(0.02)
        assert proc.poll() is None, f"driver ended before it was killed: {proc.stderr.read().decode()[-2000:]}"
        proc.send_signal(signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    st = json.loads(idx.read_text())
    assert not st["complete"] and 2 <= len(st["shards"]) < len(VAL)  # really half-way
    rc = main(_embed_args(root, "val", tmp / "cache", out, "--shard-size", "1", "--ray", cluster))
    cap = capsys.readouterr()
    assert rc == 0, cap
    assert "already stored" in cap.out and f", {len(st['shards'])} already stored" in cap.out
    s = EmbeddingStore(out)
    assert s.image_ids == VAL  # each image once, in dataset order
    assert_same_store(ref, out)
    assert not failures_path(out).exists()


def test_masks_ray_equals_single_process(cluster, voc, capsys):
    tmp, root = voc
    ds_args = ["--dataset", "voc", "--root", str(root), "--split", "val", "--limit", "3"]
    assert main(["masks", *ds_args, "--cache-dir", str(tmp / "m_ref"), *SAM]) == 0
    assert main(["masks", *ds_args, "--cache-dir", str(tmp / "m_ray"), *SAM, "--ray", cluster]) == 0
    assert main(["masks", *ds_args, "--cache-dir", str(tmp / "m_ray"), *SAM, "--ray", cluster]) == 0  # re-run
    cap = capsys.readouterr()
    assert "masks (ray): 3 generated, 0 already cached" in cap.out
    assert sum(_actor_calls(cap.out.split("masks (ray): 0 generated")[0]).values()) == 3
    assert "masks (ray): 0 generated, 3 already cached" in cap.out
    a, b = open_mask_cache(tmp / "m_ref"), open_mask_cache(tmp / "m_ray")
    assert a.config_hash == b.config_hash and a.ids() == b.ids() == VAL[:3]
    assert json.loads((tmp / "m_ref" / "tusss-masks.json").read_text()) == json.loads(
        (tmp / "m_ray" / "tusss-masks.json").read_text())
    for i in a.ids():
        ma, mb = a.get(i), b.get(i)
        assert len(ma) > 0
        for k, v in ma.to_dict().items():
            np.testing.assert_array_equal(v, mb.to_dict()[k])


def test_pool_config_resources():
    # issue 11: 2 actors must leave CPU for the read tasks on a 2-CPU machine -> 0.5 CPU each
    assert PoolConfig(actors=2).resolve(2, 0) == (0.5, 0.0)
    assert PoolConfig(actors=1).resolve(2, 0) == (1.0, 0.0)
    assert PoolConfig(actors=4).resolve(16, 4) == (1.0, 1.0)
    assert PoolConfig(actors=3, gpus_per_actor=0).resolve(64, 8) == (1.0, 0.0)
    with pytest.raises(Exception, match="hang"):
        PoolConfig(actors=2, cpus_per_actor=1).resolve(2, 0)
    with pytest.raises(Exception, match="GPU"):
        PoolConfig(gpus_per_actor=1).resolve(8, 0)
    assert PoolConfig().num_blocks(10) == 10 and PoolConfig().num_blocks(4096) == 2048


MASK_OPTS = {"points_per_side": 3, "crop_n_layers": 0, "pred_iou_thresh": -10, "stability_score_thresh": -10,
             "min_mask_region_area": 0, "box_nms_thresh": 1.0, "rock_sand_water_thresh": None}


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _png(arr: np.ndarray) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def test_serve_deployment_answers_segment_on_loopback(cluster):
    pytest.importorskip("fastapi")  # the [serve] extra
    pytest.importorskip("pycocotools")
    import io
    from concurrent.futures import ThreadPoolExecutor

    import httpx
    from PIL import Image
    from pycocotools import mask as mask_utils
    from ray import serve

    from tusss.predictor import Predictor

    # no background class: with random weights the labels then vary between masks (margins > 0.1 on these images)
    pred = {"sam": "vit_tiny", "checkpoint": "random", "clip": "tusss-tiny", "weights": "random",
            "classes": "cat,dog,sofa", "background": False, "mask_options": MASK_OPTS}
    port = _free_port()
    # `tusss serve --ray ADDRESS` in a driver process of its own, on this module's cluster
    cmd = [sys.executable, "-m", "tusss.cli", "serve", "--sam", "vit_tiny", "--checkpoint", "random", "--clip",
           "tusss-tiny", "--weights", "random", "--classes", "cat,dog,sofa", "--no-background", *SAM[5:],
           "--host", "127.0.0.1", "--port", str(port), "--max-batch", "4", "--max-wait-ms", "1000",
           "--ray", cluster, "--ray-cpus-per-actor", "0.5"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    line = ""
    deadline = time.time() + 240
    while time.time() < deadline and "serve (ray):" not in line and proc.poll() is None:
        line = proc.stdout.readline()
    assert "serve (ray): 1 replica(s) on http://127.0.0.1:" in line, line
    base = f"http://127.0.0.1:{port}"
    try:
        assert httpx.get(base + "/healthz", timeout=60).json() == {"status": "ok"}
        r = httpx.get(base + "/readyz", timeout=60)
        assert r.status_code == 200 and r.json()["ready"] is True
        rng = np.random.default_rng(4)
        images = [rng.integers(0, 255, (30 + 4 * k, 44, 3), dtype=np.uint8) for k in range(3)]
        ref = Predictor.from_pretrained(**pred)  # the same seeded random weights as the replica
        want = [ref.predict(im) for im in images]

        def post(im: np.ndarray, fmt: str = "json") -> httpx.Response:
            return httpx.post(base + f"/v1/segment?format={fmt}", files={"image": ("x.png", _png(im), "image/png")},
                              timeout=120)

        with ThreadPoolExecutor(3) as ex:  # concurrent requests: one @serve.batch call
            got = list(ex.map(post, images))
        sizes = []
        for r, w, im in zip(got, want, images):
            assert r.status_code == 200, r.text
            js = r.json()
            assert js["image"] == {"height": im.shape[0], "width": im.shape[1]}
            assert js["class_names"] == ["cat", "dog", "sofa"]
            assert len(js["masks"]) == len(w.labels) > 0
            assert [m["label"] for m in js["masks"]] == w.labels.tolist()
            # softmax(100 cos) amplifies float reduction-order differences of another process: 1e-2 on scores
            np.testing.assert_allclose([m["score"] for m in js["masks"]], w.conf, atol=1e-2)
            rles = [{"size": m["segmentation"]["size"], "counts": m["segmentation"]["counts"].encode()}
                    for m in js["masks"]]
            np.testing.assert_array_equal(mask_utils.decode(rles).transpose(2, 0, 1).astype(bool), w.masks.masks)
            sizes.append(js["timings"]["batch_size"])
        assert max(sizes) >= 2, sizes  # requests were batched by @serve.batch
        assert len({lab for w in want for lab in w.labels.tolist()}) >= 2  # the label check above is not vacuous
        r = httpx.post(base + "/v1/embed?format=npy", files={"image": ("x.png", _png(images[1]), "image/png")},
                       timeout=120)
        assert r.status_code == 200, r.text
        got_e = np.load(io.BytesIO(r.content)).astype(np.float32)
        ref_e = ref.embed(images[1])[1]
        assert got_e.shape == ref_e.shape
        cos = (got_e * ref_e).sum(1) / np.linalg.norm(got_e, axis=1) / np.linalg.norm(ref_e, axis=1)
        assert cos.min() > 0.999, cos.min()
        r = post(images[0], "png")
        assert r.status_code == 200 and r.headers["content-type"] == "image/png"
        np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(r.content))), want[0].label_map)
        # bad input: a clear 4xx, and the replica keeps serving
        r = httpx.post(base + "/v1/segment", files={"image": ("x.png", b"not an image", "image/png")}, timeout=60)
        assert r.status_code == 415 and "not a JPEG or PNG" in r.json()["error"]
        r = httpx.post(base + "/v1/segment", timeout=60)
        assert r.status_code == 422 and "image" in r.json()["error"]
        info = httpx.get(base + "/v1/info", timeout=60).json()
        assert info["ready"] is True and info["ray_serve"]["calls"]["images"] >= 4
        assert "tusss_batch_size" in httpx.get(base + "/metrics", timeout=60).text
        proc.send_signal(signal.SIGTERM)  # the driver removes its application and exits
        assert proc.wait(timeout=120) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        serve.shutdown()


def test_embed_ray_missing_weights_is_one_clear_error(cluster, voc, capsys):
    tmp, root = voc
    args = _embed_args(root, "val", tmp / "cache", tmp / "bad_store", "--ray", cluster)
    args[args.index("random")] = str(tmp / "no_such_clip.pt")  # --weights PATH that does not exist
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "no_such_clip.pt" in err and "Traceback" not in err


def test_rows_are_written_in_image_order_whatever_order_ray_yields():
    from tusss.distributed.extract import _in_order

    rng = np.random.default_rng(0)
    order = rng.permutation(50)
    assert [r["idx"] for r in _in_order(iter({"idx": int(i)} for i in order))] == list(range(50))


RECIPE_SETS = ["clip.model=tusss-tiny", "clip.weights=random",
               "clip.opts={target_size = 64, window_sizes = [32], stride_divisor = 1}", "probe.base_iters=20",
               "probe.base_warmup=2", "probe.batch_size=16", "glcc.k_bar=3", "glcc.k=[3]",
               "masks.sam=vit_tiny", "masks.checkpoint=random", "masks.preset=sam",
               "masks.overrides={points_per_side = 3, crop_n_layers = 0, pred_iou_thresh = -10, "
               "stability_score_thresh = -10, min_mask_region_area = 0, box_nms_thresh = 1.0}"]


def test_run_recipe_on_ray_equals_single_process(cluster, tmp_path, capsys):
    """`tusss run --ray`: the masks and embed stages run in SAM / DBA-CLIP actors (none in the driver) and write
    the same mask cache and embedding stores as the single-process run, so fit / predict / eval agree."""
    root = tmp_path / "VOC2012"
    make_voc(root, {"train_aug": [f"2007_{i:06d}" for i in range(4)], "val": ["2008_000001", "2008_000002"]})
    args = ["run", "--recipe", "voc-full", "--root", str(root), "--no-progress",
            *[x for s in RECIPE_SETS for x in ("--set", s)]]
    assert main([*args, "--work", str(tmp_path / "single"), "--out", str(tmp_path / "single.json")]) == 0
    capsys.readouterr()
    assert main([*args, "--work", str(tmp_path / "ray"), "--out", str(tmp_path / "ray.json"), "--ray", cluster,
                 "--ray-actors", "1"]) == 0
    out = capsys.readouterr().out
    assert "masks train (ray): 4 generated" in out and "masks eval (ray): 2 generated" in out, out
    assert "embed train (ray): 4 image(s) embedded" in out and "embed eval (ray): 2 image(s) embedded" in out
    pids = {int(p) for seg in out.split("actor pids [")[1:] for p in seg.split("]", 1)[0].split(",") if p.strip()}
    assert pids and os.getpid() not in pids  # the models ran in actors, not here
    single, on_ray = json.loads((tmp_path / "single.json").read_text()), json.loads((tmp_path / "ray.json").read_text())
    assert on_ray["metrics"] == single["metrics"] and on_ray["stages"] == single["stages"]
    for key in ("masks", "embed_train", "embed_eval"):
        a, b = Path(single["paths"][key]), Path(on_ray["paths"][key])
        assert a.name == b.name  # the same recipe key
        if key == "masks":
            ca, cb = open_mask_cache(a), open_mask_cache(b)
            assert ca.config_hash == cb.config_hash and ca.ids() == cb.ids() and len(ca.ids()) == 6
            for i in ca.ids():
                ma, mb = ca.get(i), cb.get(i)
                assert len(ma) > 0
                for k, v in ma.to_dict().items():
                    np.testing.assert_array_equal(v, mb.to_dict()[k])
        else:
            assert_same_store(a, b)
