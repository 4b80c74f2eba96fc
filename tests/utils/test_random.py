import numpy as np
import pytest
import torch

from sktt_flow.utils.random import torch_generator


def draw(generator):
    return torch.rand(3, generator=generator)


def test_int_seed_is_reproducible():
    assert torch.equal(draw(torch_generator(5)), draw(torch_generator(5)))
    assert not torch.equal(draw(torch_generator(5)), draw(torch_generator(6)))


def test_numpy_states_are_advanced_like_scikit_learn():
    state = np.random.RandomState(0)
    first, second = draw(torch_generator(state)), draw(torch_generator(state))
    assert not torch.equal(first, second)
    again = np.random.RandomState(0)
    assert torch.equal(first, draw(torch_generator(again)))
    assert torch.equal(
        draw(torch_generator(np.random.default_rng(1))),
        draw(torch_generator(np.random.default_rng(1))),
    )


def test_none_uses_numpy_global_state():
    np.random.seed(3)  # noqa: NPY002 (the global state is what is tested)
    first = draw(torch_generator(None))
    np.random.seed(3)  # noqa: NPY002
    assert torch.equal(first, draw(torch_generator(None)))


def test_torch_generator_passes_through_and_errors():
    generator = torch.Generator().manual_seed(0)
    assert torch_generator(generator) is generator
    with pytest.raises(TypeError, match="random_state"):
        torch_generator("seed")
    with pytest.raises(TypeError, match="random_state"):
        torch_generator(True)
    with pytest.raises(ValueError, match="non-negative"):
        torch_generator(-1)
    with pytest.raises(ValueError, match="computation runs on cuda"):
        torch_generator(generator, device="cuda")
