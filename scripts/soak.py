"""Soak test: a mixed load on a real edge for N minutes; RSS and fds of every edge process to a CSV, a PNG and a verdict.

Run it through ``scripts/soak`` (which makes .venv when missing). What it starts, all on loopback:

* an origin (this file with ``--origin``: aiohttp, /o/pP/kN-SIZE objects with Surrogate-Key tags, 404 elsewhere);
* edge with 2 workers, h2c and TLS (a throwaway self-signed certificate), the origin, a small disk cache
  (``--cache-max-size``, so that it evicts) and a small per-worker file cache (so that it reaches its bound), and
  no SO_INCOMING_CPU steering (with it, this one-threaded loopback client would load one worker only).

Then, for ``--minutes``, a paced load (``--rate`` requests/s, at most CONCURRENCY in flight) over four lanes,
HTTP/1.1, h2c, HTTP/1.1 over TLS and h2 over TLS, each replacing its connections every CLIENT_LIFETIME s:
local small, medium and large files (a range of a large one, HEAD of a small one), new origin keys (misses),
origin keys seen before (disk-cache hits, or misses again once purged or evicted) and absent paths (404).
Every PURGE_EVERY s a purge (paths, a prefix, a tag, everything in turn) via the admin endpoint; every
``--reload-every`` s a SIGHUP to the supervisor (none near the end: see reload_times). Every ``--sample-every`` s
the RSS, fd count and CPU time of the supervisor, the manager and each worker go to samples.csv (a worker's series
is its slot: pids change on reload, and the supervisor logs which pid serves which slot); at the end plot.png shows
them, and a table says whether each is flat after warm-up (see judge).

A failed request is a connection error, a 5xx, or a body shorter than its Content-Length or the file's size; a
404 for a purged or absent key is not. Exit status 0 when every series is flat and no request failed, else 1.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import ctypes
import os
import random
import re
import resource
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import CLK_TCK, HOST, self_signed_cert  # noqa: E402
from h2client import Answer, H2Client, StreamFailed  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
WORKERS = 2
CONCURRENCY = 16  # requests in flight at most
CLIENT_LIFETIME = 30.0  # seconds before a lane replaces its client (and so its connections)
PURGE_EVERY = 15.0  # seconds between purges; the kinds take turns
PURGE_KINDS = ("path", "prefix", "tag", "all")
PREFIXES = 8  # origin keys are /o/p0/... to /o/p7/...
TAGS = 16  # and carry one of the tags t0..t15 (plus "soak")
RECENT_KEYS = 2000  # origin keys a revisit picks from
RSS_SLOPE_MAX = 1.0  # MiB per 10 minutes: above this a series "grows"
# fds besides the file cache's: the last third's median may exceed the first third's by this much (connections come
# and go: in runs without any leak these medians moved by up to 7)
FD_GROWTH_MAX = 8
MIN_KEPT = 60.0  # seconds of post-warm-up samples a verdict needs
FIRM = 300.0  # a verdict on fewer seconds than this says so: RSS moves in steps of ~0.5 MiB (the allocator), up and down
# Seconds of each process's life left out of its verdict (by default). Measured at the default load: a worker's RSS
# rises for 3-4 minutes (file cache filling, the parse memos of core.Site growing to TARGET_MEMO entries), then
# levels off; the supervisor and the manager level off within a minute.
WARMUP = 240.0
TIMEOUT = 30.0  # seconds per request
ORIGIN_SIZES = (512, 2048, 8192, 24_576, 65_536, 204_800)
ORIGIN_SIZE_WEIGHTS = (20, 30, 25, 15, 7, 3)
CSV_FIELDS = ("t_s", "role", "pid", "generation", "state", "rss_kib", "rss_anon_kib", "fds", "cpu_s",
              "file_cache_entries", "disk_cache_objects")


def log(msg: str) -> None:
    """One progress line on stderr."""
    print(f"[soak {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------------- origin


def origin_main() -> None:
    """The origin process: listen on a free loopback port, print it, serve /o/... objects until killed."""
    from aiohttp import web

    async def obj(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        size = int(name.rsplit("-", 1)[1])
        tag = f"t{zlib.crc32(name.encode()) % TAGS}"
        return web.Response(body=b"o" * size, content_type="application/octet-stream",
                            headers={"Cache-Control": "max-age=600", "Surrogate-Key": f"{tag} soak"})

    async def absent(request: web.Request) -> web.Response:
        return web.Response(status=404, text="absent\n", headers={"Cache-Control": "max-age=10"})

    async def healthz(request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    app = web.Application()
    app.add_routes([web.get("/healthz", healthz),
                    web.get(r"/o/{prefix}/{name:k\d+-\d+}", obj), web.get("/{tail:.*}", absent)])
    sock = socket.socket()
    sock.bind((HOST, 0))
    sock.listen(256)
    print(sock.getsockname()[1], flush=True)
    web.run_app(app, sock=sock, print=None, access_log=None)


# ----------------------------------------------------------------------------------------------- processes


def _die_with_parent() -> None:
    """In a child before exec: get SIGTERM when the soak dies (PR_SET_PDEATHSIG), in a group of its own."""
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)


WORKER_LINE = re.compile(r"worker (\d+): pid (\d+)")  # the banner's worker table, logged again after each reload


@dataclass
class Edge:
    """The edge under test: supervisor process, its ports, the manager pid and the admin URL from the banner."""

    proc: subprocess.Popen
    port: int
    tls_port: int
    admin: str
    manager_pid: int
    slots: dict[int, int]  # worker pid -> slot, from the banner and the tables the supervisor logs after reloads

    def read_log(self, sink) -> None:  # noqa: ANN001 - a text file
        """Copy the supervisor's output to `sink` (a thread), noting each worker's slot as it goes by."""
        for line in self.proc.stdout:
            sink.write(line)
            sink.flush()
            m = WORKER_LINE.search(line)
            if m:
                self.slots[int(m.group(2))] = int(m.group(1))


def start_origin(out: Path) -> tuple[subprocess.Popen, int]:
    """Start the origin (this file with --origin); returns it and its port."""
    proc = subprocess.Popen([sys.executable, __file__, "--origin"], stdout=subprocess.PIPE,
                            stderr=open(out / "origin.log", "wb"), text=True, preexec_fn=_die_with_parent,
                            start_new_session=True)
    line = proc.stdout.readline().strip()
    if not line.isdigit():
        proc.kill()
        raise RuntimeError(f"the origin did not start (see {out / 'origin.log'})")
    return proc, int(line)


def start_edge(work: Path, out: Path, origin_port: int, cache_max: str, file_cache_entries: int) -> Edge:
    """Start `edge serve` (2 workers, h2c + TLS, origin pull, admin on a free port); parse its banner."""
    cert, key = self_signed_cert(work / "tls")
    config = work / "edge.toml"
    # No SO_INCOMING_CPU steering: on loopback it would send every connection of this one-threaded client to
    # the worker on the client's CPU, and leave the other idle.
    config.write_text(f"incoming_cpu = false\n\n[file_cache]\nmax_entries = {file_cache_entries}\n")
    cmd = [sys.executable, "-m", "edge.cli", "serve", "--root", str(work / "root"), "--host", HOST, "--port", "0",
           "--workers", str(WORKERS), "--tls-port", "0", "--tls-cert", cert, "--tls-key", key,
           "--origin", f"http://{HOST}:{origin_port}", "--cache-dir", str(work / "cache"),
           "--cache-max-size", cache_max, "--admin", f"{HOST}:0", "--config", str(config)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO,
                            preexec_fn=_die_with_parent, start_new_session=True)
    banner = []
    while len([b for b in banner if b.startswith("  worker ")]) < WORKERS:
        line = proc.stdout.readline()
        if not line:
            proc.wait()
            raise RuntimeError("edge did not start:\n" + "".join(banner))
        banner.append(line)
    text = "".join(banner)
    words = text.split()
    port = int(next(w for w in words if w.startswith("http://")).rsplit(":", 1)[1])
    tls_port = int(next(w for w in words if w.startswith("https://")).rsplit(":", 1)[1])
    admin = next(w for w in words if w.startswith("admin=")).removeprefix("admin=")
    manager = int(text.split("manager: pid ", 1)[1].split()[0])
    edge = Edge(proc, port, tls_port, admin, manager, {int(m[2]): int(m[1]) for m in WORKER_LINE.finditer(text)})
    edge_log = open(out / "edge.log", "w")
    edge_log.write(text)
    threading.Thread(target=edge.read_log, args=(edge_log,), daemon=True).start()
    return edge


def stop(proc: subprocess.Popen, name: str, grace: float) -> None:
    """SIGTERM the process, then SIGKILL its whole process group after `grace` seconds (or at once if it exited)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            log(f"{name} still running {grace:.0f} s after SIGTERM: SIGKILL")
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # its own group (start_new_session): whatever it left behind
    except ProcessLookupError:
        pass
    proc.wait()


