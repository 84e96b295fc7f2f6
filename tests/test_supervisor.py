"""The supervisor with real worker processes: pinning, steering, crash restart, reload, signals."""

from __future__ import annotations

import hashlib
import os
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

from conftest import STARTUP, Client, EdgeProcess, finish_download, request, wait_for
from test_lifecycle import slow_client

CPUS = sorted(os.sched_getaffinity(0))
MIB = 1 << 20
two_cpus = pytest.mark.skipif(len(CPUS) < 2, reason="needs two usable CPUs")


def cpus_allowed(pid: int) -> str:
    """The Cpus_allowed_list of a process, as the kernel prints it."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("Cpus_allowed_list:"):
                return line.split(":", 1)[1].strip()
    raise RuntimeError("no Cpus_allowed_list")


def memory_policy(pid: int) -> str:
    """The NUMA policy of the process's first mapping ('default', 'prefer:0', ...)."""
    with open(f"/proc/{pid}/numa_maps") as f:
        return f.readline().split()[1]


def socket_owners(pids: list[int]) -> dict[str, int]:
    """Socket inode -> the pid (among `pids`) that holds it open."""
    owners = {}
    for pid in pids:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                owners[target[8:-1]] = pid
    return owners


def serving_pid(server: EdgeProcess, socks: list[socket.socket]) -> dict[int, int]:
    """For each client socket (by local port), the worker pid holding the server end of it."""
    owners = socket_owners(server.worker_pids())
    ports = {s.getsockname()[1] for s in socks}
    out = {}
    with open("/proc/net/tcp") as f:
        for line in f.read().splitlines()[1:]:
            fields = line.split()
            local_port = int(fields[1].split(":")[1], 16)
            remote_port = int(fields[2].split(":")[1], 16)
            if local_port == server.port and remote_port in ports and fields[9] in owners:
                out[remote_port] = owners[fields[9]]
    return out


def connect_from(cpu: int, server: EdgeProcess, n: int) -> list[socket.socket]:
    """Open `n` connections from a thread pinned to `cpu`, each answering one request (so it was accepted)."""
    socks: list[socket.socket] = []
    failure: list[BaseException] = []

    def run() -> None:
        try:
            os.sched_setaffinity(0, {cpu})  # this thread only
            for _ in range(n):
                client = Client(server.connect())
                client.send(b"GET /hello.txt HTTP/1.1\r\nHost: x\r\n\r\n")
                assert client.response()[0] == 200
                socks.append(client.sock)
        except BaseException as e:  # noqa: BLE001 - re-raised in the test's thread
            failure.append(e)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(30)
    if failure:
        raise failure[0]
    return socks


def kernel_at_least(major: int, minor: int) -> bool:
    """True when the running kernel is at least major.minor."""
    m = re.match(r"(\d+)\.(\d+)", os.uname().release)
    return bool(m) and (int(m.group(1)), int(m.group(2))) >= (major, minor)


def start_raw(www: Path, *args: str, affinity: set[int] | None = None, config: Path | None = None):
    """Start `edge serve` without conftest's --workers 1; returns (process, port, worker lines)."""
    cmd = [sys.executable, "-m", "edge.cli", "serve", "--root", str(www), "--host", "127.0.0.1", "--port", "0",
           *args]
    if config is not None:
        cmd += ["--config", str(config)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=(lambda: os.sched_setaffinity(0, affinity)) if affinity else None)
    line = proc.stdout.readline()
    m = STARTUP.search(line)
    if not m:
        proc.kill()
        raise RuntimeError(f"edge did not start: {line!r} {proc.stderr.read()!r}")
    proc.stdout.readline()  # topology
    workers = []
    while len(workers) < int(m.group(3)):
        line = proc.stdout.readline().strip()
        if not line.startswith("manager:"):  # the manager's line, when there is one, precedes the workers'
            workers.append(line)
    return proc, int(m.group(2)), workers


# -- start-up, pinning, steering ------------------------------------------------------------------


def test_auto_starts_one_worker_per_usable_cpu_each_pinned_to_its_own(edge):
    server = edge("--workers", "auto")
    assert len(server.banner) == len(CPUS)
    assert sorted(server.worker_pids()) == sorted(pid for pid, _ in server.banner.values())
    pinned = []
    for slot, (pid, where) in sorted(server.banner.items()):
        m = re.fullmatch(r"cpu (\d+) node (\d+)", where)
        assert m, where
        assert cpus_allowed(pid) == m.group(1), f"worker {slot} runs on {cpus_allowed(pid)}, banner says {where}"
        assert memory_policy(pid) == f"prefer:{m.group(2)}"
        pinned.append(int(m.group(1)))
    assert sorted(pinned) == CPUS, "each worker gets a CPU of its own"
    assert server.topology.startswith(f"topology: {len(CPUS)} CPUs")


