"""The supervisor (`edge serve`): owns the listening sockets, forks pinned workers, restarts, reloads and drains them."""

from __future__ import annotations

import ctypes
import os
import selectors
import signal
import socket
import ssl
import sys
import time
import traceback
from dataclasses import dataclass, field, replace
from typing import Any, TextIO

from . import __version__, reports
from .config import Config, ConfigError, load
from .pinning import (
    Placement,
    assign,
    pin,
    set_preferred_node,
    steer_connections,
    worker_count,
)
from .health import HealthTable, OriginCounters
from .stats import PID, StatsBlock
from .tls import server_context
from .topology import Topology, discover

MAX_SLOTS = 4 * 1024 + 1  # up to three generations of the largest worker count, plus the retired slot
READY_TIMEOUT = 15.0  # seconds a new generation has to start serving before a reload is abandoned
QUICK_DEATH = 5.0  # a worker that dies sooner than this after starting counts towards backoff
BACKOFF_FIRST = 0.5
BACKOFF_MAX = 30.0
KILL_GRACE = 5.0  # after shutdown_timeout, workers still running are killed
PR_SET_PDEATHSIG = 1
HEALTH_ROWS = 64  # origins the shared health table has room for (a reload may change the list)
MANAGER_RESTART = 1.0  # seconds before a dead cache manager is started again


@dataclass
class Slot:
    """A worker position: its listening socket (kept for the supervisor's life) and its placement."""

    index: int
    sock: socket.socket
    placement: Placement
    tls_sock: socket.socket | None = None
    quick_deaths: int = 0
    restart_at: float | None = None


@dataclass
class Child:
    """A forked worker process."""

    pid: int
    slot: int
    generation: int
    stats_index: int
    ready_fd: int
    started: float
    ready: bool = False
    retiring: bool = False


@dataclass
class _Reload:
    generation: int
    deadline: float
    config: Config
    slots: list[Slot] = field(default_factory=list)
    tls_context: ssl.SSLContext | None = None


def backoff_delay(quick_deaths: int) -> float:
    """Delay before restarting a worker that has died `quick_deaths` times in a row soon after starting."""
    if quick_deaths <= 1:
        return 0.0
    return min(BACKOFF_FIRST * 2 ** (quick_deaths - 2), BACKOFF_MAX)


def describe_exit(status: int) -> str:
    """'exited with status 1' or 'killed by SIGKILL' from a waitpid status."""
    code = os.waitstatus_to_exitcode(status)
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with status {code}"


