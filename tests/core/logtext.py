"""What a ``Log`` action from the core reads as once the edge logs it."""

from bridge.logwriter import format_message


def text(log):
    """The line the bridge writes for ``log`` (its format with its fields)."""
    line = format_message(dict(log.fields, log_format=log.format))
    assert not line.startswith("Unable to format event"), line  # a field the format lacks
    return line
