"""The ``tusss`` command end to end on a tiny VOC layout: vit_tiny SAM and tusss-tiny CLIP, random weights.

References: the library objects built in-process with the same seeds (MaskGenerator, OVSegmenter), naive
numpy mIoU, and :func:`tusss.metrics.mask_f1` (itself checked against scikit-learn in test_metrics.py).
"""

from __future__ import annotations

import json
import shutil
import warnings

import numpy as np
import pytest
import torch
from _tiny_datasets import make_image_folder, make_voc
from PIL import Image

from tusss.cli import build_parser, main
from tusss.io import read_label
from tusss.masks.cache import open_mask_cache

# many overlapping masks of all levels from random weights: no thresholds, no NMS, no RSW
SAM_OPTS = ["points_per_side=3", "crop_n_layers=0", "pred_iou_thresh=-10", "stability_score_thresh=-10",
            "min_mask_region_area=0", "box_nms_thresh=1.0", "rock_sand_water_thresh=null"]  # fmt: skip
CLIP_OPTS = ["target_size=64", "window_sizes=[32]", "stride_divisor=1"]


def _sam_args() -> list[str]:
    out = ["--sam", "vit_tiny", "--checkpoint", "random", "--no-progress"]
    for o in SAM_OPTS:
        out += ["--sam-opt", o]
    return out


def _clip_args() -> list[str]:
    out = ["--clip", "tusss-tiny", "--weights", "random"]
    for o in CLIP_OPTS:
        out += ["--clip-opt", o]
    return out


def _generator():
    from tusss.masks.generator import MaskGenerator

    torch.manual_seed(0)
    return MaskGenerator.from_pretrained("vit_tiny", checkpoint=None, preset="tuss", points_per_side=3,
                                         crop_n_layers=0, pred_iou_thresh=-10, stability_score_thresh=-10,
                                         min_mask_region_area=0, box_nms_thresh=1.0,
                                         rock_sand_water_thresh=None)  # fmt: skip


@pytest.fixture(scope="module")
def voc_run(tmp_path_factory):
    """masks -> segment -> eval on a 2-image VOC val split; returns the paths and captured outputs."""
    tmp = tmp_path_factory.mktemp("cli")
    root = tmp / "VOC2012"
    truth = make_voc(root, {"val": ["2007_000033", "2007_000042"]}, hw=(20, 28))
    cache = tmp / "cache"
    ds_args = ["--dataset", "voc", "--root", str(root), "--split", "val"]
    assert main(["masks", *ds_args, "--cache-dir", str(cache), *_sam_args()]) == 0
    assert main(["masks", *ds_args, "--cache-dir", str(cache), *_sam_args()]) == 0  # resumable: all cached
    out = tmp / "out"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rc = main(["segment", *ds_args, "--vocabulary", "voc21", "--out", str(out), "--mask-cache", str(cache),
                   *_sam_args(), *_clip_args()])  # fmt: skip
    assert rc == 0
    return {"tmp": tmp, "root": root, "truth": truth, "cache": cache, "out": out, "ds_args": ds_args}


def test_masks_command_matches_generator_and_resumes(voc_run, capsys):
    gen = _generator()
    cache = open_mask_cache(voc_run["cache"])
    assert cache.config_hash == gen.config_hash
    assert cache.ids() == ["2007_000033", "2007_000042"]
    for i in cache.ids():
        img = np.asarray(Image.open(voc_run["root"] / "JPEGImages" / f"{i}.jpg").convert("RGB"))
        want = gen.generate(img)
        got = cache.get(i)
        np.testing.assert_array_equal(got.masks, want.masks)
        np.testing.assert_array_equal(got.level, want.level)
    rc = main(["masks", *voc_run["ds_args"], "--cache-dir", str(voc_run["cache"]), *_sam_args()])
    assert rc == 0 and "0 generated, 2 already cached" in capsys.readouterr().out
    # another mask configuration into the same cache is refused before any work
    rc = main(["masks", *voc_run["ds_args"], "--cache-dir", str(voc_run["cache"]), *_sam_args(),
               "--sam-opt", "points_per_side=2"])  # fmt: skip
    assert rc == 1 and "another configuration" in capsys.readouterr().err


