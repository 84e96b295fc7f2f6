"""Configuration: the TOML file, command-line overrides and validation of every key."""

from __future__ import annotations

import os
import tomllib
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from .balance import POLICIES
from .topology import parse_cpulist


class ConfigError(ValueError):
    """A configuration key is unknown or has a bad value; the message names the key."""


@dataclass(frozen=True)
class HeaderRule:
    """Response headers set on every path that matches a glob."""

    match: str
    set: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class FileCacheConfig:
    """Per-worker open-file cache settings."""

    max_entries: int = 10_000
    valid: float = 1.0
    inline_max: int = 16_384


@dataclass(frozen=True)
class Http2Config:
    """HTTP/2 settings and abuse limits (per connection); each limit ends the connection with GOAWAY."""

    max_concurrent_streams: int = 128
    max_requests: int = 10_000  # then GOAWAY(NO_ERROR): the client opens a fresh connection
    max_header_list_size: int = 65_536  # decoded header list (HPACK bomb)
    max_header_block_size: int = 65_536  # encoded HEADERS + CONTINUATION (CONTINUATION flood)
    reset_rate: float = 100.0  # stream resets per second, client-sent and server-sent (Rapid/MadeYou Reset)
    reset_burst: int = 200
    ping_rate: float = 10.0
    ping_burst: int = 50
    settings_rate: float = 10.0
    settings_burst: int = 50
    empty_data_rate: float = 100.0
    empty_data_burst: int = 200
    priority_rate: float = 100.0
    priority_burst: int = 500
    stall_timeout: float = 30.0  # seconds a response may wait for a peer that never opens its window
    engine: str = "edge"  # "edge" (edge/h2engine.py) or "h2" (the h2 library, the reference)


@dataclass(frozen=True)
class PushConfig:
    """HTTP/2 server push: page path -> asset paths, and how many pushes one request may cause."""

    pages: tuple[tuple[str, tuple[str, ...]], ...] = ()
    max_per_request: int = 8


@dataclass(frozen=True)
class Origin:
    """One origin server of the pool."""

    url: str
    weight: int = 1
    host_header: str | None = None


@dataclass(frozen=True)
class CacheConfig:
    """The on-disk cache of origin responses (used only when origins are configured)."""

    dir: str | None = None  # None: /var/cache/edge when writable, else the user's cache directory
    max_size: int = 10 << 30
    default_ttl: float = 60.0  # for responses that say nothing about their freshness
    query: str | tuple[str, ...] = "keep"  # query in the cache key: keep, ignore, or the names kept
    min_free: int = 64 << 20  # bytes the cache's filesystem keeps free: no store below, evictions restore it
    max_variants: int = 16  # stored answers per key that differ by their Vary fields (Varnish-like)


@dataclass(frozen=True)
class HealthConfig:
    """Active checks (one checker per node) and the passive circuit breaker of each worker."""

    path: str = "/healthz"
    interval: float = 5.0
    timeout: float = 2.0
    rise: int = 2  # checks in a row that bring a down origin back
    fall: int = 3  # failed checks in a row that take an origin out
    failures: int = 5  # failed requests in a row that open an origin's circuit in a worker
    cooldown: float = 10.0  # seconds an open circuit waits before one trial request
    failure_statuses: tuple[int, ...] = ()  # origin answers (5xx) that count as failures and try the next origin


@dataclass(frozen=True)
class ProxyConfig:
    """The origin client: timeouts, connection pools and the request fields passed on."""

    connect_timeout: float = 2.0
    read_timeout: float = 10.0
    max_connections: int = 64  # per origin, per worker
    forward_headers: tuple[str, ...] = ()  # client request fields sent to the origin (none by default)
    balance: str = "consistent"  # edge/balance.py: consistent, round-robin, least-conn, ip-hash
    # The largest request body passed through to an origin (edge/passthrough.py), as nginx's
    # client_max_body_size: 413 beyond it (at once from Content-Length, else when the stream passes it).
    max_body_size: int = 100 << 20


@dataclass(frozen=True)
class WebSocketConfig:
    """Tunnels (WebSocket over HTTP/1.1 Upgrade and RFC 8441) to origins."""

    balance: str = "least-conn"  # the origin a tunnel goes to (edge/balance.py policies)
    enabled: bool = True  # with origins: an Upgrade: websocket the root does not answer is tunnelled to one
    idle_timeout: float = 300.0  # seconds without a byte either way that end a tunnel
    max_tunnels: int = 10_000  # open tunnels per worker; an upgrade beyond gets 503


