"""Python-side CPU per HTTP/1.1 1 KiB hit, in one process: a real Worker and H1Connection, a fake transport.

No sockets and no kernel: what it measures is edge's own per-request work (parse, plan, head bytes), the
part a change to the adapter moves. Compare builds by running each with PYTHONPATH at its tree, in
alternation, e.g.:

    for c in /tmp/base /tmp/head /tmp/base /tmp/head; do PYTHONPATH=$c .venv/bin/python scripts/h1loop.py $c; done

(`git archive REV edge | tar -x -C DIR` makes a tree.) Prints the best and the median of 7 rounds of 50,000.
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys
import tempfile
import time

import uvloop

from edge.config import load
from edge.http1 import H1Connection
from edge.worker import Worker

REQUEST = b"GET /1k.bin HTTP/1.1\r\nHost: localhost:8080\r\nUser-Agent: wrk\r\nAccept: */*\r\n\r\n"
ROUNDS, PER_ROUND = 7, 50_000


class CountingTransport(asyncio.Transport):
    """Takes writes and counts their bytes; never pushes back."""

    def __init__(self, sock: socket.socket) -> None:
        super().__init__()
        self.sock = sock
        self.written = 0
        self.closing = False

    def get_extra_info(self, name: str, default: object = None) -> object:  # noqa: D102
        return {"socket": self.sock, "peername": ("127.0.0.1", 1)}.get(name, default)

    def write(self, data: bytes) -> None:  # noqa: D102
        self.written += len(data)

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:  # noqa: D102
        pass

    def get_write_buffer_size(self) -> int:  # noqa: D102
        return 0

    def is_closing(self) -> bool:  # noqa: D102
        return self.closing

    def pause_reading(self) -> None:  # noqa: D102
        pass

    def resume_reading(self) -> None:  # noqa: D102
        pass

    def close(self) -> None:  # noqa: D102
        self.closing = True


def main() -> None:
    """Measure and print µs of CPU per request."""
    label = sys.argv[1] if len(sys.argv) > 1 else "edge"
    root = tempfile.mkdtemp(prefix="h1loop-")
    with open(os.path.join(root, "1k.bin"), "wb") as f:
        f.write(os.urandom(1024))
    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    worker = Worker(load(None, {"root": root, "file_cache": {"valid": 3600}}), loop)  # no re-check mid-round
    own, _peer = socket.socketpair()
    conn = H1Connection(worker)
    transport = CountingTransport(own)
    conn.connection_made(transport)
    for i in range(300):  # the first request opens the file off the loop: let it land
        conn.data_received(REQUEST)
        loop.run_until_complete(asyncio.sleep(0.02 if i < 5 else 0))
    before = transport.written
    rounds = []
    for _ in range(ROUNDS):
        start = time.process_time()
        for _ in range(PER_ROUND):
            conn.data_received(REQUEST)
        rounds.append((time.process_time() - start) / PER_ROUND * 1e6)
    if transport.written - before < ROUNDS * PER_ROUND * 1024:  # every answer carries the 1 KiB body
        sys.exit(f"{label}: not every request was answered from memory")
    rounds.sort()
    print(f"{label}: {rounds[0]:.2f} µs/request best, {rounds[ROUNDS // 2]:.2f} median ({ROUNDS} x {PER_ROUND})")


if __name__ == "__main__":
    main()
