"""Variational (reverse KL) training of a flow against an unnormalised target."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable

import torch

from sktt_flow.diagnostics.paired import clearly_better
from sktt_flow.flows.gaussian import GaussianBase
from sktt_flow.flows.model import TensorizingFlow
from sktt_flow.tt.distribution import TTDistribution
from sktt_flow.utils.optimize import TrainingHistory, minimize

__all__ = ["STEPS_PER_ITERATION", "check_differentiable", "fit_reverse_kl"]

#: Gradient steps between two validations; one "iteration" of ``max_iter``.
STEPS_PER_ITERATION = 10

#: Base draws per block of the pool of a frozen base (:class:`_BaseDrawPool`),
#: per device type. On a CPU, 128 batches of the estimator's default 256. One
#: call of the TT sampler costs a fixed part (orthogonalisation, operators, a
#: Python loop over coordinates and solver iterations) plus a part per draw:
#: at rank 8 and 16 basis functions, float32, on one CPU thread, draws with
#: their ``log q0`` (one sweep, :meth:`~sktt_flow.TTDistribution.forward`)
#: cost 60 ms per 256 draws in calls of 256, 6.9 ms in calls of 4096, 5.6 ms
#: in calls of 8192 and 4.3 ms in calls of 32,768 (d = 30; 22, 2.5, 1.9 and
#: 1.7 ms at d = 11). Blocks of 32,768 instead of 8192 made a variational step
#: on TT bases of the suite's shapes 3% (d = 64) to 11% (d = 11, 256 basis
#: functions) faster. On a GPU the sampler's time is its kernel launches, nearly
#: the same for 32,768 draws as for 262,144 (H200, float32: 128 and 121 ms at
#: d = 32; 469 and 529 ms at d = 64, rank 16, 54 basis functions), so its blocks
#: are eight times larger. The price is up to a block of draws never used
#: when training stops early, and the sampler's workspace, ``(2 n_basis + 33) *
#: block`` numbers (71 MB in float32 at 256 basis functions and 32,768 draws).
#: A block stays below the sampler's own chunk (65,536 rows on a CPU, 2^20 on
#: a GPU).
POOL_SIZE = {"cpu": 32768, "cuda": 1 << 18}


#: Standard errors by which the trained state's ELBO must beat the starting
#: state's on fresh common draws to be kept (one-sided, about 2% of truly
#: worse states get through).
CONFIRMATION_STANDARD_ERRORS = 2.0


def check_differentiable(
    log_target: Callable, points: torch.Tensor, *, name: str = "log_target"
) -> None:
    """Raise a ValueError unless ``log_target`` passes gradients to ``points``.

    Reverse KL trains the flow through ``d log h(f(z)) / dx``; a callable that
    detaches (numpy inside, ``.item()``, ``torch.no_grad``) would silently
    train on the entropy term alone, and one that calls ``x.numpy()`` fails
    only once its input requires gradient. Either way the error names the
    callable (``name``) and says what to do, with the callable's own
    exception kept as the cause.
    """
    remedy = (
        f'Write {name} with torch operations, or use flow="none" to fit the TT base '
        "alone, which needs no gradient."
    )
    probe = points.detach().clone().requires_grad_(True)
    try:
        with torch.enable_grad():
            values = log_target(probe)
    except Exception as error:
        raise ValueError(
            f"{name} must be differentiable in torch to train a flow by reverse KL, but "
            f"it failed on points that require gradient ({type(error).__name__}: {error}). "
            + remedy
        ) from error
    if not (isinstance(values, torch.Tensor) and values.requires_grad):
        raise ValueError(
            f"{name} must be differentiable in torch to train a flow by reverse KL: "
            "it returned values that carry no gradient with respect to its input "
            "(numpy inside, .item(), .detach() or torch.no_grad(), or values that do "
            "not depend on the input: a constant log-density c is written "
            "c + 0.0 * x.sum(-1), on a bounded support given as feature_bounds). " + remedy
        )


def _common_draws(
    base: TTDistribution | GaussianBase, n_samples: int, seed: int, device: torch.device
) -> Callable[[], tuple[torch.Tensor, torch.Tensor]]:
    """A function that returns the same ``n_samples`` base draws, from ``seed``,
    and their ``log q0`` at every call (common random numbers).

    They are made once when the base is frozen, and at every call otherwise:
    a trained base changes between calls, and so do its draws from the seed.
    """
    base_frozen = not any(p.requires_grad for p in base.parameters())
    cached: list[torch.Tensor] = []

    def draws() -> tuple[torch.Tensor, torch.Tensor]:
        if cached:
            return cached[0], cached[1]
        with torch.no_grad():
            z, log_q0 = base(n_samples, generator=torch.Generator(device=device).manual_seed(seed))
        if base_frozen:
            cached.extend((z, log_q0))
        return z, log_q0

    return draws


def _elbo_terms(
    model: TensorizingFlow,
    log_target: Callable[[torch.Tensor], torch.Tensor],
    base_draws: tuple[torch.Tensor, torch.Tensor],
) -> torch.Tensor:
    """``log h(x) - log q(x)`` at the model's images of the base draws
    ``(z, log q0(z))``, without gradient: the ELBO's terms."""
    z, log_q0 = base_draws
    with torch.no_grad():
        x, log_det = model.forward_and_log_det(z)
        return log_target(x) - (log_q0 - log_det)


