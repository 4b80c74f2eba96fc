"""Turn a scikit-learn style ``random_state`` into a seeded ``torch.Generator``."""

from __future__ import annotations

import numbers

import numpy as np
import torch

__all__ = ["torch_generator"]

_SEED_BOUND = 2**63 - 1


def torch_generator(random_state=None, device: torch.device | str = "cpu") -> torch.Generator:
    """A ``torch.Generator`` on ``device`` seeded from ``random_state``.

    Parameters
    ----------
    random_state : None, int, numpy RandomState or Generator, or torch.Generator
        ``None`` draws the seed from numpy's global random state, as
        scikit-learn does; an int is the seed itself; a numpy random state is
        advanced by one draw; a ``torch.Generator`` on ``device`` is returned
        as it is.
    device : torch.device or str
        Where the generator lives (it must match the tensors it fills).
    """
    device = torch.device(device)
    if isinstance(random_state, torch.Generator):
        if random_state.device.type != device.type:
            raise ValueError(
                f"The torch.Generator is on {random_state.device} but the "
                f"computation runs on {device}."
            )
        return random_state
    if random_state is None:
        # scikit-learn's convention for None: numpy's global random state.
        seed = int(np.random.randint(np.iinfo(np.int32).max))  # noqa: NPY002
    elif isinstance(random_state, numbers.Integral) and not isinstance(random_state, bool):
        seed = int(random_state)
        if seed < 0:
            raise ValueError(f"random_state must be non-negative, got {seed}.")
    elif isinstance(random_state, np.random.RandomState):
        seed = int(random_state.randint(np.iinfo(np.int32).max))
    elif isinstance(random_state, np.random.Generator):
        seed = int(random_state.integers(_SEED_BOUND))
    else:
        raise TypeError(
            "random_state must be None, an int, a numpy RandomState or Generator, "
            f"or a torch.Generator; got {type(random_state).__name__}."
        )
    generator = torch.Generator(device=device)
    generator.manual_seed(seed)
    return generator
