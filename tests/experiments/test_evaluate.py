"""clipkit.experiments.evaluate: the result schema on tiny models, and the λ-grid training."""

import json
import math

import numpy as np
import pytest
import torch
import xarray as xr

import clipkit as ck


@pytest.fixture(scope="module")
def images():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(60, 1, 4, 4, generator=g)
    y = (x.flatten(1)[:, :8].sum(1) > x.flatten(1)[:, 8:].sum(1)).long()
    return x, y


def model_fn():
    return ck.models.classifier("mlp", hidden=[8], activation="relu", image_shape=(1, 4, 4),
                                num_classes=2)


def test_every_attack_name_builds_an_attack_and_unknown_names_are_named():
    for name in ck.evaluate.ATTACKS:
        assert isinstance(ck.evaluate.make_attack(name), ck.attacks.Attack)
    assert isinstance(ck.evaluate.make_attack("pgd_l2_authors"), ck.attacks.AuthorsPGD)
    with pytest.raises(ValueError, match="unknown attack 'cw'; accepted: noise"):
        ck.evaluate.make_attack("cw")


@pytest.mark.parametrize("method", [ck.WeightDecay(), ck.SpectralNorm()],
                         ids=["vectorised path", "one fit per lam"])
def test_a_lambda_grid_gives_one_model_per_lambda_and_histories_over_lam_and_epoch(method,
                                                                                   images):
    lams = [0.0, 0.1] if method.name == "WeightDecay" else [0.0]
    torch.manual_seed(123)
    models, hist = ck.evaluate.train_lambda_grid(model_fn, images, method, lams, seed=1,
                                                 epochs=2, batch_size=20, progress=False)
    after = torch.rand(3)
    torch.manual_seed(123)
    assert torch.equal(after, torch.rand(3))  # the caller's generator untouched (was reseeded)
    assert len(models) == len(lams) and hist.loss.dims == ("lam", "epoch")
    assert list(hist.lam.values) == lams
    assert not any(v.startswith(("param_", "buffer_")) for v in hist)



