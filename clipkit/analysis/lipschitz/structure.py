"""The layers a bound can see: the supported modules, activation slope intervals, shared checks."""

from __future__ import annotations

import copy
import math

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from clipkit.analysis.lipschitz.estimate import UnsupportedModuleError
from clipkit.core.utils import check_int


def float64_copy(model: nn.Module) -> nn.Module:
    """A float64 copy of the model, in eval mode, without parameter gradients."""
    m64 = copy.deepcopy(model).to(torch.float64).eval()
    for p in m64.parameters():
        p.requires_grad_(False)
    return m64


def seeded_generator(seed: int, device: torch.device) -> torch.Generator:
    g = torch.Generator(device=device)
    g.manual_seed(seed)
    return g


def check_batch_size(batch_size: int) -> None:
    check_int(batch_size, "batch_size", low=1)


def check_search(pairs: int, steps: int, restarts: int) -> None:
    for name, val, least in (("pairs", pairs, 1), ("steps", steps, 0), ("restarts", restarts, 1)):
        check_int(val, name, low=least)


def check_samples(x: Tensor) -> None:
    if not isinstance(x, Tensor) or x.ndim < 2 or x.shape[0] < 1:
        raise ValueError(
            "x must be a tensor of sample inputs with a leading batch dimension "
            f"(shape (N, *input_shape), N >= 1); got {getattr(x, 'shape', type(x))}"
        )
    if not torch.isfinite(x).all():
        raise ValueError("x contains non-finite values")


#: Elementwise activations: the interval [lo, hi] that every difference quotient
#: (s(a) - s(b)) / (a - b) lies in. Lip = max(|lo|, |hi|).
PIECEWISE_LINEAR = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.Hardtanh, nn.Identity)


def activation_slopes(module: nn.Module) -> tuple[float, float] | None:
    """[lo, hi] containing every difference quotient of an elementwise activation, else None.

    ReLU, ReLU6, Hardtanh: [0, 1]; LeakyReLU(a): [min(a, 1), max(a, 1)]; Sigmoid: [0, 1/4];
    Tanh, Softplus: [0, 1]; ELU(a): [min(a, 0), max(a, 1)]; Identity: [1, 1].
    """
    if isinstance(module, nn.Identity):
        return (1.0, 1.0)
    if isinstance(module, nn.ReLU | nn.ReLU6 | nn.Hardtanh | nn.Tanh | nn.Softplus):
        return (0.0, 1.0)
    if isinstance(module, nn.Sigmoid):
        return (0.0, 0.25)
    if isinstance(module, nn.LeakyReLU):
        a = float(module.negative_slope)
        return (min(a, 1.0), max(a, 1.0))
    if isinstance(module, nn.ELU):
        a = float(module.alpha)
        return (min(a, 0.0), max(a, 1.0))
    return None


def kinks(module: nn.Module) -> tuple[float, ...]:
    """Breakpoints of a piecewise-linear activation."""
    if isinstance(module, nn.Identity):
        return ()
    if isinstance(module, nn.ReLU | nn.LeakyReLU):
        return (0.0,)
    if isinstance(module, nn.Hardtanh):  # ReLU6 is a Hardtanh(0, 6)
        return (float(module.min_val), float(module.max_val))
    raise UnsupportedModuleError(f"{type(module).__name__} is not piecewise linear")


ISOMETRIES = (
    nn.Flatten,
    nn.Unflatten,
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Dropout3d,
    nn.AlphaDropout,
)
CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
AVGPOOLS = (
    nn.AvgPool1d,
    nn.AvgPool2d,
    nn.AvgPool3d,
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveAvgPool3d,
)
MAXPOOLS = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d)
BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
SUPPORTED = "Linear, Conv1d/2d/3d, BatchNorm1d/2d/3d (eval, running stats), AvgPool, " \
    "AdaptiveAvgPool, MaxPool, Flatten, Unflatten, Dropout, Identity, ReLU, ReLU6, LeakyReLU, " \
    "Hardtanh, Sigmoid, Tanh, Softplus, ELU, and nested nn.Sequential of these"


def model_layers(model: nn.Module, prefix: str = "") -> list[tuple[str, nn.Module]]:
    """The layers of a (nested) nn.Sequential in execution order, with their dotted names.

    A layer with a parametrized weight (torch.nn.utils.parametrize, e.g. the spectral
    normalisation of ``ck.SpectralNorm``) is given as a plain copy holding the weight it
    computes in eval mode (``_materialized``), the weight the bounds must see.
    """
    if isinstance(model, nn.Sequential):
        out: list[tuple[str, nn.Module]] = []
        for name, child in model.named_children():
            out += model_layers(child, f"{prefix}.{name}" if prefix else name)
        return out
    if parametrize.is_parametrized(model):
        return [(prefix or "<model>", _materialized(model))]
    if _weight_hooks(model):
        return [(prefix or "<model>", _hook_materialized(model))]
    if next(iter(model.children()), None) is not None:
        raise UnsupportedModuleError(
            f"module {prefix or '<model>'} ({type(model).__name__}) has submodules and a custom "
            "forward; only nested nn.Sequential containers can be bounded layer by layer. "
            f"Supported: {SUPPORTED}"
        )
    return [(prefix or "<model>", model)]


