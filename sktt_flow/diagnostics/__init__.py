"""Diagnostics of fitted models: importance weights, ELBO, ESS, log Z."""

from sktt_flow.diagnostics.importance import ImportanceDiagnostics, importance_diagnostics

__all__ = ["ImportanceDiagnostics", "importance_diagnostics"]
