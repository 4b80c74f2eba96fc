"""TensorizingFlowDensity.save / load: a model file that runs no code on load.

Round trips must be exact (same scores, same samples, same fitted
attributes); crafted, truncated, tampered or foreign files must be refused
with a ValueError, and a crafted pickle must never run."""

from __future__ import annotations

import copy
import hashlib
import io
import json
import os
import pathlib
import pickle
import re
import stat
import threading
import time
import warnings
import zipfile

import joblib
import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.exceptions import ConvergenceWarning, NotFittedError

import sktt_flow
from sktt_flow import TensorizingFlowDensity
from sktt_flow.flows import GaussianMixtureBase, TensorizingFlow, build_flow_layers
from tests.conftest import requires_cuda

SMALL = {
    "tt_rank": 3,
    "n_basis": 8,
    "n_flow_layers": 2,
    "hidden_units": 8,
    "max_iter": 3,
    "random_state": 0,
}

VARIATIONAL = {
    **SMALL,
    "domain": [[-5.0, 5.0], [-5.0, 5.0]],
    "tt_rank": 8,
    "n_basis": 16,
    "max_iter": 2,
    "batch_size": 64,
}

COVARIANCE = torch.tensor([[1.0, 0.5], [0.5, 1.0]], dtype=torch.float64)


def gaussian_log_target(x: torch.Tensor) -> torch.Tensor:
    """A correlated 2-D Gaussian, unnormalised by a factor exp(0.5)."""
    distribution = torch.distributions.MultivariateNormal(
        torch.zeros(2, dtype=x.dtype), COVARIANCE.to(x.dtype)
    )
    return distribution.log_prob(x) + 0.5


def custom_flow(n_features: int) -> list:
    """A custom flow callable: two RealNVP couplings."""
    return build_flow_layers("realnvp", n_features, n_layers=2, hidden_units=8)


class TouchesMarker:
    """Unpickling it creates ``path``: the stand-in for arbitrary code."""

    def __init__(self, path: pathlib.Path):
        self.path = path

    def __reduce__(self):
        return (pathlib.Path.touch, (self.path,))


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    centre = rng.choice([-2.0, 2.0], size=(400, 1))
    X = np.column_stack([centre[:, 0], 0.5 * centre[:, 0] ** 2]) + rng.normal(size=(400, 2))
    return X[:300] * [10.0, 0.1], X[300:] * [10.0, 0.1]


@pytest.fixture(scope="module")
def fitted(data):
    return TensorizingFlowDensity(**SMALL).fit(data[0])


@pytest.fixture(scope="module")
def variational():
    return TensorizingFlowDensity(log_target=gaussian_log_target, **VARIATIONAL).fit()


@pytest.fixture
def saved(fitted, tmp_path):
    path = tmp_path / "model.sktt"
    fitted.save(path)
    return path


def assert_same_model(loaded, original, X):
    np.testing.assert_array_equal(loaded.score_samples(X), original.score_samples(X))
    np.testing.assert_array_equal(
        loaded.sample(50, random_state=3), original.sample(50, random_state=3)
    )
    assert loaded.get_params() == original.get_params()
    assert loaded.tt_ is loaded.flow_.q0 and loaded.device_ == original.device_
    for name in ("n_features_in_", "loss_curve_", "validation_scores_", "n_iter_", "fit_time_"):
        assert getattr(loaded, name) == getattr(original, name), name
    # the automatic choices of a train fitted to data, with their score tables
    assert getattr(loaded.tt_, "selection", None) == getattr(original.tt_, "selection", None)
    assert not any(p.requires_grad for p in loaded.flow_.parameters())
    assert not loaded.flow_.training


def read_members(path) -> tuple[dict, bytes]:
    with zipfile.ZipFile(path) as archive:
        return json.loads(archive.read("metadata.json")), archive.read("state.pt")


def write_members(path, metadata: dict, state: bytes, *, fix_checksum: bool = True) -> None:
    if fix_checksum:
        metadata = {**metadata, "state_sha256": hashlib.sha256(state).hexdigest()}
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("metadata.json", json.dumps(metadata))
        archive.writestr("state.pt", state)


def assert_each_edit_is_refused(path, edits, tmp_path) -> None:
    """For each ``(edit, message)``: the file saved at ``path`` with its
    metadata changed in place by ``edit`` (the checksum kept valid) fails to
    load with a ValueError matching ``message``."""
    stored, state = read_members(path)
    for edit, message in edits:
        metadata = json.loads(json.dumps(stored))  # a deep copy
        edit(metadata)
        corrupted = tmp_path / "corrupted.sktt"
        write_members(corrupted, metadata, state)
        with pytest.raises(ValueError, match=message):
            TensorizingFlowDensity.load(corrupted)


# --------------------------------------------------------------- round trips
@pytest.mark.parametrize("flow", ["realnvp", "nsf", "maf", "none"])
def test_round_trip_is_identical_for_every_flow(flow, data, tmp_path):
    """Same scores (bit for bit), samples, parameters and fitted attributes;
    loading leaves torch's global generator alone."""
    model = TensorizingFlowDensity(**SMALL, flow=flow).fit(data[0])
    model.save(tmp_path / "model.sktt")
    rng_state = torch.get_rng_state()
    loaded = TensorizingFlowDensity.load(tmp_path / "model.sktt")
    assert torch.equal(torch.get_rng_state(), rng_state)
    assert_same_model(loaded, model, data[1])


