"""clipkit.core.pairs: quotients and the pair ascent (CLIP's and the bracket's), on oracles."""

import pytest
import torch

import clipkit as ck
from clipkit.core.pairs import AscentRule, PairState, accept, ascend, quotients


def _linear_forward(w):
    return lambda x: x @ w.T  # (K, P, d) -> (K, P, m)


def test_clip_estimate_on_a_linear_map_never_exceeds_and_reaches_its_norm():
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(6, 10, generator=gen, dtype=torch.float64)
    norm = torch.linalg.matrix_norm(w, ord=2).item()
    forward = _linear_forward(w)
    u = torch.randn(1, 32, 10, generator=gen, dtype=torch.float64)
    v = torch.randn(1, 32, 10, generator=gen, dtype=torch.float64)
    pairs = PairState(u, v, torch.ones(1, 32, dtype=torch.float64))
    start = quotients(forward, u, v).max().item()
    best = []
    for _ in range(60):
        pairs = ascend(forward, pairs, steps=5)
        best.append(pairs.q.max().item())
        assert best[-1] <= norm * (1 + 1e-9)  # a difference quotient is a lower bound
    assert best == sorted(best)  # accepted steps only raise the quotients
    assert best[-1] >= 0.99 * norm
    assert start < 0.9 * norm  # the ascent did the work, not the start


def counting_passes(monkeypatch):
    """A linear forward that counts its calls, and torch.autograd.grad counting backwards."""
    calls = {"forward": 0, "backward": 0}
    w = torch.randn(3, 4, dtype=torch.float64)

    def forward(x):
        calls["forward"] += 1
        return x @ w.T

    grad = torch.autograd.grad

    def counting_grad(*args, **kwargs):
        calls["backward"] += 1
        return grad(*args, **kwargs)

    monkeypatch.setattr(torch.autograd, "grad", counting_grad)
    return forward, calls


@pytest.mark.parametrize("steps", [0, 1, 7])
def test_an_ascent_step_costs_one_forward_and_all_but_the_last_a_backward(steps, monkeypatch):
    forward, calls = counting_passes(monkeypatch)
    pairs = PairState(torch.randn(1, 8, 4), torch.randn(1, 8, 4), torch.ones(1, 8))
    pairs = PairState(pairs.u.double(), pairs.v.double(), pairs.tau.double())
    out = ascend(forward, pairs, steps=steps)
    # one evaluation at the start (θ changed), one forward per step; the last step's
    # gradient would be stale at the next θ, so it is not computed
    assert calls == {"forward": steps + 1, "backward": steps}
    assert out.g is None


def test_step_sizes_grow_on_accepted_and_shrink_on_rejected_steps():
    w = torch.diag(torch.tensor([3.0, 1.0], dtype=torch.float64))
    u = torch.tensor([[[1.0, 1.0], [0.0, 0.0]]], dtype=torch.float64)
    v = torch.tensor([[[0.0, 0.0], [0.0, 1.0]]], dtype=torch.float64)
    # pair 1 differs along e2 only: the quotient is 1 and its gradient is 0 (a saddle),
    # so the step does not raise it and is rejected
    pairs = ascend(_linear_forward(w), PairState(u, v, torch.full((1, 2), 0.5).double()), 1)
    assert pairs.tau[0, 0].item() == pytest.approx(0.5 * 1.3)
    assert pairs.tau[0, 1].item() == pytest.approx(0.5 / 1.3)
    assert torch.equal(pairs.u[0, 1], u[0, 1]) and torch.equal(pairs.v[0, 1], v[0, 1])


def test_quotients_work_on_images_and_projection_keeps_the_data_range():
    model = ck.models.cnn()

    def forward(x):
        return model(x.flatten(0, 1)).view(x.shape[0], x.shape[1], -1)

    gen = torch.Generator().manual_seed(1)
    u = torch.rand(1, 5, 1, 28, 28, generator=gen)
    v = (u + 0.1 * torch.randn(u.shape, generator=gen)).clamp(0, 1)
    q = quotients(forward, u, v)
    assert q.shape == (1, 5) and bool((q > 0).all())
    out = ascend(forward, PairState(u, v, torch.full((1, 5), 10.0)), 3,
                 AscentRule(clamp=(0.0, 1.0)))
    assert float(out.u.min()) >= 0 and float(out.v.max()) <= 1
    assert bool((out.q >= q - 1e-6).all())


