"""SymmetrizedBase: exact density and exact sampling of a group-averaged base.

The base is a 2-D tensor train on an asymmetric box that puts about 90% of
its mass on one side (z_1 > 0): symmetrising it must move exactly half of the
mass to each side. Densities are checked against quadrature and against a
brute-force mean over the group computed here with a loop; samples against
the exact shares and CDFs by binomial, chi-square and KS tests whose
thresholds are set for the sample size (false alarms below 1e-5 for a random
seed; the seeds are fixed, so the tests are deterministic).
"""

import itertools
import math

import numpy as np
import pytest
import torch
from scipy import stats

from sktt_flow import TTDistribution
from sktt_flow.flows import (
    SPLINE_MARGIN,
    GaussianBase,
    SymmetrizedBase,
    TensorizingFlow,
    build_flow_layers,
    sign_flip_group,
    spline_tail_bound,
)
from sktt_flow.tt.basis import gauss_legendre, nodal_to_coefficient_matrix
from tests.conftest import random_distribution, requires_cuda
from tests.flows.reference import perturb

#: The base's box: not symmetric under z -> -z, so that the symmetrised
#: density lives on the union of B and -B, [-3, 3]^2 with corners cut.
BOX = [[-2.0, 3.0], [-3.0, 2.0]]
#: Where the pieces of the symmetrised density meet, per axis (B and -B).
BREAKS = (-3.0, -2.0, 2.0, 3.0)
TAIL_WEIGHT = 0.01
N_DRAWS = 20_000


def rotation(angle):
    c, s = math.cos(angle), math.sin(angle)
    return torch.tensor([[c, -s], [s, c]], dtype=torch.float64)


def dihedral_group():
    """The 8 symmetries of the square: 4 rotations and 4 reflections."""
    reflection = torch.tensor([[1.0, 0.0], [0.0, -1.0]], dtype=torch.float64)
    rotations = [rotation(k * math.pi / 2).round() for k in range(4)]
    return rotations + [r @ reflection for r in rotations]


def cyclic_group_3():
    """Rotations by 2 pi / 3 and 4 pi / 3, without the identity."""
    return [rotation(2 * math.pi / 3), rotation(4 * math.pi / 3)]


#: A shear-and-stretch with det 1: conjugating by it makes a group that is
#: not orthogonal (g^T is not g^{-1}, and not in the group).
SHEAR = torch.tensor([[1.0, 0.5], [0.0, 1.0]], dtype=torch.float64) @ torch.diag(
    torch.tensor([2.0, 0.5], dtype=torch.float64)
)


def skewed_cyclic_group_3():
    """C3 conjugated by SHEAR: S R S^{-1}, of order 3 and |det| 1."""
    inverse = torch.linalg.inv(SHEAR)
    return [SHEAR @ r @ inverse for r in cyclic_group_3()]


def lopsided_base(dtype=torch.float64):
    """A 2-D train on BOX interpolating sqrt(0.9 N(m, s) + 0.1 N(m', s)), so
    that about 90% of its mass has z_1 > 0; a full-rank 12 x 12 coefficient
    matrix written as a rank-12 train."""
    n = 12
    low = torch.tensor([row[0] for row in BOX], dtype=torch.float64)
    high = torch.tensor([row[1] for row in BOX], dtype=torch.float64)
    nodes, _ = gauss_legendre(n, low, high)
    z1, z2 = torch.meshgrid(nodes[0], nodes[1], indexing="ij")

    def bump(m1, m2):
        return torch.exp(-((z1 - m1) ** 2 + (z2 - m2) ** 2) / (2 * 0.6**2))

    root = torch.sqrt(0.9 * bump(1.2, 0.3) + 0.1 * bump(-1.0, -0.6))
    to_coefficients = nodal_to_coefficient_matrix(n, low, high)
    coefficients = to_coefficients[0] @ root @ to_coefficients[1].T
    cores = [torch.eye(n, dtype=torch.float64)[None], coefficients[:, :, None]]
    return TTDistribution([c.to(dtype) for c in cores], BOX, tail_weight=TAIL_WEIGHT)


def panel_rule(n_nodes, breaks):
    """Gauss-Legendre nodes and weights on [breaks[0], breaks[-1]], one rule
    per panel between consecutive breaks (exact for piecewise polynomials of
    degree < 2 n_nodes with these breaks)."""
    nodes, weights = gauss_legendre(
        n_nodes,
        torch.tensor(breaks[:-1], dtype=torch.float64),
        torch.tensor(breaks[1:], dtype=torch.float64),
    )
    return nodes.flatten(), weights.flatten()


