r"""Round constructions of the time-varying schedules (edges of round ``t``, no dense matrices).

A *round* is a tuple of weighted edges ``(i, j, w)`` with ``i < j``: nodes ``i`` and ``j``
exchange in that round and give each other the weight ``w``; every node keeps
``w_ii = 1 - Σ_j w_ij``. So each round's mixing matrix ``W_t`` is symmetric, doubly stochastic
and, with the weights used here, non-negative.

* :func:`onepeer_round`: the one-peer hypercube; ``n = 2^τ``, round ``t`` pairs ``i`` with
  ``i XOR 2^(t mod τ)``, weight ½. Any ``τ`` consecutive rounds multiply to ``11ᵀ/n``
  (the symmetric form of the one-peer exponential graph, Ying et al., arXiv:2110.13363).
* :func:`base_rounds`: the Base-(k+1) graph of Takezawa et al. (arXiv:2305.11420, §4): for any
  ``n`` and ``k ≥ 1``, a finite sequence of rounds with at most ``k`` peers per node whose
  product is exactly ``11ᵀ/n``.
* :func:`matching_round`: a uniformly random perfect matching drawn from
  ``numpy.random.default_rng([seed, t])`` (every rank draws the same one; odd ``n``: the
  last node of the permutation idles), weight ½.
"""

from __future__ import annotations

import numpy as np

__all__ = ["Edge", "Round", "base_rounds", "hypercube_rounds", "matching_round",
           "onepeer_round", "simple_base_rounds"]

#: ``(i, j, w)`` with ``i < j``: ``i`` and ``j`` exchange and weigh each other by ``w``
Edge = tuple[int, int, float]
Round = tuple[Edge, ...]


def _edge(i: int, j: int, w: float) -> Edge:
    return (i, j, w) if i < j else (j, i, w)


def onepeer_round(n: int, t: int) -> Round:
    """Round ``t`` of the one-peer hypercube on ``n = 2^τ`` nodes: ``i ↔ i XOR 2^(t mod τ)``."""
    tau = n.bit_length() - 1
    if tau == 0:
        return ()
    hop = 1 << (t % tau)
    return tuple((i, i ^ hop, 0.5) for i in range(n) if i < i ^ hop)


