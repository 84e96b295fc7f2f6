"""What a purge names (paths, a prefix, tags or everything) and whether a cached path or object matches it."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from .paths import BadTarget, encode_path, normalize_path

MAX_ITEMS = 10_000
MAX_PATH = 8 * 1024  # as a request target may be
BATCH_BYTES = 128 * 1024  # of paths per command to the workers (a control datagram takes 256 KiB)
MAX_DEPTH = 4  # a purge body nests two levels ({"paths": [...]}); deeper is refused before parsing

_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"?')
_NOT_BRACKETS = bytes(set(range(256)) - set(b"[]{}"))


class BadPurge(ValueError):
    """A purge request that cannot be carried out; the message says why (the admin endpoint's 400)."""


@dataclass(frozen=True)
class Purge:
    """One purge: `paths` (URL paths, decoded as the file cache keys them), a `prefix`, `tags`, or `all`."""

    paths: tuple[str, ...] = ()
    prefix: str | None = None
    tags: frozenset[str] = frozenset()
    all: bool = False

    def to_json(self) -> dict:
        """The command form sent to workers."""
        return {"paths": list(self.paths), "prefix": self.prefix, "tags": sorted(self.tags), "all": self.all}

    @classmethod
    def from_json(cls, data: dict) -> Purge:
        """The inverse of to_json (trusted input from the admin endpoint)."""
        return cls(tuple(data.get("paths") or ()), data.get("prefix"), frozenset(data.get("tags") or ()),
                   bool(data.get("all")))

    def batches(self, budget: int = BATCH_BYTES) -> list[Purge]:
        """This purge cut into parts whose command fits one control datagram (only path lists get long)."""
        if not self.paths:
            return [self]
        out, current, size = [], [], 0
        for path in self.paths:
            cost = len(path.encode("utf-8", "surrogatepass")) * 6 + 4  # the worst case of JSON escaping
            if current and size + cost > budget:
                out.append(Purge(paths=tuple(current)))
                current, size = [], 0
            current.append(path)
            size += cost
        out.append(Purge(paths=tuple(current)))
        return out

    @property
    def encoded_paths(self) -> tuple[str, ...]:
        """The paths as origin objects' cache keys spell them (percent-encoded)."""
        return tuple(encode_path(p) for p in self.paths)

    def matches_path(self, path: str) -> bool:
        """Does it cover the local file (or 404) cached under the decoded URL path `path`?"""
        if self.all:
            return True
        if self.prefix is not None:
            return path.startswith(self.prefix)
        return path in self.paths

    def matches_key(self, key: str, tags: list[str] | tuple[str, ...] = ()) -> bool:
        """Does it cover the origin object stored under cache key `key` ('/p?q' or '/p\\0coding') with `tags`?"""
        if self.all:
            return True
        if self.tags:
            return not self.tags.isdisjoint(tags)
        path = key_path(key)
        if self.prefix is not None:
            return path.startswith(encode_path(self.prefix))
        return path in self.encoded_paths


def purge_cache(cache, purge: Purge) -> int:  # noqa: ANN001 - a filecache.FileCache
    """Drop what `purge` names from a worker's file cache; how many entries went.

    Local files are forced to a fresh stat; origin objects ('\0' + cache key) to a fresh disk lookup.
    """
    if purge.all:
        return cache.purge(None)
    dropped = 0
    for name in cache.names():
        if name.startswith("\0"):
            entry = cache.peek(name)
            hit = purge.matches_key(name[1:], getattr(entry, "tags", ()) or ())
        else:
            hit = not purge.tags and purge.matches_path(name)
        if hit:
            dropped += cache.purge(name)
    return dropped


def key_path(key: str) -> str:
    """The path part of a cache key: without its query and without a Vary coding suffix."""
    return key.split("\0", 1)[0].split("?", 1)[0]


def parse_purge(body: bytes) -> Purge:
    """A POST /purge body: exactly one of {"paths": [...]}, {"prefix": "/p/"}, {"tags": [...]}, {"all": true}."""
    if not nests_within(body, MAX_DEPTH):
        raise BadPurge(f"the body nests deeper than {MAX_DEPTH} levels")
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise BadPurge("the body is not JSON") from None
    if not isinstance(data, dict):
        raise BadPurge('expected an object such as {"paths": ["/a"]}')
    known = {"paths", "prefix", "tags", "all"}
    unknown = set(data) - known
    if unknown:
        raise BadPurge(f"unknown key {sorted(unknown)[0]!r} (expected one of paths, prefix, tags, all)")
    if len(data) != 1:
        raise BadPurge("give exactly one of paths, prefix, tags, all")
    (kind, value), = data.items()
    if kind == "all":
        if value is not True:
            raise BadPurge('"all" must be true')
        return Purge(all=True)
    if kind == "prefix":
        return Purge(prefix=_path(value, "prefix"))
    if not isinstance(value, list) or not value:
        raise BadPurge(f'"{kind}" must be a non-empty list')
    if len(value) > MAX_ITEMS:
        raise BadPurge(f'at most {MAX_ITEMS} {kind} per request')
    if kind == "tags":
        if not all(isinstance(t, str) and t and not any(c.isspace() for c in t) for t in value):
            raise BadPurge('"tags" must be non-empty strings without spaces')
        return Purge(tags=frozenset(value))
    return Purge(paths=tuple(dict.fromkeys(_path(p, "paths") for p in value)))


def nests_within(body: bytes, limit: int) -> bool:
    """True when the arrays and objects of a JSON text pair up within `limit` levels (strings don't count).

    Decided on the bytes in C-speed passes (one per level), so a hostile body costs little and is
    refused before a decoder recurses into it.
    """
    brackets = _JSON_STRING.sub(b"", body).translate(None, _NOT_BRACKETS)
    for _ in range(limit):
        if not brackets:
            return True
        # The innermost level goes; a placeholder keeps "{[]}" from losing two levels in one pass.
        brackets = brackets.replace(b"[]", b".").replace(b"{}", b".").replace(b".", b"")
    return not brackets  # what is left nests deeper, or does not pair up (not JSON either way)


def _path(value: object, what: str) -> str:
    """A URL path as the file cache keys it: decoded once and normalised (a query is not part of it)."""
    if not isinstance(value, str) or not value.startswith("/"):
        raise BadPurge(f'"{what}" must hold URL paths starting with "/", got {value!r}')
    if len(value) > MAX_PATH:
        raise BadPurge(f"a path longer than {MAX_PATH} characters cannot be a cached one")
    try:
        path = normalize_path(value.split("?", 1)[0].encode("utf-8"))
    except BadTarget as e:
        raise BadPurge(f"bad path {value!r}: {e}") from None
    if value.endswith("/") and not path.endswith("/"):
        path += "/"
    return path


class PurgeIndex:
    """Stored objects' cache keys and tags by digest, looked up by path and by tag (no scan for a path purge)."""

    def __init__(self) -> None:
        self.objects: dict[str, tuple[str, tuple[str, ...]]] = {}  # digest -> (key path, tags)
        self.by_path: dict[str, set[str]] = {}
        self.by_tag: dict[str, set[str]] = {}

    def __len__(self) -> int:
        return len(self.objects)

    def add(self, name: str, key: str, tags: list[str] | tuple[str, ...]) -> None:
        """Index (or re-index) the object `name` stored under `key` with `tags`."""
        self.discard(name)
        path = key_path(key)
        self.objects[name] = (path, tuple(tags))
        self.by_path.setdefault(path, set()).add(name)
        for tag in tags:
            self.by_tag.setdefault(tag, set()).add(name)

    def discard(self, name: str) -> None:
        """Forget an object (evicted or purged)."""
        known = self.objects.pop(name, None)
        if known is None:
            return
        path, tags = known
        for table, value in ((self.by_path, path), *((self.by_tag, t) for t in tags)):
            names = table.get(value)
            if names is not None:
                names.discard(name)
                if not names:
                    del table[value]

    def select(self, purge: Purge) -> set[str]:
        """The digests `purge` names."""
        if purge.all:
            return set(self.objects)
        out: set[str] = set()
        if purge.tags:
            for tag in purge.tags:
                out |= self.by_tag.get(tag, set())
        elif purge.prefix is not None:
            prefix = encode_path(purge.prefix)
            for path, names in self.by_path.items():
                if path.startswith(prefix):
                    out |= names
        else:
            for path in purge.encoded_paths:
                out |= self.by_path.get(path, set())
        return out
