"""Exported inference engines: build an engine directory from the PyTorch models, check it, run it.

::

    from tusss.engine import Engine, build_engine, check_engine, load_models

    m = load_models("vit_b", "ViT-B-16", weights="official")
    build_engine("eng/", sam=m.mask_generator.sam, clip_model=m.dbaclip.model, clip_config=m.dbaclip.cfg,
                 sam_info=m.sam_info, clip_info=m.clip_info, precision="fp16", backend="onnxruntime")
    eng = Engine.load("eng/")          # ONNX Runtime / TensorRT sessions of the graphs in the manifest
    report = check_engine(eng, m.mask_generator.sam, m.dbaclip)

The command line is ``tusss-engine`` (:mod:`tusss.engine.cli`). Names are imported lazily: ``import
tusss.engine`` loads neither ONNX Runtime nor TensorRT.
"""

from __future__ import annotations

from tusss._lazy import lazy_exports

_LAZY: dict[str, str] = {
    # runtime
    "Engine": "tusss.engine.runtime",
    "EngineTowerRunner": "tusss.engine.runtime",
    "EngineSamPredictor": "tusss.engine.runtime",
    "EngineTextEncoder": "tusss.engine.runtime",
    # build
    "build_engine": "tusss.engine.build",
    "check_backend": "tusss.engine.build",
    "derive_engine": "tusss.engine.build",
    "Limits": "tusss.engine.build",
    "BuildResult": "tusss.engine.build",
    # check
    "check_engine": "tusss.engine.check",
    "models_from_manifest": "tusss.engine.check",
    "CheckReport": "tusss.engine.check",
    # manifest
    "Manifest": "tusss.engine.manifest",
    "GraphEntry": "tusss.engine.manifest",
    "read_manifest": "tusss.engine.manifest",
    # models an engine is built from
    "load_models": "tusss.engine.models",
    "parse_weights": "tusss.engine.models",
    "Models": "tusss.engine.models",
    # benchmark
    "BenchConfig": "tusss.engine.bench",
    "run_bench": "tusss.engine.bench",
    # errors
    "BackendUnavailableError": "tusss.engine.errors",
    "EngineMismatchError": "tusss.engine.errors",
}

__all__ = sorted(_LAZY)

__getattr__, __dir__ = lazy_exports(__name__, _LAZY, globals())
