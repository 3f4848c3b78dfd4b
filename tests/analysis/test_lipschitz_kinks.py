"""Points where f is not differentiable: a tie in a max-pooling window is a kink like a
ReLU's, and a Jacobian norm there is reported only where a close pair confirms it."""

import itertools

import pytest
import torch
from torch import nn

from clipkit import lipschitz
from clipkit.analysis.lipschitz.kinks import kink_hits, pool_ties
from clipkit.analysis.lipschitz.lower import confirmed_norms

FAST = dict(pairs=16, steps=10, restarts=1, directions=2, sdp_iters=30, ascent_steps=10,
            preactivation_starts=4)


def brute_force_ties(pool: nn.Module, h: torch.Tensor, d: int) -> list[bool]:
    """Independent oracle: every output position's window listed by index arithmetic."""
    k, s, p, dil = (v if isinstance(v, tuple) else (v,) * d for v in
                    (pool.kernel_size, pool.stride or pool.kernel_size, pool.padding,
                     pool.dilation))
    out_shape = pool(h).shape[-d:]
    sizes = h.shape[-d:]
    result = []
    for sample in h:
        tied = False
        for channel in sample:
            for o in itertools.product(*(range(n) for n in out_shape)):
                values = []
                for offs in itertools.product(*(range(kk) for kk in k)):
                    idx = tuple(o[i] * s[i] - p[i] + offs[i] * dil[i] for i in range(d))
                    if all(0 <= idx[i] < sizes[i] for i in range(d)):
                        values.append(float(channel[idx]))
                top = max(values)
                tied |= sum(v == top for v in values) >= 2
        result.append(tied)
    return result


CASES = [
    (nn.MaxPool1d(2), 1),
    (nn.MaxPool1d(3, stride=2, padding=1), 1),
    (nn.MaxPool1d(2, stride=3, dilation=2, ceil_mode=True), 1),
    (nn.MaxPool2d(2), 2),
    (nn.MaxPool2d((3, 2), stride=(2, 1), padding=(1, 0), ceil_mode=True), 2),
    (nn.MaxPool2d(2, stride=1, dilation=(2, 1)), 2),
    (nn.MaxPool3d(2, stride=(1, 2, 2), padding=(1, 0, 1)), 3),
]


@pytest.mark.parametrize("pool, d", CASES, ids=[repr(c[0]) for c in CASES])
def test_pool_ties_match_a_window_by_window_count(pool, d):
    gen = torch.Generator().manual_seed(0)
    shape = {1: (7,), 2: (5, 6), 3: (4, 5, 5)}[d]
    # sample i draws from 3^i values: the first ones tie, the last ones do not
    h = torch.stack([torch.randint(0, 3**i, (1, *shape), generator=gen)
                     for i in range(1, 9)]).double()
    expected = brute_force_ties(pool, h, d)
    assert pool_ties(pool, h).tolist() == expected
    assert any(expected) and not all(expected)
    distinct = torch.randperm(h.numel(), generator=gen).double().reshape(h.shape)
    assert pool_ties(pool, distinct).tolist() == [False] * len(h)


def tie_model() -> nn.Sequential:
    """[t, 0, 0, t] -> max pools [t, 0] and [0, t] -> their difference: f = 0 everywhere.
    At t = 0 both windows tie; autograd routes the first to t and the second to 0, so its
    derivative there is 1."""
    lin = nn.Linear(1, 4).double()
    out = nn.Linear(2, 1, bias=False).double()
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1.0], [0.0], [0.0], [1.0]]))
        lin.bias.zero_()
        out.weight.copy_(torch.tensor([[1.0, -1.0]]))
    return nn.Sequential(lin, nn.Unflatten(1, (2, 2)), nn.MaxPool1d(2), nn.Flatten(),
                         out).eval()


def test_a_max_pool_tie_does_not_give_a_lower_bound_above_the_constant():
    model = tie_model()
    x = torch.zeros(1, 1, dtype=torch.float64)
    assert float(lipschitz.jacobian_norms(model, x)[0]) == 1.0  # autograd's choice
    assert kink_hits(model, x).tolist() == [True]
    assert kink_hits(model, x + 0.5).tolist() == [False]
    br = lipschitz.bracket(model, torch.cat([x, torch.randn(7, 1, dtype=torch.float64)]),
                           **FAST)
    assert br.lower == 0.0  # was 1.0: f is constant


def test_ties_at_zero_after_a_relu_are_not_kinks():
    """Entries tied at ReLU's 0 all sit on its flat piece (or at its kink, which the ReLU's
    own check reports): slope 0 on every side."""
    conv = nn.Conv1d(1, 1, 1).double()
    with torch.no_grad():
        conv.weight.fill_(1.0)
        conv.bias.fill_(0.0)
    model = nn.Sequential(nn.Unflatten(1, (1, 4)), conv, nn.ReLU(), nn.MaxPool1d(2),
                          nn.Flatten()).eval()
    x = torch.tensor([[-1.0, -2.0, 3.0, 1.0],    # first window tied at 0, below the kink
                      [-1.0, 0.0, 3.0, 1.0],     # a pre-activation at the kink
                      [2.0, 2.0, 3.0, 1.0]],     # tied at 2: a kink of max
                     dtype=torch.float64)
    assert kink_hits(model, x).tolist() == [False, True, True]


