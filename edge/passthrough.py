"""Every method other than GET and HEAD passed through to an origin, its body streamed, its answer never stored.

With origins configured, core turns a request whose method is not GET or HEAD (nor CONNECT or TRACE, see
core.Site.passing) into a `Pass`, and the exchange hands it to the worker's `Passer`:

- The request body streams from the client to the origin as a `RequestBody`, fed by the adapter (HTTP/1.1
  Content-Length or chunked, decoded by httptools; HTTP/2 DATA frames) and read by the origin connection
  (origin.py `_Conn.upload`), never buffered whole: past BODY_HIGH bytes waiting for the origin the adapter
  stops reading (HTTP/1.1) or stops returning window (HTTP/2), so a slow origin slows the client down.
  `Expect: 100-continue` is answered when the origin connection starts reading the body (RFC 9110 §10.1.1).
  `[proxy] max_body_size` bounds it: 413 at once when Content-Length says so, else when the stream passes it.
- The answer streams back like an origin body on a miss (the adapters' growing-file transfers), through an
  unnamed temporary file (O_TMPFILE, else a memory file) that nothing else ever sees: it is never stored
  (RFC 9111 §4.4), and its Cache-Status says `fwd=method` (RFC 9211 §2.2).
- A 2xx or 3xx answer to an unsafe method (RFC 9110 §9.2.1: all but GET, HEAD, OPTIONS and TRACE) invalidates
  the stored answers for the target URI and for its Location and Content-Location when they name the same
  host (RFC 9111 §4.4), by the node's purge (the manager's admin purge, edge/admin.py Node.purge: the disk
  and every worker), the answer waiting for it up to INVALIDATE_WAIT seconds; this worker drops its own
  copies at once either way.
- Such a request is sent once (RFC 9110 §9.2.2), see origin.OriginPool.fetch.
"""

from __future__ import annotations

import asyncio
import errno
import os
import sys
from collections import deque
from collections.abc import Callable
from urllib.parse import urlsplit

from . import control
from .cachestatus import CacheStatus
from .core import Pass, Plan, Request, text_plan
from .filecache import FileEntry
from .diskcache import SPILL_MAX
from .origin import NOT_RETURNED, BodyFailed, Fetched, OriginError
from .paths import BadTarget, normalize_path, split_target
from .purge import Purge, purge_cache
from .stats import ORIGIN_ERRORS, ORIGIN_REQUESTS
from .stored import STREAMED, Growth

BODY_HIGH = 256 * 1024  # request body bytes waiting for the origin before the client is read no more
BODY_LOW = 64 * 1024  # ... and read again below this
READ_MOST = 256 * 1024  # body bytes handed to the origin connection in one write
#: Bytes of a passed answer read from the origin ahead of what its client took: beyond, the origin is read
#: no more until the client catches up (back-pressure; nginx reads ahead to proxy_max_temp_file_size).
PASS_LEAD = 8 * 1024 * 1024
ALIVE_CHECK = 1.0  # seconds between looks at whether the client of a paused answer is still there
INVALIDATE_WAIT = 2.0  # seconds an answer waits for the node's purge after an unsafe method (then goes anyway)
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
#: RFC 9110 §9.2.1: the safe methods; a successful answer to any other invalidates (RFC 9111 §4.4).
SAFE = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE"})
#: Methods whose request defines a meaning for content: sent with "Content-Length: 0" when there is none
#: (RFC 9110 §8.6: a user agent SHOULD send it then; some origins answer 411 without it).
CONTENT_METHODS = frozenset({b"POST", b"PUT", b"PATCH"})
FORWARDED = CacheStatus(fwd="method").encode()  # RFC 9211 §2.2: the method's semantics send it to the origin
_O_TMPFILE = getattr(os, "O_TMPFILE", 0)


