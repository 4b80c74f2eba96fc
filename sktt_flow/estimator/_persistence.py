"""A model file for :class:`TensorizingFlowDensity` that runs no code on load.

The file is a zip archive with two members:

- ``metadata.json``: plain JSON with the format name and version, the
  versions of sktt_flow and torch that wrote it, the estimator's parameters,
  the architecture (mode, number of features, TT core shapes, box, tail
  weight, spline tail bound, the order of the group of a symmetrised base,
  ``symmetry_order``, absent or 0 for none; for a base of tempered layers,
  ``tempered``: the layers' core shapes, their exponents, the uniform weight
  and the outer map's kind), the fitted attributes and the
  SHA-256 of ``state.pt``;
- ``state.pt``: ``torch.save`` of the model's ``state_dict()``, a flat dict
  of CPU tensors (float64, and int64 index buffers), read back with
  ``torch.load(weights_only=True)``. It is the float64 model whatever
  ``inference_dtype``: the float32 copy is rebuilt from it on load as ``fit``
  builds it, so a loaded model scores bit for bit as the saved one.

The architecture is rebuilt from the metadata, never unpickled, then the
tensors are loaded into it. Before anything is built, every metadata entry is
checked for its JSON type, the device must be ``"cpu"``, ``"cuda"`` or
``"cuda:N"``, and the sizes the metadata implies (core shapes, features, box,
``n_basis``, ``tt_rank``, and the flow's size from ``n_flow_layers`` and
``hidden_units``) are compared with the tensors in ``state.pt``: an edited file
that claims more than it holds is refused without allocating what it claims.
Callables (``log_target``, a custom ``flow``) are not stored:
:func:`load_estimator` takes them as arguments.

:func:`save_estimator` writes a temporary file created exclusively next to
the destination (never through a link planted there, never shared with a
concurrent save) and moves it into place with :func:`os.replace`.

The checksum detects corruption, not a deliberate edit of both members; a
file from an untrusted source can at worst hold wrong numbers, not run code.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import math
import os
import pickle
import re
import secrets
import stat
import warnings
import zipfile
import zlib
from numbers import Integral, Real
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from sklearn.utils.validation import check_is_fitted

from sktt_flow.flows import (
    FIXED_LAYERS,
    FixedAffine,
    FixedBoundsMap,
    FixedLinearAffine,
    FixedMarginalNormalMap,
    GaussianBase,
    GaussianMixtureBase,
    SymmetrizedBase,
    TemperedTTBase,
    TensorizingFlow,
    build_flow_layers,
    spline_tail_bound,
    split_bounds_map,
    split_feature_map,
)
from sktt_flow.flows.tempered import OUTER_MAPS
from sktt_flow.tt.distribution import TTDistribution
from sktt_flow.utils.validation import check_domain

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

#: Fitted attributes stored in the metadata when the estimator has them, and
#: the JSON type each must have on load: "number" (a JSON number, or one of
#: the strings "nan", "inf", "-inf"), "numbers" (a list of them) or "count"
#: (a non-negative integer).
_FITTED_KINDS = {
    "loss_curve_": "numbers",
    "validation_scores_": "numbers",
    "n_iter_": "count",
    "fit_time_": "number",
    "elbo_": "number",
    "ess_": "number",
    "log_normalizer_": "number",
    "log_normalizer_std_error_": "number",
    "n_target_evaluations_": "count",
    "mass_covering_scores_": "numbers",
    "base_elbo_": "number",
    "base_ess_": "number",
    "base_kl_": "number",
    "preconditioner_": "coordinates",
    "base_": "base",
    "marginal_gaussianization_": "marginal",
}

#: Kinds of the last layer of a variational model, the map into the target's
#: coordinates (metadata ``"output_layer"``): none (the identity, a base
#: alone on an explicit box), a FixedAffine, or a FixedLinearAffine (a
#: full preconditioner). Files without the key predate preconditioning:
#: a FixedAffine when there is a flow, none otherwise.
_OUTPUT_LAYERS = ("none", "diagonal", "linear")
_FITTED_ATTRIBUTES = tuple(_FITTED_KINDS)

#: Devices a model file may name: where fit can put a model.
_STORED_DEVICE = re.compile(r"(cpu|cuda(:[0-9]+)?)")

#: Flow layers whose sizes are set by ``n_flow_layers`` and ``hidden_units``.
_SIZED_FLOWS = frozenset({"realnvp", "nsf", "maf"})

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
        return _to_json(value.item(), name)
    if isinstance(value, (Integral, Real)):
        if isinstance(value, Integral):
            return int(value)
        # Strict JSON has no NaN or infinities: store them as the strings
        # that float() reads back ("nan", "inf", "-inf").
        return float(value) if math.isfinite(value) else str(float(value))
    if isinstance(value, torch.device):
        return str(value)
    if isinstance(value, (np.ndarray, torch.Tensor)):
        # item by item, as a list: an array's infinities and NaN too
        array = np.asarray(value.cpu() if isinstance(value, torch.Tensor) else value)
        return _to_json(array.tolist(), name)
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


def _companion_entry(model: TensorizingFlow, mode: str) -> dict | None:
    """What rebuilds a model's companion with :func:`_build_model`: a flow of
    the same architecture on a Gaussian base (standard, or a mixture of
    ``gaussian_components`` Gaussians), with its own tail bound, whitening,
    output layer and defensive weight, and its weight in the mixture."""
    companion = model.companion
    if companion is None:
        return None
    return {
        "weight": model.companion_weight,
        "tail_bound": _tail_bound(companion),
        "whitening": _has_whitening(companion, mode == "data"),
        # variational mode: the map into the target's coordinates
        "output_layer": _output_layer_kind(companion, mode),
        "defensive_weight": companion.defensive_weight,
        # 0: the standard Gaussian
        "gaussian_components": getattr(companion.q0, "n_components", 0),
    }


def _companion_metadata(metadata: dict, where: str) -> dict | None:
    """The metadata of the companion as a model of its own (a model of the
    same mode on a Gaussian base), from the ``companion`` entry; None when
    there is none (files that predate it have none)."""
    entry = metadata.get("companion")
    if entry is None:
        return None
    if not (
        isinstance(entry, dict)
        and _is_finite(entry.get("weight"))
        and 0.0 < entry["weight"] < 1.0
        and _is_finite(entry.get("tail_bound"))
        and isinstance(entry.get("whitening"), bool)
        and _is_finite(entry.get("defensive_weight"))
        and _is_count(entry.get("gaussian_components", 0), minimum=0)
        # files that predate variational companions have no output_layer
        and entry.get("output_layer", "diagonal") in _OUTPUT_LAYERS
    ):
        raise ValueError(
            f"{where} is truncated or corrupted: {_METADATA} has an invalid 'companion' "
            f"({_preview(entry)})."
        )
    return {
        **metadata,
        "tt_core_shapes": [],
        "domain": [],
        "tail_weight": 0.0,
        "symmetry_order": 0,
        "tempered": None,
        "tail_bound": entry["tail_bound"],
        "output_layer": entry.get("output_layer", "diagonal"),
        "whitening": entry["whitening"],
        "defensive_weight": entry["defensive_weight"],
        "companion": None,
        "gaussian_components": entry.get("gaussian_components", 0),
        "fitted": {**metadata["fitted"], "base_": "gaussian"},
    }


def _tail_bound(model: TensorizingFlow) -> float:
    """The spline layers' tail bound, or the one ``fit`` derives from the box."""
    for module in model.flows.modules():
        bound = getattr(module, "tail_bound", None)
        if isinstance(bound, Real) and not isinstance(bound, bool):
            return float(bound)
    # no spline layer: the bound fit would derive from the box (unused for a
    # Gaussian base)
    return spline_tail_bound(model.q0)


