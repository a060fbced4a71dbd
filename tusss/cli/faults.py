"""Options shared by the long commands for bad items (``--fail-fast``); see :class:`tusss.persist.FailureLog`.

Every long command (``masks``, ``segment``, ``embed``, ``predict``, ``pseudo-label``) skips a bad item (an
unreadable image, a damaged mask-cache file ...), records it in ``failures.jsonl`` beside its output (one JSON
object ``{"id", "reason", "command"}`` per line), reports it in its summary and exits with status 1 at the end;
``--fail-fast`` stops at the first bad item instead.
"""

from __future__ import annotations

import argparse

__all__ = ["add_fault_args"]


def add_fault_args(p: argparse.ArgumentParser) -> None:
    """``--fail-fast``."""
    p.add_argument("--fail-fast", action="store_true",
                   help="stop at the first bad item (default: skip it, record it in failures.jsonl beside the "
                   "output, exit 1 at the end)")