# ----------------------------------------------------------------------------------------------- /proc


def proc_sample(pid: int) -> tuple[int, int, int, float] | None:
    """(VmRSS KiB, RssAnon KiB, open fds, CPU seconds) of a process, or None once it is gone."""
    try:
        rss = anon = 0
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1])
                elif line.startswith("RssAnon:"):
                    anon = int(line.split()[1])
        fds = len(os.listdir(f"/proc/{pid}/fd"))
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = stat[stat.rfind(b")") + 2:].split()
    return rss, anon, fds, (int(fields[11]) + int(fields[12])) / CLK_TCK


def children(pid: int) -> set[int]:
    """The live child processes of `pid`."""
    out: set[int] = set()
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                out.update(int(p) for p in f.read().split())
    except FileNotFoundError:
        pass
    return out


def cpu_seconds(pid: int) -> float:
    """utime + stime of one process (0 once it is gone)."""
    sample = proc_sample(pid)
    return sample[3] if sample else 0.0


# ----------------------------------------------------------------------------------------------- load


@dataclass
class Target:
    """One request to make and what a complete answer looks like."""

    kind: str
    path: str
    method: str = "GET"
    headers: dict[str, str] = field(default_factory=dict)
    size: int | None = None  # the body length a 200/206 must have (None: check Content-Length only)
    may_404: bool = False  # purged, evicted or absent: a 404 is a fine answer


@dataclass
class Tally:
    """What the load did: requests by lane, kind and status; failures by reason."""

    requests: Counter = field(default_factory=Counter)  # lane -> n
    kinds: Counter = field(default_factory=Counter)
    statuses: Counter = field(default_factory=Counter)
    failures: Counter = field(default_factory=Counter)  # "conn" / "5xx" / "truncated" -> n
    unexpected: Counter = field(default_factory=Counter)  # (kind, status) not a failure, but not expected either
    examples: list[str] = field(default_factory=list)
    purges: Counter = field(default_factory=Counter)
    retried: int = 0  # requests a GOAWAY refused (never processed) and that went again on a new connection
    purge_failures: int = 0
    reloads: int = 0
    reload_failures: int = 0

    def fail(self, reason: str, detail: str) -> None:
        """Count a failed request; keep the first few details."""
        self.failures[reason] += 1
        if len(self.examples) < 20:
            self.examples.append(f"{time.strftime('%H:%M:%S')} {reason}: {detail}")


