import warnings

import numpy as np
import pytest
import torch

import clipkit as ck
from clipkit.core.affine_first import first_linear
from clipkit.train.path import init_copy, model_at


@pytest.fixture(scope="module")
def data64():
    x, y = ck.data.regression(n=96, noise=0.1, seed=0)
    return x.double(), y.double()


def model_fn():
    return ck.models.mlp([1, 12, 12, 1], activation="relu").double()


KW = dict(epochs=3, batch_size=32, lr=1e-2, progress=False)


def _rel(a, b):
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


@pytest.mark.parametrize(
    "method, lams",
    [
        (ck.Standard(), [0.0]),
        (ck.WeightDecay(), [1e-3, 1e-1]),
        (ck.CLIP(), [0.0, 0.1, 1.0]),
        (ck.CLIP(init="points", reduction="mean", power=2, ascent_steps=2, refresh=4), [0.05]),
        (ck.CLIP.authors(pairs=8, refresh=5, schedule=ck.Warmup(1), step_size=1.0),
         [0.0, 0.1]),
        (ck.CLIP(refresh=5, ascent_steps=2, accept_rtol=1e-4), [0.0, 0.5]),
        (ck.CLIP(reduction="mean", ascent_on="penalty", power=2), [0.5]),
        (ck.CLIP(power=2, skip_above=0.05, keep_step_sizes=True, refresh=3), [1.0]),  # skips some
        (ck.GradientPenalty(), [0.01, 0.1]),
        (ck.AdversarialTraining(eps=0.05, steps=2, data_range=None), [0.0]),
    ],
    ids=lambda v: v.name if isinstance(v, ck.Method) else str(len(v)),
)
def test_a_path_equals_separate_fits(method, lams, data64):
    seeds = [0, 5]
    ds = ck.fit_path(model_fn, data64, method, lam=lams, seed=seeds, **KW)
    assert dict(ds.sizes)["lam"] == len(lams) and dict(ds.sizes)["seed"] == 2
    assert ds.loss.dims == ("lam", "seed", "epoch")
    for lam in lams:
        for seed in seeds:
            model = init_copy(model_fn, seed)
            hist = ck.fit(model, data64, method.replace(lam=lam), seed=seed, **KW)
            trained = model_at(ds, model_fn, lam=lam, seed=seed)
            for p, q in zip(model.parameters(), trained.parameters(), strict=True):
                assert _rel(q.detach(), p.detach()) <= 1e-6
            for name in ("loss", "lip", "penalty", "skipped"):
                if name in hist and bool(hist[name].notnull().all()):  # no penalty: NaN
                    path_value = torch.tensor(ds[name].sel(lam=lam, seed=seed).values)
                    assert _rel(path_value, torch.tensor(hist[name].values)) <= 1e-6, name


@pytest.mark.parametrize("method", [ck.CLIP(pairs=8, ascent_steps=2),
                                    ck.CLIP.authors(pairs=8, schedule=ck.Constant()),
                                    ck.CLIP(pairs=8, ascent_steps=2, ascent_precision="bfloat16"),
                                    ck.CLIP.authors(pairs=8, schedule=ck.Constant(),
                                                    ascent_precision="bfloat16"),
                                    ck.CLIP(pairs=8, reduction="mean", power=2,
                                            ascent_precision="bfloat16")],
                         ids=["2-steps", "authors", "2-steps-bfloat16", "authors-bfloat16",
                              "mean-bfloat16"])
