"""TLS: the server context (TLS 1.2+, ALPN h2 and http/1.1, tickets) and the protocol chosen by ALPN."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable

from .config import TlsConfig


def server_context(tls: TlsConfig) -> ssl.SSLContext:
    """A server context for `tls.cert`/`tls.key`: TLS 1.2 or newer, no compression, ALPN h2 then http/1.1.

    Made once in the supervisor before the workers fork, so every worker shares its session-ticket
    keys and a client resumes its session whichever worker the kernel hands the connection to.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    # The client's cipher order stands: every suite allowed is strong, and browsers put AES-128-GCM (or
    # ChaCha20 without AES hardware) first, which costs less CPU per byte than AES-256. Python sets
    # OP_CIPHER_SERVER_PREFERENCE on server contexts, and OpenSSL's own order (TLS 1.3's too, which
    # Python cannot set) starts with AES-256: left set, the server's order won and bulk transfers paid
    # for AES-256. The TLS 1.2 list starts with AES-128-GCM for clients that state no preference.
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    ctx.options &= ~ssl.OP_CIPHER_SERVER_PREFERENCE
    ctx.set_ciphers("ECDHE+AES128+AESGCM:ECDHE+CHACHA20:ECDHE+AES256+AESGCM")  # forward secrecy, AEAD only
    ctx.set_alpn_protocols(["h2", "http/1.1"])
    ctx.load_cert_chain(tls.cert, tls.key)
    return ctx


class AlpnDispatch(asyncio.Protocol):
    """Stands in until the handshake is done, then hands the transport to the protocol ALPN chose."""

    def __init__(self, protocol_for: Callable[[str | None], asyncio.Protocol]) -> None:
        self.protocol_for = protocol_for  # the worker's: "h2" -> HTTP/2, anything else -> HTTP/1.1

    def connection_made(self, transport: asyncio.Transport) -> None:  # noqa: D102
        ssl_object = transport.get_extra_info("ssl_object")
        proto = self.protocol_for(ssl_object.selected_alpn_protocol() if ssl_object is not None else None)
        transport.set_protocol(proto)
        proto.connection_made(transport)

    def data_received(self, data: bytes) -> None:  # noqa: D102 - never called: the swap happens first
        raise RuntimeError("TLS data before the protocol was chosen")
