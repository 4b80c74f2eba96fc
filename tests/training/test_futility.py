"""ClearGainWatch: a training's held-out score and its futility stop, and the
patience it is measured in (passes_of_patience)."""

import pytest
import torch

from sktt_flow.training import ClearGainWatch, passes_of_patience
from tests.training.test_forward_kl import (  # noqa: F401 (fitted_base: a fixture)
    correlated_gaussian,
    fit,
    fitted_base,
    model_on,
)

N_ROWS = 400


def noise(seed: int) -> torch.Tensor:
    """Per-row scores of spread 1."""
    return torch.randn(N_ROWS, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def moved(start: torch.Tensor, seed: int, gain: float) -> torch.Tensor:
    """``start`` plus per-row differences of mean ``gain`` exactly and spread
    0.05: their mean has a standard error of 0.0025, so a gain of 0.005 is
    two standard errors."""
    differences = noise(seed)
    return start + 0.05 * (differences - differences.mean()) + gain


def test_the_first_score_is_the_start_and_a_clear_gain_lifts_the_stop():
    """Passes within noise of the start (gains of 0.001 to 0.003 nats, at
    most 1.2 SE) do not count, and the watch stops at its horizon, not
    before; one pass 0.05 nats ahead (20 SE) lifts the stop for good, even
    when later passes fall back. The score is the mean of the per-row
    scores. Fails if the stop counted the start as a pass, compared a pass
    with the previous one instead of the start, or forgot a clear gain."""
    start = noise(0)
    watch = ClearGainWatch(lambda rows: rows, horizon=3, n_standard_errors=2.0)
    scores = [watch.score(start)]
    assert scores[0] == pytest.approx(float(start.mean()))
    for n_passes in range(1, 4):
        scores.append(watch.score(moved(start, n_passes, 0.001 * n_passes)))
        assert watch.stop(scores) == (n_passes >= 3)
    ahead = ClearGainWatch(lambda rows: rows, horizon=3, n_standard_errors=2.0)
    scores = [ahead.score(start), ahead.score(moved(start, 1, 0.05))]
    for n_passes in range(2, 8):
        scores.append(ahead.score(moved(start, n_passes, -1.0)))
        assert not ahead.stop(scores)


def test_without_a_horizon_the_watch_never_stops():
    watch = ClearGainWatch(lambda rows: rows, horizon=None, n_standard_errors=2.0)
    scores = [watch.score(noise(0)) for _ in range(50)]
    assert not watch.stop(scores)


@pytest.mark.parametrize(("n_rows", "batch_size"), [(1000, 200), (1000, 50), (1000, 1000)])
def test_passes_of_patience_is_where_fit_forward_kl_stops_without_progress(
    fitted_base,  # noqa: F811
    n_rows,
    batch_size,
):
    """A held-out score that never improves ends fit_forward_kl after exactly
    passes_of_patience passes: with 5 steps a pass (units of two passes), 20
    steps a pass (the patience shortened to whole passes) and one step a
    pass. Fails if the helper and the training loop count patience apart."""
    generator = torch.Generator().manual_seed(2)
    train = correlated_gaussian(n_rows, generator)
    validation = correlated_gaussian(200, generator)
    model = model_on(fitted_base)
    history = fit(
        model,
        train,
        validation,
        learning_rate=1e-3,
        max_iter=200,
        batch_size=batch_size,
        n_iter_no_change=4,
        held_out_score=lambda log_q: 0.0,
    )
    assert history.n_iter == passes_of_patience(4, n_rows, batch_size)


def test_the_watch_ends_a_creeping_training_at_its_horizon(fitted_base):  # noqa: F811
    """Wired into fit_forward_kl: a score that creeps up by 5e-4 nats at
    every pass (a fifth of an SE, above the loop's tol) resets early
    stopping's patience every time, and the training would run to max_iter;
    the watch ends it after its horizon, never clearly ahead (1.4 SE)."""
    generator = torch.Generator().manual_seed(2)
    train = correlated_gaussian(1000, generator)
    validation = correlated_gaussian(N_ROWS, generator)
    model = model_on(fitted_base)
    calls = []

    def creeping(log_q: torch.Tensor) -> torch.Tensor:
        calls.append(None)
        return moved(noise(0), len(calls), 5e-4 * len(calls))

    watch = ClearGainWatch(creeping, horizon=7, n_standard_errors=2.0)
    history = fit(
        model,
        train,
        validation,
        learning_rate=1e-3,
        n_iter_no_change=4,
        held_out_score=watch.score,
        stop=watch.stop,
    )
    assert history.n_iter == 7
    assert history.best_epoch == 7
