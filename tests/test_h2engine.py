"""edge/h2engine.py in memory: client bytes in, events and server frames out (RFC 9113), table by table.

Frames are built with hyperframe and header blocks with hpack's encoder (a real client's tools); what the
engine writes is split into (type, flags, stream, payload) and checked frame by frame.
"""

from __future__ import annotations

import struct

import hpack
import pytest
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    PriorityFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)

from edge.h2engine import (
    COMPRESSION_ERROR,
    DATA_EVENT,
    ENHANCE_YOUR_CALM,
    FLOW_CONTROL_ERROR,
    FRAME_SIZE_ERROR,
    GOAWAY,
    PING,
    PREFACE,
    PRIORITY,
    PROTOCOL_ERROR,
    REFUSED_STREAM,
    REQUEST,
    RESET,
    SETTINGS,
    STREAM_CLOSED,
    STREAM_ERROR,
    TRAILERS,
    WINDOW,
    ConnectionFailed,
    Engine,
    RefusedPush,
    header_frames,
)

GET = [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"x"), (b":path", b"/")]


def raw(kind: int, flags: int, sid: int, payload: bytes) -> bytes:
    """A frame built by hand (for shapes hyperframe refuses to build)."""
    return struct.pack(">HBBBI", len(payload) >> 8, len(payload) & 0xFF, kind, flags, sid) + payload


def frames_of(data: bytes) -> list[tuple[int, int, int, bytes]]:
    """The frames the engine wrote: (type, flags, stream id, payload)."""
    out, at = [], 0
    while at < len(data):
        high, low, kind, flags, sid = struct.unpack_from(">HBBBI", data, at)
        length = (high << 8) | low
        out.append((kind, flags, sid, data[at + 9:at + 9 + length]))
        at += 9 + length
    return out


class Peer:
    """A client talking to an Engine: its encoder, and what the engine answered."""

    def __init__(self, **limits) -> None:
        self.engine = Engine(**limits)
        self.engine.initiate()
        self.encoder = hpack.Encoder()
        self.server_settings = frames_of(self.engine.data_to_send())
        self.events = self.feed(PREFACE + SettingsFrame(0).serialize())
        self.answer = self.out()  # to the client's preface: the SETTINGS ACK

    def feed(self, *chunks) -> list[tuple]:
        """Send frames (hyperframe frames or raw bytes) in one write; the events."""
        data = b"".join(c if isinstance(c, bytes) else c.serialize() for c in chunks)
        return self.engine.receive(data)

    def block(self, fields) -> bytes:
        return self.encoder.encode(fields)

    def out(self) -> list[tuple[int, int, int, bytes]]:
        return frames_of(self.engine.data_to_send())

    def fails(self, *chunks) -> int:
        """The connection error code the chunks cause."""
        with pytest.raises(ConnectionFailed) as e:
            self.feed(*chunks)
        return e.value.code


def test_the_server_preface_is_its_settings_and_the_clients_are_acknowledged():
    peer = Peer(max_concurrent_streams=7, max_header_list_size=1000)
    [(kind, flags, sid, payload)] = peer.server_settings
    assert (kind, flags, sid) == (4, 0, 0)
    assert dict(struct.iter_unpack(">HI", payload)) == {3: 7, 6: 1000}
    assert peer.events == [(SETTINGS,)]
    assert peer.answer == [(4, 1, 0, b"")]  # the ACK


@pytest.mark.parametrize("data, code", [
    (b"GET / HTTP/1.1\r\n\r\n" + b"x" * 10, PROTOCOL_ERROR),  # not the preface
    (PREFACE + PingFrame(0).serialize(), PROTOCOL_ERROR),  # §3.4: SETTINGS must come first
    (PREFACE + SettingsFrame(0, flags=["ACK"]).serialize(), PROTOCOL_ERROR),
])
def test_a_bad_start_is_a_connection_error(data, code):
    engine = Engine()
    engine.initiate()
    with pytest.raises(ConnectionFailed) as e:
        engine.receive(data)
    assert e.value.code == code


