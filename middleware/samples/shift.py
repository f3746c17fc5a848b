"""Date the demo samples relative to now (``careloop send --samples``).

The bundled messages are dated March 2025; sent as they are, every reminder and
follow-up would be "skipped: due time passed". :func:`shift_samples` moves each
*story* (the messages about one appointment, SCH-2, or one visit, PV1-19) so that its
last message happened ``lead`` ago (an hour: the no-show outreach, due an hour after
the no-show, is due at once), keeping every gap inside the story (an appointment a week
after its booking stays a week after). Only timestamps with at least an hour are moved
(``YYYYMMDDHH[MM[SS]]`` with an optional offset), so a birth date (PID-7) is untouched.
Each message gets a fresh control id (MSH-10), so careloop's duplicate detection
accepts the demo again on every run.
"""
from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

_TS = re.compile(r"^(\d{10}(?:\d{2}(?:\d{2}(?:\.\d{1,4})?)?)?)([+-]\d{4})?$")


def _parse(value: str, zone: ZoneInfo) -> datetime | None:
    m = _TS.match(value)
    if not m:
        return None
    digits, off = m.group(1), m.group(2)
    base = digits.split(".")[0].ljust(14, "0")
    try:
        dt = datetime.strptime(base, "%Y%m%d%H%M%S")
    except ValueError:
        return None
    if off:
        sign = -1 if off[0] == "-" else 1
        return dt.replace(tzinfo=timezone(sign * timedelta(hours=int(off[1:3]), minutes=int(off[3:5]))))
    return dt.replace(tzinfo=zone)


def _format(dt: datetime, zone: ZoneInfo, with_offset: bool) -> str:
    local = dt.astimezone(zone)
    text = local.strftime("%Y%m%d%H%M%S")
    return text + local.strftime("%z") if with_offset else text


def _story(segments: list[list[str]], fallback: str) -> str:
    for seg in segments:
        if seg[0] == "SCH" and len(seg) > 2 and seg[2]:
            return "appointment:" + seg[2].split("^")[0]
        if seg[0] == "PV1" and len(seg) > 19 and seg[19]:
            return "visit:" + seg[19].split("^")[0]
    return fallback


def _split(message: bytes) -> list[list[str]]:
    text = message.decode("utf-8").replace("\r\n", "\r").replace("\n", "\r").strip("\r")
    return [seg.split("|") for seg in text.split("\r") if seg]


def shift_samples(messages: list[bytes], now: datetime, *, zone: str = "America/New_York",
                  lead: timedelta = timedelta(hours=1)) -> tuple[list[bytes], list[str]]:
    """The messages re-dated (see the module docstring) with fresh MSH-10 control ids, and those ids."""
    tz = ZoneInfo(zone)
    parsed = [_split(m) for m in messages]
    latest: dict[str, datetime] = {}
    stories = []
    for i, segs in enumerate(parsed):
        story = _story(segs, f"message:{i}")
        stories.append(story)
        msh7 = _parse(segs[0][6], tz) if segs and segs[0][0] == "MSH" and len(segs[0]) > 6 else None
        if msh7 is not None:
            latest[story] = max(latest.get(story, msh7), msh7)
    anchor = now.replace(microsecond=0) - lead
    # DEMO + UTC yymmddHHMMSS + hundredths + message number: 20 characters (MSH-10 in v2.3 and earlier)
    stamp = now.astimezone(timezone.utc).strftime("%y%m%d%H%M%S") + f"{now.microsecond // 10000:02d}"
    out: list[bytes] = []
    ids: list[str] = []
    for i, (segs, story) in enumerate(zip(parsed, stories)):
        delta = anchor - latest[story] if story in latest else timedelta(0)
        new_segs = []
        for seg in segs:
            fields = []
            for f_i, field in enumerate(seg):
                if seg[0] == "MSH" and f_i == 1:  # MSH-2, the encoding characters
                    fields.append(field)
                    continue
                comps = field.split("^")
                for c_i, comp in enumerate(comps):
                    dt = _parse(comp, tz)
                    if dt is not None:
                        comps[c_i] = _format(dt.astimezone(timezone.utc) + delta, tz, with_offset=comp[-5:-4] in ("+", "-"))
                fields.append("^".join(comps))
            new_segs.append(fields)
        if new_segs and new_segs[0][0] == "MSH" and len(new_segs[0]) > 9:
            control = f"DEMO{stamp}{i + 1:02d}"
            new_segs[0][9] = control
            ids.append(control)
        out.append(("\r".join("|".join(s) for s in new_segs) + "\r").encode("utf-8"))
    return out, ids
