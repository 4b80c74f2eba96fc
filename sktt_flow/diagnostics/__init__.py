"""Diagnostics of fitted models: importance weights, ELBO, ESS, log Z, paired comparisons."""

from sktt_flow.diagnostics.importance import ImportanceDiagnostics, importance_diagnostics
from sktt_flow.diagnostics.paired import clearly_better

__all__ = ["ImportanceDiagnostics", "clearly_better", "importance_diagnostics"]