def test_a_path_on_images_equals_separate_fits_with_the_first_layer_split_off(method):
    # 16 -> 6 narrows, 16 * (16 - 6) > 16 * 6 and the pairs are unclamped: the ascent
    # evaluates its proposals through the linearization of the first layer
    # (clipkit.core.affine_first), in fit and in the path
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(64, 1, 4, 4, generator=gen, dtype=torch.float64)
    y = torch.randint(3, (64,), generator=gen)

    def images_fn():
        return torch.nn.Sequential(torch.nn.Flatten(),
                                   *ck.models.mlp([16, 6, 3], activation="sigmoid")).double()

    assert first_linear(images_fn()) == 1

    lams, seeds = [0.0, 0.5], [0, 5]
    ds = ck.fit_path(images_fn, (x, y), method, lam=lams, seed=seeds, **KW)
    for lam in lams:
        for seed in seeds:
            model = init_copy(images_fn, seed)
            hist = ck.fit(model, (x, y), method.replace(lam=lam), seed=seed, **KW)
            trained = model_at(ds, images_fn, lam=lam, seed=seed)
            for p, q in zip(model.parameters(), trained.parameters(), strict=True):
                assert _rel(q.detach(), p.detach()) <= 1e-6
            path_lip = torch.tensor(ds.lip.sel(lam=lam, seed=seed).values)
            assert _rel(path_lip, torch.tensor(hist.lip.values)) <= 1e-6


def _bn_fn():
    return torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.BatchNorm1d(8),
                               torch.nn.ReLU(), torch.nn.Linear(8, 3)).double()


@pytest.mark.parametrize(("method", "lams"), [(ck.Standard(), [0.0]), (ck.CLIP(pairs=8), [0.5])],
                         ids=["standard", "clip"])
def test_batch_norm_statistics_come_back_with_the_parameters(method, lams):
    # eval mode uses the running statistics: a path that dropped them rebuilt networks that
    # computed something else than the ones it trained
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(96, 5, generator=gen, dtype=torch.float64), torch.randint(3, (96,))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = ck.fit_path(_bn_fn, (x, y), method, lam=lams, seed=[0, 5], **KW)
    assert any("on a model with batch norm (1)" in str(w.message) for w in caught) == (
        method.name == "CLIP")  # its pairs pass through batch norm in training mode
    assert ds["buffer_1_running_mean"].attrs == {"buffer": "1.running_mean"}
    for lam in lams:
        for seed in (0, 5):
            model = init_copy(_bn_fn, seed)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ck.fit(model, (x, y), method.replace(lam=lam), seed=seed, **KW)
            trained = model_at(ds, _bn_fn, lam=lam, seed=seed)
            for (name, b), c in zip(model.named_buffers(), trained.buffers(), strict=True):
                assert _rel(c.double(), b.double()) <= 1e-6, name
            assert int(trained[1].num_batches_tracked) == int(model[1].num_batches_tracked) > 0
            assert _rel(trained(x).detach(), model(x).detach()) <= 1e-6  # in eval mode


def test_a_path_without_buffers_warns_when_the_model_has_some():
    x, y = torch.randn(32, 5, dtype=torch.float64), torch.randint(3, (32,))
    ds = ck.fit_path(_bn_fn, (x, y), ck.Standard(), **KW)
    old = ds.drop_vars([v for v in ds.data_vars if str(v).startswith("buffer_")])
    with pytest.warns(UserWarning, match="stored no buffer 1.running_mean, 1.running_var, "
                                         "1.num_batches_tracked"):
        model_at(old, _bn_fn)


def test_copies_differ_by_lambda_and_seed(data64):
    ds = ck.fit_path(model_fn, data64, ck.CLIP(), lam=[0.0, 1.0], seed=[0, 1], **KW)
    last = ds.loss.isel(epoch=-1)
    assert float(last.sel(lam=1.0, seed=0)) > float(last.sel(lam=0.0, seed=0))
    assert float(last.sel(lam=0.0, seed=0)) != float(last.sel(lam=0.0, seed=1))
    assert ds.lam_epoch.sel(lam=1.0).values.tolist() == [[1.0] * 3] * 2


def test_max_models_chunks_give_the_same_result(data64):
    a = ck.fit_path(model_fn, data64, ck.CLIP(), lam=[0.0, 0.1, 1.0], seed=0, **KW)
    b = ck.fit_path(model_fn, data64, ck.CLIP(), lam=[0.0, 0.1, 1.0], seed=0, max_models=2, **KW)
    assert float(abs(a.loss - b.loss).max()) <= 1e-9
    assert float(abs(a["param_0_weight"] - b["param_0_weight"]).max()) <= 1e-9


