"""The layers a bound can see: the supported modules, activation slope intervals, shared checks."""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Iterator

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from clipkit.analysis.lipschitz.estimate import UnsupportedModuleError
from clipkit.core.utils import check_finite, check_int


def float64_copy(model: nn.Module) -> nn.Module:
    """A float64 copy of the model, in eval mode, without parameter gradients."""
    with _hook_weights(model, set_aside=True):
        m64 = copy.deepcopy(model).to(torch.float64).eval()
    for p in m64.parameters():
        p.requires_grad_(False)
    return m64


def hook_weights_kept(model: nn.Module) -> contextlib.AbstractContextManager[None]:
    """Put back, on leaving, the weights that hook-based weight normalisations
    (``torch.nn.utils.spectral_norm`` / ``weight_norm``) store on their modules.

    Their pre-hook sets ``module.weight`` at every forward; inside a torch.func transform
    (vmap, jacrev, jvp) that is a functorch wrapper, which outlives the transform: the
    user's model then failed to deepcopy ("Cannot access storage of TensorWrapper")."""
    return _hook_weights(model, set_aside=False)


@contextlib.contextmanager
def _hook_weights(model: nn.Module, set_aside: bool) -> Iterator[None]:
    """The hook-stored weights of ``model``, restored on leaving; ``set_aside``: removed
    meanwhile (non-leaf tensors, which deepcopy refuses; the hook computes them again at
    the next forward)."""
    stored = [(m, h.name, m.__dict__[h.name]) for m in model.modules()
              for h in _weight_hooks(m) if h.name in m.__dict__]
    if set_aside:
        for m, name, _ in stored:
            del m.__dict__[name]
    try:
        yield
    finally:
        for m, name, value in stored:
            m.__dict__[name] = value


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
    check_finite(x, "x")


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


def batchnorm_parts(m: nn.Module) -> tuple[Tensor, Tensor, Tensor]:
    """An eval-mode batch norm's per-channel scale s = gamma / sqrt(var + eps), shift beta
    and running mean mu, in float64 on its device: it computes (h - mu) s + beta (gamma 1
    and beta 0 without affine parameters)."""
    var = m.running_var.detach().double()
    gamma = m.weight.detach().double() if m.weight is not None else torch.ones_like(var)
    beta = m.bias.detach().double() if m.bias is not None else torch.zeros_like(var)
    return gamma / torch.sqrt(var + m.eps), beta, m.running_mean.detach().double()


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
#: constant padding (ZeroPad1d/2d/3d among them): copies every entry once, Lipschitz 1
PADS = (nn.ConstantPad1d, nn.ConstantPad2d, nn.ConstantPad3d)
BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
SUPPORTED = "Linear, Conv1d/2d/3d, BatchNorm1d/2d/3d (eval, running stats), AvgPool, " \
    "AdaptiveAvgPool, MaxPool, ConstantPad/ZeroPad, Flatten, Unflatten, Dropout, Identity, " \
    "ReLU, ReLU6, LeakyReLU, Hardtanh, Sigmoid, Tanh, Softplus, ELU, and nested " \
    "nn.Sequential of these"


def model_layers(model: nn.Module, prefix: str = "") -> list[tuple[str, nn.Module]]:
    """The layers of a (nested) nn.Sequential in execution order, with their dotted names.

    Every entry counts, a module placed twice included (``nn.Sequential.forward`` runs each;
    ``named_children`` would list it once). The bounds are computed from these layers, so a
    model whose forward is not their composition is refused (``UnsupportedModuleError``): a
    subclass that overrides the forward of its torch class (a residual ``nn.Sequential``, a
    scaled ``nn.ReLU``), or a forward hook (the module's own or global). Each such model
    got upper bounds below attained quotients, and points certified that an attack broke.

    A layer with a parametrized weight (torch.nn.utils.parametrize, e.g. the spectral
    normalisation of ``ck.SpectralNorm``) is given as a plain copy holding the weight it
    computes in eval mode (``_materialized``), the weight the bounds must see; so is one with
    the hook-based ``torch.nn.utils.spectral_norm`` / ``weight_norm``.
    """
    name = prefix or "<model>"
    if not prefix:
        _check_no_global_hooks()
    _check_hooks(model, name)
    _check_own_forward(model, name)
    if isinstance(model, nn.Sequential):
        out: list[tuple[str, nn.Module]] = []
        for key, child in model._modules.items():
            out += model_layers(child, f"{prefix}.{key}" if prefix else key)
        return out
    if parametrize.is_parametrized(model):
        return [(name, _materialized(model))]
    if _weight_hooks(model):
        return [(name, _hook_materialized(model))]
    if next(iter(model.children()), None) is not None:
        raise UnsupportedModuleError(
            f"module {name} ({type(model).__name__}) has submodules and a custom "
            "forward; only nested nn.Sequential containers can be bounded layer by layer. "
            f"Supported: {SUPPORTED}"
        )
    return [(name, model)]