class Supervisor:
    """Process manager of one edge node; `run()` returns the exit status of `edge serve`."""

    def __init__(self, config: Config, config_path: str | None = None, overrides: dict[str, Any] | None = None,
                 *, sysfs: str = "/sys", out: TextIO | None = None, err: TextIO | None = None) -> None:
        self.config = config
        self.config_path = config_path
        self.overrides = overrides or {}
        self.sysfs = sysfs
        self.out = out or sys.stdout
        self.err = err or sys.stderr
        self.topology: Topology = discover(sysfs)
        self.stats = StatsBlock(MAX_SLOTS)
        self.slots: list[Slot] = []
        self.children: dict[int, Child] = {}
        self.generation = 0  # the serving generation
        self.started = False
        self.reload: _Reload | None = None
        self.reload_wanted = False
        self.stopping = False
        self.kill_at: float | None = None
        self.mempolicy = True
        self.address: tuple[str, int] = ("", 0)
        self.tls_port: int | None = None
        self.tls_context: ssl.SSLContext | None = None
        self.sel = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        # Origin pull: the shared health table, the workers' report channel, the cache manager process.
        self.health: HealthTable | None = None
        self.origin_counts: OriginCounters | None = None
        self.events_r: socket.socket | None = None
        self.events_w: socket.socket | None = None
        self.reconcile_pending = False  # a RECONCILE for the manager did not fit its queue yet
        self.manager_pid = 0
        self.manager_restart_at: float | None = None
        self.admin_sock: socket.socket | None = None  # bound here, served by the manager (kept across its restarts)

    # -- logging ----------------------------------------------------------------------------------

    def log(self, message: str) -> None:
        """One line on stderr (the supervisor is never on the request path)."""
        print(f"edge: {message}", file=self.err, flush=True)

    # -- start-up ---------------------------------------------------------------------------------

    def _placements(self, config: Config) -> list[Placement]:
        count = worker_count(config.workers, self.topology)
        return assign(config.cpu_affinity, self.topology, count)

    def _listen(self, host: str, port: int) -> socket.socket:
        from .worker import make_listener

        return make_listener(host, port, reuseport=True)

    def _listen_all(self, host: str, port: int, count: int) -> list[socket.socket]:
        """`count` SO_REUSEPORT sockets on one address (port 0: the first one picks it)."""
        first = self._listen(host, port)
        port = first.getsockname()[1]
        socks = [first]
        try:
            socks += [self._listen(host, port) for _ in range(count - 1)]
        except OSError:
            for sock in socks:
                sock.close()
            raise
        return socks

    def _probe_mempolicy(self, placements: list[Placement]) -> None:
        """Try the NUMA memory policy once here, so a container's EPERM is logged once, not per worker."""
        node = next((p.node for p in placements if p.node is not None), None)
        if node is None:
            return
        try:
            set_preferred_node(node)
            set_preferred_node(None)
        except OSError as e:
            self.mempolicy = False
            self.log(f"NUMA memory policy unavailable ({e.strerror}); workers are pinned to CPUs only")

    def start(self) -> int:
        """Bind one SO_REUSEPORT socket per worker, fork the first generation; 0 once all serve."""
        config = self.config
        try:
            placements = self._placements(config)
        except ValueError as e:
            self.log(str(e))
            return 2
        if config.tls.cert is not None:
            try:
                self.tls_context = server_context(config.tls)
            except (OSError, ssl.SSLError) as e:
                self.log(f"tls: cannot load the certificate: {e}")
                return 2
        try:
            socks = self._listen_all(config.host, config.port, len(placements))
            tls_socks: list[socket.socket | None] = [None] * len(placements)
            if config.tls.port is not None:
                tls_socks = list(self._listen_all(config.host, config.tls.port, len(placements)))
                self.tls_port = tls_socks[0].getsockname()[1]
        except OSError as e:
            self.log(f"cannot listen on {config.host}: {e.strerror}")
            return 1
        self.address = (config.host, socks[0].getsockname()[1])
        self.slots = [Slot(i, s, p, t) for i, (s, p, t) in enumerate(zip(socks, placements, tls_socks))]
        self._probe_mempolicy(placements)
        self._install_signals()
        if config.admin is not None:
            try:
                from .worker import make_listener

                self.admin_sock = make_listener(*config.admin, backlog=128)  # no SO_REUSEPORT: one node per port
            except OSError as e:
                self.log(f"cannot listen for the admin endpoint on {config.admin[0]}:{config.admin[1]}: "
                         f"{e.strerror or e}")
                self._close_sockets(self.slots)
                return 1
        store = None
        if config.origins:
            try:
                store = self._start_origin_pull(config)
            except OSError as e:
                self.log(f"cannot use the cache directory {config.cache.dir}: {e.strerror or e}")
                return 1
        if config.admin is not None or config.origins:
            self._spawn_manager(config, store)
        self.generation = 1
        try:
            for slot in self.slots:
                self._spawn(slot, config, 1, self.tls_context)
        except OSError as e:
            self.log(f"cannot start workers: {e}")
            self._kill_all()
            return 1
        deadline = time.monotonic() + READY_TIMEOUT
        while not all(c.ready for c in self.children.values()):
            if time.monotonic() > deadline or self.stopping:
                self.log("workers did not start; stopping")
                self._kill_all()
                return 1
            failed = self._wait(deadline - time.monotonic())
            if failed:
                self.log(f"worker {failed} failed to start; stopping")
                self._kill_all()
                return 1
        self.started = True
        self._banner()
        return 0

    # -- origin pull: cache manager ------------------------------------------------------------------

    def _start_origin_pull(self, config: Config):  # noqa: ANN202 - a diskcache.DiskCache
        """Index the disk cache (clearing unfinished bodies of an earlier run) for the manager to keep."""
        from .diskcache import DiskCache
        from .purge import PurgeIndex

        started = time.monotonic()
        store = DiskCache(config.cache.dir, config.cache.max_size, keys=PurgeIndex(), min_free=config.cache.min_free,
                          max_variants=config.cache.max_variants)
        count = store.rebuild(clear_tmp=True)
        self.log(f"disk cache {config.cache.dir}: {count} objects, {store.size} bytes "
                 f"(indexed in {time.monotonic() - started:.2f} s)")
        self.health = HealthTable(max(HEALTH_ROWS, len(config.origins)))
        self.origin_counts = OriginCounters(MAX_SLOTS, max(HEALTH_ROWS, len(config.origins)))
        self.events_r, self.events_w = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.events_w.setblocking(False)
        self.events_r.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        return store

    def _spawn_manager(self, config: Config, store=None) -> None:  # noqa: ANN001
        parent = os.getpid()

        def body() -> None:
            # Signals first: until then a SIGTERM for the manager would hit the supervisor's handlers.
            if not self._become_child(parent):
                return
            from .manager import run as run_manager

            for slot in self.slots + (self.reload.slots if self.reload else []):
                slot.sock.close()
                if slot.tls_sock is not None:
                    slot.tls_sock.close()
            if self.events_w is not None:
                self.events_w.close()
            run_manager(config, self.health, self.events_r, store, self.stats, self.admin_sock, parent,
                        self.origin_counts)

        pid = self._fork(body)
        self.manager_pid = pid

    def _stop_manager(self, sig: int = signal.SIGTERM) -> None:
        if self.manager_pid:
            try:
                os.kill(self.manager_pid, sig)
                os.waitpid(self.manager_pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
            self.manager_pid = 0

    def _banner(self) -> None:
        host, port = self.address
        shown = f"[{host}]" if ":" in host else host
        tls = f"https://{shown}:{self.tls_port} " if self.tls_port is not None else ""
        lines = [f"edge {__version__} listening on http://{shown}:{port} {tls}root={self.config.root} "
                 f"workers={len(self.slots)}",
                 f"  topology: {self.topology.describe()}"]
        if self.manager_pid:
            line = f"  manager: pid {self.manager_pid}"
            if self.admin_sock is not None:
                host, port = self.admin_sock.getsockname()[:2]
                line += f" admin=http://{f'[{host}]' if ':' in host else host}:{port}"
            if self.config.origins:
                line += f" cache={self.config.cache.dir} origins: {' '.join(o.url for o in self.config.origins)}"
            lines.append(line)
        lines += self._table()
        print("\n".join(lines), file=self.out, flush=True)

    def _table(self) -> list[str]:
        rows = []
        for child in sorted(self.children.values(), key=lambda c: (c.generation, c.slot)):
            if child.generation == self.generation and not child.retiring:
                slot = self.slots[child.slot]
                rows.append(f"  worker {child.slot}: pid {child.pid} {slot.placement.describe()}")
        return rows

    # -- signals and the loop ---------------------------------------------------------------------

    def _install_signals(self) -> None:
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        signal.set_wakeup_fd(self._wake_w.fileno(), warn_on_full_buffer=False)
        for sig in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGUSR1,
                    signal.SIGCHLD):
            signal.signal(sig, lambda *_: None)  # the number reaches the loop through the wakeup fd
        self.sel.register(self._wake_r, selectors.EVENT_READ, None)

    def run(self) -> int:
        """Start, then supervise until stopped; returns the process exit status."""
        code = self.start()
        if code:
            return code
        while not (self.stopping and not self.children):
            self._wait(self._next_timer())
        self._stop_manager()
        totals = self.stats.totals()
        self.log(f"stopped; served {totals['requests']} requests, {totals['bytes_out']} bytes, "
                 f"{totals['connections_total']} connections")
        if self.config.origins:
            self.log(f"origin pull: {totals['cache_hits']} cache hits, {totals['cache_misses']} misses, "
                     f"{totals['cache_stale']} stale, {totals['origin_requests']} origin requests, "
                     f"{totals['origin_errors']} origin errors")
        return 0

    def _next_timer(self) -> float | None:
        now = time.monotonic()
        times = [s.restart_at for s in self.slots if s.restart_at is not None]
        if self.manager_restart_at is not None:
            times.append(self.manager_restart_at)
        if self.reload is not None:
            times.append(self.reload.deadline)
        if self.kill_at is not None:
            times.append(self.kill_at)
        if self.reconcile_pending:
            times.append(now + 0.1)
        if not times:
            return None
        return max(0.0, min(times) - now)

    def _wait(self, timeout: float | None) -> int | None:
        """One turn of the loop: signals, readiness reports, exits, timers. Returns a slot that failed to start."""
        for key, _ in self.sel.select(timeout):
            if key.data is None:
                self._signals()
            else:
                self._ready(key.data)
        failed = self._reap()
        self._timers()
        return failed

    def _signals(self) -> None:
        try:
            data = self._wake_r.recv(256)
        except BlockingIOError:
            return
        for signum in data:
            if signum in (signal.SIGTERM, signal.SIGINT):
                self.stop()
            elif signum == signal.SIGQUIT:
                self.quit()
            elif signum == signal.SIGHUP:
                self.reload_wanted = True
            elif signum == signal.SIGUSR1:
                self.log("reopening log files")
                self._signal_children(signal.SIGUSR1)
        if self.reload_wanted and self.reload is None and not self.stopping:
            self.reload_wanted = False
            self.begin_reload()

    def _ready(self, child: Child) -> None:
        """A worker wrote its readiness byte (or closed the pipe by dying first)."""
        try:
            data = os.read(child.ready_fd, 16)
        except OSError:
            data = b""
        self.sel.unregister(child.ready_fd)
        os.close(child.ready_fd)
        child.ready_fd = -1
        if not data:
            return  # it died before it was ready; _reap handles the exit
        child.ready = True
        if self.reload is not None and child.generation == self.reload.generation:
            self._maybe_finish_reload()

    # -- workers ----------------------------------------------------------------------------------

    def _spawn(self, slot: Slot, config: Config, generation: int, tls_context: ssl.SSLContext | None) -> Child:
        placement = slot.placement
        stats_index = self.stats.claim(generation, placement.cpu,
                                       placement.node if placement.node is not None else -1)
        ready_r, ready_w = os.pipe()
        parent = os.getpid()

        def body() -> None:
            os.close(ready_r)
            self._become_worker(parent, slot, config, stats_index, ready_w, tls_context)

        pid = self._fork(body)
        os.close(ready_w)
        self.stats.slot(stats_index)[PID] = pid
        child = Child(pid, slot.index, generation, stats_index, ready_r, time.monotonic())
        self.children[pid] = child
        self.sel.register(ready_r, selectors.EVENT_READ, child)
        return child

    def _become_worker(self, parent: int, slot: Slot, config: Config, stats_index: int, ready_w: int,
                       tls_context: ssl.SSLContext | None) -> None:
        """In the forked child: drop the supervisor's state, pin, and serve slot's socket."""
        from .worker import run

        if not self._become_child(parent):
            return  # the supervisor died while we forked
        if self.events_r is not None:
            self.events_r.close()
        if self.admin_sock is not None:
            self.admin_sock.close()
        for other in self.slots + (self.reload.slots if self.reload else []):
            if other.sock is not slot.sock:
                other.sock.close()
            if other.tls_sock is not None and other.tls_sock is not slot.tls_sock:
                other.tls_sock.close()
        warning = pin(slot.placement, mempolicy=self.mempolicy)
        if warning:
            print(f"edge: worker {slot.index}: {warning}", file=sys.stderr, flush=True)
        if config.incoming_cpu:
            steer_connections(slot.sock, slot.placement)
            if slot.tls_sock is not None:
                steer_connections(slot.tls_sock, slot.placement)
        stats = self.stats.slot(stats_index)
        stats[PID] = os.getpid()

        def ready() -> None:
            os.write(ready_w, b"R")
            os.close(ready_w)

        # Alone only if no other worker can run beside it: one slot, and no reload (an old generation) under way.
        solo = len(self.slots) == 1 and self.reload is None and not self.children
        counts = self.origin_counts.row(stats_index) if self.origin_counts is not None else None
        run(config, slot.sock, stats, ready, slot.tls_sock, tls_context, self.health, self.events_w, solo, parent,
            counts)

    def _fork(self, body) -> int:  # noqa: ANN001 - a callable run in the child
        """Fork a child that runs `body` and exits (never returning into the supervisor's code); its pid."""
        for stream in (self.out, self.err, sys.stdout, sys.stderr):
            stream.flush()
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                body()
                code = 0
            except BaseException:  # noqa: BLE001 - a child must never return into the supervisor
                traceback.print_exc()
            finally:
                try:
                    sys.stdout.flush()
                    sys.stderr.flush()
                finally:
                    os._exit(code)
        return pid

    def _release_slot(self, index: int) -> None:
        """An ended worker's counters go to the retired totals; its slot is free again."""
        self.stats.release(index)
        if self.origin_counts is not None:
            self.origin_counts.release(index)

    def _become_child(self, parent: int) -> bool:
        """In any forked child: default signals, die with the supervisor, drop its fds. False if it is gone."""
        signal.set_wakeup_fd(-1)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGUSR1, signal.SIGCHLD):
            signal.signal(sig, signal.SIG_DFL)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)  # a terminal hangup is the supervisor's business
        signal.signal(signal.SIGUSR2, signal.SIG_IGN)  # "draining", for the manager once its loop listens
        try:
            ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        except (OSError, AttributeError):
            pass
        if os.getppid() != parent:
            return False
        self.sel.close()
        self._wake_r.close()
        self._wake_w.close()
        for child in self.children.values():
            if child.ready_fd >= 0:
                os.close(child.ready_fd)
        return True

    def _reap(self) -> int | None:
        """Collect exited workers; replace those of the serving generation. Returns a slot that died unready."""
        failed = None
        while self.children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            if pid == self.manager_pid:
                self.manager_pid = 0
                if not self.stopping:
                    self.log(f"cache manager (pid {pid}) {describe_exit(status)}; restarting in {MANAGER_RESTART:.0f} s")
                    self.manager_restart_at = time.monotonic() + MANAGER_RESTART
                continue
            child = self.children.pop(pid, None)
            if child is None:
                continue
            if child.ready_fd >= 0:
                self.sel.unregister(child.ready_fd)
                os.close(child.ready_fd)
                child.ready_fd = -1
            self._release_slot(child.stats_index)
            how = describe_exit(status)
            if os.waitstatus_to_exitcode(status) != 0:
                self._ask_reconcile()  # its last batch of reports may have died with it
            if self.stopping or child.retiring:
                if os.waitstatus_to_exitcode(status) != 0 and not self.stopping:
                    self.log(f"worker {child.slot} (pid {child.pid}, generation {child.generation}) {how}")
                continue
            if self.reload is not None and child.generation == self.reload.generation:
                self.log(f"worker {child.slot} of generation {child.generation} (pid {child.pid}) {how} "
                         "while starting")
                self.abort_reload("a new worker died while starting")
                continue
            if not self.started:
                failed = child.slot if failed is None else failed
                self.log(f"worker {child.slot} (pid {child.pid}) {how}")
                continue
            self._schedule_restart(child, how)
        return failed

    def _ask_reconcile(self) -> None:
        """Have the cache manager index objects on disk it was not told of (retried by _timers until sent)."""
        if self.events_w is None:
            return
        try:
            self.events_w.send(reports.pack([reports.RECONCILE]))
            self.reconcile_pending = False
        except OSError:
            self.reconcile_pending = True

    def _schedule_restart(self, child: Child, how: str) -> None:
        slot = self.slots[child.slot]
        lived = time.monotonic() - child.started
        slot.quick_deaths = slot.quick_deaths + 1 if lived < QUICK_DEATH or not child.ready else 0
        delay = backoff_delay(slot.quick_deaths)
        slot.restart_at = time.monotonic() + delay
        when = "now" if delay == 0 else f"in {delay:.1f} s ({slot.quick_deaths} quick deaths in a row)"
        self.log(f"worker {child.slot} (pid {child.pid}) {how}; restarting {when}")

    def _timers(self) -> None:
        now = time.monotonic()
        if self.reconcile_pending:
            self._ask_reconcile()
        if self.manager_restart_at is not None and now >= self.manager_restart_at and not self.stopping:
            self.manager_restart_at = None
            try:
                self._spawn_manager(self.config)
            except OSError as e:
                self.manager_restart_at = now + MANAGER_RESTART
                self.log(f"cannot restart the cache manager: {e}")
        if not self.stopping:
            for slot in self.slots:
                if slot.restart_at is not None and slot.restart_at <= now:
                    slot.restart_at = None
                    try:
                        child = self._spawn(slot, self.config, self.generation, self.tls_context)
                    except (OSError, RuntimeError) as e:
                        slot.restart_at = now + 1.0
                        self.log(f"worker {slot.index}: cannot start a replacement ({e}); trying again in 1 s")
                        continue
                    self.log(f"worker {slot.index} restarted as pid {child.pid}")
        if self.reload is not None and now >= self.reload.deadline:
            self.abort_reload(f"the new workers did not start within {READY_TIMEOUT:.0f} s")
        if self.kill_at is not None and now >= self.kill_at:
            self.kill_at = None
            if self.children:
                self.log(f"{len(self.children)} worker(s) still running after shutdown_timeout; killing them")
                self._signal_children(signal.SIGKILL)

    def _signal_children(self, sig: int, children: list[Child] | None = None) -> None:
        for child in list(self.children.values()) if children is None else children:
            try:
                os.kill(child.pid, sig)
            except ProcessLookupError:
                pass

    def _kill_all(self) -> None:
        self._stop_manager(signal.SIGKILL)
        self._signal_children(signal.SIGKILL)
        for pid in list(self.children):
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass
            child = self.children.pop(pid)
            self._release_slot(child.stats_index)

    # -- stop -------------------------------------------------------------------------------------

    def stop(self) -> None:
        """SIGTERM/SIGINT: every worker stops accepting and drains; the supervisor exits when all are gone."""
        if self.stopping:
            return
        self.stopping = True
        self.log(f"stopping: draining {len(self.children)} worker(s)")
        if self.reload is not None:
            self._signal_children(signal.SIGKILL, self._generation_children(self.reload.generation))
            self.reload = None
        if self.manager_pid:
            try:
                os.kill(self.manager_pid, signal.SIGUSR2)  # /healthz answers 503 from now on
            except ProcessLookupError:
                pass
        self._signal_children(signal.SIGTERM)
        self._close_sockets(self.slots)  # with the workers' copies closed too, new connections are refused
        self.kill_at = time.monotonic() + self.config.shutdown_timeout + KILL_GRACE

    def quit(self) -> None:
        """SIGQUIT: stop now, without draining."""
        self.stopping = True
        self.log("quitting: killing every worker")
        self._signal_children(signal.SIGKILL)
        self._close_sockets(self.slots)

    @staticmethod
    def _close_sockets(slots: list[Slot]) -> None:
        for slot in slots:
            slot.sock.close()
            if slot.tls_sock is not None:
                slot.tls_sock.close()

    # -- reload -----------------------------------------------------------------------------------

    def _generation_children(self, generation: int) -> list[Child]:
        return [c for c in self.children.values() if c.generation == generation]

    def begin_reload(self) -> None:
        """SIGHUP: validate the config again, then start a new generation on the same sockets."""
        try:
            config = load(self.config_path, self.overrides)
            placements = self._placements(config)
        except (ConfigError, ValueError) as e:
            self.log(f"reload failed, still serving the old configuration: {e}")
            return
        host, port = self.address
        if bool(config.origins) != bool(self.config.origins) or len(config.origins) > HEALTH_ROWS or (
                config.origins and config.cache.dir != self.config.cache.dir):
            self.log("reload: turning origin pull on or off, or moving the cache dir, needs a restart; "
                     "keeping the origin settings")
            config = replace(config, origins=self.config.origins, cache=self.config.cache,
                             health=self.config.health, proxy=self.config.proxy)
        if (config.host, config.port) != (self.config.host, self.config.port):
            self.log(f"reload: host and port changes need a restart; still listening on {host}:{port}")
            config = replace(config, host=self.config.host, port=self.config.port)
        if (config.tls.port is None) != (self.config.tls.port is None) or \
                (config.tls.port is not None and config.tls.port != self.config.tls.port):
            self.log("reload: turning TLS on or off or moving its port needs a restart; keeping the TLS listener")
            config = replace(config, tls=replace(self.config.tls, cert=config.tls.cert or self.config.tls.cert,
                                                 key=config.tls.key or self.config.tls.key))
        tls_context = None
        if self.tls_port is not None:
            try:
                tls_context = server_context(config.tls)  # a renewed certificate takes effect here
            except (OSError, ssl.SSLError) as e:
                self.log(f"reload failed, still serving the old configuration: tls: {e}")
                return
        slots: list[Slot] = []
        try:
            for i, placement in enumerate(placements):
                if i < len(self.slots):
                    old = self.slots[i]
                    slots.append(Slot(i, old.sock, placement, old.tls_sock))
                else:
                    tls_sock = self._listen(host, self.tls_port) if self.tls_port is not None else None
                    slots.append(Slot(i, self._listen(host, port), placement, tls_sock))
        except OSError as e:
            self._close_sockets(slots[len(self.slots):])
            self.log(f"reload failed, cannot add a listener: {e.strerror}")
            return
        generation = max(self.generation, *(c.generation for c in self.children.values())) + 1
        self.reload = _Reload(generation, time.monotonic() + READY_TIMEOUT, config, slots, tls_context)
        self.log(f"reload: starting generation {generation} ({len(slots)} workers)")
        try:
            for slot in slots:
                self._spawn(slot, config, generation, tls_context)
        except (OSError, RuntimeError) as e:
            self.abort_reload(str(e))

    def _maybe_finish_reload(self) -> None:
        new = self.reload
        assert new is not None
        fresh = self._generation_children(new.generation)
        if len(fresh) < len(new.slots) or not all(c.ready for c in fresh):
            return
        old = [c for c in self.children.values() if c.generation != new.generation]
        for child in old:
            child.retiring = True
        self._signal_children(signal.SIGTERM, old)
        self._close_sockets(self.slots[len(new.slots):])  # fewer workers: the old ones' copies close as they drain
        self.slots = new.slots
        pull_changed = (new.config.origins, new.config.cache, new.config.health) != (
            self.config.origins, self.config.cache, self.config.health)
        self.config = new.config
        if pull_changed and self.manager_pid:
            self._stop_manager()  # the new one checks the new origin list and honours the new size
            self._spawn_manager(self.config)
        self.tls_context = new.tls_context
        self.generation = new.generation
        self.reload = None
        self.log(f"reload: generation {new.generation} serving; {len(old)} old worker(s) draining")
        for line in self._table():
            self.log(line.strip())
        if self.reload_wanted:
            self.reload_wanted = False
            self.begin_reload()

    def abort_reload(self, why: str) -> None:
        """The new generation could not start: kill it and keep the old one serving."""
        new = self.reload
        if new is None:
            return
        self.reload = None
        doomed = self._generation_children(new.generation)
        for child in doomed:
            child.retiring = True
        self._signal_children(signal.SIGKILL, doomed)
        self._close_sockets(new.slots[len(self.slots):])
        self.log(f"reload failed, still serving the old configuration: {why}")
