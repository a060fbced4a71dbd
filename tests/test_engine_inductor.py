"""``tusss-engine build --backend inductor``: torch.export + AOTInductor packages of the engine's four graphs,
checked against eager PyTorch (segment_anything's encoder / prompt decoder, tusss' DBA-CLIP TowerRunner, open_clip's
encode_text) with the engine check's fp32 threshold; refusals of packages from another torch build or device."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from _engine_helpers import TINY_LIMITS, tiny_models

from tusss.engine import inductor
from tusss.engine.build import build_engine, check_backend
from tusss.engine.check import FP32_REL, check_engine
from tusss.engine.errors import BackendUnavailableError, EngineMismatchError
from tusss.engine.runtime import Engine
from tusss.errors import CorruptFileError, InputError

GRAPHS = ("sam_encoder", "sam_decoder", "clip_windows", "clip_text")


@pytest.fixture(scope="module")
def models():
    return tiny_models()


@pytest.fixture(scope="module")
def inductor_dir(models, tmp_path_factory):
    """All four graphs of the tiny models compiled for the CPU (the slow part: one C++ build per graph)."""
    out = tmp_path_factory.mktemp("inductor") / "fp32"
    m = models
    build_engine(out, sam=m.mask_generator.sam, clip_model=m.dbaclip.model, clip_config=m.dbaclip.cfg,
                 sam_info=m.sam_info, clip_info=m.clip_info, limits=TINY_LIMITS, backend="inductor", device="cpu",
                 log=None)
    return out


@pytest.mark.slow
def test_inductor_build_and_check_every_graph(models, inductor_dir, monkeypatch):
    man = json.loads((inductor_dir / "manifest.json").read_text())
    assert man["backend"] == "inductor" and man["versions"]["torch"] == torch.__version__
    assert man["versions"]["inductor_device"] == "cpu"
    assert sorted(p.name for p in inductor_dir.glob("*.pt2")) == sorted(f"{g}.pt2" for g in GRAPHS)
    assert not list(inductor_dir.glob("*.onnx"))  # no ONNX in an inductor build
    assert man["graphs"]["sam_decoder"]["inputs"]["point_coords"]["shape"][0] == "B"  # dynamic prompt batch

    eng = Engine.load(inductor_dir)
    assert all(isinstance(g, inductor.InductorGraph) for g in eng.graphs.values())
    runs = {g: 0 for g in GRAPHS}  # the packages are what runs (not the eager modules)
    for name, g in eng.graphs.items():
        real = g.model

        def counted(*args, _real=real, _name=name):
            runs[_name] += 1
            return _real(*args)

        monkeypatch.setattr(g, "model", counted)
    rep = check_engine(eng, models.mask_generator.sam, models.dbaclip, prompt_batches=(1, 7, 40),
                       window_counts=(1, 3, 5), log=lambda s: None)
    print("\n" + rep.table())
    assert {r.graph for r in rep.rows} == set(GRAPHS)
    cases = {(r.graph, r.case) for r in rep.rows}
    assert {("sam_decoder", "B=40"), ("clip_windows", "N=5 224x224"), ("clip_windows", "N=1 448x496")} <= cases
    for r in rep.rows:
        assert r.rel <= FP32_REL and r.cosine > 0.99999, r
    assert rep.ok
    # B=40 prompts with at most 16 per call -> 3 chunks; 5 windows with at most 4 -> 2 chunks
    assert runs["sam_decoder"] == 1 + 1 + 3 and runs["clip_windows"] == 1 + 1 + 2 + 1
    assert eng.calls["sam_decoder"] == runs["sam_decoder"]  # the engine's graph-run counter covers this backend

    # the pipeline on the engine: DBA-CLIP embeddings through the compiled windows + text graphs = eager
    import numpy as np

    clip = eng.attach(models.dbaclip)
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (120, 150, 3), dtype=np.uint8)
    masks = np.zeros((3, 120, 150), dtype=bool)
    masks[0, 10:60, 20:90] = True
    masks[1, 50:, 80:] = True
    masks[2, :, :40] = True
    before = runs["clip_windows"]
    got, ref = clip.embed_masks(img, masks), models.dbaclip.embed_masks(img, masks)
    assert runs["clip_windows"] > before
    assert float(np.abs(got - ref).max() / np.abs(ref).max()) < 1e-4


def _fake_inductor_dir(tmp_path, versions):
    """An engine directory whose manifest says inductor (one dummy package): for the refusals, no compile."""
    import tusss
    from tusss.engine.manifest import GraphEntry, Manifest
    from tusss.export.onnx_io import sha256_file

    d = tmp_path / "eng"
    d.mkdir()
    pkg = d / "clip_text.pt2"
    pkg.write_bytes(b"not a zip")
    entry = GraphEntry(onnx="", inputs={"tokens": {"dtype": "int64", "shape": ["K", 77]}},
                       outputs={"text_features": {"dtype": "float32", "shape": ["K", 32]}}, ranges={"K": [1, 2, 4]},
                       files={pkg.name: {"bytes": pkg.stat().st_size, "sha256": sha256_file(pkg)}}, plan=pkg.name)
    Manifest(tusss_version=tusss.__version__, backend="inductor", precision="fp32", sam={}, clip={},
             graphs={"clip_text": entry}, versions=versions).write(d)
    return d


def test_inductor_refuses_other_torch_version(tmp_path):
    d = _fake_inductor_dir(tmp_path, {"torch": "2.0.0", "inductor_device": "cpu"})
    with pytest.raises(EngineMismatchError, match=r"torch 2\.0\.0.*this is torch"):
        Engine.load(d)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a GPU")
def test_inductor_refuses_cuda_package_without_gpu(tmp_path):
    d = _fake_inductor_dir(tmp_path, {"torch": torch.__version__, "inductor_device": "cuda", "gpu": "NVIDIA H200",
                                      "cuda_capability": "9.0"})
    with pytest.raises(BackendUnavailableError, match=r"compiled for CUDA \(NVIDIA H200\).*no GPU"):
        Engine.load(d)
    with pytest.raises(BackendUnavailableError, match="needs an NVIDIA GPU"):
        check_backend("inductor", "fp16", "cuda")


def test_inductor_refuses_other_backend_and_corrupt_package(tmp_path):
    d = _fake_inductor_dir(tmp_path, {"torch": torch.__version__, "inductor_device": "cpu"})
    with pytest.raises(EngineMismatchError, match="AOTInductor packages only"):
        Engine.load(d, backend="onnxruntime")
    with pytest.raises(CorruptFileError, match="cannot load AOTInductor package"):
        Engine.load(d)
    shutil.copy(d / "manifest.json", tmp_path / "m.json")
    raw = json.loads((d / "manifest.json").read_text())
    raw["backend"] = "onnxruntime"
    (d / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(EngineMismatchError, match="built for onnxruntime and has no inductor graphs"):
        Engine.load(d, backend="inductor")


@pytest.mark.parametrize("backend,precision,device,msg", [
    ("inductor", "int8", "cpu", "ONNX Runtime quantisation"),
    ("inductor", "fp32", "tpu", "unknown device"),
    ("onnxruntime", "bf16", "cpu", "bf16 is an inductor precision"),
    ("onnxruntime", "fp32", "cuda", "--device is an option of --backend inductor"),
])
def test_check_backend_refusals(backend, precision, device, msg):
    with pytest.raises(InputError, match=msg):
        check_backend(backend, precision, device)
