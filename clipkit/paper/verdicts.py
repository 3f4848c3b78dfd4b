"""The report's sentences on the classification table, each computed from its rows.

CLIP against no regularization under both PGD attacks (:func:`gains`), how much of CLIP's
gain depends on the attack (:func:`attack_dependence`), the side-by-side with the
authors' published MNIST numbers (:func:`side_by_side`) and the two goal accuracies
(:func:`goal_rows`). Every verb ("raises", "agrees") comes from
:class:`clipkit.paper.rows.Change` or a stated tolerance; only the frame is typed.
"""

from __future__ import annotations

import math

import xarray as xr

from clipkit.paper.rows import AGREE_TOL, CERTIFIED, GAIN_TOL, Change, Stat

__all__ = [
    "AUTHORS_MNIST",
    "CHANCE",
    "attack_dependence",
    "certified_order",
    "comparison",
    "diverged_runs",
    "gains",
    "goal_rows",
    "side_by_side",
]

#: the authors' published MNIST table (their README): FC 200-80, mean of 3 runs, in
#: fractions (clean, Gaussian noise, PGD-ℓ2 ε = 2)
AUTHORS_MNIST = {
    "none": (0.971, 0.345, 0.312),
    "CLIP (goal 0.95)": (0.964, 0.298, 0.714),
    "CLIP (goal 0.97)": (0.970, 0.346, 0.724),
}
#: a seed whose clean accuracy is at most this is "at chance" (10 classes: 0.1, plus 5 points)
CHANCE = 0.15
#: accuracies are fractions of the same points; beyond rounding, an excess is a bug
ORDER_TOL = 1e-9
#: the ℓ2 attacks certified accuracy is compared with
L2_ATTACKS = {"pgd_l2": "clipkit's PGD-ℓ2", "pgd_l2_authors": "the authors' PGD-ℓ2"}
ATTACKS = {"pgd_authors": "the authors' PGD-ℓ2", "pgd": "clipkit's PGD-ℓ2"}
TITLES = {"mnist": "MNIST", "fashion-mnist": "Fashion-MNIST"}


def _p(v: float) -> str:
    return "–" if not math.isfinite(v) else f"{100 * v:.1f}"


def _pair(rows: list[dict], dataset: str, last: bool,
          clip: str = "CLIP (goal 0.95)") -> tuple[dict | None, dict | None]:
    by = {r["row"]: r for r in rows if r["dataset"] == dataset and r["last_activation"] == last}
    return by.get("none"), by.get(clip)


def _seeds(stat: Stat) -> str:
    return ", ".join(_p(v) for v in stat.values)