@two_cpus
def test_auto_respects_the_affinity_mask_it_was_started_with(www: Path):
    proc, _, workers = start_raw(www, "--workers", "auto", affinity={CPUS[-1]})
    try:
        assert len(workers) == 1 and f" cpu {CPUS[-1]} node " in workers[0], workers
        pid = int(workers[0].split()[3])
        assert cpus_allowed(pid) == str(CPUS[-1])
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0


@two_cpus
def test_cpu_affinity_list_is_used_in_order(edge):
    server = edge("--workers", "2", "--cpu-affinity", f"{CPUS[1]} {CPUS[0]}")
    assert cpus_allowed(server.banner[0][0]) == str(CPUS[1])
    assert cpus_allowed(server.banner[1][0]) == str(CPUS[0])


def test_cpu_affinity_off_leaves_workers_unpinned(edge):
    server = edge("--workers", "2", "--cpu-affinity", "off")
    everything = cpus_allowed(os.getpid())
    for pid, where in server.banner.values():
        assert where == "unpinned"
        assert cpus_allowed(pid) == everything
        assert memory_policy(pid) == "default"


def test_a_cpu_outside_the_affinity_mask_is_refused(www: Path):
    outside = max(CPUS) + 1
    out = subprocess.run([sys.executable, "-m", "edge.cli", "serve", "--root", str(www), "--host", "127.0.0.1",
                          "--port", "0", "--workers", "1", "--cpu-affinity", str(outside)],
                         capture_output=True, text=True, timeout=20)
    assert out.returncode == 2
    assert f"cpu_affinity: CPU {outside} is not usable here" in out.stderr
    assert out.stdout == ""


@two_cpus
def test_every_worker_takes_connections(edge):
    server = edge("--workers", "2")
    socks = []
    for cpu in CPUS[:2]:
        socks += connect_from(cpu, server, 12)
    owners = serving_pid(server, socks)
    assert len(owners) == len(socks)
    assert set(owners.values()) == set(server.worker_pids()), f"connections per worker: {owners}"
    for s in socks:
        s.close()


@two_cpus
@pytest.mark.skipif(not kernel_at_least(6, 2), reason="SO_INCOMING_CPU steers within a reuseport group from 6.2")
def test_connections_go_to_the_worker_on_the_cpu_that_received_them(edge):
    server = edge("--workers", "2")
    worker_on = {int(where.split()[1]): pid for pid, where in server.banner.values()}
    for cpu in CPUS[:2]:
        socks = connect_from(cpu, server, 10)
        owners = serving_pid(server, socks)
        assert set(owners.values()) == {worker_on[cpu]}, f"from CPU {cpu}: {owners}, workers {worker_on}"
        for s in socks:
            s.close()


# -- crashes --------------------------------------------------------------------------------------


@two_cpus
def test_a_killed_worker_is_replaced_within_a_second_and_the_others_keep_serving(edge):
    server = edge("--workers", "2")
    victim, where = server.banner[0]
    survivor = server.banner[1][0]
    os.kill(victim, signal.SIGKILL)
    killed = time.monotonic()
    assert wait_for(lambda: len(server.worker_pids()) == 2 and victim not in server.worker_pids(), 1.0), \
        f"no replacement within 1 s: {server.worker_pids()}"
    replaced_in = time.monotonic() - killed
    replacement = next(p for p in server.worker_pids() if p != survivor)
    assert survivor in server.worker_pids()
    # It pins itself just after the fork: a moment after its pid shows.
    assert wait_for(lambda: cpus_allowed(replacement) == where.split()[1], 2), \
        "the replacement runs on the dead worker's CPU"
    # The replacement accepts on the dead worker's socket (with steering, connections from its CPU go there).
    socks = connect_from(CPUS[0], server, 16) + connect_from(CPUS[1], server, 16)
    assert replacement in serving_pid(server, socks).values()
    for s in socks:
        s.close()
    for _ in range(20):
        assert request(server, "/hello.txt")[0] == 200
    assert replaced_in < 1.0
    assert re.search(rf"worker 0 \(pid {victim}\) killed by SIGKILL; restarting now", server.stderr())


