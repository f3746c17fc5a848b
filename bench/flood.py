"""Memory ceiling under overload: flood careloop's MLLP port and sample the server's memory.

One command: ``python bench/flood.py [--connections 400] [--seconds 40] [--variants no-worker,worker]``.

For each variant ``careloop serve`` starts on a fresh SQLite database with the bundled
mappings (``no-worker``: ``serve --no-worker``, ingest only; ``worker``: the processing
worker in the same process, which falls behind and leaves a backlog). Then, for
``--seconds``, ``--connections`` connections each write SIU^S12 frames (unique MSH-10, 20 per
write) as fast as the socket takes them, never waiting for an ACK: a share of them
(``--noread-share``) never reads its ACKs at all, the others read them in a separate task
(lazily, only counting). One more connection writes 900 KB messages the same way. Every
0.5 s this process samples the server's RSS and VmHWM (/proc), the rows stored
(``max(id)`` of inbound_message), the frames handed to the kernel and the ACKs read; every
2 s ``/healthz`` and ``/metrics`` (inbox queue, queue waits, open connections). After the
flood the connections are closed and sampling goes on for ``--after`` seconds: the server
must still answer /healthz and its memory come back or stay flat.

A bounded server shows RSS reaching a plateau while the bytes offered keep growing; the
report prints both (peak, last 25 % of the flood vs. the middle, MB per 10k frames offered).

Attacks (``--attacks overcap,drip --loops uvloop,asyncio``, issue 11), each under both event
loops (``CARELOOP_EVENT_LOOP``), ``careloop serve --no-worker`` with the default limits:

* ``overcap``: ``--attack-connections`` (700, beyond the 512 cap) from 20 loopback addresses
  (127.0.0.10-29, 35 each: under the per-address cap) each push 1 MB of an unfinished frame
  and reconnect when closed;
* ``drip``: as many connections each send a frame start and then one byte a second (reconnecting
  when closed).

Meanwhile a real sender on its own address (127.0.0.2) keeps one persistent connection
(opened before the attack, as MLLP senders do) and sends a message every 0.25 s, and a second
one (127.0.0.3) opens a new connection every second. Reported: the server's RSS (before, peak,
median of the last third), the persistent sender's ACK latency (p50/p99/max: must stay
under 1 s), the new-connection sender's successes, and the server's refusal/close counters.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import re
import resource
import shutil
import socket
import sqlite3
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import EB, CR, PY, REPO, SB, cpu_seconds, free_port, machine, siu_message, stop, wait_port  # noqa: E402

FRAMES_PER_WRITE = 20


def vm(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) in MB."""
    rss = hwm = float("nan")
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) / 1024
            elif line.startswith("VmHWM:"):
                hwm = int(line.split()[1]) / 1024
    except OSError:
        pass
    return rss, hwm


@dataclass
class Counters:
    sent: int = 0  # frames handed to the kernel (drain returned)
    acked: int = 0  # ACK frames read by the reading connections
    big_sent: int = 0
    big_acked: int = 0
    connected: int = 0
    errors: list[str] = field(default_factory=list)


