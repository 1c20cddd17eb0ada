"""Fault injection for tests/test_faults.py, loaded only by the test's subprocesses.

Python imports ``sitecustomize`` at start-up when its folder is on ``PYTHONPATH``. This one
wraps ``choco.run.files.atomic_write`` so that the rank named by ``CHOCO_FAULT_RANK``, when it
writes ``CHOCO_FAULT_FILE`` inside the folder ``CHOCO_FAULT_DIR`` (e.g. ``rank2.pt`` in
``epoch-000003``), writes only half of the bytes to a temporary file and then kills itself
with SIGKILL: a crash in the middle of a checkpoint write. The time of the kill goes to
``CHOCO_FAULT_STAMP``. Nothing in choco knows about it.
"""

import os

if os.environ.get("CHOCO_FAULT_FILE"):
    import signal
    import time

    import choco.run.files as files

    _real = files.atomic_write

    def _rank() -> int:
        for var in ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK"):
            if os.environ.get(var, "").isdigit():
                return int(os.environ[var])
        return 0

    def atomic_write(path, write):
        path = os.fspath(path)
        if (os.path.basename(path) == os.environ["CHOCO_FAULT_FILE"]
                and os.path.basename(os.path.dirname(path)) == os.environ["CHOCO_FAULT_DIR"]
                and _rank() == int(os.environ.get("CHOCO_FAULT_RANK", "0"))):
            import io

            buf = io.BytesIO()
            write(buf)
            data = buf.getvalue()
            with open(path + ".crash.tmp", "wb") as fh:
                fh.write(data[: len(data) // 2])
            with open(os.environ["CHOCO_FAULT_STAMP"], "w") as fh:
                fh.write(repr(time.time()))
            os.kill(os.getpid(), signal.SIGKILL)
        return _real(path, write)

    files.atomic_write = atomic_write