def test_a_request_arrives_whole_whatever_the_chunking():
    peer = Peer()
    data = HeadersFrame(1, data=peer.block(GET), flags=["END_HEADERS", "END_STREAM"]).serialize()
    events = []
    for i in range(len(data)):  # a byte at a time
        events += peer.engine.receive(data[i:i + 1])
    assert events == [(REQUEST, 1, GET, True)]


def test_headers_with_padding_priority_and_continuation():
    peer = Peer()
    block = peer.block(GET + [(b"x-long", b"v" * 100)])
    first = HeadersFrame(1, data=block[:10], flags=["PADDED", "PRIORITY"], pad_length=5, depends_on=0,
                         stream_weight=200)
    events = peer.feed(first, ContinuationFrame(1, data=block[10:50]),
                       ContinuationFrame(1, data=block[50:], flags=["END_HEADERS"]))
    assert events == [(REQUEST, 1, GET + [(b"x-long", b"v" * 100)], False), (PRIORITY, 1)]


def test_request_body_data_padding_and_flow_control():
    peer = Peer()
    peer.feed(HeadersFrame(1, data=peer.block(GET), flags=["END_HEADERS"]))
    events = peer.feed(DataFrame(1, data=b"hello", flags=["PADDED", "END_STREAM"], pad_length=10))
    assert events == [(DATA_EVENT, 1, b"hello", 16, True)]  # flow control counts the padding and its length byte
    assert peer.engine.recv_window == 65_535 - 16
    peer.engine.acknowledge(1, 16)
    assert peer.out() == [(8, 0, 0, struct.pack(">I", 16))]  # the stream is half-closed: only the connection's
    assert peer.engine.recv_window == 65_535


@pytest.mark.parametrize("frames, code", [
    ([DataFrame(1, data=b"x")], PROTOCOL_ERROR),  # DATA on an idle stream (§5.1)
    ([raw(0, 0, 0, b"x")], PROTOCOL_ERROR),  # DATA on stream 0
    ([raw(1, 0x5, 2, b"\x82")], PROTOCOL_ERROR),  # HEADERS on an even (server) stream id
    ([raw(1, 0x5, 0, b"\x82")], PROTOCOL_ERROR),  # HEADERS on stream 0
    ([raw(9, 0x4, 1, b"\x82")], PROTOCOL_ERROR),  # CONTINUATION without HEADERS
    ([raw(5, 0x4, 1, b"\x00\x00\x00\x02\x82")], PROTOCOL_ERROR),  # PUSH_PROMISE from a client (§8.4)
    ([raw(6, 0, 0, b"1234567")], FRAME_SIZE_ERROR),  # PING of 7 bytes
    ([raw(6, 0, 1, b"12345678")], PROTOCOL_ERROR),  # PING on a stream
    ([raw(3, 0, 1, b"\x00\x00\x00\x00")], PROTOCOL_ERROR),  # RST_STREAM on an idle stream
    ([raw(3, 0, 0, b"\x00\x00\x00\x00")], PROTOCOL_ERROR),  # RST_STREAM on stream 0
    ([raw(8, 0, 0, b"\x00\x00\x00\x00")], PROTOCOL_ERROR),  # WINDOW_UPDATE of 0 on the connection
    ([raw(8, 0, 0, b"\x00\x00\x01")], FRAME_SIZE_ERROR),  # WINDOW_UPDATE of 3 bytes
    ([raw(8, 0, 0, struct.pack(">I", (1 << 31) - 1))], FLOW_CONTROL_ERROR),  # the connection window overflows
    ([raw(8, 0, 3, b"\x00\x00\x00\x01")], PROTOCOL_ERROR),  # WINDOW_UPDATE on an idle stream
    ([raw(7, 0, 1, b"\x00" * 8)], PROTOCOL_ERROR),  # GOAWAY on a stream
    ([raw(7, 0, 0, b"\x00" * 7)], FRAME_SIZE_ERROR),
    ([raw(2, 0, 0, b"\x00" * 5)], PROTOCOL_ERROR),  # PRIORITY on stream 0
    ([raw(4, 0, 0, b"\x00" * 5)], FRAME_SIZE_ERROR),  # SETTINGS not a multiple of 6
    ([raw(4, 1, 0, b"\x00" * 6)], FRAME_SIZE_ERROR),  # a SETTINGS ACK with a payload
    ([raw(4, 0, 1, b"")], PROTOCOL_ERROR),  # SETTINGS on a stream
    ([raw(4, 0, 0, struct.pack(">HI", 2, 2))], PROTOCOL_ERROR),  # ENABLE_PUSH 2
    ([raw(4, 0, 0, struct.pack(">HI", 4, 1 << 31))], FLOW_CONTROL_ERROR),  # INITIAL_WINDOW_SIZE over 2^31-1
    ([raw(4, 0, 0, struct.pack(">HI", 5, 100))], PROTOCOL_ERROR),  # MAX_FRAME_SIZE below 16384
    ([raw(4, 0, 0, struct.pack(">HI", 5, 1 << 24))], PROTOCOL_ERROR),  # ... above 2^24-1
    ([raw(4, 0, 0, struct.pack(">HI", 8, 2))], PROTOCOL_ERROR),  # ENABLE_CONNECT_PROTOCOL 2 (RFC 8441)
    ([raw(0, 0, 1, b"x" * 16_385)], FRAME_SIZE_ERROR),  # over our SETTINGS_MAX_FRAME_SIZE
    ([raw(1, 0x8 | 0x5, 1, b"\x09" + b"\x82" * 3)], PROTOCOL_ERROR),  # padding longer than the payload
    ([raw(1, 0x5, 1, b"\xbf")], COMPRESSION_ERROR),  # an index past both tables
])
def test_connection_errors(frames, code):
    assert Peer().fails(*frames) == code