def save_estimator(estimator: TensorizingFlowDensity, path: str | os.PathLike) -> None:
    """Write a fitted estimator to ``path`` in a format that runs no code on load.

    Parameters
    ----------
    estimator : TensorizingFlowDensity
        A fitted estimator.
    path : str or path-like
        Destination; an existing file is replaced atomically (through a
        temporary file of its own in the same directory) and keeps its
        permission bits; a new file gets ``0o666`` less the umask.

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
    # symmetry: the train inside the symmetrised base, whose group (its
    # inverses, its centre) is in the state as q0.matrices, q0.inverse_index
    # and q0.center
    symmetry_order = base.order if isinstance(base, SymmetrizedBase) else 0
    if symmetry_order:
        base = base.base
    is_tt = isinstance(base, TTDistribution)
    tempered = None
    if isinstance(base, TemperedTTBase):
        # the layers' cores, the outer map and its inverse are in the state
        # as q0.layers.<j>.core_<k>, q0.shift, q0.matrix, q0.matrix_inverse
        # and q0.log_abs_det
        tempered = {
            "layer_core_shapes": [
                [list(core.shape) for core in layer.cores()] for layer in base.layers
            ],
            "betas": [float(beta) for beta in base.betas],
            "defensive_weight": float(base.defensive_weight),
            "outer": base.outer,
        }
    # The fitted model's mode, not the parameter's: a variational model
    # loaded without its log_target is saved again as what it is.
    mode = "variational" if hasattr(estimator, "elbo_") else "data"
    metadata = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "sktt_flow_version": sktt_flow.__version__,
        "torch_version": torch.__version__,
        "params": params,
        "random_state_note": random_state_note,
        "mode": mode,
        "n_features": int(estimator.n_features_in_),
        "feature_names": None if feature_names is None else [str(n) for n in feature_names],
        # A Gaussian base (params["base"] == "gaussian") has no train: its
        # loc and scale are in the state.
        "tt_core_shapes": [list(core.shape) for core in base.cores] if is_tt else [],
        "domain": base.domain.detach().cpu().double().tolist() if is_tt else [],
        "tail_weight": float(base.tail_weight) if is_tt else 0.0,
        # a Gaussian-mixture base's components, 0 for the others
        "gaussian_components": getattr(base, "n_components", 0),
        # |G| of a base symmetrised over a group (symmetry=...), 0 for none
        "symmetry_order": symmetry_order,
        # a base of tempered layers (base="tempered"), None for the others
        "tempered": tempered,
        # the automatic choices of a train fitted to data (tt_.selection)
        "tt_selection": _selection_to_json(getattr(base, "selection", None)) if is_tt else None,
        "tail_bound": _tail_bound(model),
        "output_layer": _output_layer_kind(model, mode),
        # data mode: a FixedLinearAffine (whitening) before the standardisation
        "whitening": _has_whitening(model, mode == "data"),
        # data mode: a FixedBoundsMap (feature_bounds) after the standardisation
        "bounds_map": split_bounds_map(model.flows)[1] is not None,
        # data mode: the knots per feature of a FixedMarginalNormalMap
        # (marginal_gaussianization) after the standardisation, 0 for none
        "marginal_map_knots": _marginal_map_knots(model),
        "defensive_weight": model.defensive_weight,
        # whether the model has trainable flow layers: a data fit with too few
        # held-out rows to choose (MIN_CHOICE_ROWS) has none whatever ``flow``
        "flow_layers": any(not isinstance(layer, FIXED_LAYERS) for layer in model.flows),
        # the model on the Gaussian next to the one on the TT, its tensors in
        # the state as companion.*; None for the others
        "companion": _companion_entry(model, mode),
        # torch.device("cpu:0") is the CPU: store the one name load accepts.
        "device": "cpu" if estimator.device_.type == "cpu" else str(estimator.device_),
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

    def write(file: io.BufferedWriter) -> None:
        with zipfile.ZipFile(file, "w") as archive:
            archive.writestr(
                _METADATA,
                json.dumps(metadata, indent=1, sort_keys=True, allow_nan=False),
                compress_type=zipfile.ZIP_DEFLATED,
            )
            archive.writestr(_STATE, state_bytes, compress_type=zipfile.ZIP_STORED)

    _write_atomically(os.fspath(path), write)


#: Fresh temporary names tried before giving up; each has 64 random bits, so
#: more than one attempt only happens when someone plants names on purpose.
_TEMPORARY_ATTEMPTS = 100


def _create_temporary(directory: str, name: str) -> tuple[int, str]:
    """A new, empty file in ``directory``: its descriptor and its path.

    Created exclusively (``O_EXCL``, as :func:`tempfile.mkstemp` does), so an
    existing file or symbolic link at the name is never opened or followed,
    and two writers never share a file. Unlike ``mkstemp`` the mode is
    ``0o666`` less the umask, as a plain ``open(path, "wb")`` would give.
    """
    flags = (
        os.O_WRONLY
        | os.O_CREAT
        | os.O_EXCL
        | getattr(os, "O_NOFOLLOW", 0)
        | getattr(os, "O_BINARY", 0)
    )
    # Hidden, and short enough to fit in a file name whatever the destination's.
    prefix = f".{name[:64]}."
    for _ in range(_TEMPORARY_ATTEMPTS):
        temporary = os.path.join(directory, f"{prefix}{secrets.token_hex(8)}.part")
        try:
            return os.open(temporary, flags, 0o666), temporary
        except FileExistsError:
            continue
    raise FileExistsError(
        f"Could not create a temporary file in {directory}: {_TEMPORARY_ATTEMPTS} random "
        "names were all taken."
    )


def _write_atomically(destination: str, write: Callable[[io.BufferedWriter], None]) -> None:
    """Run ``write`` on a temporary file next to ``destination``, then move it there.

    Readers see the old file or the complete new one, never a partial file;
    concurrent writers each write their own temporary and the last
    :func:`os.replace` wins. On any failure (an interrupt included) the
    temporary is removed and ``destination`` is left as it was. The new file
    gets the mode of the file it replaces, or ``0o666`` less the umask, as
    when ``open(destination, "wb")`` writes it.
    """
    directory = os.path.dirname(os.path.abspath(destination))
    descriptor, temporary = _create_temporary(directory, os.path.basename(destination))
    try:
        with os.fdopen(descriptor, "wb") as file:
            write(file)
            file.flush()
            # On disk before the rename: a crash must not leave an empty model.
            os.fsync(file.fileno())
        if os.name == "posix":
            try:
                existing = os.stat(destination)
            except FileNotFoundError:
                existing = None
            if existing is not None and stat.S_ISREG(existing.st_mode):
                os.chmod(temporary, stat.S_IMODE(existing.st_mode) & 0o777)
        os.replace(temporary, destination)
    except BaseException:
        try:
            os.unlink(temporary)
        except OSError:
            pass  # already gone; the original error is the one to report
        raise


# ------------------------------------------------------------------ loading
_NON_FINITE = frozenset({"nan", "inf", "-inf"})


def _is_number(value: Any) -> bool:
    """A JSON number, or one of the strings that stand for NaN and infinities."""
    if isinstance(value, str):
        return value in _NON_FINITE
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_count(value: Any, minimum: int = 0) -> bool:
    """A JSON integer (not a boolean) of at least ``minimum``."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def _is_finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _preview(value: Any) -> str:
    """``repr(value)``, shortened: error messages quote edited files."""
    text = repr(value)
    return text if len(text) <= 60 else f"{text[:57]}..."


