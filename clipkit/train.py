"""One training loop for every method, regression and classification.

The loop runs on a model axis K: ``fit`` trains one ``nn.Module`` (K = 1);
``fit_path`` (clipkit.path) trains K copies with vmap through the same loop. Each
copy has its own λ, its own generators (data order; the method's random draws) and,
since torch's SGD and Adam act elementwise, its own optimizer state in effect.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
import xarray as xr
from torch import nn

from .models import _seeded
from .regularizers import Method, Run, Standard, Step

__all__ = [
    "NonFiniteLossError", "TrainSetup", "fit", "place_data", "plan_run", "resolve_device",
    "train_loop",
]

Tensor = torch.Tensor
OPTIMIZERS = ("sgd", "adam")
TASKS = ("auto", "regression", "classification")


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite; ``history`` holds the finished epochs."""

    def __init__(self, message: str, epoch: int, step: int, history: xr.Dataset | None):
        super().__init__(message)
        self.epoch, self.step, self.history = epoch, step, history


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """"auto" → the GPU when there is one, else the CPU; otherwise ``torch.device(device)``."""
    if isinstance(device, str) and device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"unknown device {device!r}; accepted: 'auto', 'cpu', 'cuda[:i]'") from exc


def seeds_for(seed: int) -> tuple[int, int]:
    """Independent seeds for the data order and the method's draws, from one seed.

    Separate streams keep the data order the same whatever the method draws, so that
    CLIP with λ = 0 gives exactly the weights of standard training.
    """
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be an int >= 0, got {seed!r}")
    a, b = np.random.SeedSequence(int(seed)).generate_state(2)
    return int(a), int(b)


def _as_tensor(value, name: str) -> Tensor:
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, np.ndarray):
        return torch.from_numpy(value)
    raise TypeError(f"{name} must be a torch.Tensor or numpy array, got {type(value).__name__}")


def check_data(data, name: str = "data") -> tuple[Tensor, Tensor]:
    """(x, y) tensors with the same first dimension, or a clear error."""
    if not isinstance(data, (tuple, list)) or len(data) != 2:
        raise TypeError(f"{name} must be a tuple (x, y) of tensors, got {type(data).__name__}")
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


def make_optimizer(params, optimizer: str, lr: float, momentum: float) -> torch.optim.Optimizer:
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {optimizer!r}; accepted: {', '.join(OPTIMIZERS)}")
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be a finite number > 0, got {lr!r}")
    if optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum)
    return torch.optim.Adam(params, lr=lr)


def _positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    return int(value)


@dataclass
class TrainSetup:
    """Everything the loop needs besides the model axis."""

    method: Method
    epochs: int
    batch_size: int
    optimizer: str
    lr: float
    momentum: float
    task: str
    device: torch.device
    progress: bool
    desc: str = "fit"


def _evaluate(forward, x: Tensor, y: Tensor, k: int, loss_fn, task: str, chunk: int = 2048):
    """Mean loss and accuracy per copy on (x, y), no grad."""
    total = torch.zeros(k, dtype=torch.float64, device=x.device)
    correct = torch.zeros(k, dtype=torch.float64, device=x.device)
    with torch.no_grad():
        for s in range(0, x.shape[0], chunk):
            xb = x[s : s + chunk].unsqueeze(0).expand(k, *x[s : s + chunk].shape)
            yb = y[s : s + chunk].unsqueeze(0).expand(k, *y[s : s + chunk].shape)
            out = forward(xb)
            total += loss_fn(out, yb).double().sum(1)
            if task == "classification":
                correct += (out.argmax(-1) == yb).double().sum(1)
    n = x.shape[0]
    return total / n, (correct / n if task == "classification" else None)


