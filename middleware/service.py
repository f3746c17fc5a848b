"""The running service: one process with the HTTP API, the MLLP listener and the
workers (processing, scheduler, delivery), sharing one database."""
from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
import time
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Awaitable, Callable

from sqlalchemy.engine import Engine

from .config.sources import Sources
from .config.yamlpos import Diagnostic
from .delivery.audit import guard_append_only
from .delivery.retention import purge
from .delivery.worker import DeliveryWorker
from .keyring import contact_keyring
from .listeners.mllp import MllpListener
from .metrics import Meters
from .pipeline.process import Processor
from .rules.load import RuleSet, load_ruleset
from .scheduler.runner import Scheduler
from .settings import Settings
from .storage.patient_ids import stamp_unassigned_rows
from .storage.schema import ensure_current, is_embedded, open_database
from .storage.inbox import InboxWriter

if TYPE_CHECKING:
    from .console.https import ReloadingTls

log = logging.getLogger("careloop.service")


class ConfigError(Exception):
    def __init__(self, diagnostics: list[Diagnostic]) -> None:
        super().__init__("\n".join(str(d) for d in diagnostics))
        self.diagnostics = diagnostics


def fault_hook_from_env() -> Callable[[str], None] | None:
    """``CARELOOP_FAULT=point:N`` kills the process (SIGKILL-like) the N-th time ``point`` is reached (tests only)."""
    spec = os.environ.get("CARELOOP_FAULT")
    if not spec:
        return None
    point, _, n = spec.partition(":")
    count = {"n": 0}
    target = int(n or 1)

    def hook(name: str) -> None:
        if name == point:
            count["n"] += 1
            if count["n"] >= target:
                os._exit(137)

    return hook


STATS_PREFIX = b"careloop-worker-stats "
#: what the parent writes on the worker's stdin: process, schedule, deliver, reload the mappings
WAKE_LETTERS = {b"p": "process", b"s": "schedule", b"d": "deliver", b"r": "reload"}


class _Forwarding(asyncio.Event):
    """A wake-up event of ``serve`` whose ``set()`` also wakes the worker process's loop."""

    def __init__(self, child: "WorkerProcess", letter: bytes) -> None:
        super().__init__()
        self.child, self.letter = child, letter

    def set(self) -> None:
        self.child.wake(self.letter)


