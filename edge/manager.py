"""The node's manager process: the admin endpoint, active origin health checks, the disk cache's index.

One per node, forked (and restarted) by the supervisor. It serves the admin endpoint on the socket the
supervisor bound. With origins, workers report each object they store and each one they
load again (edge/reports.py) in batched datagrams on a socketpair made before fork; the manager keeps the LRU index (and the key/tag index purges use) and evicts under
cache.max_size; health checks publish to the shared HealthTable every worker reads.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from collections.abc import Awaitable

import aiohttp
import uvloop
from aiohttp import web

from . import control, reports
from .admin import IDLE_TIMEOUT, Node, make_app

from .config import Config
from .control import Asker
from .diskcache import DiskCache, process_alive
from .health import ActiveHealth, HealthTable, OriginCounters, check
from .follow import KeyLocks
from .purge import Purge, PurgeIndex
from .stats import StatsBlock



class Manager:
    """Health checker and disk-cache index of one node."""

    def __init__(self, config: Config, health: HealthTable | None, events: socket.socket | None,
                 store: DiskCache | None) -> None:
        self.config = config
        self.health = health
        self.events = events
        self.store = store
        self.states = [ActiveHealth(config.health.rise, config.health.fall, health.healthy(i))
                       for i in range(len(config.origins))] if health is not None else []
        self.reconciling: asyncio.Future | None = None
        self.locks: KeyLocks | None = None  # the fetch locks, to clear a dead worker's followed temp file
        self.reconcile_again = False

    def on_event(self) -> None:
        """Drain the workers' datagrams into the LRU index."""
        store = self.store
        while True:
            try:
                data = self.events.recv(reports.DATAGRAM)
            except (BlockingIOError, InterruptedError):
                return
            for kind, name, size, key, tags in reports.parse(data):
                if kind == "S":
                    try:
                        store.admitted(name, size, key, tags)
                    except OSError:
                        pass  # an eviction's unlink failed: the next one tries again
                elif kind == "R":
                    self.reconcile()
                elif kind == "M":
                    self.make_room()
                elif name in store.index:
                    store.index.move_to_end(name)

    def request(self, node: Node, command: dict) -> Awaitable[dict]:
        """A worker's request on the manager's control socket: "invalidate" (paths), the node's purge of the
        stored answers an unsafe method invalidated (RFC 9111 §4.4), answered once every worker dropped them."""
        if command.get("op") != "invalidate":
            raise ValueError(f"unknown request {command.get('op')!r}")
        paths = command.get("paths")
        if not isinstance(paths, list) or not paths or not all(isinstance(p, str) and p.startswith("/") for p in paths):
            raise ValueError("invalidate takes a list of URL paths")
        return self._invalidate(node, Purge(paths=tuple(paths)))

    async def _invalidate(self, node: Node, purge: Purge) -> dict:
        """Node.purge for an invalidation (the admin endpoint's own purge: the disk, then every worker), when
        the disk holds anything it names. A worker holds only stored objects (and the one asking has dropped
        its own copies already): with none on disk there is nothing to tell the workers, which an API's
        every POST would otherwise cost (post-1m: the manager was half the node's CPU)."""
        store = self.store
        if store is not None and store.keys is not None:
            if node.drain_reports is not None:
                node.drain_reports()  # an object stored a moment ago counts
            if not store.keys.select(purge):
                return {"purged": 0, "disk_objects": 0, "worker_entries": 0, "workers": 0}
        try:
            return await node.purge(purge)
        except web.HTTPException as e:  # not every worker acknowledged in time
            return {"error": e.text or e.reason}

    def make_room(self) -> None:
        """A worker could not store: evict least recently used objects until min_free bytes are free."""
        try:
            evicted = self.store.make_room()
        except OSError:
            return  # the disk is failing, not full: nothing eviction can mend
        if evicted:
            print(f"edge: cache manager evicted {evicted} object(s) after a failed store, to keep "
                  f"{self.config.cache.min_free} bytes free", file=sys.stderr, flush=True)

    def reconcile(self) -> None:
        """Index the objects on disk whose reports were lost: read in a thread, indexed on the loop."""
        if self.reconciling is not None:
            self.reconcile_again = True  # lost after the scan began: scan once more when it ends
            return
        self.reconciling = asyncio.get_running_loop().run_in_executor(None, self._scan)
        self.reconciling.add_done_callback(self._reconciled)

    def _scan(self) -> list[tuple[str, int, str, list[str], float]]:
        """(Thread) Clear what dead workers left in tmp/, then list the objects the index lacks."""
        if self.locks is None:
            self.locks = KeyLocks(os.path.join(self.store.tmp_dir, "locks"))
        remove_leftovers(self.store.tmp_dir, self.locks)
        return self.store.unindexed()

    def _reconciled(self, scan: asyncio.Future) -> None:
        self.reconciling = None
        store = self.store
        try:
            found = scan.result()
        except OSError:
            found = []
        indexed = removed = 0
        for name, size, key, tags, stored_at in found:
            if name in store.index:
                continue  # its report came meanwhile
            try:
                if store.purged_after(stored_at, key, tags):
                    store.unlink_all([name])  # a purge since it was stored could not find it: it goes now
                    removed += 1
                elif os.path.exists(store.paths(name)[0]):  # not purged or evicted since the scan saw it
                    store.admitted(name, size, key, tags)
                    indexed += 1
            except OSError:
                pass
        if indexed or removed:
            print(f"edge: cache manager found {indexed + removed} object(s) whose reports were lost: "
                  f"{indexed} indexed, {removed} removed (purged since they were stored)", file=sys.stderr, flush=True)
        if self.reconcile_again:
            self.reconcile_again = False
            self.reconcile()

    async def check_forever(self, session: aiohttp.ClientSession, index: int) -> None:
        """Check one origin every health.interval seconds and publish each result."""
        hc = self.config.health
        url = self.config.origins[index].url + hc.path
        state = self.states[index]
        while True:
            ok, took = await check(session, url, hc.timeout)
            changed = state.record(ok)
            self.health.publish(index, state.healthy, ok, took)
            if changed:
                print(f"edge: origin {self.config.origins[index].url} is {'up' if state.healthy else 'down'}",
                      file=sys.stderr, flush=True)
            await asyncio.sleep(hc.interval)

    async def run(self, stats: StatsBlock, admin_sock: socket.socket | None, supervisor: int,
                  origin_counts: OriginCounters | None = None) -> None:
        """Serve until SIGTERM (SIGUSR2: the node drains; /healthz says so)."""
        loop = asyncio.get_running_loop()
        stop = loop.create_future()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, lambda: stop.done() or stop.set_result(None))
        if self.events is not None:
            self.events.setblocking(False)
            loop.add_reader(self.events.fileno(), self.on_event)
        asker = Asker(loop, supervisor)
        node = Node(self.config, stats, self.health, self.store, asker, origin_counts)
        requests = None
        if self.store is not None:
            try:  # workers ask here for the node's purge of what an unsafe method invalidated (edge/passthrough.py)
                requests = control.bind(supervisor, control.MANAGER)
            except OSError as e:  # the manager before this one still holds the name: invalidations stay local
                print(f"edge: cache manager cannot take workers' requests: {e}", file=sys.stderr, flush=True)
            else:
                control.serve(loop, requests, lambda command: self.request(node, command))
        if self.events is not None:
            node.drain_reports = self.on_event
        loop.add_signal_handler(signal.SIGUSR2, lambda: setattr(node, "draining", True))
        runner = None
        if admin_sock is not None:
            runner = web.AppRunner(make_app(node, self.config.admin_token), access_log=None,
                                   handler_cancellation=True, keepalive_timeout=IDLE_TIMEOUT)
            await runner.setup()
            await web.SockSite(runner, admin_sock, shutdown_timeout=1.0).start()
        connector = aiohttp.TCPConnector(limit=0, force_close=True)
        async with aiohttp.ClientSession(connector=connector, skip_auto_headers=("User-Agent",)) as session:
            checks = [loop.create_task(self.check_forever(session, i)) for i in range(len(self.states))]
            await stop
            for task in checks:
                task.cancel()
            await asyncio.gather(*checks, return_exceptions=True)
        if runner is not None:
            await runner.cleanup()
        asker.close()
        if requests is not None:
            loop.remove_reader(requests.fileno())
            requests.close()
        if self.events is not None:
            loop.remove_reader(self.events.fileno())


