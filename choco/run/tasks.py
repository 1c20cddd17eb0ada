"""What is trained: a task object per kind of training, built once per run.

A :class:`Task` owns the data set split across the nodes, builds the model, yields a node's
minibatches, computes the training loss and the test metrics. The training loop
(:mod:`choco.run.train`) is the same for every task:

* :class:`ImageClassification`: cross-entropy, accuracy of the network average ``x̄`` (test
  set split across the nodes) and of each node's own model (``test_accuracy_local``);
* :class:`LanguageModelling`: BPTT over each node's contiguous share of the token stream,
  the LSTM's hidden state carried across minibatches, perplexity of ``x̄`` and of the nodes.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..comm.base import Communicator
from ..data import (
    ClassificationData,
    LanguageModelData,
    NodeLoader,
    batchify,
    bptt_batches,
    lm_steps_per_epoch,
    partition,
    shard_tokens,
    steps_per_epoch,
)
from ..errors import UsageError
from ..models import detach_hidden, evaluate_classifier, evaluate_lm, make_model
from .metrics import mean_scalars

__all__ = ["ImageClassification", "LanguageModelling", "Task", "make_task"]

Batch = tuple[torch.Tensor, torch.Tensor]


class Task(ABC):
    """One kind of training: data for ``n`` nodes, model, loss and test metrics."""

    #: ``--model`` names that fit this task; ``None``: every model except those of others
    models: tuple[str, ...] | None = None
    #: the test metric the progress line shows, and its label
    metric: str
    steps_per_epoch: int

    def __init__(self, n: int, batch_size: int) -> None:
        self.n = n
        self.batch_size = batch_size

    @abstractmethod
    def build_model(self, name: str, options: dict[str, Any]) -> nn.Module:
        """A new model ``name`` sized for this data (``options``: ``--model-args``)."""

    @abstractmethod
    def batches(self, rank: int, epoch: int) -> Iterator[Batch]:
        """Node ``rank``'s ``steps_per_epoch`` minibatches of ``epoch``."""

    def begin_epoch(self, model: nn.Module) -> Any:
        """Per-epoch state carried from one minibatch to the next (the LSTM's hidden)."""
        return None

    @abstractmethod
    def loss(self, model: nn.Module, batch: Batch, carry: Any) -> tuple[torch.Tensor, Any]:
        """``(training loss, new carry)`` for one minibatch."""

    @abstractmethod
    def evaluate(self, comm: Communicator, model: nn.Module, averaged: nn.Module,
                 local: bool) -> dict[str, float]:
        """Test metrics of ``averaged`` (``x̄``) and, if ``local``, of this node's ``model``."""

    @staticmethod
    @abstractmethod
    def quality(row: dict[str, Any]) -> str:
        """The test part of a progress line, e.g. ``acc(x̄) 91.20%  acc(local) 90.80%``."""


def _make(name: str, options: dict[str, Any], **sizes: Any) -> nn.Module:
    try:
        return make_model(name, **sizes, **options)
    except TypeError as exc:
        raise UsageError(f"--model {name}: {exc}; check --model-args.") from None


class ImageClassification(Task):
    """Classification of ``data`` (images or feature vectors), split by ``scheme``."""

    metric = "test_accuracy"

    def __init__(self, data: ClassificationData, n: int, batch_size: int, scheme: str,
                 seed: int) -> None:
        super().__init__(n, batch_size)
        self.data = data
        self.seed = seed
        self.shards = partition(data.y_train.numpy(), n, scheme, seed)
        self.steps_per_epoch = steps_per_epoch(self.shards, batch_size)
        self._loaders: dict[int, NodeLoader] = {}

    def build_model(self, name: str, options: dict[str, Any]) -> nn.Module:
        info = self.data.info
        return _make(name, options, num_classes=info.num_classes, input_shape=info.input_shape)

    def loader(self, rank: int) -> NodeLoader:
        """Node ``rank``'s loader (its shard, its own shuffling stream), built on first use."""
        if rank not in self._loaders:
            self._loaders[rank] = NodeLoader(
                self.data.x_train, self.data.y_train, self.shards[rank], self.batch_size,
                self.seed, rank, augment=self.data.augment, max_batches=self.steps_per_epoch)
        return self._loaders[rank]

    def batches(self, rank: int, epoch: int) -> Iterator[Batch]:
        return self.loader(rank).batches(epoch)

    def loss(self, model: nn.Module, batch: Batch, carry: Any) -> tuple[torch.Tensor, Any]:
        xb, yb = batch
        return F.cross_entropy(model(xb), yb), None

    def evaluate(self, comm: Communicator, model: nn.Module, averaged: nn.Module,
                 local: bool) -> dict[str, float]:
        data = self.data
        sel = slice(comm.rank, None, comm.size)
        x_test, y_test = data.x_test[sel], data.y_test[sel]
        k = len(y_test)
        loss, acc = evaluate_classifier(averaged, x_test, y_test) if k else (0.0, 0.0)
        total = mean_scalars(comm, [loss * k, acc * k, k])
        out = {"test_loss": total[0] / total[2], "test_accuracy": total[1] / total[2]}
        if local:
            _, acc_i = evaluate_classifier(model, data.x_test, data.y_test)
            out["test_accuracy_local"] = mean_scalars(comm, [acc_i])[0]
        return out

    @staticmethod
    def quality(row: dict[str, Any]) -> str:
        local = row.get("test_accuracy_local")
        local_s = f"  acc(local) {100 * local:.2f}%" if local is not None else ""
        return f"acc(x̄) {100 * row['test_accuracy']:.2f}%{local_s}"


