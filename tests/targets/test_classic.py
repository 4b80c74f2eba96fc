"""Double Rosenbrock, Neal's funnel, banana and many-well: log Z and exact samples."""

import math

import numpy as np
import pytest
import torch
from scipy import integrate, stats

from sktt_flow.targets import Banana, DoubleRosenbrock, ManyWell, NealsFunnel


def _tensor(*columns):
    return torch.from_numpy(np.stack(columns, axis=1).astype(np.float64))


# -- double Rosenbrock -----------------------------------------------------------------
def _rosenbrock_energy(x, flip=False):
    """E_+ (or E_- with flip) written out from the definition."""
    x = np.array(x, dtype=np.float64)
    if flip:
        x[..., -1] = -x[..., -1]
    d = x.shape[-1]
    return sum(
        x[..., k] ** 2 + (x[..., k + 1] + 5 * (x[..., k] ** 2 + 1)) ** 2 for k in range(d - 1)
    )


def test_rosenbrock_log_prob_matches_definition():
    target = DoubleRosenbrock(5)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(20, 5)) * [0.3, 0.3, 0.3, 1.0, 40.0]
    expected = np.logaddexp(-0.5 * _rosenbrock_energy(x), -0.5 * _rosenbrock_energy(x, True))
    expected -= math.log(2.0)
    np.testing.assert_allclose(target.log_prob(torch.from_numpy(x)).numpy(), expected, rtol=1e-12)


def test_rosenbrock_log_normalizer_d3_matches_scipy():
    # Z = Z_+ by the mirror symmetry; x_3 integrates to sqrt(2 pi) exactly.
    def integrand(x2, x1):
        return math.exp(-0.5 * x1**2 - 0.5 * (x2 + 5 * (x1**2 + 1)) ** 2 - 0.5 * x2**2)

    value = integrate.dblquad(integrand, -3, 3, -30, 10, epsabs=0, epsrel=1e-11)[0]
    expected = math.log(value) + 0.5 * math.log(2 * math.pi)
    assert DoubleRosenbrock(3).log_normalizer == pytest.approx(expected, abs=1e-9)


def _gauss_legendre(n, low, high):
    nodes, weights = np.polynomial.legendre.leggauss(n)
    half = 0.5 * (np.asarray(high) - np.asarray(low))
    return 0.5 * (np.asarray(high) + np.asarray(low)) + half * nodes, half * weights


def test_rosenbrock_log_normalizer_d4_by_tensor_quadrature():
    """Brute-force Gauss–Legendre in x1, x2, x3 (x3 on a window that follows x2)."""
    x1, w1 = _gauss_legendre(150, -2.0, 2.0)
    x2, w2 = _gauss_legendre(150, -2.0, 2.0)
    centre = -2.5 * (x2**2 + 1)
    t, wt = _gauss_legendre(80, -8.0, 8.0)
    x3 = centre[:, None] + t[None, :]  # (150, 80), one window per x2
    e12 = x1[:, None] ** 2 + (x2[None, :] + 5 * (x1[:, None] ** 2 + 1)) ** 2  # (x1, x2)
    e23 = x2[:, None] ** 2 + (x3 + 5 * (x2[:, None] ** 2 + 1)) ** 2 + x3**2  # (x2, x3)
    inner = np.exp(-0.5 * e23) @ wt  # integral over x3, per x2
    value = w1 @ np.exp(-0.5 * e12) @ (w2 * inner)
    expected = math.log(value) + 0.5 * math.log(2 * math.pi)  # x4 integrates to sqrt(2 pi)
    assert DoubleRosenbrock(4).log_normalizer == pytest.approx(expected, abs=1e-9)


def test_rosenbrock_grid_convergence():
    target = DoubleRosenbrock(11)
    default = target.log_normalizer
    assert (
        abs(default - target.transfer_matrix_log_normalizer(n_nodes=512, half_width=4.0)) < 1e-10
    )
    assert abs(default - target.transfer_matrix_log_normalizer(n_nodes=160)) < 1e-10


def test_rosenbrock_samples_d3_first_coordinate_ks():
    # p(x1) ∝ exp(-x1^2/2 - 25 (x1^2 + 1)^2 / 4) once x2, x3 are integrated out.
    grid = np.linspace(-2.0, 2.0, 8001)
    density = np.exp(-0.5 * grid**2 - 6.25 * (grid**2 + 1) ** 2)
    cdf = np.r_[0.0, np.cumsum(0.5 * (density[1:] + density[:-1]) * np.diff(grid))]
    cdf /= cdf[-1]
    x = DoubleRosenbrock(3).sample(3000, random_state=0).numpy()
    assert stats.kstest(x[:, 0], lambda t: np.interp(t, grid, cdf)).pvalue > 1e-3


