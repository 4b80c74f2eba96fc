"""Flows built by name: the identity at construction, exact log-determinants
of every layer once perturbed, and the checks on names and callables.

Everything runs in float64. Log-determinants are compared with
``torch.autograd.functional.jacobian`` on single points, where both sides agree
to round-off: 1e-9 leaves several orders of magnitude for log-dets of order
one to ten.
"""

import normflows as nf
import pytest
import torch

from sktt_flow.flows import FLOW_NAMES, TensorizingFlow, build_flow_layers
from sktt_flow.flows.builders import MAX_LOG_SCALE
from tests.conftest import random_distribution
from tests.flows.reference import log_abs_det_jacobian, perturb


def base_for(n_features, seed=0):
    ranks = (1,) + (2,) * (n_features - 1) + (1,)
    return random_distribution(ranks, 6, [[-2.0, 2.0]] * n_features, seed=seed)


def points(n_features, n=50, seed=1):
    """Points inside and outside the box [-2, 2]^d and beyond the spline bound 5."""
    z = 2.0 * torch.randn(n, n_features, generator=torch.Generator().manual_seed(seed))
    z[0] = 7.0
    return z.double()


def test_flow_names():
    assert FLOW_NAMES == ("realnvp", "nsf", "maf", "none")


@pytest.mark.parametrize("n_features", [1, 2, 5])
@pytest.mark.parametrize("flow", FLOW_NAMES)
def test_every_flow_is_the_identity_at_construction(flow, n_features):
    """The flow's log-density is the base's: exactly for the affine flows (zero
    last layers); to 1e-6 for the splines, whose unit-derivative bias is set in
    float32 before the cast to float64 (relative error ~1e-7 per layer)."""
    torch.manual_seed(0)
    base = base_for(n_features)
    layers = build_flow_layers(flow, n_features, n_layers=3, hidden_units=16)
    assert (len(layers) == 0) == (flow == "none")
    model = TensorizingFlow(base, layers).double()
    x = points(n_features)
    with torch.no_grad():
        log_prob, expected = model.log_prob(x), base.log_prob(x)
    tolerance = 1e-6 if flow == "nsf" else 0.0
    torch.testing.assert_close(log_prob, expected, rtol=0, atol=tolerance)


@pytest.mark.parametrize("n_features", [1, 3])
@pytest.mark.parametrize("flow", ["realnvp", "nsf", "maf"])
def test_each_perturbed_layer_has_the_log_det_of_its_jacobian(flow, n_features):
    """After perturbing the conditioners (not identity any more): per layer,
    forward and inverse log-dets equal autograd's log |det J| and inverse
    undoes forward to round-off."""
    torch.manual_seed(0)
    layers = build_flow_layers(flow, n_features, n_layers=3, hidden_units=16)
    module = torch.nn.ModuleList(layers).double()
    perturb(module, 0.3, seed=1)
    z = 0.75 * points(n_features, n=4, seed=2)  # inside the spline interval [-5, 5]
    largest = 0.0
    for layer in layers:
        with torch.no_grad():
            x, log_det = layer(z)
            back, inverse_log_det = layer.inverse(x)
        torch.testing.assert_close(back, z, rtol=1e-10, atol=1e-10)
        largest = max(largest, float(log_det.abs().max()))
        for i in range(z.shape[0]):
            expected = log_abs_det_jacobian(layer.forward, z[i : i + 1])
            assert float(log_det[i]) == pytest.approx(expected, abs=1e-9)
            expected = log_abs_det_jacobian(layer.inverse, x[i : i + 1])
            assert float(inverse_log_det[i]) == pytest.approx(expected, abs=1e-9)
        z = x
    assert largest > 0.1  # the check is not on near-identity maps


@pytest.mark.parametrize("flow", ["realnvp", "maf"])
def test_affine_log_scales_are_bounded(flow):
    """Log-scales are S tanh(u / S) with S = MAX_LOG_SCALE = 3: even wild
    parameters give finite log-dets of at most 3 d per layer."""
    torch.manual_seed(0)
    layers = build_flow_layers(flow, 3, n_layers=2, hidden_units=16)
    perturb(torch.nn.ModuleList(layers).double(), 50.0, seed=3)
    z = points(3, n=100, seed=4)
    for layer in layers:
        with torch.no_grad():
            _, log_det = layer(z)
        assert torch.isfinite(log_det).all()
        assert float(log_det.abs().max()) <= MAX_LOG_SCALE * 3


def test_layer_counts_and_kinds():
    assert len(build_flow_layers("realnvp", 3, n_layers=4, hidden_units=8)) == 4
    assert len(build_flow_layers("nsf", 3, n_layers=4, hidden_units=8)) == 4
    # maf: every other layer sits between a permutation and its undoing.
    maf = build_flow_layers("maf", 3, n_layers=4, hidden_units=8)
    assert len(maf) == 2 + 2 * 3
    assert sum(isinstance(layer, nf.flows.Permute) for layer in maf) == 2
    assert len(build_flow_layers("maf", 1, n_layers=4, hidden_units=8)) == 4
    assert build_flow_layers("none", 3) == []


def test_a_callable_flow_is_used_as_given():
    made = []

    def flow(n_features):
        made.append(n_features)
        return [nf.flows.Permute(n_features, mode="swap"), nf.flows.ActNorm(n_features)]

    layers = build_flow_layers(flow, 4)
    assert made == [4]
    assert isinstance(layers, list) and len(layers) == 2
    assert isinstance(layers[1], nf.flows.ActNorm)
    # A tuple is accepted too, and returned as a list.
    assert isinstance(build_flow_layers(lambda d: tuple(flow(d)), 4), list)


@pytest.mark.parametrize(
    "bad",
    [
        lambda d: nf.flows.ActNorm(d),  # a module, not a list
        lambda d: [torch.zeros(d)],  # not modules
        lambda d: [torch.nn.Linear(d, d)],  # a module without inverse
        lambda d: None,
    ],
)
def test_a_callable_returning_no_list_of_flows_is_a_type_error(bad):
    with pytest.raises(TypeError, match="list of normflows flow layers"):
        build_flow_layers(bad, 2)


@pytest.mark.parametrize("name", ["RealNVP", "glow", "", 3])
def test_an_unknown_name_is_a_value_error(name):
    with pytest.raises(ValueError, match="flow must be one of"):
        build_flow_layers(name, 2)
