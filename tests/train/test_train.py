import json
import math
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import clipkit as ck


@pytest.fixture(scope="module")
def regression():
    return ck.data.regression(n=200, noise=0.1, seed=0)


def _params(model):
    return [p.detach().clone() for p in model.parameters()]


def _fit(method, data, epochs=5, seed=0, model_seed=0, **kw):
    model = ck.models.mlp([1, 16, 16, 1], activation="relu", seed=model_seed)
    hist = ck.fit(model, data, method=method, epochs=epochs, seed=seed, lr=1e-2,
                  batch_size=32, progress=False, **kw)
    return model, hist


def test_history_is_an_xarray_dataset_over_epochs(regression):
    _, hist = _fit(ck.CLIP(lam=0.1), regression, epochs=4)
    assert dict(hist.sizes) == {"epoch": 4}
    for name in ("loss", "penalty", "lam_epoch", "lip", "time"):
        assert name in hist and bool(hist[name].notnull().all()), name
    assert float(hist.lam_epoch[0]) == pytest.approx(0.1)
    assert hist.attrs["status"] == "done" and '"method": "CLIP"' in hist.attrs["config"]
    assert bool((hist.time.diff("epoch") > 0).all())


def test_clip_with_zero_lambda_gives_exactly_the_weights_of_standard_training(regression):
    a, _ = _fit(ck.Standard(), regression, epochs=6, seed=3)
    b, hist = _fit(ck.CLIP(lam=0.0, ascent_steps=2), regression, epochs=6, seed=3)
    assert all(torch.equal(p, q) for p, q in zip(_params(a), _params(b), strict=True))
    assert bool((hist.lip > 0).all())  # the pairs were really worked on


@pytest.mark.parametrize(
    "method",
    [
        ck.Standard(),
        ck.WeightDecay(1e-3),
        ck.CLIP(lam=0.1),
        ck.CLIP(lam=0.1, init="points", reduction="mean", power=2, refresh=3),
        ck.GradientPenalty(0.01),
        ck.SpectralNorm(),
        ck.AdversarialTraining(eps=0.05, steps=2, data_range=None),
    ],
    ids=lambda m: m.name,
)
def test_same_seed_same_result_for_every_method(method, regression):
    a, ha = _fit(method, regression, epochs=3, seed=7)
    b, hb = _fit(method, regression, epochs=3, seed=7)
    c, _ = _fit(method, regression, epochs=3, seed=8)
    assert all(torch.equal(p, q) for p, q in zip(_params(a), _params(b), strict=True))
    assert ha.loss.values.tolist() == hb.loss.values.tolist()
    assert not all(torch.equal(p, q) for p, q in zip(_params(a), _params(c), strict=True))


def test_clip_trains_a_compiled_model_through_the_module_it_wraps(regression):
    """CLIP's step ran slower compiled and fails under CUDA graphs: fit trains the wrapped
    module eagerly (the same weights as the plain model, bit for bit) and says so."""
    a, ha = _fit(ck.CLIP(lam=0.1), regression, epochs=2, seed=4)
    plain = ck.models.mlp([1, 16, 16, 1], activation="relu", seed=0)
    compiled = torch.compile(plain)  # compiles on its first call only
    with pytest.warns(UserWarning, match="torch.compile'd model through the module it wraps"):
        hb = ck.fit(compiled, regression, method=ck.CLIP(lam=0.1), epochs=2, seed=4, lr=1e-2,
                    batch_size=32, progress=False)
    assert all(torch.equal(p, q) for p, q in zip(_params(a), _params(plain), strict=True))
    assert all(torch.equal(p, q) for p, q in zip(_params(a), _params(compiled), strict=True))
    assert ha.loss.values.tolist() == hb.loss.values.tolist()
    # methods that call the model on the batch only keep the compiled model
    assert ck.train.setup.eager_module(compiled, ck.Standard()) is compiled
    with pytest.warns(UserWarning, match="calls the model several times"):
        assert ck.train.setup.eager_module(compiled, ck.CLIP()) is plain


def _spread(model, x):
    with torch.no_grad():
        out = model(x)
    return float(out.max() - out.min()), float(out.mean())


