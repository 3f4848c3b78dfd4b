"""Global bounds that look past the data: interval-tightened slopes for the LipSDP
certificate (``slopes.global_slopes``) and the ascent over the first pre-activations
(``preactivation.preactivation_ascent``), against sampled derivatives, grid maxima of the
Jacobian norm over the whole pre-activation space, and the certificates they sit between."""

import itertools
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from clipkit import lipschitz as ls
from clipkit.analysis.lipschitz.lower import _spectral_norms
from clipkit.analysis.lipschitz.preactivation import (
    GUIDED,
    _derivative,
    guided_starts,
    preactivation_ascent,
    reachable,
)
from clipkit.analysis.lipschitz.slopes import global_slopes
from clipkit.core.utils import sqrt_nonneg

sys.path.insert(0, str(Path(__file__).parent))
from nets import assert_slopes_contain_derivatives, jac_norms, mlp  # noqa: E402

# ----------------------------------------------------------------------------- global slopes


@pytest.mark.parametrize("act", ["sigmoid", "tanh"])
def test_global_slopes_contain_every_derivative_and_narrow_after_bounded_activations(act):
    # large second-layer biases push some second-layer neurons away from their steepest point
    net = mlp([3, 6, 8, 2], act, 2, bias_std=3.0)
    chain = ls.mlp_chain(net, (3,))
    slopes = global_slopes(chain)
    g = torch.Generator().manual_seed(0)
    xs = torch.cat([torch.randn(20000, 3, generator=g, dtype=torch.float64) * s
                    for s in (1.0, 10.0, 1000.0)])
    assert_slopes_contain_derivatives(chain, slopes, xs)
    glo, ghi = chain.slopes[0]
    a1, b1 = slopes[0]  # the first layer sees unbounded inputs: the global interval
    assert torch.equal(a1, torch.full_like(a1, glo)) and torch.equal(b1, torch.full_like(b1, ghi))
    a2, b2 = slopes[1]
    assert bool((b2 < ghi).any())  # bounded inputs: lower top slopes
    assert bool((a2 == glo).all())  # the lower ends are kept (docstring: closed-form multipliers)


def test_global_slopes_of_relu_nets_are_the_global_interval():
    chain = ls.mlp_chain(mlp([3, 6, 8, 2], "relu", 2, bias_std=3.0), (3,))
    for a, b in global_slopes(chain):
        assert bool((a == 0).all()) and bool((b == 1).all())


@pytest.mark.parametrize("act", ["sigmoid", "tanh"])
def test_tightened_certificate_is_below_the_global_slope_one_and_above_sampled_jacobians(act):
    net = mlp([3, 6, 8, 2], act, 2, bias_std=3.0)
    chain = ls.mlp_chain(net, (3,))
    glob = [(torch.full((w.shape[0],), lo, dtype=torch.float64),
             torch.full((w.shape[0],), hi, dtype=torch.float64))
            for w, (lo, hi) in zip(chain.weights[:-1], chain.slopes, strict=True)]
    wide, _, _ = ls.solve(chain, slopes=glob, iters=1000)
    tight, _, _ = ls.solve(chain, iters=1000)
    assert tight.value < wide.value
    g = torch.Generator().manual_seed(3)
    xs = torch.cat([torch.randn(5000, 3, generator=g) * s for s in (0.5, 3.0, 30.0)])
    assert float(jac_norms(net, xs).max()) <= tight.value


# ----------------------------------------------------------------------------- pre-activations


def grid_max(net, chain, half_width=12.0, n=121):
    """max sigma_max(J) over a grid of first pre-activations z_1 (J depends on z_1 only)."""
    w0, b0 = chain.weights[0], chain.biases[0]
    axis = torch.linspace(-half_width, half_width, n, dtype=torch.float64)
    z = torch.stack(torch.meshgrid(*[axis] * w0.shape[0], indexing="ij"), -1).reshape(-1,
                                                                                      w0.shape[0])
    x = (torch.linalg.pinv(w0) @ (z - b0).T).T
    return float(jac_norms(net, x).max())


