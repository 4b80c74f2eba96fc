"""Tests of sktt_flow.utils.threads: the thread caps of torch and of the BLAS
and OpenMP libraries that numpy and scikit-learn call."""

import pytest
import torch
from threadpoolctl import threadpool_info, threadpool_limits

from sktt_flow.utils.threads import cpu_threads_within_limits, thread_limit


def library_threads() -> dict[str, int]:
    return {library["filepath"]: library["num_threads"] for library in threadpool_info()}


def test_cpu_threads_cap_every_library_and_restore_them(monkeypatch):
    """Inside the block torch and every BLAS and OpenMP library threadpoolctl
    sees run one thread; after it, each has its own setting back. Fails if
    the BLAS behind numpy keeps one thread per core (the oversubscription of
    a fit's mixture search) or a limit leaks out of the block. Two threads
    are set up first (torch, every library, no OMP_NUM_THREADS), whatever
    earlier tests left."""
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with threadpool_limits(2):
            before = library_threads()
            if min(before.values(), default=1) < 2 or thread_limit() < 2:
                pytest.skip("this machine runs its libraries on one thread")
            with cpu_threads_within_limits(1) as threads:
                assert threads == 1
                assert torch.get_num_threads() == 1
                assert set(library_threads().values()) == {1}
            assert library_threads() == before
            assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(previous)
