"""Model builders: plain ``torch.nn`` modules (MLP, small CNN for 28×28 images)."""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import nn

from clipkit.core.utils import check_int, seeded

__all__ = ["ACTIVATIONS", "INCREASING", "activation_module", "classifier", "cnn", "mlp",
           "without_final_squash"]

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "sigmoid": nn.Sigmoid,
    "tanh": nn.Tanh,
}

#: Final activations that are strictly increasing elementwise: they change no predicted
#: class, so a gradient attack may differentiate the logits before them.
INCREASING = (nn.Sigmoid, nn.Tanh)


def without_final_squash(model: nn.Module) -> nn.Sequential | None:
    """``model[:-1]`` where ``model`` is an ``nn.Sequential`` ending in a sigmoid or tanh
    (:data:`INCREASING`; argmax s(z) = argmax z), else None. The part shares the modules."""
    if isinstance(model, nn.Sequential) and len(model) > 1 and isinstance(model[-1], INCREASING):
        return model[:-1]
    return None


def activation_module(name: str) -> nn.Module:
    """The activation module called ``name`` (relu, sigmoid, tanh)."""
    try:
        return ACTIVATIONS[str(name).lower()]()
    except KeyError:
        raise ValueError(
            f"unknown activation {name!r}; accepted: {', '.join(ACTIVATIONS)}"
        ) from None


def mlp(
    sizes: Sequence[int],
    activation: str = "relu",
    *,
    last_activation: bool = False,
    seed: int | None = None,
) -> nn.Sequential:
    """A fully connected network: Linear(sizes[0], sizes[1]), act, …, Linear(sizes[-2], sizes[-1]).

    No activation after the last layer, unless ``last_activation=True``: the authors'
    public CLIP code applies it there too (sigmoid logits squeezed into (0, 1)); the
    option exists to reproduce their published numbers, and is off by default.
    ``seed`` seeds the initialisation (torch's default) without touching the global RNG.
    """
    sizes = list(sizes)
    if len(sizes) < 2 or not all(
            isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in sizes):
        raise ValueError(f"mlp: sizes must be >= 2 positive ints, got {sizes!r}")
    act = activation_module
    act(activation)  # validate the name before building anything
    layers: list[nn.Module] = []
    with seeded(seed):
        for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
            layers.append(nn.Linear(n_in, n_out))
            if i < len(sizes) - 2 or last_activation:
                layers.append(act(activation))
    return nn.Sequential(*layers)


def cnn(
    in_channels: int = 1,
    num_classes: int = 10,
    activation: str = "relu",
    *,
    width: int = 16,
    image_size: int = 28,
    seed: int | None = None,
) -> nn.Sequential:
    """A small CNN for ``image_size``×``image_size`` images (28 for MNIST).

    conv 4×4 stride 2 (width) → act → conv 4×4 stride 2 (2·width) → act → flatten →
    linear 100 → act → linear ``num_classes``. No batch norm, so it trains the same
    one model at a time and as a vectorised λ-path.
    """
    act = activation_module
    act(activation)
    check_int(in_channels, "cnn: in_channels", 1)
    check_int(num_classes, "cnn: num_classes", 1)
    check_int(width, "cnn: width", 1)
    if check_int(image_size, "cnn: image_size", 4) % 4:
        raise ValueError(f"cnn: image_size must be a multiple of 4, got {image_size}")
    side = image_size // 4
    with seeded(seed):
        return nn.Sequential(
            nn.Conv2d(in_channels, width, 4, stride=2, padding=1),
            act(activation),
            nn.Conv2d(width, 2 * width, 4, stride=2, padding=1),
            act(activation),
            nn.Flatten(),
            nn.Linear(2 * width * side * side, 100),
            act(activation),
            nn.Linear(100, num_classes),
        )


def _image_side(image_shape: Sequence[int]) -> int:
    if isinstance(image_shape, int) or len(image_shape) != 3:
        raise ValueError(f"classifier: image_shape must be (channels, height, width), got "
                         f"{image_shape!r}")
    return int(image_shape[-1])


def classifier(
    kind: str = "mlp",
    *,
    hidden: Sequence[int] | None = None,
    activation: str | None = None,
    last_activation: bool = False,
    image_shape: Sequence[int] = (1, 28, 28),
    num_classes: int = 10,
    seed: int | None = None,
) -> nn.Sequential:
    """An image classifier taking (N, *image_shape): ``"mlp"`` (Flatten, then
    :func:`mlp` with the ``hidden`` widths; by default the authors' 200-80 with sigmoid) or
    ``"cnn"`` (:func:`cnn`, ReLU by default; ``hidden`` and ``last_activation`` are MLP
    options). ``activation`` None: the kind's own default."""
    if kind not in ("mlp", "cnn"):
        raise ValueError(f"classifier: unknown kind {kind!r}; accepted: 'mlp', 'cnn'")
    side = _image_side(image_shape)
    if kind == "cnn":
        if last_activation or hidden is not None:
            raise ValueError(f"classifier: {'last_activation' if last_activation else 'hidden'}"
                             f" is an option of the MLP only (the CNN's layers are fixed: "
                             f"ck.models.cnn)")
        return cnn(image_shape[0], num_classes, activation or "relu", image_size=side,
                   seed=seed)
    hidden = (200, 80) if hidden is None else hidden
    if isinstance(hidden, int) and not isinstance(hidden, bool):
        raise ValueError(f"classifier: hidden must be a list of layer widths, e.g. [{hidden}], "
                         f"got {hidden!r}")
    net = mlp([math.prod(image_shape), *hidden, num_classes], activation or "sigmoid",
              last_activation=last_activation, seed=seed)
    return nn.Sequential(nn.Flatten(), *net)
