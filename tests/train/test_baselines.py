"""clipkit.train.baselines: each baseline's penalty or input change against a direct computation."""

import json

import pytest
import torch

import clipkit as ck
from clipkit.core.utils import stacked
from clipkit.train.protocol import Run, Step


def tiny_run(model, x, y):
    forward = stacked(model)

    def params():
        return {n: p.unsqueeze(0) for n, p in model.named_parameters()}

    def loss(out, yy):
        return (out - yy).pow(2).flatten(2).sum(2)

    return Run(forward, params, x, y, loss, [torch.Generator().manual_seed(0)],
               torch.device("cpu"), x.dtype)


@pytest.fixture
def setting():
    torch.manual_seed(0)
    model = ck.models.mlp([3, 5, 2], activation="tanh").double()
    x = torch.rand(8, 3, dtype=torch.float64)
    y = torch.rand(8, 2, dtype=torch.float64)
    return model, x, y, tiny_run(model, x, y)


def test_weight_decay_is_the_squared_norm_of_every_parameter_biases_included(setting):
    model, x, y, run = setting
    reg, metrics = ck.WeightDecay(0.1).penalty(run, None)
    direct = sum(float(p.detach().pow(2).sum()) for p in model.parameters())
    assert float(reg.detach()) == pytest.approx(direct) and metrics == {}


def test_gradient_penalty_is_the_mean_squared_input_gradient_of_the_loss(setting):
    model, x, y, run = setting
    xin = x.unsqueeze(0).requires_grad_(True)
    out = run.forward(xin)
    sl = run.sample_loss(out, y.unsqueeze(0))
    reg, _ = ck.GradientPenalty(0.1).penalty(run, Step(xin, y, out, sl, torch.ones(1)))
    direct = []
    for i in range(len(x)):
        xi = x[i:i + 1].clone().requires_grad_(True)
        (g,) = torch.autograd.grad((model(xi) - y[i:i + 1]).pow(2).sum(), xi)
        direct.append(float(g.pow(2).sum()))
    assert float(reg.detach()) == pytest.approx(sum(direct) / len(direct))
    assert ck.GradientPenalty.input_grad


def test_spectral_norm_divides_each_weight_by_its_largest_singular_value():
    torch.manual_seed(0)
    model = ck.SpectralNorm(n_power_iterations=50).prepare(ck.models.mlp([6, 8, 4]))
    model.train()
    model(torch.rand(3, 6))  # a forward in training mode runs the power iterations
    for layer in (model[0], model[2]):
        sigma = torch.linalg.matrix_norm(layer.weight.detach(), ord=2)
        assert float(sigma) == pytest.approx(1.0, rel=1e-3)
    assert not ck.SpectralNorm.vectorizable


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_adversarial_training_inputs_stay_in_the_ball_and_range_and_raise_the_loss(norm, setting):
    model, x, y, run = setting
    method = ck.AdversarialTraining(eps=0.05, steps=5, norm=norm)
    xk, yk = x.unsqueeze(0), y.unsqueeze(0)
    adv = method.inputs(run, xk, yk)
    d = (adv - xk).flatten(2)
    size = d.abs().amax(2) if norm == "linf" else d.norm(dim=2)
    assert float(size.max()) <= 0.05 + 1e-9
    assert float(adv.min()) >= 0 and float(adv.max()) <= 1
    with torch.no_grad():
        clean = run.sample_loss(run.forward(xk), yk).sum()
        attacked = run.sample_loss(run.forward(adv), yk).sum()
    assert float(attacked) > float(clean)


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: ck.Standard(lam=0.1), "Standard has no penalty weight: lam must be 0, got 0.1$"),
        (lambda: ck.SpectralNorm(lam=0.1), "SpectralNorm has no penalty weight: lam must be 0"),
        (lambda: ck.SpectralNorm(n_power_iterations="1"), "n_power_iterations must be an int"),
        # positional arguments land in lam and schedule: the error says to use keywords
        (lambda: ck.AdversarialTraining(0.1), r"lam must be 0, got 0.1; .* by keyword, e\.g\. "
                                              r"AdversarialTraining\(eps=\.\.\.\)"),
        (lambda: ck.AdversarialTraining(steps=0), "steps must be an int >= 1"),
        (lambda: ck.AdversarialTraining(step_size=-0.1), "step_size must be a finite number > 0"),
        (lambda: ck.AdversarialTraining(data_range=(1, 0)), r"data_range must be \(low, high\)"),
        (lambda: ck.CLIP(data_range=(0,)), r"CLIP: data_range must be \(low, high\).*\(0,\)"),
        (lambda: ck.CLIP(noise=float("inf")), "CLIP: noise must be a finite number"),
        (lambda: ck.Discrepancy(warmup=-3), "warmup must be an int >= 0"),
        (lambda: ck.AdversarialTraining(norm="l1"), "norm must be 'linf' or 'l2'"),
        (lambda: ck.WeightDecay(lam=-1.0), "lam must be a finite number >= 0"),
    ],
)
def test_bad_baseline_settings_are_named(make, match):
    with pytest.raises(ValueError, match=match):
        make()


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: ck.CLIP(noise="0.1"), r"CLIP: noise must be a finite number >= 0, got '0.1'"),
        (lambda: ck.CLIP(step_size="1"), r"CLIP: step_size must be a finite number > 0, got '1'"),
        (lambda: ck.Discrepancy(goal_acc="0.9"), r"goal_acc must be in \(0, 1\]"),
    ],
)
def test_settings_of_the_wrong_type_are_named(make, match):
    with pytest.raises((TypeError, ValueError), match=match):
        make()


@pytest.mark.parametrize(
    "make, match",
    [
        # a dataclass alone says "unexpected keyword argument 'pair'"
        (lambda: ck.CLIP(pair=64), r"CLIP has no setting 'pair' \(did you mean 'pairs'\?\); "
                                   r"its settings: accept_rtol, .*pairs, power"),
        (lambda: ck.CLIP.authors(ascent_step=2), r"did you mean 'ascent_steps'"),
        (lambda: ck.CLIP().replace(lamb=0.5), r"CLIP has no setting 'lamb' \(did you mean 'lam'"),
        (lambda: ck.WeightDecay(xyz=1), r"^WeightDecay has no setting 'xyz'; its settings: lam, "
                                        r"schedule$"),
    ],
)
def test_unknown_settings_name_the_accepted_ones(make, match):
    with pytest.raises(TypeError, match=match):
        make()


def test_config_is_json_ready_and_replace_checks_again():
    cfg = ck.WeightDecay(1e-3, schedule=ck.Warmup(2)).config()
    assert json.loads(json.dumps(cfg))["schedule"] == {"schedule": "Warmup", "epochs": 2}
    with pytest.raises(ValueError, match="lam must be"):
        ck.WeightDecay(1e-3).replace(lam=-2.0)
