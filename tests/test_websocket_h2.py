"""WebSocket over HTTP/2 (RFC 8441) end to end (issue 17 item 2): real `edge serve` processes, on both HTTP/2
engines, in front of the real `websockets` origin of tests/test_websocket.py (WsOrigin, which records each
handshake's fields), with a frame-level HTTP/2 client (conftest.H2Client: the h2 library writes our frames and
checks the server's) over h2c prior knowledge and over TLS with ALPN h2, and headless Chromium over TLS.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest
import test_websocket
from conftest import H2Client, H2Stream, wait_for
from test_websocket import WsOrigin, metrics, ws_config

wedge = test_websocket.wedge  # the HTTP/1.1 tests' fixtures: edge processes (no traceback), a WsOrigin
ws_origin = test_websocket.ws_origin
MiB = 1 << 20
ENGINES = ["edge", "h2"]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
TEXT, BINARY, CLOSE = 0x1, 0x2, 0x8


@pytest.fixture(params=ENGINES)
def engine(request: pytest.FixtureRequest) -> str:
    """[http2] engine of the edge under test."""
    return request.param


def ws_frame(payload: bytes, opcode: int = BINARY) -> bytes:
    """A masked client frame of any length (RFC 6455 §5.2, §5.3)."""
    n = len(payload)
    if n < 126:
        length = bytes([0x80 | n])
    elif n < 1 << 16:
        length = bytes([0x80 | 126]) + n.to_bytes(2, "big")
    else:
        length = bytes([0x80 | 127]) + n.to_bytes(8, "big")
    mask = os.urandom(4)
    masked = (int.from_bytes(payload, "big") ^ int.from_bytes((mask * (n // 4 + 1))[:n], "big")).to_bytes(n, "big")
    return bytes([0x80 | opcode]) + length + mask + masked


class Tunnel:
    """One WebSocket over an extended CONNECT stream of an H2Client: masked frames out as DATA within the
    windows the server grants, the origin's (unmasked) frames parsed back from the stream's DATA."""

    def __init__(self, client: H2Client, path: str, headers: list[tuple[bytes, bytes]] = (),
                 scheme: bytes = b"http", early: bytes = b"") -> None:
        self.client = client
        conn = client.conn
        # RFC 8441 §3: the client waits for the server's SETTINGS_ENABLE_CONNECT_PROTOCOL.
        assert client.wait(lambda: conn.remote_settings.get(8, 0) == 1, 5), "edge did not advertise 0x8 = 1"
        self.sid = sid = conn.get_next_available_stream_id()
        conn.send_headers(sid, [(b":method", b"CONNECT"), (b":protocol", b"websocket"), (b":scheme", scheme),
                                (b":authority", b"edge.test"), (b":path", path.encode()),
                                (b"sec-websocket-version", b"13"), *headers], end_stream=False)
        if early:  # DATA in the same write as the HEADERS, before any answer
            conn.send_data(sid, early)
        client.flush()
        self.stream = client.streams[sid] = H2Stream(sid)
        client.windows[sid] = client.initial_window
        self.read = 0
        if not early:
            assert client.wait(lambda: self.stream.status is not None or self.stream.done, 10), client.log()

    def send(self, data: bytes, end: bool = False) -> None:
        """`data` as DATA frames, each as big as the windows and the frame size allow (reading meanwhile)."""
        client, conn, sid = self.client, self.client.conn, self.sid
        view = memoryview(data)
        at = 0
        while at < len(data):
            room = min(conn.local_flow_control_window(sid), conn.max_outbound_frame_size)
            if room <= 0:
                assert client.pump(10), f"no window for 10 s: {client.log(10)}"
                continue
            n = min(room, len(data) - at)
            conn.send_data(sid, bytes(view[at:at + n]))
            client.flush()
            at += n
        if end:
            conn.end_stream(sid)
            client.flush()

    def message(self, timeout: float = 20.0) -> tuple[int, bytes]:
        """The next whole frame from the origin: (opcode, payload)."""
        found: list[tuple[int, bytes]] = []

        def parsed() -> bool:  # (asked again after it held: it must say the same)
            if found:
                return True
            body = self.stream.body
            at = self.read
            if len(body) - at < 2:
                return False
            size = body[at + 1] & 0x7F
            head = 2
            if size == 126:
                head, size = 4, int.from_bytes(body[at + 2:at + 4], "big")
            elif size == 127:
                head, size = 10, int.from_bytes(body[at + 2:at + 10], "big")
            if len(body) - at < head + size:
                return False
            assert not body[at + 1] & 0x80, "the origin's frames are not masked"
            found.append((body[at] & 0x0F, bytes(body[at + head:at + head + size])))
            self.read = at + head + size
            return True

        assert self.client.wait(parsed, timeout), f"no whole frame: {self.client.log(10)}"
        return found[0]


def h2_client(server, tls: bool) -> H2Client:  # (server: a conftest.EdgeProcess)
    """A started client: h2c prior knowledge, or TLS with ALPN h2."""
    client = H2Client(server.connect_tls(["h2"]) if tls else server.connect())
    client.start()
    return client


def start(wedge, origin: WsOrigin, engine: str, *flags: str, config: Path | None = None):
    """An edge in front of `origin` on `engine`."""
    return wedge("--origin", origin.url, *flags, config=config, env={"EDGE_HTTP2_ENGINE": engine})


def clean(client: H2Client) -> None:
    """The h2 library found nothing wrong in edge's frames, and edge kept within our windows."""
    assert client.h2_error is None, client.h2_error
    assert not client.violations, client.violations


