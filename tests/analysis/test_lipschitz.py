"""clipkit.lipschitz against exact values: spectral norms, dense convolution matrices,
dense Jacobians, breakpoints of 1-D ReLU nets, finite differences."""

import math

import pytest
import torch
from torch import nn

import clipkit as ck
from clipkit import lipschitz
from clipkit.analysis.lipschitz.structure import float64_copy
from clipkit.core.utils import eval_mode

ACTS = {"relu": nn.ReLU, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh}
FAST = dict(pairs=32, steps=20, restarts=1, directions=2)  # cheap bracket settings for tests


def sigma_max(J: torch.Tensor) -> torch.Tensor:
    """Largest singular value by SVD (independent of the library's Gram-matrix route)."""
    return torch.linalg.matrix_norm(J.to(torch.float64), ord=2)


def dense_jacobians(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """(N, out, in) Jacobians in float64, one output at a time with plain autograd."""
    m = float64_copy(model)
    x = x.to(torch.float64).requires_grad_(True)
    y = m(x).reshape(len(x), -1)
    rows = [torch.autograd.grad(y[:, k].sum(), x, retain_graph=True)[0].reshape(len(x), -1)
            for k in range(y.shape[1])]
    return torch.stack(rows, 1)


def conv_dense(conv: nn.Module, shape: tuple[int, ...]) -> torch.Tensor:
    """The matrix of a bias-free linear layer on `shape`, built by applying it to the basis."""
    n = math.prod(shape)
    basis = torch.eye(n, dtype=torch.float64).reshape(n, *shape)
    m = float64_copy(conv)
    if getattr(m, "bias", None) is not None:
        m.bias.zero_()
    with torch.no_grad():
        return m(basis).reshape(n, -1).T


def tiny_mlp(seed: int, act: str, d_in: int = 5) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d_in, 8), ACTS[act](), nn.Linear(8, 6), ACTS[act](),
                         nn.Linear(6, 3))


def tiny_cnn(seed: int, act: str) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 3, 3, stride=1, padding=1), ACTS[act](),
        nn.Conv2d(3, 4, 3, stride=2, padding=1), ACTS[act](),
        nn.AvgPool2d(2), nn.Flatten(), nn.Linear(4 * 2 * 2, 3),
    )


# ----------------------------------------------------------------------------- exact oracles


@pytest.mark.parametrize("shape", [(7, 5), (3, 12), (10, 10)])
def test_linear_map_lower_and_upper_equal_spectral_norm(shape):
    torch.manual_seed(0)
    lin = nn.Linear(shape[1], shape[0])
    true = float(sigma_max(lin.weight.detach()))
    b = lipschitz.bracket(lin, torch.randn(64, shape[1]), **FAST)
    assert b.lower == pytest.approx(true, rel=1e-4)
    assert b.upper == pytest.approx(true, rel=1e-4)
    assert lipschitz.exact(lin).value == pytest.approx(true, rel=1e-10)
    assert lipschitz.exact(lin).kind == "exact"


@pytest.mark.parametrize("stride,padding,dilation", [(1, 0, 1), (1, 1, 1), (2, 1, 1),
                                                     (2, 0, 1), (3, 2, 1), (1, 2, 2)])
def test_conv2d_layer_norm_equals_dense_operator(stride, padding, dilation):
    torch.manual_seed(stride * 10 + padding + 100 * dilation)
    conv = nn.Conv2d(3, 4, 3, stride=stride, padding=padding, dilation=dilation)
    shape = (3, 9, 8)  # 216 inputs: more than the Lanczos iterations, so not trivially exact
    true = float(sigma_max(conv_dense(conv, shape)))
    (lb,) = lipschitz.layer_norms(conv, shape, iters=100)
    assert lb.estimate == pytest.approx(true, rel=1e-3)
    assert lb.bound >= true * (1 - 1e-9)  # certified margin keeps it above
    assert lb.bound <= true * 1.01
    # with overlapping windows the reshaped-kernel norm is a different number, so the test can
    # tell the true operator from it (with stride = kernel the operator is block diagonal and
    # the two coincide)
    kernel = float(sigma_max(conv.weight.detach().reshape(4, -1)))
    if stride < 3:
        assert abs(kernel - true) / true > 1e-3


