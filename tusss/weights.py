"""Where checkpoints live and how a missing one is reported.

Search order for a checkpoint called ``filename``:
1. an explicit path given by the caller (must exist);
2. ``$TUSSS_HOME/<subdir>/<filename>`` (default ``~/.cache/tusss``);
3. a download from ``url`` into that cache directory, unless ``TUSSS_OFFLINE=1`` or the download fails.
A miss raises :class:`tusss.errors.WeightsNotFoundError` naming the file, where to get it and where to
put it.

The one grammar of a *weight source* (``--checkpoint`` / ``--weights`` of every command, engine manifests) is
:func:`parse_weight_source`: ``official`` | ``openai`` | ``random`` | ``none`` | ``PATH``.
"""

from __future__ import annotations

import os
import shutil
import urllib.request
from pathlib import Path
from typing import Any

from tusss.errors import InputError, WeightsNotFoundError

WEIGHT_SOURCE_HELP = "'official' (alias 'openai'), 'random' (alias 'none': random weights) or a checkpoint path"
_OFFICIAL = ("official", "openai")
_RANDOM = ("random", "none")


def parse_weight_source(spec: str | os.PathLike | None, *, official: str = "official") -> str | None:
    """Parse one weight source: ``official`` | ``openai`` | ``random`` | ``none`` | ``PATH``.

    Keywords are case-insensitive. ``official`` and ``openai`` are synonyms (the published weights of the
    model: SAM's official checkpoint, OpenAI's CLIP weights) and map to ``official``, the spelling the
    loader expects (``"official"`` for :meth:`tusss.masks.MaskGenerator.from_pretrained`, ``"openai"`` for
    :meth:`tusss.clip.DBAClip.from_pretrained`). ``random`` / ``none`` / ``None`` mean random weights and map
    to ``None``. Anything else is a checkpoint path, returned as given (the loader checks it exists).

    Raises:
        InputError: an empty string.
    """
    if spec is None:
        return None
    s = os.fspath(spec)
    if not s.strip():
        raise InputError(f"empty weight source: use {WEIGHT_SOURCE_HELP}")
    key = s.strip().lower()
    if key in _RANDOM:
        return None
    if key in _OFFICIAL:
        return official
    return s


def canonical_weight_source(spec: str | os.PathLike | None) -> str:
    """The recorded spelling of a weight source: ``"random"``, ``"official"`` or the path (see
    :func:`parse_weight_source`)."""
    v = parse_weight_source(spec)
    return "random" if v is None else v


def state_dict_hash(*modules: Any) -> str:
    """Hex sha256 over the names, shapes, dtypes and bytes of the modules' parameters and buffers.

    The one state-dict hash of tusss (engine manifests' ``weights_sha256``, :attr:`DBAClip.weights_id`, the
    ``random:`` weights id of SAM in mask-cache keys). It identifies the *weights* independently of file
    formats: a checkpoint loaded into a model gives the hash of the model it was saved from.

    Args:
        modules: ``torch.nn.Module`` objects, hashed in the order given (keys sorted within each).
    """
    import hashlib

    import torch

    h = hashlib.sha256()
    for mod in modules:
        for k, v in sorted(mod.state_dict().items()):
            t = v.detach().cpu().contiguous()
            h.update(f"{k}:{tuple(t.shape)}:{t.dtype}".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def tusss_home() -> Path:
    """Root of the tusss cache (``$TUSSS_HOME`` or ``~/.cache/tusss``)."""
    return Path(os.environ.get("TUSSS_HOME", Path.home() / ".cache" / "tusss")).expanduser()


def resolve_checkpoint(
    filename: str,
    *,
    path: str | os.PathLike | None = None,
    url: str | None = None,
    subdir: str = "",
    what: str = "checkpoint",
) -> Path:
    """Return the local path of a checkpoint, downloading it once when allowed.

    Args:
        filename: canonical file name (e.g. ``sam_vit_h_4b8939.pth``).
        path: explicit file path given by the user; it must exist.
        url: official download address, tried when the file is not cached and ``TUSSS_OFFLINE`` is unset.
        subdir: sub-folder of :func:`tusss_home` that caches this kind of file.
        what: human description used in error messages (e.g. ``"SAM ViT-H checkpoint"``).
    """
    if path is not None:
        p = Path(path).expanduser()
        if p.is_file():
            return p
        raise WeightsNotFoundError(
            f"{what} not found at {p} (expected the file {filename}"
            + (f", official download: {url}" if url else "")
            + ")"
        )
    cache_dir = tusss_home() / subdir
    target = cache_dir / filename
    if target.is_file():
        return target
    offline = os.environ.get("TUSSS_OFFLINE", "0") not in ("0", "", "false")
    err = None
    if url and not offline:
        try:
            from tusss.persist import atomic_write

            # atomic (tusss.persist): a download cut off, killed or out of disk space leaves no file at target
            with atomic_write(target, "wb") as tmp, urllib.request.urlopen(url, timeout=30) as r:  # noqa: S310
                shutil.copyfileobj(r, tmp)
            return target
        except Exception as e:  # network down, 403, disk full ...
            err = e
    raise WeightsNotFoundError(
        f"{what} '{filename}' is not available: not found in {cache_dir}"
        + (f" and the download from {url} failed ({err})" if err else "")
        + (" (TUSSS_OFFLINE is set)" if offline else "")
        + ". "
        + (f"Download it from {url} and " if url else "Obtain it and ")
        + f"put it at {target} (or set TUSSS_HOME, or pass the file path explicitly)."
    )
