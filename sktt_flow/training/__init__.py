"""Training loops of a tensorizing flow: forward KL on data, reverse KL on a target
and the mass-covering forward KL on it."""

from sktt_flow.training.forward_kl import fit_forward_kl, passes_of_patience
from sktt_flow.training.futility import ClearGainWatch
from sktt_flow.training.mass_covering import fit_mass_covering
from sktt_flow.training.mixture_weight import (
    best_mixture_score,
    fit_defensive_weight,
    fit_mixture,
    fit_variational_mixture_weight,
)
from sktt_flow.training.reverse_kl import STEPS_PER_ITERATION, check_differentiable, fit_reverse_kl

__all__ = [
    "STEPS_PER_ITERATION",
    "ClearGainWatch",
    "best_mixture_score",
    "check_differentiable",
    "fit_defensive_weight",
    "fit_forward_kl",
    "fit_mass_covering",
    "fit_mixture",
    "fit_reverse_kl",
    "fit_variational_mixture_weight",
    "passes_of_patience",
]
