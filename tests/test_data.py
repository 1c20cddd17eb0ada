"""Tests of ``choco.data``: loaders, partitions, per-node iteration, augmentation.

Expected values are independent of the code under test: pixel values written into fake
CIFAR batches, hand-counted vocabularies, closed-form shard sizes.
"""

from __future__ import annotations

import itertools
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from choco.data import (
    DataError,
    NodeLoader,
    RandomCropFlip,
    batchify,
    bptt_batches,
    get_batch,
    lm_steps_per_epoch,
    load_cifar10,
    load_digits,
    load_synthetic,
    load_wikitext2,
    make_dataset,
    partition,
    shard_tokens,
    steps_per_epoch,
)

MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2023, 0.1994, 0.2010)


# ---------------------------------------------------------------- digits, synthetic, registry


def test_digits_shapes_split_and_scaling():
    d = load_digits()
    assert d.x_train.shape == (1437, 1, 8, 8) and d.x_test.shape == (360, 1, 8, 8)
    assert d.x_train.dtype == torch.float32 and d.y_train.dtype == torch.int64
    assert (d.info.num_classes, d.info.input_shape) == (10, (1, 8, 8))
    x = torch.cat([d.x_train, d.x_test])
    assert x.min() == 0.0 and x.max() == 1.0
    assert torch.equal(x * 16, (x * 16).round())  # sklearn pixels are integers 0..16
    # stratified: 360 of 1797 per class is ~20%, every class has 35-37 test images
    counts = torch.bincount(d.y_test, minlength=10)
    assert counts.min() >= 35 and counts.max() <= 37


def test_digits_split_is_deterministic_and_seeded():
    a, b, c = load_digits(seed=0), load_digits(seed=0), load_digits(seed=1)
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_test, b.y_test)
    assert not torch.equal(a.y_train, c.y_train)


def test_synthetic_is_seeded_and_balanced():
    a, b = load_synthetic(seed=3), load_synthetic(seed=3)
    assert torch.equal(a.x_train, b.x_train)
    assert a.x_train.shape == (512, 16) and torch.bincount(a.y_train).tolist() == [128] * 4


def test_make_dataset_registry_errors(tmp_path):
    assert make_dataset("digits").info.num_train == 1437
    with pytest.raises(DataError, match="cifar10, digits, synthetic, wikitext2"):
        make_dataset("mnist")
    with pytest.raises(DataError, match="--data-dir"):
        make_dataset("cifar10")
    with pytest.raises(DataError, match=r"cifar-10-batches-py.*data_batch_1"):
        make_dataset("cifar10", data_dir=tmp_path)
    with pytest.raises(DataError, match=r"wiki\.train\.tokens"):
        make_dataset("wikitext2", data_dir=tmp_path)


# ---------------------------------------------------------------- CIFAR-10 reader


def _write_batch(path: Path, data: np.ndarray, labels: list[int]) -> None:
    with open(path, "wb") as f:  # the real files are Python-2 pickles: bytes keys
        pickle.dump({b"batch_label": b"fake", b"data": data, b"labels": labels}, f)