class WorkerProcess:
    """``serve``'s worker in a child process (``careloop worker --parent PID``), supervised.

    Why (issue 16): the worker's Python (normalization, rules, delivery) and the listeners' share
    one GIL in one process, so every ACK waited behind processing. In its own process the worker has
    the second core; SQLite's writer is handed over between the two through ``storage.sql.FileLock``
    (ingest first). The parent wakes it through its stdin (one letter per wake-up, see
    :data:`WAKE_LETTERS`), and reads its counters and circuit-breaker states from its stdout, so
    ``/metrics`` and the console show the worker's figures. The child dies with the parent
    (``PR_SET_PDEATHSIG``, and end of file on its stdin); a child that exits is restarted with a
    growing delay, except under a test fault hook (``CARELOOP_FAULT``), where its crash ends ``serve``
    too, as it did when both ran in one process.
    """

    def __init__(self, env: dict[str, str], fault: bool = False) -> None:
        self.env = env
        self.fault = fault
        self.proc: asyncio.subprocess.Process | None = None
        self.stats: dict[str, Any] = {}
        self.starts = 0

    def command(self) -> list[str]:
        return [sys.executable, "-m", "middleware", "worker", "--parent", str(os.getpid())]

    def wake(self, letter: bytes) -> None:
        proc = self.proc
        if proc is None or proc.stdin is None or proc.returncode is not None:
            return
        transport = proc.stdin.transport
        if transport.is_closing() or transport.get_write_buffer_size() > 4096:  # it has plenty of wake-ups queued
            return
        proc.stdin.write(letter)

    async def run(self) -> None:
        """Start the worker and keep it running until cancelled."""
        delay = 1.0
        try:
            while True:
                started = time.monotonic()
                self.proc = await asyncio.create_subprocess_exec(
                    *self.command(), env=self.env, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
                self.starts += 1
                reader = asyncio.create_task(self._read(self.proc))
                rc = await self.proc.wait()
                await asyncio.gather(reader, return_exceptions=True)
                if self.fault and rc in (137, -9):
                    log.error("worker process ended by the fault hook", extra={"action": "worker.fault_exit"})
                    os._exit(137)
                if time.monotonic() - started > 60:
                    delay = 1.0
                log.error("worker process exited; restarting", extra={"action": "worker.exited", "status": rc, "retry_s": delay})
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)
        finally:
            await self.stop()

    async def _read(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        out = sys.stdout.buffer
        async for line in proc.stdout:
            if line.startswith(STATS_PREFIX):
                try:
                    self.stats = json.loads(line[len(STATS_PREFIX):])
                except ValueError:
                    pass
                continue
            out.write(line)
            out.flush()

    async def stop(self, timeout_s: float = 10.0) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.returncode is not None:
            return
        if proc.stdin is not None:
            proc.stdin.close()  # end of file: the worker stops (as on SIGTERM)
        try:
            proc.terminate()
            await asyncio.wait_for(asyncio.shield(proc.wait()), timeout_s)
        except ProcessLookupError:
            pass
        except TimeoutError:
            proc.kill()
            await proc.wait()

    def counter(self, name: str) -> float:
        return float(self.stats.get(name, 0))


def worker_env(settings: Settings) -> dict[str, str]:
    """The worker process's environment: this one with the settings given on ``serve``'s command line."""
    env = dict(os.environ)
    for key in ("database_url", "mappings_dir", "http_host", "http_port", "mllp_host", "mllp_port", "api_token"):
        value = getattr(settings, key, None)
        if value is not None:
            env[f"CARELOOP_{key.upper()}"] = str(value)
    return env


class Runtime:
    """Everything a running careloop needs, built from settings (nothing at import time)."""

    def __init__(self, settings: Settings, *, clock: Callable[[], datetime] | None = None, engine: Engine | None = None) -> None:
        self.settings = settings
        self.clock = clock or (lambda: datetime.now(timezone.utc))
        rs, diags = load_ruleset(settings.mappings_dir)
        if rs is None:
            raise ConfigError([d for d in diags if d.level == "error"])
        self._ruleset = rs
        if engine is None:
            self.engine = open_database(settings.database_url)  # refuses an older or newer schema (SchemaError)
        else:
            self.engine = engine
            ensure_current(engine, self_upgrade=is_embedded(settings.database_url))
        guard_append_only()
        stamp_unassigned_rows(self.engine)  # rows a previous release wrote during a rolling upgrade
        self.fault = fault_hook_from_env()
        self.wake_process = asyncio.Event()
        self.wake_schedule = asyncio.Event()
        self.wake_deliver = asyncio.Event()
        self.loop: asyncio.AbstractEventLoop | None = None
        self.meters = Meters()
        self.writer = InboxWriter(self.engine, on_commit=self._signal(self.wake_process), fault_hook=self.fault,
                                  on_stored=self.meters.on_stored,
                                  spool=settings.run_worker if settings.ingest_spool is None else settings.ingest_spool)
        self.scheduler = Scheduler(self.engine, self.ruleset, clock=self.clock, on_deliveries=self._threadsafe(self.wake_deliver))
        # triggers due now fire in the processing batch's transaction (issue 16: one write transaction less per batch)
        self.processor = Processor(self.engine, self.ruleset, clock=self.clock, on_due=self._threadsafe(self.wake_schedule),
                                   scheduler=self.scheduler)
        self.delivery = DeliveryWorker(
            self.engine, self.ruleset, contact_secret=contact_keyring(settings).current.secret, clock=self.clock,
            link_base=f"http://{settings.http_host}:{settings.http_port}", fault_hook=self.fault,
            own_ports=(settings.http_port, settings.mllp_port, *(p for s in rs.sources.items for p in s.hl7.ports)),
        )
        from .pipeline.reconcile import Reconciler
        from .pipeline.fhir_handler import FhirHandler

        self.reconciler = Reconciler(self.engine, self.writer, lambda: self.sources, clock=self.clock,
                                     fetch_timeout_s=settings.fhir_request_timeout_s,
                                     sweep_timeout_s=settings.fhir_sweep_timeout_s)
        self.processor.handlers["fhir"] = FhirHandler(self.reconciler)
        self.processor.fault_hook = self.fault
        self.scheduler.fault_hook = self.fault
        self.mllp: MllpListener | None = None
        self.http_server: object | None = None
        self.https: ReloadingTls | None = None  # serve(): HTTPS on the HTTP port, its certificate reloaded
        self.extra_handlers_installed = False
        self.started_at = self.clock()
        self.worker_process: WorkerProcess | None = None  # serve(worker_process=True): the worker runs there

    # -- rule set ---------------------------------------------------------
    def ruleset(self) -> RuleSet:
        return self._ruleset

    @property
    def sources(self) -> Sources:
        return self._ruleset.sources

    def reload(self) -> list[Diagnostic]:
        """Load the mappings again; keep the running set when the new one has errors.

        On success the pending triggers of changed or removed rules follow each rule's
        ``on_rule_change`` (keep / reevaluate / cancel; ``pipeline.replay``).
        """
        rs, diags = load_ruleset(self.settings.mappings_dir)
        if rs is None:
            log.error("reload refused", extra={"action": "mappings.reload_refused", "count": len(diags)})
            return [d for d in diags if d.level == "error"]
        old, self._ruleset = self._ruleset, rs
        if old.version != rs.version:
            from .pipeline.replay import apply_rule_changes

            try:
                apply_rule_changes(self.engine, old, rs, self.clock())
            except Exception as exc:  # the new set is live either way; the policy is retried on the next reload
                log.error("rule-change policy failed", extra={"action": "mappings.rule_change_failed", "error_type": type(exc).__name__})
        log.info("mappings reloaded", extra={"action": "mappings.reloaded", "version": rs.version})
        if self.worker_process is not None:
            self.worker_process.wake(b"r")
        return []

    def reload_on_signal(self) -> None:
        """SIGHUP: reload, and write the admin-audit row (actor ``careloop``, channel ``service``)."""
        from .delivery.admin_audit import record

        errors = self.reload()
        try:
            record(self.engine, actor="careloop", role="system", channel="service", action="mappings.reload",
                   outcome="refused" if errors else "ok", target_kind="ruleset", target_id=self.ruleset().version,
                   detail={"signal": "SIGHUP", **({"errors": len(errors)} if errors else {})})
        except Exception as exc:
            log.error("admin audit not written", extra={"action": "admin_audit.error", "error_type": type(exc).__name__})

    # -- what the worker did (here, or in the worker process) ---------------
    def worker_counts(self) -> dict[str, float]:
        """Messages processed/failed and triggers fired by this process's worker plus ``serve``'s worker process."""
        wp, own = self.worker_process, self.worker_stats()
        return {k: float(own[k]) + (wp.counter(k) if wp else 0.0) for k in ("processed", "failed", "fired")}

    def worker_mode(self) -> str:
        """Where this service's worker runs: ``process`` (a child, running), ``restarting`` (its
        child is down), ``in-process`` (this process's threads) or ``none`` (``--no-worker``)."""
        wp = self.worker_process
        if wp is not None:
            return "process" if wp.proc is not None and wp.proc.returncode is None else "restarting"
        return "in-process" if self.settings.run_worker else "none"

    def breaker_states(self) -> dict[str, dict[str, Any]]:
        """Each destination whose circuit breaker is not ``closed``: ``{state, failures, auth_blocked}``
        (the delivery worker's: this process's, or the worker process's as it last reported)."""
        states = self._own_breakers()
        if self.worker_process is not None:
            states.update(self.worker_process.stats.get("breakers", {}))
        return states

    def _own_breakers(self) -> dict[str, dict[str, Any]]:
        return {name: {"state": br.state, "failures": br.failures, "auth_blocked": br.auth_blocked}
                for name, br in self.delivery.breakers.items() if br.state != "closed"}

    def worker_stats(self) -> dict[str, Any]:
        """What ``careloop worker --parent`` reports to ``serve`` (its counters and breaker states)."""
        return {"processed": self.processor.processed, "failed": self.processor.failed, "fired": self.scheduler.fired,
                "breakers": self._own_breakers()}

    # -- wake-ups ---------------------------------------------------------
    def _signal(self, ev: asyncio.Event) -> Callable[[], None]:
        return ev.set

    def _threadsafe(self, ev: asyncio.Event) -> Callable[[], None]:
        def fire() -> None:
            if self.loop is not None:
                self.loop.call_soon_threadsafe(ev.set)
        return fire

    # -- loops ------------------------------------------------------------
    async def _loop(self, ev: asyncio.Event, step: Callable[[], object], interval: float, name: str) -> None:
        while True:
            # asyncio.timeout, not wait_for: on 3.11 wait_for swallows a cancel that lands with
            # the event (CPython gh-86296), and the loop then never ends (issue 11, item 8)
            try:
                async with asyncio.timeout(interval):
                    await ev.wait()
            except TimeoutError:
                pass
            ev.clear()
            try:
                while True:
                    res = step()
                    n = await res if asyncio.iscoroutine(res) else res
                    if not n:
                        break
                    await asyncio.sleep(0)  # let the loop run between batches (the write lock itself hands over in arrival order)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.error("worker step failed", extra={"action": f"{name}.error", "error_type": type(exc).__name__}, exc_info=True)
                await asyncio.sleep(1.0)

    def _audit_retention(self, report: object) -> None:
        """Admin-audit an automatic retention run that purged something (empty hourly runs are not rows)."""
        from .delivery.admin_audit import record

        counts = report.as_dict()  # type: ignore[attr-defined]
        if not any(v for k, v in counts.items() if k != "cutoff"):
            return
        record(self.engine, actor="careloop", role="system", channel="service", action="retention.run",
               target_kind="retention", target_id=f"{self.settings.retention_days}d",
               detail=counts)

    def purge_console_sessions(self) -> int:
        """Delete console sessions that are idle too long or past their end (each is also refused on lookup)."""
        from .console.sessions import purge_expired

        return purge_expired(self.engine, time.time(), self.settings.console_idle_timeout_s)

    async def _every(self, every_s: float, work: Callable[[], Awaitable[object]], what: str, action: str,
                     level: int = logging.ERROR) -> None:
        """Run ``work`` every ``every_s`` until cancelled; a failure is logged (``what`` failed,
        ``action``) and the work is tried again on the next round."""
        while True:
            try:
                await work()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.log(level, f"{what} failed", extra={"action": action, "error_type": type(exc).__name__})
            await asyncio.sleep(every_s)

    async def _checkpoint_loop(self, every_s: float = 0.25) -> None:
        """SQLite: WAL checkpoints in a thread of their own, off every commit's path (commits run
        none themselves: ``storage.db.checkpoints_off_the_write_path``); a busy or failed one is
        retried on the next round."""
        from .storage.db import wal_checkpoint

        await self._every(every_s, lambda: asyncio.to_thread(wal_checkpoint, self.engine), "checkpoint",
                          "storage.checkpoint_error", logging.WARNING)

    async def _retention_loop(self, every_s: float = 3600.0) -> None:
        """Purge raw messages and payload bodies older than ``retention_days``, and expired console
        sessions, hourly (audit kept)."""
        async def once() -> None:
            report = await asyncio.to_thread(purge, self.engine, now=self.clock().timestamp(), days=self.settings.retention_days)
            await asyncio.to_thread(self._audit_retention, report)
            await asyncio.to_thread(self.purge_console_sessions)

        await self._every(every_s, once, "retention", "retention.error")

    async def _outcomes_loop(self, every_s: float = 60.0) -> None:
        """Settle journey entries whose goal window has closed (``missed`` unless an event says
        otherwise), every minute, in bounded batches (outcomes/track.py)."""
        from .outcomes.track import close_windows

        async def once() -> None:
            while await asyncio.to_thread(close_windows, self.engine, self.ruleset(), self.clock()):
                pass

        await self._every(every_s, once, "outcome windows", "outcomes.error")

    async def _rollup_loop(self, every_s: float = 60.0) -> None:
        """The console overview's per-minute rollups (``storage/queries/rollups.py``), brought up to
        date every minute from id watermarks: an index range read of the new rows only."""
        from .storage.queries.rollups import fill

        await self._every(every_s, lambda: asyncio.to_thread(fill, self.engine, self.clock().timestamp()),
                          "console rollups", "console.rollup_error")

    async def _reconcile(self) -> None:
        """The FHIR reconciler (``pipeline/reconcile.py``), restarted after an unexpected error."""
        while True:
            try:
                await self.reconciler.run()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.error("reconciler failed", extra={"action": "fhir.reconcile_error", "error_type": type(exc).__name__}, exc_info=True)
                await asyncio.sleep(5.0)

    async def start_workers(self, *, standalone: bool = False, loops: bool = True) -> list[asyncio.Task[None]]:
        """Start the inbox writer and (unless ``run_worker`` is off, or ``loops`` is false: the worker
        runs in a process of its own) the worker loops.

        ``standalone`` (``careloop worker``): no listener in this process wakes the processing
        loop after a commit, so it polls at ``worker_poll_interval_s`` instead of 5x that.
        """
        self.loop = asyncio.get_running_loop()
        tasks = [asyncio.create_task(self.writer.run(), name="inbox-writer")]
        from .storage.db import checkpoints_off_the_write_path

        if checkpoints_off_the_write_path(self.engine):
            tasks.append(asyncio.create_task(self._checkpoint_loop(), name="wal-checkpoint"))
        if loops and (self.settings.run_worker or standalone):
            poll = max(self.settings.worker_poll_interval_s, 0.05)
            # the scheduler polls often enough that a trigger fires well within a second of its due time
            sched_every = min(1.0, 2 * poll)
            tasks += [
                asyncio.create_task(self._loop(self.wake_process, lambda: asyncio.to_thread(self.processor.run_once),
                                               poll if standalone else poll * 5, "process")),
                asyncio.create_task(self._loop(self.wake_schedule, lambda: asyncio.to_thread(self.scheduler.fire_due),
                                               sched_every, "schedule")),
                asyncio.create_task(self._loop(self.wake_deliver, self.delivery.run_once, 1.0, "deliver")),
                asyncio.create_task(self._retention_loop(), name="retention"),
                asyncio.create_task(self._outcomes_loop(), name="outcome-windows"),
                asyncio.create_task(self._rollup_loop(), name="console-rollups"),
                asyncio.create_task(self._reconcile(), name="fhir-reconcile"),
            ]
        return tasks

    def install_metrics(self) -> None:
        """Register the database and runtime collectors (``collectors.py``) on this process's
        registry: ``GET /metrics`` does it on first scrape, ``careloop worker --metrics-port`` here."""
        from .collectors import install

        install(self)

    async def work(self, *, parent: int | None = None) -> None:
        """``careloop worker``: processing, scheduler and delivery loops only (no listeners), until
        SIGTERM/SIGINT. Safe to run many against one PostgreSQL: every claim is ``FOR UPDATE SKIP LOCKED``.

        ``parent`` (``serve``'s worker process, :class:`WorkerProcess`): wake-ups arrive on stdin (its
        end of file stops the worker), and the counters go to stdout a few times a second."""
        self.loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        if parent is not None:
            self._listen_to_parent(stop)
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches serve, which ends this process
        for sig in (signal.SIGTERM,) if parent is not None else (signal.SIGTERM, signal.SIGINT):
            try:
                self.loop.add_signal_handler(sig, stop.set)
            except (NotImplementedError, RuntimeError):
                pass
        try:
            self.loop.add_signal_handler(signal.SIGHUP, self.reload_on_signal)
        except (NotImplementedError, RuntimeError):
            pass
        tasks = await self.start_workers(standalone=True)
        if parent is not None:
            tasks.append(asyncio.create_task(self._report_to_parent(), name="worker-stats"))
        log.info("careloop worker running", extra={"action": "worker.start"})
        try:
            await stop.wait()
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self.delivery.aclose()

    def _listen_to_parent(self, stop: asyncio.Event) -> None:
        assert self.loop is not None
        events = {"process": self.wake_process, "schedule": self.wake_schedule, "deliver": self.wake_deliver}
        fd = sys.stdin.fileno()
        os.set_blocking(fd, False)

        def readable() -> None:
            try:
                data = os.read(fd, 4096)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:  # serve has gone
                assert self.loop is not None
                self.loop.remove_reader(fd)
                stop.set()
                return
            for b in set(data):
                what = WAKE_LETTERS.get(bytes((b,)))
                if what == "reload":
                    self.reload()
                elif what is not None:
                    events[what].set()

        self.loop.add_reader(fd, readable)

    async def _report_to_parent(self, every_s: float = 0.2) -> None:
        last = None
        out = sys.stdout.buffer
        while True:
            stats = self.worker_stats()
            if stats != last:
                out.write(STATS_PREFIX + json.dumps(stats, separators=(",", ":")).encode() + b"\n")
                out.flush()
                last = stats
            await asyncio.sleep(every_s)

    def _mllp_listener(self, port: int) -> MllpListener:
        """The MLLP listener on ``port`` with its `listeners:` settings (limits, TLS, PROXY protocol)."""
        cfg = self.sources.listener(port)
        return MllpListener(
            sources=self.sources, writer=self.writer, host=cfg.host or self.settings.mllp_host, port=port,
            max_message_bytes=self.settings.mllp_max_message_bytes, idle_timeout_s=self.settings.mllp_idle_timeout_s,
            fault_hook=self.fault, config=cfg, sources_now=lambda: self.sources,
            max_batch_bytes=self.settings.hl7_max_batch_bytes, max_batch_messages=self.settings.hl7_max_batch_messages,
        )

    def http_app(self) -> Any:
        """The HTTP application: the API (``/api``, ``/fhir``, ``/hl7v2``, ``/metrics``) and the console's pages."""
        from .api.app import create_app
        from .console import mount

        app = create_app(self)
        mount(app)
        return app

    async def serve(self, *, worker_process: bool = False) -> None:
        """Run HTTP, MLLP and workers until cancelled or signalled.

        ``worker_process`` (``careloop serve``'s default): the worker loops run in a child process
        (:class:`WorkerProcess`) instead of this one's threads."""
        import uvicorn

        self.loop = asyncio.get_running_loop()
        child = worker_process and self.settings.run_worker
        tasks = await self.start_workers(loops=not child)
        if child:
            wp = self.worker_process = WorkerProcess(worker_env(self.settings), fault=self.fault is not None)
            self.wake_process, self.wake_schedule, self.wake_deliver = (
                _Forwarding(wp, b"p"), _Forwarding(wp, b"s"), _Forwarding(wp, b"d"))
            self.writer.on_commit = self.wake_process.set
            tasks.append(asyncio.create_task(wp.run(), name="worker-process"))
        self.mllp = self._mllp_listener(self.settings.mllp_port)
        await self.mllp.start()
        # every other MLLP port (a source's hl7.ports, a `listeners:` entry) gets its own listener
        self.extra_mllp: list[MllpListener] = []
        for port in self.sources.mllp_ports() - {self.mllp.port}:
            extra = self._mllp_listener(port)
            await extra.start()
            self.extra_mllp.append(extra)
        app = self.http_app()
        from .console.https import ReloadingTls, proxy_options

        s = self.settings
        config = uvicorn.Config(app, host=s.http_host, port=s.http_port, log_level="warning", lifespan="on",
                                access_log=False, **proxy_options(s.trusted_proxies))
        if s.tls_cert_file is not None and s.tls_key_file is not None:
            # HTTP over TLS with one live context whose certificate is reloaded when the files change
            self.https = ReloadingTls(s.tls_cert_file, s.tls_key_file)
            config.load()
            config.ssl = self.https.context
            tasks.append(asyncio.create_task(self.https.watch(), name="https-cert-watch"))
        server = uvicorn.Server(config)
        self.http_server = server
        try:
            self.loop.add_signal_handler(signal.SIGHUP, self.reload_on_signal)
        except (NotImplementedError, RuntimeError):
            pass
        log.info("careloop serving", extra={"action": "serve.start", "port": self.settings.http_port})
        try:
            await server.serve()
        finally:
            await self.mllp.close()
            for extra in getattr(self, "extra_mllp", []):
                await extra.close()
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self.delivery.aclose()
