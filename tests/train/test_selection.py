"""The epoch hook and the kept epoch (ck.BestEpoch): on runs whose score sequence is known."""

import numpy as np
import pytest
import torch

import clipkit as ck


@pytest.fixture(scope="module")
def blobs():
    """A small 3-class problem that an MLP learns in a few epochs."""
    g = torch.Generator().manual_seed(0)
    centers = torch.tensor([[2.0, 0.0], [-1.0, 1.7], [-1.0, -1.7]])
    y = torch.randint(0, 3, (240,), generator=g)
    x = centers[y] + 0.9 * torch.randn(240, 2, generator=g)
    return x, y


def _model(seed=0):
    return ck.models.mlp([2, 16, 3], activation="tanh", seed=seed)


class Recorder:
    """An on_epoch measure returning a given sequence and copying the weights it saw."""

    def __init__(self, values):  # values[epoch] -> K numbers
        self.values, self.weights = values, []

    def __call__(self, models, epoch):
        assert all(not m.training for m in models)  # measured in eval mode
        self.weights.append([[p.detach().clone() for p in m.parameters()] for m in models])
        return {"v": self.values[epoch]}


def _fit(data, **kw):
    model = _model()
    hist = ck.fit(model, data, ck.Standard(), epochs=5, batch_size=32, lr=0.05, seed=0,
                  progress=False, **kw)
    return model, hist


def authors_best_model(train_acc, val_acc, goal_acc):
    """Their best_model (train.py) with γ = 0, stepped through the epochs: the index kept."""
    best_score, best = 0.0, None
    for e, (t, v) in enumerate(zip(train_acc, val_acc, strict=True)):
        score = v + (t > goal_acc)
        if score >= best_score:
            best_score, best = score, e
    return best


def test_the_best_epoch_is_kept_and_ties_go_to_the_later_epoch(blobs):
    rec = Recorder([[0.2], [0.5], [0.5], [0.1], [0.4]])
    model, hist = _fit(blobs, on_epoch=rec.__call__, select=ck.BestEpoch("v"))
    np.testing.assert_array_equal(hist.v.values, [0.2, 0.5, 0.5, 0.1, 0.4])
    np.testing.assert_array_equal(hist.selected.values, [0, 0, 1, 0, 0])
    np.testing.assert_array_equal(hist.score.values, hist.v.values)
    kept = [p.detach() for p in model.parameters()]
    assert all(torch.equal(a, b) for a, b in zip(kept, rec.weights[2][0], strict=True))
    assert not torch.equal(kept[0], rec.weights[4][0][0])  # not the last epoch's
    assert '"select": "BestEpoch"' in hist.attrs["config"]


def test_a_loss_keeps_its_lowest_epoch_and_needs_mode_min(blobs):
    with pytest.raises(ValueError, match="'test_loss' is a loss.*pass mode='min'"):
        ck.BestEpoch("test_loss")
    with pytest.raises(ValueError, match="mode must be 'max' or 'min', got 'lowest'"):
        ck.BestEpoch("v", mode="lowest")
    rec = Recorder([[0.9], [0.3], [0.5], [0.3], [0.4]])
    model, hist = _fit(blobs, on_epoch=rec.__call__, select=ck.BestEpoch("v", mode="min"))
    np.testing.assert_array_equal(hist.selected.values, [0, 0, 0, 1, 0])  # ties: later
    kept = [p.detach() for p in model.parameters()]
    assert all(torch.equal(a, b) for a, b in zip(kept, rec.weights[3][0], strict=True))
    assert '"mode": "min"' in hist.attrs["config"]


def test_without_selection_the_last_epoch_is_kept_and_measures_are_recorded(blobs):
    rec = Recorder([[0.9], [0.1], [0.2], [0.3], [0.0]])
    model, hist = _fit(blobs, on_epoch=rec.__call__)
    assert "selected" not in hist and list(hist.v.values) == [0.9, 0.1, 0.2, 0.3, 0.0]
    assert all(torch.equal(a.detach(), b) for a, b in
               zip(model.parameters(), rec.weights[-1][0], strict=True))


