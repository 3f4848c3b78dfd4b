"""clipkit.attacks: balls, data range, seeds, and PGD against the exact margin of a linear model."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import xarray as xr
from torch import nn

import clipkit as ck
from clipkit import attacks


def small_classifier(seed: int = 0, d: int = 12, classes: int = 3) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d, 16), nn.Tanh(), nn.Linear(16, classes))


def data(n: int = 64, d: int = 12, classes: int = 3, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, d, generator=g), torch.randint(classes, (n,), generator=g)


ATTACKS = [
    attacks.PGD(eps=0.5, norm="l2", steps=10),
    attacks.PGD(eps=0.1, norm="linf", steps=10),
    attacks.PGD(eps=0.5, norm="l2", steps=5, random_start=False, step_size=0.3),
    attacks.FGSM(eps=0.1),
    attacks.GaussianNoise(eps=0.2),
]


@pytest.mark.parametrize("attack", ATTACKS, ids=lambda a: type(a).__name__)
def test_stays_in_ball_and_data_range(attack):
    model = small_classifier()
    x, y = data()
    xa = attack(model, x, y)
    assert xa.shape == x.shape and not xa.requires_grad
    assert xa.min() >= 0.0 and xa.max() <= 1.0
    d = (xa - x).reshape(len(x), -1)
    if isinstance(attack, attacks.PGD) and attack.norm == "l2":
        assert (d.norm(dim=1) <= attack.eps * (1 + 1e-5)).all()
    elif not isinstance(attack, attacks.GaussianNoise):
        assert (d.abs().max(dim=1).values <= attack.eps + 1e-6).all()
    assert (d != 0).any()  # it did move


def test_pgd_without_clamp_reaches_the_boundary_and_respects_it():
    model = small_classifier()
    x, y = data()
    for norm in ("l2", "linf"):
        xa = attacks.PGD(eps=0.3, norm=norm, steps=20, clamp=None)(model, x, y)
        d = (xa - x).reshape(len(x), -1)
        size = d.norm(dim=1) if norm == "l2" else d.abs().max(dim=1).values
        assert (size <= 0.3 * (1 + 1e-5)).all()
        assert size.max() >= 0.3 * (1 - 1e-5)  # uses the whole ball


def test_fgsm_is_the_signed_gradient_step():
    model = small_classifier()
    x, y = data()
    xa = attacks.FGSM(eps=0.05, clamp=None)(model, x, y)
    xr_ = x.clone().requires_grad_(True)
    nn.functional.cross_entropy(model(xr_), y, reduction="sum").backward()
    torch.testing.assert_close(xa, x + 0.05 * xr_.grad.sign())


def test_pgd_raises_the_loss():
    model = small_classifier()
    x, y = data()
    loss = nn.functional.cross_entropy
    xa = attacks.PGD(eps=0.5, norm="l2", steps=20)(model, x, y)
    with torch.no_grad():
        assert loss(model(xa), y) > loss(model(x), y)


def test_linear_binary_classifier_pgd_flips_exactly_inside_the_margin():
    """For f(x) = w.x + b the minimal l2 adversarial distance is |w.x + b| / ||w||."""
    torch.manual_seed(0)
    d, eps = 20, 0.5
    w, b = torch.randn(d), torch.tensor(0.3)
    lin = nn.Linear(d, 1)
    lin.weight.data, lin.bias.data = w[None], b[None]
    model = nn.Sequential(lin, nn.Linear(1, 2))  # logits (-z/2 .. z/2): class 1 iff z > 0
    model[1].weight.data = torch.tensor([[-0.5], [0.5]])
    model[1].bias.data.zero_()
    # points at prescribed signed distances from the hyperplane, spread in [-2 eps, 2 eps]
    g = torch.Generator().manual_seed(3)
    n = 400
    dist = (torch.rand(n, generator=g) * 2 - 1) * 2 * eps
    base = torch.randn(n, d, generator=g)
    base = base - ((base @ w + b) / w.norm() ** 2)[:, None] * w  # project onto w.x + b = 0
    x = base + dist[:, None] * w / w.norm()
    margin = (x @ w + b).abs() / w.norm()
    torch.testing.assert_close(margin, dist.abs(), atol=1e-5, rtol=1e-5)
    y = (x @ w + b > 0).long()  # labelled by the model itself: clean accuracy 1
    xa = attacks.PGD(eps=eps, norm="l2", steps=50, clamp=None, seed=5)(model, x, y)
    flipped = model(xa).argmax(1) != y
    inside, outside = margin < 0.99 * eps, margin > eps
    assert inside.sum() > 50 and outside.sum() > 50
    assert flipped[inside].all()
    assert not flipped[outside].any()


def test_robust_accuracy_over_eps():
    model = small_classifier(2)
    x, y = data(200)
    with torch.no_grad():
        clean = float((model(x).argmax(1) == y).float().mean())
    eps = [0.0, 0.25, 1.0, 3.0]
    for attack in (attacks.PGD(eps=0.0, norm="l2", steps=10), attacks.FGSM(eps=0.0),
                   attacks.GaussianNoise(eps=0.0)):
        acc = attacks.robust_accuracy(model, (x, y), attack, eps=eps, batch_size=64)
        assert isinstance(acc, xr.DataArray) and acc.dims == ("eps",)
        assert acc["eps"].values.tolist() == eps
        assert acc.sel(eps=0.0).item() == pytest.approx(clean)
        assert (acc.values <= clean + 1e-12).all()
        assert acc.attrs["clean_accuracy"] == pytest.approx(clean)
        assert json.loads(acc.attrs["config"])["attack"] == type(attack).__name__
    pgd = attacks.robust_accuracy(model, (x, y), attacks.PGD(eps=0, norm="l2", steps=10),
                                  eps=eps)
    assert pgd.sel(eps=3.0).item() < clean  # a strong attack does bite


def test_robust_accuracy_is_reproducible_and_batch_independent_for_pgd_without_start():
    model = small_classifier(4)
    x, y = data(100)
    att = attacks.PGD(eps=0.0, norm="linf", steps=5, random_start=False)
    a = attacks.robust_accuracy(model, (x, y), att, eps=[0.05, 0.2], batch_size=7)
    b = attacks.robust_accuracy(model, (x, y), att, eps=[0.05, 0.2], batch_size=100)
    xr.testing.assert_equal(a, b)


def test_seeded_random_starts_and_noise():
    model = small_classifier()
    x, y = data()
    for make in (lambda s: attacks.GaussianNoise(eps=0.1, seed=s),
                 lambda s: attacks.PGD(eps=0.3, steps=1, seed=s)):
        a, b, c = make(0)(model, x, y), make(0)(model, x, y), make(1)(model, x, y)
        assert torch.equal(a, b) and not torch.equal(a, c)


def test_model_mode_and_parameters_untouched():
    model = nn.Sequential(nn.Linear(12, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))
    model.train()
    x, y = data()
    before = model[1].running_mean.clone()
    attacks.PGD(eps=0.3, steps=3)(model, x, y)
    assert model.training and torch.equal(before, model[1].running_mean)
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("make,match", [
    (lambda: attacks.PGD(eps=-0.1), "eps"),
    (lambda: attacks.PGD(eps=float("nan")), "eps"),
    (lambda: attacks.FGSM(eps=True), "eps"),
    (lambda: attacks.PGD(eps=0.1, norm="l1"), "norm"),
    (lambda: attacks.PGD(eps=0.1, steps=0), "steps"),
    (lambda: attacks.PGD(eps=0.1, step_size=-1.0), "step_size"),
    (lambda: attacks.GaussianNoise(eps=0.1, clamp=(1.0, 0.0)), "clamp"),
    (lambda: attacks.GaussianNoise(eps=0.1, seed="a"), "seed"),
])
def test_bad_configuration(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_bad_robust_accuracy_arguments():
    model = small_classifier()
    x, y = data()
    att = attacks.FGSM(eps=0.1)
    with pytest.raises(ValueError, match="sequence"):
        attacks.robust_accuracy(model, (x, y), att, eps=0.1)
    with pytest.raises(ValueError, match="eps"):
        attacks.robust_accuracy(model, (x, y), att, eps=[0.1, -1.0])
    with pytest.raises(ValueError, match="data"):
        attacks.robust_accuracy(model, (x, y[:3]), att, eps=[0.1])
    with pytest.raises(TypeError, match="Attack"):
        attacks.robust_accuracy(model, (x, y), lambda m, a, b: a, eps=[0.1])
    with pytest.raises(ValueError, match="same length"):
        att(model, x, y[:3])
    for bad in (0, True, 2.0):
        with pytest.raises(ValueError, match=f"batch_size must be an int >= 1, got {bad!r}"):
            attacks.robust_accuracy(model, (x, y), att, eps=[0.1], batch_size=bad)
    with pytest.raises(ValueError, match=r"data\[0\] \(x\): the model does not take"):
        attacks.robust_accuracy(model, (x[:, :5], y), att, eps=[0.1])
    with pytest.raises(ValueError, match=r"data\[0\] \(x\): no samples"):
        attacks.robust_accuracy(model, (x[:0], y[:0]), att, eps=[0.1])
    with pytest.raises(ValueError, match=r"data\[1\] \(y\): class labels must lie in \[0, 3\)"):
        attacks.robust_accuracy(model, (x, y + 3), att, eps=[0.1])


def test_inputs_outside_the_clamp_range_are_refused_not_clamped():
    """Standardized data clamped into [0, 1] would be moved far beyond ε."""
    model = small_classifier()
    x, y = data()
    z = (x - 0.5) * 4  # well outside [0, 1]
    for att in (attacks.PGD(eps=0.01), attacks.GaussianNoise(eps=0.0), attacks.FGSM(eps=0.01)):
        with pytest.raises(ValueError, match=r"outside the data range \(0.0, 1.0\).*None for "
                                             r"unbounded"):
            attacks.robust_accuracy(model, (z, y), att, eps=[0.0, 0.01])
        with pytest.raises(ValueError, match=r"x lies in .* outside the data range"):
            att(model, z, y)
    free = attacks.robust_accuracy(model, (z, y), attacks.PGD(eps=0.0, clamp=None), eps=[0.0])
    assert float(free[0]) == free.attrs["clean_accuracy"]
    with pytest.raises(ValueError, match=r"AdversarialTraining\(data_range=\.\.\.\)"):
        ck.fit(small_classifier(), (z, y), ck.AdversarialTraining(eps=0.1), epochs=1,
               progress=False)


def test_eps_grids_from_numpy_and_torch_are_taken():
    model = small_classifier()
    x, y = data()
    a = attacks.robust_accuracy(model, (x, y), attacks.FGSM(eps=0.1), eps=np.linspace(0, 0.2, 3))
    b = attacks.robust_accuracy(model, (x, y), attacks.FGSM(eps=0.1),
                                eps=torch.linspace(0, 0.2, 3, dtype=torch.float64))
    c = attacks.robust_accuracy(model, (x, y), attacks.FGSM(eps=0.1), eps=[0.0, 0.1, 0.2])
    np.testing.assert_array_equal(a.values, c.values)
    np.testing.assert_array_equal(b.values, c.values)


@pytest.mark.parametrize("make", [
    lambda: attacks.PGD(eps=0.5, norm="l2", steps=10, seed=2),
    lambda: attacks.PGD(eps=0.1, norm="linf", steps=10, seed=2),
    lambda: attacks.FGSM(eps=0.1),
], ids=["pgd_l2", "pgd_linf", "fgsm"])
def test_a_final_sigmoid_is_left_out_of_the_gradient_not_out_of_the_accuracy(make):
    """The published setting squeezes the logits through a sigmoid: the attack aims through
    the logits (the same decision, an unsqueezed gradient); logits=False goes through it."""
    net = small_classifier()
    squeezed = nn.Sequential(*net, nn.Sigmoid())
    x, y = data()
    assert attacks.logits_part(squeezed)[-1] is net[-1]
    torch.testing.assert_close(make()(squeezed, x, y), make()(net, x, y), rtol=0, atol=0)
    through = make()
    through.logits = False
    assert not torch.equal(through(squeezed, x, y), make()(net, x, y))
    assert json.loads(json.dumps(make().config()))["logits"] is True
    # the accuracy is the whole model's: here argmax σ(z) = argmax z on every input
    acc = attacks.robust_accuracy(squeezed, (x, y), make(), eps=[0.0, 0.3])
    ref = attacks.robust_accuracy(net, (x, y), make(), eps=[0.0, 0.3])
    np.testing.assert_array_equal(acc.values, ref.values)


def test_a_path_copy_and_a_compiled_model_are_attacked_through_their_logits():
    # fit_path's copies (CopyView, what the learning curves attack) and torch.compile's
    # wrapper are no nn.Sequential: their logits part is found all the same
    from clipkit.train.path import CopyView
    nets = [nn.Sequential(*small_classifier(), nn.Sigmoid()) for _ in range(2)]
    with torch.no_grad():
        for p in nets[1].parameters():
            p.mul_(1.5)
    params = {n: torch.stack([dict(m.named_parameters())[n] for m in nets])
              for n, _ in nets[0].named_parameters()}
    x, y = data()
    make = lambda: attacks.PGD(eps=0.5, norm="l2", steps=5, seed=2)  # noqa: E731
    for k, net in enumerate(nets):
        view = CopyView(nets[0], params, {}, k).eval()
        assert isinstance(attacks.logits_part(view), CopyView)
        torch.testing.assert_close(make()(view, x, y), make()(net[:-1], x, y), rtol=0, atol=0)
        through = make()
        through.logits = False
        assert not torch.equal(through(view, x, y), make()(view, x, y))
    plain = CopyView(nets[0][:-1], params, {}, 0)
    assert attacks.logits_part(plain) is plain  # no sigmoid to leave out
    compiled = torch.compile(nets[0])  # not called: nothing is compiled
    assert attacks.logits_part(compiled)[-1] is nets[0][-2]
    wrapped = torch.compile(plain)
    assert attacks.logits_part(wrapped) is wrapped  # nothing to leave out: the model itself


def test_only_a_strictly_increasing_final_activation_is_left_out():
    net = small_classifier()
    for last in (nn.ReLU(), nn.Softmax(dim=1)):  # ReLU ties negative logits; softmax is no
        model = nn.Sequential(*net, last)       # elementwise map
        assert attacks.logits_part(model) is model
    tanh = nn.Sequential(*net, nn.Tanh())
    assert len(attacks.logits_part(tanh)) == len(net)
    x, y = data()
    # a loss of one's own sees the model's output: the cross-entropy given by hand goes
    # through the sigmoid, as logits=False does
    own = attacks.PGD(eps=0.5, steps=5,
                      loss=lambda out, t: F.cross_entropy(out, t, reduction="sum"))
    through = attacks.PGD(eps=0.5, steps=5, logits=False)
    wrapped = nn.Sequential(*net, nn.Sigmoid())
    torch.testing.assert_close(own(wrapped, x, y), through(wrapped, x, y), rtol=0, atol=0)
    assert not torch.equal(own(wrapped, x, y), own(net, x, y))


def test_pgd_restarts_never_fool_fewer_points_and_stay_in_the_ball():
    # a steep 2-D classifier, labelled by itself: one short run from a random start reaches
    # the boundary or not depending on the start
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(2, 64), nn.Tanh(), nn.Linear(64, 3))
    with torch.no_grad():
        net[0].weight.mul_(8)
        x = torch.rand(256, 2, generator=torch.Generator().manual_seed(1))
        y = net(x).argmax(1)
    one = attacks.PGD(eps=0.1, norm="l2", steps=1, step_size=0.01, seed=4)
    more = attacks.PGD(eps=0.1, norm="l2", steps=1, step_size=0.01, seed=4, restarts=4)
    xa1, xa4 = one(net, x, y), more(net, x, y)
    with torch.no_grad():
        fooled1, fooled4 = net(xa1).argmax(1) != y, net(xa4).argmax(1) != y
    assert bool((fooled4 | ~fooled1).all())  # every point the first run fooled stays fooled
    assert fooled4.sum() > fooled1.sum()      # and here the other starts fool more
    torch.testing.assert_close(xa4[fooled1], xa1[fooled1], rtol=0, atol=0)  # run 1's iterate
    assert float((xa4 - x).flatten(1).norm(dim=1).max()) <= 0.1 * (1 + 1e-6)
    assert 0 <= float(xa4.min()) and float(xa4.max()) <= 1
    acc1 = attacks.robust_accuracy(net, (x, y), one, eps=[0.05, 0.1])
    acc4 = attacks.robust_accuracy(net, (x, y), more, eps=[0.05, 0.1])
    assert bool((acc4 <= acc1).all()) and json.loads(acc4.attrs["config"])["restarts"] == 4
    with pytest.raises(ValueError, match="restarts=2 needs random_start=True"):
        attacks.PGD(eps=0.5, restarts=2, random_start=False)
    with pytest.raises(ValueError, match="restarts must be an int >= 1"):
        attacks.PGD(eps=0.5, restarts=0)


@pytest.mark.parametrize("make", [lambda: attacks.PGD(eps=0.3), lambda: attacks.FGSM(eps=0.1),
                                  lambda: attacks.PGD(eps=0.3, norm="linf")])
def test_an_attack_called_on_a_float64_model_takes_float32_images(make):
    """robust_accuracy casts the images to the model's dtype; a direct call failed with
    torch's "Input type (float) and bias type (double) should be the same"."""
    torch.manual_seed(0)
    cnn = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 4 * 4, 3))
    x, y = torch.rand(5, 1, 6, 6), torch.tensor([0, 1, 2, 0, 1])
    adv = make()(cnn.double().eval(), x, y)
    assert adv.dtype == torch.float64 and adv.shape == x.shape
    same = make()(cnn, x.double(), y)
    torch.testing.assert_close(adv, same, rtol=0, atol=0)
