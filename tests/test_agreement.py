"""Ranks that disagree never hang: the agreement check, neighbour lists, message integrity.

In-process (LocalNetwork, one thread per node) for the library's behaviour and wording, then
real ``mpiexec`` launches in MPMD form (different options per rank), each of which must end
in well under 30 s with a non-zero exit and the error on stderr.
"""

from __future__ import annotations

import json

import pytest
import torch

import choco
from choco.baselines import DCDGossip, ECDGossip, ExactGossip
from choco.comm import AgreementError, CommError, LocalNetwork, check_agreement
from choco.comm.agree import INLINE_CONFIG_BYTES, config_digest, tensors_digest
from choco.comm.base import (
    asymmetric_pairs,
    check_message_lengths,
    check_symmetric,
    format_ranks,
)
from choco.compress import make_compressor
from choco.errors import ChocoError, GossipError
from choco.gossip import ChocoGossip, lockstep
from topologies import parse_topology

from .helpers import TESTS, run_mpi, run_mpmd

CONFIG = {"topology": "ring:4", "compressor": "sign", "gamma": 0.5, "seed": 0,
          "model_args": {"width": 32}, "lr_milestones": [50, 75]}


def model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(10, 32), torch.nn.ReLU(), torch.nn.Linear(32, 1))


def agree_on_every_node(n: int, config_of=None, tensors_of=None, what: str = "run"):
    """Run check_agreement on every node of a ring of n; return per node None or the error,
    and the number of collectives each node entered."""
    topo = parse_topology(f"ring:{n}")
    net = LocalNetwork([topo.neighbors(i) for i in range(n)])
    calls = [0] * n
    # built here, not in the node threads: torch.manual_seed is process-wide
    configs = [None if config_of is None else config_of(r) for r in range(n)]
    tensors = [None if tensors_of is None else tensors_of(r) for r in range(n)]

    def node(comm):
        gather = comm.allgather_object

        def counted(obj):
            calls[comm.rank] += 1
            return gather(obj)

        comm.allgather_object = counted
        try:
            check_agreement(comm, config=configs[comm.rank], tensors=tensors[comm.rank],
                            what=what)
        except AgreementError as exc:
            return exc
        finally:
            del comm.allgather_object
        return None

    return net.run(node), calls


def messages(results) -> set[str]:
    assert all(isinstance(r, AgreementError) for r in results), results
    return {str(r) for r in results}


# ------------------------------------------------------------------------- agreement
def test_agreement_passes_with_one_collective():
    results, calls = agree_on_every_node(
        4, lambda r: dict(CONFIG), lambda r: model().parameters())
    assert results == [None] * 4
    assert calls == [1] * 4
    # key order does not matter; a single node needs no threads
    results, _ = agree_on_every_node(
        3, lambda r: dict(reversed(CONFIG.items())) if r == 1 else CONFIG)
    assert results == [None] * 3
    check_agreement(LocalNetwork([[]]).comms[0], config=CONFIG, tensors=[torch.ones(3)])


def test_mismatched_config_raises_on_every_node_naming_ranks_and_field():
    results, calls = agree_on_every_node(
        4, lambda r: dict(CONFIG, topology="ring:4" if r < 2 else "complete:4"))
    assert messages(results) == {
        "ranks disagree on the run's configuration: field 'topology' is 'ring:4' on ranks "
        "0-1 but 'complete:4' on ranks 2-3; start every rank with the same options."}
    assert calls == [1] * 4  # a small configuration travels with the digest


def test_first_differing_field_nested_missing_and_others_listed():
    def config(r):
        c = dict(CONFIG, model_args={"width": 33 if r == 2 else 32})
        if r == 4:
            c["gamma"] = 0.3
        if r == 1:
            del c["seed"]
        return c

    (msg,) = messages(agree_on_every_node(5, config)[0])
    # fields in the order of the configuration: gamma, seed, model_args.width
    assert "field 'gamma' is 0.5 on ranks 0-3 but 0.3 on rank 4" in msg
    assert "(also differing: 'seed', 'model_args.width')" in msg
    (msg,) = messages(agree_on_every_node(
        3, lambda r: dict(CONFIG, lr_milestones=[50, 80] if r == 1 else [50, 75]))[0])
    assert "field 'lr_milestones[1]' is 75 on ranks 0, 2 but 80 on rank 1" in msg
    (msg,) = messages(agree_on_every_node(
        2, lambda r: {k: v for k, v in CONFIG.items() if r == 0 or k != "seed"})[0])
    assert "field 'seed' is 0 on rank 0 but not set on rank 1" in msg
    (msg,) = messages(agree_on_every_node(3, lambda r: dict(CONFIG, a=r), what="consensus")[0])
    assert msg.startswith("ranks disagree on the consensus' configuration: field 'a' is 0 "
                          "on rank 0 but 1 on rank 1, 2 on rank 2;")


