"""Zero-copy proof: strace a running edge and show file bytes go out by sendfile(2), never read into user space.

strace (-f -yy) is attached to the server while 1 MiB and 4 MiB files are downloaded, first as
cache misses (fresh names) and then as hits. Every traced syscall line names its fd (-yy), so the
test can tell socket fds from file fds: the sendfile return values must cover every file byte, while
the bytes read (read/pread64/readv/preadv) from non-socket fds stay tiny (at most the 8 KiB
content-type sniff per file). Files bigger than `file_cache.inline_max` (16 KiB by default) are
used, since smaller ones are read once on purpose to go out inline with their headers.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections import defaultdict
from pathlib import Path

import pytest
from conftest import read_answer

STRACE = shutil.which("strace") or ("/usr/bin/strace" if os.path.exists("/usr/bin/strace") else None)

SYSCALLS = "sendfile,read,pread64,readv,preadv,recvfrom,write,writev,setsockopt"
READS = {"read", "pread64", "readv", "preadv"}
WRITES = {"write", "writev"}

# "1234  sendfile(15<TCP:[...]>, 16</path>, ...) = 1048576"
CALL = re.compile(r"^(\d+)\s+(\w+)\((\d+)<(.*?)>[,)].*?\)\s+=\s+(-?\d+)")
# "1234  sendfile(15<TCP:[...]>, 16</path>, [0] <unfinished ...>"
UNFINISHED = re.compile(r"^(\d+)\s+(\w+)\((\d+)<(.*?)>.*<unfinished \.\.\.>\s*$")
# "1234  <... sendfile resumed>...) = 1048576"
RESUMED = re.compile(r"^(\d+)\s+<\.\.\. (\w+) resumed>.*\)\s+=\s+(-?\d+)")
# "1234  setsockopt(15<TCP:[...]>, SOL_TCP, TCP_CORK, [1], 4) = 0"
CORK = re.compile(r"setsockopt\(.*TCP_CORK, \[([01])\], \d+\)\s+=\s+0")


def is_socket(annotation: str) -> bool:
    """True when strace's -yy fd annotation names a socket."""
    return annotation.startswith(("TCP", "UDP", "UNIX", "socket:", "NETLINK", "TCPv6", "UDPv6"))


class Trace:
    """Syscalls of the traced server, summed by kind and fd class."""

    def __init__(self, text: str) -> None:
        self.sendfile_bytes = 0
        self.sendfile_calls = 0
        self.file_reads: dict[str, int] = defaultdict(int)  # non-socket fd annotation -> bytes read
        self.socket_writes = 0  # bytes written with write/writev to sockets
        self.lines = 0
        self.corks: list[int] = []  # TCP_CORK values set, in order
        pending: dict[str, tuple[str, str]] = {}
        for line in text.splitlines():
            m = CORK.search(line)
            if m:
                self.corks.append(int(m.group(1)))
                continue
            m = CALL.match(line)
            if m:
                pid, name, _fd, ann, ret = m.groups()
                self._add(name, ann, int(ret))
                continue
            m = UNFINISHED.match(line)
            if m:
                pid, name, _fd, ann = m.groups()
                pending[pid] = (name, ann)
                continue
            m = RESUMED.match(line)
            if m:
                pid, name, ret = m.groups()
                started = pending.pop(pid, None)
                if started is not None and started[0] == name:
                    self._add(name, started[1], int(ret))

    def _add(self, name: str, ann: str, ret: int) -> None:
        self.lines += 1
        if ret <= 0:
            return
        if name == "sendfile":
            self.sendfile_bytes += ret
            self.sendfile_calls += 1
        elif name in READS and not is_socket(ann):
            self.file_reads[ann] += ret
        elif name in WRITES and is_socket(ann):
            self.socket_writes += ret

    @property
    def non_socket_read_bytes(self) -> int:
        return sum(self.file_reads.values())


