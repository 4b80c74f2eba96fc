import functools
import math

import numpy as np
import pytest
import torch

from sktt_flow.tt.basis import (
    coefficient_to_nodal_matrix,
    gauss_legendre,
    legendre_polynomials,
    nodal_to_coefficient_matrix,
    orthonormal_legendre,
    orthonormal_legendre_derivatives,
    orthonormal_legendre_scale,
    scaled_legendre_polynomials,
    scaled_legendre_polynomials_into,
    to_reference_interval,
)

LOW = torch.tensor([-1.0, -2.0, 0.5], dtype=torch.float64)
HIGH = torch.tensor([1.0, 3.0, 0.75], dtype=torch.float64)


def test_legendre_matches_numpy():
    t = torch.linspace(-1, 1, 101, dtype=torch.float64)
    values = legendre_polynomials(t, 12)
    for i in range(12):
        reference = np.polynomial.legendre.legval(t.numpy(), np.eye(12)[i])
        np.testing.assert_allclose(values[:, i].numpy(), reference, atol=1e-13)


@pytest.mark.parametrize("n", [1, 2, 7, 24])
def test_orthonormal_on_each_interval(n):
    nodes, weights = gauss_legendre(n + 2, LOW, HIGH)  # exact for degree 2n + 3
    basis = orthonormal_legendre(nodes.T, LOW, HIGH, n)  # (n + 2, d, n)
    gram = torch.einsum("qki,qkj,kq->kij", basis, basis, weights)
    np.testing.assert_allclose(gram.numpy(), np.broadcast_to(np.eye(n), gram.shape), atol=1e-12)


def test_gauss_legendre_exact_to_degree_2n_minus_1():
    nodes, weights = gauss_legendre(5, 0.0, 2.0)
    for degree in range(10):
        exact = 2.0 ** (degree + 1) / (degree + 1)
        assert float((weights * nodes**degree).sum()) == pytest.approx(exact, rel=1e-13)


def test_derivatives_match_autograd():
    x = (torch.rand(50, 3, dtype=torch.float64) * (HIGH - LOW) + LOW).requires_grad_()
    values, derivatives = orthonormal_legendre_derivatives(x, LOW, HIGH, 9)
    np.testing.assert_allclose(
        values.detach().numpy(), orthonormal_legendre(x, LOW, HIGH, 9).detach().numpy()
    )
    for i in range(9):
        (grad,) = torch.autograd.grad(values[..., i].sum(), x, retain_graph=True)
        np.testing.assert_allclose(derivatives[..., i].detach().numpy(), grad.numpy(), atol=1e-10)


def test_nodal_and_coefficient_matrices_are_inverse():
    to_nodal = coefficient_to_nodal_matrix(10, LOW, HIGH)
    to_coefficients = nodal_to_coefficient_matrix(10, LOW, HIGH)
    identity = torch.eye(10, dtype=torch.float64).expand(3, 10, 10)
    np.testing.assert_allclose((to_coefficients @ to_nodal).numpy(), identity.numpy(), atol=1e-12)
    np.testing.assert_allclose((to_nodal @ to_coefficients).numpy(), identity.numpy(), atol=1e-12)


def test_nodal_values_of_a_polynomial_give_its_coefficients():
    # x^3 - x on [-2, 3] has degree 3 < n: interpolation is exact.
    n = 6
    low, high = LOW[1:2], HIGH[1:2]
    nodes, _ = gauss_legendre(n, low, high)
    coefficients = nodal_to_coefficient_matrix(n, low, high)[0] @ (nodes[0] ** 3 - nodes[0])
    x = torch.linspace(-2, 3, 17, dtype=torch.float64)[:, None]
    rebuilt = orthonormal_legendre(x, low, high, n)[:, 0] @ coefficients
    np.testing.assert_allclose(rebuilt.numpy(), (x[:, 0] ** 3 - x[:, 0]).numpy(), atol=1e-11)