SIZE_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(text: str | int) -> int:
    """'10G', '512M', '100k' or a plain number of bytes."""
    if isinstance(text, int) and not isinstance(text, bool):
        if text < 0:
            raise ValueError(f"negative size {text}")
        return text
    if not isinstance(text, str):
        raise ValueError(f"not a size: {text!r}")
    raw = text.strip().upper().removesuffix("B")
    if raw[-2:-1] in ("K", "M", "G", "T"):
        raw = raw.removesuffix("I")  # KiB, MiB...: binary units are what is meant anyway
    unit = raw[-1:] if raw[-1:] in SIZE_UNITS and raw[-1:] else ""
    number = raw[: len(raw) - len(unit)].strip()
    try:
        value = float(number)
    except ValueError:
        raise ValueError(f"not a size: {text!r} (use e.g. 10G, 512M)") from None
    if value < 0 or value != value or value == float("inf"):
        raise ValueError(f"not a size: {text!r}")
    total = value * SIZE_UNITS[unit]
    if total == float("inf"):
        raise ValueError(f"size too large: {text!r}")
    return int(total)


@dataclass(frozen=True)
class TlsConfig:
    """The TLS listener: port and certificate files (none: no TLS listener)."""

    port: int | None = None
    cert: str | None = None
    key: str | None = None


@dataclass(frozen=True)
class Config:
    """Every setting of `edge serve`, validated."""

    root: str = "."
    host: str = "0.0.0.0"
    port: int = 8080
    workers: int | str = "auto"
    cpu_affinity: str | tuple[frozenset[int], ...] = "auto"
    incoming_cpu: bool = True  # SO_INCOMING_CPU on pinned workers' sockets
    header_timeout: float = 10.0
    keepalive_timeout: float = 75.0
    send_timeout: float = 60.0
    shutdown_timeout: float = 30.0
    access_log: str | None = None
    follow_symlinks: str = "inside-root"
    serve_dotfiles: bool = False
    index: str = "index.html"
    server_name: str = "edge"
    file_cache: FileCacheConfig = field(default_factory=FileCacheConfig)
    headers: tuple[HeaderRule, ...] = ()
    http2: Http2Config = field(default_factory=Http2Config)
    push: PushConfig = field(default_factory=PushConfig)
    early_hints: bool = False
    tls: TlsConfig = field(default_factory=TlsConfig)
    admin: tuple[str, int] | None = ("127.0.0.1", 9090)  # None: no admin endpoint ("off")
    admin_token: str | None = None
    origins: tuple[Origin, ...] = ()
    cache: CacheConfig = field(default_factory=CacheConfig)
    health: HealthConfig = field(default_factory=HealthConfig)
    proxy: ProxyConfig = field(default_factory=ProxyConfig)
    websocket: WebSocketConfig = field(default_factory=WebSocketConfig)


SYMLINK_POLICIES = ("inside-root", "never", "always")
ENGINES = ("edge", "h2")  # [http2] engine
BALANCE_POLICIES = POLICIES  # [proxy] balance and [websocket] balance (edge/balance.py)
MAX_WORKERS = 1024


def _number(key: str, value: Any, *, kind: type, minimum: float, maximum: float | None = None) -> Any:
    if isinstance(value, bool) or not isinstance(value, (int, float) if kind is float else int):
        raise ConfigError(f"{key}: expected {'a number' if kind is float else 'an integer'}, got {value!r}")
    if value < minimum or (maximum is not None and value > maximum):
        bound = f"between {minimum} and {maximum}" if maximum is not None else f"at least {minimum}"
        raise ConfigError(f"{key}: must be {bound}, got {value!r}")
    return kind(value)


def _string(key: str, value: Any, *, choices: tuple[str, ...] | None = None) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    if choices is not None and value not in choices:
        raise ConfigError(f"{key}: must be one of {', '.join(choices)}, got {value!r}")
    return value


def _workers(key: str, value: Any) -> int | str:
    if value == "auto":
        return "auto"
    if isinstance(value, str) and value.isascii() and value.isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_WORKERS:
        raise ConfigError(f"{key}: expected \"auto\" or an integer from 1 to {MAX_WORKERS}, got {value!r}")
    return value


