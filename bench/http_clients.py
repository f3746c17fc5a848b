"""Issue 16, item 3: the HTTP client for webhook deliveries, chosen by measurement.

One command: ``python bench/http_clients.py [--posts 2000] [--runs 5] [--concurrency 1]``.

The receiver is a minimal asyncio HTTP/1.1 server in its own process (answers 200 with a small
JSON body, keep-alive), so its cost stays out of the figure. This process POSTs a signed
Standard Webhooks JSON body (the same headers careloop's webhook connector sends) ``--posts``
times over one kept-alive connection per client, and reports the client's CPU per POST (user +
sys of this process) and wall time per POST, runs interleaved:

* ``httpx``: ``httpx.AsyncClient`` (careloop's client, HTTP/1.1 over httpcore/anyio);
* ``httpx-guarded``: the same with careloop's connect-time address check (``netpolicy``) transport;
* ``httpx-aio``: careloop's delivery client since issue 16: ``httpx.AsyncClient`` on
  ``middleware.delivery.transport.AioTransport`` (aiohttp's pool, the address check in its resolver);
* ``aiohttp``: ``aiohttp.ClientSession`` with its default connector (keep-alive);
* ``aiohttp-guarded``: the same with careloop's ``GuardedResolver`` (the address check at connect);
* ``httpx-null``: ``httpx.AsyncClient`` on a transport that answers without any I/O: the cost of
  httpx's client layers alone (request building, headers, hooks, response), for attribution.

``--baseline DIR`` also runs ``DIR``'s ``netpolicy.guarded_async_client`` (for example ``/work/main``)
in a child process for each run, as ``baseline``. The load average is printed before and after.
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import hmac
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Awaitable, Callable

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
from common import PY, free_port, machine, wait_port  # noqa: E402

RECEIVER = r'''
import asyncio, sys
BODY = b'{"duplicate":false}'
RESP = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (len(BODY), BODY)
async def handle(r, w):
    try:
        while True:
            head = await r.readuntil(b"\r\n\r\n")
            n = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    n = int(line.split(b":", 1)[1])
            if n:
                await r.readexactly(n)
            w.write(RESP)
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
async def main():
    await asyncio.start_server(handle, "127.0.0.1", int(sys.argv[1]))
    await asyncio.Event().wait()
asyncio.run(main())
'''

KEY = b"k" * 32
BODY = (b'{"type":"appointment_reminder","timestamp":"2026-12-06T22:47:19.715Z","data":{"trigger_id":2,'
        b'"rule_id":"appointment-reminder-24h","purpose":"treatment-reminder","contact_key":"ck_4d521d673aa1af5938c42",'
        b'"appointment_start":"2026-12-07T01:47:19+00:00","appointment_service":"Clinic visit","reminder":"24h"}}')


def headers(i: int) -> dict[str, str]:
    wid, ts = f"cl_{i:040d}", str(int(time.time()))
    sig = base64.b64encode(hmac.new(KEY, f"{wid}.{ts}.".encode() + BODY, hashlib.sha256).digest()).decode()
    return {"content-type": "application/json", "webhook-id": wid, "webhook-timestamp": ts, "webhook-signature": f"v1,{sig}"}


async def run_httpx(url: str, n: int, conc: int, kind: str) -> tuple[float, float]:
    import httpx

    from middleware import netpolicy

    if kind == "guarded":
        client = netpolicy.guarded_async_client(netpolicy.policy(True), timeout=10.0)
    elif kind == "aio":
        from middleware.delivery.transport import delivery_client

        client = delivery_client(netpolicy.policy(True), timeout=10.0)
    elif kind == "null":
        canned = httpx.Response(200, headers={"content-type": "application/json"}, content=b'{"duplicate":false}')

        async def answer(request: httpx.Request) -> httpx.Response:
            await request.aread()
            return httpx.Response(200, headers=canned.headers, stream=httpx.ByteStream(canned.content))

        client = httpx.AsyncClient(transport=httpx.MockTransport(answer), timeout=10.0, trust_env=False)
    else:
        client = httpx.AsyncClient(timeout=10.0)

    async def post(i: int) -> None:
        r = await client.post(url, content=BODY, headers=headers(i))
        r.raise_for_status()

    try:
        return await _timed(post, n, conc)
    finally:
        await client.aclose()


async def run_aiohttp(url: str, n: int, conc: int, guarded: bool = False) -> tuple[float, float]:
    import aiohttp

    connector = None
    if guarded:
        from middleware import netpolicy
        from middleware.delivery.transport import GuardedResolver

        connector = aiohttp.TCPConnector(resolver=GuardedResolver(netpolicy.policy(True)))
    session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10), connector=connector)

    async def post(i: int) -> None:
        async with session.post(url, data=BODY, headers=headers(i)) as r:
            r.raise_for_status()
            await r.read()

    try:
        return await _timed(post, n, conc)
    finally:
        await session.close()


async def _timed(post: Callable[[int], Awaitable[None]], n: int, conc: int) -> tuple[float, float]:
    for i in range(50):  # warm up: connection open, imports, first-call paths
        await post(i)
    sem = asyncio.Semaphore(conc)

    async def one(i: int) -> None:
        async with sem:
            await post(i)

    c0, t0 = time.process_time(), time.perf_counter()
    if conc == 1:
        for i in range(n):
            await post(i)
    else:
        await asyncio.gather(*(one(i) for i in range(n)))
    return (time.process_time() - c0) / n * 1000, (time.perf_counter() - t0) / n * 1000


def _baseline(repo: str, url: str, n: int, conc: int) -> tuple[float, float]:
    """One run of ``repo``'s guarded httpx client, in a child process importing that tree."""
    code = (f"import sys; sys.path.insert(0, {repo!r}); sys.path.insert(1, {str(REPO / 'bench')!r}); import asyncio; "
            f"import http_clients as h; print(*asyncio.run(h.run_httpx({url!r}, {n}, {conc}, 'guarded')))")
    out = subprocess.run([PY, "-c", code], capture_output=True, text=True, check=True, cwd=repo).stdout.split()
    return float(out[-2]), float(out[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--posts", type=int, default=2000)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--concurrency", type=int, default=1)
    ap.add_argument("--baseline", help="a careloop tree whose guarded httpx client runs beside (e.g. /work/main)")
    args = ap.parse_args()
    port = free_port()
    recv = subprocess.Popen([PY, "-c", RECEIVER, str(port)])
    wait_port(port, 30, recv)
    url = f"http://127.0.0.1:{port}/hooks"
    print(f"# webhook POST client cost  {machine()}; {args.posts} POSTs per run, concurrency {args.concurrency}, one kept-alive "
          f"connection pool per client, receiver in its own process; load {os.getloadavg()}", flush=True)
    n, c = args.posts, args.concurrency
    runners: dict[str, Callable[[], Any]] = {
        "httpx": lambda: run_httpx(url, n, c, "plain"),
        "httpx-guarded": lambda: run_httpx(url, n, c, "guarded"),
        "httpx-aio": lambda: run_httpx(url, n, c, "aio"),
        "aiohttp": lambda: run_aiohttp(url, n, c),
        "aiohttp-guarded": lambda: run_aiohttp(url, n, c, True),
        "httpx-null": lambda: run_httpx(url, n, c, "null"),
    }
    res: dict[str, list[tuple[float, float]]] = {k: [] for k in runners}
    if args.baseline:
        res["baseline"] = []
    try:
        for run in range(args.runs):
            for name, fn in runners.items():
                cpu, wall = asyncio.run(fn())
                res[name].append((cpu, wall))
                print(f"run {run + 1} {name:16s} CPU {cpu:.3f} ms/POST  wall {wall:.3f} ms/POST", flush=True)
            if args.baseline:
                cpu, wall = _baseline(args.baseline, url, n, c)
                res["baseline"].append((cpu, wall))
                print(f"run {run + 1} {'baseline':16s} CPU {cpu:.3f} ms/POST  wall {wall:.3f} ms/POST  ({args.baseline})", flush=True)
    finally:
        recv.terminate()
        recv.wait(10)
    print()
    for name, v in res.items():
        cpus, walls = [c for c, _ in v], [w for _, w in v]
        print(f"{name:16s} CPU {statistics.median(cpus):.3f} ms/POST (min {min(cpus):.3f}, max {max(cpus):.3f}); "
              f"wall {statistics.median(walls):.3f} ms/POST")
    med = {k: statistics.median(c for c, _ in v) for k, v in res.items()}
    print(f"httpx-aio / httpx-guarded CPU per POST: {med['httpx-aio'] / med['httpx-guarded']:.2f}; "
          f"aiohttp / httpx: {med['aiohttp'] / med['httpx']:.2f}")
    print(f"# load after: {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
