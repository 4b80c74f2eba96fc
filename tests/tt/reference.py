"""Independent brute-force computations for the tests: the full coefficient
tensor, tensor-product quadrature and scipy.s normal distribution."""

from __future__ import annotations

import itertools

import numpy as np
import torch
from scipy import stats

from sktt_flow.tt.algebra import tt_to_full
from sktt_flow.tt.basis import gauss_legendre, orthonormal_legendre


def brute_force_tt_density(distribution, z):
    """p_TT(z) from the full tensor C: sum over all multi-indices, no train."""
    cores = [core.detach() for core in distribution.cores]
    full = tt_to_full(cores)
    basis = orthonormal_legendre(z, distribution.low, distribution.high, distribution.n_basis)
    values = full
    for k in range(z.shape[1]):
        # contract the first remaining mode with the basis of coordinate k
        values = (
            torch.einsum("ni,i...->n...", basis[:, k], values)
            if k == 0
            else torch.einsum("ni,ni...->n...", basis[:, k], values)
        )
    inside = ((z >= distribution.low) & (z <= distribution.high)).all(1)
    return torch.where(inside, values.square() / full.square().sum(), torch.zeros_like(values))


def tail_density(distribution, z, dims=None):
    center = ((distribution.low + distribution.high) / 2).numpy()
    scale = ((distribution.high - distribution.low) / 2).numpy()
    if dims is not None:
        center, scale = center[dims], scale[dims]
    return np.prod(stats.norm.pdf(z.numpy(), loc=center, scale=scale), axis=1)


def mixture_density(distribution, z):
    eps = distribution.tail_weight
    return (1 - eps) * brute_force_tt_density(distribution, z).numpy() + eps * tail_density(
        distribution, z
    )


def product_rule(n_nodes, low, high):
    """Tensor-product Gauss-Legendre points (M, d) and weights (M,) on a box."""
    nodes, weights = gauss_legendre(n_nodes, torch.as_tensor(low), torch.as_tensor(high))
    points = torch.stack(torch.meshgrid(*nodes, indexing="ij"), -1).reshape(-1, len(low))
    w = torch.stack(torch.meshgrid(*weights, indexing="ij"), -1).reshape(-1, len(low)).prod(1)
    return points, w


def cells(edges):
    """All boxes of a tensor grid given per-coordinate edges."""
    return itertools.product(*[list(itertools.pairwise(e)) for e in edges])
