"""Train a whole λ-path at once: K = |λ| × |seed| copies in one vectorised run.

The copies' parameters are stacked along a model axis; one forward is
``vmap(functional_call)`` over that axis, and the same loop as ``ck.fit`` trains them.
Each copy keeps its own λ, its own generators (data order, the method's draws) and, since
SGD and Adam act elementwise, its own optimizer state in effect. So a path equals K
separate ``fit`` calls (tested), at the cost of one.
"""

from __future__ import annotations

import itertools
import time
import warnings
from collections.abc import Callable, Sequence

import numpy as np
import torch
import xarray as xr
from torch import Tensor, nn
from torch.func import functional_call, vmap

from clipkit.core.affine_first import split_stacked
from clipkit.core.models import without_final_squash
from clipkit.core.provenance import provenance
from clipkit.core.utils import check_choice, check_int, seeded
from clipkit.train.history import DIVERGED, history_dataset
from clipkit.train.loop import train_loop
from clipkit.train.protocol import Method
from clipkit.train.schedules import check_lam
from clipkit.train.selection import BestEpoch, EpochMeasure
from clipkit.train.setup import (
    NonFiniteLossError,
    TrainSetup,
    check_trainable,
    place_data,
    plan_run,
    seeds_for,
    warn_if_batch_norm,
    warn_if_random_layers,
)

__all__ = ["CopyView", "fit_path", "init_copy", "model_at"]


def init_copy(model_fn: Callable[[], nn.Module], seed: int) -> nn.Module:
    """The copy that ``fit_path`` trains for ``seed``: ``model_fn()`` after ``manual_seed(seed)``.

    ``ck.fit(init_copy(model_fn, s), data, seed=s, ...)`` is the one-model run that the
    path's copy (λ, s) equals up to rounding (batched kernels sum in another order: about
    1e-7 relative after an epoch, 1e-6 after three), not bit for bit.
    """
    with seeded(seed):
        model = model_fn()
    if not isinstance(model, nn.Module):
        raise TypeError(f"model_fn must return a torch.nn.Module, got {type(model).__name__}")
    return model


def _as_list(value, name: str) -> list:
    if isinstance(value, torch.Tensor) and value.ndim == 1:
        values = value.tolist()
    elif isinstance(value, (list, tuple, range, np.ndarray)):
        values = list(value)
    else:
        values = [value]
    if not values:
        raise ValueError(f"fit_path: {name} must not be empty")
    if len(set(values)) != len(values):
        raise ValueError(f"fit_path: {name} has repeated values {values}")
    return values


def _as_numpy(t: Tensor) -> np.ndarray:
    """A tensor's values as a numpy array; bfloat16 (which numpy lacks) as float32, exactly."""
    t = t.detach().cpu()
    return (t.float() if t.dtype == torch.bfloat16 else t).numpy()


def _param_name(name: str) -> str:
    return "param_" + name.replace(".", "_")


def _buffer_name(name: str) -> str:
    return "buffer_" + name.replace(".", "_")


