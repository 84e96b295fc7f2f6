"""Configuration: `edge check-config`, one-line errors naming the key (exit 2), CLI flags over the file."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from conftest import STARTUP, Client, EdgeProcess, request
from edge.config import MAX_WORKERS, Config, ConfigError, from_mapping

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


# -- cpu_affinity and the workers cap ---------------------------------------------------------------


def _sets(*groups: tuple[int, ...]) -> tuple[frozenset[int], ...]:
    """cpu_affinity's parsed form: a tuple of CPU sets."""
    return tuple(frozenset(g) for g in groups)


@pytest.mark.parametrize("value, parsed", [
    ("auto", "auto"),
    ("off", "off"),
    (["0", "1", "2-3"], _sets((0,), (1,), (2, 3))),
    ([0, 1, 5], _sets((0,), (1,), (5,))),
    ([0, "4-7", "1,3"], _sets((0,), (4, 5, 6, 7), (1, 3))),
    ("0 1 2-3", _sets((0,), (1,), (2, 3))),
    ("  0,2   4-5\n", _sets((0, 2), (4, 5))),
    ("3", _sets((3,))),
    (["0", "0"], _sets((0,), (0,))),  # the same set twice: two workers share it
])
def test_cpu_affinity_accepted_forms(value: object, parsed: object) -> None:
    """cpu_affinity takes auto, off, an array of CPU lists or numbers, or one space-separated string."""
    config = from_mapping({"cpu_affinity": value})
    assert config.cpu_affinity == parsed
    if isinstance(parsed, tuple):
        assert all(isinstance(s, frozenset) for s in config.cpu_affinity)


def test_cpu_affinity_defaults_to_auto() -> None:
    """Without the key, workers are pinned one per CPU."""
    assert Config().cpu_affinity == "auto"
    assert from_mapping({}).cpu_affinity == "auto"


@pytest.mark.parametrize("value", [
    "", "   ", [], "bogus", "Auto", "auto off", "3-1", "0-", ["0", "x"], [""], [-1], [True], [1.5], [None],
    [[0, 1]], 5, 1.0, True, {"cpus": "0"}, None,
])
def test_cpu_affinity_bad_values_name_the_key(value: object) -> None:
    """Every malformed cpu_affinity is a ConfigError whose message starts with the key."""
    with pytest.raises(ConfigError) as caught:
        from_mapping({"cpu_affinity": value})
    assert str(caught.value).startswith("cpu_affinity: "), str(caught.value)


@pytest.mark.parametrize("value", [1, 1024, "1024", "auto"])
def test_workers_up_to_the_cap(value: object) -> None:
    """workers accepts 1 to 1024 (as a number or a digit string from the CLI) and auto."""
    expected = value if value == "auto" else int(value)
    assert from_mapping({"workers": value}).workers == expected
    assert MAX_WORKERS == 1024


@pytest.mark.parametrize("value", [1025, "1025", 10**6, -1])
def test_workers_above_the_cap_rejected(value: object) -> None:
    """More than 1024 workers is a ConfigError naming workers and the cap."""
    with pytest.raises(ConfigError, match=r"^workers: .*1024"):
        from_mapping({"workers": value})


def test_workers_superscript_digit_is_a_config_error() -> None:
    """A string str.isdigit() accepts but int() does not ('²') must still be a ConfigError naming workers."""
    with pytest.raises(ConfigError, match="^workers: "):
        from_mapping({"workers": "²"})


CPU_AFFINITY_FILES = [
    ('cpu_affinity = "off"\n', True),
    ('cpu_affinity = ["0", "1-2"]\n', True),
    ('cpu_affinity = "0 1"\n', True),
    ("cpu_affinity = [0, 1]\n", True),
    ('cpu_affinity = ["1-"]\n', False),
    ("cpu_affinity = []\n", False),
    ("cpu_affinity = 3\n", False),
    ("workers = 1025\n", False),
]


@pytest.mark.parametrize("text, ok", CPU_AFFINITY_FILES, ids=[t.strip() for t, _ in CPU_AFFINITY_FILES])
def test_check_config_cpu_affinity_and_workers_cap(tmp_path: Path, text: str, ok: bool) -> None:
    """check-config accepts the cpu_affinity forms and rejects bad ones (and workers > 1024) in one line."""
    cfg = tmp_path / "edge.toml"
    cfg.write_text(text)
    out = run("check-config", str(cfg))
    if ok:
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == f"{cfg}: ok"
    else:
        assert_one_line_error(out, text.split()[0])
        assert out.stdout == ""


