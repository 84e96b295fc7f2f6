"""Static-file semantics end to end: a real `edge serve` process, real clients (httpx, curl, raw sockets).

Index files and redirects, hostile paths, dotfiles, symlink policies, non-regular files,
validators and preconditions, ranges (incl. multipart/byteranges), content types,
precompressed variants, header rules from the config file, and files changing under the cache.
"""

from __future__ import annotations

import calendar
import gzip
import os
import re
import shutil
import struct
import subprocess
import time
import zlib
from email.utils import formatdate, parsedate_to_datetime
from pathlib import Path

import httpx
import pytest

from conftest import Client, request

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


@pytest.fixture
def http(srv):
    with httpx.Client(base_url=srv.url, timeout=10) as client:
        yield client


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


def parse_byteranges(body: bytes, content_type: str) -> list[tuple[int, int, int, str, bytes]]:
    """Parse a multipart/byteranges body: [(first, last, size, part content-type, data), ...]."""
    m = re.search(r'boundary=(?:"([^"]+)"|([^;\s]+))', content_type)
    assert m, content_type
    delim = b"--" + (m.group(1) or m.group(2)).encode("latin-1")
    pos = body.index(delim) + len(delim)
    assert body[:pos - len(delim)].strip() == b"", "unexpected preamble"
    parts = []
    while True:
        if body[pos:pos + 2] == b"--":
            assert body[pos + 2:].strip() == b"", "unexpected epilogue"
            break
        assert body[pos:pos + 2] == b"\r\n", body[pos:pos + 40]
        pos += 2
        end = body.index(b"\r\n\r\n", pos)
        headers = {}
        for line in body[pos:end].decode("latin-1").split("\r\n"):
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        pos = end + 4
        cr = re.fullmatch(r"bytes (\d+)-(\d+)/(\d+)", headers["content-range"])
        assert cr, headers
        first, last, size = (int(x) for x in cr.groups())
        data = body[pos:pos + last - first + 1]
        pos += last - first + 1
        assert body[pos:pos + 2 + len(delim)] == b"\r\n" + delim, body[pos:pos + 60]
        pos += 2 + len(delim)
        parts.append((first, last, size, headers.get("content-type", ""), data))
    return parts


# -- index files, redirects, no listings ---------------------------------------------------------------


def test_index_html_for_root_and_subdirectory(http, tree):
    r = http.get("/")
    assert r.status_code == 200
    assert r.content == (tree / "index.html").read_bytes()
    assert r.headers["content-type"].startswith("text/html")
    r = http.get("/sub/")
    assert r.status_code == 200
    assert r.content == (tree / "sub" / "index.html").read_bytes()


def test_directory_without_slash_redirects_with_query(http):
    r = http.get("/sub", follow_redirects=False)
    assert r.status_code == 301
    assert httpx.URL(r.headers["location"]).path == "/sub/"
    r = http.get("/sub?x=1&y=two", follow_redirects=False)
    assert r.status_code == 301
    loc = httpx.URL(r.headers["location"])
    assert (loc.path, loc.query) == ("/sub/", b"x=1&y=two")
    r = http.get("/sub?x=1", follow_redirects=True)
    assert r.status_code == 200 and r.content == b"<p>sub</p>\n"


def test_directory_without_index_is_404_not_a_listing(http):
    r = http.get("/noindex/")
    assert r.status_code == 404
    assert b"a.txt" not in r.content
    assert http.get("/noindex/a.txt").content == b"a\n"


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

