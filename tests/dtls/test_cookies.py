"""Stateless HelloVerifyRequest cookies with a rotating secret."""

import random

from bridge.dtls.cookies import SIZE, CookieJar


def jar(now=0.0):
    rng = random.Random(3)
    return CookieJar(rng.randbytes, now, rotate=60.0)


def test_a_cookie_verifies_for_its_address_only():
    cookies = jar()
    cookie = cookies.make(("10.0.0.1", 5000), 1.0)
    assert len(cookie) == SIZE
    assert cookies.check(("10.0.0.1", 5000), cookie, 2.0)
    assert not cookies.check(("10.0.0.1", 5001), cookie, 2.0)
    assert not cookies.check(("10.0.0.2", 5000), cookie, 2.0)
    assert not cookies.check(("10.0.0.1", 5000), cookie[:-1] + bytes([cookie[-1] ^ 1]), 2.0)
    assert not cookies.check(("10.0.0.1", 5000), b"", 2.0)


def test_a_cookie_survives_one_rotation_not_two():
    cookies = jar()
    cookie = cookies.make(("h", 1), 59.0)
    assert cookies.check(("h", 1), cookie, 61.0)  # rotated once: the previous secret
    assert cookies.make(("h", 1), 61.0) != cookie
    assert not cookies.check(("h", 1), cookie, 125.0)  # rotated again


def test_a_long_silence_forgets_both_secrets():
    cookies = jar()
    cookie = cookies.make(("h", 1), 0.0)
    assert not cookies.check(("h", 1), cookie, 500.0)
