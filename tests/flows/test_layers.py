"""The package's own flow layers: FixedAffine and AffineAutoregressive.

Log-determinants are checked against ``torch.autograd.functional.jacobian`` on
single points in float64, where both sides agree to round-off (1e-10 leaves
four orders of magnitude for log-dets of order one).
"""

import math

import pytest
import torch

from sktt_flow.flows import AffineAutoregressive, FixedAffine
from tests.flows.reference import jacobian_at, perturb


# ----------------------------------------------------------------- FixedAffine
def test_fixed_affine_maps_and_log_dets():
    """x = shift + scale z exactly, log-dets +-sum(log scale); both are buffers."""
    shift = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    scale = torch.tensor([2.0, 0.5, 3.0], dtype=torch.float64)
    layer = FixedAffine(shift, scale)
    z = torch.randn(7, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x, log_det = layer(z)
    torch.testing.assert_close(x, shift + scale * z, rtol=0, atol=0)
    torch.testing.assert_close(log_det, torch.full((7,), math.log(3.0), dtype=torch.float64))
    back, inverse_log_det = layer.inverse(x)
    # Division after multiplication: exact up to two roundings.
    torch.testing.assert_close(back, z, rtol=1e-15, atol=1e-15)
    torch.testing.assert_close(inverse_log_det, -log_det, rtol=0, atol=0)
    assert list(layer.parameters()) == []
    assert set(layer.state_dict()) == {"shift", "scale"}
    assert layer.to(torch.float32).scale.dtype == torch.float32


def test_fixed_affine_with_an_integer_shift_keeps_a_fractional_scale():
    """Regression: the scale was cast to the shift's dtype, so an integer shift
    silently truncated scale 1.5 to 1 (and 0.5 to 0, a confusing error)."""
    for shift in ([0, 1], torch.tensor([0, 1])):
        layer = FixedAffine(shift, [1.5, 0.5])
        assert layer.scale.is_floating_point() and layer.shift.is_floating_point()
        torch.testing.assert_close(layer.scale, torch.tensor([1.5, 0.5]), rtol=0, atol=0)


@pytest.mark.parametrize(
    ("shift", "scale"),
    [
        (torch.zeros(3), torch.ones(2)),  # shapes differ
        (torch.zeros(2, 2), torch.ones(2, 2)),  # not 1-D
        (torch.zeros(2), torch.tensor([1.0, 0.0])),  # zero scale
        (torch.zeros(2), torch.tensor([1.0, -1.0])),  # negative scale
    ],
)
def test_fixed_affine_rejects_bad_shift_or_scale(shift, scale):
    with pytest.raises(ValueError):
        FixedAffine(shift, scale)


# -------------------------------------------------------- AffineAutoregressive
@pytest.mark.parametrize("n_features", [1, 2, 5])
def test_autoregressive_layer_is_the_identity_at_construction(n_features):
    """The zeroed last layer of MADE gives a = b = 0: exact identity, log-det 0."""
    torch.manual_seed(0)
    layer = AffineAutoregressive(n_features, 16).double()
    z = torch.randn(20, n_features, generator=torch.Generator().manual_seed(1)).double()
    for direction in (layer.forward, layer.inverse):
        out, log_det = direction(z)
        assert torch.equal(out, z)
        assert torch.equal(log_det, torch.zeros(20, dtype=torch.float64))


@pytest.mark.parametrize("n_features", [1, 4])
def test_autoregressive_layer_log_det_is_that_of_its_triangular_jacobian(n_features):
    """After random perturbation: lower-triangular Jacobian (autoregressive), log-det
    of both directions equal to autograd's, and inverse(forward(z)) = z."""
    torch.manual_seed(0)
    layer = AffineAutoregressive(n_features, 16).double()
    perturb(layer, 0.3, seed=1)
    z = 1.5 * torch.randn(5, n_features, generator=torch.Generator().manual_seed(2)).double()
    with torch.no_grad():
        x, log_det = layer(z)
        back, inverse_log_det = layer.inverse(x)
    assert log_det.abs().max() > 0.1  # the perturbation made it far from the identity
    # d sequential passes recover every coordinate exactly up to round-off.
    torch.testing.assert_close(back, z, rtol=1e-12, atol=1e-12)
    for i in range(z.shape[0]):
        jacobian = jacobian_at(layer.forward, z[i : i + 1])
        assert torch.equal(jacobian, jacobian.tril())
        expected = torch.linalg.slogdet(jacobian).logabsdet
        assert float(log_det[i]) == pytest.approx(float(expected), abs=1e-10)
        inverse_jacobian = jacobian_at(layer.inverse, x[i : i + 1])
        expected = torch.linalg.slogdet(inverse_jacobian).logabsdet
        assert float(inverse_log_det[i]) == pytest.approx(float(expected), abs=1e-10)


def test_autoregressive_log_scale_is_bounded():
    """a = S tanh(u / S): even wild parameters give |log-det| <= d S."""
    torch.manual_seed(0)
    layer = AffineAutoregressive(3, 16, max_log_scale=2.0).double()
    perturb(layer, 50.0, seed=3)
    z = torch.randn(100, 3, generator=torch.Generator().manual_seed(4)).double()
    with torch.no_grad():
        _, log_det = layer(z)
    assert torch.isfinite(log_det).all()
    assert float(log_det.abs().max()) <= 3 * 2.0
