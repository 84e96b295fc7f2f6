"""The HTTP/1.1 adapter end to end: a real `edge serve` process driven over raw sockets.

What needs a process, real sockets or real time: a TCP half-close after pipelined requests, the Date
line advancing, the header / keep-alive timeouts (slowloris), TCP_NODELAY on accepted sockets. The
request/response tables (keep-alive, pipelining, HTTP/1.0, HEAD, methods, limits, malformed and
smuggling-shaped requests) run in memory: tests/test_h1_io.py.
"""

from __future__ import annotations

import ctypes
import errno
import os
import re
import socket
import time
from email.utils import parsedate_to_datetime

import pytest

from conftest import Client, read_until_closed, request

IMF_FIXDATE = re.compile(
    r"^(Mon|Tue|Wed|Thu|Fri|Sat|Sun), \d{2} (Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) "
    r"\d{4} \d{2}:\d{2}:\d{2} GMT$")


# -- helpers ---------------------------------------------------------------------------------------


def get(path: str, host: str = "x", extra: str = "", method: str = "GET", version: str = "HTTP/1.1") -> bytes:
    """A request head as bytes."""
    return f"{method} {path} {version}\r\nHost: {host}\r\n{extra}\r\n".encode("latin-1")


def assert_common(headers: dict[str, str]) -> None:
    """Date (an IMF-fixdate close to now), Server and Content-Length are on every response."""
    assert "date" in headers, headers
    assert IMF_FIXDATE.match(headers["date"]), headers["date"]
    sent = parsedate_to_datetime(headers["date"]).timestamp()
    assert abs(sent - time.time()) < 30, headers["date"]
    assert headers.get("server"), headers
    assert "content-length" in headers, headers
    assert headers["content-length"].isdigit(), headers["content-length"]


def assert_alive(server) -> None:
    """The process still runs and answers a fresh connection."""
    assert server.alive(), "edge died"
    status, headers, body = request(server, "/hello.txt")
    assert status == 200
    assert body == b"hello world\n"


# -- keep-alive and pipelining ---------------------------------------------------------------------


def test_pipelined_requests_then_half_close_are_all_answered(server, www):
    """A client that sends its requests and shuts down its write side still gets every answer, then EOF."""
    client = Client(server.connect(timeout=10))
    try:
        client.send(get("/hello.txt") + get("/100k.bin") + get("/nope"))
        client.sock.shutdown(socket.SHUT_WR)
        assert client.response()[2] == b"hello world\n"
        assert client.response()[2] == (www / "100k.bin").read_bytes()
        assert client.response()[0] == 404
        assert client.closed()
    finally:
        client.close()
    assert_alive(server)


# -- every response carries Date, Server, Content-Length ----------------------------------------------


def test_date_header_advances(server):
    first = request(server, "/hello.txt")[1]["date"]
    time.sleep(2.1)
    second = request(server, "/hello.txt")[1]["date"]
    assert parsedate_to_datetime(second) > parsedate_to_datetime(first)
    assert_alive(server)


# -- timeouts ---------------------------------------------------------------------------------------


def test_slowloris_gets_408_and_close(edge):
    server = edge("--header-timeout", "2")
    sock = server.connect()
    data = get("/hello.txt", extra="".join(f"X-Slow-{i}: {'z' * 20}\r\n" for i in range(20)))
    received = b""
    closed = False
    start = time.monotonic()
    sock.settimeout(0.3)
    try:
        for byte in data:
            if time.monotonic() - start > 15:
                break
            try:
                sock.send(bytes([byte]))
            except (BrokenPipeError, ConnectionResetError):
                closed = True
                break
            try:
                chunk = sock.recv(65536)
            except socket.timeout:
                continue
            except ConnectionResetError:
                closed = True
                break
            if not chunk:
                closed = True
                break
            received += chunk
        if not closed:
            received += read_until_closed(sock, 5)
            closed = True
        elapsed = time.monotonic() - start
    finally:
        sock.close()
    assert received.startswith(b"HTTP/1.1 408 "), received[:200]
    head = received.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in head[1:])}
    assert_common(headers)
    assert headers.get("connection", "").lower() == "close"
    assert closed
    assert 1.5 <= elapsed < 10, elapsed  # not before the header timeout, and it did not hang
    assert len(data) * 0.3 > 10, "the trickle must be far longer than the timeout for this test to mean anything"
    assert_alive(server)