#: What each kind of fitted attribute must be, for error messages.
_KIND_DESCRIPTIONS = {
    "number": "a number",
    "numbers": "a list of numbers",
    "count": "a non-negative integer",
    "coordinates": 'one of "none", "diagonal" or "full"',
    "base": 'one of "tt", "gaussian" or "tempered"',
    "marginal": 'one of "none", "smooth" or "sharp"',
}


def _check_fitted(fitted: dict, where: str) -> None:
    """Raise ``ValueError`` naming the first fitted attribute of the wrong JSON type.

    Names this version does not know (written by a later one) are not loaded,
    so they are not checked either.
    """
    for name, value in fitted.items():
        kind = _FITTED_KINDS.get(name)
        if kind == "number":
            valid = _is_number(value)
        elif kind == "numbers":
            valid = isinstance(value, list) and all(map(_is_number, value))
        elif kind == "count":
            valid = _is_count(value)
        elif kind == "coordinates":
            valid = value in ("none", "diagonal", "full")
        elif kind == "base":
            valid = value in ("tt", "gaussian", "tempered")
        elif kind == "marginal":
            valid = value in ("none", "smooth", "sharp")
        else:
            continue
        if not valid:
            raise ValueError(
                f"{where} is truncated or corrupted: {_METADATA} has an invalid fitted "
                f"attribute {name!r} (expected {_KIND_DESCRIPTIONS[kind]}, got "
                f"{_preview(value)})."
            )


def _check_device_name(stored: str, where: str) -> None:
    """Raise ``ValueError`` unless ``stored`` is a device that fit can use."""
    if not _STORED_DEVICE.fullmatch(stored):
        raise ValueError(
            f"{where}: invalid device {stored!r} in {_METADATA}; a model file names "
            "'cpu', 'cuda' or 'cuda:N'."
        )


def _from_json_number(value: Any) -> Any:
    if isinstance(value, list):
        return [_from_json_number(item) for item in value]
    return float(value) if isinstance(value, str) else value


def _from_json_fitted(name: str, value: Any) -> Any:
    """A fitted attribute as stored (checked by :func:`_check_fitted`)."""
    if _FITTED_KINDS[name] in ("coordinates", "base", "marginal"):
        return value
    return _from_json_number(value)