def test_round_trip_of_a_fit_with_too_few_rows_to_choose(data, tmp_path):
    """A data fit with fewer than MIN_CHOICE_ROWS held-out rows (20 rows) is
    one Gaussian with no flow layers whatever ``flow``: the file says so
    (``flow_layers``) and loads back to the same model; an invalid flag is
    refused. Fails if the architecture were rebuilt from ``flow`` alone
    (saving was then refused: 31 numbers stored, 73,847 expected)."""
    model = TensorizingFlowDensity(random_state=0).fit(data[0][:20])
    assert model.base_ == "gaussian" and model.flow == "realnvp"
    path = tmp_path / "model.sktt"
    model.save(path)
    loaded = TensorizingFlowDensity.load(path)
    np.testing.assert_array_equal(loaded.score_samples(data[1]), model.score_samples(data[1]))
    np.testing.assert_array_equal(
        loaded.sample(50, random_state=3), model.sample(50, random_state=3)
    )
    assert read_members(path)[0]["flow_layers"] is False
    assert_each_edit_is_refused(
        path, [(lambda metadata: metadata.update(flow_layers="no"), "'flow_layers'")], tmp_path
    )


def test_round_trip_keeps_feature_names_and_pickles(fitted, data, tmp_path):
    """Without pandas here, feature names are set by hand: they come back as
    sklearn stores them; the loaded estimator still pickles (joblib works)."""
    model = pickle.loads(pickle.dumps(fitted))
    model.feature_names_in_ = np.asarray(["height", "weight"], dtype=object)
    model.save(tmp_path / "model.sktt")
    loaded = TensorizingFlowDensity.load(str(tmp_path / "model.sktt"))
    assert loaded.feature_names_in_.dtype == object
    assert list(loaded.feature_names_in_) == ["height", "weight"]
    again = pickle.loads(pickle.dumps(loaded))
    np.testing.assert_array_equal(again.tt_.cores[0], fitted.tt_.cores[0])


def test_loaded_estimator_refits_like_the_saved_one(data, tmp_path):
    """A warm-started refit continues from the loaded state exactly as from
    the original (the optimiser state is not part of the model)."""
    model = TensorizingFlowDensity(**SMALL, warm_start=True).fit(data[0])
    model.save(tmp_path / "model.sktt")
    loaded = TensorizingFlowDensity.load(tmp_path / "model.sktt").fit(data[0])
    model.fit(data[0])
    np.testing.assert_array_equal(loaded.score_samples(data[1]), model.score_samples(data[1]))


def test_file_members_and_metadata(saved, fitted):
    """Two members; plain JSON metadata; state.pt holds the float64 state on the CPU."""
    metadata, state_bytes = read_members(saved)
    assert metadata["format"] == "sktt_flow.TensorizingFlowDensity"
    assert metadata["sktt_flow_version"] == sktt_flow.__version__
    assert metadata["mode"] == "data" and metadata["n_features"] == 2
    assert metadata["params"]["tt_rank"] == 3 and metadata["params"]["log_target"] is None
    assert metadata["tt_core_shapes"] == [list(core.shape) for core in fitted.tt_.cores]
    assert metadata["state_sha256"] == hashlib.sha256(state_bytes).hexdigest()
    state = torch.load(io.BytesIO(state_bytes), weights_only=True)
    assert state.keys() == fitted.flow_.state_dict().keys()
    assert all(t.device.type == "cpu" and t.dtype == torch.float64 for t in state.values())
    assert all(torch.equal(state[k], v) for k, v in fitted.flow_.state_dict().items())


@pytest.mark.parametrize("inference_dtype", ["float32", "float64"])
def test_round_trip_keeps_the_inference_precision(inference_dtype, fitted, data, tmp_path):
    """The parameter is stored and honoured: a file and a pickle score and sample
    bit for bit as the saved model in its precision, which differs from the
    other one, and the file holds the float64 model either way. Fails if load
    ignored the stored value, or set files written with it to float64."""
    model = copy.deepcopy(fitted).set_params(inference_dtype=inference_dtype)
    model.save(tmp_path / "model.sktt")
    loaded = TensorizingFlowDensity.load(tmp_path / "model.sktt")
    assert loaded.inference_dtype == inference_dtype
    assert_same_model(loaded, model, data[1])
    assert_same_model(pickle.loads(pickle.dumps(model)), model, data[1])
    other = "float64" if inference_dtype == "float32" else "float32"
    assert not np.array_equal(
        loaded.score_samples(data[1]),
        copy.deepcopy(model).set_params(inference_dtype=other).score_samples(data[1]),
    )
    state = torch.load(io.BytesIO(read_members(tmp_path / "model.sktt")[1]), weights_only=True)
    assert all(t.dtype == torch.float64 for t in state.values() if t.is_floating_point())


def test_files_and_pickles_from_before_inference_dtype_keep_float64(saved, fitted, data, tmp_path):
    """Models saved or pickled before the parameter existed were evaluated in
    float64, and still are, bit for bit. Fails if they took the new default
    (float32, the training dtype)."""
    expected = copy.deepcopy(fitted).set_params(inference_dtype="float64")
    metadata, state = read_members(saved)
    del metadata["params"]["inference_dtype"]
    write_members(tmp_path / "old.sktt", metadata, state)
    pickled = fitted.__getstate__()
    del pickled["inference_dtype"]
    unpickled = TensorizingFlowDensity.__new__(TensorizingFlowDensity)
    unpickled.__setstate__(pickled)
    for old in (TensorizingFlowDensity.load(tmp_path / "old.sktt"), unpickled):
        assert old.inference_dtype == "float64"
        np.testing.assert_array_equal(old.score_samples(data[1]), expected.score_samples(data[1]))


def test_unpickled_gaussian_base_model_has_no_tt(data):
    """``tt_`` is None for a Gaussian base after unpickling too (it was set to
    the Gaussian base)."""
    model = TensorizingFlowDensity(**SMALL, base="gaussian").fit(data[0])
    again = pickle.loads(pickle.dumps(model))
    assert model.tt_ is None and again.tt_ is None and again.base_ == "gaussian"