class Flood:
    """The load: an asyncio loop in a thread, so the sampler's clock does not depend on it."""

    def __init__(self, port: int, conns: int, noread_share: float, big_kb: int) -> None:
        self.port, self.conns, self.noread_share, self.big_kb = port, conns, noread_share, big_kb
        self.c = Counters()
        self.loop = asyncio.new_event_loop()
        self.stop_ev: asyncio.Event | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        tpl = siu_message("CTRLXXXXXXXXXXXX", mrn="MRNXXXXXX", appt="APPTXXXXXXXX")
        self.tpl = SB + tpl + EB + CR
        big = siu_message("CTRLXXXXXXXXXXXX", mrn="MRNBIGXXX", appt="APPTBIGXXXXX")
        filler = b"NTE|2||" + b"X" * (big_kb * 1000 - len(big) - 10) + b"\r"
        self.big = SB + big + filler + EB + CR

    def start(self) -> None:
        self.thread.start()

    def finish(self) -> None:
        if self.stop_ev is not None:
            self.loop.call_soon_threadsafe(self.stop_ev.set)
        self.thread.join(30)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self._main())
        self.loop.close()

    async def _main(self) -> None:
        self.stop_ev = asyncio.Event()
        n_noread = int(round(self.conns * self.noread_share))
        tasks = [asyncio.create_task(self._sender(i, read=(i >= n_noread))) for i in range(self.conns)]
        if self.big_kb:
            tasks.append(asyncio.create_task(self._sender(-1, read=True, big=True)))
        await self.stop_ev.wait()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _sender(self, idx: int, *, read: bool, big: bool = False) -> None:
        c = self.c
        try:
            r, w = await asyncio.open_connection("127.0.0.1", self.port)
        except OSError as e:
            c.errors.append(f"connect: {e}")
            return
        c.connected += 1
        reader = asyncio.create_task(self._reader(r, big)) if read else None
        seq = 0
        tag = b"B" if big else b"C"
        try:
            while True:
                if big:
                    cid = b"%s%07d%08d" % (tag, idx % 10**7, seq)
                    w.write(self.big.replace(b"CTRLXXXXXXXXXXXX", cid[:16].ljust(16, b"0")))
                    seq += 1
                    await w.drain()
                    c.big_sent += 1
                    continue
                parts = []
                for _ in range(FRAMES_PER_WRITE):
                    cid = (b"%s%05d%010d" % (tag, idx, seq))[:16]
                    parts.append(self.tpl.replace(b"CTRLXXXXXXXXXXXX", cid)
                                 .replace(b"MRNXXXXXX", b"MRN%06d" % (seq % 10**6))
                                 .replace(b"APPTXXXXXXXX", b"A%011d" % (idx * 10**6 + seq)))
                    seq += 1
                w.write(b"".join(parts))
                await w.drain()
                c.sent += FRAMES_PER_WRITE
        except asyncio.CancelledError:
            pass
        except (ConnectionError, OSError) as e:
            c.errors.append(f"send: {type(e).__name__}: {e}")
        finally:
            if reader is not None:
                reader.cancel()
            sock = w.get_extra_info("socket")
            if sock is not None:  # close with RST: what is still in the kernel's buffers is dropped, so what the
                try:              # server stores after the flood is what it had already taken into its memory
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                except OSError:
                    pass
            w.transport.abort()

    async def _reader(self, r: asyncio.StreamReader, big: bool) -> None:
        c = self.c
        tail = b""
        try:
            while True:
                data = await r.read(65536)
                if not data:
                    return
                buf = tail + data
                n = buf.count(EB + CR)
                tail = buf[-1:]
                if big:
                    c.big_acked += n
                else:
                    c.acked += n
        except (asyncio.CancelledError, ConnectionError, OSError):
            pass


def stored(db: Path) -> int:
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
        try:
            return int(con.execute("SELECT coalesce(max(id), 0) FROM inbound_message").fetchone()[0])
        finally:
            con.close()
    except sqlite3.Error:
        return -1


def status_counts(db: Path) -> dict[str, int]:
    con = sqlite3.connect(db, timeout=30)
    try:
        return dict(con.execute("SELECT status, count(*) FROM inbound_message GROUP BY status").fetchall())
    finally:
        con.close()


def metrics(http: int) -> dict[str, float]:
    out: dict[str, float] = {}
    try:
        text = httpx.get(f"http://127.0.0.1:{http}/metrics", timeout=2).text
    except httpx.HTTPError:
        return out
    for name in ("careloop_inbox_queue", "careloop_inbox_queue_waits_total", "careloop_inbox_queue_waits",
                 "careloop_mllp_open_connections", "careloop_mllp_buffered_bytes",
                 "careloop_mllp_refused_connections_total", "careloop_mllp_limit_closes_total",
                 "careloop_mllp_junk_records_total"):
        vals = [float(v) for v in re.findall(rf"^{name}(?:{{[^}}]*}})? ([0-9.e+]+)$", text, re.M)]
        if vals:
            out[name] = sum(vals)  # summed over listeners and reasons
    return out


def healthz(http: int) -> float | None:
    """/healthz latency in ms, None if it did not answer 200 within 2 s."""
    t = time.perf_counter()
    try:
        ok = httpx.get(f"http://127.0.0.1:{http}/healthz", timeout=2).status_code == 200
    except httpx.HTTPError:
        ok = False
    return (time.perf_counter() - t) * 1000 if ok else None


