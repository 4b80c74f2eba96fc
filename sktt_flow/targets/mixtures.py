"""Mixtures of Gaussians with full covariances."""

from __future__ import annotations

import math

import numpy as np
import torch

from sktt_flow.targets._base import Target
from sktt_flow.utils.validation import check_positive_float, check_positive_int

__all__ = ["MixtureOfGaussians"]

# FAB's GMM sets scale_tril = diag(softplus(log_var_scaling)) with log_var_scaling = 1.
_FAB_STD = math.log1p(math.e)


class MixtureOfGaussians(Target):
    """A finite mixture of Gaussians ``sum_k w_k N(x; mu_k, Sigma_k)``.

    ``log_prob`` is ``log sum_k w_k N(x; mu_k, Sigma_k)`` with the weights
    **as given**: it is normalised exactly when the weights sum to one, and
    :attr:`log_normalizer` is ``log sum_k w_k`` (exact) in every case.
    Samples are exact (a component, then ``mu_k + L_k z`` with ``L_k`` the
    Cholesky factor of ``Sigma_k``). :meth:`mode_of` is the component of
    highest posterior weight ``w_k N(x; mu_k, Sigma_k)``.

    Parameters
    ----------
    means : array-like (K, d)
        Component means.
    covariances : array-like (K, d, d), (K, d) or (K,)
        Full covariance matrices, diagonals, or isotropic variances.
    weights : array-like (K,), optional
        Positive component weights (need not sum to one); equal weights
        ``1 / K`` by default.
    domain : array-like (d, 2), optional
        The suggested box; by default the smallest box holding every component
        mean plus or minus 6 of its marginal standard deviations (the mass
        outside is then below ``2e-9`` per coordinate).

    Attributes
    ----------
    n_modes : int
        Number of components ``K``.
    means, covariances, weights : ndarray
        The parameters, as float64 arrays of shapes (K, d), (K, d, d), (K,).

    References
    ----------
    .. [1] Khoo, Lindsey and Zhao, "Tensorizing flows: a tool for variational
       inference", arXiv:2305.02460, 2023.
    .. [2] Midgley, Stimper, Simm, Schölkopf and Hernández-Lobato, "Flow
       annealed importance sampling bootstrap", ICLR 2023.
    """

    def __init__(self, means, covariances, weights=None, *, domain=None):
        means = np.array(means, dtype=np.float64, ndmin=2)
        if means.ndim != 2:
            raise ValueError(f"means must have shape (K, d), got shape {means.shape}.")
        n_components, n_features = means.shape
        covariances = np.asarray(covariances, dtype=np.float64)
        if covariances.shape == (n_components,):
            covariances = covariances[:, None, None] * np.eye(n_features)
        elif covariances.shape == (n_components, n_features):
            covariances = np.einsum("kd,de->kde", covariances, np.eye(n_features))
        if covariances.shape != (n_components, n_features, n_features):
            raise ValueError(
                f"covariances must have shape ({n_components}, {n_features}, {n_features}) "
                f"(or ({n_components}, {n_features}) diagonals, or ({n_components},) "
                f"variances), got shape {covariances.shape}."
            )
        if not np.allclose(covariances, np.swapaxes(covariances, 1, 2), rtol=1e-12, atol=0):
            raise ValueError("covariances must be symmetric.")
        try:
            cholesky = np.linalg.cholesky(covariances)
        except np.linalg.LinAlgError as error:
            raise ValueError("covariances must be positive definite.") from error
        if weights is None:
            weights = np.full(n_components, 1.0 / n_components)
        weights = np.asarray(weights, dtype=np.float64)
        if weights.shape != (n_components,):
            raise ValueError(
                f"weights must have shape ({n_components},), got shape {weights.shape}."
            )
        if not np.all(np.isfinite(weights) & (weights > 0)):
            raise ValueError("weights must be positive and finite.")
        if not (np.all(np.isfinite(means)) and np.all(np.isfinite(covariances))):
            raise ValueError("means and covariances must be finite.")

        self.n_features = n_features
        self.n_modes = n_components
        self._weights = weights
        self._covariances = covariances.copy()
        identity = np.broadcast_to(np.eye(n_features), covariances.shape)
        inverse_cholesky = np.linalg.solve(cholesky, identity)  # L_k^{-1}
        log_det = 2.0 * np.log(np.diagonal(cholesky, axis1=1, axis2=2)).sum(1)
        self._cholesky = torch.from_numpy(cholesky)
        self._inverse_cholesky = torch.from_numpy(inverse_cholesky)
        self._means = torch.from_numpy(np.array(means))
        self._log_coefficients = torch.from_numpy(
            np.log(weights) - 0.5 * log_det - 0.5 * n_features * math.log(2.0 * math.pi)
        )
        if domain is None:
            std = np.sqrt(np.diagonal(covariances, axis1=1, axis2=2))
            self._set_domain((means - 6.0 * std).min(0), (means + 6.0 * std).max(0))
        else:
            box = np.asarray(domain, dtype=np.float64)
            if box.shape != (n_features, 2) or not np.all(box[:, 0] < box[:, 1]):
                raise ValueError(f"domain must be (d, 2) rows of low < high, got {box.shape}.")
            self._set_domain(box[:, 0], box[:, 1])

    @property
    def means(self) -> np.ndarray:
        """Component means, (K, d) (a copy)."""
        return self._means.numpy().copy()

    @property
    def covariances(self) -> np.ndarray:
        """Component covariances, (K, d, d) (a copy)."""
        return self._covariances.copy()

    @property
    def weights(self) -> np.ndarray:
        """Component weights as given, (K,) (a copy)."""
        return self._weights.copy()

    # -- constructors -------------------------------------------------------------
    @classmethod
    def paper_30d_5mode(cls, n_features: int = 30) -> MixtureOfGaussians:
        """The 5-mode "patterned" mixture of the tensorizing-flows paper.

        Equal weights ``1/5``; all components have covariance ``0.04 I``
        except in the last two coordinates, where the means are
        ``(0, 0), (1, 1), (-1, 1), (1, -1), (-1, -1)`` and the correlation is
        0, ``+0.95``, ``-0.95``, ``-0.95``, ``+0.95`` respectively (each
        off-centre mode is stretched along the diagonal through the origin).
        The other coordinates are ``N(0, 0.04)`` in every component, so the
        modes differ only in the last two coordinates.

        This follows the authors' code (``code/sampling/mixture_gaussian/main.m``
        with ``covariance_mode = "patterned"``, and ``mixture_gaussian_logpdf``
        in ``code/training/utils/target.py``), which works in ``theta =
        x / 2`` on ``[-1, 1]^d``; here ``x`` is the unscaled variable, the
        density is normalised (``log_normalizer = 0``) and the domain is the
        paper's ``[-2, 2]^d`` (the modes at ``+-1`` are 5 standard
        deviations from its faces; the mass outside is about ``5e-7``).

        Parameters
        ----------
        n_features : int, default=30
            Dimension (at least 2).
        """
        d = check_positive_int(n_features, "n_features", minimum=2)
        corners = np.array([[0.0, 0.0], [1.0, 1.0], [-1.0, 1.0], [1.0, -1.0], [-1.0, -1.0]])
        correlations = np.array([0.0, 0.95, -0.95, -0.95, 0.95])
        means = np.zeros((5, d))
        means[:, -2:] = corners
        covariances = np.broadcast_to(np.eye(d), (5, d, d)).copy()
        covariances[:, d - 2, d - 1] = correlations
        covariances[:, d - 1, d - 2] = correlations
        covariances *= 0.04
        return cls(means, covariances, np.full(5, 0.2), domain=np.tile([-2.0, 2.0], (d, 1)))

    @classmethod
    def fab_40_modes(cls, seed: int = 0, std: float = _FAB_STD) -> MixtureOfGaussians:
        """The 40-mode two-dimensional mixture of the FAB paper.

        Means uniform on ``[-40, 40]^2``, drawn exactly as FAB's ``GMM(dim=2,
        n_mixes=40, loc_scaling=40)`` draws them after ``torch.manual_seed(seed)``
        (``(torch.rand(40, 2) - 0.5) * 2 * 40``), so ``seed=0`` reproduces the
        published target; equal weights; isotropic covariances ``std**2 I``.

        FAB's code sets the component scale to ``softplus(log_var_scaling)``
        with ``log_var_scaling = 1``, i.e. a standard deviation of
        ``log(1 + e) = 1.3133`` per coordinate, which is the default here;
        ``std=1.0`` gives identity covariances instead.

        Parameters
        ----------
        seed : int, default=0
            Seed of the torch CPU generator that draws the means.
        std : float, default=log(1 + e)
            Component standard deviation.
        """
        generator = torch.Generator().manual_seed(check_positive_int(seed, "seed", minimum=0))
        means = (torch.rand((40, 2), generator=generator) - 0.5) * 2 * 40
        std = check_positive_float(std, "std")
        return cls(means.double().numpy(), np.full(40, std**2))

    @classmethod
    def random_modes(
        cls,
        n_modes: int,
        n_features: int,
        low: float = -5.0,
        high: float = 5.0,
        std: float = 1.0,
        seed: int = 0,
    ) -> MixtureOfGaussians:
        """Means uniform on ``[low, high]^d``, isotropic ``std``, equal weights.

        The means are drawn with ``numpy.random.default_rng(seed)``.

        Parameters
        ----------
        n_modes, n_features : int
            Number of components and dimension.
        low, high : float
            The box of the means.
        std : float
            Standard deviation of every component, in every coordinate.
        seed : int
            Seed of the means.
        """
        n_modes = check_positive_int(n_modes, "n_modes")
        n_features = check_positive_int(n_features, "n_features")
        if not high > low:
            raise ValueError(f"need low < high, got low={low}, high={high}.")
        std = check_positive_float(std, "std")
        rng = np.random.default_rng(seed)
        means = rng.uniform(low, high, size=(n_modes, n_features))
        return cls(means, np.full(n_modes, std**2))

    # -- densities ----------------------------------------------------------------
    def _repr_params(self) -> dict:
        return {"n_features": self.n_features, "n_modes": self.n_modes}

    def component_log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """``log w_k + log N(x; mu_k, Sigma_k)`` for every row and component, (m, K)."""
        x = self._check_input(x)
        inverse = self._inverse_cholesky.to(device=x.device, dtype=x.dtype)
        means = self._means.to(device=x.device, dtype=x.dtype)
        coefficients = self._log_coefficients.to(device=x.device, dtype=x.dtype)
        centred = x[:, None, :] - means[None]  # (m, K, d)
        whitened = torch.einsum("kij,mkj->mki", inverse, centred)
        return coefficients[None] - 0.5 * whitened.square().sum(-1)

    def _log_prob(self, x):
        return torch.logsumexp(self.component_log_prob(x), dim=1)

    @property
    def log_normalizer(self) -> float:
        """``log sum_k w_k`` (0 for weights that sum to one)."""
        return float(np.log(self._weights.sum()))

    def _sample(self, n, generator):
        probabilities = torch.from_numpy(self._weights / self._weights.sum())
        components = torch.multinomial(probabilities, n, replacement=True, generator=generator)
        noise = torch.randn(n, self.n_features, generator=generator, dtype=torch.float64)
        return self._means[components] + torch.einsum(
            "nij,nj->ni", self._cholesky[components], noise
        )

    def mode_of(self, x):
        """The component of highest ``w_k N(x; mu_k, Sigma_k)`` for each row."""
        return torch.argmax(self.component_log_prob(x), dim=1)
