"""On-disk mask cache: one compressed ``.npz`` per image, keyed by the generator's config hash.

Layout: ``<root>/<id component>/.../<last component>.npz``; each file holds ``MaskSet.to_dict()`` plus
``__config_hash__``, ``__tusss_version__``, ``__image_id__`` and ``__format__``. Image ids may contain
``/`` (e.g. Cityscapes ``city/name``): every component is percent-encoded (``%``, path separators,
control characters, a leading ``.`` ...), so any id maps to one file inside ``root`` and back.
Writes go through :mod:`tusss.persist` (hidden temporary file in the same folder, fsync, ``os.replace``):
an interrupted run leaves either no file or the previous one, never a half-written one.
"""

from __future__ import annotations

import os
import warnings
import zipfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, unquote

import numpy as np

from tusss.errors import CorruptFileError, InputError
from tusss.masks.maskset import MaskSet
from tusss.persist import atomic_save_npz, atomic_write_json, corrupt, read_json

if TYPE_CHECKING:  # pragma: no cover
    from tusss.masks.generator import MaskGenerator

CACHE_FORMAT = 1
_SUFFIX = ".npz"
_META = ("__config_hash__", "__tusss_version__", "__image_id__", "__format__")
_FIX = "delete it to regenerate it (re-run `tusss masks`)"
_SAFE = "-_.,=+@~()[]{}!$&'"  # left as is in file names (plus ASCII letters and digits)


class CacheMismatchError(InputError):
    """A cache file was written with another mask configuration / model than the one in use."""


def _tusss_version() -> str:
    import tusss

    return str(tusss.__version__)


def _encode_component(c: str) -> str:
    e = quote(c, safe=_SAFE)
    if e.startswith("."):  # no hidden files, no '.' / '..' traversal; temp files start with '.'
        e = "%2E" + e[1:]
    return e


