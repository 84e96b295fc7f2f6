"""edge's own HTTP/2 engine, server side and sans-I/O (RFC 9113): bytes in, events out; frames out on request.

Frames are parsed in place with struct (no object per frame); the connection and stream states of
§5.1, every frame type of §6 (padding, PRIORITY, CONTINUATION), flow control of §6.9 both ways, and
the structural limits (header block bytes, CONTINUATION count, decoded header list, concurrent
streams) live here. Field syntax (§8.2-8.3) is the adapter's, as is every rate limit (floods), so
that both engines (this one and the h2 library's, edge/h2lib.py) share one copy of those rules.

Events are tuples whose first item is the kind:
  (REQUEST, sid, fields, end_stream)      a request head (a stream opened by the client)
  (TRAILERS, sid, fields)                 trailer fields (they end the stream)
  (DATA, sid, data, flow_length, end_stream)   request body bytes (flow_length counts padding too)
  (RESET, sid, code)                      the peer's RST_STREAM
  (STREAM_ERROR, sid, code)               this engine reset a stream (its RST_STREAM is queued)
  (WINDOW, sid)                           the peer opened a send window (sid 0: the connection's)
  (SETTINGS,)                             the peer's SETTINGS arrived (their ACK is queued)
  (PING,)                                 a PING arrived (its ACK is queued)
  (PRIORITY, sid)                         a PRIORITY frame (or HEADERS with priority fields) arrived
  (GOAWAY, last_sid, code)                the peer's GOAWAY
A connection error raises ConnectionFailed(code); the caller ends the connection with close(code).
"""

from __future__ import annotations

import base64
import struct
from collections import OrderedDict

from .hpackdecode import Decoder, HeaderListTooLarge, HpackError

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

# Frame types (RFC 9113 §6) and flags.
DATA, HEADERS, PRIORITY_TYPE, RST_STREAM, SETTINGS_TYPE, PUSH_PROMISE, PING_TYPE, GOAWAY_TYPE, WINDOW_UPDATE, \
    CONTINUATION = range(10)
END_STREAM, ACK, END_HEADERS, PADDED, PRIORITY_FLAG = 0x1, 0x1, 0x4, 0x8, 0x20

# Error codes (§7).
NO_ERROR, PROTOCOL_ERROR, INTERNAL_ERROR, FLOW_CONTROL_ERROR, SETTINGS_TIMEOUT, STREAM_CLOSED, FRAME_SIZE_ERROR, \
    REFUSED_STREAM, CANCEL, COMPRESSION_ERROR, CONNECT_ERROR, ENHANCE_YOUR_CALM = range(12)

# Settings (§6.5.2, RFC 8441 §3).
HEADER_TABLE_SIZE, ENABLE_PUSH, MAX_CONCURRENT_STREAMS, INITIAL_WINDOW_SIZE, MAX_FRAME_SIZE, \
    MAX_HEADER_LIST_SIZE = range(1, 7)
ENABLE_CONNECT_PROTOCOL = 8

# Event kinds.
REQUEST, TRAILERS, DATA_EVENT, RESET, STREAM_ERROR, WINDOW, SETTINGS, PING, PRIORITY, GOAWAY = range(1, 11)

MAX_WINDOW = (1 << 31) - 1
DEFAULT_WINDOW = 65_535
DEFAULT_FRAME = 16_384
MAX_CONTINUATIONS = 64  # CONTINUATION frames of one header block (as the h2 library allows)
CLOSED_MEMORY = 1024  # closed streams whose way of closing is remembered (§5.1 "closed")

_HEAD = struct.Struct(">HBBBI")  # length (high 16 bits), length (low 8), type, flags, stream id (with R bit)
_SETTING = struct.Struct(">HI")
_U32 = struct.Struct(">I")

# Stream states (§5.1), as far as a server sees them.
OPEN, HALF_CLOSED_REMOTE, HALF_CLOSED_LOCAL, RESERVED_LOCAL = range(4)
# How a stream closed, for frames that come after (§5.1 "closed").
BY_END, BY_SENT_RESET, BY_RECEIVED_RESET = range(3)