def test_idle_keep_alive_connection_closes(edge):
    server = edge("--keepalive-timeout", "1")
    client = Client(server.connect())
    try:
        client.send(get("/hello.txt"))
        assert client.response()[0] == 200
        time.sleep(0.3)
        client.send(get("/hello.txt"))  # still open well inside the timeout
        status, headers, body = client.response()
        assert status == 200 and body == b"hello world\n"
        start = time.monotonic()
        assert client.closed(timeout=6), "idle keep-alive connection was not closed"
        assert time.monotonic() - start >= 0.5
    finally:
        client.close()
    assert_alive(server)


def test_silent_connection_closes_after_header_timeout(edge):
    server = edge("--header-timeout", "1")
    sock = server.connect()
    try:
        start = time.monotonic()
        out = read_until_closed(sock, 6)
        elapsed = time.monotonic() - start
    finally:
        sock.close()
    assert elapsed < 5.5, "a connection that sends nothing was left open"
    assert out == b"" or out.startswith(b"HTTP/1.1 408 "), out[:200]
    assert_alive(server)


def test_keep_alive_timeout_does_not_cut_a_request_in_progress(edge):
    """The header timeout, not the idle one, governs a request head that has started to arrive."""
    server = edge("--keepalive-timeout", "1", "--header-timeout", "4")
    client = Client(server.connect(timeout=10))
    try:
        client.send(get("/hello.txt"))
        assert client.response()[0] == 200
        client.send(b"GET /hello.txt HTTP/1.1\r\n")
        time.sleep(2.2)  # past the keep-alive timeout, inside the header timeout
        client.send(b"Host: x\r\n\r\n")
        status, headers, body = client.response()
        assert status == 200 and body == b"hello world\n"
    finally:
        client.close()
    assert_alive(server)


# -- TCP_NODELAY ------------------------------------------------------------------------------------


def _server_socket_for(pid: int, client: socket.socket) -> socket.socket:
    """A duplicate of the server process's accepted socket that talks to `client` (pidfd_getfd(2))."""
    libc = ctypes.CDLL(None, use_errno=True)
    pidfd = os.pidfd_open(pid)
    want = client.getsockname()
    try:
        for name in os.listdir(f"/proc/{pid}/fd"):
            try:
                if not os.readlink(f"/proc/{pid}/fd/{name}").startswith("socket:"):
                    continue
            except OSError:
                continue
            fd = libc.syscall(438, pidfd, int(name), 0)  # SYS_pidfd_getfd (same number on all arches)
            if fd < 0:
                err = ctypes.get_errno()
                if err in (errno.ENOSYS, errno.EPERM, errno.EACCES):
                    pytest.skip(f"pidfd_getfd not available: {os.strerror(err)}")
                continue
            sock = socket.socket(fileno=fd)
            try:
                if sock.type == socket.SOCK_STREAM and sock.getpeername() == want:
                    return sock
            except OSError:
                pass
            sock.close()
    finally:
        os.close(pidfd)
    raise AssertionError("no server socket connected to the client was found")


@pytest.mark.skipif(not hasattr(os, "pidfd_open"), reason="needs pidfd_open (Linux 5.3+)")
def test_accepted_sockets_have_tcp_nodelay(server):
    """Inspect the server's own socket (a pidfd_getfd duplicate): TCP_NODELAY must be set on it."""
    client = Client(server.connect())
    try:
        client.send(get("/hello.txt"))
        assert client.response()[0] == 200
        theirs = _server_socket_for(server.worker_pid, client.sock)
        try:
            assert theirs.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
        finally:
            theirs.close()
    finally:
        client.close()
    assert_alive(server)
