"""Benchmark targets for variational inference, with ground truth.

Every target is a :class:`Target`: an unnormalised log-density ``log_prob``
(torch in, torch out, differentiable, any device and dtype), a suggested box
``domain`` holding essentially all of the mass, the log-normaliser
``log_normalizer`` of ``exp(log_prob)`` (exact, or computed to about 1e-10;
None where no accurate method exists), exact samples from ``sample`` where
they are available, and mode labels from ``mode_of`` for the multimodal ones.

=============================  ========================  ===============  ===========
target                         log Z                     exact samples    modes
=============================  ========================  ===============  ===========
GinzburgLandau1D               transfer matrix           yes              2
GinzburgLandau2D               None                      no               2
MixtureOfGaussians             exact                     yes              K
DoubleRosenbrock               transfer matrix           yes              2
NealsFunnel                    0                         yes              1
Banana                         0                         yes              1
ManyWell                       1-D quadrature            yes              2^(d/2)
LogisticRegressionPosterior    None (reference by IS)    no               1
EightSchools                   1-D quadrature            yes              1
=============================  ========================  ===============  ===========

The last two are real Bayesian posteriors (Bayesian logistic regression on
bundled scikit-learn datasets, and the eight-schools hierarchical model);
their ``log Z`` is the model evidence. For logistic regression a reference
``log Z`` by importance sampling is in
``benchmarks/results/posterior_reference.json`` (made by
``benchmarks/reference_log_z.py``).

The subpackage depends on torch and numpy, and on scikit-learn for the bundled
datasets of :class:`LogisticRegressionPosterior` (scipy is used by its tests).
"""

from sktt_flow.targets._base import Target
from sktt_flow.targets.classic import Banana, DoubleRosenbrock, ManyWell, NealsFunnel
from sktt_flow.targets.ginzburg_landau import GinzburgLandau1D, GinzburgLandau2D
from sktt_flow.targets.mixtures import MixtureOfGaussians
from sktt_flow.targets.posteriors import EightSchools, LogisticRegressionPosterior

__all__ = [
    "Banana",
    "DoubleRosenbrock",
    "EightSchools",
    "GinzburgLandau1D",
    "GinzburgLandau2D",
    "LogisticRegressionPosterior",
    "ManyWell",
    "MixtureOfGaussians",
    "NealsFunnel",
    "Target",
]