@pytest.mark.parametrize("dim", [0, 1, -1, -2])
def test_legendre_axis_position(dim):
    t = torch.rand(4, 6, dtype=torch.float64) * 2 - 1
    last = legendre_polynomials(t, 5)
    placed = legendre_polynomials(t, 5, dim=dim)
    np.testing.assert_array_equal(placed.movedim(dim, -1).numpy(), last.numpy())


@pytest.mark.parametrize("dim", [-1, 1])
def test_legendre_gradient_matches_finite_differences(dim):
    """The table is filled in place, so its backward pass is written by hand."""
    t = (torch.rand(3, 5, dtype=torch.float64) * 2 - 1).requires_grad_()
    assert torch.autograd.gradcheck(lambda x: legendre_polynomials(x, 9, dim=dim), (t,))
    assert torch.autograd.gradcheck(lambda x: legendre_polynomials(x, 1, dim=dim), (t,))


def test_legendre_rejects_a_bad_axis():
    with pytest.raises(ValueError, match="dim must be"):
        legendre_polynomials(torch.zeros(3, 2), 4, dim=3)


def test_rejects_empty_basis():
    with pytest.raises(ValueError, match="at least 1"):
        legendre_polynomials(torch.zeros(3), 0)


@pytest.mark.parametrize("n", [1, 2, 3, 16, 256])
def test_scaled_table_is_legendre_times_a_constant_per_degree(n):
    """gamma_i P_i(t): the ratio to numpy's P_i is one constant per degree, and
    the constants that orthonormal_legendre_scale folds give the orthonormal
    functions back."""
    t = torch.linspace(-1, 1, 301, dtype=torch.float64)
    table = scaled_legendre_polynomials(t, n)
    reference = np.polynomial.legendre.legvander(t.numpy(), n - 1)
    # each degree's constant, from the point where |P_i| = 1
    gamma = table[-1].numpy()
    assert np.all(np.abs(gamma) >= 1.0) and np.all(np.abs(gamma) <= 2 * np.sqrt(n))
    np.testing.assert_allclose(table.numpy(), reference * gamma, atol=1e-12 * np.sqrt(n))
    x = LOW[0] + (t[:, None] + 1) * (HIGH[0] - LOW[0]) / 2
    np.testing.assert_allclose(to_reference_interval(x, LOW[:1], HIGH[:1]), t[:, None], atol=1e-15)
    scale = orthonormal_legendre_scale(LOW[:1], HIGH[:1], n, scaled_table=True)
    folded = table[:, None, :] * scale
    np.testing.assert_allclose(
        folded.numpy(), orthonormal_legendre(x, LOW[:1], HIGH[:1], n).numpy(), atol=1e-12 * n
    )


@pytest.mark.parametrize("n", [1, 2, 16])
def test_scaled_table_into_a_buffer_is_the_same_table(n):
    """Refilling one buffer gives the table of scaled_legendre_polynomials bit
    for bit, overwriting what was there; a point that requires gradient is
    refused under autograd, as the buffer records none."""
    t = torch.linspace(-1, 1, 301, dtype=torch.float64)
    buffer = torch.full((n, 301), math.nan, dtype=torch.float64)
    assert scaled_legendre_polynomials_into(t, buffer) is buffer
    assert torch.equal(buffer, scaled_legendre_polynomials(t, n, dim=0))
    scaled_legendre_polynomials_into(-t, buffer)
    assert torch.equal(buffer, scaled_legendre_polynomials(-t, n, dim=0))
    with pytest.raises(ValueError, match="gradients"):
        scaled_legendre_polynomials_into(t.clone().requires_grad_(), buffer)


@pytest.mark.parametrize("dim", [0, -1])
def test_scaled_table_gradient_matches_finite_differences(dim):
    generator = torch.Generator().manual_seed(0)
    t = (torch.rand(4, 6, generator=generator, dtype=torch.float64) * 2 - 1).requires_grad_()
    for n in (1, 2, 11):
        table = functools.partial(scaled_legendre_polynomials, n=n, dim=dim)
        assert torch.autograd.gradcheck(table, (t,))
