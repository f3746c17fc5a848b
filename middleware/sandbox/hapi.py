"""Process management for the HAPI FHIR sandbox (``careloop sandbox up/down/status``).

Two runtimes:

* ``java`` — our launcher in ``sandbox/hapi/`` (HAPI FHIR 8.8.0, Spring Boot 3.5.9, H2 in
  memory), built with Maven into ``sandbox/hapi/target/careloop-hapi-sandbox.jar`` and started
  as a detached ``java -Xmx1g -jar`` process. Needs Java 17+ and ``mvn``.
* ``docker`` — ``docker compose up -d hapi`` with the repository's ``docker-compose.yml``
  (image ``careloop/hapi-sandbox:8.8.0``, the same launcher built by ``sandbox/hapi/Dockerfile``;
  the stock ``hapiproject/hapi`` R4 image lacks ``SubscriptionTopicConfig``). Chosen only when a Docker *engine* answers
  ``docker info``; a bare client is not enough.

State lives in a work directory (default ``.careloop/sandbox``): ``hapi.pid``, ``hapi.json``
and ``hapi.log``. ``hapi.json`` carries a ``run_id`` made at each start (also on the java
command line), so :func:`running` can tell this sandbox's server from any other FHIR server
on the port. ``start`` is idempotent: when the recorded server is running and answers
``GET /fhir/metadata`` it returns the existing handle; a FHIR server it did not start is
refused, never adopted. The server binds ``127.0.0.1`` unless ``bind`` says otherwise.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import httpx

Runtime = Literal["docker", "java"]

DEFAULT_PORT = 8090
#: the address the java runtime listens on (``--server.address``) and compose publishes on
DEFAULT_BIND = "127.0.0.1"
#: seconds one ``GET /metadata`` probe may take
PROBE_TIMEOUT_S = 5.0
DEFAULT_WORKDIR = Path(".careloop/sandbox")
JAVA_HEAP = "-Xmx1g"
JAR_NAME = "careloop-hapi-sandbox.jar"
COMPOSE_SERVICE = "hapi"

_PID_FILE = "hapi.pid"
_STATE_FILE = "hapi.json"
_LOG_FILE = "hapi.log"


class SandboxError(RuntimeError):
    """The sandbox could not be built, started, reached or stopped."""


@dataclass(frozen=True)
class SandboxHandle:
    """A running sandbox server.

    ``pid`` is None for the docker runtime or for a server this module did not start;
    ``started_in_s`` is the time from process start to the first ``/metadata`` 200
    (None when ``start(wait=False)`` was used and readiness was not awaited).
    """

    base_url: str
    pid: int | None
    log_path: Path
    started_in_s: float | None
    runtime: Runtime = "java"
    port: int = DEFAULT_PORT
    reused: bool = False
    run_id: str | None = None
    bind: str = DEFAULT_BIND


@dataclass(frozen=True)
class SandboxStatus:
    """What ``status`` found in the work directory and on the port."""

    state: Literal["running", "starting", "stopped", "dead"]
    base_url: str | None
    pid: int | None
    runtime: Runtime | None
    log_path: Path | None
    healthy: bool
    run_id: str | None = None


# --------------------------------------------------------------------------- paths


def repo_root() -> Path:
    """The repository root (``CARELOOP_REPO_ROOT`` overrides; default: two levels above this package)."""
    env = os.environ.get("CARELOOP_REPO_ROOT")
    if env:
        return Path(env).resolve()
    return Path(__file__).resolve().parents[2]


def launcher_dir() -> Path:
    """Directory of the Maven launcher project (``sandbox/hapi``)."""
    return repo_root() / "sandbox" / "hapi"


def jar_path() -> Path:
    """Where ``build_launcher`` puts the executable jar."""
    return launcher_dir() / "target" / JAR_NAME


def base_url_for(port: int, bind: str = DEFAULT_BIND) -> str:
    """The FHIR base URL of a sandbox on ``port`` listening on ``bind`` (loopback for a wildcard)."""
    host = "127.0.0.1" if bind in ("", "0.0.0.0", "::") else bind
    return f"http://[{host}]:{port}/fhir" if ":" in host else f"http://{host}:{port}/fhir"


def java_command(java: str, jar: Path, port: int, bind: str, run_id: str) -> list[str]:
    """The launcher's command line: port, listen address, and the run id that marks it ours."""
    return [java, JAVA_HEAP, "-jar", str(jar), f"--server.port={port}", f"--server.address={bind}",
            f"--careloop.sandbox.run-id={run_id}"]


