"""Without Ray installed: tusss.distributed imports, and --ray fails with one error naming the extra to install
(simulated by hiding the ``ray`` module). Runs whether or not Ray is installed; no cluster is started."""

from __future__ import annotations

import sys

import pytest

from tusss.cli import main


@pytest.fixture
def no_ray(monkeypatch):
    for name in [m for m in sys.modules if m == "ray" or m.startswith("ray.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError


def test_distributed_imports_and_names_the_extra_without_ray(no_ray):
    import tusss.distributed as d

    with pytest.raises(d.RayUnavailableError, match=r"tusss\[ray\]"):
        d.require_ray()
    with pytest.raises(d.RayUnavailableError):
        d.init_ray()


def test_embed_ray_without_ray_is_one_clear_error(no_ray, tmp_path, capsys):
    from _tiny_datasets import make_voc

    from tusss.masks.cache import MaskCache
    from tusss.masks.maskset import MaskSet

    make_voc(tmp_path / "VOC2012", {"val": ["a"]})
    MaskCache(tmp_path / "cache", "h").put("a", MaskSet.empty((20, 28)))
    rc = main(["embed", "--dataset", "voc", "--root", str(tmp_path / "VOC2012"), "--split", "val", "--mask-cache",
               str(tmp_path / "cache"), "--out", str(tmp_path / "store"), "--clip", "tusss-tiny", "--weights",
               "random", "--ray"])
    assert rc == 1
    assert "pip install 'tusss[ray]'" in capsys.readouterr().err
    assert not (tmp_path / "store").exists()  # nothing half-written