def _cpu_affinity(key: str, value: Any) -> str | tuple[frozenset[int], ...]:
    """"auto", "off", or CPU sets as an array (["0", "1", "2-3"]) or one string of space-separated sets."""
    if value in ("auto", "off"):
        return value
    items = value.split() if isinstance(value, str) else value
    if not isinstance(items, list) or not items:
        raise ConfigError(f"{key}: expected \"auto\", \"off\" or a list of CPU sets such as [\"0\", \"1-3\"], "
                          f"got {value!r}")
    sets = []
    for item in items:
        if isinstance(item, int) and not isinstance(item, bool) and item >= 0:
            cpus = {item}
        elif isinstance(item, str):
            try:
                cpus = parse_cpulist(item)
            except ValueError as e:
                raise ConfigError(f"{key}: {e}") from None
        else:
            raise ConfigError(f"{key}: expected a CPU number or a CPU list string, got {item!r}")
        if not cpus:
            raise ConfigError(f"{key}: empty CPU set")
        sets.append(frozenset(cpus))
    return tuple(sets)


def _table(key: str, value: Any, cls: type, check: Callable[[str, str, Any], Any]) -> Any:
    """A TOML table of `cls`'s fields, each value checked by check(name, "table.name", value)."""
    if not isinstance(value, dict):
        raise ConfigError(f"{key}: expected a table")
    known = {f.name for f in fields(cls)}
    out: dict[str, Any] = {}
    for name, item in value.items():
        sub = f"{key}.{name}"
        if name not in known:
            raise ConfigError(f"{sub}: unknown key")
        out[name] = check(name, sub, item)
    return cls(**out)


def _file_cache(key: str, value: Any) -> FileCacheConfig:
    return _table(key, value, FileCacheConfig, _file_cache_field)


def _file_cache_field(name: str, sub: str, item: Any) -> Any:
    if name == "max_entries":
        return _number(sub, item, kind=int, minimum=1)
    elif name == "valid":
        return _number(sub, item, kind=float, minimum=0)
    elif name == "inline_max":
        return _number(sub, item, kind=int, minimum=0, maximum=1 << 20)


def _http2(key: str, value: Any) -> Http2Config:
    if not isinstance(value, dict):
        raise ConfigError(f"{key}: expected a table")
    defaults = Http2Config()
    out: dict[str, Any] = {}
    for name, item in value.items():
        sub = f"{key}.{name}"
        if not hasattr(defaults, name):
            raise ConfigError(f"{sub}: unknown key")
        if name == "engine":
            out[name] = _string(sub, item, choices=ENGINES)
            continue
        kind = type(getattr(defaults, name))
        out[name] = _number(sub, item, kind=kind, minimum=1 if kind is int else 0.001,
                            maximum=(1 << 31) - 1 if kind is int else None)
    return Http2Config(**out)


def _push(key: str, value: Any) -> PushConfig:
    """[push]: "/page" = ["/asset", ...] entries plus max_per_request."""
    if not isinstance(value, dict):
        raise ConfigError(f"{key}: expected a table")
    pages = []
    limit = PushConfig.max_per_request
    for name, item in value.items():
        sub = f"{key}.{name}"
        if name == "max_per_request":
            limit = _number(sub, item, kind=int, minimum=0, maximum=100)
            continue
        if not name.startswith("/"):
            raise ConfigError(f"{sub}: unknown key (pages start with '/')")
        if not isinstance(item, list) or not all(isinstance(a, str) for a in item):
            raise ConfigError(f"{key}.\"{name}\": expected an array of paths")
        for asset in item:
            if not asset.startswith("/") or asset.startswith("//") or any(c in asset for c in " \r\n\0"):
                raise ConfigError(f"{key}.\"{name}\": {asset!r} is not a same-origin path")
        pages.append((name, tuple(item)))
    return PushConfig(tuple(pages), limit)