class LanguageModelling(Task):
    """Next-token prediction on a token stream; node ``r`` trains on its ``r``-th share."""

    models = ("lstm",)
    metric = "test_perplexity"
    #: batch size of the test streams
    eval_batch_size = 10

    def __init__(self, data: LanguageModelData, n: int, batch_size: int, bptt: int) -> None:
        super().__init__(n, batch_size)
        self.data = data
        self.bptt = bptt
        self.steps_per_epoch = lm_steps_per_epoch(data.train.numel(), n, batch_size, bptt)
        if self.steps_per_epoch < 1:
            raise UsageError(f"the training text is too short for {n} nodes × batch "
                             f"{batch_size} × bptt {bptt}; lower them.")
        self._shards: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self._test_full: torch.Tensor | None = None

    def shards(self, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Node ``rank``'s batchified training and test streams."""
        if rank not in self._shards:
            self._shards[rank] = (
                batchify(shard_tokens(self.data.train, self.n, rank), self.batch_size),
                batchify(shard_tokens(self.data.test, self.n, rank), self.eval_batch_size))
        return self._shards[rank]

    def build_model(self, name: str, options: dict[str, Any]) -> nn.Module:
        return _make(name, options, vocab_size=self.data.info.num_classes)

    def batches(self, rank: int, epoch: int) -> Iterator[Batch]:
        it = bptt_batches(self.shards(rank)[0], self.bptt)
        return (next(it) for _ in range(self.steps_per_epoch))

    def begin_epoch(self, model: nn.Module) -> Any:
        init_hidden = getattr(model, "init_hidden", None)
        if not callable(init_hidden):
            raise UsageError(f"language modelling needs a model with init_hidden(batch_size), "
                             f"got a {type(model).__name__}; use --model lstm.")
        return init_hidden(self.batch_size)

    def loss(self, model: nn.Module, batch: Batch, carry: Any) -> tuple[torch.Tensor, Any]:
        xb, yb = batch
        hidden = detach_hidden(carry)
        logits, hidden = model(xb, hidden)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), yb.reshape(-1))
        return loss, hidden

    def evaluate(self, comm: Communicator, model: nn.Module, averaged: nn.Module,
                 local: bool) -> dict[str, float]:
        loss_bar, _ = evaluate_lm(averaged, self.shards(comm.rank)[1], self.bptt)
        loss_bar = mean_scalars(comm, [loss_bar])[0]
        out = {"test_loss": loss_bar, "test_perplexity": float(torch.tensor(loss_bar).exp())}
        if local:
            if self._test_full is None:
                self._test_full = batchify(self.data.test, self.eval_batch_size)
            loss_i, _ = evaluate_lm(model, self._test_full, self.bptt)
            loss_i = mean_scalars(comm, [loss_i])[0]
            out["test_perplexity_local"] = float(torch.tensor(loss_i).exp())
        return out

    @staticmethod
    def quality(row: dict[str, Any]) -> str:
        local = row.get("test_perplexity_local")
        local_s = f"  ppl(local) {local:.2f}" if local is not None else ""
        return f"ppl {row['test_perplexity']:.2f}{local_s}"


def make_task(data: ClassificationData | LanguageModelData, model: str, dataset: str, n: int,
              batch_size: int, partition_scheme: str, seed: int, bptt: int) -> Task:
    """The task that trains ``model`` on ``data`` over ``n`` nodes; checks the two fit."""
    if (model.lower() in LanguageModelling.models) != isinstance(data, LanguageModelData):
        raise UsageError(f"--model {model} does not fit --dataset {dataset}: use lstm with "
                         "wikitext2, and mlp/lenet/resnet* with image data.")
    if isinstance(data, LanguageModelData):
        return LanguageModelling(data, n, batch_size, bptt)
    return ImageClassification(data, n, batch_size, partition_scheme, seed)
