"""CIFAR ResNets (He et al., arXiv:1512.03385, §4.2) as used by CHOCO-SGD (arXiv:1907.09356).

Depth ``6m + 2``: a 3×3 conv with 16 channels, three stages of ``m`` basic blocks with
16/32/64 channels (stride 2 at the start of stages 2 and 3), global average pooling and a
linear classifier. ``resnet20`` has m = 3, ``resnet8`` m = 1.

Shortcuts when the shape changes (two places):

``"B"`` (default)
    a strided 1×1 convolution followed by BatchNorm: He et al.'s option B, and what the
    authors' code (epfml/ChocoSGD ``pcode/models/resnet.py``) trains. ResNet-20 has
    272,474 parameters in 65 tensors; ResNet-8 has 78,042 (the paper's "78K").
``"A"``
    parameter-free: subsample by 2 and zero-pad the new channels (He et al.'s option A
    for CIFAR). ResNet-20 has 269,722 parameters in 59 tensors; ResNet-8 has 75,290.

Initialization as in the authors' code: conv weights ``N(0, 2 / (k² · out_channels))``
(Kaiming, fan-out), BatchNorm ``γ = 1, β = 0``, PyTorch's default for the classifier.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .errors import ModelError

SHORTCUTS = ("A", "B")


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=False)


class PadShortcut(nn.Module):
    """Option A: ``x[:, :, ::stride, ::stride]`` with ``cout − cin`` zero channels appended."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.extra, self.stride = cout - cin, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Subsample spatially and zero-pad channels."""
        return F.pad(x[:, :, :: self.stride, :: self.stride], (0, 0, 0, 0, 0, self.extra))


class BasicBlock(nn.Module):
    """``relu(bn(conv(relu(bn(conv(x))))) + shortcut(x))`` with 3×3 convolutions."""

    def __init__(self, cin: int, cout: int, stride: int = 1, shortcut: str = "B") -> None:
        super().__init__()
        self.conv1 = _conv3x3(cin, cout, stride)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = _conv3x3(cout, cout)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            if shortcut == "A":
                self.shortcut = PadShortcut(cin, cout, stride)
            else:
                self.shortcut = nn.Sequential(
                    nn.Conv2d(cin, cout, kernel_size=1, stride=stride, bias=False),
                    nn.BatchNorm2d(cout),
                )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """One residual block."""
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet-(6m+2) for 32×32 inputs (any size works: pooling is global).

    Parameters
    ----------
    depth
        ``6m + 2`` with ``m >= 1``: 8, 14, 20, 32, 44, 56, 110.
    num_classes
        Output logits.
    input_shape
        ``(C, H, W)``; only ``C`` is used.
    shortcut
        ``"B"`` (1×1 conv + BN, the authors' code) or ``"A"`` (zero padding).
    """

    def __init__(
        self,
        depth: int = 20,
        num_classes: int = 10,
        input_shape: Sequence[int] = (3, 32, 32),
        shortcut: str = "B",
    ) -> None:
        super().__init__()
        if depth < 8 or (depth - 2) % 6:
            raise ModelError(
                f"resnet depth must be 6m + 2 with m >= 1 (8, 14, 20, ...), got {depth}"
            )
        shortcut = shortcut.upper()
        if shortcut not in SHORTCUTS:
            raise ModelError(f"shortcut must be one of {SHORTCUTS}, got {shortcut!r}")
        if len(input_shape) != 3:
            raise ModelError(f"resnet needs input_shape (C, H, W), got {tuple(input_shape)}")
        blocks = (depth - 2) // 6
        self.conv1 = _conv3x3(input_shape[0], 16)
        self.bn1 = nn.BatchNorm2d(16)
        stages: list[nn.Module] = []
        cin = 16
        for cout, stride in ((16, 1), (32, 2), (64, 2)):
            layers = [BasicBlock(cin, cout, stride, shortcut)]
            layers += [BasicBlock(cout, cout, 1, shortcut) for _ in range(blocks - 1)]
            stages.append(nn.Sequential(*layers))
            cin = cout
        self.layer1, self.layer2, self.layer3 = stages
        self.fc = nn.Linear(64, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of shape ``(B, num_classes)``."""
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.fc(out)