@pytest.mark.parametrize("flag, value, key", [
    ("--cpu-affinity", "bogus", "cpu_affinity"),
    ("--cpu-affinity", "", "cpu_affinity"),
    ("--cpu-affinity", "2-1", "cpu_affinity"),
    ("--workers", "1025", "workers"),
])
def test_serve_rejects_bad_cpu_affinity_and_workers_flags(www: Path, flag: str, value: str, key: str) -> None:
    """Bad --cpu-affinity / --workers values exit 2 with one line naming the key, before listening."""
    out = run("serve", "--root", str(www), "--host", "127.0.0.1", "--port", "0", flag, value)
    line = assert_one_line_error(out, key)
    assert line.startswith(f"edge: {key}: "), line
    assert out.stdout == ""


def test_serve_rejects_a_cpu_it_may_not_use(www: Path) -> None:
    """--cpu-affinity naming a CPU outside the affinity mask exits 2, naming cpu_affinity and that CPU."""
    cpu = max(os.sched_getaffinity(0)) + 1000
    out = run("serve", "--root", str(www), "--host", "127.0.0.1", "--port", "0", "--workers", "1",
              "--cpu-affinity", str(cpu))
    line = assert_one_line_error(out, "cpu_affinity")
    assert f"CPU {cpu} " in line, line
    assert out.stdout == ""


def test_cpu_affinity_flag_pins_the_worker(tmp_path: Path, edge: Callable[..., EdgeProcess]) -> None:
    """--cpu-affinity N reaches the config and the worker runs on CPU N only, even over the file's "off"."""
    cpu = max(os.sched_getaffinity(0))
    cfg = tmp_path / "edge.toml"
    cfg.write_text('cpu_affinity = "off"\n')
    server = edge("--cpu-affinity", str(cpu), config=cfg)
    workers = server.worker_pids()
    assert len(workers) == 1, workers
    assert os.sched_getaffinity(workers[0]) == {cpu}
    assert request(server, "/hello.txt")[0] == 200


def test_cpu_affinity_off_leaves_the_worker_unpinned(edge: Callable[..., EdgeProcess]) -> None:
    """--cpu-affinity off: the worker keeps the whole affinity mask it inherited."""
    server = edge("--cpu-affinity", "off")
    workers = server.worker_pids()
    assert len(workers) == 1, workers
    assert os.sched_getaffinity(workers[0]) == os.sched_getaffinity(0)
    assert request(server, "/hello.txt")[0] == 200


# -- HTTP/2, push, early hints, TLS, steering ------------------------------------------------------


def test_push_table_and_http2_limits_parse() -> None:
    config = from_mapping({"push": {"/index.html": ["/a.css", "/b.js"], "max_per_request": 2},
                           "http2": {"max_requests": 50, "reset_rate": 5, "stall_timeout": 1.5},
                           "early_hints": True, "incoming_cpu": False})
    assert config.push.pages == (("/index.html", ("/a.css", "/b.js")),)
    assert config.push.max_per_request == 2
    assert config.http2.max_requests == 50 and config.http2.reset_rate == 5.0 and config.http2.stall_timeout == 1.5
    assert config.http2.max_concurrent_streams == 128  # untouched keys keep their defaults
    assert config.early_hints is True and config.incoming_cpu is False


@pytest.mark.parametrize("data, key", [
    ({"push": {"index.html": ["/a.css"]}}, "push.index.html"),
    ({"push": {"/i.html": "/a.css"}}, 'push."/i.html"'),
    ({"push": {"/i.html": ["//evil.example/a.js"]}}, 'push."/i.html"'),
    ({"push": {"/i.html": ["https://x/a.js"]}}, 'push."/i.html"'),
    ({"push": {"max_per_request": -1}}, "push.max_per_request"),
    ({"http2": {"max_requests": 0}}, "http2.max_requests"),
    ({"http2": {"reset_rate": "fast"}}, "http2.reset_rate"),
    ({"http2": {"max_streams": 5}}, "http2.max_streams"),
    ({"http2": []}, "http2"),
    ({"early_hints": "yes"}, "early_hints"),
    ({"incoming_cpu": 1}, "incoming_cpu"),
    ({"tls": {"port": 70000}}, "tls.port"),
    ({"tls": {"ca": "x"}}, "tls.ca"),
])
def test_protocol_keys_reject_bad_values_naming_the_key(data: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=f"^{re.escape(key)}"):
        from_mapping(data)


