"""``python -m choco.compress`` and ``python -m choco.bench compressors``."""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from choco.compress import make_compressor
from choco.run.compress_cli import main

from .helpers import RAW_SPECS, SPECS, run_python


def run(args: list[str]) -> subprocess.CompletedProcess:
    return run_python(["-m", *args])


@pytest.fixture
def x_file(tmp_path):
    path = tmp_path / "x.npy"
    np.save(path, np.random.default_rng(0).standard_normal(1001).astype(np.float32))
    return path


def test_subprocess_writes_q_of_x_and_prints_json_last(x_file, tmp_path):
    out = tmp_path / "y.npy"
    proc = run(["choco.compress", "topk:0.01+natural", "--in", str(x_file), "--out", str(out),
                "--seed", "7"])
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    q = make_compressor("topk:0.01+natural")
    assert result["spec"] == "topk:0.01+natural"
    assert result["numel"] == 1001
    assert result["nbytes"] == q.nbytes(1001) == q.encode(torch.zeros(1001)).numel()
    assert result["delta"] == pytest.approx(q.delta(1001))
    y = np.load(out)
    x = torch.from_numpy(np.load(x_file))
    assert y.shape == (1001,) and y.dtype == np.float32
    np.testing.assert_array_equal(y, q(x, seed=7).numpy())
    # and independently of the package: the 11 largest |x_i|, each a power of two next to
    # |x_i| times 8/9, zeros elsewhere
    check_documented_operator("topk:0.01+natural", x.numpy(), y)
    assert np.count_nonzero(y) == 11


def top_k_positions(x: np.ndarray, k: int) -> np.ndarray:
    return np.sort(np.argsort(-np.abs(x), kind="stable")[:k])