def _has_gaussian_base(metadata: dict, estimator) -> bool:
    """Whether the stored model's base is a Gaussian: the fitted ``base_``
    (checked by :func:`_check_fitted`), or for files that predate it
    (``base`` was then "tt" or "gaussian") the parameter."""
    stored = metadata["fitted"].get("base_")
    if stored is None:
        return estimator.base == "gaussian"
    return stored == "gaussian"


def _output_layer_kind(model: TensorizingFlow, mode: str) -> str:
    """What the last layer of a model is, for :func:`_build_model` (see
    :data:`_OUTPUT_LAYERS`)."""
    # the map onto the features (feature_bounds, marginal_gaussianization),
    # if any, follows the output layer; the metadata records it on its own
    flows, _ = split_feature_map(model.flows)
    if mode == "data" or not flows:
        return "diagonal" if flows else "none"
    last = flows[-1]
    if isinstance(last, FixedLinearAffine):
        return "linear"
    if isinstance(last, FixedAffine):
        return "diagonal"
    return "none"


def _selection_to_json(selection: dict | None) -> dict | None:
    """``TTDistribution.selection`` with its tuple-keyed scores as rows."""
    if selection is None:
        return None
    return {
        "tt_rank": int(selection["tt_rank"]),
        "n_basis": int(selection["n_basis"]),
        "smoothness": float(selection["smoothness"]),
        # strict JSON: a non-finite score (a failed candidate) is left out
        # the keys hold the settings as given (numpy integers from a search's grid)
        "scores": [
            [*_to_json(list(key), "tt_.selection"), float(score)]
            for key, score in selection["scores"].items()
            if math.isfinite(score)
        ],
        "start_scores": [
            [*_to_json(list(key), "tt_.selection"), float(score)]
            for key, score in selection["start_scores"].items()
            if math.isfinite(score)
        ],
    }


def _stored_selection(metadata: dict, where: str) -> dict | None:
    """The stored ``tt_.selection`` (None: no train fitted to data, or a file
    that predates it), with its score tables keyed by tuples again."""
    stored = metadata.get("tt_selection")
    if stored is None:
        return None
    corrupted = ValueError(
        f"{where} is truncated or corrupted: {_METADATA} has an invalid 'tt_selection'."
    )

    def rows(name: str, width: int) -> list:
        value = stored.get(name)
        if not (
            isinstance(value, list)
            and all(
                isinstance(row, list)
                and len(row) == width
                and all(_is_finite(item) for item in row)
                for row in value
            )
        ):
            raise corrupted
        return value

    if not isinstance(stored, dict) or not all(
        _is_finite(stored.get(name)) for name in ("tt_rank", "n_basis", "smoothness")
    ):
        raise corrupted
    return {
        "tt_rank": int(stored["tt_rank"]),
        "n_basis": int(stored["n_basis"]),
        "smoothness": float(stored["smoothness"]),
        "scores": {
            (int(n_basis), int(rank), float(smoothness)): float(score)
            for n_basis, rank, smoothness, score in rows("scores", 4)
        },
        "start_scores": {
            (int(n_basis), int(rank)): float(score)
            for n_basis, rank, score in rows("start_scores", 3)
        },
    }


def _has_whitening(model: TensorizingFlow, data_mode: bool) -> bool:
    """Whether a data-mode model whitens: a FixedLinearAffine just before its
    standardisation (``preconditioner_ == "full"``), which the map onto
    features may follow."""
    flows, _ = split_feature_map(model.flows)
    return data_mode and len(flows) >= 2 and isinstance(flows[-2], FixedLinearAffine)


def _stored_flow(metadata: dict, flow: str | Callable, where: str) -> str | Callable:
    """The flow the model was built with: ``flow`` (the parameter), or
    ``"none"`` where the metadata's ``flow_layers`` flag (absent in files
    that predate it: the parameter's) says the model has no flow layers."""
    flow_layers = metadata.get("flow_layers", True)
    if not isinstance(flow_layers, bool):
        raise ValueError(
            f"{where} is truncated or corrupted: {_METADATA} has an invalid 'flow_layers'."
        )
    return flow if flow_layers else "none"


def _stored_whitening(metadata: dict, where: str) -> bool:
    """The metadata's ``whitening`` flag (absent in files that predate it)."""
    whitening = metadata.get("whitening", False)
    if not isinstance(whitening, bool):
        raise ValueError(
            f"{where} is truncated or corrupted: {_METADATA} has an invalid 'whitening'."
        )
    if whitening and metadata["mode"] != "data":
        raise ValueError(
            f"{where}: the architecture cannot be rebuilt from {_METADATA} (whitening in "
            f"{metadata['mode']} mode)."
        )
    return whitening


def _stored_bounds_map(metadata: dict, where: str) -> bool:
    """The metadata's ``bounds_map`` flag (``feature_bounds``, either mode;
    absent in files that predate it)."""
    bounds_map = metadata.get("bounds_map", False)
    if not isinstance(bounds_map, bool):
        raise ValueError(
            f"{where} is truncated or corrupted: {_METADATA} has an invalid 'bounds_map'."
        )
    return bounds_map


def _marginal_map_knots(model: TensorizingFlow) -> int:
    """The knots per feature of a model's marginal Gaussianization, 0 for none."""
    _, feature_map = split_feature_map(model.flows)
    if isinstance(feature_map, FixedMarginalNormalMap):
        return int(feature_map.feature_knots.shape[1])
    return 0


def _stored_marginal_map_knots(metadata: dict, where: str) -> int:
    """The metadata's ``marginal_map_knots`` (0: no map; absent in files that
    predate it)."""
    n_knots = metadata.get("marginal_map_knots", 0)
    if not _is_count(n_knots, minimum=0) or n_knots == 1:
        raise ValueError(
            f"{where} is truncated or corrupted: {_METADATA} has an invalid "
            f"'marginal_map_knots' ({_preview(n_knots)})."
        )
    if n_knots and (metadata["mode"] != "data" or _stored_bounds_map(metadata, where)):
        raise ValueError(
            f"{where}: the architecture cannot be rebuilt from {_METADATA} (a marginal map "
            "needs data mode and no feature bounds)."
        )
    return n_knots


