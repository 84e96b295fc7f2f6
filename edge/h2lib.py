"""The h2 library behind edge's HTTP/2 engine interface: the reference engine ([http2] engine = "h2").

Same methods and event tuples as edge/h2engine.py's Engine, so the adapter and the differential tests
drive either. h2 parses and keeps the states; response heads and DATA frames are still built by edge
(h2 copies each payload several times) and accounted in h2's state machine here.
"""

from __future__ import annotations

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
from h2.frame_buffer import FrameBuffer
from h2.stream import StreamInputs
from hyperframe.frame import (
    ContinuationFrame,
    HeadersFrame,
    PushPromiseFrame,
    WindowUpdateFrame,
)

from .h2engine import (
    DATA_EVENT,
    END_STREAM,
    ENHANCE_YOUR_CALM,
    GOAWAY,
    PING,
    PRIORITY,
    PROTOCOL_ERROR,
    REQUEST,
    RESET,
    SETTINGS,
    STREAM_ERROR,
    TRAILERS,
    WINDOW,
    ConnectionFailed,
    RefusedPush,
    frame_head,
    header_frames,
)

_CONFIG = h2.config.H2Configuration(client_side=False, header_encoding=None, validate_outbound_headers=False,
                                    normalize_outbound_headers=False, validate_inbound_headers=False,
                                    normalize_inbound_headers=False)
_BLOCK_STARTS = (HeadersFrame, PushPromiseFrame)
_h2_update_header_buffer = FrameBuffer._update_header_buffer
SEND_HEADERS, SEND_END_STREAM = StreamInputs.SEND_HEADERS, StreamInputs.SEND_END_STREAM
SEND_INFORMATIONAL = StreamInputs.SEND_INFORMATIONAL_HEADERS


class HeaderBlockTooLarge(h2.exceptions.ProtocolError):
    """HEADERS plus CONTINUATION frames beyond http2.max_header_block_size."""

    error_code = ENHANCE_YOUR_CALM


class _CappedFrameBuffer(FrameBuffer):
    """h2's frame buffer with a byte cap on one header block (h2 itself only caps the frame count)."""

    def __init__(self, cap: int) -> None:
        super().__init__(server=True)
        self.cap = cap
        self.block = 0

    def _update_header_buffer(self, f):  # noqa: ANN001, ANN202 - h2's hook, called for every frame
        if f is not None:
            if self._headers_buffer:
                if type(f) is not ContinuationFrame:
                    return _h2_update_header_buffer(self, f)  # a ProtocolError (RFC 9113 §6.10): not counted
                self.block += len(f.data)
            elif type(f) in _BLOCK_STARTS:
                self.block = len(f.data)
            else:
                return _h2_update_header_buffer(self, f)
            if self.block > self.cap:
                raise HeaderBlockTooLarge(f"header block over {self.cap} bytes")
        return _h2_update_header_buffer(self, f)


