"""Content negotiation (RFC 9110 §12.5.3): choosing a precompressed variant from Accept-Encoding."""

from __future__ import annotations

#: Codings edge can serve from a precompressed file beside the original, in order of preference.
PREFERENCE = ("br", "gzip")


def parse_accept_encoding(value: bytes) -> dict[str, float]:
    """Map each coding named in Accept-Encoding (lower-cased) to its q-value; bad q-values count as 0."""
    out: dict[str, float] = {}
    for item in value.split(b","):
        coding, _, params = item.partition(b";")
        name = coding.strip().lower().decode("latin-1")
        if not name:
            continue
        q = 1.0
        for param in params.split(b";"):
            key, eq, val = param.partition(b"=")
            if eq and key.strip().lower() == b"q":
                try:
                    q = float(val.strip())
                except ValueError:
                    q = 0.0
                if not 0.0 <= q <= 1.0 or q != q:
                    q = 0.0
        if name == "x-gzip":
            name = "gzip"
        out[name] = q
    return out


def choose_encoding(accept: bytes | None, available: tuple[str, ...] | frozenset[str]) -> str | None:
    """The coding to serve among `available` ('br', 'gzip'), or None for the identity file.

    Highest q wins; on a tie br is preferred to gzip, and both to identity (they are smaller);
    identity that is not named explicitly counts as acceptable but least preferred.
    """
    if not accept or not available:
        return None
    prefs = parse_accept_encoding(accept)
    star = prefs.get("*")
    best, best_q = None, 0.0
    for coding in PREFERENCE:
        if coding not in available:
            continue
        q = prefs.get(coding, star if star is not None else 0.0)
        if q > best_q:
            best, best_q = coding, q
    if best is None:
        return None
    # Identity wins only when the client explicitly rates it above the best coding.
    identity = prefs.get("identity")
    return best if identity is None or best_q >= identity else None