def start(variant: str, work: Path, loop: str = "uvloop") -> tuple[subprocess.Popen[bytes], int, int]:
    http, mllp = free_port(), free_port()
    cmd = [PY, "-m", "middleware", "serve", "--http-port", str(http), "--mllp-port", str(mllp),
           "--database-url", f"sqlite:///{work}/c.db", "--mappings", str(REPO / "mappings")]
    if variant == "no-worker":
        cmd.append("--no-worker")
    log = (work / "serve.log").open("wb")
    proc = subprocess.Popen(cmd, cwd=work, stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, "CARELOOP_LOG_LEVEL": "WARNING", "CARELOOP_EVENT_LOOP": loop})
    wait_port(mllp, 60, proc)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and healthz(http) is None:
        time.sleep(0.1)
    return proc, http, mllp


def run_variant(variant: str, args: argparse.Namespace) -> dict[str, float]:
    work = Path(tempfile.mkdtemp(prefix=f"careloop-flood-{variant}-"))
    db = work / "c.db"
    proc, http, mllp = start(variant, work)
    print(f"\n## {variant}: `careloop serve{' --no-worker' if variant == 'no-worker' else ''}` (pid {proc.pid}),"
          f" {args.connections} connections ({int(round(args.connections * args.noread_share))} never read ACKs),"
          f" + 1 connection of {args.big_kb} KB messages, {args.seconds:.0f} s flood, then {args.after:.0f} s after",
          flush=True)
    time.sleep(1.0)
    rss0, _ = vm(proc.pid)
    cpu0 = cpu_seconds(proc.pid)
    flood = Flood(mllp, args.connections, args.noread_share, args.big_kb)
    samples: list[dict[str, float]] = []
    t0 = time.perf_counter()
    flood.start()
    flooding = True
    probes: list[tuple[float, float | None, dict[str, float]]] = []  # (t, healthz ms or None, metrics)
    probing = threading.Event()

    def prober() -> None:  # its own thread: a slow answer must not stretch the 0.5 s sampling
        while not probing.is_set():
            t = time.perf_counter() - t0
            probes.append((t, healthz(http), metrics(http)))
            probing.wait(max(0.0, 2.0 - (time.perf_counter() - t0 - t)))

    t_flood_end = args.seconds
    probe_thread = threading.Thread(target=prober, daemon=True)
    probe_thread.start()
    try:
        while True:
            t = time.perf_counter() - t0
            if flooding and t >= args.seconds:
                flood.finish()
                flooding = False
                t_flood_end = time.perf_counter() - t0
            if t >= args.seconds + args.after:
                break
            if proc.poll() is not None:
                print(f"SERVER EXITED with {proc.returncode} at t={t:.1f}s")
                break
            rss, hwm = vm(proc.pid)
            samples.append({"t": t, "rss": rss, "hwm": hwm, "stored": stored(db), "sent": flood.c.sent,
                            "acked": flood.c.acked, "big_sent": flood.c.big_sent, "flooding": float(flooding)})
            time.sleep(max(0.0, 0.5 - (time.perf_counter() - t0 - t)))
    finally:
        if flooding:
            flood.finish()
        probing.set()
        probe_thread.join(10)
        h_final = healthz(http)
        rss_end, hwm_end = vm(proc.pid)
        cpu_used = cpu_seconds(proc.pid) - cpu0
        stop(proc)
    health_lat = [h for t, h, _ in probes if t < t_flood_end and h is not None]
    health_fail = sum(1 for t, h, _ in probes if t < t_flood_end and h is None)
    health_after = [h for t, h, _ in probes if t >= t_flood_end and h is not None]
    health_fail_after = sum(1 for t, h, _ in probes if t >= t_flood_end and h is None)
    last_m = next((m for _, _, m in reversed(probes) if m), {})
    for s in samples:  # the latest probe at or before each sample
        for t, h, m in probes:
            if t <= s["t"]:
                s["health_ms"] = -1.0 if h is None else h
                s.update(m)
    counts = status_counts(db)
    shutil.rmtree(work, ignore_errors=True) if not args.keep else print(f"kept {work}")

    # -- report ----------------------------------------------------------------------------
    print(f"{'t s':>5} {'RSS MB':>7} {'HWM MB':>7} {'stored/s':>9} {'acked/s':>8} {'sent/s':>8} {'stored':>8}"
          f" {'inbox q':>7} {'healthz ms':>10}")
    prev = samples[0]
    for i, s in enumerate(samples):
        if i % 4 != 3 and i != len(samples) - 1:
            continue
        dt = s["t"] - prev["t"] or 1.0
        mark = "" if s["flooding"] else "  (after)"
        h = s.get("health_ms")
        print(f"{s['t']:5.1f} {s['rss']:7.0f} {s['hwm']:7.0f} {(s['stored'] - prev['stored']) / dt:9,.0f}"
              f" {(s['acked'] - prev['acked']) / dt:8,.0f} {(s['sent'] - prev['sent']) / dt:8,.0f} {s['stored']:8,}"
              f" {s.get('careloop_inbox_queue', float('nan')):7.0f} {('-' if h is None else 'FAIL' if h < 0 else f'{h:.0f}'):>10}"
              f"{mark}")
        prev = s
    fl = [s for s in samples if s["flooding"]]
    after = [s for s in samples if not s["flooding"]]
    peak = max(s["rss"] for s in samples)
    q = len(fl) // 4
    mid = statistics.median(s["rss"] for s in fl[q:2 * q + q]) if fl else float("nan")
    last = statistics.median(s["rss"] for s in fl[3 * q:]) if fl else float("nan")
    offered = fl[-1]["sent"] if fl else 0
    stored_flood = (fl[-1]["stored"] - fl[0]["stored"]) if fl else 0
    dur = (fl[-1]["t"] - fl[0]["t"]) if len(fl) > 1 else 1.0
    acked = fl[-1]["acked"] if fl else 0
    print(f"RSS: {rss0:.0f} MB before the flood; peak {peak:.0f} MB (VmHWM at the end {hwm_end:.0f} MB); median"
          f" {mid:.0f} MB over the middle half of the flood and {last:.0f} MB over its last quarter"
          f" ({'plateau' if last - mid < 0.1 * mid + 10 else 'STILL GROWING'}); {rss_end:.0f} MB at the end of the"
          f" {args.after:.0f} s after (median after the flood {statistics.median(s['rss'] for s in after) if after else float('nan'):.0f} MB)")
    print(f"offered: {offered:,} frames handed to the kernel + {fl[-1]['big_sent'] if fl else 0} x {args.big_kb} KB;"
          f" stored during the flood {stored_flood:,} = {stored_flood / dur:,.0f}/s; ACKs read {acked:,}"
          f" (by the {args.connections - int(round(args.connections * args.noread_share))} reading connections)"
          f" = {acked / dur:,.0f}/s; server CPU {100 * cpu_used / (samples[-1]['t'] or 1):.0f} % of one core"
          f" over the whole run; {len(flood.c.errors)} client errors"
          + (f" (first: {flood.c.errors[0]})" if flood.c.errors else ""))
    if fl and after:
        held = after[-1]["stored"] - fl[-1]["stored"]
        conns = args.connections + (1 if args.big_kb else 0)
        print(f"stored after the senders reset their connections (kernel buffers dropped): {held:,} frames, i.e. what the"
              f" server held in its own memory when the flood stopped (~{held * len(flood.tpl) / 2**20:,.0f} MB of raw"
              f" HL7 alone; ~{max(0, held - 10000) / conns:,.0f} frames per connection beyond a 10,000-record inbox"
              f" queue; {(peak - rss0) / conns:.1f} MB of peak RSS per connection)"
              f"{'; still storing at the end' if after[-1]['stored'] > after[-2]['stored'] else ''}")
    print(f"memory per frame offered: {(peak - rss0) / max(1, offered) * 10000:.2f} MB per 10k frames (a server that"
          f" kept everything it was sent would need ~{offered * len(flood.tpl) / 2**20:,.0f} MB for the frames alone)")
    print(f"/healthz: {'answered' if h_final is not None else 'DID NOT ANSWER'} after the flood"
          f" ({h_final or 0:.0f} ms); during the flood {len(health_lat)} answers, {health_fail} failures (2 s timeout),"
          f" p50 {statistics.median(health_lat) if health_lat else float('nan'):.0f} ms,"
          f" max {max(health_lat, default=float('nan')):.0f} ms; after it {len(health_after)} answers,"
          f" {health_fail_after} failures")
    print(f"inbound_message by status at the end: {counts}; inbox queue waits {last_m.get('careloop_inbox_queue_waits_total', last_m.get('careloop_inbox_queue_waits', float('nan'))):,.0f}")
    return {"peak": peak, "mid": mid, "last": last, "rss0": rss0, "end": rss_end, "stored_per_s": stored_flood / dur,
            "acked_per_s": acked / dur, "offered": offered}


