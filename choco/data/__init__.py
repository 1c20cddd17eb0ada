"""Data sets for the choco runner, partitioned across nodes without communication.

>>> from choco.data import make_dataset, partition, NodeLoader, steps_per_epoch
>>> data = make_dataset("digits")
>>> data.info.num_classes, data.info.input_shape, data.info.num_train
(10, (1, 8, 8), 1437)
>>> shards = partition(data.y_train, n=4, scheme="iid", seed=0)
>>> loader = NodeLoader(data.x_train, data.y_train, shards[1], batch_size=32, seed=0, rank=1,
...                     max_batches=steps_per_epoch(shards, 32))
>>> len(loader)
12

Registered sets: ``digits`` (embedded in scikit-learn, the default), ``synthetic``
(Gaussian blobs), ``cifar10`` and ``wikitext2`` (local files under ``--data-dir``; nothing is
ever downloaded). See :mod:`choco.data.partition` for the split schemes.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from .augment import RandomCropFlip
from .base import ClassificationData, DataError, DatasetInfo, derive_seed, generator
from .images import CIFAR10_MEAN, CIFAR10_STD, load_cifar10, load_digits, load_synthetic
from .loader import NodeLoader
from .partition import PartitionScheme, parse_scheme, partition, steps_per_epoch
from .text import (
    LanguageModelData,
    Vocabulary,
    batchify,
    bptt_batches,
    get_batch,
    lm_steps_per_epoch,
    load_wikitext2,
    num_bptt_batches,
    shard_tokens,
)

__all__ = [
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "ClassificationData",
    "DataError",
    "DatasetInfo",
    "LanguageModelData",
    "NodeLoader",
    "PartitionScheme",
    "RandomCropFlip",
    "Vocabulary",
    "available_datasets",
    "batchify",
    "bptt_batches",
    "derive_seed",
    "generator",
    "get_batch",
    "lm_steps_per_epoch",
    "load_cifar10",
    "load_digits",
    "load_synthetic",
    "load_wikitext2",
    "make_dataset",
    "num_bptt_batches",
    "parse_scheme",
    "partition",
    "shard_tokens",
    "steps_per_epoch",
]

Dataset = ClassificationData | LanguageModelData

#: name -> (loader, whether it reads files from ``data_dir``)
REGISTRY: dict[str, tuple[Callable[..., Dataset], bool]] = {
    "digits": (load_digits, False),
    "synthetic": (load_synthetic, False),
    "cifar10": (load_cifar10, True),
    "wikitext2": (load_wikitext2, True),
}


def available_datasets() -> list[str]:
    """Registered data set names."""
    return sorted(REGISTRY)


def make_dataset(name: str, data_dir: str | Path | None = None, **kwargs: Any) -> Dataset:
    """Load a registered data set by name.

    Parameters
    ----------
    name
        One of :func:`available_datasets` (case-insensitive).
    data_dir
        Folder holding the files of ``cifar10`` (``cifar-10-batches-py/``) or ``wikitext2``
        (``wiki.*.tokens``); ignored by the embedded sets.
    **kwargs
        Passed to the loader (e.g. ``seed`` for ``digits``, ``augment`` for ``cifar10``).

    Raises
    ------
    DataError
        Unknown name (lists the valid ones), missing ``data_dir`` or files.
    """
    key = name.strip().lower().replace("-", "").replace("_", "")
    if key not in REGISTRY:
        raise DataError(
            f"unknown data set {name!r}; valid names: {', '.join(available_datasets())}"
        )
    loader, needs_files = REGISTRY[key]
    if needs_files:
        if data_dir is None:
            raise DataError(
                f"data set {key} is read from local files: pass --data-dir (data_dir=...)"
            )
        return loader(data_dir, **kwargs)
    return loader(**kwargs)