def _check_stored_marginal_map(metadata: dict, estimator, layers: list) -> None:
    """Whether the rebuilt layers end with a marginal Gaussianization is what
    the parameter ``marginal_gaussianization`` says, or with ``"auto"`` what
    the fitted ``marginal_gaussianization_`` says was kept."""
    has_map = bool(layers) and isinstance(layers[-1], FixedMarginalNormalMap)
    wanted = estimator.marginal_gaussianization
    kept = metadata["fitted"].get("marginal_gaussianization_")
    if kept is not None and wanted != "auto" and kept != wanted:
        raise ValueError(
            f"marginal_gaussianization={wanted!r}, but the fitted marginal_gaussianization_ "
            f"is {kept!r}"
        )
    if wanted == "auto":
        if kept is None:
            raise ValueError("marginal_gaussianization='auto', but nothing says what was kept")
        wanted = kept
    if has_map != (wanted != "none"):
        raise ValueError(
            f"marginal_gaussianization={wanted!r}, but the model "
            f"{'has a' if has_map else 'has no'} marginal Gaussianization"
        )


def _stored_gaussian_components(metadata: dict, where: str) -> int:
    """The number of components of a stored Gaussian base: 0 for the standard
    Gaussian (and in files that predate mixtures), ``k`` for a
    :class:`~sktt_flow.flows.GaussianMixtureBase`."""
    n_components = metadata.get("gaussian_components", 0)
    if not _is_count(n_components, minimum=0):
        raise ValueError(
            f"{where} is truncated or corrupted: {_METADATA} has an invalid "
            f"'gaussian_components' ({_preview(n_components)})."
        )
    return n_components


def _stored_defensive_weight(metadata: dict, where: str) -> float:
    """The model's defensive weight (0 in files that predate it)."""
    weight = metadata.get("defensive_weight", 0.0)
    if not (_is_finite(weight) and 0.0 <= weight < 1.0):
        raise ValueError(
            f"{where} is truncated or corrupted: {_METADATA} has an invalid "
            f"'defensive_weight' ({_preview(weight)})."
        )
    return float(weight)


def _stored_tempered(metadata: dict, where: str) -> dict | None:
    """The stored description of a tempered base, None for the other bases
    (and in files that predate it), its JSON types checked."""
    tempered = metadata.get("tempered")
    if tempered is None:
        return None
    shapes = tempered.get("layer_core_shapes") if isinstance(tempered, dict) else None
    n_features = metadata["n_features"]
    valid = (
        isinstance(shapes, list)
        and all(
            isinstance(layer, list)
            and len(layer) == n_features
            and all(
                isinstance(shape, list)
                and len(shape) == 3
                and all(_is_count(size, minimum=1) for size in shape)
                for shape in layer
            )
            for layer in shapes
        )
        and isinstance(tempered.get("betas"), list)
        and len(tempered["betas"]) == len(shapes)
        and all(_is_finite(beta) and 0 < beta <= 1 for beta in tempered["betas"])
        and _is_finite(tempered.get("defensive_weight"))
        and 0 < tempered["defensive_weight"] < 1
        and tempered.get("outer") in OUTER_MAPS
    )
    if not valid:
        raise ValueError(
            f"{where} is truncated or corrupted: {_METADATA} has an invalid 'tempered'."
        )
    return tempered


def _stored_symmetry_order(metadata: dict, where: str) -> int:
    """``|G|`` of the stored model's symmetrised base, 0 for none (and in files
    that predate ``symmetry``)."""
    order = metadata.get("symmetry_order", 0)
    if not _is_count(order) or order == 1:
        raise ValueError(
            f"{where} is truncated or corrupted: {_METADATA} has an invalid "
            f"'symmetry_order' ({_preview(order)}; 0, or the size of a group of at least 2)."
        )
    return order


def _output_layer(metadata: dict, has_flow_layers: bool) -> str:
    """The stored kind of the last layer, or what files without it had."""
    default = "diagonal" if metadata["mode"] == "data" or has_flow_layers else "none"
    return metadata.get("output_layer", default)


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
    if names is not None and (
        not all(isinstance(name, str) for name in names) or len(names) != metadata["n_features"]
    ):
        raise ValueError(
            f"{where} is truncated or corrupted: {_METADATA} has invalid 'feature_names' "
            f"(expected {metadata['n_features']} strings, got {_preview(names)})."
        )
    _check_fitted(metadata["fitted"], where)
    _check_device_name(metadata["device"], where)
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


