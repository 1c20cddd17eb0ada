"""choco-train in one process: configuration, schedule, optimizer wrapper, CLI errors, resume."""

from __future__ import annotations

import json
import math

import pytest
import torch

from choco.comm import LocalNetwork
from choco.compress import make_compressor
from choco.errors import UsageError
from choco.gossip import ChocoGossip
from choco.optim import ChocoSGD
from choco.run.config import TrainConfig, parse_config
from choco.run.plan import make_plan
from choco.train import main
from topologies import parse_topology


def test_one_node_choco_sgd_equals_plain_sgd():
    """On one node (W = [1]) the gossip is a no-op, so ChocoSGD is exactly the optimizer."""
    torch.manual_seed(0)
    a = torch.nn.Linear(5, 3)
    b = torch.nn.Linear(5, 3)
    b.load_state_dict(a.state_dict())
    net = LocalNetwork([[]])
    gossip = ChocoGossip(net.comms[0], [1.0], make_compressor("sign"), 0.5)
    opt_a = ChocoSGD(torch.optim.SGD(a.parameters(), lr=0.1, momentum=0.9), gossip)
    opt_b = torch.optim.SGD(b.parameters(), lr=0.1, momentum=0.9)
    gen = torch.Generator().manual_seed(1)
    for _ in range(20):
        x = torch.randn(8, 5, generator=gen)
        for model, opt in ((a, opt_a), (b, opt_b)):
            opt.zero_grad()
            model(x).pow(2).mean().backward()
            opt.step()
    opt_a.flush()
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(p, q)


def test_parameters_live_in_the_flat_buffer():
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    net = LocalNetwork([[]])
    opt = ChocoSGD(torch.optim.SGD(model.parameters(), lr=0.1),
                   ChocoGossip(net.comms[0], [1.0], make_compressor("identity"), 1.0))
    assert opt.x.numel() == sum(p.numel() for p in model.parameters())
    opt.x.zero_()
    assert all(float(p.detach().abs().sum()) == 0 for p in model.parameters())


def test_config_precedence_and_unknown_keys(tmp_path):
    toml = tmp_path / "c.toml"
    toml.write_text('topology = "torus:3x3"\nepochs = 7\nlr-milestones = [3, 5]\n')
    cfg = parse_config(["--config", str(toml), "--epochs", "9", "--nesterov", "false"])
    assert (cfg.topology, cfg.epochs, cfg.lr_milestones, cfg.nesterov) == \
        ("torus:3x3", 9, (3, 5), False)
    toml.write_text("epoch = 3\n")
    with pytest.raises(UsageError, match="did you mean epochs"):
        parse_config(["--config", str(toml)])
    with pytest.raises(UsageError, match="whole number"):
        parse_config(["--epochs", "many"])