class RequestBody:
    """A request body on its way from a client to an origin: the adapter feeds it, the origin connection reads it.

    `length` is the declared Content-Length (None: chunked, or HTTP/2 without one: it goes to the origin
    chunked). The adapter's callbacks: `pause`/`resume` reading from the client (HTTP/1.1), `taken(n)` when
    n bytes went on to the origin (HTTP/2 gives the stream window back then), `start` once, when the origin
    connection starts reading the body (HTTP/1.1's 100 Continue). `owner` is the adapter's request.
    """

    __slots__ = ("loop", "length", "limit", "timeout", "chunks", "buffered", "received", "ended", "failure",
                 "abandoned", "paused", "waiter", "pause", "resume", "taken", "start", "owner")

    def __init__(self, loop: asyncio.AbstractEventLoop, length: int | None, limit: float, timeout: float) -> None:
        self.loop = loop
        self.length = length
        self.limit = limit
        self.timeout = timeout  # seconds the client may send nothing while the origin waits for more (then 408)
        self.chunks: deque[bytes] = deque()
        self.buffered = 0
        self.received = 0
        self.ended = False
        self.failure: int | None = None  # the status of a failed body (0: the client left)
        self.abandoned = False  # the exchange is over: what still comes is not wanted
        self.paused = False
        self.waiter: asyncio.Future | None = None
        self.pause: Callable[[], None] | None = None
        self.resume: Callable[[], None] | None = None
        self.taken: Callable[[int], None] | None = None
        self.start: Callable[[], None] | None = None
        self.owner: object = None

    @property
    def done(self) -> bool:
        """Nothing more will be fed: it ended, failed or was abandoned."""
        return self.ended or self.failure is not None or self.abandoned

    def feed(self, data: bytes) -> bool:
        """Body bytes from the client; False when they are not wanted (failed, abandoned, or over the limit:
        the adapter stops reading, or gives the window back itself)."""
        if self.failure is not None or self.abandoned:
            return False
        self.received += len(data)
        if self.received > self.limit:
            self.fail(413)  # [proxy] max_body_size, found while it streams
            return False
        if data:
            self.chunks.append(data)
            self.buffered += len(data)
            if self.buffered > BODY_HIGH and not self.paused and self.pause is not None:
                self.paused = True
                self.pause()
            self._wake()
        return True

    def end(self) -> None:
        """The client sent the whole body."""
        self.ended = True
        self._wake()

    def fail(self, status: int) -> None:
        """The body will never be whole: malformed (400), too large (413), stalled (408), the client left (0)."""
        if self.failure is None and not self.ended:
            self.failure = status
            self.chunks.clear()
            self.buffered = 0
            self._wake()

    def abandon(self) -> None:
        """The exchange no longer reads this body (its answer is out, or it failed): drop what waits."""
        self.abandoned = True
        self.chunks.clear()
        self.buffered = 0
        self._wake()

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def read(self) -> bytes:
        """The next bytes for the origin (b"" at the end); BodyFailed when the body cannot be passed on whole."""
        if self.start is not None:
            start, self.start = self.start, None
            if not self.received:  # RFC 9110 §10.1.1: no 100 once the client has begun to send anyway
                start()
        while True:
            if self.failure is not None:
                raise BodyFailed(self.failure)
            if self.abandoned:
                raise BodyFailed(0, "the exchange is over")
            if self.chunks:
                chunk = self.chunks.popleft()
                if self.chunks and len(chunk) < READ_MOST:  # several small pieces (HTTP/2 frames) in one write
                    parts = [chunk]
                    size = len(chunk)
                    while self.chunks and size + len(self.chunks[0]) <= READ_MOST:
                        parts.append(self.chunks.popleft())
                        size += len(parts[-1])
                    chunk = b"".join(parts)
                self.buffered -= len(chunk)
                if self.taken is not None:
                    self.taken(len(chunk))
                if self.paused and self.buffered <= BODY_LOW:
                    self.paused = False
                    if self.resume is not None:
                        self.resume()
                return chunk
            if self.ended:
                return b""
            self.waiter = self.loop.create_future()
            try:
                async with asyncio.timeout(self.timeout):
                    await self.waiter
            except TimeoutError:
                self.fail(408)  # RFC 9110 §15.5.9: the client stopped sending its body
            finally:
                self.waiter = None


def expects_continue(fields: list[tuple[bytes, bytes]] | tuple) -> bool:
    """The request's Expect field asks for 100-continue (RFC 9110 §10.1.1; other expectations are ignored)."""
    return any(name.lower() == b"expect" and value.strip().lower() == b"100-continue" for name, value in fields)


def request_host(fields: list[tuple[bytes, bytes]] | tuple) -> bytes | None:
    """The Host field among a passed request's fields (the adapters keep it there), None without one."""
    return next((value for name, value in fields if name.lower() == b"host"), None)