def test_a_quotient_is_a_lower_bound_and_is_exact_for_a_linear_map_along_its_top_direction():
    w = torch.tensor([[3.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    u = torch.tensor([[[1.0, 0.0], [0.0, 2.0]]], dtype=torch.float64)
    v = torch.zeros_like(u)
    assert quotients(_linear_forward(w), u, v)[0].tolist() == pytest.approx([3.0, 1.0])


def test_the_normalized_rule_moves_a_pair_by_tau_times_its_distance():
    forward = _linear_forward(torch.diag(torch.tensor([3.0, 1.0], dtype=torch.float64)))
    u = torch.tensor([[[1.0, 1.0]]], dtype=torch.float64)
    v = torch.zeros_like(u)
    out = ascend(forward, PairState(u, v, torch.full((1, 1), 0.1, dtype=torch.float64)), 1,
                 AscentRule(step="normalized"))
    moved = ((out.u - u).pow(2).sum() + (out.v - v).pow(2).sum()).sqrt()
    assert float(moved) == pytest.approx(0.1 * 2**0.5)  # τ·‖u − v‖
    assert float(out.q) > float(quotients(forward, u, v))


def test_a_proposal_closer_than_min_distance_is_rejected():
    forward = _linear_forward(torch.diag(torch.tensor([3.0, 1.0], dtype=torch.float64)))
    u = torch.tensor([[[1.0, 1.0]]], dtype=torch.float64)
    v = torch.zeros_like(u)
    tau = torch.full((1, 1), 0.5, dtype=torch.float64)
    far = ascend(forward, PairState(u, v, tau), 1, AscentRule(min_distance=10.0))
    near = ascend(forward, PairState(u, v, tau), 1, AscentRule())
    assert torch.equal(far.u, u) and far.tau.item() == pytest.approx(0.5 / 1.3)
    assert not torch.equal(near.u, u)


def test_a_proposal_with_an_infinite_or_nan_quotient_is_rejected():
    """accept keeps a proposal only where q rose to a finite value: +inf and NaN are refused
    as a fall is, and the pair and its step size go back."""
    u = torch.zeros(1, 4, 2, dtype=torch.float64)
    v = torch.ones(1, 4, 2, dtype=torch.float64)
    tau = torch.ones(1, 4, dtype=torch.float64)
    q = torch.ones(1, 4, dtype=torch.float64)
    pairs = PairState(u, v, tau, q)
    w_new = torch.full((1, 8, 2), 5.0, dtype=torch.float64)
    q_new = torch.tensor([[float("inf"), float("nan"), 2.0, 0.5]], dtype=torch.float64)
    out = accept(pairs, w_new, q_new, torch.ones(1, 4, dtype=torch.float64), None, AscentRule())
    took = torch.tensor([False, False, True, False])
    assert torch.equal(out.u[0, :, 0] == 5.0, took) and torch.equal(out.v[0, :, 0] == 5.0, took)
    assert out.q[0].tolist() == [1.0, 1.0, 2.0, 1.0]
    assert out.tau[0].tolist() == pytest.approx([1 / 1.3, 1 / 1.3, 1.3, 1 / 1.3])


@pytest.mark.parametrize("rtol, accepted", [(0.0, True), (1e-2, False)])
def test_rtol_decides_whether_a_small_rise_counts(rtol, accepted):
    # a tiny step on a ReLU kink-free linear map raises q by a relative ~1e-4
    forward = _linear_forward(torch.diag(torch.tensor([3.0, 1.0], dtype=torch.float64)))
    u = torch.tensor([[[1.0, 1.0]]], dtype=torch.float64)
    v = torch.zeros_like(u)
    tau = torch.full((1, 1), 1e-4, dtype=torch.float64)
    out = ascend(forward, PairState(u, v, tau), 1, AscentRule(rtol=rtol))
    assert (not torch.equal(out.u, u)) is accepted


def test_a_bad_rule_is_named():
    with pytest.raises(ValueError, match="step must be 'gradient' or 'normalized'"):
        AscentRule(step="newton")
    with pytest.raises(ValueError, match="factor must be > 1"):
        AscentRule(factor=1.0)


@pytest.mark.parametrize("power", [1, 2])
def test_the_closed_form_gradient_equals_autograd_through_the_quotient(power):
    # value_and_grad differentiates the numerator only and adds the distance's part in
    # closed form; the oracle differentiates q^p through both norms. Pair 2 has met (u = v):
    # its distance is the floor, a constant, so only the numerator's part remains.
    from clipkit.core.pairs import value_and_grad

    model = ck.models.mlp([5, 7, 3], activation="sigmoid", seed=0).double()
    forward = lambda x: model(x.flatten(0, 1)).view(x.shape[0], x.shape[1], -1)  # noqa: E731
    gen = torch.Generator().manual_seed(0)
    u = torch.randn(2, 3, 5, generator=gen, dtype=torch.float64)
    v = u + 0.3 * torch.randn(2, 3, 5, generator=gen, dtype=torch.float64)
    v[1, 2] = u[1, 2]
    q, gu, gv = value_and_grad(forward, u, v, power)
    uu, vv = u.clone().requires_grad_(True), v.clone().requires_grad_(True)
    ref = quotients(forward, uu, vv)
    ref_gu, ref_gv = torch.autograd.grad((ref**power).sum(), (uu, vv))
    assert torch.equal(q, ref.detach())
    assert torch.allclose(gu, ref_gu, rtol=1e-12, atol=1e-14)
    assert torch.allclose(gv, ref_gv, rtol=1e-12, atol=1e-14)
    assert q[1, 2] == 0 and not torch.equal(gu[0], torch.zeros_like(gu[0]))

