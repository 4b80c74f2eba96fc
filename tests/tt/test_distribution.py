import copy
import math

import normflows as nf
import numpy as np
import pytest
import torch
from scipy import stats

from sktt_flow import TTDistribution
from sktt_flow.tt import distribution as distribution_module
from sktt_flow.tt.algebra import log_abs_chain_product, log_norm_squared_by_tree, tt_to_full
from sktt_flow.tt.basis import orthonormal_legendre
from tests.conftest import random_cores, random_distribution, requires_cuda
from tests.tt.reference import (
    brute_force_tt_density,
    mixture_density,
    product_rule,
    tail_density,
)


@pytest.mark.parametrize(
    "ranks",
    [(1, 1), (1, 1, 1), (1, 5, 1), (1, 2, 3, 1), (1, 4, 4, 1), (1, 6, 2, 1)],
)
def test_normalised_by_quadrature_plus_tail_mass(ranks):
    d = len(ranks) - 1
    domain = [[-1.0, 2.0], [-3.0, -1.0], [0.0, 5.0]][:d]
    distribution = random_distribution(ranks, 7, domain, seed=sum(ranks), tail_weight=0.05)
    points, weights = product_rule(40, *np.array(domain).T)
    with torch.no_grad():
        inside = (distribution.log_prob(points).exp() * weights).sum()
        tt_only = (distribution.log_prob_tt(points).exp() * weights).sum()
    # Gauss rules with 40 nodes integrate the degree-12 polynomial p_TT exactly
    # and the smooth Gaussian density inside the box to ~1e-15.
    assert float(inside + distribution.tail_mass_outside()) == pytest.approx(1.0, abs=1e-6)
    assert float(tt_only) == pytest.approx(1.0, abs=1e-10)
    center = np.mean(domain, axis=1)
    half = np.diff(domain, axis=1)[:, 0] / 2
    gaussian_inside = np.prod(
        stats.norm.cdf(np.array(domain)[:, 1], center, half)
        - stats.norm.cdf(np.array(domain)[:, 0], center, half)
    )
    assert float(distribution.tail_mass_outside()) == pytest.approx(
        0.05 * (1 - gaussian_inside), rel=1e-12
    )


def test_log_prob_equals_brute_force(distribution_3d):
    generator = torch.Generator().manual_seed(0)
    z = torch.rand(200, 3, generator=generator, dtype=torch.float64)
    z = distribution_3d.low + z * (distribution_3d.high - distribution_3d.low) * 1.2 - 0.1
    with torch.no_grad():
        log_prob = distribution_3d.log_prob(z).numpy()
    np.testing.assert_allclose(log_prob, np.log(mixture_density(distribution_3d, z)), rtol=1e-10)
    with torch.no_grad():
        tt = distribution_3d.log_prob_tt(z).exp().numpy()
    np.testing.assert_allclose(tt, brute_force_tt_density(distribution_3d, z), atol=1e-12)