def _origins(key: str, value: Any) -> tuple[Origin, ...]:
    """[[origin]] tables (url, weight, host_header) or, from the command line, a list of URLs."""
    if not isinstance(value, list) or not value:
        raise ConfigError(f"{key}: expected a non-empty array of [[origin]] tables or URLs")
    out = []
    for i, item in enumerate(value):
        where = f"{key}[{i}]"
        if isinstance(item, str):
            item = {"url": item}
        if not isinstance(item, dict):
            raise ConfigError(f"{where}: expected a table with url, weight, host_header")
        unknown = set(item) - {"url", "weight", "host_header"}
        if unknown:
            raise ConfigError(f"{where}.{sorted(unknown)[0]}: unknown key")
        url = _string(f"{where}.url", item.get("url"))
        if not _origin_url_ok(url):
            raise ConfigError(f"{where}.url: expected http://host[:port] or https://host[:port], got {url!r}")
        weight = _number(f"{where}.weight", item.get("weight", 1), kind=int, minimum=1, maximum=100)
        host = item.get("host_header")
        if host is not None:
            host = _string(f"{where}.host_header", host)
            if not host or any(c in host for c in "\r\n\0 \t/"):
                raise ConfigError(f"{where}.host_header: expected host[:port], got {host!r}")
        out.append(Origin(url.rstrip("/"), weight, host))
    if len({o.url for o in out}) != len(out):
        raise ConfigError(f"{key}: the same origin URL is listed twice")
    return tuple(out)


