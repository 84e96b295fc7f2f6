"""HTTP/2 end to end: a real `edge serve`, a frame-level client (h2 + hyperframe), curl, httpx, nghttp, h2load.

What needs a process, real sockets or real time: a client that never opens its window (RSS, the stall
timeout), the last response before max_requests under a small socket buffer, idle timeouts, graceful
GOAWAY on SIGTERM, TLS with ALPN h2, real clients. The frame-level tables (answers, errors, flow
control, abuse limits, h2c Upgrade, both engines) run in memory: tests/test_h2_io.py.
"""

from __future__ import annotations

import calendar
import gzip
import hashlib
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import time
from pathlib import Path

import httpx
import pytest
from h2.errors import ErrorCodes
from h2.settings import SettingCodes
from hyperframe.frame import PingFrame

from conftest import EdgeProcess, H2Client, H2Stream, h2_get, request
from test_robustness import fd_targets, settled_fds

MIB = 1 << 20
CURL = shutil.which("curl")
NGHTTP = shutil.which("nghttp")
H2LOAD = shutil.which("h2load")
needs_curl = pytest.mark.skipif(CURL is None, reason="curl is not installed")
needs_nghttp = pytest.mark.skipif(NGHTTP is None, reason="nghttp is not installed (apt nghttp2-client)")
needs_h2load = pytest.mark.skipif(H2LOAD is None, reason="h2load is not installed (apt nghttp2-client)")

NO_ERROR = ErrorCodes.NO_ERROR
PROTOCOL_ERROR = ErrorCodes.PROTOCOL_ERROR
CALM = ErrorCodes.ENHANCE_YOUR_CALM
OLD_MTIME = calendar.timegm((2021, 3, 4, 5, 6, 7, 0, 0, 0))
JS = b"export function hi() { return 'hello from a.js'; }\n" * 40
RULE_VALUE = "public, max-age=31536000, immutable"


# -- helpers ------------------------------------------------------------------------------------------


def write_config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / f"edge-{len(list(tmp_path.glob('edge-*.toml')))}.toml"
    path.write_text(text)
    return path


def http2_config(tmp_path: Path, **limits: object) -> Path:
    """A config file with an [http2] table (plus top-level keys passed as top_<name>)."""
    top = {k[4:]: v for k, v in limits.items() if k.startswith("top_")}
    lines = [f"{k} = {v!r}" for k, v in top.items()]
    lines.append("[http2]")
    lines += [f"{k} = {v!r}" for k, v in limits.items() if not k.startswith("top_")]
    return write_config(tmp_path, "\n".join(lines) + "\n")


WARM = ("/1m.bin", "/100k.bin", "/1k.bin", "/hello.txt")


def warm(server: EdgeProcess) -> int:
    """Load HTTP/2 in the worker and the test files in its open-file cache; returns the settled fd count.

    Every cached file holds an fd, so the baseline is taken with the files the tests touch already
    cached (the last one, /hello.txt, is also the last one assert_recovered asks for).
    """
    for target in WARM:
        assert h2_get(server, target, method="HEAD").status == 200
    return settled_fds(server)


def assert_recovered(server: EdgeProcess, baseline: int) -> None:
    """The worker still serves HTTP/2 and HTTP/1.1 clients, and its fd count is back to `baseline`."""
    stream = h2_get(server, "/1k.bin")
    assert stream.status == 200 and len(stream.body) == 1024
    assert request(server, "/hello.txt")[0] == 200
    assert settled_fds(server) == baseline, fd_targets(server.worker_pid)


def ended_with(client: H2Client, code: int, timeout: float = 10.0) -> None:
    """The server sent GOAWAY(code) and closed the connection."""
    assert client.closed(timeout), f"still open; GOAWAY: {client.goaway_info()}"
    assert client.goaways, "closed without GOAWAY"
    assert client.goaways[-1].error_code == code, \
        f"GOAWAY {ErrorCodes(client.goaways[-1].error_code).name}, expected {ErrorCodes(code).name}"


# -- a site with every kind of answer -----------------------------------------------------------------


@pytest.fixture
def site(www: Path, tmp_path: Path) -> Path:
    """Extra files in the root and a config with a [[headers]] rule; returns the config path."""
    (www / "data.bin").write_bytes(os.urandom(100_000))
    os.utime(www / "data.bin", (OLD_MTIME, OLD_MTIME))
    (www / "a.js").write_bytes(JS)
    (www / "a.js.gz").write_bytes(gzip.compress(JS))
    (www / "a.js.br").write_bytes(b"\x1b\x4f\x08\x00" + os.urandom(200))
    (www / "assets").mkdir()
    (www / "assets" / "x.css").write_text("body { color: red }\n")
    (www / ".env").write_text("SECRET=1\n")
    return write_config(tmp_path, f'[[headers]]\nmatch = "/assets/*"\nset = {{ "Cache-Control" = "{RULE_VALUE}" }}\n')


