"""clipkit.train.registry: methods and schedules by name, with errors that list what is accepted."""

import pytest

import clipkit as ck
from clipkit.train.registry import METHODS, has_lambda


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_name_builds_its_method_with_its_default_lambda(name):
    method = ck.make_method(name)
    assert type(method) is METHODS[name]
    assert method.lam == METHODS[name]().lam
    # the methods without a penalty weight, listed: a new method with one needs no edit here
    assert has_lambda(name) == (name not in ("standard", "spectral_norm", "adversarial"))


def test_lambda_schedule_and_options_reach_the_method():
    m = ck.make_method("clip", 0.3, schedule=ck.make_schedule("warmup", warmup=2), pairs=7)
    assert (m.lam, m.pairs, m.schedule) == (0.3, 7, ck.Warmup(2))
    assert ck.make_method("adversarial", eps=0.2).eps == 0.2


def test_the_authors_preset_applies_to_clip_only():
    assert ck.make_method("clip", clip_preset="authors", pairs=10) == ck.CLIP.authors(pairs=10)
    assert ck.make_method("weight_decay", clip_preset="authors") == ck.WeightDecay()


def test_schedules_by_name():
    assert ck.make_schedule() == ck.Constant()
    rule = ck.make_schedule("discrepancy", warmup=6, goal_acc=0.97, delta=0.02, every=2)
    assert rule == ck.Discrepancy(goal_acc=0.97, delta=0.02, every=2, warmup=6)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: ck.make_method("clipp"), "unknown method 'clipp' \\(did you mean 'clip'\\?\\); "
                                            "accepted: 'standard'"),
        (lambda: ck.make_method("clip", pairz=3), "no option.*'pairz'.*accepted:.*pairs"),
        (lambda: ck.make_method("standard", 0.1), "'standard' has no λ"),
        (lambda: ck.make_method("clip", clip_preset="paper"), "unknown clip_preset 'paper'"),
        (lambda: ck.make_schedule("cosine"), "unknown schedule 'cosine'; accepted"),
    ],
)
def test_bad_names_list_what_is_accepted(call, match):
    with pytest.raises(ValueError, match=match):
        call()
