"""scikit-learn's estimator checks, with parameters small enough to be fast."""

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