def matching_round(n: int, seed: int, t: int) -> Round:
    """A random perfect matching for round ``t``, the same on every rank: pairs
    ``(π_0, π_1), (π_2, π_3), ...`` of the permutation ``π`` drawn by
    ``numpy.random.default_rng([seed, t])``; weight ½."""
    perm = np.random.default_rng([seed, t]).permutation(n)
    return tuple(sorted(_edge(int(perm[2 * m]), int(perm[2 * m + 1]), 0.5)
                        for m in range(n // 2)))


def _factors(s: int, k: int) -> list[int]:
    """``s`` as a product of factors in ``[2, k+1]``, largest first chosen greedily; raises
    ``ValueError`` if ``s`` has a prime factor above ``k + 1``."""
    out: list[int] = []
    rest = s
    for f in range(k + 1, 1, -1):
        while rest % f == 0:
            out.append(f)
            rest //= f
    if rest != 1:
        raise ValueError(f"{s} has a prime factor above {k + 1}")
    return out


def hypercube_rounds(nodes: list[int], k: int) -> list[list[Edge]]:
    """Exact averaging of ``nodes`` in one round per factor of ``len(nodes)`` (all factors
    ``≤ k + 1``): write a node's position in mixed radix ``(f_0, f_1, ...)``; round ``r``
    averages each set of ``f_r`` nodes that differ only in digit ``r`` (weights ``1/f_r``,
    ``f_r - 1 ≤ k`` peers). After every round the digits done so far are averaged out."""
    s = len(nodes)
    rounds: list[list[Edge]] = []
    stride = 1
    for f in _factors(s, k):
        edges: list[Edge] = []
        for a in range(s):
            digit = (a // stride) % f
            for d in range(digit + 1, f):
                edges.append(_edge(nodes[a], nodes[a + (d - digit) * stride], 1.0 / f))
        rounds.append(edges)
        stride *= f
    return rounds


def _place(rounds: list[list[Edge]], start: int, extra: list[list[Edge]]) -> None:
    while len(rounds) < start + len(extra):
        rounds.append([])
    for r, edges in enumerate(extra):
        rounds[start + r].extend(edges)


def simple_base_rounds(nodes: list[int], k: int) -> list[list[Edge]]:
    r"""The simple Base-(k+1) graph on ``nodes`` (arXiv:2305.11420, Alg. 1), our construction.

    Write ``n = Σ_l a_l b^{p_l}`` in base ``b = k + 1`` (``p_0 > p_1 > ...``, digits
    ``1 ≤ a_l ≤ k``) and split the nodes into consecutive groups ``V_l`` of ``a_l b^{p_l}``.

    1. Every group averages itself exactly (:func:`hypercube_rounds`, ``T_1`` rounds).
    2. Merge step ``l = 0, 1, ...`` (round ``T_1 + l``): each node ``i`` of the rest
       ``R_l = V_{l+1} ∪ ...`` takes one node from each of the ``a_l`` chunks of ``b^{p_l}``
       nodes of ``V_l`` (``|R_l| < b^{p_l}``, so there are enough) with weight
       ``r_l / a_l``, ``r_l = |V_l| / (|V_l| + |R_l|)``. ``R_l``'s nodes then hold
       ``(1 − r_l)·(their value) + r_l·(V_l's value)``, the nested weights of the average
       over ``V_l ∪ R_l``; each chunk of ``V_l`` received every rest node once, so after
       3. re-averaging every chunk (rounds ``T_1 + l + 1 ...``), ``V_l`` holds the average too.
    """
    n = len(nodes)
    b = k + 1
    digits: list[tuple[int, int]] = []  # (a_l, p_l), most significant first
    p = 0
    while b ** (p + 1) <= n:
        p += 1
    rest = n
    for q in range(p, -1, -1):
        a, rest = divmod(rest, b**q)
        if a:
            digits.append((a, q))
    groups, start = [], 0
    for a, q in digits:
        groups.append(nodes[start:start + a * b**q])
        start += a * b**q
    rounds: list[list[Edge]] = []
    for group in groups:
        _place(rounds, 0, hypercube_rounds(group, k))
    t1 = len(rounds)
    for step, (group, (a, q)) in enumerate(zip(groups[:-1], digits[:-1], strict=True)):
        rest_nodes = [v for g in groups[step + 1:] for v in g]
        ratio = len(group) / (len(group) + len(rest_nodes))
        chunks = [group[c * b**q:(c + 1) * b**q] for c in range(a)]
        merge = [_edge(i, chunk[idx], ratio / a) for idx, i in enumerate(rest_nodes)
                 for chunk in chunks]
        _place(rounds, t1 + step, [merge])
        for chunk in chunks:
            _place(rounds, t1 + step + 1, hypercube_rounds(chunk, k))
    return rounds


def base_rounds(n: int, k: int) -> list[Round]:
    r"""The Base-(k+1) graph on ``n`` nodes (arXiv:2305.11420, Alg. 2), our construction.

    Split ``n = n_p · n_r`` with ``n_p`` the largest divisor of ``n`` whose prime factors are
    all ``≤ k + 1``. Either the simple Base-(k+1) graph on all nodes, or, when shorter: the
    simple graph on each of the ``n_p`` blocks of ``n_r`` consecutive nodes at once, then
    exact averaging (:func:`hypercube_rounds`) across the blocks within each of the ``n_r``
    sets ``{j, j + n_r, ...}``. The rounds' product is ``11ᵀ/n`` exactly (in exact
    arithmetic) and no node has more than ``k`` peers in a round.
    """
    nodes = list(range(n))
    best = simple_base_rounds(nodes, k)
    n_p = 1
    for prime in range(2, k + 2):
        if all(prime % d for d in range(2, prime)):
            while n % (n_p * prime) == 0:
                n_p *= prime
    n_r = n // n_p
    if n_r == 1:
        direct = hypercube_rounds(nodes, k)
        if len(direct) <= len(best):
            best = direct
    elif n_p > 1:
        rounds: list[list[Edge]] = []
        for block in range(n_p):
            _place(rounds, 0, simple_base_rounds(nodes[block * n_r:(block + 1) * n_r], k))
        first = len(rounds)
        for j in range(n_r):
            _place(rounds, first, hypercube_rounds(nodes[j::n_r], k))
        if len(rounds) <= len(best):
            best = rounds
    return [tuple(sorted(r)) for r in best] or [()]
