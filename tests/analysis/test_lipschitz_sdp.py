"""The LipSDP-neuron certificates of ck.lipschitz against exact constants: spectral norms
of linear maps, breakpoints of 1-D ReLU nets, enumerated regions of 2-D ReLU nets, dense
Jacobians of smooth nets, slope patterns, and the solver / verification failure paths."""

import itertools
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from clipkit import lipschitz
from clipkit import lipschitz as ls
from clipkit.analysis.lipschitz import lbfgs, lmi

sys.path.insert(0, str(Path(__file__).parent))
from nets import ACTS, assert_slopes_contain_derivatives, jac_norms, mlp  # noqa: E402

FAST = dict(pairs=32, steps=20, restarts=1, directions=2)


def sdp(model, d_in, **kw):
    return ls.lipsdp_upper_bound(model, (d_in,), **kw).value


# ----------------------------------------------------------------------------- linear maps


@pytest.mark.parametrize("shape", [(7, 5), (3, 12)])
def test_linear_map_bound_is_its_spectral_norm(shape):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(shape[1], 6), nn.Flatten(), nn.Linear(6, shape[0]))
    W = net[2].weight.detach().double() @ net[0].weight.detach().double()
    true = float(torch.linalg.matrix_norm(W, ord=2))
    v = sdp(net, shape[1])
    assert true <= v <= true * (1 + 1e-8)


@pytest.mark.parametrize("solver", ["lbfgs", "SCS"])
def test_sdp_on_locally_linear_relu_net_gives_the_linear_norm(solver):
    """All hidden ReLUs active on the ball: the local slopes are [1, 1] and the SDP (no
    shortcut: the layer stays an activation) must find ||W2 W1||, from above."""
    torch.manual_seed(1)
    net = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3))
    with torch.no_grad():
        net[0].bias.fill_(50.0)  # every neuron stays active near x = 0
    chain = ls.mlp_chain(net, (4,))
    slopes = ls.local_slopes(chain, torch.zeros(4), 1.0)
    assert all(bool((a == 1).all() and (b == 1).all()) for a, b in slopes)
    cert, status, _ = ls.solve(chain, slopes=slopes, solver=solver)
    W = net[2].weight.detach().double() @ net[0].weight.detach().double()
    true = float(torch.linalg.matrix_norm(W, ord=2))
    assert status in ("converged", "optimal")  # L-BFGS / SCS
    assert true <= cert.value <= true * 1.01  # point intervals are widened by 1e-3 relative


# ----------------------------------------------------------------------------- ReLU oracles


@pytest.mark.parametrize("seed", range(4))
def test_relu_1d_input_bound_is_above_the_exact_constant(seed):
    net = mlp([1, 8, 6, 2], "relu", seed)
    exact = lipschitz.exact(net, (-20.0, 20.0)).value  # all breakpoints lie inside
    v = sdp(net, 1)
    assert v >= exact * (1 - 1e-12)
    assert v <= lipschitz.merged_upper_bound(net, (1,)).value


def _regions_2d(W1, b1):
    """A point in every cell of the arrangement of the lines W1[i] . x + b1[i] = 0 (general
    position: every cell has a vertex on its boundary, and the four cells around a vertex
    are reached by small offsets along the two lines' normals)."""
    pts = []
    n = len(b1)
    for i, j in itertools.combinations(range(n), 2):
        A = np.stack([W1[i], W1[j]])
        v = np.linalg.solve(A, -np.array([b1[i], b1[j]]))
        for si, sj in itertools.product((-1, 1), repeat=2):
            d = np.linalg.solve(A, np.array([si, sj], dtype=float))  # A d = (si, sj)
            pts.append(v + 1e-7 * d / np.linalg.norm(d))
    return np.array(pts)


