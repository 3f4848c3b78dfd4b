"""ck.fit: train one model in place with any method; return its history."""

from __future__ import annotations

import time

import torch
import xarray as xr
from torch import Tensor, nn

from clipkit.core.affine_first import split_module
from clipkit.core.provenance import provenance
from clipkit.core.utils import check_choice, device_dtype, seeded, stacked
from clipkit.train.history import DIVERGED, history_dataset
from clipkit.train.loop import train_loop
from clipkit.train.protocol import Method
from clipkit.train.selection import BestEpoch, EpochMeasure
from clipkit.train.setup import (
    NonFiniteLossError,
    check_trainable,
    eager_module,
    place_data,
    plan_run,
    seeds_for,
    warn_if_batch_norm,
)


def fit(
    model: nn.Module,
    data: tuple[Tensor, Tensor],
    method: Method | None = None,
    *,
    epochs: int = 10,
    batch_size: int = 128,
    optimizer: str = "adam",
    lr: float = 1e-3,
    momentum: float | None = None,
    seed: int = 0,
    device: str | torch.device = "auto",
    test: tuple[Tensor, Tensor] | None = None,
    task: str = "auto",
    progress: bool | None = None,
    on_epoch: EpochMeasure | None = None,
    select: BestEpoch | None = None,
    on_nonfinite: str = "raise",
) -> xr.Dataset:
    """Train ``model`` in place on ``data = (x, y)`` with ``method``; return the history.

    Minimises mean ℓ(f(x_i), y_i) + λ·R(θ) (squared loss for float y, cross-entropy for
    integer class labels). ``seed`` fixes the data order and the method's random draws
    (the model's initialisation is the caller's: build it with ``seed=`` or after
    ``torch.manual_seed``). Returns an ``xarray.Dataset`` over ``epoch``.

    ``on_epoch(models, epoch) -> {name: values}`` measures the model after each epoch into
    the history; ``select`` (``ck.BestEpoch``) leaves the model with the weights of its
    best-scoring epoch instead of the last (``clipkit.train.selection``).

    ``optimizer``: "adam" (``lr``) or "sgd" (``lr``, ``momentum``; None: 0.9, the
    authors'). A momentum given with Adam, which has none, is named in a warning.

    ``progress``: a tqdm bar over the epochs; None shows it where someone watches (a Jupyter
    kernel, or a terminal) and not in a script's log file.

    ``device``: "auto" trains on the GPU where torch sees one, else on the CPU. The model
    goes back to the device it came on when training ends (or fails), so a notebook's
    next cell can call it on its CPU data on any machine, as it can the models that
    ``fit_path`` returns.

    ``on_nonfinite``: when the objective becomes NaN or infinite (a λ or learning rate too
    large), ``"raise"`` stops with a NonFiniteLossError (the finished epochs' history in its
    ``.history``); ``"record"`` stops training and returns the history with NaN from the
    epoch of divergence and ``diverged`` (that epoch; 0: trained to the end), and leaves the
    model's parameters NaN, so that nothing is evaluated on a network that did not train.

    A ``torch.compile``d model is trained as it is, except with CLIP, whose step runs
    slower compiled (and fails under ``mode="reduce-overhead"``): then the module it
    wraps is trained eagerly, with a warning (the two share their parameters).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    setup, x, y = plan_run(
        method, data, epochs=epochs, batch_size=batch_size, optimizer=optimizer, lr=lr,
        momentum=momentum, device=device, task=task, progress=progress, desc="fit",
        on_epoch=on_epoch, select=select,
    )
    method, task = setup.method, setup.task
    check_choice(on_nonfinite, "fit: on_nonfinite", ("raise", "record"))
    model = eager_module(model, method)
    origin = device_dtype(model)[0]
    with seeded(seeds_for(seed)[1]):  # a method's own random set-up (spectral norm's u)
        model = method.prepare(model).to(setup.device)
    try:
        check_trainable(model)
        warn_if_batch_norm(model, method)
        dtype = next(model.parameters()).dtype
        x, y, test = place_data(setup, model, x, y, test)

        forward = stacked(model)

        def param_dict() -> dict[str, Tensor]:
            return {name: p.unsqueeze(0) for name, p in model.named_parameters()}

        lam = torch.tensor([method.lam], dtype=dtype, device=setup.device)
        config = {
            **method.config(), "epochs": setup.epochs, "batch_size": setup.batch_size,
            "optimizer": setup.optimizer, "lr": setup.lr, "momentum": setup.momentum, "seed": seed,
            "task": task,
            "n_train": int(x.shape[0]), "on_nonfinite": on_nonfinite,
            **({"select": select.config()} if select is not None else {}),
        }
        t0 = time.perf_counter()
        try:
            arrays = train_loop(
                forward=forward, opt_params=list(model.parameters()), param_dict=param_dict,
                set_mode=model.train, x=x, y=y, test=test, lam=lam, seeds=[seed], setup=setup,
                describe=lambda k: f"{method.name}, lam={method.lam}, seed={seed}",
                copies=lambda: [model], affine_first=split_module(model),
                record_nonfinite=on_nonfinite == "record",
            )
        except NonFiniteLossError as exc:
            exc.args = (f"{exc.args[0]}. fit(..., on_nonfinite='record') returns the history "
                        "with the divergence recorded instead",)
            if exc.history is not None:
                exc.history = history_dataset({k: v[0] for k, v in exc.history.items()}, {})
                exc.history.attrs.update(
                    provenance(config, device=str(setup.device),
                               wall_time=time.perf_counter() - t0, status="failed")
                )
            model.eval()
            raise
        model.eval()
        diverged = int(arrays.pop("diverged", [0])[0])
        ds = history_dataset({k: v[0] for k, v in arrays.items()}, {})
        if on_nonfinite == "record":
            ds["diverged"] = xr.Variable((), diverged, attrs={"description": DIVERGED})
            if diverged:
                with torch.no_grad():
                    for p in model.parameters():
                        p.fill_(float("nan"))  # no trained parameters to report
        ds.attrs.update(provenance(config, device=str(setup.device),
                                   wall_time=time.perf_counter() - t0,
                                   status="failed" if diverged else "done"))
        ds.attrs["method"] = method.name
        return ds
    finally:
        model.to(origin)  # back where it came from, also after a failure
