"""The on-disk object cache: complete bodies with their metadata, published by atomic rename, LRU under a size.

Layout under the cache directory (shared by every worker of a node):
  objects/ab/<digest>        the body, exactly as served (sendfile-able like any local file), its
                             JSON metadata (key, status, headers, freshness, tags, length) in the
                             extended attribute user.edge.meta
  objects/ab/<digest>.meta   the metadata instead, where the filesystem has no user xattrs (tmpfs
                             before Linux 6.6) or it is too big for one
  tmp/                       bodies being written, cleared at start; a fetch other workers may follow
                             writes tmp/<digest>.fetch (one per key: the fetching worker holds the key's
                             lock) with its metadata in user.edge.meta and a few flags in user.edge.head;
                             any other body is written there without a name (O_TMPFILE) and linked
                             into place, where the filesystem allows (else under a temp name)
The metadata is set on the body before the body is renamed (or linked) into place, so a reader sees nothing or
a complete object with its metadata, and a stored object costs one inode, not two (allocating an
inode was the largest single cost of a cache miss, measured on ext4). With a sidecar file the body
is renamed first; a reader that finds no metadata treats the body as absent.
"""

from __future__ import annotations

import errno
import json
import os
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from .cachekey import digest
from .purge import Purge, PurgeIndex
from .storefaults import reason_of
from .variants import Families, indexed_key


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
    vary: str = ""  # a marker: its answers vary by these fields (comma-joined), stored as edge/variants.py says

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
#: On a temp body other workers follow: b"<shared> <known length> <fetcher's pid>" (see parse_head), set after
#: its metadata (XATTR). A dozen bytes fit in the inode: removing them at the commit is cheap, where the old
#: head, metadata included, sat in its own xattr block and removing it cost ~130 µs on the event loop (ext4).
HEAD_XATTR = "user.edge.head"
#: On a temp body whose writer could not go on writing it: b"<fetcher's pid> <fd>", the memory file the rest
#: goes to, which followers open as /proc/<pid>/fd/<fd> (see Writer.spill).
SPILL_XATTR = "user.edge.spill"
#: Seconds check_room trusts a statvfs figure of the free space for (less the bodies it admitted since).
ROOM_FRESH = 0.05
#: Bytes of one body a writer keeps in memory once the disk refuses it (beyond: the body fails).
SPILL_MAX = 1 << 30
_ENCODE = json.JSONEncoder(separators=(",", ":"), check_circular=False).encode  # no cycles in a Meta


def parse_head(data: bytes) -> tuple[bool, bool, int]:
    """A HEAD_XATTR value: (may be shared, length known, the fetching worker's pid); ValueError when it is
    not one."""
    shared, known, pid = data.split()
    return shared == b"1", known == b"1", int(pid)


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