def train_loop(
    *,
    forward: Callable[[Tensor], Tensor],
    opt_params: Sequence[Tensor],
    param_dict: Callable[[], dict[str, Tensor]],
    set_mode: Callable[[bool], None],
    x: Tensor,
    y: Tensor,
    test: tuple[Tensor, Tensor] | None,
    lam: Tensor,
    seeds: Sequence[int],
    setup: TrainSetup,
    describe: Callable[[int], str],
) -> dict[str, np.ndarray]:
    """Train K copies; return per-epoch history arrays of shape (K, epochs).

    Each step: (1) the method's work with θ fixed (CLIP: ascent on the pairs);
    (2) the descent step on mean loss + λ·R(θ). Raises NonFiniteLossError (with the
    finished epochs' history) when a copy's objective is NaN or infinite.
    """
    from tqdm.auto import tqdm

    method, task, device = setup.method, setup.task, setup.device
    k, n = len(seeds), x.shape[0]
    loss_fn = sample_loss_fn(task)
    data_gens, method_gens = [], []
    for s in seeds:
        a, b = seeds_for(s)
        data_gens.append(torch.Generator().manual_seed(a))
        method_gens.append(torch.Generator().manual_seed(b))
    run = Run(forward, param_dict, x, y, loss_fn, method_gens, device, x.dtype)
    opt = make_optimizer(opt_params, setup.optimizer, setup.lr, setup.momentum)
    run.state = method.start(run)

    batch = min(setup.batch_size, n)
    steps_per_epoch = math.ceil(n / batch)
    hist: dict[str, list[np.ndarray]] = {}
    t0 = time.perf_counter()
    lam_e, acc_prev = None, None

    def put(name: str, value: Tensor | float) -> None:
        if not isinstance(value, torch.Tensor):
            value = torch.full((k,), float(value))
        hist.setdefault(name, []).append(value.detach().double().cpu().numpy())

    def history() -> dict[str, np.ndarray]:
        return {key: np.stack(v, axis=1) for key, v in hist.items()}

    bar = tqdm(range(setup.epochs), desc=setup.desc, disable=not setup.progress, leave=False)
    for epoch in bar:
        lam_e = method.schedule(epoch, lam, lam_e, acc_prev).to(device=device, dtype=x.dtype)
        run.lam_nonzero = bool((lam_e != 0).any())
        perm = torch.stack([torch.randperm(n, generator=g) for g in data_gens]).to(device)
        sums = {"loss": 0.0, "penalty": 0.0, "acc": 0.0}
        metric_sums: dict[str, Tensor] = {}
        set_mode(True)
        for s in range(steps_per_epoch):
            idx = perm[:, s * batch : (s + 1) * batch]
            xb, yb = x[idx], y[idx]
            method.before_step(run, lam_e)
            xin = method.inputs(run, xb, yb)
            if method.input_grad:
                xin = xin.detach().requires_grad_(True)
            extra = method.extra_inputs(run)
            if extra is None:
                out, extra_out = forward(xin), None
            else:
                both = forward(torch.cat([xin, extra], dim=1))
                out, extra_out = both[:, : xin.shape[1]], both[:, xin.shape[1] :]
            if run.step == 0:
                _check_output(out, yb, task)
            sl = loss_fn(out, yb)
            data_loss = sl.mean(1)
            reg, metrics = method.penalty(run, Step(xin, yb, out, sl, lam_e, extra_out))
            objective = data_loss if reg is None else data_loss + lam_e * reg
            finite = torch.isfinite(objective)
            if not bool(finite.all()):
                bad = int((~finite).nonzero()[0, 0])
                raise NonFiniteLossError(
                    f"non-finite objective {objective[bad].item()} at epoch {epoch}, step {s} "
                    f"({describe(bad)}); lower the learning rate or λ. The history of the "
                    "finished epochs is in .history",
                    epoch, s, history() if hist else None,
                )
            opt.zero_grad(set_to_none=True)
            objective.sum().backward()
            opt.step()
            run.step += 1
            w = idx.shape[1] / n
            sums["loss"] = sums["loss"] + data_loss.detach() * w
            if reg is not None:
                sums["penalty"] = sums["penalty"] + reg.detach() * w
            if task == "classification":
                sums["acc"] = sums["acc"] + (out.argmax(-1) == yb).double().mean(1).detach() * w
            for key, val in metrics.items():
                metric_sums[key] = metric_sums.get(key, 0.0) + val.detach() * w
        set_mode(False)
        put("loss", sums["loss"])
        put("penalty", sums["penalty"] if reg is not None else float("nan"))
        put("lam_epoch", lam_e)
        if task == "classification":
            acc_prev = sums["acc"]
            put("acc", sums["acc"])
        for key, val in metric_sums.items():
            put(key, val)
        if test is not None:
            tl, ta = _evaluate(forward, test[0], test[1], k, loss_fn, task)
            put("test_loss", tl)
            if ta is not None:
                put("test_acc", ta)
        put("time", time.perf_counter() - t0)
        if setup.progress:
            bar.set_postfix(loss=float(hist["loss"][-1].mean()))
    return history()


