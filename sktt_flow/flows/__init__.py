"""Normalizing flows on a tensor-train base: layers, builders by name, the model."""

from sktt_flow.flows.builders import (
    FLOW_NAMES,
    SPLINE_MARGIN,
    build_flow_layers,
    spline_tail_bound,
)
from sktt_flow.flows.coordinates import coordinate_layers, pull_back
from sktt_flow.flows.gaussian import GaussianBase, GaussianMixtureBase
from sktt_flow.flows.layers import (
    FIXED_LAYERS,
    AffineAutoregressive,
    FixedAffine,
    FixedBoundsMap,
    FixedLinearAffine,
    MaskedAffineCoupling,
    split_bounds_map,
    split_feature_map,
)
from sktt_flow.flows.marginal import FixedMarginalNormalMap, QuantileNormalMixture
from sktt_flow.flows.model import TensorizingFlow, defensive_mixture_log_prob
from sktt_flow.flows.symmetric import SymmetrizedBase, sign_flip_group
from sktt_flow.flows.tempered import (
    TemperedLayerReport,
    TemperedReport,
    TemperedTTBase,
    fit_tempered_base,
)

__all__ = [
    "FIXED_LAYERS",
    "FLOW_NAMES",
    "SPLINE_MARGIN",
    "AffineAutoregressive",
    "FixedAffine",
    "FixedBoundsMap",
    "FixedLinearAffine",
    "FixedMarginalNormalMap",
    "GaussianBase",
    "GaussianMixtureBase",
    "MaskedAffineCoupling",
    "QuantileNormalMixture",
    "SymmetrizedBase",
    "TemperedLayerReport",
    "TemperedReport",
    "TemperedTTBase",
    "TensorizingFlow",
    "build_flow_layers",
    "coordinate_layers",
    "defensive_mixture_log_prob",
    "fit_tempered_base",
    "pull_back",
    "sign_flip_group",
    "spline_tail_bound",
    "split_bounds_map",
    "split_feature_map",
]
