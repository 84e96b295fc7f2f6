"""Tests of content-type selection (edge.mediatypes): extension table first, libmagic only when needed."""

import os
import zlib

import pytest

from edge.mediatypes import by_extension, content_type, with_charset


@pytest.mark.parametrize("name, expected", [
    ("a.js", "text/javascript"), ("a.mjs", "text/javascript"), ("a.wasm", "application/wasm"),
    ("a.webp", "image/webp"), ("a.avif", "image/avif"), ("a.woff2", "font/woff2"), ("a.json", "application/json"),
    ("A.HTML", "text/html"), ("a.css", "text/css"), ("a.svg", "image/svg+xml"), ("a.tar.gz", "application/gzip"),
    ("noext", None), ("a.unknownext", None),
])
def test_by_extension(name, expected):
    assert by_extension(name) == expected


@pytest.mark.parametrize("media, expected", [
    ("text/html", "text/html; charset=utf-8"), ("application/json", "application/json; charset=utf-8"),
    ("text/javascript", "text/javascript; charset=utf-8"), ("image/png", "image/png"),
    ("text/plain; charset=latin1", "text/plain; charset=latin1"),
])
def test_charset(media, expected):
    assert with_charset(media) == expected


def _png() -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")
    ihdr = (1).to_bytes(4, "big") * 2 + bytes([8, 0, 0, 0, 0])
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0\0")) + chunk(b"IEND", b"")


@pytest.mark.parametrize("name, data, expected", [
    ("image", _png(), "image/png"),
    ("readme", b"just some plain words\n", "text/plain; charset=utf-8"),
    ("page", b"<!DOCTYPE html><html><body>x</body></html>", "text/html; charset=utf-8"),
    ("empty", b"", "application/octet-stream"),
    ("app.js", _png(), "text/javascript; charset=utf-8"),  # the extension wins: no sniffing
])
def test_content_type_sniffs_only_without_extension(tmp_path, name, data, expected):
    path = tmp_path / name
    path.write_bytes(data)
    fd = os.open(path, os.O_RDONLY)
    try:
        assert content_type(name, fd) == expected
    finally:
        os.close(fd)
