"""
Generating new digits with a tensorizing flow in a pipeline
===========================================================

:class:`~sktt_flow.TensorizingFlowDensity` is a scikit-learn density estimator,
so it goes at the end of a :class:`~sklearn.pipeline.Pipeline` like
:class:`~sklearn.neighbors.KernelDensity` or
:class:`~sklearn.mixture.GaussianMixture`. Here it models the 8x8 handwritten
digits in a 15-dimensional whitened PCA space: ``score`` gives the held-out
log-likelihood, ``sample`` draws new points, and the pipeline's
``inverse_transform`` brings them back to pixels. A short grid search then
chooses the tensor-train rank by cross-validated log-likelihood.

This follows scikit-learn's "Kernel Density Estimation" digits example.
"""

# %%
# Load and dequantise the digits
# ------------------------------
# The pixels are integers from 0 to 16. A continuous density on integers would
# put spikes on them, so we add uniform noise in [0, 1) ("dequantisation"):
# each integer becomes a unit interval, and the log-likelihood is that of a
# proper density.

import argparse
import os
import sys
from pathlib import Path

import matplotlib

if sys.platform.startswith("linux") and not (
    os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
):
    matplotlib.use("Agg")  # no display: draw off-screen
import matplotlib.pyplot as plt
import numpy as np
from sklearn.base import clone
from sklearn.datasets import load_digits
from sklearn.decomposition import PCA
from sklearn.mixture import GaussianMixture
from sklearn.model_selection import GridSearchCV, train_test_split
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from sktt_flow import TensorizingFlowDensity

digits = load_digits()
rng = np.random.default_rng(0)
X = digits.data + rng.uniform(size=digits.data.shape)
X_train, X_test = train_test_split(X, test_size=0.25, random_state=0)
print(f"{X_train.shape[0]} training and {X_test.shape[0]} test digits of {X.shape[1]} pixels")

# %%
# Fit a tensorizing flow in a pipeline
# ------------------------------------
# Standardise the pixels, project them onto 15 whitened principal components,
# and fit the density there.

pipeline = Pipeline(
    [
        ("scale", StandardScaler()),
        ("pca", PCA(n_components=15, whiten=True, random_state=0)),
        ("density", TensorizingFlowDensity(tt_rank=8, random_state=0)),
    ]
)
pipeline.fit(X_train)
density = pipeline[-1]
print(f"fitted in {density.fit_time_:.1f} s ({density.n_iter_} epochs of the flow)")

# %%
# ``score`` is the mean log-likelihood of the test digits in the 15-D PCA
# space (higher is better). A single Gaussian, which is what whitening makes
# of the data, is a reference point.

gaussian = clone(pipeline).set_params(density=GaussianMixture(1, random_state=0))
print(f"held-out log-likelihood, tensorizing flow: {pipeline.score(X_test):.2f}")
print(f"held-out log-likelihood, single Gaussian:  {gaussian.fit(X_train).score(X_test):.2f}")

# %%
# Draw new digits
# ---------------
# Samples are drawn in the PCA space; ``pipeline[:-1]`` is the pipeline
# without its density, whose ``inverse_transform`` undoes the PCA and the
# scaling. We clip the result to the range of the pixels.

new_data = density.sample(44, random_state=0)
new_digits = np.clip(pipeline[:-1].inverse_transform(new_data), 0, 16)

figure, axes = plt.subplots(9, 11, subplot_kw={"xticks": [], "yticks": []}, figsize=(6, 5.4))
for j in range(11):
    axes[4, j].set_visible(False)
    for i in range(4):
        axes[i, j].imshow(digits.images[11 * i + j], cmap="binary", vmin=0, vmax=16)
        axes[i + 5, j].imshow(new_digits[11 * i + j].reshape(8, 8), cmap="binary", vmin=0, vmax=16)
axes[0, 5].set_title("Selection from the input data")
axes[5, 5].set_title('"New" digits drawn from the tensorizing flow')

# %%
# Choose the rank by cross-validation
# -----------------------------------
# ``score`` makes the estimator work with
# :class:`~sklearn.model_selection.GridSearchCV` without a ``scoring``
# argument: the mean held-out log-likelihood is maximised. To keep this
# example fast, we search the rank of the tensor-train base alone
# (``flow="none"``), which is where ``tt_rank`` acts.

search = GridSearchCV(
    clone(pipeline).set_params(density__flow="none"),
    {"density__tt_rank": [2, 4, 8]},
    cv=3,
    refit=False,
)
search.fit(X_train)
results = search.cv_results_
for rank, score in zip(results["param_density__tt_rank"], results["mean_test_score"], strict=True):
    print(f"tt_rank={rank}: cross-validated log-likelihood {score:.2f}")
print(f"best: {search.best_params_}")

# %%
# Save the figure when run as a script with ``--output DIR``.

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Digits drawn from a tensorizing flow.")
    parser.add_argument("--output", type=Path, default=None, help="folder for the figure")
    output = parser.parse_args().output
    if output is not None:
        output.mkdir(parents=True, exist_ok=True)
        figure.savefig(output / "digits_pipeline.png", dpi=100)
        print(f"figure written to {output / 'digits_pipeline.png'}")
    plt.close(figure)
