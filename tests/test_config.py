"""Configuration: `edge check-config`, one-line errors naming the key (exit 2), CLI flags over the file."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import STARTUP, Client, request

REPO = Path(__file__).resolve().parent.parent
EDGE = [sys.executable, "-m", "edge.cli"]


def run(*args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run([*EDGE, *args], capture_output=True, text=True, timeout=timeout)


def assert_one_line_error(out: subprocess.CompletedProcess, key: str) -> str:
    """Exit status 2 and exactly one line on stderr naming `key`; returns that line."""
    assert out.returncode == 2, (out.returncode, out.stdout, out.stderr)
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got: {out.stderr!r}"
    assert key in lines[0], f"{key!r} not named in {lines[0]!r}"
    assert "Traceback" not in out.stderr
    return lines[0]


def full_config(root: Path, log: Path) -> str:
    return f"""\
root = "{root}"
host = "127.0.0.1"
port = 8080
workers = "auto"
header_timeout = 10.0
keepalive_timeout = 75
send_timeout = 60.0
shutdown_timeout = 30
access_log = "{log}"
follow_symlinks = "inside-root"
serve_dotfiles = false
index = "index.html"
server_name = "edge"

[file_cache]
max_entries = 10000
valid = 1.0
inline_max = 16384

[[headers]]
match = "/assets/*"
set = {{ "Cache-Control" = "public, max-age=31536000, immutable" }}

