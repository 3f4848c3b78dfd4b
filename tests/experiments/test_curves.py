"""The per-epoch measures: the authors' validation score and the learning curves under attack."""

import dataclasses
import math

import pytest
import torch

import clipkit as ck
from clipkit.experiments import curves


@pytest.fixture(scope="module")
def models_and_data():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(120, 1, 6, 6, generator=g)
    y = (x.flatten(1)[:, :18].sum(1) > x.flatten(1)[:, 18:].sum(1)).long()
    models = []
    for seed in (0, 1):
        m = ck.models.mlp([36, 16, 2], activation="sigmoid", seed=seed)
        ck.fit(m, (x.flatten(1), y), epochs=3, lr=0.05, seed=seed, progress=False)
        models.append(torch.nn.Sequential(torch.nn.Flatten(), m).eval())
    return models, (x[:60], y[:60]), (x[60:], y[60:])


def test_validation_score_is_the_authors_accuracy_under_their_pgd7(models_and_data):
    models, val, _ = models_and_data
    measure = curves.epoch_measure(epochs=2, val=val)
    out = measure(models, 0)
    assert set(out) == {curves.VALIDATION}
    for m, value in zip(models, out[curves.VALIDATION], strict=True):
        xa = ck.attacks.AuthorsPGD(eps=2.0, steps=7, seed=0)(m, *val)
        with torch.no_grad():
            direct = float((m(xa).argmax(1) == val[1]).double().mean())
        assert value == pytest.approx(direct)  # counted as their validation step counts


def test_curves_match_robust_accuracy_and_are_nan_between_measured_epochs(models_and_data):
    models, _, test = models_and_data
    measure = curves.epoch_measure(epochs=5, curve=test, every=2, curve_steps=3)
    skipped, due, last = measure(models, 0), measure(models, 1), measure(models, 4)
    assert set(due) == {"curve_pgd_l2_authors", "curve_pgd_l2"}
    assert all(math.isnan(v) for v in skipped["curve_pgd_l2"])
    for name in ("pgd_l2_authors", "pgd_l2"):
        for m, a, b in zip(models, due[f"curve_{name}"], last[f"curve_{name}"], strict=True):
            attack = ck.evaluate.make_attack(name, seed=0, steps=3)
            ref = float(ck.attacks.robust_accuracy(m, test, attack, eps=[2.0])[0])
            assert a == pytest.approx(ref) and b == pytest.approx(ref)


def test_the_notebooks_selection_is_the_authors_rule():
    rule = curves.authors_selection(0.97)
    assert rule == ck.BestEpoch(curves.VALIDATION, goal_acc=0.97)
    with pytest.raises(ValueError, match="give validation data"):
        curves.epoch_measure(epochs=3)


def test_attack_names_are_checked_when_the_measure_is_built_not_when_first_due():
    data = (torch.rand(4, 1, 2, 2), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="unknown attack 'pgd_l3'"):
        curves.epoch_measure(epochs=8, curve=data, every=4, curve_attacks=["pgd_l3"])
    with pytest.raises(TypeError, match=r"curve_attacks must be a list .* \['pgd_l2'\]"):
        curves.epoch_measure(epochs=8, curve=data, curve_attacks="pgd_l2")


def test_a_path_copys_curve_attacks_the_logits_as_the_evaluation_does():
    # The published setting ends in a sigmoid. The curves attack fit_path's copies
    # (CopyView), the evaluation the model model_at rebuilds: clipkit's attacks must
    # differentiate the logits in both, so that a curve's last point is the table's number.
    g = torch.Generator().manual_seed(1)
    x = torch.rand(400, 36, generator=g)
    y = ((x - 0.5) @ torch.randn(36, 3, generator=g)).argmax(1)
    test = (x[200:], y[200:])

    def model_fn():
        return ck.models.mlp([36, 16, 3], activation="sigmoid", last_activation=True)

    measure = curves.epoch_measure(epochs=10, curve=test, curve_steps=3, eps=0.25, every=10,
                                   curve_attacks=("pgd_l2", "fgsm"))
    path = ck.fit_path(model_fn, (x[:200], y[:200]), seed=[0, 1], epochs=10, lr=0.01,
                       on_epoch=measure, progress=False)
    differs = []
    for seed in (0, 1):
        model = ck.path.model_at(path, model_fn, seed=seed).eval()
        for name in ("pgd_l2", "fgsm"):
            attack = ck.evaluate.make_attack(name, seed=0, steps=3)
            ref = float(ck.attacks.robust_accuracy(model, test, attack, eps=[0.25])[0])
            curve = float(path[f"curve_{name}"].sel(seed=seed).squeeze().isel(epoch=-1))
            assert curve == ref, (name, seed, curve, ref)
            through = dataclasses.replace(attack, logits=False)  # the attack the curves had
            differs.append(ref != float(ck.attacks.robust_accuracy(model, test, through,
                                                                   eps=[0.25])[0]))
    assert any(differs)  # through the sigmoid is another attack here: the check can fail
