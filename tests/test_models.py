"""Tests of ``choco.models``: sizes against hand-counted architectures, shapes, init,
weight-decay groups, evaluation helpers, and a digits MLP sanity run of the data pipeline.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from choco.data import NodeLoader, batchify, load_digits, partition
from choco.models import (
    LSTMLanguageModel,
    ModelError,
    count_parameters,
    evaluate_classifier,
    evaluate_lm,
    make_model,
    no_weight_decay_params,
    param_groups,
)


def _cifar_resnet_size(blocks: int, shortcut: str) -> tuple[int, int]:
    """Hand count for He et al.'s CIFAR ResNet: (parameters, tensors)."""
    conv = lambda cin, cout, k=3: cin * cout * k * k  # noqa: E731
    params, tensors = conv(3, 16) + 2 * 16, 3  # stem conv + BN (weight, bias)
    cin = 16
    for cout in (16, 32, 64):
        for b in range(blocks):
            params += conv(cin if b == 0 else cout, cout) + conv(cout, cout) + 4 * cout
            tensors += 6
            if b == 0 and cin != cout and shortcut == "B":
                params += conv(cin, cout, 1) + 2 * cout
                tensors += 3
        cin = cout
    return params + 64 * 10 + 10, tensors + 2


@pytest.mark.parametrize(
    "name,shortcut,expected",
    [
        ("resnet20", "B", (272_474, 65)),
        ("resnet20", "A", (269_722, 59)),
        ("resnet8", "B", (78_042, 29)),
        ("resnet8", "A", (75_290, 23)),
    ],
)
def test_resnet_sizes_match_hand_count(name, shortcut, expected):
    model = make_model(name, shortcut=shortcut)
    blocks = {"resnet20": 3, "resnet8": 1}[name]
    assert _cifar_resnet_size(blocks, shortcut) == expected
    assert count_parameters(model) == expected


def test_resnet20_is_about_027m_and_outputs_logits():
    model = make_model("resnet20")
    assert 260_000 <= count_parameters(model)[0] <= 280_000
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert make_model("resnet8", shortcut="A")(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_init_is_deterministic_under_manual_seed():
    for name in ("mlp", "lenet", "resnet8"):
        torch.manual_seed(3)
        a = make_model(name)
        torch.manual_seed(3)
        b = make_model(name)
        for p, q in zip(a.parameters(), b.parameters(), strict=True):
            assert torch.equal(p, q)


def test_mlp_and_lenet_on_digit_shapes():
    mlp = make_model("mlp", input_shape=(1, 8, 8), num_classes=10)
    assert count_parameters(mlp) == (64 * 128 + 128 + 128 * 10 + 10, 4)
    assert mlp(torch.rand(5, 1, 8, 8)).shape == (5, 10)
    assert make_model("lenet")(torch.rand(5, 1, 8, 8)).shape == (5, 10)
    assert make_model("lenet", input_shape=(3, 32, 32))(torch.rand(2, 3, 32, 32)).shape == (2, 10)


def _lstm_size(vocab: int, dim: int, layers: int, tied: bool) -> int:
    lstm = layers * (4 * dim * (dim + dim) + 8 * dim)  # W_ih, W_hh, b_ih, b_hh per layer
    return vocab * dim + lstm + vocab + (0 if tied else dim * vocab)


def test_lstm_shapes_sizes_and_tying():
    torch.manual_seed(0)
    model = make_model("lstm", vocab_size=50, embed_dim=16, hidden_size=16, num_layers=2)
    logits, (h, c) = model(torch.randint(0, 50, (7, 3)))
    assert logits.shape == (7, 3, 50) and h.shape == c.shape == (2, 3, 16)
    assert model.decoder.weight is model.encoder.weight
    assert count_parameters(model)[0] == _lstm_size(50, 16, 2, tied=True)
    untied = make_model("lstm", vocab_size=50, embed_dim=16, hidden_size=16, tie_weights=False)
    assert count_parameters(untied)[0] == _lstm_size(50, 16, 3, tied=False)
    with pytest.raises(ModelError, match="embed_dim == hidden_size"):
        make_model("lstm", vocab_size=50, embed_dim=8, hidden_size=16)


def test_paper_lstm_defaults():
    model = LSTMLanguageModel(vocab_size=100)
    assert (model.num_layers, model.hidden_size, model.drop.p) == (3, 650, 0.4)


def test_registry_errors_list_valid_choices():
    with pytest.raises(ModelError, match="lenet, lstm, mlp, resnet20"):
        make_model("vgg16")
    with pytest.raises(ModelError, match=r"accepts: .*num_classes"):
        make_model("resnet20", width=2)
    with pytest.raises(ModelError, match="vocab_size"):
        make_model("lstm")
    with pytest.raises(ModelError, match="shortcut"):
        make_model("resnet20", shortcut="C")


def test_weight_decay_groups_exclude_batchnorm_and_bias():
    model = make_model("resnet20")
    decay, no_decay = param_groups(model, 1e-4)
    assert decay["weight_decay"] == 1e-4 and no_decay["weight_decay"] == 0.0
    bn = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(bn) == 19 + 2  # 19 in the main path, 2 in the 1x1 shortcuts
    assert len(no_decay["params"]) == 2 * len(bn) + 1  # + fc.bias
    assert len(decay["params"]) == 19 + 2 + 1  # convs, shortcut convs, fc.weight
    assert all(p.dim() > 1 for p in decay["params"])
    assert "fc.bias" in no_weight_decay_params(model)
    assert "fc.bias" not in no_weight_decay_params(model, bias=False)


def test_evaluate_classifier_exact_and_restores_mode():
    model = nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.eye(2))
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]])
    y = torch.tensor([0, 1, 1, 1])
    model.train()
    loss, acc = evaluate_classifier(model, x, y, batch_size=3)
    assert acc == 0.75 and model.training
    good, bad = math.log(1 + math.exp(-1)), math.log(1 + math.exp(1))
    assert loss == pytest.approx((3 * good + bad) / 4)


def test_evaluate_lm_uniform_model_has_perplexity_vocab_size():
    model = LSTMLanguageModel(vocab_size=37, embed_dim=8, hidden_size=8, num_layers=1)
    with torch.no_grad():
        model.decoder.bias.zero_()
    model.decoder.weight = nn.Parameter(torch.zeros(37, 8))  # untie: logits are all zero
    model.eval()
    loss, ppl = evaluate_lm(model, batchify(torch.randint(0, 37, (200,)), 4), bptt=7)
    assert loss == pytest.approx(math.log(37), rel=1e-6)
    assert ppl == pytest.approx(37, rel=1e-5)
    assert not model.training


def test_mlp_learns_digits_through_the_node_loader():
    torch.manual_seed(0)
    data = load_digits()
    model = make_model("mlp", input_shape=data.info.input_shape, num_classes=10)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    shard = partition(data.y_train, 1, "iid", seed=0)[0]
    loader = NodeLoader(data.x_train, data.y_train, shard, batch_size=32, seed=0, rank=0)
    for _ in range(15):
        for xb, yb in loader:
            opt.zero_grad()
            nn.functional.cross_entropy(model(xb), yb).backward()
            opt.step()
    loss, acc = evaluate_classifier(model, data.x_test, data.y_test)
    assert acc >= 0.90, (loss, acc)
    assert np.isfinite(loss)
