"""The package's own flow layers: the fixed maps, AffineAutoregressive and
MaskedAffineCoupling.

Log-determinants are checked against ``torch.autograd.functional.jacobian`` on
single points in float64, where both sides agree to round-off (1e-10 leaves
four orders of magnitude for log-dets of order one).
"""

import copy
import math

import normflows as nf
import pytest
import torch

from sktt_flow.flows import (
    FIXED_LAYERS,
    AffineAutoregressive,
    FixedAffine,
    FixedBoundsMap,
    FixedLinearAffine,
    GaussianBase,
    MaskedAffineCoupling,
    build_flow_layers,
    split_bounds_map,
)
from sktt_flow.flows.model import TensorizingFlow
from tests.flows.reference import jacobian_at, log_abs_det_jacobian, perturb


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


# ------------------------------------------------------------ FixedLinearAffine
def _matrices(d: int, seed: int) -> dict[str, torch.Tensor]:
    """A Cholesky factor (lower triangular) and a general, non-triangular matrix."""
    generator = torch.Generator().manual_seed(seed)
    square = torch.randn(d, d, generator=generator, dtype=torch.float64)
    covariance = square @ square.T + 0.5 * torch.eye(d, dtype=torch.float64)
    general = square + 2.0 * torch.eye(d, dtype=torch.float64)
    return {"cholesky": torch.linalg.cholesky(covariance), "general": general}


