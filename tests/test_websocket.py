"""WebSocket over HTTP/1.1 end to end (issue 17): real `edge serve` processes in front of a real WebSocket
origin (the `websockets` library's server, in a thread of the test process, which records what reached it),
with the `websockets` client and raw sockets as clients.
"""

from __future__ import annotations

import asyncio
import base64
import os
import re
import signal
import socket
import ssl
import threading
import time
from pathlib import Path

import httpx
import pytest
from conftest import wait_for
from websockets.asyncio.client import connect
from websockets.asyncio.server import serve
from websockets.exceptions import ConnectionClosed, InvalidStatus

MiB = 1 << 20


class WsOrigin:
    """A WebSocket origin in its own thread and loop: /echo echoes, /close4002 closes with 4002 after one
    message, /forbidden answers 403; it records each handshake's request fields and each close code it got."""

    def __init__(self, tls: tuple[Path, Path] | None = None) -> None:
        self.tls = tls  # (cert, key): the origin speaks wss (https)
        self.requests: list[dict[str, str]] = []  # lower-case field name -> value, per handshake
        self.paths: list[str] = []
        self.closes: list[int | None] = []
        self.connections = 0
        self.loop = asyncio.new_event_loop()
        self._stop: asyncio.Future | None = None
        started = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(started,), daemon=True)
        self.thread.start()
        assert started.wait(10)
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}"

    def _run(self, started: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self._serve(started))

    async def _serve(self, started: threading.Event) -> None:
        self._stop = self.loop.create_future()
        context = None
        if self.tls is not None:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(str(self.tls[0]), str(self.tls[1]))
        async with serve(self._handler, "127.0.0.1", 0, max_size=None, ping_interval=None,
                         select_subprotocol=self._subprotocol, process_request=self._process, ssl=context) as server:
            self.port = server.sockets[0].getsockname()[1]
            started.set()
            await self._stop

    @staticmethod
    def _subprotocol(connection, offered):  # noqa: ANN001, ANN205 - websockets' hook
        """chat.v2, else chat.v1 when offered; none when the client asks for none."""
        return next((p for p in ("chat.v2", "chat.v1") if p in offered), None)

    def _process(self, connection, request):  # noqa: ANN001, ANN202 - websockets' hook
        if request.path == "/healthz":  # edge's active health check: a plain GET
            return connection.respond(200, "ok\n")
        self.requests.append({k.lower(): v for k, v in request.headers.raw_items()})
        self.paths.append(request.path)
        if request.path.startswith("/forbidden"):
            return connection.respond(403, "no entry\n")
        return None

    async def _handler(self, ws) -> None:  # noqa: ANN001
        self.connections += 1
        try:
            if ws.request.path.startswith("/close4002"):
                await ws.recv()
                await ws.close(4002, "origin says bye")
                return
            async for message in ws:
                await ws.send(message)
        except ConnectionClosed:
            pass
        finally:
            self.closes.append(ws.close_code)

    def stop(self) -> None:
        """Stop the server and its thread."""
        self.loop.call_soon_threadsafe(lambda: self._stop.done() or self._stop.set_result(None))
        self.thread.join(10)


@pytest.fixture
def wedge(edge):
    """`edge`, and afterwards: no edge process wrote a traceback or a failed tunnel to stderr."""
    started = []

    def start(*args: str, **kwargs: object):  # noqa: ANN202
        proc = edge(*args, **kwargs)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        err = proc.stderr()
        assert "Traceback" not in err and "tunnel failed" not in err and "not started" not in err, err


@pytest.fixture
def ws_origin():
    """One WebSocket origin for the test."""
    origin = WsOrigin()
    yield origin
    origin.stop()


def ws_config(tmp_path: Path, **websocket: object) -> Path:
    """A config file with a [websocket] table (and a short shutdown_timeout)."""
    lines = ["shutdown_timeout = 2", "[websocket]"]
    for key, value in websocket.items():
        lines.append(f"{key} = {str(value).lower() if isinstance(value, bool) else value}")
    path = tmp_path / "edge.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def run(coro) -> object:  # noqa: ANN001
    """Run a client coroutine to its end."""
    return asyncio.run(coro)


