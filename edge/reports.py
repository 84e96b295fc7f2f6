"""Workers' reports to the cache manager (objects stored, objects used): their framing and batching.

A worker sends its reports in batches, one datagram every few milliseconds, not one per cache miss:
a datagram per stored object woke the manager once per miss, which cost the node more CPU than the
manager's work itself (measured on the proxy-miss bench row). Each record in a datagram is a 4-byte
length then the record: b"S <digest> <size> <key length>\\n<key><tags, space-separated>",
b"U <digest>", or RECONCILE: reports were lost (a worker died before sending its batch, or a datagram
did not fit the manager's queue), so the manager looks on disk for objects it was not told of.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import Iterator, Sequence

DATAGRAM = 64 * 1024  # the most one datagram carries (a record's key is at most 8 KiB)
FLUSH_DELAY = 0.02  # seconds a report may wait for others to share its datagram
RETRY_DELAY = 0.2  # seconds before a RECONCILE that could not be sent is tried again
RECONCILE = b"R"
MAKE_ROOM = b"M"  # a store failed for want of space (or a disk fault): evict until min_free bytes are free
_LENGTH = struct.Struct("!I")
_ROOM = DATAGRAM - _LENGTH.size - len(RECONCILE)  # what a batch may fill, leaving room for a RECONCILE
_HEX = frozenset(b"0123456789abcdef")


def _name(raw: bytes) -> str:
    """An object's digest as reported; ValueError unless it is one (it becomes a path in the cache)."""
    if len(raw) != 32 or not _HEX.issuperset(raw):
        raise ValueError("not a digest")
    return raw.decode("ascii")


def stored(name: str, size: int, key: str, tags: Sequence[str]) -> bytes:
    """The record of a newly published object: its digest, body size, cache key and tags."""
    raw_key = key.encode("latin-1")
    return b"S %s %d %d\n%s%s" % (name.encode("ascii"), size, len(raw_key), raw_key,
                                  " ".join(tags).encode("latin-1"))


def used(name: str) -> bytes:
    """The record of an object served from disk again (it moves up the LRU)."""
    return b"U " + name.encode("ascii")


def pack(records: Sequence[bytes]) -> bytes:
    """Records framed for one datagram."""
    return b"".join(_LENGTH.pack(len(r)) + r for r in records)


def parse(data: bytes) -> Iterator[tuple[str, str, int, str, list[str]]]:
    """The records of a datagram as (kind, digest, size, key, tags); a malformed tail is dropped."""
    view = memoryview(data)
    at, end = 0, len(data)
    while at + 4 <= end:
        (length,) = _LENGTH.unpack_from(view, at)
        record = bytes(view[at + 4:at + 4 + length])
        at += 4 + length
        if len(record) != length:
            return
        try:
            if record == RECONCILE:
                yield "R", "", 0, "", []
            elif record == MAKE_ROOM:
                yield "M", "", 0, "", []
            elif record[:2] == b"U ":
                yield "U", _name(record[2:]), 0, "", []
            elif record[:2] == b"S ":
                head, _, rest = record.partition(b"\n")
                _, name, size, key_length = head.split(b" ")
                cut = int(key_length)
                if cut > len(rest) or int(size) < 0:
                    raise ValueError("cut short")
                yield "S", _name(name), int(size), rest[:cut].decode("latin-1"), rest[cut:].decode("latin-1").split()
        except ValueError:
            continue  # a malformed record costs nothing


class Reporter:
    """A worker's outgoing reports: batched into datagrams, sent within FLUSH_DELAY or when a datagram fills."""

    def __init__(self, loop: asyncio.AbstractEventLoop, sock: socket.socket | None) -> None:
        self.loop = loop
        self.sock = sock
        self.pending: list[bytes] = []
        self.size = 0
        self.timer: asyncio.TimerHandle | None = None
        self.lost = False  # a datagram was not sent: the next one asks the manager to reconcile

    def add(self, record: bytes) -> None:
        """Queue one record (dropped when there is no manager, or it is bigger than a datagram)."""
        if self.sock is None or len(record) + 4 > _ROOM:
            return
        if self.size + len(record) + 4 > _ROOM:
            self.flush()
        self.pending.append(record)
        self.size += len(record) + 4
        if self.timer is None:
            self.timer = self.loop.call_later(FLUSH_DELAY, self.flush)

    def flush(self) -> None:
        """Send what is queued now (before a purge is acknowledged, and at exit)."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if not self.pending and not self.lost:
            return
        if self.lost:
            self.pending.append(RECONCILE)
        data = pack(self.pending)
        self.pending.clear()
        self.size = 0
        try:
            self.sock.send(data)
            self.lost = False
        except OSError:
            # The manager's queue is full or it is restarting (a new one rebuilds from disk): its index
            # misses these objects until a RECONCILE gets through, tried again shortly even if nothing
            # else is reported.
            self.lost = True
            try:
                self.timer = self.loop.call_later(RETRY_DELAY, self.flush)
            except RuntimeError:
                pass  # the loop is closing (the worker exits)
