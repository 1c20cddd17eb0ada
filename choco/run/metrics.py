"""Network-wide metrics of a training run, computed with small collectives.

* consensus distance ``Ξ = (1/n) Σ_i ||x_i − x̄||²`` (arXiv:1907.09356, §4),
* the network-average model ``x̄`` (parameters and BatchNorm buffers), tested on the test
  set split across nodes,
* bytes on the wire per node, and a JSONL writer that flushes each row.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..comm.base import Communicator
from .files import atomic_write_text


def network_mean(comm: Communicator, x: torch.Tensor) -> torch.Tensor:
    """``x̄ = (1/n) Σ_i x_i`` on every node (rank-ordered sum in the local backend)."""
    total = comm.allreduce(x.detach().cpu().numpy())
    return torch.from_numpy(np.asarray(total) / comm.size).to(x)


def consensus_distance(comm: Communicator, x: torch.Tensor, x_bar: torch.Tensor) -> float:
    """``(1/n) Σ_i ||x_i − x̄||²``."""
    local = float(((x - x_bar) ** 2).sum())
    return float(comm.allreduce(np.array([local]))[0]) / comm.size


def mean_scalars(comm: Communicator, values: list[float]) -> list[float]:
    """Mean over nodes of each scalar."""
    total = comm.allreduce(np.asarray(values, dtype=np.float64))
    return [float(v) / comm.size for v in total]


def average_model(comm: Communicator, model: nn.Module) -> nn.Module:
    """A copy of ``model`` holding the network average of every parameter and float buffer.

    Integer buffers (BatchNorm's ``num_batches_tracked``) are copied from this node.
    """
    state = model.state_dict()
    floats = [k for k, v in state.items() if v.is_floating_point()]
    flat = torch.cat([state[k].detach().reshape(-1).double().cpu() for k in floats])
    mean = network_mean(comm, flat)
    averaged = copy.deepcopy(model)
    new_state = {}
    offset = 0
    for k, v in state.items():
        if k in floats:
            n = v.numel()
            new_state[k] = mean[offset : offset + n].view_as(v).to(v)
            offset += n
        else:
            new_state[k] = v
    averaged.load_state_dict(new_state)
    return averaged


class JsonlWriter:
    """Append one JSON object per line, flushed, so a crash loses at most the last row."""

    def __init__(self, path: Path, keep_epochs_upto: int | None = None) -> None:
        self.path = path
        if keep_epochs_upto is not None and path.exists():
            rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
            kept = [r for r in rows if r.get("epoch", 0) <= keep_epochs_upto]
            atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in kept))
        elif keep_epochs_upto is None:
            path.write_text("")

    def write(self, row: dict[str, Any]) -> None:
        with self.path.open("a") as fh:
            fh.write(json.dumps(row) + "\n")
            fh.flush()
