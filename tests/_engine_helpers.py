"""Shared helpers of the export / engine tests: tiny seeded models and one tiny engine per test process.

Exports are the slow part (the dynamo exporter takes seconds even for tiny graphs), so the tiny fp32
engine is built once per process (lru_cache) and copied by tests that need to damage it.
"""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from pathlib import Path

from tusss.engine.build import Limits, build_engine
from tusss.engine.models import Models, load_models

# small maxima so that the runtime's chunking is exercised (decoder B=64 -> 4 calls, 5 windows -> 2 calls)
TINY_LIMITS = Limits(encoder_batch=(1, 1, 4), decoder_batch=(1, 16, 16), windows_batch=(1, 4, 4),
                     global_side=(224, 448, 896), text_batch=(1, 64, 64))
SEED = 0


def tiny_models(seed: int = SEED, **mask_overrides: object) -> Models:
    """SAM vit_tiny + DBA-CLIP tusss-tiny (reference preset), random weights from ``seed``."""
    return load_models("vit_tiny", "tusss-tiny", "random", seed=seed, mask_overrides=mask_overrides or None)


@functools.cache
def tiny_engine_dir() -> Path:
    """An fp32 ONNX Runtime engine of :func:`tiny_models` (all four graphs), built once per process."""
    root = Path(tempfile.mkdtemp(prefix="tusss-test-engine-"))
    atexit.register(shutil.rmtree, root, True)
    m = tiny_models()
    build_engine(root / "fp32", sam=m.mask_generator.sam, clip_model=m.dbaclip.model, clip_config=m.dbaclip.cfg,
                 sam_info=m.sam_info, clip_info=m.clip_info, limits=TINY_LIMITS, optimize=False, log=None)
    return root / "fp32"


def copy_engine(dst: Path) -> Path:
    """A private copy of the tiny engine (to corrupt)."""
    shutil.copytree(tiny_engine_dir(), dst)
    return dst
