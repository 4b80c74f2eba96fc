"""Keep torch, and the libraries numpy and scikit-learn call, within a thread budget.

joblib's workers (``GridSearchCV(n_jobs=...)``, Dask) get a share of the CPU
through ``OMP_NUM_THREADS`` and threadpoolctl limits on the OpenMP runtime,
but torch sizes its intra-op pool on its own; without this, every worker
starts one thread per core and the search oversubscribes the machine. The
BLAS behind numpy (OpenBLAS, MKL) and scikit-learn's OpenMP loops likewise
start one thread per core in the caller's own process unless capped
(:func:`cpu_threads_within_limits`).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch
from threadpoolctl import threadpool_info, threadpool_limits

__all__ = ["cpu_threads_within_limits", "thread_limit", "torch_threads_within_limits"]


def thread_limit() -> int:
    """The smallest of torch's thread count, ``OMP_NUM_THREADS`` and the
    OpenMP limits that threadpoolctl reports."""
    limit = torch.get_num_threads()
    environment = os.environ.get("OMP_NUM_THREADS", "")
    if environment.isdigit() and int(environment) > 0:
        limit = min(limit, int(environment))
    for library in threadpool_info():
        if library.get("user_api") == "openmp" and library.get("num_threads"):
            limit = min(limit, int(library["num_threads"]))
    return max(1, limit)


@contextlib.contextmanager
def torch_threads_within_limits(n_threads: int | None = None) -> Iterator[int]:
    """Run the block with torch's intra-op threads capped by :func:`thread_limit`.

    Parameters
    ----------
    n_threads : int, optional
        A further cap (an estimator's ``n_jobs``); at least 1.

    The previous setting is restored on exit. Yields the number of threads.
    """
    previous = torch.get_num_threads()
    limit = thread_limit()
    if n_threads is not None:
        limit = max(1, min(limit, int(n_threads)))
    if limit < previous:
        torch.set_num_threads(limit)
    try:
        yield min(limit, previous)
    finally:
        if torch.get_num_threads() != previous:
            torch.set_num_threads(previous)


@contextlib.contextmanager
def cpu_threads_within_limits(n_threads: int | None = None) -> Iterator[int]:
    """:func:`torch_threads_within_limits`, with the same cap on every BLAS and
    OpenMP library of the process (threadpoolctl): numpy's linear algebra and
    scikit-learn's k-means and Gaussian mixtures then use no more threads than
    torch.

    For blocks that call those libraries on large arrays (an estimator's
    ``fit``, whose companion search fits Gaussian mixtures by EM): an
    estimator with ``n_jobs=None`` is meant to use one core, and EM's small
    products gain nothing from more BLAS threads. Measured on two cores
    (Intel Xeon, numpy's OpenBLAS), the 24 mixtures of such a search on
    9,000 rows of 30 features took 32.7 s with two BLAS threads and 17.8 s
    with one, and 62.6 s against 18.2 s while another process kept one core
    busy; a default fit of ``benchmarks/bench_fit_time.py`` (seed 0) went
    from 165.9 to 146.5 s, its search from 48.3 to 30.3 s, with the same
    model. Entering the limits costs about a millisecond (threadpoolctl
    inspects the loaded libraries), so per-call paths such as scoring keep
    to :func:`torch_threads_within_limits`.

    Yields the number of threads, as :func:`torch_threads_within_limits`.
    """
    with torch_threads_within_limits(n_threads) as threads, threadpool_limits(limits=threads):
        yield threads