class Corpus:
    """The local files (by path and size) and the origin keys seen so far; makes the request mix."""

    def __init__(self, root: Path) -> None:
        self.small = {f"/s/{i}.html": 200 + (i * 997) % 16_000 for i in range(40)}
        self.medium = {f"/m/{i}.bin": (64 << 10) + i * (24 << 10) for i in range(8)}
        self.large = {"/l/1m.bin": 1 << 20, "/l/4m.bin": 4 << 20}
        for path, size in {**self.small, **self.medium, **self.large}.items():
            (root / path[1:]).parent.mkdir(parents=True, exist_ok=True)
            (root / path[1:]).write_bytes(os.urandom(size))
        self.keys: list[str] = []
        self.next_key = 0
        self.absent = 0
        self.mix = [(self.small_file, 40), (self.medium_file, 8), (self.large_file, 2), (self.large_range, 3),
                    (self.small_head, 3), (self.new_key, 14), (self.old_key, 25), (self.absent_path, 5)]

    def pick(self) -> Target:
        """The next request of the mix."""
        make = random.choices([m for m, _ in self.mix], [w for _, w in self.mix])[0]
        return make()

    def small_file(self) -> Target:
        """A local file of at most 16 KiB (sent inline with its header block)."""
        path = random.choice(list(self.small))
        return Target("small", path, size=self.small[path])

    def medium_file(self) -> Target:
        """A local file of 64 to 232 KiB (sendfile)."""
        path = random.choice(list(self.medium))
        return Target("medium", path, size=self.medium[path])

    def large_file(self) -> Target:
        """A local file of 1 or 4 MiB."""
        path = random.choices(list(self.large), (4, 1))[0]
        return Target("large", path, size=self.large[path])

    def large_range(self) -> Target:
        """70,000 bytes from somewhere in the 1 MiB file (206)."""
        start = random.randrange(0, (1 << 20) - 70_000)
        return Target("range", "/l/1m.bin", headers={"Range": f"bytes={start}-{start + 69_999}"}, size=70_000)

    def small_head(self) -> Target:
        """HEAD of a small file."""
        return Target("head", random.choice(list(self.small)), method="HEAD", size=0)

    def new_key(self) -> Target:
        """An origin object never asked for: a miss that stores a new object (and, once full, evicts)."""
        self.next_key += 1
        size = random.choices(ORIGIN_SIZES, ORIGIN_SIZE_WEIGHTS)[0]
        path = f"/o/p{self.next_key % PREFIXES}/k{self.next_key}-{size}"
        self.keys.append(path)
        del self.keys[:-RECENT_KEYS]
        return Target("miss", path, size=size, may_404=True)

    def old_key(self) -> Target:
        """An origin object asked for before: a hit, or a miss again once purged or evicted."""
        if not self.keys:
            return self.new_key()
        path = random.choice(self.keys)
        return Target("revisit", path, size=int(path.rsplit("-", 1)[1]), may_404=True)

    def absent_path(self) -> Target:
        """A path neither the root nor the origin has (the origin's 404, cached briefly)."""
        self.absent += 1
        return Target("absent", f"/x/absent-{self.absent % 500}", may_404=True)


class Http1Lane:
    """HTTP/1.1 (plain or TLS) through an httpx client, replaced every CLIENT_LIFETIME s (closed once idle)."""

    def __init__(self, name: str, base: str, verify: ssl.SSLContext | bool = False) -> None:
        self.name, self.base, self.verify = name, base, verify
        self.client = self._make()
        self.born = time.monotonic()
        self.users: Counter = Counter()

    def _make(self):  # noqa: ANN202 - an httpx.AsyncClient
        return httpx.AsyncClient(base_url=self.base, http1=True, http2=False, verify=self.verify, timeout=TIMEOUT,
                                 limits=httpx.Limits(max_connections=4),
                                 headers={"Accept-Encoding": "identity", "User-Agent": "edge-soak"})

    async def request(self, target: Target) -> tuple[Answer, int]:
        """The answer (never retried: 0); StreamFailed for a connection error or a body cut short."""
        if time.monotonic() - self.born > CLIENT_LIFETIME:
            old, self.client, self.born = self.client, self._make(), time.monotonic()
            if not self.users[old]:
                await old.aclose()
        client = self.client
        self.users[client] += 1
        try:
            resp = await client.request(target.method, target.path, headers=target.headers)
        except httpx.RemoteProtocolError as e:  # h11: "peer closed connection without sending complete message body"
            raise StreamFailed("truncated" if "body" in str(e) else "conn", f"{type(e).__name__}: {e}") from e
        except httpx.HTTPError as e:
            raise StreamFailed("conn", f"{type(e).__name__}: {e}") from e
        finally:
            self.users[client] -= 1
            if client is not self.client and not self.users[client]:
                del self.users[client]
                await client.aclose()
        return Answer(resp.status_code, {k.lower(): v for k, v in resp.headers.items()}, resp.content), 0

    async def close(self) -> None:
        """Close the current client."""
        await self.client.aclose()


