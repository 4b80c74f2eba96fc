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
   posed without any constraint on the cores. An optional roughness penalty
   (:func:`coordinate_roughness`) damps the high degrees that a small sample
   cannot support.

The box comes from the data (:func:`domain_from_samples`): the bounding box, or
per-coordinate quantiles that leave far outliers to the Gaussian component.
"""

from __future__ import annotations

import math

import torch

from sktt_flow.tt.algebra import nodal_to_coefficients, round_tt, shape_runs
from sktt_flow.tt.basis import gauss_legendre

__all__ = [
    "coordinate_roughness",
    "degree_energy_shares",
    "domain_from_samples",
    "kmeans",
    "pad_ranks",
    "separable_mixture_cores",
]


def domain_from_samples(
    X: torch.Tensor, margin: float = 0.1, quantile: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """The box of the data: per coordinate, the ``quantile`` and ``1 - quantile``
    quantiles widened by ``margin`` times their distance on each side.

    ``quantile=0`` gives the bounding box. A positive ``quantile`` leaves the
    most extreme rows of each coordinate out (by linear interpolation between
    order statistics, as :func:`numpy.quantile` does), so that one far outlier does
    not stretch its coordinate's interval, and with it the width that the
    ``n_basis`` Legendre functions have to resolve; the rows left out are
    covered by the Gaussian component of
    :class:`~sktt_flow.tt.distribution.TTDistribution`. A constant column
    gets the unit interval around its value.
    """
    if not 0.0 <= quantile < 0.5:
        raise ValueError(f"quantile must be in [0, 0.5), got {quantile!r}.")
    if quantile > 0:
        low, high = _column_quantile(X, quantile), _column_quantile(X, 1.0 - quantile)
    else:
        low, high = X.min(dim=0).values, X.max(dim=0).values
    width = high - low
    width = torch.where(width > 0, width, torch.ones_like(width))
    return low - margin * width, high + margin * width


def _column_quantile(X: torch.Tensor, level: float) -> torch.Tensor:
    """Linearly interpolated quantile of every column: :func:`torch.quantile`
    refuses inputs beyond 2^24 entries, order statistics do not."""
    position = level * (X.shape[0] - 1)
    below = math.floor(position)
    above = min(below + 1, X.shape[0] - 1)
    low = X.kthvalue(below + 1, dim=0).values
    high = X.kthvalue(above + 1, dim=0).values
    return low + (position - below) * (high - low)


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


def degree_energy_shares(cores: list[torch.Tensor]) -> torch.Tensor:
    """Differentiable share of ``||C||_F^2`` at each degree of each coordinate, (d, n).

    ``shares[k, j] = ||C[..., i_k = j, ...]||_F^2 / ||C||_F^2``, the share of
    the squared ``L^2`` norm of ``s`` carried by degree ``j`` of coordinate
    ``k`` (:func:`~sktt_flow.tt.algebra.mode_energy_shares` computes the same
    numbers by QR sweeps on detached cores). Here the Gram matrices of the
    cores left and right of each core (environments, each rescaled by its
    trace) give ``||C[..., i_k = j, ...]||^2 = tr(G_k[:, j, :]^T L_k G_k[:, j,
    :] R_k)`` up to a factor common to all ``j``: gauge invariant, independent
    of the scale of every core, and differentiable without a QR. O(d n r^3).
    """
    n_features = len(cores)
    one = torch.ones(1, 1, dtype=cores[0].dtype, device=cores[0].device)
    # Matrix products on reshaped cores, not three-operand einsums: the
    # penalty is evaluated at every training step, where its cost is that of
    # launching small kernels (3.5 times fewer here, forward and backward).
    # Each sweep keeps the core multiplied by its environment, which is one
    # factor of that core's energies. The environments are divided by their
    # traces, constants to autograd: every energy of core k carries the same
    # product of them, which the shares divide out, so the gradient is exact
    # without a backward pass through the traces.
    left_weighted = []
    left = one
    for k, core in enumerate(cores):
        r_left, n_basis, r_right = core.shape
        weighted = (left @ core.reshape(r_left, n_basis * r_right)).reshape(core.shape)
        left_weighted.append(weighted)
        if k < n_features - 1:
            flat = core.reshape(r_left * n_basis, r_right)
            gram = weighted.reshape(r_left * n_basis, r_right).mT @ flat
            left = gram / gram.detach().trace()
    right_weighted = [one] * n_features
    right = one
    for k in range(n_features - 1, -1, -1):
        core = cores[k]
        r_left, n_basis, r_right = core.shape
        weighted = (core.reshape(r_left * n_basis, r_right) @ right).reshape(core.shape)
        right_weighted[k] = weighted
        if k > 0:
            flat = core.reshape(r_left, n_basis * r_right)
            gram = weighted.reshape(r_left, n_basis * r_right) @ flat.mT
            right = gram / gram.detach().trace()
    # the energies of a run of cores of one shape in one product and one sum
    energies = []
    for start, stop in shape_runs(cores):
        left_run = torch.stack(left_weighted[start:stop])
        right_run = torch.stack(right_weighted[start:stop])
        energies.append((left_run * right_run).sum(dim=(1, 3)))
    energies = torch.cat(energies)
    return energies / energies.sum(dim=1, keepdim=True)


def coordinate_roughness(cores: list[torch.Tensor]) -> torch.Tensor:
    r"""Good and Gaskins' roughness of ``sqrt(p)`` along each coordinate, shape (d,).

    With ``t_k`` the coordinate mapped onto ``[-1, 1]`` and ``s`` the train's
    function,

    .. math::

        R_k = \frac{\int (1 - t_k^2)\, (\partial_{t_k} s)^2}{\int s^2}
            = \sum_j j (j + 1)\, e_{kj},

    where ``e_kj`` is the share of ``||C||_F^2`` at degree ``j`` of
    coordinate ``k`` (:func:`degree_energy_shares`): the Legendre
    polynomials are the eigenfunctions of ``-d/dt (1 - t^2) d/dt`` with
    eigenvalues ``j (j + 1)``, so the roughness is diagonal in the
    coefficients. Since ``s^2`` is ``p`` up to the normaliser, ``R_k`` is a
    quarter of a (Legendre-weighted) Fisher information of ``p`` along
    ``t_k``: the roughness penalty of Good and Gaskins, "Nonparametric
    roughness penalties for probability densities", Biometrika 58, 1971. It
    grows quadratically in the degree, so it damps the high degrees that
    follow noise in a small sample while costing little to a smooth density
    (a Gaussian of standard deviation ``sigma`` in the units of ``t_k`` has
    about ``1 / (4 sigma^2)``). Scale and gauge invariant, differentiable,
    O(d n r^3).
    """
    shares = degree_energy_shares(cores)
    degrees = torch.arange(shares.shape[1], dtype=shares.dtype, device=shares.device)
    return (shares * degrees * (degrees + 1)).sum(dim=1)