@pytest.mark.parametrize("seed", range(4))
def test_relu_2d_input_between_realisable_regions_and_all_patterns(seed):
    """exact Lip = max over realisable regions <= max over all 2^n patterns <= SDP bound."""
    net = mlp([2, 7, 2], "relu", seed)
    W1 = net[0].weight.detach().double().numpy()
    b1 = net[0].bias.detach().double().numpy()
    W2 = net[2].weight.detach().double().numpy()
    pts = _regions_2d(W1, b1)
    pats = (pts @ W1.T + b1 > 0).astype(float)
    exact = max(np.linalg.norm(W2 @ (p[:, None] * W1), 2) for p in pats)
    every = max(np.linalg.norm(W2 @ (np.array(p)[:, None] * W1), 2)
                for p in itertools.product((0.0, 1.0), repeat=7))
    v = sdp(net, 2)
    assert exact <= every * (1 + 1e-12)
    assert v >= every * (1 - 1e-9)  # any slope certificate covers every pattern
    assert v <= lipschitz.merged_upper_bound(net, (2,)).value
    # the sampled regions are the real ones: no denser sample finds a larger slope
    x = torch.randn(4000, 2, generator=torch.Generator().manual_seed(seed)) * 5
    assert float(jac_norms(net, x).max()) <= exact * (1 + 1e-9)


# ----------------------------------------------------------------------------- smooth oracles


@pytest.mark.parametrize("act", ["sigmoid", "tanh"])
@pytest.mark.parametrize("seed", range(3))
def test_smooth_bound_is_above_every_sampled_jacobian(act, seed):
    net = mlp([3, 10, 6, 2], act, seed)
    g = torch.Generator().manual_seed(seed)
    x = torch.cat([torch.randn(3000, 3, generator=g) * s for s in (0.5, 2.0, 10.0)])
    v = sdp(net, 3)
    assert float(jac_norms(net, x).max()) <= v
    assert v <= lipschitz.merged_upper_bound(net, (3,)).value


def test_worst_slope_pattern_is_a_lower_bound_of_every_certificate():
    """The linear network with slopes D (entries in [0, 1/4]) satisfies every sigmoid
    constraint, so any certificate is >= ||W2 D W1|| for all D: check the vertices."""
    net = mlp([3, 6, 2], "sigmoid", 5)
    W1, W2 = net[0].weight.detach().double(), net[2].weight.detach().double()
    every = max(float(torch.linalg.matrix_norm(W2 @ (torch.tensor(p)[:, None] * W1), ord=2))
                for p in itertools.product((0.0, 0.25), repeat=6))
    for method in ("lipsdp-neuron", "eclipse-fast"):
        assert sdp(net, 3, method=method) >= every * (1 - 1e-9)


# ----------------------------------------------------------------------------- properties


@pytest.mark.parametrize("act", list(ACTS))
@pytest.mark.parametrize("sizes", [[5, 12, 3], [4, 10, 8, 6, 2]])
def test_bound_above_attained_lower_bounds_and_below_existing_upper_bounds(act, sizes):
    net = mlp(sizes, act, 7)
    x = torch.randn(64, sizes[0], generator=torch.Generator().manual_seed(7))
    br = lipschitz.bracket(net, x, seed=0, **FAST)
    est = {e.method: e for e in br.estimates}
    sdp_e = est["LipSDP-neuron certificate (MLP)"]
    fast = sdp(net, sizes[0], method="eclipse-fast")
    assert sdp_e.kind == "upper" and "verified" in sdp_e.note and "status converged" in sdp_e.note
    assert br.lower <= sdp_e.value
    assert sdp_e.value <= est["merged MLP bound (Combettes-Pesquet splitting, exact norms)"].value
    assert sdp_e.value <= fast * (1 + 1e-6)
    assert fast <= est["product of layer norms"].value
    assert br.upper == min(e.value for e in br.estimates if e.kind == "upper")


def test_lbfgs_and_scs_agree_on_a_small_net():
    net = mlp([6, 12, 8, 3], "sigmoid", 2)
    a = sdp(net, 6)
    b = sdp(net, 6, solver="SCS")
    assert abs(a - b) <= 0.02 * b