def test_a_diverging_lambda_is_recorded_and_the_others_train_as_without_it(images):
    sgd = {"epochs": 3, "batch_size": 20, "optimizer": "sgd", "lr": 0.1, "progress": False}
    with pytest.raises(ck.NonFiniteLossError, match="on_nonfinite='record'"):
        ck.evaluate.train_lambda_grid(model_fn, images, ck.WeightDecay(), [0.0, 1e10],
                                      seed=1, **sgd)
    models, hist = ck.evaluate.train_lambda_grid(model_fn, images, ck.WeightDecay(),
                                                 [0.0, 1e10], seed=1, on_nonfinite="record",
                                                 **sgd)
    alone, alone_hist = ck.evaluate.train_lambda_grid(model_fn, images, ck.WeightDecay(), [0.0],
                                                      seed=1, **sgd)
    assert models[1] is None and list(hist.diverged.values) == [0, 1]
    for p, q in zip(models[0].parameters(), alone[0].parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(hist.loss.sel(lam=0.0), alone_hist.loss.sel(lam=0.0), rtol=1e-6)
    assert bool(hist.loss.sel(lam=1e10).isnull().all())
    # one fit per λ (spectral normalisation): a learning rate that overflows at once
    models, hist = ck.evaluate.train_lambda_grid(model_fn, images, ck.SpectralNorm(), [0.0],
                                                 seed=1, on_nonfinite="record",
                                                 **{**sgd, "lr": 1e38})
    assert models == [None] and list(hist.diverged.values) == [1]
    with pytest.raises(ValueError, match="on_nonfinite must be one of"):
        ck.evaluate.train_lambda_grid(model_fn, images, ck.WeightDecay(), [0.1],
                                      on_nonfinite="ignore")


@pytest.mark.filterwarnings("ignore:test accuracy after the last epoch is at chance")  # tiny runs
def test_a_diverged_lambda_has_nan_results_and_a_grid_where_all_diverged_is_an_error(images):
    lams = [0.0, 1e10]
    models, hist = ck.evaluate.train_lambda_grid(
        model_fn, images, ck.WeightDecay(), lams, seed=1, epochs=2, batch_size=20,
        optimizer="sgd", lr=0.1, test=images, progress=False, on_nonfinite="record")
    grids = {"pgd_l2": [0.0, 0.5]}
    evals = [None if m is None else ck.evaluate.evaluate_classifier(
        m, images, eval_data=images, attacks=grids, pgd_steps=3, bracket_steps=3)
        for m in models]
    ds = ck.evaluate.classification_result(hist, evals, lams, ck.WeightDecay(), n_test=60,
                                           n_eval=60)
    for var in ("clean_acc", "robust_acc", "lip_lower", "lip_upper", "certified_acc"):
        assert bool(ds[var].sel(lam=1e10).isnull().all()), var
        assert bool(ds[var].sel(lam=0.0).notnull().any()), var
    assert list(ds.diverged.values) == [0, 1] and "NaN" in ds.diverged.attrs["description"]
    assert ds.attrs["bracket_notes"].endswith("| diverged: not evaluated")
    with pytest.raises(ValueError, match=r"every evaluation is None \(λ = 0, 1e\+10 diverged, "
                                         r"in epochs \[0, 1\]\): nothing to report"):
        ck.evaluate.classification_result(hist, [None, None], lams, ck.WeightDecay(),
                                          n_test=60, n_eval=60)
    with pytest.raises(ValueError, match="1 evaluations for 2 λ values"):
        ck.evaluate.classification_result(hist, evals[:1], lams, ck.WeightDecay(), n_test=60,
                                          n_eval=60)


def test_bad_arguments_are_named_before_any_training(images):
    with pytest.raises(TypeError, match="lams must be a list of λ values, got 0.1"):
        ck.evaluate.train_lambda_grid(model_fn, images, ck.WeightDecay(), 0.1)
    with pytest.raises(TypeError, match="method must be a clipkit method"):
        ck.evaluate.train_lambda_grid(model_fn, images, None, [0.1])
    with pytest.raises(ValueError, match="train_lambda_grid: seed must be an int >= 0"):
        ck.evaluate.train_lambda_grid(model_fn, images, ck.WeightDecay(), [0.1], seed=[0, 1])
    with pytest.raises(ValueError, match="Standard has no penalty weight"):
        ck.evaluate.train_lambda_grid(model_fn, images, ck.Standard(), [0.1, 1.0])
    model = model_fn()
    for attacks in ({"fgsm": 0.1}, ["fgsm"]):
        with pytest.raises(TypeError, match="attacks must map attack names to lists of ε"):
            ck.evaluate.evaluate_classifier(model, images, eval_data=images, attacks=attacks)
    with pytest.raises(ValueError, match="attack must be one of .*got 'cw'"):
        ck.evaluate.evaluate_classifier(model, images, eval_data=images, attacks={"cw": [0.1]})
    x, y = images
    with pytest.raises(ValueError, match=r"test\[1\] \(y\): class labels must lie in \[0, 2\)"):
        ck.evaluate.evaluate_classifier(model, (x, y + 5), eval_data=images, attacks={})
    with pytest.raises(ValueError, match=r"eval_data\[0\] \(x\) holds NaN"):
        ck.evaluate.evaluate_classifier(model, images, eval_data=(x * math.nan, y), attacks={})


@pytest.mark.filterwarnings("ignore:test accuracy after the last epoch is at chance")  # tiny runs
def test_a_classification_result_has_the_documented_variables(images):
    lams = [0.0, 1.0]
    models, hist = ck.evaluate.train_lambda_grid(model_fn, images, ck.WeightDecay(), lams,
                                                 epochs=2, batch_size=20, test=images,
                                                 progress=False)
    grids = {"noise": [0.0, 0.2], "pgd_l2": [0.0, 0.5], "pgd_l2_authors": [0.5]}
    evals = [ck.evaluate.evaluate_classifier(m, images, eval_data=images, attacks=grids,
                                             pgd_steps=3, bracket_steps=3) for m in models]
    ds = ck.evaluate.classification_result(hist, evals, lams, ck.WeightDecay(), n_test=60,
                                           n_eval=60)
    assert ds.robust_acc.dims == ("lam", "attack", "eps")
    assert list(ds.attack.values) == list(grids) and list(ds.eps.values) == [0.0, 0.2, 0.5]
    assert ds.test_acc.dims == ("lam", "epoch") and ds.clean_acc.dims == ("lam",)
    # a cell outside an attack's grid is NaN; ε = 0 is the clean accuracy on those points
    assert np.isnan(float(ds.robust_acc.sel(lam=0.0, attack="noise", eps=0.5)))
    np.testing.assert_allclose(ds.robust_acc.sel(attack="noise", eps=0.0), ds.clean_acc)
    assert bool((ds.robust_acc.fillna(0) <= ds.clean_acc + 1e-12).all())
    assert bool((ds.lip_lower <= ds.lip_upper * (1 + 1e-9)).all())
    assert "60 test images" in ds.clean_acc.attrs["description"]
    assert "WeightDecay" in ds.attrs["method_config"] and ds.attrs["bracket_notes"].count("|") == 1
    # certified accuracy: at the PGD-ℓ2 radii only, clean at ε = 0, never above PGD
    assert ds.certified_acc.dims == ("lam", "eps")
    assert bool(ds.certified_acc.sel(eps=0.2).isnull().all())
    np.testing.assert_allclose(ds.certified_acc.sel(eps=0.0),
                               ds.robust_acc.sel(attack="pgd_l2", eps=0.0))
    assert bool((ds.certified_acc.sel(eps=0.5)
                 <= ds.robust_acc.sel(attack="pgd_l2", eps=0.5) + 1e-12).all())
    assert "bracket upper" in ds.attrs["certified_notes"]
    assert "√2·L·ε" in ds.certified_acc.attrs["description"]
    # each attack's settings ride on robust_acc, ε left out (it is the axis)
    settings = json.loads(ds.robust_acc.attrs[ck.evaluate.ATTACK_SETTINGS])
    assert list(settings) == sorted(grids)
    assert settings["pgd_l2"]["steps"] == 3 and settings["pgd_l2"]["restarts"] == 1
    assert settings["pgd_l2"]["logits"] is True and settings["pgd_l2_authors"]["steps"] == 3
    assert settings["noise"]["attack"] == "GaussianNoise"
    assert not any("eps" in s for s in settings.values())


def antipodal_linear(seed: int = 0) -> torch.nn.Module:
    """Two logits ±(w·x + c): √2·‖W‖₂ = ‖w_1 − w_0‖, so the global margin bound is exact."""
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 2))
    with torch.no_grad():
        net[1].weight[0] = -net[1].weight[1]
        net[1].bias[0] = -net[1].bias[1]
    return net.eval()


