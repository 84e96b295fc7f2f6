"""Variants (RFC 9111 §4.1): which of a key's stored answers a request selects, by the fields its Vary names.

An answer with `Vary` is stored under its key plus a suffix; an empty marker object under the key itself
names the fields (`Meta.vary`), so a later request computes its suffix and looks up its own variant.
The suffix is the coding alone when Accept-Encoding is the only field (the layout edge has always
used), else `v<signature>.<digest>`: the signature names the set of fields (a new set replaces the
old variants: the cache manager drops those of another signature), the digest their normalised values.
"""

from __future__ import annotations

from hashlib import blake2b

CODING = "accept-encoding"
#: Fields whose values compare case-insensitively: media ranges, charsets, language tags (RFC 9110 §12.5).
_CASELESS = frozenset({"accept", "accept-charset", "accept-language"})
_ABSENT = "\0"  # a field the request lacks matches only a request that lacks it too (RFC 9111 §4.1)


def vary_names(value: str | None) -> frozenset[str] | None:
    """The lower-cased field names a Vary value lists (several lines joined by commas); None for `*`,
    which no request matches, so such an answer is never reused (RFC 9111 §4.1, RFC 9110 §12.5.5)."""
    if not value:
        return frozenset()
    names = frozenset(name.strip().lower() for name in value.split(",") if name.strip())
    return None if "*" in names else names


def keyed_names(names: frozenset[str], forwarded: frozenset[str]) -> tuple[str, ...] | None:
    """The names variants are selected by, sorted; None when one is a field edge does not forward. The
    origin answered edge's request, which lacked that field, so its answer suits only clients that lack
    it too: such an answer is not stored (RFC 9111 §4.1). Accept-Encoding always selects: edge asks the
    origin for each client's codings itself."""
    if any(name != CODING and name not in forwarded for name in names):
        return None
    return tuple(sorted(names))


def normalise(name: str, values: list[str]) -> str:
    """One field's lines as compared between requests (RFC 9111 §4.1): combined into one list, members
    with surrounding whitespace dropped, case folded where the field's values are case-insensitive."""
    members = [m.strip() for value in values for m in value.split(",")]
    joined = ",".join(m for m in members if m)
    return joined.lower() if name in _CASELESS else joined


def suffix(names: tuple[str, ...], coding: str, fields: list[tuple[bytes, bytes]]) -> str:
    """The key suffix of the variant a request selects: `names` from keyed_names, `coding` its
    normalised Accept-Encoding (stored.normalise_coding), `fields` the client fields it forwards."""
    if names == (CODING,):
        return coding
    seen: dict[str, list[str]] = {}
    for raw, value in fields:
        name = raw.decode("latin-1").lower()
        if name in names:
            seen.setdefault(name, []).append(value.decode("latin-1"))
    h = blake2b(digest_size=8)
    for name in names:
        if name == CODING:
            selected = coding
        else:
            lines = seen.get(name)
            selected = _ABSENT if lines is None else normalise(name, lines)
        h.update(b"%s\0%s\n" % (name.encode("latin-1"), selected.encode("latin-1")))
    return f"v{signature(names)}.{h.hexdigest()}"


def signature(names: tuple[str, ...]) -> str:
    """A short name for a set of Vary fields (8 hex digits)."""
    return blake2b(",".join(names).encode("latin-1"), digest_size=4).hexdigest()


def select(vary: str, key: bytes, name: str, coding: str, fields: list[tuple[bytes, bytes]] | tuple
           ) -> tuple[bytes, str, str | None]:
    """Where a request finds its variant of a key whose marker says `vary`: (variant key, variant name in
    the file cache, the coding to ask the origin for, or None for identity when the set lacks it)."""
    names = tuple(vary.split(","))
    tail = suffix(names, coding, fields)
    return key + b"\0" + tail.encode("latin-1"), name + "\0" + tail, coding if CODING in names else None


def indexed_key(key: str, marker: bool) -> str:
    """The key the cache manager indexes an object by: a marker's ends with NUL (see family)."""
    return key + "\0" if marker else key


def family(key: str) -> tuple[str, str | None] | None:
    """(base key, signature) of an indexed key: "" for a coding-only Vary, None for a marker; None for a
    key that is neither (a plain answer under its base key)."""
    base, sep, tail = key.partition("\0")
    if not sep:
        return None
    if not tail:
        return base, None
    return base, tail[1:9] if tail.startswith("v") and tail[9:10] == "." else ""


class Families:
    """The variants of each key the cache holds, oldest first: which must go when a key has more than
    `limit` or when a variant of a new Vary set replaces those of another (kept by the cache manager)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.by_base: dict[str, dict[str, str]] = {}  # base key -> {digest: signature}, in store order
        self.base_of: dict[str, str] = {}  # digest -> base key

    def __len__(self) -> int:
        return len(self.base_of)

    def add(self, name: str, key: str) -> list[str]:
        """Note the object `name` stored under `key`; the digests it displaces, for the caller to remove."""
        found = family(key)
        if found is None:  # a plain answer under a base key: the key varies no more, its variants go
            members = self.by_base.get(key)
            displaced = list(members) if members else []
            for other in displaced:
                self.discard(other)
            return displaced
        base, sig = found
        if sig is None:
            return []  # a marker: it names the fields, its variants stay
        self.discard(name)
        members = self.by_base.setdefault(base, {})
        displaced = [other for other, other_sig in members.items() if other_sig != sig]
        for other in displaced:
            self.discard(other)
        members = self.by_base.setdefault(base, {})
        members[name] = sig
        self.base_of[name] = base
        while len(members) > self.limit:  # Varnish-like cap: the least recently stored variant goes
            oldest = next(iter(members))
            self.discard(oldest)
            displaced.append(oldest)
        return displaced

    def discard(self, name: str) -> None:
        """Forget an object (evicted, purged or displaced)."""
        base = self.base_of.pop(name, None)
        if base is None:
            return
        members = self.by_base[base]
        del members[name]
        if not members:
            del self.by_base[base]
