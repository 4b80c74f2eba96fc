"""Where a model lives: the ``device`` parameter, checked."""

from __future__ import annotations

import torch

__all__ = ["resolve_device"]


def resolve_device(device) -> torch.device:
    """The torch device that ``device`` names, checked against this machine.

    ``"auto"`` is the first CUDA device when there is one, else the CPU; a
    ``torch.device`` or a name (``"cpu"``, ``"cuda"``, ``"cuda:N"``) must
    exist here.

    Raises
    ------
    ValueError
        For another kind of device, or a CUDA device this machine lacks,
        with the reason.
    """
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise ValueError(
            f'device must be "cpu", "cuda", "cuda:N" or "auto", got {device!r}.'
        ) from error
    if resolved.type not in ("cpu", "cuda"):
        raise ValueError(f'device must be "cpu", "cuda", "cuda:N" or "auto", got {device!r}.')
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"device={device!r} was requested but CUDA is not available on this "
                'machine (torch.cuda.is_available() is False); use device="cpu" or "auto".'
            )
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise ValueError(
                f"device={device!r} was requested but only {torch.cuda.device_count()} "
                "CUDA device(s) are visible."
            )
    return resolved
