"""Where the mass of a target lies: modes, Laplace covariances, boxes and coordinates.

The building blocks of an automatic box and an affine preconditioner for the
TT base in variational mode: :func:`find_modes` (multi-start ascent, Hessians,
Laplace covariances, divergence detection), :func:`affine_from_laplace`
(coordinates ``x = shift + matrix y`` that standardise the Laplace
approximation), :func:`box_from_modes` (the box in those coordinates) and,
where no mode's Laplace Gaussian describes the mass (a funnel),
:func:`explore_mass` (Langevin chains whose quantiles give a box).
This layer imports only torch, numpy and :mod:`sktt_flow.utils`.
"""

from sktt_flow.geometry.box import (
    AFFINE_KINDS,
    DEFAULT_N_STD,
    adjust_box,
    affine_from_laplace,
    box_from_modes,
    box_of_weighted_draws,
    gaussian_tail_mass,
    mass_beyond_sides,
    widen_box_at_edges,
)
from sktt_flow.geometry.exploration import Exploration, explore_mass
from sktt_flow.geometry.modes import FATES, ModeSearch, find_modes, laplace_covariance

__all__ = [
    "AFFINE_KINDS",
    "DEFAULT_N_STD",
    "FATES",
    "Exploration",
    "ModeSearch",
    "adjust_box",
    "affine_from_laplace",
    "box_from_modes",
    "box_of_weighted_draws",
    "explore_mass",
    "find_modes",
    "gaussian_tail_mass",
    "laplace_covariance",
    "mass_beyond_sides",
    "widen_box_at_edges",
]
