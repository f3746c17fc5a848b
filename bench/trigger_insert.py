"""What a trigger INSERT costs on SQLite as the table grows, with and without some of its indexes.

``python bench/trigger_insert.py [--rounds 6] [--batches 60] [--config ix_a,ix_b] [--config +ix_c:col1:col2] ...``

A fresh database at the newest schema (``synchronous=NORMAL``, as processing commits), then
``--rounds`` rounds of ``--batches`` transactions of 16 trigger rows each (``ingest.trigger_insert``,
the statement processing runs, with rows shaped like the SIU^S12 reminders': random patient keys,
pending or skipped). Prints, per round, the median microseconds per INSERT and per row of the
COMMIT. Each ``--config`` is one more configuration: index names to drop first, ``+name:col:col`` for an
index to create first (an empty string: the schema as it is); configurations run one after another,
alternating, twice. The default compares the schema with and without ``ix_trigger_cancel`` (dropped by
migration 0012: ``+ix_trigger_cancel:cancel_scope:status`` puts it back). Issue 16 used it
to price the indexes of ``trigger`` (docs/benchmarks.md §10, "Processing statements").
"""
from __future__ import annotations

import argparse
import os
import random
import statistics
import string
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from common import machine  # noqa: E402


def _row(i: int) -> dict[str, Any]:
    pk = "".join(random.choices(string.hexdigits, k=24))
    now = time.time()
    return dict(rule_id=random.choice(["appointment-reminder-24h", "appointment-reminder-72h"]), ruleset_version="bench",
                name="appointment_reminder", purpose="treatment", destinations="webhook", patient_key=pk,
                resource_key=f"Appointment/{pk}", origin_key=f"r|event:{i}", resource_version="1", event_id=i,
                due_at=now + random.random() * 1e5, status=random.choice(["pending", "skipped"]), reason="conditions met",
                dedup_key=None, cancel_scope=f"patient:{pk}", message_kind="reminder", payload="x" * 150, explain="y" * 188,
                created_at=now, updated_at=now, patient_id="pt_" + pk, journey_id=None, journey_step=None)


def one(config: list[str], rounds: int, batches: int) -> list[tuple[float, float]]:
    from middleware.storage.db import init_db, make_engine
    from middleware.storage.queries import ingest as q

    work = tempfile.mkdtemp(prefix="careloop-trigger-insert-")
    engine = make_engine(f"sqlite:///{work}/t.db", synchronous="NORMAL")
    init_db(engine)
    raw = engine.raw_connection()
    cur = raw.cursor()
    for item in config:
        if item.startswith("+"):
            name, *cols = item[1:].split(":")
            cur.execute(f'CREATE INDEX "{name}" ON "trigger" ({", ".join(cols)})')
        else:
            cur.execute(f'DROP INDEX "{item}"')
    raw.commit()
    c = q.TRIGGER_INSERT.compiled_for("sqlite")
    out = []
    i = 0
    for _ in range(rounds):
        ins, com = [], []
        for _ in range(batches):
            rows = [_row(i + k) for k in range(16)]
            i += 16
            cur.execute("BEGIN")
            t0 = time.perf_counter()
            for r in rows:
                cur.execute(c.sql, c.params(r))
                cur.fetchall()
            t1 = time.perf_counter()
            raw.commit()
            t2 = time.perf_counter()
            ins.append((t1 - t0) / 16 * 1e6)
            com.append((t2 - t1) / 16 * 1e6)
        out.append((statistics.median(ins), statistics.median(com)))
    raw.close()
    engine.dispose()
    for f in Path(work).iterdir():
        f.unlink()
    os.rmdir(work)
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--batches", type=int, default=60)
    ap.add_argument("--config", action="append", default=None,
                    help="comma-separated index names to drop, or +name:col:col to create (repeatable; '' = the schema as is)")
    args = ap.parse_args()
    from middleware.storage.tables import TriggerRow

    has_cancel = any(ix.name == "ix_trigger_cancel" for ix in TriggerRow.__table__.indexes)  # type: ignore[attr-defined]
    default = ["", "ix_trigger_cancel"] if has_cancel else ["+ix_trigger_cancel:cancel_scope:status", ""]
    configs = [[n for n in d.split(",") if n] for d in (args.config if args.config is not None else default)]
    print(f"machine: {machine()}; load average {os.getloadavg()[0]:.2f}; {args.rounds} rounds x {args.batches} "
          "transactions x 16 trigger INSERTs; per round: median us per INSERT / per row of the COMMIT", flush=True)
    for _ in range(2):
        for config in configs:
            got = one(config, args.rounds, args.batches)
            label = ",".join(config) if config else "schema as is"
            print(f"{label:40s} " + "  ".join(f"{a:5.1f}/{b:4.1f}" for a, b in got), flush=True)
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