def test_a_frame_inside_a_header_block_is_a_connection_error():
    peer = Peer()
    block = peer.block(GET)
    for interloper in (PingFrame(0), PriorityFrame(1), RstStreamFrame(1), WindowUpdateFrame(0, 1), DataFrame(1),
                       HeadersFrame(3, data=b"\x82", flags=["END_HEADERS"]), raw(0x20, 0, 1, b"unknown")):
        p = Peer()
        p.encoder = peer.encoder
        assert p.fails(HeadersFrame(1, data=block[:2]), interloper) == PROTOCOL_ERROR, interloper


@pytest.mark.parametrize("frame, code", [
    (raw(2, 0, 1, b"\x00" * 4), FRAME_SIZE_ERROR),  # PRIORITY not 5 bytes (§6.3): a stream error
    (raw(2, 0, 1, struct.pack(">IB", 1, 16)), PROTOCOL_ERROR),  # a stream depending on itself (§5.3.1)
    (raw(8, 0, 1, b"\x00\x00\x00\x00"), PROTOCOL_ERROR),  # WINDOW_UPDATE of 0 on a stream
    (raw(8, 0, 1, struct.pack(">I", (1 << 31) - 1)), FLOW_CONTROL_ERROR),  # its window overflows
    (DataFrame(1, data=b"late"), STREAM_CLOSED),  # DATA after the client's END_STREAM (§5.1 half-closed)
])
def test_stream_errors_reset_the_stream_once_and_the_connection_goes_on(frame, code):
    peer = Peer()
    peer.feed(HeadersFrame(1, data=peer.block(GET), flags=["END_HEADERS", "END_STREAM"]))
    assert peer.feed(frame) == [(STREAM_ERROR, 1, code)]
    credit = [(8, 0, 0, b"\x00\x00\x00\x04")] if type(frame) is DataFrame else []  # DATA's window, given back
    assert peer.out() == credit + [(3, 0, 1, struct.pack(">I", code))]
    assert peer.feed(frame) in ([], [(PRIORITY, 1)])  # closed by our RST_STREAM: ignored (§5.1)
    assert peer.out() == [] if type(frame) is not DataFrame else [(8, 0, 0, b"\x00\x00\x00\x04")]
    assert peer.feed(HeadersFrame(3, data=peer.block(GET), flags=["END_HEADERS", "END_STREAM"])) == \
        [(REQUEST, 3, GET, True)]