@pytest.mark.parametrize("pool", [nn.AvgPool2d(3, stride=1, padding=1),
                                  nn.AvgPool2d(2, stride=2, ceil_mode=True)])
def test_avgpool_layer_norm_equals_dense_operator(pool):
    shape = (2, 7, 7)
    true = float(sigma_max(conv_dense(pool, shape)))
    (lb,) = lipschitz.layer_norms(pool, shape, iters=100)
    assert lb.estimate == pytest.approx(true, rel=1e-3)
    assert lb.bound >= true * (1 - 1e-9)


@pytest.mark.parametrize("pool,expected", [
    (nn.MaxPool2d(2), 1.0),                          # non-overlapping windows
    (nn.MaxPool2d(3, stride=1), 3.0),                # 9 windows cover the centre pixels
    (nn.MaxPool2d(3, stride=2, padding=1), 2.0),     # overlaps of 2 per axis
    (nn.MaxPool2d(2, stride=1, dilation=2), 2.0),
])
def test_maxpool_constant_is_attained(pool, expected):
    shape = (1, 8, 8)
    (lb,) = lipschitz.layer_norms(pool, shape)
    assert lb.bound == pytest.approx(expected)
    # attained by x = 0, x' = e_i (pool(0) = 0): the constant is exact, not just a bound
    n = math.prod(shape)
    basis = torch.eye(n).reshape(n, *shape)
    attained = pool(basis).reshape(n, -1).norm(dim=1).max()
    assert float(attained) == pytest.approx(lb.bound)


def test_batchnorm_eval_is_affine_with_its_scale():
    torch.manual_seed(1)
    bn = nn.BatchNorm1d(4)
    bn.running_var.uniform_(0.1, 3.0)
    bn.running_mean.normal_()
    bn.weight.data.normal_()
    (lb,) = lipschitz.layer_norms(bn, (4,))
    bn64 = float64_copy(bn)
    J = torch.func.jacrev(lambda v: bn64(v[None])[0])(torch.zeros(4, dtype=torch.float64))
    assert lb.bound == pytest.approx(float(sigma_max(J)), rel=1e-12)
    assert bn.training  # the caller's mode is restored


@pytest.mark.parametrize("seed", range(20))
@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_bracket_contains_dense_jacobian_norms(seed, kind):
    act = list(ACTS)[seed % 3]
    model = tiny_mlp(seed, act) if kind == "mlp" else tiny_cnn(seed, act)
    shape = (5,) if kind == "mlp" else (1, 8, 8)
    g = torch.Generator().manual_seed(1000 + seed)
    x = torch.randn(32, *shape, generator=g)
    b = lipschitz.bracket(model, x, seed=seed, **FAST)
    # an independent, larger sample at several scales: every Jacobian norm is <= Lip <= upper
    x_big = torch.cat([torch.randn(400, *shape, generator=g) * s for s in (0.3, 1.0, 3.0)])
    assert float(sigma_max(dense_jacobians(model, x_big)).max()) <= b.upper
    assert b.lower >= float(sigma_max(dense_jacobians(model, x)).max()) * (1 - 1e-6)
    assert b.lower <= b.upper
    if kind == "mlp":
        merged = [e for e in b.estimates if e.method.startswith("merged")]
        product = [e for e in b.estimates if e.method.startswith("product")]
        assert merged and merged[0].value <= product[0].value


def one_hidden_relu(seed: int, width: int = 12) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(1, width), nn.ReLU(), nn.Linear(width, 2))


