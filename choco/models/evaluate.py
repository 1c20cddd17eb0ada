"""Test-set metrics; the model is put in eval mode and restored to its previous mode.

CHOCO-SGD reports top-1 accuracy of each node's model on the full test set, averaged over
nodes, and test perplexity for the LSTM (arXiv:1907.09356, Tables 1 and 3).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from .errors import ModelError
from .lstm import detach_hidden


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """``model.eval()`` and ``torch.no_grad()`` inside; the previous mode is restored after."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield model
    finally:
        model.train(was_training)


def _device(model: nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def evaluate_classifier(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1000
) -> tuple[float, float]:
    """Mean cross-entropy and top-1 accuracy (a fraction in [0, 1]) of ``model`` on ``(x, y)``."""
    if len(x) != len(y) or len(y) == 0:
        raise ModelError(f"need as many labels as inputs (> 0), got {len(x)} and {len(y)}")
    if batch_size < 1:
        raise ModelError(f"batch_size must be >= 1, got {batch_size}")
    device = _device(model)
    loss_sum, correct = 0.0, 0
    with eval_mode(model):
        for i in range(0, len(y), batch_size):
            xb, yb = x[i : i + batch_size].to(device), y[i : i + batch_size].to(device)
            logits = model(xb)
            loss_sum += float(F.cross_entropy(logits, yb, reduction="sum"))
            correct += int((logits.argmax(dim=1) == yb).sum())
    return loss_sum / len(y), correct / len(y)


def evaluate_lm(model: nn.Module, data: torch.Tensor, bptt: int = 30) -> tuple[float, float]:
    """Per-token cross-entropy and perplexity ``exp(loss)`` on a batchified stream.

    ``data`` has shape ``(rows, bsz)`` (:func:`~choco.data.text.batchify`); the hidden
    state is carried across BPTT chunks, as in training. ``model`` must provide
    ``init_hidden(bsz)`` and ``forward(tokens, hidden) -> (logits, hidden)``.
    """
    if data.dim() != 2 or data.shape[0] < 2:
        raise ModelError(
            f"evaluate_lm needs batchified data (rows >= 2, bsz), got {tuple(data.shape)}"
        )
    if bptt < 1:
        raise ModelError(f"bptt must be >= 1, got {bptt}")
    init_hidden = getattr(model, "init_hidden", None)
    if not callable(init_hidden):
        raise ModelError(f"{type(model).__name__} has no init_hidden(bsz); use an LSTM model")
    device = _device(model)
    loss_sum, count = 0.0, 0
    with eval_mode(model):
        hidden = init_hidden(data.shape[1])
        for i in range(0, data.shape[0] - 1, bptt):  # BPTT chunks: rows i..i+L-1 -> i+1..i+L
            length = min(bptt, data.shape[0] - 1 - i)
            inputs, targets = data[i : i + length], data[i + 1 : i + 1 + length].reshape(-1)
            logits, hidden = model(inputs.to(device), hidden)
            hidden = detach_hidden(hidden)
            loss_sum += float(
                F.cross_entropy(
                    logits.reshape(-1, logits.shape[-1]), targets.to(device), reduction="sum"
                )
            )
            count += targets.numel()
    loss = loss_sum / count
    return loss, math.exp(min(loss, 700.0))