def test_variational_round_trip(variational, tmp_path):
    """Scores, samples and the diagnostics come back; log_target is passed again."""
    variational.save(tmp_path / "model.sktt")
    loaded = TensorizingFlowDensity.load(tmp_path / "model.sktt", log_target=gaussian_log_target)
    points = variational.sample(200, random_state=1)
    assert_same_model(loaded, variational, points)
    for name in ("elbo_", "ess_", "log_normalizer_", "log_normalizer_std_error_"):
        assert getattr(loaded, name) == getattr(variational, name), name
    assert loaded.n_target_evaluations_ == variational.n_target_evaluations_
    assert loaded.log_target is gaussian_log_target
    assert read_members(tmp_path / "model.sktt")[0]["params"]["log_target"] == {
        "callable": f"{__name__}.gaussian_log_target"
    }


def test_variational_load_without_log_target_warns_and_scores(variational, tmp_path):
    variational.save(tmp_path / "model.sktt")
    with pytest.warns(UserWarning, match=r"log_target is not stored.*load\(path, log_target="):
        loaded = TensorizingFlowDensity.load(tmp_path / "model.sktt")
    assert loaded.log_target is None
    points = variational.sample(20, random_state=2)
    np.testing.assert_array_equal(loaded.score_samples(points), variational.score_samples(points))


def test_variational_model_loaded_without_log_target_saves_again(variational, tmp_path):
    """The file's mode comes from the fitted model, not from the log_target
    parameter: a variational model loaded without it is saved again as a
    variational model, and loads with its log_target to the same scores.
    Fails if save reads log_target=None as a model fitted to data (its
    layers then do not match and save refuses)."""
    variational.save(tmp_path / "first.sktt")
    with pytest.warns(UserWarning, match="log_target is not stored"):
        loaded = TensorizingFlowDensity.load(tmp_path / "first.sktt")
    loaded.save(tmp_path / "second.sktt")
    assert read_members(tmp_path / "second.sktt")[0]["mode"] == "variational"
    again = TensorizingFlowDensity.load(tmp_path / "second.sktt", log_target=gaussian_log_target)
    points = variational.sample(20, random_state=3)
    np.testing.assert_array_equal(again.score_samples(points), variational.score_samples(points))


def test_custom_flow_callable_must_be_passed_to_load(data, tmp_path):
    model = TensorizingFlowDensity(**SMALL, flow=custom_flow).fit(data[0])
    model.save(tmp_path / "model.sktt")
    with pytest.raises(ValueError, match=r"custom flow callable.*custom_flow.*flow=\.\.\."):
        TensorizingFlowDensity.load(tmp_path / "model.sktt")
    loaded = TensorizingFlowDensity.load(tmp_path / "model.sktt", flow=custom_flow)
    assert loaded.flow is custom_flow
    np.testing.assert_array_equal(loaded.score_samples(data[1]), model.score_samples(data[1]))


def test_callables_that_do_not_fit_the_model_are_refused(saved):
    with pytest.raises(ValueError, match="only needed for models fitted with a custom flow"):
        TensorizingFlowDensity.load(saved, flow=custom_flow)
    with pytest.raises(ValueError, match="only for variational models"):
        TensorizingFlowDensity.load(saved, log_target=gaussian_log_target)


def test_random_state_instance_is_not_stored(data, tmp_path):
    model = TensorizingFlowDensity(**{**SMALL, "random_state": np.random.RandomState(0)})
    model.fit(data[0]).save(tmp_path / "model.sktt")
    assert "RandomState" in read_members(tmp_path / "model.sktt")[0]["random_state_note"]
    loaded = TensorizingFlowDensity.load(tmp_path / "model.sktt")
    assert loaded.random_state is None
    np.testing.assert_array_equal(loaded.score_samples(data[1]), model.score_samples(data[1]))


def test_save_refuses_parameters_changed_after_fit(fitted, tmp_path):
    """A file whose parameters no longer describe the model could not be loaded."""
    model = pickle.loads(pickle.dumps(fitted)).set_params(n_flow_layers=5)
    with pytest.raises(ValueError, match="do not match the architecture"):
        model.save(tmp_path / "model.sktt")
    assert list(tmp_path.iterdir()) == []


def test_unfitted_estimator_cannot_be_saved(tmp_path):
    with pytest.raises(NotFittedError):
        TensorizingFlowDensity().save(tmp_path / "model.sktt")


# -------------------------------------------------------- versions, devices
def test_version_mismatch_warns_with_both_versions(saved, fitted, data):
    metadata, state = read_members(saved)
    write_members(saved, {**metadata, "sktt_flow_version": "0.0.1"}, state)
    match = r"0\.0\.1.*" + re.escape(sktt_flow.__version__)
    with pytest.warns(UserWarning, match=match):
        loaded = TensorizingFlowDensity.load(saved)
    np.testing.assert_array_equal(loaded.score_samples(data[1]), fitted.score_samples(data[1]))


def test_unavailable_cuda_device_falls_back_to_cpu(saved, fitted, data, monkeypatch):
    metadata, state = read_members(saved)
    write_members(saved, {**metadata, "device": "cuda:0"}, state)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.warns(RuntimeWarning, match="cuda:0, which is not available"):
        loaded = TensorizingFlowDensity.load(saved)
    assert loaded.device_ == torch.device("cpu")
    np.testing.assert_array_equal(loaded.score_samples(data[1]), fitted.score_samples(data[1]))


@requires_cuda
def test_cuda_model_is_saved_as_cpu_tensors(data, tmp_path):
    model = TensorizingFlowDensity(**SMALL, device="cuda").fit(data[0])
    model.save(tmp_path / "model.sktt")
    state = torch.load(io.BytesIO(read_members(tmp_path / "model.sktt")[1]), weights_only=True)
    assert all(t.device.type == "cpu" for t in state.values())
    loaded = TensorizingFlowDensity.load(tmp_path / "model.sktt")
    assert loaded.device_ == model.device_
    np.testing.assert_array_equal(loaded.score_samples(data[1]), model.score_samples(data[1]))