def invalidated_paths(method: bytes, status: int, path: str, target: bytes, host: bytes | None,
                      fields: list[tuple[bytes, bytes]]) -> list[str]:
    """The URL paths (decoded, as a purge names them) whose stored answers an answer `status` to `method` on
    `path` invalidates: none for a safe method or an unsuccessful answer; else the target's path and the
    Location and Content-Location paths that name the same host (RFC 9111 §4.4; RFC 9110 §9.2.1).

    A relative reference is resolved against the request's `target` (RFC 3986 §5.2). The origin of an
    absolute one is compared by host: RFC 9111 §4.4 speaks of the same origin, and an edge node serves one
    site per host whatever the scheme or port of its front. A value that is not a URI reference is ignored."""
    if method in SAFE or not 200 <= status < 400:
        return []
    paths = [path]
    for name, value in fields:
        if name != b"location" and name != b"content-location":
            continue
        try:
            found = _same_host_path(value, target, host)
        except (ValueError, BadTarget, UnicodeError):
            continue
        if found is not None and found not in paths:
            paths.append(found)
    return paths


def _same_host_path(value: bytes, target: bytes, host: bytes | None) -> str | None:
    """The decoded path `value` (a Location or Content-Location) names on the request's host, or None."""
    text = value.strip().decode("ascii")
    parts = urlsplit(text)
    if parts.scheme or parts.netloc:
        if parts.scheme not in ("http", "https", "") or host is None:
            return None
        wanted = urlsplit("//" + host.decode("ascii").strip()).hostname
        if not parts.hostname or parts.hostname != wanted:
            return None
        raw = (parts.path or "/").encode("ascii")
    elif text.startswith("/"):
        raw = parts.path.encode("ascii")
    else:  # relative to the target's directory
        base = split_target(target)[0]
        raw = base[:base.rfind(b"/") + 1] + parts.path.encode("ascii")
    if not raw.startswith(b"/"):
        return None
    found = normalize_path(raw)
    if raw.endswith(b"/") and not found.endswith("/"):
        found += "/"
    return found


