"""Variational mode on adversarial targets: problems built to break ``base="auto"``.

Every target is an unnormalised log-density written as a user would write it
(torch, batched, float32 or float64 in and out), with its log Z known exactly,
by quadrature, or from an importance-sampling reference, so that every fit is
scored against the truth. None comes from :mod:`sktt_flow.targets`:

- conjugate Bayesian linear regressions on the raw (unscaled) diabetes data
  (``blr-diabetes``, d 11), with an almost collinear extra column and a wide
  prior (``blr-collinear``, d 12), and on 10^5 synthetic rows written with
  sufficient statistics, whose log-density is about -n/2 (``blr-big``, d 6);
- correlated Gaussians far from zero, variances 0.05 to 50 (condition number
  1e3), in 30 and 50 dimensions (``gauss30``, ``gauss50``);
- heavy tails: Student t with 3 and 2 degrees of freedom (``t3-10d``,
  ``t2-5d``) and a Cauchy (``cauchy3``);
- curved mass at scale 50: rings of radius 20 centred at (50, -30, ...)
  (``ring2d``, ``ring5d``) and a banana of x_1 standard deviation 20 around 50
  (``banana50``);
- centred normal hierarchies (the funnel of ``theta_j`` about ``mu`` with
  ``log tau``) of 14, 20, 24 and 30 groups (``hier14`` ... ``hier30``, d = J + 2);
- mixtures with a small or far mode: 95/5 weights 12 apart (``mix8-95-5``),
  a 5% mode near the origin and the 95% mode far (``mix8-near-small``), and
  weights 90/7/3 7 apart (``mix3-10d``);
- logistic regressions with a N(0, s^2) prior: ``make_classification`` with
  rescaled and shifted features (``logreg-mkcls``, d 9), iris setosa against
  versicolor, linearly separable (``logreg-iris``, d 5), and 20 unscaled
  features of scales 0.03 to 30 with offsets (``logreg-mk20``, d 21);
- five exponentials of rates 0.01 to 100, ``-inf`` outside the positive
  orthant (mode on the boundary), fitted with ``feature_bounds=(0, inf)``
  (``expo5``);
- a standard Gaussian whose log-density carries a constant 1e6, as a
  log-likelihood summed over many rows does (``offset-gauss``);
- narrow Gaussians (standard deviation 0.01) at 2e4 and at 2e3 from zero
  (``narrow-far``, fitted with ``dtype="float64"``; ``narrow-mid``, with the
  default float32).

Targets that need an estimator option (``expo5``: ``feature_bounds``,
``narrow-far``: ``dtype``) get it from their own options (:data:`TARGET_OPTIONS`),
for every estimator method, as a user who knows the support or the scale would
pass it; everything else is left at the estimator's defaults.

Methods (``--methods``; default ``auto gaussian laplace``):

``auto``
    :class:`sktt_flow.TensorizingFlowDensity` with its defaults
    (``base="auto"``, ``domain`` found by the estimator), ``log_target`` and
    ``n_features`` only, plus the target's options.
``gaussian``
    The same with ``base="gaussian"``.
``tt``
    The same with ``base="tt"``.
``laplace``
    No estimator: the Gaussian ``N(mode, (-H)^{-1})`` at the highest point that
    L-BFGS (float64, strong Wolfe) reaches from zero and four standard-normal
    starts, ``H`` the autograd Hessian there, scored on 10,000 exact draws like
    the estimator's diagnostics. It fails, with its error, where no start
    reaches a finite point or the Hessian is not negative definite (rings,
    the boundary mode of ``expo5``).

Every fit is followed by an independent check: log Z, ESS and ELBO by
importance sampling on 100,000 fresh draws of the fitted model
(``sample_and_score(100_000, random_state=seed + 11)``; for ``laplace`` fresh
draws of its Gaussian), the target evaluated in float64. A fit that raises
is a row with its error (status ``failed``; ``timeout`` past ``--time-limit``),
and the suite goes on.

Columns of ``vi_adversarial.md``:

- **d**: number of features; **seed**: ``random_state`` of the fit (and of
  the Laplace starts and draws);
- **base_**, **n_basis**: the base the estimator kept (``base_``) and the TT
  resolution (``tt_.n_basis``) where there is a TT;
- **rev KL** = log Z - ELBO, with the ELBO the estimator's ``elbo_`` (10,000
  draws); it is >= 0 up to sampling noise; large values mean missed or
  misplaced mass;
- **log Z err (SE)**: ``log_normalizer_`` - log Z with the estimator's own
  ``log_normalizer_std_error_``: an error many standard errors away means the
  reported uncertainty is wrong;
- **check err (SE)**: the same on the 100,000 fresh draws;
- **ESS**: the estimator's normalised effective sample size ``ess_``;
- **fit s**: ``fit_time_`` (``laplace``: wall time of the optimisation, the
  Hessian and the 10,000 draws); **evals**: ``n_target_evaluations_`` (``laplace``:
  points at which the target was evaluated, draws included);
- **warn**: number of warnings raised by the fit (texts in the notes);
- **status**: ``ok``, ``failed`` or ``timeout``.

The log Z of ``logreg-*`` is an importance-sampling reference (its standard
error is listed with the target; it adds to both error columns); the rest are
exact or by 1-D quadrature, to far below the errors reported.

Usage (from the repository root; for steady timings ``OMP_NUM_THREADS=1``)::

    python benchmarks/bench_vi_adversarial.py --quick   # expo5, blr-diabetes, mix8-95-5: ~1 min
    python benchmarks/bench_vi_adversarial.py           # all targets, roughly 20 min, 1 core
    python benchmarks/bench_vi_adversarial.py --only hier14 banana50 --seeds 0 1 2
    python benchmarks/bench_vi_adversarial.py --only expo5 --methods auto tt --output /tmp/adv

Writes ``vi_adversarial.json`` (metadata: date, command, CPU, versions, source
digest; the targets; one record per target x method x seed) and
``vi_adversarial.md`` into ``--output`` (default
``benchmarks/results/vi_adversarial/``).
"""

from __future__ import annotations

import argparse
import math
import signal
import sys
import time
import traceback
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _common import (
    count_warnings,
    format_value,
    header_rule,
    lbfgs_ascent,
    load_average,
    run_metadata,
    write_results,
)
from scipy import integrate, special
from sklearn.datasets import load_diabetes, load_iris, make_classification

