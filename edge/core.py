"""The sans-I/O heart: a request (method, target, header fields) and a cache lookup become a response plan."""

from __future__ import annotations

import fnmatch
import secrets
import time
from http import HTTPStatus

from .cachekey import KeyRule, digest
from .cachestatus import CacheStatus
from .conditional import Conditions, evaluate, if_range_allows
from .config import PushConfig
from .filecache import FileEntry, Lookup, NotFound, Redirect
from .hints import PageHints, page_hints
from .httpdate import format_http_date, parse_http_date
from .negotiation import choose_encoding
from .paths import BadTarget, encode_path, has_dot_segment, location_for, normalize_path, split_target
from .ranges import UNSATISFIABLE, content_range, parse_range
from .stored import NOT_MODIFIED_FIELDS, STREAMED, StoredEntry, normalise_coding
from .variants import select

REASONS = {
    200: "OK", 206: "Partial Content", 301: "Moved Permanently", 304: "Not Modified",
    400: "Bad Request", 403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed",
    408: "Request Timeout", 412: "Precondition Failed", 414: "URI Too Long",
    416: "Range Not Satisfiable", 431: "Request Header Fields Too Large",
    500: "Internal Server Error", 503: "Service Unavailable", 505: "HTTP Version Not Supported",
}
# Origins may answer with any registered status; this node passes those on with their usual reason.
REASONS.update({s.value: s.phrase for s in HTTPStatus if s.value not in REASONS and s.value >= 200})
# An origin's extension codes (299, 499, 599) pass on too, with their class's phrase: a client reads the
# code, the reason phrase is only for people (RFC 9112 §4).
REASONS.update({code: ("Success", "Redirection", "Client Error", "Server Error")[code // 100 - 2]
                for code in range(200, 600) if code not in REASONS})

Header = tuple[bytes, bytes]
#: The Allow field of a 405 for CONNECT or TRACE when origins are configured: the methods edge takes (any
#: other token method passes through too; these are the ones RFC 9110 §9.3 defines).
PASSED_METHODS = b"GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"

#: Seconds between checks of a stored origin object against the disk (at least file_cache.valid). Purges
#: reach the workers directly and refreshes have their own expiry; this only notices another worker's
#: new copy or an eviction (whose file an open fd would otherwise keep), so it need not be every second.
STORE_RECHECK = 5.0
#: Request targets whose parse is remembered per worker (cleared when full).
TARGET_MEMO = 4096
#: A body part: bytes, or (offset, length) read from the plan's entry by sendfile.
Part = bytes | tuple[int, int]


class Plan:
    """What to answer: status, header fields (without Connection; without Date unless `dated`), body, length.

    `entry` is the open file the (offset, length) parts refer to. `cache` is scratch space
    an adapter may use to keep its serialised form of a plan that is reused (e.g. the
    HTTP/1.1 header block), since precomputed plans live as long as their file entry.
    """

    __slots__ = ("status", "headers", "parts", "length", "entry", "cache", "dated")

    def __init__(self, status: int, headers: list[Header], parts: tuple[Part, ...], length: int,
                 entry: FileEntry | None = None, dated: bool = False) -> None:
        self.status = status
        self.headers = headers
        self.parts = parts
        self.length = length
        self.entry = entry
        self.cache: object = None
        self.dated = dated  # its fields have their own Date (a stored response's): adapters add none


class Request:
    """The parts of a request core looks at; adapters fill in only the fields that were sent."""

    # `forward` (client fields passed to an origin, [(name, value)]) is set only when one was sent; `client`
    # (the client's address, a str) only when an origin balancing policy needs it (ip-hash, edge/balance.py).
    __slots__ = ("method", "target", "range", "accept_encoding", "conditions", "forward", "client")

    def __init__(self, method: bytes, target: bytes) -> None:
        self.method = method
        self.target = target
        self.range: bytes | None = None
        self.accept_encoding: bytes | None = None
        self.conditions: Conditions | None = None


# Request header fields core reads -> small ints; both adapters dispatch on these.
RANGE, IF_RANGE, IF_MATCH, IF_NONE_MATCH, IF_MODIFIED_SINCE, IF_UNMODIFIED_SINCE, ACCEPT_ENCODING = range(7)
SEMANTIC_FIELDS = {b"range": RANGE, b"if-range": IF_RANGE, b"if-match": IF_MATCH, b"if-none-match": IF_NONE_MATCH,
                   b"if-modified-since": IF_MODIFIED_SINCE, b"if-unmodified-since": IF_UNMODIFIED_SINCE,
                   b"accept-encoding": ACCEPT_ENCODING}
_CONDITION_ATTR = {IF_RANGE: "if_range", IF_MATCH: "if_match", IF_NONE_MATCH: "if_none_match",
                   IF_MODIFIED_SINCE: "if_modified_since", IF_UNMODIFIED_SINCE: "if_unmodified_since"}


def apply_field(req: Request, field: int, value: bytes) -> None:
    """Record one semantic header field (a SEMANTIC_FIELDS value) on `req`; repeated list fields are joined."""
    if field == RANGE:
        req.range = value
    elif field == ACCEPT_ENCODING:
        req.accept_encoding = value if req.accept_encoding is None else req.accept_encoding + b"," + value
    else:
        if req.conditions is None:
            req.conditions = Conditions()
        attr = _CONDITION_ATTR[field]
        old = getattr(req.conditions, attr)
        setattr(req.conditions, attr, value if old is None else old + b"," + value)


class Miss:
    """core needs the file cache to (re)load `path` before it can answer (blocking I/O, done off the loop)."""

    __slots__ = ("path", "query")

    def __init__(self, path: str, query: bytes) -> None:
        self.path = path
        self.query = query


class Pass:
    """core sends the request on to an origin as it came, with its body (a method other than GET and HEAD,
    edge/passthrough.py): its answer is never stored (RFC 9111 §4.4, RFC 9211 fwd=method).

    `path` is the decoded, normalised URL path (what a purge names: the invalidation after an unsafe
    method); `target` the path percent-encoded, with the query, as the origin is asked for it; `body` the
    request's body on its way (a passthrough.RequestBody the adapter sets), None without one.
    """

    __slots__ = ("path", "target", "body")

    def __init__(self, path: str, target: str) -> None:
        self.path = path
        self.target = target
        self.body = None


class Fetch:
    """core needs the disk cache or an origin for `key`: load, revalidate or fetch it (the puller's job).

    `path` is percent-encoded, as the origin is asked for it; `name` is the key's name in the file cache; `entry` what is held for it (stale, or due for a
    check); `coding` the normalised Accept-Encoding when the object varies on it.
    """

    # `client` (the requesting client's address) is set only for ip-hash balancing: read with getattr.
    __slots__ = ("path", "query", "key", "name", "entry", "coding", "forward", "client", "_digest", "_digest_of")

    def __init__(self, path: str, query: bytes, key: bytes, name: str, entry: StoredEntry | None,
                 coding: str | None) -> None:
        self.path = path
        self.query = query
        self.key = key
        self.name = name
        self.entry = entry
        self.coding = coding
        self.forward: list[tuple[bytes, bytes]] | tuple = ()  # the request's fields for the origin
        self._digest = ""
        self._digest_of = b""

    @property
    def digest(self) -> str:
        """The object's name in the disk cache (cachekey.digest of `key`), worked out once per key."""
        if self._digest_of is not self.key:
            self._digest = digest(self.key)
            self._digest_of = self.key
        return self._digest


def authorizes(fields: list[tuple[bytes, bytes]] | tuple) -> bool:
    """Does a request with these fields for the origin carry Authorization (RFC 9111 §3.5)?"""
    return any(name.lower() == b"authorization" for name, _ in fields)


def store_name(key: bytes) -> str:
    """The file-cache name of an origin object (a NUL first: never a URL path, so never a local file's)."""
    return "\0" + key.decode("latin-1")


def _has_range_of_its_own(entry: StoredEntry) -> bool:
    """A stored 200 with the origin's own Content-Range: served whole, as it came, never cut into ranges."""
    return any(name == b"content-range" for name, _ in entry.stored_headers)


def _stored_date(entry: StoredEntry) -> int | None:
    """A stored response's Date (If-Range by date needs it; rare enough not to keep it parsed)."""
    value = next((v for k, v in entry.stored_headers if k == b"date"), None)
    return parse_http_date(value) if value is not None else None


def text_plan(status: int, extra: list[Header] | None = None, server: bytes = b"edge") -> Plan:
    """A small text/plain answer such as '404 Not Found'."""
    body = f"{status} {REASONS.get(status, '')}\n".encode("ascii")
    headers = [(b"server", server), (b"content-type", b"text/plain; charset=utf-8"),
               (b"content-length", b"%d" % len(body))]
    if extra:
        headers.extend(extra)
    return Plan(status, headers, (body,), len(body))


class Site:
    """Static-site semantics over a file cache: paths, preconditions, ranges, negotiation, header rules."""

    def __init__(self, cache, *, serve_dotfiles: bool = False, header_rules=(), server_name: str = "edge",
                 push: PushConfig | None = None, index: str = "index.html", cache_keys: KeyRule | None = None) -> None:
        self.cache = cache
        #: Set when origins are configured: what the root does not have is looked up by this key rule.
        self.cache_keys = cache_keys
        self.store_hits = 0  # fresh origin objects answered from this worker's cache (published as stats)
        # Read on the proxied hot path: the file cache's lookup by name and its revalidation interval.
        self._peek = cache.peek if cache_keys is not None else None
        self._valid = self.store_valid = max(cache.valid, STORE_RECHECK) if cache_keys is not None else STORE_RECHECK
        self.serve_dotfiles = serve_dotfiles
        self.rules = [(rule.match, [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in rule.set])
                      for rule in header_rules]
        self.server = server_name.encode("latin-1")
        self.boundary = b"edge-" + secrets.token_hex(12).encode("ascii")
        self.method_not_allowed = text_plan(405, [(b"allow", b"GET, HEAD")], self.server)
        self._errors: dict[int, Plan] = {405: self.method_not_allowed}
        #: With origins, the answer to CONNECT and TRACE (every other method passes through: Site.passing).
        self.not_passed = text_plan(405, [(b"allow", PASSED_METHODS)], self.server)
        self._targets: dict[bytes, tuple[str, bytes] | Plan] = {}
        # target -> (cache key, file-cache name, path encoded for the origin)
        self._store_keys: dict[bytes, tuple[bytes, str, str]] = {}
        push = push or PushConfig()
        self.push_pages = dict(push.pages)
        self.push_limit = push.max_per_request
        self.index = index
        #: Whether any page can have early hints or pushes (adapters skip all hint work otherwise).
        self.has_hints = bool(self.push_pages) or any(name == b"link" for _, hs in self.rules for name, _ in hs)
        self._hints: dict[str, PageHints | None] = {}

    def error(self, status: int) -> Plan:
        """The shared plan for a plain error status."""
        plan = self._errors.get(status)
        if plan is None:
            plan = self._errors[status] = text_plan(status, server=self.server)
        return plan

    def resolve(self, req: Request, now: float, root_only: bool = False) -> Plan | Miss | Fetch | None:
        """Answer `req` from the cache, or say which path must be loaded first. `root_only` (an Upgrade
        request, RFC 9110 §7.8): None where the root has no such file, as a tunnel is never a stored
        answer (RFC 9111 §3) and goes to an origin instead."""
        method = req.method
        if method != b"GET" and method != b"HEAD":
            return self.method_not_allowed if self.cache_keys is None else self.passing(req)
        target = req.target
        known = self._targets.get(target)
        if known is None:
            known = self._parse_target(target)
        if type(known) is Plan:
            return known
        path, query = known
        found = self.cache.lookup(path, now)
        if found is None:
            return Miss(path, query)
        if type(found) is NotFound and found.status == 404 and self.cache_keys is not None:
            if root_only:
                return None
            return self.from_store(req, path, query, now)  # the proxied path's hot case, one call shorter
        return self.respond(req, found, query, path, now)

    def root_answer(self, req: Request, found: Lookup, query: bytes, path: str, now: float) -> Plan | None:
        """resolve(root_only=True)'s answer once the root was looked at: its plan, or None when it has no
        such file."""
        if type(found) is NotFound and found.status == 404:
            return None
        plan = self.respond(req, found, query, path, now)
        return plan if type(plan) is Plan else None

    def passing(self, req: Request) -> Plan | Pass:
        """With origins, a method other than GET and HEAD goes to an origin as it came (a Pass), whatever the
        root holds (the root answers GET and HEAD only); a bad target gets its error plan. Not CONNECT: it asks
        for a tunnel (RFC 9110 §9.3.6), not a representation; not TRACE: the origin would reflect the request,
        cookies and credentials included, to whoever sent it (§9.3.8; nginx and most CDNs refuse it too)."""
        if req.method == b"CONNECT" or req.method == b"TRACE":
            return self.not_passed
        known = self._targets.get(req.target)
        if known is None:
            known = self._parse_target(req.target)
        if type(known) is Plan:
            return known
        path, query = known
        target = encode_path(path)
        return Pass(path, target + "?" + query.decode("latin-1") if query else target)

    def _parse_target(self, target: bytes) -> tuple[str, bytes] | Plan:
        """Split and normalise a target, or the error plan for it; memoised (it is a pure function)."""
        try:
            raw, query = split_target(target)
            path = normalize_path(raw)
        except BadTarget as e:
            known: tuple[str, bytes] | Plan = self.error(e.status)
        else:
            known = self.error(404) if not self.serve_dotfiles and has_dot_segment(path) else (path, query)
        if len(self._targets) >= TARGET_MEMO:
            self._targets.clear()  # hostile floods of unique targets cost a re-parse, not memory
        self._targets[target] = known
        return known

    def hints(self, target: bytes) -> PageHints | None:
        """Link rel=preload values (for 103) and assets to push for the page at `target`; memoised per path."""
        known = self._targets.get(target)
        if known is None:
            known = self._parse_target(target)
        if type(known) is Plan:
            return None
        path = known[0]
        try:
            return self._hints[path]
        except KeyError:
            pass
        configured = self.push_pages.get(path, ())
        if not configured and path.endswith("/"):
            configured = self.push_pages.get(path + self.index, ())
        links = [value for name, value in self._rule_headers(path) if name == b"link"]
        found = page_hints(configured, links, self.push_limit)
        if len(self._hints) >= TARGET_MEMO:
            self._hints.clear()
        self._hints[path] = found
        return found

    def respond(self, req: Request, found: Lookup, query: bytes, path: str = "", now: float = 0.0) -> Plan | Fetch:
        """Turn a cache answer into the plan for `req` (preconditions, negotiation, ranges).

        A path the root does not have goes on to the origin objects when origins are configured.
        """
        if type(found) is not FileEntry:
            if type(found) is Redirect:
                return self._redirect(found.path, query)
            if found.status == 404 and self.cache_keys is not None and path:
                return self.from_store(req, path, query, now)
            return self.error(found.status)
        entry = found
        if entry.variants and req.accept_encoding is not None:
            coding = choose_encoding(req.accept_encoding, entry.variants.keys())
            if coding is not None:
                entry = entry.variants[coding]
        cond = req.conditions
        if cond is not None:
            status = evaluate(cond, entry.etag, entry.last_modified)
            if status == 304:
                return self._not_modified(entry)
            if status:
                return self.error(status)
        if req.range is not None and entry.size and (
                cond is None or cond.if_range is None
                or if_range_allows(cond.if_range, entry.etag, entry.last_modified, time.time())):
            ranges = parse_range(req.range, entry.size)
            if ranges is not None:
                return self._partial(entry, ranges)
        plan = entry.plans.get(200)
        if plan is None:
            if entry.body is not None:
                parts: tuple[Part, ...] = (entry.body,) if entry.size else ()
            else:
                parts = ((0, entry.size),)
            plan = entry.plans[200] = Plan(200, self._representation_headers(entry, entry.size),
                                           parts, entry.size, entry)
        return plan

    def from_store(self, req: Request, path: str, query: bytes, now: float) -> Plan | Fetch:
        """A fresh origin object held by this worker as a plan; otherwise what the puller must do."""
        target = req.target
        known = self._store_keys.get(target)
        if known is None:
            path = encode_path(path)  # as the origin is asked for it: '/a%3Fb' is not '/a?b'
            key = self.cache_keys.key(path, query)
            known = (key, store_name(key), path)
            if len(self._store_keys) >= TARGET_MEMO:
                self._store_keys.clear()
            self._store_keys[target] = known
        key, name, path = known
        forward = getattr(req, "forward", None)  # set only when the request has a field for the origin
        if forward is not None and authorizes(forward):
            return Fetch(path, query, key, name, None, None)  # never a stored answer (RFC 9111 §3.5): pull.py
        entry = self._peek(name)
        coding = None
        if entry is not None and entry.vary:
            if now - entry.checked >= self._valid:
                return Fetch(path, query, key, name, None, None)  # the marker itself is due for a check
            key, name, coding = select(entry.vary, key, name, normalise_coding(req.accept_encoding), forward or ())
            entry = self.cache.peek(name)
        if entry is None or now >= entry.fresh_until or now - entry.checked >= self._valid:
            return Fetch(path, query, key, name, entry, coding)
        self.store_hits += 1
        if req.conditions is None and req.range is None and entry.age_second == int(
                entry.age_base + now - entry.loaded_at):
            plan = entry.plans.get(200 if entry.status == 200 else 0)
            if plan is not None:
                return plan  # a plain hit within the same second of age: the plan as it is
        return self.stored(req, entry, now)

    def stored(self, req: Request, entry: StoredEntry, now: float, cache_status: bytes | None = None) -> Plan:
        """The plan for an origin object: its stored header fields, Age and Cache-Status (RFC 9211).

        Without `cache_status` it is a plain hit, whose plans are reused until its Age changes.
        """
        age = int(entry.age_base + now - entry.loaded_at)
        if cache_status is None:
            plans = entry.plans
            if age != entry.age_second:
                plans.clear()
                entry.age_second = age
            elif req.conditions is None and req.range is None:
                plan = plans.get(200 if entry.status == 200 else 0)
                if plan is not None:
                    return plan
            cache_status = CacheStatus(hit=True, ttl=entry.ttl(now)).encode()
        else:
            plans = {}
        extra = [(b"age", b"%d" % max(age, 0)), (b"cache-status", cache_status)]
        cond = req.conditions
        if entry.status != 200 and (cond is None or not 200 <= entry.status < 300):
            # Preconditions count for 2xx answers only (RFC 9110 §13.2.1); ranges for 200 only.
            return self._whole_plan(entry, plans, 0, extra)
        if cond is not None:
            modified = entry.last_modified
            if modified is None and cond.if_modified_since is not None and cond.if_unmodified_since is None:
                # RFC 9111 §4.3.2: without Last-Modified, the stored Date (or when it was stored) stands in.
                modified = _stored_date(entry) or int(entry.meta.stored_at)
            status = evaluate(cond, entry.etag, modified)
            if status == 304:
                plan = plans.get(304)
                if plan is None:
                    headers = [(b"server", self.server)]
                    headers.extend(h for h in entry.stored_headers if h[0] in NOT_MODIFIED_FIELDS)
                    headers.extend(extra)
                    if self.rules:
                        headers = self._with_rules(headers, entry)
                    plan = plans[304] = Plan(304, headers, (), 0, entry, entry.dated)
                return plan
            if status:
                return text_plan(status, extra, self.server)  # 412, with the cache's fields like any answer
            if entry.status != 200:
                return self._whole_plan(entry, plans, 0, extra)
        # A body still arriving serves ranges too when its length is known: the transfer waits for their bytes.
        if req.range is not None and entry.size and entry.size < STREAMED and not _has_range_of_its_own(entry) and (
                cond is None or cond.if_range is None
                or if_range_allows(cond.if_range, entry.etag, entry.last_modified, _stored_date(entry), 60.0)):
            ranges = parse_range(req.range, entry.size)
            if ranges is not None:
                plan = self._partial(entry, ranges, lambda e, n: self._stored_headers(e, n, extra), extra)
                plan.dated = plan.status == 206 and entry.dated
                return plan
        return self._whole_plan(entry, plans, 200, extra)

    def _whole_plan(self, entry: StoredEntry, plans: dict, slot: int, extra: list[Header]) -> Plan:
        """The plan of a stored object's whole answer, kept in `plans` under `slot` while its Age holds."""
        plan = plans.get(slot)
        if plan is None:
            plan = plans[slot] = Plan(entry.status, self._stored_headers(entry, entry.size, extra),
                                      self._whole(entry), entry.size, entry, entry.dated)
        return plan

    @staticmethod
    def _whole(entry: FileEntry) -> tuple[Part, ...]:
        if not entry.size:
            return ()
        if entry.body is not None:
            return (entry.body,)
        return ((0, entry.size),)

    def _stored_headers(self, entry: StoredEntry, length: int, extra: list[Header]) -> list[Header]:
        headers = [(b"server", self.server), *entry.stored_headers]
        if entry.status != 204 and length < STREAMED:  # RFC 9110 §8.6: never in a 204
            headers.append((b"content-length", b"%d" % length))
        if entry.status == 200 and not _has_range_of_its_own(entry):
            headers.append((b"accept-ranges", b"bytes"))
        headers.extend(extra)
        return self._with_rules(headers, entry) if self.rules else headers

    def _with_rules(self, headers: list[Header], entry: StoredEntry) -> list[Header]:
        """An origin object's fields with the [[headers]] rules of its URL path: a rule's field replaces the
        origin's field of that name (the operator's word wins, as a Varnish deliver rule's would)."""
        ruled = self._rule_headers(entry.url_path())
        if not ruled:
            return headers
        names = {name for name, _ in ruled}
        return [h for h in headers if h[0] not in names] + ruled

    def _rule_headers(self, path: str) -> list[Header]:
        out: list[Header] = []
        for pattern, headers in self.rules:
            if fnmatch.fnmatchcase(path, pattern):
                out.extend(headers)
        return out

    def _vary(self, entry: FileEntry) -> list[Header]:
        if entry.encoding is not None or entry.variants:
            return [(b"vary", b"Accept-Encoding")]
        return []

    def _representation_headers(self, entry: FileEntry, length: int) -> list[Header]:
        headers = [(b"server", self.server), (b"content-type", entry.content_type.encode("latin-1")),
                   (b"content-length", b"%d" % length),
                   (b"last-modified", format_http_date(entry.last_modified).encode("ascii")),
                   (b"etag", entry.etag), (b"accept-ranges", b"bytes")]
        if entry.encoding is not None:
            headers.append((b"content-encoding", entry.encoding.encode("ascii")))
        headers.extend(self._vary(entry))
        headers.extend(self._rule_headers(entry.path))
        return headers

    def _not_modified(self, entry: FileEntry) -> Plan:
        plan = entry.plans.get(304)
        if plan is None:
            headers = [(b"server", self.server), (b"etag", entry.etag), (b"content-length", b"%d" % entry.size)]
            headers.extend(self._vary(entry))
            headers.extend(self._rule_headers(entry.path))
            plan = entry.plans[304] = Plan(304, headers, (), 0, entry)
        return plan

    def _partial(self, entry: FileEntry, ranges: list[tuple[int, int]], make_headers=None,  # noqa: ANN001
                 extra: list[Header] | tuple = ()) -> Plan:
        make_headers = make_headers or self._representation_headers
        size = entry.size
        if ranges is UNSATISFIABLE:
            return text_plan(416, [(b"content-range", b"bytes */%d" % size), *extra], self.server)
        if len(ranges) == 1:
            offset, length = ranges[0]
            headers = make_headers(entry, length)
            headers.append((b"content-range", content_range(offset, length, size)))
            return Plan(206, headers, ((offset, length),), length, entry)
        ctype = entry.content_type.encode("latin-1")
        parts: list[Part] = []
        total = 0
        for i, (offset, length) in enumerate(ranges):
            head = b"%s--%s\r\ncontent-type: %s\r\ncontent-range: %s\r\n\r\n" % (
                b"\r\n" if i else b"", self.boundary, ctype, content_range(offset, length, size))
            parts.append(head)
            parts.append((offset, length))
            total += len(head) + length
        tail = b"\r\n--%s--\r\n" % self.boundary
        parts.append(tail)
        total += len(tail)
        headers = [h for h in make_headers(entry, total) if h[0] != b"content-type"]
        headers.insert(1, (b"content-type", b"multipart/byteranges; boundary=" + self.boundary))
        return Plan(206, headers, tuple(parts), total, entry)

    def _redirect(self, path: str, query: bytes) -> Plan:
        location = location_for(path, query)
        return text_plan(301, [(b"location", location)], self.server)