@functools.lru_cache(maxsize=32)
def _layer_state_sizes(flow: str, n_features: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Numbers in the state of an even and of an odd layer of a built-in flow,
    at ``hidden_units`` = 1, 2 and 3.

    Built from the layers themselves, so that they follow normflows: tiny
    layers (``n_features`` wide at most) cost nothing to build.
    """

    def state_size(n_layers: int, hidden_units: int) -> int:
        with torch.random.fork_rng(devices=[]):  # normflows draws initial weights
            layers = build_flow_layers(
                flow, n_features, n_layers=n_layers, hidden_units=hidden_units, tail_bound=1.0
            )
        return sum(tensor.numel() for tensor in torch.nn.ModuleList(layers).state_dict().values())

    one_layer = tuple(state_size(1, hidden_units) for hidden_units in (1, 2, 3))
    two_layers = tuple(state_size(2, hidden_units) for hidden_units in (1, 2, 3))
    return one_layer, tuple(two - one for one, two in zip(one_layer, two_layers, strict=True))


def _quadratic_through(values: tuple[int, ...], x: int) -> int:
    """The quadratic through ``(1, values[0]), (2, values[1]), (3, values[2])`` at ``x``,
    in exact integer arithmetic (``(x - 1)(x - 2)`` is even)."""
    first, second, third = values
    return (
        first + (x - 1) * (second - first) + (x - 1) * (x - 2) // 2 * (third - 2 * second + first)
    )


def cores_disagree_with_params(estimator, shapes) -> str | None:
    """What in the estimator's ``n_basis`` and ``tt_rank`` the TT cores of
    shapes ``shapes`` (``(r, n, r')`` each) contradict, or None: an integer
    ``n_basis`` is every core's number of basis functions, an integer
    ``tt_rank`` bounds every bond rank (rounding may leave smaller ones).
    A model file must agree (:func:`load_estimator` rebuilds from the
    parameters), and so must a warm start, which keeps the cores."""
    if isinstance(estimator.n_basis, Integral) and any(
        shape[1] != estimator.n_basis for shape in shapes
    ):
        return (
            f"params n_basis={estimator.n_basis}, but the cores have "
            f"{sorted({shape[1] for shape in shapes})} basis functions"
        )
    largest_rank = max(max(shape[0], shape[2]) for shape in shapes)
    if isinstance(estimator.tt_rank, Integral) and largest_rank > estimator.tt_rank:
        return f"params tt_rank={estimator.tt_rank}, but the cores have rank {largest_rank}"
    return None


def _flow_state_size(flow: str, n_features: int, n_layers: int, hidden_units: int) -> int:
    """Numbers in the state of the built-in flow ``flow``, without building it.

    Each layer of ``"realnvp"``, ``"nsf"`` and ``"maf"`` is a network of fixed
    depth whose weights and masks are at most ``hidden_units`` squared: for a
    given ``n_features`` its size is a quadratic in ``hidden_units``, and
    layers alternate between two kinds (masks or permutations by parity). The
    quadratics are measured on layers of width 1 to 3, then evaluated at the
    claimed width, so that a claimed size is checked in microseconds however
    large it is.
    """
    if flow not in _SIZED_FLOWS:
        return 0  # "none": no layer
    even, odd = _layer_state_sizes(flow, n_features)
    return (n_layers + 1) // 2 * _quadratic_through(even, hidden_units) + (
        n_layers // 2
    ) * _quadratic_through(odd, hidden_units)


def _check_architecture(
    metadata: dict,
    flow: str | Callable,
    estimator: TensorizingFlowDensity,
    state: dict[str, torch.Tensor],
    where: str,
) -> None:
    """Check the metadata against itself and against the shapes in ``state``.

    Runs before any module is built and allocates nothing that grows with the
    claimed sizes, so that a file whose metadata claims more than its tensors
    hold (huge cores, ``hidden_units=20000``) is refused at once.

    Raises
    ------
    ValueError
        Naming the entry of the metadata that disagrees.
    """

    def unbuildable(detail: str) -> ValueError:
        return ValueError(
            f"{where}: the architecture cannot be rebuilt from {_METADATA} ({detail})."
        )

    def mismatch(detail: str) -> ValueError:
        return ValueError(
            f"{where}: the stored tensors do not match the architecture in {_METADATA} ({detail})."
        )

    # The metadata alone.
    n_features = metadata["n_features"]
    shapes = metadata["tt_core_shapes"]
    mode = metadata["mode"]
    if not _is_count(n_features, minimum=1):
        raise unbuildable(f"n_features={_preview(n_features)} is not a positive integer")
    if mode not in ("data", "variational"):
        raise unbuildable(f"unknown mode {_preview(mode)}")
    if not _is_finite(metadata["tail_bound"]) or metadata["tail_bound"] <= 0:
        raise unbuildable(f"tail_bound={_preview(metadata['tail_bound'])} is not positive")
    order = _stored_symmetry_order(metadata, where)
    for k, shape in enumerate(shapes):
        if not (
            isinstance(shape, list)
            and len(shape) == 3
            and all(_is_count(size, minimum=1) for size in shape)
        ):
            raise unbuildable(
                f"tt_core_shapes[{k}]={_preview(shape)} is not three positive integers"
            )
    tempered = _stored_tempered(metadata, where) if _is_count(n_features, minimum=1) else None
    if tempered is not None:
        if shapes or order:
            raise unbuildable("a single train or a group for a base of tempered layers")
        expected = {
            f"q0.layers.{j}.core_{k}": (tuple(shape), f"tempered layer_core_shapes[{j}][{k}]")
            for j, layer in enumerate(tempered["layer_core_shapes"])
            for k, shape in enumerate(layer)
        }
        expected["q0.shift"] = ((n_features,), "n_features")
        expected["q0.matrix"] = expected["q0.matrix_inverse"] = (
            (n_features, n_features),
            "n_features",
        )
        expected["q0.log_abs_det"] = ((), "a tempered base")
    elif _has_gaussian_base(metadata, estimator):
        if shapes:
            raise unbuildable("core shapes for a Gaussian base")
        if order:
            raise unbuildable(f"symmetry_order={order} for a Gaussian base")
        n_components = _stored_gaussian_components(metadata, where)
        if n_components:
            entry = "a companion base of gaussian_components Gaussians of n_features"
            expected = {
                "q0.log_weights": ((n_components,), entry),
                "q0.means": ((n_components, n_features), entry),
                "q0.cholesky": ((n_components, n_features, n_features), entry),
            }
        else:
            expected = {
                "q0.loc": ((n_features,), "a Gaussian base of n_features"),
                "q0.scale": ((n_features,), "a Gaussian base of n_features"),
            }
    else:
        if len(shapes) != n_features:
            raise unbuildable(f"{len(shapes)} core shapes for {n_features} features")
        domain = metadata["domain"]
        if not all(
            isinstance(row, list) and len(row) == 2 and all(map(_is_finite, row)) for row in domain
        ):
            raise unbuildable("domain must be rows of two finite numbers")
        try:
            low, high = check_domain(domain, n_features)
        except ValueError as error:
            raise unbuildable(f"domain: {error}") from error
        tail_weight = metadata["tail_weight"]
        if not (_is_finite(tail_weight) and 0 < tail_weight < 1):
            raise unbuildable(f"tail_weight={_preview(tail_weight)} is not in (0, 1)")
        # the train, inside a symmetrised base when there is a group
        train = "q0.base." if order else "q0."
        expected = {
            f"{train}cores.{k}": (tuple(shape), f"tt_core_shapes[{k}]")
            for k, shape in enumerate(shapes)
        }
        expected[f"{train}low"] = expected[f"{train}high"] = ((n_features,), "n_features")
        if order:
            expected["q0.matrices"] = ((order, n_features, n_features), "symmetry_order")
            # Files written before the group's centre existed hold none: the
            # group acted about the origin, which the builder puts back.
            if "q0.center" in state:
                expected["q0.center"] = ((n_features,), "n_features")

    # The base against the stored tensors, entry by entry.
    for key, (shape, entry) in expected.items():
        if key not in state:
            raise mismatch(f"{_STATE} lacks {key!r}, which {entry} implies")
        if tuple(state[key].shape) != shape or state[key].dtype != torch.float64:
            raise mismatch(
                f"{entry} gives {key!r} the shape {list(shape)} in torch.float64; {_STATE} holds "
                f"{list(state[key].shape)} in {state[key].dtype}"
            )
    if order:
        inverses = state.get("q0.inverse_index")
        if inverses is None:
            raise mismatch(f"{_STATE} lacks 'q0.inverse_index', which symmetry_order implies")
        if tuple(inverses.shape) != (order,) or inverses.dtype != torch.int64:
            raise mismatch(
                f"symmetry_order gives 'q0.inverse_index' the shape [{order}] in torch.int64; "
                f"{_STATE} holds {list(inverses.shape)} in {inverses.dtype}"
            )
    if tempered is None and not _has_gaussian_base(metadata, estimator):
        if not (
            np.array_equal(state[f"{train}low"].numpy(), low)
            and np.array_equal(state[f"{train}high"].numpy(), high)
        ):
            raise ValueError(f"{where}: the domain in {_METADATA} does not match {_STATE}.")
        disagreement = cores_disagree_with_params(estimator, shapes)
        if disagreement is not None:
            raise mismatch(disagreement)

    # The flow: its size is computed, not built (a custom callable's layers
    # depend on n_features alone, checked above).
    if isinstance(flow, str):
        n_layers, hidden_units = estimator.n_flow_layers, estimator.hidden_units
        layers_size = _flow_state_size(flow, n_features, n_layers, hidden_units)
        # The standardisation (data), or the map to the unit box (variational,
        # when there are layers) and the one into the target's coordinates:
        # a shift and a scale each, or a FixedLinearAffine's shift, matrix,
        # LU factors, pivots and log-determinant.
        output = metadata.get("output_layer")
        if output is not None and output not in _OUTPUT_LAYERS:
            raise unbuildable(f"output_layer={_preview(output)} is not one of {_OUTPUT_LAYERS}")
        output = _output_layer(metadata, bool(layers_size))
        output_size = {
            "none": 0,
            "diagonal": 2 * n_features,
            "linear": 2 * n_features**2 + 2 * n_features + 1,
        }[output]
        if mode == "data" and output != "diagonal":
            raise unbuildable(f"output_layer={output!r} in data mode")
        to_unit_box = 2 * n_features if mode == "variational" and layers_size else 0
        whitening = 0
        if _stored_whitening(metadata, where):
            whitening = 2 * n_features**2 + 2 * n_features + 1
        bounds = 2 * n_features if _stored_bounds_map(metadata, where) else 0
        marginal = 3 * n_features * _stored_marginal_map_knots(metadata, where)
        needed = layers_size + to_unit_box + output_size + whitening + bounds + marginal
        held = sum(tensor.numel() for key, tensor in state.items() if key.startswith("flows."))
        if held != needed:
            raise mismatch(
                f"the flow layers in {_STATE} hold {held} numbers, but mode={mode!r}, "
                f"flow={flow!r}, n_flow_layers={n_layers} and hidden_units={hidden_units} "
                f"need {needed}"
            )


def _build_model(
    metadata: dict,
    flow: str | Callable,
    estimator: TensorizingFlowDensity,
    state: dict[str, torch.Tensor],
    where: str,
) -> TensorizingFlow:
    """The architecture from the metadata, in float64 on the CPU, with ``state`` loaded.

    The metadata is checked against the shapes in ``state`` first
    (:func:`_check_architecture`): what is built then holds as many numbers
    as ``state``. A companion model (``companion.*`` tensors) is built the same
    way from its own entry (:func:`_companion_metadata`).
    """
    prefix = "companion."
    companion_state = {
        key[len(prefix) :]: value for key, value in state.items() if key.startswith(prefix)
    }
    state = {key: value for key, value in state.items() if not key.startswith(prefix)}
    model = _build_single_model(metadata, flow, estimator, state, where)
    companion_metadata = _companion_metadata(metadata, where)
    if companion_metadata is not None:
        model.companion = _build_model(
            companion_metadata, flow, estimator, companion_state, f"{where} (companion)"
        )
        model.companion_weight = float(metadata["companion"]["weight"])
    elif companion_state:
        raise ValueError(
            f"{where}: {_STATE} holds a companion model's tensors, but {_METADATA} describes none."
        )
    return model


def _build_single_model(
    metadata: dict,
    flow: str | Callable,
    estimator: TensorizingFlowDensity,
    state: dict[str, torch.Tensor],
    where: str,
) -> TensorizingFlow:
    """:func:`_build_model` of a model without a companion."""
    flow = _stored_flow(metadata, flow, where)
    _check_architecture(metadata, flow, estimator, state, where)
    try:
        n_features = metadata["n_features"]
        ones = torch.ones(n_features, dtype=torch.float64)
        tempered = _stored_tempered(metadata, where)
        if tempered is not None:
            # Built from the stored layers themselves (finite, non-zero trains:
            # TemperedTTBase checks them), whose exact values load_state_dict
            # then puts back.
            base = TemperedTTBase(
                [
                    [state[f"q0.layers.{j}.core_{k}"] for k in range(n_features)]
                    for j in range(len(tempered["layer_core_shapes"]))
                ],
                state["q0.shift"],
                state["q0.matrix"],
                defensive_weight=tempered["defensive_weight"],
                outer=tempered["outer"],
                betas=tempered["betas"],
            )
        elif _has_gaussian_base(metadata, estimator):
            if _stored_gaussian_components(metadata, where):
                # Built from the stored mixture itself (GaussianMixtureBase
                # checks that it is one), whose exact values load_state_dict
                # puts back.
                base = GaussianMixtureBase(
                    torch.exp(state["q0.log_weights"]), state["q0.means"], state["q0.cholesky"]
                )
            else:
                base = GaussianBase(torch.zeros_like(ones), ones)
        else:
            cores = [
                torch.zeros(shape, dtype=torch.float64) for shape in metadata["tt_core_shapes"]
            ]
            base = TTDistribution(cores, metadata["domain"], tail_weight=metadata["tail_weight"])
            if _stored_symmetry_order(metadata, where):
                # Built from the stored group itself, which must be one (closed,
                # |det| = 1, identity first: SymmetrizedBase checks it and finds
                # the inverses, compared with the stored ones below).
                base = SymmetrizedBase(base, state["q0.matrices"], center=state.get("q0.center"))
                rebuilt_group = (base.matrices.clone(), base.inverse_index.clone())
                if "q0.center" not in state:  # a file from before the centre (the origin)
                    state = {**state, "q0.center": base.center.clone()}
        with torch.random.fork_rng(devices=[]):  # layer initialisation is overwritten
            layers = build_flow_layers(
                flow,
                n_features,
                n_layers=estimator.n_flow_layers,
                hidden_units=estimator.hidden_units,
                tail_bound=float(metadata["tail_bound"]),
            )
        output = _output_layer(metadata, bool(layers))
        if metadata["mode"] == "variational" and layers:  # the map to the unit box
            layers = [FixedAffine(torch.zeros_like(ones), ones), *layers]
        if _stored_whitening(metadata, where):
            layers.append(FixedLinearAffine(torch.zeros_like(ones), torch.diag(ones)))
        if output == "diagonal":
            layers.append(FixedAffine(torch.zeros_like(ones), ones))
        elif output == "linear":
            layers.append(FixedLinearAffine(torch.zeros_like(ones), torch.diag(ones)))
        if _stored_marginal_map_knots(metadata, where):
            # Built from the stored knots themselves (FixedMarginalNormalMap
            # checks that they increase and that the slopes are positive).
            index = len(layers)
            knots = [
                state.get(f"flows.{index}.{name}")
                for name in ("feature_knots", "normal_knots", "slopes")
            ]
            if any(tensor is None for tensor in knots):
                raise ValueError(f"the knots of flows.{index} are missing")
            layers.append(FixedMarginalNormalMap(*knots))
        _check_stored_marginal_map(metadata, estimator, layers)
        if _stored_bounds_map(metadata, where):
            # Built from the stored bounds themselves (FixedBoundsMap checks
            # them), which must be those of the parameter feature_bounds.
            index = len(layers)
            low, high = (state.get(f"flows.{index}.{name}") for name in ("low", "high"))
            if low is None or high is None:
                raise ValueError(f"the bounds of flows.{index} are missing")
            layers.append(FixedBoundsMap(low, high))
            expected = estimator._bounds_map(n_features)
            if expected is None or not (
                torch.equal(expected.low, low.double())
                and torch.equal(expected.high, high.double())
            ):
                raise ValueError("the stored feature bounds are not those of feature_bounds")
        elif estimator.feature_bounds is not None:
            raise ValueError("feature_bounds is set, but the model has no bounds")
        model = TensorizingFlow(
            base, layers, defensive_weight=_stored_defensive_weight(metadata, where)
        ).to(dtype=torch.float64)
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
    if isinstance(model.q0, SymmetrizedBase) and not (
        torch.equal(model.q0.matrices, rebuilt_group[0])
        and torch.equal(model.q0.inverse_index, rebuilt_group[1])
    ):
        raise ValueError(
            f"{where}: the group of the symmetrised base in {_STATE} is not stored as "
            "SymmetrizedBase keeps it (identity first, no repeats, each element's inverse)."
        )
    return model


def _load_device(stored: str, where: str) -> torch.device:
    """The device named in the metadata (checked by :func:`_check_device_name`),
    or the CPU with a warning when it is not available here."""
    try:
        device = torch.device(stored)
    except RuntimeError as error:  # "cuda:<index beyond torch's range>"
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
        with, holds anything but tensors, if its metadata has an entry of the
        wrong type, names a device other than ``"cpu"``, ``"cuda"`` or
        ``"cuda:N"``, or describes tensors other than those stored (the
        message names the entry), or if a needed callable is missing.

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
    # infinite bounds are stored as the strings "inf" and "-inf"
    if params.get("feature_bounds") is not None:
        params["feature_bounds"] = _from_json_number(params["feature_bounds"])
    # Files written before inference_dtype existed hold models that were
    # evaluated in float64: they keep their scores and samples.
    params.setdefault("inference_dtype", "float64")
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
    selection = _stored_selection(metadata, where)
    if selection is not None and fitted["tt_"] is not None:
        fitted["tt_"].selection = selection
    fitted["n_features_in_"] = metadata["n_features"]
    if metadata["feature_names"] is not None:
        fitted["feature_names_in_"] = np.asarray(metadata["feature_names"], dtype=object)
    fitted.update(
        {
            name: _from_json_fitted(name, value)
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
