"""The sampler is exact: its marginals pass KS tests against CDFs computed by
quadrature, its 2-D law passes a chi-square test against integrated cell
probabilities, and the same tests reject two plausible wrong samplers.

Sizes: with N = 40,000 samples the KS statistic of a correct sampler exceeds
1.95 / sqrt(N) ~ 0.0098 with probability 0.001; a sampler whose CDF is off by
0.02 anywhere fails with certainty. The chi-square test uses 36 cells with
expected counts above 100 each.
"""

import copy
import math

import numpy as np
import pytest
import torch
from numpy.polynomial import chebyshev, legendre
from scipy import stats

from sktt_flow.tt import sampling as sampling_module
from sktt_flow.tt.algebra import right_orthogonalize
from sktt_flow.tt.basis import gauss_legendre
from sktt_flow.tt.distribution import TTDistribution
from sktt_flow.tt.sampling import (
    ConditionalCDFOperators,
    _cdf_and_density,
    _cdf_and_density_by_table,
    _first_iterate,
    _newton_has_converged,
    conditional_cdf_operators,
    inverse_rosenblatt_right_orthogonal,
    rosenblatt_right_orthogonal,
    sample_right_orthogonal,
)
from tests.conftest import random_cores, random_distribution, requires_cuda
from tests.tt.reference import brute_force_tt_density, cells, product_rule, tail_density

N_SAMPLES = 40_000
SIGNIFICANCE = 1e-3


@pytest.fixture(params=["recurrence", "table"])
def evaluator(request, monkeypatch):
    """Each way the solver evaluates a conditional CDF: Clenshaw's recurrence
    (the CPU's) and the table of Chebyshev polynomials (a GPU's), switched on
    for the CPU here so that the solver's tests run on it without a GPU."""
    if request.param == "table":
        monkeypatch.setattr(sampling_module, "TABLE_DEVICES", ("cpu",))
    return request.param


@pytest.fixture(scope="module")
def distribution():
    # Rank 4 with 10 Legendre functions: multimodal, strongly dependent.
    return random_distribution(
        (1, 4, 4, 1), 10, [[-1.0, 1.0], [-2.0, 3.0], [0.0, 0.5]], seed=11, tail_weight=0.01
    )


@pytest.fixture(scope="module")
def samples(distribution):
    return distribution.sample(N_SAMPLES, generator=torch.Generator().manual_seed(0))


def marginal_cdf(distribution, k):
    """CDF of coordinate k, independently of the package's marginals: the TT part
    of the marginal is a polynomial of degree 2n - 2, so its values at 40 points
    (Gauss quadrature of the brute-force joint over the other coordinates)
    determine it; numpy's Legendre class then integrates it exactly."""
    low, high = distribution.low.numpy(), distribution.high.numpy()
    others = [j for j in range(distribution.n_features) if j != k]
    rest, rest_weights = product_rule(12, low[others], high[others])
    nodes, _ = gauss_legendre(40, float(low[k]), float(high[k]))
    points = torch.empty(40 * len(rest), distribution.n_features, dtype=torch.float64)
    points[:, others] = rest.repeat(40, 1)
    points[:, k] = nodes.repeat_interleave(len(rest))
    density = brute_force_tt_density(distribution, points).reshape(40, -1) @ rest_weights
    degree = 2 * distribution.n_basis - 2
    polynomial = np.polynomial.Legendre.fit(
        nodes.numpy(), density.numpy(), degree, domain=[low[k], high[k]]
    )
    antiderivative = polynomial.integ(lbnd=low[k])
    center, scale = (low[k] + high[k]) / 2, (high[k] - low[k]) / 2
    eps = distribution.tail_weight

    def cdf(x):
        inside = antiderivative(np.clip(x, low[k], high[k]))
        inside = np.where(x < low[k], 0.0, np.where(x > high[k], 1.0, inside))
        return (1 - eps) * inside + eps * stats.norm.cdf(x, center, scale)

    return cdf, antiderivative(high[k])


def test_every_marginal_passes_kolmogorov_smirnov(distribution, samples):
    for k in range(distribution.n_features):
        cdf, total = marginal_cdf(distribution, k)
        assert total == pytest.approx(1.0, abs=1e-10)
        result = stats.kstest(samples[:, k].numpy(), cdf)
        assert result.pvalue > SIGNIFICANCE, (k, result)