def fit_path(
    model_fn: Callable[[], nn.Module],
    data: tuple[Tensor, Tensor],
    method: Method | None = None,
    *,
    lam: float | Sequence[float] | None = None,
    seed: int | Sequence[int] = 0,
    epochs: int = 10,
    batch_size: int = 128,
    optimizer: str = "adam",
    lr: float = 1e-3,
    momentum: float | None = None,
    device: str | torch.device = "auto",
    test: tuple[Tensor, Tensor] | None = None,
    task: str = "auto",
    max_models: int | None = None,
    progress: bool | None = None,
    on_epoch: EpochMeasure | None = None,
    select: BestEpoch | None = None,
    on_nonfinite: str = "raise",
) -> xr.Dataset:
    """Train one copy of ``model_fn()`` per (λ, seed), vectorised; return one Dataset.

    The result has dims (lam, seed, epoch) for the history, and the trained parameters
    as variables ``param_<name>`` over (lam, seed, …) (see :func:`model_at`).
    ``max_models`` splits the K copies into chunks trained one after another (memory).
    ``on_epoch``, ``select`` and ``progress`` as in ``ck.fit``: the measure gets the
    chunk's copies as modules, and with a selection the stored parameters are each copy's
    kept epoch's.

    ``on_nonfinite``: when a copy's objective becomes NaN or infinite (a λ too large for
    the learning rate, say), ``"raise"`` stops the whole path with a NonFiniteLossError;
    ``"record"`` freezes that copy (at the last parameters whose objective was finite, which
    ``on_epoch`` measures go on seeing) and trains the others on, exactly as without it.
    The result has the copy's history NaN from the epoch of divergence and its parameters
    NaN; ``diverged`` (lam, seed) holds that epoch (0: trained to the end), the attr
    ``diverged_copies`` lists them, and :func:`model_at` refuses them by name.
    """
    if isinstance(model_fn, nn.Module) or not callable(model_fn):
        raise TypeError(
            f"fit_path: model_fn must be a function that builds a fresh model, e.g. "
            f"lambda: ck.models.mlp([1, 64, 1]) (one copy is built per seed), got "
            f"{type(model_fn).__name__}")
    setup, x, y = plan_run(
        method, data, epochs=epochs, batch_size=batch_size, optimizer=optimizer, lr=lr,
        momentum=momentum, device=device, task=task, progress=progress, desc="fit_path",
        on_epoch=on_epoch, select=select,
    )
    method, task = setup.method, setup.task
    if not method.vectorizable:
        raise ValueError(
            f"{method.name} cannot be trained as a vectorised path (it changes the model's "
            "parametrization); train each λ with ck.fit"
        )
    lams = [check_lam(v, "fit_path: lam") for v in _as_list(method.lam if lam is None else lam,
                                                             "lam")]
    if not method.takes_lambda and any(v != 0 for v in lams):
        raise ValueError(
            f"fit_path: lam={lams}, but {method.name} has no penalty weight, so every copy "
            f"would train alike; leave lam out, or choose a method with one (e.g. ck.CLIP, "
            f"ck.WeightDecay)")
    raw_seeds = _as_list(seed, "seed")
    for s in raw_seeds:
        try:
            seeds_for(s)
        except ValueError:
            raise ValueError(f"fit_path: seed must be an int >= 0 or a list of them, got "
                             f"{seed!r}") from None
    seeds = [int(s) for s in raw_seeds]
    if max_models is not None:
        max_models = check_int(max_models, "max_models", 1)
    check_choice(on_nonfinite, "fit_path: on_nonfinite", ("raise", "record"))
    copies = list(itertools.product(lams, seeds))
    chunk = max_models or len(copies)
    t0 = time.perf_counter()
    arrays: dict[str, list[np.ndarray]] = {}
    params: dict[str, list[np.ndarray]] = {}
    for start in range(0, len(copies), chunk):
        part = copies[start : start + chunk]
        hist, trained, labels = _train_chunk(model_fn, part, x, y, test, setup, on_nonfinite)
        for key, value in hist.items():
            arrays.setdefault(key, []).append(value)
        for key, value in trained.items():
            params.setdefault(key, []).append(value)
    merged = {key: np.concatenate(v, axis=0) for key, v in arrays.items()}
    diverged = merged.pop("diverged", None)
    ds = history_dataset(merged, {"lam": lams, "seed": seeds})
    if diverged is not None:
        ds["diverged"] = xr.Variable(
            ("lam", "seed"), diverged.reshape(len(lams), len(seeds)),
            attrs={"description": DIVERGED})
    for var, parts in params.items():
        value = np.concatenate(parts, axis=0)
        value = value.reshape(len(lams), len(seeds), *value.shape[1:])
        dims = ["lam", "seed", *[f"{var}_dim{i}" for i in range(value.ndim - 2)]]
        ds[var] = xr.Variable(dims, value, attrs=labels[var])
    config = {
        **method.config(), "lam": lams, "seed": seeds, "epochs": setup.epochs,
        "batch_size": setup.batch_size, "optimizer": setup.optimizer, "lr": setup.lr,
        "momentum": setup.momentum, "task": task, "n_train": int(x.shape[0]),
        "max_models": max_models, "on_nonfinite": on_nonfinite,
        **({"select": select.config()} if select is not None else {}),
    }
    ds.attrs.update(provenance(config, device=str(setup.device),
                               wall_time=time.perf_counter() - t0, status="done"))
    if diverged is not None and (diverged > 0).any():
        ds.attrs["diverged_copies"] = "; ".join(
            f"lam={lv:g}, seed={sv}: epoch {e}"
            for (lv, sv), e in zip(copies, diverged.tolist(), strict=True) if e > 0)
    ds.attrs["method"] = method.name
    return ds


