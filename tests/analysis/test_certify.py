"""ck.certify: certified radii of linear classifiers (closed form), and certified <=
PGD <= clean accuracy on small trained networks."""

import math

import numpy as np
import pytest
import torch
from torch import nn

import clipkit as ck
from clipkit import certify
from clipkit.analysis.attacks import PGD


def linear_classifier(seed: int, d: int = 5, classes: int = 2) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(d, classes))


def points(seed: int, n: int = 200, d: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    y = torch.randint(0, 2, (n,), generator=g)
    return x, y


@pytest.mark.parametrize("seed", range(3))
def test_linear_binary_classifier_radius_is_the_distance_to_the_boundary(seed):
    """f = Wx + b with two logits: the margin f_y - f_j = w.x + c is affine with gradient
    w = w_y - w_j, so the l2 distance to the decision boundary |w.x + c| / ||w|| is exactly
    the largest certifiable radius, for correctly classified points."""
    net = linear_classifier(seed)
    x, y = points(seed)
    W, b = net[1].weight.detach().double(), net[1].bias.detach().double()
    w, c = W[1] - W[0], b[1] - b[0]
    s = x.double() @ w + c  # > 0: class 1
    right = (s > 0) == (y == 1)
    true = torch.where(right, s.abs() / w.norm(), torch.zeros_like(s))
    L = certify.margin_bounds(net, (5,))
    r = certify.certified_radius(net, (x, y), L)
    assert torch.allclose(r, true, rtol=1e-8, atol=1e-8)  # the logits' rounding margin
    assert bool((r <= true * (1 + 1e-12)).all())  # never more than the truth
    # the global sqrt(2) ||W|| route is valid but looser
    r2 = certify.certified_radius(net, (x, y), float(torch.linalg.matrix_norm(W, ord=2)))
    assert bool((r2 <= r * (1 + 1e-12)).all())
    # accuracy over eps counts exactly the points whose true radius exceeds eps
    eps = [0.0, 0.1, 0.3, 0.6, 1.0]
    for bound in ("global", "local"):
        acc = certify.certified_accuracy(net, (x, y), eps, bound=bound, pairwise=True)
        ref = [float(right.double().mean())] + [float((true > e + 1e-8).double().mean())
                                                 for e in eps[1:]]
        assert not bool(((true - torch.tensor(eps[1:])[:, None]).abs() < 1e-7).any())
        assert acc.values.tolist() == pytest.approx(ref, abs=1e-12)
        assert acc.attrs["clean_accuracy"] == pytest.approx(ref[0])


def test_linear_multiclass_pairwise_bounds_are_the_exact_pair_norms():
    net = linear_classifier(4, d=6, classes=4)
    W = net[1].weight.detach().double()
    L = certify.margin_bounds(net, (6,))
    for a in range(4):
        for b in range(4):
            ref = 0.0 if a == b else float((W[a] - W[b]).norm())
            assert float(L[a, b]) == pytest.approx(ref, rel=1e-8)
            assert float(L[a, b]) >= ref


@pytest.fixture(scope="module")
def trained():
    g = torch.Generator().manual_seed(0)
    n = 600
    x = torch.randn(n, 2, generator=g)
    y = (x[:, 0] * x[:, 1] > 0).long() + (x[:, 0] > 1).long()  # 3 classes
    net = ck.models.mlp([2, 16, 16, 3], activation="sigmoid", seed=0)
    ck.fit(net, (x, y), ck.Standard(), epochs=30, lr=0.01, seed=0, progress=False)
    return net.eval(), (x[:150], y[:150])


@pytest.mark.parametrize("bound", ["global", "local"])
def test_certified_below_pgd_below_clean(trained, bound):
    net, (x, y) = trained
    eps = [0.0, 0.05, 0.1, 0.2, 0.4]
    cert = certify.certified_accuracy(net, (x, y), eps, bound=bound)
    pgd = ck.attacks.robust_accuracy(net, (x, y), PGD(eps=0.0, norm="l2", steps=40,
                                                       clamp=None), eps)
    clean = pgd.attrs["clean_accuracy"]
    # (the attack's clean accuracy is a float32 mean)
    assert cert.attrs["clean_accuracy"] == pytest.approx(clean, abs=1e-6)
    assert cert.values[0] == pytest.approx(clean, abs=1e-6)
    assert bool((cert.values <= pgd.values + 1e-12).all())
    assert bool((pgd.values <= clean + 1e-6).all())
    assert bool((cert.values[1:] <= cert.values[:-1]).all())  # monotone in eps
    assert cert.values[1] > 0  # it does certify something


def test_local_certifies_at_least_global_and_no_certified_point_is_broken(trained):
    net, (x, y) = trained
    e = 0.1
    loc = certify.certified_accuracy(net, (x, y), [e], bound="local")
    glob = certify.certified_accuracy(net, (x, y), [e], bound="global")
    assert loc.values[0] >= glob.values[0]
    # pointwise: a strong PGD never breaks a globally certified point
    L = certify.margin_bounds(net, (2,))
    r = certify.certified_radius(net, (x, y), L)
    safe = r > e
    xa = PGD(eps=e, norm="l2", steps=100, clamp=None)(net, x[safe], y[safe])
    with torch.no_grad():
        assert bool((net(xa).argmax(1) == y[safe]).all())


def test_given_bound_works_for_any_model_and_bad_inputs_are_named():
    torch.manual_seed(0)
    cnn = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 4 * 4, 3))
    x = torch.rand(20, 1, 6, 6)
    y = torch.randint(0, 3, (20,))
    upper = ck.lipschitz.lipschitz_upper(cnn, (1, 6, 6))[0].value
    acc = certify.certified_accuracy(cnn, (x, y), [0.0, 0.01], bound=upper)
    assert acc.attrs["bound"] == "given" and 0 <= acc.values[1] <= acc.values[0]
    # "global" on a CNN: the product bound, as the bracket's upper (and evaluate's "global")
    glob = certify.certified_accuracy(cnn, (x, y), [0.0, 0.01], bound="global")
    np.testing.assert_array_equal(glob.values, acc.values)
    assert glob.attrs["bound"] == "global product of layer norms"
    assert glob.attrs["lipschitz"] == pytest.approx(upper, rel=1e-12)
    with pytest.raises(ValueError, match="pairwise margin bounds need an MLP"):
        certify.certified_accuracy(cnn, (x, y), [0.1], bound="global", pairwise=True)
    with pytest.raises(ValueError, match="MLPs only"):
        certify.certified_accuracy(cnn, (x, y), [0.1], bound="local")
    with pytest.raises(ValueError, match="eps"):
        certify.certified_accuracy(cnn, (x, y), 0.1, bound=upper)
    with pytest.raises(ValueError, match="eps"):
        certify.certified_accuracy(cnn, (x, y), [-1.0], bound=upper)
    with pytest.raises(ValueError, match="bound"):
        certify.certified_accuracy(cnn, (x, y), [0.1], bound="tight")
    with pytest.raises(ValueError, match=r"got a Bracket \(pass its .upper\)$"):
        certify.certified_accuracy(cnn, (x, y), [0.1], bound=ck.lipschitz.bracket(cnn, x[:4]))
    with pytest.raises(ValueError, match="bound"):
        certify.certified_accuracy(cnn, (x, y), [0.1], bound=math.inf)
    with pytest.raises(ValueError, match="data"):
        certify.certified_accuracy(cnn, (x, y[:5]), [0.1], bound=upper)
    small = x[:, :, :4, :4]  # the CNN's Linear needs 6 x 6 images
    with pytest.raises(ValueError, match=r"data\[0\] \(x\): the model does not take"):
        certify.certified_accuracy(cnn, (small, y), [0.1], bound=upper)
    with pytest.raises(ValueError, match=r"data\[0\] \(x\): the model does not take"):
        certify.certified_radius(cnn, (small, y), upper)
    with pytest.raises(ValueError, match=r"data\[1\] \(y\): class labels must lie in \[0, 3\)"):
        certify.certified_accuracy(cnn, (x, y + 3), [0.1], bound=upper)
    with pytest.raises(ValueError, match=r"data\[1\] \(y\): class labels must be whole"):
        certify.certified_radius(cnn, (x, y + 0.5), upper)
    one = nn.Sequential(nn.Flatten(), nn.Linear(36, 1))  # no margin to certify
    with pytest.raises(ValueError, match=r"classifier with logits .* got \(1,\)"):
        certify.certified_accuracy(one, (x, torch.zeros(20, dtype=torch.long)), [100.0],
                                   bound=1.0)
    with pytest.raises(ValueError, match="pairwise bounds must be finite and >= 0"):
        certify.certified_radius(cnn, (x, y), -torch.ones(3, 3))
    same = certify.certified_accuracy(cnn, (x, y), np.array([0.0, 0.01]), bound=upper)
    np.testing.assert_array_equal(same.values, acc.values)


