"""Shared fixtures: real `edge serve` processes on loopback, and raw-socket helpers."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

# Every edge a test starts gets its admin endpoint on a free port (the default 9090 would collide).
os.environ.setdefault("EDGE_ADMIN", "127.0.0.1:0")

STARTUP = re.compile(r"listening on http://(\S+):(\d+) .*workers=(\d+)")
TLS_STARTUP = re.compile(r" https://(\S+):(\d+) ")
WORKER_LINE = re.compile(r"^  worker (\d+): pid (\d+) (.*)$")
MANAGER_LINE = re.compile(r"^  manager: pid (\d+)(?: admin=(\S+))?")


class EdgeProcess:
    """A running `edge serve` (supervisor plus workers) bound to a free loopback port.

    `pid` is the supervisor; `banner` maps each worker slot to (pid, placement) as printed at
    start-up. Output after the banner is collected by threads (a full pipe would block the server).
    """

    def __init__(self, root: Path, *args: str, config: Path | None = None, env: dict | None = None) -> None:
        cmd = [sys.executable, "-m", "edge.cli", "serve", "--root", str(root), "--host", "127.0.0.1",
               "--port", "0", *args]
        if "--workers" not in args:
            # scripts/test runs the cache matrix (test_pull.py) again with EDGE_TEST_WORKERS=2: every
            # rule must hold when a key's requests land on different workers sharing one disk cache.
            cmd += ["--workers", os.environ.get("EDGE_TEST_WORKERS", "1")]
            if cmd[-1] != "1":
                cmd += ["--cpu-affinity", "off"]
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
        tls = TLS_STARTUP.search(line)  # only with --tls-port (or [tls] in the config)
        self.tls_port: int | None = int(tls.group(2)) if tls else None
        self.tls_url = f"https://{tls.group(1)}:{self.tls_port}" if tls else None
        self.topology = self.proc.stdout.readline().strip()
        self.banner: dict[int, tuple[int, str]] = {}
        self.manager_pid = 0  # the node's manager process (admin endpoint, health checks, cache index)
        self.admin_url: str | None = None
        while len(self.banner) < int(m.group(3)):
            line = self.proc.stdout.readline().rstrip("\n")
            manager = MANAGER_LINE.match(line)
            if manager:
                self.manager_pid = int(manager.group(1))
                self.admin_url = manager.group(2)
                continue
            w = WORKER_LINE.match(line)
            assert w, f"start-up banner without its worker table: {line!r}"
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
                return [int(p) for p in f.read().split() if int(p) != self.manager_pid]
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

    def connect_tls(self, alpn: list[str] | None = None, *, cafile: str | Path | None = None,
                    timeout: float = 5.0, **context: object) -> ssl.SSLSocket:
        """A TLS connection to the TLS listener; `cafile` verifies the certificate (else no verification).

        `context` sets attributes of the client SSLContext (e.g. maximum_version).
        """
        assert self.tls_port is not None, "started without --tls-port"
        ctx = ssl.create_default_context(cafile=str(cafile)) if cafile else ssl._create_unverified_context()
        for name, value in context.items():
            setattr(ctx, name, value)
        if alpn:
            ctx.set_alpn_protocols(alpn)
        raw = socket.create_connection((self.host, self.tls_port), timeout=timeout)
        try:
            return ctx.wrap_socket(raw, server_hostname=self.host)
        except BaseException:
            raw.close()
            raise


def _collect(stream, sink: list[str]) -> None:
    for line in stream:
        sink.append(line)


@pytest.fixture
def www(tmp_path: Path) -> Path:
    """A document root with a few files."""
    return fill_www(tmp_path / "www")


def fill_www(root: Path) -> Path:
    """Make `root` the document root most tests serve: pages, a directory with an index, one without."""
    root.mkdir(parents=True, exist_ok=True)
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
def cache_dir(tmp_path: Path) -> Path:
    """The disk cache directory of the node under test."""
    return tmp_path / "cache"


@pytest.fixture
def pull(edge, cache_dir: Path, tmp_path: Path):
    """Start edge in front of origins (objects with a .url, or URLs): pull(origins, *flags, config="toml text")."""

    def start(upstreams, *args: str, config: str | None = None) -> EdgeProcess:
        flags = [f for u in upstreams for f in ("--origin", u if isinstance(u, str) else u.url)]
        path = None
        if config is not None:
            path = tmp_path / f"pull-{len(list(tmp_path.glob('pull-*.toml')))}.toml"
            path.write_text(config)
        return edge(*flags, "--cache-dir", str(cache_dir), *args, config=path)

    return start


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
        if headers.get("transfer-encoding") == "chunked":
            return status, headers, self._chunks()
        length = int(headers["content-length"])
        while len(self.buf) < length:
            self._fill()
        body, self.buf = self.buf[:length], self.buf[length:]
        return status, headers, body

    def _chunks(self) -> bytes:
        """A chunked body (RFC 9112 §7.1), to its last chunk (ConnectionError if the connection ends first)."""
        body = b""
        while True:
            while b"\r\n" not in self.buf:
                self._fill()
            line, _, self.buf = self.buf.partition(b"\r\n")
            size = int(line.split(b";")[0], 16)
            while len(self.buf) < size + 2:
                self._fill()
            if size == 0:
                assert self.buf[:2] == b"\r\n", "no trailer fields are sent"
                self.buf = self.buf[2:]
                return body
            body += self.buf[:size]
            assert self.buf[size:size + 2] == b"\r\n", "a chunk must end with CRLF"
            self.buf = self.buf[size + 2:]

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


def wait_for(predicate, timeout: float = 5.0, step: float = 0.02) -> bool:
    """Poll `predicate` until it is true or `timeout` passes; returns its last value."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(step)
    return predicate()