def _check_output(out: Tensor, y: Tensor, task: str) -> None:
    if task == "regression":
        if out.shape != y.shape:
            raise ValueError(
                f"model output shape {tuple(out.shape[2:])} does not match the labels' shape "
                f"{tuple(y.shape[2:])} (per sample); for regression they must be equal"
            )
    else:
        if out.dim() != 3:
            raise ValueError(
                f"classification needs logits of shape (batch, classes), got {tuple(out.shape[1:])}"
            )
        c = out.shape[-1]
        if bool((y < 0).any()) or bool((y >= c).any()):
            raise ValueError(f"class labels must lie in [0, {c}) for a model with {c} outputs")


def provenance(device: torch.device, config: dict, wall_time: float, status: str) -> dict:
    """The run's provenance attrs (clipkit.results' schema)."""
    from .results import provenance as run_provenance

    return run_provenance(config, device=str(device), wall_time=wall_time, status=status)


DESCRIPTIONS = {
    "loss": "mean training loss (data term) over the epoch",
    "penalty": "mean penalty R(θ) over the epoch (CLIP: Lip_X^p)",
    "lam_epoch": "λ used in the epoch (the schedule applied to the base λ)",
    "lip": "CLIP estimate Lip_X: the largest pair quotient at each step's θ, mean over the "
           "epoch's steps",
    "skipped": "fraction of the epoch's steps whose penalty was skipped (CLIP skip_above)",
    "acc": "training accuracy over the epoch's batches",
    "test_loss": "test loss at the end of the epoch",
    "test_acc": "test accuracy at the end of the epoch",
    "time": "seconds since the start of training",
}


def history_dataset(arrays: dict[str, np.ndarray], lead_dims: dict[str, Sequence]) -> xr.Dataset:
    """Arrays (K, E) → a Dataset over (*lead_dims, epoch); K = product of the lead sizes."""
    dims = [*lead_dims, "epoch"]
    shape = [len(v) for v in lead_dims.values()]
    data = {}
    for name, arr in arrays.items():
        value = arr.reshape(*shape, arr.shape[-1])
        data[name] = xr.Variable(dims, value, attrs={"description": DESCRIPTIONS.get(name, name)})
    n_epochs = next(iter(arrays.values())).shape[-1] if arrays else 0
    coords = {name: list(values) for name, values in lead_dims.items()}
    coords["epoch"] = np.arange(1, n_epochs + 1)
    return xr.Dataset(data, coords=coords)