def test_large_config_is_gathered_only_when_it_differs():
    big = dict(CONFIG, table=list(range(INLINE_CONFIG_BYTES)))
    results, calls = agree_on_every_node(3, lambda r: big)
    assert results == [None] * 3 and calls == [1] * 3
    results, calls = agree_on_every_node(
        3, lambda r: dict(big, table=[*range(999), -r, *range(1000, INLINE_CONFIG_BYTES)]))
    (msg,) = messages(results)
    assert "field 'table[999]' is 0 on rank 0 but -1 on rank 1, -2 on rank 2" in msg
    assert calls == [2] * 3


def test_mismatched_values_name_ranks_and_first_tensor():
    def tensors(r):
        sd = model().state_dict()
        if r == 3:
            sd["2.weight"][0, 7] += 1e-7
        return sd

    results, calls = agree_on_every_node(4, lambda r: CONFIG, tensors)
    assert messages(results) == {
        "ranks disagree on the run's initial parameters: those of rank 3 differ from those "
        "of ranks 0-2, first at tensor 2 ('2.weight', float32 of shape (1, 32)): different "
        "values; seed every rank the same before building the model (torch.manual_seed) or "
        "broadcast rank 0's parameters."}
    assert calls == [2] * 4  # the per-tensor digests only because they differ
    # unseeded models: every rank differs from rank 0, first at tensor 0
    (msg,) = messages(agree_on_every_node(3, None, lambda r: model(r).parameters())[0])
    assert "those of ranks 1-2 differ from those of rank 0, first at tensor 0 (float32" in msg


def test_mismatched_shapes_dtypes_and_counts():
    def shapes(r):
        return [torch.zeros(4, 3 if r == 1 else 2), torch.zeros(5)]

    (msg,) = messages(agree_on_every_node(3, None, shapes)[0])
    assert ("first at tensor 0: float32 of shape (4, 2) on ranks 0, 2 but float32 of shape "
            "(4, 3) on rank 1; build the same model on every rank.") in msg
    (msg,) = messages(agree_on_every_node(
        2, None, lambda r: [torch.zeros(3, dtype=torch.float64 if r else torch.float32)])[0])
    assert "float32 of shape (3,) on rank 0 but float64 of shape (3,) on rank 1" in msg
    (msg,) = messages(agree_on_every_node(
        3, None, lambda r: [torch.zeros(2)] * (3 if r == 2 else 2))[0])
    assert "first at tensor 2: no tensor on ranks 0-1 but float32 of shape (2,) on rank 2" in msg
    assert "(tensor counts: 2 on ranks 0-1, 3 on rank 2)" in msg


def test_config_and_tensors_both_reported():
    (msg,) = messages(agree_on_every_node(
        2, lambda r: dict(CONFIG, seed=r), lambda r: model(r).parameters())[0])
    assert msg.startswith("ranks disagree on the run's configuration: field 'seed' is 0 on "
                          "rank 0 but 1 on rank 1; start every rank with the same options. "
                          "The run's initial parameters differ too: those of rank 1 differ")


def test_arguments_given_on_some_ranks_or_not_digestable_raise_everywhere():
    (msg,) = messages(agree_on_every_node(3, lambda r: None if r == 1 else CONFIG)[0])
    assert "a configuration is passed on ranks 0, 2 but not on rank 1" in msg
    (msg,) = messages(agree_on_every_node(
        3, None, lambda r: None if r == 2 else [torch.ones(1)])[0])
    assert "tensors are passed on ranks 0-1 but not on rank 2" in msg
    # one rank cannot digest its arguments: every rank still raises (nobody waits alone)
    (msg,) = messages(agree_on_every_node(
        3, lambda r: dict(CONFIG, thing=object()) if r == 1 else CONFIG)[0])
    assert "rank 1 could not digest its arguments" in msg
    assert "config.thing holds a 'object' value without a stable text form" in msg


