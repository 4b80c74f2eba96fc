"""A model file for :class:`TensorizingFlowDensity` that runs no code on load.

The file is a zip archive with two members:

- ``metadata.json``: plain JSON with the format name and version, the
  versions of sktt_flow and torch that wrote it, the estimator's parameters,
  the architecture (mode, number of features, TT core shapes, box, tail
  weight, spline tail bound), the fitted attributes and the SHA-256 of
  ``state.pt``;
- ``state.pt``: ``torch.save`` of the model's ``state_dict()``, a flat dict
  of CPU tensors (float64, and int64 index buffers), read back with
  ``torch.load(weights_only=True)``.

The architecture is rebuilt from the metadata, never unpickled, then the
tensors are loaded into it. Callables (``log_target``, a custom ``flow``) are
not stored: :func:`load_estimator` takes them as arguments.

The checksum detects corruption, not a deliberate edit of both members; a
file from an untrusted source can at worst hold wrong numbers, not run code.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import pickle
import warnings
import zipfile
import zlib
from numbers import Integral, Real
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from sklearn.utils.validation import check_is_fitted

from sktt_flow.flows import FixedAffine, GaussianBase, TensorizingFlow, build_flow_layers
from sktt_flow.tt.distribution import TTDistribution

if TYPE_CHECKING:
    from collections.abc import Callable

    from sktt_flow.estimator._density import TensorizingFlowDensity

__all__ = ["FORMAT_NAME", "FORMAT_VERSION", "load_estimator", "save_estimator"]

#: Name written in ``metadata.json`` to recognise a model file.
FORMAT_NAME = "sktt_flow.TensorizingFlowDensity"

#: Version of the layout of the file; bumped on incompatible changes.
FORMAT_VERSION = 1

_METADATA = "metadata.json"
_STATE = "state.pt"

#: Fitted attributes stored in the metadata when the estimator has them.
_FITTED_ATTRIBUTES = (
    "loss_curve_",
    "validation_scores_",
    "n_iter_",
    "fit_time_",
    "elbo_",
    "ess_",
    "log_normalizer_",
    "log_normalizer_std_error_",
    "n_target_evaluations_",
)

#: Metadata keys and the JSON types they must have.
_REQUIRED = {
    "format": str,
    "format_version": int,
    "sktt_flow_version": str,
    "torch_version": str,
    "params": dict,
    "mode": str,
    "n_features": int,
    "feature_names": (list, type(None)),
    "tt_core_shapes": list,
    "domain": list,
    "tail_weight": (int, float),
    "tail_bound": (int, float),
    "device": str,
    "fitted": dict,
    "state_sha256": str,
}


# ------------------------------------------------------------------- saving
def _callable_marker(function: Callable) -> dict:
    module = getattr(function, "__module__", None) or "?"
    name = getattr(function, "__qualname__", None) or type(function).__qualname__
    return {"callable": f"{module}.{name}"}


def _to_json(value: Any, name: str) -> Any:
    """``value`` as JSON types, or ``TypeError`` naming the parameter."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (Integral, Real)):
        if isinstance(value, Integral):
            return int(value)
        # Strict JSON has no NaN or infinities: store them as the strings
        # that float() reads back ("nan", "inf", "-inf").
        return float(value) if math.isfinite(value) else str(float(value))
    if isinstance(value, torch.device):
        return str(value)
    if isinstance(value, (np.ndarray, torch.Tensor)):
        return np.asarray(value.cpu() if isinstance(value, torch.Tensor) else value).tolist()
    if isinstance(value, (list, tuple)):
        return [_to_json(item, name) for item in value]
    if isinstance(value, dict) and all(isinstance(key, str) for key in value):
        return {key: _to_json(item, f"{name}[{key!r}]") for key, item in value.items()}
    raise TypeError(
        f"Parameter {name}={value!r} cannot be stored in a model file (not JSON "
        "serialisable); use joblib or pickle for this estimator."
    )


