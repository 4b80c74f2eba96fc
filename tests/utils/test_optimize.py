import math

import pytest
import torch
from sklearn.exceptions import ConvergenceWarning

from sktt_flow.utils.optimize import MIN_STEPS_PER_ITERATION, minimize, patience_in_passes


class Quadratic(torch.nn.Module):
    """Loss (w - batch mean)^2; the score is minus the loss at the data mean."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.tensor(5.0))


def setup(target=1.0, n=64):
    module = Quadratic()
    data = torch.full((n, 1), target)

    def loss(batch):
        return (module.weight - batch.mean()) ** 2

    def score():
        return -float((module.weight.detach() - target) ** 2)

    return module, data, loss, score


def test_converges_and_records_history():
    module, data, loss, score = setup()
    history = minimize(
        module,
        loss,
        data,
        score=score,
        max_iter=300,
        batch_size=16,
        learning_rate=0.1,
        n_iter_no_change=10,
        generator=torch.Generator().manual_seed(0),
    )
    assert module.weight.item() == pytest.approx(1.0, abs=1e-2)
    assert len(history.loss_curve) == history.n_iter
    assert len(history.validation_scores) == history.n_iter + 1
    assert history.best_epoch > 0 and not history.interrupted


def test_restores_the_best_state_and_never_ends_worse_than_the_start():
    module, data, _, score = setup(target=5.0)  # the start is already optimal

    def loss(batch):  # pushes away from the optimum
        return -module.weight

    history = minimize(
        module,
        loss,
        data,
        score=score,
        max_iter=5,
        batch_size=16,
        learning_rate=0.1,
        n_iter_no_change=100,
        generator=torch.Generator().manual_seed(0),
    )
    assert module.weight.item() == 5.0
    assert history.best_epoch == 0


def test_skips_non_finite_steps():
    module, data, loss, score = setup()
    calls = {"n": 0}

    def flaky(batch):
        calls["n"] += 1
        return torch.tensor(math.nan) if calls["n"] % 3 == 0 else loss(batch)

    history = minimize(
        module,
        flaky,
        data,
        score=score,
        max_iter=200,
        batch_size=16,
        learning_rate=0.1,
        n_iter_no_change=10,
        generator=torch.Generator().manual_seed(0),
    )
    assert history.n_skipped_steps > 0
    assert torch.isfinite(module.weight)
    assert module.weight.item() == pytest.approx(1.0, abs=5e-2)


def test_nan_gradients_are_skipped():
    module, data, loss, score = setup()

    def bad_gradient(batch):
        # A finite loss whose gradient is NaN: torch.where differentiates
        # both branches, and sqrt has a NaN derivative at negative inputs.
        shifted = module.weight - 100.0
        return loss(batch) + torch.where(shifted > 0, torch.sqrt(shifted), 0.0)

    with pytest.warns(ConvergenceWarning, match="non-finite"):
        history = minimize(
            module,
            bad_gradient,
            data,
            score=score,
            max_iter=5,
            batch_size=16,
            learning_rate=0.1,
            n_iter_no_change=10,
            generator=torch.Generator().manual_seed(0),
        )
    assert module.weight.item() == 5.0  # every step was skipped
    assert history.n_skipped_steps > 0


def test_persistent_failure_warns_and_keeps_best_state():
    module, data, _, _ = setup()

    def loss(batch):
        return (module.weight - 1.0) ** 2

    def broken_score():
        if module.weight.item() != 5.0:
            return math.nan
        return -((module.weight.item() - 1) ** 2)

    with pytest.warns(ConvergenceWarning, match="non-finite"):
        history = minimize(
            module,
            loss,
            data,
            score=broken_score,
            max_iter=50,
            batch_size=16,
            learning_rate=0.1,
            n_iter_no_change=100,
            generator=torch.Generator().manual_seed(0),
        )
    assert module.weight.item() == 5.0
    assert history.n_rollbacks == 3


def test_keyboard_interrupt_keeps_best_state():
    module, data, loss, score = setup()
    calls = {"n": 0}

    def interrupted(batch):
        calls["n"] += 1
        if calls["n"] > 40:
            raise KeyboardInterrupt
        return loss(batch)

    with pytest.warns(RuntimeWarning, match="interrupted"):
        history = minimize(
            module,
            interrupted,
            data,
            score=score,
            max_iter=100,
            batch_size=16,
            learning_rate=0.1,
            n_iter_no_change=100,
            generator=torch.Generator().manual_seed(0),
        )
    assert history.interrupted
    assert module.weight.item() < 5.0  # the progress of the finished epochs is kept


def test_without_data_counts_steps():
    module, _, _, score = setup()
    seen = []

    def loss_from_size(batch_size):
        seen.append(int(batch_size))
        return (module.weight - 1.0) ** 2

    minimize(
        module,
        loss_from_size,
        3,
        score=score,
        max_iter=2,
        batch_size=8,
        learning_rate=0.1,
        n_iter_no_change=10,
        generator=torch.Generator().manual_seed(0),
    )
    assert seen == [8] * 6


def test_stop_ends_training_and_keeps_the_best_state():
    """``stop`` sees the scores so far (the start's first) after every
    iteration and ends training when it says so; the best state is restored
    as at any end. Here the score peaks at the second iteration (the loss
    pushes the weight past the optimum) and ``stop`` ends training after the
    fourth: fails if ``stop`` is ignored (the patience would allow 20), is
    called with the wrong scores, or the last state is kept."""
    module, data, _, score = setup(target=4.8)
    seen = []

    def loss(batch):  # Adam moves the weight down by about 0.1 a step
        return module.weight

    def stop(scores):
        seen.append(list(scores))
        return len(scores) == 5

    history = minimize(
        module,
        loss,
        data,
        score=score,
        max_iter=100,
        batch_size=64,
        learning_rate=0.1,
        n_iter_no_change=20,
        stop=stop,
        generator=torch.Generator().manual_seed(0),
    )
    assert history.n_iter == 4 and len(seen) == 4
    assert seen[-1] == history.validation_scores
    assert [len(scores) for scores in seen] == [2, 3, 4, 5]
    assert history.best_epoch == 2
    assert module.weight.item() == pytest.approx(4.8, abs=1e-3)


def steps_on_a_plateau(n_rows, batch_size, n_iter_no_change):
    """Train against a constant gradient while the score never improves.

    Adam's step under a constant gradient is the learning rate itself, so the
    differences of the weight seen by successive loss calls are the learning
    rate of each step.
    """
    module = Quadratic()
    data = torch.zeros(n_rows, 1)
    weights = []

    def loss(batch):
        weights.append(module.weight.item())
        return -module.weight

    history = minimize(
        module,
        loss,
        data,
        score=lambda: 0.0,
        max_iter=1000,
        batch_size=batch_size,
        learning_rate=0.1,
        n_iter_no_change=n_iter_no_change,
        generator=torch.Generator().manual_seed(0),
    )
    return torch.tensor(weights).diff(), history


def test_patience_on_few_rows_counts_units_of_the_minimum_of_steps():
    """64 rows in batches of 16 make passes of 4 steps, so a unit of patience
    is ceil(10 / 4) = 3 passes: with a patience of 4 units, training stops
    after 12 passes (48 steps), not 4, and the learning rate is halved after
    2 units (24 steps), not 2 passes. Counting passes, as before, fails
    both."""
    assert MIN_STEPS_PER_ITERATION == 10
    learning_rates, history = steps_on_a_plateau(64, 16, n_iter_no_change=4)
    assert history.n_iter == 12 and history.best_epoch == 0
    assert len(learning_rates) == 48 - 1
    torch.testing.assert_close(learning_rates[:23], torch.full((23,), 0.1), rtol=1e-4, atol=0)
    torch.testing.assert_close(learning_rates[24:], torch.full((23,), 0.05), rtol=1e-4, atol=0)


def test_patience_on_many_rows_counts_passes():
    """With passes of MIN_STEPS_PER_ITERATION steps or more, a unit is one
    pass: 12 steps per pass, a patience of 4 passes, halving after 2."""
    learning_rates, history = steps_on_a_plateau(16 * 12, 16, n_iter_no_change=4)
    assert history.n_iter == 4
    assert len(learning_rates) == 48 - 1
    torch.testing.assert_close(learning_rates[:23], torch.full((23,), 0.1), rtol=1e-4, atol=0)
    torch.testing.assert_close(learning_rates[24:], torch.full((23,), 0.05), rtol=1e-4, atol=0)


def test_patience_counts_steps_on_long_passes():
    """``n_iter_no_change`` units of 10 steps in whole passes: unchanged where a
    pass is at most 10 steps (minimize groups such passes itself, so small
    data train as before), fewer passes where a pass is longer. Fails if a
    pass of 36 steps (10,000 rows in batches of 256) counts as a unit, the
    patience of a flow on 10,000 rows being 720 steps instead of 200."""
    assert patience_in_passes(20, n_rows=300, batch_size=256) == 20
    assert patience_in_passes(20, n_rows=2560, batch_size=256) == 20
    assert patience_in_passes(20, n_rows=9000, batch_size=256) == 6  # ceil(200 / 36)
    assert patience_in_passes(5, n_rows=9000, batch_size=256) == 2  # ceil(50 / 36)
    assert patience_in_passes(1, n_rows=100_000, batch_size=32) == 1  # at least one pass


@pytest.mark.parametrize("clip_factor", [None, 3.0])
def test_an_outlying_gradient_is_clipped_to_a_multiple_of_the_median(clip_factor):
    """One step's loss is a million times too large, as from a row far out in
    the tail of a flow's base. Adam's second moment then holds that gradient
    for thousands of steps, and the steps after it shrink: unclipped, the
    weight stalls far from its optimum; clipped to three times the median
    norm, only that step is touched and training converges."""
    module, data, loss, score = setup()
    calls = []

    def spiking_loss(batch):
        calls.append(None)
        return loss(batch) * (1e6 if len(calls) == 30 else 1.0)

    history = minimize(
        module,
        spiking_loss,
        data,
        score=score,
        max_iter=60,
        batch_size=16,
        learning_rate=0.1,
        n_iter_no_change=60,
        generator=torch.Generator().manual_seed(0),
        clip_factor=clip_factor,
    )
    if clip_factor is None:
        assert history.n_clipped_steps == 0
        assert abs(module.weight.item() - 1.0) > 0.1
    else:
        # the gradient norms shrink as the weight converges, so no other
        # step is above three times the median of the steps before it
        assert history.n_clipped_steps == 1
        assert module.weight.item() == pytest.approx(1.0, abs=1e-2)
