"""Content types: an extension table first, python-magic sniffing only when the extension says nothing."""

from __future__ import annotations

import mimetypes
import os

_MODERN = {
    ".html": "text/html", ".htm": "text/html", ".css": "text/css",
    ".js": "text/javascript", ".mjs": "text/javascript", ".cjs": "text/javascript",
    ".json": "application/json", ".map": "application/json", ".webmanifest": "application/manifest+json",
    ".jsonld": "application/ld+json", ".xml": "application/xml", ".txt": "text/plain", ".md": "text/markdown",
    ".csv": "text/csv", ".svg": "image/svg+xml", ".wasm": "application/wasm", ".webp": "image/webp",
    ".avif": "image/avif", ".heic": "image/heic", ".jxl": "image/jxl", ".apng": "image/apng",
    ".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".gif": "image/gif",
    ".ico": "image/vnd.microsoft.icon", ".woff": "font/woff", ".woff2": "font/woff2", ".ttf": "font/ttf",
    ".otf": "font/otf", ".mp4": "video/mp4", ".webm": "video/webm", ".m4s": "video/iso.segment",
    ".m3u8": "application/vnd.apple.mpegurl", ".mpd": "application/dash+xml", ".ts": "video/mp2t",
    ".mp3": "audio/mpeg", ".ogg": "audio/ogg", ".opus": "audio/ogg", ".flac": "audio/flac",
    ".pdf": "application/pdf", ".zip": "application/zip", ".gz": "application/gzip",
    ".br": "application/octet-stream", ".tar": "application/x-tar", ".bin": "application/octet-stream",
    ".yaml": "application/yaml", ".yml": "application/yaml", ".toml": "application/toml",
}

_TEXTUAL = ("application/javascript", "application/json", "application/xml", "application/manifest+json",
            "application/ld+json", "image/svg+xml", "application/yaml", "application/toml")

_mimetypes = mimetypes.MimeTypes()


def by_extension(name: str) -> str | None:
    """The media type for a file name's extension, or None when the extension is unknown or missing."""
    ext = os.path.splitext(name)[1].lower()
    if not ext:
        return None
    found = _MODERN.get(ext)
    if found is None:
        found = _mimetypes.types_map[True].get(ext)
    return found


def with_charset(media_type: str) -> str:
    """Add '; charset=utf-8' to textual types (text/*, JSON, XML, JavaScript, SVG)."""
    if "charset=" in media_type:
        return media_type
    if media_type.startswith("text/") or media_type in _TEXTUAL:
        return media_type + "; charset=utf-8"
    return media_type


_magic = None


def sniff(fd: int) -> str:
    """Guess a media type from a file's first bytes with python-magic (libmagic); reads at most 8 KiB."""
    global _magic
    if _magic is None:
        import magic
        _magic = magic.Magic(mime=True)
    head = os.pread(fd, 8192, 0)
    if not head:
        return "application/octet-stream"
    try:
        found = _magic.from_buffer(head)
    except Exception:  # libmagic can fail on odd input; an opaque type is the safe answer
        return "application/octet-stream"
    return found if found and "/" in found else "application/octet-stream"


def content_type(name: str, fd: int) -> str:
    """The Content-Type value for a file: extension table, else sniffed, with charset on text."""
    found = by_extension(name)
    if found is None:
        found = sniff(fd)
    return with_charset(found)