def remove_leftovers(tmp_dir: str, locks: KeyLocks) -> int:
    """Remove the temp files of workers that died (a live one removes its own): a private one by the pid
    in its name, a followed one (<digest>.fetch) when no worker holds its key's lock. How many went."""
    removed = 0
    for leftover in os.listdir(tmp_dir):
        parts = leftover.split(".")
        path = os.path.join(tmp_dir, leftover)
        try:
            if len(parts) >= 2 and parts[1] == "fetch":
                slot = KeyLocks.slot(parts[0])
                if not locks.try_lock(slot):
                    continue  # being fetched: the lock holder writes (or replaces) it
                try:
                    os.unlink(path)
                finally:
                    locks.unlock(slot)
            elif len(parts) >= 3 and parts[1].isdigit() and not process_alive(int(parts[1])):
                os.unlink(path)
            else:
                continue
            removed += 1
        except (OSError, ValueError):
            continue
    return removed


def run(config: Config, health: HealthTable | None, events: socket.socket | None, store: DiskCache | None,
        stats: StatsBlock, admin_sock: socket.socket | None, supervisor: int,
        origin_counts: OriginCounters | None = None) -> None:
    """The manager process's body: index the disk cache (unless handed a built index), then serve."""
    if store is None and config.origins:
        store = DiskCache(config.cache.dir, config.cache.max_size, keys=PurgeIndex(), min_free=config.cache.min_free,
                          max_variants=config.cache.max_variants)
        store.rebuild(clear_tmp=False)  # workers may be writing there right now
    manager = Manager(config, health, events, store)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(manager.run(stats, admin_sock, supervisor, origin_counts))
