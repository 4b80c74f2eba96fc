"""Tests of the Langevin exploration that finds a box where modes do not."""

import math

import numpy as np
import pytest
import torch

from sktt_flow.geometry import explore_mass


def standard_normal(x: torch.Tensor) -> torch.Tensor:
    return -0.5 * x.square().sum(1)


def test_chains_sample_a_gaussian_without_the_langevin_bias():
    """256 chains of 1,000 steps on N(0, 1): the kept half (about 40,000
    effective draws at an autocorrelation time near 3) has variance 1 to
    within 0.03 (four standard errors of 0.007). Without the Metropolis
    correction the Langevin step tuned to acceptance 0.574 (h near 1.7) would
    give variance 1 / (1 - h / 4), about 1.7; a sign error in the proposal
    densities fails the same way."""
    generator = torch.Generator().manual_seed(0)
    starts = torch.randn(256, 1, generator=generator, dtype=torch.float64)
    exploration = explore_mass(standard_normal, starts, n_steps=1000, generator=generator)
    assert exploration.draws.shape == (256 * 500, 1)
    assert float(exploration.draws.var()) == pytest.approx(1.0, abs=0.03)
    assert float(exploration.draws.mean()) == pytest.approx(0.0, abs=0.03)
    assert float(exploration.acceptance.mean()) == pytest.approx(0.574, abs=0.05)
    assert exploration.n_evaluations == 256 * 1001


def test_step_sizes_follow_the_local_scale():
    """Chains on N(0, 100^2) tune steps 10^4 times those on N(0, 1) (the
    optimal MALA step scales like the variance): per-chain tuning is what
    lets chains in a funnel's neck and mouth both move."""
    generator = torch.Generator().manual_seed(1)
    starts = torch.randn(16, 2, generator=generator, dtype=torch.float64)
    narrow = explore_mass(standard_normal, starts, n_steps=400, generator=generator)
    wide = explore_mass(
        lambda x: -0.5 * (x / 100.0).square().sum(1), starts, n_steps=400, generator=generator
    )
    ratio = float(wide.step_sizes.median() / narrow.step_sizes.median())
    assert 3e3 < ratio < 3e4


def test_box_holds_the_quantiles_of_the_draws():
    """The box is the 0.001 and 0.999 quantiles widened by a quarter of
    their distance: for a standard normal about +-(3.09 + 1.55)."""
    generator = torch.Generator().manual_seed(2)
    starts = torch.randn(64, 2, generator=generator, dtype=torch.float64)
    box = explore_mass(standard_normal, starts, n_steps=1000, generator=generator).box()
    assert box.shape == (2, 2)
    np.testing.assert_allclose(box[:, 1], 1.5 * 3.09, atol=0.6)
    np.testing.assert_allclose(box[:, 0], -1.5 * 3.09, atol=0.6)


def test_chains_that_start_outside_the_support_find_it():
    """A half-normal (log h = -inf for x < 0): chains started at negative
    points accept the first proposal inside, and no draw lies outside."""

    def half_normal(x: torch.Tensor) -> torch.Tensor:
        values = -0.5 * x.square().sum(1)
        return torch.where(x[:, 0] >= 0, values, torch.full_like(values, -math.inf))

    starts = torch.full((8, 1), -0.05, dtype=torch.float64)
    generator = torch.Generator().manual_seed(3)
    exploration = explore_mass(half_normal, starts, n_steps=400, generator=generator)
    assert exploration.draws.shape[0] == 8 * 200
    assert float(exploration.draws.min()) >= 0.0
    # the half-normal's mean is sqrt(2 / pi) = 0.80
    assert float(exploration.draws.mean()) == pytest.approx(0.80, abs=0.1)


def test_chains_that_run_away_are_left_out():
    """An improper target (log h = x_1 + x_2) has no mass to find: its chains
    accept every step, their steps grow without bound, and none is kept."""
    starts = torch.zeros(8, 2, dtype=torch.float64)
    generator = torch.Generator().manual_seed(4)
    exploration = explore_mass(lambda x: x.sum(1), starts, n_steps=400, generator=generator)
    assert exploration.draws.shape == (0, 2)


def test_errors():
    starts = torch.zeros(4, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match="n_steps"):
        explore_mass(standard_normal, starts, n_steps=1)
    with pytest.raises(ValueError, match="starts"):
        explore_mass(standard_normal, torch.zeros(4, dtype=torch.float64))
    with pytest.raises(TypeError, match="callable"):
        explore_mass("not a function", starts)
