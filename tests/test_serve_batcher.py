"""MicroBatcher with a stand-in predictor: batches form, groups split by class override, a bad item fails alone,
a full queue raises QueueFull, close() finishes queued work. Plus the upload checks of decode_upload."""

from __future__ import annotations

import io
import threading

import numpy as np
import pytest

pytest.importorskip("fastapi")
from PIL import Image  # noqa: E402

from tusss.serve.app import ServeConfig, UploadError, decode_upload  # noqa: E402
from tusss.serve.batcher import MicroBatcher, QueueFull  # noqa: E402


class FakePredictor:
    def __init__(self, gate: threading.Event | None = None) -> None:
        self.calls: list[tuple[int, object]] = []
        self.gate = gate

    def predict_batch(self, images, classes=None):
        if self.gate is not None:
            self.gate.wait(10)
        self.calls.append((len(images), classes))
        if any(im == "bad" for im in images):
            raise ValueError("bad image")
        return [f"{im}:{classes}" for im in images]

    def embed_batch(self, images):
        self.calls.append((len(images), "embed"))
        return [f"emb:{im}" for im in images]


def test_batches_groups_and_isolated_failures():
    p = FakePredictor()
    b = MicroBatcher(p, max_batch=6, max_wait_ms=5000, max_queue=16)  # the batch closes when 6 are queued
    futs = [b.submit("segment", x) for x in ("a", "b", "bad", "c")]
    futs.append(b.submit("segment", "d", classes=["x", "y"]))
    futs.append(b.submit("embed", "e"))
    assert [f.result(10) for f in (futs[0], futs[1], futs[3])] == ["a:None", "b:None", "c:None"]
    with pytest.raises(ValueError, match="bad image"):
        futs[2].result(10)
    assert futs[4].result(10) == "d:['x', 'y']" and futs[5].result(10) == "emb:e"
    # a, b, bad, c ran as ONE batch; it failed, so they were re-run one by one; the other groups ran apart
    assert p.calls[0] == (4, None) and p.calls[1:5] == [(1, None)] * 4
    assert sorted(map(str, p.calls[5:])) == sorted(map(str, [(1, ["x", "y"]), (1, "embed")]))
    b.close()


def test_queue_full_and_close_finishes_queued_work():
    gate = threading.Event()
    p = FakePredictor(gate)
    b = MicroBatcher(p, max_batch=1, max_wait_ms=0, max_queue=2)
    f0 = b.submit("segment", "a")
    deadline = threading.Event()
    while b.depth and not deadline.wait(0.01):  # the worker took "a" and waits on the gate
        pass
    queued = [b.submit("segment", "b"), b.submit("segment", "c")]
    with pytest.raises(QueueFull):
        b.submit("segment", "d")
    gate.set()
    b.close()
    assert [f.result(1) for f in (f0, *queued)] == ["a:None", "b:None", "c:None"]
    with pytest.raises(QueueFull):
        b.submit("segment", "e")


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def test_decode_upload_checks_the_header_before_decoding(monkeypatch):
    cfg = ServeConfig(max_pixels=100 * 100, max_upload_bytes=1 << 20)
    img = (np.arange(60 * 80 * 3) % 251).astype(np.uint8).reshape(60, 80, 3)
    np.testing.assert_array_equal(decode_upload(_png(img), "image/png", cfg), img)
    big = _png(np.zeros((120, 120, 3), np.uint8))
    loads = []
    orig = Image.Image.load
    monkeypatch.setattr(Image.Image, "load", lambda self: (loads.append(1), orig(self))[1])
    with pytest.raises(UploadError) as e:
        decode_upload(big, "image/png", cfg)
    assert e.value.status == 413 and "120 x 120" in e.value.message and loads == []  # refused before decoding
    with pytest.raises(UploadError) as e:
        decode_upload(_png(img), "text/plain", cfg)
    assert e.value.status == 415