def test_frames_after_our_reset_are_ignored_but_their_data_still_returns_window():
    peer = Peer()
    peer.feed(HeadersFrame(1, data=peer.block(GET), flags=["END_HEADERS"]))
    peer.engine.reset(1, 0)  # our RST_STREAM(NO_ERROR) after a complete answer (§8.1)
    assert peer.out() == [(3, 0, 1, b"\x00\x00\x00\x00")]
    assert peer.feed(DataFrame(1, data=b"x" * 100), WindowUpdateFrame(1, 5), PriorityFrame(1, depends_on=0),
                     RstStreamFrame(1)) == [(PRIORITY, 1)]
    assert peer.out() == [(8, 0, 0, struct.pack(">I", 100))]  # no second RST_STREAM, the window given back
    peer.engine.reset(1, 8)
    assert peer.out() == []  # one RST_STREAM per stream


def test_frames_after_both_ends_closed_the_stream_are_a_connection_error():
    peer = Peer()
    peer.feed(HeadersFrame(1, data=peer.block(GET), flags=["END_HEADERS", "END_STREAM"]))
    peer.engine.send_headers(1, b"\x88", True)  # :status 200, END_STREAM: closed both ways
    assert peer.fails(DataFrame(1, data=b"x")) == STREAM_CLOSED


def test_a_new_stream_id_must_grow():
    peer = Peer()
    peer.feed(HeadersFrame(5, data=peer.block(GET), flags=["END_HEADERS", "END_STREAM"]))
    assert peer.fails(HeadersFrame(3, data=peer.block(GET), flags=["END_HEADERS", "END_STREAM"])) == PROTOCOL_ERROR


def test_streams_beyond_the_limit_are_refused_and_hpack_stays_in_step():
    peer = Peer(max_concurrent_streams=2)
    fields = GET + [(b"x-indexed", b"value")]  # enters the dynamic table in each block that is refused too
    events = peer.feed(*(HeadersFrame(sid, data=peer.block(fields), flags=["END_HEADERS"]) for sid in (1, 3, 5)))
    assert events == [(REQUEST, 1, fields, False), (REQUEST, 3, fields, False), (STREAM_ERROR, 5, REFUSED_STREAM)]
    assert peer.out() == [(3, 0, 5, struct.pack(">I", REFUSED_STREAM))]
    peer.feed(RstStreamFrame(1))
    assert peer.feed(HeadersFrame(7, data=peer.block(fields), flags=["END_HEADERS", "END_STREAM"])) == \
        [(REQUEST, 7, fields, True)]


def test_trailers_end_the_stream_or_reset_it():
    peer = Peer()
    peer.feed(HeadersFrame(1, data=peer.block(GET), flags=["END_HEADERS"]), DataFrame(1, data=b"x"))
    assert peer.feed(HeadersFrame(1, data=peer.block([(b"x-sum", b"1")]), flags=["END_HEADERS", "END_STREAM"])) == \
        [(TRAILERS, 1, [(b"x-sum", b"1")])]
    peer.feed(HeadersFrame(3, data=peer.block(GET), flags=["END_HEADERS"]))
    assert peer.feed(HeadersFrame(3, data=peer.block([(b"x-sum", b"1")]), flags=["END_HEADERS"])) == \
        [(STREAM_ERROR, 3, PROTOCOL_ERROR)]  # §8.1: trailers carry END_STREAM


def test_header_block_bytes_and_continuation_count_are_capped():
    peer = Peer(max_header_block_size=100)
    assert peer.fails(HeadersFrame(1, data=b"\x82" * 60), ContinuationFrame(1, data=b"\x82" * 60)) == \
        ENHANCE_YOUR_CALM
    peer = Peer()
    assert peer.fails(HeadersFrame(1, data=b"\x82"), *(ContinuationFrame(1, data=b"") for _ in range(65))) == \
        PROTOCOL_ERROR


