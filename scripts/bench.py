"""Benchmark harness for edge against nginx, granian, aiohttp and uvicorn+Starlette.

Start it through ``scripts/bench``, which first installs what is missing
(nginx and wrk from apt, .venv with ``pip install -e .``, .bench-venv with the
peers; BENCH_NO_INSTALL=1 skips that), raises the open-file limit, and stops
every process it started on exit or Ctrl-C.

In the pinned rows every server runs as one worker (edge and granian: a
supervisor plus one worker) pinned to CPU 1; the load generators run pinned
to CPU 0.  Rows:

  1k, 100k   wrk -t1 -c64 --latency: req/s and p99 latency
  1m, 64m    bench_client.bulk_download (K keep-alive connections reading
             1 MiB per recv): MB/s (10^6 bytes per second of body payload)
  idle       bench_client.IdleConnections: server RSS growth per idle
             keep-alive connection (bytes)

Two more rows use the whole machine, edge and nginx only: nothing is pinned
by taskset (edge keeps its default --cpu-affinity auto, one CPU per worker;
nginx runs a master with worker_processes N and no worker_cpu_affinity) and
wrk -t2 -c128 --latency runs on all CPUs too, 1 KiB GET:

  machine    edge --workers auto against nginx worker_processes auto
  scaling    1 and 2 workers of each; prints each server's 2-worker /
             1-worker req/s and edge's ratio over nginx's (target >= 0.95)

Their cells are measured interleaved (run 1 of every cell, then run 2, ...)
so that the ratios pair runs taken close together.

HTTP/2 rows, pinned like the first ones, measured with h2load (nghttp2-client)
running one thread on CPU 0, against edge, nginx, granian, hypercorn (a tiny
ASGI static app, scripts/bench_peers/hypercorn_app.py) and h2o:

  h2-1k, h2-1m        h2c (prior knowledge, plaintext port): h2load -c16 -m10,
                      req/s (and MB/s for 1 MiB)
  h2-64m              h2c, h2load -cK -m1 (K = --conns): MB/s
  h2tls-1k, h2tls-1m  h2 over TLS (ALPN), same load as h2-1k / h2-1m
  h2-idle             bench_client.H2IdleConnections: server RSS growth per idle
                      h2c connection (bytes), measured like the idle row: N
                      connections (N = --idle-conns), each sends the client
                      preface, an empty SETTINGS and one GET of the 1 KiB file,
                      reads the whole response (status 200, every byte), then
                      stays idle

Each server is started once for its h2c rows and once for its TLS rows (with a
self-signed certificate made for the run); every file is checked byte for
byte over HTTP/2 with nghttp first.  Any h2load request that failed, errored
or timed out, or any non-2xx status, fails the cell.  These runs last
--h2-duration seconds (default 4, or --duration when shorter).  The two RSS
rows (idle, h2-idle) start a fresh server for each run; edge runs them with
--keepalive-timeout 600 (its idle timeout for HTTP/1.1 and HTTP/2 alike), the
peers' idle timeouts are set long in every row.  After the
table, edge's figures are set against the targets of the HTTP/2 issue.

Proxy-cache rows, edge against nginx proxy_cache (edge and nginx only).  The
origin is an nginx of its own (one process, pinned to CPU 0 beside the load
generator) serving 1 KiB files /obj/0 .. /obj/99 with Cache-Control:
max-age=3600; edge (`--workers 1 --origin ... --cache-dir ...`, empty root) and
nginx (master + 1 worker, proxy_cache, keep-alive upstream, proxy_cache_lock
on) stand in front of it on CPU 1.  wrk -t1 -c64 --latency runs a Lua script
(wrk -s) that picks each request's path:

  proxy-hot       cycles through the 100 objects, all warmed first (a hit is
                  checked in Cache-Status / X-Cache-Status); beside it edge
                  serving the same files from a local root, so that edge proxy
                  / edge local file is printed (target >= 0.90) with edge / nginx
  proxy-miss      /obj/i?v=TOKEN-i: a new cache key on every request, stored by
                  both (checked first); edge / nginx printed (target >= 0.5); a
                  run fails unless the origin saw a request for each
  proxy-coalesce  100 connections ask at once for one new key (1 MiB the origin
                  sends at 4 MiB/s); the origin's access log counts the fetches

proxy-hot and proxy-miss cells are measured in rounds like the unpinned rows
("proxy" selects all three rows).

Tunnel rows ("tunnel" selects all five), edge against nginx proxy_pass (edge and
nginx only; edge-base with --baseline).  The origin is
scripts/bench_peers/ws_origin.py, one uvloop process pinned to CPU 0 beside the
load generator: a WebSocket echo (/ws/echo), sink (/ws/sink) and source
(/ws/source), and a POST sink.  In front of it on CPU 1: edge (`--workers 1
--origin ...`, empty root, as in the proxy rows, plus a [websocket] table with
max_tunnels above --idle-tunnels and idle_timeout 600) and nginx (master + 1
worker; /ws/ with `proxy_http_version 1.1`, `proxy_set_header Upgrade
$http_upgrade`, `proxy_set_header Connection "upgrade"`, nginx's 4k
proxy_buffer_size unless --nginx-ws-buffer sets it; other paths over keep-alive
upstream connections, `proxy_request_buffering off`):

  ws-echo       64 tunnels opened first (101 and Sec-WebSocket-Accept checked),
                then each sends a 64 B binary frame (masked, built beforehand),
                waits for its echo, compares it byte for byte and sends the next
                (bench_client.ws_echo: one process, uvloop): round trips/s, p99
                round-trip latency, server CPU µs per round trip
  ws-bulk       one tunnel, client -> origin: 1 MiB binary frames back to back,
                the origin counting the payload (never unmasking it) and
                confirming the total at the end (bench_client.ws_bulk_up): MB/s
                (10^6 bytes of payload per second), server CPU s per GiB
  ws-bulk-down  the other way: the origin sends 1 MiB frames back to back, the
                client reads them (1 MiB recv_into) checking every frame header
                (bench_client.ws_bulk_down)
  ws-idle       server RSS growth per open idle tunnel, measured like the idle
                row with N = --idle-tunnels (default 10000) tunnels, each with
                one echo checked (bench_client.WsIdleTunnels), a fresh server per
                run; edge holds 6 fds per tunnel (2 sockets, 2 splice pipes), so
                the open-file limit must reach 6 N + 1024 (65536 fits 10000)
  post-1m       wrk -t1 -c64 -s: POST of the same 1 MiB body; the origin reads
                every byte and answers a small 200: req/s, server CPU µs/request

Each cell is checked first: 100 echoes of 64 B (ws-echo) or 8 of 1 MiB (bulk
rows) compared byte for byte, or a 1 MiB POST whose SHA-256 the origin sends
back (post-1m).  A refused handshake, a wrong byte, a closed tunnel or a non-2xx
answer (405 while edge does not pass POST through) fails that cell with its
reason; the other cells go on.  Cells are measured in rounds like the proxy
rows; after the table come edge / nginx per round against the issue's targets
(>= 0.5x echo round trips, >= 0.9x bulk MB/s with CPU per GiB <= 1.2x, <= 4 KiB
per idle tunnel, >= 0.5x POST req/s; printed, not asserted) and how busy the
load side (client + origin, both on CPU 0) was: near nginx's echo rate it needs
the whole core, which then caps the nginx cell and flatters edge's ratio.

For every throughput row the server's CPU time (utime+stime from
/proc/PID/stat, summed over the server's process tree) is sampled before and
after the run: CPU µs per request, or CPU seconds per GiB sent.  Every figure
is the median of --runs runs, shown with its min-max spread.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import http.client
import json
import os
import platform
import pwd
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_client  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
PEERS_DIR = Path(__file__).resolve().parent / "bench_peers"
HOST = "127.0.0.1"
SERVER_CPU = "1"
CLIENT_CPU = 0
MULTI_SERVERS = ("edge", "nginx")    # the servers of the unpinned multi-worker rows
H1_SERVERS = ("edge", "edge-base", "nginx", "granian", "aiohttp", "uvicorn")     # HTTP/1.1 rows
H2_SERVERS = ("edge", "edge-base", "edge-h2lib", "nginx", "granian", "hypercorn", "h2o")       # HTTP/2 rows
EDGE_SERVERS = ("edge", "edge-base", "edge-h2lib")  # edge itself: this tree, --baseline's, the h2 engine
H2_LOAD = (16, 10)                   # h2load -c16 -m10: the 1 KiB and 1 MiB HTTP/2 rows
H2_DURATION = 4.0                    # default seconds per run of the HTTP/2 rows
# h2c 1 KiB req/s that the HTTP/2 issue quotes (h2load -c16 -m10, one pinned core,
# measured earlier, elsewhere): printed beside this run's figures
H2_ANCHORS = {"nginx": 54_500, "granian": 17_800, "hypercorn": 1_200, "h2o": 450_000}
H2_TARGETS = (   # (row, other server, minimum edge / other), printed not asserted
    ("h2-1k", "hypercorn", 5.0),
    ("h2-1k", "granian", 0.5),
    ("h2-64m", "nginx", 0.7),
)
WRK_PINNED = (1, 64)                 # wrk threads, connections: pinned rows
WRK_UNPINNED = (2, 128)              # unpinned rows: 64 connections per wrk thread
SCALING_TARGET = 0.95                # edge scaling / nginx scaling, printed not asserted
PROXY_SERVERS = ("edge", "edge-base", "nginx")    # the servers of the proxy-cache rows (edge-base: --baseline)
PROXY_OBJECTS = 100                  # 1 KiB objects /obj/0 .. /obj/99 on the origin
PROXY_OBJ_SIZE = 1 << 10
COALESCE_CLIENTS = 100               # concurrent requests for one new key
COALESCE_SIZE = 1 << 20              # the coalesced object: 1 MiB ...
COALESCE_RATE = "4m"                 # ... sent by the origin at 4 MiB/s: one fetch takes ~0.25 s
PROXY_HOT_TARGET = 0.90              # edge proxy-hot / edge local-file req/s, printed not asserted
PROXY_MISS_TARGET = 0.5              # edge / nginx proxy-miss req/s, printed not asserted
CACHE_FIELD = {"edge": "cache-status", "nginx": "x-cache-status"}   # where each says hit or miss
TUNNEL_SERVERS = ("edge", "edge-base", "nginx")   # the tunnel rows: edge and nginx in front of ws_origin
WS_ECHO_TUNNELS = 64                 # ws-echo: tunnels, each with one message in flight ...
WS_ECHO_SIZE = 64                    # ... of this many payload bytes (a binary frame)
WS_FRAME = 1 << 20                   # ws-bulk, ws-bulk-down: payload bytes per binary frame
WS_CHECK = (1 << 20, 8)              # before the bulk rows: 8 echoes of 1 MiB, compared byte for byte
WS_IDLE_TUNNELS = 10_000             # ws-idle: default --idle-tunnels
WS_FDS = 6                           # edge's fds per tunnel: 2 sockets + 2 pipes (splice) of 2 fds
POST_SIZE = 1 << 20                  # post-1m: request body bytes
TUNNEL_TARGETS = {                   # the issue's targets, printed not asserted
    "ws-echo": 0.5,                  # edge / nginx round trips per second, at least
    "ws-bulk": (0.9, 1.2),           # edge / nginx MB/s at least, server CPU per GiB at most
    "ws-bulk-down": (0.9, 1.2),
    "ws-idle": 4096,                 # edge RSS per idle tunnel (bytes), at most
    "post-1m": 0.5,                  # edge / nginx req/s, at least
}
CLK_TCK = os.sysconf("SC_CLK_TCK")
OTHER_LOAD_WARN = 0.15      # warn when others used more than this share of a CPU
IDLE_TIMEOUT = 600          # edge --keepalive-timeout in the RSS rows (s): nothing closes them

FILES = {"1k.bin": 1 << 10, "100k.bin": 100 << 10, "1m.bin": 1 << 20, "64m.bin": 64 << 20}
ALL_SERVERS = ["edge", "edge-base", "edge-h2lib", "nginx", "granian", "aiohttp", "uvicorn", "hypercorn", "h2o"]
SERVER_LABEL = {
    "edge": "edge",
    "edge-base": "edge before (--baseline)",  # named after the revision when --baseline is given
    "edge-h2lib": "edge on the h2 library ([http2] engine = \"h2\")",
    "nginx": "nginx",
    "granian": "granian (static route)",
    "aiohttp": "aiohttp web.static",
    "uvicorn": "uvicorn+Starlette",
    "hypercorn": "hypercorn (tiny ASGI app)",
    "h2o": "h2o file.dir",
}
# the cells of the proxy rows: edge and nginx as caching proxies of one origin, and in the
# proxy-hot row edge once more serving the same objects from a local root
PROXY_LABEL = {
    "edge": "edge proxy (disk cache)",
    "nginx": "nginx proxy_cache",
    "edge-local": "edge, same objects as local files",
    "edge-base": "edge proxy before (--baseline)",
}
# the cells of the tunnel rows: edge and nginx in front of the bench's WebSocket/POST origin
TUNNEL_LABEL = {
    "edge": "edge --origin (splice relay)",
    "nginx": "nginx proxy_pass",
    "edge-base": "edge --origin before (--baseline)",
}


@dataclasses.dataclass
class Row:
    key: str
    label: str
    kind: str          # "wrk", "bulk", "idle" (RSS; proto h2c: h2-idle) or "h2load"
    file: str
    unit: str
    workers: str | None = None   # "auto" or N: unpinned multi-worker row; None: pinned
    servers: tuple[str, ...] = H1_SERVERS   # the servers this row measures
    proto: str | None = None     # None: HTTP/1.1; "h2c": HTTP/2 by prior knowledge; "h2": TLS
    load: tuple[int | None, int] | None = None   # h2load -c, -m (-c None: --conns)
    proxy: str | None = None     # "hot", "miss" or "coalesce": a proxy-cache row (run_proxy)
    tunnel: str | None = None    # "echo", "up", "down", "idle" or "post": a tunnel row (run_tunnel)


ROWS = [
    Row("1k", "1 KiB GET (req/s)", "wrk", "1k.bin", "req/s"),
    Row("100k", "100 KiB GET (req/s)", "wrk", "100k.bin", "req/s"),
    Row("1m", "1 MiB GET (MB/s)", "bulk", "1m.bin", "MB/s"),
    Row("64m", "64 MiB GET (MB/s)", "bulk", "64m.bin", "MB/s"),
    Row("idle", "RSS per idle keep-alive conn (B, lower is better)", "idle", "1k.bin", "B"),
    Row("h2-idle", "RSS per idle HTTP/2 h2c conn (B, lower is better)", "idle", "1k.bin", "B",
        servers=H2_SERVERS, proto="h2c"),
    Row("h2-1k", "HTTP/2 h2c 1 KiB GET (req/s)", "h2load", "1k.bin", "req/s",
        servers=H2_SERVERS, proto="h2c", load=H2_LOAD),
    Row("h2-1m", "HTTP/2 h2c 1 MiB GET (MB/s)", "h2load", "1m.bin", "MB/s",
        servers=H2_SERVERS, proto="h2c", load=H2_LOAD),
    Row("h2-64m", "HTTP/2 h2c 64 MiB GET (MB/s)", "h2load", "64m.bin", "MB/s",
        servers=H2_SERVERS, proto="h2c", load=(None, 1)),
    Row("h2tls-1k", "HTTP/2 TLS 1 KiB GET (req/s)", "h2load", "1k.bin", "req/s",
        servers=H2_SERVERS, proto="h2", load=H2_LOAD),
    Row("h2tls-1m", "HTTP/2 TLS 1 MiB GET (MB/s)", "h2load", "1m.bin", "MB/s",
        servers=H2_SERVERS, proto="h2", load=H2_LOAD),
    Row("machine", "1 KiB GET, whole machine: workers auto, unpinned (req/s)", "wrk", "1k.bin",
        "req/s", workers="auto", servers=MULTI_SERVERS),
    Row("scaling-1", "1 KiB GET, 1 worker, unpinned (req/s)", "wrk", "1k.bin", "req/s",
        workers="1", servers=MULTI_SERVERS),
    Row("scaling-2", "1 KiB GET, 2 workers, unpinned (req/s)", "wrk", "1k.bin", "req/s",
        workers="2", servers=MULTI_SERVERS),
    Row("proxy-hot", f"proxy cache hit, {PROXY_OBJECTS} hot 1 KiB objects (req/s)", "wrk", "obj",
        "req/s", servers=PROXY_SERVERS, proxy="hot"),
    Row("proxy-miss", "proxy cache miss, 1 KiB, a new key per request (req/s)", "wrk", "obj",
        "req/s", servers=PROXY_SERVERS, proxy="miss"),
    Row("proxy-coalesce", f"{COALESCE_CLIENTS} concurrent misses of one new 1 MiB key "
        "(origin fetches)", "coalesce", "co.bin", "fetches", servers=PROXY_SERVERS,
        proxy="coalesce"),
    Row("ws-echo", f"WebSocket echo, {WS_ECHO_TUNNELS} tunnels, {WS_ECHO_SIZE} B messages "
        "(round trips/s)", "wsecho", "/ws/echo", "rt/s", servers=TUNNEL_SERVERS, tunnel="echo"),
    Row("ws-bulk", "WebSocket relay, 1 tunnel, client → origin, 1 MiB frames (MB/s)", "wsbulk",
        "/ws/sink", "MB/s", servers=TUNNEL_SERVERS, tunnel="up"),
    Row("ws-bulk-down", "WebSocket relay, 1 tunnel, origin → client, 1 MiB frames (MB/s)",
        "wsbulk", "/ws/source", "MB/s", servers=TUNNEL_SERVERS, tunnel="down"),
    Row("ws-idle", "RSS per idle WebSocket tunnel (B, lower is better)", "idle", "/ws/echo", "B",
        servers=TUNNEL_SERVERS, tunnel="idle"),
    Row("post-1m", "POST of 1 MiB bodies to the origin (req/s)", "wrk", "/post", "req/s",
        servers=TUNNEL_SERVERS, tunnel="post"),
]
ROW_BY_KEY = {r.key: r for r in ROWS}
ROW_GROUPS = {"scaling": ("scaling-1", "scaling-2"),   # --rows names that select several rows
              "proxy": ("proxy-hot", "proxy-miss", "proxy-coalesce"),
              "tunnel": ("ws-echo", "ws-bulk", "ws-bulk-down", "ws-idle", "post-1m")}
ROW_NAMES = ["1k", "100k", "1m", "64m", "idle", "h2-idle", "h2-1k", "h2-1m", "h2-64m", "h2tls-1k",
             "h2tls-1m", "machine", "scaling", "proxy-hot", "proxy-miss",
             "proxy-coalesce", "ws-echo", "ws-bulk", "ws-bulk-down", "ws-idle", "post-1m",
             "purge"]   # --rows choices (and the groups "proxy", "tunnel", "scaling")


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class Interrupted(Exception):
    pass


def _on_sigterm(signum, frame):  # noqa: ARG001
    raise Interrupted(f"signal {signum}")


# --------------------------------------------------------------------------
# /proc helpers


def proc_tree(root: int) -> list[int]:
    """root and all its descendants (by scanning /proc)."""
    children: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2:].split()
        children.setdefault(int(fields[1]), []).append(int(d))
    out, todo = [], [root]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def cpu_by_pid(root: int) -> dict[int, float]:
    """utime+stime of every process in the tree under root, in seconds."""
    out = {}
    for pid in proc_tree(root):
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2:].split()
        out[pid] = (int(fields[11]) + int(fields[12])) / CLK_TCK   # utime, stime (fields 14, 15)
    return out


def cpu_seconds(root: int) -> float:
    """utime+stime of the process tree under root, in seconds."""
    return sum(cpu_by_pid(root).values())


def affinities(root: int) -> set[str]:
    """Cpus_allowed_list of every thread in the process tree under root."""
    seen = set()
    for pid in proc_tree(root):
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tids:
            try:
                with open(f"/proc/{pid}/task/{tid}/status") as f:
                    for line in f:
                        if line.startswith("Cpus_allowed_list:"):
                            seen.add(line.split(":", 1)[1].strip())
                            break
            except OSError:
                continue
    return seen


CREATE_SLOW_US = 100.0  # a file created in the run's directory ($TMPDIR) costing more than this: flagged


def create_cost(directory: Path, count: int = 400) -> float:
    """Microseconds to create (open O_CREAT|O_EXCL, close) one empty file in a new subdirectory of
    ``directory``: every proxy miss creates one, in edge and in nginx.  On this VM's ext4 the same call
    cost 40 µs in /var/tmp and 650-740 µs in /tmp over the same minutes, then 57 µs in /tmp a quarter
    of an hour later: at 700 µs the proxy-miss row measures the inode allocator, not the servers."""
    sub = Path(tempfile.mkdtemp(prefix="create-cost.", dir=directory))
    t0 = time.perf_counter()
    for i in range(count):
        os.close(os.open(sub / str(i), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
    return (time.perf_counter() - t0) / count * 1e6


def create_cost_note(directory: Path) -> str:
    """The report's line on what creating a file costs where the proxy rows keep their caches."""
    us = create_cost(directory)
    note = f"Creating a file in {directory} (the caches' disk) costs {us:.0f} µs"
    if us > CREATE_SLOW_US:
        note += (f": **more than {CREATE_SLOW_US:.0f} µs, the proxy-miss figures measure the filesystem**; "
                 "run again with TMPDIR on another directory")
        log(note)
    return note + "."


