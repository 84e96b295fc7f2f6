"""The on-disk object cache: complete bodies with their metadata, published by atomic rename, LRU under a size.

Layout under the cache directory (shared by every worker of a node):
  objects/ab/<digest>        the body, exactly as served (sendfile-able like any local file), its
                             JSON metadata (key, status, headers, freshness, tags, length) in the
                             extended attribute user.edge.meta
  objects/ab/<digest>.meta   the metadata instead, where the filesystem has no user xattrs (tmpfs
                             before Linux 6.6) or it is too big for one
  tmp/                       bodies being written, cleared at start; a fetch other workers may follow
                             writes tmp/<digest>.fetch (one per key: the fetching worker holds the key's
                             lock) with its response head in the extended attribute user.edge.head
The metadata is set on the body before the body is renamed into place, so a reader sees nothing or
a complete object with its metadata, and a stored object costs one inode, not two (allocating an
inode was the largest single cost of a cache miss, measured on ext4). With a sidecar file the body
is renamed first; a reader that finds no metadata treats the body as absent.
"""

from __future__ import annotations

import json
import os
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from .cachekey import digest
from .purge import Purge, PurgeIndex


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
        return _ENCODE(self.__dict__).encode()  # asdict() deep-copies: slow

    @classmethod
    def loads(cls, data: bytes) -> Meta:
        """Parse a metadata file (ValueError/TypeError/KeyError when it is not one)."""
        raw = json.loads(data)
        raw["headers"] = [(str(k), str(v)) for k, v in raw["headers"]]
        return cls(**raw)


XATTR = "user.edge.meta"
#: Seconds the manager remembers a purge for objects it indexes late (stored seconds at most before that).
PURGE_MEMORY = 60.0
#: On a temp body other workers follow: b"<shared> <known length> <fetcher's pid>\n" + metadata (see parse_head).
HEAD_XATTR = "user.edge.head"
_ENCODE = json.JSONEncoder(separators=(",", ":")).encode


def parse_head(data: bytes) -> tuple[bool, bool, int, Meta]:
    """A HEAD_XATTR value: (may be shared, length known, the fetching worker's pid, metadata);
    ValueError/TypeError/KeyError when it is not one."""
    flags, _, raw = data.partition(b"\n")
    shared, known, pid = flags.split()
    return shared == b"1", known == b"1", int(pid), Meta.loads(raw)


def process_alive(pid: int) -> bool:
    """Is the worker that wrote a temp file (its pid in the name or head) still there? A pid is not reused
    within the life of a temp file."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def write_file(path: str, data: bytes) -> None:
    """Create or truncate `path` with `data` (a few hundred bytes: one write on a regular file)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def _has_xattr(path: str) -> bool:
    try:
        os.getxattr(path, XATTR)
        return True
    except OSError:
        return False


def read_meta(body: str, meta_path: str) -> Meta | None:
    """An object's metadata from its body's xattr, else its sidecar file; None when absent or unreadable."""
    try:
        data = os.getxattr(body, XATTR)
    except OSError:
        try:
            with open(meta_path, "rb") as f:
                data = f.read()
        except OSError:
            return None
    try:
        return Meta.loads(data)
    except (ValueError, TypeError, KeyError):
        return None


def rewrite_meta(body: str, meta_path: str, meta: Meta) -> int:
    """Replace a stored object's metadata (after a 304); returns the body's new ctime (its change stamp)."""
    data = meta.dumps()
    try:
        os.setxattr(body, XATTR, data)
    except FileNotFoundError:
        raise  # purged or evicted meanwhile: no metadata without its body
    except OSError:
        tmp = f"{meta_path}.{os.getpid()}.tmp"
        write_file(tmp, data)
        os.replace(tmp, meta_path)
        os.utime(body)  # the body's ctime is what readers compare to notice a change
    return os.stat(body).st_ctime_ns


