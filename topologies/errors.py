"""Exception and warning types of the :mod:`topologies` package.

Every error raised for bad user input is a :class:`TopologyError`. Its message states
the requirement, the value received and how to fix it, e.g.
``"torus needs both sides >= 2 (a side of 1 is a ring), got 1x5; use ring:5"``.
"""

from __future__ import annotations

from choco.errors import ChocoError

__all__ = ["SpectralGapWarning", "TopologyError"]


class TopologyError(ChocoError, ValueError):
    """A graph, spec string or mixing matrix that cannot be used for gossip.

    Subclasses :class:`choco.errors.ChocoError` (so the command-line programs report it as
    one paragraph) and :class:`ValueError`, so ``except ValueError`` also catches it.
    """


class SpectralGapWarning(UserWarning):
    r"""A mixing matrix is valid but has spectral gap :math:`\rho = 0`.

    This happens with the max-degree rule on bipartite regular graphs (even rings, tori with
    even sides): the zero diagonal gives the eigenvalue :math:`-1`, and gossip
    :math:`x \leftarrow W x` oscillates instead of converging. (CHOCO-SGD, arXiv:1907.09356,
    uses this rule only on its social graph, which is not regular.)
    """