def test_large_terms_that_cancel_are_not_taken_for_a_margin():
    """A bias of 2^40 removed by the next layer: float64 cannot resolve the margin (exactly
    -7e-5 here, so x is misclassified), and a relative margin of the logits' size alone
    certified it. Exact value: h = x + 2^40 (ReLU active), f_0 - f_1 = x - 2e-4."""
    big = 2.0**40
    model = nn.Sequential(nn.Linear(1, 1), nn.ReLU(), nn.Linear(1, 2)).double().eval()
    with torch.no_grad():
        model[0].weight.fill_(1.0)
        model[0].bias.fill_(big)
        model[2].weight.copy_(torch.tensor([[1.0], [0.0]]))
        model[2].bias.copy_(torch.tensor([-big, 2e-4], dtype=torch.float64))
    x = torch.tensor([[1.3e-4]], dtype=torch.float64)
    y = torch.tensor([0])
    assert float(certify.certified_radius(model, (x, y), certify.margin_bounds(model, (1,)))) == 0
    for bound in ("global", "local"):
        assert float(certify.certified_accuracy(model, (x, y), [1e-5], bound=bound)[0]) == 0


def _cancelling_cnn(kind: str) -> nn.Sequential:
    """Conv (or batch norm) adds 2^40 to channel 0, the last layer removes it: the exact
    logits at x = 1.3e-4 are (x, 1.5 x), margin -6.5e-5 (misclassified as class 1), while
    float64 rounds logit 0 to 2.44e-4 and the margin's sign flips."""
    big = 2.0**40
    first = nn.Conv2d(1, 2, 1) if kind == "conv" else nn.Conv2d(1, 2, 1, bias=False)
    layers = [first] if kind == "conv" else [first, nn.BatchNorm2d(2)]
    model = nn.Sequential(*layers, nn.MaxPool2d(1), nn.Flatten(), nn.Linear(2, 2)).double()
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([1.0, 1.5]).view(2, 1, 1, 1))
        if kind == "conv":
            model[0].bias.copy_(torch.tensor([big, 0.0]))
        else:
            model[1].bias.copy_(torch.tensor([big, 0.0]))
        model[-1].weight.copy_(torch.eye(2))
        model[-1].bias.copy_(torch.tensor([-big, 0.0]))
    return model.eval()


