"""A normflows flow on a tensor-train base, with the dtype traps removed."""

from __future__ import annotations

import contextlib
import functools
import itertools
from collections.abc import Callable, Iterator, Sequence

import normflows as nf
import torch

from sktt_flow.flows.gaussian import GaussianBase
from sktt_flow.flows.layers import FIXED_LAYERS
from sktt_flow.tt.distribution import TTDistribution
from sktt_flow.utils.mixture import log_mixture

__all__ = ["TensorizingFlow", "defensive_mixture_log_prob"]


def _floating_dtype(layer: torch.nn.Module) -> torch.dtype | None:
    """The dtype of a layer's first floating-point parameter or buffer; None
    for a layer without one (a permutation).

    The layer's own tensors are looked at first: most layers have one (a
    coupling's mask), and walking the submodules costs 20 microseconds a layer.
    """
    tensors = itertools.chain(
        layer.parameters(recurse=False),
        layer.buffers(recurse=False),
        layer.parameters(),
        layer.buffers(),
    )
    for tensor in tensors:
        if tensor.is_floating_point():
            return tensor.dtype
    return None


def defensive_mixture_log_prob(
    log_flow: torch.Tensor, log_fixed: torch.Tensor, weight: float
) -> torch.Tensor:
    """``log((1 - weight) q_flow + weight q_fixed)`` from the two
    log-densities (see :class:`TensorizingFlow`); ``0 < weight < 1``. The
    gradient carries no subnormal numbers
    (:func:`~sktt_flow.utils.mixture.log_mixture`)."""
    return log_mixture(log_flow, log_fixed, weight)


