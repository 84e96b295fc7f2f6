"""HTTP/2 server push and 103 Early Hints, end to end: h2 as a raw client, nghttp, curl, raw HTTP/1.1."""

from __future__ import annotations

import shutil
import socket
import subprocess
from pathlib import Path

import h2.config
import h2.connection
import h2.events
import h2.settings
import pytest

from conftest import Client

CONFIG = """early_hints = true
[push]
"/index.html" = ["/app.js", "/missing.js"]
max_per_request = {limit}
[[headers]]
match = "/index.html"
set = {{ "Link" = "</s.css>; rel=preload; as=style, </n.js>; rel=preload; as=script; nopush" }}
"""
LINK = "</s.css>; rel=preload; as=style, </n.js>; rel=preload; as=script; nopush"


@pytest.fixture
def site(www: Path) -> Path:
    """The www fixture plus a page's assets."""
    (www / "app.js").write_text("console.log('app');\n")
    (www / "s.css").write_text("body { color: red }\n")
    (www / "n.js").write_text("n();\n")
    return www


def start(edge, tmp_path: Path, limit: int = 8, early_hints: bool = True):
    """An edge serving `site` with the push table, a Link rule and early hints."""
    cfg = tmp_path / "push.toml"
    text = CONFIG.format(limit=limit)
    if not early_hints:
        text = text.replace("early_hints = true", "early_hints = false")
    cfg.write_text(text)
    return edge(config=cfg)


class H2Client:
    """A minimal blocking HTTP/2 client over a plain socket (prior knowledge), collecting events."""

    def __init__(self, server, *, enable_push: bool = True) -> None:
        self.sock = server.connect()
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
        self.conn.local_settings = h2.settings.Settings(client=True, initial_values={
            h2.settings.SettingCodes.ENABLE_PUSH: int(enable_push),
            h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 1 << 20})
        self.conn.initiate_connection()
        self.sock.sendall(self.conn.data_to_send())
        self.events: list = []
        self.bodies: dict[int, bytes] = {}
        self.ended: set[int] = set()
        self.authority = f"{server.host}:{server.port}".encode()

    def get(self, path: str) -> int:
        """Send a GET; returns its stream id."""
        sid = self.conn.get_next_available_stream_id()
        self.conn.send_headers(sid, [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", self.authority),
                                     (b":path", path.encode())], end_stream=True)
        self.sock.sendall(self.conn.data_to_send())
        return sid

    def reset(self, sid: int) -> None:
        """RST_STREAM(CANCEL) a stream."""
        self.conn.reset_stream(sid, 8)
        self.sock.sendall(self.conn.data_to_send())

    def run_until(self, done, timeout: float = 5.0) -> None:
        """Read and process frames until `done()` is true."""
        self.sock.settimeout(timeout)
        while not done():
            data = self.sock.recv(1 << 20)
            if not data:
                raise ConnectionError("closed by the server")
            for event in self.conn.receive_data(data):
                self.events.append(event)
                if isinstance(event, h2.events.DataReceived):
                    self.bodies[event.stream_id] = self.bodies.get(event.stream_id, b"") + event.data
                    self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                if isinstance(event, (h2.events.StreamEnded, h2.events.StreamReset)):
                    self.ended.add(event.stream_id)
            pending = self.conn.data_to_send()
            if pending:
                self.sock.sendall(pending)

    def of(self, kind) -> list:
        """Events of one type, in order."""
        return [e for e in self.events if isinstance(e, kind)]

    def close(self) -> None:
        """Close the socket."""
        self.sock.close()


def headers_of(event) -> dict[bytes, bytes]:
    """An event's header list as a dict."""
    return dict(event.headers)


def test_push_promises_existing_assets_with_their_headers_and_bodies(edge, site: Path, tmp_path: Path):
    server = start(edge, tmp_path)
    client = H2Client(server)
    sid = client.get("/index.html")
    client.run_until(lambda: sid in client.ended and len(client.ended) >= 3)
    promises = client.of(h2.events.PushedStreamReceived)
    paths = [headers_of(p)[b":path"] for p in promises]
    assert paths == [b"/app.js", b"/s.css"], "table first, then Link preloads; no missing file, no nopush"
    for promise in promises:
        request = headers_of(promise)
        assert request[b":method"] == b"GET" and request[b":scheme"] == b"http"
        assert request[b":authority"] == client.authority
        assert promise.parent_stream_id == sid
    client.run_until(lambda: all(p.pushed_stream_id in client.ended for p in promises))
    responses = {e.stream_id: headers_of(e) for e in client.of(h2.events.ResponseReceived)}
    for promise, name, ctype in zip(promises, ["app.js", "s.css"], [b"text/javascript", b"text/css"]):
        head = responses[promise.pushed_stream_id]
        assert head[b":status"] == b"200"
        assert head[b"content-type"].startswith(ctype)
        assert head[b"etag"].startswith(b'"')
        body = (site / name).read_bytes()
        assert head[b"content-length"] == str(len(body)).encode()
        assert client.bodies[promise.pushed_stream_id] == body
    assert client.bodies[sid] == (site / "index.html").read_bytes()
    # The promises went out before the page's own response headers.
    order = [type(e) for e in client.events]
    assert order.index(h2.events.PushedStreamReceived) < order.index(h2.events.ResponseReceived)
    client.close()