class Writer:
    """A body being fetched: written to tmp/, published by commit() only if complete."""

    def __init__(self, store: DiskCache, key: bytes, name: str | None = None, followed: str | None = None) -> None:
        self.store = store
        self.key = key
        self.name = name or digest(key)  # name: digest(key), when the caller has it
        # followed: the digest of the key whose lock the caller holds; its body goes to tmp/<followed>.fetch,
        # where other workers find it (a leftover of a worker that died there is replaced).
        self.tmp = (store.follow_path(followed) if followed is not None
                    else f"{store.tmp_dir}/{self.name}.{store.pid}.{time.monotonic_ns()}")
        flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
        try:
            self.fd = os.open(self.tmp, flags, 0o644)
        except FileExistsError:
            if followed is None:
                raise
            os.unlink(self.tmp)
            self.fd = os.open(self.tmp, flags, 0o644)
        self.owned = True  # False once detach() handed the open file to a reader
        self.headed = False
        self.written = 0
        # A followed temp file's inode: abort() unlinks the name only while it is still this file.
        self.ino = os.fstat(self.fd).st_ino if followed is not None else 0

    def publish_head(self, shared: bool, known: bool, meta_data: bytes) -> bool:
        """Let other workers follow this body as it grows (see HEAD_XATTR): whether they may share it, whether
        meta_data (Meta.dumps()) has its final length; False where there are no xattrs."""
        try:
            os.setxattr(self.fd, HEAD_XATTR, b"%d %d %d\n%s" % (shared, known, self.store.pid, meta_data))
        except OSError:
            return False
        self.headed = True
        return True

    def detach(self) -> int:
        """Hand the open file to another owner, who closes it (this writer still writes and commits)."""
        self.owned = False
        return self.fd

    def write(self, chunk: bytes) -> None:
        """Append a piece of the body."""
        view = memoryview(chunk)
        while view:
            n = os.write(self.fd, view)
            view = view[n:]
            self.written += n

    def commit(self, meta: Meta, data: bytes | None = None) -> bool:
        """Publish the object if its body has exactly `meta.length` bytes; otherwise discard it.

        `data`: meta.dumps(), when the caller made it already."""
        if self.fd < 0:
            return False
        if self.written != meta.length:
            self.abort()
            return False
        if data is None:
            data = meta.dumps()
        body, meta_path = self.store.paths(self.name)
        if self.headed:
            os.removexattr(self.fd, HEAD_XATTR)  # a stored object has no followers
        try:
            os.setxattr(self.fd, XATTR, data)
            sidecar = None
        except OSError:  # no user xattrs on this filesystem, or too much for one
            sidecar = self.tmp + ".meta"
            write_file(sidecar, data)
        if self.owned:
            os.close(self.fd)
        self.fd = -1
        os.replace(self.tmp, body)
        if sidecar is not None:
            os.replace(sidecar, meta_path)
        self.store.admitted(self.name, meta.length, meta.key, meta.tags)
        return True

    def abort(self) -> None:
        """Throw the partial body away (a truncated or failed fetch is never cached)."""
        if self.fd >= 0:
            if self.owned:
                os.close(self.fd)
            self.fd = -1
        try:
            if self.ino and os.stat(self.tmp).st_ino != self.ino:
                return  # another fetch's file under the same name now: not ours to remove
            os.unlink(self.tmp)
        except FileNotFoundError:
            pass


