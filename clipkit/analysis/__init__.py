"""The analysis layer: what a trained network is, measured against exact mathematics.

Owns the Lipschitz estimators (``lipschitz``: certified upper bounds, attained lower bounds,
exact constants, the bracket, the LipSDP certificate), the robustness evaluation
(``attacks``: FGSM, PGD, noise, accuracy over ε; ``certify``: certified ℓ2 accuracy over ε
from certified Lipschitz bounds), and the λ → constant theory (``theory``: optimal
constants, λ*, exact function-space minimisers, rate bounds). It may import
``clipkit.core`` only: it works on any ``torch.nn.Module``, however it was trained.
"""
