"""The interface shared by every benchmark target."""

from __future__ import annotations

import abc
import numbers

import numpy as np
import torch

from sktt_flow.utils.random import torch_generator

__all__ = ["Target"]


class Target(abc.ABC):
    """An unnormalised density on ``R^d`` with known ground truth.

    Subclasses implement :meth:`_log_prob` (and :meth:`_sample` where exact
    samples exist) and set ``n_features`` and the box (``_set_domain``) in
    ``__init__``.

    Attributes
    ----------
    n_features : int
        The dimension ``d``.
    domain : ndarray of shape (d, 2), float64
        A box ``[low_k, high_k]`` per coordinate that holds essentially all the
        mass (the subclass says how much is outside), suggested as the box of a
        tensor-train approximation.
    n_modes : int
        Number of modes that :meth:`mode_of` distinguishes (1 for unimodal
        targets, for which every label is 0).
    """

    n_features: int
    n_modes: int = 1
    _domain: np.ndarray

    @property
    def domain(self) -> np.ndarray:
        """The suggested box, shape (d, 2), float64 (a fresh copy on each access)."""
        return self._domain.copy()

    # -- public interface -----------------------------------------------------
    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """Log of the unnormalised density at each row of ``x``.

        Parameters
        ----------
        x : torch.Tensor of shape (m, d)
            Points, of any floating dtype and on any device; array-likes are
            converted to float64 tensors.

        Returns
        -------
        torch.Tensor of shape (m,)
            ``log p~(x)`` in the dtype and on the device of ``x``; the
            normaliser is :attr:`log_normalizer`. Differentiable with autograd.
        """
        return self._log_prob(self._check_input(x))

    @property
    def log_normalizer(self) -> float | None:
        """``log Z`` with ``Z`` the integral of ``exp(log_prob)`` over ``R^d``."""
        return None

    def sample(self, n: int, random_state=None) -> torch.Tensor:
        """``n`` exact, independent samples as a float64 CPU tensor of shape (n, d).

        Parameters
        ----------
        n : int
            Number of samples.
        random_state : None, int, numpy or torch generator
            Seed or generator, turned into a CPU ``torch.Generator`` by
            :func:`sktt_flow.utils.random.torch_generator`.

        Raises
        ------
        NotImplementedError
            For targets without an exact sampler.
        """
        if not isinstance(n, numbers.Integral) or isinstance(n, bool) or n < 1:
            raise ValueError(f"n must be a positive integer, got {n!r}.")
        generator = torch_generator(random_state, "cpu")
        samples = self._sample(int(n), generator)
        return samples.to(torch.float64)

    def mode_of(self, x: torch.Tensor) -> torch.Tensor:
        """Integer label in ``[0, n_modes)`` of the mode each row of ``x`` belongs to.

        Returns
        -------
        torch.Tensor of shape (m,), int64, on the device of ``x``.
        """
        x = self._check_input(x)
        return torch.zeros(x.shape[0], dtype=torch.int64, device=x.device)

    def __repr__(self) -> str:
        params = ", ".join(f"{key}={value!r}" for key, value in self._repr_params().items())
        return f"{type(self).__name__}({params})"

    # -- hooks for subclasses -------------------------------------------------
    @abc.abstractmethod
    def _log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """``log p~`` on a validated (m, d) floating tensor."""

    def _sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        raise NotImplementedError(
            f"{type(self).__name__} has no exact sampler; see its docstring for why."
        )

    def _repr_params(self) -> dict:
        return {"n_features": self.n_features}

    # -- helpers --------------------------------------------------------------
    def _set_domain(self, low, high) -> None:
        low = np.broadcast_to(np.asarray(low, dtype=np.float64), (self.n_features,))
        high = np.broadcast_to(np.asarray(high, dtype=np.float64), (self.n_features,))
        self._domain = np.stack([low, high], axis=1).astype(np.float64)

    def _check_input(self, x) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            try:
                x = torch.as_tensor(np.asarray(x, dtype=np.float64))
            except (TypeError, ValueError) as error:
                raise ValueError(
                    f"x must be a tensor of shape (m, {self.n_features}); could not "
                    f"convert {type(x).__name__}: {error}"
                ) from error
        if x.is_complex():
            raise ValueError(f"x must be real, got dtype {x.dtype}.")
        if not x.is_floating_point():
            x = x.to(torch.float64)
        if x.ndim != 2:
            hint = " (use x[None, :] for a single point)" if x.ndim == 1 else ""
            raise ValueError(
                f"x must be 2-D of shape (m, {self.n_features}), got {x.ndim}-D "
                f"shape {tuple(x.shape)}{hint}."
            )
        if x.shape[1] != self.n_features:
            raise ValueError(
                f"x has {x.shape[1]} columns but {type(self).__name__} has "
                f"n_features={self.n_features}."
            )
        return x
