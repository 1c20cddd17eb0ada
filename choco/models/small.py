"""Small classifiers for the embedded data sets: an MLP and a LeNet-style CNN."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from .errors import ModelError


class MLP(nn.Module):
    """Flatten, then ``Linear → ReLU`` per hidden width, then a linear classifier.

    The default ``mlp`` for ``digits`` is 64 → 128 → 10 (9,610 parameters, 4 tensors).
    PyTorch's default ``nn.Linear`` initialization; deterministic under ``torch.manual_seed``.
    """

    def __init__(
        self,
        input_shape: Sequence[int] = (1, 8, 8),
        num_classes: int = 10,
        hidden: Sequence[int] | int = (128,),
    ) -> None:
        super().__init__()
        widths = [hidden] if isinstance(hidden, int) else list(hidden)
        if num_classes < 2 or any(w < 1 for w in widths) or math.prod(input_shape) < 1:
            raise ModelError(
                f"mlp needs num_classes >= 2, hidden widths >= 1 and a non-empty input; got "
                f"num_classes={num_classes}, hidden={widths}, input_shape={tuple(input_shape)}"
            )
        layers: list[nn.Module] = [nn.Flatten()]
        width = math.prod(input_shape)
        for w in widths:
            layers += [nn.Linear(width, w), nn.ReLU()]
            width = w
        layers.append(nn.Linear(width, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of shape ``(B, num_classes)``."""
        return self.net(x)


class LeNet(nn.Module):
    """LeNet-5-style CNN: two ``conv5×5 (same) → ReLU → maxpool2`` stages, FC 120 → 84.

    Works on any input whose height and width are multiples of 4 (8×8 digits: 2×2×16
    features before the classifier; 32×32 CIFAR: 8×8×16).
    """

    def __init__(self, input_shape: Sequence[int] = (1, 8, 8), num_classes: int = 10) -> None:
        super().__init__()
        if len(input_shape) != 3 or input_shape[1] % 4 or input_shape[2] % 4:
            raise ModelError(
                f"lenet needs input_shape (C, H, W) with H and W multiples of 4, got "
                f"{tuple(input_shape)}"
            )
        c, h, w = input_shape
        self.features = nn.Sequential(
            nn.Conv2d(c, 6, 5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
        )
        self.classifier = nn.Sequential(
            nn.Linear(16 * (h // 4) * (w // 4), 120),
            nn.ReLU(),
            nn.Linear(120, 84),
            nn.ReLU(),
            nn.Linear(84, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of shape ``(B, num_classes)``."""
        return self.classifier(self.features(x))
