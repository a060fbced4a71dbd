"""`tusss segment --glcc DIR`: a fitted GLCC applied to new images through tusss.Predictor; unreadable images
are skipped and listed; a GLCC of another embedder is refused naming the differing field."""

from __future__ import annotations

import warnings

import numpy as np
from _tiny_datasets import make_image_folder

from tusss.classify import GLCCClassifier
from tusss.cli import main
from tusss.cli.common import parse_opts
from tusss.glcc.model import GLCC, GLCCConfig
from tusss.io import read_label
from tusss.predictor import Predictor

SAM_OPTS = ["points_per_side=3", "crop_n_layers=0", "pred_iou_thresh=-10", "stability_score_thresh=-10",
            "min_mask_region_area=0", "box_nms_thresh=1.0", "rock_sand_water_thresh=null"]
CLIP_OPTS = ["target_size=64", "window_sizes=[32]", "stride_divisor=1"]


def cli_args() -> list[str]:
    out = ["--sam", "vit_tiny", "--checkpoint", "random", "--clip", "tusss-tiny", "--weights", "random",
           "--no-progress"]
    for o in SAM_OPTS:
        out += ["--sam-opt", o]
    for o in CLIP_OPTS:
        out += ["--clip-opt", o]
    return out


def the_cli_predictor() -> Predictor:
    """The predictor `tusss segment` builds from cli_args() (same seed 0, same options), text classes."""
    return Predictor.from_pretrained(sam="vit_tiny", checkpoint="random", clip="tusss-tiny", weights="random",
                                     classes="x", mask_options=parse_opts(SAM_OPTS, "s"),
                                     clip_options=parse_opts(CLIP_OPTS, "c"), seed=0)


def save_glcc(path, dim: int, provenance: dict) -> None:
    rng = np.random.default_rng(1)
    g = GLCC(GLCCConfig(k=4), class_names=["background", "road", "tree"])
    g.fit(rng.normal(size=(40, dim)).astype(np.float32), None, np.repeat(np.arange(8), 5), "full",
          gt_fractions=rng.dirichlet(np.ones(3), size=40).astype(np.float32))
    g.provenance = provenance
    g.save(path)


def test_segment_glcc_skips_unreadable_images_and_refuses_another_embedder(tmp_path, capsys):
    imgs = make_image_folder(tmp_path / "imgs", n=3, hw=(20, 24))
    (tmp_path / "imgs" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not the rest of a PNG")
    pred = the_cli_predictor()
    save_glcc(tmp_path / "glcc", pred.clip.embed_dim, pred.identity())
    out = tmp_path / "out"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rc = main(["segment", str(tmp_path / "imgs"), "--glcc", str(tmp_path / "glcc"), "--out", str(out),
                   *cli_args()])
    err = capsys.readouterr().err
    assert rc == 1 and "broken" in err  # reported, listed, exit status non-zero
    ref = Predictor(pred.mask_generator, pred.clip, GLCCClassifier(tmp_path / "glcc"))
    for i, img in imgs.items():  # every readable image written, equal to the library's GLCC predictor
        seg = ref.predict(img)
        assert len(seg.masks) > 0
        np.testing.assert_array_equal(read_label(out / "labels" / f"{i}.png"), seg.label_map)
    assert not (out / "labels" / "broken.png").exists()

    save_glcc(tmp_path / "other", pred.clip.embed_dim, {**pred.identity(), "clip_preset": "paper"})
    rc = main(["segment", str(tmp_path / "imgs" / "img0.png"), "--glcc", str(tmp_path / "other"),
               "--out", str(tmp_path / "o2"), *cli_args()])
    err = capsys.readouterr().err
    assert rc == 1 and "clip_preset" in err and "paper" in err