def _json_params(estimator: TensorizingFlowDensity) -> tuple[dict, str | None]:
    params = estimator.get_params(deep=False)
    note = None
    for name, value in params.items():
        if name in ("log_target", "flow") and callable(value):
            params[name] = _callable_marker(value)
        elif name == "random_state" and not (
            value is None or (isinstance(value, Integral) and not isinstance(value, bool))
        ):
            params[name] = None
            note = (
                f"random_state was a {type(value).__name__}, which is not stored; "
                "the loaded estimator has random_state=None."
            )
        else:
            params[name] = _to_json(value, name)
    return params, note


def _tail_bound(model: TensorizingFlow) -> float:
    """The spline layers' tail bound, or the one ``fit`` derives from the box."""
    for module in model.flows.modules():
        bound = getattr(module, "tail_bound", None)
        if isinstance(bound, Real) and not isinstance(bound, bool):
            return float(bound)
    base = model.q0
    if not isinstance(base, TTDistribution):
        return 1.0  # no spline layer: the bound is not used
    return float(torch.maximum(base.low.abs(), base.high.abs()).max()) * 1.2


def save_estimator(estimator: TensorizingFlowDensity, path: str | os.PathLike) -> None:
    """Write a fitted estimator to ``path`` in a format that runs no code on load.

    Parameters
    ----------
    estimator : TensorizingFlowDensity
        A fitted estimator.
    path : str or path-like
        Destination; an existing file is replaced atomically.

    Raises
    ------
    sklearn.exceptions.NotFittedError
        If the estimator is not fitted.
    TypeError
        If a parameter other than ``log_target``, ``flow`` and
        ``random_state`` is not JSON serialisable.
    ValueError
        If the parameters no longer describe the fitted model's architecture
        (changed with ``set_params`` after ``fit``): such a file could not be
        loaded.
    """
    import sktt_flow

    check_is_fitted(estimator)
    model = estimator.flow_
    state = {
        key: tensor.detach().to("cpu").clone(memory_format=torch.contiguous_format)
        for key, tensor in model.state_dict().items()
    }
    buffer = io.BytesIO()
    torch.save(state, buffer)
    state_bytes = buffer.getvalue()

    params, random_state_note = _json_params(estimator)
    feature_names = getattr(estimator, "feature_names_in_", None)
    base = model.q0
    is_tt = isinstance(base, TTDistribution)
    metadata = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "sktt_flow_version": sktt_flow.__version__,
        "torch_version": torch.__version__,
        "params": params,
        "random_state_note": random_state_note,
        "mode": "data" if estimator.log_target is None else "variational",
        "n_features": int(estimator.n_features_in_),
        "feature_names": None if feature_names is None else [str(n) for n in feature_names],
        # A Gaussian base (params["base"] == "gaussian") has no train: its
        # loc and scale are in the state.
        "tt_core_shapes": [list(core.shape) for core in base.cores] if is_tt else [],
        "domain": base.domain.detach().cpu().double().tolist() if is_tt else [],
        "tail_weight": float(base.tail_weight) if is_tt else 0.0,
        "tail_bound": _tail_bound(model),
        "device": str(estimator.device_),
        "fitted": {
            name: _to_json(getattr(estimator, name), name)
            for name in _FITTED_ATTRIBUTES
            if hasattr(estimator, name)
        },
        "state_sha256": hashlib.sha256(state_bytes).hexdigest(),
    }
    # A file that could not be loaded back is refused now rather than at load.
    try:
        _build_model(metadata, estimator.flow, estimator, state, os.fspath(path))
    except ValueError as error:
        raise ValueError(
            f"Cannot save: the estimator's parameters no longer describe its fitted model "
            f"(changed with set_params after fit?). {error}"
        ) from error

    temporary = f"{os.fspath(path)}.part"
    try:
        with zipfile.ZipFile(temporary, "w") as archive:
            archive.writestr(
                _METADATA,
                json.dumps(metadata, indent=1, sort_keys=True, allow_nan=False),
                compress_type=zipfile.ZIP_DEFLATED,
            )
            archive.writestr(_STATE, state_bytes, compress_type=zipfile.ZIP_STORED)
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise


