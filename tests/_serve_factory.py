"""Test-only predictor factory for ``tusss serve`` (``TUSSS_SERVE_PREDICTOR_FACTORY=_serve_factory:make``): the
deterministic fake SAM of ``_sam_fakes`` (so masks exist) + DBA-CLIP tusss-tiny with random weights (seed 0).
``TUSSS_TEST_LOAD_DELAY`` (seconds) slows loading down so that a test can see /readyz answer 503 first."""

from __future__ import annotations

import os
import time

import torch
from _sam_fakes import install_fakes

from tusss.classify import TextClassifier
from tusss.clip.model import DBAClip
from tusss.masks.generator import MaskGenerator
from tusss.predictor import Predictor

CLASSES = "cat,dog,sofa"


def make() -> Predictor:
    time.sleep(float(os.environ.get("TUSSS_TEST_LOAD_DELAY", "0")))
    torch.manual_seed(0)
    gen = MaskGenerator.from_pretrained("vit_tiny", checkpoint=None, preset="tuss", points_per_side=8,
                                        crop_n_layers=0)
    install_fakes(gen.sam)
    clip = DBAClip.from_pretrained("tusss-tiny", weights=None, preset="reference", target_size=224)  # few windows
    return Predictor(gen, clip, TextClassifier(clip, classes=CLASSES))
