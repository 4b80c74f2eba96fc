"""
Saving and loading a fitted model
=================================

A fitted :class:`~sktt_flow.TensorizingFlowDensity` can be stored in two ways:

- :meth:`~sktt_flow.TensorizingFlowDensity.save` and
  :meth:`~sktt_flow.TensorizingFlowDensity.load`: a zip of plain JSON and
  tensors, rebuilt without unpickling, so loading a file runs no code;
- joblib (or pickle), as for any scikit-learn estimator, which runs code when
  loading: only load such files from sources you trust.

Both give back a model with identical log-densities and samples. Callables are
not stored in a model file: a variational model's ``log_target`` must be passed
back to ``load`` to refit it.
"""

# %%
# Fit a small model
# -----------------

import argparse
import os
import sys
import tempfile
import warnings
from pathlib import Path

import matplotlib

if sys.platform.startswith("linux") and not (
    os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
):
    matplotlib.use("Agg")  # no display: draw off-screen
import joblib
import matplotlib.pyplot as plt
import numpy as np
from sklearn.datasets import make_moons

from sktt_flow import TensorizingFlowDensity
from sktt_flow.targets import MixtureOfGaussians

X, _ = make_moons(1000, noise=0.05, random_state=0)
X_test, _ = make_moons(1000, noise=0.05, random_state=1)
model = TensorizingFlowDensity(
    tt_rank=4, n_flow_layers=4, hidden_units=32, max_iter=30, random_state=0
).fit(X)
print(f"fitted: held-out log-likelihood {model.score(X_test):.4f}")

# %%
# Save, load, compare
# -------------------
# ``save`` writes one file; ``load`` is a class method. The loaded model gives
# bit-for-bit the same ``score_samples``, and the same draws for the same
# ``random_state``. joblib round-trips the estimator too.

directory = tempfile.TemporaryDirectory()
path = Path(directory.name) / "moons.sktt"
model.save(path)
loaded = TensorizingFlowDensity.load(path)
print(f"model file: {path.stat().st_size / 1024:.0f} KiB")

before = model.sample(2000, random_state=0)
after = loaded.sample(2000, random_state=0)
same_scores = np.array_equal(model.score_samples(X_test), loaded.score_samples(X_test))
print(
    f"save/load: identical score_samples {same_scores}, identical samples "
    f"{np.array_equal(before, after)}"
)

joblib.dump(model, Path(directory.name) / "moons.joblib")
unpickled = joblib.load(Path(directory.name) / "moons.joblib")
print(
    "joblib:    identical score_samples "
    f"{np.array_equal(model.score_samples(X_test), unpickled.score_samples(X_test))}, "
    f"identical samples {np.array_equal(before, unpickled.sample(2000, random_state=0))}"
)
print(f"parameters kept: {loaded.get_params() == model.get_params()}")

# %%
# A variational model
# -------------------
# Here the TT base alone (``flow="none"``) is fitted by TT-cross to a 2-D
# mixture of four Gaussians, known only through its log-density.
# ``log_target`` is a Python callable, which a model file does not hold:
# loading without it warns, and the loaded model still scores and samples. To
# refit it, pass the callable back with ``load(path, log_target=...)``; all
# the other parameters, ``random_state`` included, come from the file, so the
# refit reproduces the model.

target = MixtureOfGaussians.random_modes(4, 2, seed=0)
variational = TensorizingFlowDensity(
    log_target=target.log_prob, domain=target.domain, flow="none", random_state=0
).fit()
print(
    f"variational: log Z = {variational.log_normalizer_:.4f} ± "
    f"{variational.log_normalizer_std_error_:.4f} (exact {target.log_normalizer}), "
    f"ESS {variational.ess_:.3f}"
)
variational_path = Path(directory.name) / "mixture.sktt"
variational.save(variational_path)

with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    without_target = TensorizingFlowDensity.load(variational_path)
for warning in caught:
    message = str(warning.message).replace(str(variational_path), variational_path.name)
    print(f"{warning.category.__name__}: {message}")
print(
    f"loaded without log_target: log_target={without_target.log_target}, sampling works: "
    f"{without_target.sample(3, random_state=0).shape}"
)

with_target = TensorizingFlowDensity.load(variational_path, log_target=target.log_prob)
with_target.fit()  # refitting needs log_target
same = np.array_equal(
    with_target.sample(100, random_state=0), variational.sample(100, random_state=0)
)
print(
    f"loaded with log_target and refitted: log Z = {with_target.log_normalizer_:.4f}, "
    f"identical samples {same}"
)
mixture_samples = without_target.sample(2000, random_state=0)
directory.cleanup()

# %%
# Plot the samples before and after the round trip
# ------------------------------------------------
# The first two panels show the same 2,000 draws; the last one draws from the
# variational model loaded without its ``log_target``.

figure, axes = plt.subplots(1, 3, figsize=(12, 3.6))
axes[0].scatter(before[:, 0], before[:, 1], s=2, alpha=0.5)
axes[0].set_title("fitted model, sample(random_state=0)", fontsize=10)
axes[1].scatter(after[:, 0], after[:, 1], s=2, alpha=0.5, color="C1")
axes[1].set_title("after save and load, same random_state", fontsize=10)
axes[1].sharex(axes[0])
axes[1].sharey(axes[0])
axes[2].scatter(mixture_samples[:, 0], mixture_samples[:, 1], s=2, alpha=0.5, color="C2")
axes[2].set_title("variational model loaded without log_target", fontsize=10)
figure.tight_layout()

# %%
# Save the figure when run as a script with ``--output DIR``.

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Saving and loading a fitted model.")
    parser.add_argument("--output", type=Path, default=None, help="folder for the figure")
    output = parser.parse_args().output
    if output is not None:
        output.mkdir(parents=True, exist_ok=True)
        figure.savefig(output / "save_load.png", dpi=100)
        print(f"figure written to {output / 'save_load.png'}")
    plt.close(figure)