@pytest.mark.parametrize("kind", ["conv", "batchnorm"])
def test_large_terms_that_cancel_in_a_cnn_are_not_taken_for_a_margin(kind):
    """The MLP case above, for a chain of layers that is not an MLP: the float64 copy's
    margin had no rounding allowance, and the point was certified at eps 1e-6 and 1e-5 with
    the product bound and with a given one."""
    model = _cancelling_cnn(kind)
    x = torch.full((1, 1, 1, 1), 1.3e-4, dtype=torch.float64)
    y = torch.tensor([0])
    with torch.no_grad():
        assert float(model(x)[0, 0] - model(x)[0, 1]) > 0  # what float64 says: class 0
    for bound in ("global", 2.0):
        acc = certify.certified_accuracy(model, (x, y), [1e-6, 1e-5], bound=bound)
        assert acc.values.tolist() == [0.0, 0.0], bound
    assert float(certify.certified_radius(model, (x, y), 2.0)[0]) == 0
    # a well-scaled CNN keeps its certificates: the allowance is rounding-sized
    small = nn.Sequential(nn.Conv2d(1, 2, 1), nn.ReLU(), nn.Flatten(), nn.Linear(2, 2)).double()
    with torch.no_grad():
        small[0].weight.copy_(torch.tensor([1.0, -1.0]).view(2, 1, 1, 1))
        small[0].bias.zero_()
        small[3].weight.copy_(torch.eye(2))
        small[3].bias.zero_()
    x = torch.full((1, 1, 1, 1), 0.5, dtype=torch.float64)  # logits (0.5, 0)
    radius = float(certify.certified_radius(small.eval(), (x, y), 1.0 / 2**0.5)[0])
    assert radius == pytest.approx(0.5, rel=1e-8)  # margin / (sqrt(2) L), less 1e-9 relative


def test_inputs_that_are_not_finite_are_refused():
    """A NaN pixel made NaN logits, which argmax counted as class 0: 'certified' and
    'robust' at every radius for the label-0 points."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3)).eval()
    x = torch.rand(5, 1, 2, 2)
    x[2, 0, 1, 1] = float("nan")
    y = torch.zeros(5, dtype=torch.long)
    with pytest.raises(ValueError, match=r"1 of 5 inputs contain NaN or infinite"):
        certify.certified_accuracy(model, (x, y), [0.0, 0.1], bound=1.0)
    from clipkit.analysis import attacks
    with pytest.raises(ValueError, match=r"1 of 5 inputs contain NaN or infinite"):
        attacks.robust_accuracy(model, (x, y), attacks.PGD(eps=0.1), [0.1])
    with pytest.raises(ValueError, match=r"NaN or infinite"):
        attacks.PGD(eps=0.1)(model, x, y)


def test_images_without_their_channel_axis_are_named_for_a_batchnorm_cnn():
    """BatchNorm2d raises a ValueError ("expected 4D input"), which the input check did not
    catch: torch's bare message, which names no input."""
    cnn = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Flatten(),
                        nn.Linear(2 * 4 * 4, 3)).eval()
    x, y = torch.rand(4, 6, 6), torch.zeros(4, dtype=torch.long)  # (N, 6, 6): no channel
    with pytest.raises(ValueError, match=r"data\[0\] \(x\): the model does not take these "
                                         r"inputs \(shape \(4, 6, 6\)"):
        certify.certified_accuracy(cnn, (x, y), [0.1], bound=1.0)
