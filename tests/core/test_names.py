"""Device names: bounded, and free of characters that rewrite a terminal or a log line."""

import pytest

from bridge.core.names import MAX_NAME, printable, problem


@pytest.mark.parametrize("name", ["Boiler 1", "Büro 3 – Nord", "温度计", "a" * MAX_NAME,
                                  "dev\u00a0nbsp", "emoji 👩‍🔧"])
def test_ordinary_names_pass(name):
    assert problem(name) is None
    assert printable(name) == name


@pytest.mark.parametrize("name,why", [
    ("", "must not be empty"), ("   ", "must not be empty"),
    ("a" * (MAX_NAME + 1), "at most 255 characters, got 256"),
    ("evil\x1b[2J", "U+001B"), ("two\nlines", "U+000A"), ("cr\r", "U+000D"),
    ("nul\x00", "U+0000"), ("del\x7f", "U+007F"), ("c1\x9b", "U+009B"),
    ("line\u2028sep", "U+2028"), ("rtl\u202eoverride", "U+202E"), ("iso\u2066late", "U+2066"),
    ("lone\ud800", "U+D800")])
def test_names_with_control_characters_or_too_long_are_refused_saying_which(name, why):
    assert why in problem(name)


def test_printable_escapes_only_what_is_refused():
    assert printable("Evil\x1b[2J\nx\u202ey ü") == "Evil\\x1b[2J\\nx\\u202ey ü"
    assert "\n" not in printable("a\nb") and "\x1b" not in printable("\x1b")


def test_the_caller_names_what_it_checks():
    assert problem("a\x01", "device type").startswith("device type ")
