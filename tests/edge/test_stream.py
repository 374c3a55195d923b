"""The RFC 8323 edge over Twisted's fakes: requests to the handler and back, limits,
backpressure, timers, closing, and the WebSocket opening handshake."""

from __future__ import annotations

from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from bridge.coap import signalling as sig
from bridge.coap.framing import StreamDecoder, decode_ws, encode, encode_ws
from bridge.coap.message import Message, make_response
from bridge.coap.options import URI_PATH, Block
from bridge.coap.reliable_requests import body_of, message_of
from bridge.settings import ReliableConfig
from bridge.edge.stream import CLOSE_GRACE, Hub, StreamProtocol
from bridge.edge.websocket import WebSocketProtocol

POST = 0x02
CFG = ReliableConfig()  # the shipped limits unless a test is about one


def hub_with(handler=None, cfg=CFG, clock=None):
    hub = Hub(cfg, handler or (lambda message: make_response(0x41)), clock or Clock(), 65536)
    hub.results = []
    hub.gone = []
    hub.on_result = lambda ref, outcome: hub.results.append((ref, outcome))
    hub.on_peer_gone = hub.gone.append
    return hub


def connected(hub, host="10.0.0.1", port=40000):
    protocol = StreamProtocol(hub, "coap+tcp")
    transport = StringTransport(peerAddress=IPv4Address("TCP", host, port))
    protocol.makeConnection(transport)
    return protocol, transport


def frames(transport):
    data = transport.value()
    transport.clear()
    return StreamDecoder(1 << 20).feed(data)


def telemetry_body(payload=b'{"t": 1}'):
    path = tuple((URI_PATH, s) for s in (b"api", b"v1", b"tok", b"telemetry"))
    return body_of(Message(POST, b"", path, payload))


def telemetry(token=b"\x07", payload=b'{"t": 1}'):
    return encode(POST, token, telemetry_body(payload))


CSM = encode(sig.CSM, b"", sig.csm_body(1152, False))


def test_the_bridges_csm_goes_first_and_a_request_reaches_the_handler():
    seen = []
    hub = hub_with(lambda message: seen.append(message) or make_response(0x41))
    protocol, transport = connected(hub)
    [csm] = frames(transport)
    assert csm.code == sig.CSM
    assert sig.parse(csm).uint(sig.MAX_MESSAGE_SIZE) == CFG.max_message_size
    protocol.dataReceived(CSM + telemetry())
    [answer] = frames(transport)
    assert (answer.code, answer.token) == (0x41, b"\x07")
    assert seen[0].message.payload == b'{"t": 1}' and str(seen[0].peer) == "coap+tcp:10.0.0.1:40000"
    assert seen[0].peer.address == ("10.0.0.1", 40000) and seen[0].peer.credential is None


def test_a_later_answer_goes_when_its_deferred_fires():
    pending = defer.Deferred()
    hub = hub_with(lambda message: pending)
    protocol, transport = connected(hub)
    frames(transport)
    protocol.dataReceived(CSM + telemetry())
    assert frames(transport) == []
    pending.callback(make_response(0x41))
    assert [f.code for f in frames(transport)] == [0x41]


def test_a_failing_handler_answers_5_00():
    def broken(message):
        raise RuntimeError("bug")
    hub = hub_with(broken)
    protocol, transport = connected(hub)
    frames(transport)
    protocol.dataReceived(CSM + telemetry())
    assert [f.code for f in frames(transport)] == [0xA0]


def test_connections_past_the_per_address_limit_are_closed_at_once():
    hub = hub_with(cfg=ReliableConfig(max_connections_per_address=2, max_connections=3))
    for _ in range(2):
        _, transport = connected(hub)
        assert not transport.disconnecting
    _, refused = connected(hub)
    assert refused.disconnecting and refused.value() == b""
    _, other = connected(hub, host="10.0.0.2")
    assert not other.disconnecting
    _, over = connected(hub, host="10.0.0.3")  # the total
    assert over.disconnecting and hub.refused == 2


def test_a_closed_connection_frees_its_place_and_ends_its_relations():
    hub = hub_with(cfg=ReliableConfig(max_connections_per_address=1))
    protocol, transport = connected(hub)
    peer = protocol.driver.peer
    protocol.connectionLost(None)
    assert hub.gone == [peer] and hub.by_address == {} and hub.connections == 0
    _, again = connected(hub)
    assert not again.disconnecting