def test_log_prob_is_invariant_to_core_scales_and_gauge(distribution_3d):
    z = distribution_3d.sample(50, generator=torch.Generator().manual_seed(1))
    cores = [c.detach().clone() for c in distribution_3d.cores]
    gauge = torch.randn(3, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    cores[0] = torch.einsum("aib,bc->aic", cores[0], gauge) * 7.0
    cores[1] = torch.einsum("ab,bic->aic", torch.linalg.inv(gauge), cores[1]) * 1e-3
    other = TTDistribution(cores, distribution_3d.domain, tail_weight=0.01)
    with torch.no_grad():
        np.testing.assert_allclose(other.log_prob(z), distribution_3d.log_prob(z), rtol=1e-10)
        before = distribution_3d.log_prob(z)
        distribution_3d.canonicalize_()
        np.testing.assert_allclose(distribution_3d.log_prob(z), before, rtol=1e-10)
    assert float(distribution_3d.log_norm_squared().detach()) == pytest.approx(0.0, abs=1e-12)


def test_finite_far_outside_the_box():
    for dtype in (torch.float32, torch.float64):
        distribution = random_distribution((1, 3, 3, 1), 6, [[-1, 1]] * 3, dtype=dtype)
        big = torch.finfo(dtype).max / 4
        z = torch.tensor(
            [
                [0.0, 0.0, 0.0],
                [1e3, -1e3, 0.0],
                [1e30, 0.0, -1e30],
                [big, -big, big],
                [1.0000001, 0.0, 0.0],
            ],
            dtype=dtype,
        )
        with torch.no_grad():
            log_prob = distribution.log_prob(z)
        assert torch.isfinite(log_prob).all(), log_prob
        # Far away, the density is the tail's: log(eps) + Gaussian.
        center = ((distribution.low + distribution.high) / 2).double().numpy()
        scale = ((distribution.high - distribution.low) / 2).double().numpy()
        tail = stats.norm.logpdf(z[1].double().numpy(), center, scale).sum()
        expected = math.log(1e-3) + tail
        assert float(log_prob[1]) == pytest.approx(expected, rel=1e-5)


def test_log_prob_is_differentiable_in_points_and_cores(distribution_3d):
    z = distribution_3d.sample(64, generator=torch.Generator().manual_seed(3))
    z = torch.cat([z, torch.tensor([[5.0, 5.0, 5.0]], dtype=z.dtype)]).requires_grad_()
    distribution_3d.log_prob(z).sum().backward()
    assert torch.isfinite(z.grad).all()
    for core in distribution_3d.cores:
        assert torch.isfinite(core.grad).all() and core.grad.abs().sum() > 0
    # Against finite differences in z for one interior point.
    point = z[:1].detach()
    step = 1e-6
    (grad,) = torch.autograd.grad(distribution_3d.log_prob(point.requires_grad_()).sum(), point)
    for k in range(3):
        shift = torch.zeros_like(point)
        shift[0, k] = step
        with torch.no_grad():
            numeric = (
                distribution_3d.log_prob(point + shift) - distribution_3d.log_prob(point - shift)
            ) / (2 * step)
        assert float(grad[0, k]) == pytest.approx(float(numeric), rel=1e-5, abs=1e-6)


def test_marginals_match_quadrature_of_the_joint(distribution_3d):
    d = distribution_3d
    low, high = d.low.numpy(), d.high.numpy()
    eps = d.tail_weight
    generator = torch.Generator().manual_seed(4)
    # One-dimensional marginal of coordinate 1 at interior points.
    values = torch.rand(7, generator=generator, dtype=torch.float64) * 5 - 2
    rest, weights = product_rule(12, low[[0, 2]], high[[0, 2]])
    for dims, grid in (([1], values[:, None]),):
        expected = []
        for value in grid:
            points = torch.stack([rest[:, 0], value.expand(len(rest)), rest[:, 1]], 1)
            tt = (brute_force_tt_density(d, points) * weights).sum().item()
            expected.append((1 - eps) * tt + eps * tail_density(d, value[None], dims)[0])
        with torch.no_grad():
            got = d.marginal_log_prob(grid, dims).exp().numpy()
        np.testing.assert_allclose(got, expected, rtol=1e-10)
    # Two-dimensional marginal of coordinates (2, 0), given in that order.
    pairs = torch.stack(
        [
            torch.rand(5, generator=generator, dtype=torch.float64) * 0.5,
            torch.rand(5, generator=generator, dtype=torch.float64) * 2 - 1,
        ],
        1,
    )
    middle, middle_weights = product_rule(12, low[[1]], high[[1]])
    expected = []
    for z2, z0 in pairs:
        points = torch.stack([z0.expand(len(middle)), middle[:, 0], z2.expand(len(middle))], 1)
        tt = (brute_force_tt_density(d, points) * middle_weights).sum().item()
        tail = tail_density(d, torch.stack([z2, z0])[None], [2, 0])[0]
        expected.append((1 - eps) * tt + eps * tail)
    with torch.no_grad():
        got = d.marginal_log_prob(pairs, (2, 0)).exp().numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-10)
    # Outside the box only the tail remains.
    with torch.no_grad():
        outside = d.marginal_log_prob(torch.tensor([10.0], dtype=torch.float64), 0)
    tail = tail_density(d, torch.tensor([[10.0]]), [0])[0]
    assert float(outside) == pytest.approx(math.log(eps * tail), rel=1e-10)