HOSTILE = [
    "/../secret.txt",
    "/../../secret.txt",
    "/sub/../../secret.txt",
    "/./../secret.txt",
    "/%2e%2e/secret.txt",
    "/%2E%2E/secret.txt",
    "/.%2e/secret.txt",
    "/%2e./secret.txt",
    "/..%2fsecret.txt",
    "/%2e%2e%2fsecret.txt",
    "/sub%2f..%2f..%2fsecret.txt",
    "/%2f..%2fsecret.txt",
    "/..\\secret.txt",
    "/..%5csecret.txt",
    "/sub\\..\\..\\secret.txt",
    "//etc/passwd",
    "/../../../../../../etc/passwd",
    "/%2e%2e/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
    "/hello.txt%00",
    "/hello.txt%00.html",
    "/%00/../secret.txt",
    "/%zz",
    "/%2",
    "/..%c0%afsecret.txt",
    "/%252e%252e/secret.txt",
    "http://x/../../secret.txt",
    "http://x/..%2f..%2fsecret.txt",
    "secret.txt",
    "*",
]


@pytest.mark.parametrize("target", HOSTILE)
def test_hostile_paths_never_leave_the_root(srv, target):
    status, headers, body = request(srv, target)
    assert status in (400, 404), (target, status)
    assert SECRET not in body
    assert b"root:" not in body
    assert srv.alive()


def test_absolute_filesystem_path_with_double_slash_stays_in_root(srv, tmp_path):
    status, headers, body = request(srv, "/" + str(tmp_path / "secret.txt"))
    assert status == 404
    assert SECRET not in body


@needs_curl
@pytest.mark.parametrize("target", ["/../secret.txt", "/%2e%2e/secret.txt", "/..%2fsecret.txt", "//etc/passwd",
                                    "/hello.txt%00", "/%zz", "/..%5csecret.txt"])
def test_hostile_paths_with_curl(srv, tmp_path, target):
    status, headers, body = curl(srv.url + target, tmp_path)
    assert status in (400, 404)
    assert SECRET not in body and b"root:" not in body


def test_encoded_but_harmless_paths_still_work(http):
    assert http.get("/sub/%2e%2e/hello.txt").content == b"hello world\n"
    assert http.get("/%68ello.txt").content == b"hello world\n"


def test_absolute_form_target_is_served(srv):
    assert request(srv, "http://example.com/hello.txt")[::2] == (200, b"hello world\n")
    assert request(srv, "http://example.com/sub/?a=1")[::2] == (200, b"<p>sub</p>\n")


# -- dotfiles --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("target", ["/.env", "/.git/config", "/sub/.hidden", "/%2eenv", "/.git/"])
def test_dotfiles_are_404_by_default(srv, target):
    status, headers, body = request(srv, target)
    assert status == 404
    assert b"dotenv-value" not in body and b"bare" not in body and b"hidden" not in body


def test_dotfiles_served_when_configured(edge, tree, tmp_path):
    server = edge(config=write_config(tmp_path, "serve_dotfiles = true\n"))
    assert request(server, "/.env")[::2] == (200, b"API_KEY=dotenv-value\n")
    assert request(server, "/.git/config")[::2] == (200, b"[core]\n\tbare = false\n")
    assert request(server, "/sub/.hidden")[::2] == (200, b"hidden\n")
    assert request(server, "/../secret.txt")[0] == 400


# -- symlinks --------------------------------------------------------------------------------------------


def test_symlinks_inside_root_by_default(srv):
    status, headers, body = request(srv, "/link-in.txt")
    assert (status, body) == (200, b"hello world\n")
    for target in ("/link-out.txt", "/linkdir/file.txt"):
        status, headers, body = request(srv, target)
        assert status == 404, target
        assert SECRET not in body


def test_symlinks_never(edge, tree, tmp_path):
    server = edge(config=write_config(tmp_path, 'follow_symlinks = "never"\n'))
    for target in ("/link-in.txt", "/link-out.txt", "/linkdir/file.txt"):
        status, headers, body = request(server, target)
        assert status == 404, target
        assert SECRET not in body and body != b"hello world\n"
    assert request(server, "/hello.txt")[::2] == (200, b"hello world\n")


