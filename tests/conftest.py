"""Shared fixtures: real `edge serve` processes on loopback, and raw-socket helpers."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

STARTUP = re.compile(r"listening on http://(\S+):(\d+) .*workers=(\d+)")
WORKER_LINE = re.compile(r"^  worker (\d+): pid (\d+) (.*)$")


class EdgeProcess:
    """A running `edge serve` (supervisor plus workers) bound to a free loopback port.

    `pid` is the supervisor; `banner` maps each worker slot to (pid, placement) as printed at
    start-up. Output after the banner is collected by threads (a full pipe would block the server).
    """

    def __init__(self, root: Path, *args: str, config: Path | None = None, env: dict | None = None) -> None:
        cmd = [sys.executable, "-m", "edge.cli", "serve", "--root", str(root), "--host", "127.0.0.1",
               "--port", "0", *args]
        if "--workers" not in args:
            cmd += ["--workers", "1"]
        if config is not None:
            cmd += ["--config", str(config)]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     env={**os.environ, **(env or {})})
        line = self.proc.stdout.readline()
        m = STARTUP.search(line)
        if not m:
            self.proc.kill()
            err = self.proc.stderr.read()
            raise RuntimeError(f"edge did not start: {line!r} {err!r}")
        self.host = m.group(1)
        self.port = int(m.group(2))
        self.pid = self.proc.pid
        self.url = f"http://{self.host}:{self.port}"
        self.topology = self.proc.stdout.readline().strip()
        self.banner: dict[int, tuple[int, str]] = {}
        for _ in range(int(m.group(3))):
            w = WORKER_LINE.match(self.proc.stdout.readline().rstrip("\n"))
            assert w, "start-up banner without its worker table"
            self.banner[int(w.group(1))] = (int(w.group(2)), w.group(3))
        self._out: list[str] = []
        self._err: list[str] = []
        self._readers = [threading.Thread(target=_collect, args=(stream, sink), daemon=True)
                         for stream, sink in ((self.proc.stdout, self._out), (self.proc.stderr, self._err))]
        for reader in self._readers:
            reader.start()

    def stderr(self) -> str:
        """Everything the server wrote to stderr so far (all of it once the process has exited)."""
        if self.proc.poll() is not None:
            for reader in self._readers:
                reader.join(5)
        return "".join(self._err)

    def stdout(self) -> str:
        """Everything the server wrote to stdout after the start-up banner."""
        if self.proc.poll() is not None:
            for reader in self._readers:
                reader.join(5)
        return "".join(self._out)

    def worker_pids(self) -> list[int]:
        """The supervisor's live child processes (its workers), read from /proc."""
        try:
            with open(f"/proc/{self.pid}/task/{self.pid}/children") as f:
                return [int(p) for p in f.read().split()]
        except FileNotFoundError:
            return []

    @property
    def worker_pid(self) -> int:
        """The one worker of a single-worker server (the process that serves requests)."""
        pids = self.worker_pids()
        assert len(pids) == 1, f"expected one worker, found {pids}"
        return pids[0]

    def connect(self, timeout: float = 5.0) -> socket.socket:
        """A fresh TCP connection to the server."""
        return socket.create_connection((self.host, self.port), timeout=timeout)

    def fds(self) -> int:
        """How many file descriptors the (single) worker process has open."""
        return len(os.listdir(f"/proc/{self.worker_pid}/fd"))

    def rss(self) -> int:
        """Resident set size of the (single) worker process, in bytes."""
        with open(f"/proc/{self.worker_pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        raise RuntimeError("no VmRSS")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
        """Signal the server and wait for it to exit; returns its exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise

    def alive(self) -> bool:
        """True while the process runs."""
        return self.proc.poll() is None


def _collect(stream, sink: list[str]) -> None:
    for line in stream:
        sink.append(line)


@pytest.fixture
def www(tmp_path: Path) -> Path:
    """A document root with a few files."""
    root = tmp_path / "www"
    root.mkdir()
    (root / "index.html").write_text("<h1>home</h1>\n")
    (root / "hello.txt").write_text("hello world\n")
    (root / "1k.bin").write_bytes(os.urandom(1024))
    (root / "100k.bin").write_bytes(os.urandom(100 * 1024))
    (root / "1m.bin").write_bytes(os.urandom(1024 * 1024))
    (root / "sub").mkdir()
    (root / "sub" / "index.html").write_text("<p>sub</p>\n")
    (root / "noindex").mkdir()
    (root / "noindex" / "a.txt").write_text("a\n")
    return root


@pytest.fixture
def edge(www: Path):
    """A factory for edge processes serving `www` (extra flags allowed); all are stopped afterwards."""
    started: list[EdgeProcess] = []

    def start(*args: str, root: Path | None = None, config: Path | None = None, env: dict | None = None):
        proc = EdgeProcess(root or www, *args, config=config, env=env)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        if proc.alive():
            proc.stop(signal.SIGKILL)


@pytest.fixture
def server(edge) -> EdgeProcess:
    """One edge process serving the `www` fixture."""
    return edge()


class Client:
    """A raw HTTP/1.1 client connection that reads responses one by one (pipelining allowed)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""

    def send(self, data: bytes) -> None:
        """Send raw bytes."""
        self.sock.sendall(data)

    def _fill(self) -> None:
        chunk = self.sock.recv(1 << 20)
        if not chunk:
            raise ConnectionError(f"closed by the server; unread: {self.buf[:200]!r}")
        self.buf += chunk

    def response(self, *, head: bool = False) -> tuple[int, dict[str, str], bytes]:
        """Read one response: status, lower-cased headers, body (none for HEAD, 1xx, 204 and 304)."""
        while b"\r\n\r\n" not in self.buf:
            self._fill()
        raw, _, self.buf = self.buf.partition(b"\r\n\r\n")
        lines = raw.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            key = name.strip().lower()
            headers[key] = headers[key] + ", " + value.strip() if key in headers else value.strip()
        if head or status == 304:
            return status, headers, b""
        length = int(headers["content-length"])
        while len(self.buf) < length:
            self._fill()
        body, self.buf = self.buf[:length], self.buf[length:]
        return status, headers, body

    def closed(self, timeout: float = 5.0) -> bool:
        """True when the server closes the connection (EOF or reset) within `timeout`, with nothing more sent."""
        self.sock.settimeout(timeout)
        try:
            return self.sock.recv(1) == b"" and not self.buf
        except ConnectionResetError:
            return True
        except socket.timeout:
            return False

    def close(self) -> None:
        """Close the socket."""
        self.sock.close()


def request(server: "EdgeProcess", target: str = "/", *, method: str = "GET", headers: dict | None = None,
            version: str = "HTTP/1.1") -> tuple[int, dict[str, str], bytes]:
    """One request on a fresh connection; returns (status, headers, body)."""
    client = Client(server.connect())
    try:
        lines = [f"{method} {target} {version}", f"Host: {server.host}"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        client.send(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        return client.response(head=method == "HEAD")
    finally:
        client.close()


def read_until_closed(sock: socket.socket, timeout: float = 5.0) -> bytes:
    """Everything the server sends until it closes the connection."""
    sock.settimeout(timeout)
    out = b""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        out += chunk
    return out