def body_chunks(sock: socket.socket, got: int, length: int, pause: float = 0.0) -> Iterator[bytes]:
    """The pieces of a response body after its first `got` bytes, until `length` or the server closes
    (`pause` seconds after each: a slow reader)."""
    while got < length:
        chunk = sock.recv(1 << 20)
        if not chunk:
            return
        got += len(chunk)
        yield chunk
        if pause:
            time.sleep(pause)


def finish_download(sock: socket.socket, body: bytes, length: int, pause: float = 0.0) -> tuple[int, bytes]:
    """Read the rest of a response body begun with `body` (until `length` or EOF): (bytes got, SHA-256)."""
    digest = hashlib.sha256(body)
    got = len(body)
    for chunk in body_chunks(sock, got, length, pause):
        digest.update(chunk)
        got += len(chunk)
    return got, digest.digest()


def read_answer(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 answer framed by Content-Length: (status, fields by lower-case name, body); the body
    is short when the server closes first."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(1 << 20)
        assert chunk, f"closed before the end of the head: {buf[:200]!r}"
        buf += chunk
    head, _, body = buf.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    body = b"".join([body, *body_chunks(sock, len(body), int(headers["content-length"]))])
    return int(lines[0].split()[1]), headers, body


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


# -- TLS certificates ------------------------------------------------------------------------------

OPENSSL = shutil.which("openssl")
needs_openssl = pytest.mark.skipif(OPENSSL is None, reason="the openssl command is not installed")


def make_cert(directory: Path, name: str = "edge-test", serial: int | None = None) -> tuple[Path, Path]:
    """A self-signed P-256 certificate for 127.0.0.1 and localhost (openssl CLI); returns (cert, key)."""
    if OPENSSL is None:
        pytest.skip("the openssl command is not installed")
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = directory / f"{name}.crt", directory / f"{name}.key"
    cmd = [OPENSSL, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
           "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", f"/CN={name}",
           "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"]
    if serial is not None:
        cmd += ["-set_serial", str(serial)]
    subprocess.run(cmd, check=True, capture_output=True, timeout=30)
    return cert, key


@pytest.fixture(scope="session")
def tls_cert(tmp_path_factory) -> tuple[Path, Path]:
    """One self-signed certificate and key for the whole session: (cert, key)."""
    return make_cert(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def tls_args(tls_cert) -> tuple[str, ...]:
    """`edge serve` flags for a TLS listener on a free port with the session's certificate."""
    cert, key = tls_cert
    return ("--tls-port", "0", "--tls-cert", str(cert), "--tls-key", str(key))


# -- a frame-level HTTP/2 client ------------------------------------------------------------------


class H2Stream:
    """What one stream received: final status and headers, 1xx heads, body, end or reset."""

    def __init__(self, sid: int) -> None:
        self.sid = sid
        self.status: int | None = None
        self.headers: dict[str, str] = {}
        self.informational: list[dict[str, str]] = []
        self.body = bytearray()
        self.ended = False
        self.reset: int | None = None  # RST_STREAM error code from the server
        self.data_frames = 0

    @property
    def done(self) -> bool:
        """The stream ended (END_STREAM) or was reset."""
        return self.ended or self.reset is not None


class H2Client:
    """HTTP/2 over a plain (or TLS) socket, frame by frame: h2 writes, every received frame is kept.

    The h2 library's client connection encodes what we send (HPACK, stream ids, settings). What the
    server sends is split into frames here (hyperframe) and recorded in `frames`, so a test sees
    every frame, including after a GOAWAY, when h2's own state machine refuses to go on; each
    frame is also fed to h2 as long as h2 accepts it (`h2_error` says what h2 found wrong, which
    makes h2 a conformance check of the server's frames). Flow control is explicit: with
    `auto_window` every DATA frame's length is granted back at once (stream and connection);
    without it the test calls grant(). `violations` lists every DATA frame beyond the windows we
    granted or larger than our SETTINGS_MAX_FRAME_SIZE.
    """

    def __init__(self, sock: socket.socket, *, settings: dict[int, int] | None = None, auto_window: bool = True,
                 authority: str = "edge.test") -> None:
        import h2.config
        import h2.connection
        import h2.settings
        import hpack

        self.sock = sock
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # as HTTP/2 clients do
        except OSError:
            pass
        self.decoder = hpack.Decoder()  # our own: it sees every header block, also those h2 refused
        self.authority = authority
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
        if settings:
            self.conn.local_settings = h2.settings.Settings(client=True, initial_values=settings)
        self.auto_window = auto_window
        self.initial_window = self.conn.local_settings.initial_window_size
        self.max_frame = self.conn.local_settings.max_frame_size
        self.conn_window = 65_535
        self.windows: dict[int, int] = {}
        self.streams: dict[int, H2Stream] = {}
        self.frames: list = []  # every frame received, in order (hyperframe objects)
        self.goaways: list = []
        self.violations: list[str] = []
        self.h2_ok = True
        self.h2_error: str | None = None
        self.eof = False
        self.send_failed = False
        self._buf = bytearray()
        self._block: tuple[int, bytearray, bool] | None = None  # header block being reassembled

    # -- connection set-up ------------------------------------------------------------------------

    @classmethod
    def connect(cls, server: EdgeProcess, timeout: float = 10.0, **kw) -> H2Client:
        """Prior-knowledge h2c to `server`: preface + SETTINGS sent, nothing read yet."""
        client = cls(server.connect(timeout), **kw)
        client.start()
        return client

    def start(self) -> None:
        """Send the connection preface and our SETTINGS."""
        self.conn.initiate_connection()
        self.flush()

    def upgrade(self, target: str = "/", method: str = "GET", host: str = "edge.test",
                extra: str = "") -> tuple[bytes, H2Stream]:
        """h2c Upgrade: send the HTTP/1.1 request, read the 101 head; returns (101 head, stream 1)."""
        settings = self.conn.initiate_upgrade_connection().decode("ascii")
        preface = self.conn.data_to_send()  # preface + SETTINGS: sent once the 101 arrived
        self.sock.sendall((f"{method} {target} HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade, HTTP2-Settings\r\n"
                           f"Upgrade: h2c\r\nHTTP2-Settings: {settings}\r\n{extra}\r\n").encode("latin-1"))
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"closed during the upgrade: {head!r}")
            head += chunk
        head, _, rest = head.partition(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 101"):
            raise AssertionError(f"no 101: {head!r}")
        self.sock.sendall(preface)
        self.streams[1] = H2Stream(1)
        self.windows[1] = self.initial_window
        self._feed(rest)
        return head + b"\r\n\r\n", self.streams[1]

    # -- sending ----------------------------------------------------------------------------------

    def flush(self) -> None:
        """Write whatever h2 has queued."""
        self.send(self.conn.data_to_send())

    def send(self, data: bytes) -> None:
        """Raw bytes to the server (a server that already hung up is recorded, not raised)."""
        if not data:
            return
        try:
            self.sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            self.send_failed = True

    def send_frames(self, frames) -> None:
        """Serialize hyperframe frames and send them in one write."""
        self.send(b"".join(f.serialize() for f in frames))

    def headers_for(self, target: str, method: str = "GET", headers: dict | list | None = None,
                    authority: str | None = None) -> list[tuple[bytes, bytes]]:
        """Request pseudo-headers plus `headers` (lower-cased names), as bytes."""
        out = [(b":method", method.encode()), (b":scheme", b"http"),
               (b":authority", (authority or self.authority).encode()), (b":path", target.encode("latin-1"))]
        items = headers.items() if isinstance(headers, dict) else (headers or [])
        out += [(k.lower().encode("latin-1") if isinstance(k, str) else k,
                 v.encode("latin-1") if isinstance(v, str) else v) for k, v in items]
        return out

    def request(self, target: str, method: str = "GET", headers: dict | list | None = None, *,
                end_stream: bool = True, raw_headers: list[tuple[bytes, bytes]] | None = None) -> int:
        """Open a stream and send the request head; returns the stream id.

        h2 writes it while h2 follows the connection; `raw_headers` (sent as they are, unchecked) and
        requests after h2 gave up go out as a HEADERS frame built here.
        """
        from hyperframe.frame import HeadersFrame

        if raw_headers is None and self.h2_ok:
            sid = self.conn.get_next_available_stream_id()
            self.conn.send_headers(sid, self.headers_for(target, method, headers), end_stream=end_stream)
            self.flush()
            self.streams[sid] = H2Stream(sid)
            self.windows[sid] = self.initial_window
            return sid
        block = raw_headers if raw_headers is not None else self.headers_for(target, method, headers)
        sid = self.next_raw_sid()
        flags = ["END_HEADERS"] + (["END_STREAM"] if end_stream else [])
        self.send_frames([HeadersFrame(sid, data=self.encode(block), flags=flags)])
        return sid

    def encode(self, headers: list[tuple[bytes, bytes]], huffman: bool = True) -> bytes:
        """An HPACK header block with h2's encoder (its dynamic table stays in step with the server's)."""
        return self.conn.encoder.encode(headers, huffman=huffman)

    def next_raw_sid(self) -> int:
        """A fresh client stream id for frames built by hand (h2 is told, so it never reuses it)."""
        sid = self.conn.get_next_available_stream_id()
        self.conn.highest_outbound_stream_id = sid
        self.streams[sid] = H2Stream(sid)
        self.windows[sid] = self.initial_window
        return sid

    def grant(self, increment: int, sid: int | None = None) -> None:
        """WINDOW_UPDATE for the connection (sid None) or a stream."""
        from hyperframe.frame import WindowUpdateFrame

        if increment <= 0:
            return
        if sid is None:
            self.conn_window += increment
        else:
            if sid in self.streams and self.streams[sid].done:
                return
            self.windows[sid] = self.windows.get(sid, self.initial_window) + increment
        if self.h2_ok:
            try:
                self.conn.increment_flow_control_window(increment, sid)
                self.flush()
                return
            except Exception:  # noqa: BLE001 - h2 no longer tracks the stream: write the frame ourselves
                self.conn.data_to_send()
        self.send_frames([WindowUpdateFrame(sid or 0, window_increment=increment)])

    def reset(self, sid: int, code: int = 8) -> None:
        """RST_STREAM (default CANCEL) from the client."""
        from hyperframe.frame import RstStreamFrame

        self.send_frames([RstStreamFrame(sid, error_code=code)])
        if self.h2_ok:
            try:
                self.conn.reset_stream(sid, code)
            except Exception:  # noqa: BLE001
                pass
            self.conn.data_to_send()  # already written by hand above

    # -- receiving --------------------------------------------------------------------------------

    def pump(self, timeout: float = 5.0) -> bool:
        """Read once (up to `timeout`) and process the complete frames; False on EOF or timeout."""
        if self.eof:
            return False
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(1 << 20)
        except TimeoutError:
            return False
        except (ConnectionResetError, ssl.SSLError, OSError):
            data = b""
        if not data:
            self.eof = True
            return False
        self._feed(data)
        return True

    def wait(self, predicate, timeout: float = 10.0) -> bool:
        """Pump until `predicate()` holds, the server closes, or `timeout` passes."""
        end = time.monotonic() + timeout
        while not predicate():
            left = end - time.monotonic()
            if left <= 0 or self.eof:
                break
            self.pump(min(left, 1.0))
        return bool(predicate())

    def response(self, sid: int, timeout: float = 10.0) -> H2Stream:
        """Wait for stream `sid` to end (or be reset) and return it."""
        stream = self.streams.setdefault(sid, H2Stream(sid))
        if not self.wait(lambda: stream.done, timeout):
            raise AssertionError(f"stream {sid} did not finish: status {stream.status}, {len(stream.body)} bytes, "
                                 f"eof={self.eof}, goaway={self.goaway_info()}")
        return stream

    def closed(self, timeout: float = 10.0) -> bool:
        """True when the server closes the connection within `timeout` (reading and recording frames)."""
        return self.wait(lambda: self.eof, timeout)

    def log(self, last: int = 60) -> str:
        """The last frames received, one short line each (for assertion messages)."""
        lines = []
        for f in self.frames[-last:]:
            extra = {"DataFrame": lambda: f"{f.body_len}B", "GoAwayFrame": lambda: f"last={f.last_stream_id} "
                     f"code={f.error_code}", "RstStreamFrame": lambda: f"code={f.error_code}"}.get(type(f).__name__)
            lines.append(f"{type(f).__name__[:-5]}({f.stream_id}) {','.join(sorted(f.flags))} {extra() if extra else ''}")
        return "\n".join(lines) + f"\neof={self.eof} h2_error={self.h2_error}"

    def goaway_info(self) -> tuple[int, int] | None:
        """(last_stream_id, error_code) of the last GOAWAY received, or None."""
        if not self.goaways:
            return None
        g = self.goaways[-1]
        return g.last_stream_id, g.error_code

    def _feed(self, data: bytes) -> None:
        from hyperframe.frame import Frame

        buf = self._buf
        buf += data
        while len(buf) >= 9:
            length = int.from_bytes(buf[:3], "big")
            if len(buf) < 9 + length:
                break
            raw = bytes(buf[:9 + length])
            del buf[:9 + length]
            frame, _ = Frame.parse_frame_header(memoryview(raw[:9]))
            frame.parse_body(memoryview(raw[9:]))
            self._frame(frame, raw)

    def _frame(self, frame, raw: bytes) -> None:
        from hyperframe.frame import (
            ContinuationFrame,
            DataFrame,
            GoAwayFrame,
            HeadersFrame,
            PingFrame,
            RstStreamFrame,
            SettingsFrame,
        )
        self.frames.append(frame)
        if self.h2_ok:
            try:
                self.conn.receive_data(raw)
                self.flush()  # SETTINGS and PING acknowledgements
            except Exception as e:  # noqa: BLE001 - from here on the frames speak for themselves
                self.h2_ok = False
                self.h2_error = f"{type(e).__name__}: {e} (on {frame!r})"
                self.conn.data_to_send()
        sid = frame.stream_id
        kind = type(frame)
        if kind is DataFrame:
            stream = self.streams.setdefault(sid, H2Stream(sid))
            stream.body += frame.data
            stream.data_frames += 1
            n = frame.flow_controlled_length
            if frame.body_len > self.max_frame:
                self.violations.append(f"DATA of {frame.body_len} bytes on stream {sid} > max frame {self.max_frame}")
            self.conn_window -= n
            self.windows[sid] = self.windows.get(sid, self.initial_window) - n
            if self.conn_window < 0 or self.windows[sid] < 0:
                self.violations.append(f"DATA of {n} bytes on stream {sid} beyond the window "
                                       f"(connection {self.conn_window + n}, stream {self.windows[sid] + n})")
            if "END_STREAM" in frame.flags:
                stream.ended = True
            if self.auto_window and n:
                self.grant(n)
                if not stream.ended:
                    self.grant(n, sid)
        elif kind in (HeadersFrame, ContinuationFrame):
            stream = self.streams.setdefault(sid, H2Stream(sid))
            if kind is HeadersFrame:
                self._block = (sid, bytearray(frame.data), "END_STREAM" in frame.flags)
            elif self._block is not None:
                self._block[1].extend(frame.data)
            if "END_HEADERS" in frame.flags and self._block is not None:
                _, block, end = self._block
                self._block = None
                self._headers(stream, self.decoder.decode(bytes(block), raw=True), end)
        elif kind is RstStreamFrame:
            self.streams.setdefault(sid, H2Stream(sid)).reset = frame.error_code
        elif kind is GoAwayFrame:
            self.goaways.append(frame)
        elif kind is SettingsFrame and not self.h2_ok and "ACK" not in frame.flags:
            self.send(SettingsFrame(0, flags=["ACK"]).serialize())
        elif kind is PingFrame and not self.h2_ok and "ACK" not in frame.flags:
            self.send(PingFrame(0, opaque_data=frame.opaque_data, flags=["ACK"]).serialize())

    @staticmethod
    def _headers(stream: H2Stream, headers: list, end: bool) -> None:
        fields: dict[str, str] = {}
        for name, value in headers:
            key = (name.decode("latin-1") if isinstance(name, bytes) else name).lower()
            val = value.decode("latin-1") if isinstance(value, bytes) else value
            fields[key] = fields[key] + ", " + val if key in fields else val
        status = int(fields.pop(":status", "0") or 0)
        if 100 <= status < 200:
            stream.informational.append(fields)
        elif stream.status is None:
            stream.status = status
            stream.headers = fields
        if end:
            stream.ended = True

    def close(self) -> None:
        """Close the socket."""
        self.sock.close()


def h2_get(server: EdgeProcess, target: str, headers: dict | None = None, method: str = "GET",
           timeout: float = 10.0) -> H2Stream:
    """One request on a fresh prior-knowledge h2c connection; returns the finished stream."""
    client = H2Client.connect(server)
    try:
        sid = client.request(target, method, headers)
        stream = client.response(sid, timeout)
        assert client.h2_error is None, client.h2_error
        assert not client.violations, client.violations
        return stream
    finally:
        client.close()


def parse_byteranges(body: bytes, content_type: str) -> list[tuple[int, int, int, str, bytes]]:
    """Parse a multipart/byteranges body: [(first, last, size, part content-type, data), ...]."""
    m = re.search(r'boundary=(?:"([^"]+)"|([^;\s]+))', content_type)
    assert m, content_type
    delim = b"--" + (m.group(1) or m.group(2)).encode("latin-1")
    pos = body.index(delim) + len(delim)
    assert body[:pos - len(delim)].strip() == b"", "unexpected preamble"
    parts = []
    while True:
        if body[pos:pos + 2] == b"--":
            assert body[pos + 2:].strip() == b"", "unexpected epilogue"
            break
        assert body[pos:pos + 2] == b"\r\n", body[pos:pos + 40]
        pos += 2
        end = body.index(b"\r\n\r\n", pos)
        headers = {}
        for line in body[pos:end].decode("latin-1").split("\r\n"):
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        pos = end + 4
        cr = re.fullmatch(r"bytes (\d+)-(\d+)/(\d+)", headers["content-range"])
        assert cr, headers
        first, last, size = (int(x) for x in cr.groups())
        data = body[pos:pos + last - first + 1]
        pos += last - first + 1
        assert body[pos:pos + 2 + len(delim)] == b"\r\n" + delim, body[pos:pos + 60]
        pos += 2 + len(delim)
        parts.append((first, last, size, headers.get("content-type", ""), data))
    return parts