def test_goal_accuracy_indicator_follows_the_authors_rule(blobs):
    _, plain = _fit(blobs)  # the same run without a hook: its training accuracies
    acc = plain.acc.values
    assert acc[0] < acc[1:].max()
    goal = float((acc[0] + acc[1:].max()) / 2)  # epoch 0 below the goal, some later above
    val = [0.95, 0.1, 0.3, 0.2, 0.25]  # epoch 0 has the best validation accuracy
    rec = Recorder([[v] for v in val])
    model, hist = _fit(blobs, on_epoch=rec.__call__, select=ck.BestEpoch("v", goal_acc=goal))
    np.testing.assert_array_equal(hist.acc.values, acc)  # measuring changed no training
    expected = authors_best_model(acc, val, goal)
    assert expected != 0 and int(hist.selected.values.argmax()) == expected
    np.testing.assert_allclose(hist.score.values, np.array(val) + (acc > goal))
    assert all(torch.equal(a.detach(), b) for a, b in
               zip(model.parameters(), rec.weights[expected][0], strict=True))


def _unseeded():
    return ck.models.mlp([2, 16, 3], activation="tanh")  # fit_path seeds each copy


def test_a_path_keeps_each_copys_own_best_epoch_like_separate_fits(blobs):
    seqs = {0: [0.1, 0.6, 0.3, 0.2], 1: [0.7, 0.1, 0.1, 0.8]}  # per seed
    rec = Recorder([[seqs[s][e] for s in (0, 1)] for e in range(4)])
    path = ck.fit_path(_unseeded, blobs, ck.Standard(), seed=[0, 1], epochs=4, batch_size=32,
                       optimizer="sgd", lr=0.05, progress=False, on_epoch=rec.__call__,
                       select=ck.BestEpoch("v"))
    assert path.selected.dims == ("lam", "seed", "epoch")
    np.testing.assert_array_equal(path.selected.isel(lam=0).argmax("epoch").values, [1, 3])
    for s in (0, 1):
        single = Recorder([[seqs[s][e]] for e in range(4)])
        model = ck.path.init_copy(_unseeded, s)
        ck.fit(model, blobs, ck.Standard(), epochs=4, batch_size=32, optimizer="sgd",
               lr=0.05, seed=s, progress=False, on_epoch=single.__call__,
               select=ck.BestEpoch("v"))
        kept = ck.path.model_at(path, _unseeded, lam=0.0, seed=s)
        for a, b in zip(kept.parameters(), model.parameters(), strict=True):
            torch.testing.assert_close(a, b.detach(), rtol=1e-5, atol=1e-6)


def test_nan_scores_are_never_chosen(blobs):
    rec = Recorder([[0.3], [float("nan")], [0.1], [float("nan")], [0.2]])
    _, hist = _fit(blobs, on_epoch=rec.__call__, select=ck.BestEpoch("v"))
    np.testing.assert_array_equal(hist.selected.values, [1, 0, 0, 0, 0])


def test_bad_hooks_and_rules_raise_clear_errors(blobs):
    with pytest.raises(KeyError, match="no 'val'.*on_epoch"):
        _fit(blobs, select=ck.BestEpoch("val"))
    with pytest.raises(ValueError, match="'v' has 2 values; one per trained copy"):
        _fit(blobs, on_epoch=lambda models, e: {"v": [0.1, 0.2]})
    with pytest.raises(TypeError, match="select must be None"):
        _fit(blobs, select="best")
    with pytest.raises(ValueError, match="goal_acc must be None or in"):
        ck.BestEpoch("v", goal_acc=1.5)
    with pytest.raises(ValueError, match="needs a classification task"):
        x, y = ck.data.regression(n=20)
        ck.fit(ck.models.mlp([1, 4, 1]), (x, y), epochs=1, progress=False,
               select=ck.BestEpoch("test_loss", goal_acc=0.5, mode="min"))