# -------------------------------------------------------- malicious files
@pytest.mark.parametrize("container", ["pickle", "torch.save"])
def test_file_crafted_to_run_code_is_refused_without_running_it(container, saved, tmp_path):
    """The payload runs code under plain pickle (checked on another marker);
    load refuses it with a valid checksum, and its marker is never created."""
    marker = tmp_path / "pwned"
    if container == "pickle":
        payload = pickle.dumps({"q0.cores.0": TouchesMarker(marker)})
    else:
        buffer = io.BytesIO()
        torch.save({"q0.cores.0": TouchesMarker(marker)}, buffer)
        payload = buffer.getvalue()
    metadata, _ = read_members(saved)
    write_members(saved, metadata, payload)
    with pytest.raises(ValueError, match=r"refused.*objects other than tensors"):
        TensorizingFlowDensity.load(saved)
    assert not marker.exists()

    control = tmp_path / "control"
    pickle.loads(pickle.dumps(TouchesMarker(control)))
    assert control.exists()


def test_tensor_file_with_extra_objects_is_refused(saved):
    """Allowed by weights_only but not a flat dict of tensors."""
    metadata, _ = read_members(saved)
    buffer = io.BytesIO()
    torch.save({"q0.cores.0": [torch.zeros(1)], "note": 1}, buffer)
    write_members(saved, metadata, buffer.getvalue())
    with pytest.raises(ValueError, match="flat dict of named tensors"):
        TensorizingFlowDensity.load(saved)


# ------------------------------------------------ truncated or edited files
def test_truncated_file_is_a_clear_error(saved):
    content = saved.read_bytes()
    saved.write_bytes(content[: len(content) // 2])
    with pytest.raises(ValueError, match="truncated or corrupted"):
        TensorizingFlowDensity.load(saved)


def test_flipped_byte_in_the_archive_is_a_clear_error(saved):
    """Inside state.pt's stored bytes: the zip's CRC catches it."""
    content = bytearray(saved.read_bytes())
    _, state = read_members(saved)
    offset = bytes(content).index(state[-200:]) + 100
    content[offset] ^= 0xFF
    saved.write_bytes(bytes(content))
    with pytest.raises(ValueError, match="truncated or corrupted"):
        TensorizingFlowDensity.load(saved)


def test_tampered_tensor_file_fails_the_checksum(saved):
    """A flipped byte in state.pt, in a well-formed zip, with the old SHA-256."""
    metadata, state = read_members(saved)
    state = bytearray(state)
    state[len(state) // 2] ^= 0x01
    write_members(saved, metadata, bytes(state), fix_checksum=False)
    with pytest.raises(ValueError, match="tampered: checksum mismatch"):
        TensorizingFlowDensity.load(saved)


def _wrong_core_shape(metadata):
    shapes = metadata["tt_core_shapes"]
    shapes[0][2] += 1
    shapes[1][0] += 1  # still a valid tensor train, not this one


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (_wrong_core_shape, "do not match the architecture"),
        (lambda m: m.update(mode="variational"), "do not match the architecture"),
        (lambda m: m["params"].update(n_flow_layers=3), "do not match the architecture"),
        (lambda m: m.update(n_features=3), "cannot be rebuilt"),
        (lambda m: m["domain"][0].reverse(), "cannot be rebuilt"),
        (lambda m: m.update(domain=[[-1.0, 1.0], [-1.0, 1.0]]), "domain .* does not match"),
        (lambda m: m["params"].update(tt_rank="many"), "invalid parameters"),
        (lambda m: m["params"].update(unknown=1), "invalid parameters"),
        (lambda m: m.pop("tt_core_shapes"), "lacks 'tt_core_shapes'"),
        (lambda m: m["fitted"].update(n_iter_="3"), "invalid fitted attribute 'n_iter_'"),
        (lambda m: m.update(device="quantum"), "invalid device 'quantum'"),
        (lambda m: m.update(format="something.else"), "not a sktt_flow model file"),
        (lambda m: m.update(format_version=99), "format version 99"),
        (lambda m: m.update(tt_selection="chosen"), "invalid 'tt_selection'"),
        (lambda m: m["tt_selection"]["scores"].append([8, 2]), "invalid 'tt_selection'"),
        (lambda m: m["tt_selection"].update(tt_rank=None), "invalid 'tt_selection'"),
    ],
)
def test_edited_metadata_is_a_clear_error(edit, match, saved):
    metadata, state = read_members(saved)
    edit(metadata)
    write_members(saved, metadata, state)
    with pytest.raises(ValueError, match=match) as error:
        TensorizingFlowDensity.load(saved)
    assert str(saved) in str(error.value)


@pytest.fixture(scope="module")
def with_companion(fitted, data):
    """``fitted`` with the model of a Gaussian-base fit of the same rows as its
    companion, weight 0.4 (base="auto" makes such models when the flow on the
    Gaussian takes held-out rows that the flow on the TT misses)."""
    gaussian = TensorizingFlowDensity(**{**SMALL, "base": "gaussian"}).fit(data[0])
    estimator = copy.deepcopy(fitted)
    model = estimator.flow_
    mixed = TensorizingFlow(
        model.q0,
        list(model.flows),
        defensive_weight=model.defensive_weight,
        companion=copy.deepcopy(gaussian.flow_),
        companion_weight=0.4,
    )
    for name, value in TensorizingFlowDensity._finalize(mixed, estimator.device_).items():
        setattr(estimator, name, value)
    return estimator


def test_round_trip_keeps_the_companion(with_companion, data, tmp_path):
    """Bit for bit, the companion's weight included; joblib too. Fails if the
    companion is not written (the loaded model would be the TT's alone) or
    is rebuilt with another architecture."""
    path = tmp_path / "mixed.sktt"
    with_companion.save(path)
    loaded = TensorizingFlowDensity.load(path)
    assert loaded.companion_weight_ == 0.4 and loaded.flow_.companion is not None
    assert_same_model(loaded, with_companion, data[1])
    alone = copy.deepcopy(with_companion)
    alone.flow_.companion_weight = alone._float32_flow.companion_weight = 0.0
    assert not np.array_equal(alone.score_samples(data[1]), loaded.score_samples(data[1]))
    buffer = io.BytesIO()
    joblib.dump(with_companion, buffer)
    buffer.seek(0)
    assert_same_model(joblib.load(buffer), with_companion, data[1])


def test_warm_start_keeps_the_companion(with_companion, data):
    """A warm start trains the model on the TT further and keeps the
    companion as it was, with its weight: fails if the refit drops it (the
    model would be the TT's alone) or retrains it."""
    model = copy.deepcopy(with_companion).set_params(warm_start=True)
    before = {k: v.clone() for k, v in model.flow_.companion.state_dict().items()}
    model.fit(data[0])
    assert model.companion_weight_ == 0.4
    after = model.flow_.companion.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[key], after[key]) for key in before)


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda m: m["companion"].update(weight=1.5), "invalid 'companion'"),
        (lambda m: m["companion"].update(whitening="yes"), "invalid 'companion'"),
        (lambda m: m.update(companion=None), "holds a companion model's tensors"),
        (lambda m: m["companion"].update(whitening=True), "do not match the architecture"),
    ],
)
def test_edited_companion_metadata_is_a_clear_error(edit, match, with_companion, tmp_path):
    assert_edited_file_is_refused(with_companion, edit, match, tmp_path / "mixed.sktt")


