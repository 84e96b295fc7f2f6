"""Every other method passed through (issue 17 item 4), end to end: a real `edge serve` in front of real aiohttp
origins (tests/origin_server.py, whose /pass/NAME route answers with what it received: method, fields, and a
SHA-256 of the body it read), driven by httpx (HTTP/1.1 and HTTP/2), curl and raw sockets.

What is checked: POST/PUT/PATCH/DELETE/OPTIONS reach the origin with body and fields intact (Content-Length,
chunked, HTTP/2); their answers are never stored; a successful unsafe request invalidates the stored GET of
its target and of its Location / Content-Location on the same host, in every worker and on disk, while a 4xx
or 5xx one does not; a request that failed at the origin after it was sent is not sent to another origin;
`Expect: 100-continue` with curl; 413 beyond [proxy] max_body_size; a 1 GiB upload streamed through with the
worker's RSS bounded (the slow test of this file, ~10-30 s); and without origins a POST is still 405.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import h2.config
import h2.connection
import h2.events
import httpx
import pytest
from conftest import Client, EdgeProcess, read_answer, request, wait_for
from origin_server import pattern
from test_pull import Origin, closed_url, origins, settled, stored_keys  # noqa: F401 - origins is a fixture

CURL = shutil.which("curl")
needs_curl = pytest.mark.skipif(CURL is None, reason="curl is not installed")
FORWARDED = "edge; fwd=method"
MISS_STORED = "edge; fwd=miss; stored"
GIB = 1 << 30
GIB_OF_ZEROS = "49bc20df15e412a64472421e13fe86ff1c5165e18b2afccf160d4dc19fe68a14"  # sha256 of 1 GiB of zero bytes
#: The worker's RSS may grow by at most this much during a 1 GiB upload. What edge holds per upload is
#: bounded by BODY_HIGH (256 KiB) waiting for the origin, one socket read (up to 256 KiB), the origin
#: connection's write buffer (UPLOAD_HIGH, 256 KiB) and the parser's copies of a read: about 1 MiB. The
#: rest is slack for the allocator (freed arenas it keeps) and the interpreter; a body buffered anywhere
#: whole would grow it by 1 GiB, and one buffered in part by many times this.
RSS_GROWTH = 48 << 20


def seen(response: httpx.Response) -> dict:
    """What the origin said it received (its /pass JSON), with its fields by lower-case name."""
    data = response.json()
    data["fields"] = {k.lower(): v for k, v in data["headers"]}
    return data


def sha(data: bytes) -> str:
    """SHA-256 hex digest."""
    return hashlib.sha256(data).hexdigest()


def two_workers(pull, upstreams, *args: str, config: str | None = None) -> EdgeProcess:
    """Edge with two workers in front of `upstreams`: an invalidation must reach the other one too."""
    return pull(upstreams, "--workers", "2", "--cpu-affinity", "off", *args, config=config)


# -- methods, bodies and fields --------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH", "DELETE", "OPTIONS"])
@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_methods_reach_the_origin_with_body_and_fields(pull, origins, cache_dir, method: str, framing: str):
    """HTTP/1.1: each method reaches the origin once, with its body (Content-Length, or chunked as sent) and
    the client's end-to-end fields (Authorization and Cookie too); hop-by-hop ones stay; the answer comes back
    with Cache-Status fwd=method and nothing is stored."""
    (origin,) = origins(1)
    server = pull([origin])
    body = os.urandom(200_000)
    content = body if framing == "content-length" else iter([body[:70_000], body[70_000:]])
    headers = {"Authorization": "Bearer s3cret", "Cookie": "session=abc", "Content-Type": "application/x-test",
               "X-Custom": "kept", "Connection": "keep-alive, X-Hop", "X-Hop": "dropped"}
    r = httpx.request(method, f"{server.url}/pass/m?x=1", content=content, headers=headers, timeout=20)
    assert r.status_code == 200, r.text
    assert r.headers["cache-status"] == FORWARDED
    got = seen(r)
    assert got["method"] == method and got["path"] == "/pass/m?x=1"
    assert got["sha256"] == sha(body) and got["length"] == len(body)
    fields = got["fields"]
    assert fields["authorization"] == "Bearer s3cret" and fields["cookie"] == "session=abc"
    assert fields["content-type"] == "application/x-test" and fields["x-custom"] == "kept"
    assert "x-hop" not in fields and fields["via"].endswith("1.1 edge")
    if framing == "chunked":
        assert fields["transfer-encoding"] == "chunked" and "content-length" not in fields
    else:
        assert fields["content-length"] == str(len(body))
    assert origin.count("/pass/m?x=1") == 1
    assert not stored_keys(cache_dir)
    settled(server, cache_dir)


NGHTTP = shutil.which("nghttp")


@pytest.mark.skipif(NGHTTP is None, reason="nghttp is not installed (apt nghttp2-client)")
def test_http2_bodies_reach_the_origin(pull, origins, cache_dir, tmp_path: Path):
    """HTTP/2: httpx (prior knowledge) POSTs with content-length and PUTs streamed without one (chunked to the
    origin) on one connection; nghttp sends six bodies at once on one connection (their windows interleave);
    every body reaches the origin whole."""
    (origin,) = origins(1)
    server = pull([origin])
    with httpx.Client(http1=False, http2=True, timeout=20) as client:
        for i in range(4):
            body = os.urandom(150_000 + i * 7919)
            streamed = i % 2 == 1
            content = iter([body[:30_000], body[30_000:]]) if streamed else body
            r = client.request("PUT" if streamed else "POST", f"{server.url}/pass/h2-{i}", content=content,
                               headers={"Cookie": "k=v"})
            assert r.http_version == "HTTP/2" and r.status_code == 200
            assert r.headers["cache-status"] == FORWARDED
            got = seen(r)
            assert got["sha256"] == sha(body) and got["fields"]["cookie"] == "k=v"
            assert got["fields"].get("transfer-encoding") == ("chunked" if streamed else None)
    upload = tmp_path / "upload.bin"
    upload.write_bytes(os.urandom(400_000))
    targets = [f"{server.url}/pass/n{i}" for i in range(6)]
    done = subprocess.run([NGHTTP, "-n", "-s", "-d", str(upload), *targets], capture_output=True, timeout=60,
                          check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    received = {r["path"]: r for r in origin.stats()["passed"] if r["path"].startswith("/pass/n")}
    assert sorted(received) == [f"/pass/n{i}" for i in range(6)]
    assert all(r["sha256"] == sha(upload.read_bytes()) and r["method"] == "POST" for r in received.values())
    # RFC 9113 §8.2.3: cookie crumbs (separate fields over HTTP/2) reach the HTTP/1.1 origin as one Cookie.
    done = subprocess.run([NGHTTP, "-H", "cookie: a=1", "-H", "cookie: b=2", "-d", str(upload),
                           f"{server.url}/pass/crumbs"], capture_output=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert [v for k, v in json.loads(done.stdout)["headers"] if k.lower() == "cookie"] == ["a=1; b=2"]
    assert not stored_keys(cache_dir)
    settled(server, cache_dir)


def test_answers_are_never_stored(pull, origins, cache_dir):
    """RFC 9111 §4.4: a POST's answer, even one that says it may be stored (and a big one, streamed), is
    asked of the origin each time and never written to the cache."""
    (origin,) = origins(1)
    server = pull([origin])
    target = "/pass/answer?size=300000&cc=public,max-age=600"
    for _ in range(2):
        r = httpx.post(server.url + target, content=b"q", timeout=20)
        assert r.status_code == 200 and r.headers["cache-status"] == FORWARDED
        assert len(r.content) == 300_000
    assert origin.count(target) == 2
    assert not stored_keys(cache_dir)
    settled(server, cache_dir)


# -- invalidation (RFC 9111 §4.4) ---------------------------------------------------------------------


def stored_then_hit(server: EdgeProcess, target: str) -> None:
    """GET `target` until it is a stored hit (each worker may miss once)."""
    first = httpx.get(server.url + target, timeout=10)
    assert first.headers["cache-status"] == MISS_STORED
    assert wait_for(lambda: "hit" in httpx.get(server.url + target, timeout=10).headers["cache-status"], 5)


def test_successful_post_invalidates_target_location_and_content_location(pull, origins, cache_dir):
    """A 2xx POST drops the stored GET of its target; a 201 drops its Location's, and a 200 its
    Content-Location's when it names the same host; on disk at once and in both workers: the next GET of
    each is a miss that goes to the origin. A Location on another host is left alone."""
    (origin,) = origins(1)
    server = two_workers(pull, [origin])
    host = f"{server.host}:{server.port}"
    cached = {name: f"/pass/{name}?cc=max-age=600" for name in ("target", "loc", "cloc", "elsewhere")}
    for target in cached.values():
        stored_then_hit(server, target)
    assert len(stored_keys(cache_dir)) == 4

    assert httpx.post(f"{server.url}/pass/target", content=b"1", timeout=10).status_code == 200
    r = httpx.post(f"{server.url}/pass/new?status=201&location=/pass/loc", content=b"2", timeout=10)
    assert r.status_code == 201 and r.headers["location"] == "/pass/loc"
    r = httpx.put(f"{server.url}/pass/x?clocation=http://{host}/pass/cloc", content=b"3", timeout=10)
    assert r.status_code == 200
    r = httpx.post(f"{server.url}/pass/y?status=201&location=http://other.example/pass/elsewhere", timeout=10)
    assert r.status_code == 201
    # On disk, gone before the answers came back (the node's purge is synchronous).
    assert stored_keys(cache_dir) == {cached["elsewhere"]}
    for name, target in cached.items():
        before = origin.count(target)
        status = httpx.get(server.url + target, timeout=10).headers["cache-status"]
        if name == "elsewhere":
            assert "hit" in status and origin.count(target) == before
        else:
            assert status == MISS_STORED and origin.count(target) == before + 1
    # And no worker serves an old copy from memory: every GET now is the new one (or its hit).
    for target in cached.values():
        for _ in range(6):
            assert httpx.get(server.url + target, timeout=10).status_code == 200
    assert origin.count(cached["target"]) == 2
    settled(server, cache_dir)


def test_failed_or_safe_requests_do_not_invalidate(pull, origins, cache_dir):
    """A 4xx or 5xx answer to a POST, and a 2xx answer to OPTIONS (a safe method, RFC 9110 §9.2.1), leave the
    stored GET as it was."""
    (origin,) = origins(1)
    server = pull([origin])
    target = "/pass/keep?cc=max-age=600"
    stored_then_hit(server, target)
    for status in (400, 409, 500, 503):
        assert httpx.post(f"{server.url}/pass/keep?status={status}", content=b"x", timeout=10).status_code == status
    assert httpx.options(f"{server.url}/pass/keep", timeout=10).status_code == 200
    assert "hit" in httpx.get(server.url + target, timeout=10).headers["cache-status"]
    assert origin.count(target) == 1
    settled(server, cache_dir)


# -- sent once ----------------------------------------------------------------------------------------


def test_no_retry_on_another_origin_after_a_failure_mid_request(pull, origins, cache_dir):
    """RFC 9110 §9.2.2: an origin that dies while it reads a POST's body gets the client a 502, and the
    request is not sent to the other origin (which a GET would be); an origin that refuses the connection
    (nothing was sent) is skipped."""
    a, b = origins(2)
    server = pull([a, b])
    body = os.urandom(500_000)
    for i in range(4):  # several targets: the ring puts some on each origin
        target = f"/pass/die{i}?die=100000"
        r = httpx.post(server.url + target, content=body, timeout=20)
        assert r.status_code == 502 and r.headers["cache-status"] == FORWARDED
        assert a.count(target) + b.count(target) == 1, f"{target} was sent more than once"
    refused = closed_url()
    server2 = pull([refused, a])
    for i in range(4):
        r = httpx.post(f"{server2.url}/pass/ok{i}", content=body, timeout=20)
        assert r.status_code == 200 and seen(r)["sha256"] == sha(body)
    settled(server2, cache_dir)


# -- Expect: 100-continue and the body limit ----------------------------------------------------------


@needs_curl
def test_expect_100_continue_with_curl(pull, origins, cache_dir, tmp_path: Path):
    """curl sends `Expect: 100-continue` and waits: edge sends 100 when it starts reading the body, then the
    answer; over max_body_size, 413 at once and no 100 (curl never sends the body)."""
    (origin,) = origins(1)
    server = pull([origin], config='[proxy]\nmax_body_size = "1m"\n')
    small = tmp_path / "small.bin"
    small.write_bytes(os.urandom(300_000))
    done = subprocess.run([CURL, "-sS", "-v", "--http1.1", "-H", "Expect: 100-continue", "--expect100-timeout", "30",
                           "--data-binary", f"@{small}", f"{server.url}/pass/e"],
                          capture_output=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    trace = done.stderr.decode("latin-1")
    assert "< HTTP/1.1 100 Continue" in trace and "< HTTP/1.1 200 OK" in trace
    assert trace.index("100 Continue") < trace.index("200 OK")
    assert json.loads(done.stdout)["sha256"] == sha(small.read_bytes())
    big = tmp_path / "big.bin"
    with open(big, "wb") as f:
        f.truncate(5 << 20)
    done = subprocess.run([CURL, "-sS", "-v", "--http1.1", "-H", "Expect: 100-continue", "--expect100-timeout", "30",
                           "--data-binary", f"@{big}", f"{server.url}/pass/e"],
                          capture_output=True, timeout=60, check=False)
    trace = done.stderr.decode("latin-1")
    assert "< HTTP/1.1 413" in trace and "100 Continue" not in trace
    assert origin.count("/pass/e") == 1
    settled(server, cache_dir)


@needs_curl
def test_413_beyond_max_body_size(pull, origins, cache_dir, tmp_path: Path):
    """[proxy] max_body_size: a Content-Length over it is 413 at once; a chunked body (HTTP/1.1) or a DATA
    stream without content-length (HTTP/2) passing it is 413 as it streams; the origin never gets a whole
    request; at the limit itself it passes. (HTTP/2 over the limit with curl: it stops sending when the answer
    comes, as RFC 9113 §8.1 lets a server ask; httpx's client keeps waiting for window instead.)"""
    (origin,) = origins(1)
    server = pull([origin], config='[proxy]\nmax_body_size = "1m"\n')
    over = os.urandom((1 << 20) + 1)
    assert httpx.post(f"{server.url}/pass/l", content=over, timeout=20).status_code == 413
    assert httpx.post(f"{server.url}/pass/l", content=iter([over[:600_000], over[600_000:]]),
                      timeout=20).status_code == 413
    upload = tmp_path / "over.bin"
    upload.write_bytes(over)
    for extra in ([], ["-H", "content-length:"]):  # declared, then streamed without a length
        done = subprocess.run([CURL, "-sS", "--http2-prior-knowledge", "-o", "/dev/null", "-w", "%{http_code}",
                               "-X", "PUT", "-T", str(upload), *extra, f"{server.url}/pass/l"],
                              capture_output=True, timeout=60, check=False)
        assert done.stdout == b"413", done.stderr
    with httpx.Client(http1=False, http2=True, timeout=20) as client:
        r = client.put(f"{server.url}/pass/l", content=over[:-1])
        assert r.status_code == 200 and seen(r)["sha256"] == sha(over[:-1])
    assert [r["length"] for r in origin.stats()["passed"]] == [len(over) - 1]  # only the one at the limit
    settled(server, cache_dir)


def test_a_413_at_the_head_survives_the_body_the_client_still_sends(pull, origins, cache_dir):
    """RFC 9112 §9.6: refused at its head (Content-Length over max_body_size), a request's body is never read;
    closing with it unread would reset the connection and could destroy the 413 before the client reads
    it (a client still sending 16 MiB got a reset). edge half-closes and drops the rest, as nginx lingers."""
    (origin,) = origins(1)
    server = pull([origin], config='[proxy]\nmax_body_size = "1m"\n')
    size = 16 << 20
    with server.connect() as sock:
        sock.sendall(b"POST /pass/big HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % size)
        sock.sendall(bytes(size))  # all of it, as a client that does not read while it sends
        sock.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    assert data.startswith(b"HTTP/1.1 413 "), data[:200]
    assert origin.stats()["passed"] == []
    settled(server, cache_dir)


def test_pipelined_requests_after_a_body(pull, origins, cache_dir):
    """Raw HTTP/1.1: a POST with a body, a chunked PUT and a GET in one write: three answers in order, the
    bodies whole at the origin (the next request is parsed only once the body before it was read)."""
    (origin,) = origins(1)
    server = pull([origin])
    client = Client(server.connect(timeout=10))
    try:
        body = b"GET /pass/evil HTTP/1.1\r\nHost: x\r\n\r\n"
        client.send(b"POST /pass/p1 HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body) +
                    b"PUT /pass/p2 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                    b"5\r\nhello\r\n0\r\n\r\n"
                    b"GET /hello.txt HTTP/1.1\r\nHost: x\r\n\r\n")
        first, second, third = client.response(), client.response(), client.response()
    finally:
        client.close()
    assert json.loads(first[2])["sha256"] == sha(body)
    assert json.loads(second[2])["sha256"] == sha(b"hello")
    assert third[0] == 200 and third[2] == b"hello world\n"
    assert origin.count("/pass/evil") == 0
    settled(server, cache_dir)


# -- streaming a large body -----------------------------------------------------------------------------


def _rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


@needs_curl
@pytest.mark.parametrize("how", ["content-length", "chunked", "http2"])
def test_one_gib_upload_streams_with_bounded_rss(pull, origins, cache_dir, tmp_path: Path, how: str):
    """SLOW (a few seconds to ~30 s each): 1 GiB from a sparse file with `curl -T` (Content-Length, chunked,
    HTTP/2) streams through to the origin, whose SHA-256 of what it read matches; the worker's VmRSS, read
    every 50 ms during the upload and once after, never grows by more than RSS_GROWTH (see its comment)."""
    (origin,) = origins(1)
    server = pull([origin], config='[proxy]\nmax_body_size = "2g"\nread_timeout = 30\n')
    sparse = tmp_path / "1g.bin"
    with open(sparse, "wb") as f:
        f.truncate(GIB)
    pid = server.worker_pid
    httpx.post(f"{server.url}/pass/warm", content=b"w" * 100_000, timeout=10)  # the code paths are loaded
    base = _rss(pid)
    peak = [base]
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], _rss(pid))
            time.sleep(0.05)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    args = {"content-length": ["--http1.1"], "chunked": ["--http1.1", "-H", "Transfer-Encoding: chunked"],
            "http2": ["--http2-prior-knowledge"]}[how]
    try:
        done = subprocess.run([CURL, "-sS", *args, "-X", "POST", "-T", str(sparse), f"{server.url}/pass/gib"],
                              capture_output=True, timeout=180, check=False)
    finally:
        stop.set()
        watcher.join(5)
    assert done.returncode == 0, done.stderr[-2000:]
    got = json.loads(done.stdout)
    assert got["length"] == GIB and got["sha256"] == GIB_OF_ZEROS
    after = _rss(pid)
    assert peak[0] - base < RSS_GROWTH, f"RSS grew by {(peak[0] - base) >> 20} MiB during a 1 GiB upload"
    assert after - base < RSS_GROWTH
    assert not stored_keys(cache_dir)
    settled(server, cache_dir)


