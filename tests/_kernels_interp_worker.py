"""Subprocess worker of tests/test_kernels_*.py and tests/test_clip_kernels.py: runs tusss.kernels' Triton kernels
(and whole ``DBAClip.embed_masks`` calls on them, TUSSS_KERNELS=triton) under TRITON_INTERPRET=1.

Usage: python _kernels_interp_worker.py JOBS.pt OUT.pt   (see tests/_kernels_helpers.run_in_interpreter)
"""

from __future__ import annotations

import os
import sys

os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported (see run_in_interpreter)

import torch  # noqa: E402

from tusss.kernels import dispatch  # noqa: E402
from tusss.kernels._triton_util import interpreting  # noqa: E402


def main(src: str, dst: str) -> None:
    assert interpreting(), "triton did not pick up TRITON_INTERPRET=1"
    torch.set_num_threads(1)
    jobs = torch.load(src, weights_only=False)
    outs = []
    for job in jobs:
        if job["fn"] == "embed":
            outs.append(_embed(job))
            continue
        fn = {"attention": dispatch.masked_dual_attention, "packed": dispatch.paper_packed_attention}[job["fn"]]
        outs.append(fn(*job["args"], backend="triton", **job.get("kwargs", {})))
    torch.save(outs, dst)


def _embed(job: dict):
    """{"fn": "embed", "model", "state_dict", "preset", "overrides", "image", "masks"} -> (M, D) embeddings."""
    from tusss.clip import DBAClip

    clip = DBAClip.from_pretrained(job["model"], weights=None, preset=job["preset"], **job.get("overrides", {}))
    clip.model.load_state_dict(job["state_dict"])
    return clip.embed_masks(job["image"], job["masks"])


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
