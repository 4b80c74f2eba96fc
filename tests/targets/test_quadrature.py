"""The shared quadrature helpers, against closed forms."""

import numpy as np
import pytest
from scipy import stats

from sktt_flow.targets._quadrature import (
    ChainQuadrature,
    PanelInverseCDF,
    gauss_legendre,
    log_matvec,
    logsumexp,
)


def test_gauss_legendre_exact_to_degree_2n_minus_1():
    nodes, weights = gauss_legendre(6, -1.0, 3.0)
    for degree in range(12):
        exact = (3.0 ** (degree + 1) - (-1.0) ** (degree + 1)) / (degree + 1)
        assert weights @ nodes**degree == pytest.approx(exact, rel=1e-13)


def test_logsumexp_and_log_matvec_are_stable():
    a = np.array([-1e4, -1e4 + np.log(3.0)])
    assert logsumexp(a) == pytest.approx(-1e4 + np.log(4.0), rel=1e-15)
    rng = np.random.default_rng(0)
    log_v, log_k = rng.normal(size=5) * 300, rng.normal(size=(5, 4)) * 300
    direct = [logsumexp(log_v + log_k[:, j]) for j in range(4)]
    np.testing.assert_allclose(log_matvec(log_v, log_k), direct, rtol=1e-13)


def test_panel_inverse_cdf_inverts_the_exact_cdf():
    """Within its panel, every draw solves F(x) - F(a) = u (F(b) - F(a))."""
    grid = PanelInverseCDF(-9.0, 9.0, n_panels=48, order=12)
    rng = np.random.default_rng(1)
    u_panel, u_inner = rng.random(4000), rng.random(4000)
    x = grid.sample(stats.norm.logpdf(grid.points), u_panel, u_inner)
    panel = np.searchsorted(grid.edges, x, side="right") - 1
    left, right = grid.edges[panel], grid.edges[np.minimum(panel + 1, 48)]
    inside = stats.norm.cdf(x) - stats.norm.cdf(left)
    mass = stats.norm.cdf(right) - stats.norm.cdf(left)
    np.testing.assert_allclose(inside, u_inner * mass, rtol=1e-10, atol=1e-15)
    # The panel is drawn with probability equal to its mass.
    cumulative = stats.norm.cdf(grid.edges[1:]) - stats.norm.cdf(-9.0)
    expected = np.searchsorted(cumulative / cumulative[-1], u_panel, side="right")
    np.testing.assert_array_equal(panel, expected)


def test_panel_inverse_cdf_per_draw_densities():
    """One density per row: N(mu_i, 1) with different means."""
    grid = PanelInverseCDF(-12.0, 12.0, n_panels=64, order=12)
    rng = np.random.default_rng(2)
    mu = rng.uniform(-3, 3, size=3000)
    log_density = -0.5 * (grid.points[None] - mu[:, None, None]) ** 2
    x = grid.sample(log_density, rng.random(3000), rng.random(3000))
    assert stats.kstest(x - mu, "norm").pvalue > 1e-3


def test_panel_inverse_cdf_exact_refinement():
    grid = PanelInverseCDF(-6.0, 6.0, n_panels=16, order=6)  # a coarse interpolant
    rng = np.random.default_rng(3)
    u_panel, u_inner = rng.random(2000), rng.random(2000)
    log_density = stats.logistic.logpdf(grid.points)
    x = grid.sample(log_density, u_panel, u_inner, exact_log_density=stats.logistic.logpdf)
    panel = np.searchsorted(grid.edges, x, side="right") - 1
    left, right = grid.edges[panel], grid.edges[np.minimum(panel + 1, 16)]
    inside = stats.logistic.cdf(x) - stats.logistic.cdf(left)
    mass = stats.logistic.cdf(right) - stats.logistic.cdf(left)
    np.testing.assert_allclose(inside, u_inner * mass, rtol=1e-11, atol=1e-15)


def _gaussian_chain(d, a, b):
    """log p = -sum a x_k^2 / 2 - sum b (x_k - x_{k+1})^2 / 2, precision tridiagonal."""
    precision = np.diag(np.full(d, a)) + b * (
        np.diag(np.r_[1.0, np.full(d - 2, 2.0), 1.0]) - np.eye(d, k=1) - np.eye(d, k=-1)
    )
    chain = ChainQuadrature(
        lambda k, x: -0.5 * a * x * x,
        lambda k, x, y: -0.5 * b * (x - y) ** 2,
        np.tile([-12.0, 12.0], (d, 1)),
        n_nodes=160,
    )
    return chain, precision


def test_chain_log_normalizer_matches_gaussian_closed_form():
    chain, precision = _gaussian_chain(12, 1.0, 3.0)
    exact = 0.5 * 12 * np.log(2 * np.pi) - 0.5 * np.linalg.slogdet(precision)[1]
    assert chain.log_normalizer == pytest.approx(exact, abs=1e-11)


def test_chain_samples_match_gaussian_closed_form():
    chain, precision = _gaussian_chain(6, 1.0, 3.0)
    x = chain.sample(np.random.default_rng(4).random((3000, 6, 2)))
    covariance = np.linalg.inv(precision)
    # Marginals, and a projection that sees the correlations.
    for k in (0, 3, 5):
        assert stats.kstest(x[:, k] / np.sqrt(covariance[k, k]), "norm").pvalue > 1e-3
    direction = np.array([1.0, -2.0, 0.5, 1.0, -1.0, 2.0])
    scale = np.sqrt(direction @ covariance @ direction)
    assert stats.kstest(x @ direction / scale, "norm").pvalue > 1e-3