def test_digests_and_public_names():
    assert config_digest({"a": 1, "b": [1, 2]}) == config_digest({"b": (1, 2), "a": 1})
    assert config_digest({"a": 1}) != config_digest({"a": 1.0})
    t = torch.arange(6.0)
    assert tensors_digest([t]) == tensors_digest([t.clone()])
    assert tensors_digest([t]) != tensors_digest([t.view(2, 3)])  # the shape counts
    assert tensors_digest([t]) != tensors_digest([t.double()])
    assert choco.check_agreement is check_agreement
    assert choco.AgreementError is AgreementError
    assert issubclass(AgreementError, ChocoError)


# ------------------------------------------------------------------------- neighbour lists
def test_neighbour_lists_must_be_symmetric():
    with pytest.raises(CommError) as info:
        LocalNetwork([[1, 2], [0], [1]])
    assert str(info.value) == (
        "the neighbour lists are not symmetric: rank 0 lists rank 2 as a neighbour but rank 2 "
        "does not list rank 0; rank 2 lists rank 1 as a neighbour but rank 1 does not list "
        "rank 2; every rank must build its list from the same (undirected) topology.")
    assert asymmetric_pairs([[1], [0, 2], []]) == [(1, 2)]
    check_symmetric([[1], [0]])
    with pytest.raises(CommError, match=r"\(and 1 more pairs\)"):
        check_symmetric([[1, 2, 3, 4, 5], [], [], [], [], []])


def test_format_ranks_and_length_check():
    assert format_ranks([3]) == "rank 3"
    assert format_ranks([1, 0]) == "ranks 0-1"
    assert format_ranks([0, 1, 2, 5, 7, 8]) == "ranks 0-2, 5, 7-8"
    check_message_lengths([10, 10, 99], [[1], [0], []])  # rank 2 has no neighbours
    with pytest.raises(CommError, match="rank 1 sends 10 bytes but its neighbour rank 2 "
                       r"sends 12 \(10 bytes on ranks 0-1, 12 bytes on rank 2\)"):
        check_message_lengths([10, 10, 12], [[1], [0, 2], [1]])


# ------------------------------------------------------------------------- message integrity
def ring_gossips(specs: list[str], gamma: float = 0.5):
    topo = parse_topology(f"ring:{len(specs)}")
    net = LocalNetwork.from_matrix(topo.W)
    return [ChocoGossip(c, topo.W[c.rank], make_compressor(specs[c.rank]), gamma)
            for c in net.comms]


def test_a_node_with_another_compressor_is_named_as_the_sender():
    # same message length, another codec: the receiver's decoder names the sender
    gossips = ring_gossips(["randk:0.5"] * 3 + ["randblock:0.5"])
    xs = [torch.randn(40, generator=torch.Generator().manual_seed(i)) for i in range(4)]
    before = xs[0].clone()
    with pytest.raises(GossipError) as info:
        lockstep(gossips, xs)
    assert str(info.value) == (
        "message from rank 3 to rank 0 does not decode: randk:0.5: buffer has codec 5, "
        "expected 4; every rank must run the same compressor and model.")
    assert torch.equal(xs[0], before)  # checked before anything was updated
    assert float(gossips[0].state.x_hat.abs().sum()) == 0.0
    # another length: the exchange itself names the sender (MPI would truncate silently)
    gossips = ring_gossips(["sign"] * 3 + ["topk:0.5"])
    with pytest.raises(CommError, match="rank 3 sent a 176-byte gossip message to rank 0, "
                       "which sends 25-byte messages; every rank must run the same "
                       "compressor on a model of the same size"):
        lockstep(gossips, [torch.randn(40) for _ in range(4)])


def test_a_node_gossiping_another_size_is_named():
    # sign messages of 41 and 47 elements have the same length: the header's count differs
    gossips = ring_gossips(["sign"] * 3)
    xs = [torch.randn(47 if i == 1 else 41) for i in range(3)]
    with pytest.raises(GossipError, match="message from rank 1 to rank 0 does not decode: "
                       "sign: the message holds 47 elements but rank 0 gossips 41; "):
        lockstep(gossips, xs)


@pytest.mark.parametrize("cls", [DCDGossip, ECDGossip])
def test_baselines_name_the_sender(cls):
    topo = parse_topology("ring:3")
    net = LocalNetwork.from_matrix(topo.W)
    specs = ["randk:0.5:raw", "randblock:0.5:raw", "randk:0.5:raw"]
    gossips = [cls(c, topo.W[c.rank], make_compressor(specs[c.rank]), 0) for c in net.comms]
    xs = [torch.randn(30) for _ in range(3)]
    for g, x in zip(gossips, xs, strict=True):
        g.init(x)
    with pytest.raises(GossipError, match="message from rank 1 to rank 0 does not decode"):
        lockstep(gossips, xs)


