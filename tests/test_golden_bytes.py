"""Every wire format is byte-identical to the record taken before the compressors moved.

``tests/data/golden_bytes.json`` was written by ``tests/data/make_golden.py`` on the code as
it was before the per-tensor kernels moved into their families' modules (issue 21): for
every family and combinator, flat and per tensor (size-1 segments, several batched blocks,
segments coded alone), host and torch kernels, several dtypes and seeds, the SHA-256 and
length of the message and of the decoded sum. Here each case is encoded again and compared.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

DATA = Path(__file__).resolve().parent / "data"


def _load_script():
    spec = importlib.util.spec_from_file_location("make_golden", DATA / "make_golden.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


golden = _load_script()
RECORD = json.loads((DATA / "golden_bytes.json").read_text())
CASES = golden.cases()


def test_the_record_covers_every_case():
    assert sorted(RECORD) == sorted(case["id"] for case in CASES)
    assert len(CASES) > 600


def test_the_record_covers_every_family():
    """Each family and combinator appears flat and per tensor, on host and torch kernels."""
    from choco.compress import REGISTRY

    covered = {(c["spec"].split(":")[0].split("+")[0].removeprefix("scaled("),
                c["sizes"] is None, c["host"]) for c in CASES}
    for family in set(REGISTRY) - {"lgc"}:
        for flat in (True, False):
            for host in (True, False):
                assert (family, flat, host) in covered, (family, flat, host)
    assert any("+" in c["spec"] for c in CASES) and any("scaled(" in c["spec"] for c in CASES)


@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_encoding_and_decoding_are_the_recorded_ones(case):
    expected = RECORD[case["id"]]
    got = golden.measure(case)
    assert got["input"] == expected["input"], "the seeded input itself changed"
    assert got == expected


def test_a_recorded_case_fails_when_one_bit_changes(monkeypatch):
    """The comparison can fail: flipping one payload bit of sign changes the hash."""
    from choco.compress import sign

    case = next(c for c in CASES if c["spec"] == "sign" and c["sizes"] is None
                and c["d"] == 5000 and c["host"])
    original = sign.Sign.encode_payload

    def flipped(self, x, seed):
        flags, payload = original(self, x, seed)
        t = torch.from_numpy(payload.payload) if hasattr(payload, "payload") else payload
        t[-1] ^= 1
        return flags, payload

    monkeypatch.setattr(sign.Sign, "encode_payload", flipped)
    assert golden.measure(case)["bytes"] != RECORD[case["id"]]["bytes"]
