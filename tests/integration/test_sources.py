"""Sources: a feed is matched by MSH-3/MSH-4 or by the MLLP port it arrives on; each has
its own accepted message types and time zone."""
from __future__ import annotations

from pathlib import Path

from middleware.cli.send import send_messages
from tests.support.hl7msgs import siu
from tests.support.server import free_port, start_in_process, wait_until


def test_sources_by_port_and_by_sending_application(tmp_path: Path, pipeline_mappings: Path, db_url: str):
    clinic_port = free_port()
    (pipeline_mappings / "sources.yaml").write_text(f"""
sources:
  - name: default
    hl7: {{timezone: America/New_York, mrn_authority: HOSP}}
  - name: clinic
    hl7:
      ports: [{clinic_port}]
      timezone: America/Los_Angeles
      mrn_authority: HOSP
      accept: ["SIU^S12"]
  - name: lab-feed
    hl7:
      sending_application: LABSYS
      accept: ["ORU^R01"]
""")
    srv = start_in_process(db_url, pipeline_mappings)
    try:
        a1 = send_messages("127.0.0.1", clinic_port, [siu("S12", control="SP-1", appt="FS1"), siu("S26", control="SP-2", appt="FS1", status="Noshow")])
        a2 = send_messages("127.0.0.1", srv.mllp_port, [siu("S12", control="SA-1", appt="FS2", app="LABSYS")])
        assert all(b"MSA|AA|" in a for a in a1 + a2)
        msgs = {m["control_id"]: m for m in wait_until(lambda: srv.get("/api/messages")["items"] if len(srv.get("/api/messages")["items"]) == 3 else None, what="3 messages")}
        assert msgs["SP-1"]["source"] == "clinic" and msgs["SP-1"]["channel"] == "mllp"
        assert msgs["SP-2"]["source"] == "clinic" and msgs["SP-2"]["status"] == "ignored"  # S26 not accepted there
        assert msgs["SA-1"]["source"] == "lab-feed" and msgs["SA-1"]["status"] == "ignored"
    finally:
        srv.stop()