# ------------------------------------------------------------------ loading
_NON_FINITE = frozenset({"nan", "inf", "-inf"})


def _is_number(value: Any) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)) or (
        value in _NON_FINITE
    )


def _from_json_number(value: Any) -> Any:
    if isinstance(value, list):
        return [_from_json_number(item) for item in value]
    return float(value) if isinstance(value, str) else value


def _read_archive(path: str | os.PathLike) -> tuple[dict, bytes]:
    where = os.fspath(path)
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            if sorted(names) != sorted([_METADATA, _STATE]):
                raise ValueError(
                    f"{where} is not a sktt_flow model file: expected the members "
                    f"{_METADATA!r} and {_STATE!r}, found {names}."
                )
            metadata_bytes = archive.read(_METADATA)
            state_bytes = archive.read(_STATE)
    except zipfile.BadZipFile as error:
        raise ValueError(
            f"{where} is not a sktt_flow model file, or is truncated or corrupted ({error})."
        ) from error
    except (EOFError, zlib.error, NotImplementedError, RuntimeError) as error:
        # Cut or damaged compressed data; unsupported or encrypted members.
        raise ValueError(f"{where} is truncated or corrupted ({error}).") from error
    try:
        metadata = json.loads(metadata_bytes.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(
            f"{where} is truncated or corrupted: {_METADATA} is not valid JSON ({error})."
        ) from error
    if not isinstance(metadata, dict) or metadata.get("format") != FORMAT_NAME:
        raise ValueError(f"{where} is not a sktt_flow model file (unknown format name).")
    if metadata.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"{where} has format version {metadata.get('format_version')!r}; this version of "
            f"sktt_flow reads format version {FORMAT_VERSION} only."
        )
    for key, kind in _REQUIRED.items():
        if key not in metadata:
            raise ValueError(f"{where} is truncated or corrupted: {_METADATA} lacks {key!r}.")
        if not isinstance(metadata[key], kind) or isinstance(metadata[key], bool):
            raise ValueError(
                f"{where} is truncated or corrupted: {_METADATA} has an invalid {key!r}."
            )
    names = metadata["feature_names"]
    fitted = metadata["fitted"]
    if (
        (names is not None and not all(isinstance(name, str) for name in names))
        or not all(_is_number(value) for value in fitted.values() if not isinstance(value, list))
        or not all(
            all(map(_is_number, value)) for value in fitted.values() if isinstance(value, list)
        )
    ):
        raise ValueError(
            f"{where} is truncated or corrupted: {_METADATA} has invalid feature names or "
            "fitted attributes."
        )
    if hashlib.sha256(state_bytes).hexdigest() != metadata["state_sha256"]:
        raise ValueError(
            f"{where} is tampered: checksum mismatch (the SHA-256 of {_STATE} differs from "
            f"the one in {_METADATA})."
        )
    return metadata, state_bytes