def test_tls_needs_port_cert_and_key_together(www: Path, tmp_path: Path) -> None:
    out = run("serve", "--root", str(www), "--port", "0", "--tls-port", "0")
    assert_one_line_error(out, "tls")
    missing = tmp_path / "nope.pem"
    out = run("serve", "--root", str(www), "--port", "0", "--tls-port", "0", "--tls-cert", str(missing),
              "--tls-key", str(missing))
    line = assert_one_line_error(out, "tls")
    assert "nope.pem" in line
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    out = run("serve", "--root", str(www), "--port", "0", "--tls-port", "0", "--tls-cert", str(junk),
              "--tls-key", str(junk))
    assert_one_line_error(out, "tls")


# -- origin pull: [[origin]], [cache], [health], [proxy], parse_size, default_cache_dir ----------------

import edge.config as config_module  # noqa: E402
from edge.cli import _overrides, _parser  # noqa: E402
from edge.config import (CacheConfig, HealthConfig, Origin, ProxyConfig, default_cache_dir, load,  # noqa: E402
                         parse_size)


@pytest.fixture
def no_system_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """load() with origins and no cache.dir asks default_cache_dir(): point it at tmp (never /var/cache/edge)."""
    where = tmp_path / "default-cache"
    monkeypatch.setattr(config_module, "default_cache_dir", lambda: str(where))
    return where


def _load_text(tmp_path: Path, text: str, overrides: dict | None = None) -> Config:
    cfg = tmp_path / "edge.toml"
    cfg.write_text(f'root = "{tmp_path}"\n' + text)
    return load(str(cfg), overrides)