class ConnectionFailed(Exception):
    """A connection error (RFC 9113 §5.4.1): the connection ends with GOAWAY(code)."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code


class RefusedPush(Exception):
    """A push the peer does not allow now (push disabled, or its stream limit)."""


class _Stream:
    """One stream's state and windows."""

    __slots__ = ("state", "send_window", "recv_window", "trailers", "remaining")

    def __init__(self, state: int, send_window: int, recv_window: int) -> None:
        self.state = state
        self.send_window = send_window
        self.recv_window = recv_window
        self.trailers = False  # the request head came; a later HEADERS is trailers
        self.remaining = -1  # body bytes its content-length still announces (-1: none given)


def frame_head(length: int, kind: int, flags: int, sid: int) -> bytes:
    """The 9-byte head of a frame (§4.1)."""
    return _HEAD.pack(length >> 8, length & 0xFF, kind, flags, sid)


def header_frames(sid: int, block: bytes, end_stream: bool, max_frame: int, kind: int = HEADERS,
                  promised: int = 0) -> bytes:
    """A header block as HEADERS (or PUSH_PROMISE for `promised`) plus CONTINUATION frames of at most
    `max_frame` bytes each (§6.2, §6.10)."""
    if promised:
        block = _U32.pack(promised) + block
    flags = END_STREAM if end_stream and kind == HEADERS else 0
    if len(block) <= max_frame:
        return frame_head(len(block), kind, flags | END_HEADERS, sid) + block
    pieces = [frame_head(max_frame, kind, flags, sid), block[:max_frame]]
    at = max_frame
    while at < len(block):
        piece = block[at:at + max_frame]
        at += len(piece)
        pieces += [frame_head(len(piece), CONTINUATION, END_HEADERS if at >= len(block) else 0, sid), piece]
    return b"".join(pieces)


def decode_settings_field(value: bytes) -> bytes:
    """The SETTINGS payload an HTTP2-Settings field (RFC 7540 §3.2.1: base64url, no padding) carries."""
    text = value.strip()
    return base64.b64decode(text + b"=" * (-len(text) % 4), altchars=b"-_", validate=True)