def machine_busy_seconds() -> float:
    """user+nice+system time of all CPUs (irq/softirq excluded), in seconds."""
    with open("/proc/stat") as f:
        fields = f.readline().split()
    return (int(fields[1]) + int(fields[2]) + int(fields[3])) / CLK_TCK


def wait_for_quiet(pid: int, max_wait: float) -> float:
    """Wait (up to max_wait s) until processes other than the server and this
    harness use less than OTHER_LOAD_WARN of a CPU; returns the last share seen."""
    deadline = time.monotonic() + max_wait
    announced = False
    while True:
        s = Sample(pid)
        time.sleep(0.5)
        other = s.finish()["other_util"]
        if other <= OTHER_LOAD_WARN or time.monotonic() >= deadline:
            return other
        if not announced:
            log(f"machine busy (others use {other * 100:.0f}% of a CPU): waiting up to "
                f"{max_wait:.0f} s for it to calm down")
            announced = True


class Sample:
    """CPU accounting around one run: the server's tree (and each of its
    worker processes), the load generator (this process for the Python
    clients, or the waited-for wrk child) and whatever else ran on the
    machine meanwhile ("other")."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.t0 = time.perf_counter()
        self.by_pid0 = cpu_by_pid(pid)
        self.server0 = sum(self.by_pid0.values())
        self.busy0 = machine_busy_seconds()
        self.client0 = self._client()

    @staticmethod
    def _client() -> float:
        s = resource.getrusage(resource.RUSAGE_SELF)
        c = resource.getrusage(resource.RUSAGE_CHILDREN)
        return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime

    def finish(self) -> dict:
        wall = time.perf_counter() - self.t0
        by_pid = cpu_by_pid(self.pid)
        server = sum(by_pid.values()) - self.server0
        client = self._client() - self.client0
        other = machine_busy_seconds() - self.busy0 - server - client
        workers = [(t - self.by_pid0.get(p, 0.0)) / wall
                   for p, t in sorted(by_pid.items()) if p != self.pid]
        return {"cpu": server, "wall": wall, "util": server / wall, "worker_util": workers,
                "client_util": client / wall, "other_util": max(0.0, other / wall)}


def rss_bytes(root: int) -> int:
    """VmRSS of the process tree under root, in bytes."""
    total = 0
    for pid in proc_tree(root):
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
                        break
        except OSError:
            continue
    return total


# --------------------------------------------------------------------------
# servers


def self_signed_cert(directory: Path) -> tuple[str, str]:
    """A throwaway self-signed P-256 certificate (for localhost and 127.0.0.1) and
    its PKCS#8 key in `directory`, made with the openssl CLI unless already there."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    if not (cert.exists() and key.exists()):
        directory.mkdir(parents=True, exist_ok=True)
        p = subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
             "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", str(key),
             "-out", str(cert), "-days", "2", "-subj", "/CN=localhost",
             "-addext", f"subjectAltName=DNS:localhost,IP:{HOST}"],
            capture_output=True, text=True, timeout=60)
        if p.returncode != 0 or not key.exists():
            raise RuntimeError(f"openssl could not make a certificate: {p.stderr.strip()[-300:]}")
    return str(cert), str(key)


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


# What every nginx of the bench shares: limits, logs, events, the http basics, temp paths.
NGINX_COMMON = """\
worker_rlimit_nofile {nofile};
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log warn;
events {{
    worker_connections {conns};
    use epoll;
}}
http {{
    default_type application/octet-stream;
    access_log off;
    sendfile on;
    tcp_nopush on;
    tcp_nodelay on;
"""
NGINX_FILE_CACHE = """\
    open_file_cache max=10000 inactive=60s;
    open_file_cache_valid 1s;
"""
NGINX_TEMPS = """\
    keepalive_requests 1000000000;
    keepalive_timeout 600s;
    client_body_temp_path {tmp}/client_body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
"""
NGINX_CONF = """\
# generated by scripts/bench
daemon off;
master_process {master};
worker_processes {workers};
{user}
""" + NGINX_COMMON + NGINX_FILE_CACHE + NGINX_TEMPS + """\
    server {{
        listen {host}:{port}{listen_opts} backlog=4096;
        server_name localhost;{tls}
        root {root};
        location / {{ }}
    }}
}}
"""
# The origin of the proxy rows: nginx, one process pinned beside the load generator,
# every object fresh for an hour; /co/ (the coalescing row) logs its requests and sends
# at COALESCE_RATE so that a fetch lasts a moment; /origin-status counts all requests.
NGINX_ORIGIN_CONF = """\
# generated by scripts/bench: origin of the proxy rows
daemon off;
master_process off;
worker_processes 1;
""" + NGINX_COMMON + NGINX_FILE_CACHE + NGINX_TEMPS + """\
    server {{
        listen {host}:{port} backlog=4096;
        server_name localhost;
        root {root};
        add_header Cache-Control "max-age=3600";
        location / {{ }}
        location = /healthz {{ return 200 "ok\\n"; }}
        location = /origin-status {{ stub_status; }}
        location /co/ {{
            access_log {tmp}/coalesce-access.log;
            limit_rate {rate};
        }}
    }}
}}
"""
# nginx as the caching proxy under test: master + 1 worker (and its cache manager and
# loader), keep-alive connections to the origin, responses stored for an hour (the
# origin's max-age), one fetch per new key at a time (proxy_cache_lock).  The default
# proxy_cache_key, $scheme$proxy_host$request_uri, keeps the query like edge's.
NGINX_PROXY_CONF = """\
# generated by scripts/bench: nginx proxy_cache
daemon off;
master_process on;
worker_processes 1;
{user}
""" + NGINX_COMMON + NGINX_TEMPS + """\
    proxy_cache_path {tmp}/cache levels=1:2 keys_zone=bench:64m max_size=10g inactive=1h
                     use_temp_path=off;
    upstream origin {{
        server {host}:{origin_port};
        keepalive 64;
    }}
    server {{
        listen {host}:{port} backlog=4096;
        server_name localhost;
        location / {{
            proxy_pass http://origin;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_cache bench;
            proxy_cache_valid 200 1h;
            proxy_cache_lock on;
            add_header X-Cache-Status $upstream_cache_status;
        }}
    }}
}}
"""
# wrk -s script of the proxy rows.  Arguments after "--": "rotate N" cycles through
# /obj/0 .. /obj/N-1 (requests built once); "unique N TOKEN" asks for /obj/i%N?v=TOKEN-i,
# a new cache key on every request (TOKEN differs between runs and servers).
WRK_PROXY_LUA = """\
-- generated by scripts/bench
local mode, n, token, i = "rotate", 100, "t", 0
local reqs = {}
function init(args)
  mode = args[1] or mode
  n = tonumber(args[2] or n)
  token = args[3] or token
  if mode == "rotate" then
    for k = 0, n - 1 do reqs[k + 1] = wrk.format(nil, "/obj/" .. k) end
  end
end
function request()
  i = i + 1
  if mode == "rotate" then return reqs[(i - 1) % n + 1] end
  return wrk.format(nil, "/obj/" .. (i % n) .. "?v=" .. token .. "-" .. i)
end
"""
# nginx in front of the tunnel rows' origin (scripts/bench_peers/ws_origin.py): master + 1 worker
# like the proxy rows.  /ws/ is nginx's documented WebSocket set-up (HTTP/1.1 to the origin, Upgrade
# and Connection: upgrade set; the upgraded connection relayed through proxy_buffer_size buffers, 4k
# by default, or --nginx-ws-buffer); timeouts long enough for the idle row.  Everything else (the start-up probe, the
# POSTs) goes over keep-alive upstream connections with the request body streamed as it arrives
# (proxy_request_buffering off, as edge passes it on), no body size limit.
NGINX_TUNNEL_CONF = """\
# generated by scripts/bench: nginx proxy_pass for the tunnel rows
daemon off;
master_process on;
worker_processes 1;
{user}
""" + NGINX_COMMON + NGINX_TEMPS + """\
    upstream origin {{
        server {host}:{origin_port};
        keepalive 64;
    }}
    server {{
        listen {host}:{port} backlog=4096;
        server_name localhost;
        client_max_body_size 0;
        location /ws/ {{
            proxy_pass http://origin;
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection "upgrade";
            proxy_read_timeout 600s;
            proxy_send_timeout 600s;{ws_buffer}
        }}
        location / {{
            proxy_pass http://origin;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_request_buffering off;
        }}
    }}
}}
"""
# wrk -s script of the post-1m row: every request a POST of the same body (read once from a file).
WRK_POST_LUA = """\
-- generated by scripts/bench
local f = assert(io.open("{body}", "rb"))
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = "application/octet-stream"
"""
# HTTP/2 instances: "listen ... http2" (h2c by prior knowledge only: the port no
# longer answers HTTP/1.1) or "listen ... ssl http2" (ALPN h2, http/1.1), nginx 1.22
NGINX_LISTEN = {None: "", "h2c": " http2", "h2": " ssl http2"}
NGINX_TLS = """
        ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_protocols TLSv1.2 TLSv1.3;"""   # 1.22 leaves TLSv1.3 out by default (1.23.4 adds it)

# h2o: one thread; plaintext listener (HTTP/1.1 and h2c by prior knowledge)
# or a TLS listener (ALPN h2, http/1.1); no access log, no OCSP stapling fetches
H2O_CONF = """\
# generated by scripts/bench
{user}pid-file: {tmp}/h2o.pid
error-log: {tmp}/h2o-error.log
num-threads: 1
max-connections: {conns}
http1-request-timeout: 600
http2-idle-timeout: 600
listen:
  host: {host}
  port: {port}
{tls}hosts:
  default:
    paths:
      /:
        file.dir: {root}
"""
H2O_TLS = """\
  ssl:
    certificate-file: {cert}
    key-file: {key}
    ocsp-update-interval: 0
"""


@dataclasses.dataclass
class Spec:
    name: str
    argv: list[str]
    prefix: str                       # URL prefix in front of the file names
    env: dict[str, str] = dataclasses.field(default_factory=dict)
    cwd: str | None = None