class Passer:
    """A worker's pass-through: origin requests for other methods, their answers, and the invalidations."""

    def __init__(self, w, config) -> None:  # noqa: ANN001 - worker.Worker, config.Config
        self.w = w
        self.loop: asyncio.AbstractEventLoop = w.loop
        self.puller = w.puller
        self.pool = w.puller.pool
        self.site = w.site
        self.stats = w.stats
        self.limit: float = config.proxy.max_body_size or float("inf")  # 0: no limit (as nginx)
        self.timeout = config.proxy.read_timeout
        self.tmp_dir = w.puller.store.tmp_dir
        self.supervisor: int = getattr(w, "supervisor", 0)
        self.asker: control.Asker | None = None  # asks the node's manager for purges (made at the first one)
        self.copies: set[asyncio.Task] = set()  # answers being copied from their origin

    # -- the adapters' side ------------------------------------------------------------------------

    def body(self, length: int | None) -> RequestBody | None:
        """A body for a request that declared `length` bytes (None: chunked, or unknown), or None when that is
        over `[proxy] max_body_size` (the adapter answers 413 at once and reads none of it)."""
        if length is not None and length > self.limit:
            return None
        return RequestBody(self.loop, length, self.limit, self.timeout)

    # -- the exchange ------------------------------------------------------------------------------

    async def serve(self, req: Request, step: Pass, alive: Callable[[], bool],
                    interim: Callable[[list[tuple[bytes, bytes]]], None] | None = None) -> Plan:
        """The plan for a passed-through request (its entry, if any, holds one reference the exchange releases);
        never raises: every failure is an error plan."""
        body: RequestBody | None = getattr(step, "body", None)
        try:
            plan = await self._serve(req, step, body, alive, interim)
        except BodyFailed as e:
            plan = self._error(e.status or 400)  # (status 0: the client left, nobody reads the answer)
        except Exception as e:  # noqa: BLE001 - one broken exchange is a 502 for its request, not a dead worker
            print(f"edge: worker {os.getpid()}: passing {req.method!r} failed: {e!r}", file=sys.stderr, flush=True)
            plan = self._error(502)
        if body is not None and plan.entry is None and not body.done:
            body.abandon()  # no origin reads it any more (an answer that streams may still be reading it)
        return plan

    async def _serve(self, req: Request, step: Pass, body: RequestBody | None, alive: Callable[[], bool],
                     interim: Callable[[list[tuple[bytes, bytes]]], None] | None) -> Plan:
        method = req.method
        fields = getattr(req, "forward", None) or []
        if body is not None:
            framing = b"Transfer-Encoding: chunked\r\n" if body.length is None else b"Content-Length: %d\r\n" % body.length
        else:
            framing = b"Content-Length: 0\r\n" if method in CONTENT_METHODS else b""
        puller = self.puller
        self.stats[ORIGIN_REQUESTS] += 1
        try:
            fetched = await self.pool.fetch(step.target.encode("latin-1"), method.decode("latin-1"), step.target,
                                            healthy=puller._healthy, up=puller._up, eligible=puller._eligible,
                                            on_failure=lambda i: puller._origin_result(i, False),
                                            failed_status=puller._status_failed, hints=interim,
                                            client=getattr(req, "client", None), passed=(fields, framing), body=body)
        except OriginError as e:
            self.stats[ORIGIN_ERRORS] += 1
            return self._error(504 if e.timeout else 502)
        try:
            return await self._answer(req, step, fetched, alive)
        except BaseException:
            fetched.close()
            raise

    async def _answer(self, req: Request, step: Pass, fetched: Fetched, alive: Callable[[], bool]) -> Plan:
        """The origin's answer as a plan; its body (if any) is copied on by a task of its own."""
        status = fetched.status
        if status < 200 or status > 599:  # a 101 nobody asked for, or no HTTP status: not passed on
            fetched.close()
            self.puller._origin_result(fetched.index, False)
            self.stats[ORIGIN_ERRORS] += 1
            return self._error(502)
        fields = fetched.headers
        headers = [(b"server", self.site.server)]
        headers.extend(pair for pair in fields if pair[0] not in NOT_RETURNED)
        headers.append((b"cache-status", FORWARDED))
        dated = any(name == b"date" for name, _ in fields)
        stale = invalidated_paths(req.method, status, step.path, req.target,
                                  request_host(getattr(req, "forward", None) or ()), fields)
        if stale:
            await self.invalidate(stale)
        length_field = next((v for k, v in fields if k == b"content-length"), None)
        length = int(length_field) if length_field is not None and length_field.strip().isdigit() else None
        if status == 204 or status == 304 or length == 0:
            # No body (RFC 9110 §6.4.1: a 204 or 304 has none, whatever its fields say).
            fetched.close()
            self.puller._origin_result(fetched.index, True)
            if status != 204 and status != 304:
                headers.append((b"content-length", b"0"))
            elif status == 304 and length_field is not None:
                headers.append((b"content-length", length_field))  # the selected representation's, §8.6
            return Plan(status, headers, (), 0, dated=dated)
        if length is not None:
            headers.append((b"content-length", b"%d" % length))
        entry, in_memory = self._entry(headers, length)
        entry.acquire()  # the plan's reference, released by the exchange once delivered
        entry.acquire()  # the copy's own, released at its end
        entry.retire()  # in no cache: its fd closes when the last of them (and of the transfers) lets go
        task = self.loop.create_task(self._copy(fetched, entry, alive, in_memory))
        self.copies.add(task)
        task.add_done_callback(self.copies.discard)
        size = STREAMED if length is None else length
        return Plan(status, headers, ((0, size),), size, entry, dated)

    def _entry(self, headers: list[tuple[bytes, bytes]], length: int | None) -> tuple[FileEntry, bool]:
        """An unnamed file for an answer's body, growing as it arrives (never visible on disk, never stored),
        and whether it is a memory file."""
        try:
            fd = os.open(self.tmp_dir, _O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o600) if _O_TMPFILE else -1
        except OSError:
            fd = -1
        in_memory = fd < 0
        if in_memory:
            fd = os.memfd_create("edge-pass", os.MFD_CLOEXEC)  # no O_TMPFILE here: a memory file instead
        ctype = next((v for k, v in headers if k == b"content-type"), b"application/octet-stream")
        entry = FileEntry("\0pass", "", fd, os.fstat(fd), ctype.decode("latin-1"), None, (b"", None))
        entry.growth = Growth(STREAMED if length is None else length)
        entry.size = STREAMED if length is None else length
        return entry, in_memory

    async def _copy(self, fetched: Fetched, entry: FileEntry, alive: Callable[[], bool], in_memory: bool) -> None:
        """Write the origin's body to the answer's file as it arrives, at most PASS_LEAD bytes ahead of its
        client; the client's transfer follows its growth. A body cut short (or a client gone) fails the growth:
        no reader passes it off as whole. The file never takes the disk cache's min_free reserve (a memory
        file: at most SPILL_MAX bytes); beyond, the answer is cut."""
        growth = entry.growth
        store = self.puller.store
        written = 0
        ok = False
        try:
            while chunk := await fetched.read():
                if not in_memory:
                    store.check_room(len(chunk))  # OSError(ENOSPC): cut, as a disk that refuses the write
                elif written + len(chunk) > SPILL_MAX:
                    raise OSError(errno.ENOMEM, f"more than {SPILL_MAX} bytes of one answer held in memory")
                view = memoryview(chunk)
                while view:
                    n = os.pwrite(entry.fd, view, written)
                    written += n
                    view = view[n:]
                growth.grew(written)
                if written - growth.taken > PASS_LEAD and not await self._caught_up(growth, written, alive):
                    return
                if not alive():
                    return  # nobody reads it any more: the origin connection is dropped (finally)
            if growth.length >= STREAMED:
                entry.size = written
                growth.finish(written)
            ok = growth.done
        except (OriginError, OSError):
            pass
        finally:
            fetched.close()
            self.puller._origin_result(fetched.index, ok or not alive())
            if not ok:
                if alive():
                    self.stats[ORIGIN_ERRORS] += 1
                growth.fail()
            entry.growth = None if ok else growth
            entry.release()

    async def _caught_up(self, growth: Growth, written: int, alive: Callable[[], bool]) -> bool:
        """Wait, reading nothing more from the origin (whose connection pauses once its buffer fills), until
        the client has taken all but PASS_LEAD of the `written` bytes; False when the client is gone."""
        while written - growth.taken > PASS_LEAD:
            if not alive():
                return False
            waiter = growth.on_taken = self.loop.create_future()
            timer = self.loop.call_later(ALIVE_CHECK, lambda: waiter.done() or waiter.set_result(None))
            try:
                await waiter
            finally:
                timer.cancel()
                growth.on_taken = None
        return True

    def _error(self, status: int) -> Plan:
        """A short error answer, saying the request went (or was to go) to an origin."""
        return text_plan(status, [(b"cache-status", FORWARDED)], self.site.server)

    # -- invalidation (RFC 9111 §4.4) --------------------------------------------------------------

    async def invalidate(self, paths: list[str]) -> None:
        """Drop the stored answers for `paths`: this worker's copies at once, then the node's (disk and every
        worker) by the manager's purge, waited for up to INVALIDATE_WAIT seconds."""
        purge = Purge(paths=tuple(paths))
        self.puller.purged(purge)  # a fetch under way stores none of them, a stored one is not loaded again
        purge_cache(self.w.cache, purge)
        if not self.supervisor:
            return  # no node around this worker (tests): its own copies are all there are
        if self.asker is None:
            try:
                self.asker = control.Asker(self.loop, self.supervisor, anonymous=True)
            except OSError as e:  # the origin did what was asked: its answer stands, only the node's copies stay
                print(f"edge: worker {os.getpid()}: invalidation not sent to the manager: {e}", file=sys.stderr,
                      flush=True)
                return
        for part in purge.batches():
            try:
                answers, missing = await self.asker.ask([control.MANAGER], {"op": "invalidate", **part.to_json()},
                                                        INVALIDATE_WAIT)
            except OSError as e:
                answers, missing = {}, {control.MANAGER}
                print(f"edge: worker {os.getpid()}: invalidation not sent to the manager: {e}", file=sys.stderr,
                      flush=True)
            failed = missing or not answers or any("error" in a for a in answers.values())
            if failed:
                print(f"edge: worker {os.getpid()}: the node's invalidation of {list(part.paths)[:3]} is not "
                      f"confirmed: {answers or 'no answer'}", file=sys.stderr, flush=True)

    def close(self) -> None:
        """Stop copying answers and asking the manager (worker shutdown)."""
        for task in list(self.copies):
            task.cancel()
        if self.asker is not None:
            self.asker.close()
            self.asker = None