def test_a_slow_reader_pauses_reading_and_holds_notification_outcomes():
    hub = hub_with()
    protocol, transport = connected(hub)
    protocol.dataReceived(CSM)
    frames(transport)
    peer = protocol.driver.peer
    assert transport.producer is protocol  # registered: the transport pauses us when full
    peer.notify(1, b"o", 0x45, b"{}", 2, None, 1024, 50)
    assert hub.results == [(1, "delivered")]
    protocol.pauseProducing()  # its write buffer passed max_write_buffer
    assert transport.producerState == "paused"  # no more reading from it
    peer.notify(2, b"o", 0x45, b"{}", 3, None, 1024, 50)
    assert hub.results == [(1, "delivered")]  # the core sends no more until it drains
    protocol.resumeProducing()
    assert transport.producerState == "producing"
    assert hub.results == [(1, "delivered"), (2, "delivered")]
    assert [f.code for f in frames(transport)] == [0x45, 0x45]


def test_no_csm_in_time_aborts_and_closes():
    clock = Clock()
    hub = hub_with(clock=clock)
    protocol, transport = connected(hub)
    frames(transport)
    clock.advance(CFG.csm_timeout)
    [abort] = frames(transport)
    assert abort.code == sig.ABORT and b"no CSM" in sig.parse(abort).payload
    assert transport.disconnecting


def test_a_connection_that_does_not_drain_is_cut_after_the_grace():
    clock = Clock()
    hub = hub_with(clock=clock)
    protocol, transport = connected(hub)
    aborted = []
    transport.abortConnection = lambda: aborted.append(True)
    protocol.dataReceived(b"\x0f\x02")  # token length 15: Abort
    assert transport.disconnecting and not aborted
    clock.advance(CLOSE_GRACE)
    assert aborted == [True]


def test_keepalive_ping_then_idle_release():
    clock = Clock()
    cfg = ReliableConfig(keepalive=30.0, idle_timeout=100.0)
    hub = hub_with(cfg=cfg, clock=clock)
    protocol, transport = connected(hub)
    protocol.dataReceived(CSM)
    frames(transport)
    clock.advance(30.0)
    assert [f.code for f in frames(transport)] == [sig.PING]
    protocol.dataReceived(encode(sig.PONG, b"", b""))
    clock.pump([10.0] * 12)  # 120 s: Pings, never answered
    codes = [f.code for f in frames(transport)]
    assert codes[-1] == sig.RELEASE and set(codes[:-1]) == {sig.PING}
    assert transport.disconnecting


def test_release_all_sends_release():
    hub = hub_with()
    protocol, transport = connected(hub)
    frames(transport)
    hub.release_all("the bridge is stopping")
    assert [f.code for f in frames(transport)] == [sig.RELEASE] and transport.disconnecting


# -- WebSockets --------------------------------------------------------------------------

def upgrade(path="/.well-known/coap", protocols="coap"):
    lines = ["GET %s HTTP/1.1" % path, "Host: bridge", "Upgrade: websocket",
             "Connection: Upgrade", "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
             "Sec-WebSocket-Version: 13"]
    if protocols:
        lines.append("Sec-WebSocket-Protocol: " + protocols)
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def ws_connected(hub, request):
    protocol = WebSocketProtocol(hub, "coap+ws")
    transport = StringTransport(peerAddress=IPv4Address("TCP", "10.0.0.9", 50000))
    protocol.makeConnection(transport)
    protocol.dataReceived(request)
    return protocol, transport


def client_frame(payload, opcode=0x2):
    """A masked client WebSocket frame (RFC 6455 §5.2), payload < 65536 bytes."""
    mask = b"\x01\x02\x03\x04"
    head = bytes((0x80 | opcode,)) + (bytes((0x80 | len(payload),)) if len(payload) < 126
                                      else b"\xfe" + len(payload).to_bytes(2, "big"))
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def server_messages(data):
    """The payloads of the server's (unmasked) binary frames in ``data``."""
    out, pos = [], 0
    while pos < len(data):
        length, pos = data[pos + 1] & 0x7F, pos + 2
        if length == 126:
            length, pos = int.from_bytes(data[pos:pos + 2], "big"), pos + 2
        out.append((data[pos - 2 - (2 if length > 125 else 0)] & 0x0F, data[pos:pos + length]))
        pos += length
    return out


def test_websocket_opening_names_the_coap_subprotocol():
    seen = []
    hub = hub_with(lambda message: seen.append(message) or make_response(0x41))
    protocol, transport = ws_connected(hub, upgrade())
    head, _, rest = transport.value().partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101") and b"sec-websocket-protocol: coap" in head.lower()
    [(opcode, csm)] = server_messages(rest)
    assert opcode == 2 and decode_ws(csm).code == sig.CSM
    transport.clear()
    protocol.dataReceived(client_frame(encode_ws(sig.CSM, b"", b"")) +
                          client_frame(encode_ws(POST, b"\x07", telemetry_body())))
    [(_, answer)] = server_messages(transport.value())
    assert decode_ws(answer).code == 0x41 and decode_ws(answer).token == b"\x07"
    assert seen[0].message.payload == b'{"t": 1}'