def test_a_worker_that_keeps_dying_is_restarted_with_growing_delays(edge):
    server = edge("--workers", "1")
    gaps = []
    for _ in range(4):
        pid = server.worker_pid
        os.kill(pid, signal.SIGKILL)
        killed = time.monotonic()
        assert wait_for(lambda: server.worker_pids() and pid not in server.worker_pids(), 10)
        gaps.append(time.monotonic() - killed)
    # First replacement at once, then 0.5 s, 1 s, 2 s: a crashing worker never becomes a fork loop.
    assert gaps[0] < 0.5 and gaps[2] >= 0.9 and gaps[3] >= 1.9, gaps
    err = server.stderr()
    assert "restarting now" in err and "restarting in 0.5 s" in err and "restarting in 2.0 s" in err, err
    assert request(server, "/hello.txt")[0] == 200


def test_workers_exit_when_the_supervisor_is_killed(edge):
    server = edge("--workers", "2")
    workers = server.worker_pids()
    assert len(workers) == 2
    os.kill(server.pid, signal.SIGKILL)
    server.proc.wait(5)

    def gone() -> bool:
        return not any(os.path.exists(f"/proc/{pid}") and _state(pid) != "Z" for pid in workers)

    assert wait_for(gone, 10), "workers outlived their supervisor"


def _state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return "gone"


# -- reload ---------------------------------------------------------------------------------------


def _load(server: EdgeProcess, stop: threading.Event, cpu: int, results: dict) -> None:
    """Keep requesting until `stop`: keep-alive requests with httpx and fresh connections, counting failures."""
    os.sched_setaffinity(0, {cpu})
    ok = failed = 0
    errors: list[str] = []
    with httpx.Client(base_url=server.url, timeout=10) as client:
        while not stop.is_set():
            try:
                r = client.get("/hello.txt")
                good = r.status_code == 200 and r.content == b"hello world\n"
            except httpx.HTTPError as e:
                good = False
                errors.append(repr(e))
            try:
                status, _, body = request(server, "/1k.bin")
                good = good and status == 200 and len(body) == 1024
            except OSError as e:
                good = False
                errors.append(repr(e))
            ok += good
            failed += not good
    results[cpu] = (ok, failed, errors[:5])


def test_sighup_under_load_fails_no_request(edge):
    server = edge("--workers", str(min(2, len(CPUS))))
    old = set(server.worker_pids())
    stop = threading.Event()
    results: dict = {}
    threads = [threading.Thread(target=_load, args=(server, stop, cpu, results)) for cpu in CPUS[:2] * 2]
    for t in threads:
        t.start()
    time.sleep(0.5)
    for _ in range(3):
        server.proc.send_signal(signal.SIGHUP)
        time.sleep(1.0)
    time.sleep(0.5)
    stop.set()
    for t in threads:
        t.join(30)
    ok = sum(r[0] for r in results.values())
    failed = sum(r[1] for r in results.values())
    assert failed == 0, f"{failed} failed requests during reload: {results}"
    assert ok > 100, results
    print(f"reload under load: {ok} requests, {failed} failed")
    now = set(server.worker_pids())
    assert wait_for(lambda: set(server.worker_pids()).isdisjoint(old) and len(server.worker_pids()) == len(old), 10)
    err = server.stderr()
    assert err.count("reload: generation") == 3 and "generation 4 serving" in err, err
    assert now, "no workers after the reloads"


def test_sighup_applies_a_changed_config(edge, tmp_path: Path):
    cfg = tmp_path / "edge.toml"
    cfg.write_text('[[headers]]\nmatch = "*"\nset = { "X-Generation" = "one" }\n')
    server = edge("--workers", "1", config=cfg)
    assert request(server, "/hello.txt")[1]["x-generation"] == "one"
    cfg.write_text('[[headers]]\nmatch = "*"\nset = { "X-Generation" = "two" }\n')
    server.proc.send_signal(signal.SIGHUP)
    assert wait_for(lambda: request(server, "/hello.txt")[1].get("x-generation") == "two", 10)


def test_sighup_with_a_bad_config_keeps_the_old_workers(edge, tmp_path: Path):
    cfg = tmp_path / "edge.toml"
    cfg.write_text('server_name = "first"\n')
    server = edge("--workers", "1", config=cfg)
    before = server.worker_pids()
    cfg.write_text('server_name = "second"\nkeepalive_timeout = "long"\n')
    server.proc.send_signal(signal.SIGHUP)
    assert wait_for(lambda: "reload failed" in server.stderr(), 5)
    assert "keepalive_timeout" in server.stderr()
    time.sleep(0.3)
    assert server.worker_pids() == before
    status, headers, _ = request(server, "/hello.txt")
    assert status == 200 and headers["server"] == "first"