def powers_of_two_around(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """2^floor(log2 a) and twice that, for a > 0."""
    low = np.exp2(np.floor(np.log2(a)))
    return low, 2 * low


def check_quantized(spec: str, x: np.ndarray, y: np.ndarray) -> None:
    """qsgd:S / dither:S (docs/compressors.md): per bucket of B' = min(B, d) entries (B = 512,
    b=0: d), |y_i| (1 + ω) / ‖v‖₂ is one of the two levels around |x_i| / ‖v‖₂, with
    ω = min(B'/S², √B'/S) (qsgd), 1/8 + √B' 2^(1−S) min(1, √B' 2^(1−S)) (dither), 0 for :raw."""
    parts = spec.split(":")
    family, s = parts[0], int(parts[1])
    bucket = next((int(p[2:]) for p in parts[2:] if p.startswith("b=")), 512)
    d = x.size
    b = d if bucket == 0 else min(bucket, d)
    if spec.endswith(":raw"):
        omega = 0.0
    elif family == "qsgd":
        omega = min(b / s**2, math.sqrt(b) / s)
    else:
        t = math.sqrt(b) * 2.0 ** (1 - s)
        omega = 1 / 8 + t * min(1.0, t)
    levels = (np.arange(s + 1) / s if family == "qsgd"
              else np.array([0.0] + [2.0 ** -j for j in range(s - 1, -1, -1)]))
    for start in range(0, d, b):
        v, w = x[start:start + b].astype(np.float64), y[start:start + b].astype(np.float64)
        norm = np.sqrt((v ** 2).sum())
        a, got = np.abs(v) / norm, np.abs(w) * (1 + omega) / norm
        upper = np.searchsorted(levels, a - 1e-6)  # first level >= a
        lower = np.maximum(upper - 1, 0)
        near = np.minimum(np.abs(got - levels[lower]), np.abs(got - levels[upper]))
        assert near.max() < 1e-5, (spec, start, near.max())


def assert_scaled_sign(x: np.ndarray, y: np.ndarray) -> None:
    """y = (‖x‖₁/d) sign(x), sign(0) = +; the scale is summed in fp32 (a few ulp off)."""
    scale = np.abs(x.astype(np.float64)).sum() / x.size
    np.testing.assert_array_equal(np.signbit(y), x < 0)
    assert np.unique(np.abs(y)).size == 1
    np.testing.assert_allclose(np.abs(y), scale, rtol=1e-6)


def check_documented_operator(spec: str, x: np.ndarray, y: np.ndarray) -> None:
    """Q(x) written by the CLI against the operator of docs/compressors.md, in numpy."""
    d = x.size
    nonzero = np.flatnonzero(y)
    assert nonzero.size > 0
    # no compressor here flips a sign (x is Gaussian: no zeros)
    assert np.all(np.sign(y[nonzero]) == np.sign(x[nonzero])), spec
    head = spec.removeprefix("scaled(").removesuffix(")").split("+")[0]
    name, _, rest = head.partition(":")
    ratio = float(rest.split(":")[0]) if name in ("topk", "randk", "randblock") else 1.0
    k = min(d, max(1, math.ceil(ratio * d)))
    second = spec.split("+")[1] if "+" in spec else None
    if name in ("topk", "randk", "randblock"):
        # exactly k kept entries; a quantizer after the sparsifier may round some to 0
        zeros_allowed = second is not None and second.startswith(("qsgd", "dither"))
        assert nonzero.size == k or (zeros_allowed and 0 < nonzero.size <= k), spec
        if name == "topk":
            np.testing.assert_array_equal(nonzero, top_k_positions(x, k))
        if name == "randblock":  # inside one block of k entries, wrapping around the end
            gaps = np.diff(np.append(nonzero, nonzero[0] + d))
            assert d - gaps.max() + 1 <= k, spec
    xs, ys = x[nonzero].astype(np.float64), y[nonzero].astype(np.float64)
    if spec == "identity":
        np.testing.assert_array_equal(y, x)
    elif spec == "sign":
        assert_scaled_sign(x, y)
    elif spec.startswith(("topk", "randk", "randblock")) and second is None:
        # values sent unscaled; :raw multiplies them by d/k
        factor = d / k if spec.endswith(":raw") else 1.0
        np.testing.assert_allclose(ys, factor * xs, rtol=1e-6)
    elif second == "sign":
        assert_scaled_sign(x[nonzero], y[nonzero])
    elif spec.startswith("natural") or (second or "").startswith("natural"):
        # natural: a power of two next to |x_i|, times 8/9 (CHOCO form); the composed raw
        # form also carries the d/k of rand-k
        factor = (1.0 if spec.endswith("natural:raw") else 9 / 8) * (
            k / d if head.endswith(":raw") and second is not None else 1.0)
        low, high = powers_of_two_around(np.abs(xs))
        mag = np.abs(ys) * factor
        assert np.all(np.isclose(mag, low, rtol=1e-6) | np.isclose(mag, high, rtol=1e-6)), spec
    elif spec.startswith(("qsgd", "dither")):
        check_quantized(spec, x, y)
    elif spec == "scaled(randk:0.1:raw)":
        # α* = <Q, x>/‖Q‖² undoes the d/k of the raw form: the kept entries unchanged
        np.testing.assert_allclose(ys, xs, rtol=1e-5)
    elif spec.startswith("scaled("):
        # least-squares scale: the residual is orthogonal to the output
        x64, y64 = x.astype(np.float64), y.astype(np.float64)
        assert abs(y64 @ (x64 - y64)) < 1e-5 * np.linalg.norm(y64) * np.linalg.norm(x64)


@pytest.mark.parametrize("spec", SPECS + RAW_SPECS)
def test_every_spec_through_the_cli(spec, x_file, tmp_path, capsys):
    out = tmp_path / "y.npy"
    assert main([spec, "--in", str(x_file), "--out", str(out), "--seed", "3", "--json"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    result = json.loads(lines[-1])
    q = make_compressor(spec)
    assert result["nbytes"] == q.nbytes(1001)
    assert result["delta"] == pytest.approx(q.delta(1001))
    assert result["bits_per_element"] == pytest.approx(8 * q.nbytes(1001) / 1001)
    x, y = np.load(x_file), np.load(out)
    assert y.shape == (1001,) and y.dtype == np.float32
    x64, y64 = x.astype(np.float64), y.astype(np.float64)
    assert result["error"] == pytest.approx(((y64 - x64) ** 2).sum() / (x64 ** 2).sum())
    if q.delta(1001) > 0:  # contractive: strictly better than sending nothing
        assert result["error"] < 1.0
    check_documented_operator(spec, x, y)


@pytest.mark.parametrize("dtype", [np.float64, np.float16])
def test_output_keeps_the_input_dtype(dtype, tmp_path, capsys):
    inp, out = tmp_path / "x.npy", tmp_path / "y.npy"
    np.save(inp, np.random.default_rng(1).standard_normal(100).astype(dtype))
    assert main(["natural", "--in", str(inp), "--out", str(out)]) == 0
    assert np.load(out).dtype == dtype
    assert main(["identity", "--in", str(inp), "--out", str(out), "--overwrite"]) == 0
    np.testing.assert_array_equal(np.load(out), np.load(inp))
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["nbytes"] == (
        16 + 100 * np.dtype(dtype).itemsize)


def test_per_tensor_option(x_file, tmp_path, capsys):
    out = tmp_path / "y.npy"
    assert main(["sign", "--in", str(x_file), "--out", str(out), "--sizes", "1000,1"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["sizes"] == [1000, 1]
    assert np.load(out)[-1] == np.load(x_file)[-1]  # a 1-element segment is exact


def bad_inputs(tmp_path: Path) -> dict[str, tuple[list[str], str]]:
    nan = tmp_path / "nan.npy"
    np.save(nan, np.array([1.0, np.nan, 2.0], dtype=np.float32))
    ints = tmp_path / "int.npy"
    np.save(ints, np.arange(4))
    matrix = tmp_path / "m.npy"
    np.save(matrix, np.zeros((2, 3), dtype=np.float32))
    empty = tmp_path / "e.npy"
    np.save(empty, np.zeros(0, dtype=np.float32))
    good = tmp_path / "x.npy"
    np.save(good, np.ones(4, dtype=np.float32))
    return {
        "nan": (["sign", "--in", str(nan)], "finite"),
        "int": (["sign", "--in", str(ints)], "float"),
        "2-D": (["sign", "--in", str(matrix)], "1-D"),
        "empty": (["sign", "--in", str(empty)], "non-empty"),
        "missing": (["sign", "--in", str(tmp_path / "none.npy")], "not found"),
        "spec": (["sgn", "--in", str(good)], "valid specs"),
        "ratio": (["topk:2", "--in", str(good)], "(0, 1]"),
        "biased raw": (["topk:0.1", "--unbiased", "--in", str(good)], "biased"),
        "sizes": (["sign", "--in", str(good), "--sizes", "2,3"], "summing"),
    }


def test_bad_inputs_exit_2_with_one_paragraph_and_no_output(tmp_path, capsys):
    out = tmp_path / "y.npy"
    for name, (args, needle) in bad_inputs(tmp_path).items():
        assert main([*args, "--out", str(out)]) == 2, name
        captured = capsys.readouterr()
        assert captured.out == "", name
        err = captured.err.strip()
        assert err.startswith("error: ") and needle in err and "\n" not in err, (name, err)
        assert not out.exists(), name


def test_subprocess_bad_input_exit_code(tmp_path):
    nan = tmp_path / "nan.npy"
    np.save(nan, np.array([np.inf], dtype=np.float32))
    out = tmp_path / "y.npy"
    proc = run(["choco.compress", "natural", "--in", str(nan), "--out", str(out)])
    assert proc.returncode == 2 and "finite" in proc.stderr and proc.stdout == ""
    assert not out.exists()


def test_benchmark_subcommand(tmp_path):
    proc = run(["choco.bench", "compressors", "--numel", "20000", "--repeat", "1",
                "--specs", "sign,topk:0.01,randblock:0.01,natural", "--json"])
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    summary = json.loads(lines[-1])
    assert [r["spec"] for r in summary["rows"]] == ["sign", "topk:0.01", "randblock:0.01",
                                                    "natural"]
    for row in summary["rows"]:
        assert row["encode_ratio"] > 0 and row["decode_ms"] > 0
        assert row["bits_per_element"] == pytest.approx(
            8 * make_compressor(row["spec"]).nbytes(20000) / 20000)
    assert any("| `natural` | 9.0" in line for line in lines)


def test_benchmark_rejects_a_missing_gpu_and_bad_specs(capsys):
    from choco.run.bench import main as bench

    if not torch.cuda.is_available():
        assert bench(["compressors", "--device", "cuda", "--numel", "10"]) == 2
        assert "cuda" in capsys.readouterr().err
    assert bench(["compressors", "--specs", "nope", "--numel", "10"]) == 2
    assert "valid specs" in capsys.readouterr().err


def test_delta_subcommand_reports_measured_and_documented(capsys):
    from choco.run.bench import main as bench

    assert bench(["delta", "--numel", "4096", "--seeds", "2", "--specs",
                  "sign,randk:0.1,natural", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["rows"]
    by_spec = {r["spec"]: r for r in rows}
    assert by_spec["sign"]["delta_measured"] == pytest.approx(2 / np.pi, abs=0.02)
    assert by_spec["randk:0.1"]["delta_measured"] == pytest.approx(0.1, abs=0.02)
    assert by_spec["natural"]["omega"] == 0.125
    assert by_spec["natural"]["delta_measured"] >= by_spec["natural"]["delta"]


def test_output_is_checked_before_any_work(x_file, tmp_path, capsys):
    """The input is never the output; an existing output needs --overwrite."""
    before = x_file.read_bytes()
    hard = tmp_path / "hard.npy"
    hard.hardlink_to(x_file)
    (tmp_path / "dir").mkdir()
    cases = [
        ([str(x_file)], "would destroy the input"),
        ([str(x_file), "--overwrite"], "would destroy the input"),
        ([str(hard), "--overwrite"], "would destroy the input"),  # same file, other path
        ([str(tmp_path / "dir")], "which is a folder"),
        ([str(x_file) + "/y.npy"], "is a file, not a folder"),
    ]
    for out, needle in cases:
        assert main(["sign", "--in", str(x_file), "--out", *out]) == 2, out
        err = capsys.readouterr().err
        assert err.startswith("error: --out must") and needle in err, (out, err)
    assert x_file.read_bytes() == before
    out = tmp_path / "y.npy"
    assert main(["sign", "--in", str(x_file), "--out", str(out)]) == 0
    assert main(["natural", "--in", str(x_file), "--out", str(out)]) == 2
    assert "pass --overwrite" in capsys.readouterr().err
    assert main(["natural", "--in", str(x_file), "--out", str(out), "--overwrite"]) == 0


def test_an_unknown_part_of_a_composed_spec_is_named(x_file, tmp_path, capsys):
    for spec, part in [("topk:0.01+naturel", "naturel"), ("scaled(sgn)", "sgn"),
                       ("scaled(topk:0.1+foo:raw)", "foo")]:
        assert main([spec, "--in", str(x_file), "--out", str(tmp_path / "y.npy")]) == 2
        err = capsys.readouterr().err
        assert f"unknown compressor {part!r} in {spec!r}" in err and "valid specs" in err


def test_benchmark_refuses_sizes_and_options_before_allocating(capsys, monkeypatch):
    from choco.run.bench import main as bench

    monkeypatch.setenv("CHOCO_MEMORY_LIMIT", "1e6")
    for argv, needle in [(["compressors", "--numel", "100000"], "lower --numel to at most"),
                         (["delta", "--numel", "100000"], "lower --numel to at most"),
                         (["compressors", "--specs", ","], "--specs must name"),
                         (["compressors", "--threads", "0"], "--threads must be >= 1"),
                         (["delta", "--seeds", "0"], "--seeds must be >= 1")]:
        assert bench(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("error: ") and needle in err and err.count("\n") == 1, err