def test_classification_path_with_test_data():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(128, 2, generator=gen)
    y = (x[:, 0] > 0).long()
    ds = ck.fit_path(lambda: ck.models.mlp([2, 8, 2]), (x, y), ck.CLIP(), lam=[0.0, 0.5],
                     seed=[0], test=(x[:32], y[:32]), epochs=10, batch_size=32, lr=5e-2,
                     progress=False)
    assert {"acc", "test_acc"} <= set(ds.data_vars)
    assert float(ds.acc.sel(lam=0.0, seed=0).isel(epoch=-1)) > 0.8


def test_path_errors_are_clear(data64):
    with pytest.raises(ValueError, match="SpectralNorm cannot be trained as a vectorised path"):
        ck.fit_path(model_fn, data64, ck.SpectralNorm(), **KW)
    with pytest.raises(ValueError, match="lam has repeated values"):
        ck.fit_path(model_fn, data64, ck.CLIP(), lam=[0.1, 0.1], **KW)
    with pytest.raises(ValueError, match="lam must be a finite number >= 0, got -1"):
        ck.fit_path(model_fn, data64, ck.CLIP(), lam=[0.1, -1.0], **KW)
    with pytest.raises(TypeError, match="model_fn must return a torch.nn.Module"):
        ck.fit_path(lambda: None, data64, ck.CLIP(), **KW)
    x, y = data64
    with pytest.raises(ValueError, match=r"data\[0\] \(x\): the model does not take"):
        ck.fit_path(model_fn, (torch.cat([x, x], dim=1), y), ck.CLIP(), **KW)
    # a λ grid for a method without λ would train identical copies labelled by λ
    with pytest.raises(ValueError, match=r"lam=\[0.01, 0.1\], but Standard has no penalty"):
        ck.fit_path(model_fn, data64, lam=[0.01, 0.1], **KW)
    ds = ck.fit_path(model_fn, data64, lam=[0.0], seed=range(2), **KW)  # λ = 0 is fine
    assert list(ds.seed.values) == [0, 1]
    # a copy axis of length one needs no value; a longer one does
    one = model_at(ds, model_fn, seed=1)
    same = model_at(ds, model_fn, lam=0.0, seed=1)
    assert all(torch.equal(a, b) for a, b in zip(one.parameters(), same.parameters(),
                                                 strict=True))
    with pytest.raises(ValueError, match=r"choose one copy: seed = one of 0, 1"):
        model_at(ds, model_fn)
    with pytest.raises(ValueError, match=r"lam=0.5 is not in the path; it has lam = 0.0"):
        model_at(ds, model_fn, lam=0.5, seed=0)
    with pytest.raises(ValueError, match=r"epoch=3, but the path's copies are indexed by lam, "
                                         r"seed"):
        model_at(ds, model_fn, epoch=3)
    for bad in (1.7, [1, 1.2], -1):
        with pytest.raises(ValueError, match="seed must be an int >= 0 or a list of them"):
            ck.fit_path(model_fn, data64, ck.CLIP(), seed=bad, **KW)
    with pytest.raises(TypeError, match="model_fn must be a function that builds a fresh model"):
        ck.fit_path(model_fn(), data64, ck.CLIP(), **KW)


def test_images_train_with_clip_alone_and_as_a_path():
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(48, 1, 28, 28, generator=gen)
    y = torch.randint(10, (48,), generator=gen)
    method = ck.CLIP(lam=0.1, data_range=(0.0, 1.0), pairs=4)
    kw = dict(epochs=1, batch_size=16, lr=1e-3, progress=False)
    model = init_copy(lambda: ck.models.cnn(width=4), 0)
    hist = ck.fit(model, (x, y), method, seed=0, **kw)
    ds = ck.fit_path(lambda: ck.models.cnn(width=4), (x, y), method, lam=[0.1, 1.0], seed=0, **kw)
    assert float(hist.lip[0]) > 0
    assert float(ds.loss.sel(lam=0.1, seed=0)[0]) == pytest.approx(float(hist.loss[0]), rel=1e-4)


