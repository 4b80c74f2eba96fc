import itertools

import pytest
import torch

from sktt_flow.tt.maxvol import maxvol


def test_coefficients_are_bounded_by_the_tolerance():
    matrix = torch.randn(400, 7, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    rows = maxvol(matrix, tol=1.01)
    assert len(set(rows.tolist())) == 7
    coefficients = matrix @ torch.linalg.inv(matrix[rows])
    assert float(coefficients.abs().max()) <= 1.01 + 1e-12


def test_finds_the_maximum_volume_submatrix_of_a_small_matrix():
    matrix = torch.randn(9, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    best = max(
        itertools.combinations(range(9), 2),
        key=lambda rows: abs(float(torch.linalg.det(matrix[list(rows)]))),
    )
    rows = maxvol(matrix, tol=1.0)
    volume = abs(float(torch.linalg.det(matrix[rows])))
    # A dominant submatrix is within a factor of the maximum volume; in
    # small cases it is the maximum itself.
    assert volume == pytest.approx(abs(float(torch.linalg.det(matrix[list(best)]))), rel=1e-12)


def test_square_and_wide_inputs():
    square = torch.eye(3, dtype=torch.float64)
    assert sorted(maxvol(square).tolist()) == [0, 1, 2]
    with pytest.raises(ValueError, match="tall matrix"):
        maxvol(torch.zeros(2, 3, dtype=torch.float64))


def test_picks_the_rows_that_carry_the_signal():
    matrix = 1e-6 * torch.randn(100, 2, generator=torch.Generator().manual_seed(2))
    matrix = matrix.double()
    matrix[17] = torch.tensor([5.0, 0.0])
    matrix[63] = torch.tensor([0.0, 3.0])
    assert sorted(maxvol(matrix).tolist()) == [17, 63]