def test_rosenbrock_samples_d11_conditionals_and_modes():
    target = DoubleRosenbrock(11)
    x = target.sample(3000, random_state=1).numpy()
    z_prev = (x[:, -2] + 2.5 * (x[:, -3] ** 2 + 1)) / math.sqrt(0.5)
    z_last = 5 * (x[:, -2] ** 2 + 1) - np.abs(x[:, -1])
    assert stats.kstest(z_prev, "norm").pvalue > 1e-3
    assert stats.kstest(z_last, "norm").pvalue > 1e-3
    labels = target.mode_of(torch.from_numpy(x))
    assert abs(labels.double().mean().item() - 0.5) < 4 * 0.5 / math.sqrt(3000)
    # The chain coordinates x_1 .. x_{d-2} are checked by the d = 3 KS test and
    # the importance-sampling test; here, all draws lie in the suggested box.
    low, high = target.domain[:, 0], target.domain[:, 1]
    assert np.all((x > low) & (x < high))


def test_rosenbrock_importance_sampling_log_z():
    """Independent Monte Carlo: Z = 1 / E_p[g / p~] for a normalised g inside p's support."""
    target = DoubleRosenbrock(5)
    x = target.sample(4000, random_state=2)
    # g: x_1..x_3 from a narrow product Gaussian, x_4 | x_3, x_5 | x_4 from the
    # exact Gaussian conditionals of E_+ (mirrored as p is), so g / p~ is bounded.
    xn = x.numpy()
    log_g = stats.norm.logpdf(xn[:, :3], -0.1, 0.12).sum(1)
    log_g += stats.norm.logpdf(xn[:, 3], -2.5 * (xn[:, 2] ** 2 + 1), math.sqrt(0.5))
    log_g += stats.norm.logpdf(np.abs(xn[:, 4]), 5 * (xn[:, 3] ** 2 + 1), 1.0) - math.log(2.0)
    ratio = np.exp(log_g - target.log_prob(x).numpy())
    estimate = -math.log(ratio.mean())
    standard_error = ratio.std() / ratio.mean() / math.sqrt(len(ratio))
    assert abs(estimate - target.log_normalizer) < 4 * standard_error + 1e-3


# -- Neal's funnel -----------------------------------------------------------------------
def test_funnel_log_prob_matches_scipy():
    target = NealsFunnel(4)
    rng = np.random.default_rng(3)
    x = rng.normal(size=(10, 4)) * [3.0, 1.0, 1.0, 1.0]
    expected = stats.norm.logpdf(x[:, 0], 0, 3) + stats.norm.logpdf(
        x[:, 1:], 0, np.exp(x[:, :1] / 2)
    ).sum(1)
    np.testing.assert_allclose(target.log_prob(torch.from_numpy(x)).numpy(), expected, rtol=1e-12)


def test_funnel_log_normalizer_by_quadrature_d2():
    target = NealsFunnel(2)

    def marginal(v):  # integrate x over a range adapted to its scale exp(v / 2)
        s = math.exp(v / 2)
        return integrate.quad(
            lambda t: math.exp(target.log_prob(torch.tensor([[v, t]])).item()),
            -12 * s,
            12 * s,
            epsabs=0,
            epsrel=1e-10,
        )[0]

    nodes, weights = np.polynomial.legendre.leggauss(80)
    value = 24 * sum(w * marginal(24 * t) for t, w in zip(nodes, weights, strict=True))
    assert math.log(value) == pytest.approx(target.log_normalizer, abs=1e-7)


def test_funnel_samples_ks():
    x = NealsFunnel(5).sample(3000, random_state=4).numpy()
    assert stats.kstest(x[:, 0] / 3.0, "norm").pvalue > 1e-3
    assert stats.kstest((x[:, 1:] * np.exp(-x[:, :1] / 2)).ravel(), "norm").pvalue > 1e-3