def test_a_decoded_header_list_over_its_limit_is_enhance_your_calm():
    peer = Peer(max_header_list_size=1000)
    assert peer.fails(HeadersFrame(1, data=peer.block(GET + [(b"x", b"y" * 2000)]), flags=["END_HEADERS"])) == \
        ENHANCE_YOUR_CALM


def test_send_windows_follow_settings_and_window_updates():
    peer = Peer()
    peer.feed(HeadersFrame(1, data=peer.block(GET), flags=["END_HEADERS", "END_STREAM"]))
    engine = peer.engine
    assert engine.window(1) == 65_535
    engine.send_headers(1, b"\x88", False)
    assert engine.sent_data(1, 65_000, False) == 0
    assert engine.window(1) == 535
    assert peer.feed(raw(4, 0, 0, struct.pack(">HI", 4, 100))) == [(SETTINGS,)]  # §6.9.2: -65435 on every stream
    assert engine.streams[1].send_window == 100 - 65_000
    assert engine.window(1) == 100 - 65_000
    assert peer.feed(WindowUpdateFrame(1, 70_000), WindowUpdateFrame(0, 1000)) == [(WINDOW, 1), (WINDOW, 0)]
    assert engine.window(1) == 1535  # the connection's window is the smaller now
    assert engine.sent_data(1, 10, True) == 1  # END_STREAM
    assert engine.window(1) == -1


def test_pings_are_answered_and_unknown_frames_ignored():
    peer = Peer()
    assert peer.feed(PingFrame(0, opaque_data=b"abcdefgh"), raw(0x20, 0xFF, 1, b"anything")) == [(PING,)]
    assert peer.out() == [(6, 1, 0, b"abcdefgh")]
    assert peer.feed(PingFrame(0, opaque_data=b"abcdefgh", flags=["ACK"])) == []


def test_goaway_and_close():
    peer = Peer()
    peer.feed(HeadersFrame(1, data=peer.block(GET), flags=["END_HEADERS", "END_STREAM"]))
    assert peer.feed(GoAwayFrame(0, last_stream_id=0, error_code=2)) == [(GOAWAY, 0, 2)]
    peer.out()
    peer.engine.close(PROTOCOL_ERROR)
    assert peer.out() == [(7, 0, 0, struct.pack(">II", 1, PROTOCOL_ERROR))]
    assert peer.feed(PingFrame(0)) == []  # nothing more is read


def test_big_header_blocks_go_out_as_continuation_frames():
    block = bytes(range(256)) * 100
    frames = frames_of(header_frames(1, block, True, 16_384))
    assert [(kind, flags, len(payload)) for kind, flags, _, payload in frames] == \
        [(1, 1, 16_384), (9, 4, 25_600 - 16_384)]
    assert b"".join(p for *_, p in frames) == block


def test_a_table_size_change_is_acknowledged_in_the_next_block():
    peer = Peer()
    peer.feed(HeadersFrame(1, data=peer.block(GET), flags=["END_HEADERS", "END_STREAM"]),
              raw(4, 0, 0, struct.pack(">HI", 1, 0)))
    peer.out()
    peer.engine.send_headers(1, b"\x88", True)
    [(kind, _, _, payload)] = peer.out()
    assert payload == b"\x20\x88"  # RFC 7541 §6.3: table size 0 first (edge never indexes)
    decoder = hpack.Decoder()
    decoder.header_table_size = 0
    assert decoder.decode(payload, raw=True) == [(b":status", b"200")]