def test_marginal_errors(distribution_3d):
    with pytest.raises(ValueError, match="distinct coordinates"):
        distribution_3d.marginal_log_prob(torch.zeros(3, 2), (1, 1))
    with pytest.raises(ValueError, match="distinct coordinates"):
        distribution_3d.marginal_log_prob(torch.zeros(3), 5)
    with pytest.raises(ValueError, match="shape"):
        distribution_3d.marginal_log_prob(torch.zeros(3, 3), (0, 1))


def test_properties_and_repr(distribution_3d):
    assert distribution_3d.n_features == 3
    assert distribution_3d.n_basis == 8
    assert distribution_3d.tt_ranks == (1, 3, 4, 1)
    np.testing.assert_array_equal(
        distribution_3d.domain.numpy(), [[-1.0, 1.0], [-2.0, 3.0], [0.0, 0.5]]
    )
    assert "tt_ranks=(1, 3, 4, 1)" in repr(distribution_3d)


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"domain": [[0, 1], [1, 0]]}, ValueError, "low < high"),
        ({"domain": [[0, 1]]}, ValueError, "1 rows but there are 2"),
        ({"domain": [[0, np.inf], [0, 1]]}, ValueError, "finite"),
        ({"domain": "box"}, ValueError, "numeric"),
        ({"tail_weight": 0.0}, ValueError, "tail_weight"),
        ({"tail_weight": 1.0}, ValueError, "tail_weight"),
    ],
)
def test_constructor_errors(kwargs, error, message):
    arguments = {"domain": [[0, 1], [0, 1]], **kwargs}
    with pytest.raises(error, match=message):
        TTDistribution(random_cores((1, 2, 1), 4), **arguments)


def test_constructor_rejects_mismatched_basis_sizes():
    cores = [torch.zeros(1, 4, 2), torch.zeros(2, 5, 1)]
    with pytest.raises(ValueError, match="same number of basis functions"):
        TTDistribution(cores, [[0, 1], [0, 1]])


def test_log_prob_rejects_wrong_shape(distribution_3d):
    with pytest.raises(ValueError, match=r"shape \(N, 3\)"):
        distribution_3d.log_prob(torch.zeros(4, 2, dtype=torch.float64))
    with pytest.raises(TypeError, match=r"torch\.Tensor"):
        distribution_3d.log_prob(np.zeros((4, 3)))
    # Another float dtype is cast, not rejected.
    assert distribution_3d.log_prob(torch.zeros(4, 3)).dtype == torch.float64


def test_float32_and_float64_agree(distribution_3d):
    z = distribution_3d.sample(100, generator=torch.Generator().manual_seed(5))
    single = TTDistribution(
        [c.detach() for c in distribution_3d.cores], distribution_3d.domain, tail_weight=0.01
    ).float()
    assert single.cores[0].dtype == torch.float32 and single.low.dtype == torch.float32
    with torch.no_grad():
        np.testing.assert_allclose(
            single.log_prob(z.float()).numpy(),
            distribution_3d.log_prob(z).numpy(),
            rtol=1e-4,
            atol=1e-4,
        )
    samples = single.sample(10, generator=torch.Generator().manual_seed(6))
    assert samples.dtype == torch.float32
    assert single.double().log_prob(samples.double()).dtype == torch.float64


def test_base_of_a_normflows_flow(distribution_3d):
    """The TT base plugs into normflows: forward KL and sampling run through it."""
    torch.manual_seed(0)
    flows = [nf.flows.Planar((3,), act="leaky_relu") for _ in range(2)]
    model = nf.NormalizingFlow(q0=distribution_3d, flows=flows).double()
    x = distribution_3d.sample(32, generator=torch.Generator().manual_seed(7))
    loss = model.forward_kld(x)
    loss.backward()
    assert torch.isfinite(loss)
    z, log_q = model.sample(16)
    assert z.shape == (16, 3) and log_q.shape == (16,)
    np.testing.assert_allclose(log_q.detach(), model.log_prob(z).detach(), rtol=1e-6, atol=1e-6)
    base_z, base_log_p = distribution_3d.forward(8, context=None)
    assert base_z.shape == (8, 3)
    np.testing.assert_allclose(base_log_p.detach(), distribution_3d.log_prob(base_z).detach())