def _pool_size(device: torch.device) -> int:
    """Draws per block of the pool on ``device`` (:data:`POOL_SIZE`)."""
    return POOL_SIZE.get(device.type, POOL_SIZE["cpu"])


class _BaseDrawPool:
    """Exact draws of a frozen base and their log-densities, drawn in blocks
    and handed out in consecutive slices, each draw once.

    No shuffling is needed: the rows of one call of the sampler are already
    independent and identically distributed, so any fixed slice of a block is
    distributed as a fresh draw of its size.

    Parameters
    ----------
    base : TTDistribution or GaussianBase
        The frozen base.
    generator : torch.Generator
        Draws every block, so a fit stays determined by its seed.
    block_size : int
        Draws per block.
    n_draws : int
        Draws that training asks for at most: the last block is no larger than
        what is left, so a run that goes to its end draws nothing in vain.
    """

    def __init__(
        self,
        base: TTDistribution | GaussianBase,
        generator: torch.Generator,
        block_size: int,
        n_draws: int,
    ):
        self._base = base
        self._generator = generator
        self._block_size = block_size
        self._n_left = n_draws
        self._z: torch.Tensor | None = None
        self._log_q0: torch.Tensor | None = None
        self._position = 0

    def take(self, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The next ``size`` draws and their ``log q0``, a new block when this
        one is used up (the rest of it, if any, is dropped: draws are skipped
        by position, never by value, so what is used stays exact)."""
        if self._z is None or self._position + size > self._z.shape[0]:
            block = max(size, min(self._block_size, self._n_left))
            with torch.no_grad():
                self._z, self._log_q0 = self._base(block, generator=self._generator)
            self._position = 0
        rows = slice(self._position, self._position + size)
        self._position += size
        self._n_left -= size
        return self._z[rows], self._log_q0[rows]


def fit_reverse_kl(
    model: TensorizingFlow,
    log_target: Callable[[torch.Tensor], torch.Tensor],
    *,
    parameters: Iterable[torch.Tensor],
    max_iter: int,
    batch_size: int,
    learning_rate: float,
    n_iter_no_change: int,
    generator: torch.Generator,
    n_validation_samples: int = 2048,
    validation_seed: int = 0,
    verbose: int = 0,
) -> TrainingHistory:
    """Minimise ``E_q[log q - log h]`` over ``parameters``.

    Each iteration is :data:`STEPS_PER_ITERATION` Adam steps of ``batch_size``
    samples. The score is the ELBO on ``n_validation_samples`` samples drawn
    with the same random numbers every time (common random numbers), so that
    scores of successive states differ by the change of the model, not by
    sampling noise. The first score is the starting model's (the TT base's
    own bound when the flow starts at the identity) and the best state is
    kept, and it is kept only if it also beats the starting state on fresh
    draws (common random numbers again), so training does not end worse than
    it started.

    While the base is frozen and the model has no defensive component (as in
    the estimator's variational fits), the base draws of the training steps
    come from a pool: :data:`POOL_SIZE` exact draws and their ``log q0``, made
    in one call of the sampler from ``generator`` and handed out in
    consecutive batches, each draw to one step only; the pool is refilled when
    used up. The TT sampler and ``log q0`` cost about 10 times less per draw in
    such blocks than in batches of 256 (numbers at :data:`POOL_SIZE`). Otherwise
    (a trainable base, whose loss needs ``log q0`` with its graph for the
    score-function term, or a defensive mixture) every step draws afresh, as
    :meth:`~sktt_flow.flows.model.TensorizingFlow.reverse_kl_loss` does.

    The pooled gradient is as unbiased as a fresh draw's. The flow's
    parameters before step ``t`` depend only on the draws of earlier steps;
    the draws of step ``t`` are exact base draws independent of those (one
    block is i.i.d., and blocks are drawn independently), hence independent
    of the parameters, so the pathwise gradient's expectation given the
    parameters is the gradient of the reverse KL at them. Since no draw serves
    two steps, the batches of a block have the same joint distribution as
    fresh batches: pooling changes at most which random numbers each step
    gets, not the statistics, and adds no correlation between steps (on a CPU
    it changes nothing: torch draws ``rand(n * k)`` as ``k`` draws of
    ``rand(n)`` in turn, so a pooled fit is the unpooled one up to round-off,
    seen to 1e-17 in the ELBO). What reuse would cost
    is exactly that independence, which is why draws are not recycled: a draw
    used again after it has moved the parameters makes them depend on it, and
    the steps then descend the KL of the pool's empirical distribution (they
    over-fit the pool) instead of the KL under ``q0``. Measured (estimator
    fits, 100 iterations, each draw of a block serving four steps in new
    random orders against one): the ELBO of the wine posterior fell by 0.008
    and 0.013 (two seeds) and that of the breast-cancer posterior by 0.025,
    at about 3 standard errors each, for no gain of time there (sampling is a
    small part of those steps); on the twisted banana it moved by +0.004 and
    -0.002. The price of the pool
    is its memory and, when training stops early, up to one block of draws
    never used.

    Returns
    -------
    TrainingHistory
        ``model`` holds the state with the best validation ELBO.
    """
    parameters = list(parameters)
    base_frozen = not any(p.requires_grad for p in model.q0.parameters())
    validation_draws = _common_draws(
        model.q0, n_validation_samples, validation_seed, generator.device
    )

    def validation_elbo() -> float:
        return float(_elbo_terms(model, log_target, validation_draws()).mean())

    pool = None
    if base_frozen and not model._is_defended():
        pool = _BaseDrawPool(
            model.q0,
            generator,
            block_size=batch_size * max(1, _pool_size(generator.device) // batch_size),
            n_draws=max_iter * STEPS_PER_ITERATION * batch_size,
        )

    def loss(batch_size_tensor: torch.Tensor) -> torch.Tensor:
        size = int(batch_size_tensor)
        base_draws = None if pool is None else pool.take(size)
        return model.reverse_kl_loss(log_target, size, generator=generator, base_draws=base_draws)

    start_state = copy.deepcopy(model.state_dict())
    history = minimize(
        model,
        loss,
        STEPS_PER_ITERATION,
        score=validation_elbo,
        parameters=parameters,
        max_iter=max_iter,
        batch_size=batch_size,
        learning_rate=learning_rate,
        n_iter_no_change=n_iter_no_change,
        generator=generator,
        verbose=verbose,
        description="flow reverse KL",
    )
    if history.best_epoch > 0 and not _confirmed_on_fresh_draws(
        model, start_state, log_target, n_validation_samples, validation_seed + 1, generator.device
    ):
        model.load_state_dict(start_state)
        history.best_epoch = 0
    return history


def _confirmed_on_fresh_draws(
    model: TensorizingFlow,
    start_state: dict,
    log_target: Callable[[torch.Tensor], torch.Tensor],
    n_samples: int,
    seed: int,
    device: torch.device,
) -> bool:
    """Whether the trained state beats the starting one on draws never used to
    select it.

    The best state is the maximum of noisy validation ELBOs, so by selection
    it looks better than it is: when the flow cannot improve on a near-exact
    base, it could end slightly worse than it started. Both states are scored
    on the same fresh base draws (common random numbers), which makes their
    difference precise, and the trained one must win by two standard errors of
    the paired differences. A frozen base is the same in both states, so its
    draws and their log-densities are made once.
    """
    trained_state = copy.deepcopy(model.state_dict())
    draws = _common_draws(model.q0, n_samples, seed, device)
    trained = _elbo_terms(model, log_target, draws())
    model.load_state_dict(start_state)
    started = _elbo_terms(model, log_target, draws())
    model.load_state_dict(trained_state)
    # Paired differences on common draws; a mean above zero alone lets a state
    # that is slightly worse through about half of the time when the base is
    # near exact (seen: 0.002 nats worse on 20,000 other draws). The gain must
    # stand out of its own noise.
    if not bool(torch.isfinite(trained - started).all()):
        return False
    return clearly_better(trained, started, CONFIRMATION_STANDARD_ERRORS)
