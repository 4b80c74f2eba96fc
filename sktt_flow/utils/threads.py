"""Keep torch within the thread budget that the caller's process was given.

joblib's workers (``GridSearchCV(n_jobs=...)``, Dask) get a share of the CPU
through ``OMP_NUM_THREADS`` and threadpoolctl limits on the OpenMP runtime,
but torch sizes its intra-op pool on its own; without this, every worker
starts one thread per core and the search oversubscribes the machine.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch
from threadpoolctl import threadpool_info

__all__ = ["thread_limit", "torch_threads_within_limits"]


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
