"""A record's keys fit inbound_message's columns: PostgreSQL refuses a longer value (SQLite does not), and a
message that cannot be stored is answered AR, "resend", forever. Long values keep a hash, so stay distinct."""
from __future__ import annotations

from middleware.config.sources import Sources
from middleware.listeners.hl7_ingest import CONTROL_ID_MAX, DEDUP_KEY_MAX, MESSAGE_TYPE_MAX, prepare_hl7
from middleware.storage.tables import InboundMessage
from tests.support.hl7msgs import siu


def test_widths_are_the_columns() -> None:
    cols = InboundMessage.__table__.c  # type: ignore[attr-defined]
    assert (cols.control_id.type.length, cols.message_type.type.length, cols.dedup_key.type.length) == (
        CONTROL_ID_MAX, MESSAGE_TYPE_MAX, DEDUP_KEY_MAX)


def test_long_control_ids_are_cut_and_stay_distinct() -> None:
    a, b = ("H-" + "9" * 5000 + end for end in ("1", "2"))
    ra, rb = (prepare_hl7(siu("S12", control=c, app="A" * 300), channel="mllp", port=None, sources=Sources([])).record
              for c in (a, b))
    assert ra.status == "received" and ra.control_id and ra.dedup_key
    assert len(ra.control_id) == CONTROL_ID_MAX and len(ra.dedup_key) == DEDUP_KEY_MAX
    assert ra.control_id != rb.control_id and ra.dedup_key != rb.dedup_key
    short = prepare_hl7(siu("S12", control="C-1"), channel="mllp", port=None, sources=Sources([])).record
    assert (short.control_id, short.dedup_key) == ("C-1", "SCHEDSYS|HOSP|C-1")