def test_symlinks_always(edge, tree, tmp_path):
    server = edge(config=write_config(tmp_path, 'follow_symlinks = "always"\n'))
    assert request(server, "/link-in.txt")[::2] == (200, b"hello world\n")
    assert request(server, "/link-out.txt")[::2] == (200, SECRET)
    assert request(server, "/linkdir/file.txt")[::2] == (200, SECRET)
    assert request(server, "/../secret.txt")[0] == 400  # following links is not leaving the root by path


# -- only regular files ------------------------------------------------------------------------------------


def test_fifo_is_404_and_does_not_hang(srv):
    client = Client(srv.connect(timeout=5))
    try:
        client.send(b"GET /pipe HTTP/1.1\r\nHost: x\r\n\r\nGET /hello.txt HTTP/1.1\r\nHost: x\r\n\r\n")
        assert client.response()[0] == 404
        status, headers, body = client.response()
        assert (status, body) == (200, b"hello world\n")
    finally:
        client.close()
    assert request(srv, "/pipe")[0] == 404
    assert srv.alive()


def test_index_that_is_a_directory_is_404(srv):
    assert request(srv, "/weird/")[0] == 404


# -- validators and preconditions ----------------------------------------------------------------------------


def test_validators_present(http, tree):
    r = http.get("/data.bin")
    assert r.status_code == 200
    assert re.fullmatch(r'"[^"]+"', r.headers["etag"]), r.headers["etag"]  # strong
    assert parsedate_to_datetime(r.headers["last-modified"]).timestamp() == OLD_MTIME
    assert r.headers["accept-ranges"] == "bytes"
    assert r.content == (tree / "data.bin").read_bytes()


def test_last_modified_never_later_than_date(edge, tree):
    """RFC 9110 §8.8.2.1: a modification time in the future is replaced by the message's Date."""
    future = time.time() + 86400
    os.utime(tree / "hello.txt", (future, future))
    server = edge()
    status, headers, body = request(server, "/hello.txt")
    assert status == 200 and body == b"hello world\n"
    assert parsedate_to_datetime(headers["last-modified"]) <= parsedate_to_datetime(headers["date"])


def _etag(http, path="/data.bin") -> str:
    return http.get(path).headers["etag"]