def test_segment_outputs_match_library(voc_run):
    from tusss.clip.model import DBAClip
    from tusss.pipeline import OVSegmenter

    out, cache = voc_run["out"], open_mask_cache(voc_run["cache"])
    torch.manual_seed(0)
    clip = DBAClip.from_pretrained("tusss-tiny", weights=None, target_size=64, window_sizes=(32,), stride_divisor=1)
    seg = OVSegmenter(None, clip, vocabulary="voc21")
    for i, (_, _) in voc_run["truth"]["val"].items():
        img = np.asarray(Image.open(voc_run["root"] / "JPEGImages" / f"{i}.jpg").convert("RGB"))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = seg.segment(img, cache.get(i))
        lab = Image.open(out / "labels" / f"{i}.png")
        assert lab.mode == "P"
        np.testing.assert_array_equal(read_label(out / "labels" / f"{i}.png"), res.label_map)
        ov = np.asarray(Image.open(out / "overlays" / f"{i}.png"))
        assert ov.shape == (20, 28, 3) and ov.dtype == np.uint8
        js = json.loads((out / "masks" / f"{i}.json").read_text())
        assert js["id"] == i and js["num_masks"] == len(res.labels) and js["class_names"][0] == "background"
        assert [m["label"] for m in js["masks"]] == res.labels.tolist()
        np.testing.assert_allclose([m["scores"] for m in js["masks"]], res.scores.reshape(-1, 21), rtol=1e-5)


def _naive_miou(preds, gts, K):
    p = np.concatenate([x.ravel() for x in preds]).astype(int)
    g = np.concatenate([x.ravel() for x in gts]).astype(int)
    keep = g != 255
    p, g = p[keep], g[keep]
    ious = [((p == c) & (g == c)).sum() / ((p == c) | (g == c)).sum() for c in range(K) if (g == c).any()]
    return float(np.mean(ious))


def test_eval_from_pngs_and_from_json_plus_masks(voc_run, capsys):
    from tusss.labels import vote_fractions, vote_labels
    from tusss.metrics import mask_f1

    out, tmp = voc_run["out"], voc_run["tmp"]
    mfile = tmp / "metrics.json"
    rc = main(["eval", *voc_run["ds_args"], "--pred", str(out), "--mask-cache", str(voc_run["cache"]),
               "--out", str(mfile), "--no-progress"])  # fmt: skip
    assert rc == 0 and "mIoU" in capsys.readouterr().out
    res = json.loads(mfile.read_text())
    ids = sorted(voc_run["truth"]["val"])
    gts = [voc_run["truth"]["val"][i][1] for i in ids]
    preds = [read_label(out / "labels" / f"{i}.png") for i in ids]
    assert res["mIoU"] == pytest.approx(_naive_miou(preds, gts, 21))
    cache = open_mask_cache(voc_run["cache"])
    pl, vl = [], []
    for i, g in zip(ids, gts):
        ms = cache.get(i)
        ms = ms.subset(np.flatnonzero(ms.area > 0))
        js = json.loads((out / "masks" / f"{i}.json").read_text())
        pl += [m["label"] for m in js["masks"]]
        vl += vote_labels(vote_fractions(ms.masks, g, 21)).tolist()
    want = mask_f1(np.array(pl), np.array(vl), 21)
    assert res["mask"]["num_masks"] == len(pl) > 10
    for k in ("F1", "accuracy", "precision", "recall"):
        w = getattr(want, k.lower())
        assert (res["mask"][k] is None and np.isnan(w)) or res["mask"][k] == pytest.approx(w)
    # without label PNGs the maps are re-painted from the JSONs + cached masks: same mIoU
    only_json = tmp / "only_json"
    shutil.copytree(out / "masks", only_json / "masks")
    mfile2 = tmp / "metrics2.json"
    assert main(["eval", *voc_run["ds_args"], "--pred", str(only_json), "--mask-cache", str(voc_run["cache"]),
                 "--out", str(mfile2), "--no-progress"]) == 0  # fmt: skip
    assert json.loads(mfile2.read_text())["mIoU"] == pytest.approx(res["mIoU"])
    # label PNGs only: mIoU without --mask-cache; with it the missing per-mask JSON is an error
    only_png = tmp / "only_png"
    shutil.copytree(out / "labels", only_png / "labels")
    assert main(["eval", *voc_run["ds_args"], "--pred", str(only_png), "--no-progress"]) == 0
    assert f"{100 * res['mIoU']:.2f}" in capsys.readouterr().out
    rc = main(["eval", *voc_run["ds_args"], "--pred", str(only_png), "--mask-cache", str(voc_run["cache"])])
    assert rc == 1 and "per-mask predictions" in capsys.readouterr().err