class Http2Lane:
    """HTTP/2 (h2c prior knowledge, or h2 over TLS) through h2client, a new connection every CLIENT_LIFETIME s."""

    def __init__(self, name: str, port: int, tls: ssl.SSLContext | None = None) -> None:
        self.name = name
        self.client = H2Client(HOST, port, tls, CLIENT_LIFETIME)

    async def request(self, target: Target) -> tuple[Answer, int]:
        """The answer and how often a GOAWAY refused it first; StreamFailed for a failure."""
        headers = {"accept-encoding": "identity", "user-agent": "edge-soak", **target.headers}
        return await self.client.request(target.method, target.path, headers)

    async def close(self) -> None:
        """Close every connection."""
        await self.client.close()


async def one_request(lane: Http1Lane | Http2Lane, target: Target, tally: Tally) -> None:
    """Make one request and judge its answer."""
    tally.requests[lane.name] += 1
    tally.kinds[target.kind] += 1
    where = f"{lane.name} {target.method} {target.path}"
    try:
        answer, retries = await lane.request(target)
    except StreamFailed as e:
        tally.fail(e.reason, f"{where}: {e}")
        return
    tally.retried += retries
    status = answer.status
    tally.statuses[status] += 1
    got = len(answer.body)
    if status >= 500:
        tally.fail("5xx", f"{where}: {status}")
    elif status in (200, 206):
        declared = answer.headers.get("content-length")
        want = target.size if target.method == "GET" else 0
        if (declared is not None and target.method == "GET" and int(declared) != got) or \
                (want is not None and got != want):
            tally.fail("truncated", f"{where}: {status}, {got} bytes, Content-Length {declared}, expected {want}")
    elif not (status == 404 and target.may_404):
        tally.unexpected[(target.kind, status)] += 1


async def drive(lanes: list[Http1Lane | Http2Lane], corpus: Corpus, tally: Tally, rate: float, deadline: float) -> None:
    """Start requests at `rate` per second (at most CONCURRENCY in flight) until `deadline`; wait for the last."""
    loop = asyncio.get_running_loop()
    slots = asyncio.Semaphore(CONCURRENCY)
    pending: set[asyncio.Task] = set()
    due = loop.time()

    def done(task: asyncio.Task) -> None:
        pending.discard(task)
        slots.release()

    try:
        while loop.time() < deadline:
            await slots.acquire()
            task = asyncio.create_task(one_request(random.choice(lanes), corpus.pick(), tally))
            pending.add(task)
            task.add_done_callback(done)
            due = max(due + 1.0 / rate, loop.time() - 1.0)  # behind by more than a second: no catching up in a burst
            await asyncio.sleep(max(0.0, due - loop.time()))
        if pending:
            await asyncio.wait(pending, timeout=TIMEOUT + 5)
    except asyncio.CancelledError:  # stopped early: requests in flight are abandoned, not failed
        for task in list(pending):
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        raise


