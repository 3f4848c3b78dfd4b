"""clipkit.core.affine_first: the first layer split off, and the ascent that reuses it."""

import pytest
import torch
from torch import nn
from torch.func import stack_module_state

import clipkit as ck
from clipkit.core.affine_first import (
    first_linear,
    low_matmul,
    pairs_first,
    split_module,
    split_stacked,
)
from clipkit.core.pairs import (
    AscentRule,
    PairState,
    _value,
    _value_and_grad,
    ascend,
    propose,
    quotients,
    stacked,
)


def _net(act="sigmoid", seed=0):
    return nn.Sequential(nn.Flatten(), *ck.models.mlp([12, 7, 5, 3], activation=act,
                                                      seed=seed)).double()


def _pairs(k=1, p=9, seed=0):
    gen = torch.Generator().manual_seed(seed)
    u = torch.randn(k, p, 3, 4, generator=gen, dtype=torch.float64)
    v = u + 0.1 * torch.randn(u.shape, generator=gen, dtype=torch.float64)
    return PairState(u, v, torch.full((k, p), 0.5, dtype=torch.float64))


def test_first_linear_finds_a_narrowing_first_layer_after_flatten_only():
    assert first_linear(_net()) == 1
    assert first_linear(ck.models.mlp([12, 7, 3])) == 0
    assert first_linear(ck.models.mlp([3, 7, 2])) is None  # widens: n1^2 > n0 n1
    assert first_linear(nn.Sequential(nn.Flatten(0), nn.Linear(12, 3))) is None
    assert first_linear(nn.Sequential(nn.Tanh(), nn.Linear(12, 3))) is None
    assert first_linear(ck.models.cnn(width=4)) is None
    assert first_linear(nn.Linear(12, 3)) is None  # not a Sequential: nothing to split


def test_the_split_forward_is_the_model():
    net = _net()
    split = split_module(net)
    x = torch.randn(2, 5, 3, 4, dtype=torch.float64)
    assert torch.allclose(split.rest(split.first(x)), stacked(net)(x), rtol=0, atol=1e-14)
    assert split.weight().shape == (1, 7, 12)


