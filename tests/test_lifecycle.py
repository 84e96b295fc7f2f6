"""Process lifecycle: graceful SIGTERM drain, SIGINT, the start-up line, --version, scripts/serve."""

from __future__ import annotations

import hashlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

import edge as edge_pkg
from conftest import STARTUP, Client, finish_download, request

REPO = Path(__file__).resolve().parent.parent
MIB = 1 << 20


def slow_client(server, target: str) -> tuple[socket.socket, int, bytes]:
    """Start downloading `target` with a small receive buffer; returns (socket, Content-Length, body so far)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32768)
    sock.settimeout(20)
    sock.connect((server.host, server.port))
    sock.sendall(f"GET {target} HTTP/1.1\r\nHost: edge.test\r\n\r\n".encode())
    buf = b""
    while b"\r\n\r\n" not in buf or len(buf) < 512 * 1024:
        chunk = sock.recv(65536)
        assert chunk, "closed early"
        buf += chunk
    head, _, body = buf.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    length = int(re.search(rb"(?im)^content-length:\s*(\d+)", head).group(1))
    return sock, length, body


def refused(server) -> bool:
    """True when a new connection is refused, or accepted and closed without an answer."""
    try:
        sock = socket.create_connection((server.host, server.port), timeout=3)
    except OSError:
        return True
    try:
        sock.settimeout(3)
        try:
            sock.sendall(b"GET /hello.txt HTTP/1.1\r\nHost: x\r\n\r\n")
            data = sock.recv(65536)
        except (ConnectionError, OSError):
            return True
        return data == b""
    finally:
        sock.close()


def test_sigterm_drains_an_in_flight_download_then_exits_0(edge, www: Path):
    data = os.urandom(64 * MIB)
    (www / "64m.bin").write_bytes(data)
    server = edge()
    sock, length, body = slow_client(server, "/64m.bin")
    assert length == len(data)
    assert len(body) < length, "the download should still be in flight when the signal arrives"

    server.proc.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    assert server.alive(), "the server exited with a download in flight"
    assert refused(server), "a new connection was served after SIGTERM"

    got, digest = finish_download(sock, body, length, pause=0.001)  # still a slow reader
    # After the response, the server closes the connection (it is draining).
    sock.settimeout(10)
    try:
        tail = sock.recv(1)
    except ConnectionResetError:
        tail = b""
    sock.close()
    assert got == length, f"the drained download ended after {got} of {length} bytes"
    assert digest == hashlib.sha256(data).digest()
    assert tail == b"", "the server sent more after the response while draining"
    assert server.proc.wait(20) == 0


def test_sigterm_closes_idle_keepalive_connections_and_exits_0(server):
    client = Client(server.connect())
    client.send(b"GET /hello.txt HTTP/1.1\r\nHost: x\r\n\r\n")
    status, _, body = client.response()
    assert status == 200 and body == b"hello world\n"
    server.proc.send_signal(signal.SIGTERM)
    assert client.closed(10), "an idle keep-alive connection was kept open during shutdown"
    client.close()
    # Idle connections do not hold the process for shutdown_timeout (30 s).
    assert server.proc.wait(10) == 0


def test_sigint_on_idle_server_exits_0(server):
    assert request(server, "/hello.txt")[0] == 200
    assert server.stop(signal.SIGINT, timeout=10) == 0
    err = server.stderr()
    assert "Traceback" not in err, err


def test_startup_line_names_address_root_and_workers(www: Path):
    proc = subprocess.Popen([sys.executable, "-m", "edge.cli", "serve", "--root", str(www), "--host", "127.0.0.1",
                             "--port", "0", "--workers", "1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        line = proc.stdout.readline()
        m = STARTUP.search(line)
        assert m, line
        assert m.group(1) == "127.0.0.1"
        port = int(m.group(2))
        assert port > 0
        assert str(www.resolve()) in line or str(www) in line, line
        assert re.search(r"workers[=: ]\s*\d+", line), line
        assert line.endswith("\n") and "\n" not in line[:-1]
        # The address it prints is the one it serves on.
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            client = Client(sock)
            client.send(b"GET /hello.txt HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            assert client.response()[0] == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0


def test_version():
    edge_bin = Path(sys.executable).parent / "edge"
    cmd = [str(edge_bin)] if edge_bin.exists() else [sys.executable, "-m", "edge.cli"]
    out = subprocess.run([*cmd, "--version"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"edge {edge_pkg.__version__}"
    assert re.fullmatch(r"edge \d+\.\d+\.\d+\S*", out.stdout.strip())


def test_scripts_serve_serves_a_file(tmp_path: Path):
    script = REPO / "scripts" / "serve"
    if not script.exists():
        pytest.skip("scripts/serve is absent")
    if not (REPO / ".venv" / "bin" / "edge").exists():
        pytest.skip("scripts/serve would install edge into .venv first (slow)")
    root = tmp_path / "site"
    root.mkdir()
    (root / "page.txt").write_text("served by scripts/serve\n")
    proc = subprocess.Popen([str(script), "--port", "0", "--host", "127.0.0.1", "--root", str(root)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    try:
        line = proc.stdout.readline()
        m = STARTUP.search(line)
        assert m, (line, proc.stderr.read() if proc.poll() is not None else "")
        with socket.create_connection((m.group(1), int(m.group(2))), timeout=5) as sock:
            client = Client(sock)
            client.send(b"GET /page.txt HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            status, headers, body = client.response()
        assert status == 200
        assert body == b"served by scripts/serve\n"
        assert headers["content-type"].startswith("text/plain")
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        code = proc.wait(10)
    assert code == 0