def _materialized(module: nn.Module) -> nn.Module:
    """A plain copy of a parametrized layer: its own class, each parametrized tensor replaced
    by the value it takes in eval mode (spectral normalisation then takes no power-iteration
    step, so the module's state does not move). torch's ``remove_parametrizations`` is not
    used: on a deep copy it deletes the property from the class the original shares."""
    was = module.training
    module.eval()
    try:
        with torch.no_grad():
            values = {name: getattr(module, name).detach().clone()
                      for name in module.parametrizations}
    finally:
        module.train(was)
    plain = copy.deepcopy(module)
    plain.__class__ = parametrize.type_before_parametrizations(module)
    del plain._modules["parametrizations"]
    for name, value in values.items():
        plain._parameters[name] = nn.Parameter(value, requires_grad=False)
    return plain.eval()


def _weight_hooks(module: nn.Module) -> list:
    """The hook-based weight normalisations on ``module`` (``torch.nn.utils.spectral_norm``,
    ``weight_norm``): its ``.weight`` is what their hook computed at the last forward, stale
    after an optimiser step, so the bounds must compute it themselves."""
    from torch.nn.utils.spectral_norm import SpectralNorm as SpectralNormHook
    from torch.nn.utils.weight_norm import WeightNorm as WeightNormHook

    return [h for h in module._forward_pre_hooks.values()
            if isinstance(h, (SpectralNormHook, WeightNormHook))]


def _hook_materialized(module: nn.Module) -> nn.Module:
    """A plain copy of a layer with hook-based weight normalisation, holding the weight that
    its eval-mode forward would compute now (spectral norm: no power-iteration step)."""
    from torch.nn.utils.spectral_norm import SpectralNorm as SpectralNormHook

    with torch.no_grad():
        values = {}
        for hook in _weight_hooks(module):
            weight = (hook.compute_weight(module, do_power_iteration=False)
                      if isinstance(hook, SpectralNormHook) else hook.compute_weight(module))
            values[hook.name] = weight.detach().clone()
    # the hook's last weight is a non-leaf tensor, which deepcopy refuses: set it aside
    stale = {name: module.__dict__.pop(name) for name in values if name in module.__dict__}
    try:
        plain = copy.deepcopy(module)
    finally:
        module.__dict__.update(stale)
    plain._forward_pre_hooks.clear()
    for name, value in values.items():
        plain._parameters[name] = nn.Parameter(value, requires_grad=False)
    return plain.eval()


#: the largest jump of torch's Softplus (where it switches to the identity) that the bounds
#: neglect: 2.1e-9 at the default threshold 20 (beta 1), far below float32 resolution of f
SOFTPLUS_MAX_JUMP = 1e-8


def softplus_jump(m: nn.Softplus) -> float:
    """|f(t+) - f(t-)| of torch's Softplus at its switch t = threshold/beta:
    log1p(exp(-threshold)) / beta."""
    return math.log1p(math.exp(-m.threshold)) / m.beta


def check_supported(name: str, m: nn.Module) -> None:
    ok = isinstance(m, (nn.Linear, *ISOMETRIES, *CONVS, *AVGPOOLS, *MAXPOOLS, *BATCHNORMS))
    if not ok and activation_slopes(m) is None:
        raise UnsupportedModuleError(
            f"unsupported module {name} ({type(m).__name__}): no Lipschitz bound known to "
            f"clipkit. Supported: {SUPPORTED}"
        )
    if isinstance(m, BATCHNORMS) and (m.running_var is None or m.running_mean is None):
        raise UnsupportedModuleError(
            f"module {name} ({type(m).__name__}) has track_running_stats=False: in eval mode it "
            "still normalises by batch statistics, which is not a fixed affine map"
        )
    if isinstance(m, nn.Softplus) and softplus_jump(m) > SOFTPLUS_MAX_JUMP:
        raise UnsupportedModuleError(
            f"module {name} (Softplus(beta={m.beta}, threshold={m.threshold})): torch switches "
            f"to the identity where beta*x > threshold, a jump of {softplus_jump(m):.3g} in the "
            f"function, so it has no Lipschitz constant; jumps up to {SOFTPLUS_MAX_JUMP:g} are "
            f"neglected (2.1e-9 at the default threshold 20 with beta 1): raise threshold")
    if isinstance(m, MAXPOOLS) and getattr(m, "return_indices", False):
        raise UnsupportedModuleError(f"module {name} (MaxPool with return_indices=True)")
