"""Models for the choco runner, built by name; plus weight-decay parameter groups.

>>> import torch
>>> from choco.models import make_model, count_parameters
>>> _ = torch.manual_seed(0)
>>> count_parameters(make_model("resnet20"))
(272474, 65)
>>> count_parameters(make_model("resnet20", shortcut="A"))
(269722, 59)

Classifiers take ``num_classes`` and ``input_shape`` (from :class:`~choco.data.DatasetInfo`);
``lstm`` takes ``vocab_size``. Initialization is deterministic under ``torch.manual_seed``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from functools import partial
from typing import Any

from torch import nn

from .errors import ModelError
from .evaluate import eval_mode, evaluate_classifier, evaluate_lm
from .lstm import LSTMLanguageModel, detach_hidden
from .resnet import CifarResNet
from .small import MLP, LeNet

__all__ = [
    "MLP",
    "CifarResNet",
    "LSTMLanguageModel",
    "LeNet",
    "ModelError",
    "available_models",
    "count_parameters",
    "detach_hidden",
    "eval_mode",
    "evaluate_classifier",
    "evaluate_lm",
    "make_model",
    "no_weight_decay_params",
    "param_groups",
]

#: name -> factory; keyword arguments go to the factory
REGISTRY: dict[str, Callable[..., nn.Module]] = {
    "mlp": MLP,
    "lenet": LeNet,
    "resnet8": partial(CifarResNet, 8),
    "resnet20": partial(CifarResNet, 20),
    "resnet32": partial(CifarResNet, 32),
    "resnet56": partial(CifarResNet, 56),
    "lstm": LSTMLanguageModel,
}

#: normalization layers whose affine parameters get no weight decay
NORM_TYPES = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm)


def available_models() -> list[str]:
    """Registered model names."""
    return sorted(REGISTRY)


def _accepted(factory: Callable[..., nn.Module]) -> list[str]:
    params = inspect.signature(factory).parameters.values()
    return [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]


def make_model(name: str, **kwargs: Any) -> nn.Module:
    """Build a registered model, e.g. ``make_model("mlp", input_shape=(1, 8, 8))``.

    Raises
    ------
    ModelError
        Unknown name (lists the valid ones), an argument the model does not take (lists
        the ones it does), or invalid sizes.
    """
    key = name.strip().lower().replace("-", "")
    if key not in REGISTRY:
        raise ModelError(f"unknown model {name!r}; valid names: {', '.join(available_models())}")
    factory = REGISTRY[key]
    accepted = _accepted(factory)
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise ModelError(
            f"model {key} takes no argument {', '.join(unknown)}; it accepts: {', '.join(accepted)}"
        )
    if key == "lstm" and "vocab_size" not in kwargs:
        raise ModelError("model lstm needs vocab_size=len(data.vocab)")
    return factory(**kwargs)


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """``(number of parameters, number of parameter tensors)``; tied tensors count once."""
    params = list(model.parameters())
    return sum(p.numel() for p in params), len(params)


def no_weight_decay_params(model: nn.Module, bias: bool = True) -> list[str]:
    """Names of parameters exempt from weight decay: normalization layers, and biases.

    CHOCO-SGD applies weight decay 1e-4 but not to BatchNorm (arXiv:1907.09356, §5). The
    authors' code exempts parameters whose name contains ``"bn"``, which misses the
    BatchNorm of the 1×1 shortcuts; here the module type decides. ``bias=False`` keeps
    decay on the biases of linear/conv layers (as the authors' code does).
    """
    names = []
    for module_name, module in model.named_modules():
        is_norm = isinstance(module, NORM_TYPES)
        for param_name, _ in module.named_parameters(recurse=False):
            if is_norm or (bias and param_name == "bias"):
                names.append(f"{module_name}.{param_name}" if module_name else param_name)
    return names


def param_groups(model: nn.Module, weight_decay: float, bias: bool = True) -> list[dict[str, Any]]:
    """Two optimizer groups: ``weight_decay`` for weights, 0 for :func:`no_weight_decay_params`.

    >>> import torch
    >>> model = make_model("resnet8")
    >>> opt = torch.optim.SGD(param_groups(model, 1e-4), lr=0.1, momentum=0.9, nesterov=True)
    """
    if weight_decay < 0:
        raise ModelError(f"weight_decay must be >= 0, got {weight_decay}")
    exempt = set(no_weight_decay_params(model, bias))
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for name, param in model.named_parameters():
        (no_decay if name in exempt else decay).append(param)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