def test_convolutional_nets_are_not_mlps_and_keep_the_old_bounds():
    torch.manual_seed(0)
    cnn = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 4 * 4, 3))
    assert ls.mlp_chain(cnn, (1, 6, 6)) is None
    assert ls.sdp_estimate(cnn, (1, 6, 6)) is None
    with pytest.raises(ValueError, match="MLPs only"):
        ls.lipsdp_upper_bound(cnn, (1, 6, 6))
    br = lipschitz.bracket(cnn, torch.rand(8, 1, 6, 6), **FAST)
    assert all("LipSDP" not in e.method for e in br.estimates)


def test_chain_folds_batchnorm_identity_slopes_and_a_last_activation():
    torch.manual_seed(3)
    bn = nn.BatchNorm1d(6)
    with torch.no_grad():
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.normal_()
        bn.bias.normal_()
    net = nn.Sequential(nn.Flatten(), nn.Linear(4, 6), bn, nn.LeakyReLU(1.0), nn.Tanh(),
                        nn.Linear(6, 5), nn.Linear(5, 3), nn.Sigmoid()).eval()
    chain = ls.mlp_chain(net, (2, 2))
    assert len(chain.acts) == 2  # LeakyReLU(1) is the identity, folded into the affine maps
    x = torch.randn(10, 2, 2)
    with torch.no_grad():
        ref = net(x).double()
    out = chain.forward(x.reshape(10, -1).double())[-1]
    assert torch.allclose(out, ref, atol=1e-6)
    # the final sigmoid: Lip(net) <= bound, checked on Jacobians
    v = ls.lipsdp_upper_bound(net, (2, 2)).value
    assert float(jac_norms(net, torch.randn(500, 2, 2) * 3).max()) <= v


# ----------------------------------------------------------------------------- local


@pytest.mark.parametrize("act", ["sigmoid", "tanh", "relu"])
def test_local_slopes_contain_every_derivative_in_the_ball(act):
    net = mlp([5, 16, 12, 3], act, 11)
    chain = ls.mlp_chain(net, (5,))
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(5, generator=g, dtype=torch.float64)
    eps = 0.7
    slopes = ls.local_slopes(chain, x0, eps)
    d = torch.randn(20000, 5, generator=g, dtype=torch.float64)
    r = eps * torch.rand(20000, 1, generator=g, dtype=torch.float64) ** (1 / 5)
    xs = x0 + r * d / d.norm(dim=1, keepdim=True)
    assert_slopes_contain_derivatives(chain, slopes, xs)
    glo, ghi = chain.slopes[0]
    assert any(bool(((a > glo) | (b < ghi)).any()) for a, b in slopes)  # they do narrow


@pytest.mark.parametrize("act", ["sigmoid", "tanh"])
def test_local_bound_above_sampled_jacobians_in_the_ball_and_below_global(act):
    net = mlp([4, 12, 8, 3], act, 4)
    chain = ls.mlp_chain(net, (4,))
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(4, generator=g, dtype=torch.float64) * 2
    eps = 0.5
    local = ls.local_upper_bound(net, x0.float(), eps)
    assert local.kind == "upper" and "local" in local.method
    glob, _, _ = ls.solve(chain)
    d = torch.randn(5000, 4, generator=g, dtype=torch.float64)
    xs = x0 + eps * torch.rand(5000, 1, generator=g, dtype=torch.float64) * d / d.norm(
        dim=1, keepdim=True)
    assert float(jac_norms(net, xs).max()) <= local.value
    assert local.value <= glob.value * (1 + 1e-3)


