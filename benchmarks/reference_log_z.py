"""Reference log-normalisers (model evidences) of the posterior targets, by importance sampling.

The targets of ``sktt_flow/targets/posteriors.py`` are re-implemented here from
their definitions with numpy and scipy only (the data from
``sklearn.datasets``); nothing of ``sktt_flow`` is imported, so that a bug in the
package cannot cancel out of the comparison.

``logreg-breast_cancer``, ``logreg-wine``
    Bayesian logistic regression (intercept, standardised features, prior
    ``N(0, 1)`` on every coefficient). ``log Z`` by importance sampling with a
    multivariate Student-t proposal (5 degrees of freedom): a first pilot run
    centred at the MAP with the Laplace covariance (Newton's method, written
    out here), a second one centred at the importance-weighted posterior mean
    with the weighted covariance of the first, and the final run, with fresh
    draws, at the moments of the second, its scale inflated by 1.1. The
    target is at most the Gaussian prior times 1 and the t proposal has
    polynomial tails, so the weights are bounded and their variance finite:
    the delta-method standard error is valid. It is reported next to the
    spread of the per-batch estimates, which must agree with it.
``eight-schools``, ``eight-schools-noncentered``
    The eight-schools model in the coordinates of ``EightSchools`` (``mu``,
    ``log tau``, then ``theta_j`` or ``eta_j = (theta_j - mu) / tau``). ``log Z``
    exactly, by scipy's adaptive quadrature over ``log tau`` after integrating
    ``theta`` and ``mu`` in closed form, and by importance sampling of the
    full 10-D density as a cross-check: ``(mu, log tau)`` from a bivariate
    Student-t (5 degrees of freedom) fitted by two pilot runs as above, then
    ``theta_j | mu, tau ~ N(mu, tau^2)`` (``eta_j ~ N(0, 1)``). A t proposal
    on all ten coordinates would have unbounded weights (the centred density
    grows like ``tau^-7`` in the funnel's neck); this one has bounded weights,
    since the likelihood is bounded and the t's tails are heavier than the
    prior's. The mass outside each target's suggested box is computed exactly
    from the same factorisation.

For the logistic posteriors the script also reports the MAP, the box
``MAP +- 8 Laplace standard deviations`` and the importance-weighted share of
draws outside it; the tests check that they agree with the package's classes.

Usage (from the repository root)::

    python benchmarks/reference_log_z.py            # 2e6 draws per target, ~2 minutes
    python benchmarks/reference_log_z.py --quick    # 2e5 draws, into /tmp by default

Writes ``posterior_reference.json`` (date, command, versions, seeds, settings
and every number) and ``posterior_reference.md`` into ``--output`` (default
``benchmarks/results/``).
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import itertools
import json
import math
import os
import platform
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy import integrate, special, stats
from sklearn import datasets
from threadpoolctl import threadpool_limits

SEED = 20240613
DOF = 5.0
INFLATION = 1.1
PILOT_INFLATION = 1.2  # the Laplace pilot: wider, since the posterior is skewed
N_PILOT = 200_000
N_DRAWS = 2_000_000
BATCH = 25_000
LAPLACE_HALF_WIDTH = 8.0
LOG_2PI = math.log(2.0 * math.pi)

# -- eight schools ----------------------------------------------------------------------
EFFECTS = np.array([28.0, 8.0, -3.0, 7.0, -1.0, 1.0, 18.0, 12.0])
STD_ERRORS = np.array([15.0, 10.0, 16.0, 11.0, 9.0, 11.0, 10.0, 18.0])
MU_SCALE = TAU_SCALE = 5.0
#: The suggested boxes of EightSchools (centred, non-centred), as documented there.
EIGHT_SCHOOLS_BOX = {
    True: [[-20.0, 30.0], [-7.0, 4.0]] + [[-40.0, 60.0]] * 8,
    False: [[-20.0, 30.0], [-7.0, 4.0]] + [[-5.0, 5.0]] * 8,
}


def eight_schools_log_joint(x: np.ndarray, centered: bool) -> np.ndarray:
    """``log p(y, mu, tau, theta)`` plus the log-Jacobian, at rows of ``x`` (m, 10)."""
    mu, log_tau, rest = x[:, 0], x[:, 1], x[:, 2:]
    tau = np.exp(log_tau)
    theta = rest if centered else mu[:, None] + tau[:, None] * rest
    log_prior = (
        stats.norm.logpdf(mu, scale=MU_SCALE)
        + stats.halfcauchy.logpdf(tau, scale=TAU_SCALE)
        + log_tau  # d tau = tau d log tau
        + stats.norm.logpdf(theta, loc=mu[:, None], scale=tau[:, None]).sum(1)
    )
    if not centered:
        log_prior = log_prior + 8.0 * log_tau  # d theta = tau^8 d eta
    return log_prior + stats.norm.logpdf(EFFECTS, loc=theta, scale=STD_ERRORS).sum(1)


def eight_schools_conditionals(log_tau: np.ndarray):
    """Given ``log tau``: the precision and mean of ``mu | tau, y`` and the log evidence
    ``log p(y | tau)`` (theta and mu integrated analytically)."""
    variance = STD_ERRORS**2 + np.exp(2.0 * np.asarray(log_tau))[..., None]
    precision = 1.0 / MU_SCALE**2 + np.sum(1.0 / variance, -1)
    mean = np.sum(EFFECTS / variance, -1) / precision
    # int N(mu; 0, 25) prod_j N(y_j; mu, v_j) dmu, evaluated at mu = mean
    log_evidence = (
        stats.norm.logpdf(EFFECTS, loc=mean[..., None], scale=np.sqrt(variance)).sum(-1)
        + stats.norm.logpdf(mean, scale=MU_SCALE)
        + 0.5 * np.log(2.0 * math.pi / precision)
    )
    return precision, mean, variance, log_evidence


def eight_schools_log_marginal(log_tau):
    """``log p(y, log tau)``."""
    log_evidence = eight_schools_conditionals(log_tau)[3]
    return (
        log_evidence
        + stats.halfcauchy.logpdf(np.exp(log_tau), scale=TAU_SCALE)
        + np.asarray(log_tau)
    )


def eight_schools_quadrature() -> dict[str, Any]:
    """``log Z`` by scipy's adaptive quadrature over ``log tau``, and the posterior
    mass outside each suggested box, coordinate by coordinate."""
    shift = 31.0  # log Z is about -31: keeps the integrand near 1

    def density(u):
        return math.exp(float(eight_schools_log_marginal(u)) + shift)

    breaks = [-40.0, -10.0, -3.0, 0.0, 2.0, 4.0, 12.0]
    pieces = [
        integrate.quad(density, a, b, epsabs=0.0, epsrel=1e-13, limit=200)
        for a, b in itertools.pairwise(breaks)
    ]
    total = sum(value for value, _ in pieces)
    result: dict[str, Any] = {
        "log_z": math.log(total) - shift,
        "quad_error_estimate": sum(error for _, error in pieces) / total,
        "interval": [breaks[0], breaks[-1]],
    }
    # Marginals of mu, theta_j and eta_j are mixtures over log tau of Gaussians.
    nodes, weights = np.polynomial.legendre.leggauss(2000)
    log_tau = 26.0 * nodes - 14.0
    weights = 26.0 * weights * np.exp(eight_schools_log_marginal(log_tau) + shift) / total
    precision, mean, variance, _ = eight_schools_conditionals(log_tau)
    shrink = np.exp(2.0 * log_tau)[:, None] / variance
    theta_mean = shrink * EFFECTS + (1.0 - shrink) * mean[:, None]
    theta_std = np.sqrt(shrink * STD_ERRORS**2 + (1.0 - shrink) ** 2 / precision[:, None])
    # eta = (theta - mu) / tau = (shrink (y - mu) + noise) / tau, given tau
    tau = np.exp(log_tau)[:, None]
    eta_mean = shrink * (EFFECTS - mean[:, None]) / tau
    eta_std = np.sqrt(shrink**2 / precision[:, None] + shrink * STD_ERRORS**2) / tau
    mu_std = 1.0 / np.sqrt(precision)

    def outside(low, high, centre, scale):
        return weights @ (stats.norm.cdf(low, centre, scale) + stats.norm.sf(high, centre, scale))

    for centered, key in ((True, "centred"), (False, "noncentred")):
        box = np.asarray(EIGHT_SCHOOLS_BOX[centered])
        below = integrate.quad(density, -40.0, box[1, 0], epsrel=1e-10)[0] / total
        above = integrate.quad(density, box[1, 1], 12.0, epsrel=1e-10)[0] / total
        masses = [float(outside(*box[0], mean, mu_std)), below + above]
        centre, scale = (theta_mean, theta_std) if centered else (eta_mean, eta_std)
        masses += [float(outside(*box[2 + j], centre[:, j], scale[:, j])) for j in range(8)]
        result[f"mass_outside_box_{key}"] = {
            "per_coordinate": masses,
            "log_tau_below": below,
            "log_tau_above": above,
            "union_bound": float(sum(masses)),
        }
    result["posterior_mean"] = {
        "mu": float(weights @ mean),
        "log_tau": float(weights @ log_tau),
        "theta": (weights @ theta_mean).tolist(),
    }
    return result


# -- logistic regression ----------------------------------------------------------------
def logistic_data(dataset: str) -> tuple[np.ndarray, np.ndarray]:
    """Design matrix (intercept, standardised features) and label signs ``2 y - 1``."""
    if dataset == "breast_cancer":
        features, labels = datasets.load_breast_cancer(return_X_y=True)
    elif dataset == "wine":
        features, labels = datasets.load_wine(return_X_y=True)
        labels = (labels == 0).astype(np.int64)
    else:
        raise ValueError(f"unknown dataset {dataset!r}")
    standardised = (features - features.mean(0)) / features.std(0)
    design = np.hstack([np.ones((len(labels), 1)), standardised])
    return design, 2.0 * labels - 1.0


def logistic_log_posterior(
    design: np.ndarray, signs: np.ndarray, prior_scale: float
) -> Callable[[np.ndarray], np.ndarray]:
    """``beta -> sum_i log sigma(s_i a_i . beta) + log N(beta; 0, s^2 I)`` on rows."""
    d = design.shape[1]
    constant = -0.5 * d * (LOG_2PI + 2.0 * math.log(prior_scale))

    def log_density(beta: np.ndarray) -> np.ndarray:
        margins = (beta @ design.T) * signs
        log_likelihood = special.log_expit(margins).sum(1)
        return log_likelihood - 0.5 * np.sum(beta**2, 1) / prior_scale**2 + constant

    return log_density


def logistic_map(design, signs, prior_scale) -> tuple[np.ndarray, np.ndarray, int]:
    """MAP by Newton's method, the Laplace covariance there, and the step count."""
    labels = 0.5 * (signs + 1.0)
    d = design.shape[1]
    beta = np.zeros(d)
    for step in range(1, 101):  # noqa: B007 (the count is reported)
        probability = special.expit(design @ beta)
        gradient = design.T @ (labels - probability) - beta / prior_scale**2
        hessian = design.T @ (design * (probability * (1 - probability))[:, None])
        hessian += np.eye(d) / prior_scale**2
        delta = np.linalg.solve(hessian, gradient)
        beta += delta
        if np.max(np.abs(delta)) < 1e-13:
            break
    probability = special.expit(design @ beta)
    hessian = design.T @ (design * (probability * (1 - probability))[:, None])
    hessian += np.eye(d) / prior_scale**2
    return beta, np.linalg.inv(hessian), step


