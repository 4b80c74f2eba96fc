"""Build the layers of a flow by name, each starting at the identity map.

Starting at the identity matters: the flow then starts from the TT base, and
training, which keeps its best state, can only improve on the base.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import normflows as nf
import torch
from normflows.utils.splines import DEFAULT_MIN_DERIVATIVE

from sktt_flow.flows.layers import AffineAutoregressive, MaskedAffineCoupling

__all__ = ["FLOW_NAMES", "SPLINE_MARGIN", "build_flow_layers", "spline_tail_bound"]

#: Names accepted by :func:`build_flow_layers`.
FLOW_NAMES = ("realnvp", "nsf", "maf", "none")

#: Margin of the interval where spline layers act over the base's reach:
#: points a little outside the box still fall where the splines bend.
SPLINE_MARGIN = 1.2

#: Bound of the log-scale of one affine coupling, ``S tanh(u / S)``: deep
#: affine couplings with an unbounded ``exp`` scale are the usual source of
#: infinite losses (normflows' own examples skip such steps).
MAX_LOG_SCALE = 3.0


def _parity_mask(n_features: int, layer: int) -> torch.Tensor:
    if n_features == 1:
        # One coordinate: condition on nothing, so each layer is an affine map
        # with learned constants.
        return torch.zeros(1)
    mask = torch.zeros(n_features)
    mask[layer % 2 :: 2] = 1.0
    return mask


def _with_in_place_relu(network: nf.nets.MLP) -> nf.nets.MLP:
    """``network`` with its ``LeakyReLU(0)`` activations replaced by an
    in-place ``ReLU``: the same values (up to the sign of zero, which no sum
    after it sees) and the same ``state_dict``, in one pass over the hidden
    units instead of a pass and a fresh tensor (half the time of the
    activations, a tenth of a coupling's)."""
    for index, module in enumerate(network.net):
        if isinstance(module, torch.nn.LeakyReLU) and module.negative_slope == 0.0:
            network.net[index] = torch.nn.ReLU(inplace=True)
    return network


def _real_nvp_networks(n_features: int, hidden_units: int) -> tuple[nf.nets.MLP, nf.nets.MLP]:
    """The translation and log-scale networks of one coupling, as normflows
    builds them: two hidden layers, a zero last layer (the identity map), the
    log-scale bounded by ``MAX_LOG_SCALE tanh(u / MAX_LOG_SCALE)``."""
    sizes = [n_features, hidden_units, hidden_units, n_features]
    # the scale first: the order of the draws of the initial weights, so that
    # a random_state gives the flow it always gave
    scale = nf.nets.MLP(
        sizes,
        init_zeros=True,
        output_fn="tanh",
        score_scale=1.0 / MAX_LOG_SCALE,
        output_scale=MAX_LOG_SCALE,
    )
    translation = nf.nets.MLP(sizes, init_zeros=True)
    return translation, scale


def _real_nvp(n_features: int, n_layers: int, hidden_units: int) -> list[nf.flows.Flow]:
    layers = []
    for layer in range(n_layers):
        translation, scale = _real_nvp_networks(n_features, hidden_units)
        mask = _parity_mask(n_features, layer)
        layers.append(
            MaskedAffineCoupling(
                mask, _with_in_place_relu(translation), _with_in_place_relu(scale)
            )
        )
    return layers


def _neural_spline(
    n_features: int, n_layers: int, hidden_units: int, tail_bound: float
) -> list[nf.flows.Flow]:
    if n_features == 1:
        return [
            nf.flows.AutoregressiveRationalQuadraticSpline(
                1, 2, hidden_units, tail_bound=tail_bound, permute_mask=False, init_identity=True
            )
            for _ in range(n_layers)
        ]
    layers = []
    for layer in range(n_layers):
        coupling = nf.flows.CoupledRationalQuadraticSpline(
            n_features, 2, hidden_units, tail_bound=tail_bound, reverse_mask=bool(layer % 2)
        )
        # What normflows' init_identity does for its other spline layers (this
        # one lacks the option in 1.7.3): equal bins and unit derivatives.
        final = coupling.prqct.transform_net.final_layer
        with torch.no_grad():
            final.weight.zero_()
            final.bias.fill_(math.log(math.expm1(1.0 - DEFAULT_MIN_DERIVATIVE)))
        layers.append(coupling)
    return layers


def _masked_autoregressive(
    n_features: int, n_layers: int, hidden_units: int
) -> list[nf.flows.Flow]:
    layers: list[nf.flows.Flow] = []
    for layer in range(n_layers):
        autoregressive = nf.flows.Reverse(AffineAutoregressive(n_features, hidden_units))
        if layer % 2 and n_features > 1:
            # Every other layer sees the coordinates in another order. The
            # permutation is undone right after, so that the flow stays the
            # identity at construction.
            permutation = nf.flows.Permute(n_features, mode="swap")
            layers += [permutation, autoregressive, nf.flows.Reverse(permutation)]
        else:
            layers.append(autoregressive)
    return layers


def build_flow_layers(
    flow: str | Callable[[int], list],
    n_features: int,
    *,
    n_layers: int = 8,
    hidden_units: int = 64,
    tail_bound: float = 5.0,
) -> list[nf.flows.Flow]:
    """The layers of a flow, latent to data, at the identity map.

    Parameters
    ----------
    flow : {"realnvp", "nsf", "maf", "none"} or callable
        - ``"realnvp"``: affine couplings on alternating coordinates
          (:class:`~sktt_flow.flows.layers.MaskedAffineCoupling`, normflows'
          ``MaskedAffineFlow`` with fewer passes over the points) with the
          log-scale bounded by :data:`MAX_LOG_SCALE`;
        - ``"nsf"``: rational-quadratic neural spline couplings
          (``CoupledRationalQuadraticSpline``); the splines act on
          ``[-tail_bound, tail_bound]`` and are linear outside;
        - ``"maf"``: masked autoregressive affine layers
          (:class:`~sktt_flow.flows.layers.AffineAutoregressive`) with density
          evaluation in one pass and sampling in ``d`` passes;
        - ``"none"``: no layer (the TT base alone);
        - a callable ``flow(n_features) -> list`` of normflows flows. It is
          used as given: start it near the identity for best results.
    n_features : int
    n_layers : int, default=8
        Coupling or autoregressive layers.
    hidden_units : int, default=64
        Width of the conditioner networks.
    tail_bound : float, default=5.0
        Half-width of the spline interval (``"nsf"`` only): cover the box of
        the TT base.

    Returns
    -------
    list of normflows.flows.Flow
    """
    if callable(flow):
        layers = flow(n_features)
        if not isinstance(layers, (list, tuple)) or not all(
            isinstance(layer, torch.nn.Module)
            and hasattr(layer, "forward")
            and hasattr(layer, "inverse")
            for layer in layers
        ):
            raise TypeError(
                "A flow callable must return a list of normflows flow layers "
                f"(modules with forward and inverse); got {type(layers).__name__}."
            )
        return list(layers)
    if flow == "none":
        return []
    if flow == "realnvp":
        return _real_nvp(n_features, n_layers, hidden_units)
    if flow == "nsf":
        return _neural_spline(n_features, n_layers, hidden_units, tail_bound)
    if flow == "maf":
        return _masked_autoregressive(n_features, n_layers, hidden_units)
    raise ValueError(f"flow must be one of {FLOW_NAMES} or a callable, got {flow!r}.")


def spline_tail_bound(base, points: torch.Tensor | None = None) -> float:
    """Half-width of the interval where spline flows act on a base's points.

    ``SPLINE_MARGIN`` times the farthest reach from zero of the base's box
    (a :class:`~sktt_flow.tt.TTDistribution`, which has ``low`` and
    ``high``), or of ``points`` (for a base without a box, such as a
    Gaussian on standardised data); 1 when neither is there, since no spline
    layer then uses it.
    """
    if hasattr(base, "low") and hasattr(base, "high"):
        extent = float(torch.maximum(base.low.abs(), base.high.abs()).max())
    elif points is not None:
        extent = float(points.abs().max())
    else:
        return 1.0
    return SPLINE_MARGIN * extent
