"""Image and vector classification sets: embedded ``digits``, ``synthetic`` blobs, CIFAR-10.

Nothing is downloaded: ``digits`` ships inside scikit-learn, ``synthetic`` is generated from
a seed, and CIFAR-10 is read from a local ``cifar-10-batches-py`` folder.
"""

from __future__ import annotations

import logging
import pickle
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

from .augment import RandomCropFlip
from .base import ClassificationData, DataError, DatasetInfo, require_files

log = logging.getLogger(__name__)

#: per-channel mean and std of the CIFAR-10 training images (the constants of the authors'
#: code, epfml/ChocoSGD ``prepare_data.py``; the std is the commonly copied 0.2023 variant)
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2023, 0.1994, 0.2010)
CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip
CIFAR10_TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR10_TEST_FILE = "test_batch"


def load_digits(seed: int = 0, test_size: int = 360) -> ClassificationData:
    """scikit-learn's embedded 8×8 digits (1797 images, 10 classes), split train/test.

    The split is stratified and fixed by ``seed`` (default: 1437 train / 360 test).
    Pixels (0..16) are divided by 16, so features lie in [0, 1]; shape ``(N, 1, 8, 8)``.
    """
    from sklearn.datasets import load_digits as sk_load_digits  # heavy: import lazily
    from sklearn.model_selection import train_test_split

    bunch = sk_load_digits()
    images = (bunch.images / 16.0).astype(np.float32)[:, None, :, :]
    labels = bunch.target.astype(np.int64)
    if not 10 <= test_size <= len(labels) - 10:
        raise DataError(f"digits test_size must be in [10, {len(labels) - 10}], got {test_size}")
    x_tr, x_te, y_tr, y_te = train_test_split(
        images, labels, test_size=test_size, stratify=labels, random_state=seed
    )
    info = DatasetInfo("digits", 10, (1, 8, 8), len(y_tr), len(y_te))
    return ClassificationData(
        info, torch.from_numpy(x_tr), torch.from_numpy(y_tr),
        torch.from_numpy(x_te), torch.from_numpy(y_te),
    )  # fmt: skip


def load_synthetic(
    seed: int = 0,
    num_classes: int = 4,
    dim: int = 16,
    num_train: int = 512,
    num_test: int = 128,
    separation: float = 3.0,
) -> ClassificationData:
    """Gaussian blobs: class ``c`` is ``N(mu_c, I)`` with ``mu_c ~ N(0, separation² I)``.

    Tiny and instant, for tests and smoke runs; fully determined by ``seed``.
    """
    if num_classes < 2 or dim < 1 or num_train < num_classes or num_test < 1:
        raise DataError(
            "synthetic needs num_classes >= 2, dim >= 1, num_train >= num_classes, num_test >= 1;"
            f" got {num_classes}, {dim}, {num_train}, {num_test}"
        )
    rng = np.random.default_rng(seed)
    centers = rng.normal(0.0, separation, size=(num_classes, dim))

    def sample(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = np.arange(n) % num_classes  # balanced classes
        rng.shuffle(y)
        x = centers[y] + rng.normal(size=(n, dim))
        return torch.from_numpy(x.astype(np.float32)), torch.from_numpy(y.astype(np.int64))

    x_tr, y_tr = sample(num_train)
    x_te, y_te = sample(num_test)
    info = DatasetInfo("synthetic", num_classes, (dim,), num_train, num_test)
    return ClassificationData(info, x_tr, y_tr, x_te, y_te)


def cifar10_folder(data_dir: str | Path) -> Path:
    """The ``cifar-10-batches-py`` folder under ``data_dir`` (or ``data_dir`` itself)."""
    root = Path(data_dir).expanduser()
    for folder in (root / "cifar-10-batches-py", root):
        if (folder / CIFAR10_TEST_FILE).is_file():
            return folder
    folder = root / "cifar-10-batches-py"
    require_files(
        folder, (*CIFAR10_TRAIN_FILES, CIFAR10_TEST_FILE), "cifar10",
        f"Extract cifar-10-python.tar.gz (https://www.cs.toronto.edu/~kriz/cifar.html) so that "
        f"{folder}/ holds data_batch_1..5 and test_batch, and pass its parent as --data-dir",
    )  # fmt: skip
    return folder


class _ArraysOnly(pickle.Unpickler):
    """Unpickles containers and numpy arrays only: a CIFAR batch cannot run code."""

    ALLOWED: ClassVar[frozenset[tuple[str, str]]] = frozenset({
        ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"), ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"), ("_codecs", "encode")})

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing {module}.{name}: a CIFAR batch holds only "
                                         "a dict of bytes, lists and numpy arrays")
        return super().find_class(module, name)


