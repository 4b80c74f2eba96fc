import numpy as np
import pytest
import torch

from sktt_flow.tt.algebra import (
    BROADCAST_MAX_POINTS,
    advance_running_product,
    basis_core_matrices,
    check_cores,
    coefficients_to_nodal,
    contract_running_product,
    left_orthogonalize,
    log_norm_squared,
    log_norm_squared_by_tree,
    mode_energy_shares,
    nodal_to_coefficients,
    right_orthogonalize,
    round_tt,
    scale_to_unit_max,
    shape_runs,
    stacked_core_matrices,
    tt_ranks,
    tt_svd,
    tt_to_full,
)
from sktt_flow.tt.basis import gauss_legendre, orthonormal_legendre
from tests.conftest import random_cores


def test_running_product_evaluates_the_train_at_points():
    """Against the full tensor contracted with the basis values, point by point."""
    cores = random_cores((1, 3, 2, 1), 4, seed=5)
    generator = torch.Generator().manual_seed(6)
    basis = torch.randn(3, 4, 7, generator=generator, dtype=torch.float64)  # (d, n, N)
    scale = torch.rand(3, 4, generator=generator, dtype=torch.float64) + 0.5
    running = None
    for k, matrix in enumerate(basis_core_matrices(cores, scale)):
        running = advance_running_product(running, matrix, basis[k])
    assert running.shape == (1, 7)
    expected = torch.einsum(
        "ijk,ip,jp,kp->p", tt_to_full(cores), *(basis[k] * scale[k, :, None] for k in range(3))
    )
    np.testing.assert_allclose(running[0].numpy(), expected.numpy(), rtol=1e-12)


def test_running_product_is_the_same_on_few_and_many_points():
    """On up to ``BROADCAST_MAX_POINTS`` points the product runs as one
    broadcast product and a sum, on more as a loop of multiply-adds: both
    give the same values, and the gradient of the broadcast form matches
    finite differences. Fails if the two forms contract different indices
    (the ranks here differ, so a transposed contraction cannot agree)."""
    cores = random_cores((1, 3, 5, 2, 1), 4, seed=8)
    generator = torch.Generator().manual_seed(9)
    n_points = BROADCAST_MAX_POINTS + 5
    basis = torch.randn(4, 4, n_points, generator=generator, dtype=torch.float64)

    def evaluate(matrices, columns):
        running = None
        for k, matrix in enumerate(matrices):
            running = advance_running_product(running, matrix, basis[k][:, columns])
        return running[0]

    matrices = basis_core_matrices(cores)
    looped = evaluate(matrices, slice(None))
    broadcast = torch.cat(
        [evaluate(matrices, slice(0, 1000)), evaluate(matrices, slice(1000, None))]
    )
    np.testing.assert_allclose(broadcast.numpy(), looped.numpy(), rtol=1e-12)
    leaves = tuple(matrix.clone().requires_grad_() for matrix in matrices)
    assert torch.autograd.gradcheck(
        lambda *m: evaluate(list(m), slice(0, 11)), leaves, eps=1e-6, atol=1e-8
    )


@pytest.mark.parametrize("rank", [2, 4, 7, 16, 17])
def test_running_product_rounds_alike_on_few_and_many_points(rank):
    """In float32, bit for bit: a point's value does not depend on whether
    it is contracted with fewer or more than ``BROADCAST_MAX_POINTS``
    others (scikit-learn's batch and subset checks; the estimator's float32
    scores of large calls). Fails with fused multiply-adds in the loop
    (addcmul_), whose single rounding the broadcast sum does not share, and
    if torch's sum over the first axis stops adding its terms in order (it
    adds 18 or more in a cascade: rounded differently, beyond what
    TTDistribution.log_prob hands this loop, ranks up to 7)."""
    generator = torch.Generator().manual_seed(rank)
    n_points = BROADCAST_MAX_POINTS + 64
    running = torch.randn(rank, n_points, generator=generator)
    core_values = torch.randn(rank, 3, n_points, generator=generator)
    many = contract_running_product(running, core_values)
    few = torch.cat(
        [
            contract_running_product(running[:, block], core_values[..., block])
            for block in (slice(0, 64), slice(64, 1024), slice(1024, None))
        ],
        dim=1,
    )
    np.testing.assert_array_equal(few.numpy(), many.numpy())


