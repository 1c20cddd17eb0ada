"""Smoke tests of the benchmarks ``gossip``, ``train``, ``scaling``, ``whatif`` and
``simnet``.

Tiny sizes only: each benchmark runs and prints its table with the expected columns and
rows (the distributed ones under a real ``mpiexec -n 2`` and a real ``torchrun
--nproc-per-node 2``, with timeouts). The whatif model is checked
against hand-computed formula values. Nothing here asserts on a measured time.
"""

from __future__ import annotations

import json
import math
import statistics
import subprocess

import pytest
import torch

from choco.compress import make_compressor
from choco.models import make_model
from choco.run.bench import gossip as gossip_bench
from choco.run.bench import main, simnet, whatif
from choco.run.bench import scaling as scaling_bench
from choco.run.bench.whatif import Link

from .helpers import ROOT, run_mpi, run_torchrun, worker_output

TIMEOUT = 240


@pytest.fixture
def bench(capsys):
    """``python -m choco.bench ARGS`` in-process: ``(status, stdout, stderr)``; torch's
    thread count (the in-process benchmarks set 1) is restored afterwards."""
    threads = torch.get_num_threads()

    def run(*args: str) -> tuple[int, str, str]:
        try:
            status = main(list(args))
        finally:
            torch.set_num_threads(threads)
        out, err = capsys.readouterr()
        return status, out, err

    return run


def _json(stdout: str) -> dict:
    return json.loads(stdout.strip().splitlines()[-1])


def _table_rows(stdout: str, first_cell: str) -> list[str]:
    return [line for line in stdout.splitlines() if line.startswith(f"| {first_cell}")]


# ------------------------------------------------------------------------------ gossip
def test_gossip_in_process_prints_traffic_and_round_tables(bench):
    status, out, err = bench("gossip", "--backend", "local", "--nodes", "3", "--numel", "4000",
                             "--rounds", "2", "--warmup", "1",
                             "--specs", "sign,topk:0.1,randblock:0.1", "--json")
    assert status == 0, err
    assert "machine: " in out and "MPI: not used" in out
    assert "| spec | encode | own decode (x̂, s) | each neighbour's decode | update | total |" \
        in out
    assert ("| spec | bytes/node/round | encode (begin) ms | decode+update ms | round ms | "
            "min traffic B/elem | min-traffic ms | round / min |") in out
    for spec in ("sign", "topk:0.1", "randblock:0.1"):
        assert len(_table_rows(out, f"`{spec}`")) == 2  # traffic row and timing row
    summary = _json(out)
    assert summary["mode"] == "local" and summary["degree"] == 2
    sign = summary["rows"][0]
    assert sign["bytes_per_node"] == 2 * make_compressor("sign").nbytes(4000)
    assert {"encode_ms", "decode_update_ms", "round_ms", "ratio_to_min"} <= set(sign)


def test_min_traffic_per_element_by_hand():
    d = 1_000_000
    sign = gossip_bench.min_traffic(make_compressor("sign"), d, 2)
    b = make_compressor("sign").nbytes(d) / d  # 1/8 + 20/d
    assert sign["encode"] == pytest.approx(8 + b)
    assert sign["own_decode"] == pytest.approx(16 + 2 * b)
    assert sign["neighbour_decode"] == pytest.approx(8 + b)
    assert sign["total"] == pytest.approx(8 + b + 16 + 2 * b + 2 * (8 + b) + 16)
    topk = gossip_bench.min_traffic(make_compressor("topk:0.01"), d, 2)
    b = make_compressor("topk:0.01").nbytes(d) / d  # 0.08 + 16/d
    assert topk["encode"] == pytest.approx(8 + b)  # the selection reads all of x and x̂
    assert topk["neighbour_decode"] == pytest.approx(0.08 + b)
    block = gossip_bench.min_traffic(make_compressor("randblock:0.01"), d, 2)
    assert block["encode"] == pytest.approx(0.08 + make_compressor("randblock:0.01").nbytes(d)
                                            / d)


def test_memory_check_refuses_what_does_not_fit(monkeypatch):
    qs = [make_compressor("sign")]
    assert gossip_bench.node_memory(10**6, 2, qs) == 7 * 4 * 10**6 + 4 * qs[0].nbytes(10**6)

    def per_node(d):
        return gossip_bench.node_memory(d, 2, qs)

    monkeypatch.setenv("CHOCO_MEMORY_LIMIT", "1e12")
    assert gossip_bench.memory_problem(10**6, 8, per_node) is None
    monkeypatch.setenv("CHOCO_MEMORY_LIMIT", "1e8")
    problem = gossip_bench.memory_problem(10**6, 8, per_node)
    most = int(problem.split("lower --numel to at most ")[1].split(" ")[0].replace(",", ""))
    assert 8 * per_node(most) <= 1e8 < 8 * per_node(most + 1)