def test_a_diverging_copy_is_recorded_and_the_others_train_on(data64):
    """With on_nonfinite="record", a λ too large for the learning rate freezes its copies
    alone: the other copies equal a path without it, the diverged ones are NaN from their
    epoch of divergence on and model_at refuses them."""
    kw = dict(KW, optimizer="sgd", epochs=4)
    good, huge = 1e-3, 1e10  # huge: θ grows ~1e8-fold per SGD step, inf in the 2nd epoch
    with pytest.raises(ck.NonFiniteLossError, match=r"on_nonfinite='record'\) trains the other"):
        ck.fit_path(model_fn, data64, ck.WeightDecay(), lam=[good, huge], seed=0, **kw)
    ds = ck.fit_path(model_fn, data64, ck.WeightDecay(), lam=[good, huge], seed=[0, 1],
                     on_nonfinite="record", **kw)
    assert ds.diverged.sel(lam=good).values.tolist() == [0, 0]
    epoch = ds.diverged.sel(lam=huge).values
    assert (epoch > 1).all() and (epoch <= 4).all()
    assert ds.attrs["diverged_copies"] == "; ".join(
        f"lam=1e+10, seed={s}: epoch {e}" for s, e in enumerate(epoch))
    for s in (0, 1):
        loss = ds.loss.sel(lam=huge, seed=s).values
        e = int(ds.diverged.sel(lam=huge, seed=s))
        assert np.isfinite(loss[: e - 1]).all() and np.isnan(loss[e - 1:]).all()
        assert np.isnan(ds["param_0_weight"].sel(lam=huge, seed=s).values).all()
        with pytest.raises(ValueError, match=f"diverged in epoch {e}"):
            model_at(ds, model_fn, lam=huge, seed=s)
    alone = ck.fit_path(model_fn, data64, ck.WeightDecay(), lam=[good], seed=[0, 1], **kw)
    for s in (0, 1):
        a, b = model_at(ds, model_fn, lam=good, seed=s), model_at(alone, model_fn, seed=s)
        for p, q in zip(a.parameters(), b.parameters(), strict=True):
            assert _rel(p.detach(), q.detach()) <= 1e-12
    assert float(abs(ds.loss.sel(lam=good) - alone.loss.sel(lam=good)).max()) <= 1e-12
    # chunks: a diverging chunk does not lose the finished ones
    chunked = ck.fit_path(model_fn, data64, ck.WeightDecay(), lam=[good, huge], seed=[0, 1],
                          on_nonfinite="record", max_models=1, **kw)
    assert chunked.diverged.equals(ds.diverged)
    assert float(abs(chunked.loss - ds.loss).max(skipna=True)) <= 1e-12
    # a chunk whose copies have all diverged stops: the epochs after it were not run (their
    # time is NaN), where beside a good copy the frozen one went through every epoch
    for s in (0, 1):
        e = int(ds.diverged.sel(lam=huge, seed=s))
        assert e < 4
        alone_time = chunked.time.sel(lam=huge, seed=s).values
        assert np.isfinite(alone_time[:e]).all() and np.isnan(alone_time[e:]).all()
        assert np.isfinite(ds.time.sel(lam=huge, seed=s).values).all()


