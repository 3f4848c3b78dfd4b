"""The one training loop: K copies at once, a method's hooks, per-epoch history."""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from clipkit.core.affine_first import AffineFirst
from clipkit.core.utils import seeded
from clipkit.train.protocol import Run, Step
from clipkit.train.selection import Keeper, measured
from clipkit.train.setup import (
    NonFiniteLossError,
    TrainSetup,
    make_optimizer,
    random_layers_seed,
    sample_loss_fn,
    seeds_for,
)


def evaluate_copies(forward, x: Tensor, y: Tensor, k: int, loss_fn, task: str, chunk: int = 2048):
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


def train_loop(*, seeds: Sequence[int], **kwargs) -> dict[str, np.ndarray]:
    """:func:`_train_loop` with torch's global generator seeded from the copies' seeds
    (``random_layers_seed``: dropout's masks), and restored afterwards."""
    with seeded(random_layers_seed(seeds)):
        return _train_loop(seeds=seeds, **kwargs)


def _train_loop(
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
    copies: Callable[[], list[nn.Module]] | None = None,
    affine_first: AffineFirst | None = None,
    record_nonfinite: bool = False,
) -> dict[str, np.ndarray]:
    """Train K copies; return per-epoch history arrays of shape (K, epochs).

    Each step: (1) the method's work with θ fixed (CLIP: ascent on the pairs);
    (2) the descent step on mean loss + λ·R(θ). After each epoch: the test evaluation,
    ``setup.on_epoch(copies(), epoch)`` and ``setup.select`` (``clipkit.train.selection``;
    with a selection the kept epoch's weights are written back into the parameters at the
    end). Raises NonFiniteLossError (with the finished epochs' history) when a copy's
    objective is NaN or infinite; with ``record_nonfinite`` that copy is frozen
    instead (at the last parameters whose objective was finite, its history NaN from that
    epoch on) while the others train on, and ``diverged`` (K,) in the result gives the
    epoch (1-based) where each copy's objective stopped being finite, 0 for none. Once
    every copy has diverged the loop stops; the epochs it did not run are NaN.
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
    run = Run(forward, param_dict, x, y, loss_fn, method_gens, device, x.dtype,
              affine_first=affine_first)
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

    diverged = np.zeros(k, dtype=np.int64)  # 1-based epoch of divergence, 0: none
    # record: the parameters at the previous step's start (the last ones whose objective was
    # finite when a copy diverges now), and the diverged copies' frozen parameters
    previous = ({name: p.detach().clone() for name, p in param_dict().items()}
                if record_nonfinite else {})
    frozen: dict[str, Tensor] = {}
    keeper = Keeper(setup.select, param_dict()) if setup.select is not None else None
    if setup.on_epoch is not None and copies is None:
        raise ValueError("train_loop: on_epoch needs the copies as modules (copies=...)")
    bar = tqdm(range(setup.epochs), desc=setup.desc, disable=not setup.progress, leave=False)
    for epoch in bar:
        if record_nonfinite and (diverged > 0).all():
            break  # every copy is frozen: the epochs left would measure nothing new
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
                # one split, not two slices: its backward is one concatenation
                out, extra_out = both.split([xin.shape[1], extra.shape[1]], dim=1)
            sl = loss_fn(out, yb)
            data_loss = sl.mean(1)
            reg, metrics = method.penalty(run, Step(xin, yb, out, sl, lam_e, extra_out))
            objective = data_loss if reg is None else data_loss + lam_e * reg
            finite = torch.isfinite(objective)
            if not bool(finite.all()):
                new_bad = (~finite).cpu().numpy() & (diverged == 0)
                if not record_nonfinite:
                    bad = int(new_bad.nonzero()[0][0])
                    raise NonFiniteLossError(
                        f"non-finite objective {objective[bad].item()} in epoch {epoch + 1}, "
                        f"step {s + 1} ({describe(bad)}; counted from 1, as the history's "
                        f"epochs); lower the learning rate or λ. The history of the finished "
                        f"epochs is in .history",
                        epoch + 1, s + 1, history() if hist else None,
                    )
                if new_bad.any():
                    diverged[new_bad] = epoch + 1
                    for name, p in param_dict().items():
                        mask = torch.as_tensor(new_bad, device=p.device)
                        frozen.setdefault(name, torch.zeros_like(p.detach()))[mask] = (
                            previous[name][mask])
                # the diverged copies add nothing to the gradient; the others are untouched
                # (each copy's gradient comes from its own objective alone)
                objective = torch.where(finite, objective, torch.zeros_like(objective))
            if previous:
                for name, p in param_dict().items():
                    previous[name].copy_(p.detach())
            opt.zero_grad(set_to_none=True)
            objective.sum().backward()
            opt.step()
            if frozen:  # undo the optimizer's move (momentum, NaN gradients) of diverged copies
                failed = torch.as_tensor(diverged > 0, device=device)
                with torch.no_grad():
                    for name, p in param_dict().items():
                        p[failed] = frozen[name][failed]
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
            tl, ta = evaluate_copies(forward, test[0], test[1], k, loss_fn, task)
            put("test_loss", tl)
            if ta is not None:
                put("test_acc", ta)
        if setup.on_epoch is not None:
            for key, val in measured(setup.on_epoch(copies(), epoch), k).items():
                put(key, val)
        if keeper is not None:
            keeper.after_epoch(epoch, {key: v[-1] for key, v in hist.items()}, param_dict())
        put("time", time.perf_counter() - t0)
        if setup.progress:
            bar.set_postfix(loss=float(hist["loss"][-1].mean()))
    out = history()
    _warn_if_lambda_never_applied(method, lam, out["lam_epoch"])
    if keeper is not None:
        out.update(keeper.restore(param_dict()))
    if record_nonfinite:
        done = next(iter(out.values())).shape[1]
        if done < setup.epochs:  # stopped early: the epochs not run are NaN
            out = {key: np.pad(arr, ((0, 0), (0, setup.epochs - done)), constant_values=np.nan)
                   for key, arr in out.items()}
        for c in np.nonzero(diverged)[0]:  # nothing measured from the divergence on counts
            for key, arr in out.items():
                if key not in ("time", "lam_epoch"):
                    arr[c, diverged[c] - 1:] = np.nan
            if "selected" in out:
                out["selected"][c] = 0.0
        out["diverged"] = diverged
    return out


def _warn_if_lambda_never_applied(method, lam: Tensor, lam_epoch: np.ndarray) -> None:
    """A warning where a copy's λ > 0 was 0 in every epoch it trained (its schedule held
    it back: a warm-up as long as the training, an accuracy goal never reached), so that
    it trained as λ = 0 does."""
    lams = lam.detach().cpu().double().numpy()  # double: numpy has no bfloat16
    never = (lams != 0) & ~(lam_epoch != 0).any(axis=1)
    if never.any():
        held = sorted({float(v) for v in lams[never]})
        warnings.warn(
            f"{method.name}: λ = {', '.join(f'{v:g}' for v in held)} was never applied: the "
            f"schedule {method.schedule} kept λ at 0 in all {lam_epoch.shape[1]} epochs, so "
            f"these copies trained as with λ = 0; train longer, or use a constant schedule",
            stacklevel=4)
