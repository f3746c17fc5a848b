"""Issue 16, target 5: the scheduler with 10,000,000 pending triggers.

One command: ``python bench/scheduler_10m.py --backend sqlite|postgresql [--pending 10000000] [--due-share 0.01]
[--seconds 60] [--peer-pending 1000000] [--schedulers 1]``.

1. **Load.** The trigger table is filled inside the database itself (SQLite: a recursive CTE;
   PostgreSQL: ``generate_series``) with its secondary indexes dropped and rebuilt afterwards,
   so 10 M rows take minutes, not hours. ``--pending`` triggers in all; ``--due-share`` of them
   are due now (each for its own patient, so none is capped), the rest due within 90 days for
   patients holding three triggers each. Every trigger names the shipped ``webhook``
   destination and carries an internal patient id (as the current release writes them).
2. **Firing** (a child process, so its peak RSS is the firing process's own): the real
   ``Scheduler`` with the shipped rule set fires due triggers in its batches — claim, the
   fire-time checks (opt-out, authorization, deceased/hospice, Consent, caps), mark fired, one
   delivery row each — until none is due or ``--seconds`` pass. Rate = triggers handled / time.
   ``--schedulers N`` starts N such processes together; afterwards the triggers marked fired, the
   delivery rows and the distinct triggers among them are counted (equal when each fired once).
3. **Start.** ``careloop serve`` (with its worker) on that database: time from process start to
   ``/healthz`` answering 200, then its own firing rate and peak RSS for a few seconds. The
   webhook destination is paused in ``kv`` so the delivery loop leaves the new deliveries alone.
4. **Peer** (``--peer-pending``, 0 to skip): APScheduler 3 with its SQLAlchemy job store on
   SQLite (``bench/peers.py``, as bench 4), the same share due, in the same run.

Prints the machine, the load average and the database size on disk.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import PY, REPO, free_port, machine, rss_mb, stop, wait_healthz  # noqa: E402

SQLITE_INDEXES = ("ix_trigger_due", "ix_trigger_patient", "ix_trigger_dedup", "ix_trigger_rule_resource",
                  "ix_trigger_updated", "ix_trigger_patient_id")


def load_note() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.1f} {five:.1f} {fifteen:.1f} on {os.cpu_count()} cores (machine shared with other sessions)"


def _select(now: float, pending: int, due: int, i: str) -> str:
    """The SELECT list of one generated trigger ``i`` (SQL common to SQLite and PostgreSQL)."""
    is_due = f"({i} < {due})"
    patient = f"CASE WHEN {is_due} THEN 'bench|D' || {i} ELSE 'bench|P' || ({i} / 3) END"
    pid = f"CASE WHEN {is_due} THEN 'pt_benchd' || {i} ELSE 'pt_benchp' || ({i} / 3) END"
    due_at = f"CASE WHEN {is_due} THEN {now - 60} + ({i} % 1000) * 0.001 ELSE {now + 3600} + ({i} % 7776) * 1000.0 END"
    return (f"'bench-rule', 'bench', 'bench_trigger', 'care-coordination', 'webhook', {patient}, 'Appointment/b' || {i},"
            f" 'bench|' || {i}, '1', {due_at}, 'pending', '{{}}', {now}, {now}, 'bench', {pid}")


COLS = ("rule_id, ruleset_version, name, purpose, destinations, patient_key, resource_key, origin_key, resource_version, due_at,"
        " status, payload, created_at, updated_at, message_kind, patient_id")


def fill_sqlite(path: Path, pending: int, due: int, now: float) -> None:
    sys.path.insert(0, str(REPO))
    from middleware.storage.db import init_db, make_engine

    eng = make_engine(f"sqlite:///{path}")
    init_db(eng)
    eng.dispose()
    con = sqlite3.connect(path, isolation_level=None)
    con.execute("PRAGMA journal_mode=OFF")
    con.execute("PRAGMA synchronous=OFF")
    con.execute("PRAGMA cache_size=-400000")
    ddl = {name: sql for name, sql in con.execute("SELECT name, sql FROM sqlite_master WHERE type='index' AND tbl_name='trigger'")
           if name in SQLITE_INDEXES}
    for name in ddl:
        con.execute(f'DROP INDEX "{name}"')
    step = 1_000_000
    for lo in range(0, pending, step):
        hi = min(pending, lo + step)
        con.execute("BEGIN")
        con.execute(f'WITH RECURSIVE c(i) AS (SELECT {lo} UNION ALL SELECT i + 1 FROM c WHERE i + 1 < {hi})'
                    f' INSERT INTO "trigger" ({COLS}) SELECT {_select(now, pending, due, "i")} FROM c')
        con.execute("COMMIT")
    for sql in ddl.values():
        con.execute(sql)
    con.execute("INSERT INTO kv (key, value, updated_at) VALUES ('destination.paused.webhook', '{\"reason\": \"bench\"}', 0)")
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("ANALYZE")
    con.close()


def fill_postgres(url: str, pending: int, due: int, now: float) -> None:
    sys.path.insert(0, str(REPO))
    from sqlalchemy import text

    from middleware.storage.db import init_db, make_engine

    eng = make_engine(url)
    init_db(eng)
    with eng.begin() as c:
        ddl = [r[0] for r in c.execute(text("SELECT indexdef FROM pg_indexes WHERE tablename = 'trigger' AND indexname LIKE 'ix_%'"))]
        for (name,) in c.execute(text("SELECT indexname FROM pg_indexes WHERE tablename = 'trigger' AND indexname LIKE 'ix_%'")):
            c.execute(text(f'DROP INDEX "{name}"'))
    step = 1_000_000
    for lo in range(0, pending, step):
        hi = min(pending, lo + step)
        with eng.begin() as c:
            c.execute(text(f'INSERT INTO "trigger" ({COLS}) SELECT {_select(now, pending, due, "i")}'
                           f" FROM generate_series({lo}, {hi - 1}) AS i"))
    with eng.begin() as c:
        c.execute(text("SET maintenance_work_mem = '512MB'"))
        for sql in ddl:
            c.execute(text(sql))
        c.execute(text("INSERT INTO kv (key, value, updated_at) VALUES ('destination.paused.webhook', '{\"reason\": \"bench\"}', 0)"))
    with eng.connect().execution_options(isolation_level="AUTOCOMMIT") as c:
        c.execute(text('VACUUM ANALYZE "trigger"'))
    eng.dispose()


def size_on_disk(url: str) -> str:
    if url.startswith("sqlite:///"):
        p = Path(url.removeprefix("sqlite:///"))
        total = sum(f.stat().st_size for f in p.parent.glob(p.name + "*"))
        return f"{total / 2**30:.2f} GiB"
    from sqlalchemy import create_engine, text

    eng = create_engine(url)
    with eng.connect() as c:
        db = c.execute(text("SELECT pg_size_pretty(pg_database_size(current_database()))")).scalar()
        tbl = c.execute(text("SELECT pg_size_pretty(pg_total_relation_size('\"trigger\"'))")).scalar()
    eng.dispose()
    return f"{db} (trigger table with indexes {tbl})"


def fire(url: str, seconds: float, batch: int) -> dict[str, Any]:
    """The child: the real Scheduler with the shipped rule set, in a loop, until nothing is due."""
    sys.path.insert(0, str(REPO))
    from middleware.rules.load import load_ruleset
    from middleware.scheduler.runner import Scheduler
    from middleware.storage.db import make_engine

    rs, _ = load_ruleset(REPO / "mappings")
    assert rs is not None
    eng = make_engine(url)
    sch = Scheduler(eng, lambda: rs, batch=batch)
    peak = [0.0]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], rss_mb(os.getpid()))
            time.sleep(0.2)

    threading.Thread(target=sample, daemon=True).start()
    handled, batches = 0, 0
    print("ready", flush=True)  # the parent starts every firing process at once (``--schedulers``)
    sys.stdin.readline()
    t0 = time.perf_counter()
    cpu0 = time.process_time()
    while time.perf_counter() - t0 < seconds:
        n = sch.fire_due()
        if not n:
            break
        handled += n
        batches += 1
    dt = time.perf_counter() - t0
    cpu = time.process_time() - cpu0
    done.set()
    peak[0] = max(peak[0], rss_mb(os.getpid()))
    return {"handled": handled, "fired": sch.fired, "batches": batches, "seconds": dt, "rate": handled / dt if dt else 0.0,
            "cpu_us_per_trigger": cpu / max(handled, 1) * 1e6, "peak_rss_mb": peak[0],
            "hwm_mb": _vm_hwm_mb(), "ru_maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def _vm_hwm_mb() -> float:
    """This process's peak resident set (``VmHWM``: its own, unlike ``ru_maxrss``, which keeps the
    forking parent's peak across ``exec``)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def reset_due(url: str, due: int, now: float) -> None:
    """Put the due share back to pending (and drop its deliveries) for the next run."""
    sys.path.insert(0, str(REPO))
    from sqlalchemy import text

    from middleware.storage.db import make_engine

    eng = make_engine(url)
    with eng.begin() as c:
        c.execute(text("DELETE FROM delivery"))
        c.execute(text("UPDATE \"trigger\" SET status = 'pending', fired_at = NULL, reason = NULL, due_at = :d"
                       " WHERE status IN ('fired', 'suppressed')"), {"d": now - 60})
    eng.dispose()


