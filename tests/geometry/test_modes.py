"""find_modes and laplace_covariance.

Tolerances: the search ends with undamped Newton steps once the Newton
decrement is below 1e-2 nats, so on a Gaussian the mode is exact to round-off
(the error of one Newton step on a quadratic is round-off) and 1e-9 relative
leaves several orders of magnitude; covariances are inverses of exact autograd
Hessians, so they too agree to round-off times the condition number.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from types import SimpleNamespace

import pytest
import torch

from sktt_flow.geometry import FATES, find_modes, laplace_covariance
from sktt_flow.targets import NealsFunnel
from sktt_flow.tt.cross import LogDensityEvaluator


@pytest.fixture(autouse=True)
def one_thread():
    """The search's linear algebra is on tiny matrices: extra threads only add
    synchronisation, and the measured time of the 31-D test assumes one."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def gaussian_target(mean: torch.Tensor, covariance: torch.Tensor):
    precision = torch.linalg.inv(covariance)

    def log_h(x):
        centred = x.double() - mean
        return -0.5 * torch.einsum("mi,ij,mj->m", centred, precision, centred)

    return log_h, precision


def random_covariance(d: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    factor = torch.randn(d, d, generator=generator, dtype=torch.float64)
    covariance = factor @ factor.T / d + 0.05 * torch.eye(d, dtype=torch.float64)
    mean = 3.0 * torch.randn(d, generator=generator, dtype=torch.float64)
    return mean, covariance


def assert_no_nan(result):
    for name in ("modes", "log_values", "hessians", "covariances", "log_masses"):
        assert not bool(torch.isnan(getattr(result, name)).any()), name


# ------------------------------------------------------------------ Gaussians
@pytest.mark.parametrize("d", [2, 20])
def test_correlated_gaussian_mode_covariance_and_hessian_are_exact(d):
    """Catches a wrong Hessian (sign, transpose, missing symmetrisation), a step
    rule that stops short of the mode, and starts of one mode left unmerged."""
    mean, covariance = random_covariance(d, seed=d)
    log_h, precision = gaussian_target(mean, covariance)
    result = find_modes(log_h, d, generator=0)
    assert result.n_modes == 1
    assert set(result.fates) == {"converged"}
    assert int(result.n_starts_per_mode[0]) == 32
    assert (result.mode_of_start == 0).all()
    scale = covariance.diagonal().sqrt()
    assert float(((result.modes[0] - mean) / scale).abs().max()) < 1e-9
    torch.testing.assert_close(result.hessians[0], -precision, rtol=1e-9, atol=1e-9)
    relative = (result.covariances[0] - covariance).abs().max() / covariance.abs().max()
    assert float(relative) < 1e-9
    assert abs(float(result.log_values[0])) < 1e-12
    # The Laplace mass of an exact Gaussian is its normaliser.
    expected = 0.5 * d * math.log(2 * math.pi) + 0.5 * float(torch.logdet(covariance))
    assert float(result.log_masses[0]) == pytest.approx(expected, abs=1e-9)
    assert abs(float(result.laplace_gaps[0])) < 1e-9
    assert not bool(result.repaired[0]) and not bool(result.non_gaussian[0])


def test_anisotropic_scales_from_one_milli_to_one_kilo():
    """Standard deviations 1e-3, 1e3 and 1 in one target, starts at scale 1:
    catches one step length for all coordinates (which cannot reach a mode
    300 away in the allotted steps and also resolve 1e-3) and a covariance
    inverted without scaling."""
    std = torch.tensor([1e-3, 1e3, 1.0], dtype=torch.float64)
    mean = torch.tensor([0.5, 300.0, -2.0], dtype=torch.float64)

    def log_h(x):
        return -0.5 * ((x - mean) / std).square().sum(1)

    result = find_modes(log_h, 3, generator=1)
    assert result.n_modes == 1 and set(result.fates) == {"converged"}
    assert float(((result.modes[0] - mean) / std).abs().max()) < 1e-8
    torch.testing.assert_close(
        result.covariances[0], torch.diag(std.square()), rtol=1e-9, atol=0.0
    )


def test_correlated_and_anisotropic_laplace_covariance_keeps_its_digits():
    """Correlation 0.9 between coordinates of scales 1e-4 and 1e4: the precision's
    condition number is about 1e17, beyond float64 without the diagonal
    scaling that laplace_covariance applies first."""
    std = torch.tensor([1e-4, 1e4], dtype=torch.float64)
    correlation = torch.tensor([[1.0, 0.9], [0.9, 1.0]], dtype=torch.float64)
    covariance = correlation * std[:, None] * std[None, :]
    hessian = -torch.linalg.inv(correlation) / (std[:, None] * std[None, :])
    covariances, precisions, repaired = laplace_covariance(hessian[None])
    assert not bool(repaired[0])
    torch.testing.assert_close(covariances[0], covariance, rtol=1e-12, atol=0.0)
    torch.testing.assert_close(precisions[0], -hessian, rtol=1e-12, atol=0.0)


# ------------------------------------------------------------- several modes
def test_two_mode_mixture_gives_two_modes_not_thirty():
    """Catches a merge rule that never merges (32 copies) or merges too much (1)."""
    first = torch.tensor([-3.0, -3.0], dtype=torch.float64)
    second = torch.tensor([3.0, 3.0], dtype=torch.float64)

    def log_h(x):
        # Unequal heights (weights 0.7, 0.3) and widths (1, 0.5): the order
        # by log value is then known.
        return torch.logaddexp(
            math.log(0.7) - 0.5 * (x - first).square().sum(1),
            math.log(0.3) - 0.5 * ((x - second) / 0.5).square().sum(1),
        )

    result = find_modes(log_h, 2, generator=0, scale=3.0)
    assert result.n_modes == 2
    assert int(result.n_starts_per_mode.sum()) == 32
    # The other component contributes exp(-36) at each mode: invisible.
    torch.testing.assert_close(result.modes[0], first, rtol=0, atol=1e-12)
    torch.testing.assert_close(result.modes[1], second, rtol=0, atol=1e-12)
    assert float(result.log_values[0]) > float(result.log_values[1])
    eye = torch.eye(2, dtype=torch.float64)
    torch.testing.assert_close(result.covariances[0], eye, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(result.covariances[1], 0.25 * eye, rtol=1e-10, atol=1e-12)
    # Laplace masses of exact Gaussian components: weight * 2 pi sigma^2.
    torch.testing.assert_close(
        result.log_masses,
        torch.tensor(
            [math.log(0.7 * 2 * math.pi), math.log(0.3 * 2 * math.pi * 0.25)],
            dtype=torch.float64,
        ),
        rtol=0,
        atol=1e-10,
    )
    assert (result.mode_of_start >= 0).all()


def test_user_starts_are_used_first():
    """Only a user start: the search must begin there (it reaches the nearer mode)."""
    first = torch.tensor([-3.0, -3.0], dtype=torch.float64)
    second = torch.tensor([3.0, 3.0], dtype=torch.float64)

    def log_h(x):
        return torch.logaddexp(
            -0.5 * (x - first).square().sum(1), -0.5 * (x - second).square().sum(1)
        )

    result = find_modes(log_h, 2, starts=[[2.0, 4.0]], n_starts=0)
    assert result.n_modes == 1
    torch.testing.assert_close(result.modes[0], second, rtol=0, atol=1e-12)
    mixed = find_modes(log_h, 2, starts=torch.tensor([[2.0, 4.0]]), n_starts=5, generator=0)
    torch.testing.assert_close(mixed.starts[0], torch.tensor([2.0, 4.0], dtype=torch.float64))
    assert mixed.starts.shape == (6, 2)


# -------------------------------------------------------------- hard targets
def test_target_minus_infinity_on_half_the_space():
    """Starts in the zero-density half are reported infeasible, the others find
    the mode, and no NaN leaks into the result."""
    center = torch.tensor([2.0, 0.0], dtype=torch.float64)

    def log_h(x):
        inside = -0.5 * (x - center).square().sum(1)
        return torch.where(x[:, 0] > 0, inside, torch.full_like(inside, -math.inf))

    result = find_modes(log_h, 2, generator=0)
    assert result.n_modes == 1
    torch.testing.assert_close(result.modes[0], center, rtol=0, atol=1e-12)
    outside = result.starts[:, 0] <= 0
    assert outside.any() and (~outside).any()
    infeasible = torch.tensor([fate == "infeasible" for fate in result.fates])
    assert torch.equal(infeasible, outside)
    assert_no_nan(result)


def test_maximum_on_the_boundary_of_the_support_stalls_without_error():
    """The supremum of exp(-|x - (-1, 0)|^2 / 2) on x_1 > 0 is on the boundary,
    where the gradient is not zero: no mode, the starts are reported."""
    center = torch.tensor([-1.0, 0.0], dtype=torch.float64)

    def log_h(x):
        inside = -0.5 * (x - center).square().sum(1)
        return torch.where(x[:, 0] > 0, inside, torch.full_like(inside, -math.inf))

    result = find_modes(log_h, 2, generator=0, max_steps=100)
    assert result.n_modes == 0
    assert "converged" not in result.fates
    assert set(result.fates) <= {"stalled", "not_converged", "infeasible"}
    feasible = [i for i, fate in enumerate(result.fates) if fate != "infeasible"]
    # They climbed to the boundary x_1 = 0+.
    assert float(result.end_points[feasible, 0].max()) < 1e-3


@pytest.mark.parametrize(
    "log_h",
    [
        lambda x: x.sum(1),  # improper everywhere
        lambda x: x[:, 0] - 0.5 * x[:, 1].square(),  # improper along one coordinate
    ],
    ids=["linear", "ridge"],
)
def test_improper_targets_are_flagged_diverged_not_raised(log_h):
    """log h increasing without bound: every start is flagged diverged, with no
    exception, no NaN and no mode."""
    result = find_modes(log_h, 2, generator=0)
    assert result.n_modes == 0
    assert result.any_diverged and bool(result.diverged.all())
    assert torch.isfinite(result.end_log_values).all()
    assert torch.isfinite(result.end_points).all()


def test_supremum_at_infinity_over_a_plateau_is_never_a_clean_mode():
    """log h = -softplus(-x1) - x2^2 / 2 rises towards 0 as x1 grows, with a
    gradient that vanishes exponentially: the Newton decrement falls below tol
    at finite x1 (about 22-30), so a start may "converge" there; its Laplace
    standard deviation (exp(x1 / 2)) is then absurd, and the Laplace check
    must flag it. Catches a plateau reported as an ordinary mode."""
    log_h = lambda x: -torch.nn.functional.softplus(-x[:, 0]) - 0.5 * x[:, 1].square()  # noqa: E731
    result = find_modes(log_h, 2, generator=0)
    assert_no_nan(result)
    for k in range(result.n_modes):
        assert bool(result.non_gaussian[k])
    assert set(result.fates) <= {"converged", "diverged"}


def test_neals_funnel_maximum_is_found_and_flagged():
    """The funnel's only maximum is at v = -9 (d - 1) / 2 (x = 0), where the
    mass is negligible: found exactly (against the closed form) and flagged
    non-Gaussian (Laplace gaps of 40-190 nats over seeds, threshold 5)."""
    d = 10
    target = NealsFunnel(d)
    result = find_modes(target.log_prob, d, generator=0)
    assert_no_nan(result)
    assert result.n_modes == 1
    assert float(result.modes[0, 0]) == pytest.approx(-9 * (d - 1) / 2, abs=1e-6)
    assert float(result.modes[0, 1:].abs().max()) < 1e-12
    assert bool(result.non_gaussian[0])
    assert float(result.laplace_gaps[0]) > 20
    # The local variance of v is scale^2 = 9; that of each x_i is exp(v).
    assert float(result.covariances[0, 0, 0]) == pytest.approx(9.0, rel=1e-6)
    assert float(result.covariances[0, 1, 1]) == pytest.approx(math.exp(-40.5), rel=1e-6)


def test_hessian_against_a_closed_form_of_a_non_gaussian_target():
    """log h = -cosh(x1 - 1) - (x2 - x1)^2 has its mode at (1, 1) with Hessian
    [[-3, 2], [2, -2]]; adding -(x3 - x2)^4 makes one direction flat at the mode
    (zero curvature), which must not be inverted into inf or NaN."""

    def log_h(x):
        return -torch.cosh(x[:, 0] - 1) - (x[:, 1] - x[:, 0]).square() - (x[:, 2] - x[:, 1]).pow(4)

    # Without the quartic term first: a plain non-quadratic maximum.
    two = find_modes(lambda x: log_h(torch.cat([x, x[:, 1:]], 1)), 2, generator=0)
    assert two.n_modes == 1
    torch.testing.assert_close(two.modes[0], torch.ones(2, dtype=torch.float64))
    expected = torch.tensor([[-3.0, 2.0], [2.0, -2.0]], dtype=torch.float64)
    torch.testing.assert_close(two.hessians[0], expected, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(two.covariances[0], torch.linalg.inv(-expected))
    # With the quartic: Newton converges only linearly along x3 - x2 = u, and
    # stops where the decrement 2 u^4 / 3 is below tol, with a curvature
    # 12 u^2 so small that the Laplace standard deviation is ~100 times the
    # true spread: the gap check must flag it; covariances stay finite and
    # positive definite, and the starts along the flat valley merge.
    three = find_modes(log_h, 3, generator=0, max_newton_steps=100)
    assert_no_nan(three)
    assert three.n_modes == 1
    assert bool(three.non_gaussian[0])
    assert float(torch.linalg.eigvalsh(three.covariances[0]).min()) > 0


def test_laplace_covariance_repairs_an_indefinite_hessian():
    """Negative curvature in one direction (a saddle): eigenvalue replaced by its
    absolute value, flag set; the result is the inverse of |P|."""
    hessian = torch.tensor([[-2.0, 0.0], [0.0, 0.5]], dtype=torch.float64)
    covariances, _, repaired = laplace_covariance(hessian[None])
    assert bool(repaired[0])
    torch.testing.assert_close(covariances[0], torch.diag(torch.tensor([0.5, 2.0])).double())
    # A singular one: the floor, relative to the largest eigenvalue, bounds it.
    singular = -torch.tensor([[1.0, 1.0], [1.0, 1.0]], dtype=torch.float64)
    covariances, _, repaired = laplace_covariance(singular[None], eigenvalue_floor=1e-6)
    assert bool(repaired[0])
    eigenvalues = torch.linalg.eigvalsh(covariances[0])
    # Scaled precision [[1, 1], [1, 1]]: eigenvalues 2 and 0, floored at 2e-6.
    assert float(eigenvalues.max()) == pytest.approx(1 / 2e-6, rel=1e-6)


# ---------------------------------------------------------- calling the target
def test_the_estimators_evaluator_signature_and_counts():
    """A callable with a grad keyword (the estimator's LogDensityEvaluator) gets
    grad=True on every differentiating call, and both counts agree."""
    mean, covariance = random_covariance(3, seed=0)
    log_h, _ = gaussian_target(mean, covariance)
    report = SimpleNamespace(n_calls=0, n_evaluations=0)
    evaluator = LogDensityEvaluator(log_h, 3, 1 << 30, torch.float64, "cpu", report)
    result = find_modes(evaluator, 3, generator=0, n_starts=8)
    assert result.n_modes == 1
    assert report.n_evaluations == result.n_evaluations
    assert report.n_calls == result.n_calls
    plain = find_modes(log_h, 3, generator=0, n_starts=8)
    torch.testing.assert_close(plain.modes, result.modes, rtol=0, atol=0)

    seen = []

    def keyword_only(points, *, grad=False):
        seen.append(grad)
        return log_h(points)

    find_modes(keyword_only, 3, generator=0, n_starts=4)
    assert seen and seen[0] is True


def test_float32_points_still_converge():
    """dtype=float32: the target sees float32 points (its gradients are float32)
    and the search still converges to float32 accuracy."""
    mean, covariance = random_covariance(4, seed=2)
    _, precision = gaussian_target(mean, covariance)
    dtypes = set()

    def log_h(x):
        dtypes.add(x.dtype)
        centred = x - mean.float()
        return -0.5 * torch.einsum("mi,ij,mj->m", centred, precision.float(), centred)

    result = find_modes(log_h, 4, generator=0, dtype=torch.float32)
    assert dtypes == {torch.float32}
    assert result.n_modes == 1
    assert float(((result.modes[0] - mean) / covariance.diagonal().sqrt()).abs().max()) < 1e-3


def test_without_double_backward_the_hessian_comes_from_differences_of_gradients():
    """A target built on a once-differentiable autograd Function has no second
    derivative by autograd: the central-difference fallback must give the
    Hessian to about eps^(2/3)."""

    class Quadratic(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            ctx.save_for_backward(x)
            return -(x.square() * torch.tensor([0.5, 2.0], dtype=x.dtype)).sum(1)

        @staticmethod
        @torch.autograd.function.once_differentiable
        def backward(ctx, grad_output):
            (x,) = ctx.saved_tensors
            return grad_output[:, None] * -(x * torch.tensor([1.0, 4.0], dtype=x.dtype))

    result = find_modes(Quadratic.apply, 2, generator=0, n_starts=4)
    assert result.n_modes == 1
    expected = torch.diag(torch.tensor([-1.0, -4.0], dtype=torch.float64))
    torch.testing.assert_close(result.hessians[0], expected, rtol=1e-6, atol=1e-6)


def test_same_seed_same_result():
    mean, covariance = random_covariance(3, seed=5)
    log_h, _ = gaussian_target(mean, covariance)
    first = find_modes(log_h, 3, generator=7, n_starts=6)
    second = find_modes(log_h, 3, generator=7, n_starts=6)
    assert torch.equal(first.starts, second.starts)
    assert torch.equal(first.modes, second.modes)
    assert first.fates == second.fates and first.n_evaluations == second.n_evaluations


# --------------------------------------------------------------------- errors
def test_bad_inputs_raise_clear_errors():
    log_h = lambda x: -0.5 * x.square().sum(1)  # noqa: E731
    with pytest.raises(TypeError, match="callable"):
        find_modes(3.0, 2)
    with pytest.raises(ValueError, match="n_features"):
        find_modes(log_h, 0)
    with pytest.raises(ValueError, match="starts"):
        find_modes(log_h, 2, starts=[[0.0, 0.0, 0.0]])
    with pytest.raises(ValueError, match="starts"):
        find_modes(log_h, 2, starts=[[math.nan, 0.0]])
    with pytest.raises(ValueError, match="No starts"):
        find_modes(log_h, 2, n_starts=0)
    with pytest.raises(ValueError, match="scale"):
        find_modes(log_h, 2, scale=[1.0, -1.0])
    with pytest.raises(ValueError, match="dtype"):
        find_modes(log_h, 2, dtype=torch.float16)
    with pytest.raises(ValueError, match="values"):
        find_modes(lambda x: x, 2)  # (m, d) instead of (m,)
    with pytest.raises(ValueError, match="gradient"):
        find_modes(lambda x: -0.5 * x.detach().square().sum(1), 2)
    with pytest.raises(ValueError, match="all 4 starts"):
        find_modes(lambda x: torch.full((x.shape[0],), -math.inf), 2, n_starts=4)


def test_fates_are_documented_values():
    result = find_modes(lambda x: -0.5 * x.square().sum(1), 2, generator=0, n_starts=3)
    assert set(result.fates) <= set(FATES)
    assert len(result.fates) == 3


# ------------------------------------------------------------ measured costs
def test_logistic_regression_posterior_in_31_dimensions_is_fast():
    """The bundled breast-cancer data, standardised, with an intercept and a
    N(0, 1) prior: one mode, equal to Newton's method run from zero, found in
    well under the few seconds the issue allows (measured 0.3-0.6 s and
    2.2k evaluations on one thread of a shared machine; the bound of 6 s
    leaves a factor of 10)."""
    datasets = pytest.importorskip("sklearn.datasets")
    features, labels = datasets.load_breast_cancer(return_X_y=True)
    features = (features - features.mean(0)) / features.std(0)
    design = torch.cat(
        [torch.ones(len(features), 1, dtype=torch.float64), torch.tensor(features)], 1
    )
    labels = torch.tensor(labels, dtype=torch.float64)

    def log_posterior(weights):
        logits = weights @ design.T
        likelihood = (labels * logits - torch.nn.functional.softplus(logits)).sum(1)
        return likelihood - 0.5 * weights.square().sum(1)

    begin = time.perf_counter()
    result = find_modes(log_posterior, 31, generator=0)
    elapsed = time.perf_counter() - begin
    assert result.n_modes == 1 and Counter(result.fates) == {"converged": 32}
    assert result.n_evaluations < 5_000
    assert elapsed < 6.0
    # Reference: plain Newton from zero (the posterior is log-concave).
    weights = torch.zeros(31, dtype=torch.float64)
    for _ in range(20):
        point = weights.clone().requires_grad_(True)
        (gradient,) = torch.autograd.grad(log_posterior(point[None])[0], point, create_graph=True)
        hessian = torch.stack(
            [torch.autograd.grad(gradient[j], point, retain_graph=True)[0] for j in range(31)]
        )
        weights = (weights - torch.linalg.solve(hessian, gradient)).detach()
    # The search stops at a Newton decrement of ~1e-16 nats (2e-8 local
    # standard deviations, the weights' being 0.1-1); plain Newton goes on to
    # round-off.
    torch.testing.assert_close(result.modes[0], weights, rtol=0, atol=1e-7)
    # The Hessian moves with the point (third derivatives): 1e-8 away, 1e-6.
    torch.testing.assert_close(result.hessians[0], hessian.detach(), rtol=1e-5, atol=1e-6)
    assert not bool(result.non_gaussian[0])
