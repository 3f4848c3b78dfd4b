"""clipkit.core.pgd and the authors' PGD on linear models, where every step is hand-checkable."""

import pytest
import torch
import torch.nn.functional as F

from clipkit.analysis.attacks import PGD, AuthorsPGD
from clipkit.core.pgd import pgd, project_ball, uniform_ball


def linear_grad(w):
    """The gradient of the loss w·x: w for every sample, no mask."""
    return lambda x: (w.expand_as(x).clone(), None)


def test_ball_projection_in_l2_and_linf():
    d = torch.tensor([[3.0, 4.0], [0.3, 0.4]])
    torch.testing.assert_close(project_ball(d, 1.0, "l2"), torch.tensor([[0.6, 0.8], [0.3, 0.4]]))
    torch.testing.assert_close(project_ball(d, 0.5, "linf"),
                               torch.tensor([[0.5, 0.5], [0.3, 0.4]]))


def test_uniform_ball_points_lie_in_the_ball_with_radius_u_to_the_one_over_n():
    g = torch.Generator().manual_seed(0)
    d = torch.randn(2000, 3, generator=g)
    u = torch.rand(2000, generator=g)
    pts = uniform_ball(d, u, 2.0)
    r = pts.norm(dim=1)
    assert float(r.max()) <= 2.0 + 1e-6
    torch.testing.assert_close(r, 2.0 * u ** (1 / 3))


@pytest.mark.parametrize("norm, expected", [("l2", [0.6, 0.8]), ("linf", [1.0, 1.0])])
def test_pgd_on_a_linear_loss_ends_on_the_boundary_in_the_steepest_direction(norm, expected):
    w = torch.tensor([3.0, 4.0])
    x0 = torch.zeros(1, 2)
    out = pgd(linear_grad(w), x0, torch.zeros(1, 2), eps=1.0, steps=20, step_size=0.3,
              norm=norm, clamp=None)
    assert out[0].tolist() == pytest.approx(expected)


def test_pgd_on_the_model_axis_keeps_each_sample_in_its_own_ball():
    w = torch.tensor([3.0, 4.0])
    x0 = torch.rand(2, 5, 2)
    out = pgd(linear_grad(w), x0, torch.zeros_like(x0), eps=0.1, steps=5, step_size=0.05,
              norm="l2", clamp=None, batch_dims=2)
    torch.testing.assert_close((out - x0).norm(dim=2), torch.full((2, 5), 0.1))


def test_the_sphere_projection_clamps_then_rescales_and_frozen_samples_stay():
    w = torch.tensor([-1.0, 0.0])
    x0 = torch.full((2, 2), 0.5)
    delta0 = torch.tensor([[0.0, 0.1], [0.0, 0.1]])

    def grad(x):
        return w.expand_as(x).clone(), torch.tensor([True, False])

    out = pgd(grad, x0, delta0, eps=0.1, steps=1, step_size=0.5, norm="l2", step="sign",
              project="sphere")
    # sample 0: δ + 0.5·sign(w) = (−0.5, 0.1) is clamped to x0 + δ ∈ [0, 1] → (−0.5, 0.1),
    # rescaled onto ‖δ‖ = 0.1; sample 1 was not moved
    moved = torch.tensor([-0.5, 0.1]) / torch.tensor([-0.5, 0.1]).norm() * 0.1
    torch.testing.assert_close(out[0], x0[0] + moved)
    torch.testing.assert_close(out[1], x0[1] + delta0[1])


def bad_args():
    with pytest.raises(ValueError, match="norm must be"):
        pgd(linear_grad(torch.ones(2)), torch.zeros(1, 2), torch.zeros(1, 2), eps=1,
            steps=1, step_size=1, norm="l3")


def test_bad_pgd_arguments_are_named():
    bad_args()
    with pytest.raises(ValueError, match="sphere' needs norm='l2'"):
        pgd(linear_grad(torch.ones(2)), torch.zeros(1, 2), torch.zeros(1, 2), eps=1, steps=1,
            step_size=1, norm="linf", project="sphere")


class Linear2(torch.nn.Module):
    """Two logits: f(x) = (x_1, 0); class 0 wins while x_1 > 0."""

    def forward(self, x):
        return torch.stack([x[:, 0], torch.zeros_like(x[:, 0])], dim=1)


def authors_start(x, eps, seed):
    """The authors' start, as documented: uniform in the cube, clamped, onto the sphere."""
    g = torch.Generator().manual_seed(seed)
    d = eps * (torch.rand(x.shape, generator=g) * 2 - 1)
    d = (x + d).clamp(0, 1) - x
    return d * (eps / d.norm(dim=1, keepdim=True))


def test_the_authors_pgd_takes_sign_steps_and_lands_on_the_sphere():
    model, x, y = Linear2(), torch.tensor([[0.5, 0.5]]), torch.tensor([0])
    d0 = authors_start(x, 0.1, seed=3)
    # one step: ∇ of the cross-entropy of class 0 is −(1 − p0)·(1, 0): sign (−1, 0); the
    # step is clamped so that x + δ stays in [0, 1], then rescaled onto ‖δ‖ = 0.1
    one = AuthorsPGD(eps=0.1, steps=1, step_size=0.5, seed=3)(model, x, y)
    d1 = (x + d0 + 0.5 * torch.tensor([-1.0, 0.0])).clamp(0, 1) - x
    torch.testing.assert_close(one, x + d1 / d1.norm() * 0.1)
    # many steps: δ turns to −ε·e1, still classified right (x_1 = 0.4 > 0)
    many = AuthorsPGD(eps=0.1, steps=100, seed=3)(model, x, y)
    torch.testing.assert_close(many, torch.tensor([[0.4, 0.5]]), atol=1e-3, rtol=0)


def test_the_authors_pgd_leaves_misclassified_points_where_the_start_put_them():
    model, x, y = Linear2(), torch.tensor([[0.5, 0.5]]), torch.tensor([1])  # wrong from start
    out = AuthorsPGD(eps=0.1, steps=10, seed=3)(model, x, y)
    torch.testing.assert_close(out, (x + authors_start(x, 0.1, seed=3)).clamp(0, 1))


def test_the_authors_attack_is_weaker_than_pgd_on_the_same_points():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(20, 30), torch.nn.Tanh(), torch.nn.Linear(30, 3))
    x = torch.rand(200, 20)
    y = model(x).argmax(1)

    def acc(attack):
        with torch.no_grad():
            return float((model(attack(model, x, y)).argmax(1) == y).float().mean())

    ours = acc(PGD(eps=1.0, norm="l2", steps=20, seed=0))
    theirs = acc(AuthorsPGD(eps=1.0, steps=20, seed=0))
    loss = F.cross_entropy(model(x), y)
    assert torch.isfinite(loss) and ours <= theirs