# -- the tests ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("tls", [False, True], ids=["h2c", "tls"])
def test_echo_and_8mib_both_ways(wedge, ws_origin, engine: str, tls: bool, tls_args) -> None:
    """Extended CONNECT -> 200 with the origin's subprotocol; text echo; 8 MiB each way through both flow
    controls; the client's close and END_STREAM end the tunnel cleanly; the origin got an HTTP/1.1 Upgrade
    with the client's fields and edge's own key; the tunnel counts in /metrics."""
    server = start(wedge, ws_origin, engine, *tls_args)
    client = h2_client(server, tls)
    tunnel = Tunnel(client, "/echo?room=7", [(b"sec-websocket-protocol", b"chat.v2, chat.v0"),
                                             (b"origin", b"https://app.example"), (b"cookie", b"a=1"),
                                             (b"cookie", b"b=2"), (b"authorization", b"Bearer t0k")],
                    scheme=b"https" if tls else b"http")
    assert tunnel.stream.status == 200, tunnel.stream.headers
    assert tunnel.stream.headers["sec-websocket-protocol"] == "chat.v2"
    assert "sec-websocket-accept" not in tunnel.stream.headers and not tunnel.stream.done
    tunnel.send(ws_frame("héllo".encode(), TEXT))
    assert tunnel.message() == (TEXT, "héllo".encode())
    big = os.urandom(8 * MiB)
    tunnel.send(ws_frame(big))
    assert tunnel.message(60) == (BINARY, big)
    tunnel.send(ws_frame((1000).to_bytes(2, "big"), CLOSE), end=True)
    assert tunnel.message() == (CLOSE, (1000).to_bytes(2, "big"))
    assert client.wait(lambda: tunnel.stream.ended, 10), client.log(10)
    assert wait_for(lambda: 1000 in ws_origin.closes)
    clean(client)
    seen = ws_origin.requests[-1]
    assert ws_origin.paths[-1] == "/echo?room=7"
    assert seen["upgrade"] == "websocket" and seen["connection"].lower() == "upgrade"
    assert seen["sec-websocket-version"] == "13" and len(seen["sec-websocket-key"]) == 24
    assert seen["sec-websocket-protocol"] == "chat.v2, chat.v0" and seen["origin"] == "https://app.example"
    assert seen["cookie"] == "a=1; b=2" and seen["authorization"] == "Bearer t0k"
    assert seen["host"] == f"127.0.0.1:{ws_origin.port}" and seen["via"] == "2 edge"
    assert wait_for(lambda: metrics(server)["edge_tunnels_total"] == 1 and metrics(server)["edge_tunnels_open"] == 0)
    figures = metrics(server)
    assert figures["client_to_origin"] > 8 * MiB and figures["origin_to_client"] > 8 * MiB
    # The connection goes on: a plain request after the tunnel.
    sid = client.request("/hello.txt")
    assert bytes(client.response(sid).body) == b"hello world\n"
    client.close()


