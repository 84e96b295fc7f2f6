"""The on-disk object cache (edge/diskcache.py): atomic publish, no partial objects, rebuild, LRU eviction."""

from __future__ import annotations

import errno
import os
import time
from pathlib import Path

import pytest

from edge import diskcache
from edge.cachekey import digest
from edge.diskcache import HEAD_XATTR, XATTR, DiskCache, Meta, parse_head, rewrite_meta


def meta_for(key: bytes, body: bytes, **extra) -> Meta:
    """Metadata for a 200 with `body`."""
    fields = dict(key=key.decode(), status=200, headers=[("content-type", "text/plain")], length=len(body),
                  stored_at=1.0, request_time=1.0, lifetime=60.0, initial_age=0.0)
    fields.update(extra)
    return Meta(**fields)


def store(cache: DiskCache, key: bytes, body: bytes, **extra) -> bool:
    """Write and commit one object in two pieces."""
    w = cache.writer(key)
    w.write(body[: len(body) // 2])
    w.write(body[len(body) // 2:])
    return w.commit(meta_for(key, body, **extra))


def test_a_committed_object_is_readable_with_its_metadata(tmp_path: Path):
    cache = DiskCache(str(tmp_path), 1 << 20)
    assert store(cache, b"/a?v=1", b"hello body", tags=["t1", "t2"])
    meta = cache.meta(b"/a?v=1")
    assert meta is not None and meta.status == 200 and meta.tags == ["t1", "t2"]
    assert meta.headers == [("content-type", "text/plain")]
    assert Path(cache.body_path(b"/a?v=1")).read_bytes() == b"hello body"
    assert cache.size == len(b"hello body") and list(os.listdir(cache.tmp_dir)) == []


def test_a_body_nobody_follows_has_no_name_until_it_is_published_and_replaces_the_stored_one(tmp_path: Path):
    cache = DiskCache(str(tmp_path), 1 << 20)
    assert store(cache, b"/r", b"first body")
    w = cache.writer(b"/r")
    w.write(b"second, longer body")
    assert w.tmp == "" and os.listdir(cache.tmp_dir) == []  # O_TMPFILE: nothing in tmp/ to clear after a crash
    assert Path(cache.body_path(b"/r")).read_bytes() == b"first body"  # readers see the old one meanwhile
    assert w.commit(meta_for(b"/r", b"second, longer body"))
    assert Path(cache.body_path(b"/r")).read_bytes() == b"second, longer body"
    assert cache.meta(b"/r").length == len(b"second, longer body") and os.listdir(cache.tmp_dir) == []
    assert cache.size == len(b"second, longer body")


def test_a_forked_process_links_its_own_unnamed_files(tmp_path: Path):
    # /proc/self/fd opened before a fork is the parent's: a child linking its fd number through it would
    # publish whatever file the parent has open under that number.
    cache = DiskCache(str(tmp_path), 1 << 20)
    assert store(cache, b"/parent", b"parent's body")
    held = cache.writer(b"/held")  # the parent keeps an unnamed file open meanwhile
    held.write(b"held by the parent")
    pid = os.fork()
    if pid == 0:
        ok = False
        try:
            ok = store(cache, b"/child", b"child's body") and \
                Path(cache.body_path(b"/child")).read_bytes() == b"child's body"
        finally:
            os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert Path(cache.body_path(b"/child")).read_bytes() == b"child's body"
    held.abort()


def test_a_full_disk_at_the_first_body_does_not_rule_out_unnamed_files_later(tmp_path: Path, monkeypatch):
    real_open = os.open
    full = [True]

    def open_(path, flags, *args, **kwargs):
        if full[0] and flags & os.O_TMPFILE == os.O_TMPFILE:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", open_)
    cache = DiskCache(str(tmp_path), 1 << 20)
    w = cache.writer(b"/f")
    w.write(b"body")
    assert w.failed == "disk-full" and not w.commit(meta_for(b"/f", b"body"))  # answered from memory, not stored
    full[0] = False
    assert store(cache, b"/f", b"body")
    assert cache.proc_fds >= 0 and Path(cache.body_path(b"/f")).read_bytes() == b"body"


@pytest.mark.parametrize("refusal", ["no O_TMPFILE", "no /proc", "/proc/self/fd not ours"])
def test_without_unnamed_files_a_body_is_written_under_a_temp_name(tmp_path: Path, monkeypatch, refusal):
    real_open, real_link = os.open, os.link

    def link(src, dst, *args, **kwargs):
        if refusal == "/proc/self/fd not ours" and kwargs.get("src_dir_fd") is not None:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))  # a process no longer dumpable
        return real_link(src, dst, *args, **kwargs)

    def open_(path, flags, *args, **kwargs):
        if refusal == "no O_TMPFILE" and flags & os.O_TMPFILE == os.O_TMPFILE:
            raise OSError(errno.EOPNOTSUPP, os.strerror(errno.EOPNOTSUPP))
        if refusal == "no /proc" and path == "/proc/self/fd":
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", open_)
    monkeypatch.setattr(os, "link", link)
    cache = DiskCache(str(tmp_path), 1 << 20)
    for body in (b"first body", b"second body"):
        w = cache.writer(b"/n")
        w.write(body)
        assert w.tmp and os.listdir(cache.tmp_dir) == [os.path.basename(w.tmp)]
        assert w.commit(meta_for(b"/n", body))
        assert Path(cache.body_path(b"/n")).read_bytes() == body and os.listdir(cache.tmp_dir) == []
    assert cache.proc_fds == -2  # asked once, not on every body


def test_a_short_body_is_never_published(tmp_path: Path):
    cache = DiskCache(str(tmp_path), 1 << 20)
    w = cache.writer(b"/cut")
    w.write(b"only part")
    assert not w.commit(meta_for(b"/cut", b"only part of the body"))
    assert cache.meta(b"/cut") is None and not os.path.exists(cache.body_path(b"/cut"))
    assert os.listdir(cache.tmp_dir) == []


def test_abort_leaves_nothing(tmp_path: Path):
    cache = DiskCache(str(tmp_path), 1 << 20)
    w = cache.writer(b"/gone")
    w.write(b"x" * 100)
    w.abort()
    assert os.listdir(cache.tmp_dir) == [] and cache.meta(b"/gone") is None


def test_while_writing_readers_see_nothing(tmp_path: Path):
    cache = DiskCache(str(tmp_path), 1 << 20)
    w = cache.writer(b"/slow")
    w.write(b"first half")
    assert cache.meta(b"/slow") is None and not os.path.exists(cache.body_path(b"/slow"))
    w.write(b"+second")
    assert w.commit(meta_for(b"/slow", b"first half+second"))
    assert cache.meta(b"/slow") is not None


def test_rebuild_indexes_objects_and_drops_orphans(tmp_path: Path):
    cache = DiskCache(str(tmp_path), 1 << 20)
    for i in range(5):
        assert store(cache, b"/o%d" % i, b"x" * (10 + i))
    _, orphan_meta = cache.paths(digest(b"/orphan-meta"))
    os.makedirs(os.path.dirname(orphan_meta), exist_ok=True)
    Path(orphan_meta).write_bytes(meta_for(b"/orphan-meta", b"").dumps())
    Path(cache.tmp_dir, "leftover.tmp").write_bytes(b"half")
    again = DiskCache(str(tmp_path), 1 << 20)
    assert again.rebuild() == 5
    assert again.size == sum(10 + i for i in range(5))
    assert not os.path.exists(orphan_meta)
    assert os.listdir(again.tmp_dir) == []
    assert again.meta(b"/o3") is not None


def test_lru_eviction_keeps_the_total_under_max_size(tmp_path: Path):
    cache = DiskCache(str(tmp_path), 300)
    for i in range(3):
        assert store(cache, b"/k%d" % i, b"y" * 100)
    assert cache.meta(b"/k0") is not None  # touch: /k1 is now the least recently used
    assert store(cache, b"/k3", b"z" * 100)
    assert cache.size == 300 and cache.evictions == 1
    assert cache.meta(b"/k1") is None and not os.path.exists(cache.body_path(b"/k1"))
    assert all(cache.meta(b"/k%d" % i) is not None for i in (0, 2, 3))


def test_remove_purges_one_object(tmp_path: Path):
    cache = DiskCache(str(tmp_path), 1 << 20)
    assert store(cache, b"/p", b"purge me")
    assert cache.remove(b"/p") and not cache.remove(b"/p")
    assert cache.meta(b"/p") is None and cache.size == 0


def test_metadata_for_another_key_is_not_served(tmp_path: Path):
    cache = DiskCache(str(tmp_path), 1 << 20)
    assert store(cache, b"/real", b"body")
    body, _ = cache.paths(digest(b"/real"))
    os.setxattr(body, XATTR, meta_for(b"/impostor", b"body").dumps())
    assert cache.meta(b"/real") is None


def test_metadata_rides_on_the_body_as_an_xattr(tmp_path: Path):
    cache = DiskCache(str(tmp_path), 1 << 20)
    assert store(cache, b"/x", b"body")
    body, sidecar = cache.paths(digest(b"/x"))
    assert not os.path.exists(sidecar), "one inode per object"
    assert Meta.loads(os.getxattr(body, XATTR)).key == "/x"


def test_metadata_too_big_for_one_xattr_block_goes_to_a_sidecar_file(tmp_path: Path):
    # ext4 keeps a file's xattrs in one block (~4 KiB) and says ENOSPC for more, which is not a full disk:
    # an answer with 6 KiB of fields is stored all the same (in the xattr where the filesystem takes it).
    cache = DiskCache(str(tmp_path), 1 << 20)
    big = [("content-security-policy", "default-src " + "https://a.example " * 340)]
    meta = meta_for(b"/big", b"body")
    meta.headers = big
    w = cache.writer(b"/big")
    w.write(b"body")
    assert w.commit(meta), w.failed
    assert cache.meta(b"/big").headers == big


def test_without_xattrs_the_metadata_goes_to_a_sidecar_file(tmp_path: Path, monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError(errno.ENOTSUP, "Operation not supported")

    monkeypatch.setattr(os, "setxattr", refuse)
    cache = DiskCache(str(tmp_path), 1 << 20)
    assert store(cache, b"/y", b"body", status=404)
    body, sidecar = cache.paths(digest(b"/y"))
    assert os.path.exists(sidecar)
    assert cache.meta(b"/y").status == 404
    before = os.stat(body).st_ctime_ns
    time.sleep(0.01)
    changed = rewrite_meta(body, sidecar, meta_for(b"/y", b"body", status=200))
    assert cache.meta(b"/y").status == 200
    assert changed == os.stat(body).st_ctime_ns != before, "readers notice the rewrite by the body's ctime"
    assert DiskCache(str(tmp_path), 1 << 20).rebuild() == 1


def test_a_followed_fetch_writes_where_other_workers_look_and_leaves_no_head_on_the_object(tmp_path: Path):
    cache = DiskCache(str(tmp_path / "c"), 1 << 20)
    key = b"/followed"
    name = digest(key)
    where = Path(cache.follow_path(name))
    where.write_bytes(b"a leftover of a worker that died mid-fetch")
    writer = cache.writer(key, name, followed=name)
    assert writer.tmp == str(where) and where.stat().st_size == 0  # the leftover was replaced
    meta = meta_for(key, b"hello")
    assert writer.publish_head(True, True, meta.dumps())
    assert parse_head(os.getxattr(where, HEAD_XATTR)) == (True, True, os.getpid())
    assert Meta.loads(os.getxattr(where, XATTR)) == meta, "the metadata is on the temp file before its head"
    writer.write(b"hello")
    assert writer.commit(meta)
    body, _ = cache.paths(name)
    assert not where.exists() and Path(body).read_bytes() == b"hello"
    assert HEAD_XATTR not in os.listxattr(body) and XATTR in os.listxattr(body)


# -- a disk that refuses writes -------------------------------------------------------------------


def test_a_refused_body_goes_on_in_memory_under_the_same_fd_and_is_not_stored(tmp_path: Path):
    cache = DiskCache(str(tmp_path), 1 << 20)
    key = b"/spilled"
    w = cache.writer(key, followed=digest(key))
    fd = w.detach()  # a reader holds this number, as the puller's entry does
    w.write(b"first half, on disk; ")
    w.spill(OSError(errno.ENOSPC, "No space left on device"))
    w.write(b"second half, in memory")
    assert w.fd == fd and w.failed == "disk-full" and w.error == "No space left on device"
    assert os.readlink(f"/proc/self/fd/{fd}").startswith("/memfd:edge-")
    body = b"first half, on disk; second half, in memory"
    assert os.pread(fd, 100, 0) == body
    assert not w.commit(meta_for(key, body))
    assert not os.path.exists(cache.paths(digest(key))[0]) and os.listdir(cache.tmp_dir) == []
    assert os.pread(fd, 100, 0) == body  # its reader still has all of it
    os.close(fd)


def test_a_store_below_min_free_is_refused_before_any_file_is_made(tmp_path: Path):
    free = DiskCache(str(tmp_path), 1 << 20).free_bytes()
    cache = DiskCache(str(tmp_path), 1 << 20, min_free=free + (1 << 30))
    w = cache.writer(b"/k", length=10)
    assert w.failed == "disk-full" and w.tmp == "" and os.listdir(cache.tmp_dir) == []
    w.write(b"0123456789")
    assert os.pread(w.fd, 20, 0) == b"0123456789"
    assert not w.commit(meta_for(b"/k", b"0123456789"))
    assert w.fd == -1


def test_free_space_is_asked_of_the_filesystem_once_per_interval_less_what_was_admitted(tmp_path: Path,
                                                                                     monkeypatch):
    cache = DiskCache(str(tmp_path), 1 << 20, min_free=4000)
    free = [10_000]
    calls = []

    def statvfs(path):
        calls.append(path)
        return os.statvfs_result((4096, 1, 0, 0, free[0], 0, 0, 0, 0, 255))  # f_frsize 1: bytes

    monkeypatch.setattr(os, "statvfs", statvfs)
    cache.check_room(5000)  # asked: 10,000 free, 5,000 left after it
    cache.check_room(1000)  # the estimate says yes: not asked
    assert len(calls) == 1
    cache.check_room(1000)  # 4,000 estimated, 5,000 needed: asked again, and the disk has room (9,000 left)
    assert len(calls) == 2
    free[0] = 4500
    with pytest.raises(OSError) as refused:
        cache.check_room(6000)  # 9,000 estimated, 10,000 needed: asked again, and the disk has not
    assert refused.value.errno == errno.ENOSPC and len(calls) == 3
    cache.room_until = 0.0  # the interval is over: asked again even where the estimate would say yes
    free[0] = 1 << 30
    cache.check_room(0)
    assert len(calls) == 4


def test_make_room_evicts_least_recently_used_until_min_free(tmp_path: Path):
    cache = DiskCache(str(tmp_path), 1 << 30)
    for i in range(3):
        assert store(cache, b"/o%d" % i, b"x" * 1000)
    cache.min_free = 0
    assert cache.make_room() == 0 and len(cache.index) == 3
    cache.min_free = cache.free_bytes() + (1 << 40)  # more than eviction can ever give back
    assert cache.make_room() == 3 and not cache.index and cache.size == 0


@pytest.mark.parametrize("calls, code, reason", [
    (("setxattr", "write_file"), errno.ENOSPC, "disk-full"),  # the metadata, in the xattr and in a sidecar
    (("setxattr",), errno.EIO, "io-error"),
    (("replace", "link"), errno.EROFS, "read-only"),  # putting the body in place: a rename, or the link of
    (("replace", "link"), errno.EIO, "io-error"),      # a body written without a name (O_TMPFILE)
])
def test_a_refused_metadata_write_or_rename_stores_nothing_and_says_why(tmp_path: Path, monkeypatch, calls, code,
                                                                      reason):
    cache = DiskCache(str(tmp_path), 1 << 20)
    w = cache.writer(b"/k")
    fd = w.detach()
    w.write(b"whole body")
    for call in calls:
        where = diskcache if call == "write_file" else os
        real = getattr(where, call)

        def refuse(*args, real=real, call=call, **kwargs):
            if call == "setxattr" and args[1] != XATTR:
                return real(*args, **kwargs)
            raise OSError(code, os.strerror(code))

        monkeypatch.setattr(where, call, refuse)
    assert not w.commit(meta_for(b"/k", b"whole body"))
    monkeypatch.undo()
    assert w.failed == reason
    assert not os.path.exists(cache.paths(digest(b"/k"))[0]) and os.listdir(cache.tmp_dir) == []
    assert os.pread(fd, 100, 0) == b"whole body"  # its readers still have it
    os.close(fd)
