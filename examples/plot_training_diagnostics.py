"""
Reading the training diagnostics
================================

A fitted :class:`~sktt_flow.TensorizingFlowDensity` keeps a record of its
training and, in variational mode, of how well it matches the target:

- ``loss_curve_``: the mean training loss of each iteration of the last
  training stage;
- ``validation_scores_``: the score that early stopping watches, before
  training and after each iteration (the held-out log-likelihood from data,
  the ELBO on fixed draws in variational mode);
- ``base_ess_`` and ``ess_`` (variational mode): the effective sample size of
  the importance weights of the base alone and of the fitted model.

This example fits small models in both modes and shows how to read each
diagnostic: what a healthy curve looks like, what early stopping did, what a
low effective sample size means, and what no diagnostic computed from the
model's own draws can see.
"""

# %%
# Fitting data: two curves
# ------------------------
# Two fits of the same small RealNVP flow (4 coupling layers of 32 hidden
# units) on 1000 points of the two moons: on the tensor-train base
# (``base="tt"``) and on a Gaussian base (``base="gaussian"``). In data mode
# ``validation_scores_`` is the mean log-likelihood of the 10% of the rows
# held out for early stopping, in the units of the features: its first entry
# is the score of the base alone (the flow starts at the identity), then one
# entry per epoch. ``loss_curve_`` is the mean training loss, ``-log q`` per
# training row, of each epoch; its negative is the training log-likelihood,
# on the same scale as the held-out one.

import argparse
import os
import sys
import warnings
from pathlib import Path

import matplotlib

if sys.platform.startswith("linux") and not (
    os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
):
    matplotlib.use("Agg")  # no display: draw off-screen
import matplotlib.pyplot as plt
import numpy as np
import torch
from sklearn.datasets import make_moons

from sktt_flow import TensorizingFlowDensity
from sktt_flow.targets import Banana, MixtureOfGaussians

FLOW = {"flow": "realnvp", "n_flow_layers": 4, "hidden_units": 32}
X, _ = make_moons(1000, noise=0.05, random_state=0)
data_fits = {
    base: TensorizingFlowDensity(base=base, max_iter=200, random_state=0, **FLOW).fit(X)
    for base in ("tt", "gaussian")
}
for base, model in data_fits.items():
    scores = model.validation_scores_
    best = int(np.argmax(scores))
    print(
        f"base={base!r}: held-out log-likelihood {scores[0]:.3f} before training, best "
        f"{scores[best]:.3f} after epoch {best}; stopped after {model.n_iter_} of 200 epochs"
    )

# %%
# How to read them (the left panel of the figure below):
#
# - **A healthy curve** rises and flattens: the Gaussian-base flow starts
#   far below (its base is one Gaussian) and climbs for many epochs while
#   the flow learns the shape of the moons.
# - **The first entry is the base alone.** The tensorizing flow starts
#   almost where it ends: its base already has the moons, and the flow adds
#   little on these data. The gap between the first and the best entries is
#   what the flow added on held-out rows.
# - **Early stopping** ends the stage once the held-out score has not
#   improved for ``n_iter_no_change`` units (an epoch, or on small data
#   enough epochs for 10 optimiser steps), and restores the state with the
#   best held-out score, marked by a dot. So the fitted model is the best
#   state, not the last one, and the epochs after the dot cost time and
#   changed nothing.
# - **Over-fitting** shows as a held-out score that drifts down while the
#   training score holds or rises: in our run the tensorizing flow's held-out
#   score peaks after a couple of epochs and then drifts down by about 0.01,
#   below a training score that stays higher: the flow starts to follow the
#   noise of the training rows, and early stopping restored the best epoch.
#   A held-out score that falls far, fast, calls for a smaller flow or more
#   data.
# - **A curve still rising at** ``max_iter`` means the stage was cut short:
#   raise ``max_iter`` (the banana below shows one). These curves are noisy
#   estimates from 100 held-out rows; compare models by cross-validation,
#   not by these curves.

