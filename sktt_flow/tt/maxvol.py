"""Maximum-volume row selection, the index-selection step of TT-cross.

Goreinov, Oseledets, Savostyanov, Tyrtyshnikov and Zamarashkin, "How to find a
good submatrix" (in *Matrix Methods: Theory, Algorithms and Applications*,
2010): in a tall ``m x r`` matrix of full column rank, find ``r`` rows whose
square submatrix has (locally) maximal volume ``|det|``. Then every row of
``B = A A[I]^{-1}`` has entries of modulus at most ``tol``, which bounds the
error of the cross interpolation built on those rows.
"""

from __future__ import annotations

import torch

__all__ = ["maxvol"]


def _pivot_rows(matrix: torch.Tensor) -> torch.Tensor:
    """Rows chosen by Gaussian elimination with partial pivoting (LAPACK getrf)."""
    n_rows, rank = matrix.shape
    _, pivots = torch.linalg.lu_factor(matrix)
    order = list(range(n_rows))
    for i, pivot in enumerate(pivots.tolist()[:rank]):
        order[i], order[pivot - 1] = order[pivot - 1], order[i]
    return torch.tensor(order[:rank], dtype=torch.long, device=matrix.device)


def maxvol(matrix: torch.Tensor, tol: float = 1.01, max_iter: int = 200) -> torch.Tensor:
    """Indices of ``r`` rows of a tall ``m x r`` matrix with nearly maximal volume.

    Starts from the pivots of an LU factorisation, then swaps one row at a
    time, the one with the largest entry of ``B = A A[I]^{-1}``, updating ``B``
    by a rank-one correction (O(m r) per swap), until every ``|B_ij| <= tol``.

    Parameters
    ----------
    matrix : tensor of shape (m, r), m >= r
        Of full column rank (orthonormal columns are best conditioned).
    tol : float, default=1.01
        Stop when no entry of ``B`` exceeds this in modulus (>= 1).
    max_iter : int, default=200
        Maximum number of swaps.

    Returns
    -------
    tensor of r distinct row indices (int64)
    """
    n_rows, rank = matrix.shape
    if rank > n_rows:
        raise ValueError(f"maxvol needs a tall matrix, got shape {tuple(matrix.shape)}.")
    if rank == n_rows:
        return torch.arange(n_rows, device=matrix.device)
    rows = _pivot_rows(matrix)
    coefficients = torch.linalg.solve(matrix[rows].T, matrix.T).T  # A A[I]^{-1}
    for _ in range(max_iter):
        flat = int(coefficients.abs().argmax())
        i, j = divmod(flat, rank)
        pivot = coefficients[i, j]
        if float(pivot.abs()) <= tol:
            break
        rows[j] = i
        column = coefficients[:, j].clone()
        row = coefficients[i].clone()
        row[j] -= 1.0
        coefficients -= torch.outer(column, row) / pivot
    return rows
