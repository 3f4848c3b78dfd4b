import pytest
import torch

import clipkit as ck
from clipkit.clip import PairState, ascend, quotients


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


def test_an_ascent_step_costs_one_forward_and_one_backward():
    calls = {"forward": 0}
    w = torch.randn(3, 4, dtype=torch.float64)

    def forward(x):
        calls["forward"] += 1
        return x @ w.T

    pairs = PairState(torch.randn(1, 8, 4), torch.randn(1, 8, 4), torch.ones(1, 8))
    pairs = PairState(pairs.u.double(), pairs.v.double(), pairs.tau.double())
    ascend(forward, pairs, steps=7)
    assert calls["forward"] == 7 + 1  # one evaluation at the start (θ changed), one per step


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
    out = ascend(forward, PairState(u, v, torch.full((1, 5), 10.0)), 3, data_range=(0.0, 1.0))
    assert float(out.u.min()) >= 0 and float(out.v.max()) <= 1
    assert bool((out.q >= q - 1e-6).all())


def test_authors_preset_matches_the_design():
    c = ck.CLIP.authors()
    assert (c.pairs, c.ascent_steps, c.step_size, c.reduction, c.power, c.refresh) == (
        500, 1, 10.0, "max", 2, 2000)
    assert c.noise_dist == "uniform" and c.noise == 0.1 and c.data_range == (0.0, 1.0)
    assert isinstance(c.schedule, ck.Warmup) and c.schedule.epochs == 5 and c.lam == 0.1


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(lam=-1.0), "lam must be a finite number >= 0, got -1"),
        (dict(lam=float("nan")), "lam must be a finite number"),
        (dict(power=3), "power must be 1 or 2"),
        (dict(reduction="sum"), "reduction must be one of"),
        (dict(init="grid"), "init must be one of"),
        (dict(pairs=0), "pairs must be an int >= 1"),
        (dict(noise=0.0), "noise must be > 0"),
        (dict(data_range=(1.0, 0.0)), "data_range"),
    ],
)
def test_bad_clip_settings_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ck.CLIP(**kwargs)


def test_lam_of_the_wrong_type_is_a_type_error():
    with pytest.raises(TypeError, match="lam must be a finite number >= 0, got '0.1'"):
        ck.CLIP(lam="0.1")