@pytest.fixture
def srv(edge, site: Path) -> EdgeProcess:
    return edge(config=site)


# -- flow control -------------------------------------------------------------------------------------


def test_a_client_that_keeps_its_window_small_costs_no_memory_then_the_stall_ends_it(edge, www: Path,
                                                                                       tmp_path: Path):
    with open(www / "64m.bin", "wb") as f:
        f.truncate(64 * MIB)
    server = edge(config=http2_config(tmp_path, stall_timeout=2.0))
    assert h2_get(server, "/64m.bin", method="HEAD").status == 200  # the file's fd is in the cache now
    baseline = warm(server)
    before = server.rss()
    client = H2Client.connect(server, auto_window=False)  # 64 KiB windows, opened only by what we read
    sid = client.request("/64m.bin")
    stream = client.streams[sid]
    peak = before
    while len(stream.body) < 8 * MIB:
        assert client.wait(lambda: client.windows[sid] == 0 or client.conn_window == 0, 10)
        got = 65_535 - client.windows[sid]
        client.grant(got, sid)
        client.grant(65_535 - client.conn_window)
        peak = max(peak, server.rss())
    assert not client.violations, client.violations
    assert peak - before < 8 * MIB, f"worker RSS grew by {(peak - before) >> 10} KiB for a 64 MiB response"
    # Now the client stops opening its window: the stall timeout ends the connection.
    assert client.wait(lambda: client.windows[sid] == 0 or client.conn_window == 0, 10)
    stalled = time.monotonic()
    ended_with(client, CALM, timeout=15)
    waited = time.monotonic() - stalled
    assert waited > 1.0, f"ended after {waited:.1f} s, well before the 2 s stall timeout"
    assert not stream.ended and len(stream.body) < 64 * MIB
    assert server.rss() - before < 8 * MIB
    client.close()
    assert_recovered(server, baseline)


# -- abuse limits -------------------------------------------------------------------------------------


def test_the_last_response_before_max_requests_arrives_whole_while_the_client_pings(edge, www: Path,
                                                                                     tmp_path: Path):
    data = os.urandom(16 * MIB)
    (www / "16m.bin").write_bytes(data)
    server = edge(config=http2_config(tmp_path, max_requests=1))
    client = small_buffer_client(server, auto_window=False, settings={SettingCodes.INITIAL_WINDOW_SIZE: 32 * MIB})
    client.grant(32 * MIB)
    sid = client.request("/16m.bin")
    stream = client.streams[sid]
    pings = 0

    def done() -> bool:
        nonlocal pings
        if len(stream.body) >= pings * MIB:  # a PING per MiB read, as clients measuring the RTT do
            client.send_frames([PingFrame(0, opaque_data=b"%08d" % pings)])
            pings += 1
        return stream.done

    assert client.wait(done, 30), f"{len(stream.body)} of {len(data)} bytes, then eof={client.eof}\n{client.log(8)}"
    assert hashlib.sha256(stream.body).digest() == hashlib.sha256(data).digest()
    graceful(client, sid)
    client.close()


def test_an_idle_connection_is_closed_after_keepalive_timeout(edge):
    server = edge("--keepalive-timeout", "1")
    baseline = warm(server)
    client = H2Client.connect(server)
    silent = H2Client.connect(server)  # preface only, never a request
    sid = client.request("/hello.txt")
    assert client.response(sid).status == 200
    answered = time.monotonic()
    client.pump(0.5)
    assert not client.eof, "closed at once instead of after the keep-alive timeout"
    assert client.closed(6), "an idle HTTP/2 connection stayed open"
    assert time.monotonic() - answered >= 0.9
    graceful(client, sid)
    assert silent.closed(6)
    graceful(silent, 0)
    client.close()
    silent.close()
    assert settled_fds(server) == baseline


def test_an_open_stream_is_not_an_idle_connection(edge, www: Path, tmp_path: Path):
    server = edge(config=http2_config(tmp_path, top_keepalive_timeout=1.0, stall_timeout=30.0))
    client = H2Client.connect(server, auto_window=False)
    sid = client.request("/1m.bin")
    assert client.wait(lambda: client.windows[sid] == 0, 5)
    client.pump(2.5)  # longer than the keep-alive timeout, with a response still owed
    assert not client.eof and not client.goaways
    client.grant(2 * MIB)
    client.grant(2 * MIB, sid)
    assert bytes(client.response(sid).body) == (www / "1m.bin").read_bytes()
    client.close()


# -- graceful stop --------------------------------------------------------------------------------------


