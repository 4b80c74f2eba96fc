"""TensorizingFlowDensity(symmetry=...): the TT base of a variational fit
averaged over a group that leaves log_target invariant.

The target is a double well along the diagonal of the plane, even in x (so
invariant under x -> -x) and under the swap of the coordinates: log Z by
quadrature (a 1-D integral in u times a Gaussian integral in v)."""

from __future__ import annotations

import hashlib
import io
import json
import math
import warnings
import zipfile

import joblib
import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.exceptions import ConvergenceWarning

from sktt_flow import TensorizingFlowDensity
from sktt_flow.diagnostics import importance_diagnostics
from sktt_flow.flows import SymmetrizedBase, TensorizingFlow

#: Width of the wells across the diagonal.
V_SCALE = 0.3
BOX = [[-3.0, 3.0], [-3.0, 3.0]]
SWAP = [[0.0, 1.0], [1.0, 0.0]]


def _diagonal(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return (x[:, 0] + x[:, 1]) / math.sqrt(2.0), (x[:, 0] - x[:, 1]) / math.sqrt(2.0)


def double_well(x: torch.Tensor) -> torch.Tensor:
    """Modes at u = +-1, v = 0 (x = +-(0.71, 0.71)), of equal mass."""
    u, v = _diagonal(x)
    return -4.0 * (u**2 - 1.0) ** 2 - v**2 / (2.0 * V_SCALE**2)


def tilted_well(x: torch.Tensor) -> torch.Tensor:
    """Not even: one well deeper than the other."""
    return double_well(x) + 0.5 * _diagonal(x)[0]


def cubic_across(x: torch.Tensor) -> torch.Tensor:
    """Not even, but even at its modes (v = 0): only draws off the modes show it."""
    return double_well(x) + 2.0 * _diagonal(x)[1] ** 3


def not_swap_invariant(x: torch.Tensor) -> torch.Tensor:
    """Even, but not invariant under the swap of the coordinates."""
    return double_well(x) - 0.3 * x[:, 0] ** 2


def quadrature_log_z() -> float:
    """The rotation (u, v) has Jacobian 1: Z = int exp(-4 (u^2 - 1)^2) du * sqrt(2 pi) s."""
    u = np.linspace(-4.0, 4.0, 400_001)
    integral = np.trapezoid(np.exp(-4.0 * (u**2 - 1.0) ** 2), u)
    return float(np.log(integral) + 0.5 * np.log(2.0 * np.pi) + np.log(V_SCALE))


LOG_Z = quadrature_log_z()


def fit(**params) -> TensorizingFlowDensity:
    settings = {
        "log_target": double_well,
        "n_features": 2,
        "base": "tt",
        "n_basis": 24,
        "flow": "none",
        "random_state": 0,
        **params,
    }
    with warnings.catch_warnings():
        # a rank-1 cross stops short of its tolerance: expected here
        warnings.simplefilter("ignore", ConvergenceWarning)
        return TensorizingFlowDensity(**settings).fit()


def positive_share(x: np.ndarray) -> float:
    """Fraction of the points in the well u > 0."""
    return float(((x[:, 0] + x[:, 1]) > 0).mean())


# ------------------------------------------------------------ mode balance
N_SHARE_DRAWS = 20_000
#: With the symmetrised base, P(u > 0) = 1/2 exactly (q(x) = q(-x)), so the
#: count of draws in the well u > 0 is Binomial(N, 1/2), of standard
#: deviation sqrt(N / 4): five of them (0.0177 for N = 20,000) are exceeded
#: with probability 6e-7. The lopsided base puts 0.1% there.
SHARE_TOLERANCE = 5.0 * math.sqrt(0.25 / N_SHARE_DRAWS)


@pytest.fixture(scope="module")
def rank_one():
    """Rank 1 on an explicit box: TT-cross fits one well (a product of one
    factor per coordinate cannot hold two wells on the diagonal without two
    more off it), with and without the symmetrisation."""
    common = {"tt_rank": 1, "domain": BOX}
    return fit(**common), fit(**common, symmetry="sign_flip")


def test_symmetrised_base_gives_the_modes_equal_shares(rank_one):
    plain, symmetric = rank_one
    assert isinstance(symmetric.flow_.q0, SymmetrizedBase)
    assert symmetric.tt_ is symmetric.flow_.q0.base and symmetric.base_ == "tt"
    plain_share = positive_share(plain.sample(N_SHARE_DRAWS, random_state=1))
    symmetric_share = positive_share(symmetric.sample(N_SHARE_DRAWS, random_state=1))
    assert abs(symmetric_share - 0.5) < SHARE_TOLERANCE
    # the same cross without the group: one well (measured 0.0009)
    assert abs(plain_share - 0.5) > 0.3
    # the invariance itself, exact: q(x) = q(-x) term for term
    x = symmetric.sample(1000, random_state=2)
    np.testing.assert_array_equal(symmetric.score_samples(x), symmetric.score_samples(-x))
    assert symmetric.ess_ > plain.ess_ + 0.1


def test_base_of_a_flow_model_is_balanced():
    """With a flow on top, the base (flow_.q0) is still exactly balanced; the
    flow starts at the identity, so the model's shares stay near 1/2."""
    model = fit(
        tt_rank=1,
        domain=BOX,
        symmetry="sign_flip",
        flow="realnvp",
        n_flow_layers=2,
        hidden_units=8,
        max_iter=3,
        batch_size=64,
    )
    base = model.flow_.q0
    assert isinstance(base, SymmetrizedBase)
    with torch.no_grad():
        # explicit box, no preconditioner: the base's coordinates are x
        y = base.sample(N_SHARE_DRAWS, generator=torch.Generator().manual_seed(3))
    assert abs(positive_share(y.numpy()) - 0.5) < SHARE_TOLERANCE
    assert abs(positive_share(model.sample(N_SHARE_DRAWS, random_state=1)) - 0.5) < 0.1


def test_self_check_is_that_of_the_symmetrised_base():
    """base_ess_ is measured on the symmetrised base: the flow-less model is
    that base, so its ESS on fresh draws agrees (0.7076 and 0.7073 measured),
    and the bare train inside it scores lower (0.59)."""
    model = fit(tt_rank=1, symmetry="sign_flip", preconditioner="none")
    assert abs(model.base_ess_ - model.ess_) < 0.03
    bare = TensorizingFlow(model.tt_, list(model.flow_.flows))
    with torch.no_grad():
        x, log_q = bare.sample(4096, generator=torch.Generator().manual_seed(4))
        bare_ess = importance_diagnostics(double_well(x), log_q.double()).ess
    assert bare_ess < model.base_ess_ - 0.06


# ------------------------------------------------------- against quadrature
def test_log_normalizer_and_elbo_agree_with_quadrature():
    model = fit(tt_rank=4, symmetry="sign_flip")
    # importance sampling: unbiased, within four standard errors
    assert abs(model.log_normalizer_ - LOG_Z) < 4.0 * model.log_normalizer_std_error_ + 1e-3
    # the ELBO is below log Z, by the reverse KL of a good base
    assert LOG_Z - 0.1 < model.elbo_ < LOG_Z + 4.0 * model.log_normalizer_std_error_
    assert model.ess_ > 0.8
    # the symmetrised density is normalised: a grid over [-6, 6]^2 (the
    # Gaussian tail component reaches beyond the box)
    grid = np.linspace(-6.0, 6.0, 601)
    points = np.stack(np.meshgrid(grid, grid, indexing="ij"), axis=-1).reshape(-1, 2)
    mass = np.exp(model.score_samples(points)).sum() * (grid[1] - grid[0]) ** 2
    assert abs(mass - 1.0) < 2e-3


# -------------------------------------------------------------- persistence
@pytest.fixture(scope="module")
def symmetric_flow_model():
    """Automatic box and coordinates, a small flow, float32 inference."""
    return fit(
        tt_rank=2,
        n_basis=16,
        symmetry="sign_flip",
        flow="realnvp",
        n_flow_layers=2,
        hidden_units=8,
        max_iter=2,
        batch_size=64,
    )


def assert_identical(model, other, X):
    for precision in ("float32", "float64"):
        model.set_params(inference_dtype=precision)
        other.set_params(inference_dtype=precision)
        np.testing.assert_array_equal(model.score_samples(X), other.score_samples(X))
        np.testing.assert_array_equal(
            model.sample(300, random_state=5), other.sample(300, random_state=5)
        )
    state, other_state = model.flow_.state_dict(), other.flow_.state_dict()
    assert state.keys() == other_state.keys()
    for key, tensor in state.items():
        assert tensor.dtype == other_state[key].dtype and torch.equal(tensor, other_state[key])
    for name in ("elbo_", "ess_", "log_normalizer_", "base_ess_", "preconditioner_", "base_"):
        assert getattr(model, name) == getattr(other, name)
    assert isinstance(other.flow_.q0, SymmetrizedBase) and other.tt_ is other.flow_.q0.base
    assert other._float32_flow.q0.matrices.dtype == torch.float32


def test_save_load_and_joblib_round_trip_bit_for_bit(symmetric_flow_model, tmp_path):
    model = symmetric_flow_model
    X = model.sample(500, random_state=6)
    # the group stays exact in the float64 model, whatever the training dtype
    assert model.flow_.q0.matrices.dtype == torch.float64
    np.testing.assert_array_equal(model.flow_.q0.matrices[1].numpy(), -np.eye(2))
    path = tmp_path / "model.sktt"
    model.save(path)
    with zipfile.ZipFile(path) as archive:
        metadata = json.loads(archive.read("metadata.json"))
    assert metadata["symmetry_order"] == 2 and metadata["params"]["symmetry"] == "sign_flip"
    loaded = TensorizingFlowDensity.load(path, log_target=double_well)
    assert loaded.get_params()["symmetry"] == "sign_flip"
    assert_identical(model, loaded, X)
    buffer = io.BytesIO()
    joblib.dump(model, buffer)
    buffer.seek(0)
    assert_identical(model, joblib.load(buffer), X)


def rewrite(path, edit_metadata=None, edit_state=None):
    """Rewrite a model file with edited members (the checksum kept valid)."""
    with zipfile.ZipFile(path) as archive:
        metadata = json.loads(archive.read("metadata.json"))
        state_bytes = archive.read("state.pt")
    if edit_state is not None:
        state = torch.load(io.BytesIO(state_bytes), weights_only=True)
        edit_state(state)
        buffer = io.BytesIO()
        torch.save(state, buffer)
        state_bytes = buffer.getvalue()
        metadata["state_sha256"] = hashlib.sha256(state_bytes).hexdigest()
    if edit_metadata is not None:
        edit_metadata(metadata)
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("metadata.json", json.dumps(metadata))
        archive.writestr("state.pt", state_bytes)


def test_files_without_symmetry_order_still_load(tmp_path):
    """Files written before symmetry existed have no such key (nor parameter)."""
    model = fit(tt_rank=2, n_basis=16, domain=BOX)
    path = tmp_path / "old.sktt"
    model.save(path)

    def as_before(metadata):
        assert metadata.pop("symmetry_order") == 0
        del metadata["params"]["symmetry"]

    rewrite(path, edit_metadata=as_before)
    loaded = TensorizingFlowDensity.load(path, log_target=double_well)
    assert loaded.symmetry is None and not isinstance(loaded.flow_.q0, SymmetrizedBase)
    X = model.sample(200, random_state=7)
    np.testing.assert_array_equal(model.score_samples(X), loaded.score_samples(X))


def test_files_without_the_group_centre_still_load(symmetric_flow_model, tmp_path):
    """Files written before SymmetrizedBase had a centre hold no q0.center: the
    group acted about the origin, and the loaded model scores bit for bit as
    the saved one. Fails if the loader requires the key."""
    model = symmetric_flow_model
    assert torch.equal(model.flow_.q0.center, torch.zeros(2, dtype=torch.float64))
    path = tmp_path / "old.sktt"
    model.save(path)
    rewrite(path, edit_state=lambda state: state.pop("q0.center"))
    loaded = TensorizingFlowDensity.load(path, log_target=double_well)
    X = model.sample(200, random_state=7)
    np.testing.assert_array_equal(model.score_samples(X), loaded.score_samples(X))


def test_edited_symmetry_in_a_file_is_refused(symmetric_flow_model, tmp_path):
    path = tmp_path / "model.sktt"
    symmetric_flow_model.save(path)
    cases = [
        ({"edit_metadata": lambda m: m.update(symmetry_order=0)}, "q0"),
        ({"edit_metadata": lambda m: m.update(symmetry_order=3)}, "symmetry_order"),
        ({"edit_metadata": lambda m: m.update(symmetry_order="2")}, "symmetry_order"),
        # not a group any more: |det| = 4
        ({"edit_state": lambda s: s["q0.matrices"][1].mul_(-2.0)}, "det"),
        # a centre of the wrong size
        (
            {"edit_state": lambda s: s.update({"q0.center": torch.zeros(3, dtype=torch.float64)})},
            "q0.center",
        ),
    ]
    for edits, match in cases:
        edited = tmp_path / "edited.sktt"
        edited.write_bytes(path.read_bytes())
        rewrite(edited, **edits)
        with pytest.raises(ValueError, match=match):
            TensorizingFlowDensity.load(edited, log_target=double_well)


def test_warm_start_keeps_the_exact_group(symmetric_flow_model):
    model = clone(symmetric_flow_model).set_params(max_iter=1)
    model.fit()
    group = model.flow_.q0.matrices.clone()
    model.set_params(warm_start=True).fit()
    assert isinstance(model.flow_.q0, SymmetrizedBase)
    assert model.flow_.q0.matrices.dtype == torch.float64
    assert torch.equal(model.flow_.q0.matrices, group)


# -------------------------------------------------------- parameter, errors
def test_parameter_follows_the_scikit_learn_conventions():
    group = np.stack([np.eye(2), -np.eye(2)])
    estimator = TensorizingFlowDensity(log_target=double_well, symmetry=group)
    assert estimator.get_params()["symmetry"] is group  # stored as given
    assert TensorizingFlowDensity().get_params()["symmetry"] is None
    cloned = clone(estimator)
    np.testing.assert_array_equal(cloned.symmetry, group)
    assert cloned.set_params(symmetry="sign_flip").symmetry == "sign_flip"
    with pytest.raises(ValueError, match="symmetry"):
        TensorizingFlowDensity(log_target=double_well, symmetry="mirror", n_features=2).fit()


def test_matrices_of_a_group_are_accepted():
    """The group {I, -I, swap, -swap} as matrices: the same balance."""
    group = [-np.eye(2), np.array(SWAP), -np.array(SWAP)]
    model = fit(tt_rank=1, domain=BOX, symmetry=group)
    assert model.flow_.q0.order == 4
    share = positive_share(model.sample(N_SHARE_DRAWS, random_state=1))
    assert abs(share - 0.5) < SHARE_TOLERANCE


def test_data_mode_is_refused():
    X = np.random.default_rng(0).normal(size=(50, 2))
    with pytest.raises(ValueError, match="symmetry is for variational inference"):
        TensorizingFlowDensity(symmetry="sign_flip", max_iter=1).fit(X)


@pytest.mark.parametrize(
    ("symmetry", "match"),
    [
        (np.stack([np.eye(3), -np.eye(3)]), "3 x 3 but the base has n_features=2"),
        (-np.eye(2), r"one array of shape \(2, 2\): wrap a single matrix"),
        (np.ones((2, 2, 2, 2)), "got shape"),
        ([[[2.0, 0.0], [0.0, 0.5]]], "not a group"),
        ([[[2.0, 0.0], [0.0, 1.0]]], r"\|det\|"),
    ],
)
def test_wrong_groups_are_refused(symmetry, match):
    with pytest.raises(ValueError, match=match):
        TensorizingFlowDensity(
            log_target=double_well, n_features=2, domain=BOX, symmetry=symmetry
        ).fit()


@pytest.mark.parametrize("domain", [BOX, None])
@pytest.mark.parametrize(
    ("target", "symmetry", "name"),
    [
        (tilted_well, "sign_flip", "the sign flip"),
        # even at its modes: the check on the base's draws finds it
        (cubic_across, "sign_flip", "the sign flip"),
        (not_swap_invariant, [-np.eye(2), SWAP, -np.array(SWAP)], r"symmetry\[1\]"),
    ],
)
def test_target_that_is_not_invariant_is_refused(domain, target, symmetry, name):
    with pytest.raises(ValueError, match=f"not invariant under {name}"):
        fit(log_target=target, tt_rank=2, domain=domain, symmetry=symmetry)


def test_gaussian_base_is_refused():
    with pytest.raises(ValueError, match='base="gaussian"'):
        fit(base="gaussian", symmetry="sign_flip", domain=BOX)


# ------------------------------------------------------ one orbit of modes
#: Two narrow wells mirrored in x_1, far apart for their width.
MIRROR_CENTRE = (6.0, 1.0)
MIRROR_SCALE = 0.2
MIRROR = [[-1.0, 0.0], [0.0, 1.0]]


def mirrored_wells(x: torch.Tensor) -> torch.Tensor:
    """An equal mixture of N((+-6, 1), 0.2^2 I), normalised (log Z = 0)."""
    terms = [
        -0.5 * (((x - torch.tensor(centre, dtype=x.dtype)) / MIRROR_SCALE) ** 2).sum(dim=1)
        for centre in (MIRROR_CENTRE, (-MIRROR_CENTRE[0], MIRROR_CENTRE[1]))
    ]
    return torch.logaddexp(*terms) - math.log(2.0 * 2.0 * math.pi * MIRROR_SCALE**2)


@pytest.fixture(scope="module")
def one_orbit_fit():
    """domain='auto' with the mirror: on the orbit's box (x_1 over [-8, 8])
    eight Legendre polynomials cannot hold wells of width 0.2, so the
    coordinates around one well are tried, and the mirror supplies the other."""
    return fit(
        log_target=mirrored_wells,
        n_basis=8,
        tt_rank=2,
        domain="auto",
        preconditioner="diagonal",
        symmetry=[MIRROR],
    )


def test_a_box_around_one_mode_of_each_orbit_when_the_orbit_box_is_too_wide(one_orbit_fit):
    """The kept train holds one well (its box is about 12 local standard
    deviations wide, not the 16 units between the wells plus both), the group
    acts about the origin of x (in the diagonal coordinates y = (x - mode) /
    scale, a centre far from 0), and the base is near exact: ESS above 0.95
    (0.99 seen), log Z within 0.02 of 0, the wells even to the binomial's five
    standard deviations. On the orbit's box alone the ESS is 0.40; without the
    draws folded back into the train's region, the box adjustment sees both
    wells and the ESS stays at 0.92."""
    model = one_orbit_fit
    base = model.flow_.q0
    assert isinstance(base, SymmetrizedBase)
    assert float(base.center.abs().max()) > 1.0
    x_box = model.flow_.flows[-1].forward(torch.stack([base.base.low, base.base.high]))[0]
    assert float((x_box[:, 0] - x_box[:, 0].mean()).abs().max()) < 3.0
    assert model.base_ess_ > 0.95
    assert abs(model.log_normalizer_) < 0.02
    x = model.sample(N_SHARE_DRAWS, random_state=3)
    assert abs(float((x[:, 0] > 0).mean()) - 0.5) < SHARE_TOLERANCE


def test_a_one_orbit_model_saves_and_loads_bit_for_bit(one_orbit_fit, tmp_path):
    """The centre is part of the file: a loaded model that dropped it (the
    group acting about the origin of y) would score differently."""
    path = tmp_path / "model.sktt"
    one_orbit_fit.save(path)
    loaded = TensorizingFlowDensity.load(path, log_target=mirrored_wells)
    X = one_orbit_fit.sample(300, random_state=4)
    np.testing.assert_array_equal(one_orbit_fit.score_samples(X), loaded.score_samples(X))
    assert torch.equal(loaded.flow_.q0.center, one_orbit_fit.flow_.q0.center)
