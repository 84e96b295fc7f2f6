"""The origin client: a key's origin from the ring, keep-alive pools (aiohttp), one retry on the next node."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

import aiohttp

from .ring import Ring

#: Connection-specific fields (RFC 9110 §7.6.1): never forwarded in either direction.
HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding",
                        "upgrade", "proxy-authenticate", "proxy-authorization"})
IDEMPOTENT = frozenset({"GET", "HEAD"})
CHUNK = 64 * 1024


class OriginError(Exception):
    """No origin gave an answer: `timeout` tells a 504 from a 502."""

    def __init__(self, message: str, *, timeout: bool = False) -> None:
        super().__init__(message)
        self.timeout = timeout


class TruncatedBody(OriginError):
    """The origin closed or failed before the whole body arrived (never cache it, never pass it as complete)."""


@dataclass(frozen=True)
class Upstream:
    """One origin: its base URL, weight and the Host header it wants (default: its own authority)."""

    url: str
    weight: int = 1
    host_header: str | None = None

    @property
    def authority(self) -> str:
        """host[:port] of the URL."""
        return urlsplit(self.url).netloc


class Fetched:
    """An origin's response, its body still to be read in chunks."""

    def __init__(self, index: int, response: aiohttp.ClientResponse) -> None:
        self.index = index
        self.response = response
        self.status = response.status
        self.headers = [(k.lower(), v) for k, v in response.headers.items() if k.lower() not in HOP_BY_HOP]

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body as it arrives; TruncatedBody if it ends short of its Content-Length or breaks."""
        try:
            async for chunk in self.response.content.iter_chunked(CHUNK):
                yield chunk
        except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError, asyncio.TimeoutError) as e:
            raise TruncatedBody(f"origin body cut short: {e}") from None
        finally:
            self.response.release()

    def close(self) -> None:
        """Drop the response (its connection is not reused when the body was not read)."""
        self.response.close()


class OriginPool:
    """Sends a key to its origin on the consistent-hash ring, with keep-alive pools and a bounded retry."""

    def __init__(self, upstreams: Sequence[Upstream], *, connect_timeout: float = 2.0, read_timeout: float = 10.0,
                 forward_headers: Sequence[str] = (), limit_per_origin: int = 64, via: str = "1.1 edge") -> None:
        self.upstreams = list(upstreams)
        self.ring = Ring([(u.url, u.weight) for u in self.upstreams])
        self.forward = frozenset(h.lower() for h in forward_headers) - HOP_BY_HOP
        self.via = via
        self.timeout = aiohttp.ClientTimeout(total=None, sock_connect=connect_timeout, sock_read=read_timeout)
        self.limit = limit_per_origin
        self.session: aiohttp.ClientSession | None = None

    def _session(self) -> aiohttp.ClientSession:
        if self.session is None:
            connector = aiohttp.TCPConnector(limit=0, limit_per_host=self.limit, keepalive_timeout=30,
                                             enable_cleanup_closed=True)
            self.session = aiohttp.ClientSession(connector=connector, timeout=self.timeout, auto_decompress=False,
                                                 skip_auto_headers=("User-Agent", "Accept-Encoding", "Accept"))
        return self.session

    def request_headers(self, upstream: Upstream, incoming: Sequence[tuple[str, str]],
                        extra: Sequence[tuple[str, str]] = ()) -> dict[str, str]:
        """Host, Via, the listed client fields (never hop-by-hop ones), then `extra` (e.g. validators)."""
        out = {"Host": upstream.host_header or upstream.authority, "Via": self.via}
        for name, value in incoming:
            if name.lower() in self.forward:
                out[name] = value
        for name, value in extra:
            out[name] = value
        return out

    async def fetch(self, key: bytes, method: str, target: str, incoming: Sequence[tuple[str, str]] = (),
                    extra: Sequence[tuple[str, str]] = (), healthy: Callable[[int], bool] = lambda i: True,
                    on_failure: Callable[[int], None] = lambda i: None) -> Fetched:
        """The response of the first healthy origin for `key`; an idempotent request is retried once on the next.

        `on_failure` hears of each origin that refused, reset or timed out (for the circuit breaker).
        """
        most = 2 if method in IDEMPOTENT else 1
        tries = []
        for i in self.ring.candidates(key):  # healthy() is asked only until enough are found (it may take a trial)
            if healthy(i):
                tries.append(i)
                if len(tries) == most:
                    break
        if not tries:
            raise OriginError("no healthy origin")
        timed_out = False
        failure = "no origin tried"
        for index in tries:
            upstream = self.upstreams[index]
            try:
                response = await self._session().request(
                    method, upstream.url + target, headers=self.request_headers(upstream, incoming, extra),
                    allow_redirects=False)
            except (aiohttp.ClientConnectionError, asyncio.TimeoutError) as e:
                timed_out = isinstance(e, (asyncio.TimeoutError, aiohttp.ServerTimeoutError))
                failure = f"{upstream.url}: {type(e).__name__}: {e}"
                on_failure(index)
                continue
            return Fetched(index, response)
        raise OriginError(failure, timeout=timed_out)

    async def close(self) -> None:
        """Close every pooled connection."""
        if self.session is not None:
            await self.session.close()
            self.session = None