def test_origin_403_is_the_streams_answer(wedge, ws_origin, engine: str) -> None:
    """A non-101 answer goes to the client as the stream's answer (END_STREAM, Cache-Status bypass), and the
    connection goes on; the tunnel slot is free."""
    server = start(wedge, ws_origin, engine)
    client = h2_client(server, False)
    tunnel = Tunnel(client, "/forbidden")
    stream = client.response(tunnel.sid)
    assert stream.status == 403 and bytes(stream.body) == b"no entry\n" and stream.ended
    assert stream.headers["cache-status"] == "edge; fwd=bypass" and stream.headers["server"] == "edge"
    again = Tunnel(client, "/echo")
    assert again.stream.status == 200
    again.send(ws_frame(b"after a 403"))
    assert again.message() == (BINARY, b"after a 403")
    clean(client)
    assert ws_origin.connections == 1
    client.close()


def test_client_reset_closes_the_origin_connection(wedge, ws_origin, engine: str) -> None:
    """RST_STREAM from the client: the origin sees its connection close, the tunnel is gone from the gauge,
    and the HTTP/2 connection goes on (a second tunnel on it works)."""
    server = start(wedge, ws_origin, engine)
    client = h2_client(server, False)
    tunnel = Tunnel(client, "/echo")
    tunnel.send(ws_frame(b"ping"))
    assert tunnel.message() == (BINARY, b"ping")
    assert wait_for(lambda: metrics(server)["edge_tunnels_open"] == 1)
    client.reset(tunnel.sid)
    assert wait_for(lambda: len(ws_origin.closes) == 1), "the origin did not see its connection end"
    assert ws_origin.closes[0] != 1000  # no close handshake: the connection just went away
    assert wait_for(lambda: metrics(server)["edge_tunnels_open"] == 0)
    other = Tunnel(client, "/echo/2")
    other.send(ws_frame(b"still here"))
    assert other.message() == (BINARY, b"still here")
    clean(client)
    client.close()


def test_the_origins_close_ends_the_stream(wedge, ws_origin, engine: str) -> None:
    """The origin closes (code 4002, then its TCP close): the client gets the close frame, then END_STREAM;
    the client's END_STREAM then ends the tunnel (the half-close passed both ways)."""
    server = start(wedge, ws_origin, engine)
    client = h2_client(server, False)
    tunnel = Tunnel(client, "/close4002")
    tunnel.send(ws_frame(b"go"))
    opcode, payload = tunnel.message()
    assert opcode == CLOSE and payload[:2] == (4002).to_bytes(2, "big") and payload[2:] == b"origin says bye"
    tunnel.send(ws_frame(payload[:2], CLOSE))
    assert client.wait(lambda: tunnel.stream.done, 10), client.log(10)
    assert tunnel.stream.ended, f"reset {tunnel.stream.reset} before END_STREAM"
    tunnel.send(b"", end=True)
    assert wait_for(lambda: metrics(server)["edge_tunnels_open"] == 0)
    clean(client)
    client.close()