def _held_answers(pid: int) -> list[int]:
    """Sizes of the worker's unnamed files holding passed answers (O_TMPFILE, or memory files "edge-pass")."""
    sizes = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            if "edge-pass" in target or ("/#" in target and target.endswith("(deleted)")):
                sizes.append(os.stat(f"/proc/{pid}/fd/{fd}").st_size)
        except OSError:
            pass  # closed meanwhile
    return sizes


def _held_when_steady(pid: int, tick=lambda: None) -> int:  # noqa: ANN001
    """The most the worker holds for one passed answer once that has not changed for 3 s (`tick` runs between
    looks); fails when it keeps changing for 30 s."""
    held, steady = 0, 0
    deadline = time.monotonic() + 30
    while steady < 30 and time.monotonic() < deadline:
        tick()
        now_held = max(_held_answers(pid), default=0)
        steady = steady + 1 if now_held == held and held else 0
        held = now_held
        time.sleep(0.1)
    assert steady >= 30, f"what edge holds for the client kept changing: {held} bytes"
    return held


def test_a_client_that_does_not_read_holds_its_passed_answer_back_at_the_origin(pull, origins, cache_dir):
    """Back-pressure: a client that reads nothing of a 64 MiB answer to its POST makes edge stop reading the
    origin once about PASS_LEAD (8 MiB) is held for it, rather than copying the whole answer to disk; once
    it reads, the answer arrives whole (the pause does not count as the origin's silence either)."""
    (origin,) = origins(1)
    server = pull([origin], config="[proxy]\nread_timeout = 2\n")
    size = 64 << 20
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    sock.connect((server.host, server.port))
    try:
        sock.sendall(b"POST /pass/slow?size=%d HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\nx" % size)
        held = _held_when_steady(server.worker_pid)
        assert 8 << 20 <= held <= 12 << 20, f"{held} bytes of the answer held for a client that reads nothing"
        sock.settimeout(30)
        status, _, body = read_answer(sock)
    finally:
        sock.close()
    assert status == 200
    assert len(body) == size and sha(body) == sha(pattern("slow", size))
    assert wait_for(lambda: not _held_answers(server.worker_pid), timeout=10), "the answer's file was not let go"
    assert "Traceback" not in server.stderr()