@pytest.fixture
def fake_cifar(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    batches = []
    for _ in names:
        data = rng.integers(0, 256, size=(20, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, size=20)]
        batches.append((data, labels))
    first = batches[0][0]
    first[0, :1024], first[0, 1024:2048], first[0, 2048:] = 255, 0, 128  # R, G, B planes
    first[1, 1024 + 5 * 32 + 7] = 200  # green channel, row 5, column 7
    for (data, labels), name in zip(batches, names, strict=True):
        _write_batch(folder / name, data, labels)
    return tmp_path, batches


def test_cifar_reader_round_trips_pixels_and_normalizes(fake_cifar):
    root, batches = fake_cifar
    d = load_cifar10(root)
    assert d.x_train.shape == (100, 3, 32, 32) and d.x_test.shape == (20, 3, 32, 32)
    assert d.y_train.tolist() == [v for _, labels in batches[:5] for v in labels]
    assert d.y_test.tolist() == batches[5][1]
    expect = [
        (255 / 255 - MEAN[0]) / STD[0],
        (0 - MEAN[1]) / STD[1],
        (128 / 255 - MEAN[2]) / STD[2],
    ]
    for c in range(3):
        assert torch.allclose(d.x_train[0, c], torch.full((32, 32), expect[c]), atol=1e-5)
    assert d.x_train[1, 1, 5, 7].item() == pytest.approx((200 / 255 - MEAN[1]) / STD[1], abs=1e-5)
    # every value un-normalizes to an integer pixel in the same position as in the file
    pixels = (
        d.x_test * torch.tensor(STD).view(1, 3, 1, 1) + torch.tensor(MEAN).view(1, 3, 1, 1)
    ) * 255
    assert np.abs(pixels.reshape(20, 3072).numpy() - batches[5][0]).max() < 1e-3
    assert isinstance(d.augment, RandomCropFlip)
    assert load_cifar10(root / "cifar-10-batches-py", augment=False).augment is None


def test_cifar_missing_file_is_named(fake_cifar):
    root, _ = fake_cifar
    (root / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(DataError, match="data_batch_3"):
        load_cifar10(root)


# ---------------------------------------------------------------- augmentation


def test_augmentation_shape_determinism_and_crops():
    x = torch.randn(6, 3, 10, 12)
    aug = RandomCropFlip(padding=2, fill=[-1.0, -2.0, -3.0])
    a = aug(x, torch.Generator().manual_seed(5))
    assert a.shape == x.shape
    assert torch.equal(a, aug(x, torch.Generator().manual_seed(5)))
    assert not torch.equal(a, aug(x, torch.Generator().manual_seed(6)))
    padded = torch.tensor([-1.0, -2.0, -3.0]).view(1, 3, 1, 1).expand(6, 3, 14, 16).clone()
    padded[:, :, 2:12, 2:14] = x
    for i in range(6):  # each output is some window of the padded image, maybe mirrored
        windows = [padded[i, :, t : t + 10, s : s + 12] for t in range(5) for s in range(5)]
        assert any(torch.equal(a[i], w) or torch.equal(a[i], w.flip(-1)) for w in windows)
    identity = RandomCropFlip(padding=0, flip=False)
    assert torch.equal(identity(x, torch.Generator().manual_seed(0)), x)


# ---------------------------------------------------------------- WikiText-2 reader


@pytest.fixture
def tiny_wikitext(tmp_path):
    (tmp_path / "wiki.train.tokens").write_text("a b c\nb c d\n\n", encoding="utf-8")
    (tmp_path / "wiki.valid.tokens").write_text("a zz\n", encoding="utf-8")
    (tmp_path / "wiki.test.tokens").write_text("d q r\n", encoding="utf-8")
    return tmp_path


def test_wikitext_vocab_eos_and_unk(tiny_wikitext):
    d = load_wikitext2(tiny_wikitext)
    assert d.vocab.itos == ("a", "b", "c", "<eos>", "d", "<unk>")
    assert d.info.num_classes == 6
    assert d.train.tolist() == [0, 1, 2, 3, 1, 2, 4, 3, 3]  # blank line is a lone <eos>
    assert d.valid.tolist() == [0, 5, 3]
    assert d.test.tolist() == [4, 5, 5, 3]
    assert d.train.dtype == torch.int64


def test_wikitext_accepts_unzipped_parent_folder(tiny_wikitext, tmp_path):
    parent = tmp_path / "outer"
    (parent / "wikitext-2").mkdir(parents=True)
    for name in ("wiki.train.tokens", "wiki.valid.tokens", "wiki.test.tokens"):
        (parent / "wikitext-2" / name).write_bytes((tiny_wikitext / name).read_bytes())
    assert len(make_dataset("wikitext2", data_dir=parent).vocab) == 6


def test_batchify_and_bptt_chunks():
    tokens = torch.arange(23)
    source = batchify(tokens, 4)  # 5 rows, tail of 3 tokens dropped
    assert source.shape == (5, 4)
    assert source[:, 1].tolist() == [5, 6, 7, 8, 9]  # column j is a contiguous run
    x, y = get_batch(source, 0, 2)
    assert x.tolist() == [[0, 5, 10, 15], [1, 6, 11, 16]]
    assert y.tolist() == [1, 6, 11, 16, 2, 7, 12, 17]
    chunks = list(bptt_batches(source, 3))
    assert [c[0].shape[0] for c in chunks] == [3, 1]  # rows 0-2, then row 3 (row 4 is target)
    with pytest.raises(DataError):
        batchify(torch.arange(5), 4)


def test_token_shards_and_common_lm_steps():
    tokens = torch.arange(103)
    shards = [shard_tokens(tokens, 4, r) for r in range(4)]
    assert torch.equal(torch.cat(shards), tokens)
    assert {len(s) for s in shards} <= {25, 26}
    # shards of 25/26 tokens, bsz 2 -> 12 or 13 rows -> ceil(11/5)=3, ceil(12/5)=3 chunks
    assert lm_steps_per_epoch(103, 4, 2, 5) == 3
    assert lm_steps_per_epoch(103, 4, 2, 11) == 1  # ceil(11/11)=1 < ceil(12/11)=2


# ---------------------------------------------------------------- partitions


def _check_cover(parts, n_total):
    allidx = np.concatenate(parts)
    assert len(allidx) == n_total and len(np.unique(allidx)) == n_total


@pytest.mark.parametrize("scheme", ["iid", "by-class", "dirichlet:0.5", "dirichlet:100"])
def test_partitions_are_disjoint_covering_and_deterministic(scheme):
    labels = np.repeat(np.arange(10), 50)
    parts = partition(labels, 7, scheme, seed=1)
    assert len(parts) == 7 and all(len(p) >= 1 for p in parts)
    _check_cover(parts, 500)
    again = partition(torch.from_numpy(labels), 7, scheme, seed=1)
    assert all(np.array_equal(p, q) for p, q in zip(parts, again, strict=True))


def test_iid_sizes_differ_by_at_most_one():
    parts = partition(np.zeros(103, dtype=int), 10, "iid", seed=0)
    assert sorted({len(p) for p in parts}) == [10, 11]
    assert not np.array_equal(parts[0], partition(np.zeros(103, dtype=int), 10, "iid", 1)[0])


def test_by_class_shards_hold_contiguous_classes():
    labels = np.random.default_rng(0).permutation(np.repeat(np.arange(8), 25))
    parts = partition(labels, 4, "by-class", seed=0)
    assert [sorted(set(labels[p])) for p in parts] == [[0, 1], [2, 3], [4, 5], [6, 7]]
    parts = partition(labels, 3, "by-class", seed=0)
    for a, b in itertools.pairwise(parts):
        assert labels[a].max() <= labels[b].min()


def test_dirichlet_alpha_controls_skew():
    labels = np.repeat(np.arange(10), 400)
    flat = partition(labels, 4, "dirichlet:1e5", seed=0)
    for p in flat:  # each node gets ~1/4 of every class
        assert np.allclose(np.bincount(labels[p], minlength=10) / 400, 0.25, atol=0.03)
    skew = partition(labels, 4, "dirichlet:0.05", seed=0)
    share = np.stack([np.bincount(labels[p], minlength=10) for p in skew]) / 400
    assert share.max(axis=0).mean() > 0.8  # most of each class sits on one node


def test_dirichlet_gives_every_node_a_sample():
    labels = np.repeat(np.arange(2), 10)
    for seed in range(20):
        parts = partition(labels, 15, "dirichlet:0.01", seed=seed)
        assert min(len(p) for p in parts) >= 1
        _check_cover(parts, 20)


@pytest.mark.parametrize("bad", ["random", "dirichlet", "dirichlet:0", "dirichlet:x", "byclass"])
def test_bad_scheme_lists_valid_forms(bad):
    with pytest.raises(DataError, match="dirichlet"):
        partition(np.zeros(10, dtype=int), 2, bad, 0)


def test_partition_rejects_bad_node_count():
    with pytest.raises(DataError, match="n <="):
        partition(np.zeros(3, dtype=int), 4, "iid", 0)


def test_common_steps_per_epoch_is_the_minimum():
    sizes = [np.arange(10), np.arange(9), np.arange(12)]
    assert steps_per_epoch(sizes, 4) == 3  # ceil: 3, 3, 3
    assert steps_per_epoch(sizes, 4, drop_last=True) == 2  # floor: 2, 2, 3
    assert steps_per_epoch([10, 9, 12], 5) == 2


# ---------------------------------------------------------------- NodeLoader


def _toy(n=37):
    return torch.arange(n, dtype=torch.float32).view(n, 1), torch.arange(n)


def test_node_loader_covers_shard_and_reshuffles_per_epoch():
    x, y = _toy()
    shard = np.arange(3, 30)
    loader = NodeLoader(x, y, shard, batch_size=5, seed=7, rank=2)
    assert len(loader) == 6
    e0 = [yb for _, yb in loader]
    e1 = [yb for _, yb in loader]  # iterating advances the epoch
    assert [len(b) for b in e0] == [5, 5, 5, 5, 5, 2]
    assert sorted(torch.cat(e0).tolist()) == list(range(3, 30))
    assert sorted(torch.cat(e1).tolist()) == list(range(3, 30))
    assert not torch.equal(torch.cat(e0), torch.cat(e1))
    for xb, yb in NodeLoader(x, y, shard, 5, 7, 2).batches(0):
        assert torch.equal(xb.view(-1), yb.float())  # features travel with their labels


def test_node_loader_order_depends_only_on_seed_rank_epoch():
    x, y = _toy()
    a = NodeLoader(x, y, np.arange(37), 8, seed=1, rank=0)
    b = NodeLoader(x, y, np.arange(37), 8, seed=1, rank=0)
    for _ in range(3):  # a has been iterated for 3 epochs, b is fresh
        list(a)
    b.set_epoch(3)
    assert [t.tolist() for _, t in a] == [t.tolist() for _, t in b]
    full = [t.tolist() for _, t in b.batches(5)]
    assert [t.tolist() for _, t in b.batches(5, start=2)] == full[2:]  # mid-epoch resume
    other_rank = NodeLoader(x, y, np.arange(37), 8, seed=1, rank=1)
    assert [t.tolist() for _, t in other_rank.batches(5)] != full


def test_node_loader_drop_last_cap_and_augment():
    x, y = _toy()
    loader = NodeLoader(x, y, np.arange(37), 10, 0, 0, drop_last=True)
    assert len(loader) == 3 and all(len(t) == 10 for _, t in loader)
    assert len(NodeLoader(x, y, np.arange(37), 10, 0, 0, max_batches=2)) == 2

    def jitter(batch, gen):
        return batch + torch.rand(batch.shape, generator=gen)

    aug = NodeLoader(x, y, np.arange(37), 10, 0, 0, augment=jitter)
    first = [xb for xb, _ in aug.batches(1)]
    again = [xb for xb, _ in aug.batches(1)]
    assert all(torch.equal(p, q) for p, q in zip(first, again, strict=True))
    assert torch.equal(next(aug.batches(1, start=3))[0], first[3])


def test_node_loader_validates_input():
    x, y = _toy()
    with pytest.raises(DataError, match="empty shard"):
        NodeLoader(x, y, np.array([], dtype=int), 4, 0, 0)
    with pytest.raises(DataError, match="indices"):
        NodeLoader(x, y, np.array([40]), 4, 0, 0)
    with pytest.raises(DataError, match="float32"):
        NodeLoader(x.double(), y, np.arange(3), 4, 0, 0)


def test_cifar_reader_refuses_a_pickle_that_would_run_code(tmp_path):
    """The batch reader builds containers and arrays only; anything else is an error."""
    import os

    from choco.data import DataError
    from choco.data.images import read_cifar_batch

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned > " + str(tmp_path / "pwned"),))

    path = tmp_path / "data_batch_1"
    with open(path, "wb") as f:
        pickle.dump({b"data": Evil(), b"labels": [0]}, f)
    with pytest.raises(DataError, match="not a CIFAR-10 python batch"):
        read_cifar_batch(path)
    assert not (tmp_path / "pwned").exists()
