"""Static-file semantics end to end: a real `edge serve` process, real clients (curl, httpx).

curl against index files, hostile paths, validators, ranges and variants; files changing under the
cache (real time). The semantics themselves (index files, hostile paths, dotfiles, symlinks, validators,
ranges, content types, variants, header rules) run in memory through the adapter: tests/test_h1_io.py.
"""

from __future__ import annotations

import calendar
import gzip
import os
import shutil
import struct
import subprocess
import time
import zlib
from email.utils import formatdate
from pathlib import Path

import httpx
import pytest

from conftest import parse_byteranges


CURL = shutil.which("curl") or ("/usr/bin/curl" if os.path.exists("/usr/bin/curl") else None)
needs_curl = pytest.mark.skipif(CURL is None, reason="curl is not installed")

SECRET = b"TOP-SECRET-outside-the-root\n"
OLD_MTIME = calendar.timegm((2021, 3, 4, 5, 6, 7, 0, 0, 0))  # a fixed, long-past modification time
JS = b"export function hi() { return 'hello from a.js'; }\n" * 40


def http_date(seconds: float) -> str:
    """An IMF-fixdate."""
    return formatdate(seconds, usegmt=True)


def minimal_png() -> bytes:
    """A real 1x1 RGB PNG."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00\xff\x00\x00"))
            + chunk(b"IEND", b""))


@pytest.fixture
def tree(www: Path, tmp_path: Path) -> Path:
    """The conftest root plus everything these tests look at; a secret file lives beside the root."""
    (tmp_path / "secret.txt").write_bytes(SECRET)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "file.txt").write_bytes(SECRET)
    # dotfiles
    (www / ".env").write_text("API_KEY=dotenv-value\n")
    (www / ".git").mkdir()
    (www / ".git" / "config").write_text("[core]\n\tbare = false\n")
    (www / "sub" / ".hidden").write_text("hidden\n")
    # symlinks
    (www / "link-in.txt").symlink_to("hello.txt")
    (www / "link-out.txt").symlink_to(tmp_path / "secret.txt")
    (www / "linkdir").symlink_to(outside, target_is_directory=True)
    # non-regular things
    os.mkfifo(www / "pipe")
    (www / "weird").mkdir()
    (www / "weird" / "index.html").mkdir()  # an "index file" that is a directory
    # validators / ranges: random bytes with an old, fixed mtime
    (www / "data.bin").write_bytes(os.urandom(100_000))
    os.utime(www / "data.bin", (OLD_MTIME, OLD_MTIME))
    # content types
    for name, data in {"a.html": b"<p>x</p>\n", "a.css": b"p{}\n", "b.js": b"let x;\n", "a.mjs": b"export {};\n",
                       "a.json": b"{}\n", "a.wasm": b"\x00asm\x01\x00\x00\x00", "a.webp": b"RIFF\x00\x00\x00\x00WEBP",
                       "a.avif": b"\x00\x00\x00\x1cftypavif", "a.woff2": b"wOF2\x00\x01\x00\x00",
                       "a.svg": b'<svg xmlns="http://www.w3.org/2000/svg"/>\n', "picture": minimal_png(),
                       "README": b"Just some plain text, no extension at all.\nSecond line.\n"}.items():
        (www / name).write_bytes(data)
    # precompressed variants
    (www / "a.js").write_bytes(JS)
    (www / "a.js.gz").write_bytes(gzip.compress(JS))
    (www / "a.js.br").write_bytes(b"\x1b\x4f\x08\x00" + os.urandom(200))  # any bytes: edge does not decode it
    # header rules
    (www / "assets").mkdir()
    (www / "assets" / "x.css").write_text("body { color: red }\n")
    return www


def write_config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / f"edge-{len(list(tmp_path.glob('edge-*.toml')))}.toml"
    path.write_text(text)
    return path


@pytest.fixture
def srv(edge, tree):
    """edge serving the full tree with the default configuration."""
    return edge()


def curl(url: str, tmp_path: Path, *args: str) -> tuple[int, dict[str, str], bytes]:
    """Run curl (no URL normalisation, no decoding); returns status, lower-cased headers, body bytes."""
    out = tmp_path / "curl"
    out.mkdir(exist_ok=True)
    body, head = out / "body", out / "head"
    for f in (body, head):
        if f.exists():
            f.unlink()
    subprocess.run([CURL, "-sS", "--path-as-is", "--max-time", "10", "-o", str(body), "-D", str(head), *args, url],
                   check=True, capture_output=True)
    blocks = [b for b in head.read_bytes().split(b"\r\n\r\n") if b.strip()]
    lines = blocks[-1].decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers, body.read_bytes() if body.exists() else b""


# -- index files, redirects, no listings ---------------------------------------------------------------


@needs_curl
def test_index_and_redirect_with_curl(srv, tree, tmp_path):
    status, headers, body = curl(srv.url + "/", tmp_path)
    assert status == 200 and body == (tree / "index.html").read_bytes()
    status, headers, body = curl(srv.url + "/sub/", tmp_path)
    assert status == 200 and body == b"<p>sub</p>\n"
    status, headers, body = curl(srv.url + "/sub?a=b", tmp_path)
    assert status == 301 and headers["location"].endswith("/sub/?a=b")
    status, headers, body = curl(srv.url + "/sub?a=b", tmp_path, "-L")
    assert status == 200 and body == b"<p>sub</p>\n"


# -- hostile paths ---------------------------------------------------------------------------------------

@needs_curl
@pytest.mark.parametrize("target", ["/../secret.txt", "/%2e%2e/secret.txt", "/..%2fsecret.txt", "//etc/passwd",
                                    "/hello.txt%00", "/%zz", "/..%5csecret.txt"])
def test_hostile_paths_with_curl(srv, tmp_path, target):
    status, headers, body = curl(srv.url + target, tmp_path)
    assert status in (400, 404)
    assert SECRET not in body and b"root:" not in body


# -- validators and preconditions ----------------------------------------------------------------------------


@needs_curl
def test_conditional_get_with_curl(srv, tmp_path):
    status, headers, body = curl(srv.url + "/data.bin", tmp_path)
    etag = headers["etag"]
    status, headers, body = curl(srv.url + "/data.bin", tmp_path, "-H", f"If-None-Match: {etag}")
    assert status == 304 and body == b"" and headers["etag"] == etag
    status, headers, body = curl(srv.url + "/data.bin", tmp_path, "-z", http_date(OLD_MTIME))
    assert status == 304


# -- ranges ------------------------------------------------------------------------------------------------------


@needs_curl
def test_ranges_with_curl(srv, tree, tmp_path):
    data = (tree / "data.bin").read_bytes()
    status, headers, body = curl(srv.url + "/data.bin", tmp_path, "-r", "10-19")
    assert status == 206 and body == data[10:20]
    status, headers, body = curl(srv.url + "/data.bin", tmp_path, "-r", "0-4,90000-90009")
    assert status == 206
    parts = parse_byteranges(body, headers["content-type"])
    assert [p[4] for p in parts] == [data[0:5], data[90000:90010]]


# -- precompressed variants ----------------------------------------------------------------------------------------


@needs_curl
def test_precompressed_with_curl(srv, tree, tmp_path):
    status, headers, body = curl(srv.url + "/a.js", tmp_path, "-H", "Accept-Encoding: gzip")
    assert status == 200 and headers["content-encoding"] == "gzip"
    assert body == (tree / "a.js.gz").read_bytes()
    status, headers, body = curl(srv.url + "/a.js", tmp_path)
    assert status == 200 and "content-encoding" not in headers and body == JS


# -- files changing under the cache -------------------------------------------------------------------------------------


@pytest.fixture
def fresh(edge, tree, tmp_path):
    """edge with file_cache.valid = 0.2 s."""
    return edge(config=write_config(tmp_path, "[file_cache]\nvalid = 0.2\n"))


def test_file_rewritten_in_place(fresh, tree):
    path = tree / "hello.txt"
    with httpx.Client(base_url=fresh.url, timeout=10) as http:
        r1 = http.get("/hello.txt")
        assert r1.content == b"hello world\n"
        ino = path.stat().st_ino
        with open(path, "r+b") as f:
            f.truncate(0)
            f.write(b"rewritten in place, and longer than before\n")
        assert path.stat().st_ino == ino
        time.sleep(0.5)
        r2 = http.get("/hello.txt")
        assert r2.content == b"rewritten in place, and longer than before\n"
        assert int(r2.headers["content-length"]) == len(r2.content)
        assert r2.headers["etag"] != r1.headers["etag"]


def test_file_replaced_by_rename_same_size(fresh, tree):
    path = tree / "hello.txt"
    with httpx.Client(base_url=fresh.url, timeout=10) as http:
        r1 = http.get("/hello.txt")
        assert r1.content == b"hello world\n"
        old = path.stat()
        tmp = tree / "hello.txt.tmp"
        tmp.write_bytes(b"HELLO WORLD\n")  # same size
        os.utime(tmp, ns=(old.st_atime_ns, old.st_mtime_ns))  # even the same mtime: only the inode differs
        os.replace(tmp, path)
        assert path.stat().st_ino != old.st_ino
        time.sleep(0.5)
        r2 = http.get("/hello.txt")
        assert r2.content == b"HELLO WORLD\n"
        assert int(r2.headers["content-length"]) == 12
        assert r2.headers["etag"] != r1.headers["etag"]
        # a conditional request with the old validator now gets the new body
        r3 = http.get("/hello.txt", headers={"If-None-Match": r1.headers["etag"]})
        assert r3.status_code == 200 and r3.content == b"HELLO WORLD\n"


def test_file_deleted_then_recreated(fresh, tree):
    path = tree / "hello.txt"
    with httpx.Client(base_url=fresh.url, timeout=10) as http:
        assert http.get("/hello.txt").status_code == 200
        path.unlink()
        time.sleep(0.5)
        r = http.get("/hello.txt")
        assert r.status_code == 404
        assert b"hello world" not in r.content
        path.write_bytes(b"back again\n")
        time.sleep(0.5)
        r = http.get("/hello.txt")
        assert r.status_code == 200 and r.content == b"back again\n"


def test_big_file_changed_keeps_length_and_validators_consistent(fresh, tree):
    path = tree / "100k.bin"
    with httpx.Client(base_url=fresh.url, timeout=10) as http:
        r1 = http.get("/100k.bin")
        assert len(r1.content) == 100 * 1024
        new = os.urandom(50_000)
        path.write_bytes(new)
        time.sleep(0.5)
        r2 = http.get("/100k.bin")
        assert r2.content == new
        assert int(r2.headers["content-length"]) == 50_000
        assert r2.headers["etag"] != r1.headers["etag"]
        r3 = http.get("/100k.bin", headers={"Range": "bytes=-10"})
        assert r3.status_code == 206 and r3.headers["content-range"] == "bytes 49990-49999/50000"
        assert r3.content == new[-10:]