def deliveries(url: str) -> int:
    from sqlalchemy import create_engine, text

    eng = create_engine(url)
    with eng.connect() as c:
        n = int(c.execute(text("SELECT coalesce(max(id), 0) FROM delivery")).scalar() or 0)
    eng.dispose()
    return n


def once(url: str) -> tuple[int, int, int]:
    """(delivery rows, distinct triggers among them, triggers marked fired): equal when each fired once."""
    from sqlalchemy import create_engine, text

    eng = create_engine(url)
    with eng.connect() as c:
        rows, distinct = c.execute(text("SELECT count(*), count(DISTINCT trigger_id) FROM delivery")).one()
        fired_n = c.execute(text("SELECT count(*) FROM \"trigger\" WHERE status = 'fired'")).scalar()
    eng.dispose()
    return int(rows), int(distinct), int(fired_n or 0)


def serve(url: str, tmp: Path, watch_s: float, repo: Path = REPO) -> tuple[float, float, float, str]:
    """(seconds to /healthz, deliveries created per second while watched, peak RSS MB, the
    ``GET /metrics`` timings after the watch: :func:`scrapes`) of ``careloop serve``."""
    http, mllp = free_port(), free_port()
    env = {**os.environ, "PYTHONPATH": str(repo)}
    n0 = deliveries(url)
    t_start = time.perf_counter()
    proc = subprocess.Popen([PY, "-m", "middleware", "serve", "--http-port", str(http), "--mllp-port", str(mllp),
                             "--database-url", url, "--mappings", str(repo / "mappings")],
                            cwd=tmp, env=env, stdout=subprocess.DEVNULL, stderr=open(tmp / "serve.log", "ab"))
    try:
        wait_healthz(http, proc, 3600, poll_s=0.02, log=tmp / "serve.log")
        start = time.perf_counter() - t_start
        global LAST_START_CPU
        LAST_START_CPU = _cpu_s(proc.pid)
        t1, peak = time.perf_counter(), 0.0
        while time.perf_counter() - t1 < watch_s:
            peak = max(peak, rss_mb(proc.pid))
            time.sleep(0.2)
        rate = (deliveries(url) - n0) / (time.perf_counter() - t1)
        return start, rate, peak, scrapes(f"http://127.0.0.1:{http}/metrics")
    finally:
        stop(proc)


