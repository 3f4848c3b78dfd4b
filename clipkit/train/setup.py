"""What fit and fit_path share before training: checks of data and options, loss, optimizer."""

from __future__ import annotations

import math
import sys
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
import xarray as xr
from torch import Tensor, nn

from clipkit.core.utils import (
    check_class_labels,
    check_int,
    check_model_takes,
    check_number,
    check_positive,
    resolve_device,
)
from clipkit.train.baselines import Standard
from clipkit.train.protocol import Method
from clipkit.train.selection import BestEpoch, EpochMeasure

OPTIMIZERS = ("sgd", "adam")


def someone_watches() -> bool:
    """Whether a progress bar would be seen: a Jupyter kernel, or stderr on a terminal.

    What ``progress=None`` means in ``fit`` and ``fit_path``: a script whose output goes to a
    log file gets no bar, whose carriage-return updates would fill the log.
    """
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    if shell is not None and hasattr(shell, "kernel"):
        return True
    isatty = getattr(sys.stderr, "isatty", None)
    return bool(isatty is not None and isatty())
TASKS = ("auto", "regression", "classification")


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite in ``epoch``, ``step`` (both from 1, as the
    history's epochs and ``diverged``); ``history`` holds the finished epochs."""

    def __init__(self, message: str, epoch: int, step: int, history: xr.Dataset | None):
        super().__init__(message)
        self.epoch, self.step, self.history = epoch, step, history


def seeds_for(seed: int) -> tuple[int, int]:
    """Independent seeds for the data order and the method's draws, from one seed.

    Separate streams keep the data order the same whatever the method draws, so that
    CLIP with λ = 0 gives exactly the weights of standard training.
    """
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be an int >= 0, got {seed!r}")
    a, b = np.random.SeedSequence(int(seed)).generate_state(2)
    return int(a), int(b)


def random_layers_seed(seeds: Sequence[int]) -> int:
    """The seed of torch's global generator while a run trains: what its random layers
    (dropout) draw from, which no method generator covers. From the copies' seeds alone, so
    the same seeds give the same masks whatever the generator's state before the call.

    A vectorised path draws one mask for all its copies at once (vmap), so a copy's masks
    are not those of a separate ``fit`` with its seed; the path is reproducible all the same.
    """
    return int(np.random.SeedSequence([*map(int, seeds), _LAYERS_STREAM]).generate_state(1)[0])


_LAYERS_STREAM = 0x1A7E5  # keeps this stream apart from seeds_for's two


def _as_tensor(value, name: str) -> Tensor:
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, np.ndarray):
        return torch.from_numpy(value)
    raise TypeError(f"{name} must be a torch.Tensor or numpy array, got {type(value).__name__}")


def check_data(data, name: str = "data") -> tuple[Tensor, Tensor]:
    """(x, y) tensors with the same first dimension, or a clear error."""
    if not isinstance(data, (tuple, list)) or len(data) != 2:
        hint = ""
        if isinstance(data, torch.utils.data.TensorDataset):
            hint = f"; for a TensorDataset pass its tensors: {name}=ds.tensors"
        elif isinstance(data, torch.utils.data.DataLoader):
            hint = ("; clipkit batches the data itself: pass the whole (x, y), e.g. the "
                    "dataset's tensors, and batch_size=")
        raise TypeError(f"{name} must be a tuple (x, y) of tensors, got "
                        f"{type(data).__name__}{hint}")
    x, y = _as_tensor(data[0], f"{name}[0] (x)"), _as_tensor(data[1], f"{name}[1] (y)")
    if x.dim() < 2:
        raise ValueError(f"{name}: x must have shape (N, *input_shape), got {tuple(x.shape)}")
    if x.shape[0] != y.shape[0]:
        raise ValueError(
            f"{name}: x and y have different lengths: x {tuple(x.shape)}, y {tuple(y.shape)}"
        )
    if x.shape[0] == 0:
        raise ValueError(f"{name} is empty")
    return x, y


def infer_task(y: Tensor, task: str) -> str:
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; accepted: {', '.join(TASKS)}")
    if task == "auto":
        return "regression" if y.is_floating_point() else "classification"
    if task == "classification" and y.is_floating_point():
        raise ValueError("task='classification' needs integer class labels y")
    return task