@pytest.mark.parametrize("form", ["exact", "weak", "list", "star"])
def test_if_none_match_gives_304_without_body(srv, http, form):
    etag = _etag(http)
    value = {"exact": etag, "weak": "W/" + etag, "list": f'"nope", W/"other", {etag}', "star": "*"}[form]
    client = Client(srv.connect())
    try:
        client.send(f"GET /data.bin HTTP/1.1\r\nHost: x\r\nIf-None-Match: {value}\r\n\r\n"
                    "GET /hello.txt HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        status, headers, body = client.response()
        assert status == 304
        assert headers["etag"] == etag
        # no body: the next bytes are the next response
        status, headers, body = client.response()
        assert (status, body) == (200, b"hello world\n")
    finally:
        client.close()


def test_if_none_match_mismatch_gives_200(http, tree):
    r = http.get("/data.bin", headers={"If-None-Match": '"something-else", W/"x"'})
    assert r.status_code == 200 and r.content == (tree / "data.bin").read_bytes()


def test_if_modified_since(http, tree):
    r = http.get("/data.bin", headers={"If-Modified-Since": http_date(OLD_MTIME)})
    assert r.status_code == 304 and r.content == b""
    assert r.headers["etag"] == _etag(http)
    r = http.get("/data.bin", headers={"If-Modified-Since": http_date(OLD_MTIME + 86400)})
    assert r.status_code == 304
    r = http.get("/data.bin", headers={"If-Modified-Since": http_date(OLD_MTIME - 1)})
    assert r.status_code == 200 and r.content == (tree / "data.bin").read_bytes()
    r = http.get("/data.bin", headers={"If-Modified-Since": "not a date"})
    assert r.status_code == 200


def test_if_match_and_if_unmodified_since(http, tree):
    etag = _etag(http)
    assert http.get("/data.bin", headers={"If-Match": '"stale"'}).status_code == 412
    assert http.get("/data.bin", headers={"If-Match": "W/" + etag}).status_code == 412  # strong comparison
    r = http.get("/data.bin", headers={"If-Match": etag})
    assert r.status_code == 200 and r.content == (tree / "data.bin").read_bytes()
    assert http.get("/data.bin", headers={"If-Match": "*"}).status_code == 200
    assert http.get("/data.bin", headers={"If-Unmodified-Since": http_date(OLD_MTIME - 60)}).status_code == 412
    assert http.get("/data.bin", headers={"If-Unmodified-Since": http_date(OLD_MTIME)}).status_code == 200


def test_precondition_precedence(http):
    """RFC 9110 §13.2.2: If-Match before If-Unmodified-Since, If-None-Match before If-Modified-Since."""
    etag = _etag(http)
    # If-None-Match present: If-Modified-Since is ignored, both ways.
    r = http.get("/data.bin", headers={"If-None-Match": '"other"', "If-Modified-Since": http_date(OLD_MTIME)})
    assert r.status_code == 200
    r = http.get("/data.bin", headers={"If-None-Match": etag, "If-Modified-Since": http_date(OLD_MTIME - 3600)})
    assert r.status_code == 304
    # If-Match present: If-Unmodified-Since is ignored.
    r = http.get("/data.bin", headers={"If-Match": etag, "If-Unmodified-Since": http_date(OLD_MTIME - 3600)})
    assert r.status_code == 200
    # If-Match fails first, even when If-None-Match would give 304.
    r = http.get("/data.bin", headers={"If-Match": '"other"', "If-None-Match": etag})
    assert r.status_code == 412
    # If-Unmodified-Since fails before If-None-Match is looked at.
    r = http.get("/data.bin", headers={"If-Unmodified-Since": http_date(OLD_MTIME - 3600), "If-None-Match": etag})
    assert r.status_code == 412


@needs_curl
def test_conditional_get_with_curl(srv, tmp_path):
    status, headers, body = curl(srv.url + "/data.bin", tmp_path)
    etag = headers["etag"]
    status, headers, body = curl(srv.url + "/data.bin", tmp_path, "-H", f"If-None-Match: {etag}")
    assert status == 304 and body == b"" and headers["etag"] == etag
    status, headers, body = curl(srv.url + "/data.bin", tmp_path, "-z", http_date(OLD_MTIME))
    assert status == 304


# -- ranges ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("spec,first,last", [("bytes=0-99", 0, 99), ("bytes=100-", 100, 99_999),
                                             ("bytes=-100", 99_900, 99_999), ("bytes=99999-", 99_999, 99_999),
                                             ("bytes=500-200000", 500, 99_999)])
def test_single_range(http, tree, spec, first, last):
    data = (tree / "data.bin").read_bytes()
    r = http.get("/data.bin", headers={"Range": spec})
    assert r.status_code == 206
    assert r.headers["content-range"] == f"bytes {first}-{last}/100000"
    assert int(r.headers["content-length"]) == last - first + 1
    assert r.content == data[first:last + 1]
    assert r.headers["accept-ranges"] == "bytes"


def test_multiple_ranges_are_multipart_byteranges(http, tree):
    data = (tree / "data.bin").read_bytes()
    r = http.get("/data.bin", headers={"Range": "bytes=0-9, 1000-1999,-50"})
    assert r.status_code == 206
    assert r.headers["content-type"].startswith("multipart/byteranges")
    assert "content-range" not in r.headers
    assert int(r.headers["content-length"]) == len(r.content)
    parts = parse_byteranges(r.content, r.headers["content-type"])
    assert [(p[0], p[1], p[2]) for p in parts] == [(0, 9, 100_000), (1000, 1999, 100_000), (99_950, 99_999, 100_000)]
    for first, last, size, ctype, chunk in parts:
        assert chunk == data[first:last + 1]
        assert ctype == "application/octet-stream"


