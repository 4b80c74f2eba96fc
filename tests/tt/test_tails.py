import numpy as np
import pytest
import torch
from scipy import stats

from sktt_flow.tt.tails import gaussian_cdf, gaussian_icdf, gaussian_log_prob

CENTER = torch.tensor([0.0, -1.0, 2.5], dtype=torch.float64)
SCALE = torch.tensor([1.0, 0.5, 3.0], dtype=torch.float64)


def test_log_prob_matches_scipy_in_both_layouts():
    z = torch.randn(200, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 4
    expected = stats.norm.logpdf(z.numpy(), CENTER.numpy(), SCALE.numpy()).sum(1)
    rows = gaussian_log_prob(z, CENTER, SCALE)
    columns = gaussian_log_prob(z.T.contiguous(), CENTER[:, None], SCALE[:, None], dim=0)
    np.testing.assert_allclose(rows.numpy(), expected, rtol=1e-13)
    np.testing.assert_allclose(columns.numpy(), expected, rtol=1e-13)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_log_prob_is_finite_for_every_finite_point(dtype):
    big = torch.finfo(dtype).max
    z = torch.tensor([[big, -big, big]], dtype=dtype)
    assert torch.isfinite(gaussian_log_prob(z, CENTER.to(dtype), SCALE.to(dtype))).all()


def test_icdf_inverts_cdf():
    u = torch.rand(100, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    z = gaussian_icdf(u, CENTER, SCALE)
    np.testing.assert_allclose(gaussian_cdf(z, CENTER, SCALE).numpy(), u.numpy(), atol=1e-14)