@pytest.mark.parametrize("act", ["sigmoid", "tanh"])
@pytest.mark.parametrize("seed", range(2))
def test_preactivation_ascent_reaches_the_grid_maximum_and_stays_below_the_certificate(act,
                                                                                       seed):
    net = mlp([4, 2, 3, 2], act, seed, bias_std=2.0)
    chain = ls.mlp_chain(net, (4,))
    out = preactivation_ascent(net, (4,), steps=300, seed=seed)  # the default 32 starts
    assert out is not None
    values, x = out
    assert x.shape == (32 + GUIDED, 4)  # sigmoid and tanh: 4 more from the coupled proxy
    assert torch.allclose(values, jac_norms(net, x), rtol=1e-12)  # attained at those inputs
    top = grid_max(net, chain)
    assert float(values.max()) >= top * (1 - 2e-3)
    assert float(values.max()) <= ls.lipsdp_upper_bound(net, (4,)).value


def test_preactivation_ascent_is_seeded_and_declines_unreachable_first_layers():
    net = mlp([4, 3, 2], "sigmoid", 0)
    a = preactivation_ascent(net, (4,), starts=4, steps=20, seed=5)
    b = preactivation_ascent(net, (4,), starts=4, steps=20, seed=5)
    assert a is not None and b is not None and torch.equal(a[0], b[0])
    wide = mlp([2, 5, 2], "sigmoid", 0)  # 5 pre-activations from 2 inputs: not all reached
    assert not reachable(ls.mlp_chain(wide, (2,)))
    assert preactivation_ascent(wide, (2,)) is None
    assert preactivation_ascent(nn.Sequential(nn.Linear(3, 2)), (3,)) is None  # no activation
    with pytest.raises(ValueError, match="starts"):
        preactivation_ascent(net, (4,), starts=0)


def test_guided_starts_apply_to_sigmoid_and_tanh_mlps_with_two_hidden_layers():
    g = torch.Generator().manual_seed(0)
    for act in ("sigmoid", "tanh"):
        chain = ls.mlp_chain(mlp([6, 4, 3, 2], act, 0, bias_std=2.0), (6,))
        z = guided_starts(chain, 3, torch.Generator().manual_seed(1))
        assert z is not None and z.shape == (3, 4) and bool(torch.isfinite(z).all())
        assert torch.equal(z, guided_starts(chain, 3, torch.Generator().manual_seed(1)))
    for net in (mlp([6, 4, 2], "sigmoid", 0),  # one hidden layer: nothing to couple
                mlp([6, 4, 3, 2], "relu", 0),  # unbounded first layer
                nn.Sequential(nn.Linear(6, 4), nn.ReLU(), nn.Linear(4, 3), nn.Sigmoid(),
                              nn.Linear(3, 2))):
        assert guided_starts(ls.mlp_chain(net, (6,)), 3, g) is None
    net = mlp([6, 4, 3, 2], "sigmoid", 0)
    assert len(preactivation_ascent(net, (6,), starts=5, steps=5, guided=0)[0]) == 5
    assert len(preactivation_ascent(net, (6,), starts=5, steps=5, guided=2)[0]) == 7
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="guided"):
            preactivation_ascent(net, (6,), guided=bad)