class MaskCache:
    """Directory of MaskSets, one file per image id, all made with one config hash.

    Args:
        root: cache directory (created on first write).
        config_hash: :attr:`MaskGenerator.config_hash` of the generator whose masks are stored.
        overwrite: if True, files written with another config hash are treated as missing (and replaced
            by :meth:`put`) instead of raising :class:`CacheMismatchError`.
    """

    def __init__(self, root: str | os.PathLike, config_hash: str, overwrite: bool = False) -> None:
        if not isinstance(config_hash, str) or not config_hash:
            raise InputError(f"config_hash must be a non-empty string, got {config_hash!r}")
        self.root = Path(root).expanduser()
        if self.root.exists() and not self.root.is_dir():
            raise InputError(f"mask cache root {self.root} exists and is not a directory")
        self.config_hash = config_hash
        self.overwrite = overwrite

    @classmethod
    def for_generator(cls, root: str | os.PathLike, generator: MaskGenerator, overwrite: bool = False) -> MaskCache:
        """A cache keyed by ``generator.config_hash``."""
        return cls(root, generator.config_hash, overwrite=overwrite)

    # ------------------------------------------------------------------ paths
    def path(self, image_id: str) -> Path:
        """File that stores ``image_id`` (``/`` in the id gives sub-folders)."""
        if not isinstance(image_id, str) or not image_id:
            raise InputError(f"image id must be a non-empty string, got {image_id!r}")
        parts = image_id.split("/")
        if any(p == "" for p in parts):
            raise InputError(f"image id {image_id!r} has an empty path component (leading, trailing or '//')")
        enc = [_encode_component(p) for p in parts]
        enc[-1] += _SUFFIX
        return self.root.joinpath(*enc)

    def ids(self) -> list[str]:
        """Sorted ids of all files in the cache (whatever their config hash)."""
        if not self.root.is_dir():
            return []
        out = []
        for dirpath, dirnames, filenames in os.walk(self.root):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            rel = Path(dirpath).relative_to(self.root).parts
            for f in filenames:
                if f.startswith(".") or not f.endswith(_SUFFIX):
                    continue
                comps = [*rel, f[: -len(_SUFFIX)]]
                out.append("/".join(unquote(c) for c in comps))
        return sorted(out)

    def __iter__(self) -> Iterator[str]:
        return iter(self.ids())

    def __len__(self) -> int:
        return len(self.ids())

    # ------------------------------------------------------------------ read
    def _open(self, path: Path) -> Any:
        if path.stat().st_size == 0:
            raise corrupt(path, "mask cache file is empty (0 bytes)", _FIX)
        try:
            return np.load(path, allow_pickle=False)
        except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
            raise corrupt(path, f"mask cache file is unreadable ({type(e).__name__}: {e})", _FIX) from e

    def _check_hash(self, path: Path, npz: Any) -> bool:
        """True if the file matches; False if it does not and overwrite is on; raise otherwise."""
        try:
            h = str(npz["__config_hash__"])
            fmt = int(npz["__format__"]) if "__format__" in npz.files else CACHE_FORMAT
        except Exception as e:  # KeyError, BadZipFile, zlib.error, bad CRC, EOFError ...
            raise corrupt(path, f"mask cache file has no readable config hash ({type(e).__name__}: {e})",
                          _FIX) from e
        if fmt != CACHE_FORMAT:
            raise corrupt(path, f"mask cache file has format {fmt}, this tusss reads {CACHE_FORMAT}", _FIX)
        if h == self.config_hash:
            return True
        if self.overwrite:
            return False
        raise CacheMismatchError(
            f"mask cache file {path} was written with config hash {h[:12]}... but the generator in use has "
            f"{self.config_hash[:12]}... (other MaskGenConfig, model type or weights). Use another cache "
            "directory for this configuration, or pass overwrite=True to regenerate and replace such files."
        )

    def __contains__(self, image_id: object) -> bool:
        """True iff a file for ``image_id`` exists with this config hash (mismatch raises unless overwrite)."""
        if not isinstance(image_id, str):
            return False
        p = self.path(image_id)
        if not p.is_file():
            return False
        with self._open(p) as npz:
            return self._check_hash(p, npz)

    def get(self, image_id: str) -> MaskSet | None:
        """The stored MaskSet, or None if absent (or, with overwrite, made with another config).

        Raises:
            CacheMismatchError: file made with another config hash (and ``overwrite`` is False).
            CorruptFileError: file truncated / unreadable / missing arrays.
        """
        p = self.path(image_id)
        if not p.is_file():
            return None
        with self._open(p) as npz:
            if not self._check_hash(p, npz):
                return None
            try:
                d = {k: npz[k] for k in npz.files if k not in _META}
                ms = MaskSet.from_dict(d)
            except Exception as e:  # truncated member, bad CRC, missing key, inconsistent shapes
                raise corrupt(p, f"mask cache file is corrupt ({type(e).__name__}: {e})", _FIX) from e
        for k in ("predicted_iou", "stability"):
            if not np.isfinite(np.asarray(getattr(ms, k), np.float64)).all():
                raise corrupt(p, f"mask cache file holds NaN or infinite values in {k!r}", _FIX)
        return ms

    # ------------------------------------------------------------------ write
    def put(self, image_id: str, maskset: MaskSet) -> Path:
        """Store ``maskset`` for ``image_id`` atomically (temp file + ``os.replace``); returns the path.

        An existing file with this config hash is replaced; one with another hash raises
        :class:`CacheMismatchError` unless ``overwrite``.
        """
        if not isinstance(maskset, MaskSet):
            raise InputError(f"put: expected a MaskSet for {image_id!r}, got {type(maskset)}")
        p = self.path(image_id)
        if p.is_file() and not self.overwrite:
            try:
                with self._open(p) as npz:
                    self._check_hash(p, npz)
            except CorruptFileError:
                pass  # a corrupt file may be replaced
        p.parent.mkdir(parents=True, exist_ok=True)
        arrays = dict(maskset.to_dict())
        arrays["__config_hash__"] = np.array(self.config_hash)
        arrays["__tusss_version__"] = np.array(_tusss_version())
        arrays["__image_id__"] = np.array(image_id)
        arrays["__format__"] = np.array(CACHE_FORMAT, np.int64)
        return atomic_save_npz(p, compressed=True, **arrays)


ImageSource = np.ndarray | str | os.PathLike | Callable[[], np.ndarray]


def load_image(source: ImageSource, image_id: str = "") -> np.ndarray:
    """(H, W, 3) uint8 RGB from an array, a callable returning one, or an image file path.

    Files are read with :func:`tusss.io.read_image`, the one image reader.

    Raises:
        InputError: unreadable (:class:`tusss.io.UnreadableImageError`) / missing file (message names it) or a
            bad array.
    """
    from tusss.io import read_image
    from tusss.validate import check_image

    name = f"image {image_id!r}" if image_id else "image"
    if isinstance(source, (str, os.PathLike)):
        return check_image(read_image(source), name)
    if callable(source):
        return check_image(source(), name)
    return check_image(source, name)


