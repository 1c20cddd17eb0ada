"""On a CUDA device: every compressor, and CHOCO-Gossip over NCCL under torchrun.

Skipped (every test, after a clean import and collection) unless ``torch.cuda.is_available()``;
the NCCL launch also needs at least two GPUs.

* every compressor encodes a CUDA tensor (the message is a CPU ``uint8`` buffer of the
  documented length) and ``decode_add_`` adds into a CUDA tensor in place; the device
  decode of a message equals the CPU decode of the same message up to float rounding, and
  for the deterministic compressors (no stochastic rounding) so does the whole ``Q(x)``
  computed on the device versus on the CPU;
* ``tests/torchrun/nccl_check.py``: 2 ranks, the model on ``cuda:LOCAL_RANK``, messages over
  NCCL (:class:`~choco.comm.torchdist.TorchCommunicator`), compared with the in-process CPU
  network.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from choco.compress import PerTensor, make_compressor

from .helpers import RAW_SPECS, SPECS, TESTS, run_torchrun

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="no CUDA device (torch.cuda.is_available() is False)")

#: families whose sender draws random roundings (CPU: numpy SFC64, GPU: torch.Generator),
#: so a device message differs from a CPU one even for the same seed
STOCHASTIC = ("natural", "dither", "qsgd")
SIZES = [1, 9, 1001, 70_000]


def randn(d: int, seed: int = 0) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).standard_normal(d).astype(np.float32))


def close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return bool(torch.allclose(a.cpu(), b.cpu(), rtol=1e-5, atol=1e-6))


@pytest.mark.parametrize("spec", SPECS + RAW_SPECS)
@pytest.mark.parametrize("d", SIZES)
def test_compressor_on_the_device(spec, d):
    q = make_compressor(spec)
    x = randn(d, d)
    xd = x.cuda()
    buf = q.encode(xd, seed=d)
    assert buf.device.type == "cpu" and buf.dtype == torch.uint8
    assert buf.numel() == q.nbytes(d)
    # decode_add_ into a device tensor, in place, equals the CPU decode of the same message
    out_dev = torch.full((d,), 0.5, device="cuda")
    ptr = out_dev.data_ptr()
    q.decode_add_(buf, out_dev, alpha=0.25)
    assert out_dev.device.type == "cuda" and out_dev.data_ptr() == ptr
    out_cpu = torch.full((d,), 0.5)
    q.decode_add_(buf, out_cpu, alpha=0.25)
    assert close(out_dev, out_cpu), float((out_dev.cpu() - out_cpu).abs().max())
    # Q(x) on the device, of the device's own message
    qd = q(xd, seed=d)
    assert qd.device.type == "cuda" and qd.shape == xd.shape
    assert bool(torch.isfinite(qd).all())
    if not any(f in spec for f in STOCHASTIC):  # deterministic: same as on the CPU
        assert close(qd, q(x, seed=d)), float((qd.cpu() - q(x, seed=d)).abs().max())


@pytest.mark.parametrize("spec", ["sign", "topk:0.1", "qsgd:16", "randk:0.2+natural"])
def test_per_tensor_on_the_device(spec):
    sizes = [7, 300, 1, 4096]
    q = PerTensor(make_compressor(spec), sizes)
    x = randn(sum(sizes), 3)
    buf = q.encode(x.cuda(), seed=9)
    assert buf.numel() == q.nbytes(sum(sizes))
    out_dev = torch.zeros(sum(sizes), device="cuda")
    q.decode_add_(buf, out_dev)
    out_cpu = torch.zeros(sum(sizes))
    q.decode_add_(buf, out_cpu)
    assert close(out_dev, out_cpu)


@pytest.mark.torchrun
@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs at least 2 GPUs")
def test_choco_gossip_over_nccl_under_torchrun(tmp_path):
    out = tmp_path / "nccl.json"
    proc = run_torchrun(2, [str(TESTS / "torchrun" / "nccl_check.py"), str(out), "cuda"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["backend"] == "nccl" and result["device"].startswith("cuda")
    failed = {k: v for k, v in result["checks"].items() if not v[0]}
    assert not failed, failed
    assert result["checks"]["transport"][1].startswith("cuda")
    assert sum(k.endswith("equals_cpu_local") for k in result["checks"]) == 4