# -- importance sampling ----------------------------------------------------------------
def student_t_draws(mean, scale_tril, dof, n, rng):
    """``n`` draws of a multivariate t and their log-density."""
    d = mean.shape[0]
    normal = rng.standard_normal((n, d))
    chi_squared = rng.chisquare(dof, n)
    standard = normal / np.sqrt(chi_squared / dof)[:, None]
    draws = mean + standard @ scale_tril.T
    log_density = (
        special.gammaln(0.5 * (dof + d))
        - special.gammaln(0.5 * dof)
        - 0.5 * d * math.log(dof * math.pi)
        - np.sum(np.log(np.diag(scale_tril)))
        - 0.5 * (dof + d) * np.log1p(np.sum(standard**2, 1) / dof)
    )
    return draws, log_density


def summarise(log_weights: np.ndarray) -> dict[str, float]:
    """log mean(w), its delta-method standard error and the ESS."""
    n = log_weights.shape[0]
    log_z = float(special.logsumexp(log_weights) - math.log(n))
    normalised = np.exp(log_weights - special.logsumexp(log_weights))
    ess = 1.0 / float(np.sum(normalised**2))
    return {
        "log_z": log_z,
        "std_error": math.sqrt(max(n / ess - 1.0, 0.0) / (n - 1)),
        "ess": ess,
        "ess_fraction": ess / n,
        "max_normalised_weight": float(normalised.max()),
        "n_draws": n,
    }


