"""The admin endpoint (aiohttp, in the node's manager process): healthz, drain, status, metrics, purge."""

from __future__ import annotations

import asyncio
import hmac
import json
import os
import time
from collections.abc import Awaitable, Callable

from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from . import __version__
from .config import Config
from .control import Asker
from .dashboard import PAGE
from .diskcache import DiskCache
from .health import HealthTable, OriginCounters
from .purge import BadPurge, Purge, parse_purge
from .stats import CIRCUITS_OPEN, DURATION_BOUNDS, FREE, PID, STATE, StatsBlock
from .storefaults import REASONS

MAX_BODY = 1 << 20  # a purge of 10,000 paths fits
ACK_TIMEOUT = 5.0  # seconds every worker has to acknowledge a purge
REQUEST_TIMEOUT = 120.0  # seconds an admin request may take (a body that never arrives included)
IDLE_TIMEOUT = 15.0  # seconds an idle admin connection is kept
CONTENT_TYPE_METRICS = "text/plain; version=0.0.4; charset=utf-8"


class Node:
    """What the admin endpoint reads and acts on: shared stats, health table, disk cache, workers."""

    def __init__(self, config: Config, stats: StatsBlock, health: HealthTable | None, store: DiskCache | None,
                 asker: Asker, origin_counts: OriginCounters | None = None) -> None:
        self.origin_counts = origin_counts
        self.config = config
        self.stats = stats
        self.health = health
        self.store = store
        self.asker = asker
        self.started = time.time()
        self.draining = False
        #: Reads the workers' queued reports into the disk cache's index (set by the manager).
        self.drain_reports: Callable[[], None] | None = None

    def worker_pids(self) -> list[int]:
        """Pids of every worker process alive now (any generation)."""
        pids = []
        for index in range(1, self.stats.capacity):
            slot = self.stats.slot(index)
            if slot[STATE] != FREE and slot[PID] > 0:
                pids.append(int(slot[PID]))
        return pids

    async def purge(self, purge: Purge) -> dict:
        """Remove from the disk cache, then have every worker drop its entries; returns the answer body."""
        removed = 0
        if self.store is not None:
            self.store.remember(purge, time.time())  # for objects whose reports were lost (Manager.reconcile)
            if self.drain_reports is not None:
                self.drain_reports()  # reports already sent count in the first pass
            names = self.store.take(purge)
            # Files go before the workers are told (a worker must not find them on disk after its ack),
            # on a thread: purging everything is 100k unlinks, and /healthz must keep answering meanwhile.
            await asyncio.get_running_loop().run_in_executor(None, self.store.unlink_all, names)
            removed = len(names)
        pids = self.worker_pids()
        answers: dict[int, dict] = {}
        missing: set[int] = set()
        for part in purge.batches():  # a datagram holds so much: a long list of paths goes in several
            got, lost = await self.asker.ask(pids, {"op": "purge", **part.to_json()}, ACK_TIMEOUT)
            missing |= lost
            for pid, answer in got.items():
                if "error" in answer or "error" in answers.get(pid, {}):
                    answers[pid] = answer if "error" in answer else answers[pid]
                else:
                    answers[pid] = {"dropped": answers.get(pid, {}).get("dropped", 0) + answer.get("dropped", 0)}
        if self.store is not None and self.drain_reports is not None:
            # Objects stored just before the purge were reported in batches the workers sent before
            # their acks: read them now and remove those the purge names too.
            self.drain_reports()
            late = self.store.take(purge)
            if late:
                await asyncio.get_running_loop().run_in_executor(None, self.store.unlink_all, late)
                removed += len(late)
        failed = {pid: a["error"] for pid, a in answers.items() if "error" in a}
        if missing or failed:
            raise web.HTTPGatewayTimeout(text=json.dumps({
                "error": "not every worker acknowledged the purge", "missing": sorted(missing),
                "failed": failed, "removed_from_disk": removed}), content_type="application/json")
        dropped = max((a.get("dropped", 0) for a in answers.values()), default=0)
        return {"purged": removed + dropped, "disk_objects": removed, "worker_entries": dropped,
                "workers": len(answers)}

    def status(self) -> dict:
        """The /status document."""
        workers = []
        now = time.time()
        for row in self.stats.workers():
            workers.append({"pid": row["pid"], "slot": row["slot"], "cpu": row["cpu"],
                            "numa_node": row["numa_node"], "generation": row["generation"], "state": row["state"],
                            "uptime": round(now - row["started"], 3), "requests": row["requests"],
                            "connections_active": row["connections_active"], "bytes_out": row["bytes_out"],
                            "cache_hits": row["cache_hits"], "cache_misses": row["cache_misses"],
                            "file_cache_entries": row["file_cache_entries"], "tunnels_open": row["tunnels_open"]})
        totals = self.stats.totals()
        lookups = totals["cache_hits"] + totals["cache_misses"]
        cache = {"hits": totals["cache_hits"], "misses": totals["cache_misses"], "stale": totals["cache_stale"],
                 "hit_ratio": round(totals["cache_hits"] / lookups, 4) if lookups else None}
        cache["store_errors"] = {reason: totals["store_errors_" + reason.replace("-", "_")] for reason in REASONS}
        if self.store is not None:
            cache.update({"objects": len(self.store.index), "bytes": self.store.size,
                          "max_bytes": self.store.max_size, "evictions": self.store.evictions,
                          "dir": self.store.root})
        return {"version": __version__, "pid": os.getppid(), "uptime": round(now - self.started, 3),
                "draining": self.draining, "workers": workers, "origins": self.origins(), "cache": cache,
                "tunnels": {"open": totals["tunnels_open"], "total": totals["tunnels_total"],
                            "bytes_client_to_origin": totals["tunnel_bytes_up"],
                            "bytes_origin_to_client": totals["tunnel_bytes_down"]},
                "totals": totals,
                "config": {"root": self.config.root, "listen": f"{self.config.host}:{self.config.port}",
                           "workers": self.config.workers, "tls_port": self.config.tls.port,
                           "origins": len(self.config.origins), "cache_dir": self.config.cache.dir,
                           "health_path": self.config.health.path, "health_interval": self.config.health.interval}}

    def origins(self) -> list[dict]:
        """Each origin: weight, active health (shared table) and how many workers have its circuit open."""
        live = [self.stats.slot(i) for i in range(1, self.stats.capacity)]
        live = [s for s in live if s[STATE] != FREE]
        counts = self.origin_counts.totals() if self.origin_counts is not None else []
        pools = self.origin_counts.pools() if self.origin_counts is not None else []
        out = []
        for index, origin in enumerate(self.config.origins):
            ok, failed = counts[index] if index < len(counts) else (0, 0)
            pool = pools[index] if index < len(pools) else {"open": 0, "idle": 0, "in_use": 0, "opened_total": 0}
            row = self.health.row(index) if self.health is not None else {}
            opened = sum(1 for s in live if s[CIRCUITS_OPEN] & (1 << index))
            out.append({"url": origin.url, "weight": origin.weight, "healthy": row.get("healthy", True),
                        "circuit": "closed" if not opened else f"open in {opened} of {len(live)} workers",
                        "last_check": row.get("last_check") or None, "latency": row.get("latency"),
                        "checks_ok": row.get("checks_ok", 0), "checks_failed": row.get("checks_failed", 0),
                        "requests_ok": ok, "requests_failed": failed, "pool": pool})
        return out


