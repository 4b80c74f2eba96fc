"""A base distribution made exactly invariant under a finite group of linear maps
(about the origin or about any given centre)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from normflows.distributions import BaseDistribution

from sktt_flow.utils.validation import check_num_samples, check_points

__all__ = ["SymmetrizedBase", "sign_flip_group"]

#: Elements of the largest temporary of :meth:`SymmetrizedBase.log_prob` (the
#: ``|G|`` transformed copies of a block of points) and of the closure check
#: (the signatures of a block of products): 2^24 float64 numbers are 128 MB.
CHUNK_ELEMENTS = 1 << 24

#: Random probe directions of the closure check (see :func:`_cayley_table`).
N_PROBES = 4


def images_bounding_box(
    low: torch.Tensor, high: torch.Tensor, matrices: torch.Tensor, center: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Corners of the bounding box of the images ``c + g (B - c)`` of the box
    ``B = [low, high]`` under each of ``matrices`` (``(m, d, d)``), about
    ``center`` ``c``: exact for a box, whose image under ``g`` reaches
    ``|g| half_width`` either side of the image of its middle."""
    middle, half_width = (low + high) / 2.0, (high - low) / 2.0
    centers = center + matrices @ (middle - center)
    reach = matrices.abs() @ half_width
    return (centers - reach).amin(dim=0), (centers + reach).amax(dim=0)


