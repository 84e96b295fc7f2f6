"""Tests of the open-file cache (edge.filecache): resolution, symlink policy, LRU eviction and fd lifetime."""

import os
from pathlib import Path

import pytest

from edge.filecache import UNCHANGED, FileCache, FileEntry, NotFound, Redirect, Resolver


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    (root / "f.txt").write_bytes(b"hello")
    (root / "d").mkdir()
    (tmp_path / "outside.txt").write_bytes(b"secret")
    os.symlink(root / "f.txt", root / "in-link")
    os.symlink(tmp_path / "outside.txt", root / "out-link")
    os.symlink(tmp_path, root / "out-dir")
    os.mkfifo(root / "fifo")
    return root


def fd_open(fd: int) -> bool:
    try:
        os.fstat(fd)
        return True
    except OSError:
        return False


@pytest.mark.parametrize("policy, path, served", [
    ("inside-root", "/in-link", True), ("inside-root", "/out-link", False), ("inside-root", "/out-dir/outside.txt", False),
    ("never", "/in-link", False), ("never", "/out-link", False), ("never", "/f.txt", True),
    ("always", "/in-link", True), ("always", "/out-link", True),
])
def test_symlink_policy(tree, policy, path, served):
    found = Resolver(str(tree), policy).load(path)
    assert isinstance(found, FileEntry) is served
    if served:
        os.close(found.fd)


def test_non_regular_files(tree):
    resolver = Resolver(str(tree))
    assert isinstance(resolver.load("/fifo"), NotFound)  # and it did not block on the FIFO
    redirect = resolver.load("/d")
    assert isinstance(redirect, Redirect) and redirect.path == "/d/"
    assert resolver.load("/d/").status == 404  # no index.html, no listing
    assert resolver.load("/missing").status == 404


def test_revalidation_keeps_the_open_file(tree):
    resolver = Resolver(str(tree))
    entry = resolver.load("/f.txt")
    assert resolver.load("/f.txt", entry) is UNCHANGED
    (tree / "f.txt.gz").write_bytes(b"gz")  # a new variant appears: the entry must be rebuilt
    fresh = resolver.load("/f.txt", entry)
    assert isinstance(fresh, FileEntry) and "gzip" in fresh.variants
    os.replace(tree / "f.txt.gz", tree / "other")
    assert resolver.load("/f.txt", fresh) is not UNCHANGED
    for e in (entry, fresh):
        e.retire()


def test_eviction_waits_for_transfers(tree):
    for i in range(3):
        (tree / f"{i}.txt").write_bytes(b"x" * i)
    cache = FileCache(Resolver(str(tree)), max_entries=2, valid=60)
    first = cache.store("/0.txt", cache.resolver.load("/0.txt"), 0.0)
    first.acquire()  # a transfer is using it
    cache.store("/1.txt", cache.resolver.load("/1.txt"), 0.0)
    cache.store("/2.txt", cache.resolver.load("/2.txt"), 0.0)  # evicts /0.txt
    assert cache.evictions == 1 and cache.lookup("/0.txt", 0.0) is None
    assert first.dead and fd_open(first.fd)  # still open for the transfer
    fd = first.fd
    first.release()
    assert first.fd == -1 and not fd_open(fd)
    cache.close()
    assert len(cache) == 0


def test_lookup_respects_valid(tree):
    cache = FileCache(Resolver(str(tree)), max_entries=10, valid=1.0)
    entry = cache.store("/f.txt", cache.resolver.load("/f.txt"), 10.0)
    assert cache.lookup("/f.txt", 10.9) is entry
    assert cache.lookup("/f.txt", 11.0) is None
    assert cache.stale("/f.txt") is entry
    assert cache.store("/f.txt", UNCHANGED, 11.0) is entry and cache.lookup("/f.txt", 11.5) is entry
    neg = cache.store("/nope", cache.resolver.load("/nope"), 10.0)
    assert cache.lookup("/nope", 10.5) is neg
    assert cache.purge("/f.txt") == 1 and entry.fd == -1
    cache.close()


def test_inline_bodies_are_read_once(tree):
    resolver = Resolver(str(tree), inline_max=5)
    entry = resolver.load("/f.txt")
    assert entry.body == b"hello"
    (tree / "big.txt").write_bytes(b"x" * 6)
    big = resolver.load("/big.txt")
    assert big.body is None
    entry.retire()
    big.retire()