class Collector:
    """Prometheus metrics from the shared stats, health table and disk cache, read at each scrape."""

    def __init__(self, node: Node) -> None:
        self.node = node

    def collect(self):  # noqa: ANN201 - prometheus_client's protocol
        """Yield the metric families."""
        node = self.node
        totals = node.stats.totals()
        requests = CounterMetricFamily("edge_requests", "Responses sent, by status class and protocol",
                                       labels=["code_class", "protocol"])
        for cls in ("1xx", "2xx", "3xx", "4xx", "5xx"):
            requests.add_metric([cls, "http/1.1"], totals[f"http1_responses_{cls}"])
            requests.add_metric([cls, "h2"], totals[f"h2_responses_{cls}"])
        yield requests
        # Requests answered in the loop turn that parsed them are not timed (that would cost every
        # request a clock read): they count in the fastest bucket; those that waited are timed.
        waited = [totals[f"duration_bucket_{i}"] for i in range(len(DURATION_BOUNDS) + 1)]
        fast = max(0, totals["requests"] - sum(waited))
        cumulative, buckets = fast, []
        for bound, count in zip((*map(str, DURATION_BOUNDS), "+Inf"), waited):
            cumulative += count
            buckets.append((bound, cumulative))
        yield HistogramMetricFamily("edge_request_duration_seconds", "Time to answer a request",
                                    buckets=buckets, sum_value=totals["duration_sum_us"] / 1e6)
        for name, field, text in (
                ("edge_cache_hits", "cache_hits", "Origin objects served fresh from the cache"),
                ("edge_cache_misses", "cache_misses", "Requests that needed an origin fetch or revalidation"),
                ("edge_cache_stale", "cache_stale", "Stale objects served (stale-while-revalidate, stale-if-error)"),
                ("edge_bytes_sent", "bytes_out", "Response bytes sent, headers included"),
                ("edge_connections", "connections_total", "Client connections accepted"),
                ("edge_file_cache_evictions", "file_cache_evictions", "Open-file cache evictions")):
            yield CounterMetricFamily(name, text, value=totals[field])
        origin = CounterMetricFamily("edge_origin_requests", "Exchanges with each origin, by outcome "
                                     "(error: refused, reset, timed out, cut short, or a 502/503/504)",
                                     labels=["origin", "outcome"])
        counts = node.origin_counts.totals() if node.origin_counts is not None else []
        for index, upstream in enumerate(node.config.origins):
            ok, failed = counts[index] if index < len(counts) else (0, 0)
            origin.add_metric([upstream.url, "ok"], ok)
            origin.add_metric([upstream.url, "error"], failed)
        yield origin
        failed = CounterMetricFamily("edge_cache_store_errors", "Origin answers the disk cache could not store "
                                     "(they still reached their clients whole), by reason", labels=["reason"])
        for reason in REASONS:
            failed.add_metric([reason], totals["store_errors_" + reason.replace("-", "_")])
        yield failed
        yield GaugeMetricFamily("edge_connections_active", "Open client connections",
                                value=totals["connections_active"])
        # WebSocket tunnels (edge/tunnel.py): a tunnel's client connection counts here, not in connections_active.
        yield GaugeMetricFamily("edge_tunnels_open", "Open tunnels (WebSocket relays)", value=totals["tunnels_open"])
        yield CounterMetricFamily("edge_tunnels", "Tunnels opened (an origin answered 101)",
                                  value=totals["tunnels_total"])
        relayed = CounterMetricFamily("edge_tunnel_bytes", "Bytes relayed through tunnels, by direction "
                                      "(origin_to_client includes the origin's 101 head)", labels=["direction"])
        relayed.add_metric(["client_to_origin"], totals["tunnel_bytes_up"])
        relayed.add_metric(["origin_to_client"], totals["tunnel_bytes_down"])
        yield relayed
        yield GaugeMetricFamily("edge_file_cache_entries", "Open-file cache entries, all workers",
                                value=totals["file_cache_entries"])
        yield GaugeMetricFamily("edge_workers", "Worker processes", value=len(node.worker_pids()))
        healthy = GaugeMetricFamily("edge_origin_healthy", "1 when the origin passes its active checks",
                                    labels=["origin"])
        circuit = GaugeMetricFamily("edge_origin_circuit_open_workers", "Workers with the origin's circuit open",
                                    labels=["origin"])
        for row in node.origins():
            healthy.add_metric([row["url"]], 1 if row["healthy"] else 0)
            circuit.add_metric([row["url"]], 0 if row["circuit"] == "closed" else int(row["circuit"].split()[2]))
        yield healthy
        yield circuit
        # Keep-alive pools to the origins, summed over the workers: reuse shows as opened_total growing
        # slower than edge_origin_requests_total.
        pool_gauges = {state: GaugeMetricFamily(f"edge_origin_pool_{state}", text, labels=["origin"]) for state, text in (
            ("open", "Pooled connections to the origin, open or opening"),
            ("idle", "Pooled connections to the origin kept alive, waiting for a request"),
            ("in_use", "Pooled connections to the origin carrying a request"))}
        opened = CounterMetricFamily("edge_origin_pool_opened", "Connections opened to the origin", labels=["origin"])
        for row in node.origins():
            for state, family in pool_gauges.items():
                family.add_metric([row["url"]], row["pool"][state])
            opened.add_metric([row["url"]], row["pool"]["opened_total"])
        yield from pool_gauges.values()
        yield opened
        if node.store is not None:
            yield GaugeMetricFamily("edge_disk_cache_objects", "Objects in the disk cache", value=len(node.store.index))
            yield GaugeMetricFamily("edge_disk_cache_bytes", "Bytes of bodies in the disk cache", value=node.store.size)
            yield CounterMetricFamily("edge_disk_cache_evictions", "Objects evicted to keep the size limit",
                                      value=node.store.evictions)
        yield GaugeMetricFamily("edge_draining", "1 while the node drains", value=1 if node.draining else 0)