@pytest.mark.parametrize(("dtype", "tolerance"), [(torch.float64, 1e-12), (torch.float32, 2e-5)])
def test_forward_of_a_frozen_base_scores_its_draws_in_one_pass(dtype, tolerance):
    """``forward`` of a base without gradient takes ``log q0`` from the sampler's
    sweep. Against ``log_prob`` at the same draws: a tail weight of 0.3 sends
    draws of the Gaussian component inside the box (where the train's density
    must be evaluated afresh, not taken from a sweep that drew another point)
    and outside it (where it is 0); the float32 tolerance is about 100 ulps of
    ``1 + |log q0|``, the rounding of a 3-coordinate sweep and of the cast of
    orthogonal float64 cores."""
    base = random_distribution(
        (1, 3, 4, 1), 8, [[-1.0, 1.0], [-2.0, 3.0], [0.0, 0.5]], seed=1, tail_weight=0.3
    ).to(dtype)
    base.requires_grad_(False)
    z, log_q = base.forward(4000, generator=torch.Generator().manual_seed(9))
    assert torch.equal(z, base.sample(4000, generator=torch.Generator().manual_seed(9)))
    assert z.dtype == log_q.dtype == dtype and log_q.shape == (4000,)
    outside = ((z < base.low) | (z > base.high)).any(dim=1)
    assert 500 < int(outside.sum()) < 1500  # both kinds of tail draws are there
    expected = base.log_prob(z)
    assert ((log_q - expected).abs() / (1 + expected.abs())).max() < tolerance
    empty_z, empty_log_q = base.forward(0)
    assert empty_z.shape == (0, 3) and empty_log_q.shape == (0,)


def test_forward_keeps_the_graph_to_trainable_cores(distribution_3d):
    """With cores that require gradient (a base trained jointly with its flow),
    ``log q0`` of ``forward`` must carry their gradient, as ``log_prob`` does;
    under ``no_grad`` it comes from the sweep, with the same values."""
    z, log_q = distribution_3d.forward(64, generator=torch.Generator().manual_seed(2))
    assert log_q.requires_grad
    (gradient,) = torch.autograd.grad(log_q.sum(), distribution_3d.cores[1])
    (expected,) = torch.autograd.grad(distribution_3d.log_prob(z).sum(), distribution_3d.cores[1])
    torch.testing.assert_close(gradient, expected)
    with torch.no_grad():
        z_frozen, log_q_frozen = distribution_3d.forward(
            64, generator=torch.Generator().manual_seed(2)
        )
    assert torch.equal(z_frozen, z)
    torch.testing.assert_close(log_q_frozen, log_q.detach(), rtol=1e-12, atol=1e-12)


@requires_cuda
def test_cuda_matches_cpu(distribution_3d):
    z = distribution_3d.sample(500, generator=torch.Generator().manual_seed(8))
    gpu = random_distribution(
        (1, 3, 4, 1), 8, [[-1.0, 1.0], [-2.0, 3.0], [0.0, 0.5]], seed=1, tail_weight=0.01
    ).to("cuda")
    assert gpu.cores[0].is_cuda and gpu.low.is_cuda
    with pytest.raises(ValueError, match="no silent copies"):
        gpu.log_prob(z)
    with torch.no_grad():
        np.testing.assert_allclose(
            gpu.log_prob(z.cuda()).cpu().numpy(),
            distribution_3d.log_prob(z).numpy(),
            rtol=1e-10,
        )
        marginal = gpu.marginal_log_prob(z[:, :2].cuda(), (0, 1)).cpu()
    np.testing.assert_allclose(
        marginal, distribution_3d.marginal_log_prob(z[:, :2], (0, 1)).detach(), rtol=1e-10
    )
    samples = gpu.sample(20000, generator=torch.Generator("cuda").manual_seed(0))
    assert samples.is_cuda and torch.isfinite(samples).all()
    # Same law as on the CPU: compare the first coordinate with a two-sample KS test.
    reference = distribution_3d.sample(20000, generator=torch.Generator().manual_seed(9))
    result = stats.ks_2samp(samples[:, 0].cpu().numpy(), reference[:, 0].numpy())
    assert result.pvalue > 1e-3
    single = gpu.float()
    assert torch.isfinite(single.log_prob(samples.float())).all()