class Proposal:
    """A proposal on the whole space: ``draw(n, rng) -> (x, log q(x))``, plus its
    description for the report."""

    def __init__(self, draw, description: dict[str, Any]):
        self.draw = draw
        self.description = description


def run_importance_sampling(
    log_target: Callable[[np.ndarray], np.ndarray],
    proposal: Proposal,
    n: int,
    rng: np.random.Generator,
    *,
    box: np.ndarray | None = None,
    keep_draws: bool = False,
) -> tuple[dict[str, Any], np.ndarray, np.ndarray | None]:
    """IS in batches of ``BATCH``: summary, log-weights and (optionally) the draws."""
    log_weights, kept, outside = [], [], []
    for start in range(0, n, BATCH):
        draws, log_q = proposal.draw(min(BATCH, n - start), rng)
        log_weights.append(log_target(draws) - log_q)
        if keep_draws:
            kept.append(draws)
        if box is not None:
            outside.append(np.any((draws < box[:, 0]) | (draws > box[:, 1]), axis=1))
    log_weights_all = np.concatenate(log_weights)
    summary = summarise(log_weights_all)
    batch_estimates = np.array([special.logsumexp(w) - math.log(len(w)) for w in log_weights])
    if len(batch_estimates) > 1:
        spread = batch_estimates.std(ddof=1) / math.sqrt(len(batch_estimates))
        summary["batch_std_error"] = float(spread)
        summary["n_batches"] = len(batch_estimates)
    if box is not None:
        mask = np.concatenate(outside)
        normalised = np.exp(log_weights_all - special.logsumexp(log_weights_all))
        summary["draws_outside_box"] = int(mask.sum())
        summary["weight_outside_box"] = float(normalised[mask].sum())
    return summary, log_weights_all, (np.concatenate(kept) if keep_draws else None)


