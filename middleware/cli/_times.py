"""Times given on the command line: ISO 8601 dates and date-times, or relative to now."""
from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

from . import UserError

ACCEPTED = ("an ISO 8601 date (2026-03-01) or date-time (2026-03-01T08:00, UTC without an offset; "
            "2026-03-01T08:00-05:00), or a time ago: 2d, 12h, 30m, 1w (also written -2d)")
_RELATIVE = re.compile(r"^-?(\d+(?:\.\d+)?)([wdhm])$")
_UNIT = {"w": 7 * 86400, "d": 86400, "h": 3600, "m": 60}


def parse_time(value: str, flag: str, now: datetime | None = None) -> datetime:
    """``value`` as an aware datetime; :class:`UserError` naming ``flag`` and the accepted forms otherwise."""
    text = value.strip()
    m = _RELATIVE.match(text)
    if m:
        return (now or datetime.now(timezone.utc)) - timedelta(seconds=float(m.group(1)) * _UNIT[m.group(2)])
    try:
        dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise UserError(f"{flag} {value!r} is not a time; use {ACCEPTED}") from None
    return dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)