def test_large_lambda_drives_clip_to_the_label_mean_and_weight_decay_to_zero(regression):
    x, y = regression
    y_spread, y_mean = float(y.max() - y.min()), float(y.mean())
    kw = dict(epochs=150, batch_size=128, lr=1e-2, seed=0, progress=False)

    clip = ck.models.mlp([1, 64, 64, 1], activation="relu", seed=0)
    ck.fit(clip, regression, method=ck.CLIP(lam=2.0, power=1), **kw)
    spread, mean = _spread(clip, x)
    assert spread < 0.05 * y_spread
    assert abs(mean - y_mean) < 0.05 * y_spread

    wd = ck.models.mlp([1, 64, 64, 1], activation="relu", seed=0)
    ck.fit(wd, regression, method=ck.WeightDecay(lam=10.0), **kw)
    spread, mean = _spread(wd, x)
    assert spread < 0.05 * y_spread
    assert abs(mean) < 0.2 * y_mean  # the zero network's output, not the label mean

    small = ck.models.mlp([1, 64, 64, 1], activation="relu", seed=0)
    hist = ck.fit(small, regression, method=ck.CLIP(lam=0.001), **kw)
    with torch.no_grad():
        mse = float((small(x) - y).pow(2).mean())
    assert mse < 0.1 * float(y.var())  # a small λ fits the data
    assert float(hist.lip[-1]) > 3.0


def test_classification_with_test_data_and_discrepancy_schedule():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(256, 2, generator=gen)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).long()
    model = ck.models.mlp([2, 16, 2], seed=0)
    method = ck.CLIP(lam=0.01, schedule=ck.Discrepancy(goal_acc=0.8, delta=0.05))
    hist = ck.fit(model, (x, y), method=method, epochs=6, batch_size=64, lr=1e-2,
                  test=(x[:64], y[:64]), progress=False)
    assert {"acc", "test_acc", "test_loss"} <= set(hist.data_vars)
    assert float(hist.acc[-1]) > 0.9
    lam = hist.lam_epoch.values
    assert lam[0] == pytest.approx(0.01)
    acc = hist.acc.values
    for e in range(1, len(lam)):  # raise by Δ above the goal accuracy, lower (>= 0) below it
        expected = max(lam[e - 1] + (0.05 if acc[e - 1] > 0.8 else -0.05), 0.0)
        assert lam[e] == pytest.approx(expected, abs=1e-6)
    assert lam[-1] > lam[0]
    unreachable = ck.CLIP(lam=0.1, schedule=ck.Discrepancy(goal_acc=1.0, delta=0.04))
    hist = ck.fit(ck.models.mlp([2, 16, 2], seed=0), (x, y), method=unreachable, epochs=4,
                  batch_size=64, lr=1e-2, progress=False)
    assert hist.lam_epoch.values == pytest.approx([0.1, 0.06, 0.02, 0.0])  # lowered, never below 0


def test_warmup_schedule_keeps_lambda_zero_first(regression):
    _, hist = _fit(ck.CLIP(lam=0.3, schedule=ck.Warmup(2)), regression, epochs=4)
    assert hist.lam_epoch.values.tolist() == [0.0, 0.0, pytest.approx(0.3), pytest.approx(0.3)]


def test_numpy_scalars_are_taken_as_the_numbers_they_hold(regression):
    hist = ck.fit(ck.models.mlp([1, 8, 1]), regression, lr=np.float32(0.01),
                  momentum=np.float64(0.5), optimizer="sgd", epochs=1, progress=False)
    config = json.loads(hist.attrs["config"])
    assert config["lr"] == pytest.approx(0.01) and config["momentum"] == 0.5