class DiskCache:
    """Objects on disk by key, with an in-process LRU index of their sizes kept under `max_size` bytes."""

    def __init__(self, root: str, max_size: int, report: Callable[[str, int, str, list[str]], None] | None = None,
                 keys: PurgeIndex | None = None) -> None:
        self.root = root
        #: In the cache manager: the objects' keys and tags, for purges by path, prefix and tag.
        self.keys = keys
        #: In a worker: tell the node's cache manager of a new object instead of indexing it here.
        self.report = report
        self.max_size = max_size
        self.objects_dir = os.path.join(root, "objects")
        self.tmp_dir = os.path.join(root, "tmp")
        self.pid = os.getpid()  # in temp names (a DiskCache is made in the process that writes with it)
        os.makedirs(self.tmp_dir, exist_ok=True)
        for i in range(256):  # every objects/ab/ made once here, not checked on every store
            os.makedirs(os.path.join(self.objects_dir, f"{i:02x}"), exist_ok=True)
        self.purges: list[tuple[float, Purge]] = []  # (wall time, purge) of the last PURGE_MEMORY seconds
        self.index: OrderedDict[str, int] = OrderedDict()  # digest -> body size, least recent first
        self.size = 0
        self.evictions = 0

    def follow_path(self, name: str) -> str:
        """Where the body of the fetch holding the lock of digest `name` is being written."""
        return f"{self.tmp_dir}/{name}.fetch"

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
        for folder, names in self._folders():
            present = set(names)
            for name in names:
                path = os.path.join(folder, name)
                if name.endswith(".meta"):
                    if name[:-5] not in present and clear_tmp:
                        os.unlink(path)  # a sidecar without its body
                    continue
                meta = read_meta(path, path + ".meta") if self.keys is not None else None
                if clear_tmp and meta is None and name + ".meta" not in present and not _has_xattr(path):
                    os.unlink(path)  # a body whose metadata never landed (a crash between two renames)
                    continue
                try:
                    st = os.stat(path)
                except FileNotFoundError:
                    continue  # evicted or purged while we looked
                found.append((st.st_atime, name, st.st_size))
                if meta is not None:
                    self.keys.add(name, meta.key, meta.tags)
        found.sort()
        self.index = OrderedDict((name, size) for _, name, size in found)
        self.size = sum(size for _, _, size in found)
        self.evict()
        return len(self.index)

    def _folders(self) -> Iterator[tuple[str, list[str]]]:
        """Each objects/ab/ folder with the names in it."""
        for sub in os.listdir(self.objects_dir):
            folder = os.path.join(self.objects_dir, sub)
            try:
                yield folder, os.listdir(folder)
            except NotADirectoryError:
                continue

    def unindexed(self) -> list[tuple[str, int, str, list[str], float]]:
        """Objects on disk the index does not hold, as (digest, size, key, tags, stored_at): those whose
        reports were lost (a worker died before sending them). Reads the index without changing it: safe
        in a thread."""
        found = []
        for folder, names in self._folders():
            for name in names:
                if "." in name or name in self.index:
                    continue  # a sidecar, or known
                path = os.path.join(folder, name)
                meta = read_meta(path, path + ".meta")
                try:
                    size = os.stat(path).st_size
                except OSError:
                    continue
                if meta is not None and size == meta.length:
                    found.append((name, size, meta.key, meta.tags, meta.stored_at))
        return found

    def remember(self, purge: Purge, now: float) -> None:
        """(Manager) Note a purge made at wall time `now`: an object stored before it but indexed after it
        (its report was lost, see unindexed) is removed, not indexed."""
        self.purges = [p for p in self.purges if p[0] >= now - PURGE_MEMORY]
        self.purges.append((now, purge))

    def purged_after(self, stored_at: float, key: str, tags: list[str]) -> bool:
        """Has a purge naming this object been made since it was stored (wall time `stored_at`)?"""
        return any(when >= stored_at and purge.matches_key(key, tags) for when, purge in self.purges)

    def writer(self, key: bytes, name: str | None = None, followed: str | None = None) -> Writer:
        """Start storing the object for `key` (whose digest is `name`, if known); `followed`: see Writer."""
        return Writer(self, key, name, followed)

    def meta(self, key: bytes) -> Meta | None:
        """The stored metadata for `key`, or None (absent or unreadable: treated as a miss)."""
        name = digest(key)
        meta = read_meta(*self.paths(name))
        if meta is None:
            return None
        if meta.key != key.decode("latin-1"):
            return None  # a digest collision would be astronomically rare; never serve the wrong object
        if name in self.index:
            self.index.move_to_end(name)
        return meta

    def body_path(self, key: bytes) -> str:
        """Where the body of `key` is (for opening and sendfile)."""
        return self.paths(digest(key))[0]

    def admitted(self, name: str, size: int, key: str = "", tags: list[str] | tuple[str, ...] = ()) -> None:
        """Account a newly published object, then evict down to max_size."""
        if self.report is not None:
            self.report(name, size, key, list(tags))
            return
        if self.keys is not None and key:
            self.keys.add(name, key, tags)
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

    def take(self, purge: Purge) -> list[str]:
        """Forget the objects `purge` names (by the key index) and return them, for unlink_all()."""
        if self.keys is None:
            return []
        names = list(self.keys.select(purge))
        for name in names:
            size = self.index.pop(name, None)
            if size is not None:
                self.size -= size
            self.keys.discard(name)
        return names

    def unlink_all(self, names: list[str]) -> None:
        """Remove the files of objects already forgotten (thread-safe: touches no index)."""
        for name in names:
            for path in self.paths(name)[::-1]:  # metadata sidecar first, then the body
                try:
                    os.unlink(path)
                except FileNotFoundError:
                    pass

    def purge(self, purge: Purge) -> int:
        """Remove the objects `purge` names; how many went."""
        names = self.take(purge)
        self.unlink_all(names)
        return len(names)

    def remove(self, key: bytes) -> bool:
        """Purge one object; True when it was there."""
        name = digest(key)
        size = self.index.pop(name, None)
        if size is not None:
            self.size -= size
        return self._unlink(name) or size is not None

    def _unlink(self, name: str) -> bool:
        if self.keys is not None:
            self.keys.discard(name)
        body, meta_path = self.paths(name)
        gone = False
        for path in (meta_path, body):  # metadata first: a reader never finds metadata without its body
            try:
                os.unlink(path)
                gone = True
            except FileNotFoundError:
                pass
        return gone