def plan_run(
    method: Method | None, data, *, epochs: int, batch_size: int, optimizer: str, lr: float,
    momentum: float, device: str | torch.device, task: str, progress: bool, desc: str,
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
    setup = TrainSetup(
        method=method,
        epochs=_positive_int(epochs, "epochs"),
        batch_size=_positive_int(batch_size, "batch_size"),
        optimizer=optimizer,
        lr=lr,
        momentum=momentum,
        task=task,
        device=resolve_device(device),
        progress=bool(progress),
        desc=f"{desc} {method.name}",
    )
    return setup, x, y


def place_data(
    setup: TrainSetup, dtype: torch.dtype, x: Tensor, y: Tensor,
    test: tuple[Tensor, Tensor] | None,
) -> tuple[Tensor, Tensor, tuple[Tensor, Tensor] | None]:
    """x, y and test data on the device: inputs in the model's dtype, labels as the task needs."""
    x = x.to(setup.device, dtype)
    y = y.to(setup.device, dtype if setup.task == "regression" else torch.long)
    if test is not None:
        tx, ty = check_data(test, "test")
        test = (tx.to(setup.device, dtype), ty.to(setup.device, y.dtype))
    return x, y, test


def fit(
    model: nn.Module,
    data: tuple[Tensor, Tensor],
    method: Method | None = None,
    *,
    epochs: int = 10,
    batch_size: int = 128,
    optimizer: str = "adam",
    lr: float = 1e-3,
    momentum: float = 0.9,
    seed: int = 0,
    device: str | torch.device = "auto",
    test: tuple[Tensor, Tensor] | None = None,
    task: str = "auto",
    progress: bool = True,
) -> xr.Dataset:
    """Train ``model`` in place on ``data = (x, y)`` with ``method``; return the history.

    Minimises mean ℓ(f(x_i), y_i) + λ·R(θ) (squared loss for float y, cross-entropy for
    integer class labels). ``seed`` fixes the data order and the method's random draws
    (the model's initialisation is the caller's: build it with ``seed=`` or after
    ``torch.manual_seed``). Returns an ``xarray.Dataset`` over ``epoch``.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    setup, x, y = plan_run(
        method, data, epochs=epochs, batch_size=batch_size, optimizer=optimizer, lr=lr,
        momentum=momentum, device=device, task=task, progress=progress, desc="fit",
    )
    method, task = setup.method, setup.task
    with _seeded(seeds_for(seed)[1]):  # a method's own random set-up (spectral norm's u)
        model = method.prepare(model).to(setup.device)
    dtype = next(model.parameters()).dtype
    x, y, test = place_data(setup, dtype, x, y, test)

    def forward(xk: Tensor) -> Tensor:
        out = model(xk.reshape(-1, *xk.shape[2:]))
        return out.view(xk.shape[0], xk.shape[1], *out.shape[1:])

    def param_dict() -> dict[str, Tensor]:
        return {name: p.unsqueeze(0) for name, p in model.named_parameters()}

    lam = torch.tensor([method.lam], dtype=dtype, device=setup.device)
    config = {
        **method.config(), "epochs": setup.epochs, "batch_size": setup.batch_size,
        "optimizer": optimizer, "lr": lr, "momentum": momentum, "seed": seed, "task": task,
        "n_train": int(x.shape[0]),
    }
    t0 = time.perf_counter()
    try:
        arrays = train_loop(
            forward=forward, opt_params=list(model.parameters()), param_dict=param_dict,
            set_mode=model.train, x=x, y=y, test=test, lam=lam, seeds=[seed], setup=setup,
            describe=lambda k: f"{method.name}, lam={method.lam}, seed={seed}",
        )
    except NonFiniteLossError as exc:
        if exc.history is not None:
            exc.history = history_dataset({k: v[0] for k, v in exc.history.items()}, {})
            exc.history.attrs.update(
                provenance(setup.device, config, time.perf_counter() - t0, "failed")
            )
        model.eval()
        raise
    model.eval()
    ds = history_dataset({k: v[0] for k, v in arrays.items()}, {})
    ds.attrs.update(provenance(setup.device, config, time.perf_counter() - t0, "done"))
    ds.attrs["method"] = method.name
    return ds