def test_origin_pull_defaults_when_nothing_is_configured(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No file, no flags: no origins, no cache dir chosen (default_cache_dir is not even asked), stock values."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(config_module, "default_cache_dir", lambda: pytest.fail("asked for a cache dir"))
    config = load(None)
    assert config.origins == ()
    assert config.cache == CacheConfig(dir=None, max_size=10 << 30, default_ttl=60.0, query="keep")
    assert config.health == HealthConfig(path="/healthz", interval=5.0, timeout=2.0, rise=2, fall=3, failures=5,
                                         cooldown=10.0)
    assert config.proxy == ProxyConfig(connect_timeout=2.0, read_timeout=10.0, max_connections=64,
                                       forward_headers=())
    assert from_mapping({}) == Config()


def test_origin_tables_parse_with_weight_and_host_header(tmp_path: Path) -> None:
    """[[origin]] tables keep their order, weight defaults to 1, host_header to None, a trailing '/' goes."""
    config = _load_text(tmp_path, f"""
[[origin]]
url = "http://10.0.0.1:8080"
weight = 3
host_header = "assets.example.com"

[[origin]]
url = "https://origin-b.example/"

[cache]
dir = "{tmp_path / 'cache'}"
""")
    assert config.origins == (Origin("http://10.0.0.1:8080", 3, "assets.example.com"),
                              Origin("https://origin-b.example", 1, None))


def test_cache_health_proxy_tables_parse(tmp_path: Path) -> None:
    """Every key of [cache], [health] and [proxy] reaches the config; forward_headers are lower-cased."""
    config = _load_text(tmp_path, f"""
[cache]
dir = "{tmp_path / 'c'}"
max_size = "512M"
default_ttl = 0
query = ["id", "v"]

[health]
path = "/ping"
interval = 1.5
timeout = 0.5
rise = 1
fall = 4
failures = 7
cooldown = 2

[proxy]
connect_timeout = 0.5
read_timeout = 30
max_connections = 8
forward_headers = ["Accept-Language", "X-Request-Id"]
""")
    assert config.cache == CacheConfig(str(tmp_path / "c"), 512 << 20, 0.0, ("id", "v"))
    assert config.health == HealthConfig("/ping", 1.5, 0.5, 1, 4, 7, 2.0)
    assert config.proxy == ProxyConfig(0.5, 30.0, 8, ("accept-language", "x-request-id"))
    assert isinstance(config.health.cooldown, float) and isinstance(config.proxy.read_timeout, float)


def test_health_failure_statuses_default_empty_and_parse(tmp_path: Path) -> None:
    """No status counts against an origin by default; listed 5xx codes are kept once each, sorted."""
    assert from_mapping({}).health.failure_statuses == ()
    config = _load_text(tmp_path, "[health]\nfailure_statuses = [504, 502, 503, 502]\n")
    assert config.health.failure_statuses == (502, 503, 504)
    assert _load_text(tmp_path, "[health]\nfailure_statuses = []\n").health.failure_statuses == ()
    # A flag that sets another [health] field keeps the file's list.
    config = _load_text(tmp_path, "[health]\nfailure_statuses = [500]\n", {"health": {"path": "/ping"}})
    assert config.health.failure_statuses == (500,) and config.health.path == "/ping"


@pytest.mark.parametrize("query", ["keep", "ignore"])
def test_cache_query_keywords(query: str) -> None:
    assert from_mapping({"cache": {"query": query}}).cache.query == query


def test_origin_flags_via_load_replace_the_files_origins(tmp_path: Path, no_system_cache: Path) -> None:
    """overrides["origins"] (repeated --origin) are URLs of weight 1; they replace the file's [[origin]] tables."""
    config = _load_text(tmp_path, '[[origin]]\nurl = "http://from-file"\nweight = 5\nhost_header = "h"\n',
                        {"origins": ["http://a:81", "https://b/"]})
    assert config.origins == (Origin("http://a:81", 1, None), Origin("https://b", 1, None))
    assert config.cache.dir == str(no_system_cache)


def test_origin_flags_through_the_cli_parser(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                             no_system_cache: Path) -> None:
    """`--origin` is repeatable and lands in overrides["origins"], which load() turns into Origins."""
    args = _parser().parse_args(["serve", "--origin", "http://a", "--origin", "http://b:8080"])
    overrides = _overrides(args)
    assert overrides["origins"] == ["http://a", "http://b:8080"]
    monkeypatch.chdir(tmp_path)
    assert load(None, overrides).origins == (Origin("http://a"), Origin("http://b:8080"))
    assert "origins" not in _overrides(_parser().parse_args(["serve"]))


BAD_ORIGIN_PULL = [
    ("url scheme ftp", {"origin": [{"url": "ftp://x"}]}, "origin[0].url"),
    ("url without scheme", {"origin": [{"url": "example.com"}]}, "origin[0].url"),
    ("url without host", {"origin": [{"url": "http://"}]}, "origin[0].url"),
    ("url missing", {"origin": [{"weight": 2}]}, "origin[0].url"),
    ("second url bad", {"origin": [{"url": "http://a"}, {"url": "gopher://b"}]}, "origin[1].url"),
    ("cli url bad scheme", {"origins": ["http://a", "ws://b"]}, "origin[1].url"),
    ("weight 0", {"origin": [{"url": "http://a", "weight": 0}]}, "origin[0].weight"),
    ("weight negative", {"origin": [{"url": "http://a", "weight": -2}]}, "origin[0].weight"),
    ("weight float", {"origin": [{"url": "http://a", "weight": 1.5}]}, "origin[0].weight"),
    ("weight over 100", {"origin": [{"url": "http://a", "weight": 101}]}, "origin[0].weight"),
    ("host_header not a string", {"origin": [{"url": "http://a", "host_header": 5}]}, "origin[0].host_header"),
    ("unknown key in [[origin]]", {"origin": [{"url": "http://a", "wieght": 2}]}, "origin[0].wieght"),
    ("origin not a table", {"origin": [5]}, "origin[0]"),
    ("origin empty array", {"origin": []}, "origin"),
    ("same origin twice", {"origin": [{"url": "http://a/"}, {"url": "http://a"}]}, "origin"),
    ("unknown key in [cache]", {"cache": {"size": "1G"}}, "cache.size"),
    ("cache not a table", {"cache": "big"}, "cache"),
    ("cache dir not a string", {"cache": {"dir": 1}}, "cache.dir"),
    ("bad size string", {"cache": {"max_size": "10X"}}, "cache.max_size"),
    ("size garbage", {"cache": {"max_size": "lots"}}, "cache.max_size"),
    ("size negative", {"cache": {"max_size": "-1G"}}, "cache.max_size"),
    ("size negative int", {"cache": {"max_size": -1}}, "cache.max_size"),
    ("size float", {"cache": {"max_size": 1.5}}, "cache.max_size"),
    ("size bool", {"cache": {"max_size": True}}, "cache.max_size"),
    ("ttl negative", {"cache": {"default_ttl": -1}}, "cache.default_ttl"),
    ("ttl string", {"cache": {"default_ttl": "60s"}}, "cache.default_ttl"),
    ("query rule word", {"cache": {"query": "all"}}, "cache.query"),
    ("query rule empty list", {"cache": {"query": []}}, "cache.query"),
    ("query rule empty name", {"cache": {"query": [""]}}, "cache.query"),
    ("query rule not strings", {"cache": {"query": [1]}}, "cache.query"),
    ("query rule bool", {"cache": {"query": True}}, "cache.query"),
    ("unknown key in [health]", {"health": {"url": "/x"}}, "health.url"),
    ("health path relative", {"health": {"path": "healthz"}}, "health.path"),
    ("health path with space", {"health": {"path": "/a b"}}, "health.path"),
    ("rise 0", {"health": {"rise": 0}}, "health.rise"),
    ("fall 0", {"health": {"fall": 0}}, "health.fall"),
    ("failures 0", {"health": {"failures": 0}}, "health.failures"),
    ("interval too small", {"health": {"interval": 0}}, "health.interval"),
    ("timeout negative", {"health": {"timeout": -1}}, "health.timeout"),
    ("cooldown string", {"health": {"cooldown": "10s"}}, "health.cooldown"),
    ("failure_statuses not a list", {"health": {"failure_statuses": 502}}, "health.failure_statuses"),
    ("failure_statuses 4xx", {"health": {"failure_statuses": [502, 404]}}, "health.failure_statuses"),
    ("failure_statuses 600", {"health": {"failure_statuses": [600]}}, "health.failure_statuses"),
    ("failure_statuses string", {"health": {"failure_statuses": ["502"]}}, "health.failure_statuses"),
    ("failure_statuses bool", {"health": {"failure_statuses": [True]}}, "health.failure_statuses"),
    ("failure_statuses float", {"health": {"failure_statuses": [502.0]}}, "health.failure_statuses"),
    ("unknown key in [proxy]", {"proxy": {"timeout": 1}}, "proxy.timeout"),
    ("connect_timeout 0", {"proxy": {"connect_timeout": 0}}, "proxy.connect_timeout"),
    ("max_connections 0", {"proxy": {"max_connections": 0}}, "proxy.max_connections"),
    ("forward_headers not a list", {"proxy": {"forward_headers": "Accept"}}, "proxy.forward_headers"),
    ("forward_headers bad name", {"proxy": {"forward_headers": ["Bad Name"]}}, "proxy.forward_headers"),
    ("balance unknown", {"proxy": {"balance": "random"}}, "proxy.balance"),
    ("balance not a string", {"proxy": {"balance": 1}}, "proxy.balance"),
    ("balance wrong case", {"proxy": {"balance": "Round-Robin"}}, "proxy.balance"),
    ("websocket balance unknown", {"websocket": {"balance": "fastest"}}, "websocket.balance"),
    ("websocket balance not a string", {"websocket": {"balance": ["ip-hash"]}}, "websocket.balance"),
    ("websocket not a table", {"websocket": "least-conn"}, "websocket"),
]


@pytest.mark.parametrize("policy", ["consistent", "round-robin", "least-conn", "ip-hash"])
def test_balance_policies_parse_in_proxy_and_websocket(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                       policy: str) -> None:
    """[proxy] balance and [websocket] balance take each of the four policies from the file."""
    monkeypatch.chdir(tmp_path)
    cfg = tmp_path / "edge.toml"
    cfg.write_text(f'[proxy]\nbalance = "{policy}"\n\n[websocket]\nbalance = "{policy}"\n')
    config = load(str(cfg))
    assert config.proxy.balance == policy and config.websocket.balance == policy


def test_balance_defaults_are_consistent_for_requests_and_least_conn_for_tunnels() -> None:
    """Without the keys: the consistent-hash ring for origin requests, least-conn for tunnels."""
    assert Config().proxy.balance == "consistent" and Config().websocket.balance == "least-conn"
    assert from_mapping({"proxy": {"read_timeout": 5}}).proxy.balance == "consistent"


@pytest.mark.parametrize("data, key", [(d, k) for _, d, k in BAD_ORIGIN_PULL],
                         ids=[name for name, _, _ in BAD_ORIGIN_PULL])
def test_origin_pull_bad_values_name_the_key(data: dict, key: str) -> None:
    """Every bad origin/cache/health/proxy value is a ConfigError whose message starts with the key."""
    with pytest.raises(ConfigError) as caught:
        from_mapping(data)
    assert str(caught.value).startswith(f"{key}: "), str(caught.value)


@pytest.mark.parametrize("text, key", [
    ('[[origin]]\nurl = "ftp://x"\n', "origin[0].url"),
    ('[[origin]]\nurl = "http://a"\nweight = 0\n', "origin[0].weight"),
    ('[[origin]]\nurl = "http://a"\nport = 80\n', "origin[0].port"),
    ('[cache]\nmax_size = "10X"\n', "cache.max_size"),
    ("[cache]\ndefault_ttl = -5\n", "cache.default_ttl"),
    ('[cache]\nquery = "some"\n', "cache.query"),
    ("[health]\nrise = 0\n", "health.rise"),
    ("[health]\nbogus = 1\n", "health.bogus"),
    ("[health]\nfailure_statuses = [403]\n", "health.failure_statuses"),
    ("[proxy]\nbogus = 1\n", "proxy.bogus"),
    ('[proxy]\nbalance = "rr"\n', "proxy.balance"),
    ('[websocket]\nbalance = "rr"\n', "websocket.balance"),
], ids=["url", "weight", "origin-key", "size", "ttl", "query", "rise", "health-key", "failure-statuses",
        "proxy-key", "proxy-balance", "websocket-balance"])
def test_check_config_rejects_bad_origin_pull_keys(tmp_path: Path, text: str, key: str) -> None:
    """check-config: exit 2 with one line naming the key for the new tables."""
    cfg = tmp_path / "bad.toml"
    cfg.write_text(text)
    out = run("check-config", str(cfg))
    line = assert_one_line_error(out, key)
    assert line.startswith(f"edge: {key}: "), line


@pytest.mark.parametrize("flag, value, key", [
    ("--origin", "ftp://x", "origin[0].url"),
    ("--cache-max-size", "10X", "cache.max_size"),
    ("--health-path", "healthz", "health.path"),
    ("--health-interval", "0", "health.interval"),
])
def test_serve_rejects_bad_origin_pull_flags(www: Path, flag: str, value: str, key: str) -> None:
    """Bad origin-pull flags exit 2 with one line naming the key, before listening."""
    out = run("serve", "--root", str(www), "--host", "127.0.0.1", "--port", "0", flag, value)
    line = assert_one_line_error(out, key)
    assert line.startswith(f"edge: {key}: "), line
    assert out.stdout == ""


@pytest.mark.parametrize("text, size", [
    ("10G", 10 << 30),
    ("512M", 512 << 20),
    ("1k", 1 << 10),
    ("1K", 1 << 10),
    ("2T", 2 << 40),
    ("10GB", 10 << 30),
    ("10GiB", 10 << 30),
    ("512mb", 512 << 20),
    ("1.5K", 1536),
    (" 2 M ", 2 << 20),
    ("100", 100),
    ("0", 0),
    (4096, 4096),
    (0, 0),
])
def test_parse_size_accepts(text: str | int, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "   ", "garbage", "G", "10X", "10 PB", "-1", "-1G", "nan", "1,5G", -1,
                                  True, 1.5, None, [10]])