def test_gossip_backend_torch_without_torchrun_says_how_to_start_it(bench, monkeypatch):
    for var in ("TORCHELASTIC_RUN_ID", "RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                "MASTER_PORT"):
        monkeypatch.delenv(var, raising=False)
    status, out, err = bench("gossip", "--backend", "torch", "--numel", "100")
    assert status == 2 and out == ""
    assert err.startswith("error: ") and "torchrun --standalone --nproc-per-node N" in err


def test_gossip_cli_refuses_a_numel_too_large_for_this_machine(bench, monkeypatch):
    monkeypatch.setenv("CHOCO_MEMORY_LIMIT", "1e9")
    status, out, err = bench("gossip", "--backend", "local", "--numel", "100000000",
                             "--specs", "identity")
    assert status == 2 and out == ""
    assert err.startswith("error: --numel 100,000,000 must fit in the memory limit")
    assert "lower --numel to at most" in err


@pytest.mark.mpi
def test_gossip_under_mpiexec_prints_ratio_table():
    proc = run_mpi(2, ["choco.bench", "gossip", "--numel", "5000", "--rounds", "2",
                       "--warmup", "1", "--specs", "sign,topk:0.01", "--json"],
                   module=True, timeout=TIMEOUT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert out.count("| spec |") == 1  # rank 0 prints, the other rank stays quiet
    assert ("| spec | bytes/node/round | encode (begin) ms | exchange wait ms | "
            "decode+update ms | round ms | allreduce ms | round/allreduce |") in out
    assert len(_table_rows(out, "`sign`")) == 1 and len(_table_rows(out, "`topk:0.01`")) == 1
    assert "MPI: MPICH" in out or "MPI: Open MPI" in out or "MPI: " in out
    summary = _json(out)
    assert summary["n"] == 2 and summary["topology"] == "ring:2" and summary["degree"] == 1
    assert summary["allreduce_bytes"] == 5000 * 4  # 2 (n-1)/n * 4 d at n = 2
    for row, spec in zip(summary["rows"], ("sign", "topk:0.01"), strict=True):
        assert row["bytes_per_node"] == make_compressor(spec).nbytes(5000)
        assert {"encode_ms", "wait_ms", "decode_update_ms", "round_ms", "allreduce_ms",
                "ratio"} <= set(row)
        # every rank's own times, round by round (the shaped-link validation uses them)
        per = row["rounds_ms"]
        assert len(per["encode"]) == len(per["decode_update"]) == 2  # ranks
        assert all(len(r) == 2 for r in per["encode"] + per["decode_update"])  # rounds
        for k, total in enumerate(per["round"]):  # the slowest rank's round holds its CPU
            assert total >= max(e[k] + d[k] for e, d in
                                zip(per["encode"], per["decode_update"], strict=True))
        assert row["rank_encode_ms"] == pytest.approx(
            [statistics.median(r) for r in per["encode"]])
        assert row["rank_decode_update_ms"] == pytest.approx(
            [statistics.median(r) for r in per["decode_update"]])
        assert row["round_ms"] == pytest.approx(statistics.median(per["round"]))


@pytest.mark.torchrun
@pytest.mark.slow
def test_gossip_under_torchrun_prints_ratio_table():
    """``--backend torch``: the same benchmark over TorchCommunicator, against
    torch.distributed's own all-reduce."""
    proc = run_torchrun(2, ["-m", "choco.bench", "gossip", "--backend", "torch",
                            "--numel", "5000", "--rounds", "2", "--warmup", "1",
                            "--specs", "sign,topk:0.01", "--json"], timeout=TIMEOUT)
    assert proc.returncode == 0, worker_output(proc.stderr)[-3000:]
    out = proc.stdout
    assert out.count("| spec |") == 1  # rank 0 prints, the other rank stays quiet
    assert "all-reduce = torch.distributed.all_reduce(SUM) of the same fp32 vector" in out
    assert "comm: torch.distributed gloo on cpu" in out
    summary = _json(out)
    assert summary["mode"] == "torch" and summary["n"] == 2 and summary["degree"] == 1
    assert summary["topology"] == "ring:2"
    assert summary["allreduce_bytes"] == 5000 * 4  # 2 (n-1)/n * 4 d at n = 2
    for row, spec in zip(summary["rows"], ("sign", "topk:0.01"), strict=True):
        assert row["bytes_per_node"] == make_compressor(spec).nbytes(5000)  # one neighbour
        assert row["round_ms"] > 0 and row["allreduce_ms"] > 0


# ------------------------------------------------------------------------------ train
@pytest.mark.mpi
@pytest.mark.slow
def test_train_under_mpiexec_prints_overhead_table():
    proc = run_mpi(2, ["choco.bench", "train", "--models", "mlp,resnet20", "--batch-size", "2",
                       "--specs", "sign", "--orders", "overlap,overlap-noprogress,sync",
                       "--blocks", "1",
                       "--block", "2", "--json"], module=True, timeout=TIMEOUT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert ("| model | config | step ms | compute ms | compress ms | exchange wait ms | "
            "update ms | gossip overhead | gossip time / local step |") in out
    for model in ("mlp", "resnet20"):
        rows = [r for r in out.splitlines() if r.startswith(f"| {model} (")]
        assert [r.split(" | ")[1] for r in rows] == ["local", "plain SGD", "sign overlap",
                                                     "sign overlap-noprogress", "sign sync"]
        assert rows[0].endswith("| – | – |") and rows[2].endswith("% |")
    summary = _json(out)
    assert summary["n"] == 2 and len(summary["rows"]) == 10
    assert summary["rows"][5]["params"] == 272_474 and summary["rows"][5]["tensors"] == 65


@pytest.mark.torchrun
@pytest.mark.slow
def test_train_under_torchrun_prints_overhead_table():
    proc = run_torchrun(2, ["-m", "choco.bench", "train", "--models", "mlp", "--batch-size",
                            "2", "--specs", "sign", "--orders", "overlap,sync", "--blocks", "1",
                            "--block", "2", "--json"], timeout=TIMEOUT)
    assert proc.returncode == 0, worker_output(proc.stderr)[-3000:]
    out = proc.stdout
    assert out.count("| model | config |") == 1
    rows = [r for r in out.splitlines() if r.startswith("| mlp (")]
    assert [r.split(" | ")[1] for r in rows] == ["local", "plain SGD", "sign overlap",
                                                 "sign sync"]
    assert "comm: torch.distributed gloo on cpu" in out
    summary = _json(out)
    assert summary["n"] == 2 and summary["topology"] == "ring:2" and len(summary["rows"]) == 4
    mlp = make_model("mlp", input_shape=(1, 8, 8), num_classes=10)
    assert summary["rows"][0]["params"] == sum(p.numel() for p in mlp.parameters())


def test_train_without_mpiexec_says_how_to_run_it(bench):
    status, out, err = bench("train")
    assert status == 2 and out == ""
    assert "mpiexec -n 4 python -m choco.bench train" in err
    assert "torchrun --standalone --nproc-per-node 4 -m choco.bench train" in err


# ------------------------------------------------------------------------------ scaling
def test_scaling_prints_table_and_slopes(bench):
    status, out, err = bench("scaling", "--specs", "sign", "--nodes", "2,4", "--numels",
                             "1000,4000", "--fixed-numel", "2000", "--fixed-nodes", "3",
                             "--rounds", "1", "--warmup", "0", "--json")
    assert status == 0, err
    assert "| spec | sweep | n | d | round ms | ns per node·element |" in out
    assert "| spec | slope vs n | slope vs d |" in out
    summary = _json(out)
    assert [(r["axis"], r["n"], r["numel"]) for r in summary["rows"]] == [
        ("n", 2, 2000), ("n", 4, 2000), ("d", 3, 1000), ("d", 3, 4000)]
    assert set(summary["slopes"][0]) == {"spec", "slope_n", "slope_d"}


def test_log_log_slope_by_hand():
    assert scaling_bench.slope([1, 2, 4, 8], [3, 6, 12, 24]) == pytest.approx(1.0)
    assert scaling_bench.slope([10, 100], [5, 500]) == pytest.approx(2.0)
    assert math.isnan(scaling_bench.slope([4], [1.0]))


# ------------------------------------------------------------------------------ whatif
def test_link_model_matches_the_formulas():
    beta = 1e9 / 8  # 1 Gbit/s
    nic = Link(10e-6, beta)
    # ring all-reduce: 2(n-1) α + 2 (n-1)/n S/β
    assert whatif.allreduce_time(8, 8e6, nic) == pytest.approx(14 * 10e-6 + 1.75 * 8e6 / beta)
    # gossip: deg × (α + m/β), one NIC, neighbours served one after the other
    assert whatif.gossip_time(8, 2, 250_020, nic) == pytest.approx(2 * (10e-6 + 250_020 / beta))
    # one link shared by all traffic: total bytes / β (+ α per stage)
    shared = Link(0.0, beta, shared=True)
    assert whatif.allreduce_time(8, 8e6, shared) == pytest.approx(0.896)
    assert whatif.gossip_time(8, 2, 250_020, shared) == pytest.approx(8 * 2 * 250_020 / beta)
    assert whatif.allreduce_time(1, 8e6, nic) == 0.0
    assert whatif.step_time(0.1, 0.01, 0.05, "sync") == pytest.approx(0.16)
    assert whatif.step_time(0.1, 0.01, 0.05, "overlap") == pytest.approx(0.11)
    assert whatif.step_time(0.1, 0.01, 0.3, "overlap") == pytest.approx(0.31)


def test_crossover_bandwidth_by_hand():
    S, m = 8e6, 250_020
    # sync, α = 0, no reduction cost: codec = (1.75 S − 2 m) / β*
    beta = whatif.crossover(8, 2, m, S, compute=0.1, codec=0.01, reduce=0.0, alpha=0.0,
                            order="sync")
    assert beta == pytest.approx((1.75 * S - 2 * m) / 0.01, rel=1e-6)
    # overlap with the link hidden behind compute: codec = 1.75 S / β*
    beta = whatif.crossover(8, 2, m, S, compute=0.1, codec=0.01, reduce=0.0, alpha=0.0,
                            order="overlap")
    assert beta == pytest.approx(1.75 * S / 0.01, rel=1e-6)
    # free codec and latency that favours gossip: gossip wins at every bandwidth
    assert whatif.crossover(8, 2, m, S, 0.1, 0.0, 0.0, 1e-3, "sync") == math.inf
    # a message larger than the all-reduce's traffic never wins
    assert whatif.crossover(8, 2, 10 * S, S, 0.1, 0.01, 0.0, 0.0, "sync") == 0.0
    # overlap, identity-sized message (2 m > 1.75 S): loses at low β, wins once 2m/β hides
    # behind the compute while 1.75 S/β > codec, loses at high β: (2m − 1.75 S)/0.19 .. 175 S
    S, m = 1e6, 1e6 + 16
    ranges = whatif.winning_ranges(8, 2, m, S, compute=0.2, codec=0.01, reduce=0.0,
                                   alpha=0.0, order="overlap")
    assert len(ranges) == 1
    assert ranges[0][0] == pytest.approx((2 * m - 1.75 * S) / 0.19, rel=1e-6)
    assert ranges[0][1] == pytest.approx(175 * S, rel=1e-6)


def test_whatif_prints_step_times_crossovers_and_time_to_target(tmp_path, bench):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    rows = [{"epoch": e, "test_accuracy": acc} for e, acc in ((1, 0.5), (2, 0.8), (3, 0.95))]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (run_dir / "config.json").write_text(json.dumps({"steps_per_epoch": 7}))
    assert whatif.epochs_to_target(run_dir / "metrics.jsonl", 0.9) == 3
    assert whatif.epochs_to_target(run_dir / "metrics.jsonl", 0.99) is None
    status, out, err = bench("whatif", "--compute-ms", "2", "--specs", "sign", "--nodes", "4",
                             "--codec-rounds", "1", "--bandwidths", "1,10", "--latencies",
                             "1,50", "--metrics", f"sign={run_dir / 'metrics.jsonl'}",
                             "--target", "0.9", "--json")
    assert status == 0, err
    assert "| Gbit/s | α µs | `allreduce` | `sign` |" in out
    assert [r.split(" | ")[:2] for r in out.splitlines() if r.startswith("| 1")][:2] == \
        [["| 1", "1"], ["| 1", "50"]]
    assert "| spec | α = 1 µs | α = 50 µs |" in out and len(_table_rows(out, "`sign`")) == 2
    summary = _json(out)
    assert summary["compute_s"] == pytest.approx(2e-3)
    sign = summary["entries"][1]
    # per tensor (MLP 64-128-10): outer header + (16 + 4 + ceil(d_l/8)) per tensor
    assert sign["bytes"] == 16 + sum(20 + math.ceil(d / 8) for d in (8192, 128, 1280, 10))
    step = summary["grid"][0]["step_s"]["sign"]
    assert summary["time_to_target"][0]["cells"] == [f"{3 * 7 * step:.1f}"]


def test_whatif_validate_against_a_hand_made_run(tmp_path, bench):
    shaped = {"mode": "mpi", "n": 8, "numel": 2_000_000, "degree": 2, "topology": "ring:8",
              "rows": [{"spec": "sign", "message_bytes": 250_020, "round_ms": 40.0,
                        "allreduce_ms": 900.0, "encode_ms": 1.0, "decode_update_ms": 2.0}]}
    path = tmp_path / "shaped.txt"
    path.write_text("table\n" + json.dumps(shaped) + "\n")
    status, out, err = bench("whatif", "--validate", str(path), "--bandwidth", "1",
                             "--latency-us", "0", "--json")
    assert status == 0, err
    rows = _json(out)["rows"]
    assert rows[0]["what"] == "allreduce"
    assert rows[0]["predicted_ms"] == pytest.approx(896.0)
    assert rows[0]["error"] == pytest.approx((896.0 - 900.0) / 900.0)
    link = 8 * 2 * 250_020 / (1e9 / 8) * 1e3
    assert rows[1]["predicted_ms"] == pytest.approx(link + 3.0)
    assert "| round | measured ms | link ms | CPU ms | predicted ms | error |" in out


# ------------------------------------------------------------------------------ simnet
def test_simnet_prints_drivers_and_clock_overhead(bench):
    # --before this very checkout: the same code, run from that tree
    status, out, err = bench("simnet", "--consensus-nodes", "6", "--train-nodes", "0",
                             "--dim", "40", "--rounds", "3", "--pairs", "2", "--json",
                             "--before", str(ROOT))
    assert status == 0, err
    rows = _table_rows(out, "consensus ring sign d=40, 3 rounds")
    assert len(rows) == 1 and rows[0].count("|") == 11
    assert "2 interleaved pairs without/with the clock" in out
    (row,) = _json(out)["rows"]
    assert row["n"] == 6 and row["before_s"] > 0
    # the overheads are the medians of the pairs' ratios (two pairs: their mean)
    ratios = [c / p for p, c in zip(row["plain_runs"], row["clocked_runs"], strict=True)]
    assert math.isclose(row["overhead"], sum(ratios) / 2 - 1)
    assert len(row["rounds_ratios"]) == 2
    assert math.isclose(row["rounds_overhead"], sum(row["rounds_ratios"]) / 2 - 1)
    assert row["sim_time_s"] > 0


def test_simnet_rows_per_codec(bench):
    """--spec: a row per codec and n, batched (identity) or not (qsgd: lock-step), the
    drivers' .npz files identical within each row (else the run raises)."""
    status, out, err = bench("simnet", "--consensus-nodes", "4,5", "--train-nodes", "0",
                             "--dim", "12", "--rounds", "2", "--pairs", "1", "--json",
                             "--spec", "identity; qsgd:16")
    assert status == 0, err
    assert len(_table_rows(out, "consensus ring identity d=12, 2 rounds")) == 2
    assert len(_table_rows(out, "consensus ring qsgd:16 d=12, 2 rounds")) == 2
    rows = _json(out)["rows"]
    assert [(r["spec"], r["n"]) for r in rows] == [
        ("identity", 4), ("identity", 5), ("qsgd:16", 4), ("qsgd:16", 5)]


def test_simnet_before_must_be_a_checkout(tmp_path, bench):
    """A --before folder without choco/ would run the installed package instead: refused."""
    with pytest.raises(RuntimeError, match="imported choco from"):
        bench("simnet", "--consensus-nodes", "4", "--train-nodes", "0", "--dim", "8",
              "--rounds", "1", "--pairs", "1", "--before", str(tmp_path))


def test_simnet_compares_outputs_bit_for_bit(tmp_path):
    import numpy as np

    x = np.random.default_rng(0).standard_normal((4, 5))
    np.savez(tmp_path / "a.npz", x=x, error=x[:, 0])
    np.savez(tmp_path / "b.npz", x=x.copy(), error=x[:, 0].copy())
    y = x.copy()
    y[2, 3] = np.nextafter(y[2, 3], np.inf)  # one bit of one value
    np.savez(tmp_path / "c.npz", x=y, error=x[:, 0])
    assert simnet._same_npz(str(tmp_path / "a.npz"), str(tmp_path / "b.npz"))
    assert not simnet._same_npz(str(tmp_path / "a.npz"), str(tmp_path / "c.npz"))


def test_netns_scripts_are_valid_bash():
    for name in ("setup.sh", "run.sh", "teardown.sh"):
        path = ROOT / "experiments" / "netns" / name
        proc = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
        assert proc.returncode == 0, (name, proc.stderr)
