"""Shared pytest configuration: CUDA-marked tests skip cleanly on machines without a GPU."""

from __future__ import annotations

import pytest


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except Exception:  # torch missing or broken driver
        has_cuda = False
    if has_cuda:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


def one_intra_op_thread():
    """Run a module's tests with one torch intra-op thread (turn it into a module fixture with
    ``pytest.fixture(scope="module", autouse=True)(one_intra_op_thread)``). Float reductions depend on the thread
    count, so modules that compare in-process references with forked children, fresh subprocesses
    (OMP_NUM_THREADS=1) or Ray actors at < 1 CPU use one thread everywhere; forked children also need it, since the
    parent's OpenMP team does not survive fork()."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
