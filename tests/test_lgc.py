"""``lgc``: the learned compressor's format, fallback, switch and use in every front end.

Expectations are computed independently of the compressor: the fallback against
``torch.topk``, the learned message against the least-squares formula and a receiver that
decodes with its own copy of the weights, the switch against node 0's weights read before
it, and the bytes against the message-length formula.

The codec is pure; a node's weights, counters and switch are its :class:`LGCState`, which
the tests drive the way the gossip does (:func:`send`: encode, then ``observe``).
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from choco.comm import LocalNetwork
from choco.compress import LGC, Compressor, PerTensor, decode, make_compressor
from choco.compress.lgc import LGCState, check_same_weights
from choco.compress.stateful import bind, sync_in_process
from choco.errors import AgreementError, CompressionError
from choco.gossip import ChocoGossip, lockstep
from choco.run.compress_cli import main as compress_main
from choco.train import main as train_main
from choco.tuning import tune_gamma
from choco.wire.framing import parse_header
from topologies import parse_topology


def flags(buf: torch.Tensor) -> int:
    return parse_header(buf, "lgc")[1]


def heavy(numel: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(numel, generator=g) * torch.rand(numel, generator=g) ** 3


def fresh(spec: str) -> tuple[Compressor, LGCState]:
    """A node: the codec bound to a fresh state, and that state."""
    q = make_compressor(spec)
    assert isinstance(q, LGC)
    state = q.new_state()
    return bind(q, state), state


def send(coder: Compressor, state: LGCState, x: torch.Tensor, seed: int) -> torch.Tensor:
    """What the gossip does for one message: encode, then let the state learn and count."""
    buf = coder.encode(x, seed)
    state.observe(x, flags(buf))
    return buf


def trained(spec: str, steps: int = 150, numel: int = 4000) -> tuple[Compressor, LGCState]:
    coder, state = fresh(spec)
    for s in range(steps):
        state.train_step(heavy(numel, s))
    sync_in_process([state], coder.spec)
    return coder, state


# ---------------------------------------------------------------------------- the spec
def test_spec_defaults_and_options():
    q = make_compressor("lgc")
    assert (q.ratio, q.latent, q.warmup) == (0.01, 4, 50)
    assert q.floor == pytest.approx(1 - 0.01 / 2)
    q = make_compressor("lgc:warmup=7:latent=8:ratio=0.05:floor=0.9")
    assert (q.ratio, q.latent, q.warmup, q.floor) == (0.05, 8, 7, 0.9)
    assert make_compressor(q.spec).spec == q.spec  # the canonical spec parses to itself


@pytest.mark.parametrize("spec,needle", [
    ("lgc:foo=1", "warmup=ROUNDS"),
    ("lgc:0.01", "warmup=ROUNDS"),
    ("lgc:latent=3", "power of two"),
    ("lgc:latent=1", "power of two"),
    ("lgc:ratio=0", "ratio in (0, 1]"),
    ("lgc:ratio=x", "warmup=ROUNDS"),
    ("lgc:floor=1", "floor in (0, 1)"),
    ("lgc:warmup=-1", "warmup >= 0"),
    ("scaled(lgc)", "used alone"),
    ("lgc+natural", "used alone"),
    ("topk:0.1+lgc", "used alone"),
])
def test_bad_specs_are_clear_errors(spec, needle):
    with pytest.raises(CompressionError, match=None) as info:
        make_compressor(spec)
    assert needle in str(info.value)


def test_per_tensor_is_refused():
    with pytest.raises(CompressionError, match="cannot run per tensor"):
        PerTensor(make_compressor("lgc"), [10, 20])


# ---------------------------------------------------------------------------- the format
@pytest.mark.parametrize("numel,ratio,latent", [(1000, 0.01, 4), (5000, 0.02, 8), (37, 0.1, 2)])
def test_every_message_has_the_formula_length(numel, ratio, latent):
    q, state = fresh(f"lgc:ratio={ratio}:latent={latent}:warmup=2")
    k = max(1, math.ceil(ratio * numel))
    expected = 16 + 4 + 4 * k + 2 * math.ceil(k / latent)
    assert q.nbytes(numel) == expected
    lengths = []
    for s in range(2):  # warm-up messages
        lengths.append(send(q, state, heavy(numel, s), s).numel())
    sync_in_process([state], q.spec)
    for s in range(2, 5):  # learned or fallback
        lengths.append(send(q, state, heavy(numel, s), s).numel())
    assert lengths == [expected] * 5


def test_warmup_and_fallback_messages_are_exact_top_k_prime():
    numel = 3000
    q, state = fresh("lgc:warmup=3")
    codec = make_compressor("lgc:warmup=3")
    assert isinstance(codec, LGC)
    kf = codec.fallback_k(numel)
    assert kf == (4 + 4 * 30 + 2 * 8) // 8  # the entries of 8 bytes that fit the payload
    for s in range(3):
        x = heavy(numel, s)
        got = decode(q, send(q, state, x, s))
        ref = torch.zeros_like(x)
        idx = torch.topk(x.abs(), kf).indices
        ref[idx] = x[idx]
        assert torch.equal(got, ref)
        assert torch.equal(codec(x, seed=s), ref)  # without a state: the warm-up's message
    assert (state.learned, state.fallbacks) == (0, 0)  # warm-up rounds are neither


def test_learned_message_is_least_squares_and_decodes_the_same_on_a_receiver():
    sender, sent = trained("lgc:warmup=0")
    receiver, held = fresh("lgc:warmup=0")
    _, other = fresh("lgc:warmup=0")
    sync_in_process([other, held], receiver.spec)  # a fresh node gets other weights...
    held.load_weights(sent.weights())  # ...until it holds the sender's (the switch)
    x = heavy(4000, 999)
    buf = send(sender, sent, x, 0)
    assert sent.learned == 1 and flags(buf) == 1  # a learned message
    own = decode(sender, buf)
    assert torch.equal(decode(receiver, buf), own)
    support = own != 0
    k = max(1, math.ceil(0.01 * x.numel()))
    assert int(support.sum()) == k
    assert torch.equal(support.nonzero().view(-1),
                       torch.sort(torch.topk(x.abs(), k).indices).values)
    # least squares: the error on the support is orthogonal to what was sent
    xs, qs = x[support].double(), own[support].double()
    assert abs(float((xs - qs) @ qs)) <= 1e-4 * float(qs @ qs)
    err = float(((own.double() - x.double()) ** 2).sum() / (x.double() ** 2).sum())
    assert err <= 1 - 0.01 / 2  # the default floor
    topk_err = 1 - float((x[support].double() ** 2).sum() / (x.double() ** 2).sum())
    assert topk_err <= err < topk_err + 0.05  # a trained code keeps most of the top-k energy


def test_a_floor_below_every_error_falls_back_every_round():
    q, state = trained("lgc:warmup=0:floor=0.001")
    kf = (4 + 4 * 40 + 2 * 10) // 8  # the entries of 8 bytes that fit the payload
    for s in range(4):
        x = heavy(4000, 100 + s)
        buf = send(q, state, x, s)
        assert flags(buf) == 0  # top-k'
        ref = torch.zeros_like(x)
        idx = torch.topk(x.abs(), kf).indices
        ref[idx] = x[idx]
        assert torch.equal(decode(q, buf), ref)
    assert (state.learned, state.fallbacks) == (0, 4)


def test_training_lowers_the_reconstruction_error():
    _, state = fresh("lgc")
    first = state.train_step(heavy(4000, 0))
    for s in range(1, 200):
        last = state.train_step(heavy(4000, s))
    assert last < first / 3, (first, last)


def test_learned_message_before_the_switch_is_refused():
    sender, sent = trained("lgc:warmup=0")
    x = heavy(4000, 5)
    buf = send(sender, sent, x, 0)
    assert flags(buf) == 1
    receiver, _ = fresh("lgc:warmup=0")
    with pytest.raises(CompressionError, match="before this node's switch"):
        decode(receiver, buf)
    with pytest.raises(CompressionError, match="before this node's switch"):
        decode(make_compressor("lgc:warmup=0"), buf)  # no state at all


def test_encoding_at_the_switch_without_sync_is_refused():
    q, state = fresh("lgc:warmup=1")
    send(q, state, heavy(100, 0), 0)
    with pytest.raises(CompressionError, match="not shared"):
        q.encode(heavy(100, 1), 1)


def test_encoding_reads_the_state_and_only_observe_changes_it():
    """Q(x) is a function of x, the seed and the state: encoding twice gives the same
    bytes and leaves weights, optimizer and counters alone; observe trains (warm-up) or
    counts (after the switch)."""
    q, state = fresh("lgc:warmup=2")
    x = heavy(3000, 7)
    before = (state.weights().copy(), state.rounds, state.learned, state.fallbacks)
    a, b = q.encode(x, 1), q.encode(x, 1)
    assert torch.equal(a, b)
    assert np.array_equal(state.weights(), before[0])
    assert (state.rounds, state.learned, state.fallbacks) == before[1:]
    state.observe(x, flags(a))
    assert state.rounds == 1 and not np.array_equal(state.weights(), before[0])  # trained
    state.observe(x, 0)
    sync_in_process([state], q.spec)
    frozen = state.weights().copy()
    buf = q.encode(x, 2)
    assert np.array_equal(state.weights(), frozen) and state.learned + state.fallbacks == 0
    state.observe(x, flags(buf))
    assert np.array_equal(state.weights(), frozen)  # frozen after the switch
    assert (state.learned, state.fallbacks) == ((1, 0) if flags(buf) == 1 else (0, 1))


def test_different_weights_after_the_switch_are_an_agreement_error():
    with pytest.raises(AgreementError, match=r"ranks \[2\]"):
        check_same_weights(["a", "a", "b"])
    check_same_weights(["c", "c"])


# ---------------------------------------------------------------------------- in gossip
def switch_with_corrupted_broadcast(bad: int, n: int = 4, warmup: int = 2) -> list:
    """Run ``lgc`` gossip on a threaded ring of ``n`` across its switch, where rank ``bad``
    receives node 0's weights with one value changed (a corrupted broadcast); return what
    every rank raised, in rank order."""
    topo = parse_topology(f"ring:{n}")
    net = LocalNetwork([topo.neighbors(i) for i in range(n)])
    q = make_compressor(f"lgc:warmup={warmup}")
    gossips = [ChocoGossip(c, topo.W[c.rank], q, 0.05, seed=3) for c in net.comms]
    comm = net.comms[bad]
    honest = comm.broadcast

    def corrupted(array, root=0):
        got = np.array(honest(array, root), copy=True)
        got[0] += 1.0
        return got

    comm.broadcast = corrupted  # type: ignore[method-assign]
    raised: list = [None] * n

    def node(c):
        x = heavy(500, c.rank)
        try:
            for _ in range(warmup + 1):
                gossips[c.rank].step(x)
        except AgreementError as exc:
            raised[c.rank] = exc

    net.run(node)
    return raised


@pytest.mark.parametrize("bad", [1, 3])
def test_different_weights_at_the_switch_fail_every_rank_naming_the_node(bad):
    raised = switch_with_corrupted_broadcast(bad)
    assert all(isinstance(e, AgreementError) for e in raised), raised
    assert all(f"ranks [{bad}]" in str(e) for e in raised), raised


def gossip_run(threaded: bool, rounds: int, spec: str = "lgc:warmup=20", n: int = 6):
    topo = parse_topology(f"ring:{n}")
    net = LocalNetwork([topo.neighbors(i) for i in range(n)])
    q = make_compressor(spec)
    gossips = [ChocoGossip(c, topo.W[c.rank], q, 0.05, seed=3) for c in net.comms]
    xs = [heavy(3000, 50 + i) for i in range(n)]
    x0 = [x.clone() for x in xs]
    before = {}

    def node(comm):
        g, x = gossips[comm.rank], xs[comm.rank]
        for r in range(rounds):
            if r == 20:
                before[comm.rank] = g.coding.weights().copy()
            g.step(x)

    if threaded:
        net.run(node)
    else:
        lockstep(gossips, xs, 20)
        before.update({i: g.coding.weights().copy() for i, g in enumerate(gossips)})
        lockstep(gossips, xs, rounds - 20)
    return gossips, xs, x0, before


def test_switch_gives_every_node_node_0s_weights_and_counts_their_bytes():
    gossips, xs, x0, before = gossip_run(threaded=True, rounds=60)
    n = len(gossips)
    qs = [g.coding for g in gossips]
    assert len({q.digest() for q in qs}) == 1
    assert all(q is not qs[0] for q in qs[1:])  # one state per node
    assert all(g.compressor is gossips[0].compressor for g in gossips)  # one pure codec
    assert np.array_equal(qs[0].weights(), before[0])
    assert not np.array_equal(before[0], before[1])  # each node had trained its own
    assert all(q.frozen and q.rounds == 60 for q in qs)
    assert all(q.learned + q.fallbacks == 40 for q in qs)
    message = gossips[0].compressor.nbytes(3000)
    P = qs[0].parameters_nbytes()
    assert P == 4 * sum(p.numel() for p in qs[0].model.parameters())
    assert gossips[0].bytes_sent == 60 * 2 * message + (n - 1) * P
    assert all(g.bytes_sent == 60 * 2 * message for g in gossips[1:])
    # the network average is preserved by CHOCO (W doubly stochastic) and the nodes move
    # towards it
    mean0 = torch.stack(x0).double().mean(0)
    mean = torch.stack(xs).double().mean(0)
    assert torch.allclose(mean, mean0, atol=1e-5)
    spread0 = sum(float(((x.double() - mean0) ** 2).sum()) for x in x0)
    spread = sum(float(((x.double() - mean) ** 2).sum()) for x in xs)
    assert spread < 0.8 * spread0


def test_threaded_and_one_thread_drivers_agree_bit_for_bit():
    _, threaded, _, _ = gossip_run(threaded=True, rounds=35)
    _, lock, _, _ = gossip_run(threaded=False, rounds=35)
    assert all(torch.equal(a, b) for a, b in zip(threaded, lock, strict=True))


@pytest.mark.slow
def test_consensus_converges_like_top_k():
    """Ring of 8, d = 5,000: after 600 rounds lgc has cut the spread as top-1% does, to the
    same order, with fewer bytes per message."""
    n, d = 8, 5000
    topo = parse_topology(f"ring:{n}")
    result = {}
    for spec in ("topk:0.01", "lgc:warmup=100"):
        net = LocalNetwork([topo.neighbors(i) for i in range(n)])
        gossips = [ChocoGossip(c, topo.W[c.rank], make_compressor(spec), 0.05, seed=1)
                   for c in net.comms]
        g = torch.Generator().manual_seed(0)
        xs = [torch.randn(d, generator=g) for _ in range(n)]
        mean = torch.stack(xs).mean(0)
        spread0 = sum(float(((x - mean) ** 2).sum()) for x in xs)
        lockstep(gossips, xs, 600)
        result[spec] = (sum(float(((x - mean) ** 2).sum()) for x in xs) / spread0,
                        gossips[0].compressor.nbytes(d))
    (e_top, b_top), (e_lgc, b_lgc) = result["topk:0.01"], result["lgc:warmup=100"]
    assert e_lgc < 0.02 and e_lgc < 5 * e_top, result
    assert b_lgc < 0.6 * b_top


def test_tuner_runs_with_lgc():
    topo = parse_topology("ring:4")
    gamma, _ = tune_gamma(topo.W, make_compressor("lgc:warmup=10"), dim=400, steps=40, seed=0)
    assert 0 < gamma <= 1


# ---------------------------------------------------------------------------- front ends
def test_compress_cli_trains_then_sends_a_learned_code(tmp_path, capsys):
    x = heavy(8000, 1).numpy()
    np.save(tmp_path / "x.npy", x)
    assert compress_main(["lgc:warmup=150", "--in", str(tmp_path / "x.npy"),
                          "--out", str(tmp_path / "q.npy")]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    k = math.ceil(0.01 * 8000)
    assert out["nbytes"] == 16 + 4 + 4 * k + 2 * math.ceil(k / 4)
    assert out["learned"] is True
    y = np.load(tmp_path / "q.npy")
    assert np.count_nonzero(y) == k
    err = float(((y - x) ** 2).sum() / (x ** 2).sum())
    assert out["error"] == pytest.approx(err, rel=1e-6) and err <= 1 - 0.01 / 2


def test_choco_train_counts_learned_and_fallback_messages(tmp_path):
    out = tmp_path / "run"
    assert train_main(["--backend", "local", "--nodes", "4", "--topology", "ring:4",
                       "--compressor", "lgc:warmup=30", "--gamma", "0.05", "--epochs", "2",
                       "--per-tensor", "true", "--quiet", "--out", str(out)]) == 0
    config = json.loads((out / "config.json").read_text())
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = config["steps_per_epoch"]
    assert 30 < 2 * steps and steps < 30  # the switch falls in epoch 2
    assert rows[0]["lgc_learned"] + rows[0]["lgc_fallbacks"] == 0
    assert rows[1]["lgc_learned"] + rows[1]["lgc_fallbacks"] == 4 * (2 * steps - 30)
    # one flat message per round although --per-tensor is on: lgc is never split
    d = config["parameters"]
    assert config["message_bytes"] == make_compressor("lgc").nbytes(d)
    q = make_compressor("lgc:warmup=30")
    assert isinstance(q, LGC)
    P = q.new_state().parameters_nbytes()
    sent = 2 * steps * 2 * q.nbytes(d)  # rounds x neighbours x message, per node
    assert rows[1]["bytes_sent"] == pytest.approx((4 * sent + 3 * P) / 4)