def cell_probabilities(distribution, dims, bins):
    """Probability of each cell of a bins x bins grid on the box of ``dims``,
    plus the rest of the plane, by exact Gauss quadrature of the joint."""
    low, high = distribution.low.numpy(), distribution.high.numpy()
    edges = [np.linspace(low[k], high[k], bins + 1) for k in dims]
    other = [j for j in range(distribution.n_features) if j not in dims]
    eps = distribution.tail_weight
    probabilities = []
    for cell in cells(edges):
        box_low = np.empty(distribution.n_features)
        box_high = np.empty(distribution.n_features)
        box_low[list(dims)] = [c[0] for c in cell]
        box_high[list(dims)] = [c[1] for c in cell]
        box_low[other], box_high[other] = low[other], high[other]
        points, weights = product_rule(11, box_low, box_high)
        tt = float((brute_force_tt_density(distribution, points) * weights).sum())
        center, scale = (low + high) / 2, (high - low) / 2
        tail = np.prod(
            [
                np.diff(stats.norm.cdf(c, center[k], scale[k]))[0]
                for c, k in zip(cell, dims, strict=True)
            ]
        )
        probabilities.append((1 - eps) * tt + eps * tail)
    probabilities.append(1.0 - sum(probabilities))
    return edges, np.array(probabilities)


def chi_square_pvalue(samples_2d, edges, probabilities):
    counts, _, _ = np.histogram2d(samples_2d[:, 0], samples_2d[:, 1], bins=edges)
    observed = np.append(counts.ravel(), len(samples_2d) - counts.sum())
    expected = probabilities * len(samples_2d)
    return stats.chisquare(observed, expected).pvalue


def test_two_dimensional_law_passes_chi_square(distribution, samples):
    for dims in ((0, 1), (1, 2)):
        edges, probabilities = cell_probabilities(distribution, dims, bins=6)
        assert probabilities[:-1].min() * N_SAMPLES > 100
        pvalue = chi_square_pvalue(samples[:, list(dims)].numpy(), edges, probabilities)
        assert pvalue > SIGNIFICANCE, (dims, pvalue)


@pytest.fixture(scope="module")
def float32_samples(distribution):
    float32 = copy.deepcopy(distribution).to(torch.float32)
    return float32.sample(N_SAMPLES, generator=torch.Generator().manual_seed(0))


def test_float32_draws_pass_the_same_tests(distribution, float32_samples):
    """A float32 train samples in float32, and its law is the float64 one:
    its cores differ by a relative 1e-7, far below what 40,000 draws resolve."""
    assert float32_samples.dtype == torch.float32
    assert_follow_the_law(distribution, float32_samples.double())


def assert_follow_the_law(distribution, samples):
    """The marginal KS tests and the 2-D chi-square tests above, on float64
    samples on the CPU."""
    for k in range(distribution.n_features):
        cdf, _ = marginal_cdf(distribution, k)
        result = stats.kstest(samples[:, k].numpy(), cdf)
        assert result.pvalue > SIGNIFICANCE, (k, result)
    for dims in ((0, 1), (1, 2)):
        edges, probabilities = cell_probabilities(distribution, dims, bins=6)
        pvalue = chi_square_pvalue(samples[:, list(dims)].numpy(), edges, probabilities)
        assert pvalue > SIGNIFICANCE, (dims, pvalue)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_draws_by_the_table_pass_the_same_tests(distribution, samples, dtype, monkeypatch):
    """The solver with the table of Chebyshev polynomials (a GPU's), run on
    the CPU: the same law by the KS and chi-square tests at the same
    thresholds, and in float64 the same draws as by the recurrence to
    rounding (the root is the same; a few ulps of the box, more only where a
    rounding of an earlier coordinate moves a later conditional)."""
    monkeypatch.setattr(sampling_module, "TABLE_DEVICES", ("cpu",))
    train = copy.deepcopy(distribution).to(dtype)
    draws = train.sample(N_SAMPLES, generator=torch.Generator().manual_seed(0)).double()
    assert_follow_the_law(distribution, draws)
    if dtype == torch.float64:
        width = distribution.high - distribution.low
        gap = ((draws - samples).abs() / width).amax(dim=1)
        assert float(gap.median()) < 1e-14
        assert float(gap.quantile(0.999)) < 1e-10


def test_float32_and_float64_draws_of_one_generator_agree(distribution, samples, float32_samples):
    """The same uniforms, solved in two precisions: most draws agree to a few
    float32 ulps of the box (measured: median 8e-8, 99.9% within 2.2e-5 of
    its width). A later coordinate can move further where the rounding of an
    earlier one shifts its conditional across a region of little mass."""
    width = distribution.high - distribution.low
    gap = ((samples - float32_samples.double()).abs() / width).amax(dim=1)
    assert float(gap.median()) < 1e-6
    assert float(gap.quantile(0.999)) < 1e-4


