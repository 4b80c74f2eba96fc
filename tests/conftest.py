"""Shared fixtures: small random trains with fixed seeds."""

from __future__ import annotations

import pytest
import torch

from sktt_flow import TTDistribution


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
def distribution_3d():
    """A rank-(3, 4) train on an anisotropic box, with a visible tail weight."""
    return random_distribution(
        (1, 3, 4, 1), 8, [[-1.0, 1.0], [-2.0, 3.0], [0.0, 0.5]], seed=1, tail_weight=0.01
    )


def cuda_available() -> bool:
    return torch.cuda.is_available()


requires_cuda = pytest.mark.skipif(not cuda_available(), reason="needs a CUDA device")