# %%
# Variational inference: the ELBO and the effective sample size
# --------------------------------------------------------------
# In variational mode ``validation_scores_`` is the ELBO,
# :math:`E_q[\log h - \log q]`, on 2048 draws that stay fixed during
# training, before training (the base alone) and after each iteration of 10
# gradient steps; ``loss_curve_`` is the negative ELBO on the training draws.
# The ELBO is :math:`\log Z - \mathrm{KL}(q \| p)`: its distance below the
# target's :math:`\log Z` is the reverse KL divergence of the model. The
# targets here are normalised (:math:`\log Z = 0`), so the curves read as
# minus the KL.
#
# ``ess_`` is the normalised effective sample size of the importance weights
# :math:`h/q` on 10,000 fresh draws of the fitted model, in :math:`(0, 1]`:
# roughly the fraction of the draws that count when the model is used as an
# importance sampler. ``base_ess_`` (with an automatic box) is the same for
# the base alone, before the flow, on 4096 exact draws.
#
# Two fits, with the box found automatically (``n_features`` instead of a
# ``domain``) and the TT base kept (``base="tt"``):
#
# - a mixture of two Gaussians about 7 apart, with the defaults: a healthy
#   fit;
# - a banana-shaped target with a deliberately coarse base, 8 Legendre
#   polynomials per coordinate instead of the ones ``n_basis="auto"`` would
#   choose: the cross warns that its base is poor, and the flow has work to
#   do; a second warning says that the box, which this coarse base could not
#   afford to widen, cuts mass that the fitted model misses (7% of it just
#   beyond one side).

two_modes = MixtureOfGaussians(
    [[-3.0, -1.0], [4.0, 1.0]],
    [[[1.0, 0.6], [0.6, 1.0]], [[0.5, 0.0], [0.0, 0.5]]],
)
banana = Banana(2)
VARIATIONAL = {"max_iter": 60, "random_state": 0, **FLOW}
variational_fits = {
    "two modes, defaults": TensorizingFlowDensity(
        log_target=two_modes.log_prob, n_features=2, base="tt", **VARIATIONAL
    ).fit(),
}
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    variational_fits["banana, n_basis=8"] = TensorizingFlowDensity(
        log_target=banana.log_prob, n_features=2, base="tt", n_basis=8, **VARIATIONAL
    ).fit()
for warning in caught:
    print(f"warning: {str(warning.message)[:160]}...")

# %%
# Mass the model cannot see
# -------------------------
# The third fit is the mixture again with an explicit ``domain`` that holds
# only the left mode: the base is built on that box, and the flow's draws
# never reach the right mode, 4 away from the box and many standard
# deviations from anything the model puts mass on.

boxed = TensorizingFlowDensity(
    log_target=two_modes.log_prob, domain=[[-8.0, 0.0], [-5.0, 3.0]], base="tt", **VARIATIONAL
).fit()
variational_fits["two modes, box cuts one"] = boxed
true_log_z = {"two modes": two_modes.log_normalizer, "banana": banana.log_normalizer}
print(f"{'fit':<26}{'ELBO':>8}{'base ESS':>10}{'ESS':>7}{'log Z estimate':>18}{'true':>7}")
for label, model in variational_fits.items():
    truth = true_log_z[label.split(",")[0]]
    base_ess = f"{model.base_ess_:.3f}" if hasattr(model, "base_ess_") else "n/a"
    estimate = f"{model.log_normalizer_:.3f} ± {model.log_normalizer_std_error_:.3f}"
    print(
        f"{label:<26}{model.elbo_:8.3f}{base_ess:>10}{model.ess_:7.3f}{estimate:>18}{truth:7.3f}"
    )

# %%
# How to read them (the right half of the figure below):
#
# - **A healthy variational fit** has ``ess_`` near 1 and an ELBO near
#   :math:`\log Z` when it is known; its ``log_normalizer_`` agrees with the
#   truth within a few of its standard errors. The two-mode fit's base
#   already is that good (``base_ess_`` near 1), so its ELBO curve is flat:
#   the flow had nothing to add.
# - **A low** ``base_ess_`` with a higher ``ess_`` means the flow repaired
#   part of a poor base: the banana's ELBO curve climbs from the coarse
#   base's, and it is still rising at ``max_iter=60``: more iterations
#   would help, a better base more. Its :math:`\log Z` estimate misses the
#   true 0 by about ten of its own standard errors in our run: with a low
#   ESS the standard error is unreliable too. An ESS of 0.5 is a sign to
#   improve the base: here, leave ``n_basis`` at ``"auto"``, as the warning
#   says. When both stay low, the base misses or misplaces mass, which the
#   flow cannot move far: see :doc:`/user_guide/troubleshooting`.
# - **The ELBO estimate on fixed draws is noisy**, and the best of noisy
#   values can even exceed :math:`\log Z` slightly; judge the fit by
#   ``elbo_`` and ``ess_``, which use fresh draws.
# - **What ESS cannot detect.** The boxed fit has an ESS of 1 and a
#   :math:`\log Z` estimate with a tiny standard error, and that estimate is
#   wrong by :math:`\log 2`: the model is an excellent fit to the left mode
#   and has no mass on the right one. Every diagnostic above is computed from
#   the model's own draws, and draws that never land on the missing mass
#   cannot report it. Check with a wider box or ``domain="auto"`` (which
#   found both modes above), compare :math:`\log Z` estimates across boxes
#   and seeds, and use a known :math:`\log Z` when there is one.

