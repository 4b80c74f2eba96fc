"""TensorizingFlow: change of variables, sampling and the reverse-KL loss.

The log-determinants of the whole flow are checked against autograd Jacobians
on single float64 points (agreement to round-off); the gradient of the
reverse-KL loss with respect to the TT cores is checked against the exact
gradient of KL computed by quadrature, within a tolerance set by the Monte
Carlo standard error of the estimate.
"""

import itertools
import math

import numpy as np
import pytest
import torch

from sktt_flow import TTDistribution
from sktt_flow.flows import (
    FLOW_NAMES,
    FixedAffine,
    GaussianBase,
    TensorizingFlow,
    build_flow_layers,
    defensive_mixture_log_prob,
)
from sktt_flow.tt.basis import orthonormal_legendre
from tests.conftest import random_distribution
from tests.flows.reference import log_abs_det_jacobian, perturb


def perturbed_model(flow, n_features=3, dtype=torch.float64, seed=0):
    """A flow of 3 small layers on a random train, with perturbed flow parameters."""
    torch.manual_seed(seed)
    ranks = (1,) + (2,) * (n_features - 1) + (1,)
    base = random_distribution(ranks, 6, [[-2.0, 2.0]] * n_features, seed=seed, dtype=dtype)
    layers = build_flow_layers(flow, n_features, n_layers=3, hidden_units=16)
    model = TensorizingFlow(base, layers).to(dtype)
    perturb(model.flows, 0.3, seed=seed + 1)
    return model