def assert_edited_file_is_refused(model, edit, match, path):
    """``model`` saved to ``path`` with its metadata edited by ``edit`` fails
    to load with a ValueError matching ``match``."""
    model.save(path)
    metadata, state = read_members(path)
    edit(metadata)
    write_members(path, metadata, state)
    with pytest.raises(ValueError, match=match):
        TensorizingFlowDensity.load(path)


@pytest.fixture(scope="module")
def with_mixture_companion(with_companion):
    """``with_companion`` with a mixture of two Gaussians as the companion's
    base (what base="auto" makes where the held-out rows prefer one)."""
    estimator = copy.deepcopy(with_companion)
    model = estimator.flow_
    n_features = model.n_features
    companion = copy.deepcopy(model.companion)
    companion.q0 = GaussianMixtureBase(
        torch.tensor([0.3, 0.7], dtype=torch.float64),
        torch.linspace(-1.0, 1.0, 2 * n_features, dtype=torch.float64).reshape(2, n_features),
        torch.stack([0.8 * torch.eye(n_features), 1.3 * torch.eye(n_features)]).double(),
    )
    mixed = TensorizingFlow(
        model.q0,
        list(model.flows),
        defensive_weight=model.defensive_weight,
        companion=companion,
        companion_weight=0.4,
    )
    for name, value in TensorizingFlowDensity._finalize(mixed, estimator.device_).items():
        setattr(estimator, name, value)
    return estimator


def test_round_trip_keeps_the_companion_mixture(
    with_mixture_companion, with_companion, data, tmp_path
):
    """Bit for bit, with the mixture as the companion's base. Fails if the
    mixture is not written or is rebuilt as a standard Gaussian (the scores
    would be ``with_companion``'s)."""
    path = tmp_path / "mixture.sktt"
    with_mixture_companion.save(path)
    loaded = TensorizingFlowDensity.load(path)
    base = loaded.flow_.companion.q0
    assert isinstance(base, GaussianMixtureBase) and base.n_components == 2
    assert_same_model(loaded, with_mixture_companion, data[1])
    assert not np.array_equal(loaded.score_samples(data[1]), with_companion.score_samples(data[1]))


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda m: m["companion"].update(gaussian_components=-1), "invalid 'companion'"),
        (lambda m: m["companion"].update(gaussian_components=2.5), "invalid 'companion'"),
        (lambda m: m["companion"].update(gaussian_components=3), "do not match the architecture"),
        (lambda m: m["companion"].update(gaussian_components=0), "do not match the architecture"),
    ],
)
def test_edited_companion_mixture_is_a_clear_error(edit, match, with_mixture_companion, tmp_path):
    assert_edited_file_is_refused(with_mixture_companion, edit, match, tmp_path / "mixture.sktt")


def test_gaussian_components_concern_gaussian_bases_only(fitted, data, saved):
    """``gaussian_components`` describes a Gaussian base: on a file whose base
    is a TT it is not read (fails if the builder looks for a mixture's
    tensors there, a KeyError)."""
    metadata, state = read_members(saved)
    write_members(saved, {**metadata, "gaussian_components": 2}, state)
    loaded = TensorizingFlowDensity.load(saved)
    np.testing.assert_array_equal(loaded.score_samples(data[1]), fitted.score_samples(data[1]))


def test_invalid_gaussian_components_of_a_gaussian_base_is_a_clear_error(data, tmp_path):
    path = tmp_path / "gaussian.sktt"
    gaussian = TensorizingFlowDensity(**{**SMALL, "base": "gaussian", "max_iter": 2}).fit(data[0])
    assert_edited_file_is_refused(
        gaussian,
        lambda m: m.update(gaussian_components="two"),
        "invalid 'gaussian_components'",
        path,
    )


def test_files_without_the_selection_load_without_it(fitted, data, saved):
    """Files written before ``tt_selection`` existed load as before; the
    train then has no ``selection``."""
    assert fitted.tt_.selection["tt_rank"] == SMALL["tt_rank"]
    metadata, state = read_members(saved)
    metadata.pop("tt_selection")
    write_members(saved, metadata, state)
    loaded = TensorizingFlowDensity.load(saved)
    assert not hasattr(loaded.tt_, "selection")
    np.testing.assert_array_equal(loaded.score_samples(data[1]), fitted.score_samples(data[1]))