class Harness:
    def __init__(self, args: argparse.Namespace) -> None:
        self.a = args
        self.tmp = Path(args.tmp)
        self.corpus = self.tmp / "corpus"
        self.bench_venv = Path(args.bench_venv)
        self.edge_venv = Path(args.edge_venv)
        self.procs: list[subprocess.Popen] = []
        self.pidfile = self.tmp / "server-pgids"
        self.digests: dict[str, str] = {}
        self.nofile = bench_client.raise_nofile()
        self.base_tree: Path | None = None
        if args.baseline:
            # edge's package as it was at --baseline, run by the same venv: PYTHONPATH comes before the
            # editable install's finder, so "edge-base" is the old code with the same libraries.
            self.base_tree = self.tmp / "edge-base"
            self.base_tree.mkdir(exist_ok=True)
            archive = subprocess.run(["git", "-C", str(REPO), "archive", args.baseline, "edge"],
                                     check=True, capture_output=True).stdout
            subprocess.run(["tar", "-x", "-C", str(self.base_tree)], input=archive, check=True)

    # ---- corpus --------------------------------------------------------
    def make_corpus(self) -> None:
        self.corpus.mkdir(parents=True, exist_ok=True)
        for name, size in FILES.items():
            h = hashlib.sha256()
            with open(self.corpus / name, "wb") as f:
                left = size
                while left:
                    chunk = os.urandom(min(left, 1 << 20))
                    f.write(chunk)
                    h.update(chunk)
                    left -= len(chunk)
            self.digests[name] = h.hexdigest()
        log(f"corpus in {self.corpus}: {', '.join(FILES)}")

    # ---- TLS -------------------------------------------------------------
    def tls_files(self) -> tuple[str, str]:
        """A self-signed P-256 certificate and its PKCS#8 key (granian wants
        PKCS#8), made once per run with the openssl CLI; h2load does not verify it."""
        return self_signed_cert(self.tmp / "tls")

    # ---- proxy rows: origin corpus and servers ---------------------------
    def make_origin_corpus(self) -> None:
        """The origin's files (also the root of the edge local-file cell): /obj/0 ..
        /obj/N-1 of 1 KiB, /1k.bin (what start() probes for) and /co/co.bin of
        1 MiB; an empty root for edge as a proxy; the wrk script."""
        self.origin_root = self.tmp / "origin-root"
        self.empty_root = self.tmp / "proxy-empty-root"
        (self.origin_root / "obj").mkdir(parents=True, exist_ok=True)
        (self.origin_root / "co").mkdir(exist_ok=True)
        self.empty_root.mkdir(exist_ok=True)
        self.obj_digests: list[str] = []
        for k in range(PROXY_OBJECTS):
            data = os.urandom(PROXY_OBJ_SIZE)
            (self.origin_root / "obj" / str(k)).write_bytes(data)
            self.obj_digests.append(hashlib.sha256(data).hexdigest())
        (self.origin_root / "1k.bin").write_bytes(os.urandom(FILES["1k.bin"]))
        data = os.urandom(COALESCE_SIZE)
        (self.origin_root / "co" / "co.bin").write_bytes(data)
        self.co_digest = hashlib.sha256(data).hexdigest()
        self.lua = self.tmp / "proxy.lua"
        self.lua.write_text(WRK_PROXY_LUA)
        self.token = 0
        log(f"origin corpus in {self.origin_root}: obj/0..{PROXY_OBJECTS - 1} "
            f"({PROXY_OBJ_SIZE} B each), co/co.bin ({COALESCE_SIZE} B)")

    def next_token(self, what: str) -> str:
        """A string that no earlier cache key of this run contains."""
        self.token += 1
        return f"{what}-{os.getpid()}-{self.token}"

    def _nginx_conf(self, port: int, template: str, conns: int | None = None, **kw) -> Spec:
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        ntmp = self.tmp / f"nginx-{port}"
        ntmp.mkdir(exist_ok=True)
        conf = ntmp / "nginx.conf"
        conf.write_text(template.format(
            tmp=ntmp, host=HOST, port=port, conns=conns or max(1024, self.a.idle_conns + 2048),
            nofile=max(self.nofile, 1024),
            # a root master's workers would run as nobody, who cannot use the tmp dir
            user=f"user {pwd.getpwuid(os.geteuid()).pw_name};" if os.geteuid() == 0 else "",
            **kw))
        return Spec("nginx", [nginx, "-c", str(conf), "-p", str(ntmp), "-e",
                              str(ntmp / "nginx-error.log")], "")

    def origin_spec(self, port: int) -> Spec:
        return self._nginx_conf(port, NGINX_ORIGIN_CONF, root=self.origin_root,
                                rate=COALESCE_RATE)

    def origin_log(self, port: int) -> Path:
        return self.tmp / f"nginx-{port}" / "coalesce-access.log"

    # ---- tunnel rows: origin and the servers in front of it ---------------
    def make_tunnel_files(self) -> None:
        """The post-1m row's body (random bytes) and its wrk script; edge's empty root."""
        self.empty_root = self.tmp / "proxy-empty-root"   # as in the proxy rows
        self.empty_root.mkdir(exist_ok=True)
        self.post_body = os.urandom(POST_SIZE)
        body = self.tmp / "post-body.bin"
        body.write_bytes(self.post_body)
        self.post_lua = self.tmp / "post.lua"
        self.post_lua.write_text(WRK_POST_LUA.format(body=body))

    def ws_origin_spec(self, port: int) -> Spec:
        """scripts/bench_peers/ws_origin.py (the peers' venv: uvloop), one process."""
        return Spec("ws-origin", [str(self.bench_venv / "bin" / "python"),
                                  str(PEERS_DIR / "ws_origin.py"), "--host", HOST,
                                  "--port", str(port), "--source-size", str(WS_FRAME)], "")

    def tunnel_spec(self, cell: str, port: int, origin_port: int) -> Spec:
        """edge (as in the proxy rows, plus a [websocket] table that lets the idle row's tunnels
        in and keeps them open) or nginx (NGINX_TUNNEL_CONF) in front of ws_origin."""
        tunnels = self.a.idle_tunnels
        if cell == "nginx":
            buf = self.a.nginx_ws_buffer
            return self._nginx_conf(port, NGINX_TUNNEL_CONF, origin_port=origin_port,
                                    conns=max(1024, 2 * tunnels + 2048),
                                    # (proxy_buffers only to satisfy nginx's busy-buffers check)
                                    ws_buffer=f"\n            proxy_buffer_size {buf};\n"
                                    f"            proxy_buffers 4 {buf};" if buf else "")
        spec = self.proxy_spec(cell, port, origin_port)
        conf = self.tmp / f"edge-tunnel-{port}.toml"
        conf.write_text("# generated by scripts/bench: the tunnel rows\n[websocket]\n"
                        f"max_tunnels = {tunnels + 1000}\nidle_timeout = {IDLE_TIMEOUT}\n")
        spec.argv += ["--config", str(conf)]
        return spec

    def proxy_spec(self, cell: str, port: int, origin_port: int) -> Spec:
        """edge or nginx as a caching proxy of the origin, or edge serving the
        origin's files from a local root ("edge-local")."""
        if cell == "nginx":
            return self._nginx_conf(port, NGINX_PROXY_CONF, origin_port=origin_port)
        exe = self.edge_venv / "bin" / "edge"
        if not os.access(exe, os.X_OK):
            raise RuntimeError(f"{exe} not found (pip install -e . failed or edge not built yet)")
        argv = [str(exe), "serve", "--host", HOST, "--port", str(port), "--workers", "1", "--admin", "off"]
        if cell == "edge-local":
            return Spec("edge", argv + ["--root", str(self.origin_root)], "")
        env = {}
        if cell == "edge-base":
            if self.base_tree is None:
                raise RuntimeError("edge-base needs --baseline REV")
            env = {"PYTHONPATH": str(self.base_tree)}
        # an empty root: a local file would win over the origin
        return Spec("edge", argv + ["--root", str(self.empty_root),
                                    "--origin", f"http://{HOST}:{origin_port}",
                                    "--cache-dir", str(self.tmp / f"edge-cache-{port}"),
                                    "--cache-max-size", "10G"], "", env=env)

    # ---- server specs --------------------------------------------------
    def spec(self, name: str, port: int, workers: str | None = None,
             proto: str | None = None, tls_port: int | None = None) -> Spec:
        """How to start ``name``: one worker (workers None), or ``workers``
        ("auto" or N) for the multi-worker rows (edge and nginx only).  With
        proto "h2c" the server speaks HTTP/2 by prior knowledge on ``port``;
        with "h2" it serves TLS (ALPN h2) on ``tls_port`` (edge also keeps its
        plaintext ``port``, the others listen on ``tls_port`` only)."""
        root = str(self.corpus)
        bv = self.bench_venv / "bin"
        if workers is not None and name not in MULTI_SERVERS:
            raise ValueError(f"{name}: no multi-worker configuration in this harness")
        if proto is None and name not in H1_SERVERS:
            raise ValueError(f"{name}: measured in the HTTP/2 rows only")
        cert, key = self.tls_files() if proto == "h2" else ("", "")
        if name in EDGE_SERVERS:
            exe = self.edge_venv / "bin" / "edge"
            if not os.access(exe, os.X_OK):
                raise RuntimeError(f"{exe} not found (pip install -e . failed or edge not built yet)")
            argv = [str(exe), "serve", "--root", root, "--host", HOST, "--port", str(port), "--workers", workers or "1",
                    "--admin", "off"]
            if proto == "h2":
                argv += ["--tls-port", str(tls_port), "--tls-cert", cert, "--tls-key", key]
            # Default settings in every row, SO_INCOMING_CPU steering included: on loopback it hands a
            # connection to the worker on the CPU of the wrk thread that opened it (see README).
            # edge-h2lib: the same edge on the reference HTTP/2 engine, for before/after in one run.
            env = {"EDGE_HTTP2_ENGINE": "h2"} if name == "edge-h2lib" else {}
            if name == "edge-base":
                if self.base_tree is None:
                    raise RuntimeError("edge-base needs --baseline REV")
                env = {"PYTHONPATH": str(self.base_tree)}
            return Spec(name, argv, "", env=env)
        if name == "nginx":
            nginx = shutil.which("nginx") or "/usr/sbin/nginx"
            ntmp = self.tmp / f"nginx-{port}"
            ntmp.mkdir(exist_ok=True)
            conf = ntmp / "nginx.conf"
            conf.write_text(NGINX_CONF.format(
                tmp=ntmp, host=HOST, port=tls_port if proto == "h2" else port, root=root,
                listen_opts=NGINX_LISTEN[proto],
                tls=NGINX_TLS.format(cert=cert, key=key) if proto == "h2" else "",
                master="off" if workers is None else "on", workers=workers or "1",
                # a root master's workers would run as nobody, who cannot read the corpus
                user=f"user {pwd.getpwuid(os.geteuid()).pw_name};" if os.geteuid() == 0 else "",
                conns=max(1024, self.a.idle_conns + 2048),
                nofile=max(self.nofile, 1024)))
            return Spec(name, [nginx, "-c", str(conf), "-p", str(ntmp), "-e",
                               str(ntmp / "nginx-error.log")], "")
        if name == "granian":
            # HTTP/2: --http auto (h2c by prior knowledge; ALPN h2, http/1.1 with TLS)
            tls = ["--ssl-certificate", cert, "--ssl-keyfile", key] if proto == "h2" else []
            return Spec(name, [str(bv / "granian"), "--interface", "rsgi",
                               "--host", HOST,
                               "--port", str(tls_port if proto == "h2" else port),
                               "--workers", "1",
                               "--runtime-threads", "1", "--backlog", "4096",
                               # idle keep-alive connections hold a backpressure
                               # slot: allow more than the RSS row opens
                               "--backpressure", str(max(4096, self.a.idle_conns * 2)),
                               "--no-ws", "--http", "auto" if proto else "1",
                               "--no-access-log", "--log-level", "warning",
                               "--http1-header-read-timeout", "60000", *tls,
                               "--static-path-route", "/static",
                               "--static-path-mount", root,
                               "--working-dir", str(PEERS_DIR), "granian_app:app"],
                        "/static")
        if name == "hypercorn":
            # one worker process under hypercorn's parent, uvloop like the uvicorn peer;
            # h2c by prior knowledge on a plain bind, ALPN h2, http/1.1 on a TLS bind
            tls = (["--bind", f"{HOST}:{tls_port}", "--certfile", cert, "--keyfile", key]
                   if proto == "h2" else ["--bind", f"{HOST}:{port}"])
            return Spec(name, [str(bv / "hypercorn"), "--worker-class", "uvloop",
                               "--workers", "1", "--backlog", "4096", "--keep-alive", "600",
                               "--log-level", "warning", *tls,
                               str(PEERS_DIR / "hypercorn_app") + ":app"], "",
                        env={"BENCH_ROOT": root})
        if name == "h2o":
            exe = shutil.which("h2o") or "/usr/sbin/h2o"
            if not os.access(exe, os.X_OK):
                raise RuntimeError("h2o not installed (apt-get install h2o)")
            htmp = self.tmp / f"h2o-{port}"
            htmp.mkdir(exist_ok=True)
            conf = htmp / "h2o.conf"
            conf.write_text(H2O_CONF.format(
                tmp=htmp, host=HOST, port=tls_port if proto == "h2" else port, root=root,
                # as root h2o would switch to nobody, who cannot read the corpus
                user=(f"user: {pwd.getpwuid(os.geteuid()).pw_name}\n"
                      if os.geteuid() == 0 else ""),
                conns=max(1024, self.a.idle_conns + 2048),
                tls=H2O_TLS.format(cert=cert, key=key) if proto == "h2" else ""))
            return Spec(name, [exe, "-c", str(conf)], "")
        if name == "aiohttp":
            return Spec(name, [str(bv / "python"), str(PEERS_DIR / "aiohttp_app.py"),
                               "--root", root, "--host", HOST, "--port", str(port)], "")
        if name == "uvicorn":
            return Spec(name, [str(bv / "uvicorn"), "--app-dir", str(PEERS_DIR),
                               "--host", HOST, "--port", str(port),
                               "--loop", "uvloop", "--http", "httptools",
                               "--no-access-log", "--log-level", "warning",
                               "--backlog", "4096", "--timeout-keep-alive", "600",
                               "starlette_app:app"], "",
                        env={"BENCH_ROOT": root})
        raise ValueError(name)

    def start(self, name: str, workers: str | None = None,
              proto: str | None = None, *, make_spec=None, cpus: str | None = None,
              children: int | None = -1) -> tuple[subprocess.Popen, int, str]:
        """Start server ``name``: one worker pinned to CPU 1, or with ``workers``
        on all CPUs (see spec), speaking HTTP/1.1, or HTTP/2 as ``proto`` says;
        return (proc, port to measure, url prefix).  The proxy rows pass their own
        ``make_spec(port)``, the CPUs to pin to (``cpus``) and the number of
        processes under the root (``children``: None, not checked; -1, as
        expected_workers says)."""
        port = free_port()
        tls_port = free_port() if proto == "h2" else None
        while tls_port == port:
            tls_port = free_port()
        spec = (make_spec(port) if make_spec is not None
                else self.spec(name, port, workers, proto, tls_port))
        env = dict(os.environ)
        env.pop("PYTHONPATH", None)  # only a spec's own (edge-base: the --baseline tree) reaches a server
        env.update(spec.env)
        logf = open(self.tmp / f"{name}-{port}.log", "wb")
        cpus = cpus or (SERVER_CPU if workers is None else self.a.all_cpus)
        argv = ["taskset", "-c", cpus, *spec.argv] if self.a.pin else spec.argv
        proc = subprocess.Popen(argv, stdout=logf, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=env, cwd=spec.cwd,
                                start_new_session=True)
        logf.close()
        self.procs.append(proc)
        self._write_pidfile()
        proc.log_path = self.tmp / f"{name}-{port}.log"  # type: ignore[attr-defined]
        deadline = time.monotonic() + self.a.start_timeout
        path = spec.prefix + "/1k.bin"
        if tls_port is not None:
            port = tls_port
        last = "no answer"
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with code {proc.returncode} during "
                                   f"start-up: {self.log_tail(proc)}")
            try:
                if proto:
                    status, body = self.h2_get(url(proto, port, path), timeout=2)
                else:
                    status, body = http_get(port, path, timeout=2)
                if status == 200 and len(body) == FILES["1k.bin"]:
                    break
                last = f"HTTP {status}, {len(body)} bytes"
            except OSError as e:
                last = f"{e.__class__.__name__}: {e}"
            if time.monotonic() > deadline:
                self.stop(proc)
                raise RuntimeError(f"{name} not serving {path} after "
                                   f"{self.a.start_timeout:.0f} s ({last}); "
                                   f"{self.log_tail(proc)}")
            time.sleep(0.1)
        try:
            self.check_workers(name, proc, workers, children)
        except RuntimeError:
            self.stop(proc)
            raise
        return proc, port, spec.prefix

    def expected_workers(self, name: str, workers: str | None) -> int | None:
        """Worker processes ``name`` should run under its supervisor or master
        (0: it serves in the one process), or None when not checked (peers)."""
        if name not in MULTI_SERVERS:
            return None
        if workers is None:
            return 1 if name == "edge" else 0          # nginx: master_process off
        return len(self.a.all_cpus.split(",")) if workers == "auto" else int(workers)

    def check_workers(self, name: str, proc: subprocess.Popen, workers: str | None,
                      want: int | None = -1) -> None:
        """The server's process tree must be its root plus exactly the expected
        workers (edge under taskset -c 1 with --workers 1: one worker), so that
        cpu_seconds and rss_bytes, summed over that tree, cover every worker.
        ``want`` overrides the expected count (None: no check)."""
        if want == -1:
            want = self.expected_workers(name, workers)
        if want is None:
            return
        deadline = time.monotonic() + 5
        while True:
            children = proc_tree(proc.pid)[1:]
            if len(children) == want or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        if len(children) != want:
            raise RuntimeError(f"{name}: expected {want} worker process(es) under pid "
                               f"{proc.pid}, found {len(children)} {children}; "
                               f"{self.log_tail(proc)}")

    @staticmethod
    def log_tail(proc: subprocess.Popen, n: int = 6) -> str:
        try:
            text = Path(proc.log_path).read_text(errors="replace")  # type: ignore[attr-defined]
        except OSError:
            return "(no log)"
        lines = [ln for ln in text.strip().splitlines() if ln.strip()]
        return "log: " + (" | ".join(lines[-n:]) if lines else "(empty)")

    def stop(self, proc: subprocess.Popen) -> None:
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait(timeout=10)
        # granian/edge workers may outlive their parent briefly: reap the group
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        if proc in self.procs:
            self.procs.remove(proc)
        self._write_pidfile()

    def _write_pidfile(self) -> None:
        """Process-group ids still running, for scripts/bench's EXIT trap."""
        tmp = self.pidfile.with_suffix(".new")
        tmp.write_text("".join(f"{p.pid}\n" for p in self.procs))
        os.replace(tmp, self.pidfile)

    def stop_all(self) -> None:
        for p in list(self.procs):
            try:
                self.stop(p)
            except Exception as e:  # noqa: BLE001
                log(f"could not stop pid {p.pid}: {e}")

    def verify(self, name: str, port: int, prefix: str, fname: str,
               proto: str | None = None) -> None:
        """The file must come back complete and byte-identical (over HTTP/2 when
        ``proto`` is set)."""
        size = FILES[fname]
        if proto:
            status, body = self.h2_get(url(proto, port, prefix + "/" + fname), timeout=60)
        else:
            status, body = http_get(port, prefix + "/" + fname, timeout=60)
        what = f"{proto} GET" if proto else "GET"
        if status != 200 or len(body) != size:
            raise RuntimeError(f"content check: {what} {prefix}/{fname} gave HTTP {status}, "
                               f"{len(body)} of {size} bytes")
        if hashlib.sha256(body).hexdigest() != self.digests[fname]:
            raise RuntimeError(f"content check: {what} {prefix}/{fname} body differs from the file")

    def h2_get(self, target: str, timeout: float = 5) -> tuple[int, bytes]:
        """GET over HTTP/2 with nghttp: h2c by prior knowledge for http://, TLS
        with ALPN h2 for https:// (certificate not verified).  nghttp exits 0
        whatever happens, so the status comes from the HAR file it writes; no
        entry in it (refused, no h2) raises OSError like a failed connect."""
        har = self.tmp / "nghttp.har"
        har.unlink(missing_ok=True)
        p = subprocess.run(["nghttp", "-y", "-t", f"{max(1, round(timeout))}s", "-r", str(har),
                            target], capture_output=True, timeout=timeout + 10)
        try:
            entries = json.loads(har.read_text())["log"]["entries"]
        except (OSError, ValueError, KeyError):
            entries = []
        if not entries:
            err = p.stderr.decode(errors="replace").strip().replace("\n", " | ")
            raise ConnectionError(f"nghttp: no response ({err[-200:] or 'no output'})")
        return int(entries[0]["response"]["status"]), p.stdout

    def measure(self, row: Row, pid: int, port: int, prefix: str, seconds: float) -> dict:
        """One run of ``row`` against the server at ``port`` (pid: its root)."""
        path, size = prefix + "/" + row.file, FILES[row.file]
        if row.kind == "wrk":
            return self.run_wrk(pid, port, path, size, seconds)
        if row.kind == "bulk":
            return self.run_bulk(pid, port, path, size, seconds)
        if row.kind == "h2load":
            return self.run_h2load(pid, port, path, row, seconds)
        raise ValueError(row.kind)

    # ---- measurements --------------------------------------------------
    def run_wrk(self, pid: int, port: int, path: str, size: int, seconds: float,
                unpinned: bool = False, script: list[str] | None = None,
                lua: Path | None = None) -> dict:
        """wrk against one server: WRK_PINNED on CPU 0, or WRK_UNPINNED on all CPUs;
        with ``script``, wrk -s self.lua (the proxy rows) and these arguments for it;
        with ``lua``, wrk -s that script (the post-1m row)."""
        url = f"http://{HOST}:{port}{path}"
        threads, conns = WRK_UNPINNED if unpinned else WRK_PINNED
        argv = ["wrk", f"-t{threads}", f"-c{conns}", f"-d{max(1, round(seconds))}s",
                "--latency", url]
        if script is not None or lua is not None:
            argv[-1:] = ["-s", str(lua or self.lua), url, "--", *(script or [])]
        if self.a.pin:   # this process is pinned to CPU 0 and wrk would inherit that
            argv = ["taskset", "-c", self.a.all_cpus if unpinned else str(CLIENT_CPU), *argv]
        sample = Sample(pid)
        out = subprocess.run(argv, capture_output=True, text=True,
                             timeout=seconds + 60).stdout
        acct = sample.finish()
        r = parse_wrk(out)
        if r["requests"] == 0:
            raise RuntimeError(f"wrk made no requests: {out.strip()[-300:]}")
        if r["non2xx"]:
            raise RuntimeError(f"{r['non2xx']} non-2xx responses")
        if r["bytes_read"] < 0.98 * r["requests"] * size:
            raise RuntimeError(f"short bodies: {r['bytes_read']:.0f} bytes read for "
                               f"{r['requests']} requests of {size}")
        r.update(acct)
        r.update(value=r["rps"], cpu_metric=acct["cpu"] / r["requests"] * 1e6)
        return r

    def run_h2load(self, pid: int, port: int, path: str, row: Row, seconds: float) -> dict:
        """h2load (one thread, on CPU 0) against one server over HTTP/2, for a
        whole number of seconds.  Any failed, errored or timed-out request,
        non-2xx status, short body or other protocol than ``row.proto`` fails
        the run (and so the cell)."""
        conns, streams = row.load or H2_LOAD
        conns = conns or self.a.conns
        size = FILES[row.file]
        argv = ["h2load", "-t1", f"-c{conns}", f"-m{streams}", f"-D{h2load_duration(seconds)}",
                url(row.proto, port, path)]
        if self.a.pin:   # this process is pinned to CPU 0 and h2load would inherit that
            argv = ["taskset", "-c", str(CLIENT_CPU), *argv]
        sample = Sample(pid)
        p = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60)
        acct = sample.finish()
        out = p.stdout + p.stderr
        r = parse_h2load(out)
        tail = " | ".join(ln.strip() for ln in out.strip().splitlines()[-4:] if ln.strip())
        if r["seconds"] is None:
            raise RuntimeError(f"h2load did not finish (exit {p.returncode}): {tail[-300:]}")
        want = "h2" if row.proto == "h2" else "h2c"
        if r["protocol"] != want:
            raise RuntimeError(f"h2load negotiated {r['protocol'] or 'no protocol'}, not {want}: "
                               f"{tail[-300:]}")
        summary = (f"{r['total']} requests: {r['succeeded']} succeeded, {r['failed']} failed, "
                   f"{r['errored']} errored, {r['timeout']} timed out; statuses {r['2xx']} 2xx, "
                   f"{r['3xx']} 3xx, {r['4xx']} 4xx, {r['5xx']} 5xx; {r['rps']:,.0f} req/s, "
                   f"{r['data'] / r['seconds'] / 1e6:,.0f} MB/s")
        if r["failed"] or r["errored"] or r["timeout"]:
            raise RuntimeError(f"h2load: {summary}")
        if r["succeeded"] == 0:
            raise RuntimeError(f"h2load: no request succeeded: {summary}; {tail[-200:]}")
        if r["3xx"] or r["4xx"] or r["5xx"]:
            raise RuntimeError(f"h2load: non-2xx responses: {summary}")
        if r["data"] < 0.98 * r["succeeded"] * size:
            raise RuntimeError(f"h2load: short bodies, {r['data']} bytes of DATA for "
                               f"{r['succeeded']} responses of {size}: {summary}")
        r.update(acct)
        if row.unit == "MB/s":
            r.update(value=r["data"] / r["seconds"] / 1e6,
                     cpu_metric=acct["cpu"] / (r["data"] / 2**30))
        else:
            r.update(value=r["rps"], cpu_metric=acct["cpu"] / r["succeeded"] * 1e6)
        return r

    def run_bulk(self, pid: int, port: int, path: str, size: int, seconds: float) -> dict:
        sample = Sample(pid)
        r = bench_client.bulk_download(HOST, port, path, size, seconds, self.a.conns)
        acct = sample.finish()
        if r["bytes"] == 0:
            raise RuntimeError("no bytes received")
        r.update(acct)
        r.update(value=r["bytes"] / r["elapsed"] / 1e6,
                 cpu_metric=acct["cpu"] / (r["bytes"] / 2**30))
        return r

    def run_idle(self, pid: int, port: int, path: str, size: int,
                 proto: str | None = None, make_client=None, count: int | None = None) -> dict:
        """RSS growth of the server's tree per idle connection: --idle-conns
        keep-alive HTTP/1.1 connections, or h2c ones (proto "h2c"), one GET each;
        or ``count`` of what ``make_client(n)`` opens (ws-idle: WebSocket tunnels)."""
        count = count or self.a.idle_conns
        if make_client is None and proto == "h2c":
            make_client = lambda n: bench_client.H2IdleConnections(HOST, port, path, size, n)  # noqa: E731
        # light warm-up so lazily-initialised code paths are already paid for
        if make_client is not None:
            for _ in range(3):   # a few connections (one GET, or one echo, each), closed again
                warm = make_client(20)
                try:
                    warm.open()
                finally:
                    warm.close()
        else:
            for _ in range(3):
                http_get_many(port, path, 100)
            make_client = lambda n: bench_client.IdleConnections(HOST, port, path, size, n)  # noqa: E731
        time.sleep(0.5)
        before = rss_bytes(pid)
        ic = make_client(count)
        try:
            n = ic.open()
            time.sleep(1.0)
            after = rss_bytes(pid)
            alive = ic.alive()
        finally:
            ic.close()
        if n == 0:
            raise RuntimeError(f"no idle connection established ({ic.errors})")
        r = {"value": (after - before) / n, "before": before, "after": after,
             "established": n, "alive": alive, "failed": ic.failed, "errors": ic.errors}
        return r


