import pytest
import torch
from torch import nn

import clipkit as ck


@pytest.mark.parametrize("act", ["relu", "sigmoid", "tanh"])
def test_mlp_layers_and_no_activation_after_the_last_layer(act):
    model = ck.models.mlp([3, 5, 4, 2], activation=act)
    kinds = [type(m) for m in model]
    expected = ck.models.ACTIVATIONS[act]
    assert kinds == [nn.Linear, expected, nn.Linear, expected, nn.Linear]
    assert model(torch.zeros(7, 3)).shape == (7, 2)
    with_last = ck.models.mlp([3, 5, 2], activation=act, last_activation=True)
    assert isinstance(with_last[-1], expected)


def test_mlp_seed_fixes_the_initialisation_without_touching_the_global_rng():
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = ck.models.mlp([2, 8, 1], seed=5)
    after = torch.rand(1)
    b = ck.models.mlp([2, 8, 1], seed=5)
    assert torch.equal(before, after)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))


def test_cnn_shapes():
    model = ck.models.cnn(activation="tanh")
    assert model(torch.rand(4, 1, 28, 28)).shape == (4, 10)


@pytest.mark.parametrize(
    "call",
    [
        lambda: ck.models.mlp([2, 3, 1], activation="gelu"),
        lambda: ck.models.cnn(activation="swish"),
    ],
)
def test_unknown_activation_is_named(call):
    with pytest.raises(ValueError, match="unknown activation .*accepted: relu, sigmoid, tanh"):
        call()


def test_mlp_rejects_bad_sizes():
    for bad in ([4], [4, 0, 1], [4, 2.0, 1], [4, True, 1]):  # True would be a width of 1
        with pytest.raises(ValueError, match=r"mlp: sizes must be >= 2 positive ints, got"):
            ck.models.mlp(bad)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: ck.models.cnn(num_classes=0), "cnn: num_classes must be an int >= 1, got 0"),
        (lambda: ck.models.cnn(width=-1), "cnn: width must be an int >= 1, got -1"),
        (lambda: ck.models.cnn(image_size="28"), "cnn: image_size must be an int >= 4"),
        (lambda: ck.models.cnn(image_size=30), "cnn: image_size must be a multiple of 4"),
        (lambda: ck.models.classifier(hidden=100), r"hidden must be a list .* \[100\]"),
        (lambda: ck.models.classifier(image_shape=(28, 28)), "image_shape must be \\(channels"),
        (lambda: ck.models.classifier("cnn", hidden=[5]), "hidden is an option of the MLP only"),
        (lambda: ck.models.classifier("cnn", last_activation=True),
         "last_activation is an option of the MLP only"),
        (lambda: ck.models.classifier("rnn"), "unknown kind 'rnn'; accepted: 'mlp', 'cnn'"),
    ],
)
def test_bad_model_settings_are_named(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_each_classifier_kind_has_its_own_default_activation():
    # the MLP is the authors' (sigmoid); the CNN is ck.models.cnn's (ReLU), not a sigmoid CNN
    mlp = ck.models.classifier("mlp", seed=0)
    assert [type(m).__name__ for m in mlp][2] == "Sigmoid" and mlp[1].out_features == 200
    cnn = ck.models.classifier("cnn", seed=0)
    assert {type(m).__name__ for m in cnn} >= {"ReLU"} and "Sigmoid" not in {
        type(m).__name__ for m in cnn}
    assert "Tanh" in {type(m).__name__ for m in ck.models.classifier("cnn", activation="tanh")}
