"""The TT-cross driver, :func:`sktt_flow.tt.fit_log_density.fit_log_density`.

Its behaviour (cross, the self-check, ``n_basis="auto"``, the warnings) is
tested through :meth:`TTDistribution.from_log_density` in ``test_cross.py``;
these tests pin the function to the classmethod.
"""

import inspect
import math

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


def _narrow_and_wide_apart(x: torch.Tensor) -> torch.Tensor:
    """A normalised mixture in d = 6: 10% of the mass in a Gaussian of width
    0.4 at -4 in every coordinate, 90% in one of width 1.5 at +4."""
    d = x.shape[1]
    log_narrow = -0.5 * (((x + 4.0) / 0.4) ** 2).sum(-1) - d * math.log(0.4) + math.log(0.1)
    log_wide = -0.5 * (((x - 4.0) / 1.5) ** 2).sum(-1) - d * math.log(1.5) + math.log(0.9)
    return torch.logaddexp(log_narrow, log_wide) - 0.5 * d * math.log(2 * math.pi)


def test_known_seeds_bring_in_a_mode_the_seeds_missed():
    """Every one of the 128 ascents of the seeds climbs to the wide mode, and
    cross never meets the narrow one: log Z comes out as log 0.9, and the
    self-check, on draws of the train, cannot see why. The narrow mode as a
    known seed brings its mass in (log Z within 0.02 of 0, its truth); a
    known seed at the wide mode, which the seeds reached, leaves the run as
    it was, to the bit."""
    box = [[-6.0, 10.0]] * 6
    missed = fit_log_density(_narrow_and_wide_apart, box, random_state=0)
    assert abs(missed.cross_report.log_normalizer - math.log(0.9)) < 0.01
    found = fit_log_density(_narrow_and_wide_apart, box, known_seeds=[[-4.0] * 6], random_state=0)
    assert abs(found.cross_report.log_normalizer) < 0.02
    reached = fit_log_density(_narrow_and_wide_apart, box, known_seeds=[[4.0] * 6], random_state=0)
    for core, expected in zip(reached.cores, missed.cores, strict=True):
        torch.testing.assert_close(core, expected, rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"known_seeds must have shape \(m, 6\)"):
        fit_log_density(_narrow_and_wide_apart, box, known_seeds=[[0.0, 0.0]])
