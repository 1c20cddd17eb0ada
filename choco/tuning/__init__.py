"""Choosing the consensus step γ: a consensus-only tuner on the real topology.

The theoretical step of CHOCO-Gossip (arXiv:1902.00340, Thm 2),
``γ* = ρ²δ / (16ρ + ρ² + 4β² + 2ρβ² − 8ρδ)``, is 10–1000× smaller than the values tuned in
practice (0.45 for sign on a ring of 8, 0.0375 for top-1%; docs/gamma.md). Like the
authors' (broken) tuner, :func:`tune_gamma` simulates CHOCO-Gossip alone, with the real
mixing matrix ``W`` (spectral gap ρ) and the real compressor (quality δ), on Gaussian
vectors, for each γ on a log grid, and keeps the γ with the smallest final
``Σ_i ||x_i − x̄||² + ||x_i − x̂_i||²``. Both ρ and δ thus enter through the simulation, not
through a formula. It runs in one process, deterministically, in a few seconds.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

from ..comm.local import LocalNetwork
from ..compress import make_compressor
from ..compress.base import Compressor
from ..errors import GossipError
from ..gossip import ChocoGossip, lockstep
from ..timevarying import ScheduleLike, schedule_residual

__all__ = ["consensus_residual", "theoretical_gamma", "tune_gamma"]


def theoretical_gamma(rho: float, beta: float, delta: float) -> float:
    """``γ* = ρ²δ / (16ρ + ρ² + 4β² + 2ρβ² − 8ρδ)`` (arXiv:1902.00340, Thm 2)."""
    return rho**2 * delta / (16 * rho + rho**2 + 4 * beta**2 + 2 * rho * beta**2 - 8 * rho * delta)


def _compressor(compressor: Compressor | str) -> Compressor:
    return make_compressor(compressor) if isinstance(compressor, str) else compressor


def consensus_residual(W: np.ndarray | ScheduleLike, compressor: Compressor | str,
                       gamma: float, dim: int, steps: int, seed: int = 0) -> float:
    """``(1/n) Σ_i ||x_i − x̄||² + ||x_i − x̂_i||²`` after ``steps`` rounds from N(0, 1).

    ``compressor`` is the operator ``Q`` (or its spec string); one instance is passed for
    every node, and each node's gossip keeps whatever per-node coding state the compressor
    needs (only ``lgc`` has any). ``W`` may be a time-varying schedule
    (:func:`choco.timevarying.schedule_residual`).
    """
    if not isinstance(W, np.ndarray):  # a time-varying schedule: its rounds from round 0
        return schedule_residual(W, _compressor(compressor), gamma, dim, steps, seed)
    n = W.shape[0]
    q = _compressor(compressor)
    net = LocalNetwork.from_matrix(W)
    gen = torch.Generator().manual_seed(seed)
    xs = [torch.randn(dim, generator=gen) for _ in range(n)]
    gossips = [ChocoGossip(c, W[c.rank], q, gamma, seed) for c in net.comms]
    lockstep(gossips, xs, steps)
    if steps == 0:  # nothing compressed yet: x̂ is still its zero start
        X = torch.stack(xs)
        return float(((X - X.mean(0)) ** 2).sum() + (X**2).sum()) / n
    X = torch.stack(xs)
    hats = [g.state.x_hat for g in gossips if g.state is not None]
    if len(hats) != n:  # lockstep starts every node's state in its first round
        raise GossipError(f"{n - len(hats)} of {n} nodes have no gossip state after {steps} "
                          "rounds")
    X_hat = torch.stack(hats)
    value = float(((X - X.mean(0)) ** 2).sum() + ((X - X_hat) ** 2).sum()) / n
    return value if math.isfinite(value) else float("inf")


def tune_gamma(W: np.ndarray | ScheduleLike, compressor: Compressor | str, dim: int = 1000,
               steps: int = 300, grid: int = 13, seed: int = 0,
               share: tuple[int, int, Callable] | None = None,
               ) -> tuple[float, dict[float, float]]:
    """Best γ in ``logspace(-3, 0, grid)`` for consensus with ``compressor`` on ``W``.

    ``compressor`` is a :class:`~choco.compress.Compressor` (a spec string is parsed once);
    ``W`` is the ``n × n`` mixing matrix (``topologies.parse_topology(...).W``), or a
    time-varying schedule (``topologies.parse_topology("onepeer:16")``): γ is then chosen on
    the schedule's rounds from round 0, without its global averages.

    Returns ``(gamma, {gamma: residual})``. Residuals below ``1e-9`` of the starting one
    (``2 n dim``: float32 round-off) count as ties, and ties go to the larger γ.
    ``share = (rank, size, allgather)`` splits the grid over ranks (rank ``r`` simulates
    γ_k for k ≡ r mod size) and merges the scores with ``allgather(list) -> list of lists``;
    every rank returns the same answer.
    """
    gammas = [float(g) for g in np.logspace(-3, 0, grid)]
    rank, size, allgather = share if share is not None else (0, 1, lambda v: [v])
    q = _compressor(compressor)
    mine = [(k, consensus_residual(W, q, gammas[k], dim, steps, seed))
            for k in range(rank, grid, size)]
    scores = {gammas[k]: value for part in allgather(mine) for k, value in part}
    floor = 1e-9 * 2 * (W.shape[0] if isinstance(W, np.ndarray) else W.n) * dim
    best = min(gammas, key=lambda g: (max(scores[g], floor), -g))
    return best, scores
