"""The peer MLLP servers careloop is compared with, run as subprocesses by the benches.

* ``python-hl7``: python-hl7's asyncio server (``hl7.mllp.start_hl7_server``); parses each
  message and answers ``create_ack()``; stores nothing.
* ``hl7apy``: hl7apy's ``MLLPServer`` (threaded; one message per connection); parses with
  ``parse_message`` and answers an AA; stores nothing.

* ``bridge``: what a developer would hand-write instead of careloop for the whole pipeline
  (bench 3): python-hl7's asyncio server; for each SIU it reads the appointment start
  (SCH-11.4, else AIS-4), POSTs a Standard Webhooks-signed JSON to ``BRIDGE_WEBHOOK_URL``
  with one keep-alive httpx client, then ACKs. No storage, no rules, no retry: a webhook
  that fails loses the message.

* ``apscheduler``: the scheduler a Python developer would pick instead of careloop's
  (bench 4): APScheduler 3's ``BackgroundScheduler`` on a ``SQLAlchemyJobStore`` (SQLite),
  date-triggered jobs, the default thread pool; a job does nothing (careloop's checks and
  writes are more work, so this flatters the peer). Here PORT is the jobstore file's path and
  the process prints ``serving`` once ``start()`` has returned.

Usage: ``python bench/peers.py python-hl7|hl7apy|bridge PORT`` or ``python bench/peers.py apscheduler DB``.
"""
from __future__ import annotations

import asyncio
import sys


def python_hl7(port: int) -> None:
    import hl7
    import hl7.mllp

    async def on_connection(reader: "hl7.mllp.HL7StreamReader", writer: "hl7.mllp.HL7StreamWriter") -> None:
        try:
            while not writer.is_closing():
                msg = await reader.readmessage()
                writer.writemessage(msg.create_ack())
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass

    async def main() -> None:
        await hl7.mllp.start_hl7_server(on_connection, host="127.0.0.1", port=port)
        await asyncio.Event().wait()

    asyncio.run(main())


def hl7apy_server(port: int) -> None:
    from hl7apy.mllp import AbstractHandler, MLLPServer
    from hl7apy.parser import parse_message

    class Ack(AbstractHandler):  # type: ignore[misc]
        def reply(self) -> str:
            msg = parse_message(self.incoming_message, find_groups=False)
            control = msg.msh.msh_10.to_er7()
            return f"\x0bMSH|^~\\&|CL|CL|||||ACK|{control}|P|2.5.1\rMSA|AA|{control}\r\x1c\r"

    MLLPServer("127.0.0.1", port, {"SIU^S12^SIU_S12": (Ack,)}).serve_forever()


def bridge(port: int) -> None:
    import base64
    import hashlib
    import hmac
    import os
    import time
    import uuid
    from datetime import datetime

    import hl7
    import hl7.mllp
    import httpx
    import orjson

    url = os.environ["BRIDGE_WEBHOOK_URL"]
    key = base64.b64decode(os.environ["BRIDGE_WEBHOOK_SECRET"].removeprefix("whsec_"))

    def start_of(msg: "hl7.Message") -> str:
        for path in ("SCH.F11.R1.C4", "AIS.F4"):
            try:
                raw = str(msg[path])
            except (KeyError, IndexError):
                continue
            if raw:
                digits, _, off = raw.partition("+")
                return datetime.strptime(digits[:14] + "+" + (off or "0000"), "%Y%m%d%H%M%S%z").isoformat()
        return ""

    async def main() -> None:
        client = httpx.AsyncClient(timeout=10)

        async def on_connection(reader: "hl7.mllp.HL7StreamReader", writer: "hl7.mllp.HL7StreamWriter") -> None:
            try:
                while not writer.is_closing():
                    msg = await reader.readmessage()
                    body = orjson.dumps({"type": "appointment_reminder", "data": {"appointment_start": start_of(msg)}})
                    wid, ts = f"msg_{uuid.uuid4().hex}", int(time.time())
                    sig = base64.b64encode(hmac.new(key, f"{wid}.{ts}.".encode() + body, hashlib.sha256).digest()).decode()
                    await client.post(url, content=body, headers={
                        "content-type": "application/json", "webhook-id": wid, "webhook-timestamp": str(ts),
                        "webhook-signature": f"v1,{sig}"})
                    writer.writemessage(msg.create_ack())
                    await writer.drain()
            except (asyncio.IncompleteReadError, ConnectionError):
                pass

        await hl7.mllp.start_hl7_server(on_connection, host="127.0.0.1", port=port)
        await asyncio.Event().wait()

    asyncio.run(main())


def noop() -> None:
    """The peer scheduler's job."""


def apscheduler_jobs(n: int, run_at: "list[float]", start: int = 0) -> "list[tuple[str, float, bytes]]":
    """Rows of APScheduler 3's ``apscheduler_jobs`` table for ``n`` date-triggered ``noop`` jobs
    (built through APScheduler's own ``Job.__getstate__``; fired however late: no misfire grace)."""
    import pickle
    from datetime import datetime, timezone

    from apscheduler.job import Job
    from apscheduler.schedulers.background import BackgroundScheduler
    from apscheduler.triggers.date import DateTrigger

    sched = BackgroundScheduler(timezone=timezone.utc)
    rows = []
    for i in range(n):
        at = datetime.fromtimestamp(run_at[i % len(run_at)], tz=timezone.utc)
        job = Job(sched, id=f"j{start + i}", func="peers:noop", trigger=DateTrigger(run_date=at, timezone=timezone.utc),
                  executor="default", args=(), kwargs={}, name="noop", misfire_grace_time=None, coalesce=True,
                  max_instances=1, next_run_time=at)
        rows.append((job.id, at.timestamp(), pickle.dumps(job.__getstate__(), pickle.HIGHEST_PROTOCOL)))
    return rows


def apscheduler_server(db: str) -> None:
    import time
    from datetime import timezone

    from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
    from apscheduler.schedulers.background import BackgroundScheduler

    sched = BackgroundScheduler(jobstores={"default": SQLAlchemyJobStore(url=f"sqlite:///{db}")}, timezone=timezone.utc)
    sched.start()
    print("serving", flush=True)
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    which = sys.argv[1]
    if which == "apscheduler":
        apscheduler_server(sys.argv[2])
    else:
        {"python-hl7": python_hl7, "hl7apy": hl7apy_server, "bridge": bridge}[which](int(sys.argv[2]))
