"""Durations as the config writes them: ``"30s"``, ``"5m"``, ``"1h"``, ``"7d"``, or a number of
seconds; ``"off"`` for a schedule entry that is switched off.

``parse_duration`` is the one reader (ValueError worded for the user, so the config's key path
can carry it); ``format_duration`` writes seconds back in the largest whole unit, so a config
rewritten by ``stsync map …`` keeps ``"5m"`` rather than ``300``.

Leaf module: the standard library only.
"""

from __future__ import annotations

import math
import re

OFF = "off"
UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhd]?)$")
EXAMPLES = '"30s", "5m", "1h", "7d" or a number of seconds'


def parse_duration(value: object, *, allow_off: bool = False) -> float | None:
    """Seconds, or None for ``"off"`` when ``allow_off``. ValueError says what is accepted."""
    if isinstance(value, bool):
        raise ValueError(f"must be a duration ({EXAMPLES}), not {value!r}")
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip().lower()
        if allow_off and text == OFF:
            return None
        match = _DURATION.match(text)
        if not match:
            off = ' or "off"' if allow_off else ""
            raise ValueError(f"must be a duration ({EXAMPLES}{off}), not {value!r}")
        seconds = float(match.group(1)) * UNITS[match.group(2) or "s"]
    else:
        raise ValueError(f"must be a duration ({EXAMPLES}), not {type(value).__name__}")
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"must be a duration of zero or more seconds, not {value!r}")
    return seconds


def format_duration(seconds: float | None) -> str:
    """``300`` → ``"5m"``, ``90`` → ``"90s"``, None → ``"off"``."""
    if seconds is None:
        return OFF
    for unit in ("d", "h", "m"):
        size = UNITS[unit]
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s" if float(seconds).is_integer() else f"{seconds:g}s"


def describe_duration(seconds: float) -> str:
    """For a person: ``"3 h 20 min"``, ``"45 s"``."""
    seconds = max(0, int(round(seconds)))
    if seconds < 120:
        return f"{seconds} s"
    minutes = seconds // 60
    if minutes < 120:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h" if hours else f"{days} d"
