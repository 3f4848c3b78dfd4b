"""Lipschitz estimators: a bracket [lower, upper] of Lip(f), and exact values where computable.

Lip(f) = sup_{x != x'} ||f(x) - f(x')||_2 / ||x - x'||_2, on flattened tensors, for the model in
eval mode (BatchNorm uses its running statistics, Dropout is the identity).

Lower bounds (every one is attained by some input, so it can never exceed Lip(f)):
  * ``quotient_search``  adversarial difference-quotient search (CLIP's pair ascent, run long);
  * ``jacobian_norms``   sigma_max(J_f(x)) at the samples (torch.func);
  * ``jacobian_ascent``  sigma_max(J_f(x)) after Adam ascent on x from a few samples;
  * ``preactivation_ascent``  the same for MLPs, ascending over the first pre-activations
    (every z_1 is reached by some input), which finds steep regions far from the data; for
    sigmoid and tanh MLPs also from starts that a coupled proxy chooses (``guided_starts``);
  * ``random_quotients`` quotients of random perturbations of the samples.
The values reported are re-evaluated in float64, so float32 cancellation in f(u) - f(v) for close
pairs can not inflate a lower bound.

Upper bounds (need the model to be a (nested) ``nn.Sequential`` of supported layers):
  * ``layer_norms`` / product: Lip(f) <= prod_l Lip(layer_l), each layer's l2 operator norm on
    the actual input shape;
  * ``merged_upper_bound``: for MLPs, a bound that merges the linear maps around each
    activation (always <= the product);
  * ``lipsdp_upper_bound``: for MLPs, the LipSDP-neuron semidefinite certificate (L-BFGS
    multipliers, or ECLipsE-Fast's closed form, verified in float64); ``local_upper_bound``
    the same on an l2 ball, with each neuron's slopes restricted to their range there.

What "upper" certifies: Linear and BatchNorm norms are exact (float64 eigenvalues), max-pool
and activation constants are exact formulas. Conv and average-pool norms come from Lanczos
(power iteration's Krylov refinement) on the true operator, which converges from below; the
bound used is estimate / sqrt(1 - eps) with the gap-free Kuczynski-Wozniakowski margin eps, so
each such layer's bound holds except with probability delta (default 1e-6) over the random
start (see ``operator_norm``). A relative 1e-9 slack covers float64 rounding.

``bracket`` runs all of them; ``exact`` gives the exact constant of linear maps and of 1-D-input
piecewise-linear networks (and a stated-as-such grid value for smooth 1-D networks).

Modules: ``estimate`` (the result types), ``structure`` (supported layers, activation slope
intervals), ``upper``, ``lower``, ``preactivation`` (the ascent over pre-activations),
``exact``, ``bracket``; for the LipSDP certificate ``chain`` (an MLP as affine / elementwise
chain), ``lmi`` (the matrix inequality and its verification), ``eclipse`` (closed-form
multipliers), ``lbfgs`` (optimised multipliers), ``slopes`` (slope intervals on intervals,
globally and on balls), ``sdp`` (the public bounds).
The mathematics behind each bound is in ``docs/lipschitz.md``.
"""

from clipkit.analysis.lipschitz.bracket import bracket
from clipkit.analysis.lipschitz.chain import MLPChain, mlp_chain, require_chain
from clipkit.analysis.lipschitz.estimate import (
    Bracket,
    BracketContradiction,
    Estimate,
    LayerBound,
    UnsupportedModuleError,
)
from clipkit.analysis.lipschitz.exact import exact
from clipkit.analysis.lipschitz.lmi import Certificate, CertificateError
from clipkit.analysis.lipschitz.lower import (
    jacobian_ascent,
    jacobian_norms,
    quotient_search,
    random_quotients,
)
from clipkit.analysis.lipschitz.preactivation import preactivation_ascent
from clipkit.analysis.lipschitz.sdp import (
    lipsdp_upper_bound,
    local_upper_bound,
    sdp_estimate,
    solve,
)
from clipkit.analysis.lipschitz.slopes import global_slopes, local_slopes, slope_range
from clipkit.analysis.lipschitz.structure import activation_slopes
from clipkit.analysis.lipschitz.upper import (
    layer_norms,
    lipschitz_upper,
    merged_upper_bound,
    operator_norm,
)

__all__ = [
    "Bracket",
    "BracketContradiction",
    "Certificate",
    "CertificateError",
    "Estimate",
    "LayerBound",
    "MLPChain",
    "UnsupportedModuleError",
    "activation_slopes",
    "bracket",
    "exact",
    "global_slopes",
    "jacobian_ascent",
    "jacobian_norms",
    "layer_norms",
    "lipschitz_upper",
    "lipsdp_upper_bound",
    "local_slopes",
    "local_upper_bound",
    "merged_upper_bound",
    "mlp_chain",
    "operator_norm",
    "preactivation_ascent",
    "quotient_search",
    "random_quotients",
    "require_chain",
    "sdp_estimate",
    "slope_range",
    "solve",
]
