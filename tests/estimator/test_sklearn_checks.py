"""scikit-learn's estimator checks, with parameters small enough to be fast.

They run in the default precision, float32 (``inference_dtype=None`` is the
training ``dtype``): the subset and sample-order invariance checks hold bit for
bit because rows are scored in padded multiples of ``ROW_MULTIPLE``
(``tests/estimator/test_precision.py`` checks both precisions on a larger model).
"""

from sklearn.utils.estimator_checks import parametrize_with_checks

from sktt_flow import TensorizingFlowDensity

FAST = {
    "tt_rank": 2,
    "n_basis": 4,
    "n_flow_layers": 2,
    "hidden_units": 8,
    "max_iter": 3,
    "batch_size": 64,
    "random_state": 0,
}


@parametrize_with_checks([TensorizingFlowDensity(**FAST)])
def test_sklearn_compatible(estimator, check):
    check(estimator)