def tail_parameters(base):
    center = ((base.low + base.high) / 2).numpy()
    scale = ((base.high - base.low) / 2).numpy()
    return center, scale


def symmetrised_tail_mass_outside(base, half_width):
    """Mass of the symmetrised density outside [-w, w]^2: only the Gaussian
    tail component is there, and its two images have the same mass outside
    this symmetric square."""
    center, scale = tail_parameters(base)
    inside = np.prod(
        stats.norm.cdf(half_width, center, scale) - stats.norm.cdf(-half_width, center, scale)
    )
    return base.tail_weight * (1.0 - inside)


def log_prob_by_loop(base, group, z):
    """log (1/|G|) sum_g q0(g z), one base call per element, identity added."""
    elements = [torch.eye(z.shape[1], dtype=torch.float64)]
    for g in group:
        g = torch.as_tensor(g, dtype=torch.float64)
        if not any(torch.allclose(g, h, atol=1e-12) for h in elements):
            elements.append(g)
    total = torch.zeros(z.shape[0], dtype=torch.float64)
    for g in elements:
        total += base.log_prob(z @ g.T).exp()
    return torch.log(total / len(elements))


def side_chi_square(z):
    """(count - n/2)^2 / (n/4) for the count of draws with z_1 > 0."""
    n = z.shape[0]
    count = int((z[:, 0] > 0).sum())
    return (count - n / 2) ** 2 / (n / 4)


# ------------------------------------------------------------- the density
def test_the_base_is_lopsided():
    """The premise of the tests: about 90% of the base's mass has z_1 > 0
    (exact quadrature of p_TT on B, plus the tail's share)."""
    base = lopsided_base()
    nodes1, weights1 = panel_rule(16, (0.0, 3.0))
    nodes2, weights2 = panel_rule(16, (-3.0, 2.0))
    points = torch.cartesian_prod(nodes1, nodes2)
    weights = torch.outer(weights1, weights2).flatten()
    with torch.no_grad():
        tt_share = float((base.log_prob_tt(points).exp() * weights).sum())
    center, scale = tail_parameters(base)
    share = (1 - TAIL_WEIGHT) * tt_share + TAIL_WEIGHT * stats.norm.sf(0.0, center[0], scale[0])
    assert 0.85 < share < 0.95


def test_normalised_by_quadrature_on_the_union_of_the_boxes():
    """Gauss rules on the 3 x 3 panels between the breaks of B and -B
    integrate the polynomial pieces exactly and the Gaussian tail to
    round-off; with the tail's mass outside [-3, 3]^2 (0.4% of the total, so
    the check sees it) the symmetrised density integrates to 1 within 1e-10.
    Without the 1/|G| it would be 2."""
    base = lopsided_base()
    q = SymmetrizedBase.sign_flip(base)
    nodes, weights = panel_rule(20, BREAKS)
    points = torch.cartesian_prod(nodes, nodes)
    with torch.no_grad():
        inside = float((q.log_prob(points).exp() * torch.outer(weights, weights).flatten()).sum())
    outside = symmetrised_tail_mass_outside(base, 3.0)
    assert outside > 1e-3
    assert inside + outside == pytest.approx(1.0, abs=1e-10)


@pytest.mark.parametrize(
    "group, order",
    [
        (sign_flip_group(2), 2),
        (dihedral_group(), 8),
        (cyclic_group_3(), 3),
        (skewed_cyclic_group_3(), 3),
    ],
)
def test_log_prob_equals_the_mean_over_the_group_by_a_loop(group, order):
    """Equal to 1e-12 to the brute-force mean, at points inside and outside
    both boxes; the identity is added to the C3 rotations given without it."""
    base = lopsided_base()
    q = SymmetrizedBase(base, group)
    generator = torch.Generator().manual_seed(0)
    z = 8 * torch.rand(300, 2, generator=generator, dtype=torch.float64) - 4
    with torch.no_grad():
        torch.testing.assert_close(
            q.log_prob(z), log_prob_by_loop(base, group, z), rtol=1e-12, atol=1e-12
        )
    assert q.order == order


