"""Tensor-train mathematics: bases, train algebra, the TT distribution.

This layer imports torch, numpy and normflows' base class only.
"""

from sktt_flow.tt.distribution import TTDistribution

__all__ = ["TTDistribution"]