class Strace:
    """strace attached to a running process; stop() detaches and returns the parsed trace."""

    def __init__(self, pid: int, out: Path) -> None:
        self.out = out
        self.proc = subprocess.Popen(
            [STRACE, "-f", "-yy", "-s", "0", "-o", str(out), "-p", str(pid),
             "-e", f"trace={SYSCALLS}", "-e", "signal=none"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.stderr: list[str] = []
        self._attached = threading.Event()
        self._reader = threading.Thread(target=self._read_stderr, daemon=True)
        self._reader.start()
        # Wait for the attach message (or strace's failure) before any traffic is sent.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not self._attached.is_set() and self.proc.poll() is None:
            time.sleep(0.02)
        if not self._attached.is_set():
            self.proc.kill()
            self.proc.wait()
            self._reader.join(2)
            msg = " ".join(self.stderr)
            if "ptrace" in msg or "Operation not permitted" in msg or "EPERM" in msg:
                pytest.skip(f"ptrace is not permitted here: {msg.strip()}")
            pytest.fail(f"strace did not attach: {msg.strip()}")
        time.sleep(0.3)  # let strace attach every thread of the process

    def _read_stderr(self) -> None:
        for line in self.proc.stderr:
            self.stderr.append(line)
            if "attached" in line:
                self._attached.set()

    def stop(self) -> Trace:
        time.sleep(0.3)  # syscalls already under way finish before detaching
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._reader.join(2)
        return Trace(self.out.read_text())


def download(host: str, port: int, target: str) -> tuple[int, int, bytes]:
    """GET `target` on a fresh connection reading 1 MiB at a time: (status, Content-Length, body)."""
    sock = socket.create_connection((host, port), timeout=20)
    try:
        sock.sendall(f"GET {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        status, headers, body = read_answer(sock)
        return status, int(headers["content-length"]), body
    finally:
        sock.close()


@pytest.fixture
def strace_available() -> str:
    if STRACE is None:
        pytest.skip("strace is not installed")
    probe = subprocess.run([STRACE, "-o", "/dev/null", "true"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"strace cannot trace here: {probe.stderr.strip()}")
    return STRACE


def test_file_bytes_go_by_sendfile_and_are_never_read(strace_available, edge, www: Path, tmp_path: Path):
    # Fresh names, so the first download of each is a cache miss; one has a known extension, the
    # other none (its type is sniffed from at most 8 KiB). Both are far above inline_max (16 KiB).
    files = {
        "zc-1m.bin": os.urandom(1 << 20),
        "zc-4m-noext": os.urandom(4 << 20),
    }
    for name, data in files.items():
        (www / name).write_bytes(data)
    (www / "warm-noext").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 64)
    server = edge()
    # Warm the sniffing machinery (python-magic import, libmagic database) before tracing.
    status, _, _ = download(server.host, server.port, "/warm-noext")
    assert status == 200

    tracer = Strace(server.worker_pid, tmp_path / "strace.out")
    results = []
    try:
        for _ in range(2):  # miss, then hit
            for name in files:
                results.append((name, *download(server.host, server.port, "/" + name)))
    finally:
        trace = tracer.stop()

    assert server.alive()
    total = 0
    for name, status, length, body in results:
        assert status == 200, name
        assert length == len(files[name]), name
        assert body == files[name], f"{name}: downloaded bytes differ from the file"
        total += len(body)
    assert total == 2 * sum(len(d) for d in files.values())

    assert trace.lines > 0, "strace recorded nothing; was it attached to the server?"
    assert trace.sendfile_calls >= len(results), "each file response should use sendfile"
    assert trace.sendfile_bytes >= total, (
        f"sendfile sent {trace.sendfile_bytes} bytes for {total} file bytes downloaded")
    # The content-type sniff may read 8 KiB of the extensionless file on its miss; nothing else
    # of the files may be read. The bound is far below even one file's size.
    read_bytes = trace.non_socket_read_bytes
    assert read_bytes <= 64 * 1024, f"file bytes read into user space: {dict(trace.file_reads)}"
    for name in files:
        from_file = sum(n for ann, n in trace.file_reads.items() if ann.endswith("/" + name))
        assert from_file <= 8192, f"{name}: {from_file} bytes read from the file"
    # And the bytes did not go out by write/writev either: those only carry header blocks.
    assert trace.socket_writes <= 16 * 1024, f"{trace.socket_writes} bytes written to sockets by write/writev"
    # Bodies of 1 MiB or more are corked for the transfer and uncorked after it (else the tail waits).
    assert trace.corks == [1, 0] * len(results), f"TCP_CORK settings: {trace.corks}"


def test_ranges_and_multipart_go_by_sendfile(strace_available, edge, www: Path, tmp_path: Path):
    data = os.urandom(2 << 20)
    (www / "zc-ranges.bin").write_bytes(data)
    server = edge()
    tracer = Strace(server.worker_pid, tmp_path / "strace.out")
    bodies = []
    try:
        for rng in ("bytes=100000-1199999", "bytes=0-299999,1500000-1999999"):
            sock = socket.create_connection((server.host, server.port), timeout=20)
            try:
                sock.sendall(f"GET /zc-ranges.bin HTTP/1.1\r\nHost: x\r\nRange: {rng}\r\n"
                             "Connection: close\r\n\r\n".encode())
                out = b""
                sock.settimeout(20)
                while True:
                    chunk = sock.recv(1 << 20)
                    if not chunk:
                        break
                    out += chunk
            finally:
                sock.close()
            bodies.append(out)
    finally:
        trace = tracer.stop()

    head, _, body = bodies[0].partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 206")
    assert body == data[100000:1200000]
    head, _, body = bodies[1].partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 206")
    assert b"multipart/byteranges" in head
    assert data[0:300000] in body and data[1500000:2000000] in body
    assert trace.sendfile_bytes >= 1100000 + 300000 + 500000
    assert trace.non_socket_read_bytes <= 64 * 1024, dict(trace.file_reads)
