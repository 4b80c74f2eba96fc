"""The scikit-learn estimator."""

from sktt_flow.estimator._density import TensorizingFlowDensity

__all__ = ["TensorizingFlowDensity"]
