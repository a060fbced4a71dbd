"""DBAClip.embed_masks on every kernel backend: TUSSS_KERNELS=torch (PyTorch twins), TUSSS_KERNELS=triton (Triton
kernels in the CPU interpreter, one subprocess with TRITON_INTERPRET=1) and TUSSS_KERNELS=reference (plain
materialised-bias path, one last-block pass per mask for ``paper``), each against the naive reference
implementation of docs/reference-code.md §2-3 (tests/naive_dbaclip.py), for every preset. Tiny model, small images."""

from __future__ import annotations

import numpy as np
import pytest
from naive_dbaclip import naive_embed_masks
from test_clip_dbaclip import _image, _masks, _rel, _tiny

from tests._kernels_helpers import (
    one_thread,  # noqa: F401 (autouse fixture: torch on one thread)
    run_in_interpreter,
)
from tusss.clip import preset_names

RTOL = 1e-4
HW = (77, 101)
# every preset; small geometry with few windows (the interpreter runs ~0.5 s per window): resized 64 x 96,
# 64-px windows (3 at stride 16, 2 at the paper's stride 32); Cityscapes: 64- and 48-px windows, no global pass
GEOMETRY = {"target_size": 64, "window_sizes": (64,)}
CASES = [(p, {**GEOMETRY, "window_sizes": (64, 48)} if p == "cityscapes" else GEOMETRY) for p in preset_names()]




def _inputs():
    return _image(*HW, seed=7), _masks(*HW, seed=7, n=4)


@pytest.fixture(scope="module")
def triton_embeddings():
    """embed_masks of every case with TUSSS_KERNELS=triton, all in one interpreter subprocess."""
    img, masks = _inputs()
    jobs = [{"fn": "embed", "model": "tusss-tiny", "state_dict": _tiny(p, **kw).model.state_dict(), "preset": p,
             "overrides": kw, "image": img, "masks": masks} for p, kw in CASES]
    return run_in_interpreter(jobs)


def test_cases_cover_all_presets_and_kernel_paths():
    assert {p for p, _ in CASES} == {"reference", "paper", "maskclip", "sclip", "plain", "cityscapes"}
    m = _tiny("paper", **GEOMETRY)
    assert m.runner.packed_ok()  # the paper preset runs the packed ragged attention
    lay = m.layout(HW)
    assert lay.resized_hw == (64, 96) and lay.n_windows == 2 and lay.has_global
    img, masks = _inputs()  # the masks matter in this geometry: biased presets differ from the unbiased one
    plain = _tiny("sclip", **GEOMETRY).embed_masks(img, masks)
    assert _rel(_tiny("reference", **GEOMETRY).embed_masks(img, masks), plain) > 1e-3
    assert _rel(m.embed_masks(img, masks), plain) > 1e-3


@pytest.mark.parametrize("i", range(len(CASES)))
def test_backends_match_naive(i, triton_embeddings, monkeypatch):
    preset, kw = CASES[i]
    img, masks = _inputs()
    m = _tiny(preset, **kw)
    ref = naive_embed_masks(m.model, img, masks, m.cfg)
    got = {}
    for backend in ("torch", "reference"):
        monkeypatch.setenv("TUSSS_KERNELS", backend)
        got[backend] = m.embed_masks(img, masks)
    got["triton"] = triton_embeddings[i]
    for backend, e in got.items():
        assert e.shape == ref.shape and e.dtype == np.float32, backend
        assert _rel(e, ref) < RTOL, (preset, backend, _rel(e, ref))
    assert _rel(got["triton"], got["torch"]) < RTOL
    assert _rel(got["reference"], got["torch"]) < RTOL
