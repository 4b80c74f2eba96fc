"""Normalizing flows on a tensor-train base: layers, builders by name, the model."""

from sktt_flow.flows.builders import FLOW_NAMES, build_flow_layers
from sktt_flow.flows.coordinates import coordinate_layers, pull_back
from sktt_flow.flows.gaussian import GaussianBase
from sktt_flow.flows.layers import AffineAutoregressive, FixedAffine, FixedLinearAffine
from sktt_flow.flows.model import TensorizingFlow

__all__ = [
    "FLOW_NAMES",
    "AffineAutoregressive",
    "FixedAffine",
    "FixedLinearAffine",
    "GaussianBase",
    "TensorizingFlow",
    "build_flow_layers",
    "coordinate_layers",
    "pull_back",
]
