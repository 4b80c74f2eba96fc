"""box_from_modes, affine_from_laplace and the Gaussian tail-mass bound.

Monte Carlo tolerances: with N draws a probability p is estimated with
standard error sqrt(p (1 - p) / N); the tests allow four standard errors
(a false failure about once in 16 000 runs, never with the fixed seeds).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sktt_flow.geometry import (
    AFFINE_KINDS,
    DEFAULT_N_STD,
    adjust_box,
    affine_from_laplace,
    box_from_modes,
    box_of_weighted_draws,
    gaussian_tail_mass,
    mass_beyond_sides,
    widen_box_at_edges,
)


def correlated_covariance(d: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    factor = torch.randn(d, d, generator=generator, dtype=torch.float64)
    scales = torch.logspace(-2, 2, d, dtype=torch.float64)  # four decades of scale
    correlation = factor @ factor.T / d + 0.1 * torch.eye(d, dtype=torch.float64)
    inverse_root = correlation.diagonal().rsqrt()
    correlation = correlation * inverse_root[:, None] * inverse_root[None, :]
    return correlation * scales[:, None] * scales[None, :]


def fraction_outside(samples: torch.Tensor, box: np.ndarray) -> float:
    low, high = torch.from_numpy(box[:, 0]), torch.from_numpy(box[:, 1])
    outside = ((samples < low) | (samples > high)).any(1)
    return float(outside.double().mean())


# ------------------------------------------------------------ tail-mass bound
def test_tail_mass_of_one_coordinate_is_scipys():
    """2 Phi(-n) = erfc(n / sqrt 2): catches a one-sided tail or a wrong argument."""
    stats = pytest.importorskip("scipy.stats")
    for n_std in (1.0, 2.5, 5.0, DEFAULT_N_STD, 7.0):
        assert gaussian_tail_mass(n_std) == pytest.approx(2 * stats.norm.sf(n_std), rel=1e-12)
    # The numbers the box module's notes quote.
    assert gaussian_tail_mass(6.0) == pytest.approx(1.973e-9, rel=1e-3)
    assert gaussian_tail_mass(6.0, 31) == pytest.approx(6.12e-8, rel=1e-2)
    assert gaussian_tail_mass(5.0, 100) == pytest.approx(5.73e-5, rel=1e-2)
    assert gaussian_tail_mass(0.1, 100) == 1.0  # the bound is capped at 1


def test_tail_mass_bound_against_monte_carlo_with_and_without_correlation():
    """At n_std = 2 the bound (0.2275 for d = 5) is nearly exact for independent
    coordinates (1 - (1 - 0.0455)^5 = 0.2075) and an upper bound under
    correlation; 200k draws see both to +-0.004."""
    d, n_std, n = 5, 2.0, 200_000
    generator = torch.Generator().manual_seed(0)
    bound = gaussian_tail_mass(n_std, d)
    independent = torch.randn(n, d, generator=generator, dtype=torch.float64)
    box = np.tile([-n_std, n_std], (d, 1))
    exact = 1 - (1 - gaussian_tail_mass(n_std)) ** d
    error = 4 * math.sqrt(exact * (1 - exact) / n)
    assert fraction_outside(independent, box) == pytest.approx(exact, abs=error)
    assert exact <= bound
    covariance = correlated_covariance(d, seed=1)
    factor = torch.linalg.cholesky(covariance)
    correlated = independent @ factor.T
    box = box_from_modes(torch.zeros(d), covariance, n_std=n_std)
    assert fraction_outside(correlated, box) <= bound + error


# ---------------------------------------------------------------------- boxes
def test_box_of_one_mode_is_mode_plus_minus_n_std_deviations():
    covariance = correlated_covariance(4, seed=2)
    mode = torch.tensor([1.0, -2.0, 30.0, 0.0], dtype=torch.float64)
    box = box_from_modes(mode, covariance)
    deviations = covariance.diagonal().sqrt().numpy()
    np.testing.assert_allclose(box[:, 0], mode.numpy() - 6 * deviations, rtol=1e-14)
    np.testing.assert_allclose(box[:, 1], mode.numpy() + 6 * deviations, rtol=1e-14)
    assert box.dtype == np.float64 and box.shape == (4, 2)


def test_box_is_the_union_over_modes():
    """Two modes, one per side: every coordinate's bounds come from the right
    mode; catches taking the first mode only or intersecting."""
    modes = torch.tensor([[-5.0, 0.0], [5.0, 1.0]], dtype=torch.float64)
    covariances = torch.stack(
        [torch.diag(torch.tensor([1.0, 4.0])), torch.diag(torch.tensor([0.25, 0.01]))]
    ).double()
    box = box_from_modes(modes, covariances, n_std=3.0)
    np.testing.assert_allclose(box, [[-8.0, 6.5], [-6.0, 6.0]], rtol=1e-14)


def test_box_holds_the_mass_of_a_mixture_in_whitened_coordinates():
    """Draws of a two-mode correlated mixture, mapped to the coordinates of
    affine_from_laplace(kind="full"): the fraction outside the default box is
    below the union bound; at n_std = 2 the bound is tight enough for the Monte
    Carlo check to mean something."""
    d, n = 3, 100_000
    modes = torch.tensor([[0.0, 0.0, 0.0], [4.0, -3.0, 10.0]], dtype=torch.float64)
    covariances = torch.stack([correlated_covariance(d, 3), correlated_covariance(d, 4)])
    generator = torch.Generator().manual_seed(5)
    which = torch.randint(0, 2, (n,), generator=generator)
    noise = torch.randn(n, d, generator=generator, dtype=torch.float64)
    factors = torch.linalg.cholesky(covariances)
    samples = modes[which] + torch.einsum("nij,nj->ni", factors[which], noise)
    shift, matrix = affine_from_laplace(modes, covariances, "full")
    whitened = torch.linalg.solve_triangular(matrix, (samples - shift).T, upper=False).T
    for n_std in (2.0, DEFAULT_N_STD):
        box = box_from_modes(modes, covariances, n_std=n_std, coordinates=(shift, matrix))
        bound = gaussian_tail_mass(n_std, d)
        error = 4 * math.sqrt(max(bound, 1 / n) * (1 - min(bound, 0.5)) / n)
        assert fraction_outside(whitened, box) <= bound + error
    assert fraction_outside(whitened, box) == 0.0


def test_single_mode_box_in_its_own_coordinates_is_the_standard_one():
    """kind="full" and "diagonal" make each coordinate unit-variance: the box is
    [-n, n]^d exactly; catches a transposed Cholesky factor or M^{-T} Sigma M^{-1}."""
    covariance = correlated_covariance(5, seed=6)
    mode = torch.arange(5, dtype=torch.float64)
    for kind in ("full", "diagonal"):
        coordinates = affine_from_laplace(mode, covariance, kind)
        box = box_from_modes(mode, covariance, coordinates=coordinates)
        np.testing.assert_allclose(box, np.tile([-6.0, 6.0], (5, 1)), rtol=1e-10, atol=1e-10)
    identity = affine_from_laplace(mode, covariance, "none")
    raw = box_from_modes(mode, covariance, coordinates=identity)
    np.testing.assert_array_equal(raw, box_from_modes(mode, covariance))


# ----------------------------------------------------------- affine coordinates
def test_affine_coordinates_standardise_the_laplace_gaussian():
    covariance = correlated_covariance(4, seed=7)
    mode = torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64)
    shift, matrix = affine_from_laplace(mode, covariance, "none")
    assert torch.equal(shift, torch.zeros(4, dtype=torch.float64))
    assert torch.equal(matrix, torch.eye(4, dtype=torch.float64))
    shift, matrix = affine_from_laplace(mode, covariance, "diagonal")
    assert torch.equal(shift, mode)
    torch.testing.assert_close(matrix, torch.diag(covariance.diagonal().sqrt()))
    shift, matrix = affine_from_laplace(mode, covariance, "full")
    assert torch.equal(matrix, matrix.tril())
    inverse = torch.linalg.inv(matrix)
    torch.testing.assert_close(
        inverse @ covariance @ inverse.T, torch.eye(4, dtype=torch.float64), rtol=0, atol=1e-10
    )


def test_pooled_coordinates_of_several_modes_match_the_mixture_moments():
    """Mean and covariance of the Laplace mixture (weights 0.25, 0.75) by Monte
    Carlo: 400k draws estimate the covariance entries (of order 10) to +-0.05."""
    modes = torch.tensor([[-2.0, 0.0], [2.0, 1.0]], dtype=torch.float64)
    covariances = torch.stack(
        [torch.tensor([[1.0, 0.5], [0.5, 2.0]]), torch.tensor([[0.5, -0.2], [-0.2, 0.3]])]
    ).double()
    weights = [1.0, 3.0]
    shift, matrix = affine_from_laplace(modes, covariances, "full", weights=weights)
    generator = torch.Generator().manual_seed(8)
    n = 400_000
    which = (torch.rand(n, generator=generator) < 0.75).long()
    noise = torch.randn(n, 2, generator=generator, dtype=torch.float64)
    samples = modes[which] + torch.einsum(
        "nij,nj->ni", torch.linalg.cholesky(covariances)[which], noise
    )
    torch.testing.assert_close(shift, samples.mean(0), rtol=0, atol=0.02)
    torch.testing.assert_close(matrix @ matrix.T, samples.T.cov(), rtol=0, atol=0.05)
    # Closed form: sum w (Sigma + (m - mu)(m - mu)^T).
    mean = 0.25 * modes[0] + 0.75 * modes[1]
    expected = sum(
        w * (c + torch.outer(m - mean, m - mean))
        for w, c, m in zip((0.25, 0.75), covariances, modes, strict=True)
    )
    torch.testing.assert_close(matrix @ matrix.T, expected, rtol=1e-12, atol=1e-12)
    # Equal weights by default.
    equal, _ = affine_from_laplace(modes, covariances, "diagonal")
    torch.testing.assert_close(equal, modes.mean(0))


# --------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    ("modes", "covariances", "match"),
    [
        (torch.zeros(2, 3), torch.eye(3).expand(3, 3, 3), "shape"),
        (torch.zeros(3), torch.eye(2), "shape"),
        (torch.zeros(2), torch.tensor([[1.0, 0.5], [0.0, 1.0]]), "symmetric"),
        (torch.zeros(2), torch.tensor([[1.0, 0.0], [0.0, 0.0]]), "positive"),
        (torch.tensor([math.nan, 0.0]), torch.eye(2), "finite"),
        (torch.zeros(0, 2), torch.zeros(0, 2, 2), "shape"),
    ],
)
def test_malformed_modes_and_covariances_are_rejected(modes, covariances, match):
    with pytest.raises(ValueError, match=match):
        box_from_modes(modes, covariances)
    with pytest.raises(ValueError, match=match):
        affine_from_laplace(modes, covariances, "full")


def test_other_bad_arguments():
    mode, covariance = torch.zeros(2), torch.eye(2)
    with pytest.raises(ValueError, match="kind"):
        affine_from_laplace(mode, covariance, "cholesky")
    assert set(AFFINE_KINDS) == {"none", "diagonal", "full"}
    with pytest.raises(ValueError, match="weights"):
        affine_from_laplace(mode, covariance, "full", weights=[-1.0])
    with pytest.raises(ValueError, match="weights"):
        affine_from_laplace(mode, covariance, "full", weights=[1.0, 1.0])
    with pytest.raises(ValueError, match="n_std"):
        box_from_modes(mode, covariance, n_std=0.0)
    with pytest.raises(ValueError, match="singular"):
        box_from_modes(mode, covariance, coordinates=(torch.zeros(2), torch.zeros(2, 2)))
    with pytest.raises(ValueError, match="pair"):
        box_from_modes(mode, covariance, coordinates=(torch.zeros(2),))
    with pytest.raises(ValueError, match="shape"):
        box_from_modes(mode, covariance, coordinates=(torch.zeros(3), torch.eye(3)))
    with pytest.raises(ValueError, match="positive definite"):
        # Symmetric with positive variances but indefinite: no Cholesky factor.
        affine_from_laplace(mode, torch.tensor([[1.0, 2.0], [2.0, 1.0]]), "full")


# ------------------------------------------------------- box_of_weighted_draws
def test_box_of_weighted_draws_follows_the_weighted_quantiles():
    """Standard normal draws in a box of half-width 10: with equal weights the
    0.1% quantiles are +-3.09, widened by a quarter of their distance: +-4.64
    (20,000 draws: the quantiles' standard error is about 0.04)."""
    y = torch.randn(20000, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    box = np.array([[-10.0, 10.0], [-10.0, 10.0]])
    refined = box_of_weighted_draws(y, torch.zeros(20000, dtype=torch.float64), box)
    np.testing.assert_allclose(refined, [[-4.64, 4.64]] * 2, atol=0.25)
    # weights that keep only the positive half of coordinate 0 move its box there
    log_weights = torch.where(y[:, 0] > 0, 0.0, -torch.inf).double()
    shifted = box_of_weighted_draws(y, log_weights, box)
    assert shifted[0, 0] > -1.0 and shifted[0, 1] == pytest.approx(3.29 + 0.8, abs=0.3)


def test_box_of_weighted_draws_never_widens_and_says_when_nothing_is_gained():
    y = torch.randn(4000, 1, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    flat = torch.zeros(4000, dtype=torch.float64)
    # the draws fill a box of half-width 3: nothing narrower to offer
    assert box_of_weighted_draws(y, flat, np.array([[-3.0, 3.0]])) is None
    # never beyond the given box, even when the draws' quantiles are
    narrow = box_of_weighted_draws(y * 10, flat, np.array([[-4.0, 100.0]]))
    assert narrow is not None and narrow[0, 0] == -4.0
    # degenerate weights: no box
    nan_weights = torch.full((4000,), float("nan"), dtype=torch.float64)
    assert box_of_weighted_draws(y, nan_weights, np.array([[-10.0, 10.0]])) is None


def _truncated_normal(low: float, high: float, n: int, seed: int) -> torch.Tensor:
    """Exact draws of a standard normal restricted to [low, high] (inverse CDF)."""
    normal = torch.distributions.Normal(0.0, 1.0)
    low_cdf, high_cdf = normal.cdf(torch.tensor(low)), normal.cdf(torch.tensor(high))
    u = torch.rand(n, 1, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return normal.icdf(low_cdf + (high_cdf - low_cdf) * u).double()


def test_widen_box_at_edges_moves_out_only_the_cut_sides():
    """A base that is the standard normal restricted to [-1, 6] (importance
    weights all equal) holds 12% of its weight within 5% of the width from
    the left side, and 1e-9 at the right one: only the left moves out, by half
    the width. Under the full +-6 box no side moves."""
    flat = torch.zeros(4096, dtype=torch.float64)
    cut = _truncated_normal(-1.0, 6.0, 4096, seed=0)
    wider = widen_box_at_edges(cut, flat, np.array([[-1.0, 6.0]]))
    np.testing.assert_allclose(wider, [[-4.5, 6.0]])
    whole = _truncated_normal(-6.0, 6.0, 4096, seed=1)
    assert widen_box_at_edges(whole, flat, np.array([[-6.0, 6.0]])) is None
    # the weights decide: uniform draws weighted by a normal density centred
    # on the left side pile against it (half of the weight within 0.6 of it)
    generator = torch.Generator().manual_seed(4)
    uniform = 12.0 * torch.rand(4096, 1, generator=generator, dtype=torch.float64) - 6.0
    towards_left = -0.5 * (uniform[:, 0] + 6.0).square()
    np.testing.assert_allclose(
        widen_box_at_edges(uniform, towards_left, np.array([[-6.0, 6.0]])), [[-12.0, 6.0]]
    )


def test_adjust_box_moves_cut_sides_out_and_empty_sides_in():
    """A standard normal restricted to [-1, 12]: the cut side moves out by half
    the width (6.5), the empty side moves in to the 0.999 quantile (3.09)
    plus a quarter of the quantiles' distance (4096 draws: about 0.1)."""
    flat = torch.zeros(4096, dtype=torch.float64)
    draws = _truncated_normal(-1.0, 12.0, 4096, seed=2)
    adjusted = adjust_box(draws, flat, np.array([[-1.0, 12.0]]))
    assert adjusted[0, 0] == pytest.approx(-7.5)
    low_quantile = -1.0 + 0.001 * 0.84  # barely inside the cut side
    assert adjusted[0, 1] == pytest.approx(3.09 + 0.25 * (3.09 - low_quantile), abs=0.3)
    # nothing cut and nothing to narrow: no new box
    whole = _truncated_normal(-4.5, 4.5, 4096, seed=3)
    assert adjust_box(whole, flat, np.array([[-4.5, 4.5]])) is None


def _gaussian_upper_tail(n_std: float) -> float:
    return 0.5 * math.erfc(n_std / math.sqrt(2.0))


def test_mass_beyond_sides_extrapolates_the_target_across_each_side():
    """Exact draws of targets cut to a box, equal weights. The log of a unit
    exponential (an exponential tail, ``p(u) = exp(u - e^u)``) cut at u = -6
    below: the estimate is the missing mass ``1 - exp(-e^-6)`` = 0.25% (the
    geometric extrapolation is exact for it), where the outer strip alone
    holds 45% of it and a ratio taken inward gives inf. A unit Gaussian cut
    at +-3: each side's estimate is the closed form of the extrapolation,
    1.087 times the tail 0.135%. 200,000 draws put some 410 in each strip: a
    standard error of 5% on the estimates, which may be 20% off."""
    generator = torch.Generator().manual_seed(0)
    n_draws = 200_000
    # the log-exponential by inversion, cut to [-6, 2] (above 2 it holds e^-e^2, 6e-4)
    low_cdf, high_cdf = -math.expm1(-math.exp(-6.0)), -math.expm1(-math.exp(2.0))
    uniform = low_cdf + (high_cdf - low_cdf) * torch.rand(
        n_draws, 1, generator=generator, dtype=torch.float64
    )
    log_exponential = torch.log(-torch.log1p(-uniform))
    next_strip, beyond = mass_beyond_sides(
        log_exponential,
        torch.zeros(n_draws, dtype=torch.float64),
        np.array([[-6.0, 2.0]]),
        lambda u: (u - u.exp()).sum(dim=1),
        edge=0.075,  # a strip of 0.6
    )
    cut_below = -math.expm1(-math.exp(-6.0))
    inside = 1.0 - cut_below - (1.0 - high_cdf)
    assert beyond[0, 0] == pytest.approx(cut_below / inside, rel=0.2)
    assert beyond[0, 1] == pytest.approx((1.0 - high_cdf) / inside, rel=0.2)
    strip_below = cut_below + math.expm1(-math.exp(-6.6))  # P(-6.6 < u < -6)
    assert next_strip[0, 0] == pytest.approx(strip_below / inside, rel=0.2)

    gaussian = torch.randn(4 * n_draws, 2, generator=generator, dtype=torch.float64)
    inside = gaussian[(gaussian.abs() <= 3.0).all(dim=1)][:n_draws]
    next_strip, beyond = mass_beyond_sides(
        inside,
        torch.zeros(len(inside), dtype=torch.float64),
        np.array([[-3.0, 3.0]] * 2),
        lambda y: -0.5 * y.square().sum(dim=1),
    )
    strip = 0.3
    inner = _gaussian_upper_tail(3.0 - strip) - _gaussian_upper_tail(3.0)
    outer = _gaussian_upper_tail(3.0) - _gaussian_upper_tail(3.0 + strip)
    in_box = 1.0 - 2.0 * _gaussian_upper_tail(3.0)
    np.testing.assert_allclose(next_strip, outer / in_box, rtol=0.2)
    np.testing.assert_allclose(beyond, outer / (1.0 - outer / inner) / in_box, rtol=0.2)


def test_mass_beyond_sides_is_zero_where_the_target_ends_and_inf_where_it_does_not_fall():
    """The same Gaussian draws: a target that is zero beyond the box puts
    nothing there; a box of +-6, whose strips no draw reaches, nothing; a
    target flat in coordinate 1 goes on beyond its sides without end, and
    coordinate 0's estimate is unchanged. Degenerate weights: nothing."""
    generator = torch.Generator().manual_seed(1)
    draws = torch.randn(20_000, 2, generator=generator, dtype=torch.float64)
    draws = draws[(draws.abs() <= 2.0).all(dim=1)]
    equal = torch.zeros(len(draws), dtype=torch.float64)
    box = np.array([[-2.0, 2.0]] * 2)

    def gaussian(y):
        return -0.5 * y.square().sum(dim=1)

    def ends(y):
        return torch.where((y.abs() <= 2.0).all(dim=1), gaussian(y), -math.inf)

    assert (np.stack(mass_beyond_sides(draws, equal, box, ends)) == 0.0).all()
    wide = np.array([[-6.0, 6.0]] * 2)
    assert (np.stack(mass_beyond_sides(draws, equal, wide, gaussian)) == 0.0).all()
    next_strip, cut = mass_beyond_sides(draws, equal, box, gaussian)
    assert (next_strip > 0.0).all() and (cut > next_strip).all() and np.isfinite(cut).all()
    _, flat = mass_beyond_sides(
        draws, equal + 0.5 * draws[:, 1].square(), box, lambda y: -0.5 * y[:, 0].square()
    )
    assert np.isinf(flat[1]).all()
    np.testing.assert_allclose(flat[0], cut[0], rtol=0.3)
    nan_weights = torch.full_like(equal, math.nan)
    assert (np.stack(mass_beyond_sides(draws, nan_weights, box, gaussian)) == 0.0).all()