def ws_url(edge_proc, path: str) -> str:  # noqa: ANN001
    """ws:// URL of `path` on edge."""
    return f"ws://{edge_proc.host}:{edge_proc.port}{path}"


def metrics(edge_proc) -> dict[str, float]:  # noqa: ANN001
    """The tunnel figures of /metrics."""
    text = httpx.get(edge_proc.admin_url + "/metrics", timeout=5).text
    out = {}
    for name in ("edge_tunnels_open", "edge_tunnels_total"):
        m = re.search(rf"^{name} (\S+)$", text, re.M)
        out[name] = float(m.group(1)) if m else -1
    for direction in ("client_to_origin", "origin_to_client"):
        m = re.search(rf'^edge_tunnel_bytes_total\{{direction="{direction}"\}} (\S+)$', text, re.M)
        out[direction] = float(m.group(1)) if m else -1
    return out


def handshake(path: str, host: str = "edge.test", extra: str = "") -> bytes:
    """A raw WebSocket handshake request."""
    key = base64.b64encode(os.urandom(16)).decode()
    return (f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n").encode()


def frame(payload: bytes, opcode: int = 1) -> bytes:
    """A masked client frame (RFC 6455 §5.2), payload under 64 KiB."""
    mask = os.urandom(4)
    length = bytes([0x80 | len(payload)]) if len(payload) < 126 else bytes([0x80 | 126]) + len(payload).to_bytes(2, "big")
    return bytes([0x80 | opcode]) + length + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def read_head(sock: socket.socket) -> tuple[bytes, bytes]:
    """(the response head, the bytes after it)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"closed before a head: {data!r}"
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    return head, rest


def read_frames(sock: socket.socket, rest: bytes, count: int) -> list[bytes]:
    """`count` unmasked server frames' payloads (each under 64 KiB)."""
    data = rest
    out = []
    while len(out) < count:
        while len(data) < 2 or len(data) < _frame_len(data):
            chunk = sock.recv(65536)
            assert chunk, "closed before the frames"
            data += chunk
        n = _frame_len(data)
        out.append(data[n - (data[1] & 0x7F if data[1] & 0x7F < 126 else int.from_bytes(data[2:4], "big")):n])
        data = data[n:]
    assert data == b"", "a byte more than was sent"
    return out


def _frame_len(data: bytes) -> int:
    size = data[1] & 0x7F
    if size < 126:
        return 2 + size
    if len(data) < 4:
        return 1 << 30
    return 4 + int.from_bytes(data[2:4], "big")


# -- the tests ---------------------------------------------------------------------------------------------


def test_text_binary_and_8mib_both_ways(wedge, ws_origin) -> None:
    """Text and binary echo, then 8 MiB each way, through a spliced tunnel; counters in /metrics."""
    server = wedge("--origin", ws_origin.url)

    async def client() -> None:
        async with connect(ws_url(server, "/echo"), proxy=None, max_size=None, ping_interval=None) as ws:
            await ws.send("héllo")
            assert await ws.recv() == "héllo"
            await ws.send(b"\x00\x01\x02binary")
            assert await ws.recv() == b"\x00\x01\x02binary"
            big = os.urandom(8 * MiB)
            await ws.send(big)
            assert await ws.recv() == big
            text = "x" * (8 * MiB)
            await ws.send(text)
            assert await ws.recv() == text

    run(client())
    assert wait_for(lambda: metrics(server)["edge_tunnels_total"] == 1 and metrics(server)["edge_tunnels_open"] == 0,
                    timeout=5)
    figures = metrics(server)
    # Permessage-deflate squeezes the text message; the binary one is random: each way carries over 8 MiB.
    assert figures["client_to_origin"] > 8 * MiB and figures["origin_to_client"] > 8 * MiB
    assert server.alive()


def test_close_codes_pass_both_ways(wedge, ws_origin) -> None:
    """The client's close code 4001 reaches the origin; the origin's 4002 reaches the client."""
    server = wedge("--origin", ws_origin.url)

    async def client() -> None:
        async with connect(ws_url(server, "/echo"), proxy=None, ping_interval=None) as ws:
            await ws.send("ping")
            assert await ws.recv() == "ping"
            await ws.close(4001, "client says bye")
        async with connect(ws_url(server, "/close4002"), proxy=None, ping_interval=None) as ws:
            await ws.send("go")
            with pytest.raises(ConnectionClosed):
                await ws.recv()
            assert ws.close_code == 4002 and ws.close_reason == "origin says bye"

    run(client())
    assert wait_for(lambda: len(ws_origin.closes) == 2)
    assert 4001 in ws_origin.closes and 4002 in ws_origin.closes


def test_fields_reach_the_origin_and_the_subprotocol_comes_back(wedge, ws_origin) -> None:
    """Origin, Cookie, Authorization and Sec-WebSocket-* reach the origin with Host and Via; hop-by-hop fields
    the client's Connection names do not; the origin's choice of subprotocol comes back."""
    server = wedge("--origin", ws_origin.url)

    async def client() -> str | None:
        async with connect(ws_url(server, "/echo?room=7"), proxy=None, ping_interval=None,
                           origin="https://app.example", subprotocols=["chat.v2", "chat.v0"],
                           additional_headers={"Cookie": "session=abc", "Authorization": "Bearer t0k",
                                               "X-Custom": "1", "Connection": "Upgrade, X-Hop",
                                               "X-Hop": "secret"}) as ws:
            await ws.send("hi")
            assert await ws.recv() == "hi"
            return ws.subprotocol

    assert run(client()) == "chat.v2"
    seen = ws_origin.requests[-1]
    assert ws_origin.paths[-1] == "/echo?room=7"
    assert seen["origin"] == "https://app.example" and seen["cookie"] == "session=abc"
    assert seen["authorization"] == "Bearer t0k" and seen["x-custom"] == "1"
    assert seen["sec-websocket-protocol"] == "chat.v2, chat.v0" and seen["sec-websocket-version"] == "13"
    assert "sec-websocket-key" in seen and "permessage-deflate" in seen["sec-websocket-extensions"]
    assert seen["host"] == f"127.0.0.1:{ws_origin.port}" and seen["via"] == "1.1 edge"
    assert seen["upgrade"] == "websocket" and seen["connection"].lower() == "upgrade"
    assert "x-hop" not in seen


def test_non_101_answer_reaches_the_client(wedge, ws_origin) -> None:
    """An origin's 403 goes to the client as a plain answer (its body, Cache-Status bypass), then the close."""
    server = wedge("--origin", ws_origin.url)

    async def client() -> int:
        with pytest.raises(InvalidStatus) as caught:
            async with connect(ws_url(server, "/forbidden"), proxy=None):
                pass
        return caught.value.response.status_code

    assert run(client()) == 403
    with server.connect() as sock:
        sock.sendall(handshake("/forbidden"))
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 403 ") and body == b"no entry\n"
    assert b"\r\nConnection: close" in head and b"\r\nCache-Status: edge; fwd=bypass" in head
    servers = [line for line in head.lower().split(b"\r\n") if line.startswith(b"server:")]
    assert servers == [b"server: edge"], "edge names itself, as in every answer (not the origin's websockets)"
    assert ws_origin.connections == 0


def test_unreachable_origin_is_a_502(wedge) -> None:
    """No origin takes the connection: the upgrade gets 502, and edge goes on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}"
    server = wedge("--origin", closed)
    with server.connect() as sock:
        sock.sendall(handshake("/echo"))
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    assert data.startswith(b"HTTP/1.1 502 ")
    assert server.alive()


def test_https_origin_through_the_copying_relay(wedge, tls_cert) -> None:
    """An https origin: its side must pass through TLS, so a plain client's tunnel is a copying relay too."""
    origin = WsOrigin(tls=tls_cert)
    try:
        server = wedge("--origin", origin.url, env={"SSL_CERT_FILE": str(tls_cert[0])})

        async def client() -> None:
            async with connect(ws_url(server, "/echo"), proxy=None, max_size=None, ping_interval=None) as ws:
                await ws.send("to a wss origin")
                assert await ws.recv() == "to a wss origin"
                big = os.urandom(2 * MiB)
                await ws.send(big)
                assert await ws.recv() == big
                await ws.close(4001)

        run(client())
        assert wait_for(lambda: 4001 in origin.closes)
        assert origin.requests[-1]["host"] == f"127.0.0.1:{origin.port}"
    finally:
        origin.stop()


def test_first_frames_and_split_head_neither_lost_nor_duplicated(wedge, ws_origin, www: Path) -> None:
    """Frames sent in the same write as the handshake go first, in order, once; a head that arrives in
    pieces still passes every field; the root's own files still answer an upgrade as plain HTTP/1.1."""
    server = wedge("--origin", ws_origin.url)
    with server.connect() as sock:
        payloads = [b"one", b"two" * 50, b"three" * 1000]
        sock.sendall(handshake("/echo", extra="Cookie: c=1\r\n") + b"".join(frame(p) for p in payloads))
        head, rest = read_head(sock)
        assert head.startswith(b"HTTP/1.1 101 ")
        assert read_frames(sock, rest, 3) == payloads
        sock.sendall(frame(b"four"))
        assert read_frames(sock, b"", 1) == [b"four"]
    # The head in pieces cut inside lines (a big cookie over a slow network).
    request = handshake("/echo", extra="Cookie: " + "k" * 3000 + "\r\nOrigin: https://split.example\r\n")
    with server.connect() as sock:
        for cut in (request[:20], request[20:1500], request[1500:]):
            sock.sendall(cut)
            time.sleep(0.1)
        sock.sendall(frame(b"after pieces"))
        head, rest = read_head(sock)
        assert head.startswith(b"HTTP/1.1 101 "), head
        assert read_frames(sock, rest, 1) == [b"after pieces"]
    assert ws_origin.requests[-1]["origin"] == "https://split.example"
    assert ws_origin.requests[-1]["cookie"] == "k" * 3000
    # The root has hello.txt: the upgrade is answered from it, as any GET, and the connection closes.
    with server.connect() as sock:
        sock.sendall(handshake("/hello.txt"))
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    assert data.startswith(b"HTTP/1.1 200 ") and data.endswith(b"hello world\n")
    assert ws_origin.paths.count("/hello.txt") == 0


def test_300_concurrent_tunnels(wedge, ws_origin) -> None:
    """300 tunnels open at once, each echoing its own message; all close, none stays open."""
    server = wedge("--origin", ws_origin.url)

    async def one(i: int, ready: asyncio.Barrier) -> bool:
        async with connect(ws_url(server, f"/echo/{i}"), proxy=None, ping_interval=None, open_timeout=30,
                           compression=None) as ws:
            await ready.wait()  # every tunnel is open at the same time
            message = f"tunnel {i} " + "z" * i
            await ws.send(message)
            return await ws.recv() == message

    async def client() -> list[bool]:
        ready = asyncio.Barrier(300)
        return await asyncio.gather(*(one(i, ready) for i in range(300)))

    assert all(run(client()))
    assert wait_for(lambda: metrics(server)["edge_tunnels_open"] == 0 and metrics(server)["edge_tunnels_total"] == 300,
                    timeout=10)
    assert server.alive()


def test_max_tunnels_503_and_idle_timeout(wedge, ws_origin, tmp_path: Path) -> None:
    """Beyond max_tunnels the upgrade gets 503; a tunnel without a byte for idle_timeout is closed."""
    server = wedge("--origin", ws_origin.url, config=ws_config(tmp_path, max_tunnels=2, idle_timeout=2))

    async def client() -> None:
        a = await connect(ws_url(server, "/echo/a"), proxy=None, ping_interval=None)
        b = await connect(ws_url(server, "/echo/b"), proxy=None, ping_interval=None)
        with pytest.raises(InvalidStatus) as caught:
            await connect(ws_url(server, "/echo/c"), proxy=None, ping_interval=None)
        assert caught.value.response.status_code == 503
        assert await asyncio.to_thread(lambda: metrics(server)["edge_tunnels_open"] in (-1, 0, 2))
        # Traffic keeps `a` alive past the idle timeout; `b` says nothing and is closed.
        started = time.monotonic()
        for _ in range(16):  # 3 s of a tick every 0.2 s: far inside the 2 s idle limit even on a busy machine
            await a.send("tick")
            assert await a.recv() == "tick"
            await asyncio.sleep(0.2)
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(b.recv(), 8)
        assert time.monotonic() - started < 11  # closed by the idle sweep, not by a slower timeout
        await a.send("still here")
        assert await a.recv() == "still here"
        await a.close()
        # A tunnel slot is free again.
        async with connect(ws_url(server, "/echo/d"), proxy=None, ping_interval=None) as d:
            await d.send("d")
            assert await d.recv() == "d"

    run(client())


def test_metrics_show_open_tunnels(wedge, ws_origin) -> None:
    """/metrics (and /status) show the open-tunnel gauge while tunnels are open, and bytes each way."""
    server = wedge("--origin", ws_origin.url)

    async def client() -> None:
        sockets = [await connect(ws_url(server, f"/echo/{i}"), proxy=None, ping_interval=None, compression=None)
                   for i in range(3)]
        for ws in sockets:
            await ws.send(b"m" * 1000)
            assert await ws.recv() == b"m" * 1000
        assert await asyncio.to_thread(wait_for, lambda: metrics(server)["edge_tunnels_open"] == 3, 5)
        figures = await asyncio.to_thread(metrics, server)
        assert figures["client_to_origin"] >= 3000 and figures["origin_to_client"] >= 3000
        status = (await asyncio.to_thread(httpx.get, server.admin_url + "/status")).json()
        assert status["tunnels"]["open"] == 3 and status["workers"][0]["tunnels_open"] == 3
        for ws in sockets:
            await ws.close()

    run(client())
    assert wait_for(lambda: metrics(server)["edge_tunnels_open"] == 0, timeout=5)


def test_tls_client_through_the_copying_relay(wedge, ws_origin, tls_args) -> None:
    """A wss:// client on edge's TLS port: its tunnel is a copying relay; echo, 8 MiB, close code."""
    server = wedge("--origin", ws_origin.url, *tls_args)
    context = ssl._create_unverified_context()

    async def client() -> None:
        url = f"wss://{server.host}:{server.tls_port}/echo"
        async with connect(url, proxy=None, ssl=context, max_size=None, ping_interval=None) as ws:
            await ws.send("over tls")
            assert await ws.recv() == "over tls"
            big = os.urandom(8 * MiB)
            await ws.send(big)
            assert await ws.recv() == big
            await ws.close(4001)

    run(client())
    assert wait_for(lambda: 4001 in ws_origin.closes)
    assert wait_for(lambda: metrics(server)["edge_tunnels_open"] == 0 and metrics(server)["edge_tunnels_total"] == 1)


def test_a_tunnel_ended_idle_lets_go_of_a_tls_client_that_never_reads(wedge, ws_origin, tls_args,
                                                                      tmp_path: Path) -> None:
    """A wss:// client that sends and never reads: the echo fills every buffer on the way back, nothing moves
    for idle_timeout, and the tunnel ends. Its connection then goes at once, fd and buffered bytes with it (a
    close() that waited for the buffer to drain held them for good, and nothing watched it any more)."""
    server = wedge("--origin", ws_origin.url, *tls_args, config=ws_config(tmp_path, idle_timeout=2))
    [pid] = server.worker_pids()
    fds = lambda: len(os.listdir(f"/proc/{pid}/fd"))  # noqa: E731
    before = fds()
    raw = socket.socket()
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # the client's side holds little
    raw.connect((server.host, server.tls_port))
    sock = ssl._create_unverified_context().wrap_socket(raw)
    sock.sendall(handshake("/echo"))
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(1)  # the 101 head only; nothing after it is ever read
    assert head.startswith(b"HTTP/1.1 101 "), head

    def send() -> None:  # blocks once every buffer is full; ends with an error when edge lets go
        try:
            for _ in range(400):
                sock.sendall(frame(b"e" * 60_000, 2))
        except OSError:
            pass

    threading.Thread(target=send, daemon=True).start()
    assert wait_for(lambda: metrics(server)["edge_tunnels_open"] == 1, 5)
    assert wait_for(lambda: metrics(server)["edge_tunnels_open"] == 0, 15), "the idle sweep ends the tunnel"
    assert wait_for(lambda: fds() <= before, 5), (before, fds(), os.listdir(f"/proc/{pid}/fd"))
    raw.close()


def test_disabled_or_without_origins_stays_plain_http(wedge, ws_origin, tmp_path: Path) -> None:
    """[websocket] enabled = false, or no origins: the upgrade is answered as plain HTTP/1.1, as before."""
    off = wedge("--origin", ws_origin.url, config=ws_config(tmp_path, enabled=False))
    plain = wedge()
    for server in (off, plain):
        with server.connect() as sock:
            sock.sendall(handshake("/echo"))
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        assert not data.startswith(b"HTTP/1.1 101"), data[:100]
        assert data.startswith(b"HTTP/1.1 ")
    assert ws_origin.connections == 0


def test_reload_keeps_tunnels_and_sigterm_ends_them(wedge, ws_origin, tmp_path: Path) -> None:
    """SIGHUP: an open tunnel goes on working in the old worker; SIGTERM: it is closed after shutdown_timeout."""
    server = wedge("--origin", ws_origin.url, config=ws_config(tmp_path))
    old = server.worker_pid

    async def client() -> None:
        async with connect(ws_url(server, "/echo"), proxy=None, ping_interval=None) as ws:
            await ws.send("before")
            assert await ws.recv() == "before"
            os.kill(server.pid, signal.SIGHUP)
            assert await asyncio.to_thread(wait_for, lambda: len(server.worker_pids()) == 2, 10)
            await asyncio.sleep(0.5)
            await ws.send("during reload")  # still the old worker (shutdown_timeout = 2)
            assert await ws.recv() == "during reload"
            assert old in server.worker_pids()
            with pytest.raises(ConnectionClosed):  # the old worker's drain deadline closes it
                await asyncio.wait_for(ws.recv(), 10)
        assert await asyncio.to_thread(wait_for, lambda: old not in server.worker_pids(), 10)
        async with connect(ws_url(server, "/echo"), proxy=None, ping_interval=None) as ws:  # the new worker
            await ws.send("after")
            assert await ws.recv() == "after"
            started = time.monotonic()
            server.proc.send_signal(signal.SIGTERM)
            with pytest.raises(ConnectionClosed):
                await asyncio.wait_for(ws.recv(), 10)
            assert time.monotonic() - started >= 1.5  # kept until shutdown_timeout (2 s)

    run(client())
    assert server.proc.wait(10) == 0


@pytest.mark.parametrize("balance", ["least-conn", "round-robin"])
def test_tunnels_spread_over_origins_by_websocket_balance(wedge, tmp_path: Path, balance: str) -> None:
    """[websocket] balance: least-conn counts the worker's open tunnels per origin (six tunnels held open on
    one path end up three and three); round-robin alternates whatever stays open. The consistent ring would
    put every tunnel of one path on one origin."""
    origins = [WsOrigin(), WsOrigin()]
    try:
        config = ws_config(tmp_path, balance=f'"{balance}"')
        server = wedge(*(f for o in origins for f in ("--origin", o.url)), config=config)

        async def client() -> None:
            sockets = []
            for i in range(6):  # one after the other, each held open: least-conn sees the ones before
                ws = await connect(ws_url(server, "/echo/same"), proxy=None, ping_interval=None, compression=None)
                await ws.send(f"m{i}")
                assert await ws.recv() == f"m{i}"
                sockets.append(ws)
            for ws in sockets:
                await ws.close()

        run(client())
        assert [o.connections for o in origins] == [3, 3], [o.connections for o in origins]
    finally:
        for origin in origins:
            origin.stop()
