"""Shared fixtures: small random trains with fixed seeds.

The suite runs on more than one kind of CPU (an AMD EPYC and an Intel Xeon
with AVX-512, whose torch uses MKL): with the same seeds, float32 results
differ between them in the last bits, and a trained model's scores by more.
Compare float32 values with a tolerance (bit-for-bit claims hold only where
the code pads to sizes that make them so, such as ``ROW_MULTIPLE``), and
judge quality against the noise of the test rows (paired standard errors),
not against a margin measured on one machine: a companion's gain of +0.42
nats per row on one was +0.17 with a standard error of 0.18 on the other.
"""

from __future__ import annotations

import pytest
import torch
from threadpoolctl import threadpool_info, threadpool_limits

from sktt_flow import TTDistribution
from sktt_flow.utils.threads import thread_limit


def random_cores(ranks, n_basis, *, seed=0, dtype=torch.float64):
    """Random cores with the given bond ranks (r_0 = r_d = 1 included)."""
    generator = torch.Generator().manual_seed(seed)
    return [
        torch.randn(ranks[k], n_basis, ranks[k + 1], generator=generator, dtype=dtype)
        for k in range(len(ranks) - 1)
    ]


def random_distribution(ranks, n_basis, domain, *, seed=0, dtype=torch.float64, **kwargs):
    return TTDistribution(random_cores(ranks, n_basis, seed=seed, dtype=dtype), domain, **kwargs)


@pytest.fixture
def two_threads(monkeypatch):
    """Torch and every BLAS and OpenMP library at two threads, no
    ``OMP_NUM_THREADS``, whatever earlier tests left (Dask's nanny, for one,
    sets that variable in the parent's environment): the state in which a
    thread cap has something to cap. Skips on a machine that cannot run two."""
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with threadpool_limits(2):
            libraries = [library["num_threads"] for library in threadpool_info()]
            if thread_limit() < 2 or min(libraries, default=1) < 2:
                pytest.skip("this machine runs its libraries on one thread")
            yield
    finally:
        torch.set_num_threads(previous)


@pytest.fixture
def distribution_3d():
    """A rank-(3, 4) train on an anisotropic box, with a visible tail weight."""
    return random_distribution(
        (1, 3, 4, 1), 8, [[-1.0, 1.0], [-2.0, 3.0], [0.0, 0.5]], seed=1, tail_weight=0.01
    )


def cuda_available() -> bool:
    return torch.cuda.is_available()


requires_cuda = pytest.mark.skipif(not cuda_available(), reason="needs a CUDA device")