# -- attacks (issue 11): beyond the cap, slow drip; a real sender measured meanwhile -------------

class Attack:
    """Attackers and the two real senders, on an asyncio loop in a thread."""

    def __init__(self, port: int, kind: str, conns: int) -> None:
        self.port, self.kind, self.conns = port, kind, conns
        self.latencies: list[float] = []  # persistent real sender: ACK latency, s
        self.unanswered = 0  # persistent real sender: no ACK within 5 s
        self.new_ok: list[float] = []  # new-connection sender: connect + ACK, s
        self.new_failed = 0
        self.attack_connects = 0
        self.attack_closed = 0
        self.loop = asyncio.new_event_loop()
        self.stop_ev: asyncio.Event | None = None
        self.attack_on: asyncio.Event | None = None
        self.thread = threading.Thread(target=lambda: self.loop.run_until_complete(self._main()), daemon=True)

    def start(self) -> None:
        self.thread.start()

    def begin_attack(self) -> None:
        self.loop.call_soon_threadsafe(lambda: self.attack_on.set() if self.attack_on else None)

    def finish(self) -> None:
        self.loop.call_soon_threadsafe(lambda: self.stop_ev.set() if self.stop_ev else None)
        self.thread.join(30)

    async def _main(self) -> None:
        self.stop_ev, self.attack_on = asyncio.Event(), asyncio.Event()
        tasks = [asyncio.create_task(self._persistent()), asyncio.create_task(self._new_connections())]
        await self.attack_on.wait()
        tasks += [asyncio.create_task(self._attacker(i)) for i in range(self.conns)]
        await self.stop_ev.wait()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _message(self, control: str) -> bytes:
        return SB + siu_message(control[:16], mrn="MRN900001", appt=control[-12:]) + EB + CR

    async def _persistent(self) -> None:
        r, w = await asyncio.open_connection("127.0.0.1", self.port, local_addr=("127.0.0.2", 0))
        seq = 0
        while True:
            seq += 1
            t = time.perf_counter()
            w.write(self._message(f"RP{seq:014d}"))
            try:
                await asyncio.wait_for(r.readuntil(EB + CR), 5)
                self.latencies.append(time.perf_counter() - t)
            except asyncio.TimeoutError:
                self.unanswered += 1
            await asyncio.sleep(0.25)

    async def _new_connections(self) -> None:
        seq = 0
        while True:
            seq += 1
            t = time.perf_counter()
            try:
                r, w = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", self.port,
                                                                      local_addr=("127.0.0.3", 0)), 5)
                w.write(self._message(f"RN{seq:014d}"))
                await asyncio.wait_for(r.readuntil(EB + CR), 5)
                self.new_ok.append(time.perf_counter() - t)
                w.close()
            except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError):
                self.new_failed += 1
            await asyncio.sleep(max(0.0, 1.0 - (time.perf_counter() - t)))

    async def _attacker(self, i: int) -> None:
        addr = f"127.0.0.{10 + i % 20}"
        await asyncio.sleep(i * 0.003)  # spread the connects over ~2 s
        while True:
            try:
                r, w = await asyncio.open_connection("127.0.0.1", self.port, local_addr=(addr, 0))
                self.attack_connects += 1
                w.write(SB + b"MSH|^~\\&|")
                if self.kind == "overcap":
                    for _ in range(16):
                        w.write(b"X" * 65536)
                        await w.drain()
                    await r.read()  # hold it open until the server closes it
                else:
                    while True:
                        await asyncio.sleep(1.0)
                        w.write(b"Y")
                        await w.drain()
                        if r.at_eof():
                            break
            except (OSError, asyncio.IncompleteReadError):
                pass
            self.attack_closed += 1
            await asyncio.sleep(1.0)