def gains(rows: list[dict]) -> str:
    """A table: per dataset and setting, no regularization → CLIP under each attack."""
    out = []
    for dataset, title in TITLES.items():
        for last in (True, False):
            none, clip = _pair(rows, dataset, last)
            if none is None or clip is None:
                continue
            for key, name in (("clean", "clean"), *ATTACKS.items()):
                ch = Change(none[key], clip[key])
                out.append([title, none["setting"], name, none[key].pct(), clip[key].pct(),
                            f"{100 * ch.gain:+.1f}", ch.verb()])
    if not out:
        return ""
    head = ["data", "setting", "accuracy", "none %", "CLIP %", "gain (points)", "CLIP …"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return ("\n".join(lines + ["| " + " | ".join(r) + " |" for r in out]) + "\n\n"
            f"A change within {100 * GAIN_TOL:g} points counts as none; \"by more than the "
            "seeds' spread\" means that every seed of the one row is beyond every seed of the "
            f"other by more than {100 * GAIN_TOL:g} points. The rule compares seeds; the test "
            "images' own sampling error is not part of it (one seed's accuracy on n images has "
            "a standard error of up to 50/√n points: 2.2 on 500). Gains are differences of "
            "the unrounded means, so one can differ by 0.1 from the rounded means beside it. "
            "Every accuracy is that of each seed's tested epoch (the authors' selection, the "
            "tables' \"tested epoch, per seed\"): where a row's tested epochs are early, as "
            "they often are without regularization, it is compared there, not at the end of "
            "training; the learning curves show every epoch.\n")


def _collapsed(row: dict) -> list[int]:
    """Indices of the seeds whose clean accuracy is at chance (≤ :data:`CHANCE`)."""
    return [i for i, v in enumerate(row["clean"].values) if v <= CHANCE]


def attack_dependence(rows: list[dict]) -> list[str]:
    """Per dataset, the published setting: CLIP's gain under each attack, and the part of
    the gain under the authors' attack that clipkit's PGD does not confirm."""
    out = []
    for dataset, title in TITLES.items():
        none, clip = _pair(rows, dataset, True)
        if none is None or clip is None:
            continue
        a = Change(none["pgd_authors"], clip["pgd_authors"])
        o = Change(none["pgd"], clip["pgd"])
        text = (f"**{title}, published setting.** Under the authors' attack the PGD-ℓ2 "
                f"(ε = 2) accuracy goes from {none['pgd_authors'].pct()} % without "
                f"regularization to {clip['pgd_authors'].pct()} % with CLIP "
                f"({100 * a.gain:+.1f} points): CLIP {a.verb()}. Under clipkit's PGD: "
                f"{none['pgd'].pct()} % → {clip['pgd'].pct()} % ({100 * o.gain:+.1f} "
                f"points): CLIP {o.verb()}.")
        if a.gain > GAIN_TOL:
            kept = max(o.gain, 0.0) / a.gain
            text += (f" Of the gain measured with the authors' attack, "
                     f"{100 * (a.gain - max(o.gain, 0.0)):.1f} points "
                     f"({100 * (1 - kept):.0f} %) depend on the attack: a standard PGD "
                     f"confirms {100 * kept:.0f} % of it.")
        text += (f" The attack itself: on the CLIP networks their attack leaves "
                 f"{_p(clip['pgd_authors'].mean - clip['pgd'].mean)} points more accuracy "
                 f"than clipkit's, on the unregularized ones "
                 f"{_p(none['pgd_authors'].mean - none['pgd'].mean)}.")
        if a.seeds > 1 and not a.separated:
            text += (f" Seeds (authors' attack): none {_seeds(none['pgd_authors'])} %, CLIP "
                     f"{_seeds(clip['pgd_authors'])} %; clean accuracy of the CLIP seeds "
                     f"{_seeds(clip['clean'])} %.")
            dead = _collapsed(clip)
            if dead:
                text += (f" {len(dead)} of {clip['clean'].n} CLIP seeds ended at chance "
                         f"(clean accuracy ≤ {100 * CHANCE:g} %): the penalty drove those "
                         "networks to a (near) constant output; they make the spread.")
        out += [text, ""]
    return out


def side_by_side(rows: list[dict]) -> list[str]:
    """The authors' published MNIST numbers beside ours (published setting)."""
    mn = {r["row"]: r for r in rows if r["dataset"] == "mnist" and r["last_activation"]}
    table, verdicts = [], []
    for row, (c, n, p) in AUTHORS_MNIST.items():
        r = mn.get(row)
        if r is None:
            continue
        table.append([row, _p(c), r["clean"].pct(), _p(n), r["noise_1"].pct(), _p(p),
                      r["pgd_authors"].pct(), r["pgd"].pct()])
        for name, theirs, ours in (("clean", c, r["clean"]), ("noise", n, r["noise_1"]),
                                   ("PGD-ℓ2 (their attack)", p, r["pgd_authors"])):
            if not ours.n:
                continue
            d = ours.mean - theirs
            word = ("agrees" if abs(d) <= AGREE_TOL else
                    f"is {100 * abs(d):.1f} points {'higher' if d > 0 else 'lower'}")
            verdicts.append(f"{row}, {name}: ours {word}")
    if not table:
        return ["No MNIST runs in the published setting were found.", ""]
    head = ["regularization", "authors clean %", "ours clean %", "authors noise %",
            "ours noise σ=1 %", "authors PGD-ℓ2 ε=2 %", "ours, their PGD %", "ours, clipkit PGD %"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(r) + " |" for r in table]
    return ["\n".join(lines) + "\n",
            f"Against the published numbers (agreement: within {100 * AGREE_TOL:g} points): "
            + "; ".join(verdicts) + ".", ""]


def goal_rows(rows: list[dict]) -> list[str]:
    """What differs between the CLIP rows with goal accuracy 0.95 and 0.97."""
    out = []
    for dataset, title in TITLES.items():
        for last in (True, False):
            _, g95 = _pair(rows, dataset, last)
            _, g97 = _pair(rows, dataset, last, clip="CLIP (goal 0.97)")
            if g95 is None or g97 is None:
                continue
            n = min(g95["clean"].n, g97["clean"].n)  # seeds run in both (the first n)
            same_lam = g95["lam_end"].values[:n] == g97["lam_end"].values[:n]
            kept95, kept97 = (", ".join(f"{v:g}" for v in g["epoch"].values[:n])
                              for g in (g95, g97))
            both = f"the {n} seed{'s' * (n > 1)} run in both rows"
            if kept95 == kept97:
                diff = f"the same epochs were kept ({kept95}: {both})"
            else:
                diff = f"the kept epochs differ ({kept95} against {kept97}: {both})"
            out.append(f"{title}, {g95['setting']}: λ per epoch "
                       f"{'is the same' if same_lam else 'differs'} in the two CLIP rows; "
                       f"{diff}.")
    return out + [""] if out else []


def comparison(rows: list[dict]) -> str:
    """The report's comparison subsection: gains, the attack, the authors, the goals."""
    parts = []
    table = gains(rows)
    if table:
        parts += ["### CLIP against no regularization, under both attacks", "", table]
        parts += attack_dependence(rows)
    parts += ["### Side by side with the authors (MNIST, published setting)", ""]
    parts += side_by_side(rows)
    goals = goal_rows(rows)
    if goals:
        parts += ["### The two goal accuracies", ""] + goals
    return "\n".join(parts)


def certified_order(ds: xr.Dataset, tol: float = ORDER_TOL) -> str:
    """The check certified ≤ PGD-ℓ2 ≤ clean accuracy on every run of a classification sweep.

    Per run (every combination of the swept dims and λ) and every ε where both exist:
    ``certified_acc`` ≤ ``robust_acc`` under each PGD-ℓ2 attack ≤ the clean accuracy on
    the same evaluation images (``robust_acc`` at ε = 0; ``clean_acc`` without it), within
    ``tol``. A certificate covers the whole ball, so a certified point can not be broken by
    an attack: any excess is a bug. Returns the sentence ("" without certified results).
    """
    if CERTIFIED not in ds or "attack" not in ds.dims:
        return ""
    attacks = [a for a in L2_ATTACKS if a in ds.attack.values]
    clean = (ds.robust_acc.sel(eps=0.0).max("attack") if 0.0 in ds.eps.values
             else ds.clean_acc)
    parts = {"certified": ds[CERTIFIED], "clean": clean,
             **{a: ds.robust_acc.sel(attack=a, drop=True) for a in attacks}}
    frame = xr.Dataset(parts).reset_coords(drop=True).to_dataframe()
    frame = frame[frame["certified"].notna()]
    run_levels = [n for n in frame.index.names if n != "eps"]
    n = len(frame.index.droplevel("eps").unique()) if run_levels else int(len(frame) > 0)
    if not n:
        return ""
    bad, where = [], set()
    for a in attacks:
        for low, high, what in (("certified", a, f"certified > {L2_ATTACKS[a]}"),
                                (a, "clean", f"{L2_ATTACKS[a]} > clean")):
            hit = frame[frame[low] > frame[high] + tol]
            for idx, row in hit.iterrows():
                idx = idx if isinstance(idx, tuple) else (idx,)
                at = dict(zip(frame.index.names, idx, strict=True))
                where.add(tuple(v for k, v in at.items() if k != "eps"))
                bad.append(f"{what} ({', '.join(f'{k} {v}' for k, v in at.items())}: "
                           f"{_p(row[low])} % > {_p(row[high])} %)")
    what = (f"certified ≤ PGD-ℓ2 ({' and '.join(L2_ATTACKS[a] for a in attacks)}) ≤ clean "
            f"accuracy, at every ε of the PGD-ℓ2 grids, on the same evaluation images")
    if not bad:
        return f"Check: {what}: holds on all {n} runs with a certified accuracy.\n"
    return (f"**Check failed**: {what}: violated on {len(where)} of {n} runs, which points "
            f"to a bug in a certificate or an attack: {'; '.join(bad[:4])}"
            + (f"; and {len(bad) - 4} more" if len(bad) > 4 else "") + ".\n")


def diverged_runs(ds: xr.Dataset) -> str:
    """The sentence naming every run whose training diverged (``diverged`` > 0: its
    objective became NaN or infinite, so its results are NaN); "" where none did."""
    if "diverged" not in ds:
        return ""
    frame = ds["diverged"].reset_coords(drop=True).to_dataframe().dropna()  # NaN: no run
    hit = frame[frame["diverged"] > 0]
    if hit.empty:
        return ""
    names = list(frame.index.names)
    where = []
    for idx, row in hit.iterrows():
        idx = idx if isinstance(idx, tuple) else (idx,)
        coords = ", ".join(f"{k} {v:g}" if k == "lam" else f"{k} {v}"
                           for k, v in zip(names, idx, strict=True))
        where.append(f"{coords} (epoch {int(row['diverged'])})")
    return (f"**Diverged**: training became NaN or infinite in {len(where)} of {len(frame)} "
            f"runs: {'; '.join(where)}. Their results are NaN and missing from the tables "
            "and figures (a smaller learning rate or λ trains them).\n")