def _train_chunk(model_fn, copies, x, y, test, setup: TrainSetup, on_nonfinite: str):
    device = setup.device
    models = [init_copy(model_fn, s).to(device) for _, s in copies]
    _warn_if_seeds_alike(models, [s for _, s in copies])
    template = models[0]
    check_trainable(template)
    warn_if_batch_norm(template, setup.method)
    warn_if_random_layers(template, len(copies))
    dtype = next(template.parameters()).dtype
    names = [n for n, _ in template.named_parameters()]
    params = {
        n: torch.stack([dict(m.named_parameters())[n].detach() for m in models]).requires_grad_()
        for n in names
    }
    buffers = {
        n: torch.stack([dict(m.named_buffers())[n] for m in models])
        for n, _ in template.named_buffers()
    }

    def one(p, b, xi):
        return functional_call(template, (p, b), (xi,))

    batched = vmap(one, in_dims=(0, 0, 0), randomness="different")

    def forward(xk: Tensor) -> Tensor:
        return batched(params, buffers, xk)

    def modules() -> list[nn.Module]:
        return [CopyView(template, params, buffers, i) for i in range(len(copies))]

    xd, yd, testd = place_data(setup, template, x, y, test)
    lam = torch.tensor([c[0] for c in copies], dtype=dtype, device=device)
    try:
        hist = train_loop(
            forward=forward, opt_params=list(params.values()), param_dict=lambda: params,
            set_mode=template.train, x=xd, y=yd, test=testd, lam=lam,
            seeds=[c[1] for c in copies], setup=setup,
            describe=lambda k: f"{setup.method.name}, lam={copies[k][0]}, seed={copies[k][1]}",
            copies=modules, affine_first=split_stacked(template, params, buffers),
            record_nonfinite=on_nonfinite == "record",
        )
    except NonFiniteLossError as exc:
        exc.history = None  # a path has no single history; the message names the copy
        exc.args = (f"{exc.args[0]}. fit_path(..., on_nonfinite='record') trains the other "
                    "copies on and records this one as diverged",)
        raise
    template.eval()
    trained = {_param_name(n): _as_numpy(p) for n, p in params.items()}
    # the copies' buffers too: batch norm's running statistics are what eval mode uses
    trained.update({_buffer_name(n): _as_numpy(b) for n, b in buffers.items()})
    labels = {**{_param_name(n): {"parameter": n} for n in params},
              **{_buffer_name(n): {"buffer": n} for n in buffers}}
    if "diverged" in hist:
        for arr in trained.values():
            if arr.dtype.kind == "f":
                arr[hist["diverged"] > 0] = np.nan  # no trained parameters to report
    return hist, trained, labels


def _warn_if_seeds_alike(models: list[nn.Module], seeds: list[int]) -> None:
    """Warn where two seeds' copies start from the same weights: a ``model_fn`` that seeds
    itself (``ck.models.mlp(..., seed=0)``) undoes the seeding that fit_path does for it."""
    first = {}
    for model, seed in zip(models, seeds, strict=True):
        first.setdefault(seed, model)
    if len(first) < 2:
        return
    (s0, a), (s1, b) = list(first.items())[:2]
    if all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True)):
        warnings.warn(f"fit_path: the copies of seed {s0} and seed {s1} start from the same "
                      f"weights: model_fn seeds its model itself (e.g. ck.models.mlp(..., "
                      f"seed=0)); leave the seed out, fit_path seeds each copy", stacklevel=4)