figure, axes = plt.subplots(1, 4, figsize=(16, 3.8))
colors = {"tt": "tab:blue", "gaussian": "tab:orange"}
for base, model in data_fits.items():
    epochs = np.arange(len(model.validation_scores_))
    best = int(np.argmax(model.validation_scores_))
    axes[0].plot(epochs, model.validation_scores_, color=colors[base], label=f"{base}: held-out")
    axes[0].plot(
        epochs[1:],
        -np.asarray(model.loss_curve_),
        color=colors[base],
        linestyle=":",
        label=f"{base}: training",
    )
    axes[0].plot(best, model.validation_scores_[best], "o", color=colors[base])
axes[0].set_ylim(-2.0, 0.0)
axes[0].set(xlabel="epoch", ylabel="mean log-likelihood", title="data: two moons")
axes[0].legend(fontsize=8)

for label, model in list(variational_fits.items())[:2]:
    scores = np.asarray(model.validation_scores_)
    best = int(np.argmax(scores))
    (line,) = axes[1].plot(scores, label=label)
    axes[1].plot(best, scores[best], "o", color=line.get_color())
axes[1].axhline(0.0, color="k", linewidth=0.8, linestyle="--", label="log Z (exact)")
axes[1].set(xlabel="iteration (10 steps)", ylabel="ELBO on fixed draws", title="variational")
axes[1].legend(fontsize=8)

labels = list(variational_fits)
positions = np.arange(len(labels))
base_values = [getattr(variational_fits[label], "base_ess_", np.nan) for label in labels]
axes[2].bar(positions - 0.2, base_values, width=0.4, label="base_ess_ (base alone)")
axes[2].bar(
    positions + 0.2,
    [variational_fits[label].ess_ for label in labels],
    width=0.4,
    label="ess_ (fitted model)",
)
axes[2].set_xticks(positions, [label.replace(", ", "\n") for label in labels], fontsize=8)
axes[2].set(ylim=(0, 1.3), title="effective sample size")
axes[2].legend(fontsize=7, loc="upper center", ncol=2)

grid_x, grid_y = np.meshgrid(np.linspace(-8, 7, 200), np.linspace(-5, 5, 150))
grid = torch.as_tensor(np.stack([grid_x.ravel(), grid_y.ravel()], axis=1))
density = np.exp(two_modes.log_prob(grid).numpy()).reshape(grid_x.shape)
axes[3].contour(grid_x, grid_y, density, levels=6, colors="k", linewidths=0.7)
draws = boxed.sample(500, random_state=0)
axes[3].scatter(draws[:, 0], draws[:, 1], s=2, color="tab:red", label="model draws")
axes[3].add_patch(plt.Rectangle((-8, -5), 8, 8, fill=False, linestyle="--", label="domain"))
axes[3].set_title(
    f"box cuts a mode: ESS {boxed.ess_:.2f}, log Z {boxed.log_normalizer_:.2f} (true 0)",
    fontsize=9,
)
axes[3].legend(fontsize=8, loc="upper right")
figure.tight_layout()

# %%
# Save the figure when run as a script with ``--output DIR``.

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Training diagnostics of fitted models.")
    parser.add_argument("--output", type=Path, default=None, help="folder for the figure")
    output = parser.parse_args().output
    if output is not None:
        output.mkdir(parents=True, exist_ok=True)
        figure.savefig(output / "training_diagnostics.png", dpi=80)
        print(f"figure written to {output / 'training_diagnostics.png'}")
    plt.close(figure)