@two_cpus
def test_sighup_can_change_the_number_of_workers(www: Path, tmp_path: Path):
    cfg = tmp_path / "edge.toml"
    cfg.write_text("workers = 1\n")
    proc, port, workers = start_raw(www, config=cfg)
    supervisor = EdgeProcess.__new__(EdgeProcess)  # only for worker_pids(); the process is ours
    supervisor.pid, supervisor.host, supervisor.port = proc.pid, "127.0.0.1", port
    supervisor.manager_pid = 0
    first = int(workers[0].split()[3])
    assert wait_for(lambda: len(supervisor.worker_pids()) == 2, 5)  # the worker and the manager
    supervisor.manager_pid = next(pid for pid in supervisor.worker_pids() if pid != first)
    try:
        assert len(workers) == 1
        cfg.write_text("workers = 2\n")
        proc.send_signal(signal.SIGHUP)
        assert wait_for(lambda: len(supervisor.worker_pids()) == 2 and
                        int(workers[0].split()[3]) not in supervisor.worker_pids(), 10)
        socks = connect_from(CPUS[0], supervisor, 6) + connect_from(CPUS[1], supervisor, 6)
        assert set(serving_pid(supervisor, socks).values()) == set(supervisor.worker_pids())
        for s in socks:
            s.close()
        two = supervisor.worker_pids()
        cfg.write_text("workers = 1\n")
        proc.send_signal(signal.SIGHUP)
        assert wait_for(lambda: len(supervisor.worker_pids()) == 1 and
                        supervisor.worker_pids()[0] not in two, 10)
        for cpu in CPUS[:2]:
            for s in connect_from(cpu, supervisor, 3):
                s.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0


# -- stop, quit, log reopen -----------------------------------------------------------------------


def test_sigterm_with_two_workers_finishes_a_download_and_counts_every_request(edge, www: Path):
    data = os.urandom(64 * MIB)
    (www / "64m.bin").write_bytes(data)
    server = edge("--workers", str(min(2, len(CPUS))))
    for _ in range(6):
        assert request(server, "/hello.txt")[0] == 200
    sock, length, body = slow_client(server, "/64m.bin")
    workers = server.worker_pids()
    server.proc.send_signal(signal.SIGTERM)
    got, digest = finish_download(sock, body, length)
    sock.close()
    assert got == length and digest == hashlib.sha256(data).digest()
    assert server.proc.wait(20) == 0
    assert not any(os.path.exists(f"/proc/{pid}") and _state(pid) != "Z" for pid in workers)
    # Seven requests went through the workers' shared stats slots to the supervisor.
    assert "served 7 requests" in server.stderr(), server.stderr()


def test_sigquit_stops_at_once_without_draining(edge, www: Path):
    (www / "64m.bin").write_bytes(os.urandom(64 * MIB))
    server = edge("--workers", "1")
    sock, length, body = slow_client(server, "/64m.bin")
    worker = server.worker_pid
    server.proc.send_signal(signal.SIGQUIT)
    assert server.proc.wait(5) == 0
    got = len(body)
    sock.settimeout(5)
    try:
        while chunk := sock.recv(1 << 20):
            got += len(chunk)
    except (ConnectionResetError, socket.timeout):
        pass
    sock.close()
    assert got < length, "SIGQUIT let the download finish"
    assert wait_for(lambda: _state(worker) in ("gone", "Z"), 5)


def test_sigusr1_reopens_the_access_log(edge, tmp_path: Path):
    log = tmp_path / "access.log"
    server = edge("--workers", "1", "--access-log", str(log))
    assert request(server, "/hello.txt")[0] == 200
    assert wait_for(lambda: log.exists() and "/hello.txt" in log.read_text(), 5)
    rotated = tmp_path / "access.log.1"
    log.rename(rotated)
    server.proc.send_signal(signal.SIGUSR1)
    assert wait_for(lambda: log.exists(), 5), "no new log file after SIGUSR1"
    assert request(server, "/index.html")[0] == 200
    assert wait_for(lambda: "/index.html" in log.read_text(), 5)
    assert "/index.html" not in rotated.read_text()
    assert "reopening log files" in server.stderr()