def test_invalid_json_is_a_clear_error(saved):
    _, state = read_members(saved)
    with zipfile.ZipFile(saved, "w") as archive:
        archive.writestr("metadata.json", "{not json")
        archive.writestr("state.pt", state)
    with pytest.raises(ValueError, match="not valid JSON"):
        TensorizingFlowDensity.load(saved)


@pytest.mark.parametrize("content", [b"", b"random bytes, not a zip" * 10, "zip"])
def test_foreign_file_is_not_a_model_file(content, tmp_path):
    path = tmp_path / "other"
    if content == "zip":
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("readme.txt", "hello")
    else:
        path.write_bytes(content)
    with pytest.raises(ValueError, match="not a sktt_flow model file"):
        TensorizingFlowDensity.load(path)


def test_missing_file_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        TensorizingFlowDensity.load(tmp_path / "absent.sktt")


def test_non_finite_history_is_strict_json_and_comes_back(fitted, data, tmp_path):
    """NaN and infinities (a skipped epoch, a non-finite first score) are
    stored as strings that strict JSON parsers accept, and read back as floats."""
    model = clone(fitted).fit(data[0])
    model.loss_curve_[0], model.validation_scores_[0] = np.nan, -np.inf
    path = tmp_path / "model.sktt"
    model.save(path)
    metadata, _ = read_members(path)
    json.dumps(metadata, allow_nan=False)  # strict JSON
    loaded = TensorizingFlowDensity.load(path)
    assert np.isnan(loaded.loss_curve_[0]) and loaded.validation_scores_[0] == -np.inf
    assert loaded.loss_curve_[1:] == model.loss_curve_[1:]


# ------------------------------------- edited files: types, devices, sizes
# A tiny model of each mode, as the adversarial pass used: every edit below
# rewrites the members of its real file and recomputes the checksum, so that
# the checksum is not what refuses them.
TINY = {
    "tt_rank": 2,
    "n_basis": 4,
    "n_flow_layers": 1,
    "hidden_units": 4,
    "max_iter": 2,
    "random_state": 0,
}

#: Peak memory a refused load may add (the tiny model and the checks take a
#: few MB); every claim below would need at least a gigabyte.
REFUSAL_MEMORY_BYTES = 64 << 20


@pytest.fixture(scope="module")
def tiny_models():
    X = np.random.default_rng(0).normal(size=(100, 2))
    with warnings.catch_warnings():
        # TT-cross at n_basis=4 stops short of its tolerance: irrelevant here.
        warnings.simplefilter("ignore", ConvergenceWarning)
        variational = TensorizingFlowDensity(
            **TINY,
            batch_size=64,
            log_target=gaussian_log_target,
            domain=[[-3.0, 3.0], [-3.0, 3.0]],
        ).fit()
    return {"data": TensorizingFlowDensity(**TINY).fit(X), "variational": variational}


@pytest.fixture(params=["data", "variational"])
def tiny_saved(request, tiny_models, tmp_path):
    path = tmp_path / f"{request.param}.sktt"
    tiny_models[request.param].save(path)
    return path


def load_quietly(path):
    """Load without the warning a variational model gives without log_target."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", ".*holds a variational model", UserWarning)
        return TensorizingFlowDensity.load(path)


def edit_and_load(path, edit, match):
    """Apply ``edit`` to the metadata (checksum recomputed), then expect a
    ValueError matching ``match`` that names the file."""
    metadata, state = read_members(path)
    edit(metadata)
    write_members(path, metadata, state)
    with pytest.raises(ValueError, match=match) as error:
        load_quietly(path)
    assert str(path) in str(error.value)


@pytest.mark.parametrize("value", [{}, [], None, True, "3", [1.0, {}]])
def test_every_fitted_attribute_of_the_wrong_type_is_named(value, tiny_saved):
    """Bug: a fitted attribute edited to {} raised a raw TypeError (unhashable
    dict tested against the non-finite strings); lists, numbers and integers
    were not told apart. Each attribute present in the file is edited in turn."""
    original = tiny_saved.read_bytes()
    names = sorted(read_members(tiny_saved)[0]["fitted"])
    assert "n_iter_" in names and "loss_curve_" in names
    for name in names:
        if value == [] and name in ("loss_curve_", "validation_scores_", "mass_covering_scores_"):
            continue  # an empty history is valid
        tiny_saved.write_bytes(original)
        edit_and_load(
            tiny_saved,
            lambda m, name=name: m["fitted"].update({name: value}),
            rf"invalid fitted attribute '{name}'",
        )


@pytest.mark.parametrize(
    ("name", "value"),
    [("n_iter_", 2.5), ("n_iter_", -1), ("n_target_evaluations_", 1.0), ("fit_time_", [1.0])],
)
def test_counts_and_numbers_are_told_apart(name, value, tiny_models, tmp_path):
    """Bug: a fractional or negative n_iter_ and a list where a number is due loaded."""
    path = tmp_path / "model.sktt"
    tiny_models["variational"].save(path)
    edit_and_load(path, lambda m: m["fitted"].update({name: value}), f"'{name}'")


def test_unknown_fitted_attribute_is_ignored(tiny_models, tmp_path):
    """An attribute of a later version is not loaded, whatever its value; the
    rest of the file loads as before."""
    path = tmp_path / "model.sktt"
    tiny_models["data"].save(path)
    metadata, state = read_members(path)
    metadata["fitted"]["from_the_future_"] = {}
    write_members(path, metadata, state)
    loaded = TensorizingFlowDensity.load(path)
    assert not hasattr(loaded, "from_the_future_")
    assert loaded.n_iter_ == tiny_models["data"].n_iter_


@pytest.mark.parametrize("device", ["meta", "mps", "xla", "cuda:x", "CPU", "cpu:0", "cuda:-1"])
def test_devices_other_than_cpu_and_cuda_are_refused(device, tiny_saved):
    """Bug: "meta" loaded (a model without data that failed at first use) and
    "mps" / "xla" raised a raw RuntimeError; fit only ever puts a model on the
    CPU or a CUDA device."""
    edit_and_load(
        tiny_saved, lambda m: m.update(device=device), rf"invalid device '{re.escape(device)}'"
    )


def test_unavailable_plain_cuda_falls_back_to_cpu(tiny_saved, monkeypatch):
    """ "cuda" (no index) without CUDA still loads on the CPU with a warning."""
    metadata, state = read_members(tiny_saved)
    write_members(tiny_saved, {**metadata, "device": "cuda"}, state)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.warns(RuntimeWarning, match="cuda, which is not available"):
        loaded = load_quietly(tiny_saved)
    assert loaded.device_ == torch.device("cpu")


def peak_memory_growth(function) -> int:
    """Bytes by which ``function()`` raises the process's peak resident memory
    (Linux: the peak is reset through /proc/self/clear_refs). Memory that
    torch allocates is invisible to tracemalloc, hence the kernel's count."""
    try:
        with open("/proc/self/clear_refs", "w") as clear:
            clear.write("5")  # reset VmHWM to the current resident size
    except OSError:
        pytest.skip("needs /proc/self/clear_refs (Linux) to measure peak memory")

    def resident(field: str) -> int:
        with open("/proc/self/status") as status:
            line = next(line for line in status if line.startswith(field))
        return int(line.split()[1]) * 1024

    before = resident("VmRSS:")
    function()
    return resident("VmHWM:") - before


