"""Top-k on inputs that defeat threshold sampling: exact zeros, ties, constants, heavy tails.

The selected set must be exactly a top-k set (every kept magnitude >= every dropped one,
k distinct positions) and, among equal magnitudes at the threshold, the lowest positions
(a deterministic tie-break), on both the numpy (host) and the torch (device) kernels.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from choco.compress import _host, make_compressor
from choco.compress.topk import topk_indices

D = 300_007


def inputs() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    sparse = torch.zeros(D)
    sparse[torch.randperm(D, generator=gen)[: D // 100]] = torch.randn(D // 100, generator=gen)
    sparser = torch.zeros(D)
    sparser[torch.randperm(D, generator=gen)[: D // 300]] = torch.randn(D // 300,
                                                                        generator=gen)
    return {
        "gaussian": torch.randn(D, generator=gen),
        "99% zeros": sparse,
        "99.7% zeros": sparser,
        "constant": torch.full((D,), -2.5),
        "ties": torch.randint(-3, 4, (D,), generator=gen).float(),
        "cauchy": torch.distributions.Cauchy(0.0, 1.0).sample((D,)),
        "all zero": torch.zeros(D),
    }


def reference(x: np.ndarray, k: int) -> np.ndarray:
    """Top-k by a stable sort on (-|x|, position): ties go to the lowest positions."""
    order = np.lexsort((np.arange(x.size), -np.abs(x)))
    return np.sort(order[:k])


@pytest.mark.parametrize("host", [True, False], ids=["host", "device"])
@pytest.mark.parametrize("ratio", [0.01, 0.001])
@pytest.mark.parametrize("name", list(inputs()))
def test_topk_is_an_exact_top_k_set_with_lowest_position_ties(monkeypatch, host, ratio, name):
    monkeypatch.setattr(_host, "HOST_KERNELS", host)
    x = inputs()[name]
    k = max(1, int(np.ceil(ratio * D)))
    idx = topk_indices(x, k).numpy()
    assert idx.size == k and np.unique(idx).size == k and np.all(np.diff(idx) > 0)
    a = np.abs(x.numpy())
    kept = np.zeros(D, dtype=bool)
    kept[idx] = True
    assert a[kept].min() >= a[~kept].max()
    np.testing.assert_array_equal(idx, reference(x.numpy(), k))


@pytest.mark.parametrize("numel,k", [(1000, 10), (5000, 2000), (70_000, 20_000)])
def test_small_or_dense_selections_break_ties_by_position(numel, k):
    """The paths without sampling (small d, or k > d/8) follow the same tie rule."""
    x = torch.randint(-2, 3, (numel,), generator=torch.Generator().manual_seed(2)).float()
    np.testing.assert_array_equal(topk_indices(x, k).numpy(), reference(x.numpy(), k))


def test_topk_message_on_sparse_input_decodes_to_the_kept_entries():
    x = inputs()["99.7% zeros"]
    q = make_compressor("topk:0.01")
    y = q(x)
    k = int(np.ceil(0.01 * D))
    expected = np.zeros(D, dtype=np.float32)
    keep = reference(x.numpy(), k)
    expected[keep] = x.numpy()[keep]
    np.testing.assert_array_equal(y.numpy(), expected)