def test_inline_budget(tree):
    for name in ("a", "b", "c"):
        (tree / name).write_bytes(b"x" * 4)
    cache = FileCache(Resolver(str(tree), inline_max=16), max_entries=2, valid=60, inline_budget=8)
    a = cache.store("/a", cache.resolver.load("/a"), 0.0)
    b = cache.store("/b", cache.resolver.load("/b"), 0.0)
    assert a.body == b.body == b"xxxx" and cache.inline_bytes == 8
    c = cache.store("/c", cache.resolver.load("/c"), 0.0)  # evicts /a first, so /c fits
    assert c.body == b"xxxx" and cache.inline_bytes == 8
    cache.purge("/b")
    assert cache.inline_bytes == 4
    cache.close()
    assert cache.inline_bytes == 0


def test_storing_the_same_entry_again_does_not_charge_its_inline_body_twice(tmp_path):
    (tmp_path / "small.txt").write_bytes(b"x" * 1000)
    resolver = Resolver(str(tmp_path), inline_max=4096)
    cache = FileCache(resolver, 10, 1.0)
    entry = cache.store("/small.txt", resolver.load("/small.txt"), 0.0)
    assert entry.body is not None and cache.inline_bytes == 1000
    for now in (1.0, 2.0, 3.0):  # the disk cache's re-checks store the same object again
        assert cache.store("/small.txt", entry, now) is entry
    assert cache.inline_bytes == 1000
    cache.purge("/small.txt")
    assert cache.inline_bytes == 0


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to serve as another user")
def test_files_another_user_owns_are_served_without_o_noatime():
    # O_NOATIME is refused (EPERM) unless the caller owns the file: an unprivileged edge serving a
    # root-owned tree (a container's usual case) must fall back to a plain open, not answer 404.
    import tempfile

    with tempfile.TemporaryDirectory() as top:
        os.chmod(top, 0o755)
        Path(top, "f.txt").write_bytes(b"root's file")
        os.chmod(Path(top, "f.txt"), 0o644)
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child drops to nobody and loads the file as a worker would
            try:
                os.close(r)
                os.setgid(65534)
                os.setuid(65534)
                found = Resolver(top).load("/f.txt")
                os.write(w, f"{type(found).__name__} {getattr(found, 'size', None)}".encode())
            finally:
                os._exit(0)
        os.close(w)
        with os.fdopen(r) as f:
            answer = f.read()
        os.waitpid(pid, 0)
        assert answer == "FileEntry 11"


def test_a_404_due_for_its_recheck_is_rechecked_with_a_stat(tree):
    resolver = Resolver(str(tree))
    cache = FileCache(resolver, max_entries=10, valid=1.0)
    gone = cache.store("/nothing.txt", resolver.load("/nothing.txt"), now=0.0)
    assert isinstance(gone, NotFound) and gone.status == 404
    assert cache.lookup("/nothing.txt", 5.0) is None  # due for its recheck
    assert cache.still_missing("/nothing.txt", 5.0) is gone and gone.checked == 5.0
    assert cache.lookup("/nothing.txt", 5.5) is gone  # fresh again, no trip to the resolver
    (tree / "nothing.txt").write_text("here now")
    assert cache.still_missing("/nothing.txt", 10.0) is None  # it exists: loaded as usual
    never = cache.still_missing("/never-seen.txt", 10.0)  # never looked up: one stat says it is not there
    assert isinstance(never, NotFound) and never.status == 404 and cache.lookup("/never-seen.txt", 10.5) is never
    assert cache.still_missing("/nothing.txt/below", 10.0).status == 404  # a file as a directory: ENOTDIR
    (tree / "fresh.txt").write_text("new")
    assert cache.still_missing("/fresh.txt", 10.0) is None  # never looked up, but there: loaded off the loop
    assert cache.lookup("/fresh.txt", 10.0) is None
    entry = cache.store("/fresh.txt", resolver.load("/fresh.txt"), now=10.0)
    (tree / "fresh.txt").unlink()
    assert cache.still_missing("/fresh.txt", 20.0) is None  # a cached file due for revalidation: the pool's job
    assert cache.peek("/fresh.txt") is entry
    cache.store("/dir", Redirect("/dir/"), now=0.0)
    assert cache.still_missing("/dir", 10.0) is None  # only 404s
    cache.store("/secret", NotFound(403), now=0.0)
    assert cache.still_missing("/secret", 10.0) is None