def _read_state(state_bytes: bytes, where: str) -> dict[str, torch.Tensor]:
    try:
        with warnings.catch_warnings():
            # torch warns about the pickle protocol of crafted files: the
            # error below says what matters.
            warnings.simplefilter("ignore")
            state = torch.load(io.BytesIO(state_bytes), weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as error:
        raise ValueError(
            f"{where} refused: the tensor file {_STATE} contains objects other than tensors "
            "(it could run code), or is not a torch file; it was not loaded."
        ) from error
    except Exception as error:
        raise ValueError(f"{where} is truncated or corrupted: {_STATE} ({error}).") from error
    if not isinstance(state, dict) or not all(
        isinstance(key, str) and isinstance(value, torch.Tensor) for key, value in state.items()
    ):
        raise ValueError(
            f"{where} refused: {_STATE} must hold a flat dict of named tensors, nothing else."
        )
    return state


def _build_model(
    metadata: dict,
    flow: str | Callable,
    estimator: TensorizingFlowDensity,
    state: dict[str, torch.Tensor],
    where: str,
) -> TensorizingFlow:
    """The architecture from the metadata, in float64 on the CPU, with ``state`` loaded."""
    try:
        n_features = metadata["n_features"]
        shapes = [tuple(int(size) for size in shape) for shape in metadata["tt_core_shapes"]]
        if estimator.base == "gaussian":
            if shapes:
                raise ValueError("core shapes for a Gaussian base")
            ones = torch.ones(n_features, dtype=torch.float64)
            base = GaussianBase(torch.zeros_like(ones), ones)
        else:
            if len(shapes) != n_features:
                raise ValueError(f"{len(shapes)} core shapes for {n_features} features")
            cores = [torch.zeros(shape, dtype=torch.float64) for shape in shapes]
            base = TTDistribution(cores, metadata["domain"], tail_weight=metadata["tail_weight"])
        with torch.random.fork_rng(devices=[]):  # layer initialisation is overwritten
            layers = build_flow_layers(
                flow,
                n_features,
                n_layers=estimator.n_flow_layers,
                hidden_units=estimator.hidden_units,
                tail_bound=float(metadata["tail_bound"]),
            )
        ones = torch.ones(n_features, dtype=torch.float64)
        if metadata["mode"] == "data":
            layers.append(FixedAffine(torch.zeros_like(ones), ones))
        elif metadata["mode"] == "variational":
            if layers:  # the maps to and from the unit box, as fit builds them
                layers = [FixedAffine(torch.zeros_like(ones), ones), *layers]
                layers.append(FixedAffine(torch.zeros_like(ones), ones))
        else:
            raise ValueError(f"unknown mode {metadata['mode']!r}")
        model = TensorizingFlow(base, layers).to(dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError) as error:
        raise ValueError(
            f"{where}: the architecture cannot be rebuilt from {_METADATA} ({error})."
        ) from error
    expected = model.state_dict()
    mismatched = sorted(
        key
        for key in expected.keys() & state.keys()
        if expected[key].dtype != state[key].dtype or expected[key].shape != state[key].shape
    )
    missing, unexpected = expected.keys() - state.keys(), state.keys() - expected.keys()
    if mismatched or missing or unexpected:
        details = "; ".join(
            f"{label}: {sorted(keys)[:5]}"
            for label, keys in (
                ("missing", missing),
                ("unexpected", unexpected),
                ("wrong shape or dtype", mismatched),
            )
            if keys
        )
        raise ValueError(
            f"{where}: the stored tensors do not match the architecture rebuilt from the "
            f"parameters ({details})."
        )
    model.load_state_dict(state, strict=True)
    if isinstance(base, TTDistribution) and not torch.equal(
        base.domain, torch.tensor(metadata["domain"], dtype=torch.float64)
    ):
        raise ValueError(f"{where}: the domain in {_METADATA} does not match {_STATE}.")
    return model


def _load_device(stored: str, where: str) -> torch.device:
    try:
        device = torch.device(stored)
    except RuntimeError as error:
        raise ValueError(f"{where}: invalid device {stored!r} in {_METADATA}.") from error
    if device.type == "cuda" and (
        not torch.cuda.is_available()
        or (device.index is not None and device.index >= torch.cuda.device_count())
    ):
        warnings.warn(
            f"The model was fitted on {device}, which is not available here; "
            "it is loaded on the CPU.",
            RuntimeWarning,
            stacklevel=4,
        )
        return torch.device("cpu")
    return device


def load_estimator(
    cls: type[TensorizingFlowDensity],
    path: str | os.PathLike,
    *,
    log_target: Callable | None = None,
    flow: str | Callable | None = None,
) -> TensorizingFlowDensity:
    """Read an estimator written by :func:`save_estimator`; no code is run.

    Parameters
    ----------
    cls : type
        :class:`TensorizingFlowDensity` (or a subclass).
    path : str or path-like
    log_target : callable, default=None
        The unnormalised log-density of a variational model, which is not
        stored. Scoring and sampling work without it; refitting needs it.
    flow : callable, default=None
        The custom flow callable of a model fitted with one (required then);
        rebuilds the layers, whose weights come from the file.

    Returns
    -------
    TensorizingFlowDensity
        A fitted estimator whose ``score_samples`` and ``sample`` equal those
        of the saved one.

    Raises
    ------
    ValueError
        If the file is not a model file, is truncated, corrupted or tampered
        with, holds anything but tensors, or if a needed callable is missing.

    Warns
    -----
    UserWarning
        When the file was written by another version of sktt_flow, or a
        variational model is loaded without ``log_target``.
    RuntimeWarning
        When the device the model was fitted on is not available: it is
        loaded on the CPU.
    """
    import sktt_flow

    where = os.fspath(path)
    metadata, state_bytes = _read_archive(path)
    if metadata["sktt_flow_version"] != sktt_flow.__version__:
        warnings.warn(
            f"{where} was written by sktt_flow {metadata['sktt_flow_version']} and is loaded "
            f"by sktt_flow {sktt_flow.__version__}: check the results.",
            UserWarning,
            stacklevel=3,
        )
    params = dict(metadata["params"])
    stored_flow = params.pop("flow", "realnvp")
    params.pop("log_target", None)
    if isinstance(stored_flow, dict):
        if flow is None:
            raise ValueError(
                f"{where} holds a model fitted with a custom flow callable "
                f"({stored_flow.get('callable', '?')}), which is not stored: pass it as "
                f"{cls.__name__}.load(path, flow=...)."
            )
    elif flow is not None and flow != stored_flow:
        raise ValueError(
            f"{where} holds a model with flow={stored_flow!r}: flow= is only needed for "
            "models fitted with a custom flow callable."
        )
    if flow is not None and not isinstance(flow, str) and not callable(flow):
        raise TypeError(f"flow must be callable, got {type(flow).__name__}.")
    if log_target is not None:
        if not callable(log_target):
            raise TypeError(f"log_target must be callable, got {type(log_target).__name__}.")
        if metadata["mode"] != "variational":
            raise ValueError(
                f"{where} holds a model fitted to data: log_target is only for variational models."
            )
    estimator = cls()
    try:
        estimator.set_params(
            **params, flow=stored_flow if flow is None else flow, log_target=log_target
        )
        estimator._validate_params()
    except (TypeError, ValueError) as error:
        raise ValueError(f"{where}: invalid parameters in {_METADATA} ({error}).") from error

    state = _read_state(state_bytes, where)
    model = _build_model(metadata, estimator.flow, estimator, state, where)
    device = _load_device(metadata["device"], where)
    fitted = cls._finalize(model.to(device), device)
    fitted["n_features_in_"] = metadata["n_features"]
    if metadata["feature_names"] is not None:
        fitted["feature_names_in_"] = np.asarray(metadata["feature_names"], dtype=object)
    fitted.update(
        {
            name: _from_json_number(value)
            for name, value in metadata["fitted"].items()
            if name in _FITTED_ATTRIBUTES
        }
    )
    for name, value in fitted.items():
        setattr(estimator, name, value)
    if metadata["mode"] == "variational" and log_target is None:
        warnings.warn(
            f"{where} holds a variational model: log_target is not stored. Scoring and "
            f"sampling work; to refit, pass it as {cls.__name__}.load(path, log_target=...).",
            UserWarning,
            stacklevel=3,
        )
    return estimator