def test_parse_size_rejects_garbage(text: object) -> None:
    with pytest.raises(ValueError):
        parse_size(text)  # type: ignore[arg-type]


@pytest.mark.parametrize("text", ["inf", "1e309", "infG"])
def test_parse_size_infinity_is_a_config_error(text: str) -> None:
    with pytest.raises(ConfigError, match=r"^cache\.max_size: "):
        from_mapping({"cache": {"max_size": text}})


@pytest.mark.parametrize("text", ["10i", "10iB"])
def test_parse_size_rejects_stray_i(text: str) -> None:
    with pytest.raises(ValueError):
        parse_size(text)


def test_cli_cache_and_health_flags_beat_the_file(tmp_path: Path) -> None:
    """--cache-dir, --cache-max-size, --health-path, --health-interval win; the file's other keys stay."""
    args = _parser().parse_args(["serve", "--cache-dir", str(tmp_path / "flag-cache"), "--cache-max-size", "2G",
                                 "--health-path", "/flag", "--health-interval", "1.5"])
    overrides = _overrides(args)
    assert overrides["cache"] == {"dir": str(tmp_path / "flag-cache"), "max_size": "2G"}
    assert overrides["health"] == {"path": "/flag", "interval": 1.5}
    config = _load_text(tmp_path, f"""
[[origin]]
url = "http://a"

[cache]
dir = "{tmp_path / 'file-cache'}"
max_size = "1G"
default_ttl = 30
query = "ignore"

[health]
path = "/file"
interval = 9
rise = 4
""", overrides)
    assert config.cache == CacheConfig(str(tmp_path / "flag-cache"), 2 << 30, 30.0, "ignore")
    assert config.health.path == "/flag" and config.health.interval == 1.5
    assert config.health.rise == 4  # not on the command line: the file's value


