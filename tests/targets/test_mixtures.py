"""Mixtures of Gaussians: densities against scipy, exact log Z, samples, constructors."""

import math

import numpy as np
import pytest
import torch
from scipy import stats

from sktt_flow.targets import MixtureOfGaussians


def _random_mixture(seed=0, k=3, d=3):
    rng = np.random.default_rng(seed)
    means = rng.normal(scale=3.0, size=(k, d))
    factors = rng.normal(size=(k, d, d))
    covariances = factors @ np.swapaxes(factors, 1, 2) + 0.5 * np.eye(d)
    weights = rng.uniform(0.5, 2.0, size=k)  # not normalised on purpose
    return means, covariances, weights


def test_log_prob_matches_scipy_with_unnormalised_weights():
    means, covariances, weights = _random_mixture()
    target = MixtureOfGaussians(means, covariances, weights)
    x = np.random.default_rng(1).normal(scale=3.0, size=(50, 3))
    expected = np.log(
        sum(
            w * stats.multivariate_normal(m, c).pdf(x)
            for m, c, w in zip(means, covariances, weights, strict=True)
        )
    )
    np.testing.assert_allclose(target.log_prob(torch.from_numpy(x)).numpy(), expected, rtol=1e-12)
    assert target.log_normalizer == pytest.approx(math.log(weights.sum()), rel=1e-15)


def test_log_normalizer_matches_2d_quadrature():
    means, covariances, weights = _random_mixture(seed=2, k=3, d=2)
    target = MixtureOfGaussians(means, covariances, weights)
    (low0, high0), (low1, high1) = target.domain
    nodes, weights_1d = np.polynomial.legendre.leggauss(300)
    x0 = 0.5 * (high0 + low0) + 0.5 * (high0 - low0) * nodes
    x1 = 0.5 * (high1 + low1) + 0.5 * (high1 - low1) * nodes
    w = np.outer(weights_1d, weights_1d) * 0.25 * (high0 - low0) * (high1 - low1)
    grid = np.stack(np.meshgrid(x0, x1, indexing="ij"), axis=-1).reshape(-1, 2)
    density = np.exp(target.log_prob(torch.from_numpy(grid)).numpy()).reshape(300, 300)
    assert math.log((w * density).sum()) == pytest.approx(target.log_normalizer, abs=1e-7)


def test_samples_projection_ks_and_component_labels():
    means, covariances, weights = _random_mixture(seed=3)
    target = MixtureOfGaussians(means, covariances, weights)
    x = target.sample(4000, random_state=0).numpy()
    direction = np.array([0.3, -1.0, 0.7])
    p = weights / weights.sum()
    centres = means @ direction
    scales = np.sqrt(np.einsum("i,kij,j->k", direction, covariances, direction))

    def cdf(t):
        t = np.asarray(t)[..., None]
        return (p * stats.norm.cdf((t - centres) / scales)).sum(-1)

    assert stats.kstest(x @ direction, cdf).pvalue > 1e-3


def test_mode_of_recovers_well_separated_components():
    target = MixtureOfGaussians.random_modes(8, 8, low=-20, high=20, std=0.5, seed=1)
    x = target.sample(3000, random_state=1)
    labels = target.mode_of(x)
    assert labels.dtype == torch.int64
    nearest = torch.cdist(x, torch.from_numpy(target.means)).argmin(1)
    assert torch.equal(labels, nearest)
    counts = torch.bincount(labels, minlength=8).double() / 3000
    assert torch.all((counts - 1 / 8).abs() < 4 * math.sqrt(1 / 8 * 7 / 8 / 3000))


def test_random_modes_8d():
    target = MixtureOfGaussians.random_modes(8, 8, low=-5.0, high=5.0, std=1.0, seed=0)
    assert target.n_modes == 8 and target.n_features == 8
    assert np.all((target.means >= -5) & (target.means <= 5))
    np.testing.assert_allclose(target.covariances, np.broadcast_to(np.eye(8), (8, 8, 8)))
    np.testing.assert_allclose(target.weights, np.full(8, 1 / 8))
    assert target.log_normalizer == pytest.approx(0.0, abs=1e-15)
    again = MixtureOfGaussians.random_modes(8, 8, low=-5.0, high=5.0, std=1.0, seed=0)
    np.testing.assert_array_equal(target.means, again.means)


def test_paper_30d_5mode_structure():
    target = MixtureOfGaussians.paper_30d_5mode()
    assert target.n_features == 30 and target.n_modes == 5
    np.testing.assert_allclose(target.weights, np.full(5, 0.2))
    np.testing.assert_array_equal(target.means[:, :28], 0.0)
    corners = {tuple(row) for row in target.means[:, 28:]}
    assert corners == {(0.0, 0.0), (1.0, 1.0), (-1.0, 1.0), (1.0, -1.0), (-1.0, -1.0)}
    for mean, covariance in zip(target.means, target.covariances, strict=True):
        correlation = covariance[28, 29] / 0.04
        assert correlation == pytest.approx(0.95 * np.sign(mean[28] * mean[29]))
        np.testing.assert_allclose(np.diag(covariance), 0.04)
    np.testing.assert_array_equal(target.domain, np.tile([-2.0, 2.0], (30, 1)))
    x = target.sample(2000, random_state=4)
    assert float(((x.abs() > 2).any(1)).double().mean()) < 0.005


def test_fab_40_modes_reproduces_fab_means():
    target = MixtureOfGaussians.fab_40_modes(seed=0)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        fab_means = (torch.rand((40, 2)) - 0.5) * 2 * 40
    np.testing.assert_array_equal(target.means, fab_means.double().numpy())
    assert target.n_modes == 40 and target.n_features == 2
    assert np.all(np.abs(target.means) <= 40)
    std = math.log1p(math.e)  # FAB: scale_tril = softplus(1.0)
    np.testing.assert_allclose(target.covariances, np.broadcast_to(std**2 * np.eye(2), (40, 2, 2)))
    identity = MixtureOfGaussians.fab_40_modes(std=1.0)
    np.testing.assert_allclose(identity.covariances[0], np.eye(2))


def test_invalid_parameters_raise():
    with pytest.raises(ValueError, match="covariances must have shape"):
        MixtureOfGaussians(np.zeros((2, 3)), np.ones((3, 3)))
    with pytest.raises(ValueError, match="positive definite"):
        MixtureOfGaussians(np.zeros((1, 2)), -np.eye(2)[None])
    with pytest.raises(ValueError, match="weights must be positive"):
        MixtureOfGaussians(np.zeros((2, 2)), np.ones(2), weights=[1.0, 0.0])


def test_diagonal_and_isotropic_covariances():
    full = MixtureOfGaussians([[0.0, 1.0]], [np.diag([2.0, 3.0])])
    diagonal = MixtureOfGaussians([[0.0, 1.0]], [[2.0, 3.0]])
    x = torch.randn(10, 2, dtype=torch.float64)
    torch.testing.assert_close(full.log_prob(x), diagonal.log_prob(x))
    isotropic = MixtureOfGaussians([[0.0, 1.0]], [2.0])
    torch.testing.assert_close(
        isotropic.log_prob(x), MixtureOfGaussians([[0.0, 1.0]], [[2.0, 2.0]]).log_prob(x)
    )