def test_bad_inputs_raise_clear_errors(regression):
    x, y = regression
    model = ck.models.mlp([1, 8, 1])
    with pytest.raises(ValueError, match="lam must be a finite number >= 0, got -0.5"):
        ck.WeightDecay(lam=-0.5)
    with pytest.raises(ValueError, match="different lengths"):
        ck.fit(model, (x, y[:-1]), progress=False)
    with pytest.raises(ValueError, match=r"data\[1\] \(y\): regression targets of shape "
                                         r"\(200, 1\) do not match the model's output \(2,\)"):
        ck.fit(ck.models.mlp([1, 8, 2]), (x, y), progress=False)
    # test labels are held to the same rules as the training labels (not broadcast)
    with pytest.raises(ValueError, match=r"test\[1\] \(y\): regression targets of shape \(10,\)"):
        ck.fit(model, (x, y), test=(x[:10], y[:10, 0]), progress=False)
    loader_data = torch.utils.data.TensorDataset(x, y)
    with pytest.raises(TypeError, match=r"got TensorDataset; for a TensorDataset pass its "
                                        r"tensors: data=ds.tensors"):
        ck.fit(model, loader_data, progress=False)
    with pytest.raises(TypeError, match="got DataLoader; clipkit batches the data itself"):
        ck.fit(model, torch.utils.data.DataLoader(loader_data), progress=False)
    ck.fit(ck.models.mlp([1, 4, 1]), loader_data.tensors, epochs=1, progress=False)
    with pytest.raises(TypeError, match="method must be a clipkit method"):
        ck.fit(model, (x, y), method="clip", progress=False)
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        ck.fit(lambda t: t, (x, y), progress=False)
    with pytest.raises(ValueError, match="unknown optimizer 'lbfgs'"):
        ck.fit(model, (x, y), optimizer="lbfgs", progress=False)
    hist = ck.fit(ck.models.mlp([1, 4, 1], seed=0), (x, y), optimizer="SGD", epochs=1,
                  progress=False)  # names in any case, as activations
    assert '"optimizer": "sgd"' in hist.attrs["config"]
    with pytest.raises(ValueError, match="epochs must be an int >= 1"):
        ck.fit(model, (x, y), epochs=0, progress=False)
    for bad in (0.0, -1e-3, float("nan")):
        with pytest.raises(ValueError, match=f"lr must be a finite number > 0, got {bad!r}"):
            ck.fit(model, (x, y), lr=bad, progress=False)
    with pytest.raises(TypeError, match="lr must be a finite number > 0, got '0.1'"):
        ck.fit(model, (x, y), lr="0.1", progress=False)
    with pytest.raises(ValueError, match="momentum must be a finite number >= 0"):
        ck.fit(model, (x, y), optimizer="sgd", momentum=-0.5, progress=False)
    with pytest.raises(ValueError, match=r"the model has no parameters to train \(Sequential\)"):
        ck.fit(nn.Sequential(nn.ReLU()), (x, y), progress=False)
    frozen = ck.models.mlp([1, 8, 1]).requires_grad_(False)
    with pytest.raises(ValueError, match="every parameter of the model is frozen"):
        ck.fit(frozen, (x, y), progress=False)
    with pytest.raises(ValueError, match="the model has no parameters to train"):
        ck.fit_path(lambda: nn.Sequential(nn.ReLU()), (x, y), progress=False)
    with pytest.raises(ValueError, match="Discrepancy needs a classification task"):
        ck.fit(model, (x, y), method=ck.CLIP(schedule=ck.Discrepancy()), progress=False)
    with pytest.raises(ValueError, match=r"class labels must lie in \[0, 2\)"):
        ck.fit(ck.models.mlp([1, 4, 2]), (x, torch.full((200,), 5)), progress=False)
    labels = torch.arange(200) % 2
    with pytest.raises(ValueError, match=r"test\[1\] \(y\): class labels must lie in \[0, 2\)"
                                         r".* got 7"):
        ck.fit(ck.models.mlp([1, 4, 2]), (x, labels), test=(x, labels + 7), progress=False)
    with pytest.raises(ValueError, match=r"data\[1\] \(y\): class labels must be a 1-D tensor.*"
                                         r"one-hot labels: pass y.argmax\(1\)"):
        ck.fit(ck.models.mlp([1, 4, 2]), (x, torch.nn.functional.one_hot(labels)),
               task="classification", progress=False)
    with pytest.raises(ValueError, match="unknown device"):
        ck.fit(model, (x, y), device="tpu:9", progress=False)
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    with pytest.raises(ValueError, match=r"device 'cuda:\d+': this machine has .* CUDA GPU"):
        ck.fit(model, (x, y), device=f"cuda:{gpus}", progress=False)  # one past the last
    wide = x.repeat(1, 3)  # samples of shape (3,) for a model that takes (1,)
    takes = r"the model does not take these inputs \(shape \(200, 3\)"
    with pytest.raises(ValueError, match=r"data\[0\] \(x\): " + takes):
        ck.fit(model, (wide, y), progress=False)
    with pytest.raises(ValueError, match=r"test\[0\] \(x\): " + takes):
        ck.fit(model, (x, y), test=(wide, y), progress=False)


class _NaNAfter(nn.Module):
    """Returns NaN from the ``after``-th forward call on."""

    def __init__(self, after):
        super().__init__()
        self.lin, self.calls, self.after = nn.Linear(1, 1), 0, after

    def forward(self, x):
        self.calls += 1
        out = self.lin(x)
        return out * math.nan if self.calls > self.after else out


