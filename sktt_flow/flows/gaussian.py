"""A diagonal Gaussian base: the ordinary flow that tensorizing flows improve on."""

from __future__ import annotations

import math

import torch
from normflows.distributions import BaseDistribution

__all__ = ["GaussianBase"]


class GaussianBase(BaseDistribution):
    r"""Fixed diagonal Gaussian ``N(loc, diag(scale^2))``, a normflows base.

    The base of an ordinary normalizing flow, for comparisons with the TT
    base (``TensorizingFlowDensity(base="gaussian")``): same flows, same
    training, only the base differs. Unlike ``normflows.distributions.DiagGaussian``
    it has no trainable parameters, its constants are buffers that follow
    ``.to()``, and :meth:`sample` takes a ``torch.Generator``.

    Parameters
    ----------
    loc, scale : tensors of shape (d,)
        Mean and standard deviations (positive).
    """

    def __init__(self, loc: torch.Tensor, scale: torch.Tensor):
        super().__init__()
        loc = torch.as_tensor(loc)
        if not loc.is_floating_point():
            loc = loc.to(torch.get_default_dtype())
        scale = torch.as_tensor(scale, dtype=loc.dtype)
        if loc.ndim != 1 or scale.shape != loc.shape:
            raise ValueError("loc and scale must be 1-D tensors of the same shape.")
        if not bool((scale > 0).all()):
            raise ValueError("scale must be positive.")
        self.register_buffer("loc", loc.clone())
        self.register_buffer("scale", scale.clone())

    @property
    def n_features(self) -> int:
        return int(self.loc.shape[0])

    def log_prob(self, z: torch.Tensor, context=None) -> torch.Tensor:
        standardized = (z - self.loc) / self.scale
        return -0.5 * standardized.square().sum(dim=1) - (
            torch.log(self.scale).sum() + 0.5 * self.n_features * math.log(2 * math.pi)
        )

    def sample(self, num_samples: int = 1, context=None, generator=None) -> torch.Tensor:
        noise = torch.randn(
            int(num_samples),
            self.n_features,
            generator=generator,
            dtype=self.loc.dtype,
            device=self.loc.device,
        )
        return self.loc + self.scale * noise

    def forward(self, num_samples: int = 1, context=None, generator=None):
        z = self.sample(num_samples, generator=generator)
        return z, self.log_prob(z)
