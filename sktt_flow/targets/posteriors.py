"""Real Bayesian posteriors: logistic regression on bundled data, and eight schools.

Unlike the synthetic targets, these are what variational inference is used
for: correlated, skewed, scale-varying posteriors of real models on real data.
The data come from scikit-learn's bundled datasets (nothing is downloaded) or
are the eight numbers of the eight-schools study, written out here.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch

from sktt_flow.targets._base import Target
from sktt_flow.targets._quadrature import PanelInverseCDF, logsumexp
from sktt_flow.utils.validation import check_positive_float

__all__ = ["EightSchools", "LogisticRegressionPosterior"]

_LOG_2PI = math.log(2.0 * math.pi)


# -- logistic regression ---------------------------------------------------------------
def _breast_cancer():
    from sklearn.datasets import load_breast_cancer

    bunch = load_breast_cancer()
    return bunch.data, bunch.target, list(bunch.feature_names)


def _wine():
    from sklearn.datasets import load_wine

    bunch = load_wine()
    return bunch.data, (bunch.target == 0).astype(np.int64), list(bunch.feature_names)


#: Dataset name -> loader returning (features, 0/1 labels, feature names).
_DATASETS = {"breast_cancer": _breast_cancer, "wine": _wine}

#: Rows of the design matrix times points are evaluated in blocks of at most
#: this many entries, so that scoring a million points does not allocate a
#: (points, data rows) matrix of gigabytes.
_BLOCK_ENTRIES = 1 << 22

#: Newton's method for the MAP stops when the largest step is below this.
_NEWTON_TOL = 1e-12
_NEWTON_MAX_ITER = 100

#: Half-width of :attr:`LogisticRegressionPosterior.domain`, in Laplace
#: standard deviations.
_LAPLACE_HALF_WIDTH = 8.0


class LogisticRegressionPosterior(Target):
    """Posterior of Bayesian logistic regression on a bundled dataset.

    With the standardised features ``x_i`` of the dataset (zero mean, unit
    population variance per column), a leading 1 for the intercept
    (``a_i = (1, x_i)``), labels ``y_i`` in ``{0, 1}`` and the coefficients
    ``beta`` (intercept first, then one per feature, ``d = p + 1``):

    .. math::

        \\log \\tilde p(\\beta) = \\sum_i \\log \\sigma\\big(s_i\\, a_i^\\top \\beta\\big)
            - \\frac{\\lVert\\beta\\rVert^2}{2 s^2} - \\frac d2 \\log(2 \\pi s^2),
        \\qquad s_i = 2 y_i - 1,

    i.e. the likelihood times the normalised isotropic prior
    ``N(0, s^2 I)`` (``s = prior_scale``), so that ``Z`` is the model
    evidence (marginal likelihood) ``p(y | X)``. ``log sigma(t)`` is computed
    as ``-log(1 + exp(-t))`` by ``torch.logaddexp(0, -t)``, which neither
    overflows nor loses the gradient at ``t = 0``.

    Datasets:

    - ``"breast_cancer"``: Wisconsin diagnostic breast cancer, 569 rows, 30
      strongly correlated features (radius, perimeter and area of the same
      nuclei, ...), ``y = 1`` for benign; ``d = 31``. Posterior correlations
      reach 0.74 and the Laplace covariance has condition number 85.
    - ``"wine"``: the 178 wines, 13 features, cultivar 0 against the other
      two (``y = 1`` for cultivar 0); ``d = 14``. The posterior is markedly
      skewed: its mean lies up to 0.8 Laplace standard deviations from the
      MAP (0.34 for breast cancer). It was chosen over iris (versicolor
      against virginica, ``d = 5``), whose posterior is almost Gaussian (a
      Gaussian importance proposal at the MAP with the Laplace covariance has
      an ESS of 0.6 there, against a few per cent here) and too easy to tell
      methods apart.

    Both datasets are linearly separable (a linear program finds a separating
    hyperplane), so the likelihood alone has no maximum: the prior makes the
    posterior proper and shapes it along the separating directions.

    **Ground truth.** There is no exact method for ``log Z``, so
    :attr:`log_normalizer` is None. A reference value by importance sampling
    (a multivariate Student-t proposal matched to the posterior's moments,
    2,000,000 draws, standard error ``1e-3``) is computed by the
    independent script ``benchmarks/reference_log_z.py`` and stored in
    ``benchmarks/results/posterior_reference.json``; ``benchmarks/bench_vi.py``
    reads it from there. There is no exact sampler.

    **MAP and Laplace approximation.** The MAP is computed at construction
    by Newton's method in float64 (the log-posterior is strictly concave, so
    it converges from zero in about ten steps); :attr:`laplace_covariance`
    is the inverse of the negative Hessian there. :attr:`domain` is the MAP
    plus or minus 8 Laplace standard deviations per coordinate. The mass
    outside it, as the importance-weighted share of the reference script's
    2,000,000 draws that fall outside, is ``1e-11`` for breast cancer and
    ``1e-8`` for wine (whose skewed tails reach further); the reference file
    records it.

    Parameters
    ----------
    dataset : {"breast_cancer", "wine"}
        The bundled scikit-learn dataset.
    prior_scale : float, default=1.0
        Standard deviation ``s`` of the Gaussian prior of every coefficient
        (the intercept included), in units of the standardised features.

    Attributes
    ----------
    n_features : int
        ``d``: the number of dataset features plus one.
    n_samples : int
        Rows of the dataset.
    feature_names : list of str
        ``"intercept"``, then the dataset's feature names.
    map_estimate : ndarray of shape (d,), float64
        The posterior mode.
    laplace_covariance : ndarray of shape (d, d), float64
        Inverse of the negative Hessian of ``log_prob`` at the MAP.

    Raises
    ------
    ValueError
        For an unknown dataset or a non-positive ``prior_scale``.

    References
    ----------
    .. [1] Chopin and Ridgway, "Leave Pima Indians alone: binary regression as
       a benchmark for Bayesian computation", Statist. Sci. 32(1), 2017.
    .. [2] Street, Wolberg and Mangasarian, "Nuclear feature extraction for
       breast tumor diagnosis", IS&T/SPIE Electronic Imaging, 1993.
    """

    def __init__(self, dataset: str, *, prior_scale: float = 1.0):
        if not isinstance(dataset, str) or dataset not in _DATASETS:
            raise ValueError(f"dataset must be one of {sorted(_DATASETS)}, got {dataset!r}.")
        self.dataset = dataset
        self.prior_scale = check_positive_float(prior_scale, "prior_scale")
        features, labels, names = _DATASETS[dataset]()
        features = np.asarray(features, dtype=np.float64)
        standardised = (features - features.mean(0)) / features.std(0)
        design = np.hstack([np.ones((features.shape[0], 1)), standardised])
        self.n_samples, self.n_features = design.shape
        self.feature_names = ["intercept", *names]
        self._design = torch.from_numpy(design)
        self._signs = torch.from_numpy(2.0 * np.asarray(labels, dtype=np.float64) - 1.0)
        self._data_cache: dict[tuple[torch.dtype, torch.device], tuple] = {}
        self._map, self._covariance = self._newton_map()
        half_width = _LAPLACE_HALF_WIDTH * np.sqrt(np.diag(self._covariance))
        self._set_domain(self._map - half_width, self._map + half_width)

    def _repr_params(self) -> dict:
        return {"dataset": self.dataset, "prior_scale": self.prior_scale}

    def __getstate__(self) -> dict:
        # The per-device copies are a cache: a pickle must not carry CUDA tensors.
        return {**self.__dict__, "_data_cache": {}}

    @property
    def map_estimate(self) -> np.ndarray:
        """The posterior mode, shape (d,), float64 (a fresh copy)."""
        return self._map.copy()

    @property
    def laplace_covariance(self) -> np.ndarray:
        """Inverse negative Hessian at the MAP, shape (d, d), float64 (a fresh copy)."""
        return self._covariance.copy()

    def _newton_map(self) -> tuple[np.ndarray, np.ndarray]:
        """MAP and Laplace covariance by Newton's method on the closed-form derivatives.

        gradient = A^T (y - sigma(A beta)) - beta / s^2 and negative Hessian
        A^T diag(sigma (1 - sigma)) A + I / s^2, positive definite everywhere.
        """
        design, labels = self._design, 0.5 * (self._signs + 1.0)
        precision = 1.0 / self.prior_scale**2
        identity = torch.eye(self.n_features, dtype=torch.float64)
        beta = torch.zeros(self.n_features, dtype=torch.float64)
        for _ in range(_NEWTON_MAX_ITER):
            probability = torch.sigmoid(design @ beta)
            gradient = design.T @ (labels - probability) - precision * beta
            curvature = probability * (1.0 - probability)
            negative_hessian = design.T @ (design * curvature[:, None]) + precision * identity
            step = torch.linalg.solve(negative_hessian, gradient)
            beta = beta + step
            if float(step.abs().max()) <= _NEWTON_TOL * (1.0 + float(beta.abs().max())):
                break
        else:  # strict concavity makes this unreachable short of a numerical fault
            raise RuntimeError(
                f"Newton's method for the MAP did not converge in {_NEWTON_MAX_ITER} steps."
            )
        probability = torch.sigmoid(design @ beta)
        curvature = probability * (1.0 - probability)
        negative_hessian = design.T @ (design * curvature[:, None]) + precision * identity
        covariance = torch.cholesky_inverse(torch.linalg.cholesky(negative_hessian))
        return beta.numpy().copy(), covariance.numpy().copy()

    def _data_on(self, dtype: torch.dtype, device: torch.device):
        """The design matrix and label signs in ``dtype`` on ``device``, cached."""
        key = (dtype, device)
        if key not in self._data_cache:
            self._data_cache[key] = (
                self._design.to(device=device, dtype=dtype),
                self._signs.to(device=device, dtype=dtype),
            )
        return self._data_cache[key]

    def _log_prob(self, x):
        design, signs = self._data_on(x.dtype, x.device)
        zero = torch.zeros((), dtype=x.dtype, device=x.device)
        block = max(1, _BLOCK_ENTRIES // self.n_samples)
        pieces = []
        for start in range(0, x.shape[0], block):
            margins = (x[start : start + block] @ design.T) * signs
            # log sigma(t) = -log(1 + e^{-t}) = -logaddexp(0, -t)
            pieces.append(-torch.logaddexp(zero, -margins).sum(1))
        log_likelihood = torch.cat(pieces)
        variance = self.prior_scale**2
        log_prior = -0.5 * x.square().sum(1) / variance - 0.5 * self.n_features * (
            _LOG_2PI + math.log(variance)
        )
        return log_likelihood + log_prior


# -- eight schools ---------------------------------------------------------------------
#: Estimated coaching effects and their standard errors (Rubin 1981).
EIGHT_SCHOOLS_EFFECTS = (28.0, 8.0, -3.0, 7.0, -1.0, 1.0, 18.0, 12.0)
EIGHT_SCHOOLS_STD_ERRORS = (15.0, 10.0, 16.0, 11.0, 9.0, 11.0, 10.0, 18.0)
_MU_SCALE = 5.0  # mu ~ N(0, 5^2)
_TAU_SCALE = 5.0  # tau ~ HalfCauchy(5)

#: Interval of log tau for the quadrature and the sampler: the integrand falls
#: like tau at the left end and like tau^-8 at the right end, so the mass
#: outside is below e^-40 (relative) on either side.
_LOG_TAU_LOW, _LOG_TAU_HIGH = -40.0, 12.0
_PANELS, _PANEL_ORDER = 208, 16


def _eight_schools_log_marginal(log_tau: np.ndarray) -> np.ndarray:
    """``log p(y, log tau)``: theta and mu integrated out analytically (see EightSchools)."""
    log_tau = np.asarray(log_tau, dtype=np.float64)
    y = np.asarray(EIGHT_SCHOOLS_EFFECTS)
    sigma = np.asarray(EIGHT_SCHOOLS_STD_ERRORS)
    variance = sigma**2 + np.exp(2.0 * log_tau)[..., None]  # var of y_j | mu, tau
    precision = 1.0 / _MU_SCALE**2 + np.sum(1.0 / variance, axis=-1)
    weighted = np.sum(y / variance, axis=-1)
    log_likelihood = (
        -0.5 * np.sum(np.log(variance), axis=-1)
        - 0.5 * np.sum(y**2 / variance, axis=-1)
        + 0.5 * weighted**2 / precision
        - 0.5 * np.log(precision)
        - 0.5 * len(y) * _LOG_2PI
        - math.log(_MU_SCALE)
    )
    return log_likelihood + _log_half_cauchy_in_log_tau(log_tau)


def _log_half_cauchy_in_log_tau(log_tau):
    """``log HalfCauchy(e^u; 5) + u``: the prior density of ``u = log tau``."""
    scaled = 2.0 * (log_tau - math.log(_TAU_SCALE))  # log (tau / 5)^2
    return math.log(2.0 / (math.pi * _TAU_SCALE)) - np.logaddexp(0.0, scaled) + log_tau


@functools.lru_cache(maxsize=1)
def _eight_schools_grid() -> tuple[PanelInverseCDF, float]:
    """Panel quadrature of ``p(y, log tau)`` over ``log tau``, and ``log Z``."""
    grid = PanelInverseCDF(_LOG_TAU_LOW, _LOG_TAU_HIGH, n_panels=_PANELS, order=_PANEL_ORDER)
    log_z = float(logsumexp(_eight_schools_log_marginal(grid.points) + grid.log_weights))
    return grid, log_z


class EightSchools(Target):
    """The eight-schools hierarchical model, in its centred or non-centred form.

    Rubin's (1981) study of coaching for the SAT: estimated effects
    ``y = (28, 8, -3, 7, -1, 1, 18, 12)`` with standard errors
    ``sigma = (15, 10, 16, 11, 9, 11, 10, 18)``, and the model

    .. math::

        \\mu \\sim N(0, 5^2), \\quad \\tau \\sim \\mathrm{HalfCauchy}(5), \\quad
        \\theta_j \\sim N(\\mu, \\tau^2), \\quad y_j \\sim N(\\theta_j, \\sigma_j^2).

    **Coordinates.** Unconstrained, ``d = 10``: ``(mu, log tau, theta_1 ..
    theta_8)`` with ``centered=True``; with ``centered=False`` the last eight
    are ``eta_j = (theta_j - mu) / tau`` (``theta_j = mu + tau eta_j``,
    ``eta_j ~ N(0, 1)`` a priori). ``log_prob`` is the log of the joint
    density ``p(y, mu, theta, tau)`` with every normalising constant, times
    the Jacobian ``tau`` of ``tau = exp(log tau)`` (and ``tau^8`` of
    ``theta = mu + tau eta`` in the non-centred form), so that ``Z`` is the
    evidence ``p(y)``, the same in both forms.

    The centred form is Neal's funnel with data: where ``tau`` is small the
    ``theta_j`` are squeezed within ``tau`` of ``mu``, and the density grows
    without bound along ``theta_j = mu``, ``log tau -> -inf`` (like
    ``tau^-7``): it has **no mode**, although its mass there is small
    (``p(log tau | y)`` falls like ``tau`` on the left). The non-centred form
    removes the funnel and has a proper mode, though not where the mass is
    (``log tau`` 3.4 there, against a posterior mean of 0.8).

    **Ground truth.** Given ``(mu, tau)`` the ``theta_j`` integrate out in
    closed form, ``y_j | mu, tau ~ N(mu, v_j)`` with ``v_j = sigma_j^2 +
    tau^2``; then ``mu`` does, since it enters a product of Gaussians: with
    ``P = 1/25 + sum_j 1/v_j`` and ``b = sum_j y_j / v_j``,

    .. math::

        \\log p(y \\mid \\tau) = -\\tfrac12 \\sum_j \\log(2\\pi v_j)
            - \\tfrac12 \\sum_j \\frac{y_j^2}{v_j} + \\frac{b^2}{2P}
            - \\tfrac12 \\log P - \\log 5.

    What remains is the 1-D integral ``Z = int p(y | tau) p(u) du`` over
    ``u = log tau``, with ``p(u) = HalfCauchy(e^u; 5) e^u``. Its integrand is
    smooth and falls like ``e^u`` on the left and ``e^{-8u}`` on the right;
    composite Gauss–Legendre quadrature on ``[-40, 12]`` (208 panels of 16
    nodes) gives ``log Z`` with an error at rounding level (doubling the
    panels changes it by under ``1e-13``; the tests check it against scipy's
    adaptive quadrature of the same integral with ``mu`` integrated
    numerically, and against importance sampling of the full 10-D density).

    **Exact samples**, by the same factorisation: ``u`` by inverse CDF on that
    quadrature grid (Newton-refined on the exact marginal), then
    ``mu | tau, y ~ N(b / P, 1 / P)`` and ``theta_j | mu, tau, y`` Gaussian
    with precision ``1/sigma_j^2 + 1/tau^2`` and mean ``(y_j / sigma_j^2 +
    mu / tau^2)`` over it, drawn as ``eta_j = (theta_j - mu) / tau``, whose
    mean ``(y_j - mu) tau / v_j`` and standard deviation
    ``sigma_j / sqrt(v_j)`` lose no precision however small ``tau`` is.

    **Domain.** ``mu`` in ``[-20, 30]``, ``log tau`` in ``[-7, 4]``; in the
    centred form every ``theta_j`` in ``[-40, 60]``, in the non-centred form
    every ``eta_j`` in ``[-5, 5]``. The posterior marginals are ``mu``
    4.40 +- 3.32, ``log tau`` 0.80 +- 1.17 (median ``tau`` 2.7) and the
    ``theta_j`` between 3.6 +- 4.7 and 6.3 +- 5.1, with long tails. The mass
    outside, computed from the factorisation (each marginal is a mixture over
    ``log tau`` of Gaussians; ``benchmarks/reference_log_z.py`` recomputes it
    independently and writes it to
    ``benchmarks/results/posterior_reference.json``): ``1.9e-4`` below
    ``log tau = -7`` and ``1.4e-6`` above 4, ``1e-9`` outside the ``mu``
    interval, at most ``8e-6`` per ``theta_j`` (``theta_3``: ``y = -3``
    with ``sigma = 16`` reaches furthest below) and at most ``7e-7`` per ``eta_j``:
    about ``2e-4`` in all. The funnel's neck sets this: ``p(log tau | y)``
    decays only like ``tau`` on the left (``5e-4`` below ``-6``, ``7e-5``
    below ``-8``), while the ``theta_j`` there sit within
    ``tau = e^-7 = 9e-4`` of ``mu`` on a box 100 wide, already far below
    what a polynomial grid of moderate size resolves; a lower bound on
    ``log tau`` buys little mass and makes the neck narrower still.

    Parameters
    ----------
    centered : bool, default=True
        The centred (funnel) or the non-centred parametrisation.

    Raises
    ------
    TypeError
        If ``centered`` is not a bool.

    References
    ----------
    .. [1] Rubin, "Estimation in parallel randomized experiments", J. Educ.
       Statist. 6(4), 1981.
    .. [2] Gelman, Carlin, Stern, Dunson, Vehtari and Rubin, "Bayesian Data
       Analysis", 3rd ed., CRC Press, 2013, section 5.5.
    .. [3] Papaspiliopoulos, Roberts and Sköld, "A general framework for the
       parametrization of hierarchical models", Statist. Sci. 22(1), 2007.
    """

    n_features = 10

    def __init__(self, centered: bool = True):
        if not isinstance(centered, (bool, np.bool_)):
            raise TypeError(f"centered must be a bool, got {type(centered).__name__}.")
        self.centered = bool(centered)
        low = np.array([-20.0, -7.0] + [-40.0 if self.centered else -5.0] * 8)
        high = np.array([30.0, 4.0] + [60.0 if self.centered else 5.0] * 8)
        self._set_domain(low, high)
        self._constants: dict[tuple[torch.dtype, torch.device], tuple] = {}

    def _repr_params(self) -> dict:
        return {"centered": self.centered}

    def __getstate__(self) -> dict:
        # The per-device copies are a cache: a pickle must not carry CUDA tensors.
        return {**self.__dict__, "_constants": {}}

    def _data_on(self, dtype: torch.dtype, device: torch.device):
        key = (dtype, device)
        if key not in self._constants:
            self._constants[key] = (
                torch.tensor(EIGHT_SCHOOLS_EFFECTS, dtype=dtype, device=device),
                torch.tensor(EIGHT_SCHOOLS_STD_ERRORS, dtype=dtype, device=device),
            )
        return self._constants[key]

    def _log_prob(self, x):
        effects, std_errors = self._data_on(x.dtype, x.device)
        mu, log_tau, rest = x[:, 0], x[:, 1], x[:, 2:]
        n_schools = rest.shape[1]
        log_prior_mu = -0.5 * (mu / _MU_SCALE).square() - math.log(_MU_SCALE) - 0.5 * _LOG_2PI
        # HalfCauchy(tau; 5) tau, with log(1 + (tau/5)^2) = logaddexp(0, 2 (u - log 5)).
        scaled = 2.0 * (log_tau - math.log(_TAU_SCALE))
        log_prior_tau = (
            math.log(2.0 / (math.pi * _TAU_SCALE))
            - torch.logaddexp(torch.zeros((), dtype=x.dtype, device=x.device), scaled)
            + log_tau
        )
        if self.centered:
            theta = rest
            standardised = (theta - mu[:, None]) * torch.exp(-log_tau)[:, None]
            # N(theta_j; mu, tau^2) = N(standardised; 0, 1) / tau
            log_prior_theta = -0.5 * standardised.square().sum(1) - n_schools * log_tau
        else:
            theta = mu[:, None] + torch.exp(log_tau)[:, None] * rest
            # N(eta_j; 0, 1): the Jacobian tau^8 cancels the 1 / tau^8 of N(theta; mu, tau^2)
            log_prior_theta = -0.5 * rest.square().sum(1)
        log_prior_theta = log_prior_theta - 0.5 * n_schools * _LOG_2PI
        residual = (effects - theta) / std_errors
        log_likelihood = (
            -0.5 * residual.square().sum(1)
            - torch.log(std_errors).sum()
            - 0.5 * n_schools * _LOG_2PI
        )
        return log_prior_mu + log_prior_tau + log_prior_theta + log_likelihood

    @property
    def log_normalizer(self) -> float:
        """``log p(y)`` by the closed-form integrals and 1-D quadrature (class docstring)."""
        return _eight_schools_grid()[1]

    def _sample(self, n, generator):
        grid, _ = _eight_schools_grid()
        uniforms = torch.rand(2, n, generator=generator, dtype=torch.float64).numpy()
        log_tau = grid.sample(
            _eight_schools_log_marginal(grid.points),
            uniforms[0],
            uniforms[1],
            exact_log_density=_eight_schools_log_marginal,
        )
        log_tau = torch.from_numpy(log_tau)
        noise = torch.randn(n, 9, generator=generator, dtype=torch.float64)
        effects, std_errors = self._data_on(torch.float64, torch.device("cpu"))
        tau_squared = torch.exp(2.0 * log_tau)
        variance = std_errors**2 + tau_squared[:, None]
        precision = 1.0 / _MU_SCALE**2 + (1.0 / variance).sum(1)
        mu = (effects / variance).sum(1) / precision + noise[:, 0] / precision.sqrt()
        # eta_j = (theta_j - mu) / tau given mu, tau, y is Gaussian with mean
        # (y_j - mu) tau / v_j and standard deviation sigma_j / sqrt(v_j): written
        # this way, nothing cancels or overflows however small tau is.
        tau = torch.exp(log_tau)[:, None]
        eta = (effects - mu[:, None]) * tau / variance + noise[:, 1:] * std_errors / (
            variance.sqrt()
        )
        rest = mu[:, None] + tau * eta if self.centered else eta
        return torch.cat([mu[:, None], log_tau[:, None], rest], dim=1)