def run_attack(kind: str, loop: str, args: argparse.Namespace) -> dict[str, float]:
    work = Path(tempfile.mkdtemp(prefix=f"careloop-attack-{kind}-{loop}-"))
    proc, http, mllp = start("no-worker", work, loop)
    print(f"\n## {kind} on {loop}: `careloop serve --no-worker` (pid {proc.pid}), {args.attack_connections} attacking"
          f" connections for {args.attack_seconds:.0f} s; a persistent real sender (a message every 0.25 s) and a"
          f" new-connection real sender (one a second)", flush=True)
    time.sleep(1.0)
    rss0, _ = vm(proc.pid)
    attack = Attack(mllp, kind, args.attack_connections)
    attack.start()
    time.sleep(2.0)
    base_lat = list(attack.latencies)
    attack.begin_attack()
    t0 = time.perf_counter()
    samples: list[tuple[float, float]] = []
    while (t := time.perf_counter() - t0) < args.attack_seconds:
        samples.append((t, vm(proc.pid)[0]))
        time.sleep(0.5)
    m = metrics(http)
    rss_end_attack, hwm = vm(proc.pid)
    lat = attack.latencies[len(base_lat):]
    attack.finish()
    alive = healthz(http) is not None
    stop(proc)
    shutil.rmtree(work, ignore_errors=True)
    peak = max(r for _, r in samples)
    plateau = statistics.median(r for t, r in samples if t >= 2 * args.attack_seconds / 3)
    lat_ms = sorted(x * 1000 for x in lat)
    p = (lambda q: lat_ms[min(len(lat_ms) - 1, int(q * len(lat_ms)))] if lat_ms else float("nan"))
    print(f"RSS {rss0:.0f} MB before; peak {peak:.0f} MB (VmHWM {hwm:.0f}); median over the last third {plateau:.0f} MB")
    print(f"persistent real sender: {len(lat)} ACKs during the attack, p50 {p(0.5):.0f} ms, p99 {p(0.99):.0f} ms,"
          f" max {max(lat_ms, default=float('nan')):.0f} ms, {attack.unanswered} unanswered within 5 s")
    print(f"new-connection real sender: {len(attack.new_ok)} answered, {attack.new_failed} refused or failed")
    print(f"attackers: {attack.attack_connects} connections made, {attack.attack_closed} ended; server: refused"
          f" {m.get('careloop_mllp_refused_connections_total', 0):,.0f}, closed by a limit"
          f" {m.get('careloop_mllp_limit_closes_total', 0):,.0f}, open {m.get('careloop_mllp_open_connections', 0):.0f},"
          f" buffered {m.get('careloop_mllp_buffered_bytes', 0) / 2**20:.1f} MB; /healthz after: {'ok' if alive else 'NO ANSWER'}")
    return {"rss0": rss0, "peak": peak, "plateau": plateau, "p50": p(0.5), "p99": p(0.99),
            "max": max(lat_ms, default=float("nan")), "unanswered": attack.unanswered,
            "new_ok": len(attack.new_ok), "new_failed": attack.new_failed, "end": rss_end_attack}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--connections", type=int, default=400)
    ap.add_argument("--seconds", type=float, default=40)
    ap.add_argument("--after", type=float, default=30)
    ap.add_argument("--noread-share", type=float, default=0.5, help="share of connections that never read their ACKs")
    ap.add_argument("--big-kb", type=int, default=900, help="size of the one large-message sender's messages (0: none)")
    ap.add_argument("--variants", default="no-worker,worker")
    ap.add_argument("--keep", action="store_true", help="keep the databases and server logs")
    ap.add_argument("--attacks", default="", help="overcap,drip: the issue-11 attacks instead of the flood")
    ap.add_argument("--loops", default="uvloop,asyncio", help="event loops for --attacks")
    ap.add_argument("--attack-connections", type=int, default=700)
    ap.add_argument("--attack-seconds", type=float, default=40)
    args = ap.parse_args(argv)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 4 * args.connections + 256:  # the server inherits it
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 4 * args.connections + 256), hard))
    print(f"# flood  {machine()}")
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}; SQLite WAL synchronous=FULL, bundled mappings")
    if args.attacks:
        out = {(k, lp): run_attack(k, lp, args) for k in args.attacks.split(",") for lp in args.loops.split(",")}
        print("\n| attack | loop | RSS idle | RSS peak | RSS last third | real sender ACK p50 / p99 / max | unanswered | new connections ok / failed |")
        print("|---|---|---|---|---|---|---|---|")
        for (k, lp), r in out.items():
            print(f"| {k} | {lp} | {r['rss0']:.0f} MB | {r['peak']:.0f} MB | {r['plateau']:.0f} MB |"
                  f" {r['p50']:.0f} / {r['p99']:.0f} / {r['max']:.0f} ms | {r['unanswered']} | {r['new_ok']} / {r['new_failed']} |")
        return 0
    res = {v: run_variant(v, args) for v in args.variants.split(",") if v}
    print()
    for v, r in res.items():
        print(f"{v:9s}: peak RSS {r['peak']:.0f} MB (from {r['rss0']:.0f} MB idle), {r['mid']:.0f} -> {r['last']:.0f} MB"
              f" middle -> last quarter of the flood, {r['end']:.0f} MB after; stored {r['stored_per_s']:,.0f}/s,"
              f" ACKs read {r['acked_per_s']:,.0f}/s; {r['offered']:,} frames offered")
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