def _huge_rank(metadata):
    # A valid train of rank 10**7: 640 MB of cores.
    metadata["tt_core_shapes"] = [[1, 4, 10**7], [10**7, 4, 1]]
    metadata["params"]["tt_rank"] = 10**7


def _huge_basis(metadata):
    # 10**8 Legendre functions per coordinate: 3.2 GB of cores.
    metadata["tt_core_shapes"] = [[1, 10**8, 2], [2, 10**8, 1]]
    metadata["params"]["n_basis"] = 10**8


def _many_features(metadata):
    # A consistent claim of 1000 features (core shapes, box and names).
    metadata.update(
        n_features=1000,
        tt_core_shapes=[[1, 4, 2]] + [[2, 4, 2]] * 998 + [[2, 4, 1]],
        domain=[[-1.0, 1.0]] * 1000,
    )


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda m: m["params"].update(hidden_units=20000), r"hidden_units=20000 need"),
        (lambda m: m["params"].update(n_flow_layers=10**6), r"n_flow_layers=1000000 .* need"),
        (lambda m: m["params"].update(hidden_units=10**9), r"hidden_units=1000000000 need"),
        (_huge_rank, r"tt_core_shapes\[0\] gives 'q0.cores.0' the shape \[1, 4, 10000000\]"),
        (_huge_basis, r"tt_core_shapes\[0\] gives 'q0.cores.0' the shape \[1, 100000000, 2\]"),
        (_many_features, r"tt_core_shapes\[1\] gives 'q0.cores.1' the shape \[2, 4, 2\]"),
    ],
    ids=["hidden_units", "n_flow_layers", "hidden_units_1e9", "tt_rank", "n_basis", "n_features"],
)
def test_sizes_the_state_does_not_hold_are_refused_before_building(
    edit, match, tiny_saved, monkeypatch
):
    """Bug: a 23 KB file claiming hidden_units=20000 or huge cores built the
    claimed model (gigabytes) before comparing it with the stored tensors. The
    refusal must name the entry, come in well under a second, add little to
    the peak memory, and never call the layer builder with the claimed sizes."""
    from sktt_flow.estimator import _persistence

    def guarded_build(flow, n_features, *, n_layers, hidden_units, tail_bound):
        # The checks build layers of width 1 to 3 only; the tiny model has 4.
        assert n_layers <= 2 and hidden_units <= 4, "built the claimed flow"
        return build_flow_layers(
            flow, n_features, n_layers=n_layers, hidden_units=hidden_units, tail_bound=tail_bound
        )

    monkeypatch.setattr(_persistence, "build_flow_layers", guarded_build)
    metadata, state = read_members(tiny_saved)
    edit(metadata)
    write_members(tiny_saved, metadata, state)

    def refuse():
        with pytest.raises(ValueError, match=match):
            load_quietly(tiny_saved)

    started = time.perf_counter()
    growth = peak_memory_growth(refuse)
    assert time.perf_counter() - started < 1.0
    assert growth < REFUSAL_MEMORY_BYTES, f"{growth / 2**20:.0f} MB"


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda m: m["params"].update(n_basis=5), r"params n_basis=5, but the cores have \[4\]"),
        (lambda m: m["params"].update(tt_rank=1), r"params tt_rank=1, but the cores have rank 2"),
        (lambda m: m["params"].update(hidden_units=5), r"hidden_units=5 need"),
        (lambda m: m["params"].update(flow="nsf"), r"flow='nsf'.* need"),
        (lambda m: m["tt_core_shapes"][0].__setitem__(1, "4"), r"tt_core_shapes\[0\]=\[1, '4'"),
        (lambda m: m["tt_core_shapes"][1].__setitem__(0, 2.0), r"tt_core_shapes\[1\]=\[2\.0"),
        (lambda m: m["domain"][0].__setitem__(0, "-3"), "domain must be rows of two finite"),
        (lambda m: m.update(tail_bound=float("nan")), "tail_bound=nan is not positive"),
        (lambda m: m.update(tail_weight=1.5), r"tail_weight=1\.5 is not in \(0, 1\)"),
        (lambda m: m.update(feature_names=["a"]), "invalid 'feature_names'"),
        (lambda m: m.update(mode="other"), "unknown mode 'other'"),
    ],
    ids=[
        "n_basis",
        "tt_rank",
        "hidden_units",
        "flow",
        "core_size_string",
        "core_size_float",
        "domain_string",
        "tail_bound_nan",
        "tail_weight",
        "feature_names",
        "mode",
    ],
)
def test_metadata_that_disagrees_with_the_tensors_names_the_entry(edit, match, tiny_saved):
    """Bugs: n_basis and tt_rank were never compared with the cores (the file
    loaded with parameters that do not describe it), sizes given as strings or
    floats were converted, a NaN tail bound (JSON accepts NaN) and feature
    names of the wrong length loaded."""
    edit_and_load(tiny_saved, edit, match)