def test_slope_range_formulas():
    lo = torch.tensor([-3.0, -1.0, 0.5, -2.0], dtype=torch.float64)
    hi = torch.tensor([-2.0, 1.0, 2.0, 3.0], dtype=torch.float64)
    a, b = ls.slope_range(nn.ReLU(), lo, hi)
    assert a.tolist() == [0, 0, 1, 0] and b.tolist() == [0, 1, 1, 1]
    a, b = ls.slope_range(nn.LeakyReLU(0.2), lo, hi)
    assert a.tolist() == [0.2, 0.2, 1, 0.2] and b.tolist() == [0.2, 1, 1, 1]
    a, b = ls.slope_range(nn.Sigmoid(), lo, hi)
    def s(v):
        return 1 / (1 + math.exp(-v))

    ref_lo = [s(-3.0) * (1 - s(-3.0)), s(1.0) * (1 - s(1.0)), s(2.0) * (1 - s(2.0)),
              s(3.0) * (1 - s(3.0))]
    ref_hi = [s(-2.0) * (1 - s(-2.0)), 0.25, s(0.5) * (1 - s(0.5)), 0.25]
    assert torch.allclose(a, torch.tensor(ref_lo, dtype=torch.float64), rtol=1e-10)
    assert torch.allclose(b, torch.tensor(ref_hi, dtype=torch.float64), rtol=1e-10)
    assert bool((a <= torch.tensor(ref_lo, dtype=torch.float64)).all())
    # tails: s(1 - s) would round to 0 at |z| = 40, but the true slope is positive
    far_lo = torch.tensor([40.0, -41.0, 800.0], dtype=torch.float64)
    a, b = ls.slope_range(nn.Sigmoid(), far_lo, far_lo + 1)
    true = [math.exp(-40) / (1 + math.exp(-40)) ** 2, math.exp(-40) / (1 + math.exp(-40)) ** 2]
    assert b[0] >= true[0] and b[1] >= true[1] and b[2] > 0
    a, b = ls.slope_range(nn.Tanh(), far_lo, far_lo + 1)
    assert b[0] >= 4 * math.exp(-80) / (1 + math.exp(-80)) ** 2 and b[2] > 0
    a, b = ls.slope_range(nn.ELU(), lo, hi)  # no formula: the global interval
    assert a.tolist() == [0.0] * 4 and b.tolist() == [1.0] * 4


# ----------------------------------------------------------------------------- verification


def test_psd_check_proves_definite_and_rejects_indefinite_or_singular():
    g = torch.Generator().manual_seed(0)
    Q, _ = torch.linalg.qr(torch.randn(50, 50, generator=g, dtype=torch.float64))
    scale = torch.logspace(-3, 3, 50, dtype=torch.float64)
    D = torch.diag(scale)

    def mat(eigs):
        M = D @ Q @ torch.diag(eigs) @ Q.T @ D  # badly scaled, fixed by the 2^k scaling
        return (M + M.T) / 2

    pos = torch.linspace(1e-6, 1.0, 50, dtype=torch.float64)
    M = mat(pos)
    assert lmi.is_psd(M, M.abs(), 52)
    neg = pos.clone()
    neg[0] = -1e-9
    M = mat(neg)
    assert not lmi.is_psd(M, M.abs(), 52)
    sing = pos.clone()
    sing[0] = 0.0
    M = mat(sing)
    assert not lmi.is_psd(M, M.abs(), 52)  # no margin: can not be proved, is not claimed


def test_inaccurate_solver_status_is_an_error_and_a_skipped_estimate(monkeypatch):
    import cvxpy as cp

    net = mlp([4, 8, 2], "relu", 0)

    def fake_solve(self, *args, **kwargs):
        self._status = cp.OPTIMAL_INACCURATE
        return 0.0

    monkeypatch.setattr(cp.Problem, "solve", fake_solve)
    monkeypatch.setattr(cp.Problem, "status", property(lambda self: self._status))
    with pytest.raises(ls.CertificateError) as err:
        ls.lipsdp_upper_bound(net, (4,), solver="SCS")
    assert err.value.status == "optimal_inaccurate"
    est = ls.sdp_estimate(net, (4,), solver="SCS")
    assert est.kind == "skipped" and math.isnan(est.value) and "optimal_inaccurate" in est.note


def test_failed_verification_is_skipped_in_the_bracket(monkeypatch):
    net = mlp([4, 8, 2], "sigmoid", 0)
    monkeypatch.setattr(lmi, "is_psd", lambda *a, **k: False)
    with pytest.raises(ls.CertificateError, match="could not be verified"):
        ls.lipsdp_upper_bound(net, (4,))
    br = lipschitz.bracket(net, torch.randn(16, 4), **FAST)
    skipped = [e for e in br.estimates if e.kind == "skipped"]
    assert len(skipped) == 1 and "verification failed" in skipped[0].note
    assert math.isfinite(br.upper) and br.upper_by.kind == "upper"


