"""Gaussian bases: the ordinary flow that tensorizing flows improve on, and the
Gaussian mixture under the companion model of data mode."""

from __future__ import annotations

import math

import torch
from normflows.distributions import BaseDistribution

__all__ = ["MIXTURE_GROUP_ELEMENTS", "GaussianBase", "GaussianMixtureBase"]

#: Most elements of the standardised residuals that
#: :meth:`GaussianMixtureBase.log_prob` holds at once (components times
#: features times points): 64 MB in float32.
MIXTURE_GROUP_ELEMENTS = 1 << 24


class GaussianBase(BaseDistribution):
    r"""Fixed diagonal Gaussian ``N(loc, diag(scale^2))``, a normflows base.

    The base of an ordinary normalizing flow, for comparisons with the TT
    base (``TensorizingFlowDensity(base="gaussian")``): same flows, same
    training, only the base differs. Unlike ``normflows.distributions.DiagGaussian``
    it has no trainable parameters, its constants are buffers that follow
    ``.to()``, and :meth:`sample` takes a ``torch.Generator``.

    Parameters
    ----------
    loc, scale : tensors of shape (d,)
        Mean and standard deviations (positive).
    """

    def __init__(self, loc: torch.Tensor, scale: torch.Tensor):
        super().__init__()
        loc = torch.as_tensor(loc)
        if not loc.is_floating_point():
            loc = loc.to(torch.get_default_dtype())
        scale = torch.as_tensor(scale, dtype=loc.dtype)
        if loc.ndim != 1 or scale.shape != loc.shape:
            raise ValueError("loc and scale must be 1-D tensors of the same shape.")
        if not bool((scale > 0).all()):
            raise ValueError("scale must be positive.")
        self.register_buffer("loc", loc.clone())
        self.register_buffer("scale", scale.clone())

    @property
    def n_features(self) -> int:
        return int(self.loc.shape[0])

    def log_prob(self, z: torch.Tensor, context=None) -> torch.Tensor:
        standardized = (z - self.loc) / self.scale
        return -0.5 * standardized.square().sum(dim=1) - (
            torch.log(self.scale).sum() + 0.5 * self.n_features * math.log(2 * math.pi)
        )

    def sample(self, num_samples: int = 1, context=None, generator=None) -> torch.Tensor:
        noise = torch.randn(
            int(num_samples),
            self.n_features,
            generator=generator,
            dtype=self.loc.dtype,
            device=self.loc.device,
        )
        return self.loc + self.scale * noise

    def forward(self, num_samples: int = 1, context=None, generator=None):
        z = self.sample(num_samples, generator=generator)
        return z, self.log_prob(z)