def sample_loss_fn(task: str) -> Callable[[Tensor, Tensor], Tensor]:
    """Per-sample loss (K, B): squared error Σ_j (f_j − y_j)², or cross-entropy."""
    if task == "regression":
        return lambda out, y: (out - y).pow(2).flatten(2).sum(2)

    def cross_entropy(out: Tensor, y: Tensor) -> Tensor:
        k, b = out.shape[:2]
        return F.cross_entropy(out.flatten(0, 1), y.flatten(0, 1), reduction="none").view(k, b)

    return cross_entropy


def check_optimizer(optimizer: str) -> str:
    """The optimizer's name in lower case ("SGD" is "sgd"), or a ValueError listing them."""
    name = optimizer.lower() if isinstance(optimizer, str) else optimizer
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {optimizer!r}; accepted: {', '.join(OPTIMIZERS)}")
    return name


SGD_MOMENTUM = 0.9  # the authors' setting, and the default of fit's momentum under SGD


def check_momentum(momentum: float | None, optimizer: str) -> float | None:
    """SGD's momentum (None: 0.9); Adam has none, so a momentum given with it is named in a
    warning, not silently dropped, and None is what the run records."""
    if optimizer != "sgd":
        if momentum is not None:
            warnings.warn(f"momentum={momentum!r} has no effect with optimizer={optimizer!r}: "
                          f"it is SGD's setting (optimizer='sgd')", stacklevel=4)
        return None
    return SGD_MOMENTUM if momentum is None else check_number(momentum, "momentum")


def make_optimizer(params, optimizer: str, lr: float,
                   momentum: float | None) -> torch.optim.Optimizer:
    optimizer = check_optimizer(optimizer)
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be a finite number > 0, got {lr!r}")
    if optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=check_momentum(momentum, optimizer))
    return torch.optim.Adam(params, lr=lr)


@dataclass
class TrainSetup:
    """Everything the loop needs besides the model axis."""

    method: Method
    epochs: int
    batch_size: int
    optimizer: str
    lr: float
    momentum: float | None
    task: str
    device: torch.device
    progress: bool
    desc: str = "fit"
    on_epoch: EpochMeasure | None = None
    select: BestEpoch | None = None


def plan_run(
    method: Method | None, data, *, epochs: int, batch_size: int, optimizer: str, lr: float,
    momentum: float | None, device: str | torch.device, task: str, progress: bool | None,
    desc: str,
    on_epoch: EpochMeasure | None = None, select: BestEpoch | None = None,
) -> tuple[TrainSetup, Tensor, Tensor]:
    """Validate what ``fit`` and ``fit_path`` share; return the set-up and the data (x, y)."""
    method = Standard() if method is None else method
    if not isinstance(method, Method):
        raise TypeError(
            f"method must be a clipkit method (ck.CLIP, ck.Standard, ck.WeightDecay, ...), "
            f"got {method!r}"
        )
    x, y = check_data(data)
    task = infer_task(y, task)
    if method.schedule.needs_accuracy and task != "classification":
        raise ValueError(f"{type(method.schedule).__name__} needs a classification task")
    if on_epoch is not None and not callable(on_epoch):
        raise TypeError(f"on_epoch must be a function (models, epoch) -> {{name: values}}, "
                        f"got {on_epoch!r}")
    if select is not None:
        if not isinstance(select, BestEpoch):
            raise TypeError(f"select must be None (keep the last epoch) or a ck.BestEpoch, "
                            f"got {select!r}")
        if select.needs_accuracy and task != "classification":
            raise ValueError("select: BestEpoch with goal_acc needs a classification task")
    setup = TrainSetup(
        method=method,
        epochs=check_int(epochs, "epochs", 1),
        batch_size=check_int(batch_size, "batch_size", 1),
        optimizer=check_optimizer(optimizer),
        lr=check_positive(lr, "lr"),
        momentum=check_momentum(momentum, check_optimizer(optimizer)),
        task=task,
        device=resolve_device(device),
        progress=someone_watches() if progress is None else bool(progress),
        desc=f"{desc} {method.name}",
        on_epoch=on_epoch,
        select=select,
    )
    return setup, x, y


