"""What every node of a training run shares: the resolved plan, optimizer and LR schedule.

:func:`make_plan` validates the whole configuration before anything runs (topology, data,
model, compressor, γ) and computes everything that must agree across ranks without
communication: the data partition, the steps per epoch (the minimum over nodes: every gossip
round is a collective exchange) and the initial model (seeded, then broadcast anyway).
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass, field

import torch
from torch import nn

from .baselines import DCDGossip, ECDGossip, ExactGossip, NoGossip
from .cli import UsageError
from .comm.base import Communicator
from .compress import CompressionError, PerTensor, make_compressor
from .compress.base import Compressor
from .config import TrainConfig
from .gossip import ChocoGossip
from .optim import AllReduceSGD, ChocoSGD

#: topology names that take the number of nodes as their only size argument
SIZED = ("ring", "star", "complete", "exponential", "torus")


@dataclass
class Plan:
    """The validated run, identical on every rank."""

    cfg: TrainConfig
    topology: object  # topologies.Topology
    data: object  # ClassificationData | LanguageModelData
    is_lm: bool
    steps_per_epoch: int
    batch_size: int
    init_state: dict
    gamma: float | None
    gamma_source: str
    lr_peaks: list[float]
    num_params: int
    num_tensors: int
    message_bytes: int
    loaders: list = field(default_factory=list)
    train_shards: list = field(default_factory=list)
    test_shards: list = field(default_factory=list)
    test_full: torch.Tensor | None = None

    def new_model(self) -> nn.Module:
        model = _build_model(self.cfg, self.data)
        model.load_state_dict(copy.deepcopy(self.init_state))
        return model


def _topology(cfg: TrainConfig, n: int | None):
    from topologies import TopologyError, parse_topology

    spec = cfg.topology.strip()
    if ":" not in spec and spec.lower() in SIZED:
        if n is None:
            raise UsageError(f"--topology {spec} needs a size: write {spec}:8, or pass "
                             "--nodes N (local) / launch with mpiexec -n N.")
        spec = f"{spec}:{n}"
    try:
        topo = parse_topology(spec, cfg.mixing)
    except TopologyError as exc:
        raise UsageError(str(exc)) from None
    if n is not None and topo.n != n:
        raise UsageError(f"--topology {spec} has {topo.n} nodes but {n} were asked for "
                         f"(--nodes or mpiexec -n); make them agree.")
    return topo


def _build_model(cfg: TrainConfig, data) -> nn.Module:
    from .models import ModelError, make_model

    info = data.info
    lm_model = cfg.model.lower() == "lstm"
    is_lm = not hasattr(data, "x_train")
    if lm_model != is_lm:
        raise UsageError(f"--model {cfg.model} does not fit --dataset {cfg.dataset}: use "
                         "lstm with wikitext2, and mlp/lenet/resnet* with image data.")
    extra = _model_args(cfg.model_args)
    try:
        if is_lm:
            return make_model(cfg.model, vocab_size=info.num_classes, **extra)
        return make_model(cfg.model, num_classes=info.num_classes, input_shape=info.input_shape,
                          **extra)
    except (ModelError, TypeError) as exc:
        raise UsageError(f"--model {cfg.model}: {exc}") from None


def _model_args(text: str) -> dict:
    """``"hidden_size=64,tie_weights=false"`` → ``{"hidden_size": 64, "tie_weights": False}``."""
    out: dict = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--model-args takes key=value pairs separated by commas, got "
                             f"{item!r}; e.g. hidden_size=200,num_layers=2.")
        v = value.strip()
        low = v.lower()
        if low in ("true", "false"):
            out[key.strip()] = low == "true"
            continue
        for cast in (int, float):
            try:
                out[key.strip()] = cast(v)
                break
            except ValueError:
                continue
        else:
            out[key.strip()] = v
    return out


def _compressor(cfg: TrainConfig, sizes: list[int]) -> Compressor:
    """The compressor of choco/dcd/ecd; unbiased (unscaled) for the DCD/ECD baselines.

    DCD/ECD-PSGD assume an unbiased ``C``; a biased compressor without an unbiased form
    (``sign``, ``topk``) is used as it is, as the CHOCO paper's Table 1 does for sign+norm
    and top-k, with a warning.
    """
    spec = cfg.compressor
    try:
        comp = make_compressor(spec)
        if cfg.algorithm in ("dcd", "ecd"):
            try:
                comp = make_compressor(spec, unbiased=True)
            except CompressionError:
                warnings.warn(f"{cfg.algorithm}: {spec} is biased; DCD/ECD-PSGD theory "
                              "assumes an unbiased compressor", stacklevel=2)
    except CompressionError as exc:
        raise UsageError(str(exc)) from None
    return PerTensor(comp, sizes) if cfg.per_tensor else comp


def _gamma(cfg: TrainConfig, topo, share) -> tuple[float | None, str]:
    if cfg.algorithm != "choco":
        return None, "unused"
    if cfg.gamma.strip().lower() == "auto":
        if cfg.compressor.strip().lower() == "identity":
            return 1.0, "auto: identity needs no damping"
        from .tuning import tune_gamma

        gamma, _ = tune_gamma(topo.W, cfg.compressor, dim=500, steps=200, seed=cfg.seed,
                              share=share)
        return gamma, "auto: consensus tuner (choco.tuning.tune_gamma, dim 500, 200 steps)"
    try:
        gamma = float(cfg.gamma)
    except ValueError:
        gamma = float("nan")
    if not 0.0 < gamma <= 1.0:
        raise UsageError(f"--gamma must be 'auto' or a number in (0, 1], got {cfg.gamma!r}; "
                         "try 0.5 for sign, 0.05 for topk:0.01.")
    return gamma, "given"


def _check_numbers(cfg: TrainConfig) -> None:
    checks = [(cfg.epochs >= 1, "--epochs must be >= 1", cfg.epochs),
              (cfg.batch_size >= 1, "--batch-size must be >= 1", cfg.batch_size),
              (cfg.lr > 0, "--lr must be > 0", cfg.lr),
              (0 <= cfg.momentum < 1, "--momentum must be in [0, 1)", cfg.momentum),
              (cfg.weight_decay >= 0, "--weight-decay must be >= 0", cfg.weight_decay),
              (cfg.warmup_epochs >= 0, "--warmup-epochs must be >= 0", cfg.warmup_epochs),
              (cfg.gossip_every >= 1, "--gossip-every must be >= 1", cfg.gossip_every),
              (cfg.checkpoint_every >= 0, "--checkpoint-every must be >= 0",
               cfg.checkpoint_every),
              (cfg.order in ("overlap", "sync"), "--order must be overlap or sync", cfg.order),
              (cfg.lr_scaling in ("none", "paper"), "--lr-scaling must be none or paper",
               cfg.lr_scaling)]
    for ok, requirement, value in checks:
        if not ok:
            raise UsageError(f"{requirement}, got {value!r}.")


def make_plan(cfg: TrainConfig, n: int | None, share=None) -> Plan:
    """Validate ``cfg`` and compute everything the nodes share.

    Only the γ tuner communicates, and only if ``share = (rank, size, allgather)`` is given
    (MPI: the γ grid is split over the ranks).
    """
    from .data import DataError, make_dataset

    _check_numbers(cfg)
    topo = _topology(cfg, n)
    n = topo.n
    try:
        data = make_dataset(cfg.dataset, cfg.data_dir or None)
    except DataError as exc:
        raise UsageError(str(exc)) from None
    torch.manual_seed(cfg.seed)
    model = _build_model(cfg, data)
    is_lm = not hasattr(data, "x_train")
    plan_parts = _lm_parts(cfg, data, n) if is_lm else _image_parts(cfg, data, n)
    groups = _param_groups(cfg, model)
    sizes = [p.numel() for g in groups for p in g["params"]]
    message_bytes = 0
    if cfg.algorithm in ("choco", "dcd", "ecd"):
        message_bytes = _compressor(cfg, sizes).nbytes(sum(sizes))
    elif cfg.algorithm == "exact":
        message_bytes = 16 + 4 * sum(sizes)
    gamma, source = _gamma(cfg, topo, share)
    base = cfg.base_batch_size or cfg.batch_size
    peaks = []
    for i in range(n):
        factor = 1.0
        if cfg.lr_scaling == "paper":
            group = n if cfg.algorithm == "allreduce" else len(topo.neighbors(i)) + 1
            factor = cfg.batch_size / base * group
        peaks.append(cfg.lr * factor)
    return Plan(cfg=cfg, topology=topo, data=data, is_lm=is_lm, batch_size=cfg.batch_size,
                init_state=copy.deepcopy(model.state_dict()), gamma=gamma, gamma_source=source,
                lr_peaks=peaks, num_params=sum(sizes), num_tensors=len(sizes),
                message_bytes=message_bytes, **plan_parts)


def _image_parts(cfg: TrainConfig, data, n: int) -> dict:
    from .data import DataError, NodeLoader, partition, steps_per_epoch

    try:
        shards = partition(data.y_train.numpy(), n, cfg.partition, cfg.seed)
        steps = steps_per_epoch(shards, cfg.batch_size)
        loaders = [NodeLoader(data.x_train, data.y_train, shards[r], cfg.batch_size,
                              cfg.seed, r, augment=data.augment, max_batches=steps)
                   for r in range(n)]
    except DataError as exc:
        raise UsageError(str(exc)) from None
    return {"steps_per_epoch": steps, "loaders": loaders}


def _lm_parts(cfg: TrainConfig, data, n: int) -> dict:
    from .data import batchify, lm_steps_per_epoch, shard_tokens

    steps = lm_steps_per_epoch(data.train.numel(), n, cfg.batch_size, cfg.bptt)
    if steps < 1:
        raise UsageError(f"the training text is too short for {n} nodes × batch "
                         f"{cfg.batch_size} × bptt {cfg.bptt}; lower them.")
    eval_bsz = 10
    return {"steps_per_epoch": steps,
            "train_shards": [batchify(shard_tokens(data.train, n, r), cfg.batch_size)
                             for r in range(n)],
            "test_shards": [batchify(shard_tokens(data.test, n, r), eval_bsz)
                            for r in range(n)],
            "test_full": batchify(data.test, eval_bsz)}


def _param_groups(cfg: TrainConfig, model: nn.Module) -> list[dict]:
    from .models import param_groups

    return param_groups(model, cfg.weight_decay)


def build_optimizer(plan: Plan, comm: Communicator, model: nn.Module):
    """The node's optimizer: local Nesterov SGD wrapped with the algorithm's communication."""
    cfg = plan.cfg
    groups = _param_groups(cfg, model)
    sgd = torch.optim.SGD(groups, lr=plan.lr_peaks[comm.rank], momentum=cfg.momentum,
                          nesterov=cfg.nesterov and cfg.momentum > 0)
    if cfg.algorithm == "allreduce":
        return AllReduceSGD(sgd, comm)
    row = plan.topology.W[comm.rank]
    sizes = [p.numel() for g in groups for p in g["params"]]
    if cfg.algorithm == "choco":
        averager = ChocoGossip(comm, row, _compressor(cfg, sizes), plan.gamma, cfg.seed)
    elif cfg.algorithm == "exact":
        averager = ExactGossip(comm, row)
    elif cfg.algorithm == "dcd":
        averager = DCDGossip(comm, row, _compressor(cfg, sizes), cfg.seed)
    elif cfg.algorithm == "ecd":
        averager = ECDGossip(comm, row, _compressor(cfg, sizes), cfg.seed)
    else:
        averager = NoGossip()
    return ChocoSGD(sgd, averager, order=cfg.order, gossip_every=cfg.gossip_every)


def lr_at(plan: Plan, rank: int, epoch: int, batch: int) -> float:
    """Per-node LR: linear warm-up from ``lr`` to the peak, then ÷10 at each milestone."""
    cfg = plan.cfg
    peak = plan.lr_peaks[rank]
    step = epoch * plan.steps_per_epoch + batch
    warm = cfg.warmup_epochs * plan.steps_per_epoch
    lr = cfg.lr + (peak - cfg.lr) * step / warm if step < warm else peak
    return lr * 0.1 ** sum(epoch >= m for m in cfg.lr_milestones)
