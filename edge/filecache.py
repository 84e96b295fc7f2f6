"""Per-worker open-file cache: an LRU of open fds with their metadata and precomputed responses."""

from __future__ import annotations

import errno
import os
import stat
import time
from typing import Callable

from cachetools import LRUCache

from . import mediatypes

NOATIME = getattr(os, "O_NOATIME", 0)
OPEN_FLAGS = os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | NOATIME

#: Precompressed variants looked for beside a file: suffix -> Content-Encoding.
VARIANT_SUFFIXES = ((".br", "br"), (".gz", "gzip"))


class FileEntry:
    """One open regular file: fd, validators, content type and what core precomputed for it."""

    __slots__ = ("path", "fs_path", "fd", "size", "mtime_ns", "ino", "dev", "etag", "last_modified",
                 "content_type", "encoding", "variants", "checked", "refs", "dead", "body", "plans", "growth")

    def __init__(self, path: str, fs_path: str, fd: int, st: os.stat_result, content_type: str,
                 encoding: str | None, validators: tuple[bytes, int | None] | None = None) -> None:
        self.path = path
        self.fs_path = fs_path
        self.fd = fd
        self.size = st.st_size
        self.mtime_ns = st.st_mtime_ns
        self.ino = st.st_ino
        self.dev = st.st_dev
        if validators is not None:  # (ETag, Last-Modified) given, e.g. an origin's
            self.etag, self.last_modified = validators
        else:
            suffix = f"-{encoding}" if encoding else ""
            self.etag = f'"{st.st_ino:x}-{st.st_size:x}-{st.st_mtime_ns:x}{suffix}"'.encode("ascii")
            # RFC 9110 §8.8.2.1: never a Last-Modified later than the Date of the response.
            self.last_modified = min(st.st_mtime_ns // 1_000_000_000, int(time.time()))
        self.content_type = content_type
        self.encoding = encoding
        self.variants: dict[str, FileEntry] = {}
        self.checked = 0.0
        self.refs = 0
        self.dead = False
        self.body: bytes | None = None
        self.plans: dict = {}
        #: Set while the body is still arriving from an origin (a stored.Growth); None for whole files.
        self.growth = None

    def same_file(self, st: os.stat_result) -> bool:
        """True when `st` describes the very file this entry holds open, unchanged."""
        return (st.st_ino == self.ino and st.st_dev == self.dev and st.st_size == self.size
                and st.st_mtime_ns == self.mtime_ns)

    def acquire(self) -> None:
        """Mark the fd as used by a transfer; it stays open until release()."""
        self.refs += 1

    def release(self) -> None:
        """End a transfer; close the fd if the entry was dropped from the cache meanwhile."""
        self.refs -= 1
        if self.dead and self.refs == 0:
            self._close()

    def retire(self) -> None:
        """Drop the entry: close its fds now, or when the last transfer using them ends."""
        if self.dead:
            return
        self.dead = True
        self.plans.clear()  # each plan points back at its entry: a cycle only the cycle collector would free
        for variant in self.variants.values():
            variant.retire()
        if self.refs == 0:
            self._close()

    def _close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class NotFound:
    """A path that names nothing servable; `status` is 404 or 403."""

    __slots__ = ("status", "checked")

    def __init__(self, status: int = 404) -> None:
        self.status = status
        self.checked = 0.0


class Redirect:
    """A directory named without its trailing slash: answer 301 to path + '/'."""

    __slots__ = ("path", "checked")

    def __init__(self, path: str) -> None:
        self.path = path
        self.checked = 0.0


class Unchanged:
    """Revalidation found the cached entry still current."""

    __slots__ = ()


UNCHANGED = Unchanged()
Lookup = FileEntry | NotFound | Redirect


class _Entries(LRUCache):
    """An LRU whose evicted entries retire (close their fds once no transfer uses them)."""

    def __init__(self, maxsize: int, on_evict: Callable[[FileEntry], None]) -> None:
        super().__init__(maxsize)
        self._on_evict = on_evict

    def popitem(self):  # noqa: D102 - cachetools hook
        key, entry = super().popitem()
        self._on_evict(entry)
        return key, entry


class Resolver:
    """Blocking filesystem side of the cache: maps a normalised path to an opened file (run off the loop)."""

    def __init__(self, root: str, follow_symlinks: str = "inside-root", index: str = "index.html",
                 inline_max: int = 0) -> None:
        self.root = os.path.realpath(root)
        self.inline_max = inline_max
        self.follow_symlinks = follow_symlinks
        self.index = index

    def fs_path(self, path: str) -> str:
        """The filesystem path for a normalised URL path ('/dir/' maps to its index file)."""
        fs = self.root + path
        if path.endswith("/"):
            fs += self.index
        return fs

    def _allowed(self, fs: str) -> str | None:
        """Apply the symlink policy: the path to open, or None when a symlink makes it off-limits."""
        if self.follow_symlinks == "always":
            return fs
        real = os.path.realpath(fs)
        if self.follow_symlinks == "never":
            return fs if real == os.path.normpath(fs) else None
        if real == self.root or real.startswith(self.root + "/"):
            return real
        return None

    def _open(self, fs: str) -> tuple[int, os.stat_result] | int:
        """Open a regular file or directory under the policy: (fd, stat) or an errno."""
        target = self._allowed(fs)
        if target is None:
            return errno.ENOENT
        flags = OPEN_FLAGS | (os.O_NOFOLLOW if self.follow_symlinks == "never" else 0)
        try:
            fd = os.open(target, flags)
        except PermissionError as e:
            # O_NOATIME is refused (EPERM) on files another user owns, e.g. a root-owned tree served by
            # an unprivileged edge: open those without it.
            if e.errno != errno.EPERM or not flags & NOATIME:
                return e.errno or errno.EACCES
            try:
                fd = os.open(target, flags & ~NOATIME)
            except OSError as e2:
                return e2.errno or errno.ENOENT
        except OSError as e:
            return e.errno or errno.ENOENT
        try:
            st = os.fstat(fd)
        except OSError as e:  # pragma: no cover - fstat on a fresh fd does not fail in practice
            os.close(fd)
            return e.errno or errno.EIO
        return fd, st

    def load(self, path: str, old: FileEntry | None = None) -> Lookup | Unchanged:
        """Open what `path` names; with `old`, answer UNCHANGED when the file and its variants are the same."""
        fs = self.fs_path(path)
        if old is not None and old.fs_path == fs and self._unchanged(old):
            return UNCHANGED
        opened = self._open(fs)
        if isinstance(opened, int):
            return NotFound(403 if opened == errno.EACCES else 404)
        fd, st = opened
        if stat.S_ISDIR(st.st_mode):
            os.close(fd)
            if path.endswith("/"):
                return NotFound(404)  # the index file is a directory itself
            return Redirect(path + "/")
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            return NotFound(404)
        try:
            ctype = mediatypes.content_type(os.path.basename(fs), fd)
            entry = self._entry(path, fs, fd, st, ctype, None)
        except OSError:  # an I/O error reading the head of the file (sniff or inline body)
            os.close(fd)
            return NotFound(404)
        for suffix, coding in VARIANT_SUFFIXES:
            vopened = self._open(fs + suffix)
            if isinstance(vopened, int):
                continue
            vfd, vst = vopened
            try:
                if stat.S_ISREG(vst.st_mode):
                    entry.variants[coding] = self._entry(path, fs + suffix, vfd, vst, ctype, coding)
                    continue
            except OSError:
                pass  # an unreadable variant is skipped; the original still serves
            os.close(vfd)
        return entry

    def _entry(self, path: str, fs: str, fd: int, st: os.stat_result, ctype: str, coding: str | None) -> FileEntry:
        entry = FileEntry(path, fs, fd, st, ctype, coding)
        if st.st_size <= self.inline_max:
            # Small files go out in the same write as their header block (one syscall, not two).
            body = os.pread(fd, st.st_size, 0)
            if len(body) == st.st_size:
                entry.body = body
        return entry

    def _unchanged(self, old: FileEntry) -> bool:
        """Stat the file and the variant names again; True if nothing moved."""
        try:
            if not old.same_file(os.stat(old.fs_path)):
                return False
        except OSError:
            return False
        for suffix, coding in VARIANT_SUFFIXES:
            variant = old.variants.get(coding)
            try:
                st = os.stat(old.fs_path + suffix)
            except OSError:
                if variant is not None:
                    return False
                continue
            if variant is None or not variant.same_file(st):
                return False
        return not self.follow_symlinks == "inside-root" or self._allowed(old.fs_path) is not None


#: Bytes of small-file bodies a worker keeps in memory at most; past it, files go by sendfile.
INLINE_BUDGET = 64 << 20


class FileCache:
    """The LRU of FileEntry by normalised path, plus a short-lived cache of 404s and redirects."""

    def __init__(self, resolver: Resolver, max_entries: int, valid: float, inline_budget: int = INLINE_BUDGET) -> None:
        self.resolver = resolver
        self.valid = valid
        self.inline_budget = inline_budget
        self.inline_bytes = 0
        self.evictions = 0
        self.hits = 0
        self.misses = 0
        self._entries = _Entries(max_entries, self._evicted)
        # A plain-dict view of _entries for hits: one C lookup instead of cachetools' Python
        # layers. Recency in the LRU is refreshed when an entry is revalidated (every `valid`
        # seconds while it is used), as nginx's open_file_cache counts "inactive" time.
        self._fast: dict[str, FileEntry] = {}
        # 404s and redirects: a plain dict (a lookup is one C call; with origins every proxied path is
        # one of these), bounded by dropping the oldest insertion; `checked` ages them out like entries.
        self._negative: dict[str, NotFound | Redirect] = {}
        self._negative_max = max(64, max_entries // 4)

    def _evicted(self, entry: FileEntry) -> None:
        self.evictions += 1
        self._fast.pop(entry.path, None)
        self._drop(entry)

    def _drop(self, entry: FileEntry) -> None:
        """Retire an entry that left the LRU and give back its share of the inline budget."""
        for e in (entry, *entry.variants.values()):
            if e.body is not None:
                self.inline_bytes -= len(e.body)
        entry.retire()

    def _admit(self, entry: FileEntry) -> None:
        """Charge inline bodies to the budget; bodies that do not fit are dropped (sent by sendfile)."""
        for e in (entry, *entry.variants.values()):
            if e.body is not None:
                if self.inline_bytes + len(e.body) > self.inline_budget:
                    e.body = None
                else:
                    self.inline_bytes += len(e.body)

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(self, path: str, now: float) -> Lookup | None:
        """The current answer for `path` if it is cached and was checked within `valid` seconds, else None."""
        entry = self._fast.get(path)
        if entry is not None:
            if now - entry.checked < self.valid:
                self.hits += 1
                return entry
            return None
        neg = self._negative.get(path)
        if neg is not None and now - neg.checked < self.valid:
            self.hits += 1
            return neg
        return None

    def still_missing(self, path: str, now: float) -> NotFound | None:
        """A path never looked up, or a cached 404 due for its recheck, checked here with one stat: a 404
        (stored, or refreshed) while nothing is there, else None (the path is loaded off the loop as usual).

        With origins every proxied path is a local 404 first, and on a CDN most are new: a stat here costs
        a small fraction of a trip to the I/O pool (on the proxy-miss row those trips were 6-10 % of the
        CPU). A path that does exist costs one stat more, once, before its first load.
        """
        neg = self._negative.get(path)
        if neg is None:
            if path in self._entries:  # a file due for revalidation: the pool compares it
                return None
        elif type(neg) is not NotFound or neg.status != 404:
            return None
        try:
            os.stat(self.resolver.fs_path(path))
        except (FileNotFoundError, NotADirectoryError):
            if neg is None:
                return self.store(path, NotFound(404), now)  # type: ignore[return-value]
            neg.checked = now
            return neg
        except OSError:
            pass
        return None

    def peek(self, path: str) -> FileEntry | None:
        """The cached entry for `path` however long ago it was checked, without touching its recency."""
        return self._fast.get(path)

    def stale(self, path: str) -> FileEntry | None:
        """The cached entry for `path` even if due for revalidation (for Resolver.load's `old`)."""
        return self._entries.get(path)

    def store(self, path: str, result: Lookup | Unchanged, now: float) -> Lookup:
        """Record what the resolver found for `path` and return the answer to use."""
        self.misses += 1
        if result is UNCHANGED:
            entry = self._entries.get(path)  # also marks it recently used
            if entry is not None:
                entry.checked = now
                return entry
            raise LookupError(path)  # evicted while revalidating: caller loads again
        old = self._entries.pop(path, None)
        self._fast.pop(path, None)
        if old is not None and old is not result:
            self._drop(old)
        result.checked = now
        if isinstance(result, FileEntry):
            self._negative.pop(path, None)
            self._entries[path] = result  # may evict the oldest entry first
            self._fast[path] = result
            if old is not result:  # the same entry stored again is already charged
                self._admit(result)
        else:
            negative = self._negative
            negative.pop(path, None)
            if len(negative) >= self._negative_max:
                del negative[next(iter(negative))]
            negative[path] = result
        return result

    def purge(self, path: str | None = None) -> int:
        """Drop one path, or everything when `path` is None; returns how many entries went."""
        if path is None:
            n = len(self._entries)
            for entry in self._entries.values():
                self._drop(entry)
            self._entries.clear()
            self._fast.clear()
            self._negative.clear()
            return n
        self._negative.pop(path, None)
        self._fast.pop(path, None)
        entry = self._entries.pop(path, None)
        if entry is None:
            return 0
        self._drop(entry)
        return 1

    def names(self) -> list[str]:
        """Every name cached: entries (local paths, '\0'-prefixed origin objects) and 404s/redirects."""
        return [*self._entries.keys(), *self._negative.keys()]

    def close(self) -> None:
        """Retire every entry (worker shutdown)."""
        self.purge(None)
