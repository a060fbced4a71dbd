"""The engine directory's ``manifest.json``: what was built, from what, for which runtime.

Layout of an engine directory::

    manifest.json            this file's contents (see :class:`Manifest`)
    sam_encoder.onnx         SAM image encoder, (N, 3, S, S) -> (N, 256, S/16, S/16)
    sam_decoder.onnx         SAM prompt decoder over a prompt batch
    clip_windows.onnx        DBA-CLIP image path for a batch of crops (bias as input)
    clip_text.onnx           CLIP text encoder
    <graph>.onnx.data        ONNX external data, for graphs over ~2 GB
    <graph>.plan             TensorRT plans (backend tensorrt) + timing.cache
    <graph>.pt2              AOTInductor packages (backend inductor; no ONNX files, ``onnx`` is "")

Every file is listed with its size and sha256; :func:`read_manifest` + :meth:`Manifest.verify_files`
refuse a corrupt, incomplete or foreign directory with a message that says what is wrong and how to fix it.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tusss.errors import CorruptFileError
from tusss.persist import atomic_write_text, corrupt

FORMAT = "tusss-engine"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
BACKENDS = ("onnxruntime", "tensorrt", "inductor")
PRECISIONS = ("fp32", "fp16", "int8", "bf16")  # bf16: inductor only
GRAPHS = ("sam_encoder", "sam_decoder", "clip_windows", "clip_text")
_FIX = "rebuild the engine with `tusss-engine build`"


@dataclass
class GraphEntry:
    """One graph: its files and its I/O contract.

    inputs / outputs: ``{name: {"dtype": "float32", "shape": [dim or symbol, ...]}}``.
    ranges: ``{symbol: [min, opt, max]}`` for every symbolic dimension (TensorRT optimisation profile).
    files: ``{file name: {"bytes": int, "sha256": str}}``: the ONNX file, its external data, its plan.
    """

    onnx: str
    inputs: dict[str, dict[str, Any]]
    outputs: dict[str, dict[str, Any]]
    ranges: dict[str, list[int]]
    profiles: list[dict[str, list[int]]] = field(default_factory=list)
    files: dict[str, dict[str, Any]] = field(default_factory=dict)
    plan: str | None = None


@dataclass
class Manifest:
    """Contents of ``manifest.json``."""

    tusss_version: str
    backend: str
    precision: str
    sam: dict[str, Any]
    clip: dict[str, Any]
    graphs: dict[str, GraphEntry]
    versions: dict[str, str] = field(default_factory=dict)
    created: str = ""
    format: str = FORMAT
    format_version: int = FORMAT_VERSION

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)  # key order = graph I/O order

    def write(self, engine_dir: str | os.PathLike) -> Path:
        """Write ``manifest.json`` atomically (temporary name, fsync, ``os.replace``): a build killed or out of
        disk space before this point leaves a directory without a manifest, which :func:`read_manifest`
        refuses."""
        return atomic_write_text(Path(engine_dir) / MANIFEST, self.to_json())

    def verify_files(self, engine_dir: str | os.PathLike, *, hashes: bool = True) -> None:
        """Check that every listed file exists with the recorded size (and sha256 when ``hashes``)."""
        from tusss.export.onnx_io import sha256_file

        d = Path(engine_dir)
        for gname, g in self.graphs.items():
            for fname, meta in g.files.items():
                p = d / fname
                if not p.is_file():
                    raise CorruptFileError(
                        f"engine directory {d} is incomplete: file '{fname}' of graph '{gname}' is missing "
                        "(interrupted build or partial copy?); rebuild with `tusss-engine build`"
                    )
                size = p.stat().st_size
                if size != int(meta["bytes"]):
                    raise CorruptFileError(
                        f"engine file {p} has {size} bytes, the manifest says {meta['bytes']} "
                        "(truncated or replaced); rebuild with `tusss-engine build`"
                    )
                if hashes and sha256_file(p) != meta["sha256"]:
                    raise CorruptFileError(
                        f"engine file {p} does not match its sha256 in the manifest (corrupt or modified); "
                        "rebuild with `tusss-engine build`"
                    )


def read_manifest(engine_dir: str | os.PathLike) -> Manifest:
    """Parse and validate ``<engine_dir>/manifest.json`` (structure and format version only)."""
    d = Path(engine_dir)
    if not d.is_dir():
        raise CorruptFileError(f"engine directory {d} does not exist (build one with `tusss-engine build`)")
    p = d / MANIFEST
    if not p.is_file():
        raise CorruptFileError(
            f"{d} is not a tusss engine directory: {MANIFEST} is missing (incomplete build, or the wrong folder)"
        )
    if p.stat().st_size == 0:
        raise corrupt(p, "engine manifest is empty (0 bytes)", _FIX)
    try:
        raw = json.loads(p.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise corrupt(p, f"engine manifest is not valid JSON ({e})", _FIX) from e
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise corrupt(p, f"is not a tusss engine manifest (format {raw.get('format')!r})" if isinstance(raw, dict)
                      else "is not a tusss engine manifest", _FIX)
    if raw.get("format_version") != FORMAT_VERSION:
        raise corrupt(p, f"engine manifest format version {raw.get('format_version')}, this tusss reads version "
                      f"{FORMAT_VERSION}", "rebuild the engine with this tusss (`tusss-engine build`)")
    try:
        graphs = {k: GraphEntry(**v) for k, v in raw.pop("graphs").items()}
        m = Manifest(graphs=graphs, **raw)
    except (KeyError, TypeError, AttributeError) as e:
        raise corrupt(p, f"engine manifest is missing or has unexpected fields ({e})", _FIX) from e
    for gname, g in m.graphs.items():
        if not isinstance(g.files, dict) or not all(
            isinstance(v, dict) and isinstance(v.get("bytes"), int) and isinstance(v.get("sha256"), str)
            for v in g.files.values()
        ):
            raise corrupt(p, f"engine manifest lists malformed file entries for graph '{gname}'", _FIX)
    if m.backend not in BACKENDS:
        raise CorruptFileError(f"engine manifest {p}: unknown backend {m.backend!r} (known: {BACKENDS})")
    if m.precision not in PRECISIONS:
        raise CorruptFileError(f"engine manifest {p}: unknown precision {m.precision!r} (known: {PRECISIONS})")
    unknown = sorted(set(m.graphs) - set(GRAPHS))
    if unknown:
        raise CorruptFileError(f"engine manifest {p}: unknown graph(s) {unknown} (known: {GRAPHS})")
    return m