def test_float32_sampling_does_not_overflow_with_a_large_norm():
    """||C||^2 = 1e72 times that of a plain train, beyond float32's range: the
    train is normalised before it is cast, so its draws are the plain ones."""
    cores = random_cores((1, 4, 4, 1), 10, seed=11)
    domain = [[-1.0, 1.0], [-2.0, 3.0], [0.0, 0.5]]
    plain = TTDistribution(cores, domain).to(torch.float32)
    large = TTDistribution([core * 1e12 for core in cores], domain).to(torch.float32)
    draws = large.sample(2000, generator=torch.Generator().manual_seed(0))
    assert bool(torch.isfinite(draws).all())
    expected = plain.sample(2000, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(draws, expected, rtol=0.0, atol=1e-4)


@requires_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cuda_draws_pass_the_same_tests(distribution, dtype):
    """The sampler on a GPU (its own kernels and generator, the float32 path
    with its clamped first Newton steps included) draws the same law: the
    marginal KS tests and the 2-D chi-square tests at the CPU's thresholds."""
    on_gpu = copy.deepcopy(distribution).to(device="cuda", dtype=dtype)
    draws = on_gpu.sample(N_SAMPLES, generator=torch.Generator("cuda").manual_seed(0))
    assert draws.is_cuda and draws.dtype == dtype
    samples = draws.double().cpu()
    assert bool(torch.isfinite(samples).all())
    assert_follow_the_law(distribution, samples)
    # the float64 log q on the GPU is the CPU's
    with torch.no_grad():
        float64_on_gpu = copy.deepcopy(distribution).to("cuda")
        on_gpu_log_q = float64_on_gpu.log_prob(samples[:2000].cuda()).cpu()
        torch.testing.assert_close(
            on_gpu_log_q, distribution.log_prob(samples[:2000]), rtol=1e-10, atol=1e-10
        )


def test_the_same_tests_reject_wrong_samplers(distribution, samples):
    # 1. Exact marginals but independent coordinates: the chi-square test sees it.
    generator = np.random.default_rng(0)
    shuffled = samples[:, :2].numpy().copy()
    shuffled[:, 1] = generator.permutation(shuffled[:, 1])
    edges, probabilities = cell_probabilities(distribution, (0, 1), bins=6)
    assert chi_square_pvalue(shuffled, edges, probabilities) < 1e-12
    # 2. The grid-plus-jitter draw of the authors' research code (density at
    #    16 cell centres, uniform within the cell): the KS test sees it.
    cdf, _ = marginal_cdf(distribution, 1)
    low, high = float(distribution.low[1]), float(distribution.high[1])
    centers = low + (np.arange(16) + 0.5) * (high - low) / 16
    with torch.no_grad():
        weights = distribution.marginal_log_prob(torch.tensor(centers), 1).exp().numpy()
    cell = generator.choice(16, N_SAMPLES, p=weights / weights.sum())
    jittered = centers[cell] + (generator.random(N_SAMPLES) - 0.5) * (high - low) / 16
    assert stats.kstest(jittered, cdf).pvalue < SIGNIFICANCE


def first_coordinate_cdf(z0: torch.Tensor) -> torch.Tensor:
    """Marginal CDF of the first coordinate of the rank-3 train of the inversion
    tests (seed 12, 12 functions, box [-1, 2] x [0, 1]) at the points ``z0``,
    by a 12-point Gauss rule on [-1, z] and one on [0, 1] for the other
    coordinate, from the brute-force density: independent of the solver."""
    distribution = random_distribution((1, 3, 1), 12, [[-1.0, 2.0], [0.0, 1.0]], seed=12)
    n_points = z0.shape[0]
    nodes, weights = gauss_legendre(12, torch.full_like(z0, -1.0), z0)
    rest, rest_weights = product_rule(12, [0.0], [1.0])
    points = torch.stack(
        [nodes.reshape(-1).repeat_interleave(12), rest[:, 0].repeat(n_points * 12)], 1
    )
    density = brute_force_tt_density(distribution, points).reshape(n_points, 12, 12)
    return torch.einsum("nqr,nq,r->n", density, weights, rest_weights)


def test_inversion_reaches_machine_precision(evaluator):
    """Each coordinate solves F(z) = u F(b) to about 1e-13, checked with an
    independent Gauss quadrature of the conditional density from a to z."""
    cores = right_orthogonalize(random_cores((1, 3, 1), 12, seed=12))
    low = torch.tensor([-1.0, 0.0], dtype=torch.float64)
    high = torch.tensor([2.0, 1.0], dtype=torch.float64)
    uniforms = torch.rand(300, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    uniforms[:3, 0] = torch.tensor([0.0, 1e-12, 1 - 1e-12], dtype=torch.float64)
    z = sample_right_orthogonal(cores, low, high, uniforms)
    cdf = first_coordinate_cdf(z[:, 0])
    np.testing.assert_allclose(cdf.numpy(), uniforms[:, 0].numpy(), atol=1e-12)
    assert float(z[0, 0]) == pytest.approx(-1.0, abs=1e-6)
    assert float(z[2, 0]) == pytest.approx(2.0, abs=1e-6)


def test_float32_inversion_reaches_float32_precision(evaluator):
    """In float32 each conditional CDF is exact to its rounding: a degree-23
    Chebyshev series of terms at most F(b) each, about 24 eps = 3e-6 at worst
    (measured 3.5e-7), checked as above by float64 quadrature."""
    cores = right_orthogonalize(random_cores((1, 3, 1), 12, seed=12))
    cores[0] = cores[0] / torch.linalg.vector_norm(cores[0])
    low = torch.tensor([-1.0, 0.0], dtype=torch.float64)
    high = torch.tensor([2.0, 1.0], dtype=torch.float64)
    uniforms = torch.rand(300, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    z = sample_right_orthogonal(
        [core.float() for core in cores], low.float(), high.float(), uniforms.float()
    )
    assert z.dtype == torch.float32
    cdf = first_coordinate_cdf(z[:, 0].double())
    np.testing.assert_allclose(cdf.numpy(), uniforms[:, 0].float().double().numpy(), atol=3e-6)


def test_a_draw_does_not_depend_on_the_other_rows(evaluator):
    """Uniforms mapped in one call or in chunks of 704 and 1296 rows give the
    same points to rounding: which samples the root finder keeps working on,
    and when each stops, never depends on the rest of the chunk. Not bit for
    bit: the BLAS product that gives the CDFs' coefficients rounds
    differently for another number of columns (seen: 1e-15 on 22 of 6,000
    coordinates). A solver that stopped a sample with the others, or on
    their behalf, would be off by its tolerance instead, 1e-8 or more."""
    cores = right_orthogonalize(random_cores((1, 4, 4, 1), 10, seed=11))
    low = torch.tensor([-1.0, -2.0, 0.0], dtype=torch.float64)
    high = torch.tensor([1.0, 3.0, 0.5], dtype=torch.float64)
    uniforms = torch.rand(2000, 3, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    whole = sample_right_orthogonal(cores, low, high, uniforms)
    parts = [sample_right_orthogonal(cores, low, high, u) for u in uniforms.split([704, 1296])]
    np.testing.assert_allclose(torch.cat(parts).numpy(), whole.numpy(), rtol=0, atol=1e-13)


def test_the_prefix_update_by_blocks_of_points_changes_no_draw(monkeypatch):
    """9,000 uniforms go through each core in blocks of points
    (``ADVANCE_BLOCK_POINTS``: two blocks of 4,500 by default, three of
    3,000 with blocks of 2,500) or in one: the same draws and log-densities
    to rounding (another number of columns may round the BLAS product
    differently, as above). A block written to the wrong columns, or one
    left out, moves its points by the width of their conditionals."""
    cores = right_orthogonalize(random_cores((1, 4, 4, 3, 1), 10, seed=5))
    low = torch.tensor([-1.0, -2.0, 0.0, 1.0], dtype=torch.float64)
    high = torch.tensor([1.0, 3.0, 0.5, 4.0], dtype=torch.float64)
    uniforms = torch.rand(9000, 4, generator=torch.Generator().manual_seed(8), dtype=torch.float64)

    def draws():
        return sample_right_orthogonal(cores, low, high, uniforms, return_log_density=True)

    results = {}
    for name, blocks in (("default", None), ("2500", {"cpu": 2500}), ("one", {})):
        if blocks is not None:
            monkeypatch.setattr(sampling_module, "ADVANCE_BLOCK_POINTS", blocks)
        results[name] = draws()
    for name in ("default", "2500"):
        for blocked, whole in zip(results[name], results["one"], strict=True):
            np.testing.assert_allclose(blocked.numpy(), whole.numpy(), rtol=1e-12, atol=1e-13)
    assert sampling_module._column_blocks(9000, 4096) == [slice(0, 4500), slice(4500, 9000)]
    assert sampling_module._column_blocks(9000, 2500) == [
        slice(0, 3000),
        slice(3000, 6000),
        slice(6000, 9000),
    ]
    assert sampling_module._column_blocks(3000, 4096) == [slice(0, 3000)]
    assert sampling_module._column_blocks(3000, None) == [slice(0, 3000)]


def test_sampling_is_deterministic_and_vectorised(distribution):
    first = distribution.sample(1000, generator=torch.Generator().manual_seed(3))
    second = distribution.sample(1000, generator=torch.Generator().manual_seed(3))
    assert torch.equal(first, second)
    assert first.shape == (1000, 3) and not first.requires_grad
    assert distribution.sample(0).shape == (0, 3)
    with pytest.raises(ValueError, match="non-negative"):
        distribution.sample(-1)


def test_tail_component_is_drawn_with_its_weight():
    distribution = random_distribution((1, 2, 1), 6, [[-1, 1], [-1, 1]], seed=13, tail_weight=0.2)
    z = distribution.sample(20000, generator=torch.Generator().manual_seed(4))
    outside = float(((z < -1) | (z > 1)).any(1).double().mean())
    expected = float(distribution.tail_mass_outside())
    # binomial standard error sqrt(p (1 - p) / N) ~ 0.0027
    assert outside == pytest.approx(expected, abs=4 * np.sqrt(expected * (1 - expected) / 20000))
    tail_only = tail_density(distribution, torch.tensor([[5.0, 5.0]]))[0] * 0.2
    with torch.no_grad():
        log_prob = distribution.log_prob(torch.tensor([[5.0, 5.0]], dtype=torch.float64))
    assert float(log_prob) == pytest.approx(np.log(tail_only), rel=1e-12)


def conditional_roots(cores, uniforms, t):
    """Roots of every conditional CDF, independently of the sampler, in extended precision.

    Coordinate k of sample i is conditioned on the sampler's own ``t[i, :k]``
    (on [-1, 1]), so that only the solver of coordinate k is compared and the
    sensitivity of later coordinates to earlier ones does not enter. The
    conditional density is the sum over the bond of squared Legendre series,
    multiplied out with numpy's Legendre product and integrated with legint,
    in long double; the root is found by bisection to the end of that
    precision (1e-19 on x86)."""
    n = cores[0].shape[1]
    scale = np.sqrt(2 * np.arange(n) + 1).astype(np.longdouble)
    unit = np.eye(n, dtype=np.longdouble)
    # P_i P_j = sum_l product[i, j, l] P_l
    product = np.zeros((n, n, 2 * n - 1), dtype=np.longdouble)
    for i in range(n):
        for j in range(n):
            terms = legendre.legmul(unit[i], unit[j])
            product[i, j, : len(terms)] = terms
    u = uniforms.numpy().astype(np.longdouble)
    t = t.numpy().astype(np.longdouble)
    n_samples = u.shape[0]
    prefix = np.ones((n_samples, 1), dtype=np.longdouble)
    roots = np.empty(u.shape, dtype=np.longdouble)
    for k, core in enumerate(cores):
        # Legendre coefficients (n) of the r_k polynomials whose squares add up
        # to the conditional density, per sample
        core = core.numpy().astype(np.longdouble) * scale[:, None]
        series = np.einsum("sa,aib->sib", prefix, core)
        density = np.einsum("sib,sjb,ijl->ls", series, series, product)
        cdf = legendre.legint(density, lbnd=-1, axis=0)
        total = legendre.legval(np.ones(n_samples, dtype=np.longdouble), cdf, tensor=False)
        target = u[:, k] * total
        low = -np.ones(n_samples, dtype=np.longdouble)
        high = np.ones(n_samples, dtype=np.longdouble)
        for _ in range(70):
            middle = (low + high) / 2
            below = legendre.legval(middle, cdf, tensor=False) < target
            low, high = np.where(below, middle, low), np.where(below, high, middle)
        roots[:, k] = (low + high) / 2
        prefix = np.einsum("si,sib->sb", legendre.legvander(t[:, k], n - 1), series)
        prefix /= np.abs(prefix).max(axis=1, keepdims=True)
    return roots.astype(np.float64)


def test_solver_matches_an_independent_high_precision_inversion(evaluator):
    """Every coordinate of every sample is the root of its conditional CDF to a
    few ulps: the median error is about one ulp, the worst (at a low density,
    where the CDF is flat) below 1e-12. Rank 7 at n_basis 8 takes the two-step
    product of the nodal densities, the other bonds the folded one."""
    cores = right_orthogonalize(random_cores((1, 3, 7, 2, 1), 8, seed=3))
    low = torch.tensor([-1.0, 0.0, 2.0, -3.0], dtype=torch.float64)
    high = torch.tensor([1.0, 0.5, 5.0, 3.0], dtype=torch.float64)
    uniforms = torch.rand(400, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    uniforms[:3] = torch.tensor([0.0, 1e-12, 1.0 - 1e-12], dtype=torch.float64)[:, None]
    z = sample_right_orthogonal(cores, low, high, uniforms)
    t = (2.0 * z - low - high) / (high - low)
    error = np.abs(t.numpy() - conditional_roots(cores, uniforms, t))
    assert np.median(error) <= 4 * np.finfo(np.float64).eps
    assert error.max() <= 1e-12


def test_first_iterate_is_in_the_cell_that_holds_the_root():
    """On F(t) = (t + 1)^2 / 4 (root 2 sqrt(u) - 1, 33 Chebyshev grid points)
    the cell found by the signs of the differences holds every root, the
    first iterate is the straight line through the cell's ends, and a target
    equal to a grid value has its root on an end of its cell."""
    grid = conditional_cdf_operators(8).grid
    uniforms = torch.rand(2000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    cdf = ((grid + 1.0) ** 2 / 4.0)[:, None].repeat(1, 2000)
    uniforms[:3] = cdf[[5, 16, 31], 0]
    t, low, high = _first_iterate(cdf, grid, uniforms)
    root = 2.0 * uniforms.sqrt() - 1.0
    assert bool(((low <= root) & (root <= high)).all())
    assert bool(((high - low) > 0).all())
    line = low + (high - low) * (uniforms - (low + 1.0) ** 2 / 4.0) / (
        ((high + 1.0) ** 2 - (low + 1.0) ** 2) / 4.0
    )
    np.testing.assert_allclose(t.numpy(), line.numpy(), rtol=0, atol=1e-14)
    np.testing.assert_allclose(t[:3].numpy(), grid[[5, 16, 31]].numpy(), rtol=0, atol=1e-14)


def test_newton_stops_where_the_predicted_error_is_below_rounding():
    """After a step s the error is K s^2, K = q' / (2q) from the densities at the
    last two iterates: a step of 1e-9 is final where K = 1 (error 1e-18), not
    where K = 1e4 (1e-14); a step above sqrt(eps) waits for the next iteration
    even where K is tiny (the cubic term is unknown), and so does one after a
    long previous step (K not local); a step of a few ulps is final."""
    eps = torch.finfo(torch.float64).eps
    curvature = torch.tensor([1.0, 1e4, 1e-6, 1.0, 1e12], dtype=torch.float64)
    step = torch.tensor([1e-9, 1e-9, 1e-7, 1e-9, 2 * eps], dtype=torch.float64)
    previous_step = torch.tensor([1e-6, 1e-6, 1e-6, 1e-3, 1e-6], dtype=torch.float64)
    density = torch.full((5,), 3.0, dtype=torch.float64)
    previous_density = density * (1.0 - 2.0 * curvature * previous_step)
    converged = _newton_has_converged(step, previous_step, density, previous_density)
    assert converged.tolist() == [True, False, False, False, True]


def test_clenshaw_recurrence_matches_numpy():
    """The CDF and half its derivative by the recurrence, against numpy's chebval
    of the series and of its chebder, at the ends of [-1, 1] too."""
    generator = torch.Generator().manual_seed(4)
    t = 2.0 * torch.rand(500, generator=generator, dtype=torch.float64) - 1.0
    t[:3] = torch.tensor([-1.0, 1.0, 1.0 - 1e-15], dtype=torch.float64)
    coefficients = torch.randn(32, 500, generator=generator, dtype=torch.float64)
    cdf, half_density = _cdf_and_density(coefficients.unbind(0), t)
    expected = chebyshev.chebval(t.numpy(), coefficients.numpy(), tensor=False)
    derivative = chebyshev.chebder(coefficients.numpy(), axis=0)
    expected_density = chebyshev.chebval(t.numpy(), derivative, tensor=False)
    np.testing.assert_allclose(cdf.numpy(), expected, rtol=0, atol=1e-13)
    np.testing.assert_allclose(2.0 * half_density.numpy(), expected_density, rtol=0, atol=1e-11)


def test_chebyshev_table_matches_numpy():
    """The CDF and half its derivative from the signed table, against numpy's
    chebval of the series and of its chebder, at the ends of [-1, 1] too:
    fails if a sign of the recurrence or of the coefficients is wrong."""
    generator = torch.Generator().manual_seed(4)
    t = 2.0 * torch.rand(500, generator=generator, dtype=torch.float64) - 1.0
    t[:3] = torch.tensor([-1.0, 1.0, 1.0 - 1e-15], dtype=torch.float64)
    coefficients = torch.randn(32, 500, generator=generator, dtype=torch.float64)
    operators = conditional_cdf_operators(16)
    signed = (operators.value_and_derivative @ coefficients).view(2, 32, 500)
    cdf, half_density = _cdf_and_density_by_table(signed, t, t.new_empty(32, 500))
    expected = chebyshev.chebval(t.numpy(), coefficients.numpy(), tensor=False)
    derivative = chebyshev.chebder(coefficients.numpy(), axis=0)
    expected_density = chebyshev.chebval(t.numpy(), derivative, tensor=False)
    np.testing.assert_allclose(cdf.numpy(), expected, rtol=0, atol=1e-13)
    np.testing.assert_allclose(2.0 * half_density.numpy(), expected_density, rtol=0, atol=1e-11)


def test_roots_at_a_double_zero_of_the_density_have_rounding_residuals(evaluator):
    """The density (t - 0.3)^2 (t + 0.5)^2 vanishes to second order at 0.3 and
    -0.5, where F is flat to third order and Newton's method converges only
    linearly: about a fifth of these 1,042 samples go past the first check,
    some for 30 safeguarded iterations. A root there is
    ill-conditioned (an error of eps in F moves it by eps^(1/3)), so what is
    checked is the backward error: F at the returned point, in long double,
    is the target to a few ulps of F(1)."""
    coefficients = legendre.poly2leg(np.polynomial.polynomial.polyfromroots([0.3, -0.5]))
    core = torch.tensor(coefficients / np.sqrt(2 * np.arange(3) + 1), dtype=torch.float64)
    cores = [core.reshape(1, 3, 1)]
    density = legendre.legmul(coefficients, coefficients).astype(np.longdouble)
    cdf = legendre.legint(density, lbnd=-1)
    total = legendre.legval(np.longdouble(1.0), cdf)
    # uniforms at and next to the CDF values of the two zeros, and random ones
    at_zeros = np.array([legendre.legval(np.longdouble(x), cdf) / total for x in (0.3, -0.5)])
    offsets = np.array([0.0, 1e-15, -1e-15, 1e-12, -1e-12, 1e-9, -1e-9, 1e-6, -1e-6])
    special = (at_zeros[:, None] + offsets).reshape(-1).astype(np.float64)
    random = torch.rand(1024, generator=torch.Generator().manual_seed(6))
    uniforms = torch.cat([torch.from_numpy(special), random.double()])[:, None]
    low = torch.tensor([-1.0], dtype=torch.float64)
    high = torch.tensor([1.0], dtype=torch.float64)
    z = sample_right_orthogonal(cores, low, high, uniforms)
    residual = legendre.legval(z[:, 0].numpy().astype(np.longdouble), cdf) / total
    residual -= uniforms[:, 0].numpy().astype(np.longdouble)
    assert np.abs(residual).max() <= 8 * np.finfo(np.float64).eps
    # the roots of the uniforms at the zeros are the zeros, to eps^(1/3)
    assert z[0, 0] == pytest.approx(0.3, abs=1e-5) and z[9, 0] == pytest.approx(-0.5, abs=1e-5)


def test_chebyshev_and_legendre_operators_describe_the_same_cdf():
    """The solver's Chebyshev coefficients and grid values against the Legendre
    series they come from."""
    operators = ConditionalCDFOperators(6)
    nodal = torch.rand(11, 3, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    t = torch.linspace(-1.0, 1.0, 9, dtype=torch.float64)
    cdf = chebyshev.chebvander(t.numpy(), 11) @ (operators.cdf_coefficients @ nodal).numpy()
    # the same CDF from the Gauss rule: int_{-1}^t of the interpolant of the nodal values
    nodes, _ = np.polynomial.legendre.leggauss(11)
    legendre_coefficients = np.polynomial.legendre.legfit(nodes, nodal.numpy(), 10)
    antiderivative = np.polynomial.legendre.legint(legendre_coefficients, lbnd=-1.0)
    expected = np.polynomial.legendre.legval(t.numpy(), antiderivative)
    np.testing.assert_allclose(cdf, expected.T, atol=1e-13)
    # below the coefficients, F on the increasing grid from -1 to 1
    grid = operators.grid.numpy()
    assert grid[0] == -1.0 and grid[-1] == 1.0 and np.all(np.diff(grid) > 0)
    on_grid = (operators.cdf_operator[12:] @ nodal).numpy()
    expected = np.polynomial.legendre.legval(grid, antiderivative)
    np.testing.assert_allclose(on_grid, expected.T, atol=1e-13)
    assert np.all(on_grid[0] == 0.0)


def test_operators_are_built_once_per_size_dtype_and_device():
    first = conditional_cdf_operators(5, torch.float64, torch.device("cpu"))
    assert conditional_cdf_operators(5, torch.float64, torch.device("cpu")) is first
    assert conditional_cdf_operators(6, torch.float64, torch.device("cpu")) is not first
    single = conditional_cdf_operators(5, torch.float32, torch.device("cpu"))
    assert single.grid.dtype == torch.float32


def test_log_density_of_the_draws_matches_the_full_tensor(distribution):
    """The sampler's by-product log-density against the density from the full
    coefficient tensor (no train, no prefix): catches a missing Jacobian of the
    box (the box is [-1, 1] x [-2, 3] x [0, 0.5]: off by log 2.5 - log 0.25),
    a conditional read at the wrong point (the last coordinate's total after
    the final core), a train's scale left in (the cores here are far from
    norm 1) and a drift between the returned draws and the ones scored."""
    cores = right_orthogonalize([core.detach().double() * 7.0 for core in distribution.cores])
    low, high = distribution.low.double(), distribution.high.double()
    uniforms = torch.rand(3000, 3, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    points, log_density = sample_right_orthogonal(
        cores, low, high, uniforms, return_log_density=True
    )
    assert torch.equal(points, sample_right_orthogonal(cores, low, high, uniforms))
    expected = torch.log(brute_force_tt_density(distribution, points))
    assert (log_density - expected).abs().max() < 1e-10 * (1 + expected.abs().max())
    # the defensive mixture returns its own density, as the inverse Rosenblatt map does
    _, log_mixed = sample_right_orthogonal(
        cores, low, high, uniforms, defensive_weight=0.3, return_log_density=True
    )
    assert torch.equal(
        log_mixed,
        inverse_rosenblatt_right_orthogonal(cores, low, high, uniforms, defensive_weight=0.3)[1],
    )
    empty, log_empty = sample_right_orthogonal(
        cores, low, high, uniforms[:0], return_log_density=True
    )
    assert empty.shape == (0, 3) and log_empty.shape == (0,)


# ------------------------------------------------ Rosenblatt pair with a uniform part
@pytest.fixture(scope="module")
def right_orthogonal_cores(distribution):
    return right_orthogonalize([core.detach().double() for core in distribution.cores])


@pytest.mark.parametrize("weight", [0.0, 1e-2, 0.3])
def test_rosenblatt_maps_are_inverse_and_give_the_mixture_density(
    distribution, right_orthogonal_cores, weight
):
    """Catches a wrong mixture weight of a conditional (the uniform part of a
    marginal is 2^-k on the reference cube, the train's part is read off the
    prefix norms) or a Jacobian factor of the box: either breaks the identity or
    the density against the independent formula (1 - tau) p_TT + tau / vol."""
    low, high = distribution.low.double(), distribution.high.double()
    uniforms = torch.rand(5000, 3, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    points, log_density = inverse_rosenblatt_right_orthogonal(
        right_orthogonal_cores, low, high, uniforms, defensive_weight=weight
    )
    back, log_density_back = rosenblatt_right_orthogonal(
        right_orthogonal_cores, low, high, points, defensive_weight=weight
    )
    assert (back - uniforms).abs().max() < 1e-10
    assert (log_density - log_density_back).abs().max() < 1e-10
    log_tt = distribution.log_prob_tt(points)
    uniform = math.log(weight) - float(torch.log(high - low).sum()) if weight else -math.inf
    expected = torch.logaddexp(log_tt + math.log1p(-weight), torch.full_like(log_tt, uniform))
    assert (log_density - expected).abs().max() < 1e-10
    if weight == 0.0:
        # the same map as the sampler without the uniform part (another order of
        # operations: equal to rounding, not bit for bit)
        plain = sample_right_orthogonal(right_orthogonal_cores, low, high, uniforms)
        assert (points - plain).abs().max() < 1e-11


def test_defensive_samples_pass_kolmogorov_smirnov(distribution, right_orthogonal_cores):
    """With tau = 0.3 a sampler that ignored the uniform part (or mixed it in
    with the wrong weight) would be off by about 0.3 x (the largest gap between
    the train's CDF and the uniform's), far beyond the KS tolerance at N = 40,000
    (see the module docstring)."""
    weight = 0.3
    low, high = distribution.low.double(), distribution.high.double()
    uniforms = torch.rand(
        N_SAMPLES, 3, generator=torch.Generator().manual_seed(4), dtype=torch.float64
    )
    points = sample_right_orthogonal(
        right_orthogonal_cores, low, high, uniforms, defensive_weight=weight
    )
    for k in range(3):
        tt_cdf, _ = marginal_cdf(distribution, k)
        eps = distribution.tail_weight
        a, b = float(low[k]), float(high[k])

        def cdf(x, tt_cdf=tt_cdf, eps=eps, a=a, b=b, k=k):
            # marginal_cdf mixes in the distribution's Gaussian tail; take it out
            center, scale = (a + b) / 2, (b - a) / 2
            tt = (tt_cdf(x) - eps * stats.norm.cdf(x, center, scale)) / (1 - eps)
            return (1 - weight) * tt + weight * np.clip((x - a) / (b - a), 0.0, 1.0)

        result = stats.kstest(points[:, k].numpy(), cdf)
        assert result.pvalue > SIGNIFICANCE, (k, result)


@pytest.mark.parametrize("weight", [-0.1, 1.0, math.nan])
def test_bad_defensive_weight_is_refused(right_orthogonal_cores, weight):
    low, high = -torch.ones(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64)
    uniforms = torch.rand(4, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match="defensive_weight"):
        rosenblatt_right_orthogonal(
            right_orthogonal_cores, low, high, uniforms, defensive_weight=weight
        )
    with pytest.raises(TypeError, match="defensive_weight"):
        inverse_rosenblatt_right_orthogonal(
            right_orthogonal_cores, low, high, uniforms, defensive_weight="0.1"
        )