def test_max_tunnels_503_and_idle_timeout(wedge, ws_origin, engine: str, tmp_path: Path) -> None:
    """[websocket] max_tunnels holds for HTTP/2 tunnels too (503 on the stream); a silent one is reset after
    idle_timeout (RST_STREAM(CANCEL)) and its origin connection closed."""
    server = start(wedge, ws_origin, engine, config=ws_config(tmp_path, max_tunnels=1, idle_timeout=1))
    client = h2_client(server, False)
    first = Tunnel(client, "/echo/1")
    assert first.stream.status == 200
    second = Tunnel(client, "/echo/2")
    assert client.response(second.sid).status == 503
    assert client.wait(lambda: first.stream.reset is not None, 10), client.log(10)
    assert first.stream.reset == 8  # CANCEL
    assert wait_for(lambda: len(ws_origin.closes) == 1)
    third = Tunnel(client, "/echo/3")  # the slot is free again
    assert third.stream.status == 200
    clean(client)
    client.close()


def test_frames_sent_before_the_200_go_first(wedge, ws_origin, engine: str) -> None:
    """DATA the client sends with its CONNECT, before the origin's answer, is held and goes first, in order."""
    server = start(wedge, ws_origin, engine)
    client = h2_client(server, False)
    tunnel = Tunnel(client, "/echo", early=ws_frame(b"one") + ws_frame(b"two" * 1000))
    assert tunnel.message() == (BINARY, b"one") and tunnel.message() == (BINARY, b"two" * 1000)
    assert tunnel.stream.status == 200
    clean(client)
    client.close()


def test_a_slow_reader_holds_the_origin_back(wedge, ws_origin, engine: str) -> None:
    """A client that grants no window gets no more than its window, and edge stops reading the origin meanwhile
    (its RSS does not take the 8 MiB echo); once the client reads, all of it arrives, in order."""
    server = start(wedge, ws_origin, engine)
    client = H2Client(server.connect(), auto_window=False)
    client.start()
    tunnel = Tunnel(client, "/echo")
    tunnel.send(ws_frame(b"warm-up"))
    assert tunnel.message() == (BINARY, b"warm-up")
    client.grant(len(tunnel.stream.body))
    client.grant(len(tunnel.stream.body), tunnel.sid)
    before = server.rss()
    big = os.urandom(8 * MiB)
    tunnel.send(ws_frame(big))
    client.wait(lambda: False, 2)  # read what comes for 2 s, granting nothing
    received = len(tunnel.stream.body) - tunnel.read
    assert 0 < received <= 65_535, received
    assert server.rss() - before < 4 * MiB, (before, server.rss())
    client.auto_window = True
    client.grant(16 * MiB)
    client.grant(16 * MiB, tunnel.sid)
    assert tunnel.message(60) == (BINARY, big)
    clean(client)
    client.close()


def test_a_window_made_negative_by_the_clients_settings_holds_the_tunnel_back(wedge, ws_origin, engine: str) -> None:
    """RFC 9113 §6.9.2: a client that lowers SETTINGS_INITIAL_WINDOW_SIZE below what edge has sent leaves the
    stream's window below 0. That is no window yet, not a stream gone: the tunnel waits (it was reset)."""
    from h2.settings import SettingCodes

    server = start(wedge, ws_origin, engine)
    client = H2Client(server.connect(), auto_window=False)
    client.start()
    tunnel = Tunnel(client, "/echo")
    tunnel.send(ws_frame(b"x" * 1000))
    assert tunnel.message() == (BINARY, b"x" * 1000)  # 1,004 bytes of the stream's window used
    client.conn.update_settings({SettingCodes.INITIAL_WINDOW_SIZE: 0})
    client.flush()
    client.initial_window = 0
    client.windows[tunnel.sid] -= 65_535  # -1,004 now, as edge counts it once it has our SETTINGS
    client.wait(lambda: False, 0.5)  # edge's SETTINGS ACK
    tunnel.send(ws_frame(b"after"))
    client.wait(lambda: False, 1)  # edge holds the echo back, and must not reset the stream
    assert not tunnel.stream.done and len(tunnel.stream.body) == tunnel.read, client.log(10)
    client.grant(1004 + 7, tunnel.sid)  # back to room for the echo's 7 bytes
    client.grant(65_535)
    assert tunnel.message() == (BINARY, b"after")
    clean(client)
    client.close()