@pytest.mark.parametrize("how", ["global", "local"])
def test_certified_accuracy_of_a_linear_classifier_is_the_distance_to_its_boundary(images, how):
    net = antipodal_linear()
    x, y = images
    w, c = net[1].weight[1].detach().double(), float(net[1].bias[1].detach())
    s = x.flatten(1).double() @ w + c
    right = (s > 0) == (y == 1)
    radius = torch.where(right, s.abs() / w.norm(), torch.zeros_like(s))
    grid = [0.0, 0.02, 0.05, 0.1]
    assert float((radius[:, None] - torch.tensor(grid[1:])).abs().min()) > 1e-6
    ds = ck.evaluate.evaluate_classifier(net, images, eval_data=images, bracket_steps=2,
                                         attacks={"pgd_l2": grid}, pgd_steps=2, certified=how)
    expected = [float(right.double().mean())] + [float((radius > e).double().mean())
                                                  for e in grid[1:]]
    np.testing.assert_allclose(ds.certified_acc.values, expected, atol=1e-12)
    assert expected[1] > expected[-1] > 0  # the grid tells radii apart


def test_certified_accuracy_can_be_turned_off_and_bad_choices_are_named(images):
    net = antipodal_linear()
    ds = ck.evaluate.evaluate_classifier(net, images, eval_data=images, bracket_steps=2,
                                         attacks={"pgd_l2": [0.0, 0.1]}, pgd_steps=2,
                                         certified="none")
    assert bool(ds.certified_acc.isnull().all()) and ds.attrs["certified_note"] == "not computed"
    with pytest.raises(ValueError, match="certified must be one of 'global', 'local'"):
        ck.evaluate.evaluate_classifier(net, images, eval_data=images, attacks={},
                                        certified="tight")