def _origin_url_ok(url: str) -> bool:
    """scheme http or https, a host, an optional numeric port, an optional path; no query or fragment."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return False
    return (parts.scheme in ("http", "https") and bool(parts.hostname) and not parts.query and not parts.fragment
            and "@" not in parts.netloc and (port is None or 0 < port < 65536))


def _cache(key: str, value: Any) -> CacheConfig:
    return _table(key, value, CacheConfig, _cache_field)


def _cache_field(name: str, sub: str, item: Any) -> Any:
    if name == "dir":
        path = _string(sub, item)
        if not path:
            raise ConfigError(f"{sub}: expected a directory, got an empty string")
        return path
    if name in ("max_size", "min_free"):
        try:
            return parse_size(item)
        except ValueError as e:
            raise ConfigError(f"{sub}: {e}") from None
    elif name == "default_ttl":
        return _number(sub, item, kind=float, minimum=0)
    elif name == "max_variants":
        return _number(sub, item, kind=int, minimum=1)
    elif name == "query":
        if item in ("keep", "ignore"):
            return item
        elif isinstance(item, (list, tuple)) and item and all(isinstance(q, str) and q for q in item):
            return tuple(item)
        else:
            raise ConfigError(f"{sub}: expected \"keep\", \"ignore\" or a list of parameter names")


def _health(key: str, value: Any) -> HealthConfig:
    return _table(key, value, HealthConfig, _health_field)


def _health_field(name: str, sub: str, item: Any) -> Any:
    if name == "path":
        item = _string(sub, item)
        if not item.startswith("/") or any(c in item for c in " \r\n\0"):
            raise ConfigError(f"{sub}: expected a path starting with '/', got {item!r}")
        return item
    elif name in ("interval", "timeout", "cooldown"):
        return _number(sub, item, kind=float, minimum=0.05)
    elif name in ("rise", "fall", "failures"):
        return _number(sub, item, kind=int, minimum=1, maximum=1000)
    elif name == "failure_statuses":
        # Only 5xx: a 4xx is about the request, and a 2xx/3xx counted as a failure would take a working
        # origin out (nginx's proxy_next_upstream likewise offers 5xx codes, plus 403/404 it never counts).
        if not isinstance(item, (list, tuple)) or not all(
                isinstance(code, int) and not isinstance(code, bool) and 500 <= code <= 599 for code in item):
            raise ConfigError(f"{sub}: expected a list of HTTP status codes from 500 to 599, got {item!r}")
        return tuple(sorted(set(item)))


def _proxy(key: str, value: Any) -> ProxyConfig:
    return _table(key, value, ProxyConfig, _proxy_field)


def _proxy_field(name: str, sub: str, item: Any) -> Any:
    if name in ("connect_timeout", "read_timeout"):
        return _number(sub, item, kind=float, minimum=0.01)
    elif name == "max_connections":
        return _number(sub, item, kind=int, minimum=1, maximum=100000)
    elif name == "forward_headers":
        if not isinstance(item, list) or not all(isinstance(h, str) and h and all(
                c.isalnum() or c in "!#$%&'*+-.^_`|~" for c in h) for h in item):
            raise ConfigError(f"{sub}: expected a list of header names")
        return tuple(h.lower() for h in item)
    elif name == "balance":
        return _string(sub, item, choices=BALANCE_POLICIES)
    elif name == "max_body_size":
        try:
            return parse_size(item)
        except ValueError as e:
            raise ConfigError(f"{sub}: {e}") from None


def _websocket(key: str, value: Any) -> WebSocketConfig:
    return _table(key, value, WebSocketConfig, _websocket_field)


def _websocket_field(name: str, sub: str, item: Any) -> Any:
    if name == "balance":
        return _string(sub, item, choices=BALANCE_POLICIES)
    elif name == "enabled":
        if not isinstance(item, bool):
            raise ConfigError(f"{sub}: expected true or false, got {item!r}")
        return item
    elif name == "idle_timeout":
        return _number(sub, item, kind=float, minimum=0.01)
    elif name == "max_tunnels":
        return _number(sub, item, kind=int, minimum=1, maximum=1_000_000)


def _tls(key: str, value: Any) -> TlsConfig:
    return _table(key, value, TlsConfig, _tls_field)


def _tls_field(name: str, sub: str, item: Any) -> Any:
    if name == "port":
        return None if item is None else _number(sub, item, kind=int, minimum=0, maximum=65535)
    elif name in ("cert", "key"):
        return None if item in (None, "") else _string(sub, item)


def _headers(key: str, value: Any) -> tuple[HeaderRule, ...]:
    if not isinstance(value, list):
        raise ConfigError(f"{key}: expected an array of tables ([[headers]])")
    rules = []
    for i, item in enumerate(value):
        where = f"{key}[{i}]"
        if not isinstance(item, dict):
            raise ConfigError(f"{where}: expected a table")
        unknown = set(item) - {"match", "set"}
        if unknown:
            raise ConfigError(f"{where}.{sorted(unknown)[0]}: unknown key")
        match = _string(f"{where}.match", item.get("match"))
        if not match.startswith(("/", "*")):
            raise ConfigError(f"{where}.match: must start with '/' or '*', got {match!r}")
        pairs = item.get("set")
        if not isinstance(pairs, dict) or not pairs:
            raise ConfigError(f"{where}.set: expected a non-empty table of header names to values")
        checked = []
        for name, val in pairs.items():
            if not name or not all(c.isalnum() or c in "!#$%&'*+-.^_`|~" for c in name):
                raise ConfigError(f"{where}.set: bad header name {name!r}")
            val = _string(f"{where}.set.{name}", val)
            if any(c in val for c in "\r\n\0"):
                raise ConfigError(f"{where}.set.{name}: control characters are not allowed")
            checked.append((name, val))
        rules.append(HeaderRule(match=match, set=tuple(checked)))
    return tuple(rules)


def parse_admin(key: str, value: Any) -> tuple[str, int] | None:
    """'HOST:PORT' ('[v6]:PORT' for IPv6) or 'off'."""
    text = _string(key, value).strip()
    if text == "off":
        return None
    host, sep, port = text.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ConfigError(f"{key}: expected HOST:PORT (e.g. 127.0.0.1:9090) or off, got {text!r}")
    return host, int(port)


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 or localhost."""
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _validate_key(key: str, value: Any) -> Any:
    """Check one top-level key and return its typed value."""
    if key == "admin":
        return parse_admin(key, value)
    if key == "admin_token":
        token = _string(key, value)
        if not token or any(c.isspace() or not c.isprintable() for c in token):
            raise ConfigError(f"{key}: must be a non-empty token without spaces or control characters")
        return token
    if key in ("root", "host", "index", "server_name"):
        value = _string(key, value)
        if not value:
            raise ConfigError(f"{key}: must not be empty")
        if key == "index" and "/" in value:
            raise ConfigError(f"{key}: must be a file name, got {value!r}")
        if key == "server_name" and any(c in value for c in "\r\n\0"):
            raise ConfigError(f"{key}: control characters are not allowed")
        return value
    if key == "port":
        return _number(key, value, kind=int, minimum=0, maximum=65535)
    if key == "workers":
        return _workers(key, value)
    if key == "cpu_affinity":
        return _cpu_affinity(key, value)
    if key in ("header_timeout", "keepalive_timeout", "send_timeout", "shutdown_timeout"):
        return _number(key, value, kind=float, minimum=0)
    if key == "access_log":
        if value is None or value == "":
            return None
        return _string(key, value)
    if key == "follow_symlinks":
        return _string(key, value, choices=SYMLINK_POLICIES)
    if key == "push":
        return _push(key, value)
    if key in ("serve_dotfiles", "early_hints", "incoming_cpu"):
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if key == "file_cache":
        return _file_cache(key, value)
    if key == "headers":
        return _headers(key, value)
    if key == "http2":
        return _http2(key, value)
    if key == "tls":
        return _tls(key, value)
    if key in ("origin", "origins"):
        return _origins("origin", value)
    if key == "cache":
        return _cache(key, value)
    if key == "health":
        return _health(key, value)
    if key == "proxy":
        return _proxy(key, value)
    if key == "websocket":
        return _websocket(key, value)
    raise ConfigError(f"{key}: unknown key")