def eager_module(model: nn.Module, method: Method) -> nn.Module:
    """The module inside a ``torch.compile``d model, where ``method.eager_model`` (warned).

    CLIP's step calls the model several times, on the pairs and on the batch with the
    winning pair: compiled, an epoch took longer than eager (on an H100, the defaults 1.21 s
    against 0.86; on 2 CPU cores 1.6–2.7 times as long, after about 30 s of compiling),
    and ``mode="reduce-overhead"`` failed (the step keeps outputs that a later CUDA-graph
    replay overwrites). The wrapper shares the module's parameters, so it is trained too.
    """
    inner = getattr(model, "_orig_mod", None)  # what torch.compile's OptimizedModule wraps
    if not method.eager_model or not isinstance(inner, nn.Module):
        return model
    warnings.warn(
        f"ck.fit trains this torch.compile'd model through the module it wraps: "
        f"{method.name}'s step calls the model several times, and compiled it ran slower "
        f"and failed under mode='reduce-overhead'. The compiled model shares its "
        f"parameters and is trained too; pass the uncompiled model to avoid this warning.",
        UserWarning, stacklevel=3)
    return inner


def warn_if_random_layers(model: nn.Module, copies: int) -> None:
    """Warn where a vectorised path of several copies trains a model with dropout: vmap
    draws the copies' masks together (``random_layers_seed``), so no copy is the ``fit``
    of its seed, as a path otherwise is."""
    drops = [n for n, m in model.named_modules() if isinstance(m, nn.modules.dropout._DropoutNd)]
    if copies < 2 or not drops:
        return
    warnings.warn(
        f"fit_path on a model with dropout ({', '.join(drops)}): the {copies} copies' masks "
        f"are drawn together, so a copy does not train as ck.fit with its seed would (the "
        f"path itself is reproducible: the same seeds give the same path)",
        UserWarning, stacklevel=4)


def warn_if_batch_norm(model: nn.Module, method: Method) -> None:
    """Warn where ``method``'s step evaluates extra inputs (CLIP's pairs) through batch norm
    in training mode: they are normalised with their own batch's statistics, enter the
    running statistics, and a pair's rows beside the batch change the batch's statistics,
    so the quotients are not those of the network that eval mode computes."""
    norms = [n for n, m in model.named_modules()
             if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not method.eager_model or not norms:
        return
    warnings.warn(
        f"{method.name} on a model with batch norm ({', '.join(norms)}): in training mode "
        f"its pairs pass through batch norm with their own batch statistics and update the "
        f"running ones, so its quotients are not those of the eval-mode network, and a "
        f"vectorised path's copies with λ > 0 change the batch statistics of the others. "
        f"A model without batch norm (e.g. ck.models.cnn) avoids this.",
        UserWarning, stacklevel=3)


def check_trainable(model: nn.Module) -> None:
    """A ValueError when ``model`` has nothing to train: no parameters, or all frozen."""
    params = list(model.parameters())
    if not params:
        raise ValueError(f"the model has no parameters to train ({type(model).__name__})")
    if not any(p.requires_grad for p in params):
        raise ValueError("every parameter of the model is frozen (requires_grad=False); "
                         "there is nothing to train")


def place_data(
    setup: TrainSetup, model: nn.Module, x: Tensor, y: Tensor,
    test: tuple[Tensor, Tensor] | None,
) -> tuple[Tensor, Tensor, tuple[Tensor, Tensor] | None]:
    """x, y and test data on the device: inputs in the model's dtype, labels as the task
    needs; a ValueError naming the inputs the model cannot take (``check_model_takes``) or
    labels that do not fit its outputs (regression: the same shape per sample;
    classification: class indices below the number of outputs)."""
    dtype = next(model.parameters()).dtype
    x = x.to(setup.device, dtype)
    out = check_model_takes(model, x, "data[0] (x)")
    y = _labels(y, out, setup.task, "data[1] (y)").to(setup.device)
    if test is not None:
        tx, ty = check_data(test, "test")
        tx = tx.to(setup.device, dtype)
        check_model_takes(model, tx, "test[0] (x)")
        test = (tx, _labels(ty, out, setup.task, "test[1] (y)").to(setup.device, y.dtype))
    return x, y, test


def _labels(y: Tensor, out: Tensor, task: str, name: str) -> Tensor:
    """Labels checked against the model's output ``out`` on one sample (see ``place_data``).

    All labels are checked here, once, so the training loop needs no check of its own."""
    if task == "regression":
        if tuple(y.shape[1:]) != tuple(out.shape[1:]):
            raise ValueError(
                f"{name}: regression targets of shape {tuple(y.shape)} do not match the model's "
                f"output {tuple(out.shape[1:])} per sample (e.g. y.reshape(-1, 1) for one output)")
        return y.to(out.dtype)
    if out.dim() != 2:
        raise ValueError(f"classification needs logits of shape (batch, classes), got "
                         f"{tuple(out.shape[1:])} per sample")
    return check_class_labels(y, out.shape[1], name)