def test_push_promises_reserve_even_streams_and_follow_the_clients_settings():
    peer = Peer()
    peer.feed(HeadersFrame(1, data=peer.block(GET), flags=["END_HEADERS", "END_STREAM"]))
    promised = peer.engine.push(1, [], b"\x82\x86\x84")
    assert promised == 2
    [(kind, flags, sid, payload)] = peer.out()
    assert (kind, flags, sid, payload) == (5, 4, 1, b"\x00\x00\x00\x02\x82\x86\x84")
    assert peer.engine.window(2) == 65_535
    peer.engine.send_headers(2, b"\x88", False)
    peer.engine.sent_data(2, 5, True)
    assert peer.engine.window(2) == -1
    peer.feed(raw(4, 0, 0, struct.pack(">HI", 2, 0)))
    with pytest.raises(RefusedPush):
        peer.engine.push(1, [], b"\x82")


def test_an_h2c_upgrade_opens_stream_1_half_closed():
    engine = Engine()
    engine.initiate_upgrade(b"AAMAAABkAAQAAP__")  # MAX_CONCURRENT_STREAMS 100, INITIAL_WINDOW_SIZE 65535
    assert frames_of(engine.data_to_send())[0][0] == 4
    assert engine.window(1) == 65_535
    assert engine.receive(PREFACE + SettingsFrame(0).serialize()) == [(SETTINGS,)]
    with pytest.raises(ConnectionFailed):
        Engine().initiate_upgrade(b"!!!")


def test_rst_stream_from_the_peer():
    peer = Peer()
    peer.feed(HeadersFrame(1, data=peer.block(GET), flags=["END_HEADERS"]))
    assert peer.feed(RstStreamFrame(1, error_code=8)) == [(RESET, 1, 8)]
    assert peer.engine.window(1) == -1
    assert peer.feed(RstStreamFrame(1, error_code=8)) == []  # closed already


@pytest.mark.parametrize("length, bodies, error_at", [
    (b"5", [(b"abc", []), (b"de", ["END_STREAM"])], None),  # the announced length: fine
    (b"5", [(b"abc", ["END_STREAM"])], 0),  # less (RFC 9113 §8.1.1)
    (b"2", [(b"abc", [])], 0),  # more
    (b"4", [(b"ab", []), (b"cde", [])], 1),  # more, over two frames
    (b"0", [(b"", ["END_STREAM"])], None),
])
def test_a_body_must_match_its_content_length(length, bodies, error_at):
    peer = Peer()
    head = [(b":method", b"POST")] + GET[1:] + [(b"content-length", length)]
    assert peer.feed(HeadersFrame(1, data=peer.block(head), flags=["END_HEADERS"]))[0][0] == REQUEST
    peer.out()
    for i, (data, flags) in enumerate(bodies):
        events = peer.feed(DataFrame(1, data=data, flags=flags))
        if i == error_at:
            assert events == [(STREAM_ERROR, 1, PROTOCOL_ERROR)]
            assert peer.out()[-1] == (3, 0, 1, struct.pack(">I", PROTOCOL_ERROR))
            delivered = sum(len(d) for d, _ in bodies[:i])  # the adapter gives those back as it reads them
            assert peer.engine.recv_window == 65_535 - delivered  # the refused DATA's window given back
            return
        assert events == [(DATA_EVENT, 1, data, len(data), "END_STREAM" in flags)]
    assert error_at is None


@pytest.mark.parametrize("length", [b"five", b"-1", b"5"], ids=["not-a-number", "negative", "with-end-stream"])
def test_a_malformed_content_length_resets_the_stream_before_its_request_is_seen(length):
    peer = Peer()
    flags = ["END_HEADERS", "END_STREAM"] if length == b"5" else ["END_HEADERS"]
    assert peer.feed(HeadersFrame(1, data=peer.block(GET + [(b"content-length", length)]), flags=flags)) == \
        [(STREAM_ERROR, 1, PROTOCOL_ERROR)]
    assert peer.feed(HeadersFrame(1, data=peer.block(GET + [(b"content-length", b"1"), (b"content-length", b"2")]),
                                  flags=["END_HEADERS"])) == []  # (stream 1 is reset: ignored, §5.1)
    assert peer.feed(HeadersFrame(3, data=peer.block(GET + [(b"content-length", b"1"), (b"content-length", b"2")]),
                                  flags=["END_HEADERS"])) == [(STREAM_ERROR, 3, PROTOCOL_ERROR)]


