"""One TCP stream's payload rate over a shaped link (a check of sim_run.sh's bandwidth).

    python -m experiments.netns.stream recv PORT MBYTES     # in one namespace
    python -m experiments.netns.stream send HOST PORT MBYTES  # in the other

The receiver prints ``{"payload_gbit_s": ...}``: payload bits over the seconds from the
first to the last byte received.
"""

from __future__ import annotations

import json
import socket
import sys
import time

CHUNK = 1 << 20


def receive(port: int, nbytes: int) -> float:
    with socket.create_server(("0.0.0.0", port)) as server:
        conn, _ = server.accept()
        with conn:
            buf = bytearray(CHUNK)
            got = conn.recv_into(buf)
            start = time.perf_counter()
            first = got
            while got < nbytes:
                n = conn.recv_into(buf)
                if n == 0:
                    break
                got += n
            seconds = time.perf_counter() - start
    return 8 * (got - first) / seconds / 1e9


def send(host: str, port: int, nbytes: int) -> None:
    data = bytes(CHUNK)
    for _ in range(100):  # the receiver may not listen yet
        try:
            conn = socket.create_connection((host, port))
            break
        except OSError:
            time.sleep(0.1)
    else:
        raise SystemExit(f"cannot connect to {host}:{port}")
    with conn:
        sent = 0
        while sent < nbytes:
            conn.sendall(data[:min(CHUNK, nbytes - sent)])
            sent += min(CHUNK, nbytes - sent)


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["recv"] and len(args) == 3:
        rate = receive(int(args[1]), int(float(args[2]) * 1e6))
        print(json.dumps({"payload_gbit_s": rate}), flush=True)
        return 0
    if args[:1] == ["send"] and len(args) == 4:
        send(args[1], int(args[2]), int(float(args[3]) * 1e6))
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