def sign_flip_group(n_features: int, *, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """The group ``{z -> z, z -> -z}`` of R^d as a (2, d, d) tensor ``[I, -I]``.

    The symmetry of targets whose energy is even in the field, such as the
    Ginzburg-Landau and phi^4 lattice models without external field, or
    ManyWell.
    """
    n_features = int(n_features)
    if n_features < 1:
        raise ValueError(f"n_features must be a positive integer, got {n_features}.")
    identity = torch.eye(n_features, dtype=dtype)
    return torch.stack([identity, -identity])


def _floating_tensor(module: torch.nn.Module) -> torch.Tensor | None:
    """The module's first floating-point parameter or buffer, or None."""
    for tensor in (*module.parameters(), *module.buffers()):
        if tensor.is_floating_point():
            return tensor
    return None


def _as_matrices(group, n_features: int) -> torch.Tensor:
    """``group`` as a float64 CPU tensor of shape (m, d, d), checked."""
    if isinstance(group, torch.Tensor):
        group = group.detach().cpu()
        elements = list(group) if group.ndim >= 1 else None
        given_ndim = group.ndim
    elif isinstance(group, np.ndarray):
        elements = list(group) if group.ndim >= 1 else None
        given_ndim = group.ndim
    elif isinstance(group, Sequence) and not isinstance(group, (str, bytes)):
        elements = list(group)
        given_ndim = None
    else:
        raise TypeError(
            "group must be a sequence of (d, d) matrices or an array of shape (m, d, d), "
            f"got {type(group).__name__}."
        )
    if given_ndim == 2:
        raise ValueError(
            "group must be a sequence of (d, d) matrices or an array of shape (m, d, d), "
            f"got one array of shape {tuple(group.shape)}: wrap a single matrix in a list."
        )
    if not elements:
        raise ValueError("group is empty: give at least one (d, d) matrix.")
    matrices = []
    for index, element in enumerate(elements):
        if isinstance(element, torch.Tensor):
            element = element.detach().cpu()
            if element.is_complex() or element.dtype == torch.bool:
                raise TypeError(
                    f"group element {index} must be a real matrix, got dtype {element.dtype}."
                )
        try:
            array = np.asarray(element)
            if array.dtype.kind not in "iuf":
                raise TypeError(f"dtype {array.dtype}")
            matrix = torch.as_tensor(array.astype(np.float64))
        except (TypeError, ValueError) as error:
            raise TypeError(
                f"group element {index} must be a real numeric (d, d) matrix, got {element!r}."
            ) from error
        if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
            raise ValueError(
                f"group element {index} must be a square (d, d) matrix, "
                f"got shape {tuple(matrix.shape)}."
            )
        if matrix.shape[0] != n_features:
            raise ValueError(
                f"group element {index} is {matrix.shape[0]} x {matrix.shape[1]} but the base "
                f"has n_features={n_features}."
            )
        if not bool(torch.isfinite(matrix).all()):
            raise ValueError(f"group element {index} has non-finite entries.")
        matrices.append(matrix)
    return torch.stack(matrices)


def _as_center(center, n_features: int) -> torch.Tensor:
    """``center`` as a float64 CPU tensor of shape (d,), checked."""
    try:
        array = np.asarray(center.detach().cpu() if isinstance(center, torch.Tensor) else center)
        if array.dtype.kind not in "iuf":
            raise TypeError(f"dtype {array.dtype}")
    except (TypeError, ValueError) as error:
        raise TypeError(f"center must be a real numeric vector, got {center!r}.") from error
    if array.shape != (n_features,):
        raise ValueError(
            f"center must have shape ({n_features},), the base's n_features, got {array.shape}."
        )
    if not np.isfinite(array).all():
        raise ValueError("center has non-finite entries.")
    return torch.as_tensor(array.astype(np.float64))


def _n_features_of(base) -> int:
    """The integer ``n_features`` of a base, or a TypeError naming the base."""
    try:
        return int(base.n_features)
    except (AttributeError, TypeError, ValueError) as error:
        raise TypeError(
            f"base must have an integer n_features property, got {type(base).__name__}."
        ) from error


def _check_determinants(matrices: torch.Tensor, atol: float) -> None:
    """Raise unless every ``|det g|`` is 1 within ``atol``."""
    determinants = torch.linalg.det(matrices)
    bad = torch.nonzero((determinants.abs() - 1.0).abs() > atol).flatten()
    if bad.numel():
        index = int(bad[0])
        raise ValueError(
            f"group element {index} has |det| = {float(determinants[index].abs()):.12g}, "
            f"not 1 (within atol={atol:g}): the symmetrised density would not be normalised "
            f"({bad.numel()} such elements)."
        )


def _probes(n_features: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed random unit vector ``u`` (d,) and :data:`N_PROBES` unit columns
    ``V`` (d, k): the signature of a matrix ``G`` is ``u^T G V``."""
    generator = torch.Generator().manual_seed(0)
    u = torch.randn(n_features, generator=generator, dtype=torch.float64)
    probes = torch.randn(n_features, N_PROBES, generator=generator, dtype=torch.float64)
    return u / u.norm(), probes / probes.norm(dim=0)


def _distinct(matrices: torch.Tensor, tolerance: float) -> torch.Tensor:
    """Which matrices to keep (bool mask): the first occurrence of each, repeats
    (within ``tolerance``, largest entry difference) dropped.

    Candidate pairs are those whose signatures differ by at most
    ``d * tolerance`` (a bound for matrices within ``tolerance`` entrywise),
    confirmed on the full matrices: ``m^2 k`` work instead of ``m^2 d^2``.
    """
    m, d, _ = matrices.shape
    u, probes = _probes(d)
    signatures = (u @ matrices) @ probes
    close = torch.cdist(signatures, signatures, p=math.inf) <= d * tolerance
    later, earlier = torch.nonzero(torch.tril(close, diagonal=-1), as_tuple=True)
    difference = (matrices[later] - matrices[earlier]).abs().flatten(1)
    repeated = torch.zeros(m, dtype=torch.bool)
    repeated[later[difference.amax(dim=1) <= tolerance]] = True
    return ~repeated


def _cayley_table(matrices: torch.Tensor, tolerance: float, names: Sequence[str]) -> torch.Tensor:
    """``table[a, b]``: the index of ``matrices[a] @ matrices[b]`` in ``matrices``.

    Products are compared with the elements through fixed random probes, as in
    Freivalds' check: the signature ``u^T (A B) V = (u^T A)(B V)`` equals
    ``u^T G V`` when ``AB = G`` and differs from it for ``AB != G`` with
    probability one. Each product's signature is looked up among the
    elements' (sorted on the first probe, then compared on all ``k``): ``m^2
    d k`` work and ``m k`` memory per row instead of the ``m^2 d^3`` of
    forming every product.

    Raises
    ------
    ValueError
        When a product matches no element within ``d * tolerance``: the set is
        not closed under composition, so it is not a group.
    """
    m, d, _ = matrices.shape
    u, probes = _probes(d)
    left = u @ matrices  # (m, d): u^T A
    right = matrices @ probes  # (m, d, k): B V
    signatures = left @ probes  # (m, k): u^T G V
    order = torch.argsort(signatures[:, 0])
    keys = signatures[order, 0].contiguous()
    table = torch.empty(m, m, dtype=torch.long)
    rows = max(1, CHUNK_ELEMENTS // (m * N_PROBES))
    for start in range(0, m, rows):
        products = torch.einsum("ad,bdk->abk", left[start : start + rows], right)
        position = torch.searchsorted(keys, products[..., 0].contiguous())
        # the nearest elements on the first probe, below and above
        candidates = order[torch.stack([position - 1, position], dim=-1).clamp(0, m - 1)]
        distance = (products[:, :, None, :] - signatures[candidates]).abs().amax(dim=-1)
        nearest = distance.min(dim=-1)
        missing = torch.nonzero(nearest.values > d * tolerance)
        if missing.numel():
            a, b = (int(index) for index in missing[0])
            raise ValueError(
                f"The matrices are not a group: the product {names[start + a]} @ {names[b]} "
                "is not among them (with the identity added), so the set is not closed "
                f"under composition (compared within atol={tolerance:g} per entry)."
            )
        table[start : start + rows] = candidates.gather(-1, nearest.indices[..., None])[..., 0]
    return table


class SymmetrizedBase(BaseDistribution):
    r"""A base distribution averaged over a finite group of linear maps.

    For a finite group :math:`G` of linear maps of :math:`\mathbb{R}^d` with
    :math:`|\det g| = 1`, acting about a centre :math:`c` (``center``, the
    origin by default) as :math:`z \mapsto c + g (z - c)`, and any base
    :math:`q_0`,

    .. math::

        q(z) = \frac{1}{|G|} \sum_{g \in G} q_0\big(c + g (z - c)\big)

    is a normalised density (each term is the density of
    :math:`c + g^{-1} (Z_0 - c)`, :math:`Z_0 \sim q_0`), invariant under
    :math:`G`: :math:`q(c + h (z - c)) = q(z)` for every :math:`h \in G`.
    When the target is invariant under :math:`G`, the modes that a
    tensor-train cross or fit finds one at a time are all given exactly equal
    mass; and a base that holds only one of the symmetric modes (a train on a
    box around it) becomes, symmetrised, a base of all of them. The density
    is evaluated exactly (a log-sum-exp over the group of one batched
    ``log_prob`` call of the base on all ``|G|`` transformed copies of the
    points) and sampled exactly: draw :math:`z_0 \sim q_0`, pick :math:`g`
    uniformly, return :math:`c + g^{-1} (z_0 - c)`.

    It is a :class:`normflows.distributions.BaseDistribution`, a drop-in base
    for :class:`~sktt_flow.flows.TensorizingFlow`.

    Parameters
    ----------
    base : BaseDistribution
        Any base with ``n_features``, ``log_prob(z)`` and
        ``sample(num_samples, generator=...)``, such as a
        :class:`~sktt_flow.tt.TTDistribution` or a
        :class:`~sktt_flow.flows.GaussianBase`. It becomes a submodule: its
        parameters (the cores) are this module's, and gradients reach them
        through :meth:`log_prob`.
    group : sequence of (d, d) array-likes, or array of shape (m, d, d)
        The elements of ``G``. The identity is added when it is missing and
        repeats are dropped; the set must then be closed under composition
        and every ``|det g|`` must be 1 (within ``atol``), which with
        finiteness makes it a group.
    center : array-like of shape (d,), optional
        The point that every element fixes, :math:`c`; the origin when not
        given. A symmetry ``x -> g x`` of a target seen in coordinates
        ``x = m + A y`` acts on ``y`` as ``y -> c + A^{-1} g A (y - c)`` with
        ``c = -A^{-1} m``, the origin of ``x``: pass the conjugated matrices
        and that centre.
    atol : float, default=1e-8
        Tolerance of these checks, on the largest entry of a difference of
        matrices (scaled by the largest entry of the elements) and on
        ``|det g| - 1``. Give matrices accurate to float64 (a rotation by
        ``2 pi / 3`` from ``cos`` and ``sin``, not rounded to float32).

    Attributes
    ----------
    base : BaseDistribution
        The wrapped base.
    matrices : buffer of shape (order, d, d)
        The group, identity first, in the base's dtype and on its device.
    inverse_index : buffer of shape (order,)
        ``matrices[inverse_index[i]]`` is the inverse of ``matrices[i]``
        (found in the group, so that the inverses are exact).
    center : buffer of shape (d,)
        The centre :math:`c`.

    Notes
    -----
    Domain: ``q`` is defined and positive wherever one of the ``q_0(g z)``
    is. If the base is a tensor train on a box ``B`` with its Gaussian tail
    component, ``q`` puts the train's mass on the union of the images
    ``g^{-1} B``, which need not be a box (:attr:`low` and :attr:`high` give
    its bounding box), and its tail is the mixture of the ``|G|`` images of
    the base's Gaussian.

    Caveats:

    - It helps only when the target is (close to) invariant under ``G``;
      otherwise it puts mass where the target has none. The group must be
      one of the target's in the coordinates of the base: after a fixed
      affine map ``x = m + A y``, a symmetry ``x -> g x`` of the target is
      ``y -> c + A^{-1} g A (y - c)`` with ``c = -A^{-1} m`` (``center``),
      so pass the conjugated matrices (a group with ``|det| = 1`` again, not
      orthogonal in general) and that centre; when ``g m = m`` for every
      ``g`` the centre can stay at the origin.
    - A flow on top of this base is not equivariant in general, so the model
      is not invariant: the exact balance of the modes holds for the base
      only, and training the flow can unbalance them again. An invariant
      model needs equivariant layers.
    - Each evaluation costs ``|G|`` evaluations of the base and ``|G| N
      d^2`` operations for the images, with the memory of ``|G|`` copies of
      the points (processed in blocks of :data:`CHUNK_ELEMENTS`); sampling
      costs one base draw and one matrix-vector product per draw.
    - Symmetrising a base that is already invariant changes nothing but the
      cost.

    References
    ----------
    .. [1] Khoo, Lindsey and Zhao, "Tensorizing flows: a tool for variational
       inference", arXiv:2305.02460, 2023.
    .. [2] Ren, Zhao, Khoo and Ying, "High-dimensional density estimation with
       tensorizing flow", Res. Math. Sci. 10:30, 2023.

    Examples
    --------
    >>> import torch
    >>> from sktt_flow.flows import GaussianBase, SymmetrizedBase
    >>> base = GaussianBase(torch.tensor([2.0, 0.0]), torch.ones(2))
    >>> q = SymmetrizedBase.sign_flip(base)
    >>> z = torch.tensor([[2.0, 0.5], [-2.0, -0.5]])
    >>> torch.allclose(q.log_prob(z)[0], q.log_prob(z)[1])
    True
    """

    def __init__(self, base: BaseDistribution, group, *, center=None, atol: float = 1e-8):
        super().__init__()
        if not isinstance(base, torch.nn.Module) or not all(
            callable(getattr(base, name, None)) for name in ("log_prob", "sample")
        ):
            raise TypeError(
                "base must be a normflows BaseDistribution (a torch.nn.Module with log_prob "
                f"and sample), got {type(base).__name__}."
            )
        n_features = _n_features_of(base)
        if not (isinstance(atol, (float, int)) and 0.0 < atol < 1.0):
            raise ValueError(f"atol must be a float in (0, 1), got {atol!r}.")
        matrices = _as_matrices(group, n_features)
        _check_determinants(matrices, atol)
        tolerance = atol * max(1.0, float(matrices.abs().max()))
        identity = torch.eye(n_features, dtype=torch.float64)[None]
        matrices = torch.cat([identity, matrices])
        names = ["the identity", *(f"group[{index}]" for index in range(len(matrices) - 1))]
        keep = _distinct(matrices, tolerance)
        matrices = matrices[keep]
        names = [name for name, kept in zip(names, keep.tolist(), strict=True) if kept]
        table = _cayley_table(matrices, tolerance, names)
        # Closed, finite and invertible: a group, and each row of the table a
        # permutation, so every element has exactly one inverse (table == 0).
        inverse_index = (table == 0).to(torch.uint8).argmax(dim=1)

        reference = _floating_tensor(base)
        dtype = reference.dtype if reference is not None else torch.get_default_dtype()
        device = reference.device if reference is not None else torch.device("cpu")
        if center is None:
            center = torch.zeros(n_features, dtype=torch.float64)
        else:
            center = _as_center(center, n_features)
        self.base = base
        self.register_buffer("matrices", matrices.to(dtype=dtype, device=device))
        self.register_buffer("inverse_index", inverse_index.to(device=device))
        self.register_buffer("center", center.to(dtype=dtype, device=device))

    @classmethod
    def sign_flip(cls, base: BaseDistribution, **kwargs) -> SymmetrizedBase:
        """``base`` symmetrised under ``z -> -z`` (:func:`sign_flip_group`)."""
        return cls(base, sign_flip_group(_n_features_of(base)), **kwargs)

    # ------------------------------------------------------------------ shape
    @property
    def n_features(self) -> int:
        """Number of coordinates ``d``."""
        return int(self.matrices.shape[1])

    @property
    def order(self) -> int:
        """``|G|``, the number of elements of the group."""
        return int(self.matrices.shape[0])

    @property
    def low(self) -> torch.Tensor:
        """Lower corner of the bounding box of the union of ``g^{-1} B`` over
        the group, for a base with a box ``B`` (``low`` and ``high``).

        This is where the train's mass lies, what
        :func:`~sktt_flow.flows.spline_tail_bound` reads. An AttributeError
        when the base has no box.
        """
        return self._bounding_box()[0]

    @property
    def high(self) -> torch.Tensor:
        """Upper corner of the bounding box; see :attr:`low`."""
        return self._bounding_box()[1]

    def _bounding_box(self) -> tuple[torch.Tensor, torch.Tensor]:
        inverses = self.matrices[self.inverse_index]
        return images_bounding_box(self.base.low, self.base.high, inverses, self.center)

    def extra_repr(self) -> str:
        return f"n_features={self.n_features}, order={self.order}"

    # ---------------------------------------------------------------- density
    def _check_points(self, z: torch.Tensor) -> torch.Tensor:
        return check_points(z, self.n_features, self.matrices)

    def log_prob(self, z: torch.Tensor, context=None) -> torch.Tensor:
        r"""Exact normalised ``log q(z)``, shape (N,).

        ``logsumexp_g log q_0(c + g (z - c)) - log |G|``, with one ``log_prob``
        call of the base on the ``|G| N`` images of the points (in blocks of rows of at most
        :data:`CHUNK_ELEMENTS` numbers). Differentiable in ``z`` and in the
        base's parameters. ``context`` is accepted for normflows
        compatibility and ignored.
        """
        z = self._check_points(z)
        if z.shape[0] == 0:
            return z.new_zeros(0)
        rows = max(1, CHUNK_ELEMENTS // (self.order * self.n_features))
        log_order = math.log(self.order)
        results = []
        for block in z.split(rows):
            images = torch.matmul(block - self.center, self.matrices.transpose(1, 2))
            images = images + self.center  # (|G|, n, d)
            log_base = self.base.log_prob(images.reshape(-1, self.n_features))
            log_base = log_base.reshape(self.order, block.shape[0])
            results.append(torch.logsumexp(log_base, dim=0) - log_order)
        return torch.cat(results)

    # --------------------------------------------------------------- sampling
    def sample(self, num_samples: int = 1, context=None, generator=None) -> torch.Tensor:
        """Exact samples, shape (num_samples, d).

        ``num_samples`` draws of the base first, then one uniform group index
        per draw, both from ``generator``; each draw is mapped by the inverse
        of its element about the centre (found by index in the group, so
        exact), with one matrix product per element of the group over the
        draws it maps.

        Parameters
        ----------
        num_samples : int
        context : ignored
        generator : torch.Generator, optional
            On the distribution's device; fixes the draw.
        """
        num_samples = check_num_samples(num_samples)
        z0 = self.base.sample(num_samples, generator=generator).to(self.matrices.dtype)
        index = torch.randint(
            self.order, (num_samples,), generator=generator, device=self.matrices.device
        )
        inverse = self.inverse_index[index]
        # The rows grouped by the element that maps them: one matrix product
        # per element (not per row). Gathering a (d, d) matrix per row for a
        # batched product moves d^2 numbers per draw, 16 to 30 times slower
        # at d = 32 to 128.
        rows_by_element = torch.argsort(inverse).split(
            torch.bincount(inverse, minlength=self.order).tolist()
        )
        z = torch.empty_like(z0)
        for element, rows in enumerate(rows_by_element):
            if element == 0:  # the identity
                z[rows] = z0[rows]
            elif rows.numel():
                z[rows] = (z0[rows] - self.center) @ self.matrices[element].T + self.center
        return z

    def forward(self, num_samples: int = 1, context=None, generator=None):
        """Exact samples and their log-density, ``(z, log q(z))``."""
        z = self.sample(num_samples, generator=generator)
        return z, self.log_prob(z)