# --------------------------------------------------------------------------
# tiny HTTP helpers (correctness checks and warm-up only)


def http_get(port: int, path: str, timeout: float = 5) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def http_get_full(port: int, path: str, timeout: float = 10) -> tuple[int, dict[str, str], bytes]:
    """GET ``path``: status, header fields (names lowercased) and body."""
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        body = resp.read()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, body
    finally:
        conn.close()


def origin_requests(port: int) -> int:
    """The origin's request counter (nginx stub_status; this request included)."""
    status, body = http_get(port, "/origin-status")
    m = re.search(rb"\n\s*(\d+)\s+(\d+)\s+(\d+)\s*\n", body)
    if status != 200 or not m:
        raise RuntimeError(f"origin /origin-status: HTTP {status} {body[:120]!r}")
    return int(m.group(3))


def h2load_duration(seconds: float) -> str:
    """h2load -D value: whole seconds, or milliseconds when fractional."""
    ms = max(100, round(seconds * 1000))
    return f"{ms // 1000}s" if ms % 1000 == 0 else f"{ms}ms"


def url(proto: str | None, port: int, path: str) -> str:
    """The URL of ``path``: https:// for HTTP/2 over TLS, else http://."""
    return f"{'https' if proto == 'h2' else 'http'}://{HOST}:{port}{path}"


def http_get_many(port: int, path: str, n: int) -> None:
    conn = http.client.HTTPConnection(HOST, port, timeout=10)
    try:
        for _ in range(n):
            conn.request("GET", path)
            conn.getresponse().read()
    finally:
        conn.close()


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}
_SIZE = {"B": 1, "KB": 1024, "MB": 1024**2, "GB": 1024**3, "TB": 1024**4}


def parse_wrk(out: str) -> dict:
    r = {"requests": 0, "rps": 0.0, "p99_ms": None, "bytes_read": 0.0, "non2xx": 0,
         "socket_errors": ""}
    m = re.search(r"(\d+) requests in [\d.]+\w+, ([\d.]+)([KMGT]?B) read", out)
    if m:
        r["requests"] = int(m.group(1))
        r["bytes_read"] = float(m.group(2)) * _SIZE[m.group(3)]
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if m:
        r["rps"] = float(m.group(1))
    m = re.search(r"^\s+99%\s+([\d.]+)(us|ms|s|m|h)\s*$", out, re.M)
    if m:
        r["p99_ms"] = float(m.group(1)) * _UNITS[m.group(2)]
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if m:
        r["non2xx"] = int(m.group(1))
    m = re.search(r"Socket errors: (.*)", out)
    if m:
        r["socket_errors"] = m.group(1).strip()
    return r


def _h2_ms(v: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", v)
    return float(m.group(1)) * _UNITS[m.group(2)] if m else float("nan")


def parse_h2load(out: str) -> dict:
    """The figures of one h2load run (nghttp2 1.5x output).  "seconds" is None
    when the "finished in" line is missing; "data" is the DATA payload received
    (bodies, the in-flight ones at the end included), in bytes."""
    r = {"seconds": None, "rps": 0.0, "total": 0, "started": 0, "done": 0, "succeeded": 0,
         "failed": 0, "errored": 0, "timeout": 0, "2xx": 0, "3xx": 0, "4xx": 0, "5xx": 0,
         "data": 0, "protocol": None, "tls": None, "req_ms": None, "conn_rps": None}
    m = re.search(r"finished in ([\d.]+)(us|ms|s), ([\d.]+) req/s", out)
    if m:
        r["seconds"] = float(m.group(1)) * _UNITS[m.group(2)] / 1e3
        r["rps"] = float(m.group(3))
    m = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, "
                  r"(\d+) failed, (\d+) errored, (\d+) timeout", out)
    if m:
        for k, v in zip(("total", "started", "done", "succeeded", "failed", "errored",
                         "timeout"), m.groups()):
            r[k] = int(v)
    m = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out)
    if m:
        for k, v in zip(("2xx", "3xx", "4xx", "5xx"), m.groups()):
            r[k] = int(v)
    m = re.search(r"^traffic: .*\((\d+)\) data", out, re.M)
    if m:
        r["data"] = int(m.group(1))
    m = re.search(r"^Application protocol: (\S+)", out, re.M)
    if m:
        r["protocol"] = m.group(1)
    m = re.search(r"^TLS Protocol: (\S+)\s+Cipher: (\S+)", out, re.M)
    if m:
        r["tls"] = f"{m.group(1)} {m.group(2)}"
    m = re.search(r"^time for request:\s+(\S+)\s+(\S+)\s+(\S+)", out, re.M)
    if m:   # min, max, mean
        r["req_ms"] = tuple(_h2_ms(v) for v in m.groups())
    m = re.search(r"^req/s\s+:\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)", out, re.M)
    if m:   # per connection: min, max, mean
        r["conn_rps"] = tuple(float(v) for v in m.groups())
    return r


# --------------------------------------------------------------------------
# results and report


@dataclasses.dataclass
class Cell:
    runs: list[dict] = dataclasses.field(default_factory=list)
    error: str | None = None

    def med(self, key: str):
        vals = [r[key] for r in self.runs if r.get(key) is not None]
        return statistics.median(vals) if vals else None

    def span(self, key: str):
        vals = [r[key] for r in self.runs if r.get(key) is not None]
        return (min(vals), max(vals)) if vals else None


def fmt_num(v: float | None, unit: str) -> str:
    if v is None:
        return "—"
    if unit in ("req/s", "MB/s", "B", "rt/s"):
        return f"{v:,.0f}"
    if unit == "ms":
        return f"{v:.2f}" if v < 10 else f"{v:.1f}"
    return f"{v:.3g}"


def fmt_spread(cell: Cell, key: str, unit: str) -> str:
    sp = cell.span(key)
    if sp is None or len(cell.runs) < 2:
        return "—"
    return f"{fmt_num(sp[0], unit)}–{fmt_num(sp[1], unit)}"


