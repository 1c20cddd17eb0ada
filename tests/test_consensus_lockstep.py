"""The one-thread lock-step driver of ``choco-consensus --backend local`` against the
threaded per-node path (``--threads``): every node's ``x``, errors and bytes bit-identical.

The threaded path runs each node's :func:`choco.run.consensus.run_node` in its own thread
with its own generators; the lock-step path drives all nodes in one thread. They share the
codecs, so the reference is the threaded run, an independent schedule of the same rounds.
"""

from __future__ import annotations

import numpy as np
import pytest

from choco.run import consensus


def _run(tmp_path, spec: str, topology: str, threads: bool) -> dict[str, np.ndarray]:
    out = tmp_path / f"{'t' if threads else 'l'}-{spec.replace(':', '_')}.npz"
    argv = ["--topology", topology, "--compressor", spec, "--gamma", "0.4", "--dim", "37",
            "--steps", "12", "--seed", "3", "--backend", "local", "--quiet", "--out", str(out)]
    assert consensus.main(argv + (["--threads"] if threads else [])) == 0
    with np.load(out) as data:
        return {k: data[k] for k in data.files}


@pytest.mark.parametrize("spec,topology", [
    ("sign", "ring:6"), ("topk:0.1", "torus:9"), ("randk:0.2", "ring:5"),
    ("qsgd:16", "star:5"), ("natural", "ring:4"), ("dither:8", "complete:4"),
])
def test_lockstep_matches_threads(tmp_path, spec: str, topology: str) -> None:
    lock = _run(tmp_path, spec, topology, threads=False)
    threaded = _run(tmp_path, spec, topology, threads=True)
    assert sorted(lock) == sorted(threaded) == ["bytes_sent", "error", "x"]
    for key in lock:
        assert lock[key].dtype == threaded[key].dtype
        assert lock[key].tobytes() == threaded[key].tobytes(), key
    # and the run did something: the nodes moved toward their mean
    assert lock["error"][-1] < lock["error"][0]


def test_lockstep_applies_only_where_it_is_exact() -> None:
    from choco.compress import make_compressor

    class P:  # the two fields lockstep_applies reads
        def __init__(self, spec: str, topology) -> None:
            self.compressor, self.topology = make_compressor(spec), topology

    from topologies import parse_topology
    ring = parse_topology("ring:4")
    assert consensus.lockstep_applies(P("sign", ring), None)
    assert not consensus.lockstep_applies(P("sign", ring), object())  # a simulated clock
    assert not consensus.lockstep_applies(P("lgc", ring), None)  # coding state
