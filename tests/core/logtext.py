"""What a ``Log`` action from the core reads as once the edge logs it."""

from twisted.logger import formatEvent


def text(log):
    """The line twisted.logger makes of ``log`` (its format with its fields)."""
    line = formatEvent(dict(log.fields, log_format=log.format))
    assert not line.startswith("Unable to format event"), line  # a field the format lacks
    return line
