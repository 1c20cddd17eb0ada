r"""Mixing matrices: weight rules, spectral gap, and validation.

Notation follows CHOCO-SGD (Koloskova et al., arXiv:1907.09356, ICLR 2020): a mixing
matrix :math:`W \in [0, 1]^{n \times n}` is symmetric (:math:`W = W^T`), doubly stochastic
(:math:`W\mathbf{1} = \mathbf{1}`, :math:`\mathbf{1}^T W = \mathbf{1}^T`) and
non-negative, with :math:`w_{ij} > 0` only on edges of the communication graph and on the
diagonal. Its eigenvalues :math:`1 = \lambda_1 \ge \lambda_2 \ge \dots \ge \lambda_n`
give the spectral gap :math:`\rho = 1 - \max_{k \ge 2} |\lambda_k|` and
:math:`\beta = \|I - W\|_2`. (CHOCO-Gossip, arXiv:1902.00340, calls the gap
:math:`\delta`; this package uses :math:`\rho` throughout.)
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from pathlib import Path

import networkx as nx
import numpy as np
from numpy.typing import ArrayLike, NDArray

from ._validate import canonical_graph, require_memory, unreachable_node
from .errors import SpectralGapWarning, TopologyError

__all__ = [
    "MIXING_RULES",
    "beta",
    "check_mixing_matrix",
    "load_mixing_matrix",
    "mixing_matrix",
    "spectral_gap",
    "support_graph",
]

# Diagonal entries this close to 0 are rounding left by 1 - sum_j w_ij; they are set to 0.0
# so that the max-degree rule gives exact zeros (5 of them on `social`).
_ROUNDING = 1e-12


def _metropolis(deg_i: int, deg_j: int) -> float:
    return 1.0 / (1 + max(deg_i, deg_j))


def _maxdegree(deg_i: int, deg_j: int) -> float:
    return 1.0 / max(deg_i, deg_j)


def _uniform(deg_i: int, deg_j: int) -> float:
    return 1.0 / (deg_i + 1)  # deg_i == deg_j: the graph was checked to be regular


_RULES: dict[str, Callable[[int, int], float]] = {
    "metropolis": _metropolis,
    "maxdegree": _maxdegree,
    "uniform": _uniform,
}

MIXING_RULES: tuple[str, ...] = tuple(_RULES)
"""Names accepted by :func:`mixing_matrix` (``"metropolis"`` is the default)."""


def mixing_matrix(G: nx.Graph, rule: str = "metropolis") -> NDArray[np.float64]:
    r"""Symmetric doubly stochastic mixing matrix of a graph.

    For an edge :math:`(i, j)` with degrees :math:`d_i, d_j`:

    - ``"metropolis"`` (Metropolis-Hastings, default):
      :math:`w_{ij} = 1 / (1 + \max(d_i, d_j))`; valid on every graph.
    - ``"maxdegree"``: :math:`w_{ij} = 1 / \max(d_i, d_j)`, the rule of CHOCO-SGD's
      social-graph experiment (arXiv:1907.09356, Table 3). On a regular graph the diagonal
      is 0; on a bipartite regular graph (even ring) this gives :math:`\lambda_n = -1`,
      :math:`\rho = 0`, and gossip oscillates.
    - ``"uniform"``: :math:`w_{ij} = 1 / (d + 1)` on a :math:`d`-regular graph only (ring
      1/3, torus 1/5, complete 1/n).

    and :math:`w_{ii} = 1 - \sum_{j \ne i} w_{ij}`, :math:`w_{ij} = 0` off the edges.

    Parameters
    ----------
    G
        Undirected simple graph with nodes ``0..n-1`` (node ``r`` is rank ``r``).
    rule
        One of :data:`MIXING_RULES`.

    Returns
    -------
    numpy.ndarray
        ``float64`` array of shape ``(n, n)``; ``[[1.0]]`` for a single node. Not yet
        validated: pass it to :func:`check_mixing_matrix` (e.g. a disconnected graph gives a
        block-diagonal matrix).

    Raises
    ------
    TopologyError
        Unknown rule, ``uniform`` on a non-regular graph, or a graph that is directed, a
        multigraph, has self-loops, or whose nodes are not ``0..n-1``.

    Examples
    --------
    >>> from topologies.graphs import ring
    >>> mixing_matrix(ring(3)).round(3).tolist()[0]
    [0.333, 0.333, 0.333]
    """
    if rule not in _RULES:
        raise TopologyError(
            f"mixing rule must be one of {', '.join(MIXING_RULES)}, got {rule!r}; "
            "use metropolis (valid on every graph)"
        )
    n = _require_rank_graph(G)
    degree = dict(G.degree)
    if rule == "uniform" and len(set(degree.values())) > 1:
        low = min(degree, key=degree.__getitem__)
        high = max(degree, key=degree.__getitem__)
        raise TopologyError(
            "mixing rule 'uniform' (1/(deg+1)) needs a regular graph to be doubly stochastic, "
            f"got degrees from {degree[low]} (node {low}) to {degree[high]} (node {high}); "
            "use 'metropolis' instead"
        )
    weight = _RULES[rule]
    require_memory(f"mixing_matrix(G) of {n:,} nodes", n, lambda k: 0)
    W = np.zeros((n, n), dtype=np.float64)
    for i, j in G.edges:
        W[i, j] = W[j, i] = weight(degree[i], degree[j])
    diagonal = 1.0 - W.sum(axis=1)
    diagonal[np.abs(diagonal) < _ROUNDING] = 0.0
    W[np.diag_indices(n)] = diagonal
    return W


def _require_rank_graph(G: nx.Graph) -> int:
    """Check that ``G`` is a simple undirected graph on ``0..n-1``; return ``n``."""
    if not isinstance(G, nx.Graph) or G.is_directed() or G.is_multigraph():
        raise TopologyError(
            f"mixing needs an undirected simple networkx.Graph, got {type(G).__name__}; "
            "convert with networkx.Graph(G)"
        )
    n = int(G.number_of_nodes())
    if n == 0 or set(G) != set(range(n)):
        raise TopologyError(
            f"mixing needs the nodes 0..n-1 (node r = rank r), got {sorted(G, key=str)[:5]!r}"
            f"{'...' if n > 5 else ''} ({n} nodes); relabel with "
            "networkx.convert_node_labels_to_integers(G)"
        )
    loops = list(nx.selfloop_edges(G))
    if loops:
        raise TopologyError(
            f"mixing needs a graph without self-loops, got {loops[0]!r} "
            f"({len(loops)} in total); remove them (w_ii comes from the rule)"
        )
    return n


def _as_square(W: ArrayLike, what: str) -> NDArray[np.float64]:
    """Return ``W`` as a finite float64 square matrix, or raise."""
    try:
        matrix = np.array(W, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise TopologyError(
            f"{what} needs a real numeric n x n matrix, got {type(W).__name__} ({exc})"
        ) from exc
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1] or matrix.shape[0] == 0:
        raise TopologyError(
            f"{what} needs a square n x n matrix with n >= 1, got shape {matrix.shape}; "
            "W must have one row and one column per rank"
        )
    bad = np.argwhere(~np.isfinite(matrix))
    if bad.size:
        i, j = bad[0]
        raise TopologyError(
            f"{what} needs finite entries, got W[{i},{j}] = {matrix[i, j]!r}; "
            "rebuild W with a mixing rule"
        )
    return matrix


def spectral_gap(W: ArrayLike) -> float:
    r"""Spectral gap :math:`\rho = 1 - \max_{k \ge 2} |\lambda_k(W)|` of a symmetric matrix.

    Eigenvalues are sorted :math:`\lambda_1 \ge \dots \ge \lambda_n` (``eigvalsh``); for a
    mixing matrix :math:`\lambda_1 = 1`. CHOCO-Gossip converges linearly at a rate
    :math:`O(\rho^2 \delta)` (CHOCO-Gossip, arXiv:1902.00340; arXiv:1907.09356),
    so small gaps (long rings) need more steps. Values within 1e-12 of 0 are returned as 0.

    Returns
    -------
    float
        1.0 for a single node (nothing to mix).

    Examples
    --------
    >>> round(spectral_gap(np.full((4, 4), 0.25)), 12)
    1.0
    """
    matrix = _as_square(W, "spectral_gap(W)")
    n = matrix.shape[0]
    if n == 1:
        return 1.0
    asymmetry = float(np.abs(matrix - matrix.T).max())
    if asymmetry > 1e-10:
        raise TopologyError(
            "spectral_gap(W) needs a symmetric W (it uses eigvalsh), got max |W - W^T| = "
            f"{asymmetry:.3g}; run check_mixing_matrix(W) to locate the entry"
        )
    eigenvalues = np.linalg.eigvalsh(matrix)  # ascending: the last one is lambda_1
    rho = 1.0 - float(np.abs(eigenvalues[:-1]).max())
    return 0.0 if abs(rho) < _ROUNDING else rho


def beta(W: ArrayLike) -> float:
    r"""Spectral norm :math:`\beta = \|I - W\|_2` (:math:`1 - \lambda_n` for a mixing matrix).

    Enters CHOCO-Gossip's theoretical consensus step size (arXiv:1902.00340, restated in
    arXiv:1907.09356):

    .. math:: \gamma = \frac{\rho^2\delta}
              {16\rho + \rho^2 + 4\beta^2 + 2\rho\beta^2 - 8\rho\delta}

    The ring with weights 1/3 has :math:`\beta = 4/3`.

    Examples
    --------
    >>> beta(np.eye(3))
    0.0
    """
    matrix = _as_square(W, "beta(W)")
    return float(np.linalg.norm(np.eye(matrix.shape[0]) - matrix, ord=2))


def support_graph(W: ArrayLike, atol: float = 1e-10) -> nx.Graph:
    r"""Graph on ``0..n-1`` with an edge :math:`(i, j)` wherever :math:`i \ne j, w_{ij} > atol`.

    Uses the upper triangle and the lower one (an edge is present if either is non-zero).
    """
    matrix = _as_square(W, "support_graph(W)")
    off = np.abs(matrix) > atol
    np.fill_diagonal(off, False)
    off |= off.T
    rows, cols = np.nonzero(np.triu(off))
    return canonical_graph(matrix.shape[0], zip(rows.tolist(), cols.tolist(), strict=True))


def check_mixing_matrix(W: ArrayLike, atol: float = 1e-10) -> NDArray[np.float64]:
    r"""Validate a mixing matrix for gossip; return it as a float64 array.

    Checks, in this order, and raises :class:`TopologyError` naming the offending row or
    column: square; symmetric, :math:`|w_{ij} - w_{ji}| \le atol`; non-negative,
    :math:`w_{ij} \ge -atol`; every row and column sums to 1 within ``atol``; the support
    graph (off-diagonal :math:`w_{ij} > atol`) is connected, else a node unreachable from 0
    is named. These are the mixing-matrix assumptions of CHOCO-SGD and CHOCO-Gossip
    (arXiv:1907.09356, arXiv:1902.00340); double stochasticity keeps the network average
    invariant under gossip.

    A connected support with a spectral gap :math:`\rho \le atol` is legal but useless:
    it arises from a periodic chain (e.g. the max-degree rule on an even ring, eigenvalue
    :math:`-1`). It only emits a :class:`SpectralGapWarning`, since gossip will oscillate
    rather than converge.

    Parameters
    ----------
    W
        Candidate matrix (anything ``numpy.asarray`` accepts).
    atol
        Absolute tolerance, ``>= 0``.

    Returns
    -------
    numpy.ndarray
        A float64 copy of ``W``.

    Examples
    --------
    >>> check_mixing_matrix([[0.5, 0.5], [0.5, 0.5]]).shape
    (2, 2)
    """
    if isinstance(atol, bool) or not isinstance(atol, (int, float)) or not atol >= 0:
        raise TopologyError(f"check_mixing_matrix needs atol >= 0, got {atol!r}; e.g. 1e-10")
    matrix = _as_square(W, "check_mixing_matrix(W)")
    gap = np.abs(matrix - matrix.T)
    if gap.max() > atol:
        i, j = np.unravel_index(int(np.argmax(gap)), gap.shape)
        raise TopologyError(
            f"mixing matrix must be symmetric within atol={atol}, but W[{i},{j}] = "
            f"{matrix[i, j]!r} and W[{j},{i}] = {matrix[j, i]!r} (row {i}, column {j}); "
            "use (W + W.T) / 2 or build W with a mixing rule"
        )
    if matrix.min() < -atol:
        i, j = np.unravel_index(int(np.argmin(matrix)), matrix.shape)
        raise TopologyError(
            f"mixing matrix must be non-negative, but W[{i},{j}] = {matrix[i, j]!r} "
            f"(row {i}, column {j}); use a mixing rule such as metropolis"
        )
    for axis, kind in ((1, "row"), (0, "column")):
        sums = matrix.sum(axis=axis)
        bad = np.flatnonzero(np.abs(sums - 1.0) > atol)
        if bad.size:
            k = int(bad[0])
            raise TopologyError(
                f"mixing matrix must be doubly stochastic (every row and column sums to 1 "
                f"within atol={atol}), but {kind} {k} sums to {sums[k]!r} ({bad.size} "
                f"{kind}s off); set W[{k},{k}] = 1 - (sum of the other entries of {kind} {k})"
            )
    lost = unreachable_node(support_graph(matrix, atol))
    if lost is not None:
        raise TopologyError(
            f"mixing matrix must be connected (its non-zero off-diagonal entries form a "
            f"connected graph), but node {lost} is not reachable from node 0; gossip could "
            "never reach consensus: add edges (non-zero w_ij) between the components"
        )
    if matrix.shape[0] > 1 and spectral_gap(matrix) <= atol:
        warnings.warn(
            "mixing matrix has spectral gap 0 (an eigenvalue -1: a periodic chain, e.g. the "
            "maxdegree rule on an even ring or torus), so gossip will oscillate instead of "
            "converging; use the metropolis rule",
            SpectralGapWarning,
            stacklevel=2,
        )
    return matrix


def _require_file_memory(file: Path) -> None:
    """Refuse a saved n x n matrix too large for memory before reading its data."""
    try:
        header = np.load(file, mmap_mode="r", allow_pickle=False)  # the shape only
    except (OSError, ValueError):
        return  # unreadable, empty or not .npy: the full load reports it
    if isinstance(header, np.ndarray):
        shape = header.shape
        del header
        if len(shape) == 2:
            require_memory(f"mixing-matrix file {str(file)!r}", max(shape), lambda k: 0)
    else:  # an .npz archive: its arrays are read lazily, close it
        header.close()


def load_mixing_matrix(path: str | os.PathLike[str], atol: float = 1e-10) -> NDArray[np.float64]:
    """Load a mixing matrix saved with ``numpy.save`` and validate it.

    Raises
    ------
    TopologyError
        If the file cannot be read as a numeric ``.npy`` array (pickles are refused) or
        fails :func:`check_mixing_matrix`.
    """
    file = Path(path)
    _require_file_memory(file)
    try:
        array = np.load(file, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise TopologyError(
            f"mixing-matrix file {str(file)!r} must be a numeric .npy array written by "
            f"numpy.save, got: {exc}; check the path or save W again"
        ) from exc
    if not isinstance(array, np.ndarray):  # an .npz archive under a .npy name
        raise TopologyError(
            f"mixing-matrix file {str(file)!r} must be one .npy array written by numpy.save, "
            "got an .npz archive; save W alone with numpy.save('W.npy', W)"
        )
    if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise TopologyError(
            f"mixing-matrix file {str(file)!r} must hold a real numeric array, got dtype "
            f"{array.dtype}; save W as float64"
        )
    return check_mixing_matrix(array, atol=atol)