def test_bad_padding_is_a_connection_error_on_any_stream():
    # RFC 9113 §6.1: padding as long as the payload is a connection error, whatever the stream's state.
    peer = Peer()
    peer.feed(HeadersFrame(1, data=peer.block(GET), flags=["END_HEADERS"]))
    peer.engine.reset(1, 0)
    assert peer.fails(raw(0, 0x8, 1, b"\x05abc")) == PROTOCOL_ERROR


# -- RFC 8441: extended CONNECT -------------------------------------------------------------------------------

WEBSOCKET = [(b":method", b"CONNECT"), (b":protocol", b"websocket"), (b":scheme", b"https"), (b":authority", b"x"),
             (b":path", b"/chat"), (b"sec-websocket-version", b"13")]


@pytest.mark.parametrize("enabled, expected", [(False, {3: 128, 6: 65_536}), (True, {3: 128, 6: 65_536, 8: 1})])
def test_settings_advertise_enable_connect_protocol_only_when_asked(enabled, expected):
    # RFC 8441 §3: SETTINGS_ENABLE_CONNECT_PROTOCOL (0x8) = 1 when WebSocket tunnels are on; absent otherwise.
    [(kind, flags, sid, payload)] = Peer(enable_connect_protocol=enabled).server_settings
    assert (kind, flags, sid) == (4, 0, 0)
    assert dict(struct.unpack_from(">HI", payload, at) for at in range(0, len(payload), 6)) == expected


@pytest.mark.parametrize("value, connect_protocol", [(0, False), (1, True)])
def test_the_peers_enable_connect_protocol_is_read(value, connect_protocol):
    peer = Peer()
    assert peer.feed(raw(4, 0, 0, struct.pack(">HI", 8, value))) == [(SETTINGS,)]
    assert peer.engine.connect_protocol is connect_protocol


def test_an_extended_connect_is_a_request_carrying_its_protocol():
    # The engine passes :protocol on in the REQUEST event, the stream open both ways (a tunnel's stream);
    # whether the request is well-formed (RFC 8441 §4) is the adapter's judgement (tests/test_h2_io.py).
    peer = Peer(enable_connect_protocol=True)
    assert peer.feed(HeadersFrame(1, data=peer.block(WEBSOCKET), flags=["END_HEADERS"])) == \
        [(REQUEST, 1, WEBSOCKET, False)]
    assert peer.engine.is_open(1)
    assert peer.feed(DataFrame(1, b"frame")) == [(DATA_EVENT, 1, b"frame", 5, False)]


def test_a_tunnels_windows_come_back_apart_and_after_our_end_stream():
    # acknowledge_connection() gives back the connection's window only; stream_credit() the stream's, also in
    # half-closed (local) after our END_STREAM (a tunnel's client direction goes on, RFC 9113 §5.1), not once closed.
    peer = Peer(enable_connect_protocol=True)
    peer.feed(HeadersFrame(1, data=peer.block(WEBSOCKET), flags=["END_HEADERS"]), DataFrame(1, b"x" * 1000))
    engine = peer.engine
    peer.out()
    engine.acknowledge_connection(1000)
    assert peer.out() == [(8, 0, 0, struct.pack(">I", 1000))]
    assert engine.recv_window == 65_535 and engine.streams[1].recv_window == 64_535
    engine.send_headers(1, b"\x88", False)
    engine.sent_data(1, 0, True)  # our END_STREAM: half-closed (local)
    peer.out()
    engine.stream_credit(1, 1000)
    assert peer.out() == [(8, 0, 1, struct.pack(">I", 1000))]
    assert engine.streams[1].recv_window == 65_535
    peer.feed(DataFrame(1, b"", flags=["END_STREAM"]))  # closed both ways
    engine.stream_credit(1, 10)
    assert peer.out() == []
