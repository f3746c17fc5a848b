"""A demo copy of the mappings for sandbox scenarios: same rules, seconds instead of days.

Scenarios must finish in seconds, but the bundled rules wait an hour (no-show), 48 hours
(cancelled, not rebooked), two business days or a week (post-discharge follow-up), and
quiet hours (21:00-08:00 in the patient's zone) push anything due at night to the morning.
:func:`prepare` copies ``mappings/`` and rewrites, in the copy only:

* every ``when: {after: …}`` and ``wait_for … timeout: …`` to a few seconds
  (:func:`demo_seconds`: longer real waits stay longer, so their order is kept);
* every send time (``when.at_time``, ``when.business_days``) removed: the trigger is due
  when the (shortened) wait ends instead of at the next 10:00;
* ``quiet_hours`` in ``settings.yaml`` to ``null`` (no quiet hours);
* the ``webhook`` destination URL to the scenario's sink, the ``default`` source's FHIR
  base URL to the sandbox.

Every rewrite is returned as a :class:`SpeedUp` so the scenario output can say exactly what
was sped up. Text substitution (not YAML round-tripping) keeps the files' keys, comments and
positions, so diagnostics still point at sensible lines.
"""
from __future__ import annotations

import math
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from ..rules.spec import parse_duration

_AFTER = re.compile(r"(\bafter:\s*)([0-9.]+\s*(?:s|m|min|h|d|w|bd))\b")
_TIMEOUT = re.compile(r"(\btimeout:\s*)([0-9.]+\s*(?:s|m|min|h|d|w|bd))\b")
#: a send-time option inside a flow mapping or on its own line (with its comma, if any)
_SEND_TIME = re.compile(r'\s*\b(at_time|business_days):\s*("[0-9:]+"|\'[0-9:]+\'|[0-9:]+|next|previous|none)\s*,?')
_RULE_ID = re.compile(r"^\s*-\s*id:\s*(\S+)")
_QUIET = re.compile(r"^quiet_hours:.*$", re.M)
_WEBHOOK_URL = re.compile(r"(url:\s*)\$\{CARELOOP_WEBHOOK_URL:-[^}]*\}")
_FHIR_BASE = re.compile(r"(base_url:\s*)\$\{CARELOOP_FHIR_BASE_URL:-[^}]*\}")


@dataclass(frozen=True)
class SpeedUp:
    """One rewrite: ``rule`` (or ``settings``), what it was and what the demo uses."""

    where: str
    what: str
    real: str
    demo: str


def demo_seconds(real: str) -> int:
    """Demo wait for a real duration: 2 s + 1 s per 4x in hours (1h -> 3 s, 48h -> 5 s, 7d -> 6 s).

    Business days count as calendar days here; the point is a short, order-preserving wait.
    """
    text = real.strip()
    seconds = parse_duration(text.replace("bd", "d"))[0] if text.endswith("bd") else parse_duration(text)[0]
    hours = max(seconds / 3600.0, 0.0)
    return 2 + max(0, math.ceil(math.log2(hours + 1) / 2))


def _rewrite_rules(text: str, fname: str) -> tuple[str, list[SpeedUp]]:
    out: list[str] = []
    changes: list[SpeedUp] = []
    rule = fname
    for line in text.splitlines(keepends=True):
        m = _RULE_ID.match(line)
        if m:
            rule = m.group(1)
        for pattern, what in ((_AFTER, "when.after"), (_TIMEOUT, "wait_for.timeout")):
            hit = pattern.search(line)
            if hit and not line.lstrip().startswith("#"):
                demo = f"{demo_seconds(hit.group(2))}s"
                changes.append(SpeedUp(rule, what, hit.group(2).strip(), demo))
                line = line[: hit.start(2)] + demo + line[hit.end(2):]
        for hit in list(_SEND_TIME.finditer(line)) if not line.lstrip().startswith("#") else []:
            changes.append(SpeedUp(rule, f"when.{hit.group(1)}", hit.group(2).strip("'\""), "none"))
        if not line.lstrip().startswith("#") and _SEND_TIME.search(line):
            alone = _SEND_TIME.fullmatch(line.rstrip("\n"))
            line = "" if alone else _SEND_TIME.sub("", line).replace("{ ", "{").replace(",}", "}")
        out.append(line)
    return "".join(out), changes


def prepare(src: Path, dst: Path, *, sink_url: str | None, fhir_base: str | None, speed_up: bool = True,
            extra_rules: dict[str, str] | None = None) -> list[SpeedUp]:
    """Copy the mappings ``src`` -> ``dst`` (replaced) and apply the demo rewrites; return them.

    ``extra_rules`` (file name -> YAML text): sandbox-only rule files added to the copy's
    ``rules/`` as they are (e.g. the ``outcomes`` scenario's rule with a goal and a holdout).
    """
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst)
    for name, text in (extra_rules or {}).items():
        (dst / "rules" / name).write_text(text)
    changes: list[SpeedUp] = []
    if speed_up:
        for path in sorted((dst / "rules").glob("*.yaml")):
            if path.name.endswith("_test.yaml"):
                continue  # golden cases state their own clock; they are not loaded at run time
            text, found = _rewrite_rules(path.read_text(), path.stem)
            if found:
                path.write_text(text)
                changes += found
        settings = dst / "settings.yaml"
        if settings.exists():
            text = settings.read_text()
            m = _QUIET.search(text)
            if m:
                settings.write_text(_QUIET.sub("quiet_hours: null   # sandbox demo: no quiet hours", text, count=1))
                changes.append(SpeedUp("settings", "quiet_hours", m.group(0).split(":", 1)[1].strip(), "none"))
    if sink_url:
        dest = dst / "destinations.yaml"
        dest.write_text(_WEBHOOK_URL.sub(lambda m: m.group(1) + sink_url, dest.read_text()))
    if fhir_base:
        sources = dst / "sources.yaml"
        sources.write_text(_FHIR_BASE.sub(lambda m: m.group(1) + fhir_base, sources.read_text()))
    return changes
