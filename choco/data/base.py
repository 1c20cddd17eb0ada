"""Containers and seeding shared by every data set of the runner.

Every loader returns one of two frozen dataclasses: :class:`ClassificationData` (features
``float32``, labels ``int64``) or :class:`~choco.data.text.LanguageModelData` (token ids
``int64``), each with a :class:`DatasetInfo` describing what a model needs to be built.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError

#: a training-time augmentation: ``(batch, generator) -> batch`` of the same shape
Augment = Callable[[torch.Tensor, torch.Generator], torch.Tensor]




def derive_seed(*keys: int) -> int:
    """A 63-bit seed that depends only on ``keys`` (e.g. ``(seed, rank, epoch)``).

    Built with :class:`numpy.random.SeedSequence`, so nearby keys give unrelated streams and
    the result is the same on every rank, platform and torch version.
    """
    if any(int(k) < 0 for k in keys):
        raise DataError(f"seed keys must be non-negative integers, got {keys}")
    state = np.random.SeedSequence([int(k) for k in keys]).generate_state(1, np.uint64)[0]
    return int(state) & (2**63 - 1)


def generator(*keys: int) -> torch.Generator:
    """A CPU :class:`torch.Generator` seeded with :func:`derive_seed` of ``keys``."""
    return torch.Generator().manual_seed(derive_seed(*keys))


@dataclass(frozen=True)
class DatasetInfo:
    """What a model and a runner need to know about a data set."""

    #: registry name, e.g. ``"digits"``
    name: str
    #: number of classes; for a language model, the vocabulary size
    num_classes: int
    #: shape of one example's features, e.g. ``(3, 32, 32)``; ``()`` for a token stream
    input_shape: tuple[int, ...]
    #: training examples (tokens for a language model)
    num_train: int
    #: test examples (tokens for a language model)
    num_test: int


@dataclass(frozen=True, eq=False)
class ClassificationData:
    """Train and test tensors of a classification task, already normalized.

    ``augment`` (if any) is applied by :class:`~choco.data.loader.NodeLoader` to training
    batches only; test tensors are used as they are.
    """

    #: metadata (classes, input shape, sizes)
    info: DatasetInfo
    #: training features, ``float32``, shape ``(N, *input_shape)``
    x_train: torch.Tensor
    #: training labels, ``int64`` in ``[0, num_classes)``, shape ``(N,)``
    y_train: torch.Tensor
    #: test features, ``float32``
    x_test: torch.Tensor
    #: test labels, ``int64``
    y_test: torch.Tensor
    #: training-time augmentation, or None
    augment: Augment | None = None

    def __post_init__(self) -> None:
        for split, x, y in (
            ("train", self.x_train, self.y_train),
            ("test", self.x_test, self.y_test),
        ):
            check_pair(x, y, f"{self.info.name} {split}")
            if tuple(x.shape[1:]) != self.info.input_shape:
                raise DataError(
                    f"{self.info.name} {split} features must have shape (N, "
                    f"{', '.join(map(str, self.info.input_shape))}), got {tuple(x.shape)}"
                )


def check_pair(x: torch.Tensor, y: torch.Tensor, what: str) -> None:
    """Raise :class:`DataError` unless ``x`` is float32, ``y`` int64 and lengths match."""
    if x.dtype != torch.float32:
        raise DataError(f"{what}: features must be float32, got {x.dtype}; use x.float()")
    if y.dtype != torch.int64 or y.dim() != 1:
        raise DataError(
            f"{what}: labels must be a 1-D int64 tensor, got {y.dtype} {tuple(y.shape)}"
        )
    if x.shape[0] != y.shape[0]:
        raise DataError(f"{what}: {x.shape[0]} feature rows but {y.shape[0]} labels")


def require_files(folder: Path, names: Sequence[str], what: str, hint: str) -> None:
    """Raise :class:`DataError` naming every file of ``names`` missing from ``folder``."""
    missing = [name for name in names if not (folder / name).is_file()]
    if missing:
        raise DataError(
            f"{what}: missing {', '.join(missing)} in {folder}. {hint} "
            "(choco never downloads data at run time)"
        )