def test_segment_image_files_with_custom_classes(tmp_path):
    make_image_folder(tmp_path / "imgs", n=1, hw=(20, 24))
    out = tmp_path / "out"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rc = main(["segment", str(tmp_path / "imgs" / "img0.png"), "--classes", "cat,dog", "--out", str(out),
                   "--templates", "a photo of a {}.", *_sam_args(), *_clip_args()])  # fmt: skip
    assert rc == 0
    js = json.loads((out / "masks" / "img0.json").read_text())
    assert js["class_names"] == ["background", "cat", "dog"] and js["bg_mode"] == "explicit"
    lab = read_label(out / "labels" / "img0.png")
    assert lab.shape == (20, 24) and lab.max() <= 2


def test_cli_bad_inputs(tmp_path, capsys):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8 definitely not a jpeg")
    rc = main(["segment", str(bad), "--vocabulary", "voc21", "--out", str(tmp_path / "o"), *_sam_args(),
               *_clip_args()])  # fmt: skip
    assert rc == 1 and "broken.jpg" in capsys.readouterr().err
    rc = main(["segment", str(bad), "--vocabulary", "voc99", "--out", str(tmp_path / "o")])
    assert rc == 1 and "unknown vocabulary 'voc99'" in capsys.readouterr().err
    rc = main(["eval", "--dataset", "voc", "--root", str(tmp_path / "no_voc"), "--pred", str(tmp_path)])
    assert rc == 1 and "no_voc" in capsys.readouterr().err
    rc = main(["masks", "--dataset", "cityscapes", "--root", str(tmp_path / "no_cs"), "--cache-dir",
               str(tmp_path / "c")])  # fmt: skip
    assert rc == 1 and "no_cs" in capsys.readouterr().err
    rc = main(["segment", str(tmp_path / "missing.png"), "--classes", "a", "--out", str(tmp_path / "o")])
    assert rc == 1 and "missing.png" in capsys.readouterr().err
    # masks --keep-going: unreadable images are reported, the run goes on and exits 1
    (tmp_path / "imgs").mkdir()
    shutil.copy(bad, tmp_path / "imgs" / "broken.png")
    rc = main(["masks", str(tmp_path / "imgs"), "--cache-dir", str(tmp_path / "c2"), "--keep-going", *_sam_args()])
    cap = capsys.readouterr()
    assert rc == 1 and "1 failed" in cap.out and "broken.png" in cap.err
    with pytest.raises(SystemExit) as e:
        main(["frobnicate"])
    assert e.value.code == 2
    assert "segment" in build_parser().format_help()


