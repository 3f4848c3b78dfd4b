"""clipkit.train.schedules: λ per epoch for each schedule, and their argument checks."""

import pytest
import torch

import clipkit as ck

BASE = torch.tensor([0.1, 0.5], dtype=torch.float64)


def run(schedule, accs):
    """λ per epoch for a sequence of training accuracies (the previous epoch's is passed)."""
    lam, out, prev_acc = None, [], None
    for epoch, acc in enumerate(accs):
        lam = schedule(epoch, BASE, lam, prev_acc)
        out.append(lam.tolist())
        prev_acc = torch.full_like(BASE, acc)
    return out


def test_constant_gives_the_base_lambda_and_a_copy_of_it():
    lam = ck.Constant()(0, BASE, None, None)
    assert lam.tolist() == BASE.tolist() and lam is not BASE


def test_warmup_is_zero_for_its_epochs_then_the_base():
    assert run(ck.Warmup(2), [0.5] * 4) == [[0.0, 0.0]] * 2 + [BASE.tolist()] * 2
    assert run(ck.Warmup(0), [0.5]) == [BASE.tolist()]


def test_discrepancy_raises_above_the_goal_lowers_below_and_never_goes_negative():
    rule = ck.Discrepancy(goal_acc=0.9, delta=0.1, every=1, warmup=1)
    lams = run(rule, [0.5, 0.95, 0.95, 0.5, 0.5, 0.5])
    assert lams[0] == [0.0, 0.0]  # warm-up
    assert lams[1] == pytest.approx([0.1, 0.5])  # the base λ at the end of the warm-up
    assert lams[2] == pytest.approx([0.2, 0.6])  # epoch 1's accuracy 0.95 > 0.9
    assert lams[3] == pytest.approx([0.3, 0.7])
    assert lams[4] == pytest.approx([0.2, 0.6])  # 0.5 < 0.9
    assert lams[5] == pytest.approx([0.1, 0.5])


def test_discrepancy_clamps_at_zero_and_acts_every_k_epochs():
    rule = ck.Discrepancy(goal_acc=0.9, delta=0.3, every=2)
    lams = run(rule, [0.1] * 5)
    expected = [[0.1, 0.5], [0.1, 0.5], [0.0, 0.2], [0.0, 0.2], [0.0, 0.0]]
    assert all(a == pytest.approx(b) for a, b in zip(lams, expected, strict=True))


def test_only_the_discrepancy_rule_needs_the_accuracy():
    assert ck.Discrepancy().needs_accuracy and not ck.Warmup().needs_accuracy
    assert not ck.Constant().needs_accuracy


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: ck.Warmup(-1), "epochs must be an int >= 0"),
        (lambda: ck.Discrepancy(goal_acc=1.5), r"goal_acc must be in \(0, 1\]"),
        (lambda: ck.Discrepancy(delta=-0.1), "delta must be a finite number >= 0"),
        (lambda: ck.Discrepancy(every=0), "every must be an int >= 1"),
    ],
)
def test_bad_schedule_settings_are_named(make, match):
    with pytest.raises(ValueError, match=match):
        make()