def test_nan_loss_names_epoch_and_step_and_keeps_the_history():
    x, y = ck.data.regression(n=64, seed=0)
    # forward 1 is fit's check that the model takes x; then 4 steps per epoch, so
    # forward 11 is the 3rd epoch's 2nd step
    model = _NaNAfter(after=10)
    with pytest.raises(ck.NonFiniteLossError, match="in epoch 3, step 2") as err:
        ck.fit(model, (x, y), epochs=5, batch_size=16, progress=False)
    assert (err.value.epoch, err.value.step) == (3, 2)
    # the same epoch as record mode's `diverged`
    again = ck.fit(_NaNAfter(after=10), (x, y), epochs=5, batch_size=16, progress=False,
                   on_nonfinite="record")
    assert int(again.diverged) == err.value.epoch
    assert "fit(..., on_nonfinite='record')" in str(err.value)
    hist = err.value.history
    assert hist.sizes["epoch"] == 2 and hist.attrs["status"] == "failed"
    assert bool(hist.loss.notnull().all())



def test_record_mode_stops_at_divergence_and_leaves_nan_parameters():
    x, y = ck.data.regression(n=64, seed=0)
    calls = {}
    for epochs in (5, 50):
        model = _NaNAfter(after=10)  # forward 11: the third epoch's second step
        hist = ck.fit(model, (x, y), epochs=epochs, batch_size=16, progress=False,
                      on_nonfinite="record")
        calls[epochs] = model.calls
        assert int(hist.diverged) == 3 and hist.attrs["status"] == "failed"
        assert hist.sizes["epoch"] == epochs  # the epochs not run are there, NaN
        assert bool(hist.loss.sel(epoch=[1, 2]).notnull().all())
        assert bool(hist.loss.sel(epoch=slice(3, None)).isnull().all())
        assert all(bool(p.isnan().all()) for p in model.parameters())
    # training stopped after the third epoch (1 + 3 × 4 forwards) whatever the epochs asked for
    assert calls[5] == calls[50] == 1 + 3 * 4
    with pytest.raises(ValueError, match="on_nonfinite must be one of"):
        ck.fit(_NaNAfter(after=10), (x, y), progress=False, on_nonfinite="skip")


def test_record_mode_without_divergence_trains_as_raise_mode_does():
    x, y = ck.data.regression(n=64, seed=0)
    weights, losses = [], []
    for mode in ("raise", "record"):
        torch.manual_seed(0)
        model = ck.models.mlp([1, 16, 1])
        hist = ck.fit(model, (x, y), ck.WeightDecay(lam=1e-3), epochs=3, batch_size=16,
                      optimizer="sgd", lr=0.1, progress=False, on_nonfinite=mode)
        weights.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
        losses.append(hist.loss.values)
    assert torch.equal(weights[0], weights[1])
    np.testing.assert_array_equal(losses[0], losses[1])
    assert int(hist.diverged) == 0 and hist.attrs["status"] == "done"


def _authors_lambdas(acc, lam, increment, goal, warmup, cooldown):
    """λ per epoch from the authors' ``lamda_scheduler`` (their train.py), as their main.py
    drives it: built before training (it sets λ to the warm-up value 0), called after each
    epoch with that epoch's training accuracy. Written from their logic, not from clipkit's."""
    current, w, cool = 0.0, warmup, cooldown
    lambdas = []
    for a in acc:
        lambdas.append(current)  # the epoch trains with the λ set so far
        if w > 0:
            w -= 1
            current = 0.0
        elif w == 0:
            w = -1
            current = lam
        elif cool > 0:
            cool -= 1
        else:
            cool = cooldown
            current = current + increment if a > goal else max(current - increment, 0.0)
    return lambdas


@pytest.mark.parametrize("warmup, cooldown", [(5, 1), (0, 0), (2, 3), (5, 0)])
def test_discrepancy_schedule_gives_the_authors_lambda_per_epoch(warmup, cooldown):
    gen = torch.Generator().manual_seed(warmup * 10 + cooldown)
    acc = (0.85 + 0.1 * torch.rand(30, generator=gen, dtype=torch.float64)).tolist()
    lam, delta, goal = 0.1, 0.04, 0.9
    expected = _authors_lambdas(acc, lam, delta, goal, warmup, cooldown)
    schedule = ck.Discrepancy(goal_acc=goal, delta=delta, every=cooldown + 1, warmup=warmup + 1)
    got, prev, acc_prev = [], None, None
    base = torch.tensor([lam], dtype=torch.float64)
    for epoch, a in enumerate(acc):
        prev = schedule(epoch, base, prev, acc_prev)
        got.append(float(prev))
        acc_prev = torch.tensor([a], dtype=torch.float64)
    assert got == pytest.approx(expected, abs=1e-12)
    assert len(set(expected[warmup + 1:])) > 2  # the rule did act, both ways