async def admin_json(client, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:  # noqa: ANN001
    """A request to the admin endpoint: status and JSON body ({} when it is not JSON)."""
    resp = await client.request(method, path, json=body)
    try:
        return resp.status_code, resp.json()
    except ValueError:
        return resp.status_code, {}


async def purger(admin, corpus: Corpus, tally: Tally, events: list[tuple], t0: float, deadline: float) -> None:  # noqa: ANN001
    """Every PURGE_EVERY seconds one purge, the kinds in turn: some paths, a prefix, a tag, everything."""
    turn = 0
    while time.monotonic() + PURGE_EVERY < deadline:
        await asyncio.sleep(PURGE_EVERY)
        kind = PURGE_KINDS[turn % len(PURGE_KINDS)]
        turn += 1
        if kind == "path":
            body = {"paths": random.sample(corpus.keys, min(5, len(corpus.keys))) + [random.choice(list(corpus.small))]}
        elif kind == "prefix":
            body = {"prefix": f"/o/p{random.randrange(PREFIXES)}/"}
        elif kind == "tag":
            body = {"tags": [f"t{random.randrange(TAGS)}"]}
        else:
            body = {"all": True}
        began = time.monotonic()
        try:
            status, answer = await admin_json(admin, "POST", "/purge", body)
        except Exception as e:  # noqa: BLE001 - any failure is reported, the soak goes on
            status, answer = 0, {"error": repr(e)}
        took = (time.monotonic() - began) * 1000
        tally.purges[kind] += 1
        ok = status == 200
        if not ok:
            tally.purge_failures += 1
            log(f"purge {kind} failed: {status} {answer}")
        events.append((round(began - t0, 2), f"purge-{kind}", answer.get("purged", answer), round(took, 1), ok))


def reload_times(duration: float, every: float, warmup: float) -> list[float]:
    """When to reload (seconds into the run): every `every` s, but none so late that the last generation of workers
    cannot outlive its warm-up by MIN_KEPT s and be judged; a run too short for that gets one reload at a third."""
    if every <= 0:
        return []
    last = duration - warmup - MIN_KEPT
    times = [every * n for n in range(1, int(last // every) + 1)] if last >= every else []
    return times or [min(every, duration / 3)]


async def reloader(pid: int, admin, times: list[float], tally: Tally, events: list[tuple],  # noqa: ANN001
                   t0: float) -> None:
    """At each of `times` (seconds after t0) SIGHUP the supervisor and wait until a new generation alone serves."""
    for at in times:
        await asyncio.sleep(max(0.0, t0 + at - time.monotonic()))
        try:
            _, before = await admin_json(admin, "GET", "/status")
            old = max(w["generation"] for w in before["workers"])
        except Exception:  # noqa: BLE001
            old = 0
        began = time.monotonic()
        os.kill(pid, signal.SIGHUP)
        ok = False
        while time.monotonic() - began < 30:
            await asyncio.sleep(0.25)
            try:
                _, status = await admin_json(admin, "GET", "/status")
            except Exception:  # noqa: BLE001
                continue
            workers = status.get("workers", [])
            if len(workers) == WORKERS and all(w["generation"] > old and w["state"] == "serving" for w in workers):
                ok = True
                break
        took = (time.monotonic() - began) * 1000
        tally.reloads += 1
        if not ok:
            tally.reload_failures += 1
            log("reload: the new generation did not take over within 30 s")
        events.append((round(began - t0, 2), "reload", f"generation {old} -> {old + 1}", round(took, 1), ok))


# ----------------------------------------------------------------------------------------------- sampling


class Sampler:
    """Samples every edge process into samples.csv: role (supervisor, manager, worker SLOT), pid and /proc figures."""

    def __init__(self, edge: Edge, path: Path, t0: float) -> None:
        self.edge, self.t0 = edge, t0
        self.file = open(path, "w", newline="")
        self.csv = csv.writer(self.file)
        self.csv.writerow(CSV_FIELDS)
        self.rows: list[dict] = []
        self.known: dict[int, tuple[str, int, str]] = {}  # pid -> (role, generation, state) last seen

    async def run(self, admin, every: float, deadline: float) -> None:  # noqa: ANN001
        """Sample now and every `every` seconds until `deadline`."""
        while True:
            await self.sample(admin)
            if time.monotonic() + every > deadline:
                break
            await asyncio.sleep(every)
        await self.sample(admin)

    async def sample(self, admin) -> None:  # noqa: ANN001
        """One round: /status names the workers; whatever else the supervisor forked is the manager."""
        t = round(time.monotonic() - self.t0, 2)
        sup = self.edge.proc.pid
        status: dict = {}
        try:
            _, status = await admin_json(admin, "GET", "/status")
        except Exception:  # noqa: BLE001 - keep the last known roles
            pass
        roles: dict[int, tuple[str, int, str]] = {}
        entries: dict[int, int | None] = {}
        newest: dict[int, int] = {}
        workers = [(self.edge.slots.get(w["pid"]), w) for w in status.get("workers", [])]
        for slot, w in workers:
            if w["state"] == "serving":
                newest[slot] = max(newest.get(slot, 0), w["generation"])
        for slot, w in workers:
            if slot is None:  # the supervisor has not logged its slot yet: the next round will know
                roles[w["pid"]] = ("", 0, "")
                continue
            current = w["state"] == "serving" and w["generation"] == newest.get(slot)
            roles[w["pid"]] = (f"worker {slot}" if current else f"worker {slot} (old)", w["generation"], w["state"])
            entries[w["pid"]] = w.get("file_cache_entries")
        for pid in children(sup) - roles.keys():
            role = self.known.get(pid, ("manager", 0, ""))
            if status and role[0].startswith("worker"):
                role = (role[0].split(" (")[0] + " (old)", role[1], "exiting")  # gone from /status, not yet exited
            elif not status and pid not in self.known and pid != self.edge.manager_pid:
                continue  # a new worker, and no /status to say which slot it serves
            roles[pid] = role
        roles[sup] = ("supervisor", 0, "")
        objects = status.get("cache", {}).get("objects")
        for pid, (role, generation, state) in sorted(roles.items(), key=lambda kv: kv[1][0]):
            got = proc_sample(pid) if role else None
            if got is None:
                continue
            self.known[pid] = (role, generation, state)
            row = {"t_s": t, "role": role, "pid": pid, "generation": generation, "state": state, "rss_kib": got[0],
                   "rss_anon_kib": got[1], "fds": got[2], "cpu_s": round(got[3], 2),
                   "file_cache_entries": entries.get(pid, ""), "disk_cache_objects": objects if role == "manager" else ""}
            self.rows.append(row)
            self.csv.writerow([row[k] for k in CSV_FIELDS])
        self.file.flush()

    def close(self) -> None:
        """Close the CSV file."""
        self.file.close()


# ----------------------------------------------------------------------------------------------- verdict


@dataclass
class Verdict:
    """One series after warm-up: RSS at the start and end, slope, fd range and growth, and the verdict."""

    role: str
    start_mib: float
    end_mib: float
    slope: float | None  # MiB per 10 minutes, within each process (reloads start new ones)
    fd_min: int
    fd_max: int
    fd_growth: int
    kept_s: float
    verdict: str


def pooled_slope(segments: list[list[tuple[float, float]]]) -> float | None:
    """Least-squares slope of y over t with an intercept of its own per segment (one segment per pid)."""
    num = den = 0.0
    for seg in segments:
        if len(seg) < 3:
            continue
        mt = statistics.fmean(t for t, _ in seg)
        my = statistics.fmean(y for _, y in seg)
        num += sum((t - mt) * (y - my) for t, y in seg)
        den += sum((t - mt) ** 2 for t, _ in seg)
    return num / den if den > 0 else None


def judge(rows: list[dict], warmup: float) -> list[Verdict]:
    """A verdict per series (supervisor, manager, worker N), from the samples of processes older than `warmup`.

    RSS is flat when its least-squares slope, with an intercept of its own per process (a reload starts new workers
    at a lower RSS), is below RSS_SLOPE_MAX MiB per 10 minutes. The fds are flat when the fds besides the file
    cache's (which come and go with purges, up to max_entries) have a median over the last third of each process's
    samples at most FD_GROWTH_MAX above the first third's: medians, because connections come and go.
    """
    born: dict[int, float] = {}
    first_t = min(r["t_s"] for r in rows)
    for r in rows:
        born.setdefault(r["pid"], 0.0 if r["t_s"] == first_t else r["t_s"])
    series: dict[str, dict[int, list[dict]]] = {r["role"]: {} for r in rows if "(old)" not in r["role"]}
    for r in rows:
        if r["role"] in series and r["t_s"] - born[r["pid"]] >= warmup:
            series[r["role"]].setdefault(r["pid"], []).append(r)
    out = []
    for role in sorted(series, key=_role_order):
        segments = list(series[role].values())
        flat = [r for seg in segments for r in seg] or [r for r in rows if r["role"] == role][-1:]
        kept = sum(seg[-1]["t_s"] - seg[0]["t_s"] for seg in segments)
        slope = pooled_slope([[(r["t_s"], r["rss_kib"] / 1024) for r in seg] for seg in segments])
        slope = slope * 600 if slope is not None else None
        growth = 0
        for seg in segments:
            third = max(1, len(seg) // 3)
            growth = max(growth, round(statistics.median(other_fds(r) for r in seg[-third:])
                                       - statistics.median(other_fds(r) for r in seg[:third])))
        if kept < MIN_KEPT or slope is None:
            verdict = f"too short ({kept:.0f} s after warm-up)"
        else:
            grows = []
            if slope >= RSS_SLOPE_MAX:
                grows.append("RSS grows")
            if growth > FD_GROWTH_MAX:
                grows.append(f"fds grow (+{growth})")
            verdict = ", ".join(grows) or "flat"
        out.append(Verdict(role, flat[0]["rss_kib"] / 1024, flat[-1]["rss_kib"] / 1024, slope,
                           min(r["fds"] for r in flat), max(r["fds"] for r in flat), growth, kept, verdict))
    return out


def other_fds(row: dict) -> int:
    """A sample's open fds besides the file cache's open files (their number is bounded by max_entries)."""
    return row["fds"] - int(row["file_cache_entries"] or 0)


def _role_order(role: str) -> tuple[int, str]:
    return ({"supervisor": 0, "manager": 1}.get(role, 2), role)


def table(verdicts: list[Verdict]) -> str:
    """The verdicts as a text table."""
    head = ("process", "start RSS MiB", "end RSS MiB", "slope MiB/10min", "fd min", "fd max", "judged s", "verdict")
    lines = [head]
    for v in verdicts:
        slope = f"{v.slope:+.2f}" if v.slope is not None else "-"
        verdict = v.verdict if v.kept_s >= FIRM or v.verdict.startswith("too short") else f"{v.verdict} (tentative)"
        lines.append((v.role, f"{v.start_mib:.1f}", f"{v.end_mib:.1f}", slope, str(v.fd_min), str(v.fd_max),
                      f"{v.kept_s:.0f}", verdict))
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) if i in (0, 7) else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths)))
                     .rstrip() for line in lines)


