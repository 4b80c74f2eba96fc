"""Mini-batch training with early stopping, restoration of the best state and
guards against non-finite steps and interruption.

One loop serves every model of the package (the TT cores fitted by maximum
likelihood, the flows), so that they all stop, recover and report alike.

Training runs in iterations, passes over the training rows (or a given
number of steps without data), with a validation score after each. Early
stopping and learning-rate halving count groups of iterations of at least
:data:`MIN_STEPS_PER_ITERATION` optimiser steps, so that a patience means
about as many parameter updates on a few hundred rows as on thousands.
"""

from __future__ import annotations

import collections
import copy
import math
import statistics
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch
from sklearn.exceptions import ConvergenceWarning

__all__ = [
    "CLIP_HISTORY",
    "MIN_STEPS_PER_ITERATION",
    "TrainingHistory",
    "iterations_per_patience_unit",
    "minimize",
    "patience_in_passes",
]

#: Roll-backs after non-finite validation scores before training gives up.
MAX_ROLLBACKS = 3

#: Fewest optimiser steps in a unit of patience. With 278 training rows and
#: batches of 256 a pass over the data is 2 steps, so that a patience of 20
#: passes stopped a flow after 40 steps, halving the learning rate every 20,
#: while its held-out log-likelihood kept rising for 100-300 steps. Shorter
#: passes are grouped into units of this many steps or more; scores are still
#: taken after every pass, since the best state of a TT base on such data can
#: come within the first few steps. Variational training makes 10 steps per
#: iteration, one unit.
MIN_STEPS_PER_ITERATION = 10

#: Steps whose gradient norms set the limit of ``clip_factor`` (the median of
#: the last this many), and fewest steps seen before any step is clipped.
CLIP_HISTORY = (100, 20)


@dataclass
class TrainingHistory:
    """What a call of :func:`minimize` did.

    Attributes
    ----------
    loss_curve : list of float
        Mean training loss of every iteration.
    validation_scores : list of float
        Validation score (higher is better) before training (first entry) and
        after every iteration.
    n_iter : int
        Iterations run.
    best_epoch : int
        Iteration whose state was restored (0: the initial state).
    n_skipped_steps : int
        Steps skipped because the loss or a gradient was not finite.
    n_clipped_steps : int
        Steps whose gradient was scaled down (``clip_factor`` of
        :func:`minimize`).
    n_rollbacks : int
        Times the state was rolled back and the learning rate halved.
    interrupted : bool
        Whether training stopped on ``KeyboardInterrupt``.
    """

    loss_curve: list[float] = field(default_factory=list)
    validation_scores: list[float] = field(default_factory=list)
    n_iter: int = 0
    best_epoch: int = 0
    n_skipped_steps: int = 0
    n_clipped_steps: int = 0
    n_rollbacks: int = 0
    interrupted: bool = False


def _progress(total: int, description: str, verbose: int):
    if verbose <= 0:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:  # tqdm is optional: fall back to one line per iteration
        return None
    return tqdm(total=total, desc=description, leave=verbose > 1)


def _fusable(parameters: list[torch.Tensor]) -> bool:
    """Whether Adam can update ``parameters`` in one fused kernel.

    Models here have dozens of small parameter tensors, so the per-tensor
    update dominated a training step: 5 ms of a flow's step on one CPU
    thread, 1 ms fused. The fused kernel exists for floating-point tensors
    on CPUs and CUDA devices, all on one device.
    """
    devices = {p.device for p in parameters}
    return (
        len(devices) == 1
        and next(iter(devices)).type in ("cpu", "cuda")
        and all(p.is_floating_point() for p in parameters)
    )


def _gradients_finite(parameters: list[torch.Tensor]) -> bool:
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return True
    return bool(torch.isfinite(torch.stack([g.sum() for g in grads])).all())


def _clip_gradients(
    parameters: list[torch.Tensor], recent_norms: collections.deque, clip_factor: float
) -> bool:
    """Scale the gradients of ``parameters`` down to ``clip_factor`` times the
    median of ``recent_norms`` if their norm is larger; record the norm.
    Returns whether they were scaled."""
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return False
    # torch.nn.utils.get_total_norm would do this, but needs torch >= 2.6
    norm = float(torch.linalg.vector_norm(torch.cat([g.reshape(-1) for g in grads])))
    clipped = False
    if len(recent_norms) >= CLIP_HISTORY[1]:
        limit = clip_factor * statistics.median(recent_norms)
        if norm > limit:
            for g in grads:
                g.mul_(limit / norm)
            clipped = True
    recent_norms.append(norm)
    return clipped