# --------------------------------------------------------------------------- runtime detection


def java_major_version(java: str = "java") -> int | None:
    """Major version of ``java`` on PATH (17 for "17.0.15", 8 for "1.8.0_x"), or None."""
    exe = shutil.which(java)
    if exe is None:
        return None
    try:
        out = subprocess.run(
            [exe, "-version"], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    m = re.search(r'version "(\d+)(?:\.(\d+))?', out.stderr + out.stdout)
    if not m:
        return None
    major = int(m.group(1))
    if major == 1 and m.group(2):  # "1.8.0_392" -> 8
        major = int(m.group(2))
    return major


def docker_engine_available() -> bool:
    """True when ``docker info`` succeeds, i.e. a Docker engine actually runs."""
    exe = shutil.which("docker")
    if exe is None:
        return False
    try:
        res = subprocess.run(
            [exe, "info"], capture_output=True, text=True, timeout=20, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return res.returncode == 0


def java_toolchain_available() -> bool:
    """True when Java 17+ and Maven (``mvn``) are on PATH."""
    major = java_major_version()
    return major is not None and major >= 17 and shutil.which("mvn") is not None


def detect_runtime() -> Runtime | None:
    """Pick the runtime: ``CARELOOP_SANDBOX_RUNTIME`` if set, else docker (engine running), else java.

    Returns None when neither a running Docker engine nor Java 17+ with Maven is present.
    """
    forced = os.environ.get("CARELOOP_SANDBOX_RUNTIME", "").strip().lower()
    if forced in ("docker", "java"):
        ok = docker_engine_available() if forced == "docker" else java_toolchain_available()
        return forced if ok else None  # type: ignore[return-value]
    if docker_engine_available():
        return "docker"
    if java_toolchain_available():
        return "java"
    return None


# --------------------------------------------------------------------------- build


def _newest_source_mtime(root: Path) -> float:
    newest = (root / "pom.xml").stat().st_mtime
    src = root / "src"
    if src.is_dir():
        for p in src.rglob("*"):
            if p.is_file():
                newest = max(newest, p.stat().st_mtime)
    return newest


def launcher_is_stale() -> bool:
    """True when the jar is missing or older than ``pom.xml`` or any file under ``src/``."""
    jar = jar_path()
    if not jar.is_file():
        return True
    return jar.stat().st_mtime < _newest_source_mtime(launcher_dir())


def build_launcher(force: bool = False, timeout_s: float = 1800) -> Path:
    """Build the executable jar with ``mvn -B -q -DskipTests package`` if needed; return its path.

    Skipped when the jar is newer than the pom and sources (unless ``force``). Maven's
    ``~/.m2`` cache is reused, so only the first build downloads (~330 MB).
    """
    root = launcher_dir()
    if not (root / "pom.xml").is_file():
        raise SandboxError(f"launcher project not found at {root} (run from a careloop checkout)")
    jar = jar_path()
    if not force and not launcher_is_stale():
        return jar
    mvn = shutil.which("mvn")
    if mvn is None:
        raise SandboxError("Maven ('mvn') is not on PATH; install it (Debian: apt-get install maven)")
    try:
        res = subprocess.run(
            [mvn, "-B", "-q", "-DskipTests", "package"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise SandboxError(f"Maven build timed out after {timeout_s:.0f} s") from exc
    if res.returncode != 0 or not jar.is_file():
        tail = "\n".join((res.stdout + res.stderr).splitlines()[-40:])
        raise SandboxError(f"Maven build failed (exit {res.returncode}):\n{tail}")
    # `mvn package` may leave the jar's mtime unchanged when nothing changed; touch it so the
    # staleness check is stable.
    jar.touch()
    return jar


# --------------------------------------------------------------------------- health


def is_healthy(base_url: str, timeout_s: float = PROBE_TIMEOUT_S) -> bool:
    """True when ``GET {base_url}/metadata`` answers 200 with a CapabilityStatement."""
    try:
        r = httpx.get(
            f"{base_url.rstrip('/')}/metadata",
            headers={"Accept": "application/fhir+json"},
            timeout=timeout_s,
        )
    except httpx.HTTPError:
        return False
    if r.status_code != 200:
        return False
    try:
        return bool(r.json().get("resourceType") == "CapabilityStatement")
    except ValueError:
        return False


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (our own exited child not yet reaped) still "exists": treat as dead.
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        if stat.rsplit(")", 1)[1].split()[0] == "Z":
            return False
    except (OSError, IndexError):
        pass
    return True


def _is_our_java(pid: int, run_id: str | None = None) -> bool:
    """Guard against a recycled pid: the process must be a java running our jar (and this run)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return _pid_alive(pid)  # no /proc (not Linux): trust the pid file
    if not any(JAR_NAME.encode() in part for part in cmdline):
        return False
    return run_id is None or f"--careloop.sandbox.run-id={run_id}".encode() in cmdline


def _log_tail(path: Path | None, lines: int = 30) -> str:
    if path is None or not path.is_file():
        return ""
    text = path.read_text(errors="replace").splitlines()
    return "\n".join(text[-lines:])


def wait_ready(
    base_url: str,
    deadline_s: float = 300,
    pid: int | None = None,
    log_path: Path | None = None,
    interval_s: float = 0.5,
) -> float:
    """Poll ``GET {base_url}/metadata`` until it answers 200; return the seconds waited.

    Each probe is cut to the time left, so the wait ends within ``deadline_s`` (plus one
    ``interval_s``). Raises SandboxError naming the URL and the wait when the deadline
    passes, or when ``pid`` (if given) exits first.
    """
    t0 = time.monotonic()
    while True:
        left = deadline_s - (time.monotonic() - t0)
        if left > 0 and is_healthy(base_url, timeout_s=max(0.1, min(PROBE_TIMEOUT_S, left))):
            return time.monotonic() - t0
        if pid is not None and not _pid_alive(pid):
            raise SandboxError(
                f"HAPI process {pid} exited before {base_url} became ready; log tail:\n"
                + _log_tail(log_path)
            )
        if time.monotonic() - t0 >= deadline_s:
            tail = _log_tail(log_path)
            raise SandboxError(
                f"timed out after {deadline_s:g} s waiting for the HAPI sandbox to answer "
                f"GET {base_url}/metadata with a CapabilityStatement" + (f"; log tail:\n{tail}" if tail else "")
            )
        time.sleep(min(interval_s, max(0.0, deadline_s - (time.monotonic() - t0))))


# --------------------------------------------------------------------------- state files


def _read_state(workdir: Path) -> dict[str, Any] | None:
    p = workdir / _STATE_FILE
    if not p.is_file():
        return None
    try:
        data = json.loads(p.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _write_state(workdir: Path, handle: SandboxHandle, started_at: float) -> None:
    data = asdict(handle)
    data["log_path"] = str(handle.log_path)
    data["started_at"] = started_at
    data.pop("reused", None)
    (workdir / _STATE_FILE).write_text(json.dumps(data, indent=2) + "\n")
    if handle.pid is not None:
        (workdir / _PID_FILE).write_text(f"{handle.pid}\n")


def _clear_state(workdir: Path) -> None:
    for name in (_STATE_FILE, _PID_FILE):
        try:
            (workdir / name).unlink()
        except FileNotFoundError:
            pass


def _handle_from_state(state: dict[str, Any], reused: bool) -> SandboxHandle:
    return SandboxHandle(
        base_url=state["base_url"],
        pid=state.get("pid"),
        log_path=Path(state["log_path"]),
        started_in_s=state.get("started_in_s"),
        runtime=state.get("runtime", "java"),
        port=int(state.get("port", DEFAULT_PORT)),
        reused=reused,
        run_id=state.get("run_id"),
        bind=state.get("bind", DEFAULT_BIND),
    )


def _port_in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(1.0)
        return s.connect_ex(("127.0.0.1", port)) == 0


# --------------------------------------------------------------------------- compose


def _compose_command() -> list[str]:
    docker = shutil.which("docker")
    if docker is not None:
        probe = subprocess.run(
            [docker, "compose", "version"], capture_output=True, text=True, check=False
        )
        if probe.returncode == 0:
            return [docker, "compose"]
    legacy = shutil.which("docker-compose")
    if legacy is not None:
        return [legacy]
    raise SandboxError("neither 'docker compose' nor 'docker-compose' is available")


def _compose(args: list[str], port: int, timeout_s: float = 900,
             bind: str = DEFAULT_BIND) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, CARELOOP_SANDBOX_PORT=str(port), CARELOOP_SANDBOX_BIND=bind)
    cmd = _compose_command() + ["-f", str(repo_root() / "docker-compose.yml"), *args]
    res = subprocess.run(
        cmd, cwd=repo_root(), env=env, capture_output=True, text=True, timeout=timeout_s, check=False
    )
    if res.returncode != 0:
        raise SandboxError(f"{' '.join(cmd)} failed (exit {res.returncode}):\n{res.stderr[-4000:]}")
    return res


# --------------------------------------------------------------------------- start / stop / status


def start(
    port: int = DEFAULT_PORT,
    workdir: Path = DEFAULT_WORKDIR,
    runtime: Runtime | None = None,
    wait: bool = True,
    deadline_s: float = 300,
    bind: str = DEFAULT_BIND,
    adopt_foreign: bool = False,
) -> SandboxHandle:
    """Start the sandbox (or return the one already running) and, by default, wait until ready.

    java runtime: builds the jar if stale, then runs :func:`java_command` detached (own
    session), output to ``workdir/hapi.log``, pid in ``workdir/hapi.pid``, a new ``run_id``
    in ``workdir/hapi.json``. docker runtime: ``docker compose up -d hapi`` (published on
    ``bind``:``port``). A FHIR server already answering on the port that this work directory
    did not start raises SandboxError, unless ``adopt_foreign`` (tests that share a server).
    """
    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    base_url = base_url_for(port, bind)
    log_path = workdir / _LOG_FILE

    reused = _reuse_recorded(workdir, wait, deadline_s)
    if reused is not None:
        return reused

    if is_healthy(base_url):
        if adopt_foreign:
            return SandboxHandle(base_url, None, log_path, None, runtime or "java", port, reused=True, bind=bind)
        raise SandboxError(f"{base_url} already answers as a FHIR server that this sandbox did not start "
                           f"(nothing recorded in {workdir}); stop it or choose another --port")
    if _port_in_use(port):
        raise SandboxError(f"port {port} is in use by something that is not a FHIR server")

    chosen = runtime or detect_runtime()
    if chosen is None:
        raise SandboxError("no sandbox runtime: need a running Docker engine, or Java 17+ and Maven")

    run_id = uuid.uuid4().hex
    started_at = time.time()
    if chosen == "docker":
        _compose(["up", "-d", COMPOSE_SERVICE], port, bind=bind)
        handle = SandboxHandle(base_url, None, log_path, None, "docker", port, run_id=run_id, bind=bind)
        _write_state(workdir, handle, started_at)
        if wait:
            waited = wait_ready(base_url, deadline_s)
            handle = SandboxHandle(base_url, None, log_path, round(waited, 2), "docker", port, run_id=run_id, bind=bind)
            _write_state(workdir, handle, started_at)
        return handle

    jar = build_launcher()
    java = shutil.which("java")
    if java is None:
        raise SandboxError("java is not on PATH")
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            java_command(java, jar, port, bind, run_id),
            cwd=workdir,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    started_at = time.time()
    handle = SandboxHandle(base_url, proc.pid, log_path, None, "java", port, run_id=run_id, bind=bind)
    _write_state(workdir, handle, started_at)
    if wait:
        try:
            waited = wait_ready(base_url, deadline_s, pid=proc.pid, log_path=log_path)
        except SandboxError:
            stop(workdir)
            raise
        handle = SandboxHandle(base_url, proc.pid, log_path, round(waited, 2), "java", port, run_id=run_id, bind=bind)
        _write_state(workdir, handle, started_at)
    return handle


def _reuse_recorded(workdir: Path, wait: bool, deadline_s: float) -> SandboxHandle | None:
    """The server recorded in ``workdir`` when it still runs (waiting for it if it boots); else None."""
    state = _read_state(workdir)
    if state is None:
        return None
    pid = state.get("pid")
    alive = pid is None or (_pid_alive(pid) and _is_our_java(pid, state.get("run_id")))
    if alive and is_healthy(state["base_url"]):
        return _handle_from_state(state, reused=True)
    if alive and pid is not None and not wait:
        # Still booting and the caller does not want to wait: report it, never start twice.
        return _handle_from_state(state, reused=True)
    if alive and pid is not None and wait:
        # Started earlier and still booting: wait for it instead of starting a second one.
        waited = wait_ready(state["base_url"], deadline_s, pid=pid, log_path=Path(state["log_path"]))
        state["started_in_s"] = state.get("started_in_s") or round(
            time.time() - float(state.get("started_at", time.time() - waited)), 2
        )
        handle = _handle_from_state(state, reused=True)
        _write_state(workdir, handle, float(state.get("started_at", time.time())))
        return handle
    _clear_state(workdir)
    return None


def running(workdir: Path = DEFAULT_WORKDIR) -> SandboxHandle | None:
    """The sandbox this work directory started, if it is alive and answers; else None.

    "Ours" means: ``hapi.json`` has a ``run_id``; for the java runtime the recorded pid is a
    live java running our jar with that run id on its command line; and the recorded URL
    answers ``GET /metadata``. Anything else on the port is somebody else's server.
    """
    state = _read_state(Path(workdir).resolve())
    if state is None or not state.get("run_id"):
        return None
    pid = state.get("pid")
    if state.get("runtime") != "docker":
        if pid is None or not (_pid_alive(pid) and _is_our_java(pid, state["run_id"])):
            return None
    if not is_healthy(state["base_url"]):
        return None
    return _handle_from_state(state, reused=True)


def stop(workdir: Path = DEFAULT_WORKDIR, timeout_s: float = 30) -> bool:
    """Stop the sandbox recorded in ``workdir``; return True if something was stopped.

    java: SIGTERM to the process (its own session), SIGKILL after ``timeout_s``.
    docker: ``docker compose stop hapi``.
    """
    workdir = Path(workdir).resolve()
    state = _read_state(workdir)
    if state is None:
        return False
    stopped = False
    if state.get("runtime") == "docker":
        _compose(["stop", COMPOSE_SERVICE], int(state.get("port", DEFAULT_PORT)), bind=state.get("bind", DEFAULT_BIND))
        stopped = True
    else:
        pid = state.get("pid")
        if pid is not None and _pid_alive(pid) and _is_our_java(pid, state.get("run_id")):
            os.kill(pid, signal.SIGTERM)
            t0 = time.monotonic()
            while _pid_alive(pid) and time.monotonic() - t0 < timeout_s:
                _reap(pid)
                time.sleep(0.2)
            if _pid_alive(pid):
                os.kill(pid, signal.SIGKILL)
                t0 = time.monotonic()
                while _pid_alive(pid) and time.monotonic() - t0 < 10:
                    _reap(pid)
                    time.sleep(0.1)
            _reap(pid)
            stopped = True
    _clear_state(workdir)
    return stopped


def _reap(pid: int) -> None:
    """Collect our own child's exit status so it does not linger as a zombie."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def status(workdir: Path = DEFAULT_WORKDIR) -> SandboxStatus:
    """Report the sandbox recorded in ``workdir``: running (healthy), starting, dead or stopped."""
    workdir = Path(workdir).resolve()
    state = _read_state(workdir)
    if state is None:
        return SandboxStatus("stopped", None, None, None, None, False)
    base_url = state["base_url"]
    pid = state.get("pid")
    runtime = state.get("runtime")
    log_path = Path(state["log_path"])
    run_id = state.get("run_id")
    healthy = is_healthy(base_url)
    if runtime == "docker" or pid is None:
        return SandboxStatus("running" if healthy else "dead", base_url, pid, runtime, log_path, healthy, run_id)
    if not (_pid_alive(pid) and _is_our_java(pid, run_id)):
        return SandboxStatus("dead", base_url, pid, runtime, log_path, False, run_id)
    return SandboxStatus("running" if healthy else "starting", base_url, pid, runtime, log_path, healthy, run_id)