@needs_curl
def test_ranges_with_curl(srv, tree, tmp_path):
    data = (tree / "data.bin").read_bytes()
    status, headers, body = curl(srv.url + "/data.bin", tmp_path, "-r", "10-19")
    assert status == 206 and body == data[10:20]
    status, headers, body = curl(srv.url + "/data.bin", tmp_path, "-r", "0-4,90000-90009")
    assert status == 206
    parts = parse_byteranges(body, headers["content-type"])
    assert [p[4] for p in parts] == [data[0:5], data[90000:90010]]


def test_unsatisfiable_range_is_416(http):
    for spec in ("bytes=100000-", "bytes=200000-300000", "bytes=100000-,100001-"):
        r = http.get("/data.bin", headers={"Range": spec})
        assert r.status_code == 416, spec
        assert r.headers["content-range"] == "bytes */100000"


def test_too_many_ranges_give_full_200(http, tree):
    spec = "bytes=" + ",".join(f"{i * 10}-{i * 10 + 1}" for i in range(17))
    r = http.get("/data.bin", headers={"Range": spec})
    assert r.status_code == 200
    assert r.content == (tree / "data.bin").read_bytes()
    spec16 = "bytes=" + ",".join(f"{i * 10}-{i * 10 + 1}" for i in range(16))
    assert http.get("/data.bin", headers={"Range": spec16}).status_code == 206


def test_overlapping_ranges_past_the_size_give_full_200(http, tree):
    r = http.get("/data.bin", headers={"Range": "bytes=0-60000,1000-70000"})
    assert r.status_code == 200
    assert r.content == (tree / "data.bin").read_bytes()
    r = http.get("/data.bin", headers={"Range": "bytes=0-,0-,0-"})
    assert r.status_code == 200


def test_invalid_range_is_ignored(http, tree):
    for spec in ("bytes=abc", "items=0-5", "bytes=9-3"):
        r = http.get("/data.bin", headers={"Range": spec})
        assert r.status_code == 200, spec
        assert len(r.content) == 100_000


def test_if_range(http, tree):
    data = (tree / "data.bin").read_bytes()
    etag = _etag(http)
    r = http.get("/data.bin", headers={"Range": "bytes=0-9", "If-Range": etag})
    assert r.status_code == 206 and r.content == data[:10]
    r = http.get("/data.bin", headers={"Range": "bytes=0-9", "If-Range": '"stale-etag"'})
    assert r.status_code == 200 and r.content == data
    r = http.get("/data.bin", headers={"Range": "bytes=0-9", "If-Range": "W/" + etag})
    assert r.status_code == 200  # weak validators never satisfy If-Range
    r = http.get("/data.bin", headers={"Range": "bytes=0-9", "If-Range": http_date(OLD_MTIME)})
    assert r.status_code == 206 and r.content == data[:10]
    r = http.get("/data.bin", headers={"Range": "bytes=0-9", "If-Range": http_date(OLD_MTIME - 10)})
    assert r.status_code == 200 and r.content == data


# -- content types ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name,expected", [
    ("a.html", "text/html; charset=utf-8"),
    ("a.css", "text/css; charset=utf-8"),
    ("b.js", "text/javascript; charset=utf-8"),
    ("a.mjs", "text/javascript; charset=utf-8"),
    ("a.json", "application/json"),
    ("a.wasm", "application/wasm"),
    ("a.webp", "image/webp"),
    ("a.avif", "image/avif"),
    ("a.woff2", "font/woff2"),
    ("a.svg", "image/svg+xml"),
    ("picture", "image/png"),
    ("README", "text/plain"),
    ("hello.txt", "text/plain; charset=utf-8"),
])
def test_content_types(http, tree, name, expected):
    r = http.get("/" + name)
    assert r.status_code == 200
    assert r.content == (tree / name).read_bytes()
    ctype = r.headers["content-type"]
    if ";" in expected:
        assert ctype.replace(" ", "").lower() == expected.replace(" ", "").lower()
    else:
        assert ctype.split(";")[0].strip().lower() == expected
    if expected in ("image/png", "application/wasm", "image/webp", "image/avif", "font/woff2"):
        assert "charset" not in ctype