def test_fit_follows_the_authors_discrepancy_rule_on_its_own_accuracies():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(256, 2, generator=gen)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).long()
    method = ck.CLIP(lam=0.05, schedule=ck.Discrepancy(goal_acc=0.9, delta=0.02, every=2,
                                                       warmup=2))
    hist = ck.fit(ck.models.mlp([2, 16, 2], seed=0), (x, y), method=method, epochs=9,
                  batch_size=64, lr=1e-2, progress=False)
    expected = _authors_lambdas(hist.acc.values.tolist(), 0.05, 0.02, 0.9, 1, 1)
    assert hist.lam_epoch.values.tolist() == pytest.approx(expected, abs=1e-6)
    assert max(expected) > 0.05  # the accuracy passed the goal: λ was raised


def test_a_lambda_the_schedule_never_applies_is_warned_about():
    x, y = ck.data.regression(n=64, seed=0)
    kw = dict(epochs=3, batch_size=32, progress=False)
    with pytest.warns(UserWarning, match=r"CLIP: λ = 0.1 was never applied: the schedule "
                                         r"Warmup\(epochs=5\) kept λ at 0 in all 3 epochs"):
        ck.fit(ck.models.mlp([1, 8, 1]), (x, y), ck.CLIP(lam=0.1, pairs=4,
                                                         schedule=ck.Warmup(5)), **kw)
    with pytest.warns(UserWarning, match=r"λ = 1 was never applied"):  # only the held copy
        ck.fit_path(lambda: ck.models.mlp([1, 8, 1]), (x, y),
                    ck.WeightDecay(schedule=ck.Warmup(5)), lam=[0.0, 1.0], **kw)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # applied from epoch 2 on: no warning
        ck.fit(ck.models.mlp([1, 8, 1]), (x, y), ck.CLIP(lam=0.1, pairs=4,
                                                         schedule=ck.Warmup(1)), **kw)


class _Stream:
    """A stand-in for sys.stderr that records what is written and says whether it is a tty."""

    def __init__(self, tty: bool):
        self.tty, self.text = tty, ""

    def isatty(self) -> bool:
        return self.tty

    def write(self, s: str) -> int:
        self.text += s
        return len(s)

    def flush(self) -> None:
        pass


@pytest.mark.parametrize("tty, progress, shown", [
    (False, None, False),  # a script's log file: no bar by default
    (True, None, True),    # a terminal: a bar
    (False, True, True),   # forced on
    (True, False, False),  # forced off
])
def test_progress_bar_by_default_only_where_someone_watches(regression, monkeypatch, tty,
                                                            progress, shown):
    stream = _Stream(tty)
    monkeypatch.setattr("sys.stderr", stream)
    model = ck.models.mlp([1, 8, 1], seed=0)
    ck.fit(model, regression, epochs=2, batch_size=64, progress=progress)
    assert ("fit Standard" in stream.text) == shown, stream.text


def test_momentum_is_sgds_and_a_momentum_given_with_adam_is_named(regression):
    def run(**kw):
        model = ck.models.mlp([1, 8, 1], seed=0)
        hist = ck.fit(model, regression, epochs=2, batch_size=64, progress=False, **kw)
        return json.loads(hist.attrs["config"])["momentum"], _params(model)

    assert run(optimizer="sgd", lr=0.01)[0] == 0.9  # None: the authors' 0.9
    default, w_default = run(optimizer="sgd", lr=0.01)
    same, w_same = run(optimizer="sgd", lr=0.01, momentum=0.9)
    assert all(torch.equal(a, b) for a, b in zip(w_default, w_same, strict=True))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert run(optimizer="adam")[0] is None
    with pytest.warns(UserWarning, match=r"momentum=0.5 has no effect with optimizer='adam'"):
        recorded, w_given = run(optimizer="adam", momentum=0.5)
    assert recorded is None
    assert all(torch.equal(a, b) for a, b in zip(w_given, run(optimizer="adam")[1], strict=True))