def test_a_clip_copy_diverging_at_once_is_frozen_with_a_selection(data64):
    """CLIP's pairs and a BestEpoch selection cope with a copy that is non-finite from
    its first step: it keeps its initial weights during training and reports none."""
    probe = data64[0][:5]
    seen = []  # each epoch's outputs of the two copies on the probe inputs

    def measure(models, epoch):
        with torch.no_grad():
            seen.append([m(probe).clone() for m in models])
        return {}

    ds = ck.fit_path(model_fn, data64, ck.CLIP(pairs=8), lam=[0.1, 1e308], seed=0,
                     on_nonfinite="record", select=ck.BestEpoch("loss", mode="min"),
                     on_epoch=measure, **KW)
    # the diverged copy kept its last finite weights (the optimizer's moves were undone)
    assert torch.isfinite(seen[0][1]).all()
    assert all(torch.equal(outs[1], seen[0][1]) for outs in seen)
    assert not torch.equal(seen[-1][0], seen[0][0])  # the other one trained on
    assert ds.diverged.sel(lam=1e308).item() == 1 and ds.diverged.sel(lam=0.1).item() == 0
    assert ds.selected.sel(lam=1e308).values.sum() == 0
    assert ds.selected.sel(lam=0.1).values.sum() == 1
    assert np.isnan(ds.loss.sel(lam=1e308).values).all()
    assert np.isfinite(ds.loss.sel(lam=0.1).values).all()
    with pytest.raises(ValueError, match="on_nonfinite must be one of 'raise', 'record'"):
        ck.fit_path(model_fn, data64, ck.CLIP(), on_nonfinite="skip", **KW)


def test_a_model_fn_that_seeds_itself_is_named(data64):
    def seeded_fn():
        return ck.models.mlp([1, 12, 12, 1], activation="relu", seed=0).double()

    with pytest.warns(UserWarning, match="seed 0 and seed 1 start from the same weights"):
        ck.fit_path(seeded_fn, data64, ck.Standard(), seed=[0, 1], **KW)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ck.fit_path(model_fn, data64, ck.Standard(), seed=[0, 1], **KW)  # no warning


def test_bfloat16_models_train_and_their_path_stores_the_weights_exactly(data64):
    x, y = (t.to(torch.bfloat16) for t in data64)

    def bf16_model():
        return ck.models.mlp([1, 8, 1], activation="relu", seed=0).to(torch.bfloat16)

    hist = ck.fit(bf16_model(), (x, y), ck.CLIP(lam=0.1), **KW)
    assert np.isfinite(hist.loss.values).all()
    ds = ck.fit_path(bf16_model, (x, y), ck.CLIP(), lam=[0.0, 0.1], **KW)
    rebuilt = model_at(ds, bf16_model, lam=0.1)
    for name, p in rebuilt.named_parameters():
        assert p.dtype == torch.bfloat16
        stored = torch.from_numpy(ds["param_" + name.replace(".", "_")].sel(lam=0.1).values)
        assert torch.equal(p.float(), stored.reshape(p.shape)), name


def test_dropout_draws_from_the_seed_not_from_the_global_generator():
    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(96, 6, generator=g), torch.randint(3, (96,), generator=g)

    def dropout_net():
        return torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.ReLU(),
                                   torch.nn.Dropout(0.5), torch.nn.Linear(16, 3))

    def fit(seed: int, global_seed: int) -> np.ndarray:
        torch.manual_seed(0)
        net = dropout_net()
        torch.manual_seed(global_seed)  # whatever the caller's generator holds
        return ck.fit(net, (x, y), epochs=2, batch_size=32, seed=seed, progress=False).loss.values

    np.testing.assert_array_equal(fit(0, 1), fit(0, 2))
    assert not np.array_equal(fit(0, 1), fit(1, 1))  # the seed chooses the masks

    def path(global_seed: int, seeds=(0, 1)):
        torch.manual_seed(global_seed)
        return ck.fit_path(dropout_net, (x, y), seed=list(seeds), epochs=2, batch_size=32,
                           progress=False)

    with pytest.warns(UserWarning, match=r"dropout \(2\): the 2 copies' masks are drawn"):
        first = path(1)
    with pytest.warns(UserWarning, match="dropout"):
        np.testing.assert_array_equal(first.loss.values, path(2).loss.values)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # one copy: no warning, and it is the fit of its seed
        one = path(1, seeds=(0,))
    np.testing.assert_array_equal(one.loss.values.ravel(), fit(0, 5))