@pytest.mark.parametrize("flow", ["realnvp", "nsf", "maf"])
@pytest.mark.parametrize("n_features", [1, 3])
def test_flow_sizes_are_computed_exactly(flow, n_features):
    """The size check extrapolates each layer's size from widths 1 to 3 (a
    quadratic in hidden_units, alternating between even and odd layers):
    compared here with layers actually built, so that a change of normflows
    that breaks the assumption fails this test rather than valid files."""
    from sktt_flow.estimator._persistence import _flow_state_size

    for n_layers, hidden_units in [(1, 7), (2, 5), (3, 10), (4, 16)]:
        layers = build_flow_layers(
            flow, n_features, n_layers=n_layers, hidden_units=hidden_units, tail_bound=2.0
        )
        state = torch.nn.ModuleList(layers).state_dict()
        expected = sum(tensor.numel() for tensor in state.values())
        assert _flow_state_size(flow, n_features, n_layers, hidden_units) == expected


# ------------------------------------------------------------ safe saving
def directory_listing(path: pathlib.Path) -> list[str]:
    return sorted(entry.name for entry in path.iterdir())


def test_symlink_at_the_old_temporary_name_is_not_followed(tiny_models, tmp_path):
    """Bug: save wrote through the fixed name <path>.part, following a symlink
    planted there (its target was overwritten with the model)."""
    target = tmp_path / "precious.txt"
    target.write_text("do not overwrite")
    (tmp_path / "model.sktt.part").symlink_to(target)
    tiny_models["data"].save(tmp_path / "model.sktt")
    assert target.read_text() == "do not overwrite"
    assert (tmp_path / "model.sktt.part").is_symlink()
    assert not (tmp_path / "model.sktt").is_symlink()
    TensorizingFlowDensity.load(tmp_path / "model.sktt")


def test_save_leaves_no_temporary_file(tiny_models, tmp_path):
    tiny_models["data"].save(tmp_path / "model.sktt")
    tiny_models["data"].save(tmp_path / "model.sktt")  # replacing an existing file
    assert directory_listing(tmp_path) == ["model.sktt"]


def test_failed_save_leaves_no_temporary_and_keeps_the_old_file(
    tiny_models, tmp_path, monkeypatch
):
    """An interrupt while the archive is written, and a destination that
    cannot be replaced (a directory): the temporary is removed, an existing
    model file is left as it was."""
    path = tmp_path / "model.sktt"
    tiny_models["data"].save(path)
    content = path.read_bytes()

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(zipfile.ZipFile, "writestr", interrupted)
        with pytest.raises(KeyboardInterrupt):
            tiny_models["data"].save(path)
    assert directory_listing(tmp_path) == ["model.sktt"]
    assert path.read_bytes() == content

    (tmp_path / "folder").mkdir()
    with pytest.raises(OSError):
        tiny_models["data"].save(tmp_path / "folder")
    assert directory_listing(tmp_path) == ["folder", "model.sktt"]
    assert list((tmp_path / "folder").iterdir()) == []


def test_concurrent_saves_to_one_path_both_succeed(tiny_models, tmp_path):
    """Bug: two saves to one path shared <path>.part; one renamed it away under
    the other (FileNotFoundError) or they interleaved their bytes. Two
    threads save different models to one path, many times in a row: no
    exception, and the file is always one of the two models, complete."""
    path = tmp_path / "model.sktt"
    models = [tiny_models["data"], tiny_models["variational"]]
    n_rounds = 20
    start = threading.Barrier(2)
    errors = []

    def save_repeatedly(model):
        try:
            start.wait()
            for _ in range(n_rounds):
                model.save(path)
        except BaseException as error:  # reported by the main thread
            errors.append(error)

    threads = [threading.Thread(target=save_repeatedly, args=(model,)) for model in models]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert directory_listing(tmp_path) == ["model.sktt"]
    loaded = load_quietly(path)
    saved_from = models[1] if hasattr(loaded, "elbo_") else models[0]
    points = saved_from.sample(20, random_state=0)
    np.testing.assert_array_equal(loaded.score_samples(points), saved_from.score_samples(points))


@pytest.fixture
def umask_022():
    previous = os.umask(0o022)
    yield
    os.umask(previous)


@pytest.mark.skipif(os.name != "posix", reason="POSIX permission bits")
def test_saved_file_has_the_mode_a_plain_open_gives(tiny_models, tmp_path, umask_022):
    """A new file gets 0o666 less the umask (not mkstemp's 0o600); a replaced
    file keeps its mode (bug: a 0o600 model file became 0o644 when saved
    again, exposing it)."""
    path = tmp_path / "model.sktt"
    tiny_models["data"].save(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    path.chmod(0o600)
    tiny_models["data"].save(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_settings_from_a_search_grid_of_numpy_integers_are_saved(data, tmp_path):
    """A grid written with np.arange hands np.int64 to tt_rank; the TT's
    selection kept it in its keys, which strict JSON refused."""
    model = TensorizingFlowDensity(
        tt_rank=np.int64(2), n_basis=8, max_iter=2, flow="none", random_state=0
    ).fit(data[0])
    path = tmp_path / "numpy_rank.sktt"
    model.save(path)
    loaded = TensorizingFlowDensity.load(path)
    np.testing.assert_array_equal(loaded.score_samples(data[1]), model.score_samples(data[1]))