def _merge_rows(n_rows: int, *parts: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """``n_rows`` rows put together from ``(rows, values)`` parts that cover
    them, in the wider dtype of the parts: two models of a mixture may end in
    different precisions (a float32 train sampled in target coordinates
    directly next to a Gaussian's model that ends in a float64 map)."""
    dtype = functools.reduce(torch.promote_types, (values.dtype for _, values in parts))
    first = parts[0][1]
    merged = first.new_empty((n_rows, *first.shape[1:]), dtype=dtype)
    for rows, values in parts:
        merged = merged.index_put((rows,), values.to(dtype))
    return merged


def _push(layers, points: torch.Tensor, *, inverse: bool, log_det: torch.Tensor | None = None):
    """``points`` through ``layers`` (latent to data, or back with ``inverse``)
    and the summed ``log |det|`` of the direction taken.

    Each layer gets the points in its own dtype: a fitted model may keep its
    fixed maps to the features in float64 around a float32 flow (see
    :class:`TensorizingFlow`). The sum takes the wider dtype of the two.
    ``log_det``, when given, is what the sum starts from (the log-determinant
    of layers already passed: the same additions in the same order as one
    push through all of them).
    """
    if log_det is None:
        log_det = torch.zeros(points.shape[0], dtype=points.dtype, device=points.device)
    for layer in reversed(layers) if inverse else layers:
        dtype = _floating_dtype(layer)
        if dtype is not None:
            points = points.to(dtype)
        points, layer_log_det = layer.inverse(points) if inverse else layer(points)
        log_det = log_det + layer_log_det
    return points, log_det


class TensorizingFlow(nf.NormalizingFlow):
    r"""``log q(x) = log q_0(z) + log |det dz/dx|`` with a TT base ``q_0``.

    A :class:`normflows.NormalizingFlow` whose base is a
    :class:`~sktt_flow.tt.distribution.TTDistribution`. The layers map latent
    to data in order (normflows' convention). Everything that normflows
    allocates in float32 whatever the model's dtype (``forward_kld``,
    ``sample``) is reimplemented here in the dtype of the inputs, and sampling
    takes a ``torch.Generator`` so that draws are reproducible. The layers
    may hold different dtypes (a fitted estimator keeps the fixed maps to the
    features in float64 around a float32 flow and base): each layer gets the
    points in its own, and log-determinants add up in the wider one.

    With ``defensive_weight`` ``delta > 0`` the model is the defensive
    mixture (Hesterberg 1995, as for the base's own tails)

    .. math::

        q(x) = (1 - \delta)\, q_{flow}(x) + \delta\, q_{fixed}(x),

    where ``q_fixed`` is the base pushed through the fixed layers alone
    (:data:`~sktt_flow.flows.FIXED_LAYERS`: the standardisation, the
    preconditioner and the map onto bounded or Gaussianized features),
    skipping the trained ones. Density and sampling stay exact. It bounds
    what a flow can do to points unlike its training data: an affine
    coupling network
    extrapolates, and a held-out row beyond the training range can be sent
    so far into the base's tail that its log-density is -1e7 (seen on
    ``load_breast_cancer``), where ``q_fixed`` gives -75. It costs at most
    ``-log(1 - delta)`` per point elsewhere.

    With a ``companion`` model ``q_c`` of weight ``a`` the model is the
    mixture of two whole models, ``(1 - a) q + a q_c``, each with its own base,
    flow and defensive component: two flows trained on different bases (a TT
    and a Gaussian) miss different held-out rows, and their mixture scores
    better than either (on the real tables of the density benchmark, by 0.07
    to 1.2 nats per test row at the best weight). Density and sampling stay
    exact: a draw comes from the companion with probability ``a``.

    Parameters
    ----------
    q0 : TTDistribution or GaussianBase
        The base: any normflows base whose ``sample`` takes a ``generator``.
    flows : sequence of normflows.flows.Flow
        Layers, latent to data; empty for the base alone.
    defensive_weight : float, default=0.0
        ``delta`` in [0, 1); 0 is the flow alone.
    companion : TensorizingFlow, optional
        A second model of the same space, without a companion of its own.
    companion_weight : float, default=0.0
        ``a`` in [0, 1), the companion's weight; 0 (or no companion) is this
        model alone.

    References
    ----------
    .. [1] Khoo, Lindsey and Zhao, "Tensorizing flows: a tool for variational
       inference", arXiv:2305.02460, 2023.
    """

    def __init__(
        self,
        q0: TTDistribution | GaussianBase,
        flows: Sequence[nf.flows.Flow],
        defensive_weight: float = 0.0,
        companion: TensorizingFlow | None = None,
        companion_weight: float = 0.0,
    ):
        super().__init__(q0, list(flows))
        if not 0.0 <= float(defensive_weight) < 1.0:
            raise ValueError(f"defensive_weight must be in [0, 1), got {defensive_weight!r}.")
        self.defensive_weight = float(defensive_weight)
        if not 0.0 <= float(companion_weight) < 1.0:
            raise ValueError(f"companion_weight must be in [0, 1), got {companion_weight!r}.")
        if companion is not None:
            if not isinstance(companion, TensorizingFlow) or companion.companion is not None:
                raise TypeError("companion must be a TensorizingFlow without a companion.")
            if companion.n_features != q0.n_features:
                raise ValueError(
                    f"The companion has {companion.n_features} features, the model "
                    f"{q0.n_features}."
                )
        self.companion = companion
        self.companion_weight = float(companion_weight) if companion is not None else 0.0

    def _has_companion(self) -> bool:
        return self.companion is not None and self.companion_weight > 0.0

    def _with_companion(self, log_own: torch.Tensor, log_companion: torch.Tensor) -> torch.Tensor:
        return defensive_mixture_log_prob(log_own, log_companion, self.companion_weight)

    def _is_defended(self) -> bool:
        """Whether the defensive component is there and differs from the flow."""
        return self.defensive_weight > 0.0 and any(
            not isinstance(flow, FIXED_LAYERS) for flow in self.flows
        )

    def _fixed_layers(self) -> list[nf.flows.Flow]:
        return [flow for flow in self.flows if isinstance(flow, FIXED_LAYERS)]

    def _fixed_suffix_start(self) -> int | None:
        """Index of the first of the fixed layers when they all come last
        (next to the data, as in a fitted estimator), else None.

        Then the fixed layers' inverse is the first part of the flow's
        inverse, and the defensive component's latent points are the flow's
        on the way.
        """
        start = len(self.flows)
        while start > 0 and isinstance(self.flows[start - 1], FIXED_LAYERS):
            start -= 1
        if any(isinstance(flow, FIXED_LAYERS) for flow in self.flows[:start]):
            return None
        return start

    def _fixed_inverse(self, x: torch.Tensor):
        """Latent points and ``log |det dz/dx|`` through the fixed layers alone."""
        return _push(self._fixed_layers(), x, inverse=True)

    def _fixed_forward(self, z: torch.Tensor):
        """Data points and ``log |det dx/dz|`` through the fixed layers alone."""
        return _push(self._fixed_layers(), z, inverse=False)

    def _mix(self, log_flow: torch.Tensor, log_fixed: torch.Tensor) -> torch.Tensor:
        return defensive_mixture_log_prob(log_flow, log_fixed, self.defensive_weight)

    @property
    def n_features(self) -> int:
        return self.q0.n_features

    # ---------------------------------------------------------------- density
    def inverse_and_log_det(self, x: torch.Tensor):
        """Latent points and ``log |det dz/dx|``."""
        return _push(self.flows, x, inverse=True)

    def forward_and_log_det(self, z: torch.Tensor):
        """Data points and ``log |det dx/dz|``."""
        return _push(self.flows, z, inverse=False)

    @contextlib.contextmanager
    def fixed_parameters(self) -> Iterator[TensorizingFlow]:
        """A block of evaluations in which no parameter changes and nothing
        is differentiated: every TT base in the model (the base, a
        companion's, those inside a symmetrised or layered base) computes its
        normaliser and core matrices once for the block
        (:meth:`~sktt_flow.tt.distribution.TTDistribution.fixed_cores`)
        instead of once per call."""
        with contextlib.ExitStack() as stack:
            stack.enter_context(torch.no_grad())
            for module in self.modules():
                if isinstance(module, TTDistribution):
                    stack.enter_context(module.fixed_cores())
            yield self

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """Exact normalised log-density, shape (N,).

        With a defensive component, both components are evaluated
        (:meth:`component_log_probs`) and mixed; with a companion, so is the
        companion.
        """
        log_own = self._own_log_prob(x)
        if not self._has_companion():
            return log_own
        return self._with_companion(log_own, self.companion.log_prob(x))

    def _own_log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """The log-density of this model without its companion."""
        if not self._is_defended():
            return self.log_flow_only(x)
        return self._mix(*self.component_log_probs(x))

    def component_log_probs(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(log q_flow(x), log q_fixed(x))``: the two components of the
        defensive mixture, whatever ``defensive_weight`` is (so that a weight
        can be fitted to them, :func:`~sktt_flow.training.fit_defensive_weight`).

        With fixed layers that all come last, their inverse is computed once,
        as the first part of the flow's. The base is evaluated in two calls,
        not one on the two latent sets stacked (6% faster on 4,096 rows at
        d = 16, tt_rank 8): the TT base picks its contraction by the number of
        rows, so stacking would make a row's float32 value depend on how many
        rows are scored with it.
        """
        split = self._fixed_suffix_start()
        if split is None:
            z, log_det = self.inverse_and_log_det(x)
            z_fixed, fixed_log_det = self._fixed_inverse(x)
        else:
            z_fixed, fixed_log_det = _push(self.flows[split:], x, inverse=True)
            z, log_det = _push(self.flows[:split], z_fixed, inverse=True, log_det=fixed_log_det)
        return self.q0.log_prob(z) + log_det, self.q0.log_prob(z_fixed) + fixed_log_det

    def forward_kld(self, x: torch.Tensor) -> torch.Tensor:
        """Mean negative log-likelihood of ``x`` (forward KL up to a constant)."""
        return -self.log_prob(x).mean()

    # --------------------------------------------------------------- sampling
    def defensive_draws(
        self, num_samples: int, generator: torch.Generator | None = None
    ) -> torch.Tensor | None:
        """Which of ``num_samples`` draws come from the defensive component
        (bool mask), or None when there is none.

        One uniform per draw, all drawn at once: callers that sample in chunks
        draw the mask for every draw first and pass slices to :meth:`sample`,
        so that the generator's stream, and the draws, do not depend on the
        chunk sizes.

        With a companion it returns instead one code per draw (int8): 0 and 1
        for this model's flow and defensive component, 2 and 3 for the
        companion's, from two uniforms per draw.
        """
        device = generator.device if generator is not None else None
        if self._has_companion():
            uniforms = torch.rand(num_samples, 2, generator=generator, device=device)
            from_companion = uniforms[:, 0] < self.companion_weight
            weights = [
                model.defensive_weight if model._is_defended() else 0.0
                for model in (self, self.companion)
            ]
            fixed = uniforms[:, 1] < torch.where(from_companion, weights[1], weights[0])
            return 2 * from_companion.to(torch.int8) + fixed.to(torch.int8)
        if not self._is_defended():
            return None
        uniforms = torch.rand(num_samples, generator=generator, device=device)
        return uniforms < self.defensive_weight

    def _split_by_model(self, codes: torch.Tensor):
        """For the codes of :meth:`defensive_draws` of a model with a
        companion: the rows of each model and their defensive masks (None for
        a model without a defensive component)."""
        rows, masks = [], []
        for model, first in ((self, 0), (self.companion, 2)):
            in_model = (codes == first) | (codes == first + 1)
            model_rows = in_model.nonzero(as_tuple=True)[0]
            rows.append(model_rows)
            masks.append(codes[model_rows] == first + 1 if model._is_defended() else None)
        return rows, masks

    def companion_generator(self, generator: torch.Generator | None) -> torch.Generator | None:
        """The generator of the companion's draws, seeded from ``generator``
        (None without a companion).

        Callers that sample in chunks make it once, with the codes of
        :meth:`defensive_draws`, and pass it to every chunk: each model then
        draws its rows of all the chunks from its own stream, in order, so
        that the draws do not depend on the chunk sizes.
        """
        if not self._has_companion():
            return None
        device = generator.device if generator is not None else torch.device("cpu")
        seed = torch.randint(2**62, (), generator=generator, device=device)
        return torch.Generator(device=device).manual_seed(int(seed))

    def sample(
        self,
        num_samples: int = 1,
        generator: torch.Generator | None = None,
        defensive: torch.Tensor | None = None,
        companion_generator: torch.Generator | None = None,
    ):
        """Exact samples and their log-density, ``(x, log q(x))``.

        The base is sampled without gradient (its sampler inverts CDFs); the
        flow keeps the graph, so ``x`` and ``log q`` are differentiable in the
        flow's parameters (the reparametrisation gradient of reverse KL).
        With a defensive component or a companion, ``defensive`` (from
        :meth:`defensive_draws`) says which draws come from which component;
        it is drawn here, before the bases, when not given. With a companion,
        its draws come from ``companion_generator`` (see
        :meth:`companion_generator`, made here when not given) and this
        model's from ``generator``, and each draw needs the other model's
        density at the point for the mixture's. The companion's base is drawn
        for every row and its draws kept where the codes say (a Gaussian's
        normals are drawn in blocks of 16, so a count that depends on the
        codes would make the stream depend on the chunking; a Gaussian draw
        costs next to nothing).
        """
        if defensive is None:
            defensive = self.defensive_draws(num_samples, generator)
        if not self._has_companion():
            return self._own_sample(num_samples, generator, defensive)
        if companion_generator is None:
            companion_generator = self.companion_generator(generator)
        (own_rows, companion_rows), (own_mask, companion_mask) = self._split_by_model(defensive)
        x_own, log_own = self._own_sample(own_rows.numel(), generator, own_mask)
        z_companion, log_q0_companion = self.companion.q0(
            num_samples, generator=companion_generator
        )
        x_companion, log_companion = self.companion._own_sample(
            companion_rows.numel(),
            companion_generator,
            companion_mask,
            base_draws=(z_companion[companion_rows], log_q0_companion[companion_rows]),
        )
        log_own = self._with_companion(log_own, self.companion.log_prob(x_own))
        log_companion = self._with_companion(self._own_log_prob(x_companion), log_companion)
        x = _merge_rows(num_samples, (own_rows, x_own), (companion_rows, x_companion))
        log_q = _merge_rows(num_samples, (own_rows, log_own), (companion_rows, log_companion))
        return x, log_q

    def _own_sample(
        self,
        num_samples: int,
        generator: torch.Generator | None,
        defensive: torch.Tensor | None,
        base_draws: tuple[torch.Tensor, torch.Tensor] | None = None,
    ):
        """:meth:`sample` of this model without its companion, ``defensive``
        already drawn (None: no defensive component), from ``base_draws``
        ``(z, log q0(z))`` when given."""
        z, log_q0 = self.q0(num_samples, generator=generator) if base_draws is None else base_draws
        x, log_det = self.forward_and_log_det(z)
        if defensive is None:
            return x, log_q0 - log_det
        # A draw from either component needs the other one's density at the
        # point for the mixture's.
        defensive = defensive.to(z.device)
        x_fixed, fixed_log_det = self._fixed_forward(z)
        x = torch.where(defensive[:, None], x_fixed, x)
        log_flow = log_q0 - log_det
        if bool(defensive.any()):  # about delta * num_samples inverse passes
            rows = defensive.nonzero(as_tuple=True)[0]
            inverted = torch.zeros_like(log_flow).index_put((rows,), self.log_flow_only(x[rows]))
            log_flow = torch.where(defensive, inverted, log_flow)
        z_fixed, inverse_fixed_log_det = self._fixed_inverse(x)
        log_fixed = torch.where(
            defensive,
            log_q0 - fixed_log_det,
            self.q0.log_prob(z_fixed) + inverse_fixed_log_det,
        )
        return x, self._mix(log_flow, log_fixed)

    def sample_points(
        self,
        num_samples: int = 1,
        generator: torch.Generator | None = None,
        defensive: torch.Tensor | None = None,
        companion_generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """The points of :meth:`sample` (the same draws from the same
        ``generator``, ``defensive`` and ``companion_generator``) without
        their log-density.

        A sampler that needs no ``log q`` (``sample`` of the estimator) skips
        the base's log-density, and with a defensive component also the
        fixed component's density at every draw (an evaluation of the base)
        and the flow's inverse at the draws from the fixed component.
        """
        if defensive is None:
            defensive = self.defensive_draws(num_samples, generator)
        if not self._has_companion():
            return self._own_points(num_samples, generator, defensive)
        if companion_generator is None:
            companion_generator = self.companion_generator(generator)
        (own_rows, companion_rows), (own_mask, companion_mask) = self._split_by_model(defensive)
        x_own = self._own_points(own_rows.numel(), generator, own_mask)
        z_companion = self.companion.q0.sample(num_samples, generator=companion_generator)
        x_companion = self.companion._own_points(
            companion_rows.numel(),
            companion_generator,
            companion_mask,
            base_draws=z_companion[companion_rows],
        )
        return _merge_rows(num_samples, (own_rows, x_own), (companion_rows, x_companion))

    def _own_points(
        self,
        num_samples: int,
        generator: torch.Generator | None,
        defensive: torch.Tensor | None,
        base_draws: torch.Tensor | None = None,
    ) -> torch.Tensor:
        z = self.q0.sample(num_samples, generator=generator) if base_draws is None else base_draws
        x, _ = self.forward_and_log_det(z)
        if defensive is None:
            return x
        x_fixed, _ = self._fixed_forward(z)
        return torch.where(defensive.to(z.device)[:, None], x_fixed, x)

    def log_flow_only(self, x: torch.Tensor) -> torch.Tensor:
        """``log q_flow(x)``: the density without the defensive component."""
        z, log_det = self.inverse_and_log_det(x)
        return self.q0.log_prob(z) + log_det

    def reverse_kl_loss(
        self,
        log_target: Callable[[torch.Tensor], torch.Tensor],
        num_samples: int,
        generator: torch.Generator | None = None,
        *,
        base_draws: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        r"""Monte Carlo reverse KL up to ``log Z``: ``E_q[log q(x) - log h(x)]``.

        Its gradient is unbiased for the flow's parameters (pathwise) and, when
        the base's cores require gradient, for them too: base samples do not
        depend differentiably on the cores, so the score-function term
        :math:`E[(g - \bar g) \nabla \log q_0(z)]` with ``g = log q - log h``
        and a mean baseline :math:`\bar g` is added. Its value is zero, so the
        returned loss is still the reverse-KL estimate.

        Parameters
        ----------
        log_target : callable
            ``log h``, points (N, d) to values (N,), differentiable.
        num_samples : int
            Base draws to average over (the rows of ``base_draws`` when given).
        generator : torch.Generator, optional
            Draws them.
        base_draws : tuple of tensors ``(z, log q0(z))``, optional
            Exact base draws made beforehand (by a caller that draws in large
            blocks, where the TT sampler is cheaper per draw), used instead of
            drawing here: the loss and its gradients are those of a draw of
            these points. Only for a frozen base, since ``log q0(z)`` made
            beforehand carries no gradient to the cores.
        """
        base_trainable = any(parameter.requires_grad for parameter in self.q0.parameters())
        if base_draws is None:
            z, log_q0 = self.q0(num_samples, generator=generator)
        else:
            z, log_q0 = base_draws
            if base_trainable:
                raise ValueError(
                    "base_draws needs a frozen base: log q0(z) computed beforehand "
                    "carries no gradient to the base's parameters, so the score-function "
                    "term would be lost."
                )
            if z.shape[0] != num_samples or log_q0.shape != (num_samples,):
                raise ValueError(
                    f"base_draws must hold num_samples={num_samples} points and as many "
                    f"log-densities, got shapes {tuple(z.shape)} and {tuple(log_q0.shape)}."
                )
        x, log_det = self.forward_and_log_det(z)
        gap = log_q0 - log_det - log_target(x)
        loss = gap.mean()
        if base_trainable:
            centred = (gap - gap.mean()).detach()
            loss = loss + (centred * (log_q0 - log_q0.detach())).mean()
        return loss
