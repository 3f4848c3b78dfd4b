"""The bounds are read from a model's layers: models whose forward is not those layers'
composition are refused, shared modules count each time they run, and the bracket never
returns lower > upper. Each case gave a wrong certificate before (an outside review's
reproducers, cut down)."""

import copy
import math
import sys

import pytest
import torch
from torch import nn

import clipkit as ck
from clipkit import lipschitz
from clipkit.analysis.lipschitz.estimate import Estimate

FAST = dict(pairs=16, steps=10, restarts=1, directions=2, sdp_iters=30, ascent_steps=10,
            preactivation_starts=4)


def linear(weight, bias=None) -> nn.Linear:
    weight = torch.as_tensor(weight, dtype=torch.float64)
    layer = nn.Linear(weight.shape[1], weight.shape[0]).double()
    with torch.no_grad():
        layer.weight.copy_(weight)
        layer.bias.copy_(torch.zeros(weight.shape[0]) if bias is None
                         else torch.as_tensor(bias, dtype=torch.float64))
    return layer


def test_a_module_placed_twice_counts_twice():
    lin = linear(3 * torch.eye(2))
    model = nn.Sequential(lin, lin).eval()  # computes 9x; named_children lists lin once
    br = lipschitz.bracket(model, torch.randn(8, 2, dtype=torch.float64), **FAST)
    assert br.lower == pytest.approx(9, rel=1e-9)
    assert br.upper == pytest.approx(9, rel=1e-8) and br.upper >= br.lower
    assert [n for n, _ in lipschitz.structure.model_layers(model)] == ["0", "1"]


def test_a_shared_activation_is_certified_as_the_function_it_computes():
    """f(x) = l3 relu(l2 relu(l1 x)) with one ReLU object: the second ReLU was dropped, the
    bound was 0.01 and every point certified at any radius, though x = 1.6 flips the class."""
    act = nn.ReLU()
    model = nn.Sequential(linear([[1.0]]), act, linear([[1.0], [-1.0]], [-1.0, -1.0]), act,
                          linear([[-1.0, -0.99], [0.0, 0.0]], [0.0, -0.5])).eval()
    x, y = torch.zeros(1, 1, dtype=torch.float64), torch.tensor([0])
    flipped = torch.tensor([[1.6]], dtype=torch.float64)
    assert int(model(x).argmax()) == 0 and int(model(flipped).argmax()) == 1
    for kwargs in ({"bound": "global"}, {"bound": "global", "pairwise": True},
                   {"bound": "local"}):
        acc = ck.certify.certified_accuracy(model, (x, y), eps=[2.0], **kwargs)
        assert float(acc.sel(eps=2.0)) == 0.0, kwargs
    assert lipschitz.exact(model, (-3.0, 3.0)).value == pytest.approx(1.0)


class Residual(nn.Sequential):
    def forward(self, x):
        return x + super().forward(x)


class SteepReLU(nn.ReLU):
    def forward(self, x):
        return 50 * super().forward(x)


class Renamed(nn.Sequential):
    """A subclass that only builds its layers: its forward is nn.Sequential's own."""

    def __init__(self):
        super().__init__(nn.Linear(2, 4), nn.Tanh(), nn.Linear(4, 2))


@pytest.mark.parametrize("make, message", [
    (lambda: nn.Sequential(Residual(nn.Linear(2, 2)), nn.Linear(2, 2)),
     r"module 0 \(Residual\) overrides the forward of torch's Sequential.*x \+ f\(x\)"),
    (lambda: nn.Sequential(nn.Linear(2, 3), SteepReLU(), nn.Linear(3, 2)),
     r"module 1 \(SteepReLU\) overrides the forward of torch's ReLU"),
])
def test_a_forward_that_is_not_its_layers_is_refused(make, message):
    model = make().double().eval()
    x, y = torch.randn(4, 2, dtype=torch.float64), torch.zeros(4, dtype=torch.long)
    with pytest.raises(lipschitz.UnsupportedModuleError, match=message):
        lipschitz.bracket(model, x, **FAST)
    for bound in ("global", "local"):
        with pytest.raises(lipschitz.UnsupportedModuleError, match=message):
            ck.certify.certified_accuracy(model, (x, y), eps=[0.1], bound=bound)


def test_a_subclass_with_torchs_own_forward_is_bounded():
    torch.manual_seed(0)
    br = lipschitz.bracket(Renamed().double().eval(), torch.randn(8, 2, dtype=torch.float64),
                           **FAST)
    assert 0 < br.lower <= br.upper