def test_a_regression_result_concatenates_methods_and_keeps_the_data():
    x, y = ck.data.regression(n=20, seed=0)
    xt, yt = ck.data.regression(n=30, seed=1)
    grid = torch.linspace(-1, 1, 11)[:, None]
    fits = {}
    for name in ("standard", "clip"):
        model = ck.models.mlp([1, 8, 1], seed=0)
        hist = ck.fit(model, (x, y), ck.make_method(name), epochs=3, progress=False)
        fits[name] = ck.evaluate.evaluate_regression(
            model, (x, y), (xt, yt), grid, ck.data.regression_target).assign(loss=hist.loss)
    ds = ck.evaluate.regression_result(fits, (x, y), ck.data.regression_target)
    assert list(ds.method.values) == ["standard", "clip"] and ds.f.dims == ("method", "x_grid")
    assert ds.loss.dims == ("method", "epoch") and ds.x.dims == ("sample",)
    np.testing.assert_allclose(ds.target, ck.data.regression_target(grid.double())[:, 0])
    assert bool((ds.lip_exact <= ds.lip_upper * (1 + 1e-6)).all())
    assert isinstance(ds, xr.Dataset) and float(ds.label_mean) == pytest.approx(float(y.mean()))
    with pytest.raises(ValueError, match=r"test must be \(x, y\) of shape \(N, 1\) each, got "
                                         r"\(30, 1\) and \(30,\)"):
        ck.evaluate.evaluate_regression(model, (x, y), (xt, yt[:, 0]), grid,
                                        ck.data.regression_target)
    with pytest.raises(ValueError, match=r"x_grid must have shape \(G, 1\), got \(11,\)"):
        ck.evaluate.evaluate_regression(model, (x, y), (xt, yt), grid[:, 0],
                                        ck.data.regression_target)


