"""Build synthetic HL7v2 messages at the standard's field positions (for journeys with
dates relative to now). Names, MRNs and phones are obviously synthetic."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone


def ts(dt: datetime) -> str:
    return dt.strftime("%Y%m%d%H%M%S") + dt.strftime("%z")


def siu(trigger: str, *, control: str, mrn: str = "MRN000500", appt: str = "F5001", start: datetime | None = None,
        minutes: int = 30, status: str = "Booked", version: str = "2.5.1", sent: datetime | None = None,
        app: str = "SCHEDSYS", fac: str = "HOSP") -> bytes:
    sent = sent or datetime.now(timezone.utc)
    start = start or (datetime.now(timezone.utc) + timedelta(days=5))
    end = start + timedelta(minutes=minutes)
    mtype = f"SIU^{trigger}^SIU_S12" if version >= "2.3.1" else f"SIU^{trigger}"
    segs = [
        f"MSH|^~\\&|{app}|{fac}|CARELOOP|CL|{ts(sent)}||{mtype}|{control}|P|{version}",
        f"SCH|P{appt}^SCHED|{appt}^SCHED||||FOLLOWUP^Follow-up visit^LOCAL|||30|MIN|^^30^{ts(start)}^{ts(end)}||||||||||||||{status}",
        f"PID|1||{mrn}^^^HOSP^MR~999-00-1234^^^USSSA^SS||TESTPATIENT^BRAVO^^^^^L||19700101|F|||1 TEST ST^^SPRINGFIELD^MA^01101^USA^H||^PRN^PH^^1^555^5550142",
        "RGS|1",
        f"AIS|1||CLINIC^Clinic visit^LOCAL|{ts(start)}|||{minutes}|MIN",
        f"AIL|1||MAIN^^^HOSP^^^^Main Clinic|||{ts(start)}|||{minutes}|MIN",
    ]
    return ("\r".join(segs) + "\r").encode()


def adt(trigger: str, *, control: str, mrn: str = "MRN000600", visit: str = "V7001", pclass: str = "I",
        admit: datetime | None = None, discharge: datetime | None = None, disposition: str = "",
        version: str = "2.5.1", sent: datetime | None = None, prior_mrn: str | None = None) -> bytes:
    sent = sent or datetime.now(timezone.utc)
    admit = admit or (sent - timedelta(days=3))
    mtype = f"ADT^{trigger}^ADT_A01" if version >= "2.3.1" else f"ADT^{trigger}"
    if trigger == "A40":
        mtype = "ADT^A40^ADT_A39" if version >= "2.3.1" else "ADT^A40"
    pv1 = ["PV1", "1", pclass, "4W^410^A^HOSP"] + [""] * 50
    pv1[19] = f"{visit}^^^HOSP^VN"
    pv1[36] = disposition
    pv1[44] = ts(admit)
    pv1[45] = ts(discharge) if discharge else ""
    segs = [
        f"MSH|^~\\&|ADTSYS|HOSP|CARELOOP|CL|{ts(sent)}||{mtype}|{control}|P|{version}",
        f"EVN|{trigger}|{ts(sent)}",
        f"PID|1||{mrn}^^^HOSP^MR||TESTPATIENT^CHARLIE^^^^^L||19600202|M|||2 TEST ST^^SPRINGFIELD^MA^01101^USA^H",
    ]
    if trigger == "A40":
        segs.append(f"MRG|{prior_mrn}^^^HOSP^MR")
    else:
        segs.append("|".join(pv1).rstrip("|"))
    return ("\r".join(segs) + "\r").encode()
