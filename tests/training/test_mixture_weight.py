"""The defensive weight fitted by maximum likelihood on held-out rows."""

import math

import pytest
import torch

from sktt_flow.flows import defensive_mixture_log_prob
from sktt_flow.training import best_mixture_score, fit_defensive_weight


def mean_log_likelihood(log_flow, log_fixed, weight):
    return float(defensive_mixture_log_prob(log_flow, log_fixed, weight).mean())


def test_rows_that_only_one_component_explains_give_the_closed_form():
    """With a fraction p of the rows where only the fixed component has mass
    and the rest where only the flow has, the likelihood is
    ``(1 - p) log(1 - w) + p log(w)`` up to a constant, maximised at
    ``w = p``; the infinite log-ratios must not turn into NaN."""
    n_fixed, n_flow = 30, 70
    log_flow = torch.cat([torch.full((n_fixed,), -math.inf), torch.zeros(n_flow)])
    log_fixed = torch.cat([torch.zeros(n_fixed), torch.full((n_flow,), -math.inf)])
    weight = fit_defensive_weight(log_flow, log_fixed, min_weight=1e-3, max_weight=0.9)
    assert weight == pytest.approx(0.3, abs=1e-12)


def test_matches_a_brute_force_search_on_overlapping_components():
    """Random log-densities whose optimum is inside the interval: the fitted
    weight scores at least as well as the best of a grid of 20,001 weights,
    and lies within the grid's spacing of its best point."""
    generator = torch.Generator().manual_seed(0)
    log_flow = torch.randn(500, generator=generator, dtype=torch.float64) * 2.0
    log_fixed = log_flow - 1.5 + torch.randn(500, generator=generator, dtype=torch.float64) * 3
    grid = torch.linspace(1e-3, 0.5, 20_001, dtype=torch.float64)
    scores = torch.stack(
        [defensive_mixture_log_prob(log_flow, log_fixed, float(w)).mean() for w in grid]
    )
    best = float(grid[int(scores.argmax())])
    assert 0.01 < best < 0.49  # the case is meant to have an interior optimum
    weight = fit_defensive_weight(log_flow, log_fixed, min_weight=1e-3, max_weight=0.5)
    assert abs(weight - best) <= float(grid[1] - grid[0])
    assert mean_log_likelihood(log_flow, log_fixed, weight) >= float(scores.max()) - 1e-12


@pytest.mark.parametrize(
    ("offset", "expected"),
    [(-5.0, 1e-3), (5.0, 0.5), (0.0, 1e-3)],
    ids=["flow-better-everywhere", "fixed-better-everywhere", "identical"],
)
def test_end_points(offset, expected):
    """A component better at every row pulls the weight to its end of the
    interval; identical components (a model without a flow) leave the
    smallest weight."""
    log_flow = torch.linspace(-10.0, 2.0, 50, dtype=torch.float64)
    weight = fit_defensive_weight(log_flow, log_flow + offset, min_weight=1e-3, max_weight=0.5)
    assert weight == expected


def test_huge_log_ratios_do_not_overflow():
    log_flow = torch.tensor([0.0, -1e4, 0.0, -2e4], dtype=torch.float64)
    log_fixed = torch.tensor([-1e4, 0.0, -3e4, 0.0], dtype=torch.float64)
    weight = fit_defensive_weight(log_flow, log_fixed, min_weight=1e-3, max_weight=0.9)
    assert weight == pytest.approx(0.5, abs=1e-12)


@pytest.mark.parametrize(
    ("log_flow", "log_fixed", "limits", "match"),
    [
        (torch.zeros(3), torch.zeros(3), (0.0, 0.5), "min_weight"),
        (torch.zeros(3), torch.zeros(3), (0.6, 0.5), "min_weight"),
        (torch.zeros(3), torch.zeros(3), (0.1, 1.0), "max_weight"),
        (torch.zeros(3), torch.zeros(4), (0.1, 0.5), "same shape"),
        (torch.zeros(3, 1), torch.zeros(3, 1), (0.1, 0.5), "1-D"),
        (torch.tensor([0.0, math.nan]), torch.zeros(2), (0.1, 0.5), "NaN"),
    ],
)
def test_bad_input_is_refused(log_flow, log_fixed, limits, match):
    with pytest.raises(ValueError, match=match):
        fit_defensive_weight(log_flow, log_fixed, min_weight=limits[0], max_weight=limits[1])


def test_best_mixture_score_is_the_mixture_at_its_best_weight():
    """The score of a flow trained for its part in a mixture: the held-out
    mean of the mixture at the best weight in [min_weight, max_weight],
    checked against a grid of weights where the second density helps (an
    interior best), and where it is far behind everywhere (the lower end:
    the first's mean, less the smallest weight's share)."""
    generator = torch.Generator().manual_seed(0)
    first = torch.randn(400, generator=generator, dtype=torch.float64)
    helping = first + 2.0 * torch.randn(400, generator=generator, dtype=torch.float64)
    low, high = 1e-3, 0.999
    weights = torch.linspace(low, high, 20_001, dtype=torch.float64)
    on_grid = torch.logaddexp(
        torch.log1p(-weights)[:, None] + first, torch.log(weights)[:, None] + helping
    ).mean(1)
    score = best_mixture_score(first, helping, min_weight=low, max_weight=high)
    assert score == pytest.approx(float(on_grid.max()), abs=1e-7)
    assert score > float(first.mean()) + 0.1
    behind = best_mixture_score(first, first - 30.0, min_weight=low, max_weight=high)
    assert behind == pytest.approx(float(first.mean()) + math.log1p(-low), abs=1e-9)
