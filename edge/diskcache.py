"""The on-disk object cache: complete bodies with their metadata, published by atomic rename, LRU under a size.

Layout under the cache directory (shared by every worker of a node):
  objects/ab/<digest>        the body, exactly as served (sendfile-able like any local file)
  objects/ab/<digest>.meta   JSON metadata: key, status, headers, freshness, tags, length
  tmp/                       bodies being written; never read, cleared at start
A body is renamed into place before its metadata, and readers go by the metadata, so a reader
sees either nothing or a complete object. A body without metadata (a crash between the two
renames) is removed when the index is rebuilt.
"""

from __future__ import annotations

import json
import os
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from .cachekey import digest


@dataclass
class Meta:
    """What is stored beside a body: enough to rebuild the response and judge its freshness."""

    key: str
    status: int
    headers: list[tuple[str, str]]
    length: int
    stored_at: float
    request_time: float
    lifetime: float
    initial_age: float
    stale_while_revalidate: float = 0.0
    stale_if_error: float = 0.0
    no_cache: bool = False
    must_revalidate: bool = False
    tags: list[str] = field(default_factory=list)
    vary: str = ""  # "accept-encoding": the object is stored per coding, under key + "\0" + coding

    def dumps(self) -> bytes:
        """The metadata file's bytes."""
        return json.dumps(self.__dict__, separators=(",", ":")).encode()  # asdict() deep-copies: slow

    @classmethod
    def loads(cls, data: bytes) -> Meta:
        """Parse a metadata file (ValueError/TypeError/KeyError when it is not one)."""
        raw = json.loads(data)
        raw["headers"] = [(str(k), str(v)) for k, v in raw["headers"]]
        return cls(**raw)


class Writer:
    """A body being fetched: written to tmp/, published by commit() only if complete."""

    def __init__(self, store: DiskCache, key: bytes) -> None:
        self.store = store
        self.key = key
        self.name = digest(key)
        self.tmp = os.path.join(store.tmp_dir, f"{self.name}.{os.getpid()}.{time.monotonic_ns()}")
        self.fd = os.open(self.tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        self.written = 0

    def write(self, chunk: bytes) -> None:
        """Append a piece of the body."""
        view = memoryview(chunk)
        while view:
            n = os.write(self.fd, view)
            view = view[n:]
            self.written += n

    def commit(self, meta: Meta) -> bool:
        """Publish the object if its body has exactly `meta.length` bytes; otherwise discard it."""
        if self.fd < 0:
            return False
        if self.written != meta.length:
            self.abort()
            return False
        os.close(self.fd)
        self.fd = -1
        body, meta_path = self.store.paths(self.name)
        meta_tmp = self.tmp + ".meta"
        fd = os.open(meta_tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        try:
            os.write(fd, meta.dumps())  # a few hundred bytes: one write takes it all on a regular file
        finally:
            os.close(fd)
        os.replace(self.tmp, body)
        os.replace(meta_tmp, meta_path)
        self.store.admitted(self.name, meta.length)
        return True

    def abort(self) -> None:
        """Throw the partial body away (a truncated or failed fetch is never cached)."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        try:
            os.unlink(self.tmp)
        except FileNotFoundError:
            pass


class DiskCache:
    """Objects on disk by key, with an in-process LRU index of their sizes kept under `max_size` bytes."""

    def __init__(self, root: str, max_size: int, report: Callable[[str, int], None] | None = None) -> None:
        self.root = root
        #: In a worker: tell the node's cache manager of a new object instead of indexing it here.
        self.report = report
        self.max_size = max_size
        self.objects_dir = os.path.join(root, "objects")
        self.tmp_dir = os.path.join(root, "tmp")
        os.makedirs(self.tmp_dir, exist_ok=True)
        for i in range(256):  # every objects/ab/ made once here, not checked on every store
            os.makedirs(os.path.join(self.objects_dir, f"{i:02x}"), exist_ok=True)
        self.index: OrderedDict[str, int] = OrderedDict()  # digest -> body size, least recent first
        self.size = 0
        self.evictions = 0

    def paths(self, name: str) -> tuple[str, str]:
        """(body path, metadata path) of a digest."""
        base = f"{self.objects_dir}/{name[:2]}/{name}"
        return base, base + ".meta"

    def rebuild(self, clear_tmp: bool = True) -> int:
        """Index what is on disk (oldest access first), drop orphans and leftovers; returns the object count.

        With `clear_tmp` (at node start, before any worker runs) unfinished bodies of an earlier run go too.
        """
        for leftover in os.listdir(self.tmp_dir) if clear_tmp else ():
            try:
                os.unlink(os.path.join(self.tmp_dir, leftover))
            except OSError:
                pass
        found: list[tuple[float, str, int]] = []
        for sub in os.listdir(self.objects_dir):
            folder = os.path.join(self.objects_dir, sub)
            try:
                names = os.listdir(folder)
            except NotADirectoryError:
                continue
            present = set(names)
            metas = {n[:-5] for n in names if n.endswith(".meta")}
            for name in names:
                path = os.path.join(folder, name)
                if name.endswith(".meta"):
                    if name[:-5] not in present and clear_tmp:
                        os.unlink(path)  # metadata without a body
                    continue
                if name not in metas:
                    if clear_tmp:
                        os.unlink(path)  # a body whose metadata never landed
                    continue
                try:
                    st = os.stat(path)
                except FileNotFoundError:
                    continue  # evicted or purged while we looked
                found.append((st.st_atime, name, st.st_size))
        found.sort()
        self.index = OrderedDict((name, size) for _, name, size in found)
        self.size = sum(size for _, _, size in found)
        self.evict()
        return len(self.index)

    def writer(self, key: bytes) -> Writer:
        """Start storing the object for `key`."""
        return Writer(self, key)

    def meta(self, key: bytes) -> Meta | None:
        """The stored metadata for `key`, or None (absent or unreadable: treated as a miss)."""
        name = digest(key)
        _, meta_path = self.paths(name)
        try:
            with open(meta_path, "rb") as f:
                meta = Meta.loads(f.read())
        except (OSError, ValueError, TypeError, KeyError):
            return None
        if meta.key != key.decode("latin-1"):
            return None  # a digest collision would be astronomically rare; never serve the wrong object
        if name in self.index:
            self.index.move_to_end(name)
        return meta

    def body_path(self, key: bytes) -> str:
        """Where the body of `key` is (for opening and sendfile)."""
        return self.paths(digest(key))[0]

    def admitted(self, name: str, size: int) -> None:
        """Account a newly published object, then evict down to max_size."""
        if self.report is not None:
            self.report(name, size)
            return
        old = self.index.pop(name, None)
        if old is not None:
            self.size -= old
        self.index[name] = size
        self.size += size
        self.evict()

    def evict(self) -> None:
        """Remove least recently used objects until the total fits max_size."""
        while self.size > self.max_size and self.index:
            name, size = self.index.popitem(last=False)
            self.size -= size
            self.evictions += 1
            self._unlink(name)

    def remove(self, key: bytes) -> bool:
        """Purge one object; True when it was there."""
        name = digest(key)
        size = self.index.pop(name, None)
        if size is not None:
            self.size -= size
        return self._unlink(name) or size is not None

    def _unlink(self, name: str) -> bool:
        body, meta_path = self.paths(name)
        gone = False
        for path in (meta_path, body):  # metadata first: a reader never finds metadata without its body
            try:
                os.unlink(path)
                gone = True
            except FileNotFoundError:
                pass
        return gone