def cache_masks(
    generator: MaskGenerator,
    items: Iterable[tuple[str, ImageSource]],
    cache: MaskCache,
    progress: bool = True,
    on_error: str = "raise",
    on_failure: Callable[[str, BaseException], None] | None = None,
) -> dict[str, Any]:
    """Generate and store the masks of every image not yet in ``cache`` (resumable).

    Every file is written atomically, so a run killed at any point (SIGKILL included) and started again
    produces exactly the cache of an uninterrupted run. A cached file that is damaged (truncated, not a
    mask file) counts as missing: its masks are generated again and the file replaced.

    Args:
        generator: the mask generator; its ``config_hash`` must equal ``cache.config_hash``.
        items: ``(image_id, source)`` pairs; source = (H, W, 3) uint8 array, a zero-argument callable that
            returns one (loaded only when needed), or an image file path.
        cache: destination :class:`MaskCache`.
        progress: show a tqdm bar.
        on_error: ``"raise"`` (default: stop at the first unreadable image, naming it) or ``"collect"``
            (go on; failures are returned and reported with a warning).
        on_failure: with ``"collect"``, called as ``on_failure(image_id, exception)`` for each failed image
            (e.g. :meth:`tusss.persist.FailureLog.record`; an exception it raises stops the run).

    Returns:
        ``{"generated": [ids], "skipped": [ids already cached], "failed": {id: message}}``.
    """
    from tusss.persist import DiskFullError, fault_point, is_enospc

    if on_error not in ("raise", "collect"):
        raise InputError(f"on_error must be 'raise' or 'collect', got {on_error!r}")
    if generator.config_hash != cache.config_hash:
        raise CacheMismatchError(
            f"cache {cache.root} is keyed by config hash {cache.config_hash[:12]}... but the generator's is "
            f"{generator.config_hash[:12]}...; build it with MaskCache.for_generator(root, generator)"
        )
    from tqdm.auto import tqdm

    try:
        total = len(items)  # type: ignore[arg-type]
    except TypeError:
        total = None
    out: dict[str, Any] = {"generated": [], "skipped": [], "failed": {}}
    bar = tqdm(items, total=total, disable=not progress, desc="SAM masks", unit="img")
    fault_point("masks")  # test hook: TUSSS_FAULT_KILL_AFTER=0 dies before the first image
    for image_id, source in bar:
        try:
            cached = image_id in cache
        except CorruptFileError:
            cached = False  # damaged file: regenerate and replace it
        if cached:
            out["skipped"].append(image_id)
            continue
        try:
            image = load_image(source, image_id)
            if on_error == "collect":
                masks = generator.generate(image)
        except (DiskFullError, MemoryError, KeyboardInterrupt):
            raise
        except InputError as e:
            if on_error == "raise":
                raise
            _collect(out, image_id, e, on_failure, bar)
            continue
        except Exception as e:
            if on_error == "raise" or is_enospc(e):
                raise
            _collect(out, image_id, e, on_failure, bar)
            continue
        cache.put(image_id, masks if on_error == "collect" else generator.generate(image))
        out["generated"].append(image_id)
        fault_point("masks")
    bar.close()
    if out["failed"]:
        first = next(iter(out["failed"].items()))
        warnings.warn(
            f"cache_masks: {len(out['failed'])} image(s) could not be read and have no masks, e.g. "
            f"{first[0]!r}: {first[1]}",
            stacklevel=2,
        )
    return out


def _collect(out: dict, image_id: str, e: BaseException, on_failure: Any, bar: Any) -> None:
    msg = str(e) if isinstance(e, InputError | CorruptFileError) else f"{type(e).__name__}: {e}"
    out["failed"][image_id] = msg
    bar.set_postfix(failed=len(out["failed"]))
    if on_failure is not None:
        on_failure(image_id, e)


# ---------------------------------------------------------------------------------------------- manifest
MANIFEST = "tusss-masks.json"


MANIFEST_FORMAT = "tusss-mask-cache"
MANIFEST_VERSION = 1
_MAN_FIX = "delete it (`tusss masks` rewrites it; the cached masks are kept)"


