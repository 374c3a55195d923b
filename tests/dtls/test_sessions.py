"""The session table's bounds and the handshake guard, without sockets."""

from bridge.dtls.sessions import HandshakeGuard, SessionTable


class S:
    def __init__(self, key, address):
        self.key = key
        self.address = address


def test_handshakes_past_their_deadline_and_idle_sessions_are_due():
    table = SessionTable(max_sessions=1, handshake_timeout=10, idle_timeout=100)
    a, b, c = S("a", ("h", 1)), S("b", ("h", 2)), S("c", ("h", 3))
    table.add(a.address, a, 0.0)
    table.add(b.address, b, 1.0)
    table.add(c.address, c, 2.0)
    assert not table.full() and len(table) == 3  # half-open ones do not fill it
    table.establish(b, 3.0)
    assert table.full() and table.established == 1 and table.handshaking == 2
    assert table.next_due() == 10.0
    assert table.due(9.9) == []
    assert table.due(10.0) == [(a, "handshake timeout")]
    assert table.get(("h", 1)) is None
    table.touch(b, 50.0)
    assert table.due(12.0) == [(c, "handshake timeout")]
    assert table.next_due() == 150.0
    assert table.due(149.0) == []
    assert table.due(150.0) == [(b, "idle")]
    assert len(table) == 0 and table.next_due() is None


def test_half_open_handshakes_are_bounded_in_all_and_per_host():
    table = SessionTable(10, 10, 100, max_handshakes=3, max_handshakes_per_address=2)
    a, b, c, d = (S(k, addr) for k, addr in (("a", ("h", 1)), ("b", ("h", 2)),
                                             ("c", ("g", 1)), ("d", ("g", 2))))
    table.add(a.address, a, 0.0)
    table.add(b.address, b, 1.0)
    assert table.host_full("h") and not table.host_full("g")
    table.add(c.address, c, 2.0)
    assert table.handshakes_full() and table.oldest_handshake() is a
    table.establish(a, 3.0)  # finished: neither bound counts it any more
    assert not table.host_full("h") and not table.handshakes_full()
    table.add(d.address, d, 4.0)
    assert table.host_full("g") and table.oldest_handshake() is b
    table.remove(d)
    table.remove(c)
    assert not table.host_full("g") and table.handshaking == 1


def test_an_idle_session_in_use_is_kept_as_if_used_now():
    table = SessionTable(10, 10, 100)
    a, b = S("a", ("h", 1)), S("b", ("h", 2))
    for session in (a, b):
        table.add(session.address, session, 0.0)
        table.establish(session, 0.0)
    assert table.due(100.0, in_use=lambda session: session is a) == [(b, "idle")]
    assert table.next_due() == 200.0
    assert table.due(200.0) == [(a, "idle")]


def test_a_new_session_replaces_the_old_one_of_its_address():
    table = SessionTable(10, 10, 100)
    old, new = S("old", ("h", 1)), S("new", ("h", 1))
    table.add(old.address, old, 0.0)
    table.establish(old, 1.0)
    table.add(new.address, new, 2.0)
    assert table.get(("h", 1)) is new and len(table) == 1
    table.remove(old)  # removing the replaced one leaves the new one alone
    assert table.get(("h", 1)) is new


def test_handshake_rate_per_address():
    guard = HandshakeGuard(rate=1.0, burst=2.0)
    assert guard.allow("h", 0.0) and guard.allow("h", 0.0)
    assert not guard.allow("h", 0.0)
    assert guard.allow("other", 0.0)
    assert guard.allow("h", 1.0)


def test_unknown_identities_are_remembered_for_a_while():
    guard = HandshakeGuard(1.0, 1.0, negative_ttl=30.0, max_negative=2)
    guard.unknown("x", 0.0)
    assert guard.known_unknown("x", 29.0)
    assert not guard.known_unknown("x", 30.0)
    for name in ("a", "b", "c"):
        guard.unknown(name, 40.0)
    assert not guard.known_unknown("a", 41.0)  # bounded: the oldest went
    assert guard.known_unknown("c", 41.0)
    guard.forget()
    assert not guard.known_unknown("c", 41.0)
