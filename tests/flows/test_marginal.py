"""The marginal Gaussianization: the quantile mixture that places the knots
and the spline layer that carries the map.

Log-determinants are checked against autograd on single points in float64
(agreement to round-off; 1e-9 leaves orders of magnitude for log-dets of
order one) and by the mass of a pulled-back normal (trapezoid rule).
"""

import math

import numpy as np
import pytest
import torch

from sktt_flow.flows.marginal import FixedMarginalNormalMap, QuantileNormalMixture, _ndtri_exp
from tests.flows.reference import log_abs_det_jacobian


def skewed_rows(n_rows: int = 3000, seed: int = 0) -> np.ndarray:
    """Three features unlike a normal: log-normal (skewed), Student t with two
    degrees of freedom (heavy tails), tanh of a normal (piled up near +-1)."""
    generator = np.random.default_rng(seed)
    return np.column_stack(
        [
            np.exp(generator.normal(size=n_rows)),
            generator.standard_t(2, size=n_rows),
            np.tanh(2.0 * generator.normal(size=n_rows)),
        ]
    )


@pytest.fixture(scope="module")
def fitted_map():
    return FixedMarginalNormalMap.from_data(skewed_rows())


# -------------------------------------------------------- QuantileNormalMixture
def test_the_mixture_map_of_a_wide_normal_column_is_nearly_its_standardisation():
    """A column of 20,000 draws of N(3, 2^2), over its bulk (|g| <= 2): the
    mixture's distribution is the sample's smoothed by about a centre
    spacing, so ``g(x)`` is within 0.05 of ``(x - 3) / 2`` (measured: 0.04;
    the sample's own quantiles are off by about 0.01 in g) and
    ``log dg/dx`` within 0.25 of ``-log 2`` (the density of 128 bumps
    ripples by about a tenth; measured 0.22 at the ends of the range). A
    sign error in a tail, or a CDF from the wrong side, is off by units."""
    generator = np.random.default_rng(1)
    column = 3.0 + 2.0 * generator.normal(size=(20_000, 1))
    mixture = QuantileNormalMixture(column)
    x = torch.linspace(-1.0, 7.0, 41, dtype=torch.float64)[None, :]
    g, log_slope = mixture.normal_coordinates(x)
    torch.testing.assert_close(g, (x - 3.0) / 2.0, rtol=0, atol=0.05)
    torch.testing.assert_close(log_slope, torch.full_like(x, -math.log(2.0)), rtol=0, atol=0.25)


def test_the_mixture_keeps_far_tails_finite_on_both_sides():
    """``1 - F`` taken from its own side: 30 of the widest widths above the
    top centre ``F`` rounds to 1 in float64, and ``Phi^{-1}(F)`` would be
    inf; there ``g >= 30`` (no normal has more than ``Phi(-30)`` of its mass
    beyond), and the same below."""
    mixture = QuantileNormalMixture(skewed_rows())
    widest = mixture.widths.max(dim=1).values
    far = torch.stack(
        [mixture.centers[:, 0] - 30 * widest, mixture.centers[:, -1] + 30 * widest], 1
    )
    g, log_slope = mixture.normal_coordinates(far)
    assert bool(torch.isfinite(g).all() & torch.isfinite(log_slope).all())
    assert bool((g[:, 0] <= -30 + 1e-9).all() & (g[:, 1] >= 30 - 1e-9).all())


def test_features_near_their_targets_increase_and_come_close():
    """Linear interpolation between candidates half a width to one and a
    half apart: within 0.5 of the targets in g (measured: 0.35, where a
    wide normal meets the pile of narrow ones near the tanh column's ends),
    and strictly increasing, which the spline's knots must be."""
    mixture = QuantileNormalMixture(skewed_rows())
    targets = torch.linspace(-6.0, 6.0, 301, dtype=torch.float64).expand(3, 301)
    x = mixture.features_near(targets)
    assert bool((torch.diff(x, dim=1) > 0).all())
    g, _ = mixture.normal_coordinates(x)
    assert float((g - targets).abs().max()) < 0.5


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"floor": "silverman"}, "floor"),
        ({"n_centers": 1}, "n_centers"),
        ({"n_centers": 2.5}, "n_centers"),
    ],
)
def test_the_mixture_rejects_bad_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        QuantileNormalMixture(skewed_rows(100), **kwargs)


@pytest.mark.parametrize(
    "X, match",
    [
        (np.zeros((1, 2)), "at least 2 rows"),
        (np.zeros(5), "2-D"),
        (np.array([[0.0], [math.nan]]), "finite"),
    ],
)
def test_the_mixture_rejects_bad_rows(X, match):
    with pytest.raises(ValueError, match=match):
        QuantileNormalMixture(X)


