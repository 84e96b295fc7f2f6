"""The HTTP/1.1 adapter end to end: a real `edge serve` process driven over raw sockets.

Covers keep-alive, pipelining, HTTP/1.0, Connection handling, HEAD, methods, size limits,
malformed and smuggling-shaped requests, the header / keep-alive timeouts (slowloris),
the headers every response carries, and TCP_NODELAY on accepted sockets.
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


def raw_exchange(server, data: bytes, timeout: float = 5.0) -> bytes:
    """Send `data` on a fresh connection and return everything until the server closes."""
    sock = server.connect()
    try:
        try:
            sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            pass
        return read_until_closed(sock, timeout)
    finally:
        sock.close()


def status_of(data: bytes) -> int:
    """The status code of the first response in `data`."""
    assert data.startswith(b"HTTP/1.1 "), data[:200]
    return int(data.split(b" ", 2)[1])


def count_responses(data: bytes) -> int:
    """How many status lines appear in `data` (for smuggling checks: one answer, nothing more)."""
    return len(re.findall(rb"(?:^|\r\n)HTTP/1\.[01] \d{3} ", data))


# -- keep-alive and pipelining ---------------------------------------------------------------------


def test_keep_alive_serves_several_requests_on_one_connection(server, www):
    client = Client(server.connect())
    try:
        expected = [("/hello.txt", b"hello world\n"), ("/", (www / "index.html").read_bytes()),
                    ("/1k.bin", (www / "1k.bin").read_bytes()), ("/100k.bin", (www / "100k.bin").read_bytes()),
                    ("/sub/", (www / "sub" / "index.html").read_bytes()), ("/hello.txt", b"hello world\n")]
        for path, body in expected:
            client.send(get(path))
            status, headers, got = client.response()
            assert status == 200, path
            assert got == body, path
            assert int(headers["content-length"]) == len(body)
            assert headers.get("connection", "").lower() != "close"
            assert_common(headers)
        assert not client.closed(timeout=0.3), "the connection should stay open"
    finally:
        client.close()
    assert_alive(server)


def test_pipelined_requests_answered_in_order(server, www):
    big = (www / "1m.bin").read_bytes()
    small = (www / "1k.bin").read_bytes()
    client = Client(server.connect(timeout=10))
    try:
        client.send(get("/hello.txt") + get("/1m.bin") + get("/missing.txt") + get("/1k.bin", method="HEAD")
                    + get("/1k.bin") + get("/index.html") + get("/1m.bin", extra="Range: bytes=10-19\r\n"))
        status, headers, body = client.response()
        assert (status, body) == (200, b"hello world\n")
        status, headers, body = client.response()
        assert status == 200 and int(headers["content-length"]) == len(big)
        assert body == big
        status, headers, body = client.response()
        assert status == 404
        assert_common(headers)
        status, headers, body = client.response(head=True)
        assert status == 200 and headers["content-length"] == "1024" and body == b""
        status, headers, body = client.response()  # would be garbage if HEAD had sent a body
        assert status == 200 and body == small
        status, headers, body = client.response()
        assert status == 200 and body == (www / "index.html").read_bytes()
        status, headers, body = client.response()
        assert status == 206 and body == big[10:20]
        assert not client.closed(timeout=0.3)
    finally:
        client.close()
    assert_alive(server)


def test_pipelining_deeper_than_the_parse_queue(server, www):
    """More pipelined requests than the adapter parses ahead: reading pauses and resumes, none is lost."""
    n = 150
    paths = ["/hello.txt", "/1k.bin", "/nope", "/index.html"]
    bodies = {"/hello.txt": b"hello world\n", "/1k.bin": (www / "1k.bin").read_bytes(),
              "/index.html": (www / "index.html").read_bytes()}
    client = Client(server.connect(timeout=10))
    try:
        client.send(b"".join(get(paths[i % 4] + f"?i={i}") for i in range(n)))
        for i in range(n):
            path = paths[i % 4]
            status, headers, body = client.response()
            if path == "/nope":
                assert status == 404, i
            else:
                assert status == 200, i
                assert body == bodies[path], i
    finally:
        client.close()
    assert_alive(server)


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


def test_pipelined_garbage_after_a_good_request(server):
    client = Client(server.connect())
    try:
        client.send(get("/hello.txt") + b"NOT HTTP AT ALL\r\n\r\n" + get("/index.html"))
        status, headers, body = client.response()
        assert (status, body) == (200, b"hello world\n")
        status, headers, body = client.response()
        assert status == 400
        assert client.closed(), "nothing after the 400: the request after the garbage is not answered"
    finally:
        client.close()
    assert_alive(server)


def test_pipelined_request_after_connection_close_is_not_answered(server):
    client = Client(server.connect())
    try:
        client.send(get("/hello.txt", extra="Connection: close\r\n") + get("/index.html"))
        status, headers, body = client.response()
        assert status == 200 and body == b"hello world\n"
        assert headers.get("connection", "").lower() == "close"
        assert client.closed(), "nothing may follow the response to a Connection: close request"
    finally:
        client.close()
    assert_alive(server)


# -- HTTP/1.0 and Connection -----------------------------------------------------------------------


def test_http10_closes_by_default(server):
    client = Client(server.connect())
    try:
        client.send(b"GET /hello.txt HTTP/1.0\r\n\r\n")
        status, headers, body = client.response()
        assert status == 200 and body == b"hello world\n"
        assert headers.get("connection", "close").lower() == "close"
        assert_common(headers)
        assert client.closed()
    finally:
        client.close()
    assert_alive(server)


def test_http10_keep_alive_keeps_the_connection(server, www):
    client = Client(server.connect())
    try:
        for path, expected in (("/hello.txt", b"hello world\n"), ("/1k.bin", (www / "1k.bin").read_bytes()),
                               ("/hello.txt", b"hello world\n")):
            client.send(f"GET {path} HTTP/1.0\r\nConnection: keep-alive\r\n\r\n".encode())
            status, headers, body = client.response()
            assert status == 200 and body == expected
            assert headers.get("connection", "").lower() == "keep-alive"
        assert not client.closed(timeout=0.3)
        # Without the token the next HTTP/1.0 request ends the connection.
        client.send(b"GET /hello.txt HTTP/1.0\r\n\r\n")
        status, headers, body = client.response()
        assert status == 200 and body == b"hello world\n"
        assert client.closed()
    finally:
        client.close()
    assert_alive(server)


def test_connection_close_is_honoured(server):
    client = Client(server.connect())
    try:
        client.send(get("/hello.txt"))
        assert client.response()[0] == 200
        client.send(get("/hello.txt", extra="Connection: close\r\n"))
        status, headers, body = client.response()
        assert status == 200 and body == b"hello world\n"
        assert headers.get("connection", "").lower() == "close"
        assert client.closed()
    finally:
        client.close()
    assert_alive(server)


# -- HEAD and methods ------------------------------------------------------------------------------


def test_head_has_headers_and_no_body(server, www):
    size = (www / "100k.bin").stat().st_size
    client = Client(server.connect())
    try:
        client.send(get("/100k.bin", method="HEAD"))
        status, headers, body = client.response(head=True)
        assert status == 200
        assert int(headers["content-length"]) == size
        assert headers["content-type"]
        assert headers["etag"] and headers["last-modified"]
        assert_common(headers)
        # No body follows: the next bytes on the connection are the next response's status line.
        client.send(get("/hello.txt"))
        status, headers, body = client.response()
        assert status == 200 and body == b"hello world\n"
        client.send(get("/missing", method="HEAD"))
        status, headers, body = client.response(head=True)
        assert status == 404
        assert int(headers["content-length"]) > 0  # the length of the 404 body that was not sent
        client.send(get("/hello.txt"))
        status, headers, body = client.response()
        assert status == 200 and body == b"hello world\n"
    finally:
        client.close()
    assert_alive(server)


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "OPTIONS", "PATCH", "BREW"])
def test_other_methods_get_405_with_allow(server, method):
    client = Client(server.connect())
    try:
        client.send(f"{method} /hello.txt HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n".encode())
        status, headers, body = client.response()
        assert status == 405
        assert headers.get("allow", "").replace(" ", "") == "GET,HEAD"
        assert_common(headers)
    finally:
        client.close()
    assert_alive(server)


def test_post_with_a_body_gets_405_and_the_body_is_not_taken_as_a_request(server):
    smuggled = get("/index.html")
    data = (b"POST /hello.txt HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(smuggled)) + smuggled
    out = raw_exchange(server, data)
    assert status_of(out) == 405
    assert b"<h1>home</h1>" not in out
    assert count_responses(out) == 1
    assert_alive(server)


# -- limits -----------------------------------------------------------------------------------------


def test_target_over_8k_gets_414(server):
    client = Client(server.connect())
    try:
        client.send(get("/" + "a" * (8 * 1024 + 10)))
        status, headers, body = client.response()
        assert status == 414
        assert_common(headers)
        assert client.closed()
    finally:
        client.close()
    assert_alive(server)


def test_target_just_under_8k_is_fine(server):
    status, headers, body = request(server, "/hello.txt?" + "q" * (8 * 1024 - 200))
    assert status == 200 and body == b"hello world\n"
    assert_alive(server)


def test_head_over_64k_gets_431(server):
    many = "".join(f"X-Filler-{i}: {'v' * 90}\r\n" for i in range(800))  # ~85 KiB of header fields
    client = Client(server.connect())
    try:
        client.send(get("/hello.txt", extra=many))
        status, headers, body = client.response()
        assert status == 431
        assert_common(headers)
        assert client.closed()
    finally:
        client.close()
    assert_alive(server)


def test_head_under_64k_is_fine(server):
    many = {f"X-Filler-{i}": "v" * 90 for i in range(400)}  # ~43 KiB
    status, headers, body = request(server, "/hello.txt", headers=many)
    assert status == 200 and body == b"hello world\n"
    assert_alive(server)


# -- malformed and smuggling-shaped requests ---------------------------------------------------------

BAD_REQUESTS = {
    "garbage-request-line": b"HELLO\r\n\r\n",
    "garbage-binary": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 40 + b"\r\n\r\n",
    "missing-target": b"GET HTTP/1.1\r\nHost: x\r\n\r\n",
    "cl-and-te": (b"GET /hello.txt HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
                  b"0\r\n\r\nGET /index.html HTTP/1.1\r\nHost: x\r\n\r\n"),
    "te-and-cl": (b"GET /hello.txt HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n"
                  b"0\r\n\r\nGET /index.html HTTP/1.1\r\nHost: x\r\n\r\n"),
    "duplicate-cl": (b"GET /hello.txt HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nContent-Length: 0\r\n\r\n"
                     b"GET /index.html HTTP/1.1\r\nHost: x\r\n\r\n"),
    "conflicting-cl": (b"GET /hello.txt HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nContent-Length: 40\r\n\r\n"
                       b"GET /index.html HTTP/1.1\r\nHost: x\r\n\r\n"),
    "negative-cl": b"GET /hello.txt HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
    "version-3.7": b"GET /hello.txt HTTP/3.7\r\nHost: x\r\n\r\n",
    "version-2.0": b"GET /hello.txt HTTP/2.0\r\nHost: x\r\n\r\n",
    "missing-host": b"GET /hello.txt HTTP/1.1\r\n\r\n",
    "two-hosts": b"GET /hello.txt HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n",
    "space-in-header-name": b"GET /hello.txt HTTP/1.1\r\nHost: x\r\nBad Header: 1\r\n\r\n",
    "space-before-colon": b"GET /hello.txt HTTP/1.1\r\nHost: x\r\nX-Thing : 1\r\n\r\n",
    "obs-fold": b"GET /hello.txt HTTP/1.1\r\nHost: x\r\nX-Folded: a\r\n  b\r\n\r\n",
}


@pytest.mark.parametrize("name", sorted(BAD_REQUESTS))
def test_malformed_request_gets_400_and_close(server, name):
    out = raw_exchange(server, BAD_REQUESTS[name])
    assert status_of(out) == 400, out[:300]
    head = out.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in head[1:])}
    assert_common(headers)
    assert headers.get("connection", "").lower() == "close"
    assert count_responses(out) == 1, "exactly one answer, then the connection closes"
    assert b"<h1>home</h1>" not in out and b"hello world" not in out
    assert_alive(server)


def test_bad_request_after_a_good_one_on_the_same_connection(server):
    client = Client(server.connect())
    try:
        client.send(get("/hello.txt"))
        assert client.response()[0] == 200
        client.send(b"GET /hello.txt HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n")
        status, headers, body = client.response()
        assert status == 400
        assert client.closed()
    finally:
        client.close()
    assert_alive(server)


# -- every response carries Date, Server, Content-Length ----------------------------------------------


@pytest.mark.parametrize("target,extra,method,expected", [
    ("/hello.txt", "", "GET", 200),
    ("/hello.txt", "", "HEAD", 200),
    ("/", "", "GET", 200),
    ("/1m.bin", "", "GET", 200),
    ("/1k.bin", "Range: bytes=0-9\r\n", "GET", 206),
    ("/1k.bin", "Range: bytes=0-9,20-29\r\n", "GET", 206),
    ("/1k.bin", "Range: bytes=5000-\r\n", "GET", 416),
    ("/sub", "", "GET", 301),
    ("/missing", "", "GET", 404),
    ("/noindex/", "", "GET", 404),
    ("/hello.txt", "", "DELETE", 405),
    ("/hello.txt", "If-None-Match: *\r\n", "GET", 304),
    ("/hello.txt", "If-Match: \"nope\"\r\n", "GET", 412),
    ("/../etc/passwd", "", "GET", 400),
])
def test_every_response_has_date_server_content_length(server, target, extra, method, expected):
    client = Client(server.connect())
    try:
        client.send(get(target, extra=extra, method=method))
        status, headers, body = client.response(head=method == "HEAD")
        assert status == expected
        assert_common(headers)
        if method != "HEAD" and status != 304:
            assert int(headers["content-length"]) == len(body)
    finally:
        client.close()
    assert_alive(server)


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


def test_a_first_segment_of_one_byte_is_not_taken_for_the_http2_preface(server):
    # "P" begins both the HTTP/2 preface and POST, PUT, PATCH: the rest decides.
    for first, rest in ((b"P", b"OST /hello.txt HTTP/1.1\r\nHost: x\r\n\r\n"), (b"PU", b"T /hello.txt HTTP/1.1\r\nHost: x\r\n\r\n")):
        client = Client(server.connect())
        try:
            client.send(first)
            time.sleep(0.05)
            client.send(rest)
            assert client.response()[0] == 405
        finally:
            client.close()


def test_the_http2_preface_may_come_a_byte_at_a_time(server):
    sock = server.connect()
    try:
        for octet in b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n":
            sock.sendall(bytes([octet]))
            time.sleep(0.002)
        sock.sendall(b"\x00\x00\x00\x04\x00\x00\x00\x00\x00")  # an empty SETTINGS
        sock.settimeout(5)
        assert sock.recv(9)[3] == 0x04, "the server's SETTINGS come first"
    finally:
        sock.close()