def test_the_clients_connection_dropping_ends_its_tunnels(wedge, ws_origin, engine: str) -> None:
    """The client's TCP connection goes away mid-tunnel: every origin connection it had is closed, the gauge
    is back to 0, and the worker's fds are back where they were."""
    server = start(wedge, ws_origin, engine)
    client = h2_client(server, False)
    warm = Tunnel(client, "/echo/warm")
    warm.send(ws_frame(b"x"))
    assert warm.message() == (BINARY, b"x")
    client.close()
    assert wait_for(lambda: len(ws_origin.closes) == 1 and metrics(server)["edge_tunnels_open"] == 0)
    baseline = server.fds()
    client = h2_client(server, False)
    tunnels = [Tunnel(client, f"/echo/{i}") for i in range(3)]
    for tunnel in tunnels:
        tunnel.send(ws_frame(b"y" * 100_000))
    assert tunnels[0].message() == (BINARY, b"y" * 100_000)
    client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    client.close()  # an abortive close (RST)
    assert wait_for(lambda: len(ws_origin.closes) == 4), ws_origin.closes
    assert wait_for(lambda: metrics(server)["edge_tunnels_open"] == 0)
    assert wait_for(lambda: server.fds() == baseline), (server.fds(), baseline)


def test_sigterm_ends_open_tunnels_after_shutdown_timeout(wedge, ws_origin, engine: str, tmp_path: Path) -> None:
    """SIGTERM: an open HTTP/2 tunnel keeps working until shutdown_timeout (2 s), then ends."""
    server = start(wedge, ws_origin, engine, config=ws_config(tmp_path))
    client = h2_client(server, False)
    tunnel = Tunnel(client, "/echo")
    started = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    tunnel.send(ws_frame(b"during the drain"))
    assert tunnel.message() == (BINARY, b"during the drain")
    assert client.wait(lambda: tunnel.stream.done or client.eof, 10)
    assert time.monotonic() - started >= 1.5
    assert server.proc.wait(10) == 0


