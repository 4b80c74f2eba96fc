"""Ginzburg–Landau targets: energies, log Z against scipy, grid convergence, samples."""

import numpy as np
import pytest
import torch
from scipy import integrate, stats

from sktt_flow.targets import GinzburgLandau1D, GinzburgLandau2D

DELTA, BETA = 0.04, 1.0 / 8.0


def _energy_1d(u, delta=DELTA):
    """The energy written out site by site."""
    d = len(u)
    h = 1.0 / (d + 1)
    full = np.r_[0.0, u, 0.0]
    gradient = sum((delta / 2) * ((full[i] - full[i - 1]) / h) ** 2 for i in range(1, d + 2))
    return gradient + sum((1 - ui**2) ** 2 / (4 * delta) for ui in u)


def test_log_prob_matches_the_written_out_energy():
    target = GinzburgLandau1D(7)
    x = torch.randn(5, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    expected = [-BETA * _energy_1d(row) for row in x.numpy()]
    np.testing.assert_allclose(target.log_prob(x).numpy(), expected, rtol=1e-13)


def test_log_normalizer_d1_matches_scipy_quad():
    c = BETA * DELTA / (2 * 0.5**2)
    f = lambda u: np.exp(-2 * c * u * u - BETA * (1 - u * u) ** 2 / (4 * DELTA))  # noqa: E731
    reference = np.log(integrate.quad(f, -np.inf, np.inf, epsabs=0, epsrel=1e-13)[0])
    assert GinzburgLandau1D(1).log_normalizer == pytest.approx(reference, abs=1e-10)


def test_log_normalizer_d2_matches_scipy_dblquad():
    def integrand(v, u):
        return np.exp(-BETA * _energy_1d((u, v)))

    value = integrate.dblquad(integrand, -4, 4, -4, 4, epsabs=0, epsrel=1e-10)[0]
    assert GinzburgLandau1D(2).log_normalizer == pytest.approx(np.log(value), abs=1e-8)


@pytest.mark.parametrize(
    ("d", "expected"),
    [(16, 2.0274406213), (32, -12.6379446138), (50, -37.1658246441)],
)
def test_log_normalizer_grid_convergence(d, expected):
    target = GinzburgLandau1D(d)
    default = target.log_normalizer
    finer = target.transfer_matrix_log_normalizer(n_nodes=384, half_width=4.5)
    coarser = target.transfer_matrix_log_normalizer(n_nodes=160)
    assert abs(default - finer) < 1e-9
    assert abs(default - coarser) < 1e-9
    assert default == pytest.approx(expected, abs=1e-8)


def test_log_normalizer_is_cached_and_fast():
    target = GinzburgLandau1D(50)
    first = target.log_normalizer
    assert GinzburgLandau1D(50).log_normalizer == first  # cached across instances


def _marginal_cdf_first_site(target, grid):
    """CDF of u_1 for d = 2 by brute force: Gauss–Legendre in u_2, trapezoid in u_1."""
    nodes, weights = np.polynomial.legendre.leggauss(200)
    nodes, weights = 5.0 * nodes, 5.0 * weights
    u1, u2 = np.meshgrid(grid, nodes, indexing="ij")
    points = torch.from_numpy(np.stack([u1.ravel(), u2.ravel()], axis=1))
    density = np.exp(target.log_prob(points).numpy().reshape(u1.shape)) @ weights
    cdf = np.r_[0.0, np.cumsum(0.5 * (density[1:] + density[:-1]) * np.diff(grid))]
    return cdf / cdf[-1]


def test_samples_d2_first_site_ks():
    target = GinzburgLandau1D(2)
    x = target.sample(3000, random_state=0).numpy()
    grid = np.linspace(-5.0, 5.0, 20001)
    cdf = _marginal_cdf_first_site(target, grid)
    result = stats.kstest(x[:, 0], lambda t: np.interp(t, grid, cdf))
    assert result.pvalue > 1e-3


def test_samples_are_exact_enough_for_the_thermodynamic_identity():
    """E[V] = -d log Z / d beta: links the sampler and the quadrature (d = 16)."""
    d, eps = 16, 1e-4
    target = GinzburgLandau1D(d)
    x = target.sample(2000, random_state=1)
    energy = target.energy(x).numpy()
    up = GinzburgLandau1D(d, beta=BETA + eps).log_normalizer
    down = GinzburgLandau1D(d, beta=BETA - eps).log_normalizer
    derivative = (up - down) / (2 * eps)
    standard_error = energy.std() / np.sqrt(len(energy))
    assert abs(energy.mean() + derivative) < 4 * standard_error


def test_modes_have_equal_mass():
    target = GinzburgLandau1D(32)
    x = target.sample(2000, random_state=2)
    labels = target.mode_of(x)
    assert labels.dtype == torch.int64
    assert target.n_modes == 2
    assert abs(labels.double().mean().item() - 0.5) < 4 * 0.5 / np.sqrt(2000)
    assert torch.equal(target.mode_of(-x), 1 - labels)


def test_sample_is_reproducible():
    target = GinzburgLandau1D(8)
    torch.testing.assert_close(target.sample(50, random_state=3), target.sample(50, 3))


def test_2d_energy_of_the_uniform_states():
    # u = +-1 inside: only the 2 * side bonds to the opposite boundary cost (2 / h)^2.
    target = GinzburgLandau2D(side=8)
    ones = torch.ones(1, 64, dtype=torch.float64)
    expected = DELTA / 2 * 2 * 8 * (2 * 9) ** 2
    assert target.energy(ones).item() == pytest.approx(expected, rel=1e-13)
    assert target.energy(-ones).item() == pytest.approx(expected, rel=1e-13)
    assert target.log_prob(ones).item() == pytest.approx(-target.beta * expected, rel=1e-13)


def test_2d_energy_symmetry_rotation_and_sign_flip():
    """Rotating by 90 degrees and flipping the sign maps the boundary values to themselves."""
    target = GinzburgLandau2D(side=5)
    x = torch.randn(20, 25, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    rotated = -torch.rot90(x.reshape(20, 5, 5), 1, dims=(1, 2)).reshape(20, 25)
    torch.testing.assert_close(target.energy(rotated), target.energy(x), rtol=1e-13, atol=0)
    # Left/right are +1: a state equal to +1 on the left column costs nothing there.
    grid = torch.zeros(1, 5, 5, dtype=torch.float64)
    grid[0, :, 0] = 1.0
    left = target.energy(grid.reshape(1, 25))
    grid = torch.zeros(1, 5, 5, dtype=torch.float64)
    grid[0, 0, :] = 1.0
    top = target.energy(grid.reshape(1, 25))
    assert left.item() < top.item()


def test_2d_ground_truth_and_modes():
    target = GinzburgLandau2D()
    assert target.n_features == 64 and target.n_modes == 2
    assert target.log_normalizer is None
    with pytest.raises(NotImplementedError, match="not a chain"):
        target.sample(3)
    x = torch.cat([torch.ones(1, 64), -torch.ones(1, 64)])
    assert target.mode_of(x).tolist() == [1, 0]


def test_samples_do_not_move_when_the_numerics_are_refined():
    """Same uniforms, finer quadrature and interpolant: the draws agree to 1e-12."""
    from sktt_flow.targets._quadrature import ChainQuadrature

    chain = GinzburgLandau1D(16)._chain()
    finer = ChainQuadrature(
        chain.log_unary,
        chain.log_pair,
        chain.bounds,
        n_nodes=2 * chain.n_nodes,
        n_panels=chain.n_panels,
        panel_order=2 * chain.panel_order,
    )
    uniforms = np.random.default_rng(5).random((300, 16, 2))
    np.testing.assert_allclose(chain.sample(uniforms), finer.sample(uniforms), atol=1e-12)
