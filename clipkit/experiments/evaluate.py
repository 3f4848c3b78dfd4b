"""Train over a λ grid, and evaluate trained models into Datasets: the result schema.

The notebooks call these functions, and the report and the figures read what they write,
so the variables below are the contract (also in ``docs/results.md``).

**Classification** (:func:`classification_result`; ``notebooks/classification.ipynb``):

========================  =====================  =============================================
variable                  dims                   meaning
========================  =====================  =============================================
loss, penalty, lam_epoch  (lam, epoch)           the training history of ``ck.fit`` (see
lip, acc, test_loss,                             ``clipkit.train.history``)
test_acc, time
clean_acc                 (lam,)                 accuracy on the test set
robust_acc                (lam, attack, eps)     accuracy under attack on the evaluation
                                                 subset: a point counts when the clean and the
                                                 attacked input are both classified right;
                                                 NaN where ε is not in that attack's grid
lip_lower, lip_upper      (lam,)                 ``ck.lipschitz.bracket``, global (eval mode)
certified_acc             (lam, eps)             certified ℓ2 robust accuracy on the evaluation
                                                 subset (``ck.certify``): a point counts when
                                                 its logit margin exceeds √2·L·ε for a
                                                 certified bound L (by default the bracket's
                                                 upper); at the ε of the PGD-ℓ2 grids, NaN
                                                 elsewhere. Always ≤ robust_acc under PGD-ℓ2.
diverged                  (lam,)                 only where the grid was trained with
                                                 ``on_nonfinite="record"``: the epoch in which
                                                 that λ's objective became NaN or infinite
                                                 (its history is NaN from there and its
                                                 evaluation NaN), 0 where it trained through
========================  =====================  =============================================

attrs: ``bracket_notes`` (which estimate gave each bound), ``certified_notes`` (the bound
used by ``certified_acc`` and its cost), ``method_config`` (JSON).
Attack names: :data:`ATTACKS`.

**Regression**: :func:`evaluate_regression`, :func:`regression_fit` and
:func:`regression_result`, defined in :mod:`clipkit.experiments.regression` (its docstring
has the variables) and available here.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence

import numpy as np
import torch
import xarray as xr
from torch import Tensor, nn

from clipkit.analysis import attacks as atk
from clipkit.analysis import certify, lipschitz
from clipkit.core.provenance import NAN_MEANS, to_json
from clipkit.core.utils import (
    check_choice,
    check_class_labels,
    check_int,
    check_model_takes,
    device_dtype,
    seeded,
)
from clipkit.experiments.regression import (
    evaluate_regression,
    regression_fit,
    regression_result,
)
from clipkit.train.fit import fit
from clipkit.train.history import DIVERGED, diverged_epoch
from clipkit.train.path import fit_path, model_at
from clipkit.train.protocol import Method
from clipkit.train.schedules import check_lam

__all__ = [
    "ATTACKS",
    "ATTACK_SETTINGS",
    "CERTIFY",
    "L2_ATTACKS",
    "classification_result",
    "evaluate_classifier",
    "evaluate_regression",
    "make_attack",
    "regression_fit",
    "regression_result",
    "train_lambda_grid",
]

#: attack names → what they are (``make_attack`` builds them)
ATTACKS = {
    "noise": "Gaussian noise clamp(x + σz) (ε = σ; the authors' noise is σ = 1)",
    "fgsm": "FGSM, ℓ∞",
    "pgd_l2": "PGD, ℓ2 ball, random start, normalised steps (clipkit's)",
    "pgd_linf": "PGD, ℓ∞ ball, random start, sign steps",
    "pgd_l2_authors": "the CLIP authors' PGD-ℓ2 (sphere, sign steps, misclassified points kept)",
}
#: the attacks whose ε grid (ℓ2 radii) the certified accuracy is computed on
L2_ATTACKS = ("pgd_l2", "pgd_l2_authors")
#: the attr of ``robust_acc`` that holds each attack's settings (JSON: attack name → its
#: ``config()`` without ε, e.g. steps, step size, restarts, which loss it climbs)
ATTACK_SETTINGS = "attack_settings"
#: how ``evaluate_classifier`` certifies: the bound it uses
CERTIFY = {
    "global": "√2 × the bracket's upper bound (the smallest certified one: LipSDP-neuron for "
              "MLPs, the layer-norm product for convolutional nets); a forward pass",
    "local": "LipSDP-neuron bounds on each ε-ball (MLPs only; about a second per point and ε)",
    "none": "not computed (NaN)",
}


def make_attack(name: str, *, seed: int = 0, steps: int = 20, restarts: int = 1
                ) -> atk.Attack:
    """The attack called ``name`` (see :data:`ATTACKS`), its ε set per call of the evaluation.

    ``steps`` is the number of PGD iterations (the authors' attack: their test uses 100);
    ``restarts`` the random restarts of clipkit's PGD-ℓ2/ℓ∞ (the other attacks have none:
    FGSM and noise take no steps, and the authors' PGD stays theirs).
    """
    if name == "noise":
        return atk.GaussianNoise(eps=0.0, seed=seed)
    if name == "fgsm":
        return atk.FGSM(eps=0.0, seed=seed)
    if name in ("pgd_l2", "pgd_linf"):
        return atk.PGD(eps=0.0, norm=name[4:], steps=steps, seed=seed, restarts=restarts)
    if name == "pgd_l2_authors":
        return atk.AuthorsPGD(eps=0.0, steps=steps, seed=seed)
    raise ValueError(f"unknown attack {name!r}; accepted: {', '.join(ATTACKS)}")


def train_lambda_grid(
    model_fn: Callable[[], nn.Module], data: tuple[Tensor, Tensor], method: Method,
    lams: Sequence[float], *, seed: int = 0, on_nonfinite: str = "raise", **fit_kwargs,
) -> tuple[list[nn.Module | None], xr.Dataset]:
    """One trained model per λ and their histories over (lam, epoch).

    A vectorisable method trains the grid as one ``fit_path`` run; the others one ``fit``
    each (from ``model_fn()`` after ``torch.manual_seed(seed)``, as the path's copies are).

    ``on_nonfinite``: a λ whose objective becomes NaN or infinite stops the grid with a
    NonFiniteLossError (``"raise"``), or (``"record"``) gets None in place of its model and
    NaN in its history from that epoch on, while the other λ train as without it; the
    history then has ``diverged`` (lam,): the epoch of divergence, 0 where none.
    """
    if not isinstance(method, Method):
        raise TypeError(f"train_lambda_grid: method must be a clipkit method (e.g. ck.CLIP()), "
                        f"got {method!r}")
    if isinstance(lams, (str, bytes)) or not isinstance(lams, Iterable):
        raise TypeError(f"train_lambda_grid: lams must be a list of λ values, got {lams!r}")
    lams = [check_lam(v, "train_lambda_grid: lams") for v in lams]
    seed = check_int(seed, "train_lambda_grid: seed")
    check_choice(on_nonfinite, "train_lambda_grid: on_nonfinite", ("raise", "record"))
    if method.vectorizable:
        path = fit_path(model_fn, data, method, lam=lams, seed=[seed],
                        on_nonfinite=on_nonfinite, **fit_kwargs)
        weights = [v for v in path.data_vars if str(v).startswith(("param_", "buffer_"))]
        hist = path.drop_vars(weights)
        hist = hist.sel(seed=seed, drop=True).drop_attrs(deep=False)
        with seeded(seed):  # model_fn() builds the structure: leave the caller's generator
            models = [None if "diverged" in hist and int(hist.diverged[i]) > 0
                      else model_at(path, model_fn, lam=lv, seed=seed)
                      for i, lv in enumerate(lams)]
        warn_at_chance(hist, data[1])
        return models, hist
    models, histories = [], []
    for lv in lams:
        with seeded(seed):  # the same initial weights for every λ; the caller's generator kept
            net = model_fn()
        histories.append(fit(net, data, method.replace(lam=lv), seed=seed,
                             on_nonfinite=on_nonfinite, **fit_kwargs))
        models.append(None if diverged_epoch(histories[-1]) > 0 else net.eval())
    hist = xr.concat(histories, dim=xr.DataArray(lams, dims="lam", name="lam"),
                     coords="minimal", compat="override")
    warn_at_chance(hist, data[1])
    return models, hist.drop_attrs(deep=False)


#: a final test accuracy within this of 1/classes counts as chance level
CHANCE_MARGIN = 0.02


def warn_at_chance(hist: xr.Dataset, y: Tensor) -> list[float]:
    """Warn, naming them, about the λ whose test accuracy after the last epoch is at chance
    (≤ 1/C + 0.02 for C classes in ``y``): a network that does no better than a guess, which a
    table of robust accuracies would otherwise report without comment. Returns those λ."""
    if "test_acc" not in hist or y.dtype.is_floating_point or y.ndim != 1 or len(y) == 0:
        return []  # no test set, or not a classification
    classes = int(y.max()) + 1
    if classes < 2:
        return []
    last = hist.test_acc.isel(epoch=-1)
    at_chance = [float(lv) for lv, acc in zip(np.atleast_1d(hist.lam.values),
                                              np.atleast_1d(last.values), strict=True)
                 if np.isfinite(acc) and acc <= 1 / classes + CHANCE_MARGIN]
    if at_chance:
        warnings.warn(
            f"test accuracy after the last epoch is at chance level (1/{classes}) for λ = "
            f"{', '.join(f'{v:g}' for v in at_chance)}: the network does no better than a guess. "
            f"Its curve (the history's test_acc by epoch) tells which: a run that fell there "
            f"has collapsed (in the published setting, a sigmoid on the logits, CLIP runs "
            f"lose some seeds when λ switches on: docs/method.md); one that never left it "
            f"needs more epochs or images, or another learning rate", stacklevel=3)
    return at_chance


def _accuracy(model: nn.Module, x: Tensor, y: Tensor, batch_size: int = 2048) -> float:
    dev = device_dtype(model)[0]  # the data go to the model, wherever it is
    with torch.no_grad():
        right = sum(int((model(xb.to(dev)).argmax(1) == yb.to(dev)).sum())
                    for xb, yb in zip(x.split(batch_size), y.split(batch_size), strict=True))
    return right / len(y)


def evaluate_classifier(
    model: nn.Module, test: tuple[Tensor, Tensor], *, eval_data: tuple[Tensor, Tensor],
    attacks: Mapping[str, Sequence[float]], seed: int = 0, pgd_steps: int = 20,
    authors_steps: int | None = None, pgd_restarts: int = 1, bracket_steps: int = 20,
    domain: tuple[float, float] | None = None, progress: bool = False,
    certified: str = "global", sdp_iters: int = 20,
) -> xr.Dataset:
    """Clean accuracy on ``test``; accuracy under each attack over its ε grid, the
    Lipschitz bracket and the certified ℓ2 accuracy on ``eval_data``. One model: no
    ``lam`` dimension yet.

    ``pgd_steps`` are the iterations of clipkit's PGD attacks, ``authors_steps`` those of
    the authors' PGD (None: ``pgd_steps``; their test: 100); ``pgd_restarts`` the random
    restarts of clipkit's PGD (``ck.attacks.PGD(restarts=...)``). ``progress``: a tqdm bar over
    the attacks and the bracket (a widget in a notebook).

    ``certified_acc`` (over ``eps``, at the radii of :data:`L2_ATTACKS`' grids, NaN at the
    others): the fraction of ``eval_data`` whose logit margin f_y − max_{j≠y} f_j exceeds
    √2·L·ε. ``certified`` (:data:`CERTIFY`): "global" takes L = the bracket's upper, the
    smallest certified global bound, so it costs one forward pass beyond the bracket;
    "local" certifies each point on its ε-ball (far slower); "none" skips it.
    ``domain``: None brackets the global constant, which the bracket's upper bound (a
    certificate on all inputs) bounds; (low, high) keeps the lower bound's searches inside
    that box (the image range), which leaves out the pre-activation ascent, its strongest
    search on MLPs, and so widens the bracket (a published-setting CLIP net: lower 0.88 in
    the box, 1.29 globally, upper 2.58 both).
    ``sdp_iters``: the bracket's L-BFGS budget for the LipSDP certificate (20: 1-3 s for
    784-200-80-10 on one loaded core; 0.1 % looser than 300 iterations on a standard-trained
    network, 7 % on a CLIP-trained one, where 300 take 7-30 s; benchmarks/bench_lipschitz.py).
    """
    check_choice(certified, "certified", CERTIFY)
    if not isinstance(attacks, Mapping) or not all(
            isinstance(g, Iterable) and not isinstance(g, (str, bytes)) for g in attacks.values()):
        raise TypeError(f"evaluate_classifier: attacks must map attack names to lists of ε, "
                        f"e.g. {{'pgd_l2': [0.5, 1.0]}}, got {attacks!r}")
    for name in attacks:
        check_choice(name, "evaluate_classifier: attack", ATTACKS)
    for name, (x, y) in (("test", test), ("eval_data", eval_data)):
        out = check_model_takes(model, x, f"{name}[0] (x)", place=True)
        if not bool(torch.isfinite(x).all()):
            raise ValueError(f"evaluate_classifier: {name}[0] (x) holds NaN or inf")
        check_class_labels(y, out.shape[-1], f"{name}[1] (y)")
    from tqdm.auto import tqdm

    all_eps = sorted({float(e) for grid in attacks.values() for e in grid})
    robust = np.full((len(attacks), len(all_eps)), np.nan)
    settings = {}
    model.eval()
    bar = tqdm(total=len(attacks) + 1, desc="evaluate", disable=not progress, leave=False)
    for i, (name, grid) in enumerate(attacks.items()):
        bar.set_postfix_str(name)
        steps = authors_steps if name == "pgd_l2_authors" and authors_steps else pgd_steps
        attack = make_attack(name, seed=seed, steps=steps, restarts=pgd_restarts)
        settings[name] = {k: v for k, v in attack.config().items() if k != "eps"}
        acc = atk.robust_accuracy(model, eval_data, attack, eps=list(grid))
        for e, v in zip(acc.eps.values, acc.values, strict=True):
            robust[i, all_eps.index(float(e))] = v
        bar.update()
    bar.set_postfix_str("Lipschitz bracket")
    try:
        br = lipschitz.bracket(model, eval_data[0], seed=seed, steps=bracket_steps, domain=domain,
                               sdp_iters=sdp_iters)
        lower, upper = br.lower, br.upper
        note = f"lower by {br.lower_by.method}; upper by {br.upper_by.method}"
    except lipschitz.UnsupportedModuleError as exc:
        lower = upper = float("nan")
        note = f"no bracket: {exc}"
    bar.update()
    bar.close()
    l2_eps = sorted({float(e) for a in L2_ATTACKS for e in attacks.get(a, ())})
    cert, cert_note = _certified(model, eval_data, l2_eps, certified, upper)
    ds = xr.Dataset(
        {"clean_acc": ((), _accuracy(model, *test)),
         "robust_acc": (("attack", "eps"), robust),
         "lip_lower": ((), lower), "lip_upper": ((), upper),
         "certified_acc": (("eps",), [cert.get(e, np.nan) for e in all_eps])},
        coords={"attack": list(attacks), "eps": all_eps},
    )
    ds.attrs["bracket_note"] = note
    ds.attrs["certified_note"] = cert_note
    ds["robust_acc"].attrs[ATTACK_SETTINGS] = to_json(settings)
    return ds


def _certified(model: nn.Module, data: tuple[Tensor, Tensor], eps: list[float], how: str,
               upper: float) -> tuple[dict[float, float], str]:
    """Certified accuracy at each ε (``evaluate_classifier``'s ``certified``) and a note."""
    if how == "none" or not eps:
        return {}, "not computed" if how == "none" else "no PGD-ℓ2 grid"
    if how == "local" and lipschitz.mlp_chain(model, tuple(data[0].shape[1:])) is None:
        how, why = "global", " (local needs an MLP)"
    else:
        why = ""
    if how == "global" and not np.isfinite(upper):
        return {}, "no certified upper bound"
    acc = certify.certified_accuracy(model, data, eps,
                                     bound=float(upper) if how == "global" else "local")
    used = f"√2 × bracket upper {upper:.6g}" if how == "global" else acc.attrs["bound"]
    return (dict(zip(eps, acc.values.tolist(), strict=True)),
            f"{used}{why}, {acc.attrs['seconds']:.2f} s")


_CLASSIFICATION_DESCRIPTIONS = {
    "clean_acc": "accuracy on the {n_test} test images",
    "robust_acc": "accuracy under attack on {n_eval} test images (a point counts when clean "
                  "and attacked are both right); NaN: ε not in this attack's grid",
    "lip_lower": "ck.lipschitz.bracket lower bound of the global Lipschitz constant "
                 "(attained; eval mode)",
    "lip_upper": "ck.lipschitz.bracket upper bound of the global Lipschitz constant "
                 "(certified)",
    "certified_acc": "certified ℓ2 robust accuracy on {n_eval} test images (margin > √2·L·ε, "
                     "ck.certify); NaN: ε not in a PGD-ℓ2 grid",
    "diverged": f"{DIVERGED}; the λ's evaluation is then NaN",
}
#: the result's variables whose NaN are by design: what NaN means in each
_CLASSIFICATION_NAN = {
    "robust_acc": "ε not in this attack's grid",
    "certified_acc": "ε not in a PGD-ℓ2 grid, or not certified (certified='none', or no "
                     "certified bound)",
}


def classification_result(history: xr.Dataset, evaluations: Sequence[xr.Dataset | None],
                          lams: Sequence[float], method: Method, *, n_test: int,
                          n_eval: int) -> xr.Dataset:
    """The classification result: the histories over (lam, epoch) and one evaluation per λ.

    An evaluation of None (a λ that diverged, ``train_lambda_grid(on_nonfinite="record")``)
    gives that λ NaN results; at least one λ must have been evaluated.
    """
    if len(evaluations) != len(lams):
        raise ValueError(f"classification_result: {len(evaluations)} evaluations for "
                         f"{len(lams)} λ values; give one per λ (None for a diverged one)")
    done = [e for e in evaluations if e is not None]
    if not done:
        epochs = (f", in epochs {history.diverged.values.tolist()}" if "diverged" in history
                  else "")
        raise ValueError(f"classification_result: every evaluation is None (λ = "
                         f"{', '.join(f'{v:g}' for v in lams)} diverged{epochs}): nothing to "
                         f"report; lower the learning rate or λ")
    blank = xr.full_like(done[0], np.nan, dtype=float)
    blank.attrs = {"bracket_note": "diverged: not evaluated",
                   "certified_note": "diverged: not evaluated"}
    evaluations = [blank if e is None else e for e in evaluations]
    lam = xr.DataArray([float(v) for v in lams], dims="lam", name="lam")
    evals = xr.concat(evaluations, dim=lam, combine_attrs="drop")
    ds = history.merge(evals)
    for name, text in _CLASSIFICATION_DESCRIPTIONS.items():
        if name in ds:
            ds[name].attrs["description"] = text.format(n_test=n_test, n_eval=n_eval)
    for name, text in _CLASSIFICATION_NAN.items():
        ds[name].attrs[NAN_MEANS] = text
    ds.attrs["bracket_notes"] = " | ".join(e.attrs.get("bracket_note", "") for e in evaluations)
    ds.attrs["certified_notes"] = " | ".join(e.attrs.get("certified_note", "")
                                             for e in evaluations)
    ds.attrs["method_config"] = to_json(method.config())
    ds["robust_acc"].attrs[ATTACK_SETTINGS] = done[0]["robust_acc"].attrs.get(ATTACK_SETTINGS, "{}")
    return ds
