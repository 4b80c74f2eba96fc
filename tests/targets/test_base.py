"""The interface every target shares: shapes, dtypes, autograd, errors, sampling."""

import numpy as np
import pytest
import torch

from sktt_flow.targets import (
    Banana,
    DoubleRosenbrock,
    GinzburgLandau1D,
    GinzburgLandau2D,
    ManyWell,
    MixtureOfGaussians,
    NealsFunnel,
    Target,
)
from tests.conftest import requires_cuda

TARGETS = {
    "gl1d": lambda: GinzburgLandau1D(6),
    "gl2d": lambda: GinzburgLandau2D(side=3),
    "mixture": lambda: MixtureOfGaussians.random_modes(3, 4, seed=0),
    "paper": lambda: MixtureOfGaussians.paper_30d_5mode(6),
    "rosenbrock": lambda: DoubleRosenbrock(5),
    "funnel": lambda: NealsFunnel(4),
    "banana": lambda: Banana(3),
    "manywell": lambda: ManyWell(4),
}


@pytest.fixture(params=sorted(TARGETS))
def target(request):
    return TARGETS[request.param]()


def _points(target, m=16, seed=0):
    """Points in the middle half of the suggested box."""
    low, high = target.domain[:, 0], target.domain[:, 1]
    centre, half = 0.5 * (low + high), 0.25 * (high - low)
    if isinstance(target, NealsFunnel):  # keep the funnel's scales moderate
        half = np.minimum(half, 2.0)
    rng = np.random.default_rng(seed)
    return torch.from_numpy(centre + half * rng.uniform(-1, 1, size=(m, target.n_features)))


def test_is_a_target_with_a_domain(target):
    assert isinstance(target, Target)
    domain = target.domain
    assert domain.shape == (target.n_features, 2) and domain.dtype == np.float64
    assert np.all(domain[:, 0] < domain[:, 1])
    domain[0, 0] = 1e9  # a copy: the target's box is unchanged
    assert target.domain[0, 0] != 1e9
    assert type(target).__name__ in repr(target)
    assert target.n_modes >= 1


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_log_prob_shape_and_dtype(target, dtype):
    x = _points(target).to(dtype)
    values = target.log_prob(x)
    assert values.shape == (16,) and values.dtype == dtype
    assert torch.all(torch.isfinite(values))
    reference = target.log_prob(x.double())
    rtol = 1e-5 if dtype == torch.float32 else 1e-14
    torch.testing.assert_close(values.double(), reference, rtol=rtol, atol=rtol * 10)


def test_log_prob_accepts_arrays_and_integers(target):
    x = _points(target)
    torch.testing.assert_close(target.log_prob(x.numpy()), target.log_prob(x))
    integers = torch.zeros(2, target.n_features, dtype=torch.int64)
    assert target.log_prob(integers).dtype == torch.float64


def test_log_prob_gradient_matches_finite_differences(target):
    x = _points(target, m=3, seed=1).requires_grad_(True)
    (gradient,) = torch.autograd.grad(target.log_prob(x).sum(), x)
    eps = 1e-6
    numeric = torch.zeros_like(x)
    with torch.no_grad():
        for j in range(target.n_features):
            step = torch.zeros_like(x)
            step[:, j] = eps
            numeric[:, j] = (target.log_prob(x + step) - target.log_prob(x - step)) / (2 * eps)
    scale = 1.0 + gradient.abs()
    assert torch.all((gradient - numeric).abs() <= 1e-5 * scale)


@pytest.mark.parametrize(
    ("shape", "match"), [((5,), "2-D"), ((2, 3, 4), "2-D"), ((3, 99), "columns")]
)
def test_wrong_shapes_raise_value_error(target, shape, match):
    with pytest.raises(ValueError, match=match):
        target.log_prob(torch.zeros(shape))
    with pytest.raises(ValueError, match=match):
        target.mode_of(torch.zeros(shape))


def test_mode_of_labels(target):
    labels = target.mode_of(_points(target))
    assert labels.dtype == torch.int64 and labels.shape == (16,)
    assert torch.all((labels >= 0) & (labels < target.n_modes))


def test_sample_contract(target):
    try:
        x = target.sample(20, random_state=0)
    except NotImplementedError as error:
        assert "no exact sampler" in str(error)
        return
    assert x.shape == (20, target.n_features) and x.dtype == torch.float64
    torch.testing.assert_close(x, target.sample(20, random_state=0))
    assert not torch.equal(x, target.sample(20, random_state=1))
    generator = torch.Generator().manual_seed(5)
    assert target.sample(3, random_state=generator).shape == (3, target.n_features)
    assert torch.all(torch.isfinite(target.log_prob(x)))
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="positive integer"):
            target.sample(bad)


def test_log_normalizer_type(target):
    value = target.log_normalizer
    if isinstance(target, GinzburgLandau2D):
        assert value is None
    else:
        assert isinstance(value, float) and np.isfinite(value)


def test_parameter_validation():
    with pytest.raises(ValueError, match="n_features"):
        GinzburgLandau1D(0)
    with pytest.raises(ValueError, match="beta"):
        GinzburgLandau1D(4, beta=-1.0)
    with pytest.raises(ValueError, match="n_features"):
        DoubleRosenbrock(2)
    with pytest.raises(ValueError, match="curvature"):
        Banana(curvature=-0.1)
    with pytest.raises(ValueError, match="scale"):
        NealsFunnel(scale=0.0)


@requires_cuda
def test_log_prob_on_cuda(target):
    x = _points(target).cuda().requires_grad_(True)
    values = target.log_prob(x)
    assert values.device == x.device
    torch.testing.assert_close(values.cpu(), target.log_prob(x.detach().cpu()))
    values.sum().backward()
    assert x.grad.device == x.device
    assert target.mode_of(x.detach()).device == x.device


def test_pickle_round_trip(target):
    import pickle

    clone = pickle.loads(pickle.dumps(target))
    x = _points(target)
    torch.testing.assert_close(clone.log_prob(x), target.log_prob(x))
    assert repr(clone) == repr(target)