def test_103_early_hints_precede_the_response_over_http2(edge, site: Path, tmp_path: Path):
    server = start(edge, tmp_path)
    client = H2Client(server, enable_push=False)
    sid = client.get("/index.html")
    client.run_until(lambda: sid in client.ended)
    info = client.of(h2.events.InformationalResponseReceived)
    assert len(info) == 1 and headers_of(info[0])[b":status"] == b"103"
    assert headers_of(info[0])[b"link"] == LINK.encode()
    assert client.events.index(info[0]) < client.events.index(client.of(h2.events.ResponseReceived)[0])
    assert client.of(h2.events.PushedStreamReceived) == [], "pushed although SETTINGS_ENABLE_PUSH=0"
    client.close()


def test_no_push_of_an_asset_the_client_is_already_fetching(edge, site: Path, tmp_path: Path):
    server = start(edge, tmp_path)
    client = H2Client(server)
    own = client.get("/app.js")
    page = client.get("/index.html")
    client.run_until(lambda: {own, page} <= client.ended)
    client.run_until(lambda: all(p.pushed_stream_id in client.ended
                                 for p in client.of(h2.events.PushedStreamReceived)))
    pushed = [headers_of(p)[b":path"] for p in client.of(h2.events.PushedStreamReceived)]
    assert b"/app.js" not in pushed and pushed == [b"/s.css"]
    assert client.bodies[own] == (site / "app.js").read_bytes()
    client.close()


def test_max_per_request_caps_pushes(edge, site: Path, tmp_path: Path):
    server = start(edge, tmp_path, limit=1)
    client = H2Client(server)
    sid = client.get("/index.html")
    client.run_until(lambda: sid in client.ended)
    assert [headers_of(p)[b":path"] for p in client.of(h2.events.PushedStreamReceived)] == [b"/app.js"]
    client.close()


def test_a_reset_pushed_stream_is_cancelled_and_the_connection_goes_on(edge, site: Path, tmp_path: Path):
    big = site / "app.js"
    big.write_bytes(b"x" * (4 << 20))  # long enough to still be sending when the reset arrives
    server = start(edge, tmp_path)
    client = H2Client(server)
    sid = client.get("/index.html")
    client.run_until(lambda: len(client.of(h2.events.PushedStreamReceived)) == 2)
    pushed_app = client.of(h2.events.PushedStreamReceived)[0].pushed_stream_id
    client.reset(pushed_app)
    client.run_until(lambda: sid in client.ended)
    again = client.get("/hello.txt")
    client.run_until(lambda: again in client.ended)
    assert client.bodies[again] == b"hello world\n"
    assert len(client.bodies.get(pushed_app, b"")) < 4 << 20, "the reset push was sent in full"
    client.close()


@pytest.mark.skipif(shutil.which("nghttp") is None, reason="nghttp (nghttp2-client) not installed")
def test_nghttp_sees_the_push_promises(edge, site: Path, tmp_path: Path):
    server = start(edge, tmp_path)
    out = subprocess.run(["nghttp", "-nv", f"{server.url}/index.html"], capture_output=True, text=True, timeout=20)
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("recv PUSH_PROMISE frame") == 2
    assert ":path: /app.js" in out.stdout and ":path: /s.css" in out.stdout
    assert ":status: 103" in out.stdout


def test_103_early_hints_over_http11(edge, site: Path, tmp_path: Path):
    server = start(edge, tmp_path)
    client = Client(server.connect())
    client.send(b"GET /index.html HTTP/1.1\r\nHost: x\r\n\r\n")
    status, headers, body = client.response(head=True)
    assert status == 103 and headers["link"] == LINK
    status, headers, body = client.response()
    assert status == 200 and body == (site / "index.html").read_bytes()
    # HTTP/1.0 clients do not get 1xx responses (RFC 9110 §15.2).
    client.close()
    with socket.create_connection((server.host, server.port), timeout=5) as sock:
        c10 = Client(sock)
        c10.send(b"GET /index.html HTTP/1.0\r\n\r\n")
        assert c10.response()[0] == 200


def test_no_103_when_early_hints_is_off(edge, site: Path, tmp_path: Path):
    server = start(edge, tmp_path, early_hints=False)
    client = Client(server.connect())
    client.send(b"GET /index.html HTTP/1.1\r\nHost: x\r\n\r\n")
    assert client.response()[0] == 200
    client.close()