def test_exact_gossip_with_another_model_size_names_the_sender():
    topo = parse_topology("ring:3")
    net = LocalNetwork.from_matrix(topo.W)
    gossips = [ExactGossip(c, topo.W[c.rank]) for c in net.comms]
    xs = [torch.randn(20 if i == 2 else 21) for i in range(3)]
    with pytest.raises(CommError, match="rank 2 sent a 96-byte gossip message to rank 0"):
        lockstep(gossips, xs)


# ------------------------------------------------------------------------- real mpiexec
FAULT = TESTS / "mpi" / "agree_fault.py"
#: a fault must end the job well within this (launching 4 ranks costs ~5 s on 2 cores)
FAULT_DEADLINE = 30.0


@pytest.mark.mpi
def test_every_start_up_fault_raises_on_every_rank_under_mpi(tmp_path):
    """One launch, each fault in turn; every rank catches its error and goes on."""
    out = tmp_path / "agree.json"
    proc = run_mpi(4, [str(TESTS / "mpi" / "agree_check.py"), str(out)], timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    cases = json.loads(out.read_text())["cases"]
    assert cases["agree"] == [None] * 4
    assert cases["gossip_after"] == [None] * 4
    for case, kind, text in [
        ("config", "AgreementError", "field 'topology' is 'ring:4' on ranks 0-1 but "
         "'complete:4' on ranks 2-3"),
        ("config_large", "AgreementError", "field 'blob[1234]' is 1234 on ranks 0-2 but -1 "
         "on rank 3"),
        ("tensors", "AgreementError", "those of rank 3 differ from those of ranks 0-2, first "
         "at tensor 2 ('2.weight', float32 of shape (1, 16)): different values"),
        ("asymmetric", "CommError", "rank 0 lists rank 3 as a neighbour but rank 3 does not "
         "list rank 0"),
        ("invalid", "CommError", "rank 2: neighbours must be distinct ranks"),
        ("lengths", "CommError", "rank 0 sends 25 bytes but its neighbour rank 3 sends 176 "
         "(25 bytes on ranks 0-2, 176 bytes on rank 3)"),
    ]:
        outcomes = cases[case]
        assert all(o is not None and o[0] == kind and text in o[1] for o in outcomes), (
            case, outcomes)
        assert len({o[1] for o in outcomes}) == 1, (case, outcomes)  # the same everywhere
    codec = cases["codec"]
    assert codec[1] is None  # rank 1 is no neighbour of rank 3 on ring:4
    assert codec[0][1].startswith("message from rank 3 to rank 0 does not decode: randk:0.5")
    assert codec[2][1].startswith("message from rank 3 to rank 2 does not decode")
    assert codec[3][1].startswith("message from rank 0 to rank 3 does not decode")


FAULTS = {
    "config": ([(2, ["--topology", "ring:4"]), (2, ["--topology", "complete:4"])],
               "error: ranks disagree on the run's configuration: field 'topology' is "
               "'ring:4' on ranks 0-1 but 'complete:4' on ranks 2-3; start every rank with the "
               "same options."),
    "model": ([(3, []), (1, ["--perturb-model"])],
              "error: ranks disagree on the run's initial parameters: those of rank 3 differ "
              "from those of ranks 0-2, first at tensor 0 ('0.weight', float32 of shape "
              "(16, 8)): different values"),
    "asymmetric": ([(3, []), (1, ["--drop-neighbour", "0"])],
                   "error: the neighbour lists are not symmetric: rank 0 lists rank 3 as a "
                   "neighbour but rank 3 does not list rank 0"),
    "compressor": ([(3, []), (1, ["--exchange-compressor", "topk:0.5"])],
                   "error: neighbours post gossip messages of different lengths: rank 0 "
                   "sends 41 bytes but its neighbour rank 3 sends 664"),
}


@pytest.mark.mpi
@pytest.mark.parametrize("fault", list(FAULTS))
def test_fault_ends_the_mpi_job_quickly(fault):
    groups, expected = FAULTS[fault]
    proc, seconds = run_mpmd([(n, [str(FAULT), *args]) for n, args in groups])
    assert proc.returncode != 0, proc.stdout
    assert expected in proc.stderr, proc.stderr[-3000:]
    assert "ok:" not in proc.stdout
    assert seconds < FAULT_DEADLINE, f"{fault}: {seconds:.1f} s from launch to exit"
