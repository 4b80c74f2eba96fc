"""Tests of sktt_flow.utils.subnormal: the gradient hook that zeroes
subnormal entries, and the block that flushes subnormal numbers on the
calling thread and restores the previous mode after it."""

import pytest
import torch

from sktt_flow.utils.optimize import minimize
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
def test_training_loops_flush_subnormals():
    """minimize, the loop behind every fit of the package, runs its steps and
    scores with subnormal numbers flushed, and gives the mode back."""
    seen = []
    weight = torch.nn.Parameter(torch.ones(1))
    module = torch.nn.Module()
    module.weight = weight

    def loss(batch):
        seen.append(flushing_subnormals())
        return ((weight - batch) ** 2).mean()

    def score():
        seen.append(flushing_subnormals())
        return -float(weight.detach().abs())

    minimize(
        module,
        loss,
        torch.zeros(8, 1),
        score=score,
        max_iter=2,
        batch_size=4,
        learning_rate=0.1,
        n_iter_no_change=5,
        generator=torch.Generator().manual_seed(0),
    )
    assert seen and all(seen)
    assert not flushing_subnormals()
