"""The in-process network as a stand-in for separate processes: per-node random generators,
a schedule that does not depend on the host, and the README's library example bit for bit
against ``mpiexec -n 4``."""

from __future__ import annotations

import random
import re
import subprocess
import sys

import numpy as np
import pytest
import torch

from choco.comm import LocalNetwork
from choco.errors import CommError

from .helpers import ROOT, launch_env, run_mpi

README = (ROOT / "README.md").read_text()


def code_after(marker: str) -> str:
    match = re.search(re.escape(marker) + r"\s*```diff\n(.*?)```", README, re.S)
    if match is None:
        pytest.fail(f"README has no diff block after {marker}")
    # the example is a diff against a plain PyTorch loop: the script is its context and + lines
    return "".join(line[1:] + "\n" for line in match.group(1).splitlines()
                   if line[:1] in (" ", "+"))

#: appended to the README example: the exact final parameters and loss of each rank
DIGEST = """
import hashlib
_h = hashlib.sha256(b"".join(p.detach().numpy().tobytes() for p in model.parameters()))
print(f"rank {rank}: digest {_h.hexdigest()} loss {loss.item()!r} bytes {gossip.bytes_sent}")
"""

#: runs a script written for mpiexec on an in-process ring, one node per rank
IN_PROCESS = """
import sys
from choco.comm import LocalNetwork
from topologies import parse_topology
code = open(sys.argv[1]).read()
n = int(sys.argv[2])
net = LocalNetwork([parse_topology(f"ring:{n}").neighbors(i) for i in range(n)])
net.run(lambda comm: exec(code, {"COMM": comm, "__name__": "__node__"}))
"""

#: the README's MPI lines and what they become in process (each must be found)
TO_LOCAL = [
    ("from mpi4py import MPI\n", ""),
    ("from choco.comm.mpi import MPICommunicator\n", ""),
    ("MPI.COMM_WORLD.Get_rank(), MPI.COMM_WORLD.Get_size()", "COMM.rank, COMM.size"),
    ("MPICommunicator(topo.neighbors(rank))", "COMM"),
]


def digests(stdout: str) -> dict[int, str]:
    # ranks print concurrently under mpiexec: lines may run into each other
    found = {int(r): rest for r, rest in
             re.findall(r"rank (\d+): (digest [0-9a-f]{64} loss \S+ bytes \d+)", stdout)}
    assert sorted(found) == [0, 1, 2, 3], stdout[-2000:]
    return found


