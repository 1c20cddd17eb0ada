"""``mpiexec -n 4 python -m choco.bench train``: where the time of a training step goes.

The same under ``torchrun --standalone --nproc-per-node 4 -m choco.bench train`` (gloo).

For each model (``mlp`` on the digits set, ``resnet20`` on synthetic CIFAR-shaped input),
one rank per node, the benchmark runs side by side (in rotating blocks of ``--block``
consecutive steps, so that an exchange left in flight by ``overlap`` is progressed only by
that configuration's own calls):

* ``local``: local SGD (Nesterov momentum, weight decay) without communication, exactly as
  ``choco-train --algorithm local`` runs it (``ChocoSGD`` over the flat parameter buffer with
  :class:`~choco.baselines.NoGossip`): the baseline of the overhead;
* ``plain SGD``: the same optimizer on the model's own parameters (no flat buffer), for
  reference;
* ``choco`` with each ``--specs`` compressor (per tensor, as ``choco-train`` does) in each
  ``--orders`` order (``overlap``: ICLR Alg. 1, the exchange posted at one step is finished
  at the next, progressed by ``MPI_Test`` from the backward pass as ``choco-train`` does;
  under torchrun gloo's own threads progress it, so the two overlap orders coincide;
  ``overlap-noprogress``: the same without those calls; ``sync``: begin and finish back to
  back).

A step's time is split into *compute* (forward, backward and the local optimizer step),
*compress* (:meth:`ChocoGossip.begin`: encode and post), *exchange wait* (time inside the
round's ``NeighbourRound.wait``) and *update* (``finish`` minus the wait: decode and
consensus step). Each figure is the median over the timed steps of the mean over ranks; the
first step of every block is not timed (it finishes the exchange of the previous block).
The *gossip overhead* is ``(step time with gossip − step time of local SGD) / local step``,
both measured in the same run on the same ranks, so the CPU contention is the same.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from ...baselines import NoGossip
from ...comm.base import Communicator
from ...compress import make_compressor, per_tensor
from ...errors import UsageError
from ...gossip import ChocoGossip
from ...models import make_model, param_groups
from ...optim import ChocoSGD
from ..launch import World, resolve_backend, run_world
from .gossip import (
    check_positive,
    machine_line,
    ranks_on_this_host,
    timed_wait,
    vendor_line,
)
from .specs import TRAIN, parse_specs

HELP = ("split a training step into compute / compress / exchange wait / update (mpiexec "
        "or torchrun)")

MODELS = ("mlp", "resnet20")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--models", default="mlp,resnet20",
                   help="comma-separated: mlp (digits), resnet20 (synthetic 3x32x32 input)")
    p.add_argument("--specs", default=",".join(TRAIN), help="comma-separated compressors")
    p.add_argument("--orders", default="overlap,overlap-noprogress,sync",
                   help="comma-separated: overlap (choco-train's: the exchange progressed from "
                        "the backward pass), overlap-noprogress, sync")
    p.add_argument("--topology", default=None, help="graph spec; default ring:N (N = ranks)")
    p.add_argument("--batch-size", type=int, default=32, help="per node")
    p.add_argument("--blocks", type=int, default=3, help="timed blocks per configuration")
    p.add_argument("--block", type=int, default=5,
                   help="consecutive steps per block (the first is not timed)")
    p.add_argument("--gamma", type=float, default=0.5, help="consensus step size γ")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads per rank (default: cores / ranks on the node)")
    p.add_argument("--json", action="store_true", help="print a one-line JSON summary last")


@dataclass
class Config:
    """One side-by-side configuration: a model copy, its optimizer and its timers."""

    name: str
    spec: str | None
    order: str | None
    model: nn.Module
    opt: ChocoSGD | torch.optim.Optimizer
    gossip: ChocoGossip | None = None
    comm: Communicator | None = None
    cur: dict[str, float] = field(default_factory=dict)
    waits: list[float] = field(default_factory=list)
    #: rows of (step, compute, compress, wait, update) seconds
    samples: list[tuple[float, ...]] = field(default_factory=list)

    def instrument(self) -> None:
        """Wrap ``begin``, ``finish`` and the round's ``wait`` with timers."""
        g = self.gossip
        if g is None:
            raise UsageError(f"{self.name}: only a configuration with a gossip can be timed "
                             "round by round; it has none.")
        timed_wait(g, self.waits)
        for name in ("begin", "finish"):
            inner = getattr(g, name)

            def wrapped(x, inner=inner, name=name):
                start = time.perf_counter()
                try:
                    return inner(x)
                finally:
                    self.cur[name] = self.cur.get(name, 0.0) + time.perf_counter() - start

            setattr(g, name, wrapped)


