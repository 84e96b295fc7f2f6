"""TLS: the server context (TLS 1.2+, ALPN h2 and http/1.1, tickets) and the protocol chosen by ALPN."""

from __future__ import annotations

import asyncio
import ssl
from typing import TYPE_CHECKING

from .config import TlsConfig

if TYPE_CHECKING:
    from .worker import Worker


def server_context(tls: TlsConfig) -> ssl.SSLContext:
    """A server context for `tls.cert`/`tls.key`: TLS 1.2 or newer, no compression, ALPN h2 then http/1.1.

    Made once in the supervisor before the workers fork, so every worker shares its session-ticket
    keys and a client resumes its session whichever worker the kernel hands the connection to.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    # No server cipher preference: every suite allowed is strong, and clients put AES-128-GCM (or
    # ChaCha20 without AES hardware) first, which is cheaper than OpenSSL's AES-256-first order.
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    ctx.set_ciphers("ECDHE+AESGCM:ECDHE+CHACHA20")  # TLS 1.2 suites with forward secrecy and AEAD only
    ctx.set_alpn_protocols(["h2", "http/1.1"])
    ctx.load_cert_chain(tls.cert, tls.key)
    return ctx


class AlpnDispatch(asyncio.Protocol):
    """Stands in until the handshake is done, then hands the transport to HTTP/2 or HTTP/1.1 by ALPN."""

    def __init__(self, worker: Worker) -> None:
        self.w = worker

    def connection_made(self, transport: asyncio.Transport) -> None:  # noqa: D102
        from .http1 import H1Connection
        from .http2 import H2Connection

        ssl_object = transport.get_extra_info("ssl_object")
        chosen = ssl_object.selected_alpn_protocol() if ssl_object is not None else None
        proto: asyncio.Protocol
        proto = H2Connection(self.w, secure=True) if chosen == "h2" else H1Connection(self.w, tls=True)
        transport.set_protocol(proto)
        proto.connection_made(transport)

    def data_received(self, data: bytes) -> None:  # noqa: D102 - never called: the swap happens first
        raise RuntimeError("TLS data before the protocol was chosen")