def render(results: dict, servers: list[str], rows: list[Row], meta: list[str],
           failures: list[str], raw: list[str]) -> str:
    out = ["# edge benchmark", ""]
    out += meta
    out += ["", "| row | server | median | min–max | p99 latency ms (min–max) "
            "| server CPU (median) | server busy | client busy | vs nginx |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for row in rows:
        if row.kind == "coalesce":   # its own table (render_proxy)
            continue
        ref = results.get((row.key, "nginx"))
        ref_v = ref.med("value") if ref and ref.runs else None
        for s in (proxy_cells(row, servers) if row.proxy else servers):
            cell = results.get((row.key, s))
            name = (PROXY_LABEL[s] if row.proxy else TUNNEL_LABEL.get(s, s) if row.tunnel
                    else SERVER_LABEL[s])
            label = f"**{name}**" if s.startswith("edge") else name
            if cell is None:
                continue
            if not cell.runs:
                what = "FAILED (see below)" if cell.error else "not run (interrupted)"
                out.append(f"| {row.label} | {label} | {what} | — | — | — | — | — | — |")
                continue
            if cell.error:
                label += f" (only {len(cell.runs)} run(s): failed after)"
            v = cell.med("value")
            lat = "—"
            if row.kind in ("wrk", "wsecho"):
                p = cell.med("p99_ms")
                sp = cell.span("p99_ms")
                lat = fmt_num(p, "ms")
                if sp and len(cell.runs) > 1:
                    lat += f" ({fmt_num(sp[0], 'ms')}–{fmt_num(sp[1], 'ms')})"
            if row.kind == "idle":
                cpu = "—"
            elif row.unit == "req/s":
                cpu = f"{cell.med('cpu_metric'):.1f} µs/req"
            elif row.unit == "rt/s":
                cpu = f"{cell.med('cpu_metric'):.1f} µs/rt"
            else:
                cpu = f"{cell.med('cpu_metric'):.2f} s/GiB"
            busy = f"{cell.med('util') * 100:.0f}%" if row.kind != "idle" else "—"
            cbusy = f"{cell.med('client_util') * 100:.0f}%" if row.kind != "idle" else "—"
            ratio = f"{v / ref_v:.2f}×" if ref_v and s != "nginx" else ("1×" if s == "nginx" else "n/a")
            if s == "edge-local":
                ratio = "—"   # set against edge as a proxy below the table
            median = f"{fmt_num(v, row.unit)} {row.unit}"
            if row.kind == "h2load" and row.unit != "req/s":
                median += f" ({fmt_num(cell.med('rps'), 'req/s')} req/s)"
            out.append(f"| {row.label} | {label} | {median} "
                       f"| {fmt_spread(cell, 'value', row.unit)} | {lat} | {cpu} | {busy} "
                       f"| {cbusy} | {ratio} |")
    out.append("")
    out.append("MB = 10^6 bytes of response body. \"server CPU\" is utime+stime of the server's "
               "process tree (supervisor or master and all workers) during the run, per request "
               "or per GiB of body received; \"server busy\" is that CPU time over wall time "
               "(100% = one core saturated; the unpinned rows share all CPUs with wrk and can "
               "go above 100%) and \"client busy\" the same for the load generator on "
               f"CPU {CLIENT_CPU} (wrk, or the Python client; unpinned rows: wrk on all CPUs). "
               "On loopback some TCP work is "
               "charged to whichever side triggers it: when a server queues more than the "
               "window (nginx's 1 MiB sendfile), the client's ACKs send the rest and the "
               "client pays for it, so read server CPU together with client busy. "
               "\"vs nginx\" is median / nginx median (for the RSS rows, lower is better).")
    if any(r.kind == "h2load" for r in rows):
        out.append("")
        out.append("HTTP/2 rows: h2load reports no latency percentiles (mean and max request "
                   "time are in the raw runs); its MB/s is the DATA payload received, in-flight "
                   "bodies at the end included, and CPU per GiB is over that payload; req/s "
                   "counts completed requests.  A cell in which h2load saw any failed, errored "
                   "or timed-out request is marked failed.")
    out += render_multi(results)
    out += render_h2(results)
    out += render_proxy(results, rows)
    out += render_tunnel(results, rows)
    if failures:
        out += ["", "## Failures and warnings", ""]
        out += [f"- {f}" for f in failures]
    if raw:
        out += ["", "## Raw runs", "", "```"] + raw + ["```"]
    return "\n".join(out) + "\n"


def paired(num: Cell | None, den: Cell | None, key: str = "value") -> dict[int, float]:
    """Round (run index) -> num / den ``key``, for every round in which both cells have a run."""
    if not num or not den:
        return {}
    base = {r["run"]: r[key] for r in den.runs if r.get(key)}
    return {r["run"]: r[key] / base[r["run"]] for r in num.runs if r["run"] in base}


def fmt_ratios(by_round: dict[int, float], unit: str = "×") -> str:
    """Median of per-round ratios, with their min-max over two or more rounds."""
    vals = list(by_round.values())
    if not vals:
        return "n/a"
    text = f"{statistics.median(vals):.2f}{unit}"
    if len(vals) > 1:
        text += f" ({min(vals):.2f}–{max(vals):.2f} over {len(vals)} rounds)"
    return text


def render_multi(results: dict) -> list[str]:
    """The whole-machine ratio and the 1 -> 2 worker scaling of edge and nginx,
    each the median of ratios between runs of the same round."""
    out: list[str] = []
    machine = paired(results.get(("machine", "edge")), results.get(("machine", "nginx")))
    scale = {s: paired(results.get(("scaling-2", s)), results.get(("scaling-1", s)))
             for s in MULTI_SERVERS}
    if not machine and not any(scale.values()):
        return out
    threads, conns = WRK_UNPINNED
    title = f"## Whole machine and scaling (1 KiB GET, unpinned, wrk -t{threads} -c{conns})"
    out += ["", title, ""]
    if machine:
        out += ["Whole machine (edge --workers auto, nginx worker_processes auto): "
                + f"edge ÷ nginx {fmt_ratios(machine)}.", ""]
    if any(scale.values()):
        out += ["| server | 1 worker (req/s) | 2 workers (req/s) | 2 workers ÷ 1 worker |",
                "|---|---:|---:|---:|"]
        for s in MULTI_SERVERS:
            one, two = results.get(("scaling-1", s)), results.get(("scaling-2", s))
            if one is None and two is None:
                continue
            label = f"**{SERVER_LABEL[s]}**" if s == "edge" else SERVER_LABEL[s]
            meds = [fmt_num(c.med("value"), "req/s") if c else "—" for c in (one, two)]
            out.append(f"| {label} | {meds[0]} | {meds[1]} | {fmt_ratios(scale[s])} |")
        edge, nginx = scale["edge"], scale["nginx"]
        rr = fmt_ratios({i: edge[i] / nginx[i] for i in edge if i in nginx}, "")
        out += ["", f"Scaling, edge ÷ nginx: **{rr}** (target ≥ {SCALING_TARGET})."]
    return out


def render_proxy(results: dict, rows: list[Row]) -> list[str]:
    """edge against nginx proxy_cache: the ratios (per round, then the median) with
    their targets, origin requests per client request, and the coalescing counts."""
    keys = {r.key for r in rows if r.proxy}
    if not keys:
        return []
    threads, conns = WRK_PINNED
    out = ["", "## Proxy cache: edge against nginx proxy_cache", "",
           f"One origin, nginx serving {PROXY_OBJECTS} files of {PROXY_OBJ_SIZE} B with "
           "`Cache-Control: max-age=3600` (one process, pinned to "
           f"CPU {CLIENT_CPU} beside wrk); in front of it edge `--workers 1 --origin ... "
           "--cache-dir ...` on an empty root and nginx `proxy_cache` (master + 1 worker, "
           "keep-alive upstream, proxy_cache_lock on), each pinned to "
           f"CPU {SERVER_CPU}. `wrk -t{threads} -c{conns} --latency -s` with a Lua script: "
           f"proxy-hot cycles through /obj/0 .. /obj/{PROXY_OBJECTS - 1} (every object "
           "warmed first and a hit checked in the Cache-Status / X-Cache-Status field), "
           "proxy-miss asks for /obj/i?v=TOKEN-i, a new cache key on every request (a "
           "stored miss then a hit checked first). \"edge local file\" is edge serving the "
           "same files from its root, same script. Cells measured in rounds; each ratio is "
           "the median of per-round ratios (min–max)."]
    out += ["", "| figure | measured | target | |", "|---|---|---|---|"]

    def ratio_line(text: str, num: tuple[str, str], den: tuple[str, str],
                   target: float | None) -> None:
        by_round = paired(results.get(num), results.get(den))
        if not by_round:
            if num in results or den in results:
                out.append(f"| {text} | n/a (not measured or failed) | "
                           f"{f'≥ {target:g}' if target else '—'} | |")
            return
        med = statistics.median(by_round.values())
        verdict = ("met" if med >= target else "not met") if target else ""
        n, d = results[num].med("value"), results[den].med("value")
        out.append(f"| {text} | {fmt_ratios(by_round)}; {fmt_num(n, 'req/s')} vs "
                   f"{fmt_num(d, 'req/s')} req/s | {f'≥ {target:g}' if target else '—'} "
                   f"| {verdict} |")

    if "proxy-hot" in keys:
        ratio_line("proxy-hot: edge proxy ÷ edge local file", ("proxy-hot", "edge"),
                   ("proxy-hot", "edge-local"), PROXY_HOT_TARGET)
        ratio_line("proxy-hot: edge ÷ nginx proxy_cache", ("proxy-hot", "edge"),
                   ("proxy-hot", "nginx"), None)
    if "proxy-miss" in keys:
        ratio_line("proxy-miss: edge ÷ nginx proxy_cache", ("proxy-miss", "edge"),
                   ("proxy-miss", "nginx"), PROXY_MISS_TARGET)
    fetch = []
    for key in ("proxy-hot", "proxy-miss"):
        for c in ("edge", "nginx", "edge-local"):
            cell = results.get((key, c))
            if cell and cell.runs:
                per = [r["origin_requests"] / r["requests"] for r in cell.runs]
                fetch.append(f"{key} {PROXY_LABEL[c]} {statistics.median(per):.4f}")
    if fetch:
        out += ["", "Origin requests per client request during the runs (edge's health "
                "checks, one per 5 s, included): " + "; ".join(fetch) + "."]
    if "proxy-coalesce" in keys:
        out += ["", f"### {COALESCE_CLIENTS} concurrent requests for one new key", "",
                f"{COALESCE_CLIENTS} connections opened first, then one GET each for "
                f"/co/co.bin?k=TOKEN (a key not cached yet; {COALESCE_SIZE >> 20} MiB that "
                f"the origin sends at `limit_rate {COALESCE_RATE}`, so a fetch lasts about "
                f"{COALESCE_SIZE / (int(COALESCE_RATE[:-1]) << 20):.2f} s), every response "
                "read whole and compared with the file; origin fetches counted in the "
                "origin's access log. One row per run.", "",
                "| server | run | origin fetches | correct responses | hit/miss field "
                "| median / last answer (s) |", "|---|---:|---:|---:|---|---:|"]
        summary = []
        for c in PROXY_SERVERS:
            cell = results.get(("proxy-coalesce", c))
            if cell is None:
                continue
            name = PROXY_LABEL[c] + (" (proxy_cache_lock on)" if c == "nginx" else "")
            if not cell.runs:
                out.append(f"| {name} | — | FAILED (see below) | | | |")
                continue
            for r in cell.runs:
                words = ", ".join(f"{n}× `{w}`" for w, n in
                                  sorted(r["cache"].items(), key=lambda kv: -kv[1]))
                times = (f"{r['median']:.3f} / {r['last']:.3f}"
                         if r["median"] is not None else "—")
                out.append(f"| {name} | {r['run'] + 1} | {r['value']} "
                           f"| {r['ok']} of {COALESCE_CLIENTS} | {words or '—'} | {times} |")
            vals = [r["value"] for r in cell.runs]
            summary.append(f"- {name}: origin fetches for {COALESCE_CLIENTS} concurrent "
                           f"misses: **{statistics.median(vals):g}**"
                           + (f" (runs: {', '.join(map(str, vals))})" if len(vals) > 1 else ""))
        out += [""] + summary
    return out


def render_h2(results: dict) -> list[str]:
    """edge's HTTP/2 figures against the issue's anchors and targets (medians of
    this run; printed, not asserted)."""
    def med(key: str, s: str) -> float | None:
        cell = results.get((key, s))
        return cell.med("value") if cell and cell.runs else None

    if not any(k[0] in ("h2-1k", "h2-64m") for k in results):
        return []
    out = ["", "## HTTP/2 against the issue", ""]
    if any(k[0] == "h2-1k" for k in results):
        out += ["h2c 1 KiB GET, `h2load -c16 -m10`, beside the figures the issue quotes "
                "(same load, server pinned to one core, measured earlier on another machine):",
                "", "| server | this run (req/s) | issue (req/s) | this run ÷ issue |",
                "|---|---:|---:|---:|"]
        for s in H2_SERVERS:
            cell = results.get(("h2-1k", s))
            if cell is None:
                continue
            v, anchor = med("h2-1k", s), H2_ANCHORS.get(s)
            label = f"**{SERVER_LABEL[s]}**" if s == "edge" else SERVER_LABEL[s]
            out.append(f"| {label} | {fmt_num(v, 'req/s') if v else 'failed'} "
                       f"| {fmt_num(anchor, 'req/s') if anchor else '—'} "
                       f"| {f'{v / anchor:.2f}×' if v and anchor else '—'} |")
        out.append("")
    out += ["| target | measured | |", "|---|---|---|"]
    for key, other, want in H2_TARGETS:
        row = ROW_BY_KEY[key]
        if (key, "edge") not in results and (key, other) not in results:
            continue
        e, o = med(key, "edge"), med(key, other)
        text = (f"{row.label.replace(' GET', '')}: edge ≥ {want:g}× {SERVER_LABEL[other]}")
        if e is None or o is None:
            missing = " and ".join(s for s, v in (("edge", e), (other, o)) if v is None)
            out.append(f"| {text} | n/a ({missing} not measured or failed) | |")
            continue
        got = f"{e / o:.2f}× ({fmt_num(e, row.unit)} vs {fmt_num(o, row.unit)} {row.unit}"
        ce, co = results[(key, "edge")].med("cpu_metric"), results[(key, other)].med("cpu_metric")
        unit = "µs/req" if row.unit == "req/s" else "s/GiB"
        got += f"; server CPU {ce:.3g} vs {co:.3g} {unit})"
        out.append(f"| {text} | {got} | {'met' if e / o >= want else 'not met'} |")
    return out


def versions(a: argparse.Namespace) -> list[str]:
    vs = []
    try:
        p = subprocess.run(["nginx", "-v"], capture_output=True, text=True)
        vs.append(p.stderr.strip().replace("nginx version: ", ""))
    except OSError:
        pass
    try:
        p = subprocess.run(["wrk", "-v"], capture_output=True, text=True)
        vs.append((p.stdout + p.stderr).split("[")[0].strip().split("Copyright")[0].strip())
    except OSError:
        pass
    for argv in (["h2load", "--version"], ["h2o", "--version"], ["openssl", "version"]):
        try:
            p = subprocess.run(argv, capture_output=True, text=True, timeout=20)
            first = (p.stdout or p.stderr).strip().splitlines()
            if p.returncode == 0 and first:
                vs.append(first[0].replace("h2o version ", "h2o/")
                          .replace("OpenSSL ", "OpenSSL/").split(" (")[0])
        except (OSError, subprocess.TimeoutExpired):
            pass
    from importlib import metadata
    for pkg in ("granian", "aiohttp", "uvicorn", "starlette", "uvloop", "httptools", "hypercorn",
                "h2"):
        try:
            vs.append(f"{pkg}/{metadata.version(pkg)}")
        except metadata.PackageNotFoundError:
            pass
    py = Path(a.edge_venv) / "bin" / "python"
    try:
        p = subprocess.run([str(py), "-c", "import edge; print(edge.__version__)"],
                           capture_output=True, text=True, timeout=20)
        if p.returncode == 0:
            vs.append(f"edge/{p.stdout.strip()}")
    except (OSError, subprocess.TimeoutExpired):
        pass
    return vs


def cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


# --------------------------------------------------------------------------


def _acct(r: dict) -> str:
    s = f"server cpu {r['cpu']:.2f}s ({r['util'] * 100:.0f}%"
    if len(r["worker_util"]) > 1:
        s += ": workers " + "/".join(f"{u * 100:.0f}%" for u in r["worker_util"])
    return s + (f"), client {r['client_util'] * 100:.0f}%, "
                f"other {r['other_util'] * 100:.0f}%")


def describe_run(row: Row, r: dict) -> str:
    if row.kind == "wrk":
        s = (f"{r['rps']:,.0f} req/s p99 {r['p99_ms']} ms, {r['requests']} req, "
             + _acct(r))
        if r["socket_errors"]:
            s += f", socket errors: {r['socket_errors']}"
        if "body_mbps" in r:
            s += f", {r['body_mbps']:,.0f} MB/s of request bodies"
        return s
    if row.kind == "wsecho":
        return (f"{r['value']:,.0f} round trips/s, {r['round_trips']:,} in {r['elapsed']:.2f}s over "
                f"{r['tunnels']} tunnels of {r['size']} B messages, rtt p50 {r['rtt_p50_ms']:.3g} "
                f"p99 {r['rtt_p99_ms']:.3g} ms, client on {r['loop']}, " + _acct(r))
    if row.kind == "wsbulk":
        return (f"{r['value']:,.0f} MB/s, {r['frames']} frames of {r['frame_size']} B, "
                f"{r['bytes'] / 2**30:.2f} GiB in {r['elapsed']:.2f}s, " + _acct(r))
    if row.kind == "h2load":
        s = f"{r['rps']:,.0f} req/s"
        if row.unit == "MB/s":
            s += f", {r['value']:,.0f} MB/s"
        s += (f", {r['succeeded']} of {r['started']} started req done, "
              f"{r['data'] / 2**30:.2f} GiB DATA in {r['seconds']:.2f}s, {r['protocol']}")
        if r["tls"]:
            s += f" {r['tls']}"
        if r["req_ms"]:
            s += f", request ms mean {r['req_ms'][2]:.3g} max {r['req_ms'][1]:.3g}"
        if r["conn_rps"]:
            s += f", per-conn req/s {r['conn_rps'][0]:,.4g}–{r['conn_rps'][1]:,.4g}"
        return s + ", " + _acct(r)
    if row.kind == "bulk":
        return (f"{r['value']:,.0f} MB/s, {r['responses']} responses, "
                f"{r['bytes'] / 2**30:.2f} GiB in {r['elapsed']:.1f}s, " + _acct(r)
                + f", rcvbuf {r['rcvbuf']}, reconnects {r['reconnects']}"
                + (", chunked" if r.get("chunked") else ""))
    return (f"{r['value']:,.0f} B/{'tunnel' if row.tunnel else 'conn'}: rss {r['before'] / 2**20:.1f} -> "
            f"{r['after'] / 2**20:.1f} MiB, {r['established']} established, "
            f"{r['alive']} still open at measurement"
            + (f", {r['failed']} failed {r['errors']}" if r['failed'] else ""))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="scripts/bench", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3, help="runs per figure (median is shown)")
    ap.add_argument("--duration", type=float, default=10, help="seconds per run")
    ap.add_argument("--quick", action="store_true",
                    help="smoke test: --runs 1 --duration 3")
    ap.add_argument("--only", default=",".join(s for s in ALL_SERVERS if s != "edge-base"),
                    help=f"comma-separated servers ({','.join(s for s in ALL_SERVERS if s != 'edge-base')})")
    ap.add_argument("--baseline", metavar="REV",
                    help="also run edge as it was at git revision REV (server edge-base, same venv), "
                         "for before/after figures in one run")
    ap.add_argument("--rows", default=",".join(ROW_NAMES),
                    help=f"comma-separated rows ({','.join(ROW_NAMES)}) or groups "
                         f"({', '.join(f'{g}: {chr(43).join(k)}' for g, k in ROW_GROUPS.items())})")
    ap.add_argument("--out", default="bench-results.md", help="markdown output file")
    ap.add_argument("--conns", type=int, default=4,
                    help="keep-alive connections of the MB/s client (and of h2load "
                         "in the h2-64m row)")
    ap.add_argument("--idle-conns", type=int, default=5000,
                    help="idle connections for the RSS row")
    ap.add_argument("--idle-tunnels", type=int, default=WS_IDLE_TUNNELS,
                    help="open idle WebSocket tunnels in the ws-idle row (edge needs "
                         f"{WS_FDS} fds per tunnel)")
    ap.add_argument("--nginx-ws-buffer", metavar="SIZE",
                    help="tunnel rows: nginx proxy_buffer_size for /ws/ (the buffer of each "
                         "direction of an upgraded connection), e.g. 64k; default nginx's own (4k)")
    ap.add_argument("--h2-duration", type=float, default=None,
                    help=f"seconds per run of the HTTP/2 rows (default {H2_DURATION:g}, or "
                         "--duration when shorter)")
    ap.add_argument("--interleave", action="store_true",
                    help="pinned throughput rows: start every server at once and measure in rounds "
                         "(run 1 of each server, then run 2, ...), so a before/after pair is taken "
                         "close together on a noisy machine; prints per-round CPU ratios")
    ap.add_argument("--warmup", type=float, default=1.0, help="warm-up seconds per row")
    ap.add_argument("--start-timeout", type=float, default=30.0)
    ap.add_argument("--quiet-wait", type=float, default=20.0,
                    help="before each run wait up to this many seconds for other "
                         "processes to go quiet (0: don't wait)")
    ap.add_argument("--tmp", help=argparse.SUPPRESS)  # scripts/bench's own (its clean-up reads server-pgids there)
    ap.add_argument("--bench-venv", default=str(REPO / ".bench-venv"), help=argparse.SUPPRESS)
    ap.add_argument("--edge-venv", default=str(REPO / ".venv"), help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.quick:
        a.runs, a.duration = 1, 3.0
    if a.h2_duration is None:
        a.h2_duration = min(H2_DURATION, a.duration)
    servers = [s.strip() for s in a.only.split(",") if s.strip()]
    bad = [s for s in servers if s not in ALL_SERVERS]
    keys = [key for k in a.rows.split(",") for key in ROW_GROUPS.get(k.strip(), (k.strip(),))]
    rows = [ROW_BY_KEY[k] for k in dict.fromkeys(keys) if k in ROW_BY_KEY]
    purge = "purge" in keys  # admin purge latency with a big disk cache (scripts/bench_purge.py)
    if bad or not servers or not (rows or purge):
        ap.error(f"unknown server(s) {bad}" if bad else "nothing selected")
    if a.baseline:
        servers.append("edge-base")
        SERVER_LABEL["edge-base"] = f"edge at {a.baseline} (before)"
        PROXY_LABEL["edge-base"] = f"edge proxy at {a.baseline} (before)"
        TUNNEL_LABEL["edge-base"] = f"edge --origin at {a.baseline} (before)"
    elif "edge-base" in servers:
        ap.error("edge-base runs the revision given by --baseline REV")
    servers = [s for s in ALL_SERVERS if s in servers]   # stable order, edge first
    if a.nginx_ws_buffer:
        TUNNEL_LABEL["nginx"] += f" (proxy_buffer_size {a.nginx_ws_buffer})"

    signal.signal(signal.SIGTERM, _on_sigterm)
    signal.signal(signal.SIGHUP, _on_sigterm)
    own_tmp = a.tmp is None
    if own_tmp:
        a.tmp = tempfile.mkdtemp(prefix="edge-bench.")
    a.pin = (os.cpu_count() or 1) >= 2
    a.all_cpus = ",".join(map(str, sorted(os.sched_getaffinity(0))))   # before pinning below
    h = Harness(a)
    failures: list[str] = []
    if not a.pin:
        failures.append("fewer than 2 CPUs: nothing pinned (server and client share a core)")
    else:
        os.sched_setaffinity(0, {CLIENT_CPU})   # the Python clients run in this process
    if h.nofile < a.idle_conns + 1000:
        failures.append(f"open-file limit is only {h.nofile}")
    results: dict[tuple[str, str], Cell] = {}
    raw: list[str] = []
    interrupted = None
    t_start = time.time()
    meta = [
        f"{time.strftime('%Y-%m-%d %H:%M %Z')} · {os.cpu_count()} × {cpu_model()} · "
        f"Linux {platform.release()} · Python {platform.python_version()}",
        "",
        f"runs per figure: {a.runs} (median, min–max) · {a.duration:g} s per run · "
        f"{a.warmup:g} s warm-up per row · up to {a.quiet_wait:g} s wait for a quiet "
        f"machine before each run · servers pinned to CPU {SERVER_CPU}, "
        f"load generators to CPU {CLIENT_CPU} · open-file limit {h.nofile}",
        "",
        "req/s rows: `wrk -t1 -c64 --latency`; MB/s rows: scripts/bench_client.py, "
        f"{a.conns} keep-alive connections, 1 MiB recv_into, large SO_RCVBUF; RSS row: "
        f"{a.idle_conns} keep-alive connections, one GET each, then idle "
        "(VmRSS after − before, divided by connections).",
    ]
    if any(r.key == "h2-idle" for r in rows):
        meta += ["", f"h2-idle row: {a.idle_conns} h2c connections (prior knowledge: preface, "
                 "empty SETTINGS, one GET of 1 KiB, whole response read, server SETTINGS "
                 "acknowledged), then idle; measured like the RSS row; servers without h2c "
                 "by prior knowledge are not in it."]
    h2_rows = [r for r in rows if r.kind == "h2load"]
    if h2_rows:
        d = h2load_duration(a.h2_duration)
        meta += ["", f"HTTP/2 rows: `h2load -t1 -c{H2_LOAD[0]} -m{H2_LOAD[1]} -D{d}` (1 KiB, "
                 f"1 MiB) and `h2load -t1 -c{a.conns} -m1 -D{d}` (64 MiB) on CPU {CLIENT_CPU}, "
                 f"{a.runs} × {d} per figure; servers pinned to CPU {SERVER_CPU}, one instance "
                 "for the h2c "
                 "rows (prior knowledge on a plaintext port) and one for the TLS rows (ALPN h2, "
                 "self-signed P-256 certificate made for this run); files checked byte for "
                 "byte over HTTP/2 with nghttp first."]
    for r in rows:
        if (r.workers is None and r.proxy is None and r.tunnel is None
                and not any(s in r.servers for s in servers)):
            failures.append(f"row {r.key}: none of its servers ({', '.join(r.servers)}) "
                            "selected by --only")
    multi_rows = [r for r in rows if r.workers is not None]
    multi_servers = [s for s in servers if s in MULTI_SERVERS]
    if multi_rows:
        threads, conns = WRK_UNPINNED
        meta += ["", ("unpinned rows (edge and nginx only): nothing pinned by taskset, "
                      f"CPUs {a.all_cpus}; edge `--workers N` with its default `--cpu-affinity "
                      "auto` (each worker pins itself to one CPU), nginx master + "
                      "`worker_processes N` (no worker_cpu_affinity); "
                      f"`wrk -t{threads} -c{conns} --latency` on all CPUs; the cells are "
                      "measured in rounds (run 1 of each, then run 2, ...).")]
        if not multi_servers:
            failures.append("rows " + ", ".join(r.key for r in multi_rows)
                            + ": measure edge and nginx only, neither selected by --only")
    proxy_rows = [r for r in rows if r.proxy]
    proxy_servers = [s for s in servers if s in PROXY_SERVERS]
    if proxy_rows:
        meta += ["", "proxy rows (edge and nginx only): see \"Proxy cache\" below the table. "
                 + create_cost_note(Path(a.tmp))]
        if not proxy_servers:
            failures.append("rows " + ", ".join(r.key for r in proxy_rows)
                            + ": measure edge and nginx only, neither selected by --only")
    tunnel_rows = [r for r in rows if r.tunnel]
    tunnel_servers = [s for s in servers if s in TUNNEL_SERVERS]
    if tunnel_rows:
        meta += ["", "tunnel rows (edge and nginx only): see \"WebSocket tunnels and POST "
                 f"pass-through\" below the table; ws-idle with {a.idle_tunnels} tunnels."]
        if not tunnel_servers:
            failures.append("rows " + ", ".join(r.key for r in tunnel_rows)
                            + ": measure edge and nginx only, neither selected by --only")
    try:
        h.make_corpus()
        meta += ["", "versions: " + ", ".join(versions(a))]
        if a.interleave:
            for proto in (None, "h2c", "h2"):
                for row in rows:
                    if (row.workers is None and row.proxy is None and row.tunnel is None
                            and row.kind != "idle" and row.proto == proto):
                        run_throughput_rounds(h, [s for s in servers if s in row.servers], row,
                                              results, failures, raw)
                        meta += ["", f"{row.key}: measured in rounds (--interleave); per-round "
                                 "ratios of server CPU per request below the table."]
        for s in servers:
            pinned = [r for r in rows if r.workers is None and r.proxy is None
                      and r.tunnel is None and s in r.servers]
            throughput_rows = [r for r in pinned if r.kind != "idle" and r.proto is None]
            if throughput_rows and not a.interleave:
                run_throughput(h, s, throughput_rows, results, failures, raw)
            for row in pinned:
                if row.kind == "idle":
                    run_idle_row(h, s, row, results, failures, raw)
            for proto in ("h2c", "h2"):   # a server instance of its own for each
                h2_rows = [r for r in pinned if r.proto == proto and r.kind != "idle"]
                if h2_rows and not a.interleave:
                    run_throughput(h, s, h2_rows, results, failures, raw, proto)
        if multi_rows and multi_servers:
            run_multi(h, multi_servers, multi_rows, results, failures, raw)
        if proxy_rows and proxy_servers:
            run_proxy(h, proxy_servers, proxy_rows, results, failures, raw)
        if tunnel_rows and tunnel_servers:
            run_tunnel(h, tunnel_servers, tunnel_rows, results, failures, raw)
    except (KeyboardInterrupt, Interrupted) as e:
        interrupted = e
        failures.append(f"INTERRUPTED ({e.__class__.__name__}); table is partial")
    finally:
        h.stop_all()
    if purge and not interrupted:
        log("purge: 100,000 stored objects, POST /purge timings (scripts/bench_purge.py)")
        done = subprocess.run([str(Path(a.edge_venv) / "bin" / "python"), str(REPO / "scripts" / "bench_purge.py"),
                               "--tmp", str(Path(a.tmp) / "purge")], capture_output=True, text=True)
        purge_text = done.stdout if done.returncode == 0 else ""
        if done.returncode != 0:
            failures.append(f"purge row failed: {done.stderr.strip()[-500:]}")
    meta[0] += f" · run took {(time.time() - t_start) / 60:.1f} min"
    text = render(results, servers, rows, meta, failures, raw)
    if a.interleave:
        text += "\n".join(render_rounds(results, rows)) + "\n"
    if purge and purge_text:
        text += "\n" + purge_text
    print(text)
    try:
        Path(a.out).write_text(text)
        log(f"wrote {a.out}")
    except OSError as e:
        log(f"could not write {a.out}: {e}")
    if own_tmp:
        shutil.rmtree(a.tmp, ignore_errors=True)
    if interrupted:
        return 130
    return 0


def run_throughput(h: Harness, s: str, rows: list[Row], results, failures, raw,
                   proto: str | None = None) -> None:
    """The pinned throughput rows of one server, all on one instance of it
    (speaking HTTP/1.1, or HTTP/2 as ``proto`` says: see Harness.spec)."""
    a = h.a
    try:
        if proto:
            missing = [t for t in ("h2load", "nghttp") if not shutil.which(t)]
            if missing:
                raise RuntimeError(f"{' and '.join(missing)} not installed "
                                   "(apt-get install nghttp2-client)")
        proc, port, prefix = h.start(s, proto=proto)
    except Exception as e:  # noqa: BLE001
        msg = f"{s}: could not start: {e}"
        log(msg)
        failures.append(msg)
        for row in rows:
            results[(row.key, s)] = Cell(error=str(e))
        return
    log(f"{s}{' ' + proto if proto else ''} up on port {port} (pid {proc.pid}, "
        f"tree {proc_tree(proc.pid)})")
    pin_checked = False
    try:
        for row in rows:
            cell = results.setdefault((row.key, s), Cell())
            seconds = a.h2_duration if row.proto else a.duration
            try:
                if proc.poll() is not None:
                    raise RuntimeError(f"server exited (code {proc.returncode}); "
                                       f"{h.log_tail(proc)}")
                h.verify(s, port, prefix, row.file, proto)   # complete and byte-identical?
                h.measure(row, proc.pid, port, prefix, a.warmup)
                for i in range(a.runs):
                    wait_for_quiet(proc.pid, a.quiet_wait)
                    r = h.measure(row, proc.pid, port, prefix, seconds)
                    cell.runs.append(r)
                    if h.a.pin and not pin_checked:
                        pin_checked = True
                        cpus = affinities(proc.pid)
                        if cpus != {SERVER_CPU}:
                            failures.append(f"{s}: server threads allowed on CPUs {sorted(cpus)}, "
                                            f"not only {SERVER_CPU} (does it set its own "
                                            "affinity?): client and server may share a core")
                    width = (5, 8) if row.proto is None else (8, 9)
                    line = (f"{row.key:{width[0]}} {s:{width[1]}} run {i + 1}: "
                            f"{describe_run(row, r)}")
                    raw.append(line)
                    log(line)

            except (KeyboardInterrupt, Interrupted):
                raise
            except Exception as e:  # noqa: BLE001
                cell_failed(cell, failures, f"{row.key} / {s}", e,
                            f" (server exited, code {proc.returncode}; {h.log_tail(proc)})"
                            if proc.poll() is not None else "")
                if proc.poll() is not None:
                    proc, port, prefix = restart(h, s, proc, failures, proto)
                    if proc is None:
                        for rest in rows[rows.index(row) + 1:]:
                            results[(rest.key, s)] = Cell(error="server would not restart")
                        return
            warn_cell(row, s, cell, failures)
    finally:
        if proc is not None:
            h.stop(proc)


def run_throughput_rounds(h: Harness, servers: list[str], row: Row, results, failures, raw) -> None:
    """One pinned throughput row with every server up at once, measured in rounds (run i of each
    server before run i + 1 of any): on a machine whose speed drifts, pairs taken in one round compare."""
    a = h.a
    live: dict[str, tuple] = {}
    try:
        for s in servers:
            cell = results.setdefault((row.key, s), Cell())
            try:
                proc, port, prefix = h.start(s, proto=row.proto)
                h.verify(s, port, prefix, row.file, row.proto)
                h.measure(row, proc.pid, port, prefix, a.warmup)
                live[s] = (proc, port, prefix)
                log(f"{s}{' ' + row.proto if row.proto else ''} up on port {port} (pid {proc.pid})")
            except (KeyboardInterrupt, Interrupted):
                raise
            except Exception as e:  # noqa: BLE001
                cell_failed(cell, failures, f"{row.key} / {s}", e)
        seconds = a.h2_duration if row.proto else a.duration
        for i in range(a.runs):
            for s, (proc, port, prefix) in list(live.items()):
                cell = results[(row.key, s)]
                try:
                    if proc.poll() is not None:
                        raise RuntimeError(f"server exited (code {proc.returncode}); {h.log_tail(proc)}")
                    wait_for_quiet(proc.pid, a.quiet_wait)
                    r = h.measure(row, proc.pid, port, prefix, seconds)
                    r["run"] = i
                    cell.runs.append(r)
                    line = f"{row.key:5} {s:9} round {i + 1}: {describe_run(row, r)}"
                    raw.append(line)
                    log(line)
                except (KeyboardInterrupt, Interrupted):
                    raise
                except Exception as e:  # noqa: BLE001
                    cell_failed(cell, failures, f"{row.key} / {s}", e)
                    del live[s]
        for s in live:
            warn_cell(row, s, results[(row.key, s)], failures)
    finally:
        for proc, _port, _prefix in live.values():
            h.stop(proc)


def render_rounds(results: dict, rows: list[Row]) -> list[str]:
    """Per-round ratios of server CPU per request (per GiB) for the rows measured in rounds: each
    server against edge, and edge against its --baseline."""
    out: list[str] = []
    for row in rows:
        cells = {s: c for (k, s), c in results.items() if k == row.key and c.runs and "run" in c.runs[0]}
        if len(cells) < 2:
            continue
        def cpu(s: str) -> Cell:
            return Cell(runs=[{"run": r["run"], "value": r["cpu_metric"]} for r in cells[s].runs])
        pairs = [(s, "edge") for s in cells if s != "edge" and "edge" in cells]
        pairs += [("edge", "edge-base")] if "edge" in cells and "edge-base" in cells else []
        if not out:
            out += ["", "## Rounds (--interleave): server CPU ratios, paired per round", ""]
        for num, den in pairs:
            out.append(f"- {row.key}: {SERVER_LABEL.get(num, num)} / {SERVER_LABEL.get(den, den)}: "
                       + fmt_ratios(paired(cpu(num), cpu(den))))
    return out


def run_multi(h: Harness, servers: list[str], rows: list[Row], results, failures, raw) -> None:
    """The unpinned multi-worker rows: start every (row, server) cell at once,
    then measure in rounds, run i of every cell before run i + 1 of any, so
    that ratios between cells pair runs taken close together.  A cell whose
    server fails is stopped and dropped; the others go on."""
    a = h.a
    live: dict[tuple[str, str], tuple[Row, subprocess.Popen, int, str]] = {}

    def drop(key: tuple[str, str], e: Exception) -> None:
        results[key].error = str(e)
        failures.append(f"{key[0]} / {key[1]}: {e}")
        log(f"FAILED {key[0]} / {key[1]}: {e}")
        if key in live:
            h.stop(live.pop(key)[1])

    try:
        for row in rows:
            for s in servers:
                key = (row.key, s)
                results.setdefault(key, Cell())
                try:
                    proc, port, prefix = h.start(s, row.workers)
                    live[key] = (row, proc, port, prefix)
                    h.verify(s, port, prefix, row.file)
                    log(f"{row.key} / {s} up on port {port} (pid {proc.pid}, tree "
                        f"{proc_tree(proc.pid)}, CPUs allowed {sorted(affinities(proc.pid))})")
                    h.run_wrk(proc.pid, port, prefix + "/" + row.file, FILES[row.file],
                              a.warmup, unpinned=True)
                except (KeyboardInterrupt, Interrupted):
                    raise
                except Exception as e:  # noqa: BLE001
                    drop(key, e)
        for i in range(a.runs):
            for key, (row, proc, port, prefix) in list(live.items()):
                try:
                    if proc.poll() is not None:
                        raise RuntimeError(f"server exited (code {proc.returncode}); "
                                           f"{h.log_tail(proc)}")
                    wait_for_quiet(proc.pid, a.quiet_wait)
                    r = h.run_wrk(proc.pid, port, prefix + "/" + row.file, FILES[row.file],
                                  a.duration, unpinned=True)
                except (KeyboardInterrupt, Interrupted):
                    raise
                except Exception as e:  # noqa: BLE001
                    drop(key, e)
                    continue
                r["run"] = i
                results[key].runs.append(r)
                line = f"{row.key:9} {key[1]:8} run {i + 1}: {describe_run(row, r)}"
                raw.append(line)
                log(line)
        for row in rows:
            for s in servers:
                warn_cell(row, s, results[(row.key, s)], failures)
    finally:
        for _, proc, _, _ in live.values():
            h.stop(proc)


def warn_cell(row: Row, s: str, cell: Cell, failures: list[str]) -> None:
    """One line per (row, server) for runs that are suspect."""
    if not cell.runs:
        return
    low = [r["util"] for r in cell.runs if r["util"] < 0.8]
    if low:
        where = "sharing the CPUs" if row.workers else f"on CPU {CLIENT_CPU}"
        failures.append(f"{row.key} / {s}: server CPU only {min(low) * 100:.0f}% busy in "
                        f"{len(low)} of {len(cell.runs)} run(s): the load generator {where} "
                        "(or another process) was the limit, or the server stalled")
    # (multi-worker rows only: a pinned server's helper processes, such as
    # hypercorn's multiprocessing tracker or h2o's key process, idle by design)
    uneven = [r["worker_util"] for r in cell.runs
              if row.workers is not None and len(r["worker_util"]) > 1
              and min(r["worker_util"]) < 0.25 * max(r["worker_util"])]
    if uneven:
        split = "/".join(f"{u * 100:.0f}%" for u in uneven[0])
        failures.append(f"{row.key} / {s}: workers unevenly loaded in {len(uneven)} of "
                        f"{len(cell.runs)} run(s) (e.g. {split} busy): the connections "
                        "were not spread over the workers")
    starved = [r["conn_rps"] for r in cell.runs
               if r.get("conn_rps") and r["conn_rps"][0] < 0.25 * r["conn_rps"][1]]
    if starved:
        lo, hi, _ = starved[0]
        failures.append(f"{row.key} / {s}: h2load connections unevenly served in {len(starved)} "
                        f"of {len(cell.runs)} run(s) (e.g. {lo:,.4g} to {hi:,.4g} req/s per "
                        "connection): a stalled or starved connection")
    other = max(r["other_util"] for r in cell.runs)
    if other > OTHER_LOAD_WARN:
        failures.append(f"{row.key} / {s}: other processes used up to {other * 100:.0f}% of a "
                        "CPU during its runs: the machine was not quiet, figures may be "
                        "disturbed")


def restart(h: Harness, s: str, old, failures, proto: str | None = None):
    h.stop(old)
    try:
        proc, port, prefix = h.start(s, proto=proto)
        log(f"{s} restarted on port {port}")
        return proc, port, prefix
    except Exception as e:  # noqa: BLE001
        failures.append(f"{s}: restart failed: {e}")
        return None, None, None


# --------------------------------------------------------------------------
# proxy-cache rows


def proxy_cells(row: Row, servers: list[str]) -> list[str]:
    """The cells of a proxy row: its servers, and in proxy-hot edge's local-file cell."""
    cells = [s for s in servers if s in row.servers]
    if row.proxy == "hot" and "edge" in cells:
        cells.append("edge-local")
    return cells


def cache_field(cell: str) -> str:
    """The response field in which ``cell`` (edge in any form, or nginx) says hit or miss."""
    return CACHE_FIELD["edge" if cell.startswith("edge") else cell]


def check_cache_field(cell: str, fields: dict[str, str], want: str, what: str) -> str:
    """The hit/miss field of ``cell``'s response must say ``want`` ("hit", "miss
    stored"); returns the value seen."""
    name = cache_field(cell)
    value = fields.get(name)
    if value is None:
        raise RuntimeError(f"{what}: no {name} field in the response")
    if cell == "nginx":
        ok = value == ("HIT" if want == "hit" else "MISS")
    else:
        parts = [p.strip() for p in value.split(";")]
        ok = (parts[:2] == ["edge", "hit"] if want == "hit"
              else "fwd=miss" in parts and "stored" in parts)
    if not ok:
        raise RuntimeError(f"{what}: {name}: {value!r}, expected a {want}")
    return value


def proxy_prepare(h: Harness, row: Row, cell: str, port: int) -> str:
    """Before measuring: proxy-hot warms every object and checks the next GET is a
    hit; proxy-miss checks a new key is a stored miss and then a hit.  Every body
    is checked against the origin's file.  Returns what was seen, for the log."""
    def get(path: str, k: int) -> dict[str, str]:
        status, fields, body = http_get_full(port, path)
        if status != 200 or hashlib.sha256(body).hexdigest() != h.obj_digests[k]:
            raise RuntimeError(f"content check: GET {path} gave HTTP {status}, "
                               f"{len(body)} bytes, not the origin's file")
        return fields

    if row.proxy == "hot":
        for k in range(PROXY_OBJECTS):
            get(f"/obj/{k}", k)
        if cell == "edge-local":
            return f"{PROXY_OBJECTS} objects checked byte for byte"
        seen = [check_cache_field(cell, get(f"/obj/{k}", k), "hit", f"warmed GET /obj/{k}")
                for k in (0, PROXY_OBJECTS // 2, PROXY_OBJECTS - 1)]
        return (f"{PROXY_OBJECTS} objects warmed and checked byte for byte, then "
                f"/obj/0: {seen[0]!r}")
    path = f"/obj/7?v={h.next_token('check-' + cell)}"
    first = check_cache_field(cell, get(path, 7), "miss stored", f"first GET {path}")
    second = check_cache_field(cell, get(path, 7), "hit", f"second GET {path}")
    return f"a new key: {first!r}, then {second!r}"


def proxy_wrk(h: Harness, row: Row, cell: str, proc, port: int, origin, oport: int,
              seconds: float) -> dict:
    """One wrk run of a proxy-hot or proxy-miss cell, with the origin's requests
    and CPU over the run; fails when the misses did not all reach the origin, or
    the hot objects did."""
    args = (["rotate", str(PROXY_OBJECTS)] if row.proxy == "hot"
            else ["unique", str(PROXY_OBJECTS), h.next_token(cell)])
    before = origin_requests(oport)
    r = with_origin(origin, lambda: h.run_wrk(proc.pid, port, "/", PROXY_OBJ_SIZE, seconds,
                                              script=args))
    fetched = origin_requests(oport) - before - 1
    r["origin_requests"] = fetched
    if row.proxy == "miss" and fetched < 0.99 * r["requests"]:
        raise RuntimeError(f"only {fetched} origin requests for {r['requests']} requests "
                           "with new keys: not every request was a miss")
    # hot (and local): health checks only (edge's every 5 s)
    if row.proxy == "hot" and fetched > seconds / 2 + 5:
        raise RuntimeError(f"{fetched} origin requests during a hot run of "
                           f"{r['requests']} requests")
    return r


def cell_failed(cell: Cell, failures: list[str], where: str, error: Exception, detail: str = "") -> None:
    """A cell's run failed: the error goes on the cell, in the log and in the run's list of failures."""
    cell.error = str(error)
    msg = f"{where}: {error}{detail}"
    log("FAILED " + msg)
    failures.append(msg)


def with_origin(origin, measure) -> dict:
    """Run ``measure()`` (a run with Sample accounting) and add the origin's CPU share over it
    ("origin_util"), taken out of "other_util": the origin runs beside the load generator."""
    o0 = cpu_seconds(origin.pid)
    r = measure()
    r["origin_util"] = (cpu_seconds(origin.pid) - o0) / r["wall"]
    r["other_util"] = max(0.0, r["other_util"] - r["origin_util"])
    return r


def describe_proxy_run(row: Row, r: dict) -> str:
    return (describe_run(row, r)
            + (f", origin requests {r['origin_requests']}" if "origin_requests" in r else "")
            + f", origin busy {r['origin_util'] * 100:.0f}%")


def run_proxy(h: Harness, servers: list[str], rows: list[Row], results, failures, raw) -> None:
    """The proxy-cache rows: an nginx origin pinned to the load generator's CPU,
    edge and nginx proxy_cache in front of it (and for proxy-hot edge on a local
    root with the same files), the servers under test pinned to SERVER_CPU, each
    started once for all the proxy rows.  proxy-hot and proxy-miss are measured
    in rounds, run i of every cell before run i + 1 of any, so that ratios pair
    runs taken close together; then proxy-coalesce."""
    cells = list(dict.fromkeys(c for row in rows for c in proxy_cells(row, servers)))
    for row in rows:
        for c in proxy_cells(row, servers):
            results.setdefault((row.key, c), Cell())
    live: dict[str, tuple[subprocess.Popen, int]] = {}
    origin = None
    try:
        try:
            h.make_origin_corpus()
        except Exception as e:  # noqa: BLE001
            mark_failed(rows, results, failures, f"proxy rows: no origin corpus: {e}")
            return
        origin, oport = start_origin(h, "origin", h.origin_spec, "proxy rows: the nginx origin",
                                     rows, results, failures)
        if origin is None:
            return
        # edge as a proxy: supervisor, cache manager and one worker
        start_cells(h, cells, lambda c, p: h.proxy_spec(c, p, oport),
                    {"edge": 2, "edge-base": 2, "edge-local": 1}, "proxy rows", rows, live,
                    results, failures)
        for row in rows:
            if row.proxy == "coalesce":
                run_coalesce(h, row, [c for c in proxy_cells(row, servers) if c in live],
                             live, oport, results, failures, raw)
            else:
                run_proxy_rounds(h, row, [c for c in proxy_cells(row, servers) if c in live],
                                 live, origin, oport, results, failures, raw)
    finally:
        for proc, _ in live.values():
            h.stop(proc)
        if origin is not None:
            h.stop(origin)


def mark_failed(rows: list[Row], results, failures, msg: str) -> None:
    """Nothing of ``rows`` can run: every cell not measured yet gets ``msg``."""
    log(msg)
    failures.append(msg)
    keys = {r.key for r in rows}
    for key, cell in results.items():
        if key[0] in keys and not cell.runs:
            cell.error = msg


def start_origin(h: Harness, name: str, make_spec, what: str, rows: list[Row], results,
                 failures) -> tuple[subprocess.Popen | None, int]:
    """The origin of the proxy or tunnel rows, one process pinned to the load generator's CPU;
    (None, 0) when it would not start (every cell of ``rows`` then fails with the reason)."""
    try:
        origin, oport, _ = h.start(name, make_spec=make_spec, cpus=str(CLIENT_CPU), children=0)
    except Exception as e:  # noqa: BLE001
        mark_failed(rows, results, failures, f"{what} could not start: {e}")
        return None, 0
    log(f"{name} up on port {oport} (pid {origin.pid}, CPU {CLIENT_CPU})")
    return origin, oport


def start_cells(h: Harness, cells: list[str], spec_for, children: dict[str, int], what: str,
                rows: list[Row], live: dict, results, failures) -> None:
    """Start each cell's server (``spec_for(cell, port)``, pinned to SERVER_CPU, with
    ``children[cell]`` processes under its root) into ``live``; a cell that will not start
    fails in every row."""
    for c in cells:
        try:
            proc, port, _ = h.start(c, make_spec=lambda p, c=c: spec_for(c, p),
                                    children=children.get(c))
        except Exception as e:  # noqa: BLE001
            msg = f"{what} / {c}: could not start: {e}"
            log(msg)
            failures.append(msg)
            for row in rows:
                if (row.key, c) in results:
                    results[(row.key, c)].error = str(e)
            continue
        live[c] = (proc, port)
        log(f"{c} up on port {port} (pid {proc.pid}, tree {proc_tree(proc.pid)})")


def run_proxy_rounds(h: Harness, row: Row, cells: list[str], live, origin, oport: int,
                     results, failures, raw) -> None:
    run_rounds(h, row, cells, live, results, failures, raw,
               prepare=lambda c, port: proxy_prepare(h, row, c, port),
               measure=lambda c, proc, port, seconds: proxy_wrk(h, row, c, proc, port, origin,
                                                                oport, seconds),
               describe=describe_proxy_run)


def run_rounds(h: Harness, row: Row, cells: list[str], live, results, failures, raw, *,
               prepare, measure, describe) -> None:
    """One row of servers already running (``live``: cell -> (proc, port)), measured in rounds:
    ``prepare(cell, port)`` checks each cell (returns what it saw, for the log) and one warm-up
    ``measure(cell, proc, port, seconds)`` runs, then run i of every cell before run i + 1 of
    any, so that ratios pair runs taken close together.  A cell that fails is dropped with its
    reason; the others go on."""
    a = h.a
    ready: list[str] = []

    def drop(c: str, e: Exception) -> None:
        proc = live[c][0]
        msg = f"{row.key} / {c}: {e}"
        if proc.poll() is not None:
            msg += f" (server exited, code {proc.returncode}; {h.log_tail(proc)})"
        results[(row.key, c)].error = str(e)
        failures.append(msg)
        log("FAILED " + msg)
        if c in ready:
            ready.remove(c)

    for c in cells:
        proc, port = live[c]
        try:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited (code {proc.returncode})")
            seen = prepare(c, port)
            line = f"{row.key} {c} check: {seen}"
            raw.append(line)
            log(line)
            ready.append(c)
            measure(c, proc, port, a.warmup)   # warm-up run
        except (KeyboardInterrupt, Interrupted):
            raise
        except Exception as e:  # noqa: BLE001
            drop(c, e)
    pin_checked: set[str] = set()
    for i in range(a.runs):
        for c in list(ready):
            proc, port = live[c]
            try:
                if proc.poll() is not None:
                    raise RuntimeError(f"server exited (code {proc.returncode})")
                wait_for_quiet(proc.pid, a.quiet_wait)
                r = measure(c, proc, port, a.duration)
            except (KeyboardInterrupt, Interrupted):
                raise
            except Exception as e:  # noqa: BLE001
                drop(c, e)
                continue
            r["run"] = i
            results[(row.key, c)].runs.append(r)
            if a.pin and c not in pin_checked:
                pin_checked.add(c)
                cpus = affinities(proc.pid)
                if cpus != {SERVER_CPU}:
                    failures.append(f"{c}: server threads allowed on CPUs {sorted(cpus)}, "
                                    f"not only {SERVER_CPU}")
            line = f"{row.key:10} {c:10} run {i + 1}: {describe(row, r)}"
            raw.append(line)
            log(line)
    for c in cells:
        warn_cell(row, c, results[(row.key, c)], failures)


def _cache_word(cell: str, fields: dict[str, str]) -> str:
    """The hit/miss field of a coalesced response, TTL figures left out."""
    value = fields.get(cache_field(cell), "(none)")
    return re.sub(r"ttl=-?\d+", "ttl=N", value)


def run_coalesce(h: Harness, row: Row, cells: list[str], live, oport: int,
                 results, failures, raw) -> None:
    """COALESCE_CLIENTS connections ask at once for a key no one asked for yet
    (a 1 MiB object the origin sends at COALESCE_RATE); the origin's access log
    then tells how many fetches of that key reached it."""
    logf = h.origin_log(oport)
    for c in cells:
        proc, port = live[c]
        cell = results[(row.key, c)]
        for i in range(h.a.runs):
            try:
                if proc.poll() is not None:
                    raise RuntimeError(f"server exited (code {proc.returncode}); "
                                       f"{h.log_tail(proc)}")
                token = h.next_token(f"co-{c}")
                path = f"/co/co.bin?k={token}"
                wait_for_quiet(proc.pid, h.a.quiet_wait)
                sample = Sample(proc.pid)
                got = bench_client.concurrent_gets(HOST, port, path, COALESCE_CLIENTS,
                                                   timeout=60)
                acct = sample.finish()
                needle = f"GET {path} HTTP/"
                fetches = 0
                for _ in range(20):   # the origin logs a fetch when it has sent it all
                    time.sleep(0.2)
                    lines = [ln for ln in logf.read_text(errors="replace").splitlines()
                             if needle in ln]
                    if len(lines) == fetches and fetches:
                        break
                    fetches = len(lines)
                statuses = [ln.split('"')[2].split()[0] for ln in lines if ln.count('"') >= 2]
            except (KeyboardInterrupt, Interrupted):
                raise
            except Exception as e:  # noqa: BLE001
                cell_failed(cell, failures, f"{row.key} / {c}", e)
                break
            resp = got["responses"]
            ok = [x for x in resp if x["status"] == 200 and x["length"] == COALESCE_SIZE
                  and x["sha256"] == h.co_digest]
            words: dict[str, int] = {}
            for x in resp:
                w = _cache_word(c, x["fields"])
                words[w] = words.get(w, 0) + 1
            codes: dict[int, int] = {}
            for x in resp:
                codes[x["status"]] = codes.get(x["status"], 0) + 1
            secs = sorted(x["seconds"] for x in resp)
            r = {"value": fetches, "run": i, "ok": len(ok), "responses": len(resp),
                 "codes": codes, "cache": words, "errors": got["errors"],
                 "last": secs[-1] if secs else None,
                 "median": statistics.median(secs) if secs else None,
                 "send_spread": got["send_spread"], "origin_statuses": statuses}
            r.update(acct)
            cell.runs.append(r)
            line = (f"{row.key} {c:6} run {i + 1}: origin fetches {fetches} "
                    f"(origin statuses {','.join(statuses) or '-'}); {len(ok)} of "
                    f"{COALESCE_CLIENTS} responses complete and correct, statuses {codes}, "
                    f"{cache_field(c)}: {words}"
                    + (f", errors {got['errors']}" if got["errors"] else "")
                    + (f"; answered in {r['median']:.3f} s median, {r['last']:.3f} s last"
                       if secs else "")
                    + f"; requests sent within {got['send_spread'] * 1e3:.1f} ms")
            raw.append(line)
            log(line)
            if len(ok) != COALESCE_CLIENTS:
                bad = [f"HTTP {x['status']} {x['length']} B "
                       f"{'body ok' if x['sha256'] == h.co_digest else 'body differs'}"
                       for x in resp if x not in ok][:5]
                failures.append(f"{row.key} / {c} run {i + 1}: only {len(ok)} of "
                                f"{COALESCE_CLIENTS} responses complete and byte-identical"
                                + (f"; e.g. {bad}" if bad else "")
                                + (f"; errors {got['errors']}" if got["errors"] else ""))


# --------------------------------------------------------------------------
# tunnel rows: WebSocket tunnels and POST pass-through, edge against nginx proxy_pass


def post_check(h: Harness, port: int, path: str) -> str:
    """A 1 MiB POST must reach the origin whole (it answers the body's SHA-256 when asked with
    X-Bench-Digest), and a second one must get the origin's plain 200 on the same connection."""
    want = hashlib.sha256(h.post_body).hexdigest()
    conn = http.client.HTTPConnection(HOST, port, timeout=30)
    try:
        for k, extra in enumerate(({"X-Bench-Digest": "sha256"}, {})):
            conn.request("POST", path, body=h.post_body,
                         headers={"Content-Type": "application/octet-stream", **extra})
            resp = conn.getresponse()
            body = resp.read()
            if resp.status != 200:
                hint = (" (POST not passed through to the origin)"
                        if resp.status in (405, 501) else "")
                raise RuntimeError(f"POST {path} of {len(h.post_body)} B: HTTP {resp.status} "
                                   f"{resp.reason}{hint}: {body[:100]!r}")
            text = body.decode("latin-1").strip()
            if k == 0 and text != want:
                raise RuntimeError(f"POST {path}: the origin's SHA-256 of the body is {text[:70]!r}, "
                                   f"not the body's {want[:16]}... (the body changed on the way, or "
                                   "the X-Bench-Digest field did not reach the origin)")
            if k == 1 and text != "ok":
                raise RuntimeError(f"POST {path}: answer {body[:100]!r}, not the origin's ok")
    finally:
        conn.close()
    return (f"a {len(h.post_body)} B POST reached the origin byte for byte (its SHA-256 came "
            "back), then a second one got the origin's 200 on the same connection")


def tunnel_prepare(h: Harness, row: Row, port: int) -> str:
    """Before a tunnel row's runs: echoes through one tunnel compared byte for byte (1 MiB
    frames before the bulk rows), or post_check."""
    if row.tunnel == "post":
        return post_check(h, port, row.file)
    size, count = WS_CHECK if row.tunnel in ("up", "down") else (WS_ECHO_SIZE, 100)
    bench_client.ws_echo_check(HOST, port, "/ws/echo", size, count)
    return f"{count} echoes of {size} B through one tunnel, byte for byte"


def tunnel_measure(h: Harness, row: Row, proc, port: int, origin, seconds: float) -> dict:
    """One run of a tunnel row against the server at ``port``, with the origin's CPU share."""
    if row.tunnel == "post":
        def post() -> dict:
            r = h.run_wrk(proc.pid, port, row.file, len(b"ok\n"), seconds, lua=h.post_lua)
            r["body_mbps"] = r["rps"] * POST_SIZE / 1e6
            return r
        return with_origin(origin, post)

    # accounting from the moment the tunnels are open: the handshakes are not part of a figure
    at: dict = {}

    def start() -> None:
        at["origin"] = cpu_seconds(origin.pid)
        at["sample"] = Sample(proc.pid)

    if row.tunnel == "echo":
        r = bench_client.ws_echo(HOST, port, row.file, WS_ECHO_TUNNELS, seconds, WS_ECHO_SIZE,
                                 on_start=start)
    else:
        bulk = bench_client.ws_bulk_up if row.tunnel == "up" else bench_client.ws_bulk_down
        r = bulk(HOST, port, row.file, seconds, WS_FRAME, on_start=start)
    r.update(at["sample"].finish())
    r["origin_util"] = (cpu_seconds(origin.pid) - at["origin"]) / r["wall"]
    r["other_util"] = max(0.0, r["other_util"] - r["origin_util"])
    if row.tunnel == "echo":
        if not r["round_trips"]:
            raise RuntimeError("no round trip completed")
        r.update(value=r["round_trips"] / r["elapsed"], p99_ms=r["rtt_p99_ms"],
                 cpu_metric=r["cpu"] / r["round_trips"] * 1e6)
    else:
        if not r["bytes"]:
            raise RuntimeError("no bytes relayed")
        r.update(value=r["bytes"] / r["elapsed"] / 1e6, cpu_metric=r["cpu"] / (r["bytes"] / 2**30))
    return r


def tunnel_fds(h: Harness, failures: list[str]) -> None:
    """ws-idle: edge holds WS_FDS descriptors per tunnel; raise the open-file limit (which the
    servers inherit) that far when allowed, else say how many tunnels fit."""
    need = WS_FDS * h.a.idle_tunnels + 1024
    if h.nofile < need:
        try:
            _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
            resource.setrlimit(resource.RLIMIT_NOFILE, (need, max(need, hard)))
            h.nofile = need
        except (ValueError, OSError):
            pass
    if h.nofile < need:
        failures.append(f"ws-idle: open-file limit {h.nofile}, below the {need} edge needs for "
                        f"{h.a.idle_tunnels} tunnels ({WS_FDS} fds each: 2 sockets, 2 pipes): "
                        f"expect failed tunnels; --idle-tunnels {(h.nofile - 1024) // WS_FDS} fits")


def run_ws_idle(h: Harness, row: Row, cells: list[str], oport: int, results, failures,
                raw) -> None:
    """ws-idle: a fresh server for every run (rounds: run i of each cell, then run i + 1), RSS
    growth of its tree per open idle tunnel, measured like the idle row."""
    n = h.a.idle_tunnels
    cells = list(cells)
    for i in range(h.a.runs):
        for c in list(cells):
            cell = results[(row.key, c)]
            try:
                proc, port, _ = h.start(c, make_spec=lambda p, c=c: h.tunnel_spec(c, p, oport),
                                        children={"edge": 2, "edge-base": 2}.get(c))
            except Exception as e:  # noqa: BLE001
                cell_failed(cell, failures, f"{row.key} / {c}: could not start", e)
                cells.remove(c)
                continue
            try:
                r = h.run_idle(proc.pid, port, row.file, 0, count=n, make_client=lambda k, port=port:
                               bench_client.WsIdleTunnels(HOST, port, row.file, k))
                if proc.poll() is not None:
                    raise RuntimeError(f"server exited (code {proc.returncode}); {h.log_tail(proc)}")
                r["run"] = i
                cell.runs.append(r)
                line = f"{row.key:10} {c:10} run {i + 1}: {describe_run(row, r)}"
                raw.append(line)
                log(line)
                if r["established"] < n or r["alive"] < r["established"]:
                    failures.append(f"{row.key} / {c} run {i + 1}: {r['established']} of {n} "
                                    f"tunnels established, {r['alive']} still open at "
                                    f"measurement {r['errors'] or ''}")
            except (KeyboardInterrupt, Interrupted):
                raise
            except Exception as e:  # noqa: BLE001
                cell_failed(cell, failures, f"{row.key} / {c}", e)
                cells.remove(c)
            finally:
                h.stop(proc)


def run_tunnel(h: Harness, servers: list[str], rows: list[Row], results, failures, raw) -> None:
    """The tunnel rows: scripts/bench_peers/ws_origin.py pinned to the load generator's CPU (as
    the proxy rows' origin), edge (`--origin`) and nginx (`proxy_pass`) in front of it on
    SERVER_CPU, started once for ws-echo, ws-bulk, ws-bulk-down and post-1m, each row measured
    in rounds (run_rounds); then ws-idle with a fresh server per run."""
    cells = [s for s in servers if s in TUNNEL_SERVERS]
    for row in rows:
        for c in cells:
            results.setdefault((row.key, c), Cell())
    live: dict[str, tuple[subprocess.Popen, int]] = {}
    origin = None
    try:
        try:
            h.make_tunnel_files()
        except Exception as e:  # noqa: BLE001
            mark_failed(rows, results, failures, f"tunnel rows: no POST body: {e}")
            return
        if any(r.tunnel == "idle" for r in rows):
            tunnel_fds(h, failures)
        origin, oport = start_origin(h, "ws-origin", h.ws_origin_spec,
                                     "tunnel rows: the origin (bench_peers/ws_origin.py)",
                                     rows, results, failures)
        if origin is None:
            return
        busy = [r for r in rows if r.tunnel != "idle"]
        if busy:
            start_cells(h, cells, lambda c, p: h.tunnel_spec(c, p, oport),
                        {"edge": 2, "edge-base": 2}, "tunnel rows", busy, live, results,
                        failures)
            for row in busy:
                run_rounds(h, row, [c for c in cells if c in live], live, results, failures, raw,
                           prepare=lambda c, port, row=row: tunnel_prepare(h, row, port),
                           measure=lambda c, proc, port, seconds, row=row:
                               tunnel_measure(h, row, proc, port, origin, seconds),
                           describe=describe_proxy_run)
            for proc, _ in live.values():
                h.stop(proc)
            live.clear()
        for row in rows:
            if row.tunnel == "idle":
                run_ws_idle(h, row, cells, oport, results, failures, raw)
    finally:
        for proc, _ in live.values():
            h.stop(proc)
        if origin is not None:
            h.stop(origin)


def render_tunnel(results: dict, rows: list[Row]) -> list[str]:
    """edge against nginx proxy_pass in the tunnel rows: the ratios (median of per-round ratios)
    with the issue's targets, and how busy the load side (client + origin, one CPU) was."""
    keys = [r.key for r in rows if r.tunnel]
    if not keys:
        return []
    out = ["", "## WebSocket tunnels and POST pass-through: edge against nginx proxy_pass", "",
           f"One origin, scripts/bench_peers/ws_origin.py (one uvloop process pinned to CPU "
           f"{CLIENT_CPU} beside the load generator): WebSocket echo, sink and source, and a POST "
           f"sink. In front of it on CPU {SERVER_CPU}: edge `--workers 1 --origin ...` (empty "
           "root; a [websocket] table lets the idle row's tunnels in and keeps them open) and "
           "nginx `proxy_pass` (master + 1 worker; /ws/ with `proxy_http_version 1.1`, "
           "`Upgrade $http_upgrade`, `Connection \"upgrade\"`, proxy_buffer_size nginx's 4k "
           "unless its label says otherwise; "
           "POSTs over keep-alive upstream connections, `proxy_request_buffering off`). "
           f"ws-echo: {WS_ECHO_TUNNELS} tunnels, each sends a {WS_ECHO_SIZE} B binary message, "
           "waits for its echo (checked byte for byte) and sends the next (scripts/bench_client.py"
           ", one uvloop process); p99 latency is the round trip's. ws-bulk: one tunnel, "
           f"{WS_FRAME >> 20} MiB binary frames client → origin, the origin counting (and "
           "confirming at the end) every payload byte; ws-bulk-down: one tunnel, origin → client. "
           "MB = 10^6 bytes of frame payload; CPU per GiB of payload. ws-idle: RSS growth of the "
           "server's tree per open tunnel, each tunnel with one echo checked, a fresh server per "
           "run. post-1m: `wrk -t1 -c64 -s` POSTing the same 1 MiB body, the origin reading "
           "it all and answering 200 (a body checked by its SHA-256 first). Cells measured in "
           "rounds; ratios are medians of per-round ratios."]
    out += ["", "| figure | measured | target | |", "|---|---|---|---|"]

    def med(key: str, c: str, what: str = "value"):
        cell = results.get((key, c))
        return cell.med(what) if cell and cell.runs else None

    def ratio(key: str, text: str, what: str, unit: str, target: float | None,
              at_most: bool = False) -> None:
        by_round = paired(results.get((key, "edge")), results.get((key, "nginx")), what)
        bound = f"{'≤' if at_most else '≥'} {target:g}×" if target else "—"
        if not by_round:
            why = "; ".join(f"{c}: {results[(key, c)].error}" for c in ("edge", "nginx")
                            if (key, c) in results and results[(key, c)].error)
            out.append(f"| {text} | n/a ({why or 'not measured'}) | {bound} | |")
            return
        m = statistics.median(by_round.values())
        verdict = ""
        if target:
            verdict = "met" if (m <= target if at_most else m >= target) else "not met"
        e, n = med(key, "edge", what), med(key, "nginx", what)
        fmt = (lambda v: f"{v:.3g}") if unit in ("µs/rt", "s/GiB") else (lambda v: fmt_num(v, unit))
        out.append(f"| {text} | {fmt_ratios(by_round)}; {fmt(e)} vs {fmt(n)} {unit} | {bound} "
                   f"| {verdict} |")

    for key in keys:
        t = TUNNEL_TARGETS[key]
        if key == "ws-echo":
            ratio(key, "ws-echo: edge ÷ nginx round trips/s", "value", "rt/s", t)
            ratio(key, "ws-echo: edge ÷ nginx server CPU per round trip", "cpu_metric", "µs/rt",
                  None)
        elif key in ("ws-bulk", "ws-bulk-down"):
            way = "client → origin" if key == "ws-bulk" else "origin → client"
            ratio(key, f"{key} ({way}): edge ÷ nginx MB/s", "value", "MB/s", t[0])
            ratio(key, f"{key} ({way}): edge ÷ nginx server CPU per GiB", "cpu_metric", "s/GiB",
                  t[1], True)
        elif key == "ws-idle":
            cell = results.get((key, "edge"))
            ref = med(key, "nginx")
            if cell and cell.runs:
                v = cell.med("value")
                n = max(r["established"] for r in cell.runs)
                beside = f" (nginx {fmt_num(ref, 'B')} B)" if ref else ""
                out.append(f"| ws-idle: edge RSS per idle tunnel | {fmt_num(v, 'B')} B at {n:,} "
                           f"tunnels{beside} | ≤ {t:,} B | {'met' if v <= t else 'not met'} |")
            else:
                out.append(f"| ws-idle: edge RSS per idle tunnel | n/a "
                           f"({cell.error if cell else 'not measured'}) | ≤ {t:,} B | |")
        elif key == "post-1m":
            ratio(key, "post-1m: edge ÷ nginx req/s", "value", "req/s", t)
    load = []
    for key in keys:
        for c in TUNNEL_SERVERS:
            cell = results.get((key, c))
            if key == "ws-idle" or not cell or not cell.runs:
                continue
            side = statistics.median(r["client_util"] + r.get("origin_util", 0.0) for r in cell.runs)
            load.append(f"{key} {c} {side * 100:.0f}%")
    if load:
        out += ["", f"Load side (client + origin, both on CPU {CLIENT_CPU}) busy, median: "
                + "; ".join(load) + ". Near 100% the load side, not the server, set the pace: "
                "a ratio against a faster server is then understated."]
    return out


def run_idle_row(h: Harness, s: str, row: Row, results, failures, raw) -> None:
    """An RSS row (idle: HTTP/1.1; h2-idle: h2c) of one server, a fresh instance per run."""
    cell = results.setdefault((row.key, s), Cell())
    path_file, size = row.file, FILES[row.file]

    def idle_spec(port: int) -> Spec:
        spec = h.spec(s, port, None, row.proto)
        if s in EDGE_SERVERS:   # its idle timeout (75 s) must not close any
            spec.argv += ["--keepalive-timeout", str(IDLE_TIMEOUT)]
        return spec

    for i in range(h.a.runs):
        try:
            if row.proto and not shutil.which("nghttp"):
                raise RuntimeError("nghttp not installed (apt-get install nghttp2-client)")
            # fresh server for each RSS run
            proc, port, prefix = h.start(s, proto=row.proto, make_spec=idle_spec)
        except Exception as e:  # noqa: BLE001
            cell.error = str(e)
            failures.append(f"{row.key} / {s}: could not start: {e}")
            return
        try:
            r = h.run_idle(proc.pid, port, prefix + "/" + path_file, size, row.proto)
            if proc.poll() is not None:
                raise RuntimeError(f"server exited (code {proc.returncode}); "
                                   f"{h.log_tail(proc)}")
            cell.runs.append(r)
            width = (5, 8) if row.proto is None else (8, 10)
            line = f"{row.key:{width[0]}} {s:{width[1]}} run {i + 1}: {describe_run(row, r)}"
            raw.append(line)
            log(line)
            if r["established"] < h.a.idle_conns or r["alive"] < r["established"]:
                failures.append(f"{row.key} / {s} run {i + 1}: {r['established']} of "
                                f"{h.a.idle_conns} connections established, {r['alive']} "
                                f"still open at measurement {r['errors'] or ''}")
        except (KeyboardInterrupt, Interrupted):
            raise
        except Exception as e:  # noqa: BLE001
            cell_failed(cell, failures, f"{row.key} / {s}", e)
            return
        finally:
            h.stop(proc)


if __name__ == "__main__":
    sys.exit(main())
