"""Dataset readers on tiny on-disk datasets in the standard layouts, plus image/label PNG I/O."""

from __future__ import annotations

import numpy as np
import pytest
from _tiny_datasets import make_cityscapes, make_coco_object, make_coco_stuff, make_image_folder, make_voc
from PIL import Image

from tusss.data import get_dataset, read_ids_file
from tusss.errors import CorruptFileError, InputError
from tusss.io import MissingFileError, overlay, read_image, read_label, voc_palette, write_label_png


def _pil_rgb(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def _naive_classes(lab: np.ndarray, K: int, has_bg: bool) -> list[int]:
    return sorted(int(c) for c in set(lab.ravel().tolist()) if c < K and not (has_bg and c == 0))


@pytest.fixture(scope="module")
def voc(tmp_path_factory):
    root = tmp_path_factory.mktemp("voc") / "VOCdevkit" / "VOC2012"
    truth = make_voc(root, {"train": ["2007_000032", "2007_000039"], "val": ["2007_000033", "2008_000002"],
                            "train_aug": ["2007_000032", "2010_000001", "2011_000002"], "test": ["2008_000005"]})
    return root, truth


def test_voc_reads_images_labels_and_classes(voc):
    root, truth = voc
    # the VOCdevkit parent is accepted too
    for r in (root, root.parent):
        ds = get_dataset("voc", r, "val")
        assert ds.ids == ["2007_000033", "2008_000002"] and len(ds) == 2
        assert ds.num_classes == 21 and ds.class_names[0] == "background" and ds.class_names[20] == "tvmonitor"
        for i in ds.ids:
            img = ds.image(i)
            assert img.dtype == np.uint8 and img.shape == (20, 28, 3)
            np.testing.assert_array_equal(img, _pil_rgb(root / "JPEGImages" / f"{i}.jpg"))
            np.testing.assert_array_equal(ds.label(i), truth["val"][i][1])
            assert ds.image_classes(i).tolist() == _naive_classes(truth["val"][i][1], 21, True)
            assert (ds.image_classes(i, fg_index=True) + 1).tolist() == ds.image_classes(i).tolist()
        m = ds.image_class_matrix()
        assert m.shape == (2, 21) and not m[:, 0].any()


def test_voc_train_aug_uses_sbd_labels_and_test_has_none(voc):
    root, truth = voc
    ds = get_dataset("VOC2012", root, "train_aug")
    assert ds.ids == ["2007_000032", "2010_000001", "2011_000002"]
    for i in ds.ids:
        np.testing.assert_array_equal(ds.label(i), truth["train_aug"][i][1])
    te = get_dataset("voc", root, "test")
    assert te.label("2008_000005") is None and te.image_classes("2008_000005") is None
    assert te.image("2008_000005").shape == (20, 28, 3)


def test_voc20_maps_background_to_ignore_and_shifts(voc):
    root, truth = voc
    ds = get_dataset("voc20", root, "val")
    assert ds.num_classes == 20 and ds.class_names[0] == "aeroplane"
    for i in ds.ids:
        raw = truth["val"][i][1]
        want = np.where((raw == 0) | (raw == 255), 255, raw.astype(int) - 1).astype(np.uint8)
        np.testing.assert_array_equal(ds.label(i), want)
        assert ds.image_classes(i).tolist() == sorted({int(c) - 1 for c in raw.ravel() if 0 < c < 255})
        assert ds.image_classes(i, fg_index=True).tolist() == ds.image_classes(i).tolist()


def test_coco_object_and_stuff(tmp_path):
    t_obj = make_coco_object(tmp_path / "obj", mask_dir="third_party/masks")
    ds = get_dataset("coco-object", tmp_path / "obj", "val2017")
    assert ds.num_classes == 81 and ds.class_names[1] == "person" and ds.class_names[80] == "toothbrush"
    assert ds.ids == sorted(t_obj["val"])
    for i in ds.ids:
        np.testing.assert_array_equal(ds.label(i), t_obj["val"][i][1])
        np.testing.assert_array_equal(ds.image(i), _pil_rgb(tmp_path / "obj" / "images" / "val2017" / f"{i}.jpg"))
        assert ds.image_classes(i).tolist() == _naive_classes(t_obj["val"][i][1], 81, True)
    t_st = make_coco_stuff(tmp_path / "stuff")
    ds = get_dataset("coco_stuff", tmp_path / "stuff", "train")
    assert ds.num_classes == 171 and ds.class_names[80] == "banner" and ds.class_names[170] == "wood"
    assert ds.ids == sorted(t_st["train"])
    for i in ds.ids:
        np.testing.assert_array_equal(ds.label(i), t_st["train"][i][1])
        assert ds.image_classes(i).tolist() == _naive_classes(t_st["train"][i][1], 171, False)


def test_cityscapes_and_ids_file(tmp_path):
    truth = make_cityscapes(tmp_path / "cs")
    ds = get_dataset("cityscapes", tmp_path / "cs", "val")
    assert ds.ids == sorted(truth["val"]) and ds.num_classes == 19
    for i in ds.ids:
        img, lab = truth["val"][i]
        np.testing.assert_array_equal(ds.image(i), img)  # PNG: lossless
        np.testing.assert_array_equal(ds.label(i), lab)
    lst = tmp_path / "subset.txt"
    lst.write_text("frankfurt_000001_000538\n\n# comment\nlindau_000001_000019_leftImg8bit.png\n")
    sub = get_dataset("cs", tmp_path / "cs", "val", ids_file=lst)
    assert sub.ids == ["frankfurt_000001_000538", "lindau_000001_000019"]
    with pytest.raises(InputError, match="not in cityscapes"):
        sub.image("frankfurt_000000_000294")


def test_image_folder(tmp_path):
    imgs = make_image_folder(tmp_path / "f", n=3)
    ds = get_dataset("folder", tmp_path / "f")
    assert ds.ids == ["img0", "img1", "img2"]
    np.testing.assert_array_equal(ds.image("img1"), imgs["img1"])
    assert ds.label("img1") is None


def test_missing_root_list_and_image(tmp_path, voc):
    root, _ = voc
    with pytest.raises(MissingFileError, match="nowhere"):
        get_dataset("voc", tmp_path / "nowhere", "val")
    with pytest.raises(FileNotFoundError, match=r"train_aug_x\.txt"):
        get_dataset("voc", root, "train_aug_x")
    with pytest.raises(InputError, match="unknown dataset 'pascal'"):
        get_dataset("pascal", root, "val")
    with pytest.raises(InputError, match="nowhere"):
        get_dataset("cityscapes", tmp_path / "nowhere", "val")
    with pytest.raises(InputError, match="split"):
        get_dataset("coco_stuff", tmp_path, "minival")
    # an id listed but its image missing
    lst = tmp_path / "ids.txt"
    lst.write_text("2007_000033\n1999_000001\n")
    ds = get_dataset("voc", root, "val", ids_file=lst)
    with pytest.raises(MissingFileError, match=r"1999_000001\.jpg"):
        ds.image("1999_000001")
    with pytest.raises(MissingFileError, match="1999_000001"):
        ds.label("1999_000001")


def test_corrupt_image_and_bad_label_name_the_file(tmp_path):
    root = tmp_path / "VOC2012"
    make_voc(root, {"val": ["a", "b"]})
    (root / "JPEGImages" / "a.jpg").write_bytes(b"not a jpeg at all")
    ds = get_dataset("voc", root, "val")
    with pytest.raises(CorruptFileError, match=r"a\.jpg"):
        ds.image("a")
    # truncated JPEG
    data = (root / "JPEGImages" / "b.jpg").read_bytes()
    (root / "JPEGImages" / "b.jpg").write_bytes(data[: len(data) // 3])
    with pytest.raises(CorruptFileError, match=r"b\.jpg"):
        ds.image("b")
    bad = np.zeros((20, 28), np.uint8)
    bad[3, 4] = 30
    write_label_png(root / "SegmentationClass" / "a.png", bad)
    with pytest.raises(CorruptFileError, match=r"a\.png.*30"):
        ds.label("a")


def test_label_png_roundtrip_rgb_labels_and_overlay(tmp_path):
    rng = np.random.default_rng(0)
    lab = rng.integers(0, 21, (7, 9)).astype(np.uint8)
    lab[0, 0] = 255
    p = write_label_png(tmp_path / "x" / "l.png", lab)
    with Image.open(p) as im:
        assert im.mode == "P"
        assert np.asarray(im.getpalette()[:6]).tolist() == [0, 0, 0, 128, 0, 0]
    np.testing.assert_array_equal(read_label(p), lab)
    # an RGB-coloured label (palette colours) maps back to indices
    Image.fromarray(voc_palette()[lab]).save(tmp_path / "rgb.png")
    np.testing.assert_array_equal(read_label(tmp_path / "rgb.png"), lab)
    img = rng.integers(0, 256, (7, 9, 3)).astype(np.uint8)
    got = overlay(img, lab, alpha=0.25)
    want = np.rint(0.75 * img + 0.25 * voc_palette()[lab].astype(float))
    want[0, 0] = img[0, 0]
    np.testing.assert_array_equal(got, want.astype(np.uint8))
    with pytest.raises(InputError, match="size"):
        overlay(img, lab[:5])
    with pytest.raises(InputError, match="0..255"):
        write_label_png(tmp_path / "y.png", np.full((2, 2), 300))


def test_read_image_converts_modes(tmp_path):
    g = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    Image.fromarray(g, mode="L").save(tmp_path / "g.png")
    np.testing.assert_array_equal(read_image(tmp_path / "g.png"), np.repeat(g[:, :, None], 3, 2))
    rgba = np.random.default_rng(1).integers(0, 256, (3, 4, 4)).astype(np.uint8)
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "a.png")
    np.testing.assert_array_equal(read_image(tmp_path / "a.png"), rgba[..., :3])
    with pytest.raises(MissingFileError, match="nope.png"):
        read_image(tmp_path / "nope.png")
    with pytest.raises(InputError, match="not a file"):
        read_image(tmp_path)


def test_read_ids_file_formats(tmp_path):
    p = tmp_path / "l.txt"
    p.write_text("2007_000032\n/JPEGImages/2007_000039.jpg /SegmentationClassAug/2007_000039.png\n"
                 "train2017/000000000139.jpg masks/train2017/000000000139.png\n  \n# note\n")
    assert read_ids_file(p) == ["2007_000032", "2007_000039", "000000000139"]
    (tmp_path / "e.txt").write_text("\n")
    with pytest.raises(InputError, match="empty"):
        read_ids_file(tmp_path / "e.txt")
    with pytest.raises(MissingFileError, match="nope"):
        read_ids_file(tmp_path / "nope.txt")


def test_read_image_16bit(tmp_path):
    a = (np.arange(12, dtype=np.uint16).reshape(3, 4) * 5000).astype(np.uint16)
    Image.fromarray(a).save(tmp_path / "d.png")
    np.testing.assert_array_equal(read_image(tmp_path / "d.png")[..., 0], (a // 257).astype(np.uint8))


def test_vocabularies_and_datasets_share_one_class_table():
    # every text vocabulary labels its columns with the class names of the dataset it is evaluated on
    from tusss.clip.vocabularies import get_vocabulary
    from tusss.data.datasets import DATASETS

    pairs = {"voc": "voc", "voc21": "voc", "voc20": "voc20", "coco-object": "coco_object",
             "coco-stuff": "coco_stuff", "cityscapes": "cityscapes"}  # fmt: skip
    for vname, dname in pairs.items():
        v, ds_cls = get_vocabulary(vname), DATASETS[dname]
        assert v.class_names == tuple(ds_cls.class_names), (vname, dname)
        assert v.num_classes == len(ds_cls.class_names)
    # display names, not prompt spellings (independent spot checks of the published class lists)
    assert get_vocabulary("coco-stuff").class_names[9] == "traffic light"
    assert DATASETS["coco_stuff"].class_names[80:83] == ("banner", "blanket", "branch")
    assert DATASETS["cityscapes"].class_names[6:8] == ("traffic light", "traffic sign")