def weighted_moments(draws: np.ndarray, log_weights: np.ndarray):
    """Importance-weighted mean and covariance."""
    normalised = np.exp(log_weights - special.logsumexp(log_weights))
    mean = normalised @ draws
    centred = draws - mean
    return mean, centred.T @ (centred * normalised[:, None])


def t_proposal(mean, covariance, inflation) -> Proposal:
    """Student-t proposal with scale matrix ``inflation^2 covariance``."""
    scale_tril = inflation * np.linalg.cholesky(covariance)

    def draw(n, rng):
        return student_t_draws(mean, scale_tril, DOF, n, rng)

    return Proposal(
        draw, {"family": f"multivariate t, {DOF:g} dof", "inflation": inflation, "dim": len(mean)}
    )


def adapted_t_proposal(log_target, first: Proposal, rng, n_pilot, *, joint=None):
    """Two pilot runs, each refitting the t's location and scale to weighted moments.

    ``joint`` maps the first coordinates' t draws to full draws (eight schools);
    the moments are then those of the first coordinates.
    """
    pilots = []
    proposal = first
    for _ in range(2):
        summary, log_weights, draws = run_importance_sampling(
            log_target, proposal, n_pilot, rng, keep_draws=True
        )
        pilots.append({k: summary[k] for k in ("log_z", "std_error", "ess_fraction")})
        dim = proposal.description["dim"]
        mean, covariance = weighted_moments(draws[:, :dim], log_weights)
        proposal = t_proposal(mean, covariance, INFLATION)
        if joint is not None:
            proposal = joint(proposal)
    return proposal, pilots, mean, covariance