def _batch(model_name: str, batch_size: int, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(100 + rank)
    if model_name == "mlp":
        from ...data import ClassificationData, make_dataset

        data = make_dataset("digits")
        if not isinstance(data, ClassificationData):  # pragma: no cover - digits is images
            raise UsageError(f"the digits set must be a classification set, got {type(data)}.")
        idx = torch.randint(0, data.x_train.shape[0], (batch_size,), generator=gen)
        return data.x_train[idx], data.y_train[idx]
    x = torch.randn(batch_size, 3, 32, 32, generator=gen)
    return x, torch.randint(0, 10, (batch_size,), generator=gen)


def _new_model(model_name: str) -> nn.Module:
    torch.manual_seed(0)
    if model_name == "mlp":
        return make_model("mlp", input_shape=(1, 8, 8), num_classes=10)
    return make_model("resnet20")


def _sgd(model: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.SGD(param_groups(model, 1e-4), lr=0.01, momentum=0.9, nesterov=True)


def build_configs(model_name: str, specs: list[str], orders: list[str], topo, world: World,
                  gamma: float) -> list[Config]:
    rank = world.rank
    plain = _new_model(model_name)
    model = _new_model(model_name)
    configs = [Config("local", None, None, model, ChocoSGD(_sgd(model), NoGossip())),
               Config("plain SGD", None, None, plain, _sgd(plain))]
    for spec in specs:
        for order in orders:
            m = _new_model(model_name)
            sgd = _sgd(m)
            sizes = [p.numel() for g in sgd.param_groups for p in g["params"]]
            comm = world.node(topo.neighbors(rank))
            q = per_tensor(make_compressor(spec), sizes)
            g = ChocoGossip(comm, topo.W[rank], q, gamma, seed=0)
            # "overlap" is choco-train's: MPI_Test from the backward pass moves the exchange;
            # "overlap-noprogress" leaves it to the next step's wait (the comparison)
            opt = ChocoSGD(sgd, g, order="sync" if order == "sync" else "overlap")
            if order == "overlap":
                opt.progress_hooks()
            c = Config(f"{spec} {order}", spec, order, m, opt, g, comm)
            c.instrument()
            configs.append(c)
    return configs


def _step(c: Config, xb: torch.Tensor, yb: torch.Tensor) -> tuple[float, ...]:
    c.cur.clear()
    n_waits = len(c.waits)
    start = time.perf_counter()
    c.opt.zero_grad()
    loss = nn.functional.cross_entropy(c.model(xb), yb)
    loss.backward()
    c.opt.step()
    total = time.perf_counter() - start
    begin, finish = c.cur.get("begin", 0.0), c.cur.get("finish", 0.0)
    wait = sum(c.waits[n_waits:])
    return total, total - begin - finish, begin, wait, finish - wait


def summarize(samples: np.ndarray) -> dict[str, float]:
    """Medians (ms) over steps of the mean over ranks, from ``(ranks, steps, 5)``."""
    mean = samples.mean(axis=0)
    keys = ("step_ms", "compute_ms", "compress_ms", "wait_ms", "update_ms")
    return {k: 1e3 * statistics.median(mean[:, i]) for i, k in enumerate(keys)}


def table(results: list[dict], head: dict) -> str:
    lines = [head["machine"],
             f"n = {head['n']} ranks, {head['topology']}, batch {head['batch_size']} per node, "
             f"{head['threads']} torch thread(s) per rank; median over {head['timed']} timed "
             "steps of the mean over ranks; compressors per tensor", "",
             "| model | config | step ms | compute ms | compress ms | exchange wait ms | "
             "update ms | gossip overhead | gossip time / local step |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        over = "–" if r["config"] == "local" else f"{100 * r['overhead']:+.1f}%"
        share = "–" if r["spec"] is None else f"{100 * r['gossip_share']:.1f}%"
        lines.append(
            f"| {r['model']} ({r['params']:,} params, {r['tensors']} tensors) | {r['config']} | "
            f"{r['step_ms']:.2f} | {r['compute_ms']:.2f} | {r['compress_ms']:.2f} | "
            f"{r['wait_ms']:.2f} | {r['update_ms']:.2f} | {over} | {share} |")
    lines += ["", "gossip overhead = (step time with gossip − step time of local SGD without "
              "communication) / local step time, measured side by side; gossip time / local "
              "step = (compress + exchange wait + update) / local step time (the time spent "
              "inside the gossip calls; less sensitive to noise in the compute)."]
    return "\n".join(lines)


def _split(text: str, what: str, valid: tuple[str, ...] | None = None) -> list[str]:
    items = [s.strip() for s in text.split(",") if s.strip()]
    bad = [s for s in items if valid is not None and s not in valid]
    if not items or bad:
        raise UsageError(f"{what} must be a comma-separated list of "
                         f"{', '.join(valid) if valid else 'compressor specs'}, got {text!r}; "
                         f"e.g. {what} {','.join(valid) if valid else 'sign,topk:0.01'}.")
    return items


def run_train_bench(args: argparse.Namespace, world: World) -> int:
    """The benchmark on every rank of an MPI or torchrun launch; rank 0 prints."""
    from .gossip import _topology

    rank, size = world.rank, world.size
    models = _split(args.models, "--models", MODELS)
    specs = [q.spec for q in parse_specs(args.specs)]  # every spec validated first
    orders = _split(args.orders, "--orders", ("overlap", "overlap-noprogress", "sync"))
    check_positive(("--batch-size", args.batch_size, 1, 32), ("--blocks", args.blocks, 1, 3),
                   ("--block", args.block, 2, 5), ("--threads", args.threads, 1, 1))
    topo = _topology(args.topology, "metropolis", size, mpi=True)
    here = ranks_on_this_host(world)
    torch.set_num_threads(args.threads or max(1, (os.cpu_count() or 1) // here))
    results = []
    for model_name in models:
        xb, yb = _batch(model_name, args.batch_size, rank)
        configs = build_configs(model_name, specs, orders, topo, world, args.gamma)
        for _ in range(args.blocks):
            for c in configs:
                world.comm.barrier()
                for b in range(args.block):
                    row = _step(c, xb, yb)
                    if b > 0:
                        c.samples.append(row)
                if c.gossip is not None and isinstance(c.opt, ChocoSGD):
                    c.opt.flush()  # no exchange in flight into the next configuration's block
        params = sum(p.numel() for p in configs[0].model.parameters())
        tensors = sum(1 for _ in configs[0].model.parameters())
        local_step = None
        for c in configs:
            gathered = world.comm.allgather(np.array(c.samples))
            if c.comm is not None:
                c.comm.close()
            if rank == 0:
                s = summarize(gathered)
                if c.name == "local":
                    local_step = s["step_ms"]
                if local_step is None:
                    raise UsageError("the local-SGD configuration must be timed first: it "
                                     "is the baseline of every overhead; keep it first.")
                results.append({"model": model_name, "params": params, "tensors": tensors,
                                "config": c.name, "spec": c.spec, "order": c.order, **s,
                                "overhead": (s["step_ms"] - local_step) / local_step,
                                "gossip_share": (s["compress_ms"] + s["wait_ms"]
                                                 + s["update_ms"]) / local_step})
    if rank == 0:
        head = {"machine": machine_line(*vendor_line(world)), "n": size,
                "topology": topo.spec, "batch_size": args.batch_size,
                "threads": torch.get_num_threads(), "timed": args.blocks * (args.block - 1)}
        print(table(results, head), flush=True)
        if args.json:
            print(json.dumps({**head, "rows": results}), flush=True)
    return 0


def run(args: argparse.Namespace) -> int:
    """One node per rank of the launch that started this process (mpiexec or torchrun)."""
    backend = resolve_backend("auto")
    if backend == "local":
        raise UsageError("python -m choco.bench train needs one rank per node, got a "
                         "single process; run it as mpiexec -n 4 python -m choco.bench train "
                         "or torchrun --standalone --nproc-per-node 4 -m choco.bench train.")
    return run_world(backend, lambda world: run_train_bench(args, world))
