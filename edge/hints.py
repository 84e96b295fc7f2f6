"""What a page should announce early: Link rel=preload values (103 Early Hints) and assets to push (HTTP/2)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Preload:
    """One `Link: <uri>; rel=preload` entry."""

    uri: str
    nopush: bool


@dataclass(frozen=True)
class PageHints:
    """For one page: Link header values to send in a 103, and same-origin paths to push."""

    links: tuple[bytes, ...]
    push: tuple[str, ...]


def _params(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for param in text.split(";"):
        name, eq, value = param.strip().partition("=")
        if name:
            out[name.strip().lower()] = value.strip().strip('"') if eq else ""
    return out


def _split_links(value: str) -> list[str]:
    """Split a Link field on the commas between entries (not those inside <...> or quotes)."""
    out, start, depth, quoted = [], 0, 0, False
    for i, c in enumerate(value):
        if c == '"':
            quoted = not quoted
        elif not quoted and c == "<":
            depth += 1
        elif not quoted and c == ">":
            depth = max(0, depth - 1)
        elif c == "," and not quoted and not depth:
            out.append(value[start:i])
            start = i + 1
    out.append(value[start:])
    return out


def parse_preloads(value: str) -> list[Preload]:
    """The rel=preload entries of a Link field value (RFC 8288), with their nopush flag."""
    found = []
    for entry in _split_links(value):
        entry = entry.strip()
        if not entry.startswith("<") or ">" not in entry:
            continue
        uri, _, rest = entry[1:].partition(">")
        params = _params(rest)
        if "preload" in params.get("rel", "").lower().split():
            found.append(Preload(uri.strip(), "nopush" in params))
    return found


def same_origin_path(uri: str) -> bool:
    """True for a path on this origin ('/a.css'), not a network-path or absolute reference."""
    return uri.startswith("/") and not uri.startswith("//") and not any(c in uri for c in " \r\n\0")


def page_hints(configured: tuple[str, ...], link_values: list[bytes], limit: int) -> PageHints | None:
    """Combine the [push] table's assets and the page's Link rel=preload values; None when there is nothing."""
    links = []
    push: list[str] = []
    for asset in configured:
        if asset not in push:
            push.append(asset)
    for value in link_values:
        preloads = parse_preloads(value.decode("latin-1"))
        if preloads:
            links.append(value)
        for preload in preloads:
            if not preload.nopush and same_origin_path(preload.uri) and preload.uri not in push:
                push.append(preload.uri)
    if not links and not push:
        return None
    return PageHints(tuple(links), tuple(push[:limit]))
