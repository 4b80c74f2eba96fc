"""TensorizingFlowDensity.save / load: a model file that runs no code on load.

Round trips must be exact (same scores, same samples, same fitted
attributes); crafted, truncated, tampered or foreign files must be refused
with a ValueError, and a crafted pickle must never run."""

from __future__ import annotations

import hashlib
import io
import json
import pathlib
import pickle
import re
import zipfile

import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.exceptions import NotFittedError

import sktt_flow
from sktt_flow import TensorizingFlowDensity
from sktt_flow.flows import build_flow_layers
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
        (lambda m: m["fitted"].update(n_iter_="3"), "invalid feature names or fitted"),
        (lambda m: m.update(device="quantum"), "invalid device 'quantum'"),
        (lambda m: m.update(format="something.else"), "not a sktt_flow model file"),
        (lambda m: m.update(format_version=99), "format version 99"),
    ],
)
def test_edited_metadata_is_a_clear_error(edit, match, saved):
    metadata, state = read_members(saved)
    edit(metadata)
    write_members(saved, metadata, state)
    with pytest.raises(ValueError, match=match) as error:
        TensorizingFlowDensity.load(saved)
    assert str(saved) in str(error.value)


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