@pytest.mark.parametrize("kind", ["cholesky", "general"])
@pytest.mark.parametrize(("dtype", "tolerance"), [(torch.float64, 1e-12), (torch.float32, 1e-4)])
def test_fixed_linear_affine_round_trip_and_log_dets(kind, dtype, tolerance):
    """x = shift + M z; inverse(forward(z)) = z; the log-dets are opposite and
    equal to slogdet(M) and to autograd's Jacobian. Catches x = shift + M^T z
    (a row-vector convention slip), a wrong solve, a sign of the log-det, and a
    triangular solve applied to a non-triangular matrix."""
    d = 4
    matrix = _matrices(d, seed=0)[kind]
    shift = torch.tensor([1.0, -2.0, 0.5, 3.0], dtype=torch.float64)
    layer = FixedLinearAffine(shift, matrix).to(dtype)
    assert layer._lower == (kind == "cholesky")
    z = torch.randn(9, d, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    x, log_det = layer(z.to(dtype))
    assert x.dtype == dtype and log_det.dtype == dtype
    expected_x = shift + (matrix @ z.T).T
    torch.testing.assert_close(x.double(), expected_x, rtol=tolerance, atol=tolerance)
    back, inverse_log_det = layer.inverse(x)
    torch.testing.assert_close(back.double(), z, rtol=tolerance, atol=10 * tolerance)
    expected = torch.linalg.slogdet(matrix).logabsdet
    torch.testing.assert_close(log_det.double(), expected.expand(9), rtol=tolerance, atol=0)
    torch.testing.assert_close(inverse_log_det, -log_det, rtol=0, atol=0)
    if dtype == torch.float64:
        jacobian = jacobian_at(layer.forward, z[:1])
        torch.testing.assert_close(jacobian, matrix, rtol=0, atol=1e-14)


def test_fixed_linear_affine_gives_the_gaussian_log_density():
    """A standard Gaussian base pushed through x = m + L z is N(m, L L^T): the
    model's log_prob must equal torch's MultivariateNormal's (the log-det enters
    with the right sign and the right direction)."""
    d = 3
    factor = _matrices(d, seed=2)["cholesky"]
    mean = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64)
    base = GaussianBase(torch.zeros(d, dtype=torch.float64), torch.ones(d, dtype=torch.float64))
    model = TensorizingFlow(base, [FixedLinearAffine(mean, factor)])
    x = torch.randn(6, d, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    reference = torch.distributions.MultivariateNormal(mean, scale_tril=factor).log_prob(x)
    torch.testing.assert_close(model.log_prob(x), reference, rtol=1e-12, atol=1e-12)


def test_fixed_linear_affine_buffers_and_state_dict_round_trip():
    """Buffers only, with the same keys and shapes whatever the matrix, so that
    persistence can load a general matrix into an identity skeleton (and a
    triangular one back): the loaded layer must compute the same maps, with the
    triangular flag following the loaded matrix."""
    d = 3
    matrices = _matrices(d, seed=4)
    shift = torch.tensor([0.1, 0.2, 0.3], dtype=torch.float64)
    for kind in ("general", "cholesky"):
        layer = FixedLinearAffine(shift, matrices[kind])
        assert list(layer.parameters()) == []
        assert set(layer.state_dict()) == {"shift", "matrix", "lu", "pivots", "log_abs_det"}
        skeleton = FixedLinearAffine(torch.zeros(d), torch.eye(d)).double()
        skeleton.load_state_dict(layer.state_dict())
        assert skeleton._lower == layer._lower
        x = torch.randn(5, d, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
        for method in ("forward", "inverse"):
            expected, expected_log_det = getattr(layer, method)(x)
            got, got_log_det = getattr(skeleton, method)(x)
            assert torch.equal(got, expected) and torch.equal(got_log_det, expected_log_det)
    moved = FixedLinearAffine(shift, matrices["general"]).to(torch.float32)
    assert moved.matrix.dtype == moved.lu.dtype == moved.log_abs_det.dtype == torch.float32
    assert moved.pivots.dtype == torch.int32  # integer buffers keep their dtype


def test_fixed_linear_affine_dtype_of_integer_input():
    layer = FixedLinearAffine([0, 1], [[2, 0], [1, 1]])
    assert layer.shift.is_floating_point() and layer.matrix.is_floating_point()
    assert float(layer.log_abs_det) == pytest.approx(math.log(2.0))


@pytest.mark.parametrize(
    ("shift", "matrix", "match"),
    [
        (torch.zeros(3), torch.eye(2), "shape"),
        (torch.zeros(2, 1), torch.eye(2), "shape"),
        (torch.zeros(2), torch.ones(2, 3), "shape"),
        (torch.zeros(2), torch.tensor([[1.0, 2.0], [2.0, 4.0]]), "singular"),
        (torch.zeros(2), torch.tensor([[1.0, 0.0], [0.0, 0.0]]), "singular"),
        (torch.zeros(2), torch.tensor([[1.0, 0.0], [0.0, math.nan]]), "finite"),
        # Condition 1e8: fine in float64, numerically singular in float32.
        (torch.zeros(2), torch.tensor([[1.0, 0.0], [0.0, 1e-8]]), "singular"),
    ],
)
def test_fixed_linear_affine_rejects_bad_shift_or_matrix(shift, matrix, match):
    with pytest.raises(ValueError, match=match):
        FixedLinearAffine(shift, matrix)


def test_fixed_linear_affine_accepts_in_float64_what_float32_cannot_hold():
    matrix = torch.diag(torch.tensor([1.0, 1e-8], dtype=torch.float64))
    layer = FixedLinearAffine(torch.zeros(2, dtype=torch.float64), matrix)
    assert float(layer.log_abs_det) == pytest.approx(math.log(1e-8))


# -------------------------------------------------------------- FixedBoundsMap
#: One feature of each kind: two bounds, a lower bound, an upper bound, none.
BOUNDS_LOW = torch.tensor([-1.0, 2.0, -math.inf, -math.inf], dtype=torch.float64)
BOUNDS_HIGH = torch.tensor([3.0, math.inf, 0.5, math.inf], dtype=torch.float64)


def test_bounds_map_round_trip_and_log_dets_match_autograd():
    """The four kinds of feature in one layer: x inside its bounds, the
    inverse recovers z, and both log-dets are those of the Jacobian by
    autograd (diagonal here), one the negative of the other."""
    layer = FixedBoundsMap(BOUNDS_LOW, BOUNDS_HIGH)
    z = 3.0 * torch.randn(50, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x, log_det = layer(z)
    assert bool(((x > BOUNDS_LOW) & (x < BOUNDS_HIGH)).all())
    torch.testing.assert_close(x[:, 3], z[:, 3], rtol=0, atol=0)
    back, inverse_log_det = layer.inverse(x)
    torch.testing.assert_close(back, z, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(inverse_log_det, -log_det, rtol=1e-12, atol=1e-12)
    for row in range(5):
        point = z[row : row + 1]
        assert float(log_det[row]) == pytest.approx(
            log_abs_det_jacobian(lambda p: layer(p)[0], point), abs=1e-10
        )
        assert float(inverse_log_det[row]) == pytest.approx(
            log_abs_det_jacobian(lambda p: layer.inverse(p)[0], x[row : row + 1]), abs=1e-10
        )
    assert list(layer.parameters()) == []
    assert set(layer.state_dict()) == {"low", "high"}
    assert isinstance(layer, FIXED_LAYERS)
    assert repr(layer) == "FixedBoundsMap(low=[-1.0, 2.0, -inf, -inf], high=[3.0, inf, 0.5, inf])"


@pytest.mark.parametrize(
    "low, high, grid",
    [
        (-1.0, 3.0, torch.linspace(-1.0, 3.0, 200_001, dtype=torch.float64)[1:-1]),
        (2.0, math.inf, 2.0 + torch.logspace(-12, 3, 200_001, dtype=torch.float64)),
        (-math.inf, 0.5, 0.5 - torch.logspace(-12, 3, 200_001, dtype=torch.float64)),
    ],
)
def test_a_gaussian_pushed_onto_the_bounds_is_normalised(low, high, grid):
    """A N(0.3, 0.8^2) base through the map has total mass 1 on the open
    support, by the trapezoid rule on a grid of x (fine enough that its
    error is below 1e-6): catches a wrong log-det of the inverse, which
    scores the grid, by more than the tolerance."""
    layer = FixedBoundsMap(torch.tensor([low], dtype=torch.float64), torch.tensor([high]))
    base = torch.distributions.Normal(0.3, 0.8)
    z, log_det = layer.inverse(grid[:, None])
    density = torch.exp(base.log_prob(z[:, 0]) + log_det)
    mass = float(torch.trapezoid(density, grid).abs())
    assert mass == pytest.approx(1.0, abs=1e-5)


def test_points_on_or_outside_the_bounds_have_no_density():
    layer = FixedBoundsMap(BOUNDS_LOW, BOUNDS_HIGH)
    inside = torch.tensor([0.0, 3.0, 0.0, 7.0], dtype=torch.float64)
    rows = inside.repeat(6, 1)
    rows[0, 0] = -1.0  # on the lower bound
    rows[1, 0] = 3.5  # above the upper bound
    rows[2, 1] = 2.0  # on the lower bound of a half-line
    rows[3, 2] = 0.6  # above an upper bound
    rows[4, 3] = -1e300  # a free feature takes any value
    z, log_det = layer.inverse(rows)
    assert log_det[:4].tolist() == [-math.inf] * 4
    assert bool((z[:4] == 0).all()), "rows outside go on as zeros, not NaN"
    assert bool(torch.isfinite(log_det[4:]).all())


def test_bounds_map_never_returns_a_bound():
    """z beyond what float64 resolves next to a bound (sigmoid(40) rounds to
    1, exp(-800) to 0) gives the nearest value inside."""
    layer = FixedBoundsMap(BOUNDS_LOW, BOUNDS_HIGH)
    z = torch.tensor([[40.0, -800.0, -800.0, 0.0], [-800.0, 0.0, 0.0, 0.0]], dtype=torch.float64)
    x, log_det = layer(z)
    assert bool(((x > BOUNDS_LOW) & (x < BOUNDS_HIGH)).all())
    assert x[0, 0] == torch.nextafter(
        torch.tensor(3.0, dtype=torch.float64), torch.tensor(0.0, dtype=torch.float64)
    )
    assert bool(torch.isfinite(log_det).all())


def test_bounds_map_keeps_the_digits_near_either_bound():
    """x a trillionth from a bound comes back from z with its distance to
    that bound to 1e-12 relative: each side of the logistic map is computed
    from its own bound (low + width * sigmoid(z) alone loses 4 digits at the
    upper one)."""
    layer = FixedBoundsMap(torch.tensor([-1.0]), torch.tensor([1.0])).double()
    x = torch.tensor([[-1.0 + 1e-12], [1.0 - 1e-12]], dtype=torch.float64)
    z, _ = layer.inverse(x)
    back, _ = layer(z)
    distance = torch.tensor([1e-12, 1e-12], dtype=torch.float64)
    to_bound = torch.stack([back[0, 0] + 1.0, 1.0 - back[1, 0]])
    torch.testing.assert_close(
        to_bound / distance, torch.ones(2, dtype=torch.float64), rtol=1e-4, atol=0
    )
    # exactly: the recovered distance is the float64 one of x itself
    torch.testing.assert_close(
        to_bound, torch.stack([x[0, 0] + 1.0, 1.0 - x[1, 0]]), rtol=1e-12, atol=0
    )


@pytest.mark.parametrize(
    "low, high, match",
    [
        ([0.0, 1.0], [1.0], "same shape"),
        ([[0.0]], [[1.0]], "1-D"),
        ([0.0, math.nan], [1.0, 2.0], "NaN"),
        ([0.0, 2.0], [1.0, 2.0], r"feature\(s\) \[1\]"),
        ([math.inf], [math.inf], "below"),
        ([0.0, -1e308], [1.0, 1e308], r"overflows the dtype in feature\(s\) \[1\]"),
    ],
)
def test_bounds_map_rejects_bad_bounds(low, high, match):
    with pytest.raises(ValueError, match=match):
        FixedBoundsMap(*(torch.tensor(side, dtype=torch.float64) for side in (low, high)))


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


def test_split_bounds_map_takes_only_a_last_bounds_map():
    """The map onto the bounds is split off where it ends the layers, as a
    model fitted with feature_bounds has it, and nowhere else: fails if a map
    in another place is taken, or a last one left in."""
    bounds = FixedBoundsMap(BOUNDS_LOW, BOUNDS_HIGH)
    affine = FixedAffine(torch.zeros(4, dtype=torch.float64), torch.ones(4, dtype=torch.float64))
    assert split_bounds_map([affine, bounds]) == ([affine], bounds)
    assert split_bounds_map([bounds, affine]) == ([bounds, affine], None)
    assert split_bounds_map([]) == ([], None)
    layers, found = split_bounds_map(torch.nn.ModuleList([bounds]))
    assert layers == [] and found is bounds


# -------------------------------------------------------- MaskedAffineCoupling
def _perturbed_real_nvp(n_features: int, dtype: torch.dtype) -> list:
    """The built-in RealNVP's layers with every parameter moved off its start."""
    torch.manual_seed(3)
    layers = build_flow_layers("realnvp", n_features, n_layers=4, hidden_units=16)
    with torch.no_grad():
        for parameter in torch.nn.ModuleList(layers).parameters():
            parameter.normal_(std=0.3)
    return [layer.to(dtype) for layer in layers]


def _as_normflows(layer: MaskedAffineCoupling) -> nf.flows.MaskedAffineFlow:
    """The same layer as normflows builds it: its own class, ``LeakyReLU(0)``."""
    networks = {}
    for name in ("s", "t"):
        network = copy.deepcopy(getattr(layer, name))
        for index, module in enumerate(network.net):
            if isinstance(module, torch.nn.ReLU):
                network.net[index] = torch.nn.LeakyReLU(0.0)
        networks[name] = network
    return nf.flows.MaskedAffineFlow(layer.b[0].clone(), networks["t"], networks["s"])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n_features", [1, 5])
def test_masked_affine_coupling_gives_normflows_values_bit_for_bit(n_features, dtype):
    """The faster coupling and its in-place ReLU change no value, log-det or
    gradient of normflows' MaskedAffineFlow (same operations in the same
    order), forward and inverse, so that fitted models and saved states mean
    what they meant."""
    ours = _perturbed_real_nvp(n_features, dtype)
    theirs = [_as_normflows(layer) for layer in ours]
    assert all(type(layer.s.net[1]) is torch.nn.ReLU for layer in ours)
    z = 2.0 * torch.randn(64, n_features, generator=torch.Generator().manual_seed(0), dtype=dtype)
    for own, reference in zip(ours, theirs, strict=True):
        assert own.state_dict().keys() == reference.state_dict().keys()
        for method in ("forward", "inverse"):
            points = z.clone().requires_grad_(True)
            reference_points = z.clone().requires_grad_(True)
            x, log_det = getattr(own, method)(points)
            expected_x, expected_log_det = getattr(reference, method)(reference_points)
            torch.testing.assert_close(x, expected_x, rtol=0, atol=0)
            torch.testing.assert_close(log_det, expected_log_det, rtol=0, atol=0)
            (x.sin().sum() + log_det.sum()).backward()
            (expected_x.sin().sum() + expected_log_det.sum()).backward()
            torch.testing.assert_close(points.grad, reference_points.grad, rtol=0, atol=0)
            for parameter, expected in zip(own.parameters(), reference.parameters(), strict=True):
                torch.testing.assert_close(parameter.grad, expected.grad, rtol=0, atol=0)
                parameter.grad, expected.grad = None, None


def test_masked_affine_coupling_loads_a_normflows_state_and_inverts_itself():
    """A state saved from normflows' layer loads into ours, and the loaded layer
    inverts its forward map with opposite log-dets."""
    reference = _as_normflows(_perturbed_real_nvp(4, torch.float64)[1])
    ours = build_flow_layers("realnvp", 4, n_layers=2, hidden_units=16)[1].double()
    ours.load_state_dict(reference.state_dict())
    z = torch.randn(32, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    x, log_det = ours(z)
    torch.testing.assert_close(x, reference(z)[0], rtol=0, atol=0)
    back, inverse_log_det = ours.inverse(x)
    torch.testing.assert_close(back, z, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(inverse_log_det, -log_det, rtol=1e-12, atol=1e-12)


def test_realnvp_draws_its_initial_weights_in_the_order_it_always_did():
    """The same seed gives the same starting flow as the layers built from
    normflows' classes, log-scale network first (a fit's ``random_state``
    keeps giving the model it gave)."""
    torch.manual_seed(0)
    ours = build_flow_layers("realnvp", 4, n_layers=2, hidden_units=8)
    torch.manual_seed(0)
    theirs = []
    for mask in ([1.0, 0.0, 1.0, 0.0], [0.0, 1.0, 0.0, 1.0]):
        sizes = [4, 8, 8, 4]
        scale = nf.nets.MLP(
            sizes, init_zeros=True, output_fn="tanh", score_scale=1 / 3, output_scale=3.0
        )
        theirs.append(
            nf.flows.MaskedAffineFlow(
                torch.tensor(mask), nf.nets.MLP(sizes, init_zeros=True), scale
            )
        )
    for own, reference in zip(ours, theirs, strict=True):
        expected = reference.state_dict()
        for name, tensor in own.state_dict().items():
            torch.testing.assert_close(tensor, expected[name], rtol=0, atol=0)