def plot(rows: list[dict], events: list[tuple], warmup: float, path: Path) -> None:
    """RSS and fd count per process over time (one colour per role, one line per pid), reloads and purge-alls marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_rss, ax_fd) = plt.subplots(2, 1, sharex=True, figsize=(11, 7.5))
    roles = sorted({r["role"] for r in rows if "(old)" not in r["role"]}, key=_role_order)
    colours = dict(zip(roles, plt.rcParams["axes.prop_cycle"].by_key()["color"]))
    for role in roles:
        by_pid: dict[int, list[dict]] = {}
        for r in rows:
            if r["role"] == role:
                by_pid.setdefault(r["pid"], []).append(r)
        for n, seg in enumerate(by_pid.values()):
            t = [r["t_s"] / 60 for r in seg]
            label = role if n == 0 else None
            ax_rss.plot(t, [r["rss_kib"] / 1024 for r in seg], color=colours[role], label=label, lw=1.2)
            ax_fd.plot(t, [r["fds"] for r in seg], color=colours[role], label=label, lw=1.2)
    for ax in (ax_rss, ax_fd):
        ax.axvspan(0, warmup / 60, color="0.9", zorder=0)
        for t, kind, *_ in events:
            if kind == "reload":
                ax.axvline(t / 60, color="0.4", ls="--", lw=0.8)
                ax.axvspan(t / 60, (t + warmup) / 60, color="0.95", zorder=0)  # the new workers' warm-up
            elif kind == "purge-all":
                ax.axvline(t / 60, color="0.7", ls=":", lw=0.8)
        ax.grid(alpha=0.3)
    ax_rss.set_ylabel("RSS (MiB)")
    ax_fd.set_ylabel("open fds")
    ax_fd.set_xlabel("minutes (grey: warm-up, left out of the verdicts; dashed: reload; dotted: purge all)")
    ax_rss.legend(loc="upper left", fontsize=8, ncols=len(roles))
    ax_rss.set_title("edge soak: RSS and fd count per process")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ----------------------------------------------------------------------------------------------- main


@dataclass
class Run:
    """What a soak saw: the load's tally, the samples, the purge and reload events, the last /status."""

    tally: Tally
    rows: list[dict]
    events: list[tuple]
    status: dict
    seconds: float  # how long the load ran
    stopped_by: int = 0  # the signal that ended it early (0: it ran its course)


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def exit_on_signals() -> None:
    """Outside the event loop, a stop signal exits (so that main's cleanup runs) with status 128 + signal."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, lambda signum, frame: sys.exit(128 + signum))


async def soak(a: argparse.Namespace, edge: Edge, corpus: Corpus, out: Path, cafile: str) -> Run:
    """Run the load, the purges, the reloads and the sampler for the whole duration (or until a stop signal:
    what was measured so far is still returned)."""
    loop = asyncio.get_running_loop()
    main_task = asyncio.current_task()
    caught: list[int] = []

    def stop_soon(sig: int) -> None:
        caught.append(sig)
        main_task.cancel()

    for sig in STOP_SIGNALS:
        loop.add_signal_handler(sig, stop_soon, sig)
    lanes = [Http1Lane("h1", f"http://{HOST}:{edge.port}"), Http2Lane("h2c", edge.port),
             Http1Lane("h1-tls", f"https://{HOST}:{edge.tls_port}", ssl.create_default_context(cafile=cafile)),
             Http2Lane("h2-tls", edge.tls_port, ssl.create_default_context(cafile=cafile))]
    tally = Tally()
    events: list[tuple] = []
    async with httpx.AsyncClient(base_url=edge.admin, timeout=60) as admin:
        for lane in lanes:  # every protocol answers before the clock starts
            answer, _ = await lane.request(Target("check", "/s/0.html"))
            if answer.status != 200 or len(answer.body) != corpus.small["/s/0.html"]:
                raise RuntimeError(f"{lane.name}: GET /s/0.html answered {answer.status}")
        t0 = time.monotonic()
        deadline = t0 + a.minutes * 60
        sampler = Sampler(edge, out / "samples.csv", t0)
        jobs = [asyncio.ensure_future(job) for job in (
            drive(lanes, corpus, tally, a.rate, deadline), sampler.run(admin, a.sample_every, deadline),
            purger(admin, corpus, tally, events, t0, deadline),
            reloader(edge.proc.pid, admin, a.reloads, tally, events, t0), progress(tally, sampler, t0, deadline))]
        try:
            await asyncio.gather(*jobs)
        except asyncio.CancelledError:
            if not caught:
                raise
            main_task.uncancel()
            log(f"signal {caught[0]}: stopping; what was measured so far is reported")
            for job in jobs:
                job.cancel()
            await asyncio.gather(*jobs, return_exceptions=True)
        finally:
            sampler.close()
            for lane in lanes:
                await lane.close()
        seconds = time.monotonic() - t0
        try:
            _, status = await admin_json(admin, "GET", "/status")
        except httpx.HTTPError:
            status = {}
    return Run(tally, sampler.rows, events, status, seconds, caught[0] if caught else 0)


async def progress(tally: Tally, sampler: Sampler, t0: float, deadline: float) -> None:
    """A line a minute: requests, failures and each series' RSS."""
    while time.monotonic() + 60 < deadline:
        await asyncio.sleep(60)
        last = {}
        for r in sampler.rows[-12:]:
            last[r["role"]] = r["rss_kib"] / 1024
        rss = ", ".join(f"{role} {mib:.1f}" for role, mib in sorted(last.items(), key=lambda kv: _role_order(kv[0])))
        log(f"{(time.monotonic() - t0) / 60:.0f} min: {sum(tally.requests.values()):,} requests, "
            f"{sum(tally.failures.values())} failed; RSS MiB: {rss}")