@pytest.mark.parametrize("flow", ["realnvp", "nsf", "maf"])
def test_whole_flow_log_dets_match_the_jacobian_and_invert(flow):
    """Forward and inverse log-dets of the composed flow equal autograd's to
    1e-9 (round-off on log-dets of order ten), inverse(forward(z)) = z, and
    log_prob is the base density at z plus log |det dz/dx|."""
    model = perturbed_model(flow)
    base_cores = [core.detach().clone() for core in model.q0.cores]
    z = 1.5 * torch.randn(6, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    with torch.no_grad():
        x, log_det = model.forward_and_log_det(z)
        back, inverse_log_det = model.inverse_and_log_det(x)
        log_prob = model.log_prob(x)
        base_log_prob = model.q0.log_prob(z)
    assert float(log_det.abs().max()) > 0.1  # far from the identity
    torch.testing.assert_close(back, z, rtol=1e-10, atol=1e-10)
    for i in range(z.shape[0]):
        expected = log_abs_det_jacobian(model.forward_and_log_det, z[i : i + 1])
        assert float(log_det[i]) == pytest.approx(expected, abs=1e-9)
        expected = log_abs_det_jacobian(model.inverse_and_log_det, x[i : i + 1])
        assert float(inverse_log_det[i]) == pytest.approx(expected, abs=1e-9)
        assert float(log_prob[i]) == pytest.approx(float(base_log_prob[i]) + expected, abs=1e-9)
    # Only the flow was perturbed.
    for before, core in zip(base_cores, model.q0.cores, strict=True):
        assert torch.equal(before, core)


@pytest.mark.parametrize("flow", FLOW_NAMES)
def test_sample_returns_the_log_density_of_its_points_in_float64(flow):
    """log q from sample equals log_prob(x) to 1e-9 (float64 round-off through
    three layers and their inverses), in float64; equal seeds, equal draws."""
    model = perturbed_model(flow, n_features=2)
    x, log_q = model.sample(300, generator=torch.Generator().manual_seed(0))
    assert x.dtype == log_q.dtype == torch.float64
    assert x.shape == (300, 2) and log_q.shape == (300,)
    with torch.no_grad():
        torch.testing.assert_close(log_q.detach(), model.log_prob(x), rtol=0, atol=1e-9)
    again, log_q_again = model.sample(300, generator=torch.Generator().manual_seed(0))
    assert torch.equal(x, again) and torch.equal(log_q, log_q_again)
    other, _ = model.sample(300, generator=torch.Generator().manual_seed(1))
    assert not torch.equal(x, other)
    # normflows' own sample and forward_kld allocate float32 zeros; here the
    # loss keeps the model's precision.
    assert model.forward_kld(x.detach()).dtype == torch.float64


@pytest.mark.parametrize("flow", FLOW_NAMES)
def test_a_float32_model_samples_in_float32(flow):
    """float32 in, float32 out; log q agrees with log_prob(x) to 1e-2, the
    float32 round-off (1e-7) amplified by inverting steep perturbed layers
    (measured <= 1e-3 for the splines)."""
    model = perturbed_model(flow, n_features=2, dtype=torch.float32)
    x, log_q = model.sample(300, generator=torch.Generator().manual_seed(0))
    assert x.dtype == log_q.dtype == torch.float32
    with torch.no_grad():
        log_prob = model.log_prob(x)
    assert log_prob.dtype == torch.float32
    torch.testing.assert_close(log_q.detach(), log_prob, rtol=0, atol=1e-2)


def test_the_empty_flow_is_its_base():
    """flow="none": samples and log-densities are the base's, bit for bit."""
    base = random_distribution((1, 3, 1), 6, [[-1.0, 1.0], [0.0, 2.0]], seed=4)
    model = TensorizingFlow(base, [])
    x, log_q = model.sample(200, generator=torch.Generator().manual_seed(0))
    assert torch.equal(x, base.sample(200, generator=torch.Generator().manual_seed(0)))
    with torch.no_grad():
        assert torch.equal(log_q, base.log_prob(x))
        assert torch.equal(model.log_prob(x), base.log_prob(x))
    assert model.n_features == 2


def test_standardised_model_has_the_jacobian_of_the_standardisation():
    """With FixedAffine(shift, scale) last: log q(x) = log q0((x - shift) / scale)
    - sum(log scale), to float64 round-off; samples are shifted and scaled."""
    base = random_distribution((1, 3, 1), 6, [[-2.0, 2.0]] * 2, seed=5)
    shift = torch.tensor([10.0, -3.0], dtype=torch.float64)
    scale = torch.tensor([4.0, 0.25], dtype=torch.float64)
    model = TensorizingFlow(base, [FixedAffine(shift, scale)])
    x = shift + scale * 2.5 * torch.randn(
        100, 2, generator=torch.Generator().manual_seed(6), dtype=torch.float64
    )
    with torch.no_grad():
        expected = base.log_prob((x - shift) / scale) - torch.log(scale).sum()
        torch.testing.assert_close(model.log_prob(x), expected, rtol=1e-13, atol=1e-13)
    samples, log_q = model.sample(100, generator=torch.Generator().manual_seed(0))
    z = base.sample(100, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(samples, shift + scale * z, rtol=0, atol=0)
    with torch.no_grad():
        torch.testing.assert_close(log_q, base.log_prob(z) - math.log(4.0 * 0.25))


# ------------------------------------------------------ defensive mixture
def _defended_model(weight: float) -> TensorizingFlow:
    """A 1-D model whose flow (a learned-looking affine map) moves mass far from
    where the fixed layers put it: the two components differ a lot."""
    import normflows as nf

    base = random_distribution((1, 1), 8, [[-1.0, 1.0]], seed=7)
    shift_scale = nf.flows.AffineConstFlow((1,))
    with torch.no_grad():
        shift_scale.s.fill_(math.log(0.3))
        shift_scale.t.fill_(1.5)
    standardize = FixedAffine(
        torch.tensor([2.0], dtype=torch.float64), torch.tensor([0.5], dtype=torch.float64)
    )
    return TensorizingFlow(base, [shift_scale, standardize], defensive_weight=weight).double()


def _total_mass(model: TensorizingFlow) -> float:
    """Integral of a 1-D model of this module (:func:`_defended_model`,
    :func:`_with_companion`), by Gauss-Legendre on panels of [-40, 40] whose
    ends include the boxes' edges, where the density jumps (the fixed
    component's box is [1.5, 2.5], the flow's [2.6, 2.9]): error at round-off
    for this piecewise smooth density."""
    nodes, weights = np.polynomial.legendre.leggauss(200)
    ends = np.union1d(np.arange(-40.0, 41.0, 1.0), [1.5, 2.5, 2.6, 2.9])
    total = 0.0
    with torch.no_grad():
        for low, high in itertools.pairwise(ends):
            half = (high - low) / 2
            points = torch.tensor(low + half * (nodes + 1), dtype=torch.float64)[:, None]
            total += float((half * torch.tensor(weights) * model.log_prob(points).exp()).sum())
    return total


def test_defensive_mixture_is_the_mixture_and_is_normalised():
    """log q = log((1 - d) q_flow + d q_fixed), with q_fixed the base through
    the FixedAffine alone, computed here independently; and the density
    integrates to one (Gauss-Legendre on a grid far wider than both
    components, with panel ends at the boxes' edges, where the density
    jumps: error at round-off for this piecewise smooth density)."""
    weight = 0.2
    model = _defended_model(weight)
    x = torch.linspace(-3.0, 6.0, 301, dtype=torch.float64)[:, None]
    with torch.no_grad():
        flow_only = _defended_model(0.0).log_prob(x)
        base = model.q0
        fixed = base.log_prob((x - 2.0) / 0.5) - math.log(0.5)
        expected = torch.log((1 - weight) * flow_only.exp() + weight * fixed.exp())
        torch.testing.assert_close(model.log_prob(x), expected, rtol=1e-12, atol=1e-12)
    assert _total_mass(model) == pytest.approx(1.0, abs=1e-6)


def test_defensive_samples_come_from_the_mixture_with_their_log_density():
    """The returned log q is the mixture's at each draw; a share d of the
    draws follows the fixed component (20,000 draws: standard error 0.003 of
    the share), told apart here because the two components barely overlap."""
    weight = 0.2
    model = _defended_model(weight)
    with torch.no_grad():
        x, log_q = model.sample(20000, generator=torch.Generator().manual_seed(0))
        torch.testing.assert_close(log_q, model.log_prob(x), rtol=1e-10, atol=1e-10)
    # the flow puts its mass within [1.5 +- 0.3] * 0.5 + 2, the fixed layer in [1.5, 2.5]
    flow_component = ((x[:, 0] > 2.6) & (x[:, 0] < 2.9)).double().mean()
    fixed_share = 1.0 - float((x[:, 0] > 2.5).double().mean())
    assert fixed_share == pytest.approx(weight, abs=0.015)
    assert float(flow_component) > 0.5


@pytest.mark.parametrize("weight", [0.0, 0.2])
def test_sample_points_are_the_draws_of_sample_without_any_density(monkeypatch, weight):
    """The same points as ``sample`` from the same generator, for a defended
    model too (its mask drawn first, then the base), with neither the base's
    density nor the flow's inverse evaluated: fails if the points-only path
    draws in another order, maps the fixed component's draws through the flow,
    or still pays for a density."""
    model = _defended_model(weight)
    with torch.no_grad():
        expected, _ = model.sample(5000, generator=torch.Generator().manual_seed(3))

        def refuse(*args, **kwargs):
            raise AssertionError("a density was evaluated")

        monkeypatch.setattr(model.q0, "log_prob", refuse)
        monkeypatch.setattr(model, "inverse_and_log_det", refuse)
        points = model.sample_points(5000, generator=torch.Generator().manual_seed(3))
    assert torch.equal(points, expected)


def _with_companion(weight: float, companion_weight: float = 0.3) -> TensorizingFlow:
    """The defended 1-D model of :func:`_defended_model` with a companion: a
    Gaussian at -4 of standard deviation 0.5 through its own FixedAffine and
    a trained-like affine layer, apart from both of the model's components."""
    import normflows as nf

    shift = nf.flows.AffineConstFlow((1,))
    with torch.no_grad():
        shift.t.fill_(-1.0)
    companion = TensorizingFlow(
        GaussianBase(torch.zeros(1), torch.ones(1)),
        [shift, FixedAffine(torch.tensor([-3.0]), torch.tensor([0.5]))],
        defensive_weight=0.1,
    ).double()
    model = _defended_model(weight)
    return TensorizingFlow(
        model.q0,
        list(model.flows),
        defensive_weight=weight,
        companion=companion,
        companion_weight=companion_weight,
    ).double()


def test_companion_mixture_is_exact_and_normalised():
    """log q = log((1 - a) q_model + a q_companion), each computed here on its
    own; the density integrates to one (Gauss-Legendre, panel ends at the
    components' box edges); draws carry that log-density, and a share a of
    them (20,000 draws: standard error 0.003) lies where only the companion
    puts mass (below 0, the model's components living in [1.5, 2.9]). Fails
    if the weight is applied to the wrong model, a draw of one model is
    scored without the other, or the rows of the two models are mixed up."""
    model = _with_companion(0.2)
    alone = _defended_model(0.2)
    x = torch.linspace(-8.0, 6.0, 401, dtype=torch.float64)[:, None]
    with torch.no_grad():
        expected = torch.logaddexp(
            math.log(0.7) + alone.log_prob(x), math.log(0.3) + model.companion.log_prob(x)
        )
        torch.testing.assert_close(model.log_prob(x), expected, rtol=1e-12, atol=1e-12)
        assert _total_mass(model) == pytest.approx(1.0, abs=1e-6)
        draws, log_q = model.sample(20000, generator=torch.Generator().manual_seed(0))
        torch.testing.assert_close(log_q, model.log_prob(draws), rtol=1e-10, atol=1e-10)
    assert float((draws[:, 0] < 0).double().mean()) == pytest.approx(0.3, abs=0.015)


def test_companion_draws_do_not_depend_on_the_chunks():
    """The codes of every draw and the companion's generator made once, then
    the draws in one call or in chunks of 704 and 1296 rows (multiples of 16,
    as the estimator's chunks are): the same points and log-densities, as
    the estimator's chunked sampling needs. Fails if the two models drew from
    one stream (each chunk would interleave them), or if the companion drew
    normals for its own rows only (torch draws normals in blocks of 16)."""
    model = _with_companion(0.2)
    generator = torch.Generator().manual_seed(4)
    codes = model.defensive_draws(2000, generator)
    assert set(codes.unique().tolist()) == {0, 1, 2, 3}
    state = generator.get_state()
    with torch.no_grad():
        whole, log_whole = model.sample(
            2000, generator, codes, model.companion_generator(generator)
        )
        generator.set_state(state)
        companion_generator = model.companion_generator(generator)
        parts = [
            model.sample(len(chunk), generator, chunk, companion_generator)
            for chunk in codes.split([704, 1296])
        ]
        generator.set_state(state)
        points = model.sample_points(2000, generator, codes, model.companion_generator(generator))
    assert torch.equal(torch.cat([x for x, _ in parts]), whole)
    assert torch.equal(torch.cat([log_q for _, log_q in parts]), log_whole)
    assert torch.equal(points, whole)


def test_bad_companions_are_refused():
    model = _defended_model(0.2)
    companion = _defended_model(0.1)
    with pytest.raises(ValueError, match="companion_weight"):
        TensorizingFlow(model.q0, [], companion=companion, companion_weight=1.0)
    with pytest.raises(TypeError, match="without a companion"):
        TensorizingFlow(model.q0, [], companion=_with_companion(0.1), companion_weight=0.5)
    two_dimensional = TensorizingFlow(GaussianBase(torch.zeros(2), torch.ones(2)), [])
    with pytest.raises(ValueError, match="features"):
        TensorizingFlow(model.q0, [], companion=two_dimensional, companion_weight=0.5)


def _reference_defended_log_prob(model: TensorizingFlow, x: torch.Tensor) -> torch.Tensor:
    """The defensive mixture as written out before the fixed layers' inverse
    was shared with the flow's."""
    z, log_det = model.inverse_and_log_det(x)
    z_fixed, fixed_log_det = model._fixed_inverse(x)
    return model._mix(model.q0.log_prob(z) + log_det, model.q0.log_prob(z_fixed) + fixed_log_det)


def _with_standardization(model: TensorizingFlow, fixed_last: bool, weight: float):
    """``model``'s layers with a float64 standardisation added next to the
    data (``fixed_last``, as the estimator builds it) or between the first
    trained layer and the others; the model and the standardisation."""
    standardize = FixedAffine(
        torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64),
        torch.tensor([0.7, 1.3, 0.4], dtype=torch.float64),
    )
    layers = list(model.flows)
    layers = [*layers, standardize] if fixed_last else [layers[0], standardize, *layers[1:]]
    return TensorizingFlow(model.q0, layers, defensive_weight=weight), standardize


@pytest.mark.parametrize("fixed_last", [True, False])
def test_defensive_log_prob_with_a_shared_fixed_inverse_is_the_mixture(fixed_last):
    """A 3-D model as the estimator builds it (a float32 flow and base, the
    fixed standardisation in float64 next to the data), and one whose fixed
    layer sits between trained ones (no sharing there). The fixed layers'
    inverse, computed once as the first part of the flow's, gives the
    mixture bit for bit; fails if the log-determinants are summed in another
    order or into the wrong component."""
    model = perturbed_model("realnvp", dtype=torch.float32)
    defended, _ = _with_standardization(model, fixed_last, weight=0.05)
    assert (defended._fixed_suffix_start() is not None) == fixed_last
    x = torch.randn(256, 3, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    with torch.no_grad():
        assert torch.equal(defended.log_prob(x), _reference_defended_log_prob(defended, x))


@pytest.mark.parametrize("fixed_last", [True, False])
@pytest.mark.parametrize("weight", [0.0, 0.3])
def test_component_log_probs_are_the_flow_and_the_fixed_component(fixed_last, weight):
    """Both components at once, whatever the model's own weight (the
    estimator fits the weight to them on a model built without one): the
    flow's is the density of the model without the mixture, the fixed one's
    the base through the fixed layer alone, and the model's log-density is
    their mixture."""
    model, standardize = _with_standardization(
        perturbed_model("realnvp", dtype=torch.float64), fixed_last, weight
    )
    x = torch.randn(256, 3, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    with torch.no_grad():
        log_flow, log_fixed = model.component_log_probs(x)
        torch.testing.assert_close(log_flow, model.log_flow_only(x), rtol=1e-13, atol=1e-13)
        expected_fixed = model.q0.log_prob((x - standardize.shift) / standardize.scale) - float(
            standardize.scale.log().sum()
        )
        torch.testing.assert_close(log_fixed, expected_fixed, rtol=1e-13, atol=1e-13)
        assert not torch.allclose(log_flow, log_fixed)  # the flow moves the points
        if weight:
            torch.testing.assert_close(
                model.log_prob(x),
                defensive_mixture_log_prob(log_flow, log_fixed, weight),
                rtol=0,
                atol=0,
            )


def test_defensive_weight_is_checked():
    base = random_distribution((1, 1), 4, [[-1.0, 1.0]], seed=1)
    with pytest.raises(ValueError, match="defensive_weight"):
        TensorizingFlow(base, [], defensive_weight=1.0)


# ----------------------------------------------------- reverse KL with cores
MU, SIGMA, LOG_C = 0.5, 0.8, 1.7
DOMAIN = (-3.0, 3.0)


def log_target(x):
    """Unnormalised Gaussian N(MU, SIGMA^2) in one coordinate."""
    return LOG_C - 0.5 * ((x[:, 0] - MU) / SIGMA) ** 2


def trainable_base():
    """n_basis = 4 with s(t) >= 1 - 0.25 sqrt(3) - 0.15 sqrt(5) - 0.05 sqrt(7) > 0.09
    (up to the basis normalisation): no root in the box, so q log(q / h) is smooth
    and Gauss-Legendre quadrature is exact to round-off. tail_weight=1e-9 makes
    the box integral the whole KL up to ~1e-8."""
    core = torch.tensor([1.0, 0.25, -0.15, 0.05], dtype=torch.float64).view(1, 4, 1)
    return TTDistribution([core], [DOMAIN], tail_weight=1e-9)


def quadrature_kl(base, n_nodes=200):
    """KL(q || h) = int q log(q / h) over the box by Gauss-Legendre, differentiable."""
    nodes, weights = np.polynomial.legendre.leggauss(n_nodes)
    half = (DOMAIN[1] - DOMAIN[0]) / 2
    x = torch.tensor(DOMAIN[0] + half * (nodes + 1), dtype=torch.float64)[:, None]
    w = torch.tensor(half * weights, dtype=torch.float64)
    log_q = base.log_prob(x)
    return (w * log_q.exp() * (log_q - log_target(x))).sum()


def per_sample_scores(base, z):
    """grad_c log q0(z_i), (N, 4), in closed form for a one-coordinate rank-1
    train: q0 = (1 - eps) s^2 / |c|^2 + eps g with s = phi(z) . c, so
    grad log q0 = (1 - eps) p_TT / q0 * (2 phi / s - 2 c / |c|^2)."""
    c = base.cores[0].detach().reshape(-1)
    phi = orthonormal_legendre(z, base.low, base.high, base.n_basis)[:, 0]
    with torch.no_grad():
        share = (1 - base.tail_weight) * (base.log_prob_tt(z) - base.log_prob(z)).exp()
    return share[:, None] * (2 * phi / (phi @ c)[:, None] - 2 * c / c.square().sum())


def test_reverse_kl_loss_value_is_the_plain_monte_carlo_estimate():
    """The score-function term has value zero: the loss is mean(log q - log h)
    on the same draw, to float64 round-off."""
    base = trainable_base()
    model = TensorizingFlow(base, [])
    loss = model.reverse_kl_loss(log_target, 5000, generator=torch.Generator().manual_seed(0))
    z = base.sample(5000, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        plain = (base.log_prob(z) - log_target(z)).mean()
    assert float(loss.detach()) == pytest.approx(float(plain), rel=1e-13)
    assert loss.requires_grad


def test_reverse_kl_gradient_in_the_cores_matches_quadrature():
    """On 200k samples, the loss's gradient in the cores is the exact gradient of
    KL (by quadrature) within 5 Monte Carlo standard errors; the standard
    errors come from per-sample gradients (closed form on 20k of the samples,
    scaled by sqrt(20k / 200k)). The loss value is within 5 standard
    errors of the quadrature KL too."""
    base = trainable_base()
    model = TensorizingFlow(base, [])
    n = 200_000
    loss = model.reverse_kl_loss(log_target, n, generator=torch.Generator().manual_seed(0))
    (gradient,) = torch.autograd.grad(loss, base.cores[0])
    kl = quadrature_kl(base)
    (exact,) = torch.autograd.grad(kl, base.cores[0])
    # Per-sample terms of the estimator: (1 + g_i - mean g) * grad log q0(z_i).
    z = base.sample(n, generator=torch.Generator().manual_seed(0))[: n // 10]
    scores = per_sample_scores(base, z)
    for i in range(3):  # the closed form is autograd's
        (expected,) = torch.autograd.grad(base.log_prob(z[i : i + 1]).sum(), base.cores[0])
        torch.testing.assert_close(scores[i], expected.flatten(), rtol=1e-10, atol=1e-12)
    with torch.no_grad():
        gap = base.log_prob(z) - log_target(z)
    per_sample = (1.0 + gap - gap.mean())[:, None] * scores
    standard_error = per_sample.std(0) / math.sqrt(n)
    # About 0.015 against entries up to 2.3: dropping the score-function term
    # (keeping only the pathwise mean of grad log q0) misses by 6 to 160 of them.
    assert float(standard_error.max()) < 0.05
    np.testing.assert_array_less(
        (gradient - exact).abs().flatten().detach().numpy(),
        5 * standard_error.numpy(),
    )
    # The gradient is orthogonal to the core: the density ignores its scale.
    assert float((exact * base.cores[0].detach()).sum()) == pytest.approx(0.0, abs=1e-12)
    loss_error = float(gap.std() / math.sqrt(n))
    assert float(loss.detach()) == pytest.approx(float(kl.detach()), abs=5 * loss_error)


# ------------------------------------------------- reverse KL on given draws
def test_reverse_kl_loss_on_given_base_draws_is_the_loss_of_those_draws():
    """Draws made beforehand (as fit_reverse_kl's pool makes them) give the
    same loss and the same gradients in every flow parameter, to the last bit,
    as the loss that draws them itself from the same generator state. Fails if
    the given draws or their log q0 are not the ones used, or are used
    otherwise than drawn ones."""
    model = perturbed_model("realnvp")
    model.q0.requires_grad_(False)
    parameters = list(model.flows.parameters())

    def log_gaussian(x):
        return -0.5 * (x**2).sum(1)

    drawn = model.reverse_kl_loss(log_gaussian, 500, generator=torch.Generator().manual_seed(0))
    drawn_gradients = torch.autograd.grad(drawn, parameters)
    # as the pool makes them: the base's draws with the log q0 its sampler
    # returns (log_prob(z) rounds differently on some CPUs: 1 ulp on an EPYC)
    z, log_q0 = model.q0(500, generator=torch.Generator().manual_seed(0))
    given = model.reverse_kl_loss(log_gaussian, 500, base_draws=(z, log_q0))
    given_gradients = torch.autograd.grad(given, parameters)
    assert float(given.detach()) == float(drawn.detach())
    assert all(torch.equal(a, b) for a, b in zip(drawn_gradients, given_gradients, strict=True))
    assert any(float(gradient.abs().max()) > 0 for gradient in given_gradients)


def test_reverse_kl_loss_refuses_given_draws_it_cannot_use():
    """A trainable base needs log q0 with its graph for the score-function
    term, which draws made beforehand lack; and the draws must be as many as
    asked for."""
    base = trainable_base()
    model = TensorizingFlow(base, [])
    with torch.no_grad():
        z = base.sample(10, generator=torch.Generator().manual_seed(0))
        log_q0 = base.log_prob(z)
    with pytest.raises(ValueError, match="frozen base"):
        model.reverse_kl_loss(log_target, 10, base_draws=(z, log_q0))
    base.requires_grad_(False)
    with pytest.raises(ValueError, match="num_samples=12"):
        model.reverse_kl_loss(log_target, 12, base_draws=(z, log_q0))
    assert torch.isfinite(model.reverse_kl_loss(log_target, 10, base_draws=(z, log_q0)))
