"""Flow layers that normflows does not provide in the form this package needs.

Both follow normflows' convention: ``forward`` maps latent to data and returns
``(x, log|det dx/dz|)``; ``inverse`` maps data to latent and returns
``(z, log|det dz/dx|)``.
"""

from __future__ import annotations

import torch
from normflows.flows import Flow
from normflows.nets.made import MADE

__all__ = ["AffineAutoregressive", "FixedAffine"]


class FixedAffine(Flow):
    r"""The fixed map ``x = shift + scale * z``, elementwise, without parameters.

    It carries the standardisation :math:`T` of the data, so that the model's
    log-density is that of the original features: the layer adds
    :math:`-\sum_k \log \mathrm{scale}_k` to every log-density.

    Parameters
    ----------
    shift, scale : tensors of shape (d,)
        ``scale`` must be positive. Both are buffers: they follow ``.to()``
        and are saved in the ``state_dict`` but are never trained.
    """

    def __init__(self, shift: torch.Tensor, scale: torch.Tensor):
        super().__init__()
        shift = torch.as_tensor(shift)
        if not shift.is_floating_point():
            # An integer shift would otherwise truncate the scale (1.5 -> 1).
            shift = shift.to(torch.get_default_dtype())
        scale = torch.as_tensor(scale, dtype=shift.dtype)
        if shift.shape != scale.shape or shift.ndim != 1:
            raise ValueError("shift and scale must be 1-D tensors of the same shape.")
        if not bool((scale > 0).all()):
            raise ValueError("scale must be positive.")
        self.register_buffer("shift", shift.clone())
        self.register_buffer("scale", scale.clone())

    def _log_det(self, rows: torch.Tensor) -> torch.Tensor:
        return torch.log(self.scale).sum().expand(rows.shape[0])

    def forward(self, z: torch.Tensor):
        return self.shift + self.scale * z, self._log_det(z)

    def inverse(self, x: torch.Tensor):
        return (x - self.shift) / self.scale, -self._log_det(x)


class AffineAutoregressive(Flow):
    r"""Masked affine autoregressive layer that starts as the identity.

    ``x_k = z_k \exp(a_k) + b_k`` where ``(a_k, b_k)`` depend on ``z_{<k}``
    through normflows' MADE network and ``a = S \tanh(u / S)`` bounds the log
    scale by ``S = max_log_scale``. The last layer of MADE is zero at
    construction, so the layer is exactly the identity before training and a
    flow of them starts from its base distribution.

    normflows' ``MaskedAffineAutoregressive`` cannot start at the identity
    (its scale is ``sigmoid(u + 2) + 1e-3``, 0.881 at ``u = 0``), which is why
    this layer exists.

    The ``forward`` direction (latent to data) is one MADE pass; ``inverse``
    needs ``d`` sequential passes. Wrap it in ``normflows.flows.Reverse`` to
    make density evaluation the cheap direction (a MAF); leave it unwrapped to
    make sampling cheap (an IAF).

    Parameters
    ----------
    n_features : int
    hidden_units : int
    n_blocks : int, default=2
        Hidden blocks of MADE.
    max_log_scale : float, default=3.0

    References
    ----------
    .. [1] Papamakarios, Pavlakou and Murray, "Masked autoregressive flow for
       density estimation", NeurIPS 2017.
    """

    def __init__(
        self,
        n_features: int,
        hidden_units: int,
        *,
        n_blocks: int = 2,
        max_log_scale: float = 3.0,
    ):
        super().__init__()
        self.n_features = int(n_features)
        self.max_log_scale = float(max_log_scale)
        self.made = MADE(
            features=self.n_features,
            hidden_features=int(hidden_units),
            num_blocks=int(n_blocks),
            output_multiplier=2,
            use_residual_blocks=True,
        )
        with torch.no_grad():
            self.made.final_layer.weight.zero_()
            self.made.final_layer.bias.zero_()

    def _log_scale_and_shift(self, conditioner_input: torch.Tensor):
        parameters = self.made(conditioner_input).view(-1, self.n_features, 2)
        bound = self.max_log_scale
        return bound * torch.tanh(parameters[..., 0] / bound), parameters[..., 1]

    def forward(self, z: torch.Tensor):
        log_scale, shift = self._log_scale_and_shift(z)
        return z * torch.exp(log_scale) + shift, log_scale.sum(dim=1)

    def inverse(self, x: torch.Tensor):
        # Coordinate k of z is exact after pass k + 1: MADE's output k only
        # depends on z_{<k}, which earlier passes have fixed.
        z = torch.zeros_like(x)
        for _ in range(self.n_features):
            log_scale, shift = self._log_scale_and_shift(z)
            z = (x - shift) * torch.exp(-log_scale)
        return z, -log_scale.sum(dim=1)