def test_an_http2_client_that_grants_no_window_holds_its_passed_answer_back_too(pull, origins, cache_dir):
    """The same over HTTP/2: a stream whose client grants no flow-control window past the first 64 KiB holds
    about PASS_LEAD of a 64 MiB answer, not all of it; once the client grants window, the answer ends whole."""
    (origin,) = origins(1)
    server = pull([origin], config="[proxy]\nread_timeout = 2\n")
    size = 64 << 20
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
    sock = socket.create_connection((server.host, server.port))
    received: list[bytes] = []
    ended = []

    def pump(grant: bool) -> None:
        try:
            data = sock.recv(1 << 20)
        except TimeoutError:
            data = None
        if data == b"":
            raise AssertionError(f"edge closed the connection after {sum(map(len, received))} body bytes")
        for event in conn.receive_data(data) if data else ():
            if isinstance(event, h2.events.DataReceived):
                received.append(event.data)
                if grant:
                    conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, (h2.events.StreamEnded, h2.events.StreamReset)):
                ended.append(event)
        sock.sendall(conn.data_to_send())

    try:
        sock.settimeout(0.05)
        conn.initiate_connection()
        sid = conn.get_next_available_stream_id()
        conn.send_headers(sid, [(b":method", b"POST"), (b":scheme", b"http"), (b":authority", b"x"),
                                (b":path", b"/pass/slow2?size=%d" % size), (b"content-length", b"1")])
        conn.send_data(sid, b"x", end_stream=True)
        sock.sendall(conn.data_to_send())
        held = _held_when_steady(server.worker_pid, lambda: pump(grant=False))
        assert 8 << 20 <= held <= 12 << 20, f"{held} bytes of the answer held for a stream without window"
        conn.acknowledge_received_data(sum(map(len, received)), sid)  # what arrived so far, then the rest
        conn.increment_flow_control_window(size)
        conn.increment_flow_control_window(size, stream_id=sid)
        sock.sendall(conn.data_to_send())
        deadline = time.monotonic() + 60
        while not ended and time.monotonic() < deadline:
            pump(grant=True)
    finally:
        sock.close()
    assert ended and isinstance(ended[0], h2.events.StreamEnded)
    body = b"".join(received)
    assert len(body) == size and sha(body) == sha(pattern("slow2", size))
    assert wait_for(lambda: not _held_answers(server.worker_pid), timeout=10), "the answer's file was not let go"
    assert "Traceback" not in server.stderr()


