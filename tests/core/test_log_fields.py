"""The core's ``Log`` actions carry a format and its fields, never text formatted in the core:
every ``Log(...)`` in bridge/core names, in its fields, each field its format uses."""

import ast
import pathlib
import string

import bridge.core

CORE = pathlib.Path(bridge.core.__file__).parent


def log_calls():
    for path in sorted(CORE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "Log":
                yield "%s:%d" % (path.name, node.lineno), node


def test_every_log_in_the_core_gives_a_format_and_the_fields_it_uses():
    calls = list(log_calls())
    assert len(calls) > 15
    for where, call in calls:
        if any(isinstance(arg, ast.Starred) for arg in call.args):
            continue  # Log("warn", *scan): tokenscan's format and fields, tested there
        level, fmt = call.args[:2]
        # a literal: not "..." % (...), not an f-string, not text built elsewhere
        assert isinstance(fmt, ast.Constant) and isinstance(fmt.value, str), where
        used = {name.split(".")[0].split("[")[0]
                for _, name, _, _ in string.Formatter().parse(fmt.value) if name}
        fields = call.args[2] if len(call.args) > 2 else None
        if not used:
            assert fields is None, where
            continue
        assert isinstance(fields, ast.Dict), where
        keys = {key.value for key in fields.keys}
        assert used <= keys, "%s: %s not in the fields" % (where, used - keys)
