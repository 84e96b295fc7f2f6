"""Origin objects as file-cache entries: a stored response's fd, headers and freshness, and a body still growing."""

from __future__ import annotations

import os
from collections.abc import Callable
from urllib.parse import unquote

from .diskcache import Meta
from .filecache import FileEntry
from .freshness import NEVER, reuse_windows
from .httpdate import parse_http_date
from .purge import key_path
from .negotiation import PREFERENCE, parse_accept_encoding

#: Origin response fields never stored or passed on: this node writes its own framing, Server, Age. The
#: origin's Date is kept (or the time it arrived, RFC 9110 §6.6.1): with Age it tells a downstream cache
#: how old the response is; a Date of now beside an Age would count the time spent here twice.
# (A 200's Content-Range stays: it is the origin's word about the body; edge cuts no ranges from such an answer.)
DROPPED_FIELDS = frozenset({"content-length", "server", "age", "surrogate-key", "accept-ranges"})
DROPPED_BYTES = frozenset(name.encode("ascii") for name in DROPPED_FIELDS)
#: Fields a 304 repeats from the stored response (RFC 9110 §15.4.5).
NOT_MODIFIED_FIELDS = frozenset({b"etag", b"cache-control", b"expires", b"vary", b"last-modified",
                                 b"content-location", b"date"})
#: The stat of a body still arriving (no fstat on a miss): no file on disk is the same_file as it until
#: StoredEntry.published gives it the stored file's.
NOT_ON_DISK = os.stat_result((0,) * 10)
#: The length of a body known only at its end (an origin's chunked or close-delimited answer) while it
#: streams: no Content-Length goes out, HTTP/1.1 clients get it chunked (edge/http1.py).
STREAMED = 1 << 62


def settled(parts: tuple | list, size: int) -> list:
    """The parts of a plan made while its body streamed (a STREAMED length), for a transfer that starts
    only once the body is complete: that length cut to the body's `size`."""
    return [(p[0], size - p[0]) if type(p) is tuple and p[1] >= STREAMED else p for p in parts]


def streamed_sent(parts: list | tuple, index: int, done: int, growth: Growth | None) -> int:
    """Bytes of a STREAMED body (a transfer's last part) sent so far, from the transfer's progress (the part
    it is at, bytes of it done): all of it once the transfer is past its end."""
    if index >= len(parts):
        return growth.length if growth is not None else 0
    return done if index == len(parts) - 1 else 0


class Growth:
    """A body still being written to its file: bytes there so far, whether it ended, who waits for more."""

    __slots__ = ("available", "length", "done", "failed", "waiters", "taken", "on_taken")

    def __init__(self, length: int) -> None:
        self.available = 0
        self.length = length
        self.done = False
        self.failed = False
        self.waiters: list[Callable[[], None]] = []
        #: Bytes available when a reader last had taken them all (caught_up): how far a body with one reader
        #: (a passed answer) has run ahead of its client.
        self.taken = 0
        #: A future (set by the writer) resolved when a reader next catches up.
        self.on_taken = None

    def wait(self, callback: Callable[[], None]) -> None:
        """Call `callback` once, at the next change (more bytes, the end, or a failure)."""
        self.waiters.append(callback)

    def caught_up(self) -> None:
        """A reader has sent all of the body there is (it waits for more, not for its client)."""
        self.taken = self.available
        waiter = self.on_taken
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def grew(self, available: int) -> None:
        """More of the body is in the file."""
        if available > self.available:
            self.available = available
            if available >= self.length:
                self.done = True
            self._wake()

    def finish(self, length: int) -> None:
        """A body of unknown length (STREAMED) ended at `length` bytes, all of them in the file."""
        self.length = length
        self.grew(length)
        if not self.done:  # an empty body: nothing grew
            self.done = True
            self._wake()

    def fail(self) -> None:
        """The body will never be complete: readers must cut their clients off."""
        if not self.done:
            self.failed = True
            self._wake()

    def _wake(self) -> None:
        waiters, self.waiters = self.waiters, []
        for callback in waiters:
            try:
                callback()
            except Exception:  # noqa: BLE001 - one reader's trouble (its socket) is not the body's, nor the others'
                pass


