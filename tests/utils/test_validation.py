import numpy as np
import pytest
import torch

from sktt_flow.utils.validation import (
    check_domain,
    check_domain_resolution,
    check_num_samples,
    check_samples,
)


def test_check_domain_broadcasts_a_single_pair():
    low, high = check_domain((-1, 2), 3)
    np.testing.assert_array_equal(low, [-1, -1, -1])
    np.testing.assert_array_equal(high, [2, 2, 2])


@pytest.mark.parametrize(
    "domain, message",
    [
        ([[0, 1, 2]], r"shape \(n_features, 2\)"),
        ([[1, 1]], "row 0 is"),
        ([[0, np.nan]], "finite"),
        ([["a", "b"]], "numeric"),
    ],
)
def test_check_domain_errors(domain, message):
    with pytest.raises(ValueError, match=message):
        check_domain(domain)


def test_check_samples_copies_and_converts():
    X = np.arange(6, dtype=np.int64).reshape(3, 2)
    X.setflags(write=False)
    tensor = check_samples(X)
    assert tensor.dtype == torch.float64 and tensor.shape == (3, 2)
    source = torch.ones(3, 2)
    converted = check_samples(source, dtype=torch.float32)
    converted[0, 0] = 5.0
    assert source[0, 0] == 1.0  # a copy, never a view of the user's data


@pytest.mark.parametrize(
    "X, message",
    [
        (np.zeros((0, 2)), "minimum of 2"),
        (np.zeros((3, 0)), "0 features"),
        (np.zeros((2, 2, 2)), "2-D"),
        (np.array([[1.0, np.inf], [0.0, 0.0]]), "NaN or infinity"),
        (torch.zeros(3, 2, dtype=torch.complex64), "real numbers"),
        (np.array([[object(), 1]]), "real numbers"),
    ],
)
def test_check_samples_errors(X, message):
    with pytest.raises(ValueError, match=message):
        check_samples(X)


def test_check_domain_accepts_tensors():
    low, high = check_domain(torch.tensor([[-1.0, 2.0], [0.0, 3.0]]))
    np.testing.assert_array_equal(low, [-1.0, 0.0])
    np.testing.assert_array_equal(high, [2.0, 3.0])


def test_check_domain_resolution_refuses_boxes_the_dtype_cannot_resolve():
    """[1e8 - 1, 1e8 + 1] holds less than one float32 step (8 at 1e8)."""
    low, high = np.array([-3.0, 1e8 - 1.0]), np.array([3.0, 1e8 + 1.0])
    with pytest.raises(ValueError, match=r"domain row 1 .* torch.float32"):
        check_domain_resolution(low, high, torch.float32)
    check_domain_resolution(low, high, torch.float64)
    # 1000 wide at 1e3: spacing 6e-5, 1.6e7 steps, accepted
    check_domain_resolution(np.array([1e3]), np.array([2e3]), torch.float32)


def test_check_num_samples_refuses_negative_counts():
    """The check that every base's sampler starts with: an int out, numpy
    integers in, and a negative count refused with the parameter named."""
    assert check_num_samples(np.int64(5)) == 5 and type(check_num_samples(np.int64(5))) is int
    assert check_num_samples(0) == 0
    with pytest.raises(ValueError, match="num_samples must be non-negative, got -1"):
        check_num_samples(-1)
