"""Fit a :class:`~sktt_flow.TTDistribution` to samples.

The driver of :meth:`TTDistribution.from_samples
<sktt_flow.TTDistribution.from_samples>`. The train is fitted in two stages
(Ren, Zhao, Khoo and Ying, "High-dimensional density estimation with
tensorizing flow", Res. Math. Sci. 10:30, 2023, section 3):

1. An optimisation-free start: the sum over ``tt_rank`` clusters of
   ``tt_rank``-means of products of root-Gaussian marginals, a train of rank
   ``tt_rank`` with diagonal cores (with one cluster, the rank-one start from
   the marginals of the data); see :mod:`sktt_flow.tt.estimation`.
2. Maximum likelihood: Adam on the mean negative log-likelihood of all cores
   (the exact normaliser makes the problem well posed without any constraint
   on the cores), with early stopping on held-out samples and restoration of
   the best cores (:func:`~sktt_flow.utils.optimize.minimize`).
"""

from __future__ import annotations

import torch

from sktt_flow.tt.distribution import TTDistribution
from sktt_flow.tt.estimation import domain_from_samples, separable_mixture_cores
from sktt_flow.utils.optimize import minimize
from sktt_flow.utils.random import torch_generator
from sktt_flow.utils.validation import check_domain, check_positive_int, check_samples

__all__ = ["fit_samples"]


def fit_samples(
    X,
    *,
    tt_rank: int = 8,
    n_basis: int = 16,
    domain=None,
    tail_weight: float = 1e-3,
    max_iter: int = 300,
    batch_size: int = 512,
    learning_rate: float = 1e-3,
    validation_fraction: float = 0.1,
    n_iter_no_change: int = 20,
    validation=None,
    random_state=None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float64,
    verbose: int = 0,
) -> TTDistribution:
    """Fit a train to samples by maximum likelihood.

    First an optimisation-free start: the sum over ``tt_rank`` clusters of
    products of root-Gaussian marginals (with one cluster, the rank-one
    start from the marginals); then Adam on the mean negative
    log-likelihood of all cores, with early stopping on a held-out
    fraction and restoration of the best cores
    (:mod:`sktt_flow.tt.estimation`).

    Parameters
    ----------
    X : array-like or tensor of shape (n_samples, n_features)
        Samples; at least 2, all finite. Fit in standardised coordinates
        for best results: the estimator does that for you.
    tt_rank : int, default=8
        Maximum bond rank (capped at what each unfolding allows).
    n_basis : int, default=16
        Legendre functions per coordinate.
    domain : array-like of shape (n_features, 2), optional
        The box. By default the bounding box of ``X`` widened by 10% of
        its width on each side.
    tail_weight : float, default=1e-3
        Weight of the Gaussian full-support component (see
        :class:`~sktt_flow.TTDistribution`).
    max_iter : int, default=300
        Maximum number of epochs of maximum likelihood (0: the start only).
    batch_size : int, default=512
    learning_rate : float, default=1e-3
        Adam's initial step size; halved whenever the held-out score
        stalls for half of ``n_iter_no_change`` epochs.
    validation_fraction : float, default=0.1
        Held-out fraction for early stopping, in [0, 1); 0 uses the
        training log-likelihood instead.
    n_iter_no_change : int, default=20
        Epochs without improvement of the held-out log-likelihood before
        stopping.
    validation : array-like or tensor of shape (n_validation, n_features), optional
        Held-out samples for early stopping. When given, all of ``X`` is
        trained on and ``validation_fraction`` is ignored (the estimator
        uses this to share one split between the base and the flow).
    random_state : int, RandomState, Generator or None
        Fixes the split, the clustering and the mini-batches.
    device : torch device or str, optional
        Where the train lives and is fitted (default: CPU, or the device
        of ``X`` when it is a tensor).
    dtype : torch.dtype, default=torch.float64
    verbose : int, default=0
        1 shows a progress bar.

    Returns
    -------
    TTDistribution
        With ``training_history`` (:class:`~sktt_flow.utils.optimize.TrainingHistory`).

    See Also
    --------
    sktt_flow.TTDistribution.from_samples : The same, as a classmethod.
    """
    for name, value, minimum in (
        ("tt_rank", tt_rank, 1),
        ("n_basis", n_basis, 1),
        ("batch_size", batch_size, 1),
        ("max_iter", max_iter, 0),
        ("n_iter_no_change", n_iter_no_change, 1),
    ):
        check_positive_int(value, name, minimum)
    if not 0.0 <= validation_fraction < 1.0:
        raise ValueError(f"validation_fraction must be in [0, 1), got {validation_fraction!r}.")
    if device is None:
        device = X.device if isinstance(X, torch.Tensor) else "cpu"
    X = check_samples(X, dtype=dtype, device=device)
    generator = torch_generator(random_state, X.device)
    if domain is None:
        low, high = domain_from_samples(X)
    else:
        low, high = (
            torch.as_tensor(bound, dtype=dtype, device=X.device)
            for bound in check_domain(domain, X.shape[1])
        )
    if validation is not None:
        validation = check_samples(validation, dtype=dtype, device=X.device, min_samples=1)
        if validation.shape[1] != X.shape[1]:
            raise ValueError(
                f"validation has {validation.shape[1]} features but X has {X.shape[1]}."
            )
        train = X
    else:
        n_validation = round(validation_fraction * X.shape[0])
        if validation_fraction > 0 and not 1 <= n_validation < X.shape[0]:
            raise ValueError(
                f"validation_fraction={validation_fraction} leaves no validation or no "
                f"training sample out of {X.shape[0]}."
            )
        order = torch.randperm(X.shape[0], generator=generator, device=X.device)
        train = X[order[n_validation:]]
        validation = X[order[:n_validation]] if n_validation else train
    cores = separable_mixture_cores(train, low, high, n_basis, tt_rank, generator)
    distribution = TTDistribution(
        cores, torch.stack([low, high], dim=1), tail_weight=tail_weight
    ).to(device=X.device, dtype=dtype)

    def negative_log_likelihood(batch: torch.Tensor) -> torch.Tensor:
        return -distribution.log_prob(batch).mean()

    def held_out_log_likelihood() -> float:
        with torch.no_grad():
            return float(distribution.log_prob(validation).mean())

    distribution.training_history = minimize(
        distribution,
        negative_log_likelihood,
        train,
        score=held_out_log_likelihood,
        max_iter=max_iter,
        batch_size=batch_size,
        learning_rate=learning_rate,
        n_iter_no_change=n_iter_no_change,
        generator=generator,
        verbose=verbose,
        description="TT maximum likelihood",
    )
    distribution.canonicalize_()
    return distribution
