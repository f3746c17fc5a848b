"""µs per indexed lookup (one ``patient`` row by primary key) four ways: the raw DB-API cursor, a
named query through ``unit.one`` (storage/sql.py), a Core ``select`` executed on a Connection and
the ORM (``session.get`` with an empty identity map). SQLite (WAL) and, with
``CARELOOP_TEST_POSTGRES_URL`` set, PostgreSQL.

    PYTHONPATH=. python bench/lookup.py [--n 20000]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sqlalchemy import select  # noqa: E402
from sqlmodel import Session  # noqa: E402

from middleware.storage.db import init_db, make_engine  # noqa: E402
from middleware.storage.queries import ingest  # noqa: E402
from middleware.storage.sql import unit  # noqa: E402
from middleware.storage.tables import PatientRow  # noqa: E402


def run(url: str, n: int) -> None:
    engine = make_engine(url)
    init_db(engine)
    keys = [f"mrn|{i}" for i in range(1000)]
    with unit(engine, write=True) as u:
        u.session.add_all(PatientRow(key=k, fhir_id=str(i), resource="{}", updated_at=0.0) for i, k in enumerate(keys))
    sql_text, _ = ingest.PATIENT_LINK.compiled(engine.dialect.name)
    out = {}
    with unit(engine) as u:
        cur = u.conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
        for i in range(min(n, 2000)):  # warm up (server plan cache, CPU caches)
            cur.execute(sql_text, (keys[i % 1000],))
            cur.fetchone()
        t0 = time.perf_counter()
        for i in range(n):
            cur.execute(sql_text, (keys[i % 1000],))
            cur.fetchone()
        out["raw cursor"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        for i in range(n):
            u.one("ingest.patient_link", key=keys[i % 1000])
        out["unit.one (named query)"] = time.perf_counter() - t0
        stmt = select(PatientRow.merged_into, PatientRow.resource).where(PatientRow.key == keys[0])  # type: ignore[arg-type]
        t0 = time.perf_counter()
        for i in range(n):
            u.conn.execute(select(PatientRow.merged_into, PatientRow.resource).where(PatientRow.key == keys[i % 1000])).first()  # type: ignore[arg-type]
        out["Core select, built per call"] = time.perf_counter() - t0
        del stmt
        t0 = time.perf_counter()
        with Session(u.conn) as s:
            for i in range(n):
                s.get(PatientRow, keys[i % 1000])
                s.expunge_all()
        out["ORM session.get"] = time.perf_counter() - t0
    engine.dispose()
    for k, v in out.items():
        print(f"  {k:30s} {v / n * 1e6:7.1f} µs")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=20000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        print(f"SQLite (WAL), {args.n} lookups each")
        run(f"sqlite:///{d}/lookup.db", args.n)
    admin = os.environ.get("CARELOOP_TEST_POSTGRES_URL")
    if admin:
        import psycopg

        name = "careloop_lookup_" + uuid.uuid4().hex[:8]
        with psycopg.connect(admin, autocommit=True) as c:
            c.execute(f'CREATE DATABASE "{name}"')
        try:
            print(f"PostgreSQL (loopback), {args.n // 4} lookups each")
            run(f"{admin.rsplit('/', 1)[0]}/{name}", args.n // 4)
        finally:
            with psycopg.connect(admin, autocommit=True) as c:
                c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


if __name__ == "__main__":
    main()
