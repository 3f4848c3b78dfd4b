import math
import sys
from pathlib import Path

import pytest
import torch

import clipkit as ck
from clipkit.core.affine_first import first_linear
from clipkit.core.pairs import AscentRule, PairState, ascend, quotients
from clipkit.train.protocol import Run

sys.path.insert(0, str(Path(__file__).parent))
from clip_reference import ReferenceCLIP  # noqa: E402


def _linear_forward(w):
    return lambda x: x @ w.T  # (K, P, d) -> (K, P, m)


def test_authors_preset_is_their_code_s_configuration():
    c = ck.CLIP.authors()
    assert (c.pairs, c.ascent_steps, c.step_size, c.factor, c.reduction, c.power, c.refresh) == (
        500, 1, 10.0, 1.3, "max", 2, 2000)
    assert (c.init, c.noise_dist, c.noise, c.data_range) == ("noise", "uniform", 0.1, None)
    assert (c.ascent_on, c.keep_step_sizes, c.skip_above, c.accept_rtol) == (
        "penalty", True, 5000.0, 0.0)
    assert c.schedule == ck.Warmup(6) and c.lam == 0.1
    assert ck.CLIP.authors(pairs=10).pairs == 10


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(lam=-1.0), "lam must be a finite number >= 0, got -1"),
        (dict(lam=float("nan")), "lam must be a finite number"),
        (dict(power=3), "power must be 1 or 2"),
        (dict(reduction="sum"), "reduction must be one of"),
        (dict(init="grid"), "init must be one of"),
        (dict(pairs=0), "pairs must be an int >= 1"),
        (dict(noise=0.0), "noise must be > 0"),
        (dict(data_range=(1.0, 0.0)), "data_range"),
        (dict(ascent_on="q2"), "ascent_on must be one of"),
        (dict(accept_rtol=-1.0), "accept_rtol must be a number >= 0 or None"),
        (dict(skip_above=0.0), "skip_above must be a number > 0 or None"),
        (dict(keep_step_sizes=1), "keep_step_sizes must be True or False"),
        (dict(ascent_precision="half"), "ascent_precision must be one of 'full', 'bfloat16'"),
    ],
)
def test_bad_clip_settings_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ck.CLIP(**kwargs)


def test_lam_of_the_wrong_type_is_a_type_error():
    with pytest.raises(TypeError, match="lam must be a finite number >= 0, got '0.1'"):
        ck.CLIP(lam="0.1")
    with pytest.raises(TypeError, match=r"got tensor\(\[0.1000, 0.2000\]\) \(Tensor\)"):
        ck.CLIP(lam=torch.tensor([0.1, 0.2]))  # one λ, not a grid (that is fit_path's)


def test_numpy_and_torch_scalars_are_numbers_for_lambda():
    import numpy as np

    assert ck.CLIP(lam=np.float32(0.5)).lam == 0.5 and ck.CLIP(lam=np.int64(2)).lam == 2.0
    assert ck.WeightDecay(torch.tensor(0.25)).lam == 0.25
    x, y = ck.data.regression(n=16, seed=0)
    for grid in (np.array([0.5, 1.0], np.float32), torch.tensor([0.5, 1.0])):
        path = ck.fit_path(lambda: ck.models.mlp([1, 4, 1]), (x, y), ck.WeightDecay(), lam=grid,
                           epochs=1, progress=False)
        assert path.lam.values.tolist() == [0.5, 1.0]


# --- the speed-up is exact: the same weights as the 0.1.0 step (tests/train/clip_reference.py)

def _weights(model):
    return torch.cat([p.detach().flatten() for p in model.parameters()])


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(),
        dict(pairs=16, power=2, noise_dist="uniform", step_size=10.0, refresh=7),
        dict(reduction="mean", ascent_steps=3),
        dict(ascent_steps=0, init="points"),
        dict(ascent_steps=2, power=2, lam=1.0, data_range=(-1.0, 1.0)),
    ],
    ids=["defaults", "authors-like", "mean-3-steps", "no-ascent", "2-steps-clamped"],
)
def test_fit_gives_the_weights_of_the_step_before_the_speed_up(kwargs):
    data = ck.data.regression(n=200, noise=0.1, seed=0)
    data = (data[0].double(), data[1].double())
    weights, losses = [], []
    for cls in (ck.CLIP, ReferenceCLIP):
        model = ck.models.mlp([1, 16, 16, 1], activation="relu", seed=0).double()
        hist = ck.fit(model, data, method=cls(**kwargs), epochs=4, seed=3, lr=1e-2,
                      batch_size=32, progress=False)
        weights.append(_weights(model))
        losses.append(torch.tensor(hist.loss.values))
    assert float((weights[0] - weights[1]).norm() / weights[1].norm()) <= 1e-6
    assert float((losses[0] - losses[1]).norm() / losses[1].norm()) <= 1e-6