# -- without origins -------------------------------------------------------------------------------------


def test_without_origins_a_post_is_still_405(edge):
    """No origins: other methods get 405 with Allow: GET, HEAD, and a body is not read (the connection ends)."""
    server = edge()
    status, headers, _ = request(server, "/hello.txt", method="POST", headers={"Content-Length": "5"})
    assert status == 405 and headers["allow"] == "GET, HEAD" and headers.get("connection") == "close"
    status, headers, _ = request(server, "/hello.txt", method="DELETE")
    assert status == 405 and headers["allow"] == "GET, HEAD"


def test_origin_dying_mid_answer_cuts_the_client_off(pull, origins, cache_dir):
    """The answer streams back as it arrives: an origin that dies halfway through it leaves the client with a
    body short of its Content-Length and a closed connection (never a complete-looking answer), over HTTP/1.1
    and HTTP/2 (a reset stream), and edge running with nothing left behind."""
    (origin,) = origins(1)
    server = pull([origin])
    sock = server.connect(timeout=10)
    try:
        sock.sendall(b"POST /pass/c?size=2000000&cut=1 HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\nx")
        data = b""
        while chunk := sock.recv(1 << 20):
            data += chunk
    finally:
        sock.close()
    head, _, rest = data.partition(b"\r\n\r\n")
    assert b" 200 " in head.split(b"\r\n")[0] and b"Content-Length: 2000000" in head
    assert len(rest) < 2_000_000
    with httpx.Client(http1=False, http2=True, timeout=10) as client, pytest.raises(httpx.HTTPError):
        client.post(f"{server.url}/pass/c2?size=2000000&cut=1", content=b"x")
    assert server.alive()
    assert not stored_keys(cache_dir)
    settled(server, cache_dir)
