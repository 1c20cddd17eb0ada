"""slurm/train.sbatch and slurm/sweep.sbatch on real SLURM daemons.

The module starts a private test cluster with ``slurm/testing/start-cluster.sh`` (munged,
slurmctld and two slurmd daemons on this machine, 8 CPUs declared per node, in a folder of
its own and on free ports, so a cluster the user runs is not touched), submits both scripts
with ``sbatch`` and stops the daemons afterwards, also when a test fails. It needs root and
the Debian packages slurm-wlm and munge (the start script installs them with apt-get when
missing); it says so on the terminal before it installs or starts anything. Without root
or packages the module is skipped, except under CI (``CI``, ``CHOCO_REQUIRE_MPI`` or
``CHOCO_REQUIRE_SLURM`` set), where that is a failure. ``-m "not slurm"`` or
``CHOCO_SKIP_SLURM=1`` leaves it out. Jobs are followed with ``squeue`` every 0.5 s rather
than ``sbatch --wait``, whose polling interval grows to tens of seconds.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .helpers import ROOT, check_marked, free_ports, unavailable

# a first start may install packages (the start script allows apt-get 900 s)
pytestmark = [pytest.mark.slurm, pytest.mark.slow, pytest.mark.timeout(1500)]

SLURM = ROOT / "slurm"
START = SLURM / "testing" / "start-cluster.sh"
STOP = SLURM / "testing" / "stop-cluster.sh"
NODES = 2
#: seconds a job may take, from submission to its end
JOB_TIMEOUT = float(os.environ.get("CHOCO_SLURM_JOB_TIMEOUT", "240"))
#: what the module does to this machine, said in its skip reasons and before it starts
WHAT = (f"install the Debian packages slurm-wlm and munge with apt-get when missing and "
        f"start munged, slurmctld and {NODES} slurmd daemons on this machine")
LEAVE_OUT = "leave them out with -m 'not slurm' or CHOCO_SKIP_SLURM=1"

SWEEP = """
kind = "train"
name = "slurm_test"
[base]
topology = "ring:4"
epochs = 1
gamma = 1
eval_local = false
[grid]
compressor = ["sign", "topk:0.1", "identity", "qsgd:16"]
"""


def say(config: pytest.Config, line: str) -> None:
    """Write ``line`` on the terminal now, also under ``-q`` and output capture."""
    capture = config.pluginmanager.getplugin("capturemanager")
    terminal = config.pluginmanager.getplugin("terminalreporter")
    if capture is None or terminal is None:
        print(line, file=sys.stderr)
        return
    with capture.global_and_fixture_disabled():
        terminal.write_line(line)


class Cluster:
    """The running test cluster: the environment its commands need, and job helpers."""

    def __init__(self, folder: Path, env: dict[str, str]):
        self.folder = folder
        self.env = env
        self.cwd: dict[str, Path] = {}  # job id -> the folder it was submitted from

    def run(self, cmd: list[str], timeout: float = 60, cwd: Path | None = None,
            ) -> subprocess.CompletedProcess:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                              env=self.env, cwd=cwd)

    def submit(self, args: list[str], cwd: Path, env: dict[str, str] | None = None) -> str:
        check_marked("slurm", "sbatch")
        proc = subprocess.run(["sbatch", "--parsable", *args], capture_output=True, text=True,
                              timeout=60, cwd=cwd, env={**self.env, **(env or {})})
        assert proc.returncode == 0, f"sbatch {args}: {proc.stderr}"
        job = proc.stdout.strip().split(";")[0]
        self.cwd[job] = cwd
        return job

    def wait(self, job: str, timeout: float = JOB_TIMEOUT) -> dict[str, dict[str, str]]:
        """Wait until job ``job`` (every task of an array) has ended; ``{JobId: fields}``."""
        deadline = time.monotonic() + timeout
        while True:
            proc = self.run(["squeue", "-h", "-j", job, "-o", "%i %T"], timeout=30)
            if proc.returncode == 0 and not proc.stdout.strip():
                break
            if time.monotonic() > deadline:
                pytest.fail(f"job {job} still running after {timeout:.0f} s: {proc.stdout}\n"
                            + self.hung(job))
            time.sleep(0.5)
        proc = self.run(["scontrol", "-o", "show", "job", job], timeout=30)
        assert proc.returncode == 0, proc.stderr
        jobs = {}
        for line in proc.stdout.splitlines():
            fields = dict(re.findall(r"(\w+)=(\S*)", line))
            jobs[fields["JobId"]] = fields
        return jobs

    def hung(self, job: str) -> str:
        """Where a hung job's processes are: SIGABRT to its steps' tasks (the jobs run with
        ``PYTHONFAULTHANDLER=1``, so each Python rank prints its stack), then cancel it and
        return the job's output files, the processes that were left and the daemons' logs."""
        ps = subprocess.run(["ps", "-ww", "-eo", "pid,ppid,stat,etime,wchan:20,args"],
                            capture_output=True, text=True, timeout=30).stdout
        procs = "\n".join(line for line in ps.splitlines()
                          if any(k in line for k in ("choco", "srun", "slurmstepd", "mpiexec",
                                                      "hydra", "torchrun", "PID")))
        self.run(["scancel", "--signal=ABRT", job], timeout=30)
        time.sleep(5)
        self.run(["scancel", job], timeout=30)
        time.sleep(2)
        outputs = []
        for out in sorted(self.cwd.get(job, self.folder).glob(f"slurm-*-{job}*.out")):
            outputs.append(f"--- {out}\n{out.read_text(errors='replace')[-20000:]}")
        return (f"processes:\n{procs}\n" + "\n".join(outputs) + "\n" + self.log_tail())

    def log_tail(self) -> str:
        out = []
        for log in sorted((self.folder / "log").glob("*.log")):
            lines = log.read_text(errors="replace").splitlines()[-10:]
            out.append(f"--- {log.name}\n" + "\n".join(lines))
        return "\n".join(out)


@pytest.fixture(scope="module")
def cluster(pytestconfig: pytest.Config) -> Iterator[Cluster]:
    if os.geteuid() != 0:
        unavailable("slurm", f"the SLURM tests need root: they {WHAT}; run as root, or "
                             f"{LEAVE_OUT}")
    installed = all(shutil.which(b, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")
                    for b in ("slurmctld", "slurmd", "munged", "sbatch"))
    if not installed and not shutil.which("apt-get"):
        unavailable("slurm", "SLURM (slurmctld, slurmd, munged, sbatch) is not installed and "
                             f"there is no apt-get to install it; {LEAVE_OUT}")
    # a short path: munge and slurmd put unix sockets in it
    folder = Path(tempfile.mkdtemp(prefix="choco-slurm-", dir="/tmp"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SBATCH_"))}
    env.update({
        "CHOCO_SLURM_DIR": str(folder), "CHOCO_SLURM_PORT": str(free_ports(NODES + 1)),
        "CHOCO_SLURM_NODES": str(NODES), "CHOCO_SLURM_CPUS": "8",
        "SLURM_CONF": str(folder / "etc" / "slurm.conf"),
        # choco-train and this Python for the jobs (sbatch exports the environment)
        "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}:/usr/sbin:/sbin",
        "PYTHONUNBUFFERED": "1",
        # this tree's choco in the jobs, as in every launch of the suite
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        # a hung job is sent SIGABRT before it is cancelled: every rank prints its stack
        "PYTHONFAULTHANDLER": "1",
        # MPICH over TCP (libfabric's tcp provider) instead of UCX between the two "nodes":
        # UCX's addresses make MPI_Init's allgather through srun's pmi2 server nine long
        # puts, which slurmstepd misreads when the machine is loaded ("mpi/pmi2: request
        # not begin with 'cmd='", then MPI_Init aborts or hangs; 5 of 5 jobs with CPU hogs
        # running, 1 in 10 without); TCP addresses fit in one short put (8 of 8 with hogs)
        "MPIR_CVAR_CH4_NETMOD": "ofi", "FI_PROVIDER": "tcp",
    })
    port = int(env["CHOCO_SLURM_PORT"])
    plan = ("installing the Debian packages slurm-wlm and munge (apt-get), then starting"
            if not installed else "starting")
    say(pytestconfig, f"tests/test_slurm.py: {plan} a private SLURM cluster: munged, "
                      f"slurmctld and {NODES} slurmd daemons on this machine, in {folder}, "
                      f"ports {port}-{port + NODES}; stopped and removed after the "
                      f"module ({LEAVE_OUT})")
    try:
        proc = subprocess.run(["bash", str(START)], capture_output=True, text=True,
                              timeout=900, env=env)
        if proc.returncode != 0:
            if not installed and "apt-get" in proc.stderr:
                unavailable("slurm", f"SLURM could not be installed: {proc.stderr[-2000:]}")
            pytest.fail(f"start-cluster.sh failed:\n{proc.stderr[-4000:]}")
        assert proc.stdout.strip() == f"export SLURM_CONF={folder}/etc/slurm.conf"
        yield Cluster(folder, env)
    finally:
        stop = subprocess.run(["bash", str(STOP), "--purge"], capture_output=True, text=True,
                              timeout=120, env=env)
        assert stop.returncode == 0, stop.stderr
        shutil.rmtree(folder, ignore_errors=True)


def test_start_cluster_twice_keeps_the_running_daemons(cluster):
    pids = sorted(p.read_text() for p in (cluster.folder / "run").glob("*.pid"))
    assert len(pids) == NODES + 1  # slurmctld and one slurmd per node
    proc = cluster.run(["bash", str(START)], timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.read_text() for p in (cluster.folder / "run").glob("*.pid")) == pids
    nodes = cluster.run(["sinfo", "-h", "-N", "-o", "%N %t %c"]).stdout.split("\n")[:-1]
    assert sorted(nodes) == [f"{socket.gethostname().split('.')[0]}-{i} idle 8"
                             for i in range(1, NODES + 1)], nodes


def test_train_sbatch_runs_one_rank_per_node_over_srun(cluster, tmp_path):
    """4 tasks on 2 nodes: ``--topology ring`` takes n = 4, the MPI backend, 2 epochs."""
    out = tmp_path / "run"
    job = cluster.submit(["--ntasks", "4", "--nodes", str(NODES), "--ntasks-per-node", "2",
                          str(SLURM / "train.sbatch"),
                          "--topology", "ring", "--epochs", "2", "--quiet", "--out", str(out)],
                         cwd=tmp_path)
    state = cluster.wait(job)[job]
    log = tmp_path / f"slurm-choco-train-{job}.out"
    text = log.read_text() if log.exists() else "(no output file)"
    assert (state["JobState"], state["ExitCode"]) == ("COMPLETED", "0:0"), \
        f"{state}\n{text}\n{cluster.log_tail()}"
    assert f"job       {job} (choco-train)" in text
    assert "tasks     4 (per node: 2(x2))" in text
    assert "launcher  srun" in text
    assert "command   srun --mpi=pmi2 --kill-on-bad-exit=1 choco-train --backend mpi " in text
    config = json.loads((out / "config.json").read_text())
    assert (config["n"], config["backend"], config["topology"]) == (4, "mpi", "ring:4")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in rows] == [1, 2]
    assert not (tmp_path / "runs").exists()  # --out given: no runs/slurm-<job id>


def test_train_sbatch_with_mpiexec_writes_runs_slurm_job_id(cluster, tmp_path):
    """``CHOCO_LAUNCHER=mpiexec`` (hydra inside the allocation, one rank on each node); no
    ``--out``: the run folder is ``runs/slurm-<job id>`` in the submit folder."""
    job = cluster.submit(["--ntasks", "2", "--nodes", str(NODES), str(SLURM / "train.sbatch"),
                          "--topology", "ring", "--epochs", "1", "--gamma", "1", "--quiet"],
                         cwd=tmp_path, env={"CHOCO_LAUNCHER": "mpiexec"})
    state = cluster.wait(job)[job]
    log = tmp_path / f"slurm-choco-train-{job}.out"
    text = log.read_text() if log.exists() else "(no output file)"
    assert (state["JobState"], state["ExitCode"]) == ("COMPLETED", "0:0"), \
        f"{state}\n{text}\n{cluster.log_tail()}"
    assert "launcher  mpiexec" in text
    assert f"command   mpiexec -n 2 choco-train --backend mpi --out runs/slurm-{job} " in text
    out = tmp_path / "runs" / f"slurm-{job}"
    config = json.loads((out / "config.json").read_text())
    assert (config["n"], config["backend"], config["topology"]) == (2, "mpi", "ring:2")
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 1


def test_train_sbatch_with_torchrun_uses_the_torch_backend(cluster, tmp_path):
    """``CHOCO_LAUNCHER=torchrun``: srun starts one torchrun per node, which starts the ranks
    (torch.distributed, gloo); a size-less topology takes n from the tasks."""
    out = tmp_path / "torch"
    job = cluster.submit(["--ntasks", "2", "--nodes", "1", str(SLURM / "train.sbatch"),
                          "--topology", "ring", "--epochs", "1", "--gamma", "1", "--quiet",
                          "--out", str(out)], cwd=tmp_path, env={"CHOCO_LAUNCHER": "torchrun"})
    state = cluster.wait(job)[job]
    log = tmp_path / f"slurm-choco-train-{job}.out"
    text = log.read_text() if log.exists() else "(no output file)"
    assert (state["JobState"], state["ExitCode"]) == ("COMPLETED", "0:0"), \
        f"{state}\n{text}\n{cluster.log_tail()}"
    assert "torchrun --nnodes 1 --nproc-per-node 2" in text and "--backend torch" in text
    config = json.loads((out / "config.json").read_text())
    assert (config["n"], config["backend"], config["topology"]) == (2, "torch", "ring:2")


def test_sweep_sbatch_runs_one_run_per_array_task(cluster, tmp_path):
    sweep_file = tmp_path / "sweep.toml"
    sweep_file.write_text(SWEEP)
    job = cluster.submit(["--array=0-3", str(SLURM / "sweep.sbatch"), "sweep.toml", "out"],
                         cwd=tmp_path)
    tasks = cluster.wait(job)
    assert sorted(t["ArrayTaskId"] for t in tasks.values()) == ["0", "1", "2", "3"], tasks
    logs = {i: tmp_path / f"slurm-choco-sweep-{job}_{i}.out" for i in range(4)}
    for fields in tasks.values():
        i = int(fields["ArrayTaskId"])
        text = logs[i].read_text() if logs[i].exists() else "(no output file)"
        assert (fields["JobState"], fields["ExitCode"]) == ("COMPLETED", "0:0"), \
            f"{fields}\n{text}\n{cluster.log_tail()}"
        assert f"sweep     {tmp_path}/sweep.toml, run {i}, into {tmp_path}/out" in text
        assert "1 task(s), 2 CPU(s) per task" in text
    manifest = json.loads((tmp_path / "out" / "sweep.json").read_text())
    names = [run["name"] for run in manifest["runs"]]
    assert len(names) == 4
    compressors = set()
    for i, name in enumerate(names):
        folder = tmp_path / "out" / name
        result = json.loads((folder / "result.json").read_text())
        assert (result["index"], result["status"], result["exit"]) == (i, "finished", 0)
        config = json.loads((folder / "config.json").read_text())
        assert (config["n"], config["backend"]) == (4, "local")
        rows = (folder / "metrics.jsonl").read_text().splitlines()
        assert len(rows) == 1
        compressors.add(result["options"]["compressor"])
        assert name in logs[i].read_text()  # the array task printed its run's result line
    assert compressors == {"sign", "topk:0.1", "identity", "qsgd:16"}