@pytest.mark.parametrize("kwargs", [dict(data_range=(0.0, 1.0)),
                                    dict(ascent_steps=2, noise_dist="uniform"),
                                    dict(reduction="mean", ascent_steps=3, lam=2.0)],
                         ids=["clamped", "2-steps", "mean-3-steps"])
def test_classification_images_give_the_weights_of_the_step_before_the_speed_up(kwargs):
    # unclamped, the 64 -> 20 first layer is split off (clipkit.core.affine_first: 16 pairs,
    # 32 * (64 - 20) > 64 * 20)
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(96, 1, 8, 8, generator=gen, dtype=torch.float64)
    y = torch.randint(3, (96,), generator=gen)
    weights = []
    for cls in (ck.CLIP, ReferenceCLIP):
        model = torch.nn.Sequential(torch.nn.Flatten(), *ck.models.mlp([64, 20, 3], seed=1))
        model = model.double()
        assert first_linear(model) == 1
        ck.fit(model, (x, y), method=cls(**{"lam": 0.5, "pairs": 16, "power": 2, **kwargs}),
               epochs=3, batch_size=16, optimizer="sgd", lr=0.1, seed=0, progress=False)
        weights.append(_weights(model))
    assert float((weights[0] - weights[1]).norm() / weights[1].norm()) <= 1e-6


# --- the authors' options, on hand-checkable cases

def _pair_2d():
    # f(x) = diag(3, 1) x; u = (1, 1), v = 0: d = (1, 1), q = ‖(3, 1)‖ / ‖(1, 1)‖ = √5,
    # ∇_u q = WᵀWd / (‖Wd‖‖d‖) − q d / ‖d‖² = (2, −2)/√5 = −∇_v q, ∇_u q² = 2q∇_u q = (4, −4)
    w = torch.diag(torch.tensor([3.0, 1.0], dtype=torch.float64))
    u = torch.tensor([[[1.0, 1.0]]], dtype=torch.float64)
    v = torch.zeros_like(u)
    return _linear_forward(w), u, v


@pytest.mark.parametrize("power, step", [(1, 2 / math.sqrt(5)), (2, 4.0)])
def test_ascent_on_the_squared_quotient_steps_along_2q_grad_q(power, step):
    forward, u, v = _pair_2d()
    tau = torch.full((1, 1), 0.1, dtype=torch.float64)
    out = ascend(forward, PairState(u, v, tau), steps=1, rule=AscentRule(power=power))
    assert torch.allclose(out.u, torch.tensor([[[1 + 0.1 * step, 1 - 0.1 * step]]],
                                              dtype=torch.float64), atol=1e-12)
    assert torch.allclose(out.v, torch.tensor([[[-0.1 * step, 0.1 * step]]],
                                              dtype=torch.float64), atol=1e-12)
    assert out.tau.item() == pytest.approx(0.1 * 1.3)  # accepted: q rose
    assert out.q.item() == pytest.approx(quotients(forward, out.u, out.v).item())