def spill_name(tmp: str) -> str:
    """The name of the memory file a body goes on in once the disk refused its temp file `tmp`."""
    return "edge-" + os.path.basename(tmp)


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
    """A body being fetched: written to tmp/, published by commit() only if complete.

    When the disk refuses it (full, quota, read-only, I/O error) at any step, the body goes on in an
    anonymous memory file under the same fd number, so its readers never notice; `failed` then names
    the reason and nothing is stored.
    """

    def __init__(self, store: DiskCache, key: bytes, name: str | None = None, followed: str | None = None,
                 length: int | None = None) -> None:
        self.store = store
        self.key = key
        self.name = name or digest(key)  # name: digest(key), when the caller has it
        self.owned = True  # False once detach() handed the open file to a reader
        self.headed = False
        self.written = 0
        self.meta_set: bytes | None = None  # the metadata publish_head set on the temp file
        self.failed: str | None = None  # the reason (storefaults.REASONS) the disk refused this body
        self.error = ""
        self.spill_fd = -1  # a copy of the memory file's fd that followers in other workers open
        self.ino = 0
        self.fd = -1
        # followed: the digest of the key whose lock the caller holds; its body goes to tmp/<followed>.fetch,
        # where other workers find it (a leftover of a worker that died there is replaced). A body nobody
        # follows gets no name until commit() links it into place (O_TMPFILE): no entry made in tmp/ and
        # renamed out of it again (~7 µs of a miss, measured on ext4), nothing left behind by a crash.
        self.tmp = store.follow_path(followed) if followed is not None else ""
        try:
            store.check_room(length)
            if followed is None:
                self.fd = store.unnamed_file()
                if self.fd < 0:  # no unnamed files here (see DiskCache._probe_unnamed)
                    self.tmp = store.temp_path(self.name)
            if self.fd < 0:
                flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
                try:
                    self.fd = os.open(self.tmp, flags, 0o644)
                except FileExistsError:
                    if followed is None:
                        raise
                    os.unlink(self.tmp)
                    self.fd = os.open(self.tmp, flags, 0o644)
            # A followed temp file's inode: abort() unlinks the name only while it is still this file.
            self.ino = os.fstat(self.fd).st_ino if followed is not None else 0
        except OSError as e:
            self.tmp = ""
            self.spill(e)

    def spill(self, error: OSError) -> None:
        """The disk refused this body: go on in memory, under the same fd number (readers keep theirs)."""
        memory = os.memfd_create(spill_name(self.tmp or self.name), os.MFD_CLOEXEC)
        try:
            done = 0
            while done < self.written:  # what reached the temp file so far, copied over
                piece = os.pread(self.fd, min(1 << 20, self.written - done), done)
                if not piece:
                    raise OSError(errno.EIO, "the temp file lost bytes it had taken")
                done += os.write(memory, piece)
        except BaseException:
            os.close(memory)
            raise
        if self.fd >= 0:
            os.dup2(memory, self.fd)  # the temp file's description closes; the number is the memory file's now
            os.close(memory)
        else:
            self.fd = memory
        if self.failed is None:
            self.failed = reason_of(error)
            self.error = error.strerror or str(error)
        if self.headed and self.tmp:
            try:  # followers in other workers switch to the memory file (best effort: the disk is in trouble)
                self.spill_fd = os.dup(self.fd)
                os.setxattr(self.tmp, SPILL_XATTR, b"%d %d" % (self.store.pid, self.spill_fd))
            except OSError:
                pass

    def publish_head(self, shared: bool, known: bool, meta_data: bytes) -> bool:
        """Let other workers follow this body as it grows (see HEAD_XATTR): whether they may share it, whether
        meta_data (Meta.dumps()) has its final length; False where there are no xattrs (or no temp file)."""
        if self.failed is not None and not self.headed:
            return False
        target = self.fd if self.failed is None else self.tmp
        try:
            if meta_data != self.meta_set:  # first, so a follower that finds the head finds the metadata
                os.setxattr(target, XATTR, meta_data)
                self.meta_set = meta_data
            os.setxattr(target, HEAD_XATTR, b"%d %d %d" % (shared, known, self.store.pid))
        except OSError:
            return False
        self.headed = True
        return True

    def detach(self) -> int:
        """Hand the open file to another owner, who closes it (this writer still writes and commits)."""
        self.owned = False
        return self.fd

    def write(self, chunk: bytes) -> None:
        """Append a piece of the body (to memory once the disk refused it)."""
        view = memoryview(chunk)
        while view:
            try:
                if self.failed is not None and self.written + len(view) > SPILL_MAX:
                    raise OSError(errno.ENOMEM, f"more than {SPILL_MAX} bytes of one body held in memory")
                n = os.write(self.fd, view)
            except OSError as e:
                if self.failed is not None:
                    raise  # memory refused it too: the body cannot go on
                self.spill(e)
                continue
            view = view[n:]
            self.written += n

    def commit(self, meta: Meta, data: bytes | None = None) -> bool:
        """Publish the object if its body has exactly `meta.length` bytes; otherwise discard it.

        `data`: meta.dumps(), when the caller made it already. False, storing nothing, when the disk
        refuses the metadata or the rename (`failed` says why) or refused the body before."""
        if self.fd < 0 or self.failed is not None:
            self.abort()
            return False
        if self.written != meta.length:
            self.abort()
            return False
        if data is None:
            data = meta.dumps()
        body, meta_path = self.store.paths(self.name)
        sidecar = None
        renamed = False
        try:
            if self.headed:
                os.removexattr(self.fd, HEAD_XATTR)  # a stored object has no followers
            try:
                if data != self.meta_set:  # as publish_head left it when the length was known from the start
                    os.setxattr(self.fd, XATTR, data)
            except OSError as e:
                # ENOSPC may say only that the value does not fit one xattr block (ext4: ~4 KiB): the sidecar
                # write that follows fails too when the disk itself is full.
                if e.errno in (errno.EDQUOT, errno.EIO, errno.EROFS):
                    raise
                if self.meta_set is not None:
                    os.removexattr(self.fd, XATTR)  # the head's metadata, not this: readers would take it
                # no user xattrs on this filesystem, or too much for one
                sidecar = (self.tmp or self.store.temp_path(self.name)) + ".meta"
                write_file(sidecar, data)
            if self.tmp:
                os.replace(self.tmp, body)
            else:
                self.store.link_unnamed(self.fd, body)
            renamed = True
            if sidecar is not None:
                os.replace(sidecar, meta_path)
        except OSError as e:
            self.failed, self.error = reason_of(e), e.strerror or str(e)
            for leftover in (sidecar, body if renamed else None):
                if leftover is not None:
                    try:
                        os.unlink(leftover)  # a body renamed without its metadata would be read as absent anyway
                    except OSError:
                        pass
            self.abort()
            return False
        if self.owned:
            os.close(self.fd)
        self.fd = -1
        self.store.admitted(self.name, meta.length, indexed_key(meta.key, bool(meta.vary)), meta.tags)
        return True

    def abort(self) -> None:
        """Throw the partial body away (a truncated or failed fetch is never cached)."""
        if self.fd >= 0:
            if self.owned:
                os.close(self.fd)
            self.fd = -1
        if not self.tmp:
            return
        try:
            if self.ino and os.stat(self.tmp).st_ino != self.ino:
                return  # another fetch's file under the same name now: not ours to remove
            os.unlink(self.tmp)
        except FileNotFoundError:
            pass
        except OSError:
            pass  # a read-only or failing disk: the manager clears tmp/ at the next start