# -- targets --------------------------------------------------------------------------
def logistic_reference(dataset: str, n_draws: int, n_pilot: int, seed: int) -> dict[str, Any]:
    """Reference log Z of one logistic-regression posterior."""
    start = time.perf_counter()
    prior_scale = 1.0
    design, signs = logistic_data(dataset)
    log_target = logistic_log_posterior(design, signs, prior_scale)
    mode, covariance, newton_steps = logistic_map(design, signs, prior_scale)
    half = LAPLACE_HALF_WIDTH * np.sqrt(np.diag(covariance))
    box = np.column_stack([mode - half, mode + half])
    rng = np.random.default_rng(seed)
    first = t_proposal(mode, covariance, PILOT_INFLATION)
    proposal, pilots, mean, moment_covariance = adapted_t_proposal(log_target, first, rng, n_pilot)
    summary, _, _ = run_importance_sampling(log_target, proposal, n_draws, rng, box=box)
    return {
        "model": "logistic_regression",
        "dataset": dataset,
        "prior_scale": prior_scale,
        "n_features": design.shape[1],
        "n_samples": design.shape[0],
        **summary,
        "method": "importance sampling, multivariate t proposal fitted to weighted moments",
        "proposal": proposal.description,
        "pilots": pilots,
        "laplace_t_proposal_ess_fraction": pilots[0]["ess_fraction"],
        "map_estimate": mode.tolist(),
        "newton_steps": newton_steps,
        "laplace_std": np.sqrt(np.diag(covariance)).tolist(),
        "posterior_mean": mean.tolist(),
        "posterior_std": np.sqrt(np.diag(moment_covariance)).tolist(),
        "mean_minus_map_in_laplace_std": float(
            np.max(np.abs(mean - mode) / np.sqrt(np.diag(covariance)))
        ),
        "domain": box.tolist(),
        "domain_rule": f"MAP +- {LAPLACE_HALF_WIDTH:g} Laplace standard deviations",
        "seed": seed,
        "seconds": time.perf_counter() - start,
    }


def eight_schools_reference(
    centered: bool, quadrature: dict[str, Any], n_draws: int, n_pilot: int, seed: int
) -> dict[str, Any]:
    """IS estimate of the eight-schools evidence in one parametrisation."""
    start = time.perf_counter()
    rng = np.random.default_rng(seed)

    def log_target(x):
        return eight_schools_log_joint(x, centered)

    def joint(head: Proposal) -> Proposal:
        """(mu, log tau) from ``head``, then theta | mu, tau from the prior."""

        def draw(n, rng):
            top, log_q = head.draw(n, rng)
            eta = rng.standard_normal((n, 8))
            log_q = log_q + stats.norm.logpdf(eta).sum(1)
            if centered:
                rest = top[:, :1] + np.exp(top[:, 1:2]) * eta
                log_q = log_q - 8.0 * top[:, 1]  # density of theta = mu + tau eta
            else:
                rest = eta
            return np.column_stack([top, rest]), log_q

        description = dict(head.description)
        description["rest"] = "theta_j | mu, tau ~ N(mu, tau^2)" if centered else "eta_j ~ N(0, 1)"
        return Proposal(draw, description)

    first = joint(t_proposal(np.array([4.0, 1.0]), np.diag([25.0, 2.25]), 1.0))
    proposal, pilots, mean, covariance = adapted_t_proposal(
        log_target, first, rng, n_pilot, joint=joint
    )
    box = np.asarray(EIGHT_SCHOOLS_BOX[centered])
    summary, _, _ = run_importance_sampling(log_target, proposal, n_draws, rng, box=box)
    key = "centred" if centered else "noncentred"
    mass = quadrature[f"mass_outside_box_{key}"]
    return {
        "model": "eight_schools",
        "centered": centered,
        "n_features": 10,
        "log_z_quadrature": quadrature["log_z"],
        **summary,
        "is_minus_quadrature_in_std_errors": (summary["log_z"] - quadrature["log_z"])
        / summary["std_error"],
        "method": "importance sampling of the 10-D density; log_z_quadrature is exact",
        "proposal": proposal.description,
        "proposal_mu_log_tau_mean": mean.tolist(),
        "proposal_mu_log_tau_covariance": covariance.tolist(),
        "pilots": pilots,
        "domain": box.tolist(),
        "mass_outside_domain_exact": mass,
        "seed": seed,
        "seconds": time.perf_counter() - start,
    }