def test_a_diverged_regression_method_is_recorded_and_the_others_evaluated():
    x, y = ck.data.regression(n=20, seed=0)
    xt, yt = ck.data.regression(n=30, seed=1)
    grid = torch.linspace(-1, 1, 11)[:, None]
    fits = {}
    # the diverging one first: the others' evaluation gives the result its variables
    for name, lam in (("weight_decay", 1e38), ("standard", None)):
        method = ck.make_method(name, lam)
        model = ck.models.mlp([1, 8, 1], seed=0)
        hist = ck.fit(model, (x, y), method, epochs=3, progress=False, on_nonfinite="record")
        fits[name] = ck.evaluate.regression_fit(model, hist, method, (x, y), (xt, yt), grid,
                                                ck.data.regression_target)
    assert int(fits["weight_decay"].diverged) == 1 and "f" not in fits["weight_decay"]
    ds = ck.evaluate.regression_result(fits, (x, y), ck.data.regression_target)
    assert ds.diverged.values.tolist() == [1, 0]
    bad, good = ds.sel({"method": "weight_decay"}), ds.sel({"method": "standard"})
    for var in ("f", "test_mse", "lip_lower", "lip_upper", "lip_exact"):
        assert bool(bad[var].isnull().all()) and bool(good[var].notnull().all()), var
    assert float(bad.lam) == 1e38 and bool(bad.loss.isnull().all())
    assert ck.results.has_nan(ds) == []  # recorded, not a fault
    ck.evaluate.regression_result({"standard": fits["standard"]}, (x, y),
                                  ck.data.regression_target)
    with pytest.raises(ValueError, match=r"no method was evaluated \(every one diverged: "
                                         r"\{'weight_decay': 1\}\)"):
        ck.evaluate.regression_result({"weight_decay": fits["weight_decay"]}, (x, y),
                                      ck.data.regression_target)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_on_a_gpu_trained_models_come_back_and_evaluation_takes_cpu_data(images):
    """What the notebooks do on a GPU machine: fit / the λ grid train on the GPU and leave
    the models on the CPU, where the notebook's data are; a model the caller put on the GPU
    is evaluated on that same CPU data."""
    for method in (ck.WeightDecay(), ck.SpectralNorm()):  # the vectorised path, one fit per λ
        models, _ = ck.evaluate.train_lambda_grid(model_fn, images, method, [0.0], seed=1,
                                                  epochs=1, batch_size=20, progress=False,
                                                  device="cuda")
        assert {p.device.type for m in models for p in m.parameters()} == {"cpu"}
    ds = ck.evaluate.evaluate_classifier(models[0].cuda(), images, eval_data=images,
                                         bracket_steps=2, attacks={"pgd_l2": [0.0, 0.1]},
                                         pgd_steps=2)
    assert 0.0 <= float(ds.certified_acc[-1]) <= float(ds.clean_acc) <= 1.0
    x, y = ck.data.regression(n=20, seed=0)
    model = ck.models.mlp([1, 8, 1], seed=0)
    ck.fit(model, (x, y), ck.CLIP(), epochs=2, progress=False, device="cuda")
    assert next(model.parameters()).device.type == "cpu"
    fit = ck.evaluate.evaluate_regression(model.cuda(), (x, y), (x, y),
                                          torch.linspace(-1, 1, 11)[:, None],
                                          ck.data.regression_target)
    assert np.isfinite(fit.f.values).all() and float(fit.lip_exact) <= float(fit.lip_upper) * 1.01


def test_pgd_restarts_reach_clipkits_pgd_and_never_raise_its_robust_accuracy(images):
    for name in ("pgd_l2", "pgd_linf"):
        assert ck.evaluate.make_attack(name, restarts=3).restarts == 3
    assert not hasattr(ck.evaluate.make_attack("pgd_l2_authors", restarts=3), "restarts")
    torch.manual_seed(0)
    net = model_fn()
    ck.fit(net, images, epochs=20, batch_size=20, lr=1e-2, progress=False)
    grids = {"pgd_l2": [0.0, 0.2, 0.5], "pgd_linf": [0.0, 0.05, 0.1]}
    one, more = (ck.evaluate.evaluate_classifier(net, images, eval_data=images, attacks=grids,
                                                 pgd_steps=2, pgd_restarts=r, bracket_steps=2,
                                                 certified="none") for r in (1, 4))
    measured = one.robust_acc.notnull()  # NaN: ε not in that attack's grid
    assert bool((more.robust_acc <= one.robust_acc).where(measured, True).all())
    assert bool((more.robust_acc.isnull() == ~measured).all())
    np.testing.assert_array_equal(more.clean_acc, one.clean_acc)


def test_a_lambda_at_chance_is_named_in_a_warning():
    import warnings

    import xarray as xr

    from clipkit.experiments.evaluate import warn_at_chance

    hist = xr.Dataset({"test_acc": (("lam", "epoch"), [[0.5, 0.115], [0.11, 0.8], [0.2, np.nan]])},
                      coords={"lam": [0.0, 0.1, 1.0]})
    labels = torch.arange(10).repeat(3)  # 10 classes: chance 0.1, at chance up to 0.12
    with pytest.warns(UserWarning, match=r"at chance level \(1/10\) for λ = 0: .* collapsed"):
        assert warn_at_chance(hist, labels) == [0.0]  # not 0.1 (learnt), not 1.0 (diverged)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert warn_at_chance(hist.assign(test_acc=hist.test_acc + 0.1), labels) == []
        assert warn_at_chance(hist, labels.float()) == []  # a regression: no classes
        assert warn_at_chance(hist.drop_vars("test_acc"), labels) == []
