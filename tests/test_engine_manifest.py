"""Corrupt, incomplete or mismatched engine directories fail with clear messages; TensorRT build path.

The TensorRT builder is exercised up to the TensorRT calls with a recording stand-in for the
``tensorrt`` module (TensorRT cannot be installed here); the real build + parity tests need a GPU.
"""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pytest
import torch
from _engine_helpers import copy_engine, tiny_engine_dir, tiny_models

from tusss.engine.build import build_engine, derive_engine
from tusss.engine.cli import main
from tusss.engine.errors import BackendUnavailableError, EngineMismatchError
from tusss.engine.manifest import read_manifest
from tusss.engine.runtime import Engine
from tusss.errors import CorruptFileError, InputError


def _edit_manifest(d: Path, **changes):
    p = d / "manifest.json"
    raw = json.loads(p.read_text())
    raw.update(changes)
    p.write_text(json.dumps(raw))


def test_missing_dir_and_manifest(tmp_path):
    with pytest.raises(CorruptFileError, match="does not exist"):
        Engine.load(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CorruptFileError, match="manifest.json is missing"):
        Engine.load(tmp_path / "empty")


def test_invalid_or_foreign_manifest(tmp_path):
    d = copy_engine(tmp_path / "e")
    (d / "manifest.json").write_text("{ not json")
    with pytest.raises(CorruptFileError, match="not valid JSON"):
        Engine.load(d)
    (d / "manifest.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(CorruptFileError, match="not a tusss engine manifest"):
        Engine.load(d)


def test_format_and_tusss_version_mismatch(tmp_path):
    d = copy_engine(tmp_path / "e")
    _edit_manifest(d, format_version=99)
    with pytest.raises(CorruptFileError, match="format version 99"):
        Engine.load(d)
    d2 = copy_engine(tmp_path / "e2")
    _edit_manifest(d2, tusss_version="9.9.0")
    with pytest.raises(EngineMismatchError, match="built by tusss 9.9.0"):
        Engine.load(d2)


def test_incomplete_truncated_and_modified_files(tmp_path):
    d = copy_engine(tmp_path / "a")
    (d / "sam_decoder.onnx").unlink()
    with pytest.raises(CorruptFileError, match="incomplete: file 'sam_decoder.onnx'"):
        Engine.load(d)
    d = copy_engine(tmp_path / "b")
    p = d / "clip_windows.onnx"
    p.write_bytes(p.read_bytes()[:-100])
    with pytest.raises(CorruptFileError, match="truncated or replaced"):
        Engine.load(d)
    d = copy_engine(tmp_path / "c")
    p = d / "sam_encoder.onnx"
    b = bytearray(p.read_bytes())
    b[len(b) // 2] ^= 0xFF
    p.write_bytes(bytes(b))
    with pytest.raises(CorruptFileError, match="sha256"):
        Engine.load(d)
    Engine.load(d, verify="size")  # same size: only the hash check sees it (it may still load or not)


def test_unreadable_graph_without_verification(tmp_path):
    d = copy_engine(tmp_path / "e")
    p = d / "clip_text.onnx"
    p.write_bytes(b"\x00garbage" * (p.stat().st_size // 8))
    with pytest.raises(CorruptFileError, match="ONNX Runtime cannot load"):
        Engine.load(d, verify="none")


def test_graph_io_mismatch_with_manifest(tmp_path):
    d = copy_engine(tmp_path / "e")
    raw = json.loads((d / "manifest.json").read_text())
    raw["graphs"]["sam_decoder"]["inputs"] = {"foo": {"dtype": "float32", "shape": [1]}}
    (d / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(CorruptFileError, match="the manifest says"):
        Engine.load(d)


def test_runtime_models_must_match(tmp_path):
    eng = Engine.load(tiny_engine_dir())
    other = tiny_models(seed=1)  # same architectures, other weights
    with pytest.raises(EngineMismatchError, match="other SAM weights"):
        eng.attach(other.mask_generator)
    with pytest.raises(EngineMismatchError, match="other CLIP weights"):
        eng.attach(other.dbaclip)
    same = tiny_models()
    from tusss.clip.model import DBAClip

    mean = DBAClip(same.dbaclip.model, same.dbaclip.cfg.replace(attention_mode="mean"), "tusss-tiny")
    with pytest.raises(EngineMismatchError, match="attention_mode"):
        eng.attach(mean)
    from tusss.masks.generator import MaskGenerator
    from tusss.masks.sam_registry import build_sam

    torch.manual_seed(0)
    vitb, _ = build_sam("vit_b", None)
    with pytest.raises(EngineMismatchError, match="input size 256"):
        eng.attach(MaskGenerator(vitb))
    with pytest.raises(InputError, match="MaskGenerator or a DBAClip"):
        eng.attach(object())


def test_missing_graph_is_reported(tmp_path):
    m = tiny_models()
    # derive a CLIP-only engine by dropping the SAM graphs from a copy
    d = copy_engine(tmp_path / "e")
    raw = json.loads((d / "manifest.json").read_text())
    del raw["graphs"]["sam_decoder"]
    (d / "manifest.json").write_text(json.dumps(raw))
    eng = Engine.load(d)
    with pytest.raises(EngineMismatchError, match="no 'sam_decoder' graph"):
        eng.attach(m.mask_generator)
    with pytest.raises(EngineMismatchError, match="holds no TensorRT plans"):
        Engine.load(d, backend="tensorrt")


# ------------------------------------------------------------------------------- TensorRT, no GPU
@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU message")
def test_tensorrt_build_without_gpu_builds_nothing(tmp_path, capsys):
    m = tiny_models()
    out = tmp_path / "trt"
    with pytest.raises(BackendUnavailableError, match="needs an NVIDIA GPU"):
        build_engine(out, sam=m.mask_generator.sam, backend="tensorrt", precision="fp16", log=None)
    assert not out.exists()
    rc = main(["build", "--sam", "vit_tiny", "--clip", "none", "--weights", "random", "--backend", "tensorrt",
               "--precision", "fp16", "--out", str(out)])
    assert rc == 2 and "needs an NVIDIA GPU" in capsys.readouterr().err and not out.exists()
    with pytest.raises(BackendUnavailableError, match="needs an NVIDIA GPU"):
        derive_engine(tiny_engine_dir(), out, precision="fp16", backend="tensorrt", log=None)
    assert not out.exists()
    with pytest.raises(InputError, match="int8 is ONNX Runtime dynamic quantisation"):
        build_engine(out, sam=m.mask_generator.sam, backend="tensorrt", precision="int8", log=None)


class _Rec:
    """Recording stand-in for the parts of the TensorRT 10 Python API that build_plan uses."""

    def __init__(self):
        self.calls = []
        self.profiles = []


def _fake_tensorrt(rec: _Rec) -> types.ModuleType:
    trt = types.ModuleType("tensorrt")
    trt.__version__ = "10.9.0"

    class Logger:
        WARNING = 2

        def __init__(self, level):
            pass

    class Profile(dict):
        def set_shape(self, name, lo, opt, hi):
            self[name] = (tuple(lo), tuple(opt), tuple(hi))

    class Cache:
        def serialize(self):
            return b"timing-cache"

    class Config:
        def set_memory_pool_limit(self, pool, size):
            rec.calls.append(("workspace", size))

        def create_timing_cache(self, blob):
            rec.calls.append(("timing_cache_in", bytes(blob)))
            return Cache()

        def set_timing_cache(self, cache, ignore_mismatch):
            rec.calls.append(("set_timing_cache", ignore_mismatch))

        def get_timing_cache(self):
            return Cache()

        def add_optimization_profile(self, p):
            rec.profiles.append(dict(p))

    class Builder:
        def __init__(self, logger):
            pass

        def create_network(self, flags):
            rec.calls.append(("network_flags", flags))
            return object()

        def create_builder_config(self):
            return Config()

        def create_optimization_profile(self):
            return Profile()

        def build_serialized_network(self, network, config):
            return b"serialized-plan"

    class OnnxParser:
        num_errors = 0

        def __init__(self, network, logger):
            pass

        def parse_from_file(self, path):
            rec.calls.append(("parse", Path(path).name))
            return True

    trt.Logger, trt.Builder, trt.OnnxParser = Logger, Builder, OnnxParser
    trt.NetworkDefinitionCreationFlag = types.SimpleNamespace(STRONGLY_TYPED=1)
    trt.MemoryPoolType = types.SimpleNamespace(WORKSPACE=0)
    return trt


def test_tensorrt_builder_up_to_the_tensorrt_calls(tmp_path, monkeypatch):
    src = tiny_engine_dir()  # built before torch is told that there is a GPU
    rec = _Rec()
    monkeypatch.setitem(sys.modules, "tensorrt", _fake_tensorrt(rec))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    man = derive_engine(src, tmp_path / "trt", precision="fp16", backend="tensorrt", log=None)
    assert man.backend == "tensorrt" and set(man.graphs) == {"sam_encoder", "sam_decoder", "clip_windows",
                                                             "clip_text"}
    assert ("network_flags", 1 << 1) in rec.calls  # strongly typed: precision from the fp16 ONNX graph
    assert [c[1] for c in rec.calls if c[0] == "parse"] == [f"{g}.onnx" for g in man.graphs]
    # the timing cache written by the first plan is read back by the next ones
    cache_in = [c[1] for c in rec.calls if c[0] == "timing_cache_in"]
    assert cache_in[0] == b"" and all(c == b"timing-cache" for c in cache_in[1:])
    assert (tmp_path / "trt" / "timing.cache").read_bytes() == b"timing-cache"
    for g in man.graphs.values():
        assert (tmp_path / "trt" / g.plan).read_bytes() == b"serialized-plan" and g.plan in g.files
    # optimisation profiles: decoder prompt batch, DBA-CLIP windows + global pass (2 profiles)
    dec = [p for p in rec.profiles if "point_coords" in p]
    assert dec == [{"point_coords": ((1, 1, 2), (16, 1, 2), (16, 1, 2)),
                    "point_labels": ((1, 1), (16, 1), (16, 1))}]
    win = [p for p in rec.profiles if "pixels" in p]
    assert len(win) == 2
    assert win[0]["pixels"] == ((1, 3, 224, 224), (4, 3, 224, 224), (4, 3, 224, 224))
    assert win[0]["bias"] == ((1, 197, 197), (4, 197, 197), (4, 197, 197))
    assert win[1]["pixels"][2] == (2, 3, 896, 896) and win[1]["pos_embed"][1][0] == 1 + 28 * 38
    # without a GPU the plans cannot be loaded
    monkeypatch.undo()
    if not torch.cuda.is_available():
        with pytest.raises(BackendUnavailableError, match="NVIDIA GPU"):
            Engine.load(tmp_path / "trt")
        # ... but the ONNX graphs of a TensorRT engine still run under ONNX Runtime
        eng = Engine.load(tmp_path / "trt", backend="onnxruntime")
        assert eng.backend == "onnxruntime"
    assert read_manifest(tmp_path / "trt").graphs["clip_windows"].profiles[1]["L"][1] == 1 + 28 * 38


# ------------------------------------------------------------------------------- TensorRT on a GPU
@pytest.mark.cuda
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_tensorrt_build_and_parity(tmp_path, precision):
    pytest.importorskip("tensorrt")
    from tusss.engine.check import check_engine

    m = tiny_models()
    derive_engine(tiny_engine_dir(), tmp_path / "trt", precision=precision, backend="tensorrt", log=None)
    eng = Engine.load(tmp_path / "trt")
    assert eng.backend == "tensorrt"
    rep = check_engine(eng, m.mask_generator.sam, m.dbaclip, prompt_batches=(1, 7, 16), log=print)
    print(rep.table())
    if precision == "fp16":
        assert rep.ok
    else:  # TF32 may be used by TensorRT for fp32 matmuls: compare by cosine
        assert all(r.cosine > 0.9999 for r in rep.rows)