# -- precompressed variants ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("accept,coding", [
    ("br, gzip", "br"),
    ("gzip, br", "br"),
    ("gzip", "gzip"),
    ("br;q=0, gzip", "gzip"),
    ("br;q=0.4, gzip;q=0.9", "gzip"),
    ("identity", None),
    ("deflate", None),
    (None, None),
])
def test_precompressed_variants(srv, tree, accept, coding):
    headers = {"Accept-Encoding": accept} if accept is not None else {}
    status, resp, body = request(srv, "/a.js", headers=headers)
    assert status == 200
    assert "accept-encoding" in resp.get("vary", "").lower()
    assert resp["content-type"] == "text/javascript; charset=utf-8"
    assert int(resp["content-length"]) == len(body)
    if coding is None:
        assert "content-encoding" not in resp
        assert body == JS
    else:
        assert resp["content-encoding"] == coding
        assert body == (tree / ("a.js.br" if coding == "br" else "a.js.gz")).read_bytes()
    if coding == "gzip":
        assert gzip.decompress(body) == JS


def test_variants_have_distinct_etags_and_revalidate_separately(srv):
    tags = {}
    for accept in ("br", "gzip", "identity"):
        tags[accept] = request(srv, "/a.js", headers={"Accept-Encoding": accept})[1]["etag"]
    assert len(set(tags.values())) == 3, tags
    status, resp, body = request(srv, "/a.js", headers={"Accept-Encoding": "br", "If-None-Match": tags["br"]})
    assert status == 304
    assert resp["etag"] == tags["br"]
    assert "accept-encoding" in resp.get("vary", "").lower()
    # the br validator does not validate the identity representation
    status, resp, body = request(srv, "/a.js", headers={"Accept-Encoding": "identity", "If-None-Match": tags["br"]})
    assert status == 200 and body == JS


def test_vary_on_plain_file_with_variants_only(srv):
    assert "vary" not in request(srv, "/hello.txt", headers={"Accept-Encoding": "gzip"})[1]
    assert "accept-encoding" in request(srv, "/a.js", method="HEAD")[1].get("vary", "").lower()


@needs_curl
def test_precompressed_with_curl(srv, tree, tmp_path):
    status, headers, body = curl(srv.url + "/a.js", tmp_path, "-H", "Accept-Encoding: gzip")
    assert status == 200 and headers["content-encoding"] == "gzip"
    assert body == (tree / "a.js.gz").read_bytes()
    status, headers, body = curl(srv.url + "/a.js", tmp_path)
    assert status == 200 and "content-encoding" not in headers and body == JS


# -- header rules from the config file ----------------------------------------------------------------------------------


def test_header_rules(edge, tree, tmp_path):
    config = write_config(tmp_path, '[[headers]]\nmatch = "/assets/*"\n'
                                    'set = { "Cache-Control" = "public, max-age=60" }\n')
    server = edge(config=config)
    with httpx.Client(base_url=server.url, timeout=10) as http:
        r = http.get("/assets/x.css")
        assert r.status_code == 200 and r.content == b"body { color: red }\n"
        assert r.headers["cache-control"] == "public, max-age=60"
        r2 = http.get("/assets/x.css", headers={"If-None-Match": r.headers["etag"]})
        assert r2.status_code == 304
        assert r2.headers["cache-control"] == "public, max-age=60"
        r3 = http.get("/assets/x.css", headers={"Range": "bytes=0-3"})
        assert r3.status_code == 206 and r3.headers["cache-control"] == "public, max-age=60"
        r = http.get("/hello.txt")
        assert r.status_code == 200 and "cache-control" not in r.headers


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