def test_tt_svd_is_exact_without_truncation():
    full = torch.randn(4, 5, 3, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    cores = tt_svd(full)
    check_cores(cores)
    np.testing.assert_allclose(tt_to_full(cores).numpy(), full.numpy(), atol=1e-12)


def test_tt_svd_recovers_low_rank_tensor_with_its_rank():
    cores = random_cores((1, 2, 3, 1), 5, seed=3)
    recovered = tt_svd(tt_to_full(cores), rtol=1e-12)
    assert tt_ranks(recovered) == (1, 2, 3, 1)
    np.testing.assert_allclose(tt_to_full(recovered), tt_to_full(cores), atol=1e-11)


@pytest.mark.parametrize("orthogonalize", [right_orthogonalize, left_orthogonalize])
def test_orthogonalization_keeps_the_tensor(orthogonalize):
    cores = random_cores((1, 3, 4, 2, 1), 4, seed=4)
    result = orthogonalize(cores)
    np.testing.assert_allclose(tt_to_full(result), tt_to_full(cores), rtol=1e-10, atol=1e-12)


def test_right_orthogonal_cores_contract_to_identity():
    cores = right_orthogonalize(random_cores((1, 3, 4, 2, 1), 4, seed=5))
    for core in cores[1:]:
        unfolding = core.reshape(core.shape[0], -1)
        np.testing.assert_allclose(
            unfolding @ unfolding.T, torch.eye(core.shape[0], dtype=torch.float64), atol=1e-12
        )
    # The whole norm then sits in the first core.
    assert float(cores[0].norm()) == pytest.approx(float(tt_to_full(cores).norm()), rel=1e-12)


def test_sweeps_shrink_infeasible_ranks():
    # With n = 2 a bond next to a boundary core has rank at most 2; a right
    # sweep enforces the bounds from the right, rounding those from both sides.
    cores = random_cores((1, 5, 5, 1), 2, seed=6)
    assert tt_ranks(right_orthogonalize(cores)) == (1, 4, 2, 1)
    rounded = round_tt(cores)
    assert tt_ranks(rounded) == (1, 2, 2, 1)
    np.testing.assert_allclose(tt_to_full(rounded), tt_to_full(cores), atol=1e-11)


def test_round_tt_matches_best_truncation_in_two_dimensions():
    matrix = torch.randn(8, 8, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    cores = tt_svd(matrix)
    rounded = round_tt(cores, max_rank=3)
    assert tt_ranks(rounded) == (1, 3, 1)
    u, s, vh = torch.linalg.svd(matrix)
    best = (u[:, :3] * s[:3]) @ vh[:3]
    np.testing.assert_allclose(tt_to_full(rounded), best, atol=1e-11)


def test_round_tt_relative_tolerance_bounds_the_error():
    # A rank-2 tensor plus a perturbation of relative size about 1e-3.
    signal = tt_to_full(random_cores((1, 2, 2, 2, 1), 6, seed=8))
    noise = tt_to_full(random_cores((1, 6, 6, 6, 1), 6, seed=18))
    full = signal + 1e-3 * noise * signal.norm() / noise.norm()
    rounded = round_tt(tt_svd(full), rtol=1e-2)
    assert tt_ranks(rounded) == (1, 2, 2, 2, 1)
    error = float((tt_to_full(rounded) - full).norm() / full.norm())
    assert error <= 1e-2 * np.sqrt(3)
    tight = round_tt(tt_svd(full), rtol=1e-6)
    assert min(tt_ranks(tight)[1:-1]) == 6  # the perturbation is kept


NORMALISERS = pytest.mark.parametrize(
    "log_norm_squared", [log_norm_squared, log_norm_squared_by_tree], ids=["running", "tree"]
)


@NORMALISERS
def test_log_norm_squared_matches_full_tensor_and_does_not_overflow(log_norm_squared):
    cores = random_cores((1, 3, 2, 4, 1), 5, seed=9)
    expected = np.log(float(tt_to_full(cores).square().sum()))
    assert float(log_norm_squared(cores)) == pytest.approx(expected, rel=1e-12)
    huge = [core * 1e30 for core in random_cores((1,) + (4,) * 39 + (1,), 5, seed=10)]
    value = log_norm_squared(huge)
    assert torch.isfinite(value)
    assert float(value) == pytest.approx(
        float(log_norm_squared([c / 1e30 for c in huge])) + 40 * 2 * np.log(1e30), rel=1e-12
    )


def test_nodal_coefficient_conversion_interpolates_exactly():
    low = torch.tensor([-1.0, 0.0], dtype=torch.float64)
    high = torch.tensor([2.0, 1.0], dtype=torch.float64)
    n = 7
    nodes, _ = gauss_legendre(n, low, high)

    # f(x, y) = (1 + x^2) y^3 + x: a sum of two products, degree < n.
    def f(x, y):
        return (1 + x**2) * y**3 + x

    nodal_cores = tt_svd(f(nodes[0][:, None], nodes[1][None, :]))
    coefficient_cores = nodal_to_coefficients(nodal_cores, low, high)
    points = torch.rand(20, 2, dtype=torch.float64) * (high - low) + low
    basis = orthonormal_legendre(points, low, high, n)
    values = torch.einsum("ni,nj,ij->n", basis[:, 0], basis[:, 1], tt_to_full(coefficient_cores))
    np.testing.assert_allclose(values, f(points[:, 0], points[:, 1]), atol=1e-11)
    back = coefficients_to_nodal(coefficient_cores, low, high)
    np.testing.assert_allclose(tt_to_full(back), tt_to_full(nodal_cores), atol=1e-11)


@pytest.mark.parametrize(
    "cores, message",
    [
        ([], "at least one core"),
        ([torch.zeros(1, 3)], "3 dimensions"),
        ([torch.zeros(1, 3, 2), torch.zeros(3, 3, 1)], "left rank 3"),
        ([torch.zeros(1, 3, 2)], "right rank 1"),
    ],
)
def test_check_cores_names_the_problem(cores, message):
    with pytest.raises(ValueError, match=message):
        check_cores(cores)


@NORMALISERS
def test_log_norm_squared_of_cores_with_huge_entries(log_norm_squared):
    """Cores of values of unknown scale (TT-cross before normalisation): entries
    of 1e200 square to inf in float64; the result must be the exact shift of
    the unscaled one, not NaN. Catches a log_norm_squared that takes norms
    before rescaling."""
    cores = random_cores((1, 3, 4, 2, 1), 5, seed=3)
    reference = float(log_norm_squared(cores))
    huge = [core * 1e200 for core in cores]
    expected = reference + 2 * len(cores) * np.log(1e200)
    assert float(log_norm_squared(huge)) == pytest.approx(expected, rel=1e-12)
    tiny = [core * 1e-200 for core in cores]
    assert float(log_norm_squared(tiny)) == pytest.approx(
        reference - 2 * len(cores) * np.log(1e200), rel=1e-12
    )


@pytest.mark.parametrize("ranks", [(1, 1), (1, 4, 1), (1, 2, 5, 3, 1), (1, *[3] * 8, 1)])
def test_log_norm_squared_by_tree_has_the_running_gradient(ranks):
    """The tree's normaliser and its gradient in every core equal the running
    contraction's, for one core, odd and even numbers of them and ranks that
    vary (zero padding): fails if a transfer matrix is transposed or padded
    into the wrong corner."""
    cores = [core.requires_grad_() for core in random_cores(ranks, 4, seed=12)]
    value = log_norm_squared(cores)
    gradients = torch.autograd.grad(value, cores)
    tree_value = log_norm_squared_by_tree(cores)
    tree_gradients = torch.autograd.grad(tree_value, cores)
    torch.testing.assert_close(tree_value, value, rtol=1e-13, atol=1e-13)
    for got, expected in zip(tree_gradients, gradients, strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-11, atol=1e-12)


def test_scale_to_unit_max_is_exact():
    """Powers of two only: every returned core times its factor is the input to
    the last bit, every largest entry lies in [0.5, 1), a zero core stays zero,
    log_scale is the sum of the exponents, and with keep_within cores already
    in range are left untouched."""
    factors = [3e250, 1.0, 7e-240]
    cores = [
        core * factor
        for core, factor in zip(random_cores((1, 2, 3, 1), 4, seed=1), factors, strict=True)
    ]
    cores.append(torch.zeros(1, 4, 1, dtype=torch.float64))
    scaled, log_scale = scale_to_unit_max(cores)
    total_exponent = 0
    for original, result in zip(cores, scaled, strict=True):
        largest = float(result.abs().max())
        if largest == 0.0:
            assert torch.equal(result, original)
            continue
        assert 0.5 <= largest < 1.0
        exponent = int(torch.frexp(original.abs().amax())[1])
        assert torch.equal(torch.ldexp(result, torch.tensor(float(exponent))), original)
        total_exponent += exponent
    assert float(log_scale) == pytest.approx(total_exponent * np.log(2.0), rel=1e-15)
    kept, _ = scale_to_unit_max(cores, keep_within=16)
    assert torch.equal(kept[1], cores[1]) and not torch.equal(kept[0], cores[0])


def test_mode_energy_shares_match_the_full_tensor():
    """shares[k, i] = ||C[.., i_k = i, ..]||^2 / ||C||^2, against the full
    tensor, whatever the gauge and scale of the cores."""
    cores = random_cores((1, 3, 4, 2, 1), 5, seed=4)
    cores[1] = cores[1] * 1e180  # scale must not matter
    full = tt_to_full(cores) / 1e180
    energy = full.square()
    for k, shares in enumerate(mode_energy_shares(cores)):
        other = tuple(axis for axis in range(4) if axis != k)
        expected = energy.sum(dim=other) / energy.sum()
        np.testing.assert_allclose(shares.numpy(), expected.numpy(), rtol=1e-10)


def test_running_product_in_buffers_is_the_same_to_the_last_bit():
    """With ``buffers`` (the sampler's, reused at every coordinate) the product
    is the one without, bit for bit, on points where the loop of multiply-adds
    runs, through bonds that grow and shrink (buffers sized for the widest and
    filled with NaN, so that a read of an unwritten entry shows); on fewer
    points the buffers are not used. Fails if the buffered path reorders the
    operations or writes the result where the next step reads its input."""
    cores = random_cores((1, 3, 7, 2, 1), 6, seed=7)
    matrices = basis_core_matrices(cores)
    rows = max(matrix.shape[0] for matrix in matrices)
    for n_points in (BROADCAST_MAX_POINTS + 1, 64):
        generator = torch.Generator().manual_seed(8)
        core_values = torch.full((rows, n_points), float("nan"), dtype=torch.float64)
        out = torch.full((2, 7, n_points), float("nan"), dtype=torch.float64)
        buffered = expected = torch.ones(1, n_points, dtype=torch.float64)
        for k, matrix in enumerate(matrices):
            table = torch.randn(6, n_points, generator=generator, dtype=torch.float64)
            expected = advance_running_product(expected, matrix, table)
            buffered = advance_running_product(
                buffered, matrix, table, buffers=(core_values, out[k % 2])
            )
            assert torch.equal(buffered, expected)
            assert (buffered.data_ptr() == out[k % 2].data_ptr()) == (
                n_points > BROADCAST_MAX_POINTS
            )


def test_stacked_core_matrices_are_the_core_matrices_by_runs():
    """Runs of equal shapes, and the same matrices bit for bit as
    basis_core_matrices: fails if a run is split at the wrong core or a
    core's modes are scaled by another coordinate's constants."""
    cores = random_cores((1, 3, 3, 3, 2, 2, 1), 5, seed=2)
    assert shape_runs(cores) == [(0, 1), (1, 3), (3, 4), (4, 5), (5, 6)]
    scale = torch.rand(6, 5, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    expected = basis_core_matrices(cores, scale)
    stacked = stacked_core_matrices(cores, scale)
    assert [start for start, _ in stacked] == [0, 1, 3, 4, 5]
    matrices = [matrix for _, block in stacked for matrix in block.unbind(0)]
    assert all(torch.equal(a, b) for a, b in zip(matrices, expected, strict=True))
