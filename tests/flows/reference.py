"""Shared helpers of the flow tests: parameter noise and autograd Jacobians,
the independent computation that every log-determinant is checked against."""

import torch


def perturb(module, scale, seed):
    """Add ``scale * N(0, 1)`` noise to every parameter, with a fixed seed."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            noise = torch.randn(parameter.shape, generator=generator, dtype=parameter.dtype)
            parameter.add_(scale * noise)


def jacobian_at(function, point):
    """The (d, d) Jacobian of a row map ``(1, d) -> (1, d)`` at one point."""
    d = point.shape[1]
    return torch.autograd.functional.jacobian(lambda p: function(p)[0], point).reshape(d, d)


def log_abs_det_jacobian(function, point):
    """log |det J| of a row map ``(1, d) -> (1, d)`` at one point, by autograd."""
    return float(torch.linalg.slogdet(jacobian_at(function, point)).logabsdet)