def test_the_proposal_s_first_layer_from_the_linearization_is_w_times_the_proposal():
    net = _net()
    split = split_module(net)
    for rule in (AscentRule(), AscentRule(power=2, step="normalized")):
        pairs = _pairs()
        w = torch.cat([pairs.u, pairs.v], dim=1)
        q, g, _, lin = _value_and_grad(stacked(net), w, rule.power, split)
        q0, g0, _, _ = _value_and_grad(stacked(net), w, rule.power)
        assert torch.allclose(q, q0, rtol=1e-13, atol=0)
        assert torch.allclose(g, g0, rtol=1e-12, atol=1e-15)  # W^T delta = autograd's
        state = PairState(pairs.u, pairs.v, pairs.tau, q, g, uv=w, lin=lin)
        s = torch.linspace(0.1, 2.0, 9, dtype=torch.float64)[None]
        direct = split.first(propose(state, rule, s))
        weight = split.weight()
        gram = weight @ weight.transpose(1, 2)
        assert torch.allclose(lin.at(gram, s), direct, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("act", ["sigmoid", "relu", "tanh"])
@pytest.mark.parametrize("steps, power, step", [(1, 1, "gradient"), (1, 2, "gradient"),
                                                (3, 1, "normalized"), (4, 2, "gradient")])
def test_the_ascent_through_the_split_moves_the_pairs_as_the_plain_ascent(act, steps, power,
                                                                         step):
    net = _net(act)
    rule = AscentRule(power=power, step=step)
    pairs = _pairs(p=16)
    for _ in range(3):  # the accept step keeps a linearization per kept pair
        plain = ascend(stacked(net), pairs, steps, rule)
        split = ascend(stacked(net), pairs, steps, rule, split_module(net))
        assert torch.equal(plain.tau, split.tau)  # the same accept decisions
        assert torch.allclose(plain.q, split.q, rtol=1e-12, atol=0)
        assert torch.allclose(plain.uv, split.uv, rtol=1e-12, atol=1e-14)
        assert split.g is None and split.lin is None
        pairs = PairState(split.u, split.v, split.tau)


def _counting(fn, calls):
    def counted(x):
        calls.append(x.shape[1])
        return fn(x)
    return counted


def test_the_proposals_are_evaluated_without_the_first_layer_where_that_is_less_work():
    net = _net()
    split = split_module(net)
    first_calls, model_calls = [], []
    split = type(split)(split.weight, split.bias, _counting(split.first, first_calls),
                        split.rest)
    ascend(_counting(stacked(net), model_calls), _pairs(p=16), 3, AscentRule(), split)
    assert model_calls == [] and first_calls == [32]  # the pairs once, no proposal
    # 2 pairs, one step: 4 * (12 - 7) < 12 * 7, the Gram matrix would cost more
    first_calls, model_calls = [], []
    split = type(split)(split.weight, split.bias, _counting(split.first, first_calls),
                        split.rest)
    ascend(_counting(stacked(net), model_calls), _pairs(p=2), 1, AscentRule(), split)
    assert model_calls == [4, 4] and first_calls == []


def test_a_clamp_turns_the_split_off():
    net = _net()
    pairs = _pairs()
    rule = AscentRule(clamp=(-0.5, 0.5))
    plain = ascend(stacked(net), pairs, 2, rule)
    split = ascend(stacked(net), pairs, 2, rule, split_module(net))
    assert torch.equal(plain.uv, split.uv) and torch.equal(plain.q, split.q)


def test_the_stacked_split_is_each_copy_s_split():
    nets = [_net(seed=s) for s in range(3)]
    params, buffers = stack_module_state(nets)
    split = split_stacked(nets[0], params, buffers)
    x = torch.randn(3, 5, 3, 4, dtype=torch.float64)
    z = split.first(x)
    for k, net in enumerate(nets):
        one = split_module(net)
        assert torch.allclose(z[k:k + 1], one.first(x[k:k + 1]), rtol=1e-13, atol=1e-15)
        assert torch.allclose(split.rest(z)[k:k + 1], one.rest(z[k:k + 1]), rtol=1e-13,
                              atol=1e-15)
        assert torch.equal(split.weight()[k], net[1].weight.detach())


# --- low precision (CLIP(ascent_precision="bfloat16")): an approximation

def test_low_precision_products_are_rounded_per_copy_as_separate_products_are():
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(3, 50, 40, generator=gen, dtype=torch.float64)
    b = torch.randn(3, 40, 30, generator=gen, dtype=torch.float64)
    low = low_matmul(a, b, torch.bfloat16)
    assert low.dtype == torch.float64
    assert 1e-5 < float((low - a @ b).norm() / (a @ b).norm()) < 2e-2  # bfloat16: 8 bits
    for k in range(3):  # a path (fit_path) rounds as separate runs
        assert torch.equal(low[k:k + 1], low_matmul(a[k:k + 1], b[k:k + 1], torch.bfloat16))
    assert torch.allclose(low_matmul(a, b), a @ b, rtol=1e-14, atol=1e-14)


@pytest.mark.parametrize("act", ["sigmoid", "tanh"])
def test_low_precision_quotients_of_close_pairs_keep_their_precision(act):
    # v − u is 1e-4 of u: rounding W·u and W·v apart to 8 bits would leave nothing of the
    # difference; A(v) = A(u) − W·(u − v) rounds the difference relative to itself
    net = _net(act)
    split = split_module(net)
    gen = torch.Generator().manual_seed(0)
    u = 3 * torch.randn(1, 50, 3, 4, generator=gen, dtype=torch.float64)
    v = u + 1e-3 * torch.randn(u.shape, generator=gen, dtype=torch.float64)
    w = torch.cat([u, v], dim=1)
    with torch.no_grad():
        exact = quotients(stacked(net), u, v)
    low, _ = _value(stacked(net), w, split, None, torch.bfloat16)
    assert float(((low - exact) / exact).abs().max()) < 3e-2
    wt = split.weight().transpose(1, 2)
    apart = torch.cat([low_matmul(u.flatten(2), wt, torch.bfloat16),
                       low_matmul(v.flatten(2), wt, torch.bfloat16)], dim=1)
    with torch.no_grad():
        out = split.rest(apart + split.bias()[:, None])
    naive = (out[:, :50] - out[:, 50:]).norm(dim=2) / (u - v).flatten(2).norm(dim=2)
    assert float(((naive - exact) / exact).abs().max()) > 1.0
    z = pairs_first(split, w, torch.bfloat16)
    assert torch.allclose(z, split.first(w), rtol=3e-2, atol=3e-2)
    assert torch.equal(pairs_first(split, w), split.first(w))  # None: exact


@pytest.mark.parametrize("steps, clamp", [(1, None), (3, None), (2, (-2.0, 2.0))])
def test_the_low_precision_ascent_climbs_the_exact_quotients_as_the_exact_ascent(steps, clamp):
    net = _net()
    rule = AscentRule(power=2, step="normalized", clamp=clamp)
    split = split_module(net)
    start = _pairs(p=16)
    with torch.no_grad():
        before = quotients(stacked(net), start.u, start.v)
    low, exact = start, start
    for _ in range(4):
        low = ascend(stacked(net), low, steps, rule, split, torch.bfloat16)
        exact = ascend(stacked(net), exact, steps, rule, split)
        with torch.no_grad():
            at_low = quotients(stacked(net), low.u, low.v)  # at the pairs it returned
        assert torch.allclose(low.q, at_low, rtol=3e-2, atol=0)
        low, exact = (PairState(p.u, p.v, p.tau) for p in (low, exact))
    with torch.no_grad():
        at_exact = quotients(stacked(net), exact.u, exact.v)
    assert not torch.equal(low.u, exact.u)  # another computation
    assert float(at_low.mean()) > 1.5 * float(before.mean())  # it climbed
    assert float(at_low.mean()) > 0.97 * float(at_exact.mean())  # as far as the exact ascent


def test_a_low_precision_ascent_needs_the_first_layer_split_off():
    with pytest.raises(ValueError, match="low precision.*needs the model's first layer"):
        ascend(stacked(_net()), _pairs(), 1, AscentRule(), None, torch.bfloat16)