def _toy_run(forward, n=40, dim=2, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(n, dim, generator=gen, dtype=torch.float64)
    y = torch.zeros(n, 1, dtype=torch.float64)
    return Run(forward, dict, x, y, lambda out, yy: (out - yy).pow(2).sum(2),
               [torch.Generator().manual_seed(seed)], torch.device("cpu"), torch.float64)


def test_the_clip_option_ascent_on_penalty_climbs_q_to_the_power():
    forward, u, v = _pair_2d()
    steps = {}
    for ascent_on in ("quotient", "penalty"):
        method = ck.CLIP(pairs=1, power=2, step_size=0.1, ascent_steps=1, ascent_on=ascent_on)
        run = _toy_run(forward)
        run.state = PairState(u.clone(), v.clone(), torch.full((1, 1), 0.1).double())
        method.before_step(run, torch.ones(1))
        steps[ascent_on] = (run.state.u - u)[0, 0, 0].item() / 0.1
    assert steps == pytest.approx({"quotient": 2 / math.sqrt(5), "penalty": 4.0})


@pytest.mark.parametrize("keep", [False, True])
def test_step_sizes_carry_over_a_redraw_only_with_keep_step_sizes(keep):
    forward = _linear_forward(torch.tensor([[3.0, 0.5]], dtype=torch.float64))
    method = ck.CLIP(pairs=6, refresh=3, step_size=0.2, ascent_steps=1, keep_step_sizes=keep)
    run = _toy_run(forward)
    run.state = method.start(run)
    taus = []
    for step in range(4):
        run.step = step
        before = run.state.tau.clone()
        method.before_step(run, torch.ones(1))
        taus.append((before, run.state.tau.clone()))
    # after 3 ascent steps τ = 0.2·1.3^j, j odd; the redraw at step 3 is followed by one more
    ratio = taus[3][1] / taus[2][1]
    if keep:  # on the carried τ: ×1.3 or ÷1.3 each
        assert all(r == pytest.approx(1.3) or r == pytest.approx(1 / 1.3)
                   for r in ratio.flatten().tolist())
    else:  # τ started again at 0.2
        for t in taus[3][1].flatten().tolist():
            assert t == pytest.approx(0.2 * 1.3) or t == pytest.approx(0.2 / 1.3)
    moved = [bool((t1 != 0.2).any()) for _, t1 in taus[:3]]
    assert all(moved)


def _regression64():
    x, y = ck.data.regression(n=120, noise=0.1, seed=0)
    return x.double(), y.double()


def _fit64(method, epochs=3):
    model = ck.models.mlp([1, 16, 16, 1], activation="relu", seed=0).double()
    hist = ck.fit(model, _regression64(), method=method, epochs=epochs, seed=1, lr=1e-2,
                  batch_size=32, progress=False)
    return _weights(model), hist


def test_skip_above_drops_the_penalty_where_it_is_larger():
    standard, _ = _fit64(ck.Standard())
    plain, plain_hist = _fit64(ck.CLIP(lam=1.0, power=2))
    high, high_hist = _fit64(ck.CLIP(lam=1.0, power=2, skip_above=1e9))
    low, low_hist = _fit64(ck.CLIP(lam=1.0, power=2, skip_above=1e-9))
    assert torch.equal(plain, high) and high_hist.skipped.values.tolist() == [0.0] * 3
    assert low_hist.skipped.values.tolist() == [1.0] * 3 and low_hist.penalty.values.max() == 0
    assert torch.allclose(low, standard, rtol=1e-12, atol=1e-14)
    assert not torch.allclose(plain, standard, rtol=1e-3)
    assert "skipped" not in plain_hist


# --- ascent_precision="bfloat16": an approximation, opt-in

def _images64(n=96):
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(n, 1, 8, 8, generator=gen, dtype=torch.float64)
    return x, torch.randint(3, (n,), generator=gen)


def _fit_images(method, model=None):
    model = model or torch.nn.Sequential(torch.nn.Flatten(),
                                         *ck.models.mlp([64, 20, 3], seed=1)).double()
    hist = ck.fit(model, _images64(), method=method, epochs=3, batch_size=16, optimizer="sgd",
                  lr=0.1, seed=0, progress=False)
    return _weights(model), hist


@pytest.mark.parametrize("kwargs", [dict(pairs=16, power=2), dict(pairs=4, data_range=(0.0, 1.0))],
                         ids=["linearized", "clamped"])
def test_bfloat16_ascent_is_off_by_default_deterministic_and_another_algorithm(kwargs):
    assert ck.CLIP().ascent_precision == "full" == ck.CLIP.authors().ascent_precision
    exact, _ = _fit_images(ck.CLIP(lam=0.5, **kwargs))
    runs = [_fit_images(ck.CLIP(lam=0.5, ascent_precision="bfloat16", **kwargs))
            for _ in range(2)]
    assert torch.equal(runs[0][0], runs[1][0])
    assert not torch.equal(runs[0][0], exact)
    # the penalty is the winner's quotient in the model's dtype: a real, attained slope
    assert bool(runs[0][1].lip.notnull().all()) and float(runs[0][1].lip.min()) > 0


def test_bfloat16_ascent_at_lambda_zero_is_standard_training():
    standard, _ = _fit_images(ck.Standard())
    at_zero, _ = _fit_images(ck.CLIP(lam=0.0, pairs=16, ascent_precision="bfloat16"))
    assert torch.equal(at_zero, standard)


def test_bfloat16_ascent_on_a_model_without_a_linear_first_layer_is_a_clear_error():
    cnn = ck.models.cnn(1, 3, width=4, image_size=8, seed=0).double()
    with pytest.raises(ValueError, match="ascent_precision='bfloat16' needs a model whose "
                                         "first layer is a narrowing nn.Linear"):
        _fit_images(ck.CLIP(ascent_precision="bfloat16"), cnn)