@pytest.mark.parametrize("where", ["model forward", "layer pre-forward", "global forward"])
def test_a_forward_hook_is_refused_until_removed(where):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 4), nn.Tanh(), nn.Linear(4, 2)).double().eval()
    x = torch.randn(8, 2, dtype=torch.float64)
    if where == "model forward":
        handle = model.register_forward_hook(lambda m, i, out: 100 * out)
    elif where == "layer pre-forward":
        handle = model[0].register_forward_pre_hook(lambda m, i: (100 * i[0],))
    else:
        handle = nn.modules.module.register_module_forward_hook(lambda m, i, out: out)
    try:
        with pytest.raises(lipschitz.UnsupportedModuleError, match="forward hook"):
            lipschitz.bracket(model, x, **FAST)
    finally:
        handle.remove()
    assert lipschitz.bracket(model, x, **FAST).upper > 0


@pytest.mark.parametrize("beta, message", [(-1.0, r"beta must be > 0"),
                                           (0.0, r"beta must be > 0")])
def test_softplus_with_a_beta_that_is_not_positive_is_refused(beta, message):
    """beta = -1, threshold 1: the sign of the jump was kept, -0.31 passed the jump check,
    and a bound of 1 was certified for a function that jumps by 0.31."""
    model = nn.Sequential(nn.Linear(1, 3), nn.Softplus(beta=beta, threshold=1.0),
                          nn.Linear(3, 1)).double()
    with pytest.raises(lipschitz.UnsupportedModuleError, match=message):
        lipschitz.bracket(model, torch.randn(4, 1, dtype=torch.float64), **FAST)


def test_a_kink_does_not_give_a_lower_bound_above_the_constant():
    """relu(t + 10) - relu(t) + relu(-t) - relu(-t - 10) is constant (Lip 0); at t = 0 two
    ReLUs sit at their kinks and autograd's one-sided derivative there is 1."""
    model = nn.Sequential(linear([[1.0], [1.0], [-1.0], [-1.0]], [10.0, 0.0, 0.0, -10.0]),
                          nn.ReLU(), linear([[1.0, -1.0, 1.0, -1.0]])).eval()
    x = torch.zeros(1, 1, dtype=torch.float64)
    assert float(lipschitz.jacobian_norms(model, x)[0]) == 1.0  # the one-sided value
    assert lipschitz.exact(model, (-20.0, 20.0)).value == 0.0
    br = lipschitz.bracket(model, torch.cat([x, torch.randn(7, 1, dtype=torch.float64)]),
                           **FAST)
    assert br.lower == 0.0
    # the check at a kink keeps a value that a close pair confirms
    lin = nn.Sequential(linear([[2.0]]), nn.ReLU()).eval()
    at_kink = torch.tensor([[0.0]], dtype=torch.float64)
    from clipkit.analysis.lipschitz.lower import confirmed_norms, kink_hits
    assert kink_hits(lin, at_kink).tolist() == [True]
    assert kink_hits(lin, at_kink + 1).tolist() == [False]
    # at 0, torch's relu'(0) = 0; the one-sided pair (0, h) sees the slope 2 of the right
    # piece, and a claimed 3 is replaced by that attained 2
    assert float(confirmed_norms(lin, at_kink, torch.tensor([3.0], dtype=torch.float64))[0]) \
        == pytest.approx(2.0, rel=1e-6)


def test_hook_based_spectral_norm_survives_the_bracket():
    """The vmap of the Jacobian norms left a functorch wrapper in the hook's .weight: the
    bracket failed ("Cannot access storage of TensorWrapper"), and so did the user's
    deepcopy of the model afterwards."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 16), nn.Tanh(), nn.Linear(16, 2))
    nn.utils.spectral_norm(model[0])
    model.eval()
    x = torch.randn(16, 3)
    with torch.no_grad():
        model(x)  # the hook sets .weight, a leaf without grad
    before = model[0].weight
    lipschitz.jacobian_norms(model, x)  # forwards inside vmap only: the weight is put back
    assert model[0].weight is before
    copy.deepcopy(model)
    br = lipschitz.bracket(model, x, **FAST)
    assert 0 < br.lower <= br.upper
    with torch.no_grad():
        assert torch.equal(model(x), model(x))  # the model still runs


def test_a_lower_bound_above_an_upper_bound_is_an_error(monkeypatch):
    def too_small(model, input_shape):
        return Estimate(1e-3, "upper", "a wrong bound", 0, 0, 0.0)

    bracket_module = sys.modules["clipkit.analysis.lipschitz.bracket"]
    monkeypatch.setattr(bracket_module, "merged_upper_bound", too_small)
    model = nn.Sequential(linear([[2.0, 0.0], [0.0, 1.0]]), nn.ReLU()).eval()
    with pytest.raises(lipschitz.BracketContradiction,
                       match=r"lower bound 2 .* exceeds the certified upper bound 0.001 "
                             r"\(a wrong bound\)"):
        lipschitz.bracket(model, torch.rand(8, 2, dtype=torch.float64) + 0.1, **FAST)
    monkeypatch.undo()
    br = lipschitz.bracket(model, torch.rand(8, 2, dtype=torch.float64) + 0.1, **FAST)
    assert br.lower == pytest.approx(2.0) and math.isclose(br.upper, 2.0, rel_tol=1e-8)