#: CPU seconds (user + system) the last ``serve`` had used when ``/healthz`` first answered
LAST_START_CPU = 0.0


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def scrapes(url: str, within_s: float = 60.0) -> str:
    """``GET /metrics`` once a second until a scrape shows ``careloop_triggers_pending`` (the database
    figures are read off the scrape's path: ``collectors.FigureCache``): the first scrape's time, the
    slowest, and the one read of the figures that the service reports."""
    times: list[float] = []
    t0 = time.perf_counter()
    while True:
        t = time.perf_counter()
        r = httpx.get(url, timeout=120)
        r.raise_for_status()
        times.append(time.perf_counter() - t)
        values = {line.split(" ")[0]: float(line.split(" ")[1]) for line in r.text.splitlines()
                  if line.startswith(("careloop_triggers_pending ", "careloop_database_figures_read_seconds "))}
        if "careloop_triggers_pending" in values or time.perf_counter() - t0 > within_s:
            break
        time.sleep(1.0)
    read = values.get("careloop_database_figures_read_seconds")
    return (f"GET /metrics: first {times[0]:.2f}s, slowest of {len(times)} {max(times):.2f}s,"
            f" pending {values.get('careloop_triggers_pending', float('nan')):,.0f} shown after {time.perf_counter() - t0:.1f}s"
            + (f" (one read of the database figures {read:.2f}s, off the scrape's path)" if read is not None else ""))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backend", choices=("sqlite", "postgresql"), default="sqlite")
    ap.add_argument("--pending", type=int, default=10_000_000)
    ap.add_argument("--due-share", type=float, default=0.01)
    ap.add_argument("--seconds", type=float, default=60.0, help="longest firing run")
    ap.add_argument("--batch", type=int, default=500, help="the Scheduler's batch (the service's default: 500)")
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--schedulers", type=int, default=1, help="firing processes at once (exactly-once is checked)")
    ap.add_argument("--watch", type=float, default=10.0, help="seconds to watch the served process fire")
    ap.add_argument("--peer-pending", type=int, default=1_000_000, help="APScheduler's job count (0: no peer)")
    ap.add_argument("--keep", action="store_true", help="keep the database (SQLite file / PostgreSQL database)")
    ap.add_argument("--baseline", type=Path, action="append", default=[],
                    help="another checkout (e.g. /work/main): its `serve` start and /metrics beside this code's, same database")
    ap.add_argument("--fire", metavar="URL", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.fire:
        print(json.dumps(fire(args.fire, args.seconds, args.batch)))
        return
    due = int(args.pending * args.due_share)
    tmp = Path(tempfile.mkdtemp(prefix="careloop-bench-sched10m-"))
    print(f"# scheduler at {args.pending:,} pending triggers ({args.backend})  {machine()}")
    print(f"# {load_note()}")
    drop_pg: str | None = None
    if args.backend == "sqlite":
        url = f"sqlite:///{tmp / 'careloop.db'}"
    else:
        base = os.environ.get("CARELOOP_TEST_POSTGRES_URL")
        if not base:
            sys.exit("set CARELOOP_TEST_POSTGRES_URL (a PostgreSQL server this bench may create a database on)")
        from sqlalchemy import create_engine, text

        name = f"careloop_bench_sched_{os.getpid()}"
        admin = create_engine(base, isolation_level="AUTOCOMMIT")
        with admin.connect() as c:
            c.execute(text(f'CREATE DATABASE "{name}"'))
        admin.dispose()
        url = base.rsplit("/", 1)[0] + "/" + name
        drop_pg = name
    try:
        t0 = time.time()
        if args.backend == "sqlite":
            fill_sqlite(tmp / "careloop.db", args.pending, due, time.time())
        else:
            fill_postgres(url, args.pending, due, time.time())
        print(f"loaded {args.pending:,} pending triggers ({due:,} due now, {args.due_share:.1%}) in {time.time() - t0:.0f}s;"
              f" database on disk {size_on_disk(url)}", flush=True)
        for run in range(args.runs):
            reset_due(url, due, time.time())
            cmd = [PY, __file__, "--fire", url, "--seconds", str(args.seconds), "--batch", str(args.batch)]
            env = {**os.environ, "PYTHONPATH": str(REPO)}
            procs = [subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
                     for _ in range(args.schedulers)]
            for p in procs:  # imported and connected: start together
                assert p.stdout is not None
                if p.stdout.readline().strip() != "ready":
                    sys.exit(p.communicate()[1])
            for p in procs:
                assert p.stdin is not None
                p.stdin.write("go\n")
                p.stdin.flush()
            results = []
            for p in procs:
                stdout, stderr = p.communicate(None)
                if p.returncode:
                    sys.exit(stderr)
                results.append(json.loads(stdout.strip().splitlines()[-1]))
            for k, r in enumerate(results):
                who = f"run {run + 1} firing" + (f" (scheduler {k + 1} of {args.schedulers})" if args.schedulers > 1 else "")
                print(f"{who}: {r['handled']:,} due triggers handled ({r['fired']:,} fired, one delivery each) in"
                      f" {r['seconds']:.1f}s = {r['rate']:,.0f}/s; {r['cpu_us_per_trigger']:.0f} us CPU each; batches of {args.batch};"
                      f" peak RSS {r['peak_rss_mb']:.0f} MB (VmHWM {r['hwm_mb']:.0f} MB)  # {load_note()}", flush=True)
            rows, distinct, fired_n = once(url)
            handled = sum(r["handled"] for r in results)
            wall = max(r["seconds"] for r in results)
            print(f"run {run + 1} exactly once: {handled:,} handled by {args.schedulers} scheduler(s) in {wall:.1f}s"
                  f" = {handled / wall:,.0f}/s together; {fired_n:,} triggers marked fired,"
                  f" {rows:,} deliveries for {distinct:,} distinct triggers"
                  f" ({'OK' if rows == distinct == fired_n else 'DOUBLED OR LOST'})", flush=True)
            reset_due(url, due, time.time())
            start, rate, peak, scrape = serve(url, tmp, args.watch)
            print(f"run {run + 1} serve: /healthz after {start:.2f}s ({LAST_START_CPU:.2f}s CPU);"
                  f" then {rate:,.0f} deliveries created/s over {args.watch:.0f}s;"
                  f" peak RSS {peak:.0f} MB; {scrape}  # {load_note()}", flush=True)
        # control: the same start on an empty database of the same backend, same run (what start-up costs without rows)
        if args.backend == "sqlite":
            empty = f"sqlite:///{tmp / 'empty.db'}"
            from middleware.storage.db import init_db, make_engine

            eng = make_engine(empty)
            init_db(eng)
            eng.dispose()
            start, _, peak, scrape = serve(empty, tmp, 1.0)
            print(f"control serve on an empty database: /healthz after {start:.2f}s ({LAST_START_CPU:.2f}s CPU); peak RSS {peak:.0f} MB;"
                  f" {scrape}  # {load_note()}", flush=True)
        for base in args.baseline:  # the same starts with another checkout's code, same run, interleaved with this code's
            for label, repo in (("baseline " + str(base), base), ("this code", REPO)):
                for db, what in ((url, f"{args.pending:,} pending"),) + (((empty, "empty"),) if args.backend == "sqlite" else ()):
                    reset_due(url, due, time.time())
                    start, _, _, scrape = serve(db, tmp, 1.0, repo)
                    print(f"start A/B, {label}, {what}: /healthz after {start:.2f}s ({LAST_START_CPU:.2f}s CPU); {scrape}"
                          f"  # {load_note()}", flush=True)
        if args.peer_pending:
            from scheduler_scale import fill_peer, run_peer

            peer_db = tmp / "apscheduler.db"
            peer_due = int(args.peer_pending * args.due_share)
            t0 = time.time()
            rows = fill_peer(peer_db, args.peer_pending - peer_due, peer_due, time.time())
            print(f"peer: APScheduler {__import__('apscheduler').__version__} SQLAlchemyJobStore (SQLite), {args.peer_pending:,} jobs"
                  f" ({peer_due:,} due) stored in {time.time() - t0:.0f}s; {peer_db.stat().st_size / 2**30:.2f} GiB", flush=True)
            st, rate, peak, n = run_peer(peer_db, rows, args.seconds)
            print(f"peer apscheduler: serving after {st:.2f}s; fired {n:,} due jobs = {rate:,.0f}/s; peak RSS {peak:.0f} MB"
                  f"  # {load_note()}", flush=True)
    finally:
        if not args.keep:
            for f in tmp.glob("*.db*"):
                f.unlink()
            if drop_pg:
                from sqlalchemy import create_engine, text

                admin = create_engine(os.environ["CARELOOP_TEST_POSTGRES_URL"], isolation_level="AUTOCOMMIT")
                with admin.connect() as c:
                    c.execute(text(f'DROP DATABASE IF EXISTS "{drop_pg}" WITH (FORCE)'))
                admin.dispose()


if __name__ == "__main__":
    main()