def read_manifest(root: str | os.PathLike) -> dict[str, Any] | None:
    """The manifest of the cache at ``root`` (None when there is none).

    Manifests written before the format field existed (no ``format`` / ``version``) are read as version 1.

    Raises:
        CorruptFileError: empty, truncated / not JSON, another format or version, or no config hash; the message
            names the file.
    """
    p = Path(root) / MANIFEST
    if not p.exists():
        return None
    man = read_json(p, what="mask cache manifest", fix=_MAN_FIX)
    if not isinstance(man, dict):
        raise corrupt(p, "mask cache manifest is not a JSON object", _MAN_FIX)
    if man.get("format", MANIFEST_FORMAT) != MANIFEST_FORMAT:
        raise corrupt(p, f"is not a mask cache manifest (format {man.get('format')!r})", _MAN_FIX)
    if man.get("version", MANIFEST_VERSION) != MANIFEST_VERSION:
        raise corrupt(p, f"mask cache manifest has version {man.get('version')!r}, this tusss reads "
                      f"{MANIFEST_VERSION}", _MAN_FIX)
    if not isinstance(man.get("config_hash"), str) or not man["config_hash"]:
        raise corrupt(p, "mask cache manifest has no config_hash", _MAN_FIX)
    return man


def check_manifest(root: str | os.PathLike, generator: MaskGenerator, overwrite: bool = False) -> None:
    """Refuse a mask cache whose manifest names another mask configuration than ``generator``'s.

    Raises:
        InputError: the manifest's config hash differs (unless ``overwrite``).
        CorruptFileError: the manifest is unreadable (see :func:`read_manifest`).
    """
    if overwrite:
        return
    man = read_manifest(root)
    if man is None:
        return
    old = man["config_hash"]
    if old != generator.config_hash:
        raise InputError(
            f"mask cache {str(root)!r} holds masks of another configuration (hash {str(old)[:12]}..., "
            f"this run {generator.config_hash[:12]}...); use another --cache-dir or --overwrite"
        )


def write_manifest(root: str | os.PathLike, generator: MaskGenerator) -> None:
    """Record the mask configuration of a cache in ``root/tusss-masks.json`` (format, version, config hash,
    model type, weights id, MaskGenConfig) atomically, so that :func:`open_mask_cache` opens the cache without
    building SAM. A damaged manifest is replaced."""
    r = Path(root)
    r.mkdir(parents=True, exist_ok=True)
    man = {"format": MANIFEST_FORMAT, "version": MANIFEST_VERSION, "config_hash": generator.config_hash,
           "model_type": generator.model_type, "weights_id": generator.weights_id,
           "config": generator.config.to_dict()}  # fmt: skip
    try:
        old = read_manifest(r)
    except CorruptFileError:
        old = None
    if old is not None and old.get("config_hash") == man["config_hash"]:
        return
    atomic_write_json(r / MANIFEST, man, indent=1)


def open_mask_cache(root: str | os.PathLike) -> MaskCache:
    """Open an existing mask cache without building SAM: the config hash comes from the manifest written by
    ``tusss masks`` / ``tusss segment`` (:func:`write_manifest`), else from the cached files themselves (all
    readable ones must agree; unreadable files are left to the reader of each item, which reports them).

    Raises:
        MissingFileError: ``root`` does not exist. InputError: no readable masks, or several configurations.
        CorruptFileError: unreadable manifest.
    """
    r = Path(root)
    if not r.is_dir():
        from tusss.io import MissingFileError

        raise MissingFileError(f"mask cache {str(r)!r} does not exist")
    man = read_manifest(r)
    if man is not None:
        return MaskCache(r, man["config_hash"])
    probe = MaskCache(r, "probe")
    hashes = set()
    for i in probe.ids():
        p = probe.path(i)
        try:
            with probe._open(p) as z:
                hashes.add(str(z["__config_hash__"]))
        except Exception:  # a damaged file: reported by MaskCache.get when its image is used
            continue
    if not hashes:
        raise InputError(f"mask cache {str(r)!r} holds no readable masks (run `tusss masks`)")
    if len(hashes) > 1:
        raise InputError(f"mask cache {str(r)!r} mixes {len(hashes)} mask configurations")
    return MaskCache(r, hashes.pop())
