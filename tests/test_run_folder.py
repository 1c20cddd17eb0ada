"""``choco-train``'s run folder: nothing is destroyed, ``--resume`` trusts nothing.

Each refused command must exit 2 with one ``error:`` paragraph and leave every file of the
folder exactly as it was (contents and modification times).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from choco.run.checkpoint import MANIFEST, find_latest
from choco.run.train import main

BASE = ["--nodes", "4", "--topology", "ring:4", "--gamma", "0.5", "--seed", "1",
        "--eval-local", "false", "--quiet"]


def snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    return {p.relative_to(folder).as_posix(): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def finished(tmp_path) -> Path:
    """A finished 2-epoch run with a checkpoint after each epoch."""
    out = tmp_path / "run"
    assert main([*BASE, "--epochs", "2", "--checkpoint-every", "1", "--out", str(out)]) == 0
    return out


def refused(capsys, argv: list[str], folder: Path, needle: str) -> str:
    before = snapshot(folder)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and needle in err and "\n" not in err, err
    assert snapshot(folder) == before
    return err


def test_a_folder_holding_a_run_is_refused_without_resume_or_overwrite(finished, capsys):
    err = refused(capsys, [*BASE, "--epochs", "3", "--out", str(finished)], finished,
                  "already holds a run")
    assert "--resume" in err and "--overwrite" in err


def test_overwrite_replaces_the_run_and_its_checkpoints(finished):
    assert find_latest(finished).epoch == 2
    assert main([*BASE, "--epochs", "1", "--out", str(finished), "--overwrite"]) == 0
    rows = (finished / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(r)["epoch"] for r in rows] == [1]
    assert not (finished / "checkpoint").exists()  # the old run's checkpoint cannot be mixed in


@pytest.mark.parametrize("change,needle", [
    (["--compressor", "topk:0.1"], "compressor: checkpoint 'sign', this run 'topk:0.1'"),
    (["--topology", "torus:2x2"], "topology: checkpoint 'ring:4', this run 'torus:2x2'"),
    (["--seed", "2"], "seed: checkpoint 1, this run 2"),
    (["--model-args", "hidden=16"], "model_args: checkpoint '', this run 'hidden=16'"),
])
def test_resume_refuses_a_checkpoint_of_another_run(finished, capsys, change, needle):
    argv = [*BASE, "--epochs", "3", "--out", str(finished), "--resume", *change]
    refused(capsys, argv, finished, needle)


def test_resume_names_a_damaged_rank_file(finished, capsys):
    gen = find_latest(finished)
    victim = gen.path / "rank3.pt"
    victim.write_bytes(victim.read_bytes()[:500])
    refused(capsys, [*BASE, "--epochs", "3", "--out", str(finished), "--resume"], finished,
            f"{victim} is damaged")


def test_resume_skips_an_incomplete_generation_and_a_corrupt_manifest(finished):
    """A newer generation without a valid manifest is not complete: the older one is used."""
    newer = finished / "checkpoint" / "epoch-000003"
    newer.mkdir()
    (newer / "rank0.pt").write_bytes(b"half a file")
    (newer / MANIFEST).write_text("{not json")
    assert find_latest(finished).epoch == 2
    assert main([*BASE, "--epochs", "3", "--out", str(finished), "--resume"]) == 0
    rows = [json.loads(r) for r in (finished / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    latest = find_latest(finished)  # epoch 3 written again, whole, over the broken one
    assert latest.epoch == 3 and (newer / "rank0.pt").read_bytes() != b"half a file"
    assert sorted(p.name for p in (finished / "checkpoint").iterdir()) == ["epoch-000003"]


def test_resume_keeps_the_checkpoint_period(finished):
    assert main([*BASE, "--epochs", "3", "--out", str(finished), "--resume"]) == 0
    assert find_latest(finished).epoch == 3  # saved without --checkpoint-every again


@pytest.mark.parametrize("extra,needle", [
    (["--resume", "--overwrite"], "only one of them"),
    (["--resume"], "needs a complete checkpoint"),
])
def test_conflicting_or_missing_resume(tmp_path, capsys, extra, needle):
    out = tmp_path / "fresh"
    out.mkdir()
    refused(capsys, [*BASE, "--epochs", "1", "--out", str(out), *extra], out, needle)
    assert list(out.iterdir()) == []


def test_out_that_is_a_file_is_refused(tmp_path, capsys):
    target = tmp_path / "file"
    target.write_text("keep me")
    refused(capsys, [*BASE, "--epochs", "1", "--out", str(target)], tmp_path,
            "must be a folder")


def test_resume_detects_a_changed_byte_by_checksum(finished, capsys):
    """Same size, one byte changed: the SHA-256 in the manifest catches it on every rank."""
    victim = find_latest(finished).path / "rank1.pt"
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))
    assert main([*BASE, "--epochs", "3", "--out", str(finished), "--resume"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and f"{victim} is damaged" in err and "checksum" in err
    rows = (finished / "metrics.jsonl").read_text().splitlines()
    assert len(rows) == 2  # nothing trained, no row added
