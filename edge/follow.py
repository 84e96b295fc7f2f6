"""Sharing one fetch across the workers of a node: the key locks, and following another worker's fetch.

A worker that takes a key's lock (KeyLocks, a byte of tmp/locks per slot) fetches it and writes the body
to tmp/<digest>.fetch with the response head in an extended attribute; a worker that finds the lock
taken follows that file as it grows (Follower), so one origin request serves the whole node. The
puller (edge/pull.py) keeps the flights and the origin exchange; this module only reads what the
fetching worker publishes.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import mmap
import os
import time
from collections.abc import Callable, Coroutine
from typing import Any

from .diskcache import HEAD_XATTR, SPILL_XATTR, XATTR, DiskCache, Meta, parse_head, process_alive, spill_name
from .stored import STREAMED, Growth, StoredEntry

LOCK_SLOTS = 1 << 20  # byte offsets in tmp/locks; two keys share one only by a 1-in-a-million chance
FOLLOW_POLL_MIN = 0.001
FOLLOW_POLL_MAX = 0.02
PASS = object()  # Follower.follow: the fetching worker's answer is not for sharing
TIMED_OUT = object()  # Follower.follow: the fetch neither grew nor ended in time


MARK_SLOTS = 1 << 16  # hit-for-miss marks: 16 bytes each, a 1 MiB file for the node
HIT_FOR_MISS = 120.0  # seconds a key whose answer may not be stored skips coalescing (Varnish: 120 s)


class HitForMiss:
    """Node-wide hit-for-miss marks: keys whose last answer may not be stored, so their requests go to the
    origin side by side instead of queueing behind one fetch (Varnish's hit-for-miss object).

    A shared file of MARK_SLOTS slots, (64-bit tag of the digest, monotonic time until which the mark
    holds): fixed size whatever the traffic; a key whose slot another key took since loses its mark (it
    coalesces again, once). Workers write whole slots without locks: a torn read costs one wrong choice
    between coalescing and not, never a wrong answer.
    """

    def __init__(self, path: str) -> None:
        size = MARK_SLOTS * 16
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                # Every block allocated now: a page of a sparse file first touched on a full disk would be
                # a SIGBUS, not an error. Idempotent when several workers start at once.
                os.posix_fallocate(fd, 0, size)
                self._map = mmap.mmap(fd, size, flags=mmap.MAP_SHARED)
            finally:
                os.close(fd)
            self.shared = True
        except OSError:  # no room (or no cache dir): this worker's own marks, as good as one worker's
            self._map = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE)
            self.shared = False
        view = memoryview(self._map)
        self._tags = view[:MARK_SLOTS * 8].cast("Q")
        self._until = view[MARK_SLOTS * 8:].cast("d")

    @staticmethod
    def _place(digest: str) -> tuple[int, int]:
        return int(digest[:8], 16) % MARK_SLOTS, int(digest[8:24], 16)

    def mark(self, digest: str, now: float) -> None:
        """`digest`'s answer may not be stored: skip coalescing for HIT_FOR_MISS seconds from `now`."""
        slot, tag = self._place(digest)
        self._tags[slot] = tag
        self._until[slot] = now + HIT_FOR_MISS

    def clear(self, digest: str) -> None:
        """`digest`'s answer may be stored again: its requests coalesce."""
        slot, tag = self._place(digest)
        if self._tags[slot] == tag:
            self._until[slot] = 0.0

    def marked(self, digest: str, now: float) -> bool:
        """Is `digest` marked at monotonic time `now`?"""
        slot, tag = self._place(digest)
        return self._tags[slot] == tag and self._until[slot] > now

    def close(self) -> None:
        """Unmap the table."""
        self._tags.release()
        self._until.release()
        self._map.close()


class KeyLocks:
    """Node-wide fetch locks: one byte of a shared file per key slot, locked with fcntl (per process).

    fcntl locks belong to the process, not to a fetch: two keys of one worker may share a slot, so the
    worker counts its holders and gives the slot back only when the last one lets go.
    """

    def __init__(self, path: str) -> None:
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        self.held: dict[int, int] = {}  # slot -> fetches of this process holding it

    @staticmethod
    def slot(name: str) -> int:
        """The lock slot of an object's digest."""
        return int(name[:8], 16) % LOCK_SLOTS

    def try_lock(self, slot: int) -> bool:
        """Take the slot if no other process holds it."""
        if slot in self.held:
            self.held[slot] += 1
            return True
        try:
            fcntl.lockf(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, slot)
            self.held[slot] = 1
            return True
        except OSError as e:
            if e.errno in (errno.EAGAIN, errno.EACCES):
                return False
            raise

    def unlock(self, slot: int) -> None:
        """Give the slot back (to other processes once no fetch of this one holds it)."""
        left = self.held.pop(slot, 1) - 1
        if left:
            self.held[slot] = left
            return
        fcntl.lockf(self.fd, fcntl.LOCK_UN, 1, slot)

    def close(self) -> None:
        """Release every slot (closing the fd drops this process's locks)."""
        os.close(self.fd)


class Follower:
    """Follows other workers' fetches for a worker's puller."""

    def __init__(self, loop: asyncio.AbstractEventLoop, store: DiskCache, locks: KeyLocks, follow_timeout: float,
                 read_timeout: float, spawn: Callable[[Coroutine[Any, Any, None]], Any]) -> None:
        self.loop = loop
        self.store = store
        self.locks = locks
        self.follow_timeout = follow_timeout  # no growth and no end for this long: the request gets a 504
        self.read_timeout = read_timeout  # a followed body that stops growing for this long has failed
        self.spawn = spawn

    async def follow(self, key: bytes, entry_name: str, name: str, slot: int) -> StoredEntry | object | None:
        """Another worker holds lock `slot` of digest `name`: its fetch of `key` as an entry (named
        `entry_name`) that follows the temp file as it grows, PASS (its answer is not for sharing),
        TIMED_OUT, or None once its lock is free (then this worker fetches, or finds it stored)."""
        path = self.store.follow_path(name)
        delay = FOLLOW_POLL_MIN
        deadline = self.loop.time() + self.follow_timeout
        grown = -1
        while self.loop.time() < deadline:
            found = self._open_head(path, key, entry_name)
            if found is PASS:
                return PASS
            if isinstance(found, tuple):
                entry, fetcher = found
                self.spawn(self._tail(entry, fetcher))
                return entry
            if isinstance(found, int) and found > grown:  # a body still arriving that cannot be followed
                grown = found
                deadline = self.loop.time() + self.follow_timeout
            if self.locks.try_lock(slot):
                self.locks.unlock(slot)
                return None
            await asyncio.sleep(delay)
            delay = min(delay * 2, FOLLOW_POLL_MAX)
        return TIMED_OUT

    def _open_head(self, path: str, key: bytes, entry_name: str) -> tuple[StoredEntry, int] | object | int | None:
        """Another worker's fetch, from its temp file and head: an entry to follow with the fetching
        worker's pid (a body of unknown length streams until _tail learns where it ends), PASS, the bytes
        so far of a body that cannot be followed (no head on this filesystem: wait for it to be stored),
        or None (no fetch there, another key's, or one left by a worker that died)."""
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return None  # not there yet, or already stored or gone (the lock tells which)
        entry = None
        try:
            try:
                data = os.getxattr(fd, HEAD_XATTR)
            except OSError:
                return os.fstat(fd).st_size  # no head yet, or no xattrs here: is it still growing?
            shared, known, pid = parse_head(data)
            meta = Meta.loads(os.getxattr(fd, XATTR))  # set before the head
            if meta.key != key.decode("latin-1"):
                return None  # a Vary case: fetched by ourselves once this fetch is stored
            if not process_alive(pid):
                return None  # left by a worker that died: the lock holder replaces it when its answer comes
            if not shared:
                return PASS
            entry = StoredEntry(entry_name, path, fd, os.fstat(fd), meta, self.loop.time(), time.time())
        except (OSError, ValueError, TypeError, KeyError):
            return None
        finally:
            if entry is None:
                os.close(fd)
        if not known:  # its length is known only at its end: streamed (chunked) as it grows, like the fetcher's
            entry.size = STREAMED
        entry.growth = Growth(entry.size)
        if entry.size == 0:
            entry.growth.done = True
        entry.acquire()  # the tail's reference; retire() below closes the fd after the last reader
        entry.retire()
        return entry, pid

    async def _tail(self, entry: StoredEntry, fetcher: int) -> None:
        """Watch another worker's temp file grow; fail the readers if it is abandoned, stalls, or its
        fetching worker (pid `fetcher`) dies."""
        growth = entry.growth
        delay = FOLLOW_POLL_MIN
        last = self.loop.time()
        head_fd = -1  # the temp file, for its head, once the body is followed in the fetcher's memory
        try:
            while not growth.done and not growth.failed:
                st = os.fstat(entry.fd)
                now = self.loop.time()
                if st.st_size > growth.available:
                    growth.grew(min(st.st_size, growth.length))
                    last = now
                    delay = FOLLOW_POLL_MIN
                    continue
                if growth.length == STREAMED:
                    final = self._final_length(entry.fd if head_fd < 0 else head_fd)
                    if final is not None and final == st.st_size:
                        entry.size = entry.meta.length = final
                        growth.finish(final)
                        break
                if head_fd < 0:
                    head_fd = follow_spill(entry)
                    if head_fd >= 0:
                        continue  # the disk refused the body: the rest is in the fetcher's memory file
                if (head_fd < 0 and st.st_nlink == 0) or now - last > self.read_timeout \
                        or not process_alive(fetcher):
                    growth.fail()  # the fetcher dropped it (truncated origin) or died
                    break
                await asyncio.sleep(delay)
                delay = min(delay * 2, FOLLOW_POLL_MAX)
        except OSError:
            growth.fail()
        finally:
            if head_fd >= 0:
                os.close(head_fd)
            entry.growth = None
            entry.release()

    @staticmethod
    def _final_length(fd: int) -> int | None:
        """The length of another worker's body of unknown length (open as `fd`), once its end is known: from
        the metadata on the same file, final once the head says the length is known or the head is gone
        with the commit (read through `fd`: the stored object may be replaced or purged by then). None
        while it still grows."""
        try:
            try:
                if not parse_head(os.getxattr(fd, HEAD_XATTR))[1]:
                    return None
            except OSError:
                pass  # committed: no head, the final metadata
            return Meta.loads(os.getxattr(fd, XATTR)).length  # final once the head says the length is known
        except (OSError, ValueError, TypeError, KeyError):
            return None


def follow_spill(entry: StoredEntry) -> int:
    """Another worker's body the disk refused goes on in that worker's memory file (Writer.spill): put
    that file under entry.fd and return a new fd of the temp file (for its head); -1 when not spilled."""
    try:
        pid, number = os.getxattr(entry.fd, SPILL_XATTR).split()
        memory = os.open(f"/proc/{int(pid)}/fd/{int(number)}", os.O_RDONLY | os.O_CLOEXEC)
    except (OSError, ValueError):
        return -1
    try:
        # The fd number could name another file by now: only the memory file of this very body will do.
        if os.readlink(f"/proc/self/fd/{memory}") != f"/memfd:{spill_name(entry.fs_path)} (deleted)":
            return -1
        head = os.dup(entry.fd)
        os.dup2(memory, entry.fd)
        return head
    except OSError:
        return -1
    finally:
        os.close(memory)