def _authorized(request: web.Request, token: str | None) -> bool:
    if token is None:
        return True  # no token: the endpoint listens on loopback only (checked when the config loads)
    given = request.headers.get("Authorization", "")
    scheme, _, value = given.partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(value.strip().encode(), token.encode())


def make_app(node: Node, token: str | None) -> web.Application:
    """The admin application."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(Collector(node))

    @web.middleware
    async def auth(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]):
        # /healthz is for load balancers; / is a page with no data in it (it asks for the token itself).
        public = request.method in ("GET", "HEAD") and request.path in ("/healthz", "/")
        if not public and not _authorized(request, token):
            return web.json_response({"error": "a valid bearer token is needed"}, status=401,
                                     headers={"WWW-Authenticate": 'Bearer realm="edge admin"'})
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT):
                return await handler(request)
        except TimeoutError:
            return web.json_response({"error": f"not done within {REQUEST_TIMEOUT:.0f} s"}, status=503)

    async def dashboard(request: web.Request) -> web.Response:
        return web.Response(text=PAGE, content_type="text/html",
                            headers={"Content-Security-Policy": "default-src 'self'; script-src 'unsafe-inline'; "
                                                                "style-src 'unsafe-inline'"})

    async def healthz(request: web.Request) -> web.Response:
        if node.draining:
            return web.Response(status=503, text="draining\n")
        return web.Response(text="ok\n")

    async def drain(request: web.Request) -> web.Response:
        node.draining = True
        return web.json_response({"draining": True})

    async def status(request: web.Request) -> web.Response:
        return web.json_response(node.status())

    async def metrics(request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_METRICS})

    async def purge(request: web.Request) -> web.Response:
        try:
            wanted = parse_purge(await request.read())
        except BadPurge as e:
            return web.json_response({"error": str(e)}, status=400)
        return web.json_response(await node.purge(wanted))

    async def purge_path(request: web.Request) -> web.Response:
        """PURGE /path (Varnish's convention): the one path."""
        try:
            # The raw path: parse_purge decodes it once, as the workers' caches key it.
            wanted = parse_purge(json.dumps({"paths": [request.raw_path.split("?", 1)[0]]}).encode())
        except BadPurge as e:
            return web.json_response({"error": str(e)}, status=400)
        return web.json_response(await node.purge(wanted))

    app = web.Application(middlewares=[auth], client_max_size=MAX_BODY)
    app.add_routes([web.get("/", dashboard), web.get("/healthz", healthz), web.post("/drain", drain), web.get("/status", status),
                    web.get("/metrics", metrics), web.post("/purge", purge),
                    web.route("PURGE", "/{path:.*}", purge_path)])
    return app
