"""The fixed maps between a base's coordinates and the target's."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sktt_flow.flows import FixedAffine, FixedLinearAffine, coordinate_layers, pull_back

SHIFT = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
LOWER = torch.tensor([[2.0, 0.0, 0.0], [0.3, 0.5, 0.0], [-1.0, 0.2, 4.0]], dtype=torch.float64)
BOX = np.array([[-3.0, 3.0], [-1.0, 5.0], [0.0, 2.0]])


def run(layers, y):
    log_det = torch.zeros(y.shape[0], dtype=y.dtype)
    for layer in layers:
        y, step = layer(y)
        log_det = log_det + step
    return y, log_det


@pytest.mark.parametrize("with_flow", [True, False])
def test_the_layers_compose_to_the_affine_map(with_flow):
    """With nothing between them, the layers are x = shift + matrix y with
    log-determinant log|det matrix|: a wrong composition of the unit box with
    the preconditioner (centre or half-widths on the wrong side) fails this."""
    y = torch.randn(50, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    layers = coordinate_layers(SHIFT, LOWER, BOX, with_flow=with_flow)
    assert len(layers) == (2 if with_flow else 1)
    assert isinstance(layers[-1], FixedLinearAffine)
    x, log_det = run(layers, y)
    torch.testing.assert_close(x, SHIFT + y @ LOWER.T)
    expected = torch.full((50,), float(torch.logdet(LOWER)), dtype=torch.float64)
    torch.testing.assert_close(log_det, expected)
    if with_flow:
        # the flow sees the box as [-1, 1]^d
        corners = torch.as_tensor(BOX.T.copy())
        unit, _ = layers[0](corners)
        torch.testing.assert_close(
            unit, torch.tensor([[-1.0] * 3, [1.0] * 3], dtype=torch.float64)
        )


def test_diagonal_and_identity_maps_use_cheaper_layers():
    scale = torch.tensor([2.0, 0.5, 3.0], dtype=torch.float64)
    layers = coordinate_layers(SHIFT, torch.diag(scale), BOX, with_flow=True)
    assert all(isinstance(layer, FixedAffine) for layer in layers)
    identity = torch.eye(3, dtype=torch.float64)
    assert (
        coordinate_layers(torch.zeros(3, dtype=torch.float64), identity, BOX, with_flow=False)
        == []
    )


def test_pull_back_evaluates_the_target_at_the_mapped_points():
    def log_target(x):
        return -(x**2).sum(dim=1)

    y = torch.randn(20, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    pulled = pull_back(log_target, SHIFT, LOWER, torch.float64, "cpu")
    torch.testing.assert_close(pulled(y), log_target(SHIFT + y @ LOWER.T))
    identity = torch.eye(3, dtype=torch.float64)
    assert (
        pull_back(log_target, torch.zeros(3, dtype=torch.float64), identity, torch.float32, "cpu")
        is log_target
    )
    # the points' precision is the dtype asked for
    assert (
        pull_back(log_target, SHIFT, LOWER, torch.float32, "cpu")(y.float()).dtype == torch.float32
    )