@pytest.mark.mpi
@pytest.mark.slow
def test_readme_example_in_process_is_bit_identical_to_mpiexec(tmp_path):
    code = code_after("<!-- library-example -->") + DIGEST
    mpi_script = tmp_path / "train_ring.py"
    mpi_script.write_text(code)
    local = code
    for old, new in TO_LOCAL:
        assert old in local, f"the README example no longer contains {old!r}"
        local = local.replace(old, new)
    local_script = tmp_path / "train_ring_local.py"
    local_script.write_text(local)
    driver = tmp_path / "driver.py"
    driver.write_text(IN_PROCESS)
    env = launch_env()
    runs = []
    for _ in range(3):
        proc = subprocess.run([sys.executable, str(driver), str(local_script), "4"], env=env,
                              capture_output=True, text=True, timeout=300, cwd=ROOT)
        assert proc.returncode == 0, proc.stderr[-3000:]
        runs.append(digests(proc.stdout))
    assert runs[0] == runs[1] == runs[2]
    proc = run_mpi(4, [str(mpi_script)], timeout=300, script=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert digests(proc.stdout) == runs[0]


def test_each_node_has_its_own_generators_and_the_caller_keeps_its_own():
    torch.manual_seed(123)
    np.random.seed(123)
    random.seed(123)
    expected_caller = (torch.rand(2), np.random.rand(2), random.random())
    torch.manual_seed(123)
    np.random.seed(123)
    random.seed(123)

    def node(comm):
        torch.manual_seed(comm.rank)
        draws = [torch.rand(3)]
        normals = [np.random.randn(1)]  # legacy randn caches the pair's second normal
        comm.allreduce(np.zeros(1))  # a hand-over: every other node draws in between
        draws.append(torch.rand(3))
        normals.append(np.random.randn(2))
        comm.barrier()
        return torch.cat(draws), np.concatenate(normals), np.random.rand(3), random.random()

    results = LocalNetwork([[] for _ in range(4)]).run(node)
    for rank, (t, z, a, r) in enumerate(results):
        g = torch.Generator().manual_seed(rank)  # what a separate process would draw
        assert torch.equal(t, torch.rand(6, generator=g))
        alone = np.random.RandomState(rank)
        assert np.array_equal(z, alone.randn(3)) and np.array_equal(a, alone.rand(3))
        assert r == random.Random(rank).random()
    caller = (torch.rand(2), np.random.rand(2), random.random())
    assert torch.equal(caller[0], expected_caller[0])
    assert np.array_equal(caller[1], expected_caller[1]) and caller[2] == expected_caller[2]


def test_unseeded_nodes_draw_their_own_streams_the_same_in_every_run():
    """As separate processes would, nodes that never seed draw different numbers; unlike
    processes, the same ones in every run (each generator starts seeded with the rank)."""
    def node(comm):
        return torch.rand(2), np.random.rand(2), random.random()

    first = LocalNetwork([[], [], []]).run(node)
    again = LocalNetwork([[], [], []]).run(node)
    for rank, (t, a, r) in enumerate(first):
        assert torch.equal(t, torch.rand(2, generator=torch.Generator().manual_seed(rank)))
        assert np.array_equal(a, np.random.RandomState(rank).rand(2))
        assert r == random.Random(rank).random()
        assert torch.equal(t, again[rank][0])
    assert not torch.equal(first[0][0], first[1][0])


def test_only_one_node_runs_at_a_time():
    running, overlaps = [0], []

    def node(comm):
        for _ in range(20):
            running[0] += 1
            overlaps.append(running[0])
            x = sum(range(2000))  # give another thread a chance to interleave
            running[0] -= 1
            comm.neighbor_exchange(torch.zeros(4, dtype=torch.uint8)).wait()
        return x

    LocalNetwork([[1, 3], [0, 2], [1, 3], [0, 2]]).run(node)
    assert max(overlaps) == 1


def test_a_node_waiting_for_a_node_that_returned_is_a_clear_error_not_a_hang():
    def node(comm):
        rounds = 1 if comm.rank == 0 else 3
        for _ in range(rounds):
            comm.neighbor_exchange(torch.zeros(2, dtype=torch.uint8)).wait()

    with pytest.raises(CommError, match="no node can run: node 1 waits for exchange 1 from "
                                        "node 0"):
        LocalNetwork([[1], [0]]).run(node)


def test_ctrl_c_in_the_caller_stops_every_node_before_run_raises():
    # the caller cleans up after a Ctrl-C (choco-train removes an unfinished start): no node
    # thread may still be running, and writing, once run() has raised
    import signal
    import threading

    rounds = [0] * 4

    def node(comm):
        if comm.rank == 0:  # Ctrl-C arrives while the nodes are exchanging
            main = threading.main_thread().ident
            threading.Timer(0.5, signal.pthread_kill, (main, signal.SIGINT)).start()
        while True:  # endless: only the interrupt ends it
            comm.neighbor_exchange(torch.zeros(4, dtype=torch.uint8)).wait()
            rounds[comm.rank] += 1

    before = set(threading.enumerate())
    with pytest.raises(KeyboardInterrupt):
        LocalNetwork([[1, 3], [0, 2], [1, 3], [0, 2]]).run(node)
    left = [t for t in threading.enumerate() if t not in before and t.is_alive()
            and not isinstance(t, threading.Timer)]
    assert left == []
    assert min(rounds) > 0  # they were running when the interrupt came
    # and they stopped at a wait: a node finishes round r only once its neighbours posted it,
    # so on this ring (diameter 2) no two nodes are more than 2 rounds apart
    assert max(rounds) - min(rounds) <= 2