BAD_ACCEPT = (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
              b"Sec-WebSocket-Accept: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
NO_UPGRADE = b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: 12\r\n\r\n<p>page</p>\n"


class RawUpgradeOrigin:
    """A raw origin that answers every upgrade with `answer`: by default a 101 whose Sec-WebSocket-Accept
    is wrong."""

    def __init__(self, answer: bytes = BAD_ACCEPT) -> None:
        self.answer = answer
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                data = b""
                while b"\r\n\r\n" not in data and (chunk := conn.recv(65536)):
                    data += chunk
                if data.startswith(b"GET /healthz"):
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                    continue
                conn.sendall(self.answer)
                conn.recv(1)

    def stop(self) -> None:
        """Stop listening."""
        self.sock.close()


@pytest.mark.parametrize("answer", [BAD_ACCEPT, NO_UPGRADE], ids=["wrong-accept", "200-page"])
def test_an_origin_answer_that_opens_no_tunnel_is_a_502(edge, engine: str, answer: bytes) -> None:
    """RFC 6455 §4.2.2: an origin 101 that does not answer edge's key is no tunnel: 502 on the stream. An
    origin that ignores the Upgrade and answers 200 neither: a 2xx on the stream would tell the client its
    tunnel is up (RFC 9113 §8.5, RFC 8441 §5) and it would read the page as WebSocket frames."""
    origin = RawUpgradeOrigin(answer)
    try:
        server = edge("--origin", origin.url, env={"EDGE_HTTP2_ENGINE": engine})
        client = h2_client(server, False)
        tunnel = Tunnel(client, "/echo")
        stream = client.response(tunnel.sid)
        assert stream.status == 502 and stream.ended
        clean(client)
        client.close()
        assert server.alive()
    finally:
        origin.stop()


def test_without_origins_nothing_is_advertised_and_protocol_is_refused(edge, engine: str) -> None:
    """No tunnels (no origins): SETTINGS has no 0x8, and a :protocol request is malformed (RST_STREAM
    PROTOCOL_ERROR); plain CONNECT is 405 as before."""
    server = edge(env={"EDGE_HTTP2_ENGINE": engine})
    client = h2_client(server, False)
    assert client.wait(lambda: client.conn.remote_settings.get(4) is not None and any(
        type(f).__name__ == "SettingsFrame" and "ACK" not in f.flags for f in client.frames), 5)
    settings = next(f for f in client.frames if type(f).__name__ == "SettingsFrame" and "ACK" not in f.flags)
    assert settings.settings.get(8, 0) == 0  # (h2 lists every setting: 8 = 0)
    sid = client.request("/echo", "CONNECT", raw_headers=[
        (b":method", b"CONNECT"), (b":protocol", b"websocket"), (b":scheme", b"http"),
        (b":authority", b"edge.test"), (b":path", b"/echo")], end_stream=False)
    assert client.response(sid).reset == 1  # PROTOCOL_ERROR
    sid = client.request("/", "CONNECT", raw_headers=[(b":method", b"CONNECT"), (b":authority", b"edge.test:443")],
                         end_stream=False)
    assert client.response(sid).status == 405
    client.close()


# -- headless Chromium ---------------------------------------------------------------------------------------

PAGE = """<!doctype html><meta charset="utf-8"><title>ws</title><pre id="out">waiting</pre>
<script>
const out = document.getElementById("out");
const ws = new WebSocket(`wss://${location.host}/echo/chromium`, ["chat.v2"]);
ws.onopen = () => ws.send("hello from chromium");
ws.onmessage = (e) => { out.textContent = `echo=${e.data} protocol=${ws.protocol}`; ws.close(1000); };
ws.onerror = () => { out.textContent = "error"; };
</script>
"""


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (scripts/test installs it)")
def test_chromium_opens_a_websocket_through_edge_over_tls(wedge, ws_origin, engine: str, tls_args,
                                                          www: Path) -> None:
    """A page from edge's root (HTTPS, HTTP/2 by ALPN) opens a WebSocket to the same host: it reaches the
    origin through edge and the echo comes back into the page. Chromium uses RFC 8441 on the page's HTTP/2
    connection (edge advertised SETTINGS_ENABLE_CONNECT_PROTOCOL): the origin's request says Via: 2 edge."""
    (www / "ws.html").write_text(PAGE)
    server = start(wedge, ws_origin, engine, *tls_args)
    for _ in range(3):
        # --dump-dom ends when the virtual-time budget is spent, which a WebSocket does not hold back on a
        # busy machine (the page can still read "waiting"): a page that did not finish is loaded again.
        out = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                              "--ignore-certificate-errors", "--virtual-time-budget=10000", "--dump-dom",
                              f"{server.tls_url}/ws.html"], check=False, capture_output=True, text=True, timeout=90)
        assert out.returncode == 0, out.stderr[-2000:]
        if "waiting" not in out.stdout.split('id="out">', 1)[-1][:20]:
            break
    assert "echo=hello from chromium protocol=chat.v2" in out.stdout, out.stdout[-2000:]
    assert "/echo/chromium" in ws_origin.paths  # (Chromium's /favicon.ico goes to the origin too)
    last = len(ws_origin.paths) - 1 - ws_origin.paths[::-1].index("/echo/chromium")
    seen = ws_origin.requests[last]
    assert seen["via"] == "2 edge", f"Chromium used HTTP/1.1, not RFC 8441: {seen}"
    assert wait_for(lambda: 1000 in ws_origin.closes)  # the page's close(1000) reached the origin