class StoredEntry(FileEntry):
    """An origin response held open like a local file, with the headers and freshness it was stored with.

    Times on it are the worker loop's clock (monotonic): computed once when it is loaded, so the hot
    path compares one float to know whether it is fresh.
    """

    __slots__ = ("key", "status", "stored_headers", "fresh_until", "revalidate_until", "error_until",
                 "age_base", "loaded_at", "age_second", "vary", "tags", "meta", "changed", "dated")

    def __init__(self, name: str, fs_path: str, fd: int, st: os.stat_result, meta: Meta, now: float,
                 wall: float, changed: int = 0, stored_headers: list[tuple[bytes, bytes]] | None = None) -> None:
        # stored_headers: meta.headers as bytes, when the caller has them already
        headers = stored_headers if stored_headers is not None else [
            (k.encode("latin-1"), v.encode("latin-1")) for k, v in meta.headers]
        ctype = etag = lm = None  # the first of each, in one pass
        dated = False
        for k, v in headers:
            if k == b"content-type":
                ctype = ctype or v
            elif k == b"etag":
                etag = etag or v
            elif k == b"last-modified":
                lm = lm or v
            elif k == b"date":
                dated = True
        super().__init__(name, fs_path, fd, st, ctype.decode("latin-1") if ctype else "application/octet-stream",
                         None, (etag or b"", parse_http_date(lm) if lm is not None else None))
        self.size = meta.length
        self.key = meta.key.encode("latin-1")
        self.status = meta.status
        self.stored_headers = headers
        self.dated = dated  # the stored fields have a Date (objects stored before edge kept it have none)
        self.vary = meta.vary
        self.tags = meta.tags
        self.meta = meta
        self.changed = changed  # the body's ctime when loaded: metadata rewrites change it
        self.age_second = -1
        self.refresh(meta, now, wall)

    def published(self, fs_path: str, st: os.stat_result) -> None:
        """The body this entry was made for while it arrived (with NOT_ON_DISK) is stored as `fs_path`, which
        `st` (an fstat after it was put in place) describes: later checks compare the disk to these."""
        self.fs_path = fs_path
        self.changed = st.st_ctime_ns
        self.ino, self.dev, self.mtime_ns = st.st_ino, st.st_dev, st.st_mtime_ns

    def refresh(self, meta: Meta, now: float, wall: float) -> None:
        """Take the freshness of `meta` (e.g. after a 304 revalidation), rebased on the loop clock."""
        self.meta = meta
        age, fresh, revalidate, error = reuse_windows(
            meta.lifetime, meta.initial_age, meta.stale_while_revalidate, meta.stale_if_error, meta.no_cache,
            meta.must_revalidate, meta.stored_at, wall)
        self.age_base = age
        self.loaded_at = now
        self.fresh_until = now + fresh  # NEVER stays NEVER
        self.revalidate_until = now + revalidate
        self.error_until = now + error
        self.plans.clear()

    def url_path(self) -> str:
        """The decoded URL path this object was stored for (what [[headers]] rules match)."""
        return unquote(key_path(self.key.decode("latin-1")))

    def age(self, now: float) -> int:
        """The Age to send now, in whole seconds."""
        return int(self.age_base + now - self.loaded_at)

    def ttl(self, now: float) -> int:
        """Seconds of freshness left (negative once stale)."""
        return int(self.fresh_until - now) if self.fresh_until != NEVER else 0


def normalise_coding(accept_encoding: bytes | None) -> str:
    """The codings asked of the origin for a client's Accept-Encoding: "br, gzip", "br", "gzip" or "identity".

    Varying on the raw field would store a copy per browser spelling; four keys cover them all. The
    origin chooses among the codings named, and whatever it chose suits every client with the same set:
    asking a browser's "br, gzip" as "br" alone would get an origin without brotli to send identity.
    """
    if not accept_encoding:
        return "identity"
    prefs = parse_accept_encoding(accept_encoding)
    star = prefs.get("*", 0.0)
    rated = [(coding, prefs.get(coding, star)) for coding in PREFERENCE]
    codings = [coding for coding, q in rated if q > 0]
    identity = prefs.get("identity")
    if not codings or (identity is not None and identity > max(q for _, q in rated)):
        return "identity"  # none acceptable, or the client rates identity above them
    return ", ".join(codings)
