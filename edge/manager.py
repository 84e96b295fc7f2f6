"""The node's cache manager process: active origin health checks and the disk cache's size (LRU eviction).

One per node, forked by the supervisor when origins are configured. Workers report each object they
store ("S <digest> <size>") and each one they revalidate in use ("U <digest>") as datagrams on a
socketpair made before fork; the manager keeps the LRU index and evicts under cache.max_size.
Health checks publish to the shared HealthTable every worker reads.
"""

from __future__ import annotations

import asyncio
import signal
import socket
import sys

import aiohttp
import uvloop

from .config import Config
from .diskcache import DiskCache
from .health import ActiveHealth, HealthTable, check

DATAGRAM = 256


class Manager:
    """Health checker and disk-cache index of one node."""

    def __init__(self, config: Config, health: HealthTable, events: socket.socket, store: DiskCache) -> None:
        self.config = config
        self.health = health
        self.events = events
        self.store = store
        self.states = [ActiveHealth(config.health.rise, config.health.fall, health.healthy(i))
                       for i in range(len(config.origins))]

    def on_event(self) -> None:
        """Drain the workers' datagrams into the LRU index."""
        store = self.store
        while True:
            try:
                data = self.events.recv(DATAGRAM)
            except (BlockingIOError, InterruptedError):
                return
            parts = data.split()
            try:
                if parts[0] == b"S" and len(parts) == 3:
                    store.admitted(parts[1].decode("ascii"), int(parts[2]))
                elif parts[0] == b"U" and len(parts) == 2:
                    name = parts[1].decode("ascii")
                    if name in store.index:
                        store.index.move_to_end(name)
            except (IndexError, ValueError, OSError):
                continue  # a malformed report costs nothing

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

    async def run(self) -> None:
        """Serve until SIGTERM."""
        loop = asyncio.get_running_loop()
        stop = loop.create_future()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, lambda: stop.done() or stop.set_result(None))
        self.events.setblocking(False)
        loop.add_reader(self.events.fileno(), self.on_event)
        connector = aiohttp.TCPConnector(limit=0, force_close=True)
        async with aiohttp.ClientSession(connector=connector, skip_auto_headers=("User-Agent",)) as session:
            checks = [loop.create_task(self.check_forever(session, i)) for i in range(len(self.config.origins))]
            await stop
            for task in checks:
                task.cancel()
            await asyncio.gather(*checks, return_exceptions=True)
        loop.remove_reader(self.events.fileno())


def run(config: Config, health: HealthTable, events: socket.socket, store: DiskCache | None) -> None:
    """The manager process's body: index the disk cache (unless handed a built index), then serve."""
    if store is None:
        store = DiskCache(config.cache.dir, config.cache.max_size)
        store.rebuild(clear_tmp=False)  # workers may be writing there right now
    manager = Manager(config, health, events, store)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(manager.run())