def test_log_prob_of_no_rows_is_empty(distribution_3d):
    """A sampler's chunk can hand no rows to a model (a companion that takes
    every draw of the chunk): an empty result, not an error."""
    for evaluate in (distribution_3d.log_prob, distribution_3d.log_abs_tt):
        empty = evaluate(torch.zeros(0, 3, dtype=distribution_3d.cores[0].dtype))
        assert empty.shape == (0,) and empty.dtype == distribution_3d.cores[0].dtype


def test_log_prob_does_not_depend_on_batching(distribution_3d, monkeypatch):
    """Rows are independent: chunking and batch size change neither a value
    nor a gradient, as scikit-learn's subset-invariance check demands."""
    z = distribution_3d.sample(10_000, generator=torch.Generator().manual_seed(10))
    z.requires_grad_()
    all_at_once = distribution_3d.log_prob(z)
    all_at_once.sum().backward()
    gradient = z.grad.clone()
    assert torch.isfinite(gradient).all()
    with torch.no_grad():
        pieces = torch.cat([distribution_3d.log_prob(part) for part in z.split(777)])
        rows = (0, 4095, 4096, 9999)
        singles = torch.cat([distribution_3d.log_prob(z[i : i + 1]) for i in rows])
    np.testing.assert_allclose(pieces.numpy(), all_at_once.detach().numpy(), rtol=0, atol=1e-12)
    np.testing.assert_allclose(
        singles.numpy(), all_at_once.detach()[list(rows)].numpy(), rtol=0, atol=1e-12
    )
    # Chunks of 1000 rows inside one call: same values and same gradient.
    monkeypatch.setattr(distribution_module, "CPU_LOG_PROB_CHUNK_ROWS", (1000, 1000))
    assert distribution_module.log_prob_chunk_size(z.device, 3) == 1000
    z.grad = None
    chunked = distribution_3d.log_prob(z)
    chunked.sum().backward()
    np.testing.assert_allclose(
        chunked.detach().numpy(), all_at_once.detach().numpy(), rtol=0, atol=1e-12
    )
    # Gradients reach hundreds where a point is near a zero of the train: a
    # GEMM of another shape can round them differently, by a few ulps.
    np.testing.assert_allclose(z.grad.numpy(), gradient.numpy(), rtol=1e-13, atol=1e-12)


def test_log_prob_chunk_size_follows_the_rank():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert distribution_module.log_prob_chunk_size(cpu, 8) == 2048
    assert distribution_module.log_prob_chunk_size(cpu, 1) == 8192
    assert distribution_module.log_prob_chunk_size(cpu, 64) == 1024
    assert distribution_module.log_prob_chunk_size(cuda, 8) == 1 << 20
    assert distribution_module.log_prob_chunk_size(cuda, 10_000) == 1


def test_fixed_cores_reuse_what_does_not_change_and_nothing_else(distribution_3d):
    """Inside fixed_cores the log-density is the same, bit for bit, with the
    normaliser computed once for the block (counted), and no graph is
    recorded; after the block a change of the cores shows at once (a cache
    that outlived its block would return the old values)."""
    distribution = copy.deepcopy(distribution_3d)
    z = distribution.sample(500, generator=torch.Generator().manual_seed(3))
    outside = distribution.log_prob(z)
    calls = []
    original = distribution_module.log_norm_squared

    def counted(cores):
        calls.append(1)
        return original(cores)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(distribution_module, "log_norm_squared", counted)
        with distribution.fixed_cores():
            inside = [distribution.log_prob(z) for _ in range(3)]
            with distribution.fixed_cores():  # nested: the same values
                inside.append(distribution.log_prob(z))
            assert not torch.is_grad_enabled()
        assert len(calls) == 1
    for values in inside:
        assert torch.equal(values, outside.detach()) and not values.requires_grad
    assert torch.is_grad_enabled()
    with torch.no_grad():
        distribution.cores[0].mul_(2.0)
        distribution.cores[1][:, 0].add_(1.0)
    changed = distribution.log_prob(z)
    assert not torch.allclose(changed, outside)
    with distribution.fixed_cores():
        assert torch.equal(distribution.log_prob(z), changed.detach())