def breakpoint_lipschitz(net: nn.Module, a: float, b: float) -> float:
    """Independent oracle for W2 relu(w1 t + b1) + b2: kinks at t = -b1/w1, slope W2 (w1 * mask)."""
    w1 = net[0].weight.detach().double()[:, 0]
    b1 = net[0].bias.detach().double()
    W2 = net[2].weight.detach().double()
    kinks = sorted(float(t) for t in -b1 / w1 if a < t < b)
    edges = [a, *kinks, b]
    best = 0.0
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        mid = (lo + hi) / 2
        active = (w1 * mid + b1 > 0).double()
        best = max(best, float((W2 @ (w1 * active)).norm()))
    return best


@pytest.mark.parametrize("seed", range(8))
def test_exact_relu_1d_matches_breakpoints_and_lies_in_bracket(seed):
    net = one_hidden_relu(seed)
    kinks = (-net[0].bias / net[0].weight[:, 0]).detach()
    a, b = float(kinks.min()) - 1.0, float(kinks.max()) + 1.0  # every piece: global Lip
    oracle = breakpoint_lipschitz(net, a, b)
    ex = lipschitz.exact(net, (a, b))
    assert ex.kind == "exact"
    assert ex.value == pytest.approx(oracle, rel=1e-9)
    x = torch.linspace(a, b, 64).reshape(-1, 1)
    br = lipschitz.bracket(net, x, seed=seed, **FAST)
    assert br.lower <= ex.value * (1 + 1e-9)
    assert ex.value <= br.upper
    # a sub-interval with fewer pieces is handled too
    mid = (a + b) / 2
    assert lipschitz.exact(net, (a, mid)).value == pytest.approx(
        breakpoint_lipschitz(net, a, mid), rel=1e-9)


def test_exact_deep_piecewise_linear_agrees_with_fine_differences():
    torch.manual_seed(3)
    net = nn.Sequential(nn.Linear(1, 10), nn.LeakyReLU(0.1), nn.Linear(10, 10), nn.ReLU(),
                        nn.Linear(10, 1))
    ex = lipschitz.exact(net, (-3.0, 3.0))
    t = torch.linspace(-3, 3, 200_001, dtype=torch.float64)
    with torch.no_grad():
        y = float64_copy(net)(t[:, None])[:, 0]
    fd = ((y[1:] - y[:-1]) / (t[1:] - t[:-1])).abs().max()
    assert ex.value >= float(fd) * (1 - 1e-9)  # no difference quotient exceeds the exact value
    assert ex.value == pytest.approx(float(fd), rel=1e-6)  # and the steepest piece is seen


def rational_lipschitz(net: nn.Sequential, a: float, b: float) -> float:
    """Independent oracle in exact rational arithmetic: the affine pieces of a 1-D input
    Linear/ReLU/LeakyReLU chain on [a, b], split where a unit's pre-activation changes sign,
    and the largest slope norm. No rounding except the final square root."""
    from fractions import Fraction

    pieces = [(Fraction(a), Fraction(b), [Fraction(1)], [Fraction(0)])]  # t-range, h = A t + c
    for m in net:
        new = []
        if isinstance(m, nn.Linear):
            W = [[Fraction(float(w)) for w in row] for row in m.weight.detach().double()]
            bias = [Fraction(float(v)) for v in m.bias.detach().double()]
            for t0, t1, A, c in pieces:
                new.append((t0, t1, [sum(w * v for w, v in zip(row, A, strict=True))
                                     for row in W],
                            [sum(w * v for w, v in zip(row, c, strict=True)) + bi
                             for row, bi in zip(W, bias, strict=True)]))
        else:
            slope = Fraction(float(getattr(m, "negative_slope", 0.0)))
            for t0, t1, A, c in pieces:
                cuts = sorted({t0, t1, *(-ci / ai for ai, ci in zip(A, c, strict=True)
                                         if ai != 0 and t0 < -ci / ai < t1)})
                for u0, u1 in zip(cuts[:-1], cuts[1:], strict=False):
                    mid = (u0 + u1) / 2
                    k = [Fraction(1) if ai * mid + ci > 0 else slope
                         for ai, ci in zip(A, c, strict=True)]
                    new.append((u0, u1, [ki * ai for ki, ai in zip(k, A, strict=True)],
                                [ki * ci for ki, ci in zip(k, c, strict=True)]))
        pieces = new
    return max(math.sqrt(float(sum(ai * ai for ai in A))) for _, _, A, _ in pieces)