def read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR python batch: ``uint8`` images ``(N, 3, 32, 32)`` and ``int64`` labels.

    The file is a pickled dict with ``b'data'`` (``uint8``, ``(N, 3072)``: 1024 red, then
    1024 green, then 1024 blue values, each plane row-major) and ``b'labels'``. The file is
    read with an unpickler that builds only containers and numpy arrays (never runs code).
    """
    with open(path, "rb") as f:
        try:
            batch = _ArraysOnly(f, encoding="bytes").load()
        except (pickle.UnpicklingError, EOFError, ValueError) as exc:
            raise DataError(f"{path} is not a CIFAR-10 python batch ({exc}); use the files "
                            "of cifar-10-python.tar.gz.") from None
    if not isinstance(batch, dict):
        raise DataError(f"{path}: expected a pickled dict, got {type(batch).__name__}")
    batch = {k.decode() if isinstance(k, bytes) else k: v for k, v in batch.items()}
    if "data" not in batch or "labels" not in batch:
        raise DataError(f"{path}: needs keys b'data' and b'labels', found {sorted(batch)}")
    data = np.asarray(batch["data"])
    labels = np.asarray(batch["labels"], dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise DataError(
            f"{path}: b'data' must be uint8 of shape (N, 3072), got {data.dtype} {data.shape}"
        )
    if labels.shape != (data.shape[0],) or labels.min(initial=0) < 0 or labels.max(initial=0) > 9:
        raise DataError(f"{path}: b'labels' must be {data.shape[0]} integers in [0, 9]")
    return data.reshape(-1, 3, 32, 32), labels


def _normalize(images: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(images).float().div_(255.0)
    mean = torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR10_STD).view(1, 3, 1, 1)
    return x.sub_(mean).div_(std)


def load_cifar10(data_dir: str | Path, augment: bool = True) -> ClassificationData:
    """CIFAR-10 from the python-pickle batches, normalized per channel.

    ``x = (pixel / 255 - mean) / std`` with :data:`CIFAR10_MEAN`, :data:`CIFAR10_STD`;
    training batches get :class:`~choco.data.augment.RandomCropFlip` (4-pixel padding with
    black, flip) when ``augment`` is true, as in He et al. (arXiv:1512.03385) and the
    CHOCO-SGD experiments (arXiv:1907.09356). Float32 features take about 600 MB.

    Raises
    ------
    DataError
        If ``data_dir/cifar-10-batches-py/`` lacks any of ``data_batch_1..5``, ``test_batch``.
    """
    folder = cifar10_folder(data_dir)
    require_files(
        folder, (*CIFAR10_TRAIN_FILES, CIFAR10_TEST_FILE), "cifar10",
        "Put all five data_batch_* files and test_batch of cifar-10-python.tar.gz there",
    )  # fmt: skip
    parts = [read_cifar_batch(folder / name) for name in CIFAR10_TRAIN_FILES]
    x_tr = _normalize(np.concatenate([p[0] for p in parts]))
    y_tr = torch.from_numpy(np.concatenate([p[1] for p in parts]))
    test_images, test_labels = read_cifar_batch(folder / CIFAR10_TEST_FILE)
    x_te, y_te = _normalize(test_images), torch.from_numpy(test_labels)
    log.info("cifar10: %d train, %d test images from %s", len(y_tr), len(y_te), folder)
    black = [-m / s for m, s in zip(CIFAR10_MEAN, CIFAR10_STD, strict=True)]
    info = DatasetInfo("cifar10", 10, (3, 32, 32), len(y_tr), len(y_te))
    transform = RandomCropFlip(padding=4, fill=black) if augment else None
    return ClassificationData(info, x_tr, y_tr, x_te, y_te, augment=transform)