def test_canonicalize_survives_a_norm_beyond_the_dtype_range():
    """64 random cores have ||C||^2 ~ e^300, beyond float32's range: the
    canonical form must still be finite and represent the same density."""
    generator = torch.Generator().manual_seed(0)
    d, rank, n_basis = 64, 8, 16
    cores = [
        torch.randn(1 if k == 0 else rank, n_basis, 1 if k == d - 1 else rank, generator=generator)
        for k in range(d)
    ]
    reference = TTDistribution([core.double() for core in cores], [[-3.0, 3.0]] * d)
    single = TTDistribution(cores, [[-3.0, 3.0]] * d)
    assert float(reference.log_norm_squared().detach()) > 200.0
    single.canonicalize_()
    assert all(torch.isfinite(core).all() for core in single.cores)
    assert float(single.log_norm_squared().detach()) == pytest.approx(0.0, abs=1e-5)
    z = torch.rand(100, d, generator=generator, dtype=torch.float64) * 6.0 - 3.0
    with torch.no_grad():
        expected = reference.log_prob(z)
        actual = single.log_prob(z.float()).double()
    np.testing.assert_allclose(actual.numpy(), expected.numpy(), rtol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_box_is_closed(dtype):
    """Points on the faces of the box belong to it; one float beyond does not."""
    distribution = random_distribution((1, 3, 3, 1), 6, [[-1, 0.3], [2, 5], [-7, -6]], dtype=dtype)
    low, high = distribution.low, distribution.high
    below = torch.nextafter(low, torch.full_like(low, -torch.inf))
    above = torch.nextafter(high, torch.full_like(high, torch.inf))
    center = (low + high) / 2
    axis = torch.arange(3)
    faces = [low, high] + [torch.where(axis == k, high, center) for k in range(3)]
    outside = [torch.where(axis == k, bound, center) for k in range(3) for bound in (below, above)]
    with torch.no_grad():
        assert torch.isfinite(distribution.log_prob_tt(torch.stack(faces))).all()
        assert torch.isneginf(distribution.log_prob_tt(torch.stack(outside))).all()
        assert torch.isfinite(distribution.log_prob(torch.stack(outside))).all()


@pytest.mark.parametrize(
    "bad_core, message",
    [
        (torch.zeros(3, 8, 4, dtype=torch.float64), "is zero"),
        (torch.full((3, 8, 4), math.inf, dtype=torch.float64), "non-finite"),
        (torch.full((3, 8, 4), math.nan, dtype=torch.float64), "non-finite"),
    ],
    ids=["zero", "inf", "nan"],
)
def test_canonicalize_refuses_what_is_not_a_density(distribution_3d, bad_core, message):
    """A zero train used to become 0/0 = NaN cores, silently; inf and NaN cores
    the same. Now canonicalize_ raises, naming the problem."""
    distribution_3d.cores[1].data = bad_core
    with pytest.raises(ValueError, match=message):
        distribution_3d.canonicalize_()


def test_canonicalize_rescales_cores_of_any_scale():
    """Cores with entries of 1e200 (values of sqrt(h) far from its shift): the
    canonical form is finite and the density is unchanged."""
    cores = random_cores((1, 3, 2, 1), 6, seed=2)
    reference = TTDistribution(cores, [[-1.0, 1.0]] * 3)
    scaled = TTDistribution([cores[0] * 1e200, cores[1], cores[2] * 1e250], [[-1.0, 1.0]] * 3)
    scaled.canonicalize_()
    assert all(torch.isfinite(core).all() for core in scaled.cores)
    z = torch.rand(50, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    with torch.no_grad():
        np.testing.assert_allclose(
            scaled.log_prob(2 * z - 1).numpy(), reference.log_prob(2 * z - 1).numpy(), rtol=1e-10
        )


@pytest.fixture(params=["running", "tree"])
def contraction(request, monkeypatch):
    """Each way ``log_prob`` contracts a chunk: the running row vector (the
    CPU's), and the binary tree of batched products (a GPU's), switched on
    for the CPU here so that it is tested without one."""
    if request.param == "tree":
        monkeypatch.setattr(distribution_module, "TREE_CONTRACTION_DEVICES", ("cpu",))
    return request.param


def test_log_prob_and_its_gradients_match_the_full_tensor_on_runs_of_cores(contraction):
    """log p_TT and its gradients in the points and the cores, against a
    dense evaluation through the full coefficient tensor (float64, agreement
    to round-off), by either contraction.

    The ranks (1, 3, 3, 3, 2, 2, 1) make three runs of cores of one shape and
    the 40 rows put several coordinates in one batched product: fails if a
    run's core values are paired with another coordinate's basis values, or
    if the scales divided out at every coordinate (constants to autograd)
    leave a wrong gradient. For the tree, the ranks differ along the train
    (zero padding to the largest) and its six cores leave a factor over at
    the second level: fails if padding misplaces a core's values, or if the
    odd factor changes places in the product.
    """
    ranks = (1, 3, 3, 3, 2, 2, 1)
    cores = random_cores(ranks, 5, seed=11)
    cores[2] = cores[2] * 1e3  # the scales taken out must not matter
    domain = [[-1.0, 2.0]] * (len(ranks) - 1)
    distribution = TTDistribution(cores, domain)
    generator = torch.Generator().manual_seed(4)
    z = torch.rand(40, len(ranks) - 1, generator=generator, dtype=torch.float64)
    z = (3.0 * z - 1.0).requires_grad_()
    distribution.log_prob_tt(z).sum().backward()

    reference_cores = [core.detach().clone().requires_grad_() for core in cores]
    reference_z = z.detach().clone().requires_grad_()
    full = tt_to_full(reference_cores)
    basis = orthonormal_legendre(
        reference_z, distribution.low, distribution.high, distribution.n_basis
    )
    # s(z_p) = sum over all indices of full * phi(z_p1) ... phi(z_p6)
    s = torch.einsum("abcdef,pa,pb,pc,pd,pe,pf->p", full, *basis.unbind(1))
    log_reference = torch.log(s.square()) - torch.log(full.square().sum())
    log_reference.sum().backward()
    torch.testing.assert_close(
        distribution.log_prob_tt(z.detach()), log_reference.detach(), rtol=1e-12, atol=1e-12
    )
    # sums over 40 points of terms in 1 / s: round-off grows near roots of s;
    # a missing term of the gradient would be off by its own size
    torch.testing.assert_close(z.grad, reference_z.grad, rtol=1e-8, atol=1e-10)
    for core, reference in zip(distribution.cores, reference_cores, strict=True):
        torch.testing.assert_close(core.grad, reference.grad, rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize(
    "ranks",
    [(1, 1), (1, 4, 1), (1, 2, 5, 3, 1), (1, 3, 3, 3, 3, 3, 3, 1), (1, *[6] * 12, 1)],
)
def test_tree_contraction_matches_the_running_vector(ranks, monkeypatch):
    """The tree gives the running vector's values and gradients (float64, to
    round-off) for one core, an odd and an even number of them and ranks
    that vary along the train; a call over ``TREE_MAX_ELEMENTS`` core values
    is split into chunks that are not, each by the tree, and one over
    ``TREE_MAX_POINTS`` rows goes by the running vector, bit for bit."""
    d = len(ranks) - 1
    distribution = random_distribution(ranks, 6, [[-1.0, 2.0]] * d, seed=3, tail_weight=0.01)
    generator = torch.Generator().manual_seed(5)
    z = (3.0 * torch.rand(300, d, generator=generator, dtype=torch.float64) - 1.0).requires_grad_()

    def values_and_gradients():
        log_q = distribution.log_prob(z)
        gradients = torch.autograd.grad(log_q.sum(), [z, *distribution.cores])
        return log_q.detach(), gradients

    running, running_gradients = values_and_gradients()
    with torch.no_grad():
        running_abs = distribution.log_abs_tt(z)
    running_norm = distribution.log_norm_squared()
    monkeypatch.setattr(distribution_module, "TREE_CONTRACTION_DEVICES", ("cpu",))
    # the normaliser by the tree within its budget of products, else as before
    normaliser_calls = []

    def counted_normaliser(cores):
        normaliser_calls.append(len(cores))
        return log_norm_squared_by_tree(cores)

    monkeypatch.setattr(distribution_module, "log_norm_squared_by_tree", counted_normaliser)
    products = d * max(ranks) ** 6
    monkeypatch.setattr(distribution_module, "TREE_NORMALISER_MAX_PRODUCTS", products)
    torch.testing.assert_close(
        distribution.log_norm_squared(), running_norm, rtol=1e-13, atol=1e-13
    )
    assert normaliser_calls == [d]
    monkeypatch.setattr(distribution_module, "TREE_NORMALISER_MAX_PRODUCTS", products - 1)
    assert torch.equal(distribution.log_norm_squared(), running_norm)
    assert normaliser_calls == [d]
    monkeypatch.setattr(distribution_module, "TREE_NORMALISER_MAX_PRODUCTS", 1 << 30)
    tree, tree_gradients = values_and_gradients()
    torch.testing.assert_close(tree, running, rtol=1e-12, atol=1e-12)
    for got, expected in zip(tree_gradients, running_gradients, strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-10)
    # the points' contraction alone (the normaliser is chosen apart)
    calls = []

    def counted(factors):
        calls.append(factors.shape)
        return log_abs_chain_product(factors)

    monkeypatch.setattr(distribution_module, "log_abs_chain_product", counted)
    largest = max(ranks)
    with torch.no_grad():
        whole = distribution.log_abs_tt(z)
        assert calls == [(d, 300, largest, largest)]
        monkeypatch.setattr(distribution_module, "TREE_MAX_ELEMENTS", d * largest**2 * 120)
        chunked = distribution.log_abs_tt(z)
        assert calls[1:] == [(d, 120, largest, largest)] * 2 + [(d, 60, largest, largest)]
        torch.testing.assert_close(chunked, whole, rtol=1e-13, atol=1e-13)
        monkeypatch.setattr(distribution_module, "TREE_MAX_POINTS", 299)
        assert torch.equal(distribution.log_abs_tt(z), running_abs)
    assert len(calls) == 4


def test_tree_contraction_rescales_every_level():
    """Products that underflow float64 keep their logarithm: ``A = [[1, c],
    [-1, -c]]`` has ``A^k = (1 - c)^(k - 1) A``, so 200 factors with
    ``c = 0.999`` multiply to 1e-597 although every factor's largest entry is
    1 (fails without the rescaling of each level), and the same factors times
    1e-3 to 1e-1197 (fails without the rescaling of the factors)."""
    c = 0.999
    matrix = torch.tensor([[1.0, c], [-1.0, -c]], dtype=torch.float64)
    factors = torch.stack([matrix, 1e-3 * matrix]).expand(200, 2, 2, 2)  # (d, 2 points, 2, 2)
    got = log_abs_chain_product(factors)
    log_contraction = 199 * math.log(1.0 - c)
    expected = torch.tensor(
        [log_contraction, log_contraction + 200 * math.log(1e-3)], dtype=torch.float64
    )
    # each product cancels to 1 - c, which magnifies its rounding a thousandfold
    torch.testing.assert_close(got, expected, rtol=1e-11, atol=0)


@requires_cuda
@pytest.mark.parametrize("n_points", [4096, 200_000])
def test_cuda_log_prob_by_either_contraction_matches_cpu_float64(n_points):
    """On a GPU a chunk of up to ``TREE_MAX_POINTS`` rows goes through the
    tree, a larger one through the running vector; both in float32 against
    the CPU's float64, and the tree's gradients in float64 against the CPU's."""
    ranks = (1, 4, *[8] * 28, 4, 1)
    d = len(ranks) - 1
    cpu = random_distribution(ranks, 16, [[-2.0, 2.0]] * d, seed=7)
    cpu.canonicalize_()
    z = cpu.sample(n_points, generator=torch.Generator().manual_seed(8))
    uses_tree = n_points <= distribution_module.TREE_MAX_POINTS
    assert uses_tree == (n_points == 4096)
    single = copy.deepcopy(cpu).to("cuda", torch.float32)
    with torch.no_grad():
        expected = cpu.log_prob(z)
        got = single.log_prob(z.cuda().float()).cpu().double()
    torch.testing.assert_close(got, expected, rtol=0, atol=2e-5 * (1 + expected.abs().max()))
    gpu = copy.deepcopy(cpu).to("cuda")
    rows = z[:256].clone().requires_grad_()
    gpu_rows = rows.detach().cuda().requires_grad_()
    expected_gradients = torch.autograd.grad(cpu.log_prob(rows).sum(), [rows, *cpu.cores])
    gradients = torch.autograd.grad(gpu.log_prob(gpu_rows).sum(), [gpu_rows, *gpu.cores])
    for got_gradient, expected_gradient in zip(gradients, expected_gradients, strict=True):
        torch.testing.assert_close(got_gradient.cpu(), expected_gradient, rtol=1e-9, atol=1e-9)