def test_gaussian_base_gives_the_two_component_mixture():
    """A symmetrised N(m, s^2) is (N(m, s^2) + N(-m, s^2)) / 2, by scipy."""
    loc = torch.tensor([1.5, -0.25, 0.5], dtype=torch.float64)
    scale = torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64)
    q = SymmetrizedBase.sign_flip(GaussianBase(loc, scale))
    z = torch.randn(50, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    expected = np.log(
        0.5 * stats.multivariate_normal.pdf(z.numpy(), loc.numpy(), np.diag(scale.numpy() ** 2))
        + 0.5 * stats.multivariate_normal.pdf(z.numpy(), -loc.numpy(), np.diag(scale.numpy() ** 2))
    )
    np.testing.assert_allclose(q.log_prob(z).numpy(), expected, rtol=1e-12)


@pytest.mark.parametrize(
    "group", [sign_flip_group(2), dihedral_group(), cyclic_group_3(), skewed_cyclic_group_3()]
)
def test_invariance_under_every_element(group):
    """q(g z) = q(z) to round-off for every g of the group, while the base
    itself is far from invariant."""
    base = lopsided_base()
    q = SymmetrizedBase(base, group)
    z = q.sample(200, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        reference = q.log_prob(z)
        for g in q.matrices:
            torch.testing.assert_close(q.log_prob(z @ g.T), reference, rtol=1e-12, atol=1e-12)
        moved = base.log_prob(z @ q.matrices[-1].T) - base.log_prob(z)
    assert float(moved.abs().max()) > 1.0


def test_log_prob_is_differentiable_in_points_and_cores():
    base = lopsided_base()
    q = SymmetrizedBase.sign_flip(base)
    z = q.sample(64, generator=torch.Generator().manual_seed(3)).requires_grad_()
    q.log_prob(z).sum().backward()
    assert torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0
    assert all(core.grad.abs().sum() > 0 for core in base.cores)
    assert q.log_prob(torch.zeros(0, 2, dtype=torch.float64)).shape == (0,)


# ------------------------------------------------------------------ samples
def test_half_of_the_draws_on_each_side():
    """Binomial test on n = 20000 draws: under exactness the count of z_1 > 0
    is Binomial(n, 1/2), so (count - n/2)^2 / (n/4) is chi-square(1) up to
    O(1/n); the threshold 24 has tail probability 1e-6. The base's own draws
    (90% on one side) give about 12800."""
    base = lopsided_base()
    q = SymmetrizedBase.sign_flip(base)
    z = q.sample(N_DRAWS, generator=torch.Generator().manual_seed(4))
    assert z.shape == (N_DRAWS, 2) and z.dtype == torch.float64
    assert side_chi_square(z) < 24.0
    base_draws = base.sample(N_DRAWS, generator=torch.Generator().manual_seed(4))
    assert side_chi_square(base_draws) > 5000


def octant(z):
    """Which of the 8 wedges between the axes and the diagonals holds z."""
    return torch.floor(torch.atan2(z[:, 1], z[:, 0]) / (math.pi / 4)).long() % 8


def skewed_sector(z):
    """Which of the images under SHEAR of the three 120-degree wedges holds z."""
    w = z @ torch.linalg.inv(SHEAR).T
    return torch.floor(torch.atan2(w[:, 1], w[:, 0]) / (2 * math.pi / 3)).long() % 3


def sector_chi_square(labels, n_sectors):
    counts = torch.bincount(labels, minlength=n_sectors).double()
    expected = labels.shape[0] / n_sectors
    return float(((counts - expected) ** 2 / expected).sum())


@pytest.mark.parametrize(
    "group, sector, n_sectors",
    [(dihedral_group(), octant, 8), (skewed_cyclic_group_3(), skewed_sector, 3)],
)
def test_sectors_permuted_by_the_group_hold_equal_mass(group, sector, n_sectors):
    """D4 permutes the 8 wedges between the axes and the diagonals simply
    transitively, and S R S^{-1} the S-images of the three 120-degree wedges,
    so each holds exactly 1/|G| of the symmetrised mass: a chi-square test
    with |G| - 1 degrees of freedom on 20000 draws, threshold at tail
    probability 1e-6. It fails if the group index is not uniform or a draw
    is mapped by anything but an element of the group (g^T instead of
    g^{-1} for the skewed group). The base's own draws fail it by far."""
    base = lopsided_base()
    q = SymmetrizedBase(base, group)
    threshold = stats.chi2.isf(1e-6, n_sectors - 1)
    z = q.sample(N_DRAWS, generator=torch.Generator().manual_seed(5))
    assert sector_chi_square(sector(z), n_sectors) < threshold
    base_draws = base.sample(N_DRAWS, generator=torch.Generator().manual_seed(5))
    assert sector_chi_square(sector(base_draws), n_sectors) > 100 * threshold


def first_coordinate_cdf(q, base):
    """CDF of z_1 under the symmetrised density, by quadrature of it.

    The marginal density f(t) = int q(t, z_2) dz_2 is a Gauss sum over the
    z_2 panels of [-3, 3] plus the tail component's mass outside it (closed
    form); on each z_1 panel f is a polynomial plus Gaussians, interpolated
    at 41 Chebyshev points (round-off accuracy) and integrated exactly
    (Fejer's rule). Outside [-3, 3] only the Gaussian tail remains.
    """
    center, scale = tail_parameters(base)
    eps = base.tail_weight
    nodes2, weights2 = panel_rule(20, BREAKS)
    outside2 = [
        1.0
        - (
            stats.norm.cdf(3.0, sign * center[1], scale[1])
            - stats.norm.cdf(-3.0, sign * center[1], scale[1])
        )
        for sign in (1, -1)
    ]

    def marginal(t):
        t = torch.as_tensor(t, dtype=torch.float64)
        points = torch.stack(
            [t[:, None].expand(-1, len(nodes2)), nodes2.expand(len(t), -1)], -1
        ).reshape(-1, 2)
        with torch.no_grad():
            density = q.log_prob(points).exp().reshape(len(t), -1)
        inner = (density * weights2).sum(1).numpy()
        tails = sum(
            0.5 * eps * stats.norm.pdf(t.numpy(), sign * center[0], scale[0]) * out
            for sign, out in zip((1, -1), outside2, strict=True)
        )
        return inner + tails

    def tail_cdf(t):
        return 0.5 * eps * sum(stats.norm.cdf(t, s * center[0], scale[0]) for s in (1, -1))

    pieces = []
    start = tail_cdf(-3.0)
    for a, b in itertools.pairwise(BREAKS):
        antiderivative = np.polynomial.Chebyshev.interpolate(marginal, 40, domain=[a, b]).integ(
            lbnd=a, k=start
        )
        pieces.append((a, b, antiderivative))
        start = antiderivative(b)

    def cdf(t):
        t = np.asarray(t, dtype=np.float64)
        out = np.where(
            t < -3.0,
            tail_cdf(t),
            1.0 - (0.5 * eps) * sum(stats.norm.sf(t, s * center[0], scale[0]) for s in (1, -1)),
        )
        for a, b, antiderivative in pieces:
            inside = (t >= a) & (t < b)
            out = np.where(inside, antiderivative(np.clip(t, a, b)), out)
        return out

    return cdf, float(start)


def test_first_coordinate_matches_the_quadrature_cdf():
    """KS test of z_1 on 20000 draws against the CDF by quadrature of the
    symmetrised density (accurate to 1e-10, far below the KS resolution of
    1/sqrt(n) ~ 0.007): p-value above 1e-5. The CDF's value at 3 plus the
    tail beyond 3 is a second normalisation check. The base's own draws fail
    with a p-value below 1e-100."""
    base = lopsided_base()
    q = SymmetrizedBase.sign_flip(base)
    cdf, at_three = first_coordinate_cdf(q, base)
    center, scale = tail_parameters(base)
    beyond = 0.5 * TAIL_WEIGHT * sum(stats.norm.sf(3.0, s * center[0], scale[0]) for s in (1, -1))
    assert at_three + beyond == pytest.approx(1.0, abs=1e-10)
    assert cdf(0.0) == pytest.approx(0.5, abs=1e-10)
    z = q.sample(N_DRAWS, generator=torch.Generator().manual_seed(6))
    assert stats.kstest(z[:, 0].numpy(), cdf).pvalue > 1e-5
    base_draws = base.sample(N_DRAWS, generator=torch.Generator().manual_seed(6))
    assert stats.kstest(base_draws[:, 0].numpy(), cdf).pvalue < 1e-100


def test_forward_returns_the_log_density_of_its_draws():
    """forward = (sample, log_prob(sample)) with the same draws; equal seeds
    give equal draws, other seeds other draws; the base is drawn first, then
    the group indices, from the one generator."""
    base = lopsided_base()
    q = SymmetrizedBase(base, dihedral_group())
    z, log_q = q.forward(500, generator=torch.Generator().manual_seed(7))
    assert z.shape == (500, 2) and log_q.shape == (500,)
    with torch.no_grad():
        torch.testing.assert_close(log_q, q.log_prob(z), rtol=0, atol=0)
    assert torch.equal(z, q.sample(500, generator=torch.Generator().manual_seed(7)))
    assert not torch.equal(z, q.sample(500, generator=torch.Generator().manual_seed(8)))
    generator = torch.Generator().manual_seed(7)
    z0 = base.sample(500, generator=generator)
    index = torch.randint(8, (500,), generator=generator)
    expected = torch.einsum("nij,nj->ni", q.matrices[q.inverse_index[index]], z0)
    torch.testing.assert_close(z, expected, rtol=0, atol=0)
    assert q.sample(0).shape == (0, 2)


# ------------------------------------------------------------- a centre
#: A centre away from the origin and from the middle of BOX.
CENTER = torch.tensor([1.25, -0.75], dtype=torch.float64)


def test_a_centre_makes_the_mixture_with_the_image_about_it():
    """A symmetrised N(m, s^2) under the sign flip about c is
    (N(m, s^2) + N(2c - m, s^2)) / 2, by scipy, to 1e-12; with the group
    acting about the origin instead (the bug of a centre ignored) the second
    component is N(-m, s^2), off by far more."""
    loc = torch.tensor([1.5, -0.25], dtype=torch.float64)
    scale = torch.tensor([0.5, 2.0], dtype=torch.float64)
    q = SymmetrizedBase.sign_flip(GaussianBase(loc, scale), center=CENTER)
    z = 6 * torch.rand(200, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    z = z - 3
    expected = np.log(
        0.5 * stats.norm.pdf(z.numpy(), loc.numpy(), scale.numpy()).prod(axis=1)
        + 0.5 * stats.norm.pdf(z.numpy(), (2 * CENTER - loc).numpy(), scale.numpy()).prod(axis=1)
    )
    with torch.no_grad():
        np.testing.assert_allclose(q.log_prob(z).numpy(), expected, rtol=1e-12, atol=1e-12)


def test_draws_about_a_centre_are_the_images_of_the_base_draws():
    """Each draw is c + g^{-1} (z0 - c) for the base draw z0 and the element
    drawn after it, exactly; half of the draws lie on each side of c (the
    lopsided base puts about 90% on one side of its own box, whose middle is
    not c), within the binomial's 4.4 standard deviations; and forward's log q
    is log_prob of its draws."""
    base = lopsided_base()
    q = SymmetrizedBase(base, dihedral_group(), center=CENTER)
    z, log_q = q.forward(N_DRAWS, generator=torch.Generator().manual_seed(7))
    generator = torch.Generator().manual_seed(7)
    z0 = base.sample(N_DRAWS, generator=generator)
    index = torch.randint(8, (N_DRAWS,), generator=generator)
    inverses = q.matrices[q.inverse_index[index]]
    expected = CENTER + torch.einsum("nij,nj->ni", inverses, z0 - CENTER)
    torch.testing.assert_close(z, expected, rtol=0, atol=1e-14)
    with torch.no_grad():
        torch.testing.assert_close(log_q, q.log_prob(z), rtol=0, atol=0)
    assert side_chi_square(z - CENTER) < 4.4**2
    assert side_chi_square(z) > 100  # about the origin the sides are far from even


def test_log_prob_about_a_centre_equals_the_loop():
    """Equal to 1e-12 to the brute-force mean of q0(c + g (z - c)) over the
    dihedral group; the bounding box is that of the images of B about c."""
    base = lopsided_base()
    q = SymmetrizedBase(base, dihedral_group(), center=CENTER)
    z = 10 * torch.rand(300, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    z = z - 5
    shifted = log_prob_by_loop(
        type("Moved", (), {"log_prob": lambda self, y: base.log_prob(y + CENTER)})(),
        dihedral_group(),
        z - CENTER,
    )
    with torch.no_grad():
        torch.testing.assert_close(q.log_prob(z), shifted, rtol=1e-12, atol=1e-12)
    corners = torch.cartesian_prod(*[torch.tensor(row, dtype=torch.float64) for row in BOX])
    images = CENTER + torch.einsum("gij,nj->gni", q.matrices, corners - CENTER).reshape(-1, 2)
    torch.testing.assert_close(q.low, images.amin(dim=0))
    torch.testing.assert_close(q.high, images.amax(dim=0))


@pytest.mark.parametrize(
    "center, error, message",
    [
        ([0.0, 0.0, 0.0], ValueError, "shape"),
        ([0.0, float("nan")], ValueError, "non-finite"),
        (["a", "b"], TypeError, "real numeric"),
    ],
)
def test_bad_centres_are_refused(center, error, message):
    with pytest.raises(error, match=message):
        SymmetrizedBase.sign_flip(lopsided_base(), center=center)


# ------------------------------------------------------- group and buffers
def test_identity_added_repeats_dropped_inverses_found():
    base = lopsided_base()
    q = SymmetrizedBase(base, [-torch.eye(2)])
    assert q.order == 2 and torch.equal(q.matrices[0], torch.eye(2, dtype=torch.float64))
    same = SymmetrizedBase(base, np.stack([np.eye(2), -np.eye(2), -np.eye(2) + 1e-12]))
    assert torch.equal(same.matrices, q.matrices)
    c3 = SymmetrizedBase(base, cyclic_group_3())
    assert c3.order == 3
    for g, inverse in zip(c3.matrices, c3.matrices[c3.inverse_index], strict=True):
        torch.testing.assert_close(g @ inverse, torch.eye(2, dtype=torch.float64))
    d4 = SymmetrizedBase(base, dihedral_group())
    # Exact inverses: the group's own elements, not a numerical inversion.
    products = d4.matrices @ d4.matrices[d4.inverse_index]
    assert torch.equal(products, torch.eye(2, dtype=torch.float64).expand(8, 2, 2))
    assert "order=8" in repr(d4)


def test_buffers_follow_the_dtype_and_the_state_dict():
    base = lopsided_base()
    q = SymmetrizedBase(base, dihedral_group())
    assert set(q.state_dict()) == {
        "matrices",
        "inverse_index",
        "center",
        "base.cores.0",
        "base.cores.1",
        "base.low",
        "base.high",
    }
    z = q.sample(100, generator=torch.Generator().manual_seed(9))
    single = SymmetrizedBase(lopsided_base(torch.float32), dihedral_group())
    assert single.matrices.dtype == torch.float32
    with torch.no_grad():
        torch.testing.assert_close(
            single.log_prob(z.float()).double(), q.log_prob(z), rtol=1e-4, atol=1e-4
        )
    q.to(torch.float32)
    assert q.matrices.dtype == torch.float32 and q.base.cores[0].dtype == torch.float32
    assert q.inverse_index.dtype == torch.long
    assert q.sample(10, generator=torch.Generator().manual_seed(0)).dtype == torch.float32
    assert q.log_prob(z.float()).dtype == torch.float32


def test_bounding_box_of_the_images_and_the_spline_bound():
    """low/high bound the union of g^{-1} B; spline flows read them."""
    base = random_distribution((1, 2, 1), 4, [[0.0, 1.0], [0.0, 2.0]])
    q = SymmetrizedBase(base, [rotation(k * math.pi / 2).round() for k in range(1, 4)])
    np.testing.assert_allclose(q.low.numpy(), [-2.0, -2.0])
    np.testing.assert_allclose(q.high.numpy(), [2.0, 2.0])
    flipped = SymmetrizedBase.sign_flip(lopsided_base())
    np.testing.assert_allclose(flipped.low.numpy(), [-3.0, -3.0])
    assert spline_tail_bound(flipped) == pytest.approx(3.0 * SPLINE_MARGIN)
    gaussian = SymmetrizedBase.sign_flip(GaussianBase(torch.ones(2), torch.ones(2)))
    assert not hasattr(gaussian, "low")


# ------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    "group, error, message",
    [
        # {I, diag(-1, 1), diag(1, -1)}: their product -I is missing.
        ([np.eye(2), np.diag([-1.0, 1.0]), np.diag([1.0, -1.0])], ValueError, "not a group"),
        # det 1 but of infinite order: its square is not in the set.
        ([np.diag([2.0, 0.5])], ValueError, "not closed"),
        ([np.diag([2.0, 1.0])], ValueError, r"\|det\| = 2"),
        # float32 round-off: |det| - 1 = 3e-8, over atol.
        ([rotation(2 * math.pi / 3).float()], ValueError, r"\|det\| = 0.99999"),
        ([], ValueError, "empty"),
        (np.eye(2), ValueError, "wrap a single matrix"),
        ([np.zeros((2, 3))], ValueError, "square"),
        ([np.eye(3)], ValueError, "n_features=2"),
        ([np.array([[np.nan, 0.0], [0.0, 1.0]])], ValueError, "non-finite"),
        (["ab"], TypeError, "numeric"),
        ([np.eye(2, dtype=complex)], TypeError, "numeric"),
        ("group", TypeError, "sequence"),
    ],
)
def test_bad_groups_are_refused(group, error, message):
    with pytest.raises(error, match=message):
        SymmetrizedBase(lopsided_base(), group)


def test_bad_bases_and_points_are_refused():
    with pytest.raises(TypeError, match="BaseDistribution"):
        SymmetrizedBase(lambda z: z, sign_flip_group(2))
    with pytest.raises(ValueError, match="atol"):
        SymmetrizedBase(lopsided_base(), sign_flip_group(2), atol=0.0)
    q = SymmetrizedBase.sign_flip(lopsided_base())
    with pytest.raises(ValueError, match=r"shape \(N, 2\)"):
        q.log_prob(torch.zeros(4, 3, dtype=torch.float64))
    with pytest.raises(TypeError, match=r"torch\.Tensor"):
        q.log_prob(np.zeros((4, 2)))
    with pytest.raises(ValueError, match="non-negative"):
        q.sample(-1)
    with pytest.raises(ValueError, match="positive"):
        sign_flip_group(0)


# ------------------------------------------------------------ inside a flow
@pytest.mark.parametrize("flow", ["realnvp", "nsf"])
def test_works_inside_a_tensorizing_flow(flow):
    """model.sample's log q equals model.log_prob at the draws to 1e-9
    (float64 round-off through two perturbed layers and back); the
    reverse-KL loss reaches the base's cores through the group average."""
    torch.manual_seed(0)
    q = SymmetrizedBase.sign_flip(lopsided_base())
    layers = build_flow_layers(
        flow, 2, n_layers=2, hidden_units=8, tail_bound=spline_tail_bound(q)
    )
    model = TensorizingFlow(q, layers).to(torch.float64)
    perturb(model.flows, 0.3, seed=1)
    assert model.n_features == 2
    x, log_q = model.sample(300, generator=torch.Generator().manual_seed(0))
    assert x.dtype == torch.float64 and x.shape == (300, 2)
    with torch.no_grad():
        torch.testing.assert_close(log_q.detach(), model.log_prob(x), rtol=0, atol=1e-9)
    loss = model.reverse_kl_loss(
        lambda x: -0.5 * x.square().sum(1), 256, generator=torch.Generator().manual_seed(1)
    )
    loss.backward()
    assert torch.isfinite(loss)
    assert all(float(core.grad.abs().sum()) > 0 for core in q.base.cores)


@requires_cuda
def test_cuda_matches_cpu():
    q = SymmetrizedBase(lopsided_base(), dihedral_group())
    z = q.sample(500, generator=torch.Generator().manual_seed(10))
    on_gpu = q.to("cuda")
    assert on_gpu.matrices.device.type == "cuda" and on_gpu.inverse_index.device.type == "cuda"
    with torch.no_grad():
        torch.testing.assert_close(
            on_gpu.log_prob(z.cuda()).cpu(),
            SymmetrizedBase(lopsided_base(), dihedral_group()).log_prob(z),
            rtol=1e-10,
            atol=1e-10,
        )
    draws = on_gpu.sample(1000, generator=torch.Generator("cuda").manual_seed(0))
    assert draws.device.type == "cuda" and draws.shape == (1000, 2)


def test_blocks_do_not_change_the_results(monkeypatch):
    """With blocks of a few rows (and a row-by-row closure check) the group,
    the draws and log_prob are the same."""
    from sktt_flow.flows import symmetric

    q = SymmetrizedBase(lopsided_base(), dihedral_group())
    z, log_q = q.forward(300, generator=torch.Generator().manual_seed(11))
    monkeypatch.setattr(symmetric, "CHUNK_ELEMENTS", 40)
    small = SymmetrizedBase(lopsided_base(), dihedral_group())
    assert torch.equal(small.inverse_index, q.inverse_index)
    again, log_q_again = small.forward(300, generator=torch.Generator().manual_seed(11))
    assert torch.equal(again, z)
    torch.testing.assert_close(log_q_again, log_q, rtol=1e-14, atol=1e-14)