def minimize(
    module: torch.nn.Module,
    loss: Callable[[torch.Tensor], torch.Tensor],
    data: torch.Tensor | int,
    *,
    score: Callable[[], float],
    max_iter: int,
    batch_size: int,
    learning_rate: float,
    n_iter_no_change: int,
    generator: torch.Generator,
    parameters: Iterable[torch.Tensor] | None = None,
    tol: float = 1e-4,
    clip_factor: float | None = None,
    stop: Callable[[list[float]], bool] | None = None,
    verbose: int = 0,
    description: str = "training",
) -> TrainingHistory:
    """Minimise ``loss`` with Adam over iterations of mini-batch steps.

    Parameters
    ----------
    module : torch.nn.Module
        Owner of the trained parameters; its ``state_dict`` is what is kept
        and restored.
    loss : callable
        ``loss(batch) -> scalar tensor``. With ``data`` a tensor, ``batch`` is
        a random subset of its rows; with ``data`` an int (no data, as in
        variational inference), ``batch`` is the batch size as a 0-d tensor
        and ``data`` is the number of steps per iteration.
    data : tensor or int
        Training rows, or steps per iteration. With rows, an iteration is one
        pass over them in a fresh random order (an epoch).
    score : callable
        ``score() -> float`` on held-out data, higher is better; called before
        training and after every iteration.
    max_iter : int
        Maximum number of iterations.
    batch_size, learning_rate : int, float
    n_iter_no_change : int
        Stop when the score has not improved by ``tol`` for this many units
        of patience; the learning rate is halved every half of that without
        improvement. A unit is one iteration, or ``ceil(m / s)`` of them when
        an iteration makes ``s`` steps, fewer than ``m``
        (:data:`MIN_STEPS_PER_ITERATION`).
    generator : torch.Generator
        Draws the mini-batches (on the device of ``data``).
    parameters : iterable of tensors, optional
        What Adam updates; all of ``module``'s parameters that require
        gradient by default.
    clip_factor : float, optional
        Adaptive gradient clipping: a step whose gradient norm exceeds
        ``clip_factor`` times the median norm of the previous steps (the last
        ``CLIP_HISTORY[0]``, once there are ``CLIP_HISTORY[1]``) is scaled
        down to that limit, in the spirit of AutoClip (Seetharaman, Wichern,
        Pardo and Le Roux, "AutoClip: adaptive gradient clipping for source
        separation networks", MLSP 2020), which clips at a percentile of the
        history. The limit follows the scale of the gradients, so it needs no
        tuning per model; the norms recorded are the unclipped ones. None
        (default): no clipping.
    stop : callable, optional
        ``stop(scores) -> bool``, called after each iteration with a finite
        score with the scores so far (the start's first, as in
        ``TrainingHistory.validation_scores``): training ends when it returns
        True, with the best state kept as at any other end.
    verbose : int
        0: silent; 1: a progress bar with the loss and the score.

    Returns
    -------
    TrainingHistory
        ``module`` holds the state with the best score when this returns,
        also after an interruption or repeated numerical failures.
    """
    parameters = [
        p for p in (module.parameters() if parameters is None else parameters) if p.requires_grad
    ]
    history = TrainingHistory()
    best_score = score()
    if not math.isfinite(best_score):
        best_score = -math.inf
    history.validation_scores.append(best_score)
    best_state = copy.deepcopy(module.state_dict())
    if not parameters or max_iter <= 0:
        return history
    optimizer = torch.optim.Adam(parameters, lr=learning_rate, fused=_fusable(parameters))
    from_data = isinstance(data, torch.Tensor)
    n_rows = data.shape[0] if from_data else int(data) * batch_size
    # Patience and halving count units of at least MIN_STEPS_PER_ITERATION
    # steps: on small data a pass is a few steps, and patience in passes
    # stopped training long before the held-out score stopped rising.
    iterations_per_unit = iterations_per_patience_unit(n_rows, batch_size)
    patience = n_iter_no_change * iterations_per_unit
    halving_interval = max(n_iter_no_change // 2, 1) * iterations_per_unit
    iterations_without_improvement = 0
    recent_norms = collections.deque(maxlen=CLIP_HISTORY[0])
    bar = _progress(max_iter, description, verbose)
    try:
        for iteration in range(1, max_iter + 1):
            if from_data:
                order = torch.randperm(n_rows, generator=generator, device=data.device)
            total, n_steps = 0.0, 0
            for start in range(0, n_rows, batch_size):
                if from_data:
                    batch = data[order[start : start + batch_size]]
                else:
                    batch = torch.tensor(min(batch_size, n_rows - start))
                optimizer.zero_grad(set_to_none=True)
                value = loss(batch)
                # One synchronisation per step: a non-finite step must be
                # skipped before it reaches the parameters.
                if not bool(torch.isfinite(value)):
                    history.n_skipped_steps += 1
                    continue
                value.backward()
                if not _gradients_finite(parameters):
                    history.n_skipped_steps += 1
                    continue
                if clip_factor is not None:
                    history.n_clipped_steps += _clip_gradients(
                        parameters, recent_norms, clip_factor
                    )
                optimizer.step()
                total += float(value.detach())
                n_steps += 1
            history.n_iter = iteration
            history.loss_curve.append(total / n_steps if n_steps else math.nan)
            current = score()
            history.validation_scores.append(current)
            if not math.isfinite(current) or n_steps == 0:
                history.n_rollbacks += 1
                module.load_state_dict(best_state)
                for group in optimizer.param_groups:
                    group["lr"] /= 2.0
                if history.n_rollbacks >= MAX_ROLLBACKS:
                    warnings.warn(
                        f"{description}: the loss or the validation score stayed "
                        f"non-finite after {history.n_rollbacks} roll-backs with a "
                        "halved learning rate; stopped and kept the best valid state.",
                        ConvergenceWarning,
                        stacklevel=2,
                    )
                    break
                continue
            if current > best_score + tol:
                best_score = current
                best_state = copy.deepcopy(module.state_dict())
                history.best_epoch = iteration
                iterations_without_improvement = 0
            else:
                iterations_without_improvement += 1
                # Halve the step when progress stalls for half the patience:
                # a plateau of the held-out score is usually Adam's noise floor.
                if iterations_without_improvement % halving_interval == 0:
                    for group in optimizer.param_groups:
                        group["lr"] /= 2.0
            if bar is not None:
                bar.set_postfix(loss=f"{history.loss_curve[-1]:.4f}", score=f"{current:.4f}")
                bar.update(1)
            elif verbose > 0:
                print(
                    f"{description} iteration {iteration}: loss {history.loss_curve[-1]:.5f}, "
                    f"validation score {current:.5f}"
                )
            if iterations_without_improvement >= patience:
                break
            if stop is not None and stop(history.validation_scores):
                break
    except KeyboardInterrupt:
        history.interrupted = True
        warnings.warn(
            f"{description} interrupted after {history.n_iter} iterations; "
            "kept the best state so far.",
            RuntimeWarning,
            stacklevel=2,
        )
    finally:
        if bar is not None:
            bar.close()
    module.load_state_dict(best_state)
    return history


def iterations_per_patience_unit(n_rows: int, batch_size: int) -> int:
    """Iterations of :func:`minimize` in a unit of its patience: one, or as
    many as make :data:`MIN_STEPS_PER_ITERATION` steps of ``batch_size`` rows
    when an iteration over ``n_rows`` rows makes fewer."""
    steps_per_iteration = max(math.ceil(n_rows / batch_size), 1)
    return math.ceil(MIN_STEPS_PER_ITERATION / steps_per_iteration)


def patience_in_passes(n_iter_no_change: int, n_rows: int, batch_size: int) -> int:
    """Passes over ``n_rows`` rows that make a patience of ``n_iter_no_change``
    units of :data:`MIN_STEPS_PER_ITERATION` steps.

    :func:`minimize` counts patience in passes over the rows, grouped into
    units of at least that many steps when a pass is shorter. A longer pass
    is a unit of its own, so that a patience of 20 meant 200 steps on 2,000
    rows and 720 on 9,000 (an epoch of 36 steps), most of them spent after
    the best state (a flow on 10,000 rows of 30 features: best after 8
    passes, stopped after 28). This many passes make it the same number of
    steps whatever the rows, rounded up to whole passes; with passes of at
    most that many steps it is ``n_iter_no_change`` itself, and training is
    the same as without it.

    Parameters
    ----------
    n_iter_no_change : int
        Units of patience.
    n_rows : int
        Rows of a pass.
    batch_size : int
        Rows of a step.

    Returns
    -------
    int
        The patience to give :func:`minimize`.
    """
    steps_per_pass = math.ceil(n_rows / batch_size)
    if steps_per_pass <= MIN_STEPS_PER_ITERATION:
        return n_iter_no_change
    return max(1, math.ceil(n_iter_no_change * MIN_STEPS_PER_ITERATION / steps_per_pass))
