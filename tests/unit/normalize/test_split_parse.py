"""The direct segment split (``hl7_types.SplitSeg``, ``split_segments``) reads every field as
python-hl7's parse does: same segment ids and the same repetitions, components and
subcomponents for every field, and ``normalize_hl7`` maps every fixture, hostile message and
mutated message to the same result (or the same error) through either parse."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import hl7
import pytest
from hypothesis import HealthCheck, given, settings

from middleware.config.sources import Hl7Settings, Source
from middleware.normalize import hl7v2
from middleware.normalize.hl7_peek import decode
from middleware.normalize.hl7_types import Msg, SplitSeg, split_segments
from tests.fuzz.strategies import mutated

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"
PARSE = hl7v2._parse
SRC = Source(name="t", hl7=Hl7Settings(timezone="America/New_York"))
TEXTS = [decode(p.read_bytes(), "cp1252")[0] for p in sorted(FIXTURES.rglob("*.hl7"))]
EDGES = [
    "MSH|^~\\&|A|B|C|D|20240101||ADT^A01|1|P|2.5\rPID|1||123^^^X&Y&Z~456||DOE^JOHN||a&b|plain|x~y|\rPV1\rZZ1|^&|\r\r",
    "MSH|^~\\&|A\rZZZ^a|b\rYYY~q|r\rPID|||~~^^&&|  \r   ",
    "MSH|^~\\&|\rPID|1",
    "MSH|^~\\&\rPID|1",  # no field after the encoding characters
    "MSH|^~\\&#|A|B|C|D|20240101||ADT^A01|1|P|2.7\rPID|1||9",  # five encoding characters: python-hl7 reads them
    "MSH|^~\\&|A|B|C|D|20240101||ADT^A01|1|P|2.5\rMSH|^~\\&|X\rPID|1||9",  # a second MSH: python-hl7 reads it
    "MSH#^~\\&#A#B\rPID#1##7^^^H",
    "MSH|^^\\&|A\rPID|1",  # repeated encoding characters
]


def _reading(msg: Msg) -> list[Any]:
    out: list[Any] = []
    for seg in msg.segs:
        n = len(seg._s)
        out.append((seg.id, n, [[r._c for r in seg.reps(i)] for i in range(n + 2)]))
    return out


def _both(text: str) -> tuple[Any, Any]:
    got = []
    for fast in (True, False):
        try:
            got.append(_reading(PARSE(text, SRC, fast=fast)))
        except Exception as exc:  # the same error either way
            got.append((type(exc).__name__, str(exc)))
    return got[0], got[1]


@pytest.mark.parametrize("text", TEXTS + EDGES)
def test_split_reads_as_python_hl7(text: str) -> None:
    fast, slow = _both(text)
    assert fast == slow


def test_the_fixtures_take_the_direct_split() -> None:
    ctx = hl7v2._parse(TEXTS[0], SRC).ctx
    assert all(isinstance(s, SplitSeg) for s in hl7v2._parse(TEXTS[0], SRC).segs)
    assert split_segments(EDGES[4], ctx) is None and split_segments(EDGES[5], ctx) is None
    assert not isinstance(hl7v2._parse(EDGES[5], SRC).segs[0], SplitSeg)
    assert hl7.parse(TEXTS[0])  # the peer of the comparison parses them too


def _normalized(text: str, fast: bool, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setattr(hl7v2, "_parse", lambda t, s: PARSE(t, s, fast=fast))
    try:
        return hl7v2.normalize_hl7(text, SRC)
    except Exception as exc:
        return (type(exc).__name__, str(exc))


@pytest.mark.parametrize("text", TEXTS)
def test_normalized_the_same(text: str, monkeypatch: pytest.MonkeyPatch) -> None:
    assert _normalized(text, True, monkeypatch) == _normalized(text, False, monkeypatch)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated())
def test_mutated_messages_read_the_same(raw: bytes) -> None:
    text = decode(raw, "cp1252")[0]
    fast, slow = _both(text)
    assert fast == slow