class GaussianMixtureBase(BaseDistribution):
    r"""Fixed mixture of full-covariance Gaussians, a normflows base.

    ``q(z) = sum_k w_k N(z; mu_k, L_k L_k^T)``, its log-density exact (a
    log-sum-exp of the components' log-densities, each through a triangular
    solve) and its draws exact (a component by its weight, then
    ``mu_k + L_k e``). In data mode it is the base of the companion model
    (:class:`~sktt_flow.TensorizingFlowDensity`), fitted by EM
    (:class:`sklearn.mixture.GaussianMixture`) before the flow trains on it.
    Like :class:`GaussianBase` it has no trainable parameters and its
    constants are buffers.

    Parameters
    ----------
    weights : tensor (k,)
        Positive mixture weights; normalised to sum to one here.
    means : tensor (k, d)
    cholesky : tensor (k, d, d)
        Lower-triangular factors of the covariances, with positive diagonals.
    """

    def __init__(self, weights: torch.Tensor, means: torch.Tensor, cholesky: torch.Tensor):
        super().__init__()
        means = torch.as_tensor(means)
        if not means.is_floating_point():
            means = means.to(torch.get_default_dtype())
        weights = torch.as_tensor(weights, dtype=means.dtype)
        cholesky = torch.as_tensor(cholesky, dtype=means.dtype)
        if means.ndim != 2 or weights.shape != means.shape[:1]:
            raise ValueError("weights must have shape (k,) and means shape (k, d).")
        if cholesky.shape != (*means.shape, means.shape[1]):
            raise ValueError("cholesky must have shape (k, d, d), with means of shape (k, d).")
        if not bool(torch.isfinite(weights).all() and (weights > 0).all()):
            raise ValueError("weights must be finite and positive.")
        diagonals = torch.diagonal(cholesky, dim1=-2, dim2=-1)
        if not bool(torch.isfinite(cholesky).all() and (diagonals > 0).all()):
            raise ValueError("cholesky must be finite with a positive diagonal.")
        if not bool(torch.isfinite(means).all()):
            raise ValueError("means must be finite.")
        self.register_buffer("log_weights", torch.log(weights / weights.sum()))
        self.register_buffer("means", means.clone())
        self.register_buffer("cholesky", torch.tril(cholesky).clone())

    @property
    def n_features(self) -> int:
        return int(self.means.shape[1])

    @property
    def n_components(self) -> int:
        return int(self.means.shape[0])

    def _whitening_maps(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``L_k^{-1}`` and ``L_k^{-1} mu_k`` of every component, shapes (k, d, d)
        and (k, d), computed in float64 (k triangular solves of d x d, a
        negligible cost next to the points') and rounded to the base's dtype
        once."""
        cholesky = self.cholesky.double()
        identity = torch.eye(self.n_features, dtype=torch.float64, device=cholesky.device)
        inverse = torch.linalg.solve_triangular(
            cholesky, identity.expand_as(cholesky), upper=False
        )
        shift = (inverse @ self.means.double().unsqueeze(-1)).squeeze(-1)
        return inverse.to(self.means.dtype), shift.to(self.means.dtype)

    def log_prob(self, z: torch.Tensor, context=None) -> torch.Tensor:
        points = z.T.to(self.means.dtype)
        n_points = points.shape[1]
        log_det = torch.log(torch.diagonal(self.cholesky, dim1=-2, dim2=-1)).sum(dim=1)
        normalizers = log_det + 0.5 * self.n_features * math.log(2 * math.pi)
        # Each component's standardised points L_k^{-1} (z - mu_k) come from one
        # product of the stacked inverse factors with the points: a training
        # step of a flow on 64 components of 30 features took 2.7 ms instead
        # of 11.8 with one triangular solve per component. The components go
        # in groups whose (group, d, N) residuals stay within
        # MIXTURE_GROUP_ELEMENTS (one at a time on a GPU chunk of 10^6 rows).
        inverse, shift = self._whitening_maps()
        group = max(1, MIXTURE_GROUP_ELEMENTS // (self.n_features * max(n_points, 1)))
        components = []
        for start in range(0, self.n_components, group):
            stop = min(start + group, self.n_components)
            standardized = (inverse[start:stop].reshape(-1, self.n_features) @ points).view(
                stop - start, self.n_features, n_points
            ) - shift[start:stop, :, None]
            components.append(-0.5 * standardized.square().sum(dim=1))
        log_weighted = torch.cat(components) - normalizers[:, None] + self.log_weights[:, None]
        return torch.logsumexp(log_weighted, dim=0).to(z.dtype)

    def sample(self, num_samples: int = 1, context=None, generator=None) -> torch.Tensor:
        # One normal per row chooses the component (through its CDF), so a row
        # takes d + 1 normals from one call, as GaussianBase takes d: the
        # stream does not depend on how the rows are split into calls.
        noise = torch.randn(
            int(num_samples),
            self.n_features + 1,
            generator=generator,
            dtype=self.means.dtype,
            device=self.means.device,
        )
        uniform = 0.5 * torch.special.erfc(-noise[:, -1] / math.sqrt(2.0))
        cumulative = torch.cumsum(torch.exp(self.log_weights), dim=0)
        component = torch.searchsorted(cumulative, uniform.unsqueeze(-1)).squeeze(-1)
        component = component.clamp_(max=self.n_components - 1)
        # L_c e for each row, one component at a time (k is small; rows are not looped)
        z = torch.empty_like(noise[:, :-1])
        for k in range(self.n_components):
            rows = component == k
            z[rows] = self.means[k] + noise[rows, :-1] @ self.cholesky[k].T
        return z

    def forward(self, num_samples: int = 1, context=None, generator=None):
        z = self.sample(num_samples, generator=generator)
        return z, self.log_prob(z)
