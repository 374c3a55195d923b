"""A device's own power-saving settings in the registry (both backends), and their text.

ThingsBoard lets a device override its profile's power saving (the device's
``transportConfiguration``: ``powerMode``, ``psmActivityTimer``, ``edrxCycle``,
``pagingTransmissionWindow``, in ms); the registry keeps the same four values per device
in four nullable columns (NULL: the profile's value). ``coapbridge devices add/set
--power-mode PSM --psm-activity-timer 10s`` writes them; the core reads them as the
``Device.power`` of each live device (``bridge.core.power``).
"""

from __future__ import annotations

import math
import re
from typing import Any, Optional, Sequence, Tuple

from .core.actions import PowerSettings
from .core.power import MODES

COLUMNS = ("power_mode", "psm_activity_timer", "edrx_cycle", "paging_transmission_window")
SQL_TYPES = ("TEXT", "INTEGER", "INTEGER", "INTEGER")  # SQLite; PostgreSQL: TEXT, BIGINT
MAX_MS = 7 * 86400 * 1000  # a week, far beyond any device's cycle (the profiles' bound)
_UNITS = {"ms": 1, "s": 1000, "m": 60000, "min": 60000, "h": 3600000}
_DURATION = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*(ms|s|min|m|h)\s*$")


class BadPower(ValueError):
    """A power-saving value the registry does not take: what is wrong, for the operator."""


def power_of(values: Sequence[Any]) -> Optional[PowerSettings]:
    """The settings of a row's four columns, or None when none is set."""
    if all(value is None for value in values):
        return None
    mode, psm, edrx, paging = values
    return PowerSettings(mode, psm, edrx, paging)


def row_values(power: Optional[PowerSettings]) -> Tuple[Any, ...]:
    if power is None:
        return (None, None, None, None)
    return (power.mode, power.psm_activity_timer, power.edrx_cycle,
            power.paging_transmission_window)


def check(power: Optional[PowerSettings]) -> Optional[PowerSettings]:
    """``power`` when the registry takes it (None when nothing is set); raises BadPower."""
    if power is None or not power.given():
        return None
    if power.mode is not None and power.mode not in MODES:
        raise BadPower("the power mode is one of %s, not %r" % (", ".join(MODES), power.mode))
    for name, value in (("PSM activity timer", power.psm_activity_timer),
                        ("eDRX cycle", power.edrx_cycle),
                        ("paging transmission window", power.paging_transmission_window)):
        if value is not None and not (type(value) is int and 0 < value <= MAX_MS):
            raise BadPower("the %s is 1 ms to 7 days, not %r" % (name, value))
    return power


def parse_duration(text: str) -> int:
    """``10s``, ``500ms``, ``2m``, ``1.5h`` -> milliseconds (a unit is required: ThingsBoard
    counts these in ms and the bridge's settings in seconds, so a bare number would be
    ambiguous)."""
    match = _DURATION.match(text)
    if match is None:
        raise BadPower("%r is not a duration: give a number and a unit (ms, s, m, h), "
                       "like 10s or 500ms" % text)
    ms = float(match.group(1)) * _UNITS[match.group(2)]
    if not math.isfinite(ms) or ms != int(ms):
        raise BadPower("%r is not a whole number of milliseconds" % text)
    return int(ms)


def describe(power: Optional[PowerSettings]) -> str:
    """``PSM, activity timer 10 s`` and the like (empty: the profile's)."""
    if power is None:
        return ""
    parts = [power.mode or "(the profile's mode)"]
    for label, value in (("activity timer", power.psm_activity_timer),
                         ("eDRX cycle", power.edrx_cycle),
                         ("paging window", power.paging_transmission_window)):
        if value is not None:
            parts.append("%s %s" % (label, _ms_text(value)))
    return ", ".join(parts)


def _ms_text(ms: int) -> str:
    return "%g s" % (ms / 1000.0) if ms % 1000 == 0 or ms >= 1000 else "%d ms" % ms