@pytest.mark.parametrize("act", ["sigmoid", "tanh"])
def test_activation_derivatives_keep_their_precision_far_out(act):
    """s'(z) in closed form through logs: equal to autograd's near 0, and still positive
    (the exact value) where s(1 - s) has rounded to 0."""
    z = torch.tensor([-800.0, -300.0, -50.0, -3.0, 0.0, 0.5, 3.0, 50.0, 300.0, 800.0],
                     dtype=torch.float64, requires_grad=True)
    module = nn.Sigmoid() if act == "sigmoid" else nn.Tanh()
    d = _derivative(module, z).detach()
    a = z.detach().abs() * (1.0 if act == "sigmoid" else 2.0)
    exact = (1.0 if act == "sigmoid" else 4.0) * torch.exp(-a) / (1 + torch.exp(-a)) ** 2
    assert torch.allclose(d, exact, rtol=1e-12, atol=0)
    (auto,) = torch.autograd.grad(module(z).sum(), z)
    near = z.detach().abs() < 20
    assert torch.allclose(d[near], auto[near], rtol=1e-12)
    assert bool((d[z.detach().abs() == 50] > 0).all()) and float(auto[7]) < float(d[7]) * 1e-3


def test_norms_that_vanish_have_gradient_zero_not_nan():
    """Where a Jacobian is exactly 0 (saturated layers in float64), the ascents' objectives
    sqrt(lambda_max) must give gradient 0: autograd's sqrt has an infinite derivative at 0,
    and torch <= 2.11 turned 0 * inf into NaN, which Adam spread into every coordinate."""
    w = torch.tensor([0.0, 2.0, 3.0], dtype=torch.float64, requires_grad=True)
    square = w * w * torch.tensor([1.0, 1.0, -1.0], dtype=torch.float64)  # 0, 4, -9
    out = sqrt_nonneg(square)
    assert out.tolist() == [0.0, 2.0, 0.0]
    (grad,) = torch.autograd.grad(out.sum(), w)
    assert grad.tolist() == [0.0, 1.0, 0.0]  # d sqrt(w^2) / dw = 1 at w = 2
    J = torch.zeros(2, 3, 4, dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(_spectral_norms(J).sum(), J)
    assert bool(torch.isfinite(grad).all()) and float(grad.abs().max()) == 0.0


def gate_net(gain: float = 200.0, gates: int = 8, paths: int = 2) -> nn.Sequential:
    """A sigmoid MLP steep only where its first-layer "gates" are saturated: z_1 = x[:n_1],
    one second-layer neuron z_2 = gain * sum(gates) + sum(paths) - gain * gates - paths / 2,
    which is at its steep point only when every gate's sigmoid is near 1."""
    n1 = gates + paths
    net = nn.Sequential(nn.Linear(n1 + 2, n1), nn.Sigmoid(), nn.Linear(n1, 1), nn.Sigmoid(),
                        nn.Linear(1, 1)).double()
    with torch.no_grad():
        net[0].weight.copy_(torch.eye(n1, n1 + 2, dtype=torch.float64))
        net[0].bias.zero_()
        net[2].weight.copy_(torch.tensor([[gain] * gates + [1.0] * paths],
                                         dtype=torch.float64))
        net[2].bias.fill_(-gain * gates - 0.5 * paths)
        net[4].weight.fill_(1.0)
        net[4].bias.zero_()
    return net


def test_guided_starts_find_the_steep_region_that_random_starts_miss():
    """The gate net's constant is at least the closed-form value with every gate but one
    saturated at +inf and the paths at +inf: z_2 = 1 - gain * s(-t) for the open gate's
    pre-activation t, so Lip >= max_t s'(1 - gain s(-t)) * gain * s'(t) (a 1-D grid). The
    guided starts reach it; random starts stay where the Jacobian is 0 in float64."""
    gain = 200.0
    net = gate_net(gain)
    t = torch.linspace(0, 20, 200001, dtype=torch.float64)
    ds = torch.sigmoid(t) * torch.sigmoid(-t)
    z2 = 1 - gain * torch.sigmoid(-t)
    limit = float((torch.sigmoid(z2) * torch.sigmoid(-z2) * gain * ds).max())
    upper = ls.lipsdp_upper_bound(net, (12,)).value
    for seed in range(4):
        values, x = preactivation_ascent(net, (12,), seed=seed)
        assert torch.allclose(values, jac_norms(net, x), rtol=1e-12)
        assert limit * 0.99 <= float(values.max()) <= upper
    for seed in (0, 2, 3):
        assert float(preactivation_ascent(net, (12,), seed=seed, guided=0)[0].max()) < limit / 2


def test_bracket_finds_steep_regions_far_from_the_data():
    """A sigmoid net whose hidden units are steepest far from the samples: the ascent over
    pre-activations beats every estimate started at the data, and stays below the upper."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 4), nn.Sigmoid(), nn.Linear(4, 3))
    with torch.no_grad():
        net[0].weight.mul_(3.0)
        net[0].bias.fill_(-40.0)  # steep only where W x = 40: far from N(0, 1) samples
    x = torch.randn(64, 6, generator=torch.Generator().manual_seed(1))
    br = ls.bracket(net, x, seed=0, pairs=32, steps=20, restarts=1, directions=2)
    est = {e.method: e for e in br.estimates}
    pre = est["pre-activation Jacobian ascent"]
    assert br.lower_by is pre
    others = [e.value for e in br.estimates if e.kind == "lower" and e is not pre]
    assert pre.value > 10 * max(others)
    assert pre.value <= br.upper
    assert ls.bracket(net, x, seed=0, pairs=32, steps=20, restarts=1, directions=2,
                      domain=(-3.0, 3.0)).lower < pre.value  # not run inside a domain


def test_bracket_takes_the_number_of_pre_activation_starts():
    net = mlp([4, 3, 2], "sigmoid", 0, bias_std=2.0)
    x = torch.randn(16, 4, generator=torch.Generator().manual_seed(0))
    kw = dict(seed=3, pairs=8, steps=5, restarts=1, directions=1, sdp=False)
    pre = {e.method: e for e in ls.bracket(net, x, preactivation_starts=5, **kw).estimates}[
        "pre-activation Jacobian ascent"]
    assert "from 5 random starts;" in pre.note  # one hidden layer: no guided starts
    # the same starts as preactivation_ascent's with that seed: the same value
    assert pre.value == float(preactivation_ascent(net, (4,), starts=5, seed=3)[0].max())
    for bad in (0, 2.0, True):
        with pytest.raises(ValueError, match="preactivation_starts"):
            ls.bracket(net, x, preactivation_starts=bad, **kw)
    for bad in (-1, 2.0, True):
        with pytest.raises(ValueError, match="preactivation_guided"):
            ls.bracket(net, x, preactivation_guided=bad, **kw)
    deep = mlp([4, 3, 3, 2], "sigmoid", 0, bias_std=2.0)
    pre = {e.method: e for e in ls.bracket(deep, x, preactivation_starts=5,
                                           preactivation_guided=2, **kw).estimates}[
        "pre-activation Jacobian ascent"]
    assert "from 5 random starts and 2 guided ones" in pre.note
    assert pre.value == float(preactivation_ascent(deep, (4,), starts=5, seed=3,
                                                   guided=2)[0].max())


def test_every_pattern_of_the_tiny_net_is_below_the_certificate():
    """The worst slope pattern inside the tightened intervals still bounds from below."""
    net = mlp([3, 3, 4, 2], "sigmoid", 1, bias_std=3.0)
    chain = ls.mlp_chain(net, (3,))
    (a1, b1), (a2, b2) = global_slopes(chain)
    W0, W1, W2 = chain.weights
    worst = max(float(torch.linalg.matrix_norm(
        W2 @ (torch.tensor(p2)[:, None] * W1) @ (torch.tensor(p1)[:, None] * W0), ord=2))
        for p1 in itertools.product(*zip(a1.tolist(), b1.tolist(), strict=True))
        for p2 in itertools.product(*zip(a2.tolist(), b2.tolist(), strict=True)))
    assert ls.lipsdp_upper_bound(net, (3,)).value >= worst * (1 - 1e-9)
