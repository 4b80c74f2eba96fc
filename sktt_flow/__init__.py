"""sktt_flow: tensorizing flows for scikit-learn users.

A tensorizing flow is a normalizing flow whose Gaussian base is replaced by a
tensor-train distribution that already captures the multimodal shape of the
target (Khoo, Lindsey and Zhao, arXiv:2305.02460, 2023).
"""

from sktt_flow import targets
from sktt_flow.estimator import TensorizingFlowDensity
from sktt_flow.tt.distribution import TTDistribution

__version__ = "0.1.0.dev0"

__all__ = ["TTDistribution", "TensorizingFlowDensity", "__version__", "targets"]