def test_segment_batch_with_a_corrupt_image_writes_every_other_image(tmp_path, capsys):
    imgs = make_image_folder(tmp_path / "imgs", n=3, hw=(20, 24))
    good = tmp_path / "good"
    good.mkdir()
    for i in imgs:
        shutil.copy(tmp_path / "imgs" / f"{i}.png", good / f"{i}.png")
    # a truncated PNG (sorted between img0 and img1) and a file that is no image at all (sorted first)
    data = (tmp_path / "imgs" / "img1.png").read_bytes()
    (tmp_path / "imgs" / "img0b.png").write_bytes(data[: len(data) // 2])
    (tmp_path / "imgs" / "aaa.png").write_bytes(b"not an image")
    args = ["--vocabulary", "voc21", *_sam_args(), *_clip_args()]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rc = main(["segment", str(tmp_path / "imgs"), "--out", str(tmp_path / "o"), *args])
        cap = capsys.readouterr()
        assert main(["segment", str(good), "--out", str(tmp_path / "ref"), *args]) == 0
    assert rc == 1  # some image failed
    for bad in ("aaa", "img0b"):  # reported (naming the file), listed at the end, nothing written for it
        assert f"{bad}.png" in cap.err and f"failed {bad}" in cap.err
        assert not any((tmp_path / "o" / d / f"{bad}{ext}").exists()
                       for d, ext in (("labels", ".png"), ("overlays", ".png"), ("masks", ".json")))  # fmt: skip
    assert "3 image(s) written" in cap.out and "2 failed" in cap.out
    for i in imgs:  # every other image written, exactly as in a batch without the bad files
        for d, ext in (("labels", ".png"), ("overlays", ".png")):
            np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "o" / d / f"{i}{ext}")),
                                          np.asarray(Image.open(tmp_path / "ref" / d / f"{i}{ext}")))  # fmt: skip
        js, ref = (json.loads((tmp_path / r / "masks" / f"{i}.json").read_text()) for r in ("o", "ref"))
        assert {k: v for k, v in js.items() if k != "image"} == {k: v for k, v in ref.items() if k != "image"}


def test_console_script_entry_point():
    import subprocess
    import sys
    from pathlib import Path

    exe = Path(sys.executable).with_name("tusss")
    cmd = [str(exe)] if exe.is_file() else [sys.executable, "-m", "tusss.cli"]
    r = subprocess.run([*cmd, "--version"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.startswith("tusss ")
    r = subprocess.run([*cmd, "eval", "--help"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "--mask-cache" in r.stdout


# Independent list of the commands the README documents, with options each must accept (other modules may add
# more commands; these must stay).
DOCUMENTED = {
    "masks": ["--cache-dir", "--sam", "--checkpoint", "--keep-going", "--overwrite"],
    "segment": ["--out", "--vocabulary", "--classes", "--classes-file", "--mask-cache", "--weights", "--clip"],
    "eval": ["--dataset", "--root", "--pred", "--mask-cache", "--out"],
    "embed": ["--dataset", "--mask-cache", "--out", "--clip", "--weights", "--dtype"],
    "fit": ["--store", "--supervision", "--out", "--labeled-ids", "--k"],
    "predict": ["--model", "--store", "--mask-cache", "--out"],
    "pseudo-label": ["--model", "--store", "--mask-cache", "--out", "--no-restrict"],
}


def _subcommands(parser) -> dict:
    import argparse

    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(sub.choices)


def test_documented_subcommands_registered_and_their_help_runs(capsys):
    cmds = _subcommands(build_parser())
    missing = sorted(set(DOCUMENTED) - set(cmds))
    assert not missing, f"subcommands not registered: {missing}"
    for name in cmds:  # every registered command's --help runs and exits 0
        with pytest.raises(SystemExit) as e:
            main([name, "--help"])
        assert e.value.code == 0, name
        out = capsys.readouterr().out
        assert out.startswith(f"usage: tusss {name}"), name
        for opt in DOCUMENTED.get(name, []):
            assert opt in out, f"tusss {name} --help does not list {opt}"
    # the command runs the handler its module registered (not another command's)
    import tusss.cli.glcc
    import tusss.cli.ov

    assert cmds["segment"].get_default("func") is tusss.cli.ov.cmd_segment
    assert cmds["pseudo-label"].get_default("func") is tusss.cli.glcc.cmd_pseudo_label