def test_websocket_on_another_path_is_404_and_without_the_subprotocol_400():
    hub = hub_with()
    _, transport = ws_connected(hub, upgrade(path="/other"))
    assert transport.value().startswith(b"HTTP/1.1 404") and transport.disconnecting
    _, transport = ws_connected(hub, upgrade(protocols=None))
    assert transport.value().startswith(b"HTTP/1.1 400") and transport.disconnecting
    assert hub.connections == 2  # until they close
    assert not hub.drivers


def test_websocket_text_message_closes_with_1003():
    hub = hub_with()
    protocol, transport = ws_connected(hub, upgrade())
    transport.clear()
    protocol.dataReceived(client_frame(b"hello", opcode=0x1))
    [(opcode, payload)] = server_messages(transport.value())
    assert opcode == 8 and payload[:2] == (1003).to_bytes(2, "big")


def test_websocket_message_over_max_message_size_is_4_13_and_not_kept():
    hub = hub_with(cfg=ReliableConfig(max_message_size=2000))
    protocol, transport = ws_connected(hub, upgrade())
    protocol.dataReceived(client_frame(encode_ws(sig.CSM, b"", b"")))
    transport.clear()
    big = encode_ws(POST, b"\x09", b"\xff" + b"x" * 5000)
    protocol.dataReceived(client_frame(big))
    assert len(protocol._message) == 0
    [(_, answer)] = server_messages(transport.value())
    assert decode_ws(answer).code == 0x8D and decode_ws(answer).token == b"\x09"


def test_websocket_without_an_opening_in_time_is_closed():
    clock = Clock()
    hub = hub_with(clock=clock)
    protocol = WebSocketProtocol(hub, "coap+ws")
    transport = StringTransport(peerAddress=IPv4Address("TCP", "10.0.0.9", 50000))
    aborted = []
    transport.abortConnection = lambda: aborted.append(True)
    protocol.makeConnection(transport)
    clock.advance(CFG.handshake_timeout)
    assert aborted == [True]


def test_a_connection_whose_credential_left_the_registry_is_released():
    hub = hub_with()
    kept, kept_transport = connected(hub)
    gone, gone_transport = connected(hub, port=40001)
    kept.driver.peer.credential = "certificate a"
    gone.driver.peer.credential = "certificate b"
    frames(kept_transport), frames(gone_transport)
    assert hub.end_credentials(lambda credential: credential == "certificate b") == 1
    assert [f.code for f in frames(gone_transport)] == [sig.RELEASE]
    assert gone_transport.disconnecting and not kept_transport.disconnecting


def get_frame(token=b"\x09", extra=()):
    path = tuple((URI_PATH, s) for s in (b"api", b"v1", b"tok", b"attributes"))
    options = tuple(sorted(path + tuple(extra), key=lambda option: option[0]))
    return encode(0x01, token, body_of(Message(0x01, token, options, b"")))


def test_bert_blocks_where_the_devices_csm_offers_block_wise_transfer_over_1152():
    body = bytes(range(200)) * 500  # 100,000 bytes
    seen = []
    hub = hub_with(lambda incoming: seen.append(incoming) or make_response(0x45, body))
    protocol, transport = connected(hub)
    [ours] = frames(transport)
    assert sig.parse(ours).has(sig.BLOCK_WISE_TRANSFER)
    protocol.dataReceived(encode(sig.CSM, b"", sig.csm_body(8192, True)) + get_frame())
    [first] = [message_of(f) for f in frames(transport)]
    assert first.block2 == Block(0, True, 7) and first.payload == body[:7168]
    assert seen[0].peer.room == 8192 - 72  # what one answer carries, for the download budget
    # a device offering more than the bridge takes gets blocks of what the bridge takes
    protocol, transport = connected(hub, port=40001)
    frames(transport)
    protocol.dataReceived(encode(sig.CSM, b"", sig.csm_body(8 << 20, True)) + get_frame())
    [first] = [message_of(f) for f in frames(transport)]
    assert first.block2 == Block(0, True, 7) and len(first.payload) == 65536
    # without Block-Wise-Transfer in its CSM: RFC 7959 blocks, and SZX 7 refused
    protocol, transport = connected(hub, port=40002)
    frames(transport)
    protocol.dataReceived(encode(sig.CSM, b"", sig.csm_body(8192, False)) + get_frame() +
                          get_frame(b"\x0a", [(23, Block(7, False, 7).encode())]))
    plain, refused = [message_of(f) for f in frames(transport)]
    assert plain.block2 == Block(0, True, 6) and len(plain.payload) == 1024
    assert refused.code == 0x82 and b"Block-Wise-Transfer" in refused.payload
