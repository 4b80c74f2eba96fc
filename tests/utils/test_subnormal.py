"""Tests of sktt_flow.utils.subnormal: the gradient hook that zeroes
subnormal entries, and the block that flushes subnormal numbers on the
calling thread and restores the previous mode after it."""

import pytest
import torch

from sktt_flow.flows import TensorizingFlow, build_flow_layers
from sktt_flow.training import fit_forward_kl, fit_reverse_kl
from sktt_flow.training import forward_kl as forward_kl_module
from sktt_flow.training import reverse_kl as reverse_kl_module
from sktt_flow.tt import fit_samples as fit_samples_module
from sktt_flow.tt.distribution import TTDistribution
from sktt_flow.utils.subnormal import (
    flushing_subnormals,
    subnormals_flushed,
    without_subnormal_gradient,
)

TINY = torch.finfo(torch.float32).tiny

needs_flush_mode = pytest.mark.skipif(
    not torch.set_flush_denormal(False), reason="the CPU has no flush-to-zero mode"
)


def test_the_hook_zeroes_subnormal_gradient_entries_only():
    values = torch.ones(4, requires_grad=True)
    upstream = torch.tensor([TINY / 4, TINY, -TINY / 8, 3.0])
    (without_subnormal_gradient(values) * 1.0).backward(upstream)
    assert torch.equal(values.grad, torch.tensor([0.0, TINY, 0.0, 3.0]))


def test_without_gradient_nothing_is_hooked():
    values = torch.ones(3)
    assert without_subnormal_gradient(values) is values
    assert values._backward_hooks is None


@needs_flush_mode
def test_the_block_flushes_and_restores_the_mode():
    """Inside the block half the smallest normal number is zero, after it
    again itself, also when the block raises; a block inside a block leaves
    the outer one flushing; a thread that flushed before still does after."""
    assert not flushing_subnormals()
    with subnormals_flushed():
        assert flushing_subnormals()
        assert torch.tensor(TINY) / 4.0 == 0.0
        with subnormals_flushed():
            assert flushing_subnormals()
        assert flushing_subnormals()
    assert not flushing_subnormals()
    assert torch.tensor(TINY) / 4.0 > 0.0
    with pytest.raises(RuntimeError, match="inside"), subnormals_flushed():
        raise RuntimeError("inside")
    assert not flushing_subnormals()
    torch.set_flush_denormal(True)
    try:
        with subnormals_flushed():
            pass
        assert flushing_subnormals()
    finally:
        torch.set_flush_denormal(False)


@needs_flush_mode
def test_maximum_likelihood_runs_flushed_and_variational_training_does_not():
    """The fits to data, the TT's (``from_samples``) and the flow's
    (``fit_forward_kl``), run their training loop with subnormal numbers
    flushed, and give the mode back; the variational fit (``fit_reverse_kl``)
    runs it in the thread's own mode, as the user's log_target expects
    (flushed, its float32 exp(-90) would be zero). Fails if either side's
    wrapping is lost or added."""
    seen = {}

    def recording(name, module):
        original = module.minimize

        def wrapped(*args, **kwargs):
            seen.setdefault(name, []).append(flushing_subnormals())
            return original(*args, **kwargs)

        return wrapped

    data = torch.randn(300, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    with pytest.MonkeyPatch.context() as patch:
        for name, module in (
            ("tt", fit_samples_module),
            ("flow", forward_kl_module),
            ("variational", reverse_kl_module),
        ):
            patch.setattr(module, "minimize", recording(name, module))
        base = TTDistribution.from_samples(data, tt_rank=2, n_basis=4, max_iter=2, random_state=0)
        base.requires_grad_(False)
        torch.manual_seed(0)
        layers = build_flow_layers("realnvp", 2, n_layers=2, hidden_units=8)
        model = TensorizingFlow(base, layers).double()
        options = {
            "parameters": model.flows.parameters(),
            "max_iter": 2,
            "batch_size": 100,
            "learning_rate": 1e-3,
            "n_iter_no_change": 5,
            "generator": torch.Generator().manual_seed(1),
        }
        fit_forward_kl(model, data[:200], data[200:], **options)
        target_modes = []

        def log_target(x):
            target_modes.append(flushing_subnormals())
            return -0.5 * (x**2).sum(-1)

        fit_reverse_kl(model, log_target, n_validation_samples=64, **options)
    assert seen["tt"] and all(seen["tt"])
    assert seen["flow"] == [True]
    assert seen["variational"] == [False]
    assert target_modes and not any(target_modes)
    assert not flushing_subnormals()
