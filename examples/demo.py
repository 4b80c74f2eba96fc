"""Quick-start demo: a tensorizing flow fitted to a ring of eight Gaussians.

Fits :class:`sktt_flow.TensorizingFlowDensity` (a RealNVP flow on a
tensor-train base) to samples of a ring of eight Gaussians, next to the TT
base alone (``flow="none"``) and scikit-learn's ``GaussianMixture(8)`` (the
right model family for these data), then prints what a user wants to know
about a density estimator:

- the held-out mean log-likelihood of each model and of the true density;
- that each model is normalised (``exp(score_samples)`` integrated on a grid);
- that samples cover all eight modes with the right masses;
- the fit times;

and then the other use, variational inference: the same ring as an
unnormalised log-density (``log Z = 0``) given to the tensorizing flow and to
the same flow on a Gaussian base (the Laplace approximation), both without a
box (``domain="auto"``): what each reports (ELBO, effective sample size,
``log Z``) and how many of the eight modes its samples visit.

It writes ``demo_output/ring_density.png`` (density contours and samples of
each model) when matplotlib is installed. Runs in well under a minute on one
laptop CPU core; ``random_state`` is fixed everywhere, so the output is
deterministic.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.mixture import GaussianMixture

from sktt_flow import TensorizingFlowDensity
from sktt_flow.targets import MixtureOfGaussians

N_MODES, RADIUS, MODE_STD = 8, 4.0, 0.5
ANGLES = 2 * np.pi * np.arange(N_MODES) / N_MODES
CENTERS = RADIUS * np.stack([np.cos(ANGLES), np.sin(ANGLES)], axis=1)


def sample_ring(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return CENTERS[rng.integers(N_MODES, size=n)] + MODE_STD * rng.standard_normal((n, 2))


def true_log_density(x: np.ndarray) -> np.ndarray:
    squared = ((x[:, None, :] - CENTERS[None]) ** 2).sum(-1) / MODE_STD**2
    per_mode = -0.5 * squared - np.log(2 * np.pi * MODE_STD**2)
    return np.logaddexp.reduce(per_mode, axis=1) - np.log(N_MODES)


def grid(half_width: float, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    axis = np.linspace(-half_width, half_width, n)
    xx, yy = np.meshgrid(axis, axis)
    return xx, yy, np.stack([xx.ravel(), yy.ravel()], axis=1)


def total_mass(model, half_width: float = 20.0, n: int = 300) -> float:
    """Integral of exp(score_samples) over a square, by the midpoint rule."""
    h = 2 * half_width / n
    axis = np.linspace(-half_width + h / 2, half_width - h / 2, n)
    points = np.stack(np.meshgrid(axis, axis), axis=-1).reshape(-1, 2)
    return float(np.exp(model.score_samples(points)).sum() * h * h)


def mode_masses(samples: np.ndarray) -> tuple[np.ndarray, float]:
    """Fraction of samples nearest to each centre, and fraction off the ring.

    "Off the ring" means farther than 4 standard deviations from every centre
    (probability exp(-8) = 0.0003 under the true density).
    """
    distance = np.sqrt(((samples[:, None, :] - CENTERS[None]) ** 2).sum(-1))
    fractions = np.bincount(distance.argmin(1), minlength=N_MODES) / len(samples)
    return fractions, float((distance.min(1) > 4 * MODE_STD).mean())


def variational_demo() -> None:
    """The ring as a log-density, fitted by reverse KL from no box: the TT base
    starts with every mode; a Gaussian-base flow trained by reverse KL is
    mode-seeking, and keeps only some of them."""
    target = MixtureOfGaussians(CENTERS, np.full(N_MODES, MODE_STD**2))
    settings = {"n_features": 2, "n_basis": 32, "max_iter": 10, "random_state": 0}
    models = {
        # base="tt": the default, "auto", would also train the Gaussian-base
        # flow below and keep the better of the two; here they are compared.
        "tensorizing flow": TensorizingFlowDensity(
            log_target=target.log_prob, base="tt", **settings
        ),
        "Gaussian-base flow": TensorizingFlowDensity(
            log_target=target.log_prob, base="gaussian", **settings
        ),
    }
    print(
        f"\nvariational inference on the same ring as a log-density (log Z = "
        f"{target.log_normalizer:.0f}), no box given (domain='auto')"
    )
    print(f"{'model':<20} {'ELBO':>7} {'ESS':>6} {'log Z':>7} {'modes':>6} {'fit (s)':>8}")
    for name, model in models.items():
        start = time.perf_counter()
        model.fit()
        seconds = time.perf_counter() - start
        labels = target.mode_of(torch.as_tensor(model.sample(10_000, random_state=1)))
        shares = np.bincount(labels.numpy(), minlength=N_MODES) / len(labels)
        print(
            f"{name:<20} {model.elbo_:>7.3f} {model.ess_:>6.3f} {model.log_normalizer_:>7.3f} "
            f"{int((shares > 0.02).sum()):>4}/{N_MODES} {seconds:>8.2f}"
        )
    print("(modes: visited by more than 2% of 10,000 samples. ESS and log Z come from")
    print(" the model's own samples: they cannot see the mass of the modes it misses.)")


def main(output: Path) -> None:
    X_train, X_test = sample_ring(5_000, seed=0), sample_ring(5_000, seed=1)

    # The ring spans about 13 units and its modes are 0.5 wide: 24 Legendre
    # polynomials per coordinate resolve them (the default 16 is a bit coarse).
    models = {
        "TensorizingFlowDensity": TensorizingFlowDensity(n_basis=24, random_state=0),
        'TT base alone (flow="none")': TensorizingFlowDensity(
            n_basis=24, flow="none", random_state=0
        ),
        "GaussianMixture(8)": GaussianMixture(N_MODES, random_state=0),
    }
    fit_seconds = {}
    for name, model in models.items():
        start = time.perf_counter()
        model.fit(X_train)
        fit_seconds[name] = time.perf_counter() - start

    print(
        f"ring of {N_MODES} Gaussians: {len(X_train):,} training, {len(X_test):,} held-out points"
    )
    print(f"\n{'model':<29} {'held-out LL':>11} {'total mass':>11} {'fit (s)':>8}")
    print(f"{'true density':<29} {true_log_density(X_test).mean():>11.4f}")
    for name, model in models.items():
        print(
            f"{name:<29} {model.score(X_test):>11.4f} {total_mass(model):>11.5f} "
            f"{fit_seconds[name]:>8.2f}"
        )
    print("(held-out LL: mean log-likelihood, higher is better; total mass: integral of")
    print(" exp(score_samples) over [-20, 20]^2 by the midpoint rule)")

    flow = models["TensorizingFlowDensity"]
    print(
        f"\nthe flow trained for {flow.n_iter_} epochs (early stopping) and took the validation\n"
        f"log-likelihood of its TT base from {flow.validation_scores_[0]:.4f} "
        f"to {max(flow.validation_scores_):.4f}"
    )

    n_samples = 20_000
    samples = {
        name: model.sample(n_samples, random_state=0)
        for name, model in models.items()
        if isinstance(model, TensorizingFlowDensity)
    }
    # GaussianMixture.sample draws with the estimator's random_state and
    # returns (X, labels), with X sorted by component.
    samples["GaussianMixture(8)"] = models["GaussianMixture(8)"].sample(n_samples)[0]
    print(f"\nmass per mode of {n_samples:,} samples (truth 0.125 each; off the ring: 0.0003)")
    for name, x in samples.items():
        fractions, off_ring = mode_masses(x)
        print(f"  {name:<29} " + " ".join(f"{f:.3f}" for f in fractions) + f"  off {off_ring:.4f}")

    variational_demo()

    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("\nmatplotlib is not installed: no figure written")
        return
    output.mkdir(parents=True, exist_ok=True)
    xx, yy, points = grid(7.0, 201)
    true_density = np.exp(true_log_density(points)).reshape(xx.shape)
    figure, axes = plt.subplots(2, 3, figsize=(12, 8), sharex=True, sharey=True)
    rng = np.random.default_rng(0)
    for column, (name, model) in enumerate(models.items()):
        density = np.exp(model.score_samples(points)).reshape(xx.shape)
        axes[0, column].contourf(xx, yy, density, levels=20, cmap="viridis")
        axes[0, column].contour(xx, yy, true_density, levels=4, colors="white", linewidths=0.6)
        axes[0, column].set_title(f"{name}\nheld-out LL {model.score(X_test):.4f}", fontsize=10)
        shown = samples[name][rng.choice(n_samples, 2_000, replace=False)]
        axes[1, column].scatter(shown[:, 0], shown[:, 1], s=2, alpha=0.5)
        axes[1, column].set_title("2,000 samples", fontsize=10)
    for ax in axes.flat:  # rare samples from the tails fall outside: show the ring
        ax.set_xlim(xx[0, 0], xx[0, -1])
        ax.set_ylim(yy[0, 0], yy[-1, 0])
        ax.set_aspect("equal")
    figure.suptitle("Fitted densities (white: contours of the true density) and samples")
    figure.tight_layout()
    path = output / "ring_density.png"
    figure.savefig(path, dpi=100)
    plt.close(figure)
    print(f"\nfigure written to {path}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=Path("demo_output"))
    main(parser.parse_args().output)
