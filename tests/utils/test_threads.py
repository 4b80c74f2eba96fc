"""Tests of sktt_flow.utils.threads: the thread caps of torch and of the BLAS
and OpenMP libraries that numpy and scikit-learn call."""

import torch
from threadpoolctl import threadpool_info

from sktt_flow.utils.threads import cpu_threads_within_limits


def library_threads() -> dict[str, int]:
    return {library["filepath"]: library["num_threads"] for library in threadpool_info()}


def test_cpu_threads_cap_every_library_and_restore_them(two_threads):
    """Inside the block torch and every BLAS and OpenMP library threadpoolctl
    sees run one thread; after it, each has its own setting back. Fails if
    the BLAS behind numpy keeps one thread per core (the oversubscription of
    a fit's mixture search) or a limit leaks out of the block."""
    before = library_threads()
    with cpu_threads_within_limits(1) as threads:
        assert threads == 1
        assert torch.get_num_threads() == 1
        assert set(library_threads().values()) == {1}
    assert library_threads() == before
    assert torch.get_num_threads() == 2
