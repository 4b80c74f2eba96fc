"""The fixed maps between the coordinates of a base and those of the target.

A base can live in coordinates ``y`` other than the target's ``x``, with
``x = shift + matrix y`` (a preconditioner: the Laplace approximation's mean
and Cholesky factor, say), and a flow acts on the base's box mapped to
``[-1, 1]^d``. These helpers build the fixed layers of the model for that,
and the target seen from ``y``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from normflows.flows import Flow

from sktt_flow.flows.layers import FixedAffine, FixedLinearAffine

__all__ = ["coordinate_layers", "pull_back"]


def pull_back(
    log_target: Callable[[torch.Tensor], torch.Tensor],
    shift: torch.Tensor,
    matrix: torch.Tensor,
    dtype: torch.dtype,
    device: torch.device | str,
) -> Callable[[torch.Tensor], torch.Tensor]:
    """``y -> log_target(shift + matrix y)``: the target in the coordinates of the
    base (its log-Jacobian is a constant, which the base's normaliser absorbs).

    The identity map returns ``log_target`` itself. ``shift`` and ``matrix``
    are cast once to ``dtype`` on ``device``, the points' precision.
    """
    identity = torch.eye(matrix.shape[0], dtype=matrix.dtype)
    if bool((shift == 0).all()) and torch.equal(matrix, identity):
        return log_target
    shift = shift.to(device=device, dtype=dtype)
    matrix_transposed = matrix.T.to(device=device, dtype=dtype).contiguous()

    def log_target_of_base_coordinates(y: torch.Tensor) -> torch.Tensor:
        return log_target(shift + y @ matrix_transposed)

    return log_target_of_base_coordinates


def coordinate_layers(
    shift: torch.Tensor, matrix: torch.Tensor, box, *, with_flow: bool
) -> list[Flow]:
    """The fixed layers between the base's box and the target's coordinates, float64.

    With a flow: ``[to the unit box, from the unit box into x]``, the flow
    going between them (it acts on ``[-1, 1]^d`` whatever the box, as it acts
    on standardised data in data mode); the second map composes the way back
    from the unit box with ``x = shift + matrix y``. Without: ``[y -> x]``,
    or nothing for the identity. Diagonal maps are :class:`FixedAffine`, the
    others :class:`FixedLinearAffine`.

    Parameters
    ----------
    shift : tensor (d,), matrix : tensor (d, d)
        The map ``x = shift + matrix y`` (float64; see
        :func:`sktt_flow.geometry.affine_from_laplace`).
    box : array-like (d, 2)
        The base's box in ``y``.
    with_flow : bool
        Whether flow layers will go between the two maps.
    """
    box = torch.as_tensor(box, dtype=torch.float64)
    center, half_width = (box[:, 0] + box[:, 1]) / 2, (box[:, 1] - box[:, 0]) / 2
    if with_flow:
        out_shift, out_matrix = shift + matrix @ center, matrix * half_width[None, :]
        layers = [FixedAffine(-center / half_width, 1.0 / half_width)]
    else:
        out_shift, out_matrix = shift, matrix
        layers = []
    diagonal = torch.diagonal(out_matrix)
    if torch.equal(out_matrix, torch.diag(diagonal)):
        if not with_flow and bool((out_shift == 0).all() and (diagonal == 1).all()):
            return layers
        return [*layers, FixedAffine(out_shift, diagonal)]
    return [*layers, FixedLinearAffine(out_shift, out_matrix)]
