"""The one-thread drivers of ``choco-consensus --backend local`` against the threaded
per-node path (``--threads``): every node's ``x``, errors, bytes and simulated times
bit-identical.

The threaded path runs each node's :func:`choco.run.consensus.run_node` in its own thread
with its own generators and its own clock hooks; the lock-step path drives the per-node
objects in one thread (:func:`~choco.run.consensus.run_lockstep`); the batched path codes
every node's row at once (:func:`~choco.run.consensus.run_batched`; sign, identity,
topk:R, randk:R and randblock:R) and builds
no message at all. The reference is the threaded run, an independent schedule of the same
rounds; the bytes are also checked against the wire format's length formula.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from choco.compress import make_compressor
from choco.compress.batch import batch_codec
from choco.run import consensus
from choco.sim.clock import NetworkClock
from choco.sim.spec import parse_network

PAIRS = [("sign", "ring:6"), ("topk:0.1", "torus:9"), ("randk:0.2", "ring:5"),
         ("qsgd:16", "star:5"), ("natural", "ring:4"), ("dither:8", "complete:4")]


def _problem(spec: str, topology: str, dim: int = 37, steps: int = 12,
             init: str | None = None) -> consensus.Problem:
    # γ = 0.4 contracts for the dense codecs and top-k; the random sparsifiers (δ = k/d) need
    # a smaller step for the error to fall within a few rounds
    gamma = "0.05" if spec.startswith("rand") else "0.4"
    argv = ["--topology", topology, "--compressor", spec, "--gamma", gamma, "--dim", str(dim),
            "--steps", str(steps), "--seed", "3", "--quiet", "--out", "unused.npz"]
    if init is not None:
        argv += ["--init", init]
    return consensus.load_problem(consensus.parse_args(argv), report=False)


def _drive(problem: consensus.Problem, driver: str, network: str | None = None) -> list:
    from choco.comm.local import LocalNetwork

    topo = problem.topology
    neighbors = [topo.neighbors(i) for i in range(topo.n)]
    spec = None if network is None else parse_network(network)
    if driver == "batched":
        x0 = problem.x0
        codec = batch_codec(problem.compressor, x0.shape[1], torch.from_numpy(x0[:0]).dtype)
        assert codec is not None
        clock = None if spec is None else NetworkClock(spec, neighbors)
        return consensus.run_batched(problem, codec, False, clock)
    net = LocalNetwork(neighbors, network=spec)
    if driver == "lockstep":
        return consensus.run_lockstep(net.comms, problem, False, net.clock)
    return net.run(lambda comm: consensus.run_node(comm, problem, report=False))


def _same(a: list, b: list) -> None:
    assert len(a) == len(b)
    for i, (ra, rb) in enumerate(zip(a, b, strict=True)):
        assert ra.x.dtype == rb.x.dtype and ra.x.tobytes() == rb.x.tobytes(), f"x of node {i}"
        assert ra.error.tobytes() == rb.error.tobytes(), f"error of node {i}"
        assert ra.bytes_sent == rb.bytes_sent, f"bytes of node {i}"
        if rb.sim_time is None:
            assert ra.sim_time is None
        else:
            assert ra.sim_time is not None
            assert ra.sim_time.tobytes() == rb.sim_time.tobytes(), f"sim_time of node {i}"


@pytest.mark.parametrize("spec,topology", PAIRS)
def test_lockstep_matches_threads(spec: str, topology: str) -> None:
    problem = _problem(spec, topology)
    threaded = _drive(problem, "threads")
    _same(_drive(problem, "lockstep"), threaded)
    # and the run did something: the nodes moved toward their mean
    assert threaded[0].error[-1] < threaded[0].error[0]


def _message_nbytes(spec: str, dim: int, dtype: str) -> int:
    """The wire format's length of one message: a 16-byte header, then sign: an fp32 scale
    and a bit per element; identity: the elements as they are; topk:R: k fp32 values and
    k int32 positions, k = max(1, ceil(R d)), or their Rice code; randk:R, randblock:R: k fp32
    values only; natural: the sign bits, then an exponent byte per element; qsgd, dither:
    a norm per bucket and a packed (level, sign) field per element."""
    if spec == "sign":
        return 16 + 4 + math.ceil(dim / 8)
    if spec == "identity":
        return 16 + dim * np.dtype(dtype).itemsize
    if spec.startswith("natural"):  # a sign bit and an exponent byte per element
        return 16 + math.ceil(dim / 8) + dim
    if spec.startswith(("qsgd", "dither")):  # fp32 norm per bucket, 1 + ceil(log2(S+1))
        _, levels, *opts = spec.split(":")  # bits per element, packed
        bucket = next((int(o[2:]) for o in opts if o.startswith("b=")), 512)
        bucket = dim if bucket == 0 else min(bucket, dim)
        width = 1 + math.ceil(math.log2(int(levels) + 1))
        return 16 + 4 * math.ceil(dim / bucket) + math.ceil(dim * width / 8)
    ratio = float(spec.split(":")[1])
    k = min(dim, max(1, math.ceil(ratio * dim)))
    if spec.endswith(":rice"):  # k fp32 values, then k b-bit remainders and the unary
        p = k / dim             # quotients (k ones, (d - k) >> b zeros), each byte-padded
        b = 0 if p >= 0.5 else max(0, 1 + math.floor(
            math.log2(math.log((5**0.5 - 1) / 2) / math.log(1 - p))))
        return 16 + 4 * k + math.ceil(k * b / 8) + math.ceil((k + ((dim - k) >> b)) / 8)
    return 16 + (8 if spec.startswith("topk") else 4) * k


CASES = [
    ("ring:6", 37, "float64", None), ("ring:10", 1000, "float64", None),
    ("torus:9", 13, "float64", None),
    ("star:6", 37, "float64", None),  # irregular: slot k only on nodes of degree > k
    ("ring:5", 37, "float32", None),  # an fp32 --init: fp32 targets, fp32 words
    # rows in blocks of 2 (1 for d = 1,000): neighbours in other blocks, a star's centre
    # alone in its block with the slots only it has
    ("ring:10", 1000, "float64", 100), ("star:7", 37, "float64", 80),
    ("torus:9", 13, "float32", 30),
]


def _check_batched(problem: consensus.Problem, spec: str, dim: int, dtype: str) -> None:
    batched = _drive(problem, "batched")
    _same(batched, _drive(problem, "threads"))
    _same(batched, _drive(problem, "lockstep"))
    assert batched[0].x.dtype == np.dtype(dtype)
    # bytes: the wire format's length × neighbours × rounds, counted without a message
    message = _message_nbytes(spec, dim, dtype)
    topo = problem.topology
    assert [r.bytes_sent for r in batched] == [
        message * len(topo.neighbors(i)) * problem.steps for i in range(topo.n)]
    if not spec.endswith(":raw"):  # :raw is unbiased, not contractive: CHOCO diverges
        assert batched[0].error[-1] < batched[0].error[0]


def _init(tmp_path, topology: str, dim: int, dtype: str, ties: bool = False) -> str | None:
    """An --init file: None (the CLI's own fp64 draw) unless another dtype or ties."""
    if dtype == "float64" and not ties:
        return None
    n = int(topology.split(":")[1])
    x0 = np.random.default_rng(5).standard_normal((n, dim))
    if ties:  # few distinct magnitudes of both signs: ties at every row's k-th largest |x|
        x0 = np.round(x0 * 2) / 2
    path = str(tmp_path / "x0.npy")
    np.save(path, x0.astype(dtype))
    return path


@pytest.mark.parametrize("spec", ["sign", "identity", "topk:0.1", "topk:0.1:rice",
                                  "randk:0.1", "randblock:0.1", "natural", "qsgd:16:b=16",
                                  "dither:8:b=10"])
@pytest.mark.parametrize("topology,dim,dtype,block", CASES)
def test_batched_matches_threads_and_lockstep(tmp_path, monkeypatch, spec: str, topology: str,
                                              dim: int, dtype: str, block: int | None) -> None:
    if block is not None:
        import choco.batched

        monkeypatch.setattr(choco.batched, "BLOCK_ELEMENTS", block)
    problem = _problem(spec, topology, dim=dim, init=_init(tmp_path, topology, dim, dtype))
    _check_batched(problem, spec, dim, dtype)


@pytest.mark.parametrize("spec,topology,dim,dtype", [
    ("topk:0.1", "ring:6", 37, "float64"), ("topk:0.3", "star:6", 40, "float32"),
    ("topk:0.05", "torus:9", 1001, "float64"), ("topk:0.5", "ring:5", 8, "float32"),
    ("topk:1.0", "ring:4", 9, "float64"),  # k = d: every position
    ("identity", "star:5", 37, "float32"), ("sign", "ring:5", 37, "float64"),
    ("topk:0.3:rice", "star:6", 40, "float64"), ("randk:0.5", "ring:5", 8, "float32"),
    ("randk:1.0", "ring:4", 9, "float64"), ("natural:raw", "star:6", 40, "float32"),
    ("natural", "ring:5", 37, "float64"), ("qsgd:4", "ring:6", 1000, "float64"),
    ("qsgd:8:b=0", "star:6", 40, "float32"), ("qsgd:16:b=7:raw", "ring:5", 37, "float64"),
    ("dither:4:b=0", "torus:9", 13, "float32"), ("dither:8", "ring:5", 600, "float64"),
    ("randk:0.3:raw", "star:6", 40, "float32"), ("randblock:0.3", "torus:9", 13, "float32"),
])
def test_batched_matches_with_ties_and_other_dtypes(tmp_path, spec: str, topology: str,
                                                    dim: int, dtype: str) -> None:
    """Magnitudes on a grid of 0.5 (many ties at the k-th largest, ±0.0 among them), fp32
    and fp64 rows (the CLI's --init dtypes): top-k must keep the lowest tied positions, as
    the per-node codec does."""
    problem = _problem(spec, topology, dim=dim, steps=8,
                       init=_init(tmp_path, topology, dim, dtype, ties=True))
    _check_batched(problem, spec, dim, dtype)


def test_batched_topk_on_the_sampled_selection_path(tmp_path) -> None:
    """d >= 2^16 with 8k <= d: the per-node codec selects through a sampled threshold;
    the batched selection must keep the same set (ties included)."""
    dim = 1 << 16
    problem = _problem("topk:0.01", "ring:3", dim=dim, steps=3,
                       init=_init(tmp_path, "ring:3", dim, "float64", ties=True))
    batched = _drive(problem, "batched")
    _same(batched, _drive(problem, "lockstep"))


NETWORKS = [
    "bandwidth=1g,latency=50us,compute=1ms",
    "bandwidth=100m,latency=20us,compute=1ms,encode=30us,decode=10us,slow=2:3,jitter=0.2,"
    "seed=4",  # a straggler and per-node jitter streams
]


def _edge_file(tmp_path) -> str:
    path = tmp_path / "net.toml"
    path.write_text('[[link]]\nnodes = [0, 1]\nbandwidth = "10m"\nlatency = "1ms"\n\n'
                    '[[link]]\nnodes = [3, 4]\nbandwidth = "1g"\nlatency = "5us"\n\n'
                    '[[node]]\nid = 2\ncompute = 2.5\n')
    return f"bandwidth=1g,latency=50us,compute=1ms,file={path}"


@pytest.mark.parametrize("network", [*NETWORKS, "file"])
@pytest.mark.parametrize("spec,topology", [
    ("sign", "ring:6"), ("topk:0.1", "ring:6"), ("identity", "ring:6"), ("randk:0.2", "ring:6"),
    ("scaled(sign)", "ring:6"),
])
def test_one_thread_clock_matches_threads(tmp_path, network: str, spec: str,
                                          topology: str) -> None:
    """The one-thread drivers advance the simulated clock as the nodes' threads do: the
    same simulated time of every node after every round (sign, topk, identity, randk:
    batched; scaled(sign) falls back to the per-node objects in lock-step)."""
    if network == "file":
        network = _edge_file(tmp_path)
    problem = _problem(spec, topology)
    threaded = _drive(problem, "threads", network)
    one_thread = "lockstep" if spec.startswith("scaled") else "batched"
    _same(_drive(problem, one_thread, network), threaded)
    times = np.max(np.stack([r.sim_time for r in threaded]), axis=0)
    assert times[0] == 0 and np.all(np.diff(times) > 0)  # the clock advanced every round


def test_cli_default_matches_threads_with_network(tmp_path) -> None:
    """``choco-consensus --network`` without ``--threads`` (one thread now) writes the same
    .npz as with it, sim_time_s included; for the batched codec and one that falls back."""
    network = "bandwidth=1g,latency=50us,compute=1ms,slow=1:2"
    for spec in ("sign", "randk:0.2"):
        files = {}
        for extra in ([], ["--threads"]):
            out = tmp_path / f"{spec.replace(':', '_')}{len(extra)}.npz"
            argv = ["--topology", "ring:5", "--compressor", spec, "--gamma", "0.4", "--dim",
                    "37", "--steps", "8", "--seed", "3", "--backend", "local", "--quiet",
                    "--network", network, "--out", str(out), *extra]
            assert consensus.main(argv) == 0
            with np.load(out) as data:
                files[len(extra)] = {k: data[k] for k in data.files}
        assert sorted(files[0]) == sorted(files[1]) == ["bytes_sent", "error", "sim_time_s", "x"]
        for key in files[0]:
            assert files[0][key].tobytes() == files[1][key].tobytes(), (spec, key)


def test_batch_codec_only_where_exact() -> None:
    for spec in ("sign", "identity", "topk:0.1", "topk:0.1:rice", "randk:0.2",
                 "randblock:0.1:raw", "natural", "natural:raw", "qsgd:16", "dither:8:b=0"):
        codec = make_compressor(spec)
        assert batch_codec(codec, 1000, torch.float64) is not None, spec
        assert batch_codec(codec, 1000, torch.float32) is not None, spec
        assert batch_codec(codec, 2**18 + 1, torch.float64) is None, spec  # chunked per node
        assert batch_codec(codec, 1000, torch.bfloat16) is None, spec  # no numpy dtype
    # sender-side randomness, other position formats, wrapped or stateful codecs: the
    # per-node objects
    for other in ("scaled(sign)", "topk:0.1+natural", "randk:0.2+qsgd:4", "lgc", "sbc:0.1"):
        assert batch_codec(make_compressor(other), 1000, torch.float64) is None, other


def test_lockstep_applies_only_where_it_is_exact() -> None:
    class P:  # the two fields lockstep_applies reads
        def __init__(self, spec: str, topology) -> None:
            self.compressor, self.topology = make_compressor(spec), topology

    from topologies import parse_topology
    ring = parse_topology("ring:4")
    assert consensus.lockstep_applies(P("sign", ring), None)
    assert consensus.lockstep_applies(P("sign", ring), parse_network("bandwidth=1g,compute=1ms"))
    # host time measured per node's thread: one thread per node
    assert not consensus.lockstep_applies(P("sign", ring), parse_network("compute=measured"))
    assert not consensus.lockstep_applies(P("lgc", ring), None)  # coding state


def test_cli_picks_the_batched_driver_where_it_applies(tmp_path, monkeypatch) -> None:
    """Which driver ``choco-consensus --backend local`` runs: each other one is made to
    fail, so the run succeeds only through the expected one."""
    from choco.comm.local import LocalNetwork

    def refuse(*args, **kwargs):
        raise AssertionError("this driver should not run")

    def run(spec: str, *extra: str) -> None:
        out = tmp_path / f"{spec.replace(':', '_')}.npz"
        assert consensus.main(["--topology", "ring:5", "--compressor", spec, "--gamma", "0.4",
                               "--dim", "16", "--steps", "3", "--backend", "local", "--quiet",
                               "--overwrite", "--out", str(out), *extra]) == 0

    with monkeypatch.context() as m:
        m.setattr(consensus, "run_lockstep", refuse)
        m.setattr(LocalNetwork, "run", refuse)
        for spec in ("sign", "identity", "topk:0.2", "topk:0.2:rice", "randk:0.2",
                     "randblock:0.2", "natural", "qsgd:16"):
            run(spec)
            run(spec, "--network", "bandwidth=1g,compute=1ms")
    with monkeypatch.context() as m:
        m.setattr(consensus, "run_batched", refuse)
        m.setattr(LocalNetwork, "run", refuse)
        for spec in ("sbc:0.2", "topk:0.2+natural"):
            run(spec)
            run(spec, "--network", "bandwidth=1g,compute=1ms")
    with monkeypatch.context() as m:
        m.setattr(consensus, "run_batched", refuse)
        m.setattr(consensus, "run_lockstep", refuse)
        run("sign", "--threads")
        run("sign", "--network", "compute=measured")
