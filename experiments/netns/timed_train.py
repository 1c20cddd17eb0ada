"""``choco-train`` with per-rank timers, for the shaped-link validation (sim_run.sh).

    python -m experiments.netns.timed_train TIMINGS.json -- [choco-train options]

Runs ``choco.run.train.main`` unchanged, with timers wrapped around what the simulated clock
models: the training epochs (``_train_epoch``: local steps and gossip, not the evaluation
after each epoch), and CHOCO-Gossip's ``begin`` (encode and post) and ``finish`` (the waits
for the neighbours' messages, :attr:`NeighbourRound.waited
<choco.neighbourhood.NeighbourRound.waited>`, and the decoding between them). Every rank
writes ``TIMINGS.json`` with ``{rank}`` in the name replaced by its rank::

    {"rank", "degree", "steps", "rounds", "train_s", "begin_s", "finish_s", "wait_s",
     "waits_ms"}

(``steps``: local steps; ``rounds``: ``finish`` calls; ``waits_ms``: each round's wait).
:func:`experiments.netns.compare_sim.train_network` turns the ranks' files into the
``--network`` spec of the in-process run.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from choco import gossip as gossip_module
from choco import optim
from choco.run import train

TIMES = {"steps": 0, "rounds": 0, "train_s": 0.0, "begin_s": 0.0, "finish_s": 0.0,
         "wait_s": 0.0}
#: every round's wait, ms (where the time beyond the model goes, when it does)
WAITS: list[float] = []
PLACE = {"rank": 0, "degree": 0}


def _instrument() -> None:
    epoch, begin = train._train_epoch, gossip_module.ChocoGossip.begin
    finish, step = gossip_module.ChocoGossip.finish, optim.ChocoSGD.step

    def timed_epoch(plan, comm, model, opt, epoch_index):
        PLACE["rank"], PLACE["degree"] = comm.rank, len(comm.neighbors)
        start = time.perf_counter()
        try:
            return epoch(plan, comm, model, opt, epoch_index)
        finally:
            TIMES["train_s"] += time.perf_counter() - start

    def timed_begin(self, x):
        start = time.perf_counter()
        try:
            return begin(self, x)
        finally:
            TIMES["begin_s"] += time.perf_counter() - start

    def timed_finish(self, x):
        start = time.perf_counter()
        try:
            return finish(self, x)
        finally:
            TIMES["finish_s"] += time.perf_counter() - start
            TIMES["wait_s"] += self.round.waited
            TIMES["rounds"] += 1
            WAITS.append(round(1e3 * self.round.waited, 3))

    def counted_step(self, closure=None):
        TIMES["steps"] += 1
        return step(self, closure)

    train._train_epoch = timed_epoch
    gossip_module.ChocoGossip.begin = timed_begin  # type: ignore[method-assign]
    gossip_module.ChocoGossip.finish = timed_finish  # type: ignore[method-assign]
    optim.ChocoSGD.step = counted_step  # type: ignore[method-assign]


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) < 2 or args[1] != "--":
        print("usage: python -m experiments.netns.timed_train TIMINGS.json -- "
              "[choco-train options]", file=sys.stderr)
        return 2
    path, train_args = args[0], args[2:]
    _instrument()
    code = train.main(train_args)
    rank = int(os.environ.get("PMI_RANK", PLACE["rank"]))
    out = Path(path.replace("{rank}", str(rank)))
    out.write_text(json.dumps({**PLACE, "rank": rank, **TIMES, "waits_ms": WAITS}) + "\n")
    return code


if __name__ == "__main__":
    sys.exit(main())