# ------------------------------------------------------ FixedMarginalNormalMap
def test_the_map_round_trips_inside_and_beyond_the_knots(fitted_map):
    """Rows in the data's range and far beyond the outer knots (the linear
    tails): ``forward(inverse(x)) = x`` and the two log-dets cancel. A wrong
    root of the inverse's quadratic, or tails of the wrong slope, fail it."""
    rows = torch.as_tensor(skewed_rows(500, seed=2))
    beyond = torch.stack(
        [fitted_map.feature_knots[:, 0] - 5.0, fitted_map.feature_knots[:, -1] + 5.0]
    )
    points = torch.cat([rows, beyond])
    g, log_det = fitted_map.inverse(points)
    back, forward_log_det = fitted_map(g)
    torch.testing.assert_close(back, points, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(forward_log_det, -log_det, rtol=1e-9, atol=1e-9)


def test_the_map_passes_through_its_knots_with_their_slopes(fitted_map):
    """At the knots the map is ``normal_knots`` and its derivative ``slopes``
    (both one-sided derivatives: a continuous first derivative)."""
    knots = fitted_map.feature_knots[:, 1:-1].T.contiguous()
    g, _ = fitted_map.inverse(knots)
    torch.testing.assert_close(g, fitted_map.normal_knots[:, 1:-1].T, rtol=0, atol=1e-12)
    step = 1e-7 * (fitted_map.feature_knots[:, 2:] - fitted_map.feature_knots[:, :-2]).T
    slopes = fitted_map.slopes[:, 1:-1].T
    for sign in (1.0, -1.0):
        g_step, _ = fitted_map.inverse(knots + sign * step)
        torch.testing.assert_close((g_step - g) / (sign * step), slopes, rtol=1e-4, atol=0)


def test_the_log_dets_are_those_of_autograd(fitted_map):
    """Both directions, at rows of data and at normal coordinates out to
    |g| = 9, beyond the outer knots (|g| = 6)."""
    points = torch.as_tensor(skewed_rows(6, seed=3))
    _, log_det = fitted_map.inverse(points)
    g = torch.linspace(-9.0, 9.0, 18, dtype=torch.float64).reshape(6, 3)
    _, forward_log_det = fitted_map(g)
    for row in range(6):
        assert float(log_det[row]) == pytest.approx(
            log_abs_det_jacobian(lambda p: fitted_map.inverse(p)[0], points[row : row + 1]),
            abs=1e-9,
        )
        assert float(forward_log_det[row]) == pytest.approx(
            log_abs_det_jacobian(lambda p: fitted_map(p)[0], g[row : row + 1]), abs=1e-9
        )


@pytest.mark.parametrize("feature", [0, 1, 2])
def test_a_standard_normal_pulled_back_onto_a_feature_is_normalised(feature):
    """The density ``phi(g(x)) g'(x)`` of one feature's map has mass 1 on a
    grid over its knots and 60 units into both linear tails (trapezoid
    rule; its error at this resolution is below 1e-6): a wrong log-det, or a
    tail slope that is not the outer knot's, fails it."""
    layer = FixedMarginalNormalMap.from_data(skewed_rows()[:, feature : feature + 1])
    first, last = float(layer.feature_knots[0, 0]), float(layer.feature_knots[0, -1])
    grid = torch.cat(
        [
            torch.linspace(first - 60.0, first, 200_001, dtype=torch.float64),
            torch.linspace(first, last, 2_000_001, dtype=torch.float64)[1:],
            torch.linspace(last, last + 60.0, 200_001, dtype=torch.float64)[1:],
        ]
    )
    g, log_det = layer.inverse(grid[:, None])
    density = torch.exp(-0.5 * g[:, 0] ** 2 - 0.5 * math.log(2 * math.pi) + log_det)
    assert float(torch.trapezoid(density, grid)) == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("floor, columns", [("smooth", [0, 1]), ("sharp", [0, 1, 2])])
def test_the_training_columns_come_out_standard_normal(floor, columns):
    """The fraction of training rows below ``t`` in g is ``Phi(t)`` to 0.01
    for t in [-2, 2] (measured: at most 0.006): the map gaussianizes the
    columns it was fitted to, skewed or heavy-tailed. With the
    ``"smooth"`` floor the tanh column is not (its normals are wider
    than the pile of rows near +-1, 0.035 off); and a heavy tail's
    extreme rows land far beyond the outer knots (|g| about 30 for the
    t(2) column), exactly mapped but far out."""
    rows = skewed_rows()
    layer = FixedMarginalNormalMap.from_data(rows, floor=floor)
    g, _ = layer.inverse(torch.as_tensor(rows))
    levels = torch.linspace(-2.0, 2.0, 9, dtype=torch.float64)
    below = (g[:, columns, None] < levels).double().mean(dim=0)
    expected = torch.special.ndtr(levels).expand_as(below)
    torch.testing.assert_close(below, expected, rtol=0, atol=0.01)


def test_the_spline_follows_the_mixture_between_its_knots():
    """Between knots the spline follows the mixture's exact map on held-out
    rows: measured here at the default 1,024 knots, 5e-6 in g at most and
    1e-4 in the log-determinant on average (1.3e-3 at most); on the
    ``tanh30`` columns 9e-4 in g, and with 256 knots 0.015 there. The
    spline carries the mixture's map, not another one."""
    rows = skewed_rows()
    layer = FixedMarginalNormalMap.from_data(rows)
    mixture = QuantileNormalMixture(rows)
    held_out = torch.as_tensor(skewed_rows(2000, seed=5))
    held_out = held_out[
        (held_out > layer.feature_knots[:, 0]).all(1)
        & (held_out < layer.feature_knots[:, -1]).all(1)
    ]
    g, log_det = layer.inverse(held_out)
    exact, exact_log_slope = mixture.normal_coordinates(held_out.T)
    assert float((g - exact.T).abs().max()) < 1e-4
    assert float((log_det - exact_log_slope.sum(0)).abs().mean()) < 1e-3


def test_a_float32_map_of_a_constant_column_is_finite():
    """A constant column still gets a map of positive slope (the floor of
    the widths falls back to a unit spread), and float32 rows stay float32."""
    rows = skewed_rows(200)
    rows[:, 1] = 4.0
    layer = FixedMarginalNormalMap.from_data(rows)
    g, log_det = layer.inverse(torch.as_tensor(rows, dtype=torch.float32))
    assert g.dtype == torch.float32 and log_det.dtype == torch.float32
    assert bool(torch.isfinite(g).all() & torch.isfinite(log_det).all())


def test_the_map_is_fixed_and_persists_in_its_state_dict(fitted_map):
    assert list(fitted_map.parameters()) == []
    state = fitted_map.state_dict()
    assert set(state) == {"feature_knots", "normal_knots", "slopes"}
    rebuilt = FixedMarginalNormalMap(
        state["feature_knots"], state["normal_knots"], state["slopes"]
    )
    points = torch.as_tensor(skewed_rows(50, seed=6))
    torch.testing.assert_close(rebuilt.inverse(points), fitted_map.inverse(points), rtol=0, atol=0)
    assert repr(fitted_map) == "FixedMarginalNormalMap(n_features=3, n_knots=1024)"


@pytest.mark.parametrize(
    "change, match",
    [
        (lambda x, g, s: (x[:, ::-1].copy(), g, s), "feature_knots must be finite and strictly"),
        (lambda x, g, s: (x, g, -s), "slopes must be positive"),
        (lambda x, g, s: (x, g[:, :-1], s), "one shape"),
        (lambda x, g, s: (x[:, :1], g[:, :1], s[:, :1]), "n_knots >= 2"),
    ],
)
def test_the_map_rejects_bad_knots(change, match):
    x = np.array([[0.0, 1.0, 3.0]])
    g = np.array([[-1.0, 0.0, 1.0]])
    s = np.array([[0.5, 1.0, 0.7]])
    with pytest.raises(ValueError, match=match):
        FixedMarginalNormalMap(*change(x, g, s))


@pytest.mark.parametrize(
    "kwargs, match", [({"n_knots": 1}, "n_knots"), ({"normal_reach": 0.0}, "normal_reach")]
)
def test_from_data_rejects_bad_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        FixedMarginalNormalMap.from_data(skewed_rows(100), **kwargs)


def test_normal_quantiles_of_log_probabilities_are_finite_and_exact():
    """``Phi^{-1}(exp(log_p))`` from ``log_p = -1`` to ``-10^5``: its
    ``log Phi`` is ``log_p`` again to 1e-12 relative (torch's ``log_ndtr``,
    the independent side), across ``exp(-700)`` where ``exp`` underflows."""
    log_p = -torch.logspace(0, 5, 200, dtype=torch.float64)
    z = _ndtri_exp(log_p)
    assert bool(torch.isfinite(z).all() & (torch.diff(z) < 0).all())
    torch.testing.assert_close(torch.special.log_ndtr(z), log_p, rtol=1e-12, atol=1e-12)