[[headers]]
match = "/*.html"
set = {{ "Cache-Control" = "no-cache", "X-Frame-Options" = "DENY" }}
"""


def test_check_config_accepts_a_full_valid_file(tmp_path: Path, www: Path):
    cfg = tmp_path / "full.toml"
    cfg.write_text(full_config(www, tmp_path / "access.log"))
    out = run("check-config", str(cfg))
    assert out.returncode == 0, out.stderr
    assert out.stderr == ""


def test_full_valid_file_also_serves(tmp_path: Path, www: Path, edge):
    cfg = tmp_path / "full.toml"
    cfg.write_text(full_config(www, tmp_path / "access.log"))
    server = edge(config=cfg)  # conftest's --port 0 --host 127.0.0.1 --workers 1 override the file
    status, headers, body = request(server, "/index.html")
    assert status == 200 and body == b"<h1>home</h1>\n"
    assert headers["cache-control"] == "no-cache"
    assert headers["x-frame-options"] == "DENY"


BAD = [
    ("unknown top-level key", 'colour = "blue"\n', "colour"),
    ("unknown key in [file_cache]", "[file_cache]\nmax_entries = 10\nbogus_size = 3\n", "bogus_size"),
    ("port not a number", 'port = "x"\n', "port"),
    ("port out of range", "port = 70000\n", "port"),
    ("workers zero", "workers = 0\n", "workers"),
    ("workers word", 'workers = "many"\n', "workers"),
    ("negative header_timeout", "header_timeout = -1\n", "header_timeout"),
    ("keepalive_timeout not a number", 'keepalive_timeout = "long"\n', "keepalive_timeout"),
    ("follow_symlinks bad choice", 'follow_symlinks = "sometimes"\n', "follow_symlinks"),
    ("serve_dotfiles string", 'serve_dotfiles = "yes"\n', "serve_dotfiles"),
    ("file_cache.max_entries zero", "[file_cache]\nmax_entries = 0\n", "max_entries"),
    ("file_cache.valid negative", "[file_cache]\nvalid = -0.5\n", "valid"),
    ("header name with a space", '[[headers]]\nmatch = "/*"\nset = { "Bad Name" = "x" }\n', "headers"),
    ("header name with a colon", '[[headers]]\nmatch = "/*"\nset = { "X-A:b" = "x" }\n', "headers"),
    ("header value with a newline", '[[headers]]\nmatch = "/*"\nset = { "X-Ok" = "a\\nInjected: 1" }\n', "headers"),
    ("unknown key in [[headers]]", '[[headers]]\nmatch = "/*"\nset = { "X-Ok" = "a" }\nextra = 1\n', "extra"),
    ("root not a directory", 'root = "/nonexistent/edge-root"\n', "root"),
]


@pytest.mark.parametrize("text,key", [(t, k) for _, t, k in BAD], ids=[name for name, _, _ in BAD])
def test_check_config_rejects_with_one_line_naming_the_key(tmp_path: Path, text: str, key: str):
    cfg = tmp_path / "bad.toml"
    cfg.write_text(text)
    out = run("check-config", str(cfg))
    assert_one_line_error(out, key)
    assert "ok" not in out.stdout


def test_check_config_rejects_invalid_toml(tmp_path: Path):
    cfg = tmp_path / "broken.toml"
    cfg.write_text('port = 8080\nroot = "unterminated\n')
    out = run("check-config", str(cfg))
    line = assert_one_line_error(out, str(cfg))
    assert "line 2" in line, line  # where the syntax error is


def test_check_config_missing_file(tmp_path: Path):
    out = run("check-config", str(tmp_path / "nope.toml"))
    assert_one_line_error(out, "nope.toml")


def test_serve_rejects_bad_config_file_before_listening(tmp_path: Path, www: Path):
    cfg = tmp_path / "bad.toml"
    cfg.write_text("[file_cache]\nbogus = 1\n")
    out = run("serve", "--root", str(www), "--host", "127.0.0.1", "--port", "0", "--config", str(cfg))
    assert_one_line_error(out, "bogus")
    assert out.stdout == "", "the server started despite a bad config"


@pytest.mark.parametrize("flag,value,key", [
    ("--workers", "abc", "workers"),
    ("--workers", "0", "workers"),
    ("--header-timeout", "-1", "header_timeout"),
    ("--keepalive-timeout", "-5", "keepalive_timeout"),
])
def test_serve_rejects_bad_flag_value(www: Path, flag: str, value: str, key: str):
    out = run("serve", "--root", str(www), "--host", "127.0.0.1", "--port", "0", flag, value)
    assert_one_line_error(out, key)
    assert out.stdout == ""


def test_serve_rejects_non_numeric_port_flag(www: Path):
    out = run("serve", "--root", str(www), "--host", "127.0.0.1", "--port", "abc")
    assert out.returncode == 2
    assert "port" in out.stderr
    assert out.stdout == ""


@pytest.mark.parametrize("kind", ["missing", "file"])
def test_serve_root_not_a_directory(tmp_path: Path, kind: str):
    root = tmp_path / "nothing-here"
    if kind == "file":
        root.write_text("not a directory\n")
    out = run("serve", "--root", str(root), "--host", "127.0.0.1", "--port", "0")
    assert_one_line_error(out, "root")
    assert out.stdout == ""


def test_cli_flags_override_the_file(tmp_path: Path, www: Path, edge):
    cfg = tmp_path / "edge.toml"
    cfg.write_text('port = 1\nheader_timeout = 99\nserver_name = "from-file"\n')
    server = edge("--header-timeout", "1", config=cfg)
    assert server.port not in (0, 1), "the file's port won over --port 0"
    status, headers, _ = request(server, "/hello.txt")
    assert status == 200
    assert headers["server"] == "from-file"  # keys without a flag still come from the file
    # --header-timeout 1 beats the file's 99: a half-sent head is answered 408 within seconds.
    client = Client(server.connect(timeout=15))
    try:
        client.send(b"GET /hello.txt HTTP/1.1\r\nHost: x\r\n")
        started = time.monotonic()
        status, _, _ = client.response()
        assert status == 408
        assert time.monotonic() - started < 10, "the file's header_timeout (99 s) was used"
    finally:
        client.close()


def test_file_values_apply_without_flags(tmp_path: Path, www: Path):
    cfg = tmp_path / "edge.toml"
    cfg.write_text(f'root = "{www}"\nhost = "127.0.0.1"\nport = 0\nworkers = 1\n')
    proc = subprocess.Popen([*EDGE, "serve", "--config", str(cfg)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        m = STARTUP.search(line)
        assert m, (line, proc.stderr.read() if proc.poll() is not None else "")
        assert m.group(1) == "127.0.0.1"
        assert str(www) in line
        with socket.create_connection((m.group(1), int(m.group(2))), timeout=5) as sock:
            client = Client(sock)
            client.send(b"GET /hello.txt HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            status, _, body = client.response()
        assert status == 200 and body == b"hello world\n"
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        proc.wait(10)


def test_shipped_example_config_passes(tmp_path: Path):
    example = REPO / "conf" / "edge.toml"
    if not example.exists():
        pytest.skip("conf/edge.toml is not there yet")
    out = run("check-config", str(example))
    if out.returncode == 2 and "root: not a directory" in out.stderr:
        # The example may name a production root such as /var/www; validate everything else.
        text = re.sub(r'(?m)^root\s*=.*$', f'root = "{tmp_path}"', example.read_text())
        copy = tmp_path / "edge.toml"
        copy.write_text(text)
        out = run("check-config", str(copy))
    assert out.returncode == 0, out.stderr