def test_a_one_sided_pair_confirms_the_slope_of_its_side():
    """relu(2t) at t = 0: autograd gives relu'(0) = 0, the pair (0, h) sees 2; the
    symmetric pair alone averaged the two sides (1) and would have lowered a true 2."""
    lin = nn.Linear(1, 1).double()
    with torch.no_grad():
        lin.weight.fill_(2.0)
        lin.bias.zero_()
    model = nn.Sequential(lin, nn.ReLU()).eval()
    x = torch.zeros(1, 1, dtype=torch.float64)
    sigma = torch.tensor([2.0], dtype=torch.float64)
    assert float(confirmed_norms(model, x, sigma)[0]) == 2.0
    # a value no pair reaches is replaced by the best pair's quotient
    assert float(confirmed_norms(model, x, 3 * sigma)[0]) == pytest.approx(2.0, rel=1e-6)


def test_a_nearby_point_off_the_kinks_gives_an_attained_slope():
    """f = (max(x1, x2) - max(x2, x1), max(x1, x2)) = (0, max(x1, x2)): Lip 1. At x = 0
    both windows tie and autograd's J = [[1, -1], [1, 0]] has norm 1.618; no pair along its
    top direction reaches it (the best, one-sided, 0.851), while every point off the
    diagonal has the true slope 1."""
    lin = nn.Linear(2, 4, bias=False).double()
    out = nn.Linear(2, 2, bias=False).double()
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0], [1.0, 0.0]]))
        out.weight.copy_(torch.tensor([[1.0, -1.0], [1.0, 0.0]]))
    model = nn.Sequential(lin, nn.Unflatten(1, (2, 2)), nn.MaxPool1d(2), nn.Flatten(),
                          out).eval()
    x = torch.zeros(1, 2, dtype=torch.float64)
    sigma = lipschitz.jacobian_norms(model, x)
    assert float(sigma[0]) == pytest.approx((1 + 5**0.5) / 2)
    assert float(confirmed_norms(model, x, sigma)[0]) == pytest.approx(1.0, rel=1e-12)
    assert lipschitz.bracket(model, x.repeat(4, 1), **FAST).lower <= 1.0 + 1e-12


def test_the_jacobian_ascent_stops_where_the_jacobian_is_piecewise_constant(monkeypatch):
    """On a ReLU / max-pooling CNN the ascent's gradient is 0 and Adam does not move: its
    200 steps were 60-75 % of the bracket's time and never raised the bound."""
    from clipkit.analysis.lipschitz import lower
    calls = []
    real = lower.dense_jacobians
    monkeypatch.setattr(lower, "dense_jacobians", lambda *a, **k: calls.append(1) or real(*a, **k))
    torch.manual_seed(0)
    cnn = nn.Sequential(nn.Conv2d(1, 3, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                        nn.Linear(3 * 3 * 3, 2)).eval()
    starts = torch.rand(4, 1, 8, 8)
    one = lower.jacobian_ascent(cnn, starts, steps=1)
    calls.clear()
    many = lower.jacobian_ascent(cnn, starts, steps=200)
    assert torch.equal(one, many)
    assert len(calls) <= 4  # one step, the value reached and its kink check: not 200
    taken = []
    lower.jacobian_ascent(cnn, starts, steps=200, taken=taken)
    assert taken == [0]  # what the bracket reports as the ascent's iterations
    br = lipschitz.bracket(cnn, starts, **FAST)
    assert next(e for e in br.estimates if e.method == "Jacobian-norm ascent").iterations == 0
    smooth = nn.Sequential(nn.Flatten(), nn.Linear(64, 8), nn.Tanh(), nn.Linear(8, 2)).eval()
    calls.clear()
    lower.jacobian_ascent(smooth, starts, steps=20, taken=taken)
    assert len(calls) >= 20 and taken[-1] == 20  # a smooth net's ascent runs its steps


def test_constant_padding_is_a_layer_of_norm_one():
    """ZeroPad2d was refused although the same padding written as Conv2d(padding=1) is read:
    padding copies each entry once, Lipschitz 1 (also with a nonzero constant)."""
    torch.manual_seed(0)
    conv = nn.Conv2d(1, 2, 3).double()
    padded = nn.Sequential(nn.ZeroPad2d(1), conv, nn.ReLU(), nn.Flatten(),
                           nn.Linear(2 * 6 * 6, 2).double()).eval()
    inline = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1).double(), nn.ReLU(), nn.Flatten(),
                           padded[4]).eval()
    with torch.no_grad():
        inline[0].weight.copy_(conv.weight)
        inline[0].bias.copy_(conv.bias)
    x = torch.rand(6, 1, 6, 6, dtype=torch.float64)
    torch.testing.assert_close(padded(x), inline(x))
    ups = [lipschitz.lipschitz_upper(m, (1, 6, 6))[0].value for m in (padded, inline)]
    # the unpadded conv on the padded 8x8 input is a larger operator than the padded conv
    # on 6x6 (whose inputs have a zero border): the product bound is a little looser
    assert ups[1] <= ups[0] <= 1.05 * ups[1]
    br = lipschitz.bracket(padded, x, **FAST)
    assert br.lower <= br.upper
    shifted = nn.Sequential(nn.ConstantPad1d(2, 5.0), nn.Flatten()).eval()
    assert lipschitz.lipschitz_upper(shifted, (1, 4))[0].value == pytest.approx(1.0)


def test_a_bracket_of_inputs_that_are_not_finite_names_how_many():
    x = torch.rand(4, 3, dtype=torch.float64)
    x[1, 2] = float("inf")
    model = nn.Sequential(nn.Linear(3, 2)).double().eval()
    with pytest.raises(ValueError, match=r"x: 1 of 4 inputs contain NaN or infinite"):
        lipschitz.bracket(model, x, **FAST)
