"""Shared parts of the outer-step tests (tests/test_outer.py, tests/test_outer_schedules.py).

Every node fits its own least-squares problem with a linear model in float64; the library
run drives ``ChocoSGD(..., outer=...)`` on every node of an in-process network.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence

import numpy as np
import torch

from choco.comm import LocalNetwork
from choco.optim import ChocoSGD

BATCH, LR, MU = 8, 0.05, 0.9

Batches = list[list[tuple[np.ndarray, np.ndarray]]]


def node_data(n: int, steps: int, dim: int, seed: int = 0, batch: int = BATCH) -> Batches:
    """Per node, one (X, y) batch per step; node i's optimum is shifted by 2i."""
    rng = np.random.default_rng(seed)
    data = []
    for i in range(n):
        w_true = rng.normal(size=dim) + 2.0 * i
        batches = []
        for _ in range(steps):
            X = rng.normal(size=(batch, dim))
            batches.append((X, X @ w_true + 0.1 * rng.normal(size=batch)))
        data.append(batches)
    return data


def grad(w: np.ndarray, X: np.ndarray, y: np.ndarray) -> np.ndarray:
    """∇ of ½ mean (Xw − y)²."""
    return X.T @ (X @ w - y) / len(y)


def inner_steps(x: list[np.ndarray], m: list, data: Batches, H: int, r: int) -> None:
    """Outer round ``r``'s ``H`` inner steps on every node, in place: torch's
    ``SGD(lr=LR, momentum=MU, nesterov=True)`` (``m`` the momentum buffers, kept across
    rounds; ``m = g`` the first time)."""
    for i in range(len(x)):
        for h in range(H):
            g = grad(x[i], *data[i][r * H + h])
            m[i] = g.copy() if m[i] is None else MU * m[i] + g
            x[i] = x[i] - LR * (g + MU * m[i])


def nesterov(lr: float = 0.7, mu: float = 0.9) -> Callable:
    return lambda p: torch.optim.SGD(p, lr=lr, momentum=mu, nesterov=True)


class Linear(torch.nn.Module):
    def __init__(self, w0: np.ndarray) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor(w0, dtype=torch.float64))

    def loss(self, X: np.ndarray, y: np.ndarray) -> torch.Tensor:
        r = torch.from_numpy(X) @ self.w - torch.from_numpy(y)
        return 0.5 * (r * r).mean()


def run_nodes(neighbors: Sequence[Sequence[int]], make_averager: Callable, w0: np.ndarray,
              data: Batches, H: int, steps: int, outer: Callable | None, order: str = "sync",
              momentum: float = MU, use_nesterov: bool = True, momentum_mode: str = "local",
              save_at: int | None = None, resume_from: list | None = None):
    """Every node through ``steps`` local steps of ``ChocoSGD`` (inner Nesterov SGD, the
    averager ``make_averager(comm)``); returns the final models, the final optimizer states
    and (with ``save_at``) each node's state serialized after that many steps."""
    net = LocalNetwork([list(nb) for nb in neighbors])
    saved: list[bytes | None] = [None] * len(neighbors)

    def node(comm):
        model = Linear(w0)
        inner = torch.optim.SGD(model.parameters(), lr=LR, momentum=momentum,
                                nesterov=use_nesterov)
        opt = ChocoSGD(inner, make_averager(comm), order=order, gossip_every=H, outer=outer,
                       momentum_mode=momentum_mode)
        start = 0
        if resume_from is not None:
            state = torch.load(io.BytesIO(resume_from[comm.rank]), weights_only=True)
            with torch.no_grad():
                model.w.copy_(state["w"])
            opt.load_state_dict(state["opt"])
            start = state["step"]
        for t in range(start, steps):
            opt.zero_grad()
            model.loss(*data[comm.rank][t]).backward()
            opt.step()
            if save_at is not None and t + 1 == save_at:
                buf = io.BytesIO()
                torch.save({"w": model.w.detach().clone(), "opt": opt.state_dict(),
                            "step": t + 1}, buf)
                saved[comm.rank] = buf.getvalue()
        opt.flush()
        return model.w.detach().clone(), opt.state_dict()

    results = net.run(node)
    return [r[0] for r in results], [r[1] for r in results], saved