def small_buffer_client(server: EdgeProcess, **kw) -> H2Client:
    """A prior-knowledge client whose socket has a 64 KiB receive buffer (a slow reader)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    sock.settimeout(10)
    sock.connect((server.host, server.port))
    client = H2Client(sock, **kw)
    client.start()
    return client


def graceful(client: H2Client, sid: int) -> None:
    """Every GOAWAY was NO_ERROR and the last one still covers stream `sid`."""
    assert client.goaways, "no GOAWAY"
    assert all(g.error_code == NO_ERROR for g in client.goaways), [g.error_code for g in client.goaways]
    assert client.goaways[-1].last_stream_id >= sid, client.goaway_info()


def sigterm_mid_download(edge, www: Path, big_connection_window: bool = False, pause: float = 0.0,
                         **kw) -> tuple[EdgeProcess, H2Client, H2Stream, bytes]:
    """Start a 32 MiB HTTP/2 download with a slow reader, SIGTERM the server once 1 MiB arrived."""
    data = os.urandom(32 * MIB)
    (www / "32m.bin").write_bytes(data)
    server = edge()
    client = small_buffer_client(server, **kw)
    if not client.auto_window:
        client.grant(64 * MIB)
    elif big_connection_window:
        client.grant(16 * MIB)
    sid = client.request("/32m.bin")
    stream = client.streams[sid]
    assert client.wait(lambda: len(stream.body) >= MIB, 10)
    server.proc.send_signal(signal.SIGTERM)
    assert client.wait(lambda: bool(client.goaways), 10), "no GOAWAY on SIGTERM"
    assert not stream.done, "the download was over before the GOAWAY: nothing was in flight"
    assert server.alive()
    time.sleep(pause)  # a client that stops reading for a while
    return server, client, stream, data


def test_sigterm_lets_an_http2_download_finish_with_goaway_no_error(edge, www: Path):
    # Windows large enough for the whole file: the client sends nothing while it downloads.
    server, client, stream, data = sigterm_mid_download(
        edge, www, auto_window=False, settings={SettingCodes.INITIAL_WINDOW_SIZE: 64 * MIB})
    assert client.wait(lambda: stream.done, 30), f"{len(stream.body)} of {len(data)} bytes, eof={client.eof}"
    assert stream.ended and hashlib.sha256(stream.body).digest() == hashlib.sha256(data).digest()
    graceful(client, stream.sid)
    assert client.closed(10)
    assert server.proc.wait(15) == 0
    client.close()


def test_sigterm_drain_with_a_client_that_keeps_opening_its_window(edge, www: Path):
    # A browser-like client: large windows (8 MiB per stream, 16 MiB for the connection) kept open
    # with a WINDOW_UPDATE for every DATA frame it reads, so it is still sending when the last DATA
    # frame leaves the server; it stalls for 2.5 s after the first GOAWAY, so the drain's final
    # GOAWAY comes while the response is still owed.
    server, client, stream, data = sigterm_mid_download(
        edge, www, settings={SettingCodes.INITIAL_WINDOW_SIZE: 8 * MIB}, big_connection_window=True, pause=2.5)
    assert client.wait(lambda: stream.done, 30), \
        f"{len(stream.body)} of {len(data)} bytes, then eof={client.eof} (a reset loses the tail)"
    assert stream.ended and hashlib.sha256(stream.body).digest() == hashlib.sha256(data).digest()
    graceful(client, stream.sid)
    assert client.closed(10)
    assert server.proc.wait(15) == 0
    client.close()


# -- real clients ---------------------------------------------------------------------------------------


@pytest.fixture
def tls_srv(edge, site: Path, tls_args) -> EdgeProcess:
    return edge(*tls_args, config=site)


def run_curl(*args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run([CURL, "-sS", "--max-time", "20", *args], capture_output=True, timeout=timeout)


@needs_curl
@pytest.mark.parametrize("mode", ["--http2-prior-knowledge", "--http2"])
def test_curl_over_cleartext(srv, www: Path, tmp_path: Path, mode: str):
    out = tmp_path / "body"
    r = run_curl(mode, "-o", str(out), "-w", "%{http_version} %{http_code}", srv.url + "/1m.bin")
    assert r.returncode == 0, r.stderr
    assert r.stdout == b"2 200"
    assert out.read_bytes() == (www / "1m.bin").read_bytes()
    r = run_curl(mode, "-w", "%{http_version} %{http_code}", "-o", str(out), "-r", "10-19", srv.url + "/data.bin")
    assert r.stdout == b"2 206" and out.read_bytes() == (www / "data.bin").read_bytes()[10:20]


@needs_curl
def test_curl_http2_over_tls(tls_srv, www: Path, tmp_path: Path, tls_cert):
    out = tmp_path / "body"
    r = run_curl("-k", "--http2", "-o", str(out), "-w", "%{http_version} %{http_code}", tls_srv.tls_url + "/1m.bin")
    assert r.returncode == 0, r.stderr
    assert r.stdout == b"2 200" and out.read_bytes() == (www / "1m.bin").read_bytes()
    r = run_curl("--cacert", str(tls_cert[0]), "--http2", "-o", str(out), "-w", "%{http_version} %{http_code}",
                 "-H", "Accept-Encoding: gzip", tls_srv.tls_url + "/a.js")
    assert r.returncode == 0, r.stderr
    assert r.stdout == b"2 200" and gzip.decompress(out.read_bytes()) == JS


@needs_curl
def test_curl_http11_over_tls_big_file_and_range(tls_srv, www: Path, tmp_path: Path, tls_cert):
    data = os.urandom(5 * MIB + 123)
    (www / "5m.bin").write_bytes(data)
    out = tmp_path / "body"
    ca = ("--cacert", str(tls_cert[0]))
    r = run_curl(*ca, "--http1.1", "-o", str(out), "-w", "%{http_version} %{http_code}", tls_srv.tls_url + "/5m.bin")
    assert r.returncode == 0, r.stderr
    assert r.stdout == b"1.1 200"
    assert hashlib.sha256(out.read_bytes()).digest() == hashlib.sha256(data).digest()
    r = run_curl(*ca, "--http1.1", "-o", str(out), "-w", "%{http_version} %{http_code}", "-r", "1048570-3145727",
                 tls_srv.tls_url + "/5m.bin")
    assert r.stdout == b"1.1 206" and out.read_bytes() == data[1048570:3145728]
    # Several files on one keep-alive connection.
    r = run_curl(*ca, "--http1.1", "-w", "%{num_connects} ", "-o", "/dev/null", "-o", "/dev/null",
                 tls_srv.tls_url + "/1m.bin", tls_srv.tls_url + "/hello.txt")
    assert r.stdout.split() == [b"1", b"0"]


def test_httpx_http2_over_tls(tls_srv, www: Path, tls_cert):
    ctx = ssl.create_default_context(cafile=str(tls_cert[0]))
    with httpx.Client(http2=True, verify=ctx, base_url=tls_srv.tls_url, timeout=10) as client:
        r = client.get("/1m.bin")
        assert r.http_version == "HTTP/2" and r.status_code == 200
        assert r.content == (www / "1m.bin").read_bytes()
        r = client.get("/data.bin", headers={"Range": "bytes=5-9"})
        assert r.status_code == 206 and r.content == (www / "data.bin").read_bytes()[5:10]
        r = client.get("/missing")
        assert r.status_code == 404 and r.http_version == "HTTP/2"
        r = client.get("/assets/x.css")
        assert r.headers["cache-control"] == RULE_VALUE


@needs_nghttp
def test_nghttp_prior_knowledge(srv):
    r = subprocess.run([NGHTTP, "-nv", srv.url + "/hello.txt"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    m = re.search(r"recv \(stream_id=(\d+)\) :status: 200", r.stdout)
    assert m, r.stdout
    assert f"recv DATA frame <length=12, flags=0x01, stream_id={m.group(1)}>" in r.stdout, r.stdout
    r = subprocess.run([NGHTTP, srv.url + "/hello.txt"], capture_output=True, timeout=30)
    assert r.returncode == 0 and r.stdout == b"hello world\n"


def h2load(url: str, *extra: str) -> str:
    r = subprocess.run([H2LOAD, "-n", "2000", "-c", "4", "-m", "10", *extra, url], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout


@needs_h2load
def test_h2load_over_h2c(srv):
    out = h2load(srv.url + "/hello.txt")
    assert "2000 succeeded, 0 failed, 0 errored" in out, out
    assert "status codes: 2000 2xx" in out, out
    assert h2_get(srv, "/hello.txt").status == 200


@needs_h2load
def test_h2load_over_tls(tls_srv):
    out = h2load(tls_srv.tls_url + "/1k.bin")
    assert "Application protocol: h2" in out, out
    assert "2000 succeeded, 0 failed, 0 errored" in out, out
    assert "status codes: 2000 2xx" in out, out


def test_a_drain_while_a_failed_connection_lingers_stops_cleanly(edge):
    # After a connection error the connection lingers (GOAWAY out, reading until the peer closes): a drain
    # then must not write to it again.
    server = edge()
    sock = server.connect()
    try:
        sock.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
                     + b"\x00\x00\x07\x06\x00\x00\x00\x00\x00" + b"1234567")  # a PING of 7 bytes
        sock.settimeout(5)
        time.sleep(0.3)
        assert b"\x07\x00\x00\x00\x00\x00" in sock.recv(1000), "GOAWAY"
        assert server.stop(signal.SIGTERM) == 0
    finally:
        sock.close()
    assert "Traceback" not in server.stderr() and "RuntimeError" not in server.stderr(), server.stderr()[-1500:]
    assert "served 0 requests, 0 bytes" not in server.stderr(), "the worker's stats were lost"
