"""The maximum-likelihood driver, :func:`sktt_flow.tt.fit_samples.fit_samples`.

Its behaviour (the start, the fit, the errors) is tested through
:meth:`TTDistribution.from_samples` in ``test_estimation.py``; these tests pin
the function to the classmethod.
"""

import inspect

import torch

from sktt_flow import TTDistribution
from sktt_flow.tt.fit_samples import fit_samples


def test_the_classmethod_has_the_signature_of_the_function():
    method = inspect.signature(TTDistribution.from_samples)
    function = inspect.signature(fit_samples)
    assert method == function
    assert next(iter(method.parameters)) == "X"


def test_the_classmethod_delegates_to_the_function():
    X = torch.randn(300, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    options = {"tt_rank": 3, "n_basis": 6, "max_iter": 3, "random_state": 7}
    method = TTDistribution.from_samples(X, **options)
    function = fit_samples(X, **options)
    assert type(function) is TTDistribution
    for a, b in zip(method.cores, function.cores, strict=True):
        assert torch.equal(a, b)
    assert function.training_history.best_epoch == method.training_history.best_epoch