def test_cli_single_cache_flag_keeps_the_files_other_cache_keys(tmp_path: Path) -> None:
    """Only --cache-max-size: the file's cache.dir and query rule list survive the merge."""
    overrides = _overrides(_parser().parse_args(["serve", "--cache-max-size", "3M"]))
    assert "health" not in overrides
    config = _load_text(tmp_path, f'[cache]\ndir = "{tmp_path / "d"}"\nquery = ["a"]\n[health]\ninterval = 7\n',
                        overrides)
    assert config.cache == CacheConfig(str(tmp_path / "d"), 3 << 20, 60.0, ("a",))
    assert config.health.interval == 7.0


def test_cli_cache_flags_without_a_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    config = load(None, {"cache": {"max_size": "1k"}, "health": {"path": "/hc"}})
    assert config.cache.max_size == 1024 and config.cache.dir is None
    assert config.health.path == "/hc" and config.health.interval == 5.0


def test_cache_dir_made_absolute(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A relative cache.dir (file or --cache-dir) is resolved against the working directory at load time."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(config_module, "default_cache_dir", lambda: pytest.fail("asked for a cache dir"))
    config = load(None, {"origins": ["http://a"], "cache": {"dir": "rel/cache"}})
    assert config.cache.dir == str(tmp_path / "rel" / "cache")
    cfg = tmp_path / "edge.toml"
    cfg.write_text('[[origin]]\nurl = "http://a"\n[cache]\ndir = "fromfile"\n')
    assert load(str(cfg)).cache.dir == str(tmp_path / "fromfile")


def test_cache_dir_defaults_only_when_origins_are_set(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                     no_system_cache: Path) -> None:
    monkeypatch.chdir(tmp_path)
    assert load(None).cache.dir is None
    assert load(None, {"origins": ["http://a"]}).cache.dir == str(no_system_cache)


def test_default_cache_dir_system_when_writable(monkeypatch: pytest.MonkeyPatch) -> None:
    made: list[str] = []
    asked: list[tuple[str, int]] = []
    monkeypatch.setattr(config_module.os, "makedirs", lambda path, exist_ok=False: made.append(path))
    monkeypatch.setattr(config_module.os, "access", lambda path, mode: asked.append((path, mode)) or True)
    assert default_cache_dir() == "/var/cache/edge"
    assert made == ["/var/cache/edge"]
    assert asked == [("/var/cache/edge", os.W_OK | os.X_OK)]


def test_default_cache_dir_user_dir_when_not_writable(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(config_module.os, "makedirs", lambda path, exist_ok=False: None)
    monkeypatch.setattr(config_module.os, "access", lambda path, mode: False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == str(tmp_path / "xdg" / "edge")
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir() == str(tmp_path / "home" / ".cache" / "edge")
    monkeypatch.setenv("XDG_CACHE_HOME", "")  # empty counts as unset
    assert default_cache_dir() == str(tmp_path / "home" / ".cache" / "edge")


def test_default_cache_dir_user_dir_when_it_cannot_be_made(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    def refuse(path: str, exist_ok: bool = False) -> None:
        raise PermissionError(13, "Permission denied", path)

    monkeypatch.setattr(config_module.os, "makedirs", refuse)
    monkeypatch.setattr(config_module.os, "access", lambda path, mode: pytest.fail("access() after makedirs failed"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert default_cache_dir() == str(tmp_path / "edge")


def test_cache_dir_absolute_with_relative_xdg_cache_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(config_module.os, "makedirs", lambda path, exist_ok=False: None)
    monkeypatch.setattr(config_module.os, "access", lambda path, mode: False)
    monkeypatch.setenv("XDG_CACHE_HOME", "relative-xdg")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    config = load(None, {"origins": ["http://a"]})
    assert os.path.isabs(config.cache.dir), config.cache.dir


@pytest.mark.parametrize("url", ["http://:80", "http://h:abc", "http://h?x=1"],
                         ids=["empty-host", "bad-port", "query"])
def test_origin_url_bad_host_port_or_query_rejected(url: str) -> None:
    with pytest.raises(ConfigError, match=r"^origin\[0\]\.url: "):
        from_mapping({"origin": [{"url": url}]})


def test_origin_host_header_control_characters_rejected() -> None:
    with pytest.raises(ConfigError, match=r"^origin\[0\]\.host_header: "):
        from_mapping({"origin": [{"url": "http://a", "host_header": "a\r\nX-Injected: 1"}]})


def test_cache_dir_empty_rejected() -> None:
    with pytest.raises(ConfigError, match=r"^cache\.dir: "):
        from_mapping({"cache": {"dir": ""}})


# -- [websocket]: enabled, idle_timeout, max_tunnels (issue 17) ----------------------------------------------

BAD_WEBSOCKET = [
    ("enabled not a bool", {"websocket": {"enabled": "yes"}}, "websocket.enabled"),
    ("enabled an int", {"websocket": {"enabled": 1}}, "websocket.enabled"),
    ("idle_timeout 0", {"websocket": {"idle_timeout": 0}}, "websocket.idle_timeout"),
    ("idle_timeout negative", {"websocket": {"idle_timeout": -5}}, "websocket.idle_timeout"),
    ("idle_timeout string", {"websocket": {"idle_timeout": "300s"}}, "websocket.idle_timeout"),
    ("idle_timeout bool", {"websocket": {"idle_timeout": True}}, "websocket.idle_timeout"),
    ("max_tunnels 0", {"websocket": {"max_tunnels": 0}}, "websocket.max_tunnels"),
    ("max_tunnels float", {"websocket": {"max_tunnels": 10.5}}, "websocket.max_tunnels"),
    ("max_tunnels huge", {"websocket": {"max_tunnels": 10**9}}, "websocket.max_tunnels"),
    ("unknown key", {"websocket": {"max_connections": 5}}, "websocket.max_connections"),
]


@pytest.mark.parametrize("data, key", [(d, k) for _, d, k in BAD_WEBSOCKET], ids=[n for n, _, _ in BAD_WEBSOCKET])
def test_websocket_bad_values_name_the_key(data: dict, key: str) -> None:
    """Every bad [websocket] value is a ConfigError whose message starts with the key."""
    with pytest.raises(ConfigError) as caught:
        from_mapping(data)
    assert str(caught.value).startswith(f"{key}: "), str(caught.value)


def test_websocket_defaults_and_values_parse(tmp_path: Path) -> None:
    """Defaults: enabled, 300 s idle, 10000 tunnels per worker; the file's values apply; check-config names a bad one."""
    ws = Config().websocket
    assert (ws.enabled, ws.idle_timeout, ws.max_tunnels) == (True, 300.0, 10_000)
    ws = from_mapping({"websocket": {"enabled": False, "idle_timeout": 30, "max_tunnels": 50}}).websocket
    assert (ws.enabled, ws.idle_timeout, ws.max_tunnels) == (False, 30.0, 50)
    cfg = tmp_path / "edge.toml"
    cfg.write_text("[websocket]\nmax_tunnels = -1\n")
    assert_one_line_error(run("check-config", str(cfg)), "websocket.max_tunnels")


# -- [proxy] max_body_size (other methods passed through, edge/passthrough.py) ----------------------------

BAD_BODY_SIZES = [("unknown unit", "10X"), ("garbage", "lots"), ("negative", "-1m"), ("negative int", -1),
                  ("float", 1.5), ("bool", True), ("list", ["1m"])]


@pytest.mark.parametrize("value", [v for _, v in BAD_BODY_SIZES], ids=[n for n, _ in BAD_BODY_SIZES])
def test_max_body_size_bad_values_name_the_key(value: object) -> None:
    """A bad [proxy] max_body_size is a ConfigError whose message starts with the key."""
    with pytest.raises(ConfigError) as caught:
        from_mapping({"proxy": {"max_body_size": value}})
    assert str(caught.value).startswith("proxy.max_body_size: "), str(caught.value)


def test_max_body_size_default_and_sizes(tmp_path: Path) -> None:
    """Default 100 MiB; size strings as for cache.max_size ("100m", "2G", "512k"), plain byte counts, 0 for no
    limit (as nginx's client_max_body_size 0); check-config names a bad one."""

    assert Config().proxy.max_body_size == 100 << 20
    for text, size in (("100m", 100 << 20), ("2G", 2 << 30), ("512k", 512 << 10), (4096, 4096), (0, 0), ("1MiB", 1 << 20)):
        assert from_mapping({"proxy": {"max_body_size": text}}).proxy.max_body_size == size
    cfg = tmp_path / "edge.toml"
    cfg.write_text('[proxy]\nmax_body_size = "1m"\n')
    assert run("check-config", str(cfg)).returncode == 0
    cfg.write_text('[proxy]\nmax_body_size = "big"\n')
    assert_one_line_error(run("check-config", str(cfg)), "proxy.max_body_size")