def _torch_class(module: nn.Module) -> type:
    """The first class of torch's own in the module's class hierarchy (parametrization's
    generated class seen through)."""
    cls = parametrize.type_before_parametrizations(module)
    return next(c for c in cls.__mro__ if c.__module__.startswith("torch."))


def _check_own_forward(module: nn.Module, name: str) -> None:
    """A subclass of a torch layer must compute what that layer computes: its forward is the
    torch class's own. (A plain nn.Module subclass is left to ``check_supported``.)"""
    base = _torch_class(module)
    cls = parametrize.type_before_parametrizations(module)
    if base is not nn.Module and cls.forward is not base.forward:
        example = (" (a residual block computes x + f(x), not f(x))"
                   if base is nn.Sequential else "")
        raise UnsupportedModuleError(
            f"module {name} ({cls.__name__}) overrides the forward of torch's "
            f"{base.__name__}: a bound read from its layers would be of another "
            f"function{example}. Bound a model whose forward is its layers' composition. "
            f"Supported: {SUPPORTED}")


def _check_hooks(module: nn.Module, name: str) -> None:
    """Forward hooks change what a module computes, which its layers do not show (the
    weight-normalisation pre-hooks of ``_weight_hooks`` excepted: the bounds read their
    weight)."""
    known = {id(h) for h in _weight_hooks(module)}
    pre = [h for h in module._forward_pre_hooks.values() if id(h) not in known]
    if module._forward_hooks or pre:
        raise UnsupportedModuleError(
            f"module {name} ({type(module).__name__}) has a forward hook: what it computes "
            f"is not what its layers say, so no bound is read from them; remove the hook "
            f"(handle.remove()) to bound the model without it")


def _check_no_global_hooks() -> None:
    from torch.nn.modules import module as torch_module

    if torch_module._global_forward_hooks or torch_module._global_forward_pre_hooks:
        raise UnsupportedModuleError(
            "a global forward hook is registered (torch.nn.modules.module."
            "register_module_forward_hook / _pre_hook): it may change what every module "
            "computes, so no bound is read from the layers; remove it first")


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
    with _hook_weights(module, set_aside=True):
        plain = copy.deepcopy(module)
    plain._forward_pre_hooks.clear()
    for name, value in values.items():
        plain._parameters[name] = nn.Parameter(value, requires_grad=False)
    return plain.eval()


#: the largest jump of torch's Softplus (where it switches to the identity) that the bounds
#: neglect: 2.1e-9 at the default threshold 20 (beta 1), far below float32 resolution of f
SOFTPLUS_MAX_JUMP = 1e-8


def softplus_jump(m: nn.Softplus) -> float:
    """|f(t+) - f(t-)| of torch's Softplus at its switch t = threshold/beta:
    log1p(exp(-threshold)) / |beta| (inf for beta 0)."""
    if m.beta == 0:
        return math.inf
    return math.log1p(math.exp(-m.threshold)) / abs(m.beta)


def check_supported(name: str, m: nn.Module) -> None:
    ok = isinstance(m, (nn.Linear, *ISOMETRIES, *CONVS, *AVGPOOLS, *MAXPOOLS, *BATCHNORMS,
                        *PADS))
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
    if isinstance(m, nn.Softplus) and not m.beta > 0:
        raise UnsupportedModuleError(
            f"module {name} (Softplus(beta={m.beta})): beta must be > 0 (torch divides by it; "
            f"with beta < 0 the function and its switch to the identity change side)")
    if isinstance(m, nn.Softplus) and softplus_jump(m) > SOFTPLUS_MAX_JUMP:
        raise UnsupportedModuleError(
            f"module {name} (Softplus(beta={m.beta}, threshold={m.threshold})): torch switches "
            f"to the identity where beta*x > threshold, a jump of {softplus_jump(m):.3g} in the "
            f"function, so it has no Lipschitz constant; jumps up to {SOFTPLUS_MAX_JUMP:g} are "
            f"neglected (2.1e-9 at the default threshold 20 with beta 1): raise threshold")
    if isinstance(m, MAXPOOLS) and getattr(m, "return_indices", False):
        raise UnsupportedModuleError(f"module {name} (MaxPool with return_indices=True)")