class LibEngine:
    """An h2.connection.H2Connection with Engine's methods and events."""

    def __init__(self, *, max_concurrent_streams: int = 128, max_header_list_size: int = 65_536,
                 max_header_block_size: int = 65_536, enable_connect_protocol: bool = False) -> None:
        conn = self.conn = h2.connection.H2Connection(config=_CONFIG)
        initial = {h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: max_concurrent_streams,
                   h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: max_header_list_size}
        if enable_connect_protocol:
            initial[h2.settings.SettingCodes.ENABLE_CONNECT_PROTOCOL] = 1
        conn.local_settings = h2.settings.Settings(client=False, initial_values=initial)
        conn.decoder.max_header_list_size = max_header_list_size
        conn.incoming_buffer = _CappedFrameBuffer(max_header_block_size)
        self.out: list[bytes] = []

    @property
    def max_frame_size(self) -> int:
        """The peer's SETTINGS_MAX_FRAME_SIZE."""
        return self.conn.max_outbound_frame_size

    @property
    def push_enabled(self) -> bool:
        """The peer's SETTINGS_ENABLE_PUSH."""
        return bool(self.conn.remote_settings.enable_push)

    @property
    def connect_protocol(self) -> bool:
        """The peer's SETTINGS_ENABLE_CONNECT_PROTOCOL (RFC 8441)."""
        return bool(self.conn.remote_settings.get(h2.settings.SettingCodes.ENABLE_CONNECT_PROTOCOL, 0))

    @property
    def highest_inbound(self) -> int:
        """The highest stream id the client opened."""
        return self.conn.highest_inbound_stream_id

    def initiate(self) -> None:
        """Queue the server's SETTINGS."""
        self.conn.initiate_connection()

    def initiate_upgrade(self, settings_field: bytes) -> None:
        """After an h2c Upgrade: stream 1 is the upgraded request."""
        try:
            self.conn.initiate_upgrade_connection(settings_field)
        except Exception:  # noqa: BLE001 - a bad HTTP2-Settings value is the client's protocol error
            raise ConnectionFailed(PROTOCOL_ERROR, "bad HTTP2-Settings") from None

    def receive(self, data: bytes) -> list[tuple]:
        """h2's events as Engine's tuples (ConnectionFailed on a connection error)."""
        try:
            events = self.conn.receive_data(data)
        except h2.exceptions.ProtocolError as e:
            raise ConnectionFailed(getattr(e, "error_code", PROTOCOL_ERROR) or PROTOCOL_ERROR, str(e)) from None
        out = []
        for event in events:
            kind = type(event)
            if kind is h2.events.RequestReceived:
                out.append((REQUEST, event.stream_id, event.headers, event.stream_ended is not None))
            elif kind is h2.events.DataReceived:
                out.append((DATA_EVENT, event.stream_id, event.data, event.flow_controlled_length,
                            event.stream_ended is not None))
            elif kind is h2.events.TrailersReceived:
                out.append((TRAILERS, event.stream_id, event.headers))
            elif kind is h2.events.StreamReset:
                out.append((RESET if event.remote_reset else STREAM_ERROR, event.stream_id, event.error_code))
            elif kind is h2.events.WindowUpdated:
                out.append((WINDOW, event.stream_id))
            elif kind is h2.events.RemoteSettingsChanged:
                out.append((SETTINGS,))
            elif kind is h2.events.PingReceived:
                out.append((PING,))
            elif kind is h2.events.PriorityUpdated:
                out.append((PRIORITY, event.stream_id))
            elif kind is h2.events.ConnectionTerminated:
                out.append((GOAWAY, event.last_stream_id or 0, event.error_code))
        return out

    def is_open(self, sid: int) -> bool:
        """May a response still go out on `sid`?"""
        stream = self.conn.streams.get(sid)
        return stream is not None and not stream.closed

    def _queue(self, frames: bytes) -> None:
        pending = self.conn.data_to_send()
        if pending:
            self.out.append(pending)
        self.out.append(frames)

    def send_headers(self, sid: int, block: bytes, end_stream: bool, informational: bool = False) -> None:
        """A response head encoded by edge (static table only), framed here, accounted in h2's state."""
        conn = self.conn
        machine = conn.streams[sid].state_machine
        table = conn.encoder.header_table
        if table.resized:  # the peer changed its table size: h2's encoder must say so first (RFC 7541 §4.2)
            block = conn.encoder._encode_table_size_change() + block
            table.resized = False
        machine.process_input(SEND_INFORMATIONAL if informational else SEND_HEADERS)
        if end_stream:
            machine.process_input(SEND_END_STREAM)
        self._queue(header_frames(sid, block, end_stream, conn.max_outbound_frame_size))

    def push(self, sid: int, fields: list[tuple[bytes, bytes]], block: bytes) -> int:
        """PUSH_PROMISE a request on `sid` (h2 encodes `fields` itself); returns the promised stream id."""
        conn = self.conn
        if not conn.remote_settings.enable_push:
            raise RefusedPush("push is off")
        try:
            promised = conn.get_next_available_stream_id()
            conn.push_stream(sid, promised, fields)
        except h2.exceptions.ProtocolError:
            raise RefusedPush("the client's stream limit, or push turned off") from None
        return promised

    def window(self, sid: int) -> int:
        """Bytes a DATA frame on `sid` may carry now; -1 when the stream is gone."""
        try:
            return self.conn.local_flow_control_window(sid)
        except (h2.exceptions.StreamClosedError, KeyError):
            return -1

    def sent_data(self, sid: int, n: int, last: bool) -> int:
        """Account a DATA frame built by edge: debit both windows, close our side when `last`; its flags."""
        stream = self.conn.streams[sid]
        self.conn.outbound_flow_control_window -= n
        stream.outbound_flow_control_window -= n
        if last:
            stream.state_machine.process_input(SEND_END_STREAM)
            return END_STREAM
        return 0

    def acknowledge(self, sid: int, n: int) -> None:
        """Give back window for `n` bytes of request body."""
        try:
            self.conn.acknowledge_received_data(n, sid)
        except h2.exceptions.ProtocolError:
            pass

    def acknowledge_connection(self, n: int) -> None:
        """Nothing now: h2 gives a connection's window back only with a stream's (acknowledge_stream), so with
        this reference engine a body waiting for its origin also holds the connection's window back."""

    def acknowledge_stream(self, sid: int, n: int) -> None:
        """Give back window for `n` bytes of a stream's request body that were taken (both windows, with h2)."""
        self.acknowledge(sid, n)

    def stream_credit(self, sid: int, n: int) -> None:
        """A tunnel's acknowledge_stream: both windows back for `n` bytes (as acknowledge_connection gives none
        here), the stream's also after our END_STREAM (h2's acknowledge_received_data skips a half-closed
        stream); h2's window managers decide when a WINDOW_UPDATE is worth sending."""
        conn = self.conn
        frames = []
        increment = conn._inbound_flow_control_window_manager.process_bytes(n)
        if increment:
            frame = WindowUpdateFrame(0)
            frame.window_increment = increment
            frames.append(frame)
        stream = conn.streams.get(sid)
        if stream is not None and not stream.closed:
            frames += stream.acknowledge_received_data(n)
        if frames:
            conn._prepare_for_sending(frames)

    def reset(self, sid: int, code: int) -> None:
        """Reset a stream from our side (nothing when it is closed already)."""
        try:
            self.conn.reset_stream(sid, code)
        except h2.exceptions.ProtocolError:  # closed already (StreamClosedError), or the whole connection
            pass

    def goaway(self, last: int, code: int = h2.errors.ErrorCodes.NO_ERROR) -> None:
        """A graceful GOAWAY built by hand: h2's close_connection() would forbid the DATA still owed."""
        self._queue(frame_head(8, 7, 0, 0) + last.to_bytes(4, "big") + int(code).to_bytes(4, "big"))

    def close(self, code: int) -> None:
        """GOAWAY(code); whatever was queued is dropped."""
        self.conn.clear_outbound_data_buffer()
        self.out.clear()
        try:
            self.conn.close_connection(error_code=code)
        except h2.exceptions.ProtocolError:
            pass

    def data_to_send(self) -> bytes:
        """Our frames and h2's, in the order they were queued."""
        pending = self.conn.data_to_send()
        if not self.out:
            return pending
        if pending:
            self.out.append(pending)
        data = b"".join(self.out)
        self.out.clear()
        return data
