"""The paired comparison that keeps a challenger only when it wins beyond noise."""

from __future__ import annotations

import torch

from sktt_flow.diagnostics import clearly_better


def test_a_challenger_must_win_by_two_standard_errors():
    """The comparison keeps the incumbent unless the challenger is ahead by
    two standard errors of the paired differences; non-finite scores lose."""
    generator = torch.Generator().manual_seed(0)
    incumbent = torch.randn(100, generator=generator, dtype=torch.float64)
    noise = torch.randn(100, generator=generator, dtype=torch.float64)
    # a gain of 0.05 with paired spread 1 over 100 rows: 0.5 standard errors
    assert not clearly_better(incumbent + 0.05 + noise - noise.mean(), incumbent, 2.0)
    assert clearly_better(incumbent + 0.5 + noise - noise.mean(), incumbent, 2.0)
    # the same gain of 0.5 is 5 standard errors: not enough when 6 are asked
    assert not clearly_better(incumbent + 0.5 + noise - noise.mean(), incumbent, 6.0)
    assert clearly_better(incumbent, incumbent.clone().fill_(-torch.inf), 2.0)
    assert not clearly_better(incumbent.clone().fill_(-torch.inf), incumbent, 2.0)
    # one point: any gain
    assert clearly_better(torch.tensor([1.0]), torch.tensor([0.5]), 2.0)
