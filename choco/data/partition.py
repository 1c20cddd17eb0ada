"""Split a training set across ``n`` nodes, identically on every rank.

Every rank calls :func:`partition` with the same labels, ``n``, scheme and seed and keeps
its own shard, so no communication is needed. Schemes:

``iid``
    a seeded random permutation cut into ``n`` parts whose sizes differ by at most one.
``dirichlet:ALPHA``
    for each class, node proportions ``p ~ Dirichlet(ALPHA·1_n)`` (Hsu et al.,
    arXiv:1909.06335); small ``ALPHA`` gives skewed, non-IID shards. Every node receives at
    least one example.
``by-class``
    examples sorted by label, cut into ``n`` contiguous parts: each node sees a contiguous
    range of classes (the most heterogeneous split).

CHOCO-SGD's CIFAR-10 ring runs reshuffle the data across nodes every epoch
(arXiv:1907.09356, §5); call :func:`partition` with ``seed=derive_seed(seed, epoch)`` to
do so. The social-graph runs keep one permanent split.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .base import DataError

SCHEME_FORMS = "iid, by-class, dirichlet:ALPHA (ALPHA > 0, e.g. dirichlet:0.5)"


@dataclass(frozen=True)
class PartitionScheme:
    """A parsed scheme string."""

    #: ``"iid"``, ``"dirichlet"`` or ``"by-class"``
    kind: str
    #: Dirichlet concentration (0 unless ``kind == "dirichlet"``)
    alpha: float = 0.0


def parse_scheme(spec: str) -> PartitionScheme:
    """Parse ``iid``, ``by-class`` or ``dirichlet:ALPHA``; raise listing the valid forms."""
    text = spec.strip().lower()
    if text in ("iid", "by-class"):
        return PartitionScheme(text)
    name, _, arg = text.partition(":")
    if name == "dirichlet":
        try:
            alpha = float(arg)
        except ValueError:
            alpha = float("nan")
        if alpha > 0 and np.isfinite(alpha):
            return PartitionScheme("dirichlet", alpha)
        raise DataError(f"dirichlet needs a finite ALPHA > 0 as dirichlet:ALPHA, got {spec!r}")
    raise DataError(f"unknown partition scheme {spec!r}; valid forms: {SCHEME_FORMS}")


def _as_labels(labels: np.ndarray | torch.Tensor | Sequence[int]) -> np.ndarray:
    if isinstance(labels, torch.Tensor):
        labels = labels.cpu().numpy()
    array = np.asarray(labels)
    if array.ndim != 1 or not np.issubdtype(array.dtype, np.integer):
        raise DataError(f"labels must be a 1-D integer array, got {array.dtype} {array.shape}")
    return array.astype(np.int64, copy=False)


def partition(
    labels: np.ndarray | torch.Tensor | Sequence[int], n: int, scheme: str = "iid", seed: int = 0
) -> list[np.ndarray]:
    """Indices of each node's shard: disjoint, covering ``range(len(labels))``.

    Parameters
    ----------
    labels
        Class label of every training example (1-D integers).
    n
        Number of nodes; ``1 <= n <= len(labels)``.
    scheme
        ``iid``, ``by-class`` or ``dirichlet:ALPHA`` (see the module docstring).
    seed
        Shared by all ranks; the result depends only on the arguments.

    Returns
    -------
    list of numpy.ndarray
        ``n`` int64 index arrays; sorted, except ``by-class`` which is in label order.
    """
    y = _as_labels(labels)
    parsed = parse_scheme(scheme)
    if not 1 <= n <= len(y):
        raise DataError(f"need 1 <= n <= number of examples ({len(y)}), got n={n}")
    rng = np.random.default_rng(seed)
    if parsed.kind == "iid":
        return [np.sort(part) for part in np.array_split(rng.permutation(len(y)), n)]
    if parsed.kind == "by-class":
        perm = rng.permutation(len(y))  # random order inside each class
        order = perm[np.argsort(y[perm], kind="stable")]
        return list(np.array_split(order, n))
    return _dirichlet(y, n, parsed.alpha, rng)


def _dirichlet(y: np.ndarray, n: int, alpha: float, rng: np.random.Generator) -> list[np.ndarray]:
    shards: list[list[np.ndarray]] = [[] for _ in range(n)]
    for c in np.unique(y):
        members = rng.permutation(np.flatnonzero(y == c))
        proportions = rng.dirichlet(np.full(n, alpha))
        if not np.all(np.isfinite(proportions)):  # underflow at tiny alpha: all to one node
            proportions = np.eye(n)[rng.integers(n)]
        cuts = np.round(np.cumsum(proportions)[:-1] * len(members)).astype(np.int64)
        for node, part in enumerate(np.split(members, cuts)):
            shards[node].append(part)
    parts = [np.sort(np.concatenate(s)) for s in shards]
    # an empty node could not take a single step: move one example from the largest shard
    for node in range(n):
        if len(parts[node]) == 0:
            donor = int(np.argmax([len(p) for p in parts]))
            pick = int(rng.integers(len(parts[donor])))
            parts[node] = parts[donor][pick : pick + 1]
            parts[donor] = np.delete(parts[donor], pick)
    return parts


def steps_per_epoch(
    shards: Sequence[np.ndarray | int], batch_size: int, drop_last: bool = False
) -> int:
    """Minibatches per epoch that *every* node can take: the minimum over the shards.

    Each gossip round is a collective exchange with the neighbours, so all ranks must take
    the same number of steps; ranks compute this locally from the shared partition.
    Pass it as ``max_batches`` to :class:`~choco.data.loader.NodeLoader`.
    """
    if batch_size < 1:
        raise DataError(f"batch_size must be >= 1, got {batch_size}")
    if not shards:
        raise DataError("steps_per_epoch needs at least one shard")
    sizes = [s if isinstance(s, int | np.integer) else len(s) for s in shards]
    counts = [k // batch_size if drop_last else -(-k // batch_size) for k in sizes]
    return int(min(counts))