class DiskCache:
    """Objects on disk by key, with an in-process LRU index of their sizes kept under `max_size` bytes."""

    def __init__(self, root: str, max_size: int, report: Callable[[str, int, str, list[str]], None] | None = None,
                 keys: PurgeIndex | None = None, min_free: int = 0, max_variants: int = 16) -> None:
        self.root = root
        #: In the cache manager, beside `keys`: each key's variants, capped at max_variants (edge/variants.py).
        self.families = Families(max_variants) if keys is not None else None
        self.min_free = min_free  # bytes the filesystem keeps free: no store below it, evictions restore it
        #: In the cache manager: the objects' keys and tags, for purges by path, prefix and tag.
        self.keys = keys
        #: In a worker: tell the node's cache manager of a new object instead of indexing it here.
        self.report = report
        self.max_size = max_size
        self.objects_dir = os.path.join(root, "objects")
        self.tmp_dir = os.path.join(root, "tmp")
        self.pid = os.getpid()  # in temp names (a DiskCache is made in the process that writes with it)
        self.proc_fds = -1  # /proc/self/fd, opened at the first unnamed file (-2: no unnamed files here)
        self.proc_pid = 0  # the process that set proc_fds
        os.makedirs(self.tmp_dir, exist_ok=True)
        for i in range(256):  # every objects/ab/ made once here, not checked on every store
            os.makedirs(os.path.join(self.objects_dir, f"{i:02x}"), exist_ok=True)
        self.purges: list[tuple[float, Purge]] = []  # (wall time, purge) of the last PURGE_MEMORY seconds
        self.index: OrderedDict[str, int] = OrderedDict()  # digest -> body size, least recent first
        self.size = 0
        self.evictions = 0
        self.room = 0  # free bytes on the filesystem as last seen by check_room, less what it admitted since
        self.room_until = 0.0  # monotonic time until which `room` is trusted

    def temp_path(self, name: str) -> str:
        """A new name in tmp/ for a body or metadata of digest `name` being written by this process."""
        return f"{self.tmp_dir}/{name}.{self.pid}.{time.monotonic_ns()}"

    def unnamed_file(self) -> int:
        """A new file in tmp/ without a name (O_TMPFILE), open read-write; -1 where this process cannot write one
        and link it into place (see _probe_unnamed). OSError when the disk refuses it."""
        pid = os.getpid()
        if self.proc_pid != pid:  # first use, or a forked process: its own /proc/self
            if self.proc_fds >= 0:
                os.close(self.proc_fds)
                self.proc_fds = -1
            self.proc_fds = self._probe_unnamed()  # OSError: the disk refuses files now; tried again next time
            self.proc_pid = pid
        if self.proc_fds < 0:
            return -1
        return os.open(self.tmp_dir, os.O_RDWR | os.O_TMPFILE | os.O_CLOEXEC, 0o644)

    def _probe_unnamed(self) -> int:
        """/proc/self/fd, open, when this process can link an unnamed file into tmp/ through it; else -2: no
        O_TMPFILE on this filesystem, no /proc, or /proc/self not this process's to use (not dumpable after
        a change of user). Tried once with a file of its own, so a store never finds out at its commit; OSError
        when the disk refuses it (full, quota, read-only, I/O error), which says nothing either way."""
        proc = fd = -1
        try:
            proc = os.open("/proc/self/fd", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            fd = os.open(self.tmp_dir, os.O_RDWR | os.O_TMPFILE | os.O_CLOEXEC, 0o644)
            probe = self.temp_path("probe")
            os.link(str(fd), probe, src_dir_fd=proc)
            os.unlink(probe)
            return proc
        except OSError as e:
            if proc >= 0:
                os.close(proc)
            if reason_of(e) != "other":
                raise
            return -2
        finally:
            if fd >= 0:
                os.close(fd)

    def link_unnamed(self, fd: int, path: str) -> None:
        """Give the unnamed file open as `fd` the name `path`, atomically replacing any file there."""
        try:
            os.link(str(fd), path, src_dir_fd=self.proc_fds)  # linkat(AT_SYMLINK_FOLLOW) on /proc/self/fd/<fd>
            return
        except FileExistsError:
            pass  # a link never replaces: name it in tmp/, then rename that over the old object
        tmp = self.temp_path(os.path.basename(path))
        os.link(str(fd), tmp, src_dir_fd=self.proc_fds)
        try:
            os.replace(tmp, path)
        except OSError:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise

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
                key = indexed_key(meta.key, bool(meta.vary)) if meta is not None else ""
                found.append((st.st_atime, name, st.st_size, key))
                if meta is not None:
                    self.keys.add(name, key, meta.tags)
        found.sort()
        self.index = OrderedDict((name, size) for _, name, size, _ in found)
        self.size = sum(size for _, _, size, _ in found)
        if self.families is not None:
            for _, name, _, key in found:  # least recently used first, as the cap drops the oldest
                self._displace(self.families.add(name, key))
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
                    found.append((name, size, indexed_key(meta.key, bool(meta.vary)), meta.tags, meta.stored_at))
        return found

    def remember(self, purge: Purge, now: float) -> None:
        """(Manager) Note a purge made at wall time `now`: an object stored before it but indexed after it
        (its report was lost, see unindexed) is removed, not indexed."""
        self.purges = [p for p in self.purges if p[0] >= now - PURGE_MEMORY]
        self.purges.append((now, purge))

    def purged_after(self, stored_at: float, key: str, tags: list[str]) -> bool:
        """Has a purge naming this object been made since it was stored (wall time `stored_at`)?"""
        return any(when >= stored_at and purge.matches_key(key, tags) for when, purge in self.purges)

    def writer(self, key: bytes, name: str | None = None, followed: str | None = None,
               length: int | None = None) -> Writer:
        """Start storing the object for `key` (whose digest is `name`, if known, and body `length` bytes,
        if known); `followed`: see Writer."""
        return Writer(self, key, name, followed, length)

    def check_room(self, length: int | None) -> None:
        """OSError(ENOSPC) unless the filesystem keeps min_free bytes free with a body of `length` bytes
        (unknown: 0) on it, so a store that cannot succeed says so before the answer goes out.

        The free space is asked of the filesystem at most every ROOM_FRESH seconds, less what was admitted
        since, and again whenever the estimate says no (a statvfs per object was ~2 % of a miss)."""
        need = (length or 0) + self.min_free
        now = time.monotonic()
        if self.room < need or now >= self.room_until:
            st = os.statvfs(self.tmp_dir)
            self.room = st.f_bavail * st.f_frsize
            self.room_until = now + ROOM_FRESH
            if self.room < need:
                raise OSError(errno.ENOSPC, f"less than {self.min_free} bytes would stay free")
        self.room -= length or 0

    def free_bytes(self) -> int:
        """Bytes free on the cache's filesystem for this process."""
        st = os.statvfs(self.root)
        return st.f_bavail * st.f_frsize

    def make_room(self) -> int:
        """Evict least recently used objects until min_free bytes are free (a store failed); returns how many."""
        evicted = 0
        while self.index and self.free_bytes() < self.min_free:
            name, size = self.index.popitem(last=False)
            self.size -= size
            self.evictions += 1
            evicted += 1
            self._unlink(name)
        return evicted

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
        if self.families is not None and key:
            self._displace(self.families.add(name, key))
        self.evict()

    def _displace(self, names: list[str]) -> None:
        """Remove variants a newer one displaced (over max_variants, or of a Vary set replaced since)."""
        for name in names:
            size = self.index.pop(name, None)
            if size is not None:
                self.size -= size
                self.evictions += 1
            self._unlink(name)

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
            if self.families is not None:
                self.families.discard(name)
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
        if self.families is not None:
            self.families.discard(name)
        body, meta_path = self.paths(name)
        gone = False
        for path in (meta_path, body):  # metadata first: a reader never finds metadata without its body
            try:
                os.unlink(path)
                gone = True
            except FileNotFoundError:
                pass
        return gone
