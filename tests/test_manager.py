"""The cache manager: the disk cache's LRU index from workers' reports, eviction, and its life under the supervisor."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import time
from pathlib import Path

from conftest import EdgeProcess

from edge import reports
from edge.cachekey import digest
from edge.config import Config, Origin
from edge.diskcache import DiskCache, Meta
from edge.health import HealthTable
from edge.purge import Purge, PurgeIndex
from edge.manager import Manager


def _store_object(store: DiskCache, key: bytes, size: int, stored_at: float = 0.0) -> str:
    writer = store.writer(key)
    writer.write(b"x" * size)
    meta = Meta(key=key.decode(), status=200, headers=[], length=size, stored_at=stored_at, request_time=0.0,
                lifetime=60.0, initial_age=0.0)
    assert writer.commit(meta)
    return digest(key)


def _manager(tmp_path: Path, max_size: int) -> tuple[Manager, socket.socket, DiskCache]:
    store = DiskCache(str(tmp_path / "cache"), max_size)
    store.rebuild()
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    ours.setblocking(False)
    config = Config(origins=(Origin("http://127.0.0.1:9"),))
    return Manager(config, HealthTable(1), ours, store), theirs, store


def test_reports_build_the_index_and_eviction_keeps_the_size(tmp_path: Path):
    manager, worker_end, store = _manager(tmp_path, max_size=250)
    # A worker's DiskCache reports instead of indexing: what it stores reaches the manager.
    worker_store = DiskCache(store.root, store.max_size, report=lambda n, s, k, t: worker_end.send(
        reports.pack([reports.stored(n, s, k, t)])))
    names = [_store_object(worker_store, f"/o{i}".encode(), 100) for i in range(2)]
    worker_end.send(reports.pack([reports.used(names[0])]))  # o0 is used again before o2 arrives
    names.append(_store_object(worker_store, b"/o2", 100))
    assert worker_store.index == {}  # the worker keeps no index of its own
    manager.on_event()
    # 300 bytes reported, 250 allowed: the least recently used (o1, since o0 was used) goes.
    assert list(store.index) == [names[0], names[2]]
    assert names[1] not in store.index
    assert not os.path.exists(store.paths(names[1])[0]) and not os.path.exists(store.paths(names[1])[1])
    assert os.path.exists(store.paths(names[0])[0]) and os.path.exists(store.paths(names[2])[0])
    assert store.size == 200 and store.evictions == 1


def test_malformed_reports_cost_nothing(tmp_path: Path):
    manager, worker_end, store = _manager(tmp_path, max_size=1000)
    for junk in (b"", b"S", b"S abc", b"S abc notanumber", b"Q x y", b"\xff\xfe", b"U"):
        worker_end.send(junk)  # unframed
        worker_end.send(reports.pack([junk]))  # framed, but not a record
    worker_end.send(reports.pack([b"S " + b"a" * 32 + b" 10 99\n/short", b"S ../../../x 10 0\n", b"U ../x"])
                    + b"\x00\x00\x10\x00S")  # a key and a frame cut short, names that are not digests
    name = _store_object(DiskCache(store.root, store.max_size, report=lambda n, s, *_: None), b"/ok", 10)
    worker_end.send(reports.pack([b"Q x", reports.stored(name, 10, "/ok", [])]))
    manager.on_event()
    assert dict(store.index) == {name: 10}


def test_rebuild_without_clearing_keeps_unfinished_bodies(tmp_path: Path):
    store = DiskCache(str(tmp_path / "cache"), 1000)
    name = _store_object(store, b"/kept", 10)
    part = Path(store.tmp_dir) / "abc.123.456"
    part.write_bytes(b"partial")  # a worker's fetch under way while a restarted manager indexes
    again = DiskCache(store.root, 1000)
    assert again.rebuild(clear_tmp=False) == 1 and name in again.index
    assert part.exists()
    assert DiskCache(store.root, 1000).rebuild(clear_tmp=True) == 1
    assert not part.exists()


def _children(pid: int) -> set[int]:
    out = set()
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as f:
            out.update(int(p) for p in f.read().split())
    return out


def test_a_killed_manager_is_restarted_and_goes_with_the_node(tmp_path: Path):
    root = tmp_path / "www"
    root.mkdir()
    server = EdgeProcess(root, "--origin", "http://127.0.0.1:9", "--cache-dir", str(tmp_path / "cache"),
                         "--health-interval", "0.2")
    try:
        first = server.manager_pid
        assert first in _children(server.pid)
        os.kill(first, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            workers = {pid for pid, _ in server.banner.values()}
            others = _children(server.pid) - workers - {first}
            if others:
                break
            time.sleep(0.1)
        assert others, "no new cache manager within 5 s"
        assert "cache manager" in server.stderr() and "restarting" in server.stderr()
        # The origin (port 9, discard) refuses: the health checker said so, and requests get a quick 502.
        with socket.create_connection((server.host, server.port), timeout=5) as s:
            s.sendall(b"GET /x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
            reply = b""
            while chunk := s.recv(65536):
                reply += chunk
        assert reply.startswith(b"HTTP/1.1 502 ")
        assert b"cache-status: edge; fwd=miss; detail=" in reply.lower()
        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(15) == 0
        for pid in others:
            assert not os.path.exists(f"/proc/{pid}") or _zombie_or_gone(pid)
    finally:
        if server.proc.poll() is None:
            server.proc.kill()
            server.proc.wait()


def _zombie_or_gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True


def test_a_reconcile_indexes_the_objects_whose_reports_were_lost(tmp_path: Path):
    store = DiskCache(str(tmp_path / "cache"), 10_000, keys=PurgeIndex())
    store.rebuild()
    ours, worker_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    ours.setblocking(False)
    manager = Manager(Config(origins=(Origin("http://127.0.0.1:9"),)), HealthTable(1), ours, store)
    told = DiskCache(store.root, store.max_size, report=lambda n, s, k, t: worker_end.send(
        reports.pack([reports.stored(n, s, k, t)])))
    known = _store_object(told, b"/known", 10)
    lost_store = DiskCache(store.root, store.max_size, report=lambda *_: None)  # a worker that died with its batch
    store.remember(Purge(paths=("/lost1", "/lost2")), 1000.0)  # before /lost1 was stored: not for it
    lost = [_store_object(lost_store, f"/lost{i}".encode(), 20, stored_at=1000.5) for i in range(4)]
    # A purge of /lost3 while its report was missing: the purge could not find it in the index.
    store.remember(Purge(paths=("/lost3",)), 1001.0)
    purged = lost.pop()
    # Not objects: a body whose metadata never landed, and one shorter than its metadata says.
    Path(store.paths("a" * 32)[0]).write_bytes(b"no metadata")
    short = _store_object(lost_store, b"/short", 30)
    with open(store.paths(short)[0], "r+b") as f:
        f.truncate(5)

    async def scenario() -> None:
        manager.on_event()
        assert list(store.index) == [known]
        worker_end.send(reports.pack([reports.RECONCILE]))
        manager.on_event()
        for _ in range(500):
            if manager.reconciling is None:
                return
            await asyncio.sleep(0.01)
        raise AssertionError("the reconcile did not end")

    asyncio.run(scenario())
    assert set(store.index) == {known, *lost}
    assert store.size == 10 + 3 * 20
    assert not os.path.exists(store.paths(purged)[0]), "a purge made while it was unknown removes it"
    assert store.keys.select(Purge(paths=("/lost1",))) == {lost[1]}, "a lost object can be purged once reconciled"
    ours.close()
    worker_end.close()
