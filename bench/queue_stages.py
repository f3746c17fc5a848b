"""Where a message waits between receipt and its webhook at a steady rate (issue 16, target 2c).

One command: ``python bench/queue_stages.py [--rate 200] [--seconds 10] [--runs 2] [--baseline /work/main]``.

``careloop serve`` with its worker process on SQLite (``bench/deploy.py``), 100 warm-up messages, then
``--rate`` SIU^S12 a second on one connection (each fires one webhook at once, as in
``bench/whole_pipeline.py``); then the stage timestamps the database keeps, per message:
inbox ``received_at`` -> ``processed_at`` (the processing queue), trigger ``created_at`` -> ``fired_at``,
delivery ``created_at`` -> first attempt ``at`` (the delivery queue), and the receipt-to-webhook latency
the receiver saw. With ``--baseline DIR`` the same runs alternate with that checkout's code.
"""
from __future__ import annotations

import argparse
import shutil
import sqlite3
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, machine, percentile, stop  # noqa: E402
from deploy import start_careloop, start_sink  # noqa: E402
from whole_pipeline import Tree, fmt_lat, loadavg, run_phase, siu_at, sink_clear  # noqa: E402

STAGES = """
SELECT i.received_at, i.processed_at, t.created_at, t.fired_at, d.created_at,
       (SELECT min(a.at) FROM delivery_attempt a WHERE a.delivery_id = d.id)
FROM inbound_message i JOIN event e ON e.inbound_id = i.id JOIN "trigger" t ON t.event_id = e.id
JOIN delivery d ON d.trigger_id = t.id WHERE i.id > :warm ORDER BY i.id"""


def stages(db: Path, warm: int) -> dict[str, list[float]]:
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        rows = con.execute(STAGES, {"warm": warm}).fetchall()
    finally:
        con.close()
    ms = lambda a, b: [(r[b] - r[a]) * 1000 for r in rows if r[a] is not None and r[b] is not None]  # noqa: E731
    return {"received->processed": ms(0, 1), "trigger created->fired": ms(2, 3),
            "delivery created->attempt": ms(4, 5), "received->attempt": ms(0, 5)}


def one(work: Path, repo: Path, name: str, rate: float, seconds: float, seq: int) -> str:
    sink, hook = start_sink(work)
    tree = Tree()
    try:
        p, port, db = start_careloop(work, hook, worker=True, name=name, repo=repo)
        tree.procs["serve"] = p
        warm = [siu_at(f"{name}w", seq + i) for i in range(100)]
        run_phase(port, tree, sink, hook, warm, rate=None, conns=8, timeout=300)
        sink_clear(hook)
        msgs = [siu_at(f"{name}s", seq + 100 + i) for i in range(int(rate * seconds))]
        st, _ = run_phase(port, tree, sink, hook, msgs, rate=rate, conns=1, timeout=300)
    finally:
        tree.stop()
        stop(sink)
    out = [f"{name}: receipt-to-webhook {fmt_lat(st.latencies_ms)} (p50 by 2 s: {st.by_second()} ms); "
           f"ACK p50 {percentile(st.acks_ms, 50):.1f} ms; load {loadavg()}"]
    for stage, v in stages(db, len(warm)).items():
        if v:
            out.append(f"    {stage:26s} p50 {percentile(v, 50):7.1f}  p90 {percentile(v, 90):7.1f}  p99 {percentile(v, 99):7.1f} ms")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rate", type=float, default=200.0)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--baseline", type=Path, help="another checkout whose code runs in alternate deployments")
    args = ap.parse_args(argv)
    print(f"# where a message waits at {args.rate:.0f} msg/s on one connection (SQLite, serve + worker process)  {machine()}")
    print(f"load average before: {loadavg()}", flush=True)
    repos = [("careloop", REPO)] + ([("baseline", args.baseline)] if args.baseline else [])
    work = Path(tempfile.mkdtemp(prefix="careloop-bench-queue-"))
    try:
        for run in range(args.runs):
            for name, repo in (repos if run % 2 == 0 else repos[::-1]):
                print(one(work, repo, f"{name}{run}", args.rate, args.seconds, seq=run * (100 + int(args.rate * args.seconds))), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"load average after: {loadavg()} (shared machine: compare the deployments of one run, not absolutes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
