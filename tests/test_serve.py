"""`tusss serve`: a real uvicorn subprocess on 127.0.0.1 answering httpx (fake SAM, so masks exist)."""

from __future__ import annotations

import base64
import io
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
mask_utils = pytest.importorskip("pycocotools.mask")
from _sam_fakes import make_scene  # noqa: E402
from PIL import Image  # noqa: E402

TESTS = Path(__file__).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def png_claiming(w: int, h: int) -> bytes:
    """A ~100-byte PNG whose header claims w x h pixels."""
    def chunk(t: bytes, d: bytes) -> bytes:
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


class Server:
    def __init__(self, *extra: str, delay: float = 0.0) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "TUSSS_SERVE_PREDICTOR_FACTORY": "_serve_factory:make",
               "TUSSS_TEST_LOAD_DELAY": str(delay), "OMP_NUM_THREADS": "1",
               "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tusss.cli", "serve", "--classes", "cat,dog,sofa", "--host", "127.0.0.1",
             "--port", str(self.port), "--max-upload-mb", "1", "--max-pixels", "1000000", "--log-level", "warning",
             *extra], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self.client = httpx.Client(base_url=self.url, timeout=60)

    def wait(self, path: str, status: int = 200, timeout: float = 90) -> httpx.Response:
        t0 = time.time()
        while time.time() - t0 < timeout:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited {self.proc.returncode}: {self.proc.stdout.read().decode()}")
            try:
                r = self.client.get(path)
                if r.status_code == status:
                    return r
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"{path} never answered {status}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.client.close()


@pytest.fixture(scope="module")
def server():
    s = Server("--max-batch", "8", "--max-wait-ms", "150", "--max-queue", "6", delay=3.0)
    try:
        s.wait("/healthz")
        r = s.client.get("/readyz")  # alive, still loading (factory sleeps 3 s) -> not ready
        assert r.status_code == 503 and r.json()["ready"] is False
        s.wait("/readyz", 200)
        yield s
    finally:
        s.stop()


@pytest.fixture(scope="module")
def local():
    sys.path.insert(0, str(TESTS))
    import _serve_factory

    return _serve_factory.make()


def post(s: Server, data: bytes, ct: str = "image/png", path: str = "/v1/segment", **params) -> httpx.Response:
    return s.client.post(path, files={"image": ("x", data, ct)}, params=params)


def test_segment_json_rles_decode_to_the_masks(server, local):
    img = make_scene(96, 128)
    r = post(server, png(img))
    assert r.status_code == 200, r.text
    js = r.json()
    ref = local.predict(img)
    assert js["image"] == {"height": 96, "width": 128} and js["class_names"] == list(ref.class_names)
    assert len(js["masks"]) == len(ref.masks) > 3
    for m, want, lab in zip(js["masks"], ref.masks.masks, ref.labels, strict=True):
        rle = m["segmentation"]
        assert isinstance(rle["counts"], str) and rle["size"] == [96, 128]
        dec = mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode()})
        np.testing.assert_array_equal(dec.astype(bool), want)
        assert m["area"] == int(mask_utils.area({"size": rle["size"], "counts": rle["counts"].encode()}))
        x, y, w, h = m["bbox"]
        ys, xs = np.nonzero(want)
        assert (x, y, x + w - 1, y + h - 1) == (xs.min(), ys.min(), xs.max(), ys.max())  # COCO XYWH
        assert m["label"] == int(lab) and m["class"] == ref.class_names[lab]
    r = post(server, png(img), format="png")
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(r.content))), ref.label_map)
    r = post(server, png(img), classes="person,car")
    assert r.status_code == 200 and r.json()["class_names"] == ["background", "person", "car"]


def test_embed_returns_float16_npy(server, local):
    img = make_scene(96, 128, variant=2)
    r = post(server, png(img), path="/v1/embed")
    assert r.status_code == 200, r.text
    js = r.json()
    emb = np.load(io.BytesIO(base64.b64decode(js["embeddings"]["data"])))
    ms, ref = local.embed(img)
    assert emb.dtype == np.float16 and emb.shape == ref.shape == tuple(js["embeddings"]["shape"])
    np.testing.assert_allclose(emb.astype(np.float32), ref, rtol=2e-3, atol=2e-3)
    r = post(server, png(img), path="/v1/embed", format="npy")
    assert r.status_code == 200 and np.load(io.BytesIO(r.content)).shape == ref.shape


