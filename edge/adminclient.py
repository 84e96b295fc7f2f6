"""`edge purge` and `edge status`: the admin API from the command line, one node or a whole fleet by DNS."""

from __future__ import annotations

import json
import os
import socket
import sys
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

DEFAULT_ADMIN = "http://127.0.0.1:9090"
TIMEOUT = 15.0


class AdminError(Exception):
    """A node did not do what was asked; the message says what it answered."""


def call(base: str, method: str, path: str, token: str | None, body: dict | None = None) -> dict:
    """One admin request; the JSON answer, or AdminError with the node's own reason."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(base.rstrip("/") + path, data=data, method=method)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
            return json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as e:
        text = e.read().decode("utf-8", "replace").strip()
        try:
            text = json.loads(text).get("error", text)
        except (ValueError, AttributeError):
            pass
        raise AdminError(f"{e.code} {e.reason}: {text}") from None
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", e)
        raise AdminError(str(reason)) from None


def purge_body(paths: list[str], prefix: str | None, tag: list[str] | None, everything: bool) -> dict:
    """The POST /purge body for the command line's choice."""
    if everything:
        return {"all": True}
    if prefix is not None:
        return {"prefix": prefix}
    if tag:
        return {"tags": tag}
    return {"paths": paths}


def fleet(name: str, default_port: int = 9090) -> list[str]:
    """Every node NAME[:PORT] resolves to (A and AAAA records), as admin base URLs."""
    if name.startswith("["):  # [v6]:port or [v6]
        host, _, rest = name[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else str(default_port)
    elif name.count(":") == 1:
        host, _, port = name.partition(":")
    else:  # a name, an IPv4 address, or a bare IPv6 address
        host, port = name, str(default_port)
    try:
        infos = socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)
    except (socket.gaierror, ValueError) as e:
        raise AdminError(f"{name}: cannot resolve: {e}") from None
    out = []
    for family, _, _, _, addr in infos:
        url = f"http://[{addr[0]}]:{addr[1]}" if family == socket.AF_INET6 else f"http://{addr[0]}:{addr[1]}"
        if url not in out:
            out.append(url)
    return out


def purge(args) -> int:  # noqa: ANN001 - argparse namespace
    """`edge purge`: exit 0 when every node purged, 1 otherwise (one line per node)."""
    token = args.token or os.environ.get("EDGE_ADMIN_TOKEN")
    if not (args.all or args.prefix is not None or args.tag or args.paths):
        print("edge purge: name PATH..., --prefix P, --tag T or --all", file=sys.stderr)
        return 2
    body = purge_body(args.paths, args.prefix, args.tag, args.all)
    try:
        nodes = fleet(args.fleet) if args.fleet else [args.admin]
    except AdminError as e:
        print(f"edge purge: {e}", file=sys.stderr)
        return 1
    if not nodes:
        print(f"edge purge: {args.fleet} resolves to no address", file=sys.stderr)
        return 1

    def one(node: str) -> tuple[str, dict | None, str | None]:
        try:
            return node, call(node, "POST", "/purge", token, body), None
        except AdminError as e:
            return node, None, str(e)

    failed = 0
    with ThreadPoolExecutor(max_workers=min(32, len(nodes))) as pool:
        for node, answer, error in pool.map(one, nodes):
            if error is not None:
                failed += 1
                print(f"{node}: failed: {error}", file=sys.stderr)
            else:
                print(f"{node}: purged {answer.get('purged', 0)} "
                      f"({answer.get('disk_objects', 0)} from the disk cache, {answer.get('workers', 0)} workers)")
    return 1 if failed else 0


def status(args) -> int:  # noqa: ANN001 - argparse namespace
    """`edge status`: a readable summary of GET /status."""
    token = args.token or os.environ.get("EDGE_ADMIN_TOKEN")
    try:
        doc = call(args.admin, "GET", "/status", token)
    except AdminError as e:
        print(f"edge status: {args.admin}: {e}", file=sys.stderr)
        return 1
    totals = doc.get("totals", {})
    print(f"edge {doc['version']} up {doc['uptime']:.0f} s{' (draining)' if doc.get('draining') else ''}: "
          f"{totals.get('requests', 0)} requests, {totals.get('connections_active', 0)} connections open")
    for w in doc["workers"]:
        print(f"  worker pid {w['pid']} cpu {w['cpu']} node {w['numa_node']} gen {w['generation']} {w['state']}: "
              f"{w['requests']} requests, {w['connections_active']} open, up {w['uptime']:.0f} s")
    for o in doc["origins"]:
        print(f"  origin {o['url']} (weight {o['weight']}): {'healthy' if o['healthy'] else 'DOWN'}, "
              f"circuit {o['circuit']}")
    cache = doc["cache"]
    ratio = "-" if cache.get("hit_ratio") is None else f"{cache['hit_ratio']:.1%}"
    line = f"  cache: hit ratio {ratio} ({cache['hits']} hits, {cache['misses']} misses)"
    if "objects" in cache:
        line += f", {cache['objects']} objects, {cache['bytes']} bytes on disk, {cache['evictions']} evictions"
    print(line)
    return 0
