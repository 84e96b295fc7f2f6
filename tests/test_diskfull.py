"""A cache disk that refuses writes: misses still reach their clients whole, nothing is stored, the failure
is counted, logged once and evicted for, and storing resumes by itself once space returns.

The cache directory is a small tmpfs mounted for the test (root only: skipped, saying so, elsewhere).
"""

from __future__ import annotations

import errno
import hashlib
import os
import subprocess
from pathlib import Path

import pytest
from conftest import EdgeProcess, wait_for
from origin_server import pattern
from test_admin import metric, metrics, status
from test_pull import (
    COLLAPSED,
    HIT,
    MISS_STORED,
    get,
    origins,  # noqa: F401 - the fixture
    read_chunked,
    read_head_and_some,
    read_rest,
    settled,
    spread_connections,
    stored,
)

STORE_FAILED = "edge; fwd=miss; detail=store-failed"
LOG_LINE = "cannot store in the disk cache (disk-full"
MIB = 1 << 20


@pytest.fixture
def small_disk(tmp_path: Path):
    """An 8 MiB tmpfs to use as the cache directory; unmounted afterwards."""
    mount = tmp_path / "cache"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount)], capture_output=True,
                          text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(at: Path, leave: int = 0) -> Path:
    """Fill the filesystem with one file (`at`, or `at`/filler for a directory) until about `leave` bytes stay
    free; returns it."""
    filler = at / "filler" if at.is_dir() else at
    disk = filler.parent
    with open(filler, "wb") as f:
        while True:
            st = os.statvfs(disk)
            free = st.f_bavail * st.f_frsize
            if free <= leave:
                break
            try:
                f.write(b"\0" * min(MIB, max(4096, free - leave)))
                f.flush()
            except OSError as e:
                assert e.errno == errno.ENOSPC
                break
    return filler


def whole(server: EdgeProcess, name: str, size: int, extra: str = "") -> dict[str, str]:
    """GET /stream/NAME of `size` bytes: it must arrive whole; returns the response's fields."""
    status_code, headers, body = get(server, f"/stream/{name}?size={size}&chunk=65536&delay=0{extra}")
    assert status_code == 200, (name, status_code, headers)
    assert hashlib.sha256(body).digest() == hashlib.sha256(pattern(name, size)).digest(), \
        f"{name}: {len(body)} of {size} bytes"
    return headers


def failed_stores(server: EdgeProcess) -> float:
    return metric(metrics(server), "edge_cache_store_errors_total", reason="disk-full")


def test_a_full_cache_disk_still_serves_every_miss_whole_and_counts_each_failed_store(pull, origins, small_disk):
    [origin] = origins(1)
    server = pull([origin], config='[cache]\nmin_free = "1M"\n')
    kept = [f"kept{i}" for i in range(3)]
    for name in kept:  # objects the eviction pass can take
        assert whole(server, name, 300_000)["cache-status"] == MISS_STORED
    assert wait_for(lambda: status(server)["cache"]["objects"] == 3, 10)
    filler = fill(small_disk)

    # Every miss, of known length or not, arrives whole; none is stored, each says so before its body.
    misses = [("full-length", ""), ("full-chunked", "&chunked=1")] * 5
    for i, (name, extra) in enumerate(misses):
        headers = whole(server, f"{name}{i}", 400_000, extra)
        assert headers["cache-status"] == STORE_FAILED, headers
    assert wait_for(lambda: failed_stores(server) == len(misses), 5), failed_stores(server)
    assert status(server)["cache"]["store_errors"]["disk-full"] == len(misses)
    for i, (name, extra) in enumerate(misses):
        assert stored(small_disk, f"/stream/{name}{i}?size=400000&chunk=65536&delay=0{extra}") is None

    # Logged once (not per request); the manager evicted what it could to make room.
    assert wait_for(lambda: "cache manager evicted 3 object(s)" in server.stderr(), 5), server.stderr()
    assert server.stderr().count(LOG_LINE) == 1, server.stderr()
    assert status(server)["cache"]["objects"] == 0
    assert "Traceback" not in server.stderr()

    # Space returns: storing resumes by itself.
    filler.unlink()
    assert whole(server, "after", 300_000)["cache-status"] == MISS_STORED
    assert HIT.fullmatch(whole(server, "after", 300_000)["cache-status"])
    assert failed_stores(server) == len(misses)
    settled(server, small_disk)


@pytest.mark.parametrize("chunked", [False, True], ids=["length", "unknown-length"])
def test_a_disk_that_fills_while_a_body_streams_goes_on_in_memory_for_every_worker(pull, origins, small_disk,
                                                                                   chunked):
    # No headroom asked for: the store begins, and the disk fills while the origin still sends. The
    # fetching worker's client, and the other worker's that follows the temp file, both get the whole
    # body from the one origin request (the rest of it goes on in the fetcher's memory file).
    [origin] = origins(1)
    server = pull([origin], "--workers", "2", "--cpu-affinity", "off", config='[cache]\nmin_free = "0"\n')
    size = 2 * MIB
    target = f"/gate/spill?size={size}" + ("&chunked=1" if chunked else "")
    full = pattern("spill", size)
    fill(small_disk, leave=3 * MIB)
    fetcher, follower = spread_connections(server, 1)
    readers = []
    for sock in (fetcher, follower):
        sock.sendall(f"GET {target} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        headers, early = read_head_and_some(sock)
        readers.append((sock, headers, early))
    assert readers[0][1]["cache-status"] == MISS_STORED  # said before the disk filled: "being stored"
    assert readers[1][1]["cache-status"] == COLLAPSED
    rival = fill(small_disk / "more")
    origin.ctl("/_release/spill")
    for sock, _, early in readers:
        body = read_chunked(sock, early)[0] if chunked else read_rest(sock, early, size)
        assert len(body) == size and body == full
        sock.close()
    assert origin.count(target) == 1
    assert wait_for(lambda: failed_stores(server) == 1, 5)
    assert stored(small_disk, target) is None
    assert server.stderr().count(LOG_LINE) == 1, server.stderr()
    assert "Traceback" not in server.stderr()
    rival.unlink()
    settled(server, small_disk)


def test_a_passed_answer_never_takes_the_caches_min_free_reserve(pull, origins, small_disk):
    """An answer to a passed method is buffered in an unnamed file on the cache's disk for its client: it may
    not eat the reserve the cache keeps free (min_free). One that would is cut (the client sees it
    incomplete, never short and whole); smaller ones pass whole, and the worker goes on."""
    import httpx

    [origin] = origins(1)
    server = pull([origin], config='[cache]\nmin_free = "6M"\n')  # 8 MiB of tmpfs: about 2 MiB above it
    with pytest.raises(httpx.RemoteProtocolError):
        httpx.post(f"{server.url}/pass/big?size=4000000", content=b"x", timeout=20)
    r = httpx.post(f"{server.url}/pass/small?size=100000", content=b"x", timeout=20)
    assert r.status_code == 200 and r.content == pattern("small", 100_000)
    assert "Traceback" not in server.stderr()