def report(a: argparse.Namespace, run: Run, cpu: dict[str, float], warmup: float, out: Path) -> int:
    """Print the summary and the table; returns the exit status."""
    tally, rows, status = run.tally, run.rows, run.status
    total = sum(tally.requests.values())
    failed = sum(tally.failures.values())
    reloads = ", ".join(f"{t / 60:.1f}" for t in a.reloads) or "none"
    print(f"\nedge soak: {run.seconds / 60:.1f} min, {WORKERS} workers, rate {a.rate:g} req/s, reloads at minute "
          f"{reloads}; the first {warmup:.0f} s of each process left out of its verdict")
    if run.stopped_by:
        print(f"stopped early by signal {run.stopped_by} (the run was to last {a.minutes:g} min)")
    print(f"requests: {total:,}, failed {failed} ({', '.join(f'{k} {v}' for k, v in tally.failures.items()) or 'none'}); "
          f"{tally.retried} retried on a new connection after a GOAWAY refused them (not failures)")
    print(f"  by lane: {', '.join(f'{k} {v:,}' for k, v in tally.requests.items())}")
    print(f"  by kind: {', '.join(f'{k} {v:,}' for k, v in tally.kinds.most_common())}")
    print(f"  by status: {', '.join(f'{k} {v:,}' for k, v in sorted(tally.statuses.items()))}")
    if tally.unexpected:
        print(f"  unexpected (not counted as failed): "
              f"{', '.join(f'{k} {s}: {n}' for (k, s), n in tally.unexpected.items())}")
    for line in tally.examples:
        print(f"  {line}")
    print(f"purges: {sum(tally.purges.values())} ({', '.join(f'{k} {v}' for k, v in tally.purges.items())}), "
          f"{tally.purge_failures} failed; reloads: {tally.reloads}, {tally.reload_failures} failed")
    cache = status.get("cache", {})
    if cache:
        print(f"disk cache at the end: {cache.get('objects')} objects, {cache.get('bytes', 0) / 2**20:.1f} of "
              f"{cache.get('max_bytes', 0) / 2**20:.0f} MiB, {cache.get('evictions')} evictions; "
              f"hit ratio {cache.get('hit_ratio')}")
    print("CPU, % of one core over the run: " + ", ".join(f"{k} {v:.0f}%" for k, v in cpu.items()))
    verdicts = judge(rows, warmup) if rows else []
    print()
    print(table(verdicts))
    print(f"\n(flat: RSS slope < {RSS_SLOPE_MAX:g} MiB/10 min within each process, and its open fds other than the "
          f"file cache's, median of the last third of its samples, at most {FD_GROWTH_MAX} above the first third's;\n"
          f"judged s: seconds of samples after warm-up; tentative: fewer than {FIRM:.0f}, where steps of half a MiB "
          f"decide the slope - run longer, e.g. --minutes 30)")
    print(f"samples: {out / 'samples.csv'}\nevents:  {out / 'events.csv'}\nplot:    {out / 'plot.png'}\n"
          f"edge log: {out / 'edge.log'}")
    if run.stopped_by:
        return 128 + run.stopped_by
    ok = failed == 0 and verdicts and all(v.verdict == "flat" for v in verdicts)
    return 0 if ok else 1