from sktt_flow import TensorizingFlowDensity
from sktt_flow.diagnostics import importance_diagnostics

LOG2PI = math.log(2.0 * math.pi)
METHODS = ("auto", "gaussian", "tt", "laplace")
DEFAULT_METHODS = ("auto", "gaussian", "laplace")
#: Estimator parameters of each method (on top of the target's options).
METHOD_PARAMETERS: dict[str, dict[str, Any]] = {
    "auto": {},
    "gaussian": {"base": "gaussian"},
    "tt": {"base": "tt"},
}
QUICK_KEYS = ("expo5", "blr-diabetes", "mix8-95-5")
#: Fresh draws of each fitted model for the independent check of log Z.
CHECK_DRAWS = 100_000
#: Offset of the check draws' random_state from the fit's seed.
CHECK_SEED_OFFSET = 11
#: Rows of the target evaluated at once in the check.
CHECK_CHUNK = 20_000
LAPLACE_SETTINGS: dict[str, Any] = {
    "optimizer": "L-BFGS, strong Wolfe line search, float64",
    "starts": "zero and 4 standard-normal points (numpy default_rng(seed))",
    "max_iter_per_start": 2000,
    "hessian": "torch.autograd.functional.hessian",
    "n_diagnostic_draws": 10_000,
}


# ------------------------------------------------------------------- targets
@dataclass
class Problem:
    """A built target: the log-density and what it is scored against."""

    log_target: Callable[[torch.Tensor], torch.Tensor]
    n_features: int
    log_z: float | None
    #: "exact", "quadrature" or "reference" (importance sampling), None if unknown
    log_z_source: str | None
    log_z_std_error: float | None = None
    #: component index of each row (mixtures), for the mass per mode
    mode_of: Callable[[Any], np.ndarray] | None = None
    mode_truth: list[float] | None = None
    info: dict[str, Any] = field(default_factory=dict)


def _blr(collinear: bool = False, tau: float | None = None) -> Problem:
    """Conjugate Bayesian linear regression on the raw diabetes features and an
    intercept: y ~ N(Xw, 55^2), w_0 ~ N(0, 100^2), w_k ~ N(0, tau^2); with
    ``collinear`` an extra column s1 + s2 + 1e-3 sd(s1) noise and tau = 1000."""
    X, y = load_diabetes(return_X_y=True, scaled=False)
    if collinear:
        rng = np.random.default_rng(1)
        extra = X[:, 4] + X[:, 5] + 1e-3 * X[:, 4].std() * rng.standard_normal(len(y))
        X = np.column_stack([X, extra])
    X = np.column_stack([np.ones(len(y)), X])
    sigma, b0 = 55.0, 100.0
    tau = tau if tau is not None else (1000.0 if collinear else 10.0)
    n, p = X.shape
    prior_var = np.full(p, tau**2)
    prior_var[0] = b0**2
    Xt, yt, inv_var = torch.tensor(X), torch.tensor(y), torch.tensor(1.0 / prior_var)
    const = -0.5 * (n * LOG2PI + 2 * n * math.log(sigma)) - 0.5 * (
        p * LOG2PI + np.log(prior_var).sum()
    )

    def log_target(w: torch.Tensor) -> torch.Tensor:
        residual = yt.to(w)[None, :] - w @ Xt.to(w).T
        return (
            -0.5 * (residual**2).sum(1) / sigma**2
            - 0.5 * (w**2 * inv_var.to(w)).sum(1)
            + float(const)
        )

    # log Z = log N(y; 0, sigma^2 I + X diag(prior var) X^T)
    C = sigma**2 * np.eye(n) + (X * prior_var) @ X.T
    log_det = np.linalg.slogdet(C)[1]
    log_z = float(-0.5 * (n * LOG2PI + log_det + y @ np.linalg.solve(C, y)))
    precision = X.T @ X / sigma**2 + np.diag(1.0 / prior_var)
    covariance = np.linalg.inv(precision)
    info = {
        "posterior_cond": float(np.linalg.cond(covariance)),
        "posterior_sd_range": [
            float(np.sqrt(np.diag(covariance)).min()),
            float(np.sqrt(np.diag(covariance)).max()),
        ],
    }
    return Problem(log_target, p, log_z, "exact", info=info)