@pytest.mark.parametrize("seed", range(6))
def test_exact_matches_rational_arithmetic_at_extreme_scales(seed):
    """Two hidden layers, weights of 1e-3 or 1e3 and biases up to 1e4, so that the
    breakpoints lie near ±1e7 and the slopes are 1e-10 or 1e9: ``exact`` over [-1e9, 1e9]
    equals the rational oracle to rounding (an audit once suspected these nets)."""
    g = torch.Generator().manual_seed(seed)
    act = [nn.ReLU(), nn.LeakyReLU(0.1), nn.LeakyReLU(-0.5), nn.LeakyReLU(2.0)][seed % 4]
    scale, bias = [(1e-3, 1e4), (1e3, 1e4), (1e-3, 100.0)][seed % 3]
    dims = [1, 6, 4, 2]
    layers: list[nn.Module] = []
    for k in range(3):
        lin = nn.Linear(dims[k], dims[k + 1]).double()
        with torch.no_grad():
            lin.weight.copy_(torch.randn(dims[k + 1], dims[k], generator=g,
                                         dtype=torch.float64) * scale)
            lin.bias.copy_(torch.randn(dims[k + 1], generator=g, dtype=torch.float64) * bias)
        layers += [lin, act] if k < 2 else [lin]
    net = nn.Sequential(*layers)
    oracle = rational_lipschitz(net, -1e9, 1e9)
    assert lipschitz.exact(net, (-1e9, 1e9)).value == pytest.approx(oracle, rel=1e-12)


def test_exact_smooth_1d_is_a_grid_value():
    torch.manual_seed(4)
    net = nn.Sequential(nn.Linear(1, 6), nn.Tanh(), nn.Linear(6, 1))
    ex = lipschitz.exact(net, (-2.0, 2.0), grid_points=20_001)
    assert ex.kind == "grid" and "not a certificate" in ex.method
    t = torch.linspace(-2, 2, 4001, dtype=torch.float64)
    with torch.no_grad():
        y = float64_copy(net)(t[:, None])[:, 0]
    fd = ((y[1:] - y[:-1]) / (t[1:] - t[:-1])).abs().max()
    assert ex.value == pytest.approx(float(fd), rel=1e-4)


# ----------------------------------------------------------------------------- estimators


def finite_difference_jacobian(model: nn.Module, x0: torch.Tensor, h: float = 1e-6):
    m = float64_copy(model)
    x0 = x0.double()
    cols = []
    with torch.no_grad():
        for i in range(x0.numel()):
            e = torch.zeros_like(x0).reshape(-1)
            e[i] = h
            e = e.reshape(x0.shape)
            cols.append(((m(x0[None] + e) - m(x0[None] - e)) / (2 * h)).reshape(-1))
    return torch.stack(cols, 1)


@pytest.mark.parametrize("method", ["dense", "power"])
def test_jacobian_norms_agree_with_finite_differences(method):
    model = tiny_cnn(7, "tanh").double()
    x = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    est = lipschitz.jacobian_norms(model, x, method=method, iters=300,
                                   generator=torch.Generator().manual_seed(0))
    fd = torch.stack([sigma_max(finite_difference_jacobian(model, xi)) for xi in x])
    torch.testing.assert_close(est, fd, rtol=1e-6, atol=0)


