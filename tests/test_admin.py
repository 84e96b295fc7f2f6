"""The admin endpoint end to end: real `edge serve` nodes (two workers where it matters) and real origins.

Auth, healthz/drain, /status, /metrics (Prometheus text), POST /purge and PURGE /path (every worker
acknowledges before the answer), and the `edge purge` / `edge status` command lines, one node or a
fleet found by DNS.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from conftest import Client, EdgeProcess, H2Client, read_until_closed, wait_for
from origin_server import gen_body, pattern
from prometheus_client.parser import text_string_to_metric_families
from test_pull import (
    Origin,
    closed_url,
    gen,
    get,
    object_files,
    read_chunked,
    read_head_and_some,
    read_rest,
    spread_connections,
    stored_soon,
)
from test_supervisor import serving_pid

from edge import adminclient, cli

TOKEN = "s3cret-t0ken"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
LONG_VALID = "[file_cache]\nvalid = 3600\n"  # a worker never re-checks on its own: only a purge refreshes
TWO = ("--workers", "2", "--cpu-affinity", "off")  # unpinned: fresh connections reach both workers


# -- fixtures and helpers --------------------------------------------------------------------------------------------


@pytest.fixture
def origin():
    """One origin_server.py process (tests/test_pull.py's Origin), killed afterwards."""
    started = Origin()
    yield started
    started.kill()


@pytest.fixture
def cache(cache_dir: Path) -> Path:
    """The disk cache directory of the node under test (conftest's cache_dir)."""
    return cache_dir


@pytest.fixture
def pulling(pull):
    """Start edge in front of one origin: pulling(origin, *flags, config="toml text")."""
    return lambda upstream, *args, config=None: pull([upstream], *args, config=config)


def admin(server: EdgeProcess, method: str, path: str, *, token: str | None = None, headers: dict | None = None,
          **kw) -> httpx.Response:
    """One request to the node's admin endpoint."""
    assert server.admin_url, "started without an admin endpoint"
    fields = dict(headers or {})
    if token is not None:
        fields["Authorization"] = f"Bearer {token}"
    return httpx.request(method, server.admin_url + path, headers=fields, timeout=20, **kw)


def status(server: EdgeProcess, token: str | None = None) -> dict:
    r = admin(server, "GET", "/status", token=token)
    assert r.status_code == 200, r.text
    return r.json()


def metrics(server: EdgeProcess, token: str | None = None) -> dict[tuple, float]:
    """Every sample of GET /metrics: {(sample name, ((label, value), ...)): value}."""
    r = admin(server, "GET", "/metrics", token=token)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain")
    out = {}
    for family in text_string_to_metric_families(r.text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def metric(samples: dict, name: str, **labels: str) -> float:
    """The sum of the samples called `name` that carry `labels` (other labels, such as protocol, summed over)."""
    found = [value for (sample, have), value in samples.items()
             if sample == name and set(labels.items()) <= set(have)]
    assert found, f"no sample {name}{labels} in {sorted({n for n, _ in samples})}"
    return sum(found)


def purge(server: EdgeProcess, body, token: str | None = None) -> dict:
    r = admin(server, "POST", "/purge", token=token, json=body)
    assert r.status_code == 200, r.text
    return r.json()


def on_each_worker(server: EdgeProcess, targets: list[str]) -> dict[int, dict[str, tuple]]:
    """GET every target on a fresh keep-alive connection to each worker: {worker pid: {target: (status, headers, body)}}."""
    socks = spread_connections(server, 1)
    owners = serving_pid(server, socks)
    out: dict[int, dict[str, tuple]] = {}
    try:
        for sock in socks:
            client = Client(sock)
            answers = {}
            for target in targets:
                client.send(f"GET {target} HTTP/1.1\r\nHost: x\r\n\r\n".encode("latin-1"))
                answers[target] = client.response()
            out[owners[sock.getsockname()[1]]] = answers
    finally:
        for sock in socks:
            sock.close()
    workers = {pid for pid, _ in server.banner.values()}
    assert set(out) == workers, f"both workers answered: {set(out)} vs {workers}"
    return out


def fetch_and_store(server: EdgeProcess, cache: Path, targets: list[str]) -> None:
    """GET each target once and wait for it on disk: another worker asked next finds it there (no second fetch)."""
    for target in targets:
        assert get(server, target)[0] == 200, target
    for target in targets:
        stored_soon(cache, target)


def bodies(server: EdgeProcess, targets: list[str], fresh: int = 4) -> dict[str, set[bytes]]:
    """Every body each target had: from each worker, then on `fresh` more new connections."""
    seen: dict[str, set[bytes]] = {t: set() for t in targets}
    for answers in on_each_worker(server, targets).values():
        for target, (code, _, body) in answers.items():
            assert code == 200, (target, code, body)
            seen[target].add(body)
    for _ in range(fresh):
        for target in targets:
            code, _, body = get(server, target)
            assert code == 200, (target, code, body)
            seen[target].add(body)
    return seen


def wait_published(server: EdgeProcess, predicate, timeout: float = 10.0, token: str | None = None) -> dict:
    """Poll GET /status until predicate(doc) holds (worker counters reach shared memory once a second)."""
    docs = []
    ok = wait_for(lambda: predicate(docs.append(status(server, token)) or docs[-1]), timeout, 0.2)
    assert ok, f"/status never satisfied the condition; last: {json.dumps(docs[-1], indent=1)[:3000]}"
    return docs[-1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_cmd(root: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "edge.cli", "serve", "--root", str(root), "--host", "127.0.0.1", "--port", "0",
            "--workers", "1", *args]


def run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """`python -m edge.cli ARGS` as its own process."""
    return subprocess.run([sys.executable, "-m", "edge.cli", *args], capture_output=True, text=True, check=False, timeout=60,
                          env={**os.environ, **(env or {})})


def replace(path: Path, text: str) -> None:
    """Publish a new version of a file as deploy tools do (a new inode, renamed over the old one)."""
    tmp = path.with_name(path.name + ".new")
    tmp.write_text(text)
    os.replace(tmp, path)


# -- configuration ---------------------------------------------------------------------------------------


def test_admin_url_is_in_the_banner_and_answers(edge):
    server = edge()
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+", server.admin_url)
    r = admin(server, "GET", "/healthz")
    assert r.status_code == 200 and r.text.strip() == "ok"


@pytest.mark.parametrize("how", ["flag", "env"])
def test_admin_off_disables_the_endpoint(edge, how):
    server = edge("--admin", "off") if how == "flag" else edge(env={"EDGE_ADMIN": "off"})
    assert server.admin_url is None
    assert get(server, "/hello.txt")[0] == 200


def test_admin_flag_wins_over_the_environment(edge):
    port = free_port()
    server = edge("--admin", f"127.0.0.1:{port}", env={"EDGE_ADMIN": "off"})
    assert server.admin_url == f"http://127.0.0.1:{port}"
    assert admin(server, "GET", "/healthz").status_code == 200


@pytest.mark.parametrize("args, env", [
    (("--admin", "0.0.0.0:0"), {}),
    (("--admin", "192.0.2.1:9090"), {}),
    ((), {"EDGE_ADMIN": "0.0.0.0:0"}),
])
def test_admin_beyond_loopback_without_a_token_is_a_config_error(www, args, env):
    environ = {k: v for k, v in os.environ.items() if k != "EDGE_ADMIN_TOKEN"}
    proc = subprocess.run(serve_cmd(www, *args), capture_output=True, text=True, check=False, timeout=30, env={**environ, **env})
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert "admin" in proc.stderr
    assert "listening" not in proc.stdout


def test_admin_beyond_loopback_with_a_token_is_allowed(www):
    from edge.config import load

    config = load(None, {"root": str(www), "admin": "0.0.0.0:9090", "admin_token": TOKEN})
    assert config.admin == ("0.0.0.0", 9090) and config.admin_token == TOKEN


def test_an_admin_port_in_use_stops_the_start(edge, www):
    first = edge()
    port = int(first.admin_url.rsplit(":", 1)[1])
    proc = subprocess.run(serve_cmd(www, "--admin", f"127.0.0.1:{port}"), capture_output=True, text=True, check=False, timeout=30)
    assert proc.returncode == 1
    assert "admin" in proc.stderr
    assert admin(first, "GET", "/healthz").status_code == 200


# -- auth --------------------------------------------------------------------------------------------------


def test_without_a_token_loopback_needs_no_auth(edge):
    server = edge()
    for method, path, kw in (("GET", "/status", {}), ("GET", "/metrics", {}),
                             ("POST", "/purge", {"json": {"all": True}}), ("PURGE", "/x", {})):
        assert admin(server, method, path, **kw).status_code == 200, (method, path)


def test_with_a_token_everything_but_healthz_needs_it(edge):
    server = edge("--admin-token", TOKEN)
    assert admin(server, "GET", "/healthz").status_code == 200
    assert admin(server, "HEAD", "/healthz").status_code == 200
    requests = [("GET", "/status", {}), ("GET", "/metrics", {}), ("POST", "/purge", {"json": {"all": True}}),
                ("PURGE", "/hello.txt", {}), ("POST", "/drain", {})]
    for bad in (None, "wrong", TOKEN + "x", TOKEN[:-1]):
        for method, path, kw in requests:
            r = admin(server, method, path, token=bad, **kw)
            assert r.status_code == 401, (bad, method, path, r.text)
            assert r.headers["www-authenticate"] == 'Bearer realm="edge admin"'
            assert r.headers["content-type"].startswith("application/json")
            assert r.json()["error"]
    for header in (f"Basic {TOKEN}", TOKEN, f"Bearer{TOKEN}", "Bearer"):
        r = admin(server, "GET", "/status", headers={"Authorization": header})
        assert r.status_code == 401, header
    assert admin(server, "GET", "/healthz").text.strip() == "ok", "the refused /drain did nothing"
    for method, path, kw in requests[:-1]:
        assert admin(server, method, path, token=TOKEN, **kw).status_code == 200, (method, path)
    assert admin(server, "GET", "/status", headers={"Authorization": f"bearer {TOKEN}"}).status_code == 200


def test_the_token_can_come_from_the_environment(edge):
    server = edge(env={"EDGE_ADMIN_TOKEN": "from-env"})
    assert admin(server, "GET", "/status").status_code == 401
    assert admin(server, "GET", "/status", token="from-env").status_code == 200


def test_purge_of_healthz_and_the_root_needs_the_token(edge):
    server = edge("--admin-token", TOKEN)
    for path in ("/healthz", "/"):
        r = admin(server, "PURGE", path)
        assert r.status_code == 401, (path, r.text)


# -- healthz and drain ------------------------------------------------------------------------------------


def test_post_drain_turns_healthz_to_503(edge):
    server = edge()
    assert metric(metrics(server), "edge_draining") == 0
    assert status(server)["draining"] is False
    r = admin(server, "POST", "/drain")
    assert r.status_code == 200 and r.json() == {"draining": True}
    r = admin(server, "GET", "/healthz")
    assert r.status_code == 503 and r.text.strip() == "draining"
    assert metric(metrics(server), "edge_draining") == 1
    assert status(server)["draining"] is True
    assert get(server, "/hello.txt")[:1] == (200,), "draining is advertised; the node still serves"
    assert admin(server, "POST", "/drain").json() == {"draining": True}, "twice is fine"


def test_sigterm_makes_healthz_503_while_workers_drain(pulling, origin, cache):
    server = pulling(origin)
    size = 256 * 1024
    target = f"/gate/dr?size={size}"  # half the body at once, the rest once released
    sock = server.connect(timeout=30)
    try:
        sock.sendall(f"GET {target} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        headers, body = read_head_and_some(sock)
        assert headers["cache-status"] == "edge; fwd=miss; stored"
        assert wait_for(lambda: "dr" in origin.stats()["waiting"], 10)
        assert admin(server, "GET", "/healthz").status_code == 200
        server.proc.send_signal(signal.SIGTERM)
        assert wait_for(lambda: admin(server, "GET", "/healthz").status_code == 503, 10), \
            "the supervisor tells the manager the node drains"
        doc = wait_published(server, lambda d: [w["state"] for w in d["workers"]] == ["draining"])
        assert doc["draining"] is True
        assert metric(metrics(server), "edge_draining") == 1
        assert server.alive(), "the download keeps its worker (and the node) up"
        origin.ctl("/_release/dr")
        assert read_rest(sock, body, size) == pattern("dr", size)
    finally:
        sock.close()
    assert server.proc.wait(30) == 0


# -- status and metrics -----------------------------------------------------------------------------------


def test_status_reports_workers_origins_cache_and_config(pulling, origin, cache):
    server = pulling(origin, *TWO, "--admin-token", TOKEN)
    target = gen("st", cc="max-age=600")
    per_worker = {pid: 2 + i for i, pid in enumerate(sorted(p for p, _ in server.banner.values()))}
    socks = spread_connections(server, 1)
    owners = serving_pid(server, socks)
    for sock in socks:
        client = Client(sock)
        for _ in range(per_worker[owners[sock.getsockname()[1]]]):
            client.send(b"GET /hello.txt HTTP/1.1\r\nHost: x\r\n\r\n")
            assert client.response()[0] == 200
        client.close()
    fetch_and_store(server, cache, [target])  # one miss...
    for _ in range(2):
        assert get(server, target)[0] == 200  # ... and two hits, on whichever worker
    total = sum(per_worker.values()) + 3
    doc = wait_published(server, lambda d: d["totals"]["requests"] == total and d["cache"].get("objects") == 1
                         and d["totals"]["connections_active"] == 0
                         and all(o["last_check"] for o in d["origins"]), token=TOKEN)
    assert doc["version"] and isinstance(doc["version"], str)
    assert doc["pid"] == server.pid
    assert doc["uptime"] >= 0 and doc["draining"] is False
    workers = doc["workers"]
    assert sorted(w["pid"] for w in workers) == sorted(p for p, _ in server.banner.values())
    assert sorted(w["slot"] for w in workers) == [1, 2]
    keys = {"pid", "slot", "cpu", "numa_node", "generation", "state", "uptime", "requests", "connections_active",
            "bytes_out", "cache_hits", "cache_misses", "file_cache_entries"}
    for w in workers:
        assert keys <= set(w), set(w) ^ keys
        assert w["generation"] == 1 and w["state"] == "serving" and w["uptime"] >= 0
        assert isinstance(w["cpu"], int) and isinstance(w["numa_node"], int)
        assert w["requests"] >= per_worker[w["pid"]] and w["bytes_out"] > 0 and w["file_cache_entries"] >= 1
        assert w["connections_active"] == 0
    assert sum(w["requests"] for w in workers) == total
    assert sum(w["cache_hits"] for w in workers) == 2 and sum(w["cache_misses"] for w in workers) == 1
    assert doc["totals"]["bytes_out"] == sum(w["bytes_out"] for w in workers)
    [o] = doc["origins"]
    assert o["url"] == origin.url and o["weight"] == 1 and o["healthy"] is True and o["circuit"] == "closed"
    assert o["checks_ok"] >= 1 and o["checks_failed"] == 0 and o["latency"] is not None
    disk = doc["cache"]
    assert disk["hits"] == 2 and disk["misses"] == 1 and disk["stale"] == 0
    assert disk["hit_ratio"] == pytest.approx(2 / 3, abs=1e-3)
    assert disk["objects"] == 1 and disk["bytes"] == len(gen_body("st", origin.port, 0))
    assert disk["max_bytes"] > 0 and disk["evictions"] == 0 and disk["dir"] == str(cache)
    config = doc["config"]
    assert config["workers"] == 2 and config["origins"] == 1 and config["cache_dir"] == str(cache)


def test_status_without_origins_has_no_disk_cache(edge):
    server = edge()
    doc = status(server)
    assert doc["origins"] == []
    assert doc["cache"]["hit_ratio"] is None
    assert "objects" not in doc["cache"] and "dir" not in doc["cache"]
    assert [w["pid"] for w in doc["workers"]] == [server.worker_pid]


def test_metrics_sum_over_both_workers(pulling, origin, cache):
    server = pulling(origin, *TWO)
    n = 24
    for _ in range(n):
        assert get(server, "/hello.txt")[0] == 200
    for _ in range(3):
        assert get(server, "/bad%zz")[0] == 400  # refused by edge itself, never asked of the origin
    target = gen("m", cc="max-age=600")
    fetch_and_store(server, cache, [target])
    for _ in range(3):
        assert get(server, target)[0] == 200
    wait_published(server, lambda d: d["totals"]["requests"] == n + 3 + 4 and d["cache"]["objects"] == 1
                   and d["totals"]["connections_active"] == 0)
    samples = metrics(server)
    assert metric(samples, "edge_requests_total", code_class="2xx") == n + 4
    assert metric(samples, "edge_requests_total", code_class="4xx") == 3
    for cls in ("1xx", "3xx", "5xx"):
        assert metric(samples, "edge_requests_total", code_class=cls) == 0
    assert metric(samples, "edge_cache_hits_total") == 3
    assert metric(samples, "edge_cache_misses_total") == 1
    assert metric(samples, "edge_cache_stale_total") == 0
    assert metric(samples, "edge_origin_requests_total", outcome="ok") == 1
    assert metric(samples, "edge_origin_requests_total", outcome="error") == 0
    assert metric(samples, "edge_origin_requests_total", origin=origin.url, outcome="ok") == 1
    assert metric(samples, "edge_requests_total", code_class="2xx", protocol="http/1.1") == n + 4
    assert metric(samples, "edge_requests_total", code_class="2xx", protocol="h2") == 0
    # Every response is in the duration histogram (those answered at once in its fastest bucket).
    assert metric(samples, "edge_request_duration_seconds_count") == n + 3 + 4
    assert metric(samples, "edge_request_duration_seconds_bucket", le="+Inf") == n + 3 + 4
    assert metric(samples, "edge_workers") == 2
    assert metric(samples, "edge_connections_active") == 0
    assert metric(samples, "edge_file_cache_entries") >= 2
    assert metric(samples, "edge_origin_healthy", origin=origin.url) == 1
    assert metric(samples, "edge_origin_circuit_open_workers", origin=origin.url) == 0
    assert metric(samples, "edge_disk_cache_objects") == 1
    assert metric(samples, "edge_disk_cache_bytes") == len(gen_body("m", origin.port, 0))
    assert metric(samples, "edge_disk_cache_evictions_total") == 0
    assert metric(samples, "edge_draining") == 0
    doc = status(server)
    assert metric(samples, "edge_bytes_sent_total") == sum(w["bytes_out"] for w in doc["workers"]) > 0
    assert all(w["requests"] > 0 for w in doc["workers"]), "the requests were spread over both workers"


def test_metrics_count_open_connections(edge):
    server = edge(*TWO)
    socks = [server.connect() for _ in range(3)]
    try:
        for sock in socks:
            client = Client(sock)
            client.send(b"GET /hello.txt HTTP/1.1\r\nHost: x\r\n\r\n")
            assert client.response()[0] == 200
        assert wait_for(lambda: metric(metrics(server), "edge_connections_active") == 3, 10, 0.2)
    finally:
        for sock in socks:
            sock.close()
    assert wait_for(lambda: metric(metrics(server), "edge_connections_active") == 0, 10, 0.2)


def test_status_and_metrics_show_the_origin_pools(pulling, origin, cache):
    """Issue 17 item 6: per origin, open, idle and in-use pooled connections and connections opened in all,
    summed over the workers; an ended worker's gauges drop to 0, its opened total stays."""
    server = pulling(origin, "--workers", "1")
    n = 6
    for i in range(n):
        assert get(server, gen(f"pool{i}", cc="no-store"))[0] == 200  # each one asked of the origin
    assert sum(origin.count(gen(f"pool{i}", cc="no-store")) for i in range(n)) == n
    [row] = status(server)["origins"]
    pool = row["pool"]
    assert 1 <= pool["opened_total"] < n, pool  # kept alive and reused
    assert pool["idle"] >= 1 and pool["in_use"] == 0 and pool["open"] == pool["idle"], pool
    samples = metrics(server)
    assert metric(samples, "edge_origin_pool_opened_total", origin=origin.url) == pool["opened_total"]
    assert metric(samples, "edge_origin_pool_open", origin=origin.url) == pool["open"]
    assert metric(samples, "edge_origin_pool_idle", origin=origin.url) == pool["idle"]
    assert metric(samples, "edge_origin_pool_in_use", origin=origin.url) == 0
    # The worker dies with its connections: its gauges go with it, its total stays in the node's.
    os.kill(server.worker_pid, signal.SIGKILL)
    doc = wait_published(server, lambda d: d["origins"][0]["pool"]["open"] == 0)
    assert doc["origins"][0]["pool"] == {"open": 0, "idle": 0, "in_use": 0, "opened_total": pool["opened_total"]}


# -- purge: the API --------------------------------------------------------------------------------------


BAD_BODIES = [
    b"not json", b"", b"[]", b'["/a"]', b"null", b"{}", b'{"path": ["/a"]}', b'{"paths": ["/a"], "prefix": "/b"}',
    b'{"paths": []}', b'{"paths": "/a"}', b'{"paths": ["a"]}', b'{"prefix": "img/"}', b'{"all": false}',
    b'{"tags": ["a b"]}', b'{"tags": []}', b"[" * 100_000, b'{"paths": [[[[["/a"]]]]]}',
]


def test_bad_purge_bodies_get_400_with_a_reason(edge):
    server = edge()
    for body in BAD_BODIES:
        r = admin(server, "POST", "/purge", content=body, headers={"Content-Type": "application/json"})
        assert r.status_code == 400, (body, r.text)
        assert isinstance(r.json()["error"], str) and r.json()["error"], body
    assert get(server, "/hello.txt")[0] == 200


def random_json(rng: random.Random, depth: int = 0) -> object:
    """A random JSON value: purge-shaped objects most of the time, any type and nesting otherwise."""
    kinds = ["str", "int", "float", "bool", "null", "list", "dict", "purge"] if depth < 6 else ["str", "int", "null"]
    kind = rng.choice(kinds)
    if kind == "str":
        return rng.choice(["/a", "/", "", "a b", "/x/../../etc", "/%zz", "\x00", "é/ü", "/" + "p" * rng.randrange(9000)])
    if kind == "int":
        return rng.choice([0, -1, 1, 2**63, 10**400 if rng.random() < 0.1 else 7])
    if kind == "float":
        return rng.choice([0.5, -1e308, float("inf")]) if rng.random() < 0.5 else 1.5
    if kind == "bool":
        return rng.random() < 0.5
    if kind == "null":
        return None
    if kind == "list":
        return [random_json(rng, depth + 1) for _ in range(rng.randrange(4))]
    if kind == "dict":
        return {rng.choice(["paths", "prefix", "tags", "all", "x"]): random_json(rng, depth + 1)
                for _ in range(rng.randrange(3))}
    key = rng.choice(["paths", "prefix", "tags", "all"])
    return {key: random_json(rng, depth + 1)}


def random_body(rng: random.Random) -> bytes:
    """A purge body: random JSON, deep nesting, a cut or bit-flipped text, or a huge list."""
    shape = rng.randrange(6)
    if shape == 0:
        n = rng.choice([5, 100, 100_000])
        return rng.choice([b"[", b"{\"a\":", b'{"paths": ['])[:1 if n > 5 else None] * n
    text = json.dumps(random_json(rng), allow_nan=True).encode()
    if shape == 1:
        return text[:rng.randrange(len(text) + 1)]
    if shape == 2 and text:
        flipped = bytearray(text)
        for _ in range(rng.randrange(1, 4)):
            flipped[rng.randrange(len(flipped))] ^= 1 << rng.randrange(8)
        return bytes(flipped)
    if shape == 3:
        return json.dumps({"paths": ["/f/%d" % i for i in range(rng.choice([1, 10_001, 200_000]))]}).encode()
    return text


def test_fuzzed_purge_bodies_get_2xx_or_4xx_and_no_traceback(edge):
    seed = int(os.environ.get("EDGE_FUZZ_SEED", "14"))
    rng = random.Random(seed)
    server = edge()
    deadline = time.monotonic() + 15
    answered = 0
    with httpx.Client(base_url=server.admin_url, timeout=20) as client:
        while time.monotonic() < deadline and answered < 400:
            body = random_body(rng)
            r = client.post("/purge", content=body, headers={"Content-Type": "application/json"})
            assert 200 <= r.status_code < 500, (seed, body[:200], r.status_code, r.text[:200])
            if r.status_code == 400:
                assert r.json()["error"], body[:200]
            answered += 1
    assert answered >= 50, f"only {answered} purges in the time bound"
    assert get(server, "/hello.txt")[0] == 200
    assert "Traceback" not in server.stderr(), (seed, server.stderr()[-2000:])


def test_a_purge_waits_for_every_worker(edge):
    server = edge(*TWO)
    assert purge(server, {"all": True}) == {"purged": 0, "disk_objects": 0, "worker_entries": 0, "workers": 2}
    stopped = min(p for p, _ in server.banner.values())
    os.kill(stopped, signal.SIGSTOP)
    try:
        r = admin(server, "POST", "/purge", json={"paths": ["/hello.txt"]})
        assert r.status_code == 504, r.text
        assert r.json()["missing"] == [stopped]
    finally:
        os.kill(stopped, signal.SIGCONT)
    assert purge(server, {"paths": ["/hello.txt"]})["workers"] == 2


def test_a_purge_of_ten_thousand_paths_is_acknowledged(edge):
    server = edge(*TWO)
    paths = [f"/static/images/gallery/photo-{i:05d}.jpg" for i in range(10_000)]
    assert len(json.dumps({"paths": paths})) < 1 << 20
    r = admin(server, "POST", "/purge", json={"paths": paths})
    assert r.status_code == 200, r.text[:500]
    assert r.json()["workers"] == 2


# -- purge: semantics with two workers and a real origin ---------------------------------------------------


ORIGIN_OBJECTS = {  # name -> the /gen target (the query is part of the cache key, not of the purged path)
    "pone": gen("pone", cc="max-age=600"),
    "sp ace": gen("sp%20ace", cc="max-age=600"),
    "pre1": gen("pre1", cc="max-age=600"),
    "pre2": gen("pre2", cc="max-age=600", tags="z"),
    "t1": gen("t1", cc="max-age=600", tags="a b"),
    "t2": gen("t2", cc="max-age=600", tags="c"),
    "t3": gen("t3", cc="max-age=600", tags="b"),
    "keep": gen("keep", cc="max-age=600"),
}


@pytest.mark.parametrize("kind, body, purged", [
    ("paths", {"paths": ["/gen/pone", "/gen/sp ace", "/gen/none"]}, {"pone", "sp ace"}),
    ("prefix", {"prefix": "/gen/pre"}, {"pre1", "pre2"}),
    ("tags", {"tags": ["b", "nope"]}, {"t1", "t3"}),
    ("all", {"all": True}, set(ORIGIN_OBJECTS)),
    ("PURGE", None, {"pone"}),
])
def test_purge_refreshes_origin_objects_on_every_worker(pulling, origin, cache, kind, body, purged):
    server = pulling(origin, *TWO, config=LONG_VALID)
    targets = list(ORIGIN_OBJECTS.values())
    old = {name: gen_body(name, origin.port, 0) for name in ORIGIN_OBJECTS}
    new = {name: gen_body(name, origin.port, 1) for name in ORIGIN_OBJECTS}
    fetch_and_store(server, cache, targets)
    for pid, answers in on_each_worker(server, targets).items():  # both workers hold every object
        for name, target in ORIGIN_OBJECTS.items():
            assert answers[target][0] == 200 and answers[target][2] == old[name], (pid, name)
    wait_published(server, lambda d: d["cache"]["objects"] == len(targets)
                   and all(w["file_cache_entries"] >= len(targets) for w in d["workers"]))
    assert all(origin.count(t) == 1 for t in targets)
    for name in ORIGIN_OBJECTS:
        origin.ctl(f"/_bump/{name}")
    seen = bodies(server, targets, fresh=2)
    assert all(seen[t] == {old[n]} for n, t in ORIGIN_OBJECTS.items()), "cached: the bump is not seen yet"

    if kind == "PURGE":
        r = admin(server, "PURGE", "/gen/pone")
        assert r.status_code == 200, r.text
        answer = r.json()
    else:
        answer = purge(server, body)
    assert answer == {"purged": 2 * len(purged), "disk_objects": len(purged), "worker_entries": len(purged),
                      "workers": 2}
    for name, target in ORIGIN_OBJECTS.items():
        body_file, meta_file = object_files(cache, target)
        if name in purged:
            assert not body_file.exists() and not meta_file.exists(), f"{name} is still on disk"
        else:
            assert body_file.exists(), f"{name} was not to be purged"
    assert status(server)["cache"]["objects"] == len(targets) - len(purged)

    fetch_and_store(server, cache, [ORIGIN_OBJECTS[name] for name in sorted(purged)])
    seen = bodies(server, targets)
    for name, target in ORIGIN_OBJECTS.items():
        if name in purged:
            assert seen[target] == {new[name]}, f"{name}: every worker fetches the new version"
            assert origin.count(target) == 2, name
        else:
            assert seen[target] == {old[name]}, f"{name}: not purged, still cached"
            assert origin.count(target) == 1, name
    _, headers, _ = get(server, ORIGIN_OBJECTS["keep" if "keep" not in purged else "pone"])
    assert headers["x-version"] == ("0" if "keep" not in purged else "1")


@pytest.mark.parametrize("body", [{"paths": ["/gate/inflight"]}, {"prefix": "/gate/"}, {"all": True}],
                         ids=["path", "prefix", "all"])
def test_a_fetch_under_way_during_a_purge_answers_but_stores_nothing(pulling, origin, cache, body):
    # The purge is acknowledged while the origin still holds back half of the body: the client that asked
    # before it gets the whole body, but the object must not land in the cache after the purge said 200.
    server = pulling(origin, "--workers", "2", "--cpu-affinity", "off")
    size = 256 * 1024
    target = f"/gate/inflight?size={size}"
    sock = server.connect(timeout=10)
    sock.sendall(f"GET {target} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    headers, early = read_head_and_some(sock)
    assert headers["cache-status"] == "edge; fwd=miss; stored" and origin.stats()["waiting"] == ["inflight"]
    purge(server, body)
    origin.ctl("/_release/inflight")
    assert read_rest(sock, early, size) == pattern("inflight", size)
    sock.close()
    assert wait_for(lambda: not any((cache / "tmp").glob("*.*")), 10), "the fetch's temp file was not cleared"
    status, headers, got = get(server, target)
    assert status == 200 and headers["cache-status"] == "edge; fwd=miss; stored", "the purged fetch was stored"
    assert got == pattern("inflight", size) and origin.count(target) == 2


@pytest.mark.parametrize("chunked", [False, True], ids=["length", "unknown-length"])
def test_a_purged_fetch_still_ends_whole_for_its_followers_on_another_worker(pulling, origin, cache, chunked):
    # The fetching worker stores nothing after the purge, so the follower cannot learn the end of a body
    # of unknown length from the stored object: the fetcher's final head must tell it.
    server = pulling(origin, "--workers", "2", "--cpu-affinity", "off")
    size = 256 * 1024
    target = f"/gate/pf?size={size}" + ("&chunked=1" if chunked else "")
    fetcher, _, follower, _ = spread_connections(server, 2)  # the first two on one worker, the others on the other
    readers = []
    for sock in (fetcher, follower):
        sock.sendall(f"GET {target} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        headers, early = read_head_and_some(sock)
        readers.append((sock, headers, early))
    assert [h["cache-status"] for _, h, _ in readers] == ["edge; fwd=miss; stored", "edge; fwd=miss; stored; collapsed"]
    purge(server, {"paths": ["/gate/pf"]})
    origin.ctl("/_release/pf")
    for sock, _, early in readers:
        whole = read_chunked(sock, early) == (pattern("pf", size), True) if chunked else \
            read_rest(sock, early, size) == pattern("pf", size)
        assert whole, "a complete origin body reaches every reader whole, stored or not"
    assert wait_for(lambda: not any((cache / "tmp").glob("*.*")), 10), "the fetch's temp file was not cleared"
    status, headers, _ = get(server, target)
    assert status == 200 and headers["cache-status"] == "edge; fwd=miss; stored", "the purged fetch was stored"
    for sock, _, _ in readers:
        sock.close()


def test_objects_a_killed_worker_had_not_reported_yet_reach_the_index(pulling, origin, cache):
    # Workers report stored objects in batches (edge/reports.py): a worker killed right after storing
    # takes its last batch with it, and the manager must still learn of those objects (to evict and
    # purge them) without waiting for the node's next start.
    server = pulling(origin)
    [(worker, _)] = server.banner.values()
    targets = [f"/obj/kill{i}" for i in range(30)]
    client = Client(server.connect(timeout=10))
    client.send(b"".join(f"GET {t} HTTP/1.1\r\nHost: x\r\n\r\n".encode() for t in targets))
    answers = [client.response() for _ in targets]
    os.kill(worker, signal.SIGKILL)  # at once: well within the batch's flush delay
    client.close()
    assert [a[1]["cache-status"] for a in answers] == ["edge; fwd=miss; stored"] * len(targets)
    assert wait_for(lambda: status(server)["cache"]["objects"] == len(targets), 15), status(server)["cache"]
    purge(server, {"prefix": "/obj/kill"})
    assert not any(p.is_file() for p in (cache / "objects").rglob("*")), "every object, reported or not, is purged"


def test_bodies_of_unknown_length_are_logged_and_counted_with_their_length(pulling, origin, cache, tmp_path):
    # Their response begins before their length is known: the access log line and bytes_out wait for the end.
    log = tmp_path / "access.log"
    server = pulling(origin, "--access-log", str(log))
    size = 100_000
    targets = [f"/stream/al{i}?size={size}&chunked=1&chunk=20000&delay=0.02" for i in range(3)]
    before = status(server)["totals"]["bytes_out"]
    client = Client(server.connect(timeout=10))
    client.send(f"GET {targets[0]} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    _, headers, body = client.response()
    client.close()
    assert headers["transfer-encoding"] == "chunked" and body == pattern("al0", size)
    sock = server.connect(timeout=10)
    sock.sendall(f"GET {targets[1]} HTTP/1.0\r\n\r\n".encode())
    head, _, body = read_until_closed(sock, 20).partition(b"\r\n\r\n")
    sock.close()
    assert b"Content-Length" not in head and body == pattern("al1", size)
    h2 = H2Client.connect(server)
    try:
        sid = h2.request(targets[2])
        assert h2.wait(lambda: sid in h2.streams and h2.streams[sid].done, 20)
        assert bytes(h2.streams[sid].body) == pattern("al2", size)
    finally:
        h2.close()
    assert wait_for(lambda: log.exists() and len(log.read_text().splitlines()) >= 3, 10)
    logged = {}
    for line in log.read_text().splitlines():
        _, request_line, status_and_size = line.split('"')[:3]
        logged[request_line.split()[1]] = (request_line.split()[2], status_and_size.split())
    assert logged == {targets[0]: ("HTTP/1.1", ["200", str(size)]), targets[1]: ("HTTP/1.0", ["200", str(size)]),
                      targets[2]: ("HTTP/2.0", ["200", str(size)])}
    assert status(server)["totals"]["bytes_out"] - before > 3 * size, "every body's bytes count"


def test_a_purge_just_after_a_store_is_not_undone_by_requests_racing_it(pulling, origin, cache):
    # Objects reach the manager's index in batches: one stored a moment before the purge is removed in
    # its second pass, and no worker may load it from disk in between (it would serve it for seconds).
    server = pulling(origin, "--workers", "2")
    for trial in range(8):
        target = f"/seq/race{trial}"  # the origin's body changes with every request it gets
        first = get(server, target)[2]
        stop = threading.Event()
        seen: list[tuple[float, bytes]] = []

        def hammer() -> None:
            client = Client(server.connect(timeout=10))
            try:
                while not stop.is_set():
                    sent = time.monotonic()
                    client.send(f"GET {target} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
                    seen.append((sent, client.response()[2]))
            finally:
                client.close()

        threads = [threading.Thread(target=hammer) for _ in range(6)]
        for thread in threads:
            thread.start()
        time.sleep(0.002)
        purge(server, {"paths": [target]})
        answered = time.monotonic()
        time.sleep(0.3)
        stop.set()
        for thread in threads:
            thread.join(10)
        late = [round(sent - answered, 4) for sent, body in seen if sent > answered and body == first]
        assert not late, f"{target}: the purged body {first!r} served after the purge answered: {late[:3]}"
        assert any(sent > answered for sent, _ in seen)


def test_purge_by_tag_of_a_vary_object_drops_every_coding(pulling, origin, cache):
    server = pulling(origin, *TWO, config=LONG_VALID)
    target = gen("v", cc="max-age=600", vary="Accept-Encoding", tags="vt")
    for coding in ("gzip", "identity"):
        for _ in range(6):
            assert get(server, target, headers={"Accept-Encoding": coding})[2] == gen_body("v", origin.port, 0)
    wait_published(server, lambda d: d["cache"]["objects"] >= 2)
    origin.ctl("/_bump/v")
    answer = purge(server, {"tags": ["vt"]})
    assert answer["disk_objects"] >= 2 and answer["workers"] == 2
    for coding in ("gzip", "identity"):
        for _ in range(6):
            status_code, _, body = get(server, target, headers={"Accept-Encoding": coding})
            assert status_code == 200 and body == gen_body("v", origin.port, 1), coding


def test_purge_refreshes_local_files_on_every_worker(edge, tmp_path):
    root = tmp_path / "site"
    (root / "sub").mkdir(parents=True)
    files = {"/f.txt": "one 1\n", "/a b.txt": "spc 1\n", "/sub/a.txt": "sba 1\n", "/sub/b.txt": "sbb 1\n",
             "/keep.txt": "kep 1\n", "/sub.txt": "sbt 1\n"}
    for path, text in files.items():
        (root / path[1:]).write_text(text)
    config = tmp_path / "edge.toml"
    config.write_text(LONG_VALID)
    server = edge(*TWO, root=root, config=config)
    targets = {path: path.replace(" ", "%20") for path in files}
    later = "/later.txt"

    def check(refreshed: set[str]) -> None:
        seen = bodies(server, list(targets.values()), fresh=2)
        for path, target in targets.items():
            want = files[path].replace("1", "2") if path in refreshed else files[path]
            assert seen[target] == {want.encode()}, (path, seen[target])

    check(set())
    answers = on_each_worker(server, [later])
    assert {a[later][0] for a in answers.values()} == {404}
    for path, text in files.items():
        replace(root / path[1:], text.replace("1", "2"))  # the same size: only a fresh look notices
    (root / later[1:]).write_text("late\n")
    check(set())  # file_cache.valid = 3600: still the old contents everywhere
    assert {a[later][0] for a in on_each_worker(server, [later]).values()} == {404}, "the 404 is cached too"

    assert purge(server, {"paths": ["/f.txt"]})["workers"] == 2
    check({"/f.txt"})
    assert purge(server, {"paths": ["/a%20b.txt"]})["worker_entries"] == 1
    check({"/f.txt", "/a b.txt"})
    assert purge(server, {"tags": ["sub"]})["purged"] == 0, "local files have no tags"
    check({"/f.txt", "/a b.txt"})
    purge(server, {"prefix": "/sub/"})
    check({"/f.txt", "/a b.txt", "/sub/a.txt", "/sub/b.txt"})
    assert admin(server, "PURGE", "/keep.txt").status_code == 200
    check({"/f.txt", "/a b.txt", "/sub/a.txt", "/sub/b.txt", "/keep.txt"})
    purge(server, {"paths": [later]})
    assert {a[later][:1] for a in on_each_worker(server, [later]).values()} == {(200,)}
    purge(server, {"all": True})
    check(set(files))


def test_purge_method_decodes_the_path_once(edge, tmp_path):
    root = tmp_path / "site"
    root.mkdir()
    (root / "100%.txt").write_text("pct 1\n")
    (root / "a%41.txt").write_text("lit 1\n")
    (root / "aA.txt").write_text("dec 1\n")
    config = tmp_path / "edge.toml"
    config.write_text(LONG_VALID)
    server = edge(root=root, config=config)
    targets = ["/100%25.txt", "/a%2541.txt", "/aA.txt"]
    assert [get(server, t)[2] for t in targets] == [b"pct 1\n", b"lit 1\n", b"dec 1\n"]
    for name in ("100%.txt", "a%41.txt", "aA.txt"):
        replace(root / name, (root / name).read_text().replace("1", "2"))
    r = admin(server, "PURGE", "/a%2541.txt")
    assert r.status_code == 200 and r.json()["worker_entries"] == 1, r.text
    assert [get(server, t)[2] for t in targets[1:]] == [b"lit 2\n", b"dec 1\n"], "the literal '%41' file only"
    r = admin(server, "PURGE", "/100%25.txt")
    assert r.status_code == 200, r.text
    assert get(server, targets[0])[2] == b"pct 2\n"


# -- the command line ---------------------------------------------------------------------------------------


def test_cli_purge_paths_exits_0_with_one_line(pulling, origin, cache):
    server = pulling(origin, "--admin-token", TOKEN, config=LONG_VALID)
    target = gen("cli", cc="max-age=600")
    assert get(server, target)[2] == gen_body("cli", origin.port, 0)
    wait_published(server, lambda d: d["cache"]["objects"] == 1, token=TOKEN)
    origin.ctl("/_bump/cli")
    proc = run_cli("purge", "--admin", server.admin_url, "--token", TOKEN, "/gen/cli", "/gen/other")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"{server.admin_url}: purged 2 (1 from the disk cache, 1 workers)"
    assert get(server, target)[2] == gen_body("cli", origin.port, 1)
    proc = run_cli("purge", "--admin", server.admin_url, "/gen/cli", env={"EDGE_ADMIN_TOKEN": TOKEN})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"{server.admin_url}: purged ")


def test_cli_purge_failures_exit_1_with_the_reason(edge):
    server = edge("--admin-token", TOKEN)
    proc = run_cli("purge", "--admin", server.admin_url, "--token", "wrong", "/x", env={"EDGE_ADMIN_TOKEN": ""})
    assert proc.returncode == 1
    assert "401" in proc.stderr and "a valid bearer token is needed" in proc.stderr
    assert proc.stdout == ""
    proc = run_cli("purge", "--admin", closed_url(), "--token", TOKEN, "/x")
    assert proc.returncode == 1 and "failed" in proc.stderr
    proc = run_cli("purge", "--admin", server.admin_url, "--token", TOKEN)
    assert proc.returncode == 2, "nothing named"


def test_cli_purge_kinds_send_the_right_bodies(pulling, origin, cache, capsys):
    server = pulling(origin, "--admin-token", TOKEN, config=LONG_VALID)
    objects = {"k1": gen("k1", cc="max-age=600", tags="a"), "k2": gen("k2", cc="max-age=600", tags="c"),
               "k3": gen("k3", cc="max-age=600", tags="d"), "j1": gen("j1", cc="max-age=600"),
               "j2": gen("j2", cc="max-age=600")}
    for target in objects.values():
        assert get(server, target)[0] == 200
    wait_published(server, lambda d: d["cache"]["objects"] == len(objects), token=TOKEN)
    base = ["purge", "--admin", server.admin_url, "--token", TOKEN]

    def run(*args: str) -> str:
        capsys.readouterr()
        assert cli.main(base + list(args)) == 0
        out = capsys.readouterr().out
        assert out.count("\n") == 1, out
        return out

    assert run("--tag", "a", "--tag", "c") == f"{server.admin_url}: purged 4 (2 from the disk cache, 1 workers)\n"
    assert origin.count(objects["k3"]) == 1
    assert run("--prefix", "/gen/j") == f"{server.admin_url}: purged 4 (2 from the disk cache, 1 workers)\n"
    assert run("--all") == f"{server.admin_url}: purged 2 (1 from the disk cache, 1 workers)\n"
    assert status(server, TOKEN)["cache"]["objects"] == 0
    for name, target in objects.items():
        assert get(server, target)[0] == 200
        assert origin.count(target) == 2, name


def test_cli_status_prints_one_line_per_worker(pulling, origin, cache):
    server = pulling(origin, *TWO, "--admin-token", TOKEN)
    proc = run_cli("status", "--admin", server.admin_url, "--token", TOKEN)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("edge ") and " requests" in lines[0]
    workers = [line for line in lines if line.startswith("  worker pid ")]
    assert sorted(int(line.split()[2]) for line in workers) == sorted(p for p, _ in server.banner.values())
    assert any(line.startswith(f"  origin {origin.url} ") for line in lines)
    assert any(line.startswith("  cache: ") for line in lines)
    proc = run_cli("status", "--admin", server.admin_url, "--token", "wrong")
    assert proc.returncode == 1 and "401" in proc.stderr


# -- the fleet ----------------------------------------------------------------------------------------------


def test_fleet_lists_every_address_once(monkeypatch):
    def fake(host, port, family=0, type=0, proto=0, flags=0):
        assert host == "edges.test" and type == socket.SOCK_STREAM
        return [(socket.AF_INET, type, 6, "", ("192.0.2.1", port)),
                (socket.AF_INET6, type, 6, "", ("2001:db8::1", port, 0, 0)),
                (socket.AF_INET, type, 6, "", ("192.0.2.1", port)),
                (socket.AF_INET, type, 6, "", ("192.0.2.2", port))]

    monkeypatch.setattr(socket, "getaddrinfo", fake)
    assert adminclient.fleet("edges.test:9191") == ["http://192.0.2.1:9191", "http://[2001:db8::1]:9191",
                                                    "http://192.0.2.2:9191"]
    assert adminclient.fleet("edges.test")[0] == "http://192.0.2.1:9090"


def test_fleet_that_does_not_resolve_exits_1(monkeypatch, capsys):
    def fail(*args, **kw):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", fail)
    assert cli.main(["purge", "--fleet", "no-such-host.invalid:9090", "--all"]) == 1
    err = capsys.readouterr().err
    assert "no-such-host.invalid:9090: cannot resolve" in err
    assert cli.main(["purge", "--fleet", "edges.test:port", "--all"]) == 1, "a port that is not a number"


def test_fleet_localhost_purges_every_address_it_resolves_to(edge):
    port = free_port()
    server = edge("--admin", f"127.0.0.1:{port}")
    nodes = adminclient.fleet(f"localhost:{port}")
    assert f"http://127.0.0.1:{port}" in nodes
    proc = run_cli("purge", "--fleet", f"localhost:{port}", "/hello.txt")
    for node in nodes:
        if node == server.admin_url:
            assert f"{node}: purged 0 (0 from the disk cache, 1 workers)" in proc.stdout.splitlines()
        else:  # ::1 where localhost has an AAAA record: nothing listens there
            assert f"{node}: failed: " in proc.stderr
    assert proc.returncode == (0 if nodes == [server.admin_url] else 1), (proc.stdout, proc.stderr)


def test_fleet_purge_reaches_every_node(edge, tmp_path, monkeypatch, capsys):
    root = tmp_path / "site"
    root.mkdir()
    (root / "f.txt").write_text("v1\n")
    config = tmp_path / "edge.toml"
    config.write_text(LONG_VALID)
    nodes = []
    for attempt in range(5):  # the same admin port on 127.0.0.1 and 127.0.0.2
        port = free_port()
        first = edge("--admin", f"127.0.0.1:{port}", "--admin-token", TOKEN, root=root, config=config)
        try:
            second = edge("--admin", f"127.0.0.2:{port}", "--admin-token", TOKEN, root=root, config=config)
        except RuntimeError:  # the port was taken on 127.0.0.2
            first.stop()
            continue
        nodes = [first, second]
        break
    assert nodes, "no port free on both loopback addresses"
    assert [n.admin_url for n in nodes] == [f"http://127.0.0.1:{port}", f"http://127.0.0.2:{port}"]
    real = socket.getaddrinfo

    def resolve(host, *args, **kw):
        if host == "edges.test":
            return [info for addr in ("127.0.0.1", "127.0.0.2") for info in real(addr, *args, **kw)]
        return real(host, *args, **kw)

    monkeypatch.setattr(socket, "getaddrinfo", resolve)
    for node in nodes:
        assert get(node, "/f.txt")[2] == b"v1\n"
    replace(root / "f.txt", "v2\n")
    assert all(get(node, "/f.txt")[2] == b"v1\n" for node in nodes)
    capsys.readouterr()
    assert cli.main(["purge", "--fleet", f"edges.test:{port}", "--token", TOKEN, "/f.txt"]) == 0
    out = capsys.readouterr()
    assert sorted(out.out.splitlines()) == [f"{n.admin_url}: purged 1 (0 from the disk cache, 1 workers)"
                                            for n in nodes], out
    assert all(get(node, "/f.txt")[2] == b"v2\n" for node in nodes)

    nodes[1].stop()
    assert cli.main(["purge", "--fleet", f"edges.test:{port}", "--token", TOKEN, "--all"]) == 1
    out = capsys.readouterr()
    assert out.out.splitlines() == [f"{nodes[0].admin_url}: purged 1 (0 from the disk cache, 1 workers)"]
    assert out.err.startswith(f"{nodes[1].admin_url}: failed: ")
    assert cli.main(["purge", "--fleet", f"edges.test:{port}", "--token", "wrong", "--all"]) == 1
    err = capsys.readouterr().err
    assert f"{nodes[0].admin_url}: failed: 401" in err and f"{nodes[1].admin_url}: failed: " in err


def test_fleet_takes_bracketed_ipv6_with_or_without_a_port():
    from edge.adminclient import fleet

    assert fleet("[::1]:9091") == ["http://[::1]:9091"]
    assert fleet("[::1]") == ["http://[::1]:9090"]
    assert fleet("::1") == ["http://[::1]:9090"]