def edge_cpu(rows: list[dict]) -> dict[str, float]:
    """CPU seconds each role used during the run (a pid's last sample minus its first; later pids from 0)."""
    first_t = rows[0]["t_s"]
    first: dict[int, float] = {}
    last: dict[int, tuple[str, float]] = {}
    for r in rows:
        first.setdefault(r["pid"], r["cpu_s"] if r["t_s"] == first_t else 0.0)
        last[r["pid"]] = (r["role"].split(" (")[0], r["cpu_s"])
    out: Counter = Counter()
    for pid, (role, cpu) in last.items():
        out["workers" if role.startswith("worker") else role] += cpu - first[pid]
    return dict(out)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line."""
    p = argparse.ArgumentParser(prog="scripts/soak", description=__doc__.split("\n")[0])
    p.add_argument("--minutes", type=float, default=10.0, help="how long the load runs (default 10; 2 for a quick look)")
    p.add_argument("--out", type=Path, help="directory for samples.csv, events.csv, plot.png, edge.log "
                                            "(default: a new /tmp/edge-soak-* directory)")
    p.add_argument("--reload-every", type=float, default=180.0,
                   help="seconds between SIGHUPs (default 180; 0: none); none in the last warm-up + 1 min of the run, "
                        "so that the last generation of workers is judged")
    p.add_argument("--rate", type=float, default=200.0, help="requests started per second (default 200)")
    p.add_argument("--sample-every", type=float, default=3.0, help="seconds between samples (default 3)")
    p.add_argument("--warmup", type=float, help="seconds of each process's life left out of its verdict "
                                                f"(default {WARMUP:g}, at most 40%% of the run)")
    p.add_argument("--cache-max-size", default="16M", help="edge --cache-max-size (default 16M: it evicts)")
    p.add_argument("--file-cache-entries", type=int, default=256,
                   help="file_cache.max_entries per worker (default 256: the cache reaches its bound)")
    p.add_argument("--origin", action="store_true", help=argparse.SUPPRESS)  # run as the origin process
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Start origin and edge, soak, stop them, write the CSVs and the plot, print the verdicts."""
    a = parse_args(argv)
    if a.origin:
        origin_main()
        return 0
    warmup = a.warmup if a.warmup is not None else min(WARMUP, 0.4 * a.minutes * 60)
    a.reloads = reload_times(a.minutes * 60, a.reload_every, warmup)
    out = a.out or Path(tempfile.mkdtemp(prefix="edge-soak-"))
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="work-", dir=out))
    exit_on_signals()
    origin = edge = None
    self_cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    began = time.monotonic()
    try:
        (work / "root").mkdir()
        corpus = Corpus(work / "root")
        origin, origin_port = start_origin(out)
        edge = start_edge(work, out, origin_port, a.cache_max_size, a.file_cache_entries)
        log(f"edge pid {edge.proc.pid} (manager {edge.manager_pid}, workers {sorted(edge.slots)}) on :{edge.port} and "
            f"TLS :{edge.tls_port}, admin {edge.admin}; origin :{origin_port}; {a.minutes:g} min at {a.rate:g} req/s, "
            f"reloads at minute {', '.join(f'{t / 60:.1f}' for t in a.reloads) or 'none'}; output in {out}")
        origin_cpu0 = cpu_seconds(origin.pid)
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            run = runner.run(soak(a, edge, corpus, out, str(work / "tls" / "cert.pem")))
        exit_on_signals()  # the loop's handlers are gone with it
        wall = time.monotonic() - began
        self_cpu = resource.getrusage(resource.RUSAGE_SELF)
        seconds = max(run.seconds, 1.0)
        cpu = {k: 100 * v / seconds for k, v in edge_cpu(run.rows).items()} if run.rows else {}
        cpu["origin"] = 100 * (cpu_seconds(origin.pid) - origin_cpu0) / seconds
        cpu["load generator"] = 100 * (self_cpu.ru_utime + self_cpu.ru_stime - self_cpu0.ru_utime
                                       - self_cpu0.ru_stime) / wall
    finally:
        if edge is not None:
            stop(edge.proc, "edge", 20)
        if origin is not None:
            stop(origin, "origin", 5)
        subprocess.run(["rm", "-rf", str(work)], check=False)
    with open(out / "events.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(("t_s", "event", "detail", "took_ms", "ok"))
        w.writerows(run.events)
    if run.rows:
        plot(run.rows, run.events, warmup, out / "plot.png")
    return report(a, run, cpu, warmup, out)


if __name__ == "__main__":
    sys.exit(main())
