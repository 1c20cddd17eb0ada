"""docs/compressors.md "Writing a compressor": the example runs as written, and the same
codec, declared by an outside package in the entry-point group ``choco.compressors``, runs
through ``choco-train --compressor fp16``.

Expectations are independent of the codec's code: the message length against the fp16
payload formula ``16 + 2 d`` (header plus two bytes per element), the bytes sent against
rounds × neighbours × that length, and the consensus error against its starting value.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import choco.compress.registry as registry
from choco.compress import CompressionError, available, make_compressor

from .helpers import ROOT, launch_env, run_python

DOC = ROOT / "docs" / "compressors.md"
BEGIN, END = "<!-- custom-compressor-example -->", "<!-- end custom-compressor-example -->"


def example() -> str:
    """The Python code between the markers, as written (the fences dropped)."""
    text = DOC.read_text()
    assert text.count(BEGIN) == 1 and text.count(END) == 1
    block = text.split(BEGIN)[1].split(END)[0].strip("\n")
    lines = block.splitlines()
    assert len(lines) <= 40, f"the example has {len(lines)} lines, at most 40 are promised"
    assert lines[0] == "```python" and lines[-1] == "```"
    return "\n".join(lines[1:-1]) + "\n"


def plugin_dir(root: Path, entries: dict[str, str], modules: dict[str, str]) -> Path:
    """A directory holding ``modules`` and an installed-distribution record whose
    ``entry_points.txt`` declares ``entries`` in the group ``choco.compressors``."""
    root.mkdir(parents=True, exist_ok=True)
    for name, code in modules.items():
        (root / f"{name}.py").write_text(code)
    info = root / "choco_test_plugin-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: choco-test-plugin\n"
                                   "Version: 1.0\n")
    lines = "".join(f"{name} = {target}\n" for name, target in entries.items())
    (info / "entry_points.txt").write_text(f"[{registry.GROUP}]\n{lines}")
    return root


def test_the_example_runs_as_written_and_the_error_falls(tmp_path):
    script = tmp_path / "example.py"
    script.write_text(example())
    proc = run_python([str(script)], timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    found = re.search(r"squared error (\S+) -> (\S+) ", proc.stdout)
    assert found, proc.stdout
    before, after = (float(v) for v in found.groups())
    assert before > 0 and after < before / 100


def choco_train() -> list[str]:
    exe = shutil.which("choco-train")
    return [exe] if exe else [sys.executable, "-m", "choco.train"]


@pytest.mark.slow
def test_an_outside_package_adds_fp16_to_choco_train(tmp_path):
    """The example's module, installed as a plugin, is found by name; the run's message
    length and bytes follow fp16's formula 16 + 2d."""
    plugins = plugin_dir(tmp_path / "site", {"fp16": "fp16codec:FP16"},
                         {"fp16codec": example()})
    out = tmp_path / "run"
    proc = subprocess.run(
        [*choco_train(), "--backend", "local", "--nodes", "4", "--topology", "ring:4",
         "--compressor", "fp16", "--gamma", "1", "--epochs", "1", "--per-tensor", "false",
         "--quiet", "--out", str(out)],
        capture_output=True, text=True, timeout=600, cwd=tmp_path,
        env=launch_env({"PYTHONPATH": str(plugins)}))
    assert proc.returncode == 0, proc.stderr[-3000:]
    config = json.loads((out / "config.json").read_text())
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    d = config["parameters"]
    assert config["config"]["compressor"] == "fp16"
    assert config["message_bytes"] == 16 + 2 * d
    rounds = config["steps_per_epoch"]  # one gossip round per step; 2 neighbours on a ring
    assert rows[-1]["bytes_sent"] == rounds * 2 * (16 + 2 * d)
    assert all(r.get("train_loss") is not None for r in rows)


@pytest.fixture
def plugins(tmp_path, monkeypatch):
    """This process sees a plugin distribution with one good and three broken entries;
    the registry is restored afterwards."""
    good = "from choco.compress import Identity\n\ndef make(arg):\n    return Identity()\n"
    bad = "def make(arg):\n    return 'not a compressor'\n"
    root = plugin_dir(tmp_path / "site", {
        "plainfp": "choco_good_plugin:make",
        "missingdep": "choco_no_such_module_xyz:make",
        "notcodec": "choco_bad_plugin:make",
        "notcallable": "choco_bad_plugin:__name__",
    }, {"choco_good_plugin": good, "choco_bad_plugin": bad})
    monkeypatch.syspath_prepend(str(root))
    monkeypatch.setattr(registry, "REGISTRY", dict(registry.REGISTRY))
    monkeypatch.setattr(registry, "EXAMPLES", dict(registry.EXAMPLES))
    for name in ("choco_good_plugin", "choco_bad_plugin"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    return root


def test_plugins_are_listed_by_name_and_loaded_when_used(plugins):
    listed = available()
    for name in ("plainfp", "missingdep", "notcodec", "notcallable"):
        assert name in listed
    assert "choco_bad_plugin" not in sys.modules  # listing imports nothing
    assert make_compressor("topk:0.1").spec == "topk:0.1"  # a broken plugin harms no other
    assert "choco_bad_plugin" not in sys.modules
    q = make_compressor("plainfp")
    assert q.nbytes(10) == 16 + 4 * 10  # the plugin's factory built it (identity, fp32)
    assert "choco_good_plugin" in sys.modules


@pytest.mark.parametrize("name,needle", [
    ("missingdep", "failed to load: ModuleNotFoundError"),
    ("notcodec", "must return a choco.compress.Compressor"),
    ("notcallable", "must name a factory"),
])
def test_a_broken_plugin_is_an_error_naming_it(plugins, name, needle):
    with pytest.raises(CompressionError) as info:
        make_compressor(name)
    text = str(info.value)
    assert f"compressor plugin {name!r}" in text and needle in text
    assert "choco-test-plugin" in text  # the package that declares it


def test_an_unknown_name_lists_the_valid_ones_and_suggests_the_closest():
    with pytest.raises(CompressionError) as info:
        make_compressor("qsdg:8")
    text = str(info.value)
    assert "did you mean 'qsgd'?" in text
    assert all(spec in text for spec in ("topk:0.01", "sign", "lgc", "scaled(randk:0.1:raw)"))
    with pytest.raises(CompressionError, match="unknown compressor 'zzzz'") as info:
        make_compressor("zzzz")
    assert "did you mean" not in str(info.value)