def from_mapping(data: dict[str, Any], base: Config | None = None) -> Config:
    """Build a Config from a mapping of keys (as in the TOML file) over `base`."""
    values = {_FIELD_OF.get(key, key): _validate_key(key, value) for key, value in data.items()}
    return replace(base or Config(), **values)


_FIELD_OF = {"origin": "origins"}  # TOML's [[origin]] tables fill Config.origins


def load(path: str | None, overrides: dict[str, Any] | None = None) -> Config:
    """Read the TOML file at `path` (if any), then apply command-line `overrides`."""
    config = Config()
    if path is not None:
        try:
            with open(path, "rb") as f:
                data = tomllib.load(f)
        except OSError as e:
            raise ConfigError(f"{path}: cannot read: {e.strerror}") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{path}: not valid TOML: {e}") from None
        config = from_mapping(data, config)
    if overrides:
        flat = {k: v for k, v in overrides.items() if v is not None}
        for table in ("tls", "cache", "health"):  # flags set single fields of these tables
            if table in flat:
                current = {k: v for k, v in asdict(getattr(config, table)).items() if v is not None}
                flat[table] = {**current, **flat[table]}
        config = from_mapping(flat, config)
    env = {k: os.environ[v] for k, v in (("admin", "EDGE_ADMIN"), ("admin_token", "EDGE_ADMIN_TOKEN"))
           if os.environ.get(v) and k not in (overrides or {})}
    if env:  # environment (containers) over the file, flags over both
        config = from_mapping(env, config)
    engine = os.environ.get("EDGE_HTTP2_ENGINE")
    if engine:  # e.g. a whole test run on the reference engine
        config = replace(config, http2=replace(config.http2, engine=_string("EDGE_HTTP2_ENGINE", engine,
                                                                            choices=ENGINES)))
    if config.admin is not None and config.admin_token is None and not is_loopback(config.admin[0]):
        raise ConfigError("admin: without a token (--admin-token or EDGE_ADMIN_TOKEN) the admin endpoint "
                          f"only listens on loopback, not {config.admin[0]}")
    root = os.path.abspath(config.root)
    if not os.path.isdir(root):
        raise ConfigError(f"root: not a directory: {config.root}")
    tls = config.tls
    if (tls.port is None) != (tls.cert is None) or (tls.cert is None) != (tls.key is None):
        raise ConfigError("tls: port, cert and key go together (--tls-port, --tls-cert, --tls-key)")
    if tls.cert is not None:
        tls = replace(tls, cert=os.path.abspath(tls.cert), key=os.path.abspath(tls.key))
        check_tls(tls)
    cache = config.cache
    if config.origins and cache.dir is None:
        cache = replace(cache, dir=default_cache_dir())
    elif cache.dir is not None:
        cache = replace(cache, dir=os.path.abspath(cache.dir))
    return replace(config, root=root, tls=tls, cache=cache)


def default_cache_dir() -> str:
    """/var/cache/edge when it is (or can be made) writable, else the user's cache directory."""
    system = "/var/cache/edge"
    try:
        os.makedirs(system, exist_ok=True)
        if os.access(system, os.W_OK | os.X_OK):
            return system
    except OSError:
        pass
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.abspath(os.path.join(base, "edge"))


def check_tls(tls: TlsConfig) -> None:
    """Load the certificate and key once, so a bad pair is a config error (at start and on reload)."""
    import ssl

    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(tls.cert, tls.key)
    except OSError as e:
        raise ConfigError(f"tls: cannot read {e.filename or tls.cert}: {e.strerror}") from None
    except ssl.SSLError as e:
        raise ConfigError(f"tls: bad certificate or key ({e.reason or e})") from None