class Engine:
    """The server side of one HTTP/2 connection (RFC 9113), sans-I/O."""

    def __init__(self, *, max_concurrent_streams: int = 128, max_header_list_size: int = 65_536,
                 max_header_block_size: int = 65_536, enable_connect_protocol: bool = False) -> None:
        self.local = {MAX_CONCURRENT_STREAMS: max_concurrent_streams, MAX_HEADER_LIST_SIZE: max_header_list_size}
        if enable_connect_protocol:
            self.local[ENABLE_CONNECT_PROTOCOL] = 1
        self.max_streams = max_concurrent_streams
        self.max_block = max_header_block_size
        self.decoder = Decoder(4096, max_header_list_size)
        self.recv_frame = DEFAULT_FRAME  # what we accept (our SETTINGS_MAX_FRAME_SIZE: the default)
        # The peer's settings.
        self.max_frame_size = DEFAULT_FRAME
        self.push_enabled = True
        self.peer_max_streams = MAX_WINDOW  # the streams we may push (its MAX_CONCURRENT_STREAMS)
        self.initial_window = DEFAULT_WINDOW
        self.connect_protocol = False  # the peer's SETTINGS_ENABLE_CONNECT_PROTOCOL (RFC 8441)
        self.table_resized = False  # the peer changed HEADER_TABLE_SIZE: our next block says size 0
        self.send_window = DEFAULT_WINDOW
        self.recv_window = DEFAULT_WINDOW
        self.streams: dict[int, _Stream] = {}
        self.closed: OrderedDict[int, int] = OrderedDict()  # recently closed stream -> BY_*, oldest first
        self.highest_inbound = 0
        self.next_push = 2
        self.pushed = 0  # reserved or open streams we started
        self.buf = bytearray()
        self.out: list[bytes] = []
        self.preface = False  # the client's preface and first SETTINGS arrived
        self.first_settings = False
        self.block: list[bytes] | None = None  # a header block being collected (HEADERS + CONTINUATION)
        self.block_sid = 0
        self.block_priority = False
        self.block_end = False
        self.block_size = 0
        self.block_frames = 0
        self.block_promised = False  # the block opens no stream (a refused one): decoded, then dropped
        self.ended = False

    # -- starting ------------------------------------------------------------------------------

    def initiate(self) -> None:
        """Queue the server's connection preface: its SETTINGS (§3.4)."""
        payload = b"".join(_SETTING.pack(k, v) for k, v in self.local.items())
        self.out.append(frame_head(len(payload), SETTINGS_TYPE, 0, 0) + payload)

    def initiate_upgrade(self, settings_field: bytes) -> None:
        """After `101 Switching Protocols` (h2c): the HTTP2-Settings field's settings apply, and stream 1
        is the upgraded request, half-closed (remote) (RFC 7540 §3.2). ConnectionFailed on a bad field."""
        try:
            payload = decode_settings_field(settings_field)
        except ValueError:
            raise ConnectionFailed(PROTOCOL_ERROR, "HTTP2-Settings is not base64url") from None
        if len(payload) % 6:
            raise ConnectionFailed(PROTOCOL_ERROR, "HTTP2-Settings is not a whole number of settings")
        self._apply_settings(memoryview(payload), 0, len(payload))
        self.initiate()
        self.streams[1] = _Stream(HALF_CLOSED_REMOTE, self.initial_window, DEFAULT_WINDOW)
        self.highest_inbound = 1

    # -- input -----------------------------------------------------------------------------------

    def receive(self, data: bytes) -> list[tuple]:
        """Parse what arrived; the events it makes (ConnectionFailed on a connection error)."""
        if self.ended:
            return []
        buf = self.buf
        buf += data
        events: list[tuple] = []
        at = 0
        end = len(buf)
        if not self.preface:
            if end < 24:
                if not PREFACE.startswith(bytes(buf)):
                    raise ConnectionFailed(PROTOCOL_ERROR, "not the HTTP/2 connection preface")
                return events
            if bytes(buf[:24]) != PREFACE:
                raise ConnectionFailed(PROTOCOL_ERROR, "not the HTTP/2 connection preface")
            self.preface = True
            at = 24
        view = memoryview(buf)
        try:
            while end - at >= 9:
                high, low, kind, flags, sid = _HEAD.unpack_from(view, at)
                length = (high << 8) | low
                if length > self.recv_frame:
                    raise ConnectionFailed(FRAME_SIZE_ERROR, f"a frame of {length} bytes")
                if end - at - 9 < length:
                    break
                start = at + 9
                at = start + length
                self._frame(kind, flags, sid & MAX_WINDOW, view, start, length, events)
        finally:
            view.release()
        del buf[:at]
        return events

    def _frame(self, kind: int, flags: int, sid: int, view: memoryview, start: int, length: int,
               events: list[tuple]) -> None:
        """Handle one frame (§6)."""
        if self.block is not None and kind != CONTINUATION:
            raise ConnectionFailed(PROTOCOL_ERROR, "a frame inside a header block")  # §6.10
        if not self.first_settings:
            if kind != SETTINGS_TYPE or flags & ACK:
                raise ConnectionFailed(PROTOCOL_ERROR, "the preface must be followed by SETTINGS")  # §3.4
            self.first_settings = True
        if kind == HEADERS:
            self._headers(flags, sid, view, start, length, events)
        elif kind == DATA:
            self._data(flags, sid, view, start, length, events)
        elif kind == WINDOW_UPDATE:
            self._window_update(sid, view, start, length, events)
        elif kind == SETTINGS_TYPE:
            self._settings(flags, sid, view, start, length, events)
        elif kind == CONTINUATION:
            self._continuation(flags, sid, view, start, length, events)
        elif kind == RST_STREAM:
            self._rst_stream(sid, view, start, length, events)
        elif kind == PING_TYPE:
            if sid:
                raise ConnectionFailed(PROTOCOL_ERROR, "PING on a stream")
            if length != 8:
                raise ConnectionFailed(FRAME_SIZE_ERROR, "PING not 8 bytes")
            if not flags & ACK:
                self.out.append(frame_head(8, PING_TYPE, ACK, 0) + bytes(view[start:start + 8]))
                events.append((PING,))
        elif kind == PRIORITY_TYPE:
            if not sid:
                raise ConnectionFailed(PROTOCOL_ERROR, "PRIORITY on stream 0")
            if length != 5:
                self._stream_error(sid, FRAME_SIZE_ERROR, events)  # §6.3
                return
            if _U32.unpack_from(view, start)[0] & MAX_WINDOW == sid:
                self._stream_error(sid, PROTOCOL_ERROR, events)  # depends on itself (§5.3.1)
                return
            events.append((PRIORITY, sid))
        elif kind == GOAWAY_TYPE:
            if sid:
                raise ConnectionFailed(PROTOCOL_ERROR, "GOAWAY on a stream")
            if length < 8:
                raise ConnectionFailed(FRAME_SIZE_ERROR, "GOAWAY shorter than 8 bytes")
            last, code = struct.unpack_from(">II", view, start)
            events.append((GOAWAY, last & MAX_WINDOW, code))
        elif kind == PUSH_PROMISE:
            raise ConnectionFailed(PROTOCOL_ERROR, "a client sent PUSH_PROMISE")  # §8.4
        # Unknown frame types are ignored (§4.1, §5.5).

    def _payload(self, flags: int, view: memoryview, start: int, length: int, priority: bool) -> tuple[int, int]:
        """The (start, end) of a DATA or HEADERS payload without padding and priority fields (§6.1, §6.2)."""
        end = start + length
        if flags & PADDED:
            if length < 1:
                raise ConnectionFailed(FRAME_SIZE_ERROR, "a padded frame without its pad length")
            pad = view[start]
            start += 1
            end -= pad
        if priority and flags & PRIORITY_FLAG:
            start += 5
        if end < start:
            raise ConnectionFailed(PROTOCOL_ERROR, "padding longer than the payload")  # §6.1
        return start, end

    def _headers(self, flags: int, sid: int, view: memoryview, start: int, length: int, events: list[tuple]) -> None:
        if not sid or not sid & 1:
            raise ConnectionFailed(PROTOCOL_ERROR, f"HEADERS on stream {sid}")  # §5.1.1: clients use odd ids
        begin, end = self._payload(flags, view, start, length, True)
        if flags & PRIORITY_FLAG and _U32.unpack_from(view, begin - 5)[0] & MAX_WINDOW == sid:
            self._decode_and_drop(flags, sid, view, begin, end)
            self._stream_error(sid, PROTOCOL_ERROR, events)  # depends on itself (§5.3.1)
            return
        stream = self.streams.get(sid)
        dropped = False
        if stream is None:
            if sid <= self.highest_inbound:
                how = self.closed.get(sid)
                if how == BY_SENT_RESET:
                    dropped = True  # §5.1: ignored after our RST_STREAM (the block still feeds HPACK)
                elif how is None:  # never opened (or long gone): not a new stream id (§5.1.1)
                    raise ConnectionFailed(PROTOCOL_ERROR, f"stream id {sid} is not above {self.highest_inbound}")
                elif how == BY_RECEIVED_RESET:  # §5.1 closed: after the peer's RST_STREAM, a stream error
                    self._stream_error(sid, STREAM_CLOSED, events)
                    dropped = True
                else:  # after END_STREAM both ways: a connection error (§5.1 closed)
                    raise ConnectionFailed(STREAM_CLOSED, f"HEADERS on closed stream {sid}")
            else:
                self.highest_inbound = sid
                if self._open_inbound() >= self.max_streams:
                    self._stream_error(sid, REFUSED_STREAM, events)  # §5.1.2: the client may retry it
                    dropped = True
                else:
                    stream = self.streams[sid] = _Stream(OPEN, self.initial_window, DEFAULT_WINDOW)
        elif stream.state in (HALF_CLOSED_REMOTE, RESERVED_LOCAL):
            self._decode_and_drop(flags, sid, view, begin, end)
            self._stream_error(sid, STREAM_CLOSED, events)  # §5.1 half-closed (remote)
            return
        elif stream.trailers and not flags & END_STREAM:
            self._decode_and_drop(flags, sid, view, begin, end)
            self._stream_error(sid, PROTOCOL_ERROR, events)  # §8.1: trailers end the stream
            return
        self.block = [bytes(view[begin:end])]
        self.block_sid = sid
        self.block_priority = bool(flags & PRIORITY_FLAG)
        self.block_end = bool(flags & END_STREAM)
        self.block_size = end - begin
        self.block_frames = 0
        self.block_promised = dropped
        if self.block_size > self.max_block:
            raise ConnectionFailed(ENHANCE_YOUR_CALM, f"header block over {self.max_block} bytes")
        if flags & END_HEADERS:
            self._block_done(events)

    def _decode_and_drop(self, flags: int, sid: int, view: memoryview, begin: int, end: int) -> None:
        """Keep HPACK in step with a header block whose stream is in error (§4.3: it must be decoded)."""
        if flags & END_HEADERS:
            self._decode(bytes(view[begin:end]))
        else:
            self.block = [bytes(view[begin:end])]
            self.block_sid = sid
            self.block_size = end - begin
            self.block_frames = 0
            self.block_promised = True

    def _continuation(self, flags: int, sid: int, view: memoryview, start: int, length: int,
                      events: list[tuple]) -> None:
        if self.block is None or sid != self.block_sid:
            raise ConnectionFailed(PROTOCOL_ERROR, "CONTINUATION without its HEADERS")  # §6.10
        self.block.append(bytes(view[start:start + length]))
        self.block_size += length
        self.block_frames += 1
        if self.block_size > self.max_block:
            raise ConnectionFailed(ENHANCE_YOUR_CALM, f"header block over {self.max_block} bytes")
        if self.block_frames > MAX_CONTINUATIONS:
            raise ConnectionFailed(PROTOCOL_ERROR, "too many CONTINUATION frames")
        if flags & END_HEADERS:
            self._block_done(events)

    def _decode(self, block: bytes) -> list[tuple[bytes, bytes]]:
        try:
            return self.decoder.decode(block)
        except HeaderListTooLarge:
            raise ConnectionFailed(ENHANCE_YOUR_CALM, "decoded header list over its limit") from None
        except HpackError as e:
            raise ConnectionFailed(COMPRESSION_ERROR, str(e)) from None

    def _block_done(self, events: list[tuple]) -> None:
        block = self.block[0] if len(self.block) == 1 else b"".join(self.block)
        self.block = None
        sid = self.block_sid
        fields = self._decode(block)
        if self.block_promised:
            return
        stream = self.streams[sid]
        end_stream = self.block_end
        if stream.trailers:
            if stream.remaining > 0:
                self._stream_error(sid, PROTOCOL_ERROR, events)  # §8.1.1: less body than content-length
                return
            events.append((TRAILERS, sid, fields))
        else:
            stream.trailers = True
            lengths = {value for name, value in fields if name == b"content-length"}
            if lengths:  # §8.1.1: it must match the DATA that follows (a malformed request otherwise)
                length = lengths.pop()
                if lengths or not length.isdigit() or (end_stream and int(length)):
                    self._stream_error(sid, PROTOCOL_ERROR, events)
                    return
                stream.remaining = int(length)
            events.append((REQUEST, sid, fields, end_stream))
        if self.block_priority:
            events.append((PRIORITY, sid))  # counted with PRIORITY frames (floods), as the h2 library does
        if end_stream:
            self._remote_end(sid, stream)

    def _remote_end(self, sid: int, stream: _Stream) -> None:
        """The client's END_STREAM: open -> half-closed (remote), half-closed (local) -> closed."""
        if stream.state == HALF_CLOSED_LOCAL:
            self._forget(sid, BY_END)
        else:
            stream.state = HALF_CLOSED_REMOTE

    def _data(self, flags: int, sid: int, view: memoryview, start: int, length: int, events: list[tuple]) -> None:
        if not sid:
            raise ConnectionFailed(PROTOCOL_ERROR, "DATA on stream 0")
        # Flow control counts the whole payload, padding included, whatever the stream's state (§6.9).
        if length > self.recv_window:
            raise ConnectionFailed(FLOW_CONTROL_ERROR, "DATA beyond the connection window")
        self.recv_window -= length
        begin, end = self._payload(flags, view, start, length, False)  # bad padding: a connection error (§6.1)
        stream = self.streams.get(sid)
        if stream is None or stream.state not in (OPEN, HALF_CLOSED_LOCAL):
            self._credit(0, length)  # nobody will read it: the connection's window is given back at once
            if stream is not None:  # half-closed (remote) or reserved: a stream error (§5.1)
                self._stream_error(sid, STREAM_CLOSED, events)
                return
            if self._idle(sid):
                raise ConnectionFailed(PROTOCOL_ERROR, f"DATA on idle stream {sid}")  # §5.1 idle
            how = self.closed.get(sid)
            if how == BY_END:  # §5.1 closed: after END_STREAM, a connection error
                raise ConnectionFailed(STREAM_CLOSED, f"DATA on closed stream {sid}")
            if how == BY_RECEIVED_RESET:  # after the peer's RST_STREAM, a stream error
                self._stream_error(sid, STREAM_CLOSED, events)
            # After our RST_STREAM (§5.1: ignored), or on a stream closed without ever opening (a lower id
            # than one the client opened since, §5.1.1): ignored, as the h2 library does.
            return
        if length > stream.recv_window:
            self._credit(0, length)
            self._stream_error(sid, FLOW_CONTROL_ERROR, events)
            return
        stream.recv_window -= length
        end_stream = bool(flags & END_STREAM)
        if stream.remaining >= 0:
            stream.remaining -= end - begin
            if stream.remaining < 0 or (end_stream and stream.remaining):  # §8.1.1: not its content-length
                self._credit(0, length)
                self._stream_error(sid, PROTOCOL_ERROR, events)
                return
        events.append((DATA_EVENT, sid, bytes(view[begin:end]), length, end_stream))
        if end_stream:
            self._remote_end(sid, stream)

    def _window_update(self, sid: int, view: memoryview, start: int, length: int, events: list[tuple]) -> None:
        if length != 4:
            raise ConnectionFailed(FRAME_SIZE_ERROR, "WINDOW_UPDATE not 4 bytes")
        increment = _U32.unpack_from(view, start)[0] & MAX_WINDOW
        if not sid:
            if not increment:
                raise ConnectionFailed(PROTOCOL_ERROR, "WINDOW_UPDATE of 0")  # §6.9
            self.send_window += increment
            if self.send_window > MAX_WINDOW:
                raise ConnectionFailed(FLOW_CONTROL_ERROR, "connection window over 2^31-1")  # §6.9.1
            events.append((WINDOW, 0))
            return
        stream = self.streams.get(sid)
        if stream is None:
            if self._idle(sid):
                raise ConnectionFailed(PROTOCOL_ERROR, f"WINDOW_UPDATE on idle stream {sid}")  # §5.1 idle
            return  # closed: allowed, ignored (§5.1)
        if not increment:
            self._stream_error(sid, PROTOCOL_ERROR, events)
            return
        stream.send_window += increment
        if stream.send_window > MAX_WINDOW:
            self._stream_error(sid, FLOW_CONTROL_ERROR, events)
            return
        events.append((WINDOW, sid))

    def _rst_stream(self, sid: int, view: memoryview, start: int, length: int, events: list[tuple]) -> None:
        if not sid:
            raise ConnectionFailed(PROTOCOL_ERROR, "RST_STREAM on stream 0")
        if length != 4:
            raise ConnectionFailed(FRAME_SIZE_ERROR, "RST_STREAM not 4 bytes")
        if sid not in self.streams:
            if self._idle(sid):
                raise ConnectionFailed(PROTOCOL_ERROR, f"RST_STREAM on idle stream {sid}")  # §6.4
            return  # already closed
        self._forget(sid, BY_RECEIVED_RESET)
        events.append((RESET, sid, _U32.unpack_from(view, start)[0]))

    def _settings(self, flags: int, sid: int, view: memoryview, start: int, length: int, events: list[tuple]) -> None:
        if sid:
            raise ConnectionFailed(PROTOCOL_ERROR, "SETTINGS on a stream")
        if flags & ACK:
            if length:
                raise ConnectionFailed(FRAME_SIZE_ERROR, "a SETTINGS ACK with a payload")
            return
        if length % 6:
            raise ConnectionFailed(FRAME_SIZE_ERROR, "SETTINGS not a multiple of 6 bytes")
        self._apply_settings(view, start, length)
        self.out.append(frame_head(0, SETTINGS_TYPE, ACK, 0))
        events.append((SETTINGS,))

    def _apply_settings(self, view: memoryview | bytes, start: int, length: int) -> None:
        """The peer's settings (§6.5.2); ConnectionFailed on a value out of range."""
        for at in range(start, start + length - length % 6, 6):
            key, value = _SETTING.unpack_from(view, at)
            if key == INITIAL_WINDOW_SIZE:
                if value > MAX_WINDOW:
                    raise ConnectionFailed(FLOW_CONTROL_ERROR, "INITIAL_WINDOW_SIZE over 2^31-1")
                delta = value - self.initial_window
                self.initial_window = value
                for stream in self.streams.values():  # §6.9.2: every stream's window moves by the change
                    stream.send_window += delta
                    if stream.send_window > MAX_WINDOW:
                        raise ConnectionFailed(FLOW_CONTROL_ERROR, "a stream window over 2^31-1")
            elif key == MAX_FRAME_SIZE:
                if not DEFAULT_FRAME <= value <= (1 << 24) - 1:
                    raise ConnectionFailed(PROTOCOL_ERROR, f"MAX_FRAME_SIZE {value}")
                self.max_frame_size = value
            elif key == ENABLE_PUSH:
                if value > 1:
                    raise ConnectionFailed(PROTOCOL_ERROR, f"ENABLE_PUSH {value}")
                self.push_enabled = value == 1
            elif key == MAX_CONCURRENT_STREAMS:
                self.peer_max_streams = value
            elif key == HEADER_TABLE_SIZE:
                self.table_resized = True
            elif key == ENABLE_CONNECT_PROTOCOL:
                if value > 1:
                    raise ConnectionFailed(PROTOCOL_ERROR, f"ENABLE_CONNECT_PROTOCOL {value}")
                self.connect_protocol = value == 1
            # MAX_HEADER_LIST_SIZE is advisory; unknown settings are ignored (§6.5.2).

    # -- stream bookkeeping ----------------------------------------------------------------------

    def _idle(self, sid: int) -> bool:
        """Is `sid` idle (§5.1): a client id above any it opened, or a server id above any we promised?"""
        return sid > self.highest_inbound if sid & 1 else sid >= self.next_push

    def _open_inbound(self) -> int:
        return len(self.streams) - self.pushed

    def _forget(self, sid: int, how: int) -> None:
        stream = self.streams.pop(sid, None)
        if stream is not None and not sid & 1:
            self.pushed -= 1
        closed = self.closed
        closed[sid] = how
        if len(closed) > CLOSED_MEMORY:
            closed.popitem(last=False)

    def _queue_reset(self, sid: int, code: int) -> None:
        self.out.append(frame_head(4, RST_STREAM, 0, sid) + _U32.pack(code))

    def _stream_error(self, sid: int, code: int, events: list[tuple]) -> None:
        """A stream error (§5.4.2): RST_STREAM(code), the stream closed; the adapter is told."""
        if self.closed.get(sid) == BY_SENT_RESET:
            return  # exactly one RST_STREAM per stream
        self._queue_reset(sid, code)
        self._forget(sid, BY_SENT_RESET)
        if sid > self.highest_inbound and sid & 1:
            self.highest_inbound = sid
        events.append((STREAM_ERROR, sid, code))

    def is_open(self, sid: int) -> bool:
        """May a response (or more of one) still go out on `sid`?"""
        stream = self.streams.get(sid)
        return stream is not None and stream.state != HALF_CLOSED_LOCAL

    # -- output ----------------------------------------------------------------------------------

    def send_headers(self, sid: int, block: bytes, end_stream: bool, informational: bool = False) -> None:
        """A response head (or a 1xx, `informational`), encoded without the dynamic table (edge/hpackblock.py)."""
        stream = self.streams[sid]
        if self.table_resized:
            block = b"\x20" + block  # §4.2 of RFC 7541: our table is (and stays) empty: size 0
            self.table_resized = False
        self.out.append(header_frames(sid, block, end_stream, self.max_frame_size))
        if stream.state == RESERVED_LOCAL:
            stream.state = HALF_CLOSED_REMOTE
        if end_stream:
            self._local_end(sid, stream)

    def _local_end(self, sid: int, stream: _Stream) -> None:
        if stream.state == HALF_CLOSED_REMOTE:
            self._forget(sid, BY_END)
        else:
            stream.state = HALF_CLOSED_LOCAL

    def push(self, sid: int, fields: list[tuple[bytes, bytes]], block: bytes) -> int:
        """PUSH_PROMISE the request `fields`, encoded as `block`, on client stream `sid` (§8.4); returns the
        promised stream id (RefusedPush when the client does not take it)."""
        if not self.push_enabled or self.pushed >= self.peer_max_streams or sid not in self.streams:
            raise RefusedPush("push is off, or the client's stream limit is reached")
        promised = self.next_push
        self.next_push += 2
        if self.table_resized:
            block = b"\x20" + block
            self.table_resized = False
        self.out.append(header_frames(sid, block, False, self.max_frame_size, PUSH_PROMISE, promised))
        self.streams[promised] = _Stream(RESERVED_LOCAL, self.initial_window, DEFAULT_WINDOW)
        self.pushed += 1
        return promised

    def window(self, sid: int) -> int:
        """Bytes a DATA frame on `sid` may carry now (both windows, §6.9.1); -1 when the stream is gone."""
        stream = self.streams.get(sid)
        if stream is None or stream.state == HALF_CLOSED_LOCAL:
            return -1
        return min(stream.send_window, self.send_window)

    def sent_data(self, sid: int, n: int, last: bool) -> int:
        """Account a DATA frame of `n` bytes the adapter built; returns its flags (END_STREAM when `last`)."""
        stream = self.streams[sid]
        stream.send_window -= n
        self.send_window -= n
        if last:
            self._local_end(sid, stream)
            return END_STREAM
        return 0

    def acknowledge(self, sid: int, n: int) -> None:
        """`n` bytes of request body were taken: give the peer that much window back (§6.9)."""
        self._credit(0, n)
        stream = self.streams.get(sid)
        if stream is not None and stream.state == OPEN:
            self._credit(sid, n, stream)

    def acknowledge_connection(self, n: int) -> None:
        """`n` bytes of a request body arrived that its stream's window still holds back (a body passed to an
        origin as the origin takes it): only the connection's window is given back now (§6.9.1), so one slow
        upload never stalls the connection's other streams; acknowledge_stream gives the rest."""
        self._credit(0, n)

    def acknowledge_stream(self, sid: int, n: int) -> None:
        """`n` bytes of a stream's request body were taken (acknowledge_connection counted them already): its
        own window is given back (§6.9), while it is open."""
        stream = self.streams.get(sid)
        if stream is not None and stream.state == OPEN:
            self._credit(sid, n, stream)

    def stream_credit(self, sid: int, n: int) -> None:
        """A tunnel's (RFC 8441) acknowledge_stream: stream `sid` gets `n` bytes of window back, also after our
        END_STREAM (the client's direction goes on in half-closed (local), §5.1); nothing once it is closed."""
        stream = self.streams.get(sid)
        if stream is not None and stream.state in (OPEN, HALF_CLOSED_LOCAL):
            self._credit(sid, n, stream)

    def _credit(self, sid: int, n: int, stream: _Stream | None = None) -> None:
        if n <= 0:
            return
        if sid:
            stream.recv_window += n
        else:
            self.recv_window += n
        self.out.append(frame_head(4, WINDOW_UPDATE, 0, sid) + _U32.pack(n))

    def reset(self, sid: int, code: int) -> None:
        """Reset a stream from our side (at most once, §5.4.2); nothing happens on a stream already closed."""
        if sid in self.streams:
            self._queue_reset(sid, code)
            self._forget(sid, BY_SENT_RESET)

    def goaway(self, last: int, code: int = NO_ERROR) -> None:
        """Queue a GOAWAY naming `last` as the last stream that may still be answered (§6.8)."""
        self.out.append(frame_head(8, GOAWAY_TYPE, 0, 0) + struct.pack(">II", last, code))

    def close(self, code: int) -> None:
        """A connection error or the end: drop queued frames, GOAWAY(code), take no more input."""
        self.out.clear()
        self.goaway(self.highest_inbound, code)
        self.ended = True

    def data_to_send(self) -> bytes:
        """The frames queued since the last call."""
        if not self.out:
            return b""
        data = b"".join(self.out)
        self.out.clear()
        return data