def _blr_big(
    n: int = 100_000, p: int = 6, sigma: float = 1.0, tau: float = 10.0, seed: int = 0
) -> Problem:
    """Conjugate Bayesian linear regression on ``n`` synthetic rows, written with
    the sufficient statistics (y'y, X'y, X'X) as a user would for speed:
    log h is about -n/2 at the mode. Exact log Z."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, p)) + rng.uniform(-3, 3, p)
    X[:, 0] = 1.0
    w = rng.standard_normal(p)
    y = X @ w + sigma * rng.standard_normal(n)
    yy, Xy, XX = float(y @ y), X.T @ y, X.T @ X
    const = -0.5 * n * math.log(2 * math.pi * sigma**2) - 0.5 * p * math.log(2 * math.pi * tau**2)
    XXt, Xyt = torch.tensor(XX), torch.tensor(Xy)

    def log_target(wb: torch.Tensor) -> torch.Tensor:
        quadratic = (wb @ XXt.to(wb) * wb).sum(1)
        rss = yy - 2 * wb @ Xyt.to(wb) + quadratic
        return -0.5 * rss / sigma**2 - 0.5 * (wb**2).sum(1) / tau**2 + const

    precision = XX / sigma**2 + np.eye(p) / tau**2
    mean = np.linalg.solve(precision, Xy / sigma**2)
    log_z = (
        const
        + 0.5 * p * LOG2PI
        - 0.5 * np.linalg.slogdet(precision)[1]
        - 0.5 * yy / sigma**2
        + 0.5 * mean @ precision @ mean
    )
    return Problem(log_target, p, float(log_z), "exact")


def _correlated_gauss(d: int = 30, cond: float = 1e3, seed: int = 0) -> Problem:
    """A Gaussian with a random rotation, variances 0.05 to 50 (log-spaced),
    mean 40 + 15 N(0, 1) per coordinate, and log Z = 3.7."""
    rng = np.random.default_rng(seed)
    Q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    variances = np.logspace(0, math.log10(cond), d) * 0.05
    covariance = (Q * variances) @ Q.T
    mean = rng.standard_normal(d) * 15 + 40.0
    L = np.linalg.cholesky(covariance)
    Lt, mt = torch.tensor(L), torch.tensor(mean)
    offset = 3.7
    log_det = 2 * np.log(np.diag(L)).sum()

    def log_target(x: torch.Tensor) -> torch.Tensor:
        z = torch.linalg.solve_triangular(Lt.to(x), (x - mt.to(x)).T, upper=False).T
        return -0.5 * (z**2).sum(1) - 0.5 * (d * LOG2PI + log_det) + offset

    return Problem(
        log_target, d, offset, "exact", info={"cond": float(np.linalg.cond(covariance))}
    )


def _student_t(d: int = 10, nu: float = 3.0, seed: int = 0) -> Problem:
    """Multivariate Student t of ``nu`` degrees of freedom around 5, scale
    A A^T + I/2 (A Gaussian / sqrt(d)), its normalising constant dropped."""
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((d, d)) / math.sqrt(d)
    covariance = A @ A.T + 0.5 * np.eye(d)
    mean = np.full(d, 5.0)
    L = np.linalg.cholesky(covariance)
    Lt, mt = torch.tensor(L), torch.tensor(mean)
    log_det = 2 * np.log(np.diag(L)).sum()
    norm = (
        special.gammaln((nu + d) / 2)
        - special.gammaln(nu / 2)
        - d / 2 * math.log(nu * math.pi)
        - 0.5 * log_det
    )

    def log_target(x: torch.Tensor) -> torch.Tensor:
        z = torch.linalg.solve_triangular(Lt.to(x), (x - mt.to(x)).T, upper=False).T
        return -(nu + d) / 2 * torch.log1p((z**2).sum(1) / nu)

    return Problem(log_target, d, float(-norm), "exact")


def _gaussian_mixture(
    means: np.ndarray, sds: np.ndarray, weights: np.ndarray, log_mass: float
) -> tuple[Callable, Callable]:
    """log h and the component labels of a diagonal Gaussian mixture of total
    mass exp(log_mass)."""
    d = means.shape[1]
    mt, st, lw = torch.tensor(means), torch.tensor(sds), torch.tensor(np.log(weights))

    def components(x: torch.Tensor) -> torch.Tensor:
        z = (x[:, None, :] - mt.to(x)[None]) / st.to(x)[None]
        return (
            -0.5 * (z**2).sum(2)
            - torch.log(st.to(x)).sum(1)[None]
            - 0.5 * d * LOG2PI
            + lw.to(x)[None]
        )

    def log_target(x: torch.Tensor) -> torch.Tensor:
        return torch.logsumexp(components(x), 1) + log_mass

    def mode_of(x: Any) -> np.ndarray:
        return components(torch.as_tensor(x, dtype=torch.float64)).argmax(1).numpy()

    return log_target, mode_of


def _mixture(d: int = 8, weights=(0.95, 0.05), sep: float = 12.0, seed: int = 0) -> Problem:
    """Two Gaussians (sd 1 and 0.6) about 12 apart, shifted by 3; log Z = 2.5."""
    rng = np.random.default_rng(seed)
    means = np.zeros((2, d))
    means[0] = -sep / 2 / math.sqrt(d)
    means[1] = sep / 2 / math.sqrt(d)
    means[1] += rng.standard_normal(d) * 0.5
    means = means + 3.0
    sds = np.array([np.full(d, 1.0), np.full(d, 0.6)])
    w = np.array(weights)
    log_target, mode_of = _gaussian_mixture(means, sds, w, 2.5)
    info = {"mode_distance": float(np.linalg.norm(means[0] - means[1]))}
    return Problem(log_target, d, 2.5, "exact", mode_of=mode_of, mode_truth=w.tolist(), info=info)


def _mixture_small_near(d: int = 8, seed: int = 0) -> Problem:
    """A 5% mode (sd 0.6) at 0.5 near the origin and the 95% mode (sd 1) at
    5 + N(0, 0.25) far from it: which does the automatic domain find? log Z = 2.5."""
    rng = np.random.default_rng(seed)
    means = np.zeros((2, d))
    means[0] = 0.5
    means[1] = 5.0 + rng.standard_normal(d) * 0.5
    sds = np.array([np.full(d, 0.6), np.full(d, 1.0)])
    w = np.array([0.05, 0.95])
    log_target, mode_of = _gaussian_mixture(means, sds, w, 2.5)
    return Problem(log_target, d, 2.5, "exact", mode_of=mode_of, mode_truth=w.tolist())


def _mix3(d: int = 10, shift: float = 20.0, seed: int = 0) -> Problem:
    """Three unit Gaussians, weights 0.90/0.07/0.03, the small ones 7 from the
    large one in random directions, all shifted by +20; log Z = -1.3."""
    rng = np.random.default_rng(seed)
    u = rng.standard_normal((2, d))
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    means = np.stack([np.zeros(d), 7.0 * u[0], 7.0 * u[1]]) + shift
    w = np.array([0.90, 0.07, 0.03])
    log_target, mode_of = _gaussian_mixture(means, np.ones_like(means), w, -1.3)
    info = {"distance_small_modes": float(np.linalg.norm(means[1] - means[2]))}
    return Problem(log_target, d, -1.3, "exact", mode_of=mode_of, mode_truth=w.tolist(), info=info)


def _ring(d: int = 2, centre: float = 50.0, radius: float = 20.0, width: float = 1.0) -> Problem:
    """A ring (spherical shell) of radius 20 and width 1 about (50, -30, 50, ...);
    log Z by quadrature of the radial integral."""
    c = torch.full((d,), centre, dtype=torch.float64)
    c[1::2] = -30.0

    def log_target(x: torch.Tensor) -> torch.Tensor:
        r = torch.linalg.norm(x - c.to(x), dim=1)
        return -0.5 * ((r - radius) / width) ** 2

    # log Z = log(S_{d-1} int r^{d-1} exp(-(r - R)^2 / 2 w^2) dr)
    surface = math.log(2) + d / 2 * math.log(math.pi) - special.gammaln(d / 2)
    value, _ = integrate.quad(
        lambda r: r ** (d - 1) * math.exp(-0.5 * ((r - radius) / width) ** 2),
        0,
        radius + 40 * width,
        epsabs=0,
        epsrel=1e-12,
        limit=400,
        points=[radius],
    )
    return Problem(log_target, d, float(surface + math.log(value)), "quadrature")


def _banana(centre: float = 50.0, scale: float = 20.0, b: float = 0.05) -> Problem:
    """x_1 ~ N(50, 20^2), x_2 | x_1 ~ N(b (x_1 - 50)^2 - 10, 1); normalised."""

    def log_target(x: torch.Tensor) -> torch.Tensor:
        u = x[:, 0] - centre
        v = x[:, 1] - (b * u**2 - 10.0)
        return -0.5 * (u / scale) ** 2 - 0.5 * v**2 - LOG2PI - math.log(scale)

    return Problem(log_target, 2, 0.0, "exact")


def _hierarchical(J: int = 14, seed: int = 3) -> Problem:
    """Centred normal hierarchy: theta_j ~ N(mu, tau^2), y_j ~ N(theta_j, s_j^2),
    mu ~ N(0, 5^2), v = log tau ~ N(0, 1); parameters (mu, v, theta_1..J).

    log Z by quadrature over v (Simpson, 20,001 points on [-12, 8]) of the
    marginal likelihood with mu and theta integrated out in closed form
    (``hier14`` agrees with a 2-D quadrature over (mu, v))."""
    rng = np.random.default_rng(seed)
    s = rng.uniform(0.5, 2.0, J)
    y = 1.0 + 0.3 * rng.standard_normal(J) + s * rng.standard_normal(J)
    yt, st = torch.tensor(y), torch.tensor(s)
    mu_sd = 5.0

    def log_target(x: torch.Tensor) -> torch.Tensor:
        mu, v, theta = x[:, 0], x[:, 1], x[:, 2:]
        tau = torch.exp(v)
        lp = -0.5 * (mu / mu_sd) ** 2 - math.log(mu_sd) - 0.5 * LOG2PI
        lp = lp - 0.5 * v**2 - 0.5 * LOG2PI
        lp = lp + (
            -0.5 * ((theta - mu[:, None]) / tau[:, None]) ** 2 - v[:, None] - 0.5 * LOG2PI
        ).sum(1)
        lp = lp + (
            -0.5 * ((yt.to(x)[None] - theta) / st.to(x)[None]) ** 2
            - torch.log(st.to(x))[None]
            - 0.5 * LOG2PI
        ).sum(1)
        return lp

    # y | v ~ N(0, mu_sd^2 1 1^T + D), D = diag(tau^2 + s^2): the determinant
    # lemma and Sherman-Morrison, vectorised over the grid of v
    vs = np.linspace(-12.0, 8.0, 20001)
    D = np.exp(2 * vs)[:, None] + s[None] ** 2
    inv_sum = (1.0 / D).sum(1)
    log_det = np.log(D).sum(1) + np.log1p(mu_sd**2 * inv_sum)
    quadratic = (y**2 / D).sum(1) - mu_sd**2 * (y / D).sum(1) ** 2 / (1 + mu_sd**2 * inv_sum)
    log_marginal = -0.5 * (J * LOG2PI + log_det + quadratic) - 0.5 * vs**2 - 0.5 * LOG2PI
    top = log_marginal.max()
    log_z = top + math.log(integrate.simpson(np.exp(log_marginal - top), x=vs))
    posterior_v = np.exp(log_marginal - top)
    posterior_v /= posterior_v.sum()
    info = {
        "posterior_p_tau_below_0.1": float(posterior_v[vs < math.log(0.1)].sum()),
        "posterior_mean_log_tau": float((vs * posterior_v).sum()),
    }
    return Problem(log_target, J + 2, float(log_z), "quadrature", info=info)


#: Importance-sampling references of log Z for the logistic posteriors (no
#: closed form): multivariate-t proposals around the Laplace fit (df 4 with the
#: Laplace covariance inflated 1.5^2, and df 2 inflated 2.5^2), 10^6 draws each;
#: the estimate with the smaller standard error is kept. The other proposal gave
#: -4.26074 (SE 0.0036), -77.15005 (SE 0.0043) and -145.24598 (SE 0.0079):
#: within the combined standard errors.
LOGREG_REFERENCES: dict[str, tuple[float, float]] = {
    "logreg-iris": (-4.259760219526282, 0.002527768226248955),
    "logreg-mkcls": (-77.15051045298267, 0.0014846845184897349),
    "logreg-mk20": (-145.2547843856956, 0.0025085920649969484),
}


def _logistic(key: str, X: np.ndarray, y: np.ndarray, prior_sd: float) -> Problem:
    """Bayesian logistic regression with an intercept and a N(0, prior_sd^2 I) prior."""
    X = np.column_stack([np.ones(len(y)), X])
    Xt, signs = torch.tensor(X), torch.tensor(2.0 * y - 1.0)
    p = X.shape[1]

    def log_target(w: torch.Tensor) -> torch.Tensor:
        f = (w @ Xt.to(w).T) * signs.to(w)[None]
        return (
            torch.nn.functional.logsigmoid(f).sum(1)
            - 0.5 * (w**2).sum(1) / prior_sd**2
            - p * (math.log(prior_sd) + 0.5 * LOG2PI)
        )

    log_z, std_error = LOGREG_REFERENCES[key]
    return Problem(log_target, p, log_z, "reference", std_error)


def _logreg_iris(prior_sd: float = 5.0) -> Problem:
    """Iris setosa against versicolor (linearly separable), 4 raw features."""
    X, y = load_iris(return_X_y=True)
    keep = y < 2
    return _logistic("logreg-iris", X[keep], y[keep], prior_sd)


def _logreg_mkcls(prior_sd: float = 5.0) -> Problem:
    """make_classification, 150 rows, 8 features rescaled by up to 100 and shifted."""
    X, y = make_classification(
        n_samples=150,
        n_features=8,
        n_informative=5,
        n_redundant=2,
        class_sep=1.5,
        random_state=0,
    )
    X = X * np.array([1, 10, 0.1, 1, 100, 1, 1, 5]) + np.array([0, 50, 0, 0, -300, 0, 10, 0])
    return _logistic("logreg-mkcls", X, y, prior_sd)


def _logreg_mk20(prior_sd: float = 3.0) -> Problem:
    """make_classification, 300 rows, 20 features of scales 0.03 to 30 with offsets."""
    X, y = make_classification(
        n_samples=300,
        n_features=20,
        n_informative=6,
        n_redundant=4,
        class_sep=1.0,
        flip_y=0.05,
        random_state=1,
    )
    scales = np.logspace(-1.5, 1.5, 20)
    rng = np.random.default_rng(2)
    X = X * scales + rng.uniform(-5, 5, 20) * scales
    return _logistic("logreg-mk20", X, y, prior_sd)


def _expo(rates: Sequence[float] = (0.01, 0.1, 1.0, 10.0, 100.0)) -> Problem:
    """Independent exponentials, -inf outside the positive orthant (the mode is
    on the boundary); unnormalised exp(-r.x), so log Z = -sum log r."""
    r = torch.tensor(rates, dtype=torch.float64)

    def log_target(x: torch.Tensor) -> torch.Tensor:
        value = -(x * r.to(x)).sum(1)
        return torch.where((x > 0).all(1), value, torch.full_like(value, -math.inf))

    return Problem(log_target, len(rates), float(-np.log(rates).sum()), "exact")


def _offset_gauss(d: int = 4, offset: float = 1.0e6) -> Problem:
    """A standard Gaussian whose log-density carries a constant 1e6 (a
    log-likelihood summed over many rows): float32 holds log h to about 0.06."""

    def log_target(x: torch.Tensor) -> torch.Tensor:
        return -0.5 * (x**2).sum(1) + offset

    return Problem(log_target, d, offset + 0.5 * d * LOG2PI, "exact")


def _narrow_far(d: int = 3, loc: float = 2.0e4, sd: float = 0.01) -> Problem:
    """A narrow Gaussian far from zero (a measured physical quantity), mean
    (loc, -loc/3, loc, ...), normalised; float32 cannot resolve it at 2e4."""
    mt = torch.full((d,), loc, dtype=torch.float64)
    mt[1] = -loc / 3

    def log_target(x: torch.Tensor) -> torch.Tensor:
        z = (x - mt.to(x)) / sd
        return -0.5 * (z**2).sum(1) - d * math.log(sd) - 0.5 * d * LOG2PI

    return Problem(log_target, d, 0.0, "exact")


@dataclass(frozen=True)
class Case:
    """One target of the suite."""

    key: str
    factory: Callable[[], Problem]
    description: str


def make_cases() -> list[Case]:
    """Every target of the suite, in report order."""
    return [
        Case("blr-diabetes", lambda: _blr(False), "conjugate BLR, raw diabetes features"),
        Case(
            "blr-collinear",
            lambda: _blr(True),
            "conjugate BLR, diabetes + a column s1 + s2 + 1e-3 noise, prior sd 1000",
        ),
        Case("blr-big", _blr_big, "conjugate BLR on 10^5 rows via sufficient statistics"),
        Case("gauss30", lambda: _correlated_gauss(30), "correlated Gaussian, cond 1e3, mean ~40"),
        Case(
            "gauss50",
            lambda: _correlated_gauss(50, seed=4),
            "correlated Gaussian, cond 1e3, mean ~40",
        ),
        Case("t3-10d", lambda: _student_t(10), "Student t, 3 dof"),
        Case("t2-5d", lambda: _student_t(5, nu=2.0, seed=3), "Student t, 2 dof"),
        Case("cauchy3", lambda: _student_t(3, nu=1.0, seed=2), "multivariate Cauchy"),
        Case("ring2d", lambda: _ring(2), "ring of radius 20, width 1, at (50, -30)"),
        Case("ring5d", lambda: _ring(5), "spherical shell of radius 20, width 1, at scale 50"),
        Case("banana50", _banana, "banana, x_1 ~ N(50, 20^2), x_2 | x_1 parabolic, sd 1"),
        Case("hier14", lambda: _hierarchical(14), "centred normal hierarchy, 14 groups"),
        Case("hier20", lambda: _hierarchical(20, seed=5), "centred normal hierarchy, 20 groups"),
        Case("hier24", lambda: _hierarchical(24, seed=5), "centred normal hierarchy, 24 groups"),
        Case("hier30", lambda: _hierarchical(30, seed=5), "centred normal hierarchy, 30 groups"),
        Case("mix8-95-5", _mixture, "two Gaussians, weights 0.95 / 0.05, ~12 apart"),
        Case(
            "mix8-near-small",
            _mixture_small_near,
            "5% mode near the origin, 95% mode ~14 away",
        ),
        Case("mix3-10d", _mix3, "three unit Gaussians, weights 0.90 / 0.07 / 0.03, 7 apart"),
        Case("logreg-iris", _logreg_iris, "logistic, iris setosa vs versicolor (separable)"),
        Case("logreg-mkcls", _logreg_mkcls, "logistic, make_classification, rescaled features"),
        Case("logreg-mk20", _logreg_mk20, "logistic, 20 unscaled features with offsets"),
        Case("expo5", _expo, "five exponentials, rates 0.01 to 100, support x > 0"),
        Case("offset-gauss", _offset_gauss, "standard Gaussian + 1e6 in log h"),
        Case("narrow-far", _narrow_far, "Gaussian of sd 0.01 at 2e4"),
        Case("narrow-mid", lambda: _narrow_far(loc=2.0e3), "Gaussian of sd 0.01 at 2e3"),
    ]


#: Estimator options of the targets that need them, given to every estimator
#: method as a user would give them.
TARGET_OPTIONS: dict[str, dict[str, Any]] = {
    "expo5": {"feature_bounds": (0.0, np.inf)},
    "narrow-far": {"dtype": "float64"},
}


# ------------------------------------------------------------------ runner
class CountingTarget:
    """A log-density that counts the points it is evaluated at."""

    def __init__(self, log_target: Callable[[torch.Tensor], torch.Tensor]):
        self.log_target = log_target
        self.n_evaluations = 0

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.n_evaluations += x.shape[0]
        return self.log_target(x)


class TimeLimit(Exception):
    """Raised by the alarm of ``--time-limit``."""


def _alarm(signum, frame):
    raise TimeLimit


def new_record(case: Case, problem: Problem, method: str, seed: int) -> dict[str, Any]:
    """An empty result row of one (target, method, seed)."""
    return {
        "key": case.key,
        "method": method,
        "seed": seed,
        "n_features": problem.n_features,
        "options": dict(TARGET_OPTIONS.get(case.key, {})) if method != "laplace" else {},
        "status": "ok",
        "error": None,
        "traceback": None,
        "log_z_true": problem.log_z,
        "log_z_true_source": problem.log_z_source,
        "log_z_true_std_error": problem.log_z_std_error,
        "elbo": None,
        "ess": None,
        "log_z": None,
        "log_z_std_error": None,
        "reverse_kl": None,
        "log_z_error": None,
        "check_log_z": None,
        "check_log_z_std_error": None,
        "check_error": None,
        "check_ess": None,
        "check_elbo": None,
        "check_max_weight_share": None,
        "fit_seconds": None,
        "wall_seconds": None,
        "n_target_evaluations": None,
        "n_iter": None,
        "base_": None,
        "companion_weight_": None,
        "preconditioner_": None,
        "base_elbo_": None,
        "base_ess_": None,
        "base_kl_": None,
        "n_basis": None,
        "tt_ranks": None,
        "mode_masses": None,
        "mode_truth": problem.mode_truth,
        "laplace_mode_log_density": None,
        "laplace_log_z": None,
        "warnings": {},
        "warning_messages": [],
        "run": 0,
    }


def check_on_fresh_draws(
    log_target: Callable, x: torch.Tensor, log_q: torch.Tensor, record: dict[str, Any]
) -> None:
    """log Z, ESS and ELBO by importance sampling on draws ``x`` with log-densities
    ``log_q`` of the fitted model, the target evaluated in float64."""
    x = torch.as_tensor(x, dtype=torch.float64)
    with torch.no_grad():
        log_h = torch.cat([log_target(rows) for rows in x.split(CHECK_CHUNK)]).double()
    log_q = torch.as_tensor(log_q, dtype=torch.float64)
    diagnostics = importance_diagnostics(log_h, log_q)
    record["check_log_z"] = diagnostics.log_normalizer
    record["check_log_z_std_error"] = diagnostics.log_normalizer_std_error
    record["check_ess"] = diagnostics.ess
    record["check_elbo"] = diagnostics.elbo
    record["check_max_weight_share"] = float(torch.softmax(log_h - log_q, 0).max())


def fit_estimator(
    case: Case, problem: Problem, method: str, seed: int, record: dict[str, Any]
) -> torch.Tensor:
    """Fit one estimator method, fill ``record``; returns the check draws."""
    parameters = {
        "log_target": problem.log_target,
        "n_features": problem.n_features,
        "random_state": seed,
        **METHOD_PARAMETERS[method],
        **TARGET_OPTIONS.get(case.key, {}),
    }
    model = TensorizingFlowDensity(**parameters).fit()
    record.update(
        elbo=model.elbo_,
        ess=model.ess_,
        log_z=model.log_normalizer_,
        log_z_std_error=model.log_normalizer_std_error_,
        fit_seconds=model.fit_time_,
        n_target_evaluations=model.n_target_evaluations_,
        n_iter=model.n_iter_,
    )
    for name in (
        "base_",
        "companion_weight_",
        "preconditioner_",
        "base_elbo_",
        "base_ess_",
        "base_kl_",
    ):
        value = getattr(model, name, None)
        record[name] = value if value is None or isinstance(value, (str, int)) else float(value)
    tt = getattr(model, "tt_", None)
    if tt is not None:
        record["n_basis"] = int(tt.n_basis)
        ranks = getattr(tt, "tt_ranks", None)
        if ranks is not None:
            record["tt_ranks"] = [int(r) for r in ranks]
    x, log_q = model.sample_and_score(CHECK_DRAWS, random_state=seed + CHECK_SEED_OFFSET)
    x = torch.as_tensor(x, dtype=torch.float64)
    check_on_fresh_draws(problem.log_target, x, torch.as_tensor(log_q), record)
    return x


def fit_laplace(problem: Problem, seed: int, record: dict[str, Any]) -> torch.Tensor:
    """The Laplace approximation at the highest mode L-BFGS finds, scored on
    10,000 exact draws (and checked on 100,000 more); returns the check draws."""
    began = time.perf_counter()
    d = problem.n_features
    counting = CountingTarget(problem.log_target)
    rng = np.random.default_rng(seed)
    starts = [np.zeros(d)] + [rng.standard_normal(d) for _ in range(4)]
    best: tuple[torch.Tensor, float] | None = None
    for start in starts:
        point, _ = lbfgs_ascent(counting, start, LAPLACE_SETTINGS["max_iter_per_start"])
        with torch.no_grad():
            value = float(counting(point[None]))
        finite = math.isfinite(value) and bool(torch.isfinite(point).all())
        if finite and (best is None or value > best[1]):
            best = (point, value)
    if best is None:
        raise RuntimeError(
            f"no mode in reach: none of the {len(starts)} L-BFGS starts reached a finite "
            "point with a finite log-density"
        )
    mode, value = best
    hessian = torch.autograd.functional.hessian(lambda p: problem.log_target(p[None]).sum(), mode)
    counting.n_evaluations += 1
    factor = torch.linalg.cholesky(-0.5 * (hessian + hessian.T))  # precision = F F^T
    log_det_covariance = -2 * float(torch.log(torch.diagonal(factor)).sum())

    def draw(n: int, generator_seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        generator = torch.Generator().manual_seed(generator_seed)
        z = torch.randn(n, d, generator=generator, dtype=torch.float64)
        x = mode + torch.linalg.solve_triangular(factor.T, z.T, upper=True).T
        log_q = -0.5 * z.square().sum(1) - 0.5 * (d * LOG2PI + log_det_covariance)
        return x, log_q

    x, log_q = draw(LAPLACE_SETTINGS["n_diagnostic_draws"], seed)
    with torch.no_grad():
        log_h = counting(x)
    diagnostics = importance_diagnostics(log_h, log_q)
    record.update(
        elbo=diagnostics.elbo,
        ess=diagnostics.ess,
        log_z=diagnostics.log_normalizer,
        log_z_std_error=diagnostics.log_normalizer_std_error,
        n_target_evaluations=counting.n_evaluations,
        laplace_mode_log_density=value,
        laplace_log_z=value + 0.5 * (d * LOG2PI + log_det_covariance),
    )
    record["fit_seconds"] = time.perf_counter() - began
    x, log_q = draw(CHECK_DRAWS, seed + CHECK_SEED_OFFSET)
    check_on_fresh_draws(problem.log_target, x, log_q, record)
    return x


def run_one(
    case: Case, problem: Problem, method: str, seed: int, time_limit: float
) -> dict[str, Any]:
    """Fit one method on one target with one seed; failures become rows."""
    record = new_record(case, problem, method, seed)
    start = time.perf_counter()
    caught: list[warnings.WarningMessage] = []
    previous = None
    if time_limit > 0:
        previous = signal.signal(signal.SIGALRM, _alarm)
        signal.setitimer(signal.ITIMER_REAL, time_limit)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            if method == "laplace":
                samples = fit_laplace(problem, seed, record)
            else:
                samples = fit_estimator(case, problem, method, seed, record)
            if problem.mode_of is not None and problem.mode_truth is not None:
                labels = problem.mode_of(samples)
                counts = np.bincount(labels, minlength=len(problem.mode_truth))
                record["mode_masses"] = (counts / len(labels)).tolist()
    except TimeLimit:
        record["status"] = "timeout"
        record["error"] = f"stopped after the time limit of {time_limit:g} s"
    except Exception as error:  # a failing fit is a result, not a crash
        record["status"] = "failed"
        record["error"] = f"{type(error).__name__}: {error}"[:2000]
        record["traceback"] = traceback.format_exc(limit=6)[-4000:]
    finally:
        if time_limit > 0:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
    record["wall_seconds"] = time.perf_counter() - start
    record["warnings"] = count_warnings(caught)
    messages = []
    for item in caught:
        text = f"{item.category.__name__}: {str(item.message).strip()}"[:1000]
        if text not in messages:
            messages.append(text)
    record["warning_messages"] = messages
    truth = problem.log_z
    if truth is not None and record["elbo"] is not None:
        record["reverse_kl"] = truth - record["elbo"]
        record["log_z_error"] = record["log_z"] - truth
    if truth is not None and record["check_log_z"] is not None:
        record["check_error"] = record["check_log_z"] - truth
    return record


def summary_line(record: dict[str, Any]) -> str:
    """One line of progress output."""
    if record["status"] != "ok":
        return f"{record['status']}: {record['error']}"[:300]
    return (
        f"rev KL {format_value(record['reverse_kl'], '.3g')}, log Z err "
        f"{format_value(record['log_z_error'], '+.3g')} "
        f"(SE {format_value(record['log_z_std_error'], '.1g')}), check err "
        f"{format_value(record['check_error'], '+.3g')}, ESS "
        f"{format_value(record['ess'], '.3g')}, {format_value(record['fit_seconds'], '.1f')} s, "
        f"{sum(record['warnings'].values())} warnings"
    )


def warm_up(methods: Sequence[str]) -> None:
    """An untimed tiny fit of each estimator method, so that one-time costs
    (imports, first kernels) miss the first row."""

    def log_target(x: torch.Tensor) -> torch.Tensor:
        return -0.5 * (x**2).sum(1)

    for method in methods:
        if method == "laplace":
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                TensorizingFlowDensity(
                    log_target=log_target,
                    n_features=2,
                    max_iter=1,
                    random_state=0,
                    **METHOD_PARAMETERS[method],
                ).fit()
            except Exception as error:  # the real run reports failures
                print(f"warm-up failed: {type(error).__name__}: {error}", flush=True)


# ------------------------------------------------------------------ report
def target_metadata(case: Case, problem: Problem) -> dict[str, Any]:
    """What the report says about one target."""
    return {
        "key": case.key,
        "description": case.description,
        "n_features": problem.n_features,
        "log_z": problem.log_z,
        "log_z_source": problem.log_z_source,
        "log_z_std_error": problem.log_z_std_error,
        "options": dict(TARGET_OPTIONS.get(case.key, {})),
        "mode_truth": problem.mode_truth,
        "info": problem.info,
    }


def _with_se(value: Any, std_error: Any) -> str:
    if value is None:
        return "n/a"
    return f"{format_value(value, '+.2g')} ({format_value(std_error, '.1g')})"


def markdown_table(results: list[dict[str, Any]]) -> list[str]:
    """One row per target x method x seed."""
    header = (
        "| target | d | method | seed | base_ | n_basis | rev KL | log Z err (SE) | "
        "check err (SE) | ESS | fit s | evals | warn | status |"
    )
    lines = [header, header_rule(header)]
    for r in results:
        lines.append(
            f"| {r['key']} | {r['n_features']} | {r['method']} | {r['seed']} | "
            f"{r['base_'] or ('-' if r['method'] != 'laplace' else 'laplace')} | "
            f"{r['n_basis'] if r['n_basis'] is not None else '-'} | "
            f"{format_value(r['reverse_kl'], '.2g')} | "
            f"{_with_se(r['log_z_error'], r['log_z_std_error'])} | "
            f"{_with_se(r['check_error'], r['check_log_z_std_error'])} | "
            f"{format_value(r['ess'], '.3g')} | {format_value(r['fit_seconds'], '.1f')} | "
            f"{format_value(r['n_target_evaluations'], ',.0f')} | "
            f"{sum(r['warnings'].values())} | {r['status']} |"
        )
    return lines


def _options_text(options: dict[str, Any]) -> str:
    """``key=value, ...`` of estimator options as read back from the JSON
    (``(0.0, inf)`` for a pair of bounds, whose inf JSON holds as "inf")."""

    def text(value: Any) -> str:
        if isinstance(value, (list, tuple)):
            return "(" + ", ".join(text(item) for item in value) + ")"
        if isinstance(value, str) and value not in ("inf", "-inf", "nan"):
            return repr(value)
        return str(value)

    return ", ".join(f"{key}={text(value)}" for key, value in options.items())


def markdown_report(payload: dict[str, Any]) -> str:
    """Metadata, the table, the targets, notes per row and the columns."""
    meta, results = payload["metadata"], payload["results"]
    s = meta["settings"]
    lines = ["# Variational mode on adversarial targets, CPU", ""]
    if s["quick"]:
        lines += ["**Quick run** (smoke test): a subset of cheap targets.", ""]
    for index, run in enumerate(meta["runs"]):
        versions = ", ".join(f"{k} {v}" for k, v in run["versions"].items())
        lines += [
            f"- run {index}: date {run['date']}; command: `{run['command']}`",
            f"  - targets {', '.join(run['targets'])}; methods {', '.join(s['methods'])}; "
            f"seeds {', '.join(str(seed) for seed in s['seeds'])}",
            f"  - CPU: {run['cpu']} ({run['cpu_count']} CPUs), torch threads "
            f"{run['torch_num_threads']}, OMP_NUM_THREADS={run['omp_num_threads']}; load "
            f"average at start {run['load_average_start']}, at end "
            f"{run.get('load_average_end')}; wall time {run.get('wall_time_s', 0):.0f} s",
            f"  - versions: {versions}; sktt_flow {run['sktt_flow_version']} (git "
            f"{run['git']}, sources sha256 {run['sktt_flow_source_sha256'][:12]})",
        ]
    lines += [
        f"- estimator methods: defaults plus the method's base and the target's options; "
        f"check on {s['check_draws']:,} fresh draws (random_state = seed + "
        f"{s['check_seed_offset']}); time limit per fit {s['time_limit_s']:g} s "
        "(0: none)",
        "",
        *markdown_table(results),
        "",
        "## Targets",
        "",
    ]
    for t in payload["targets"]:
        log_z = "unknown" if t["log_z"] is None else f"{t['log_z']:.8g} ({t['log_z_source']}"
        if t["log_z"] is not None:
            if t["log_z_std_error"] is not None:
                log_z += f", standard error {t['log_z_std_error']:.1e}"
            log_z += ")"
        options = f"; options {_options_text(t['options'])}" if t["options"] else ""
        lines.append(
            f"- {t['key']}: {t['description']}; d {t['n_features']}; log Z {log_z}{options}"
        )
    lines += ["", "## Notes per row", ""]
    for r in results:
        notes = []
        if r["options"]:
            notes.append(f"options {_options_text(r['options'])}")
        if r["preconditioner_"] is not None:
            notes.append(
                f"preconditioner_ {r['preconditioner_']}, base self-check ESS "
                f"{format_value(r['base_ess_'], '.3g')}, companion weight "
                f"{format_value(r['companion_weight_'], '.3g')}"
            )
        if r["check_ess"] is not None:
            notes.append(
                f"check ESS {format_value(r['check_ess'], '.3g')}, largest weight share "
                f"{format_value(r['check_max_weight_share'], '.2g')}"
            )
        if r["mode_masses"] is not None:
            masses = ", ".join(f"{m:.4f}" for m in r["mode_masses"])
            truth = ", ".join(f"{m:g}" for m in r["mode_truth"])
            notes.append(f"mass per mode {masses} (truth {truth})")
        for text, count in r["warnings"].items():
            notes.append(f"{count} x {text}")
        if r["error"]:
            notes.append(f"error: {r['error'][:400]}")
        if notes:
            lines.append(f"- {r['key']} / {r['method']} / seed {r['seed']}: " + "; ".join(notes))
    lines += [
        "",
        "## Columns",
        "",
        "- **base_**, **n_basis**: the base the estimator kept and the TT's resolution.",
        "- **rev KL** = log Z - ELBO (the estimator's `elbo_` on 10,000 draws; >= 0 up to noise).",
        "- **log Z err (SE)**: `log_normalizer_` - log Z and the reported "
        "`log_normalizer_std_error_`; **check err (SE)**: the same on the fresh draws, "
        "the target in float64. For `logreg-*` log Z is an importance-sampling "
        "reference whose standard error (under Targets) adds to both.",
        "- **ESS**: `ess_`; **fit s**: `fit_time_` (laplace: wall time before the check); "
        "**evals**: `n_target_evaluations_` (laplace: points evaluated, draws included).",
        "- **warn**: warnings raised by the fit; **status**: ok, failed or timeout.",
        "- **laplace**: the Gaussian at the best L-BFGS mode (zero and 4 random starts, "
        "float64) with the inverse negative Hessian as covariance, scored on 10,000 exact "
        "draws.",
    ]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------- main
def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    keys = [case.key for case in make_cases()]
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--only", nargs="+", choices=keys, metavar="NAME", help=f"targets: {', '.join(keys)}"
    )
    parser.add_argument(
        "--methods",
        nargs="+",
        choices=METHODS,
        default=list(DEFAULT_METHODS),
        help=f"methods (default: {' '.join(DEFAULT_METHODS)})",
    )
    parser.add_argument(
        "--seeds", nargs="+", type=int, default=[0], help="random states (default: 0)"
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"targets {', '.join(QUICK_KEYS)} only (about a minute): a smoke test",
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=Path(__file__).resolve().parent / "results" / "vi_adversarial",
        help="directory for vi_adversarial.json and .md "
        "(default: benchmarks/results/vi_adversarial/)",
    )
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument(
        "--time-limit",
        type=float,
        default=1200.0,
        help="seconds per fit before it is stopped and recorded as a timeout (0: none)",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the suite and write the results; returns the exit status."""
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    cases = make_cases()
    keys = args.only or (QUICK_KEYS if args.quick else [case.key for case in cases])
    cases = [case for case in cases if case.key in keys]
    run = run_metadata("targets", [case.key for case in cases])
    print(
        f"VI adversarial benchmark on {run['cpu']}, {run['torch_num_threads']} threads, "
        f"targets {', '.join(run['targets'])}, methods {', '.join(args.methods)}, "
        f"seeds {args.seeds}",
        flush=True,
    )
    warm_up(args.methods)
    start = time.perf_counter()
    targets, results = [], []
    for case in cases:
        problem = case.factory()
        targets.append(target_metadata(case, problem))
        for method in args.methods:
            for seed in args.seeds:
                print(f"[{case.key}] {method} seed {seed} ...", flush=True)
                record = run_one(case, problem, method, seed, args.time_limit)
                print(f"    {summary_line(record)}", flush=True)
                results.append(record)
    run["wall_time_s"] = time.perf_counter() - start
    run["load_average_end"] = load_average()
    payload: dict[str, Any] = {
        "metadata": {
            "settings": {
                "quick": args.quick,
                "methods": list(args.methods),
                "seeds": list(args.seeds),
                "method_parameters": {m: METHOD_PARAMETERS.get(m) for m in args.methods},
                "target_options": TARGET_OPTIONS,
                "check_draws": CHECK_DRAWS,
                "check_seed_offset": CHECK_SEED_OFFSET,
                "laplace": LAPLACE_SETTINGS,
                "time_limit_s": args.time_limit,
            },
            "runs": [run],
        },
        "targets": targets,
        "results": results,
    }
    stem = "vi_adversarial"
    write_results(payload, args.output, stem, markdown_report, merge=False, order=[], methods=[])
    print(f"Wrote {args.output / stem}.json and .md in {run['wall_time_s']:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