def test_quotient_search_improves_on_its_start_and_is_reproducible():
    model = tiny_mlp(5, "sigmoid")
    x = torch.randn(16, 5, generator=torch.Generator().manual_seed(1))
    q0, _, _ = lipschitz.quotient_search(model, x, pairs=16, steps=0, restarts=1,
                                         generator=torch.Generator().manual_seed(0))
    q1, u, v = lipschitz.quotient_search(model, x, pairs=16, steps=50, restarts=1,
                                         generator=torch.Generator().manual_seed(0))
    q2, _, _ = lipschitz.quotient_search(model, x, pairs=16, steps=50, restarts=1,
                                         generator=torch.Generator().manual_seed(0))
    assert q1 > q0 and q1 == q2
    with torch.no_grad():
        m = float64_copy(model)
        u, v = u.double(), v.double()
        direct = (m(u[None]) - m(v[None])).norm() / (u - v).norm()
    assert q1 == pytest.approx(float(direct), rel=1e-12)


def test_jacobian_ascent_of_a_linear_map_is_its_spectral_norm():
    W = torch.randn(3, 7, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    net = nn.Linear(7, 3).double()
    with torch.no_grad():
        net.weight.copy_(W)
    x = torch.randn(2, 7, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    got = lipschitz.jacobian_ascent(net, x, steps=5)
    torch.testing.assert_close(got, torch.linalg.matrix_norm(W, ord=2).expand(2), rtol=1e-12,
                               atol=0)
    for bad in (-1, True, 2.5):
        with pytest.raises(ValueError, match=f"steps must be an int >= 0, got {bad!r}"):
            lipschitz.jacobian_ascent(net, x, steps=bad)


def test_jacobian_ascent_climbs_to_the_steepest_slope_of_a_smooth_1d_net():
    """Oracle: sup |f'| on a fine grid of [-1, 1] (the net is smooth, f: R -> R)."""
    torch.manual_seed(5)
    net = nn.Sequential(nn.Linear(1, 8), nn.Tanh(), nn.Linear(8, 1))
    t = torch.linspace(-1, 1, 20_001, dtype=torch.float64)[:, None]
    with torch.no_grad():
        y = float64_copy(net)(t)[:, 0]
    slopes = ((y[1:] - y[:-1]) / (t[1:, 0] - t[:-1, 0])).abs()
    starts = torch.tensor([[-0.9], [-0.3], [0.3], [0.9]])
    before = lipschitz.jacobian_norms(float64_copy(net), starts.double())
    got = lipschitz.jacobian_ascent(net, starts, steps=300, lr=0.02, domain=(-1.0, 1.0))
    assert bool((got >= before - 1e-12).all())  # the ascent never ends lower than it started
    assert float(got.max()) <= float(slopes.max()) * (1 + 1e-6)  # attained in the domain
    assert float(got.max()) == pytest.approx(float(slopes.max()), rel=1e-3)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_jacobian_ascent_stays_below_the_certified_upper_bound(seed):
    model = tiny_mlp(seed, "sigmoid")
    x = torch.randn(8, 5, generator=torch.Generator().manual_seed(seed))
    b = lipschitz.bracket(model, x, seed=seed)
    asc = [e for e in b.estimates if e.method == "Jacobian-norm ascent"]
    assert len(asc) == 1 and asc[0].kind == "lower"
    assert asc[0].value <= b.upper * (1 + 1e-9) and b.lower >= asc[0].value


def test_bracket_repr_and_provenance():
    model = tiny_mlp(0, "relu")
    b = lipschitz.bracket(model, torch.randn(16, 5), seed=3, **FAST)
    text = repr(b)
    assert "lower=" in text and "upper=" in text and "adversarial quotient search" in text
    assert b.lower_by.kind == "lower" and b.upper_by.kind == "upper"
    assert b.lower_by.seed == 3 or b.lower_by.method == "max Jacobian spectral norm"
    assert {e.method for e in b.estimates} >= {
        "adversarial quotient search", "max Jacobian spectral norm",
        "random-perturbation quotients", "product of layer norms"}
    assert b.ratio == pytest.approx(b.upper / b.lower)
    assert b.lower == max(e.value for e in b.estimates if e.kind == "lower")


def test_bracket_is_seeded():
    model = tiny_cnn(2, "relu")
    x = torch.randn(8, 1, 8, 8)
    b1 = lipschitz.bracket(model, x, seed=11, **FAST)
    b2 = lipschitz.bracket(model, x, seed=11, **FAST)
    assert b1.lower == b2.lower and b1.upper == b2.upper


def test_bracket_chunks_give_the_same_values():
    model = tiny_mlp(9, "tanh")
    x = torch.randn(40, 5, generator=torch.Generator().manual_seed(2))
    sig_a = lipschitz.jacobian_norms(model, x, batch_size=7)
    sig_b = lipschitz.jacobian_norms(model, x, batch_size=64)
    torch.testing.assert_close(sig_a, sig_b)


def test_nested_sequential_and_batchnorm_bracket():
    torch.manual_seed(8)
    model = nn.Sequential(
        nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.BatchNorm2d(2), nn.LeakyReLU(-1.5)),
        nn.MaxPool2d(3, stride=1), nn.Dropout(0.5), nn.Flatten(), nn.Linear(2 * 4 * 4, 2),
    )
    model[0][1].running_var.uniform_(0.2, 2.0)
    x = torch.randn(16, 1, 6, 6)
    b = lipschitz.bracket(model, x, **FAST)
    names = [lb.name for lb in b.layers]
    assert names[:3] == ["0.0", "0.1", "0.2"]
    assert [lb.bound for lb in b.layers if lb.module == "LeakyReLU"] == [1.5]
    x_big = torch.randn(500, 1, 6, 6) * 2
    assert float(sigma_max(dense_jacobians(model, x_big)).max()) <= b.upper
    assert b.lower <= b.upper
    assert model.training  # restored


@pytest.mark.parametrize("make", [lambda: tiny_mlp(0, "sigmoid"), lambda: tiny_cnn(0, "relu")],
                         ids=["mlp", "cnn"])
def test_spectrally_normalised_layers_are_bounded_with_the_weight_they_compute(make):
    """ck.SpectralNorm's layers (torch parametrizations) compute W / sigma in eval mode; the
    bounds must see that weight, and reading it must not run the power iteration (which
    would change the model). Oracle: the same network built from plain layers holding the
    effective weights."""
    import copy

    net = ck.SpectralNorm().prepare(make())
    x = torch.rand(16, 5) if isinstance(net[0], nn.Linear) else torch.rand(16, 1, 8, 8)
    net.train()
    for _ in range(3):
        net(x)  # power iterations: u, v move in train mode
    state = copy.deepcopy(net.state_dict())
    plain = copy.deepcopy(make())
    with torch.no_grad(), eval_mode(net):
        for mod, src in zip(plain, net, strict=True):
            if hasattr(src, "parametrizations"):
                mod.weight.copy_(src.weight)  # W / sigma with the frozen u, v
                mod.bias.copy_(src.bias)
        torch.testing.assert_close(plain(x), net(x), rtol=0, atol=0)
    b = lipschitz.bracket(net, x, seed=0, **FAST)
    ref = lipschitz.bracket(plain, x, seed=0, **FAST)
    assert b.upper == ref.upper and b.lower <= b.upper
    assert [e.value for e in b.estimates if e.kind == "upper"] == [
        e.value for e in ref.estimates if e.kind == "upper"]
    assert all(torch.equal(state[k], v) for k, v in net.state_dict().items())
    assert net.training and hasattr(net[0], "parametrizations")  # the model is untouched


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_bracket_on_gpu_matches_cpu():
    model = tiny_cnn(0, "relu")
    x = torch.randn(16, 1, 8, 8)
    cpu = lipschitz.bracket(model, x, **FAST)
    gpu = lipschitz.bracket(model.cuda(), x.cuda(), **FAST)
    assert gpu.upper == pytest.approx(cpu.upper, rel=1e-3)
    assert gpu.lower <= gpu.upper


# ----------------------------------------------------------------------------- errors


class Custom(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 3)

    def forward(self, x):
        return self.lin(x) + x


def test_unsupported_module_is_named():
    model = nn.Sequential(nn.Linear(3, 3), nn.Softmax(dim=1))
    with pytest.raises(lipschitz.UnsupportedModuleError, match=r"1 \(Softmax\)"):
        lipschitz.bracket(model, torch.randn(4, 3))
    with pytest.raises(lipschitz.UnsupportedModuleError, match="GELU"):
        lipschitz.layer_norms(nn.Sequential(nn.GELU()), (3,))


def test_custom_container_is_an_error_not_a_wrong_bound():
    with pytest.raises(lipschitz.UnsupportedModuleError, match="Custom"):
        lipschitz.bracket(nn.Sequential(Custom()), torch.randn(4, 3))


def test_batchnorm_without_running_stats_is_an_error():
    model = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3, track_running_stats=False))
    with pytest.raises(lipschitz.UnsupportedModuleError, match="track_running_stats"):
        lipschitz.layer_norms(model, (3,))


