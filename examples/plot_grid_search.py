"""
Choosing the tensor-train rank by cross-validation
==================================================

:class:`~sktt_flow.TensorizingFlowDensity` has a ``score`` method (the mean
log-likelihood), so :class:`~sklearn.model_selection.GridSearchCV` tunes it
without a ``scoring`` argument, like :class:`~sklearn.neighbors.KernelDensity`
or :class:`~sklearn.mixture.GaussianMixture`. Here we search the rank
``tt_rank`` and the number of Legendre polynomials ``n_basis`` of the
tensor-train base on samples of a known 4-D mixture of six Gaussians, and
compare the cross-validated log-likelihoods with that of the true density.
"""

# %%
# Data from a known density
# -------------------------
# :class:`~sktt_flow.targets.MixtureOfGaussians` draws exact samples and
# evaluates the exact (normalised) log-density, so we know the best held-out
# log-likelihood any model can reach on average.

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
import torch
from sklearn.model_selection import GridSearchCV, KFold
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from sktt_flow import TensorizingFlowDensity
from sktt_flow.targets import MixtureOfGaussians

truth = MixtureOfGaussians.random_modes(6, 4, low=-5.0, high=5.0, std=1.0, seed=0)
X_train = truth.sample(2000, random_state=0).numpy()
X_test = truth.sample(3000, random_state=1).numpy()


def true_log_density(X):
    return truth.log_prob(torch.from_numpy(X)).numpy()


print(f"{truth!r}: {len(X_train)} training and {len(X_test)} test points")

# %%
# The grid search
# ---------------
# The pipeline standardises the features, then fits the TT base alone
# (``flow="none"``), which is where ``tt_rank`` and ``n_basis`` act and which
# keeps the search fast. Parameters of a pipeline step are addressed as
# ``step__parameter``. ``refit=True`` (the default) refits the best
# combination on all the training data.

pipeline = Pipeline(
    [
        ("scale", StandardScaler()),
        (
            "density",
            TensorizingFlowDensity(
                flow="none", learning_rate=1e-2, batch_size=512, random_state=0
            ),
        ),
    ]
)
ranks = [1, 2, 4, 8, 12]
n_bases = [8, 16]
cv = KFold(3, shuffle=True, random_state=0)
search = GridSearchCV(pipeline, {"density__tt_rank": ranks, "density__n_basis": n_bases}, cv=cv)
search.fit(X_train)

# %%
# A pipeline's ``score`` is that of its last step on the *transformed* data:
# the log-likelihood of the standardised features, which differs from that of
# the original features by the log-Jacobian of the scaling,
# ``-sum(log(scaler.scale_))``. To compare with the true density on the same
# footing, we score the true density on each validation fold in the
# coordinates of that fold's scaler.

truth_per_fold = []
for train, validation in cv.split(X_train):
    scale = StandardScaler().fit(X_train[train]).scale_
    truth_per_fold.append(true_log_density(X_train[validation]).mean() + np.log(scale).sum())
truth_cv = float(np.mean(truth_per_fold))

results = search.cv_results_
mean = np.empty((len(ranks), len(n_bases)))
std = np.empty_like(mean)
for params, m, s in zip(
    results["params"], results["mean_test_score"], results["std_test_score"], strict=True
):
    i, j = ranks.index(params["density__tt_rank"]), n_bases.index(params["density__n_basis"])
    mean[i, j], std[i, j] = m, s
print("cross-validated log-likelihood (standardised features), mean ± std over 3 folds")
print(f"{'tt_rank':>8}" + "".join(f"{f'n_basis={n}':>18}" for n in n_bases))
for i, rank in enumerate(ranks):
    cells = "".join(f"{f'{mean[i, j]:.3f} ± {std[i, j]:.3f}':>18}" for j in range(len(n_bases)))
    print(f"{rank:>8}{cells}")
truth_cell = f"{truth_cv:.3f} ± {np.std(truth_per_fold):.3f}"
print(f"{'truth':>8}{truth_cell:>18}  (the spread over folds is sampling noise of the folds)")
print(f"best: {search.best_params_}")

# %%
# The best model on the test set
# ------------------------------
# ``score_samples`` of the pipeline are log-densities of the standardised
# features too; subtracting ``sum(log(scale_))`` gives the log-density of the
# original features, comparable with the true density.

best = search.best_estimator_
log_jacobian = np.log(best["scale"].scale_).sum()
test_ll = float(best.score(X_test) - log_jacobian)
truth_test = float(true_log_density(X_test).mean())
print(f"test log-likelihood of the best model {test_ll:.3f}, of the true density {truth_test:.3f}")

# %%
# Plot
# ----

figure, ax = plt.subplots(figsize=(6, 4))
for j, n_basis in enumerate(n_bases):
    ax.errorbar(
        np.array(ranks) * (1 + 0.03 * (j - 0.5)),  # offset so error bars do not overlap
        mean[:, j],
        yerr=std[:, j],
        marker="o",
        capsize=3,
        label=f"n_basis={n_basis}",
    )
ax.axhline(truth_cv, color="k", linestyle="--", label="true density")
ax.set_xscale("log", base=2)
ax.set_xticks(ranks, [str(r) for r in ranks])
ax.set_xlabel("tt_rank")
ax.set_ylabel("held-out log-likelihood")
ax.set_title("3-fold cross-validation of the TT base on a 4-D mixture", fontsize=10)
ax.legend()
figure.tight_layout()

# %%
# Rank 1 makes the coordinates independent and cannot represent six modes
# scattered in four dimensions; the log-likelihood climbs with the rank and
# levels off a little below the truth, where the resolution of the Legendre
# basis, not the rank, limits the fit: 16 polynomials per coordinate do better
# than 8 at every rank.

# %%
# Save the figure when run as a script with ``--output DIR``.

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Grid search over the TT rank.")
    parser.add_argument("--output", type=Path, default=None, help="folder for the figure")
    output = parser.parse_args().output
    if output is not None:
        output.mkdir(parents=True, exist_ok=True)
        figure.savefig(output / "grid_search.png", dpi=100)
        print(f"figure written to {output / 'grid_search.png'}")
    plt.close(figure)