def test_bad_multipliers_are_repaired_with_the_closed_form_point(monkeypatch):
    """The optimiser returning useless multipliers (all tiny: infeasible) must not give a
    wrong number: the verification mixes in the ECLipsE-Fast point and still certifies."""
    net = mlp([3, 8, 6, 2], "relu", 3)
    monkeypatch.setattr(lbfgs, "lbfgs_multipliers", lambda prob, lams, *a: (
        [torch.full_like(v, 1e-9) for v in lams], 0, "optimal"))
    cert, _, _ = ls.solve(ls.mlp_chain(net, (3,)))
    assert cert.mixed > 0
    exact_like = float(jac_norms(net, torch.randn(3000, 3) * 3).max())
    assert cert.value >= exact_like


def test_bad_arguments_are_named():
    net = mlp([3, 5, 2], "relu", 0)
    chain = ls.mlp_chain(net, (3,))
    with pytest.raises(ValueError, match="method"):
        ls.solve(chain, method="lipsdp-layer")
    with pytest.raises(ValueError, match="solver"):
        ls.solve(chain, solver="mosek")
    with pytest.raises(ValueError, match="slopes"):
        ls.solve(chain, slopes=[])
    with pytest.raises(ValueError, match="start"):
        ls.solve(chain, start=[torch.ones(2)])


def test_a_tiny_negative_slope_stays_inside_its_widened_interval():
    """LeakyReLU(-1e-31) on a ball where every pre-activation is negative: the point slope
    interval [-1e-31, -1e-31] was 'widened' to [0, -1e-31], excluding the true slope."""
    model = nn.Sequential(nn.Linear(1, 1), nn.LeakyReLU(-1e-31), nn.Linear(1, 1)).double().eval()
    with torch.no_grad():
        model[0].weight.fill_(1e20)
        model[0].bias.zero_()
        model[2].weight.fill_(1e20)
        model[2].bias.zero_()
    local = lipschitz.local_upper_bound(model, torch.tensor([-1.0], dtype=torch.float64), 0.5)
    a = torch.tensor([[-1.2]], dtype=torch.float64)
    b = torch.tensor([[-0.8]], dtype=torch.float64)
    with torch.no_grad():
        attained = float((model(a) - model(b)).abs() / 0.4)  # 1e9, exactly the slope there
    assert local.value >= attained * (1 - 1e-9)


def test_linear_algebra_that_fails_is_a_skipped_estimate_not_an_error():
    """Weights of 1e200: eigh does not converge inside the solver; the bracket goes on."""
    from clipkit.analysis.lipschitz.sdp import sdp_estimate

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    with torch.no_grad():
        model[0].weight.mul_(1e200)
    est = sdp_estimate(model, (3,))
    assert est.kind == "skipped" and math.isnan(est.value) and "linear algebra" in est.note
    br = lipschitz.bracket(model, torch.randn(8, 3, dtype=torch.float64), steps=3,
                           ascent_steps=3)
    assert 0 < br.lower <= br.upper < math.inf


def test_local_upper_bound_names_a_batch_given_for_one_input():
    model = nn.Sequential(nn.Linear(6, 20), nn.Tanh(), nn.Linear(20, 3)).double()
    x = torch.zeros(1, 6, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"takes one input, not a batch: x has shape \(1, 6\); "
                                         r"pass x\[0\] \(shape \(6,\)\)"):
        lipschitz.local_upper_bound(model, x, 0.1)
    assert lipschitz.local_upper_bound(model, x[0], 0.1).value > 0
    conv = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(8, 2))
    with pytest.raises(ValueError, match="handles MLPs only"):  # a CNN: still that reason
        lipschitz.local_upper_bound(conv, torch.zeros(1, 4, 4), 0.1)