# -- report -----------------------------------------------------------------------------
def versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in ("numpy", "scipy", "scikit-learn", "threadpoolctl"):
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def markdown(payload: dict[str, Any]) -> str:
    meta = payload["metadata"]
    lines = [
        "# Reference log Z of the posterior targets",
        "",
        f"- date {meta['date']}; command `{meta['command']}`; wall time "
        f"{meta['wall_time_s']:.0f} s on one thread ({meta['cpu_time_s']:.0f} s of CPU; "
        f"load average at start {meta['load_average_start']}, at end "
        f"{meta['load_average_end']}, on a shared machine)",
        "- versions: " + ", ".join(f"{k} {v}" for k, v in meta["versions"].items()),
        f"- seeds: {meta['seeds']}; proposal: multivariate t, {DOF:g} dof, two pilot runs "
        f"of {meta['settings']['n_pilot']:,} draws refitting it to weighted moments, scale "
        f"inflated by {INFLATION:g}; final runs of {meta['settings']['n_draws']:,} fresh draws "
        f"in batches of {BATCH:,}",
        "- written by `benchmarks/reference_log_z.py`, which does not import sktt_flow "
        "(the models are re-implemented with numpy / scipy, the data from sklearn.datasets)",
        "",
        "| key | d | log Z | std error (delta) | std error (batches) | ESS fraction | "
        "exact log Z (quadrature) | IS - exact (se) | weight outside box |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for key, entry in payload["targets"].items():
        exact = entry.get("log_z_quadrature")
        difference = (
            "n/a"
            if exact is None
            else f"{entry['log_z'] - exact:+.4f} "
            f"({entry['is_minus_quadrature_in_std_errors']:+.1f})"
        )
        lines.append(
            f"| {key} | {entry['n_features']} | {entry['log_z']:.5f} | "
            f"{entry['std_error']:.1e} | {entry.get('batch_std_error', float('nan')):.1e} | "
            f"{entry['ess_fraction']:.3f} | "
            + ("n/a" if exact is None else f"{exact:.10f}")
            + f" | {difference} | {entry['weight_outside_box']:.1e} "
            f"({entry['draws_outside_box']} draws) |"
        )
    lines += ["", "Notes:", ""]
    for key, entry in payload["targets"].items():
        if entry["model"] == "logistic_regression":
            lines.append(
                f"- {key}: {entry['n_samples']} rows; MAP by Newton in {entry['newton_steps']} "
                f"steps; a t proposal at the MAP with the Laplace covariance (x"
                f"{PILOT_INFLATION:g}) gives ESS fraction "
                f"{entry['laplace_t_proposal_ess_fraction']:.3f}, the moment-fitted one "
                f"{entry['ess_fraction']:.3f}; the posterior mean is up to "
                f"{entry['mean_minus_map_in_laplace_std']:.2f} Laplace std from the MAP "
                f"(skewness); box: {entry['domain_rule']}."
            )
        else:
            mass = entry["mass_outside_domain_exact"]
            lines.append(
                f"- {key}: exact mass outside the box: log tau below {mass['log_tau_below']:.2e}"
                f", above {mass['log_tau_above']:.2e}; mu {mass['per_coordinate'][0]:.1e}; "
                f"largest of the 8 others {max(mass['per_coordinate'][2:]):.1e}; in all at most "
                f"{mass['union_bound']:.2e}."
            )
    quad = payload["eight_schools_quadrature"]
    lines.append(
        f"- eight schools quadrature: scipy quad over log tau in {quad['interval']}, "
        f"relative error estimate {quad['quad_error_estimate']:.1e}; posterior mean mu "
        f"{quad['posterior_mean']['mu']:.4f}, log tau {quad['posterior_mean']['log_tau']:.4f}."
    )
    return "\n".join(lines) + "\n"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n-draws", type=int, default=None, help=f"default {N_DRAWS:,}")
    parser.add_argument("--n-pilot", type=int, default=N_PILOT)
    parser.add_argument(
        "--quick", action="store_true", help="200,000 draws per target, written to /tmp"
    )
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.n_draws is None:
        args.n_draws = 200_000 if args.quick else N_DRAWS
    if args.output is None:
        args.output = Path("/tmp") if args.quick else Path(__file__).resolve().parent / "results"
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    start = time.perf_counter()
    cpu_start = time.process_time()
    load_start = os.getloadavg() if hasattr(os, "getloadavg") else None
    seeds = {
        "logreg-breast_cancer": SEED,
        "logreg-wine": SEED + 1,
        "eight-schools": SEED + 2,
        "eight-schools-noncentered": SEED + 3,
    }
    targets: dict[str, Any] = {}
    with threadpool_limits(1):  # one core, as documented; the machine is shared
        for dataset in ("breast_cancer", "wine"):
            key = f"logreg-{dataset}"
            targets[key] = logistic_reference(dataset, args.n_draws, args.n_pilot, seeds[key])
            print(
                f"{key}: log Z {targets[key]['log_z']:.5f} +- {targets[key]['std_error']:.1e}"
                f" (ESS {targets[key]['ess_fraction']:.3f}, {targets[key]['seconds']:.0f} s)",
                flush=True,
            )
        quadrature = eight_schools_quadrature()
        for key, centered in (("eight-schools", True), ("eight-schools-noncentered", False)):
            targets[key] = eight_schools_reference(
                centered, quadrature, args.n_draws, args.n_pilot, seeds[key]
            )
            print(
                f"{key}: log Z {targets[key]['log_z']:.5f} +- {targets[key]['std_error']:.1e}"
                f" (quadrature {quadrature['log_z']:.10f}; {targets[key]['seconds']:.0f} s)",
                flush=True,
            )
    payload = {
        "metadata": {
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "command": shlex.join([sys.executable, *sys.argv]),
            "versions": versions(),
            "platform": platform.platform(),
            "seeds": seeds,
            "settings": {
                "dof": DOF,
                "inflation": INFLATION,
                "pilot_inflation": PILOT_INFLATION,
                "n_pilot": args.n_pilot,
                "n_draws": args.n_draws,
                "batch": BATCH,
                "laplace_half_width": LAPLACE_HALF_WIDTH,
            },
            "wall_time_s": time.perf_counter() - start,
            "cpu_time_s": time.process_time() - cpu_start,
            "load_average_start": load_start,
            "load_average_end": os.getloadavg() if hasattr(os, "getloadavg") else None,
        },
        "targets": targets,
        "eight_schools_quadrature": quadrature,
    }
    args.output.mkdir(parents=True, exist_ok=True)
    path = args.output / "posterior_reference.json"
    path.write_text(json.dumps(payload, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    (args.output / "posterior_reference.md").write_text(markdown(payload), encoding="utf-8")
    print(f"Wrote {path} and .md in {payload['metadata']['wall_time_s']:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
