"""``ChocoSGD.progress_hooks``: the exchange in flight is advanced from the backward pass.

Under MPI each call is one ``MPI_Test`` (results unchanged: ``tests/test_mpi_train.py``
compares choco-train, which installs the hooks, with the in-process backend bit for bit).
Here a counting averager checks when and how often the hooks fire.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from choco.comm import LocalNetwork
from choco.compress import make_compressor
from choco.gossip import ChocoGossip
from choco.optim import ChocoSGD


class Counting:
    synchronous: ClassVar[bool] = False

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.in_flight = False
        self.bytes_sent = 0

    def init(self, x):
        pass

    def begin(self, x):
        self.calls.append("begin")
        self.in_flight = True

    def finish(self, x):
        self.calls.append("finish")
        self.in_flight = False

    def progress(self):
        self.calls.append("progress")

    def state_dict(self):
        return {}

    def load_state_dict(self, sd):
        pass


def test_hooks_fire_once_per_parameter_per_backward_between_begin_and_finish():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 1))
    averager = Counting()
    opt = ChocoSGD(torch.optim.SGD(model.parameters(), lr=0.1), averager)
    handles = opt.progress_hooks()
    assert len(handles) == 4  # two weights, two biases
    for _ in range(3):
        opt.zero_grad()
        model(torch.randn(5, 4)).sum().backward()
        opt.step()
    # step 1 posts; steps 2 and 3 finish the previous round first, then post
    assert averager.calls == (["progress"] * 4 + ["begin"]
                              + (["progress"] * 4 + ["finish", "begin"]) * 2)
    for h in handles:
        h.remove()
    opt.zero_grad()
    model(torch.randn(5, 4)).sum().backward()
    assert averager.calls.count("progress") == 12  # removed hooks no longer fire


def test_progress_on_a_real_gossip_changes_nothing():
    """In process, progress is a no-op: the trajectories with and without hooks are equal."""
    results = []
    for hooks in (False, True):
        net = LocalNetwork([[1], [0]])
        W = torch.tensor([[0.5, 0.5], [0.5, 0.5]]).numpy()

        def node(comm, hooks=hooks, W=W):
            # weights from a per-node generator: torch's global one is shared by the threads
            g = torch.Generator().manual_seed(comm.rank)
            model = torch.nn.Linear(3, 1)
            with torch.no_grad():
                for p in model.parameters():
                    p.copy_(torch.randn(p.shape, generator=g))
            gossip = ChocoGossip(comm, W[comm.rank], make_compressor("sign"), 0.5, seed=1)
            opt = ChocoSGD(torch.optim.SGD(model.parameters(), lr=0.1), gossip)
            if hooks:
                opt.progress_hooks()
            for _ in range(5):
                opt.zero_grad()
                model(torch.randn(4, 3, generator=g)).pow(2).sum().backward()
                opt.step()
            opt.flush()
            return torch.cat([p.detach().reshape(-1) for p in model.parameters()])

        results.append(net.run(node))
    assert all(torch.equal(a, b) for a, b in zip(*results, strict=True))
