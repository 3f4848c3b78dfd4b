"""ck.fit: train one model in place with any method; return its history."""

from __future__ import annotations

import time

import torch
import xarray as xr
from torch import Tensor, nn

from clipkit.core.affine_first import split_module
from clipkit.core.provenance import provenance
from clipkit.core.utils import device_dtype, seeded, stacked
from clipkit.train.history import history_dataset
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
    momentum: float = 0.9,
    seed: int = 0,
    device: str | torch.device = "auto",
    test: tuple[Tensor, Tensor] | None = None,
    task: str = "auto",
    progress: bool = True,
    on_epoch: EpochMeasure | None = None,
    select: BestEpoch | None = None,
) -> xr.Dataset:
    """Train ``model`` in place on ``data = (x, y)`` with ``method``; return the history.

    Minimises mean ℓ(f(x_i), y_i) + λ·R(θ) (squared loss for float y, cross-entropy for
    integer class labels). ``seed`` fixes the data order and the method's random draws
    (the model's initialisation is the caller's: build it with ``seed=`` or after
    ``torch.manual_seed``). Returns an ``xarray.Dataset`` over ``epoch``.

    ``on_epoch(models, epoch) -> {name: values}`` measures the model after each epoch into
    the history; ``select`` (``ck.BestEpoch``) leaves the model with the weights of its
    best-scoring epoch instead of the last (``clipkit.train.selection``).

    ``device``: "auto" trains on the GPU where torch sees one, else on the CPU. The model
    goes back to the device it came on when training ends (or fails), so a notebook's
    next cell can call it on its CPU data on any machine, as it can the models that
    ``fit_path`` returns.

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
    model = eager_module(model, method)
    origin = device_dtype(model)[0]
    with seeded(seeds_for(seed)[1]):  # a method's own random set-up (spectral norm's u)
        model = method.prepare(model).to(setup.device)
    try:
        check_trainable(model)
        dtype = next(model.parameters()).dtype
        x, y, test = place_data(setup, model, x, y, test)

        forward = stacked(model)

        def param_dict() -> dict[str, Tensor]:
            return {name: p.unsqueeze(0) for name, p in model.named_parameters()}

        lam = torch.tensor([method.lam], dtype=dtype, device=setup.device)
        config = {
            **method.config(), "epochs": setup.epochs, "batch_size": setup.batch_size,
            "optimizer": optimizer, "lr": setup.lr, "momentum": setup.momentum, "seed": seed,
            "task": task,
            "n_train": int(x.shape[0]),
            **({"select": select.config()} if select is not None else {}),
        }
        t0 = time.perf_counter()
        try:
            arrays = train_loop(
                forward=forward, opt_params=list(model.parameters()), param_dict=param_dict,
                set_mode=model.train, x=x, y=y, test=test, lam=lam, seeds=[seed], setup=setup,
                describe=lambda k: f"{method.name}, lam={method.lam}, seed={seed}",
                copies=lambda: [model], affine_first=split_module(model),
            )
        except NonFiniteLossError as exc:
            if exc.history is not None:
                exc.history = history_dataset({k: v[0] for k, v in exc.history.items()}, {})
                exc.history.attrs.update(
                    provenance(config, device=str(setup.device),
                               wall_time=time.perf_counter() - t0, status="failed")
                )
            model.eval()
            raise
        model.eval()
        ds = history_dataset({k: v[0] for k, v in arrays.items()}, {})
        ds.attrs.update(provenance(config, device=str(setup.device),
                                   wall_time=time.perf_counter() - t0, status="done"))
        ds.attrs["method"] = method.name
        return ds
    finally:
        model.to(origin)  # back where it came from, also after a failure