class CopyView(nn.Module):
    """Copy ``k`` of a path's stacked parameters as a module (read-only, detached).

    ``forward`` is ``functional_call`` of the template with that copy's parameters and
    buffers; the template (a submodule) carries the train/eval flags, which the view
    takes from it when made.
    """

    def __init__(self, template: nn.Module, params: dict[str, Tensor],
                 buffers: dict[str, Tensor], k: int | None):
        super().__init__()
        self.template = template
        # k None: params and buffers are this copy's already (``logits_part``)
        self._params = {n: (p if k is None else p[k]).detach() for n, p in params.items()}
        self._buffers_k = {n: b if k is None else b[k] for n, b in buffers.items()}
        self.train(template.training)

    def forward(self, x: Tensor) -> Tensor:
        return functional_call(self.template, (self._params, self._buffers_k), (x,))

    def logits_part(self) -> nn.Module:
        """This copy before the template's final sigmoid or tanh, where it ends in one
        (``clipkit.core.models.without_final_squash``), else the copy itself: what the
        attacks differentiate (``ck.attacks.logits_part``), as for a model of ``model_at``."""
        part = without_final_squash(self.template)
        if part is None:
            return self
        names = {n for n, _ in part.named_parameters()}
        kept = {n for n, _ in part.named_buffers()}
        return CopyView(part, {n: p for n, p in self._params.items() if n in names},
                        {n: b for n, b in self._buffers_k.items() if n in kept}, None)


def model_at(ds: xr.Dataset, model_fn: Callable[[], nn.Module], **where) -> nn.Module:
    """A model built by ``model_fn`` with the parameters a path trained at, e.g. lam=0.1, seed=0.

    A copy axis of length one (``lam`` or ``seed``) needs no value: its only copy is taken.
    """
    copy_dims = [d for d in ("lam", "seed") if d in ds.dims]
    for d, value in where.items():
        if d not in copy_dims:
            raise ValueError(f"model_at: {d}={value!r}, but the path's copies are indexed by "
                             f"{', '.join(copy_dims) or 'nothing'}")
        offered = ds[d].values.tolist()
        if value not in offered:
            raise ValueError(f"model_at: {d}={value!r} is not in the path; it has {d} = "
                             f"{', '.join(map(repr, offered))}")
    left = [d for d in copy_dims if d not in where and ds.sizes[d] > 1]
    if left:
        raise ValueError("model_at: choose one copy: " + "; ".join(
            f"{d} = one of {', '.join(map(repr, ds[d].values.tolist()))}" for d in left))
    model = model_fn()
    state = {}
    single = {d: ds[d].values[0] for d in copy_dims if d not in where and ds.sizes[d] == 1}
    if "diverged" in ds:
        epoch = ds["diverged"].sel(**where, **single)
        if epoch.ndim == 0 and int(epoch) > 0:
            raise ValueError(f"the copy at {dict(where, **single)} diverged in epoch "
                             f"{int(epoch)} (its objective became NaN or infinite), so it has "
                             f"no trained parameters")
    for name, p in model.named_parameters():
        var = _param_name(name)
        if var not in ds:
            raise KeyError(f"no parameter {name!r} ({var}) in the dataset; made by fit_path?")
        value = ds[var].sel(**where, **single).values
        if value.shape != tuple(p.shape):
            raise ValueError(
                f"select one copy: {name} has shape {value.shape} after sel({where}), "
                f"the model needs {tuple(p.shape)}"
            )
        state[name] = torch.as_tensor(value, dtype=p.dtype)
    missing = []
    for name, b in model.named_buffers():
        var = _buffer_name(name)
        if var not in ds:
            missing.append(name)
            continue
        state[name] = torch.as_tensor(ds[var].sel(**where, **single).values, dtype=b.dtype)
    if missing:
        warnings.warn(f"model_at: the path stored no buffer {', '.join(missing)} (made before "
                      f"fit_path stored buffers?); the model keeps model_fn's values, so batch "
                      f"norm's running statistics are not the trained ones", stacklevel=2)
    model.load_state_dict(state, strict=False)
    model.eval()
    return model