@pytest.mark.parametrize("kwargs,match", [
    (dict(batch_size=0), "batch_size"),
    (dict(pairs=0), "pairs"),
    (dict(ascent_steps=-1), "ascent_steps"),
    (dict(ascent_starts=0), "ascent_starts"),
    (dict(batch_size=True), "batch_size"),  # a bool is not a count
    (dict(ascent_steps=True), "ascent_steps"),
    (dict(ascent_starts=2.0), "ascent_starts"),
    (dict(directions=0), "directions must be an int >= 1"),
    (dict(lanczos_iters=0), "lanczos_iters must be an int >= 1"),
    (dict(jacobian_iters=-5), "jacobian_iters must be an int >= 1"),
    (dict(domain=0.5), r"domain must be \(low, high\)"),
    (dict(domain=(1.0, 0.0)), r"domain must be \(low, high\)"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        lipschitz.bracket(tiny_mlp(0, "relu"), torch.randn(4, 5), **kwargs)


@pytest.mark.parametrize("scale", [1e-170, 1e-3, 1e170])
def test_layer_norms_are_exact_at_extreme_scales(scale):
    """The Gram matrix of W would underflow to 0 (overflow to inf) beyond ~1e±154."""
    from clipkit.analysis.lipschitz.upper import matrix_norm

    W = torch.randn(7, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    exact = float(torch.linalg.matrix_norm(W, 2))
    assert matrix_norm(W * scale) == pytest.approx(exact * scale, rel=1e-12)
    model = nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 3)).double()
    with torch.no_grad():
        model[0].weight.mul_(scale)
        model[2].weight.div_(scale)  # the same function class: ReLU is homogeneous
    x = torch.randn(64, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    br = lipschitz.bracket(model, x, sdp=False, steps=5, ascent_steps=5, preactivation=False)
    assert 0 < br.lower <= br.upper * (1 + 1e-9) and math.isfinite(br.upper)


@pytest.mark.filterwarnings("ignore:`torch.nn.utils.weight_norm` is deprecated:FutureWarning")
@pytest.mark.parametrize("wrap", ["spectral_norm", "weight_norm"])
def test_hook_based_weight_normalisation_is_bounded_with_its_current_weight(wrap):
    """torch.nn.utils.spectral_norm / weight_norm set .weight in a forward pre-hook: after an
    optimiser step without a forward it is stale, and bounding it certified the old weights."""
    import torch.nn.utils as U

    torch.manual_seed(0)
    model = nn.Sequential(getattr(U, wrap)(nn.Linear(4, 8)), nn.Tanh(), nn.Linear(8, 2)).double()
    x = torch.randn(32, 4, dtype=torch.float64)
    model(x)  # the hook sets .weight
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(5.0)  # an optimiser step, no forward since
    model.eval()
    bounds = (lipschitz.lipsdp_upper_bound(model, (4,)).value,  # before any forward
              lipschitz.merged_upper_bound(model, (4,)).value,
              lipschitz.lipschitz_upper(model, (4,))[0].value)
    J = torch.func.vmap(torch.func.jacrev(lambda v: model(v[None])[0]))(x).detach()
    attained = float(torch.linalg.matrix_norm(J, 2).max())
    for bound in bounds:
        assert bound >= attained * (1 - 1e-9)


def test_a_softplus_that_jumps_has_no_bound():
    """torch's Softplus is the identity beyond threshold/beta: with threshold 1 it jumps by
    0.31 there, and a bound of 1 was certified for a function with no Lipschitz constant."""
    model = nn.Sequential(nn.Linear(2, 3), nn.Softplus(threshold=1.0), nn.Linear(3, 1))
    with pytest.raises(lipschitz.UnsupportedModuleError, match=r"jump of 0.313"):
        lipschitz.bracket(model, torch.randn(4, 2))
    with pytest.raises(lipschitz.UnsupportedModuleError, match="Softplus"):
        lipschitz.lipsdp_upper_bound(model, (2,))
    ok = nn.Sequential(nn.Linear(2, 3), nn.Softplus(), nn.Linear(3, 1))  # jump 2.1e-9
    assert lipschitz.bracket(ok, torch.randn(4, 2), sdp=False, steps=3).upper > 0


def test_a_model_with_nan_weights_is_named_not_bounded():
    model = tiny_mlp(0, "relu")
    with torch.no_grad():
        model[0].weight[0, 0] = math.nan
    with pytest.raises(ValueError, match=r"parameters are not finite \(0.weight hold NaN"):
        lipschitz.bracket(model, torch.randn(4, 5))


def test_bad_samples_and_intervals():
    with pytest.raises(ValueError, match="batch dimension"):
        lipschitz.bracket(tiny_mlp(0, "relu"), torch.randn(5))
    with pytest.raises(ValueError, match=r"x: the model does not take these inputs .* "
                                         r"samples of shape \(7,\)"):
        lipschitz.bracket(tiny_mlp(0, "relu"), torch.randn(4, 7))
    model = tiny_mlp(0, "relu")  # float32: float64 samples are taken in its dtype
    x = torch.randn(6, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    kw = dict(sdp=False, steps=3, ascent_steps=2, preactivation=False)
    values = [[e.value for e in lipschitz.bracket(model, v, **kw).estimates]
              for v in (x, x.float())]
    assert values[0] == values[1]
    net = one_hidden_relu(0)
    for bad in [None, (1.0, 1.0), (0.0, math.inf), (2.0, 1.0)]:
        with pytest.raises(ValueError, match="interval"):
            lipschitz.exact(net, bad)
    with pytest.raises(ValueError, match="1-D input"):
        lipschitz.exact(tiny_mlp(0, "relu"), (0.0, 1.0))


def test_auto_switches_to_power_iteration_for_large_jacobians():
    model = tiny_mlp(6, "sigmoid").double()
    x = torch.randn(10, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    dense = lipschitz.jacobian_norms(model, x, method="dense")
    power = lipschitz.jacobian_norms(model, x, max_dense=1, iters=200,
                                     generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(power, dense, rtol=1e-7, atol=0)
    assert (power <= dense * (1 + 1e-12)).all()  # power iteration approaches from below


def test_a_quotient_made_of_rounding_is_not_reported_as_a_lower_bound():
    """f = w·x + 1e8 with ||w|| = 5e-9: float64 differences of f are multiples of its ulp
    (1.5e-8), mostly rounding; the reported quotient must stay <= ||w||."""
    from clipkit.analysis.lipschitz.lower import _verify64

    model = nn.Linear(2, 1).double()
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[3e-9, -4e-9]], dtype=torch.float64))
        model.bias.fill_(1e8)
    g = torch.Generator().manual_seed(0)
    u = torch.randn(256, 2, dtype=torch.float64, generator=g)
    v = u + torch.randn(256, 2, dtype=torch.float64, generator=g)
    with torch.no_grad():
        raw = (model(u) - model(v)).abs()[:, 0] / (u - v).norm(dim=1)
    assert float(raw.max()) > 5e-9 * 1.5  # the rounding the check is about does occur
    assert float(_verify64(model, u, v, 64).max()) <= 5e-9 * (1 + 1e-9)
