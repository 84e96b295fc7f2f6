"""Request-target to file path: decode once, normalise, refuse anything that could leave the root."""

from __future__ import annotations

import re
from urllib.parse import quote, unquote_to_bytes

_BAD_ESCAPE = re.compile(rb"%(?![0-9A-Fa-f]{2})")


class BadTarget(Exception):
    """The request target cannot name a file; `status` is the answer (400 or 404)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def split_target(target: bytes) -> tuple[bytes, bytes]:
    """Split a request target into (path, query), accepting origin-form and absolute-form."""
    if target[:1] != b"/":
        lower = target[:8].lower()
        if lower.startswith(b"http://") or lower.startswith(b"https://"):
            rest = target[target.index(b"//") + 2:]
            cut = min((i for i in (rest.find(b"/"), rest.find(b"?")) if i >= 0), default=len(rest))
            target = rest[cut:]
            if target[:1] != b"/":
                target = b"/" + target
        else:
            raise BadTarget(400, "request target must be an absolute path")
    q = target.find(b"?")
    if q < 0:
        path, query = target, b""
    else:
        path, query = target[:q], target[q + 1:]
    if b"#" in path:
        raise BadTarget(400, "fragment in request target")
    return path, query


def normalize_path(raw: bytes) -> str:
    """Percent-decode once and normalise `raw` (which starts with '/') to '/a/b' form; a trailing '/' is kept."""
    if b"%" in raw:
        if _BAD_ESCAPE.search(raw):
            raise BadTarget(400, "bad percent-encoding")
        raw = unquote_to_bytes(raw)
    if b"\0" in raw:
        raise BadTarget(400, "NUL in path")
    if b"\\" in raw:
        raise BadTarget(400, "backslash in path")
    if b"//" not in raw and b"/." not in raw:
        return raw.decode("utf-8", "surrogateescape")
    out: list[bytes] = []
    segments = raw.split(b"/")
    for seg in segments[1:]:
        if seg == b"" or seg == b".":
            continue
        if seg == b"..":
            if not out:
                raise BadTarget(400, "path escapes the root")
            out.pop()
            continue
        out.append(seg)
    trailing = segments[-1] in (b"", b".", b"..") and bool(out)
    path = b"/" + b"/".join(out) + (b"/" if trailing else b"")
    return path.decode("utf-8", "surrogateescape")


def has_dot_segment(path: str) -> bool:
    """True when some segment of a normalised path starts with '.' (a dotfile or dot-directory)."""
    return "/." in path


def encode_path(path: str) -> str:
    """A normalised path percent-encoded again for the wire: '?', '#', '%', spaces and non-ASCII escaped."""
    return quote(path.encode("utf-8", "surrogateescape"), safe="/:@!$&'()*+,;=-._~")


def location_for(path: str, query: bytes) -> bytes:
    """A safe Location value naming a normalised path (re-encoded) plus the original query."""
    encoded = encode_path(path)
    if query:
        return encoded.encode("ascii") + b"?" + query
    return encoded.encode("ascii")
