"""Tests of sktt_flow.utils.mixture: the log-density of a two-component
mixture against its closed form, and its gradient against torch.logaddexp's,
which it equals except where that one is a subnormal number (then zero)."""

import math

import numpy as np
import pytest
import torch

from sktt_flow.flows import defensive_mixture_log_prob
from sktt_flow.utils.mixture import log_mixture
from tests.conftest import random_distribution


def is_subnormal(values: torch.Tensor) -> torch.Tensor:
    magnitude = values.abs()
    return (magnitude > 0) & (magnitude < torch.finfo(values.dtype).tiny)


def reference_log_mixture(log_first, log_second, weight):
    """The closed form in float64, by numpy."""
    first = np.log1p(-weight) + np.asarray(log_first, dtype=np.float64)
    second = np.log(weight) + np.asarray(log_second, dtype=np.float64)
    return np.logaddexp(first, second)


@pytest.mark.parametrize("weight", [1e-3, 0.3, 0.999])
def test_values_match_the_closed_form(weight):
    generator = torch.Generator().manual_seed(0)
    log_first = 30.0 * torch.randn(1000, generator=generator, dtype=torch.float64)
    log_second = 30.0 * torch.randn(1000, generator=generator, dtype=torch.float64)
    values = log_mixture(log_first, log_second, weight)
    np.testing.assert_allclose(
        values.numpy(), reference_log_mixture(log_first, log_second, weight), rtol=1e-14
    )


def gradients(function, log_first, log_second):
    first = log_first.clone().requires_grad_(True)
    second = log_second.clone().requires_grad_(True)
    function(first, second).sum().backward()
    return first.grad, second.grad


def test_gradient_is_logaddexps_except_where_that_is_subnormal():
    """float32 log-densities whose shares range from 1 down to 1e-52, for
    either component: where torch.logaddexp's gradient (each component's
    share) is a normal number the two gradients are equal bit for bit; where
    it is subnormal (shares below 1.2e-38) ours is exactly zero. Fails if the
    hook is lost (subnormal entries come back) or if it touches normal
    entries."""
    gaps = torch.linspace(-60.0, 60.0, 40001, dtype=torch.float32)
    log_first, log_second = -gaps, gaps  # the first's share ~ exp(-2 gap)
    weight = 0.5
    ours = gradients(lambda a, b: log_mixture(a, b, weight), log_first, log_second)
    plain = gradients(
        lambda a, b: torch.logaddexp(a + math.log1p(-weight), b + math.log(weight)),
        log_first,
        log_second,
    )
    for mine, theirs in zip(ours, plain, strict=True):
        subnormal = is_subnormal(theirs)
        assert subnormal.sum() > 50  # the case this is about occurs
        assert not is_subnormal(mine).any()
        assert torch.equal(mine[subnormal], torch.zeros_like(mine[subnormal]))
        assert torch.equal(mine[~subnormal], theirs[~subnormal])


def test_second_derivatives_go_through_the_hook():
    """A gradient taken with create_graph=True can be differentiated again:
    the second derivative of log((1 - w) e^a + w e^b) in a is
    s (1 - s) with s the first component's share."""
    log_first = torch.tensor([-1.0, 0.0, 2.0], dtype=torch.float64, requires_grad=True)
    log_second = torch.zeros(3, dtype=torch.float64)
    weight = 0.25
    (gradient,) = torch.autograd.grad(
        log_mixture(log_first, log_second, weight).sum(), log_first, create_graph=True
    )
    (second,) = torch.autograd.grad(gradient.sum(), log_first)
    share = (1 - weight) * log_first.exp() / ((1 - weight) * log_first.exp() + weight)
    torch.testing.assert_close(gradient, share, rtol=1e-14, atol=0)
    torch.testing.assert_close(second, share * (1 - share), rtol=1e-13, atol=0)


def test_every_mixture_of_the_package_drops_subnormal_shares():
    """The TT base's tail mixture and the models' defensive mixture go through
    log_mixture: a component whose share at a point is 6e-39 (e^-88, where
    torch.logaddexp's gradient is subnormal) gets a zero gradient there (a
    subnormal one slows every operation of the backward pass below it by a
    microcode assist on x86 CPUs). Fails if either goes back to logaddexp."""
    distribution = random_distribution((1, 2, 1), 4, [[-1, 1], [-1, 1]], seed=3)
    mixtures = {
        "tail": (distribution._mix_tail, distribution.tail_weight),
        "defensive": (lambda a, b: defensive_mixture_log_prob(a, b, 0.5), 0.5),
    }
    for name, (mixture, weight) in mixtures.items():
        # the first component's share e^-88 at the first point, 1/2 at the second
        log_first = torch.tensor([-88.0, 0.0], dtype=torch.float32)
        log_first += math.log(weight) - math.log1p(-weight)
        log_second = torch.zeros(2, dtype=torch.float32)
        first_gradient, _ = gradients(mixture, log_first, log_second)
        plain_gradient, _ = gradients(
            lambda a, b, weight=weight: torch.logaddexp(
                a + math.log1p(-weight), b + math.log(weight)
            ),
            log_first,
            log_second,
        )
        assert is_subnormal(plain_gradient[0]), name  # the case occurs
        assert first_gradient[0] == 0.0, name
        assert first_gradient[1] == plain_gradient[1], name