def test_bad_inputs_get_their_4xx_and_the_service_stays_healthy(server):
    good = png(make_scene(64, 80))
    gif = io.BytesIO()
    Image.fromarray(make_scene(32, 32)).save(gif, format="GIF")
    cases = [
        ("missing image field", lambda: server.client.post("/v1/segment", data={"x": "1"}), 422),
        ("text content type", lambda: post(server, b"hello", "text/plain"), 415),
        ("not an image", lambda: post(server, b"\x00garbage" * 50), 415),
        ("GIF", lambda: post(server, gif.getvalue(), "image/gif"), 415),
        ("GIF declared png", lambda: post(server, gif.getvalue()), 415),
        ("truncated PNG", lambda: post(server, good[: len(good) // 2]), 400),
        ("header claims 40000 x 40000", lambda: post(server, png_claiming(40000, 40000)), 413),
        ("header claims 2000 x 2000 (> --max-pixels)", lambda: post(server, png_claiming(2000, 2000)), 413),
        ("upload > 1 MiB", lambda: post(server, os.urandom(1 << 20) + good), 413),
        ("empty upload", lambda: post(server, b""), 400),
        ("bad format", lambda: post(server, good, format="xml"), 400),
        ("bad classes", lambda: post(server, good, classes="cat,,dog"), 400),
        ("unknown endpoint", lambda: server.client.get("/v1/nothing"), 404),
        ("wrong method", lambda: server.client.get("/v1/segment"), 405),
    ]
    for name, call, status in cases:
        r = call()
        assert r.status_code == status, (name, r.status_code, r.text)
        assert isinstance(r.json()["error"], str) and r.json()["error"], name
        assert server.client.get("/healthz").status_code == 200, name
    assert post(server, good).status_code == 200  # still serving


def test_concurrent_requests_batched_and_queue_full_503(server):
    imgs = [png(make_scene(96, 128, variant=v)) for v in range(5)]
    with ThreadPoolExecutor(5) as ex:
        rs = list(ex.map(lambda b: post(server, b), imgs))
    assert [r.status_code for r in rs] == [200] * 5
    metrics = server.client.get("/metrics").text
    lines = metrics.splitlines()
    le1 = float(next(ln.split()[-1] for ln in lines if ln.startswith('tusss_batch_size_bucket{le="1.0"}')))
    count = float(next(ln.split()[-1] for ln in lines if ln.startswith("tusss_batch_size_count")))
    assert count - le1 >= 1, metrics  # at least one batch held more than one request
    assert "tusss_stage_seconds_bucket" in metrics and 'tusss_requests_total{endpoint="/v1/segment",status="200"}' in \
        metrics
    with ThreadPoolExecutor(20) as ex:  # queue of 6: a burst of 20 overflows it
        rs = list(ex.map(lambda i: post(server, imgs[i % 5]), range(20)))
    codes = sorted({r.status_code for r in rs})
    assert set(codes) <= {200, 503} and 503 in codes and 200 in codes, codes
    busy = next(r for r in rs if r.status_code == 503)
    assert busy.headers["retry-after"] == "1" and "busy" in busy.json()["error"]
    info = server.client.get("/v1/info").json()
    assert info["backend"] == "torch" and info["classifier"]["kind"] == "text" and info["ready"] is True
    assert server.client.get("/healthz").status_code == 200


def test_sigterm_finishes_the_request_in_flight_and_exits_cleanly(server):
    result: dict = {}

    def call():
        result["r"] = post(server, png(make_scene(96, 128, variant=4)))

    t = threading.Thread(target=call)
    t.start()
    time.sleep(0.05)
    server.proc.send_signal(signal.SIGTERM)
    t.join(60)
    assert server.proc.wait(60) == 0
    assert result["r"].status_code == 200 and len(result["r"].json()["masks"]) > 0
