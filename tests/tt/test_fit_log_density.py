"""The TT-cross driver, :func:`sktt_flow.tt.fit_log_density.fit_log_density`.

Its behaviour (cross, the self-check, ``n_basis="auto"``, the warnings) is
tested through :meth:`TTDistribution.from_log_density` in ``test_cross.py``;
these tests pin the function to the classmethod.
"""

import inspect

import pytest
import torch
from sklearn.exceptions import ConvergenceWarning

from sktt_flow import TTDistribution
from sktt_flow.tt.fit_log_density import fit_log_density


def high_rank_log_h(x):  # rank 2 and 6 nodes cannot represent it
    return 5 * torch.sin(10 * x.prod(1)) - (x.sum(1) - 0.5) ** 2


POOR = {"tt_rank": 2, "n_basis": 6, "tol": 1e-12, "max_sweeps": 3, "random_state": 0}


def test_the_classmethod_has_the_signature_of_the_function():
    method = inspect.signature(TTDistribution.from_log_density)
    function = inspect.signature(fit_log_density)
    assert method == function
    assert list(method.parameters)[:2] == ["log_density", "domain"]


def test_the_classmethod_delegates_to_the_function():
    options = {"tt_rank": 2, "n_basis": 8, "n_seeds": 8, "n_seed_steps": 3, "random_state": 0}

    def log_h(x):
        return -(x**2).sum(1)

    method = TTDistribution.from_log_density(log_h, [[-3, 3]] * 3, **options)
    function = fit_log_density(log_h, [[-3, 3]] * 3, **options)
    assert type(function) is TTDistribution
    assert function.tail_weight == method.tail_weight == 1e-9
    for a, b in zip(method.cores, function.cores, strict=True):
        assert torch.equal(a, b)
    assert function.cross_report.n_evaluations == method.cross_report.n_evaluations


@pytest.mark.parametrize("entry_point", [TTDistribution.from_log_density, fit_log_density])
def test_the_warning_names_the_callers_line(entry_point):
    with pytest.warns(ConvergenceWarning, match="base is poor") as record:
        entry_point(high_rank_log_h, [[-1, 1]] * 3, **POOR)
    assert record[0].filename == __file__
