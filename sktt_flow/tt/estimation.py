"""Building blocks of :meth:`TTDistribution.from_samples`.

The train is fitted in two stages (Ren, Zhao, Khoo and Ying, 2023, section 3):

1. An optimisation-free start: the square root of a mixture of ``r`` product
   densities is close to the sum of their square roots when the components are
   well separated, and a sum of ``r`` products is a train of rank ``r`` with
   diagonal cores. The components are the cells of ``r``-means clustering; each
   contributes the product of its one-dimensional Gaussian marginals. With
   ``r = 1`` this is the rank-one start from the marginals of the data.
   Each factor is interpolated at the Gauss–Legendre nodes and mapped to
   Legendre coefficients exactly (:func:`~sktt_flow.tt.algebra.nodal_to_coefficients`).
2. Maximum-likelihood refinement of all cores: minimise the mean of
   ``-log q_0`` over mini-batches; the exact normaliser makes the problem well
   posed without any constraint on the cores.
"""

from __future__ import annotations

import math

import torch

from sktt_flow.tt.algebra import nodal_to_coefficients, round_tt
from sktt_flow.tt.basis import gauss_legendre

__all__ = ["domain_from_samples", "kmeans", "pad_ranks", "separable_mixture_cores"]


def domain_from_samples(X: torch.Tensor, margin: float = 0.1) -> tuple[torch.Tensor, torch.Tensor]:
    """The data's bounding box widened by ``margin`` times its width on each side.

    A constant column gets the unit interval around its value.
    """
    low, high = X.min(dim=0).values, X.max(dim=0).values
    width = high - low
    width = torch.where(width > 0, width, torch.ones_like(width))
    return low - margin * width, high + margin * width


def kmeans(
    X: torch.Tensor, n_clusters: int, generator: torch.Generator, n_iter: int = 30
) -> torch.Tensor:
    """Cluster labels from Lloyd's algorithm with k-means++ seeding.

    A fixed number of iterations keeps it deterministic for a given generator;
    it is only a starting point for maximum likelihood.
    """
    n_samples = X.shape[0]
    n_clusters = min(n_clusters, n_samples)
    first = torch.randint(n_samples, (1,), generator=generator, device=X.device)
    centers = X[first]
    closest = torch.cdist(X, centers).squeeze(1).square()
    for _ in range(1, n_clusters):
        total = closest.sum()
        if total <= 0:
            break
        index = torch.multinomial(closest / total, 1, generator=generator)
        centers = torch.cat([centers, X[index]])
        closest = torch.minimum(closest, torch.cdist(X, X[index]).squeeze(1).square())
    for _ in range(n_iter):
        labels = torch.cdist(X, centers).argmin(dim=1)
        counts = torch.bincount(labels, minlength=centers.shape[0]).to(X.dtype)
        sums = torch.zeros_like(centers).index_add_(0, labels, X)
        occupied = counts > 0
        centers = torch.where(occupied[:, None], sums / counts.clamp_min(1)[:, None], centers)
    return torch.cdist(X, centers).argmin(dim=1)


def separable_mixture_cores(
    X: torch.Tensor,
    low: torch.Tensor,
    high: torch.Tensor,
    n_basis: int,
    tt_rank: int,
    generator: torch.Generator,
) -> list[torch.Tensor]:
    """Initial cores: the sum over clusters of products of root-Gaussian marginals.

    Component ``j`` with weight ``w_j``, means ``mu_jk`` and standard deviations
    ``sigma_jk`` contributes ``sqrt(w_j) prod_k N(z_k; mu_jk, sigma_jk^2)^(1/2)``.
    Standard deviations are floored at ``(high - low) / (2 n_basis)``, about
    the narrowest root-Gaussian bump that a polynomial of degree
    ``n_basis - 1`` still follows without strong ringing.
    """
    n_samples, n_features = X.shape
    labels = kmeans(X, tt_rank, generator)
    n_components = int(labels.max()) + 1
    counts = torch.bincount(labels, minlength=n_components).to(X.dtype)
    weights = counts / n_samples
    means = torch.zeros(n_components, n_features, dtype=X.dtype, device=X.device)
    means.index_add_(0, labels, X)
    means = means / counts.clamp_min(1)[:, None]
    squares = torch.zeros_like(means).index_add_(0, labels, X.square())
    variances = (squares / counts.clamp_min(1)[:, None] - means.square()).clamp_min(0.0)
    floor = (high - low) / (2 * n_basis)
    stds = torch.maximum(variances.sqrt(), floor)
    nodes, _ = gauss_legendre(n_basis, low, high, dtype=X.dtype, device=X.device)  # (d, n)
    # Root densities at the nodes, (components, d, n); each factor carries
    # w_j^(1/(2d)) so that no product of d numbers under- or overflows.
    z = (nodes.unsqueeze(0) - means.unsqueeze(2)) / stds.unsqueeze(2)
    log_root = (
        -0.25 * z.square()
        - 0.5 * torch.log(stds).unsqueeze(2)
        - 0.25 * math.log(2 * math.pi)
        + (torch.log(weights.clamp_min(1e-300)) / (2 * n_features))[:, None, None]
    )
    root = torch.exp(log_root)
    # A sum of products is a train with diagonal cores.
    if n_features == 1:
        cores = [root.sum(0).reshape(1, n_basis, 1)]
    else:
        eye = torch.eye(n_components, dtype=X.dtype, device=X.device)
        cores = [root[:, 0, :].T.reshape(1, n_basis, n_components)]
        for k in range(1, n_features - 1):
            cores.append(torch.einsum("jm,jl->jml", root[:, k, :], eye))
        cores.append(root[:, -1, :].reshape(n_components, n_basis, 1))
    cores = nodal_to_coefficients(cores, low, high)
    # Exact rounding drops ranks beyond what the unfoldings can have; padding
    # then gives maximum likelihood the full rank to work with.
    return pad_ranks(round_tt(cores), tt_rank, generator)


def pad_ranks(
    cores: list[torch.Tensor],
    tt_rank: int,
    generator: torch.Generator,
    relative_scale: float = 1e-2,
) -> list[torch.Tensor]:
    """Grow every bond to ``min(tt_rank, n^k, n^(d-k))`` with small random entries.

    Zero padding would be a saddle point (the gradient of a zero block is
    zero when its neighbour block is zero too); small noise is not.
    """
    cores = list(cores)
    n_features = len(cores)
    n_basis = cores[0].shape[1]
    for k in range(n_features - 1):
        exponent = min(k + 1, n_features - k - 1)
        target = min(tt_rank, n_basis ** min(exponent, 8))
        current = cores[k].shape[2]
        if target <= current:
            continue
        extra = target - current
        left, right = cores[k], cores[k + 1]
        scale_left = relative_scale * left.square().mean().sqrt()
        scale_right = relative_scale * right.square().mean().sqrt()
        cores[k] = torch.cat(
            [left, scale_left * _noise((left.shape[0], n_basis, extra), generator, left)], dim=2
        )
        cores[k + 1] = torch.cat(
            [right, scale_right * _noise((extra, n_basis, right.shape[2]), generator, right)],
            dim=0,
        )
    return cores


def _noise(shape, generator: torch.Generator, like: torch.Tensor) -> torch.Tensor:
    return torch.randn(shape, generator=generator, dtype=like.dtype, device=like.device)