def test_lr_schedule_paper_scaling_warmup_and_milestones():
    cfg = TrainConfig(topology="star:5", lr=0.1, lr_scaling="paper", batch_size=32,
                      base_batch_size=16, warmup_epochs=1, lr_milestones=(2, 3), gamma="0.5")
    plan = make_plan(cfg, None)
    # peak = lr * batch/base * |N_i ∪ {i}|: centre of a star has 4 neighbours, leaves 1
    assert plan.lr_peaks == pytest.approx([0.1 * 2 * 5] + [0.1 * 2 * 2] * 4)
    steps = plan.steps_per_epoch
    assert plan.schedule.at(1, 0, 0) == pytest.approx(0.1)
    assert plan.schedule.at(1, 0, steps // 2) == pytest.approx(0.1 + 0.3 * (steps // 2) / steps)
    assert plan.schedule.at(1, 1, 0) == pytest.approx(0.4)
    assert plan.schedule.at(1, 2, 0) == pytest.approx(0.04)
    assert plan.schedule.at(1, 3, 0) == pytest.approx(0.004)


@pytest.mark.parametrize("argv,needle", [
    (["--topology", "ring:0"], "ring"),
    (["--algorithm", "gossip"], "choco, exact"),
    (["--compressor", "topq"], "valid specs"),
    (["--gamma", "2"], "(0, 1]"),
    (["--dataset", "cifar10", "--model", "resnet20", "--data-dir", "/nonexistent"],
     "cifar-10-batches-py"),
    (["--model", "lstm"], "does not fit"),
    (["--partition", "zipf"], "iid"),
    (["--topology", "ring:4", "--nodes", "8"], "make them agree"),
    (["--resume"], "checkpoint"),
    (["--epochs", "0"], ">= 1"),
])
def test_bad_input_exits_2_and_writes_nothing(tmp_path, capsys, argv, needle):
    out = tmp_path / "run"
    assert main([*argv, "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and needle in err
    assert not (out / "metrics.jsonl").exists()


def test_local_run_outputs_and_resume_is_exact(tmp_path):
    common = ["--topology", "ring:4", "--gamma", "0.5", "--quiet", "--seed", "2",
              "--compressor", "topk:0.1"]
    a, b = tmp_path / "a", tmp_path / "b"
    assert main([*common, "--epochs", "3", "--out", str(a), "--json"]) == 0
    assert main([*common, "--epochs", "2", "--out", str(b), "--checkpoint-every", "1"]) == 0
    assert main([*common, "--epochs", "3", "--out", str(b), "--resume"]) == 0
    info = json.loads((a / "config.json").read_text())
    assert info["n"] == 4 and info["gamma"] == 0.5
    assert info["spectral_gap"] == pytest.approx(2 / 3, abs=1e-6)
    rows = [[{k: v for k, v in json.loads(line).items() if k != "wall_time_s"}
             for line in (f / "metrics.jsonl").read_text().splitlines()] for f in (a, b)]
    assert rows[0] == rows[1] and [r["epoch"] for r in rows[0]] == [1, 2, 3]
    keys = {"epoch", "train_loss", "test_accuracy", "test_accuracy_local",
            "consensus_distance", "bytes_sent", "lr"}
    assert keys <= set(rows[0][-1])
    # bytes: each round sends one message (its size is in config.json) to every neighbour;
    # bytes_sent is the mean over nodes, so the mean degree of the graph (2 on a ring)
    topo = parse_topology("ring:4")
    degree = sum(len(topo.neighbors(i)) for i in range(topo.n)) / topo.n
    assert degree == 2
    for row in rows[0]:
        rounds = row["epoch"] * info["steps_per_epoch"]
        assert row["bytes_sent"] == rounds * degree * info["message_bytes"]
    # it learns: digits has 10 balanced classes (chance 10%); 3 epochs reach ~92% (x̄) and
    # ~91% (mean node) over seeds, and the training loss falls well below its first epoch
    assert rows[0][-1]["test_accuracy"] > 0.8
    assert rows[0][-1]["test_accuracy_local"] > 0.8
    assert rows[0][-1]["train_loss"] < 0.5 * rows[0][0]["train_loss"]
    losses = [r["train_loss"] for r in rows[0]]
    assert losses == sorted(losses, reverse=True) and len(set(losses)) == 3
    ma, mb = torch.load(a / "model.pt"), torch.load(b / "model.pt")
    assert all(torch.equal(ma[k], mb[k]) for k in ma)


def write_fake_cifar(folder, per_batch: int = 16) -> None:
    """A tiny ``cifar-10-batches-py`` in the real pickle format."""
    import pickle

    import numpy as np

    target = folder / "cifar-10-batches-py"
    target.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        labels = rng.integers(0, 10, per_batch).tolist()
        data = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        with open(target / name, "wb") as fh:
            pickle.dump({b"data": data, b"labels": labels}, fh)


def test_resnet_on_cifar_folder_end_to_end(tmp_path):
    write_fake_cifar(tmp_path / "data")
    out = tmp_path / "run"
    assert main(["--dataset", "cifar10", "--data-dir", str(tmp_path / "data"), "--model",
                 "resnet8", "--topology", "ring:3", "--epochs", "1", "--batch-size", "8",
                 "--gamma", "0.5", "--out", str(out), "--quiet"]) == 0
    info = json.loads((out / "config.json").read_text())
    assert info["parameters"] == 78042  # ResNet-8, option-B shortcuts (counted in test_models)
    row = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    # random labels: no accuracy to expect beyond its form, a fraction of the 16 test images
    assert row["epoch"] == 1 and math.isfinite(row["train_loss"])
    correct = row["test_accuracy"] * 16
    assert 0 <= correct <= 16 and abs(correct - round(correct)) < 1e-9
    # one message per step to each of the 2 ring neighbours (size from config.json)
    assert row["bytes_sent"] == info["steps_per_epoch"] * 2 * info["message_bytes"]
    assert info["steps_per_epoch"] >= 1 and info["message_bytes"] > 0


def test_lstm_on_wikitext_files_end_to_end(tmp_path):
    words = [f"w{i}" for i in range(30)]
    gen = torch.Generator().manual_seed(0)
    for split, lines in (("train", 120), ("valid", 20), ("test", 30)):
        text = "\n".join(" ".join(words[int(j)] for j in torch.randint(0, 30, (12,),
                                                                     generator=gen))
                         for _ in range(lines))
        (tmp_path / f"wiki.{split}.tokens").write_text(text + "\n")
    out = tmp_path / "run"
    assert main(["--dataset", "wikitext2", "--data-dir", str(tmp_path), "--model", "lstm",
                 "--model-args", "embed_dim=16,hidden_size=16,num_layers=1,dropout=0",
                 "--topology", "ring:3", "--epochs", "2", "--batch-size", "4", "--bptt", "8",
                 "--clip", "0.4", "--momentum", "0", "--lr", "1", "--gamma", "0.5",
                 "--out", str(out), "--quiet"]) == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    # a uniform guess over the 32-word vocabulary (30 words, <eos>, <unk>) has perplexity 32
    assert rows[-1]["test_perplexity"] < 32
    assert "test_perplexity_local" in rows[-1]


def test_divergence_stops_every_node_and_is_reported(tmp_path, capsys):
    """DCD with unbiased rand-10% diverges on ring:8 (ICLR Table 1): a row says so, and the
    exit status is DIVERGED_EXIT (3), distinct from success, usage errors and crashes."""
    from choco.run.cli import DIVERGED_EXIT, USAGE_EXIT

    assert DIVERGED_EXIT not in (0, 1, USAGE_EXIT)
    out = tmp_path / "dcd"
    assert main(["--algorithm", "dcd", "--compressor", "randk:0.1", "--epochs", "30",
                 "--out", str(out)]) == DIVERGED_EXIT
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["diverged"] is True and rows[-1]["train_loss"] is None
    assert len(rows) < 30 and all("diverged" not in r for r in rows[:-1])
    assert "DIVERGED" in capsys.readouterr().out
    assert not (out / "model.pt").exists()