# -- banana -------------------------------------------------------------------------------
def test_banana_log_normalizer_by_quadrature():
    """Gauss–Legendre in x1 over the domain, and in x2 on a window along the ridge."""
    target = Banana(2, curvature=0.1)
    x1, w1 = _gauss_legendre(400, -90.0, 90.0)
    ridge = -0.1 * (x1**2 - 100)
    t, wt = _gauss_legendre(60, -9.0, 9.0)
    x2 = ridge[:, None] + t[None, :]
    points = torch.from_numpy(np.stack([np.repeat(x1, 60), x2.ravel()], axis=1))
    density = np.exp(target.log_prob(points).numpy()).reshape(400, 60)
    assert math.log(w1 @ density @ wt) == pytest.approx(0.0, abs=1e-9)
    # The domain holds five standard deviations of both untwisted coordinates.
    (low0, high0), (low1, high1) = target.domain
    assert (low0, high0) == (-50.0, 50.0)
    inside = np.abs(x1) <= 50
    assert low1 <= ridge[inside].min() - 5 and high1 >= ridge[inside].max() + 5


def test_banana_log_prob_and_samples():
    target = Banana(3, curvature=0.03)
    x = target.sample(3000, random_state=5).numpy()
    untwisted = np.c_[x[:, 0] / 10.0, x[:, 1] + 0.03 * (x[:, 0] ** 2 - 100), x[:, 2]]
    for k in range(3):
        assert stats.kstest(untwisted[:, k], "norm").pvalue > 1e-3
    expected = stats.norm.logpdf(untwisted).sum(1) - math.log(10.0)
    np.testing.assert_allclose(target.log_prob(torch.from_numpy(x)).numpy(), expected, rtol=1e-12)


# -- many-well -------------------------------------------------------------------------
def _quartic(x):
    return -(x**4) + 6 * x**2 + 0.5 * x


def test_many_well_log_normalizer_pair_by_dblquad():
    value = integrate.dblquad(
        lambda x2, x1: math.exp(_quartic(x1) - 0.5 * x2**2), -5, 5, -12, 12, epsabs=0, epsrel=1e-11
    )[0]
    assert ManyWell(2).log_normalizer == pytest.approx(math.log(value), abs=1e-9)
    assert ManyWell(32).log_normalizer == pytest.approx(16 * math.log(value), abs=1e-8)
    # FAB's constant: Z_1 = 11784.50927
    z1 = math.exp(ManyWell(2).log_normalizer - 0.5 * math.log(2 * math.pi))
    assert z1 == pytest.approx(11784.50927, abs=1e-5)


def test_many_well_samples_ks_and_modes():
    target = ManyWell(8)
    x = target.sample(1000, random_state=6).numpy()
    grid = np.linspace(-4.0, 4.0, 16001)
    density = np.exp(_quartic(grid) - 9.0)
    cdf = np.r_[0.0, np.cumsum(0.5 * (density[1:] + density[:-1]) * np.diff(grid))]
    cdf /= cdf[-1]
    assert stats.kstest(x[:, 0::2].ravel(), lambda t: np.interp(t, grid, cdf)).pvalue > 1e-3
    assert stats.kstest(x[:, 1::2].ravel(), "norm").pvalue > 1e-3
    labels = target.mode_of(torch.from_numpy(x))
    assert target.n_modes == 16
    signs = (x[:, 0::2] > 0).astype(np.int64)
    np.testing.assert_array_equal(labels.numpy(), signs @ (2 ** np.arange(4)))
    positive = np.interp(0.0, grid, cdf)
    assert abs(signs.mean() - (1 - positive)) < 4 * math.sqrt(0.16 * 0.84 / signs.size)


def test_many_well_inverse_cdf_is_exact():
    """The draws solve the CDF equation of the quartic to near machine precision."""
    from sktt_flow.targets.classic import _double_well_grid, _double_well_log_density

    grid, _ = _double_well_grid()
    rng = np.random.default_rng(7)
    u_panel, u_inner = rng.random(500), rng.random(500)
    x = grid.sample(
        _double_well_log_density(grid.points),
        u_panel,
        u_inner,
        exact_log_density=_double_well_log_density,
    )
    panel = np.searchsorted(grid.edges, x, side="right") - 1
    for xi, p, u in zip(x[:50], panel[:50], u_inner[:50], strict=True):
        a, b = grid.edges[p], grid.edges[p + 1]
        f = lambda t: math.exp(_quartic(t) - 9.0)  # noqa: E731
        part = integrate.quad(f, a, xi, epsabs=0, epsrel=1e-13)[0]
        whole = integrate.quad(f, a, b, epsabs=0, epsrel=1e-13)[0]
        assert part == pytest.approx(u * whole, rel=1e-11, abs=1e-300)


def test_many_well_needs_even_dimension():
    with pytest.raises(ValueError, match="even"):
        ManyWell(5)
