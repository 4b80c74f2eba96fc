"""A normflows flow on a tensor-train base, with the dtype traps removed."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import normflows as nf
import torch

from sktt_flow.flows.gaussian import GaussianBase
from sktt_flow.tt.distribution import TTDistribution

__all__ = ["TensorizingFlow"]


class TensorizingFlow(nf.NormalizingFlow):
    r"""``log q(x) = log q_0(z) + log |det dz/dx|`` with a TT base ``q_0``.

    A :class:`normflows.NormalizingFlow` whose base is a
    :class:`~sktt_flow.tt.distribution.TTDistribution`. The layers map latent
    to data in order (normflows' convention). Everything that normflows
    allocates in float32 whatever the model's dtype (``forward_kld``,
    ``sample``) is reimplemented here in the dtype of the inputs, and sampling
    takes a ``torch.Generator`` so that draws are reproducible.

    Parameters
    ----------
    q0 : TTDistribution or GaussianBase
        The base: any normflows base whose ``sample`` takes a ``generator``.
    flows : sequence of normflows.flows.Flow
        Layers, latent to data; empty for the base alone.

    References
    ----------
    .. [1] Khoo, Lindsey and Zhao, "Tensorizing flows: a tool for variational
       inference", arXiv:2305.02460, 2023.
    """

    def __init__(self, q0: TTDistribution | GaussianBase, flows: Sequence[nf.flows.Flow]):
        super().__init__(q0, list(flows))

    @property
    def n_features(self) -> int:
        return self.q0.n_features

    # ---------------------------------------------------------------- density
    def inverse_and_log_det(self, x: torch.Tensor):
        """Latent points and ``log |det dz/dx|``."""
        log_det = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
        z = x
        for flow in reversed(self.flows):
            z, layer_log_det = flow.inverse(z)
            log_det = log_det + layer_log_det
        return z, log_det

    def forward_and_log_det(self, z: torch.Tensor):
        """Data points and ``log |det dx/dz|``."""
        log_det = torch.zeros(z.shape[0], dtype=z.dtype, device=z.device)
        x = z
        for flow in self.flows:
            x, layer_log_det = flow(x)
            log_det = log_det + layer_log_det
        return x, log_det

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """Exact normalised log-density, shape (N,)."""
        z, log_det = self.inverse_and_log_det(x)
        return self.q0.log_prob(z) + log_det

    def forward_kld(self, x: torch.Tensor) -> torch.Tensor:
        """Mean negative log-likelihood of ``x`` (forward KL up to a constant)."""
        return -self.log_prob(x).mean()

    # --------------------------------------------------------------- sampling
    def sample(self, num_samples: int = 1, generator: torch.Generator | None = None):
        """Exact samples and their log-density, ``(x, log q(x))``.

        The base is sampled without gradient (its sampler inverts CDFs); the
        flow keeps the graph, so ``x`` and ``log q`` are differentiable in the
        flow's parameters (the reparametrisation gradient of reverse KL).
        """
        z = self.q0.sample(num_samples, generator=generator)
        log_q0 = self.q0.log_prob(z)
        x, log_det = self.forward_and_log_det(z)
        return x, log_q0 - log_det

    def reverse_kl_loss(
        self,
        log_target: Callable[[torch.Tensor], torch.Tensor],
        num_samples: int,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        r"""Monte Carlo reverse KL up to ``log Z``: ``E_q[log q(x) - log h(x)]``.

        Its gradient is unbiased for the flow's parameters (pathwise) and, when
        the base's cores require gradient, for them too: base samples do not
        depend differentiably on the cores, so the score-function term
        :math:`E[(g - \bar g) \nabla \log q_0(z)]` with ``g = log q - log h``
        and a mean baseline :math:`\bar g` is added. Its value is zero, so the
        returned loss is still the reverse-KL estimate.
        """
        z = self.q0.sample(num_samples, generator=generator)
        log_q0 = self.q0.log_prob(z)
        x, log_det = self.forward_and_log_det(z)
        gap = log_q0 - log_det - log_target(x)
        loss = gap.mean()
        if any(parameter.requires_grad for parameter in self.q0.parameters()):
            centred = (gap - gap.mean()).detach()
            loss = loss + (centred * (log_q0 - log_q0.detach())).mean()
        return loss
