"""``careloop sink``: a local webhook receiver that verifies Standard Webhooks signatures."""
from __future__ import annotations

import argparse

from ..delivery.sink import DEV_WEBHOOK_SECRET, webhook_secret

__all__ = ["DEV_WEBHOOK_SECRET", "webhook_secret", "register"]


def cmd_sink(args: argparse.Namespace) -> int:
    from ..delivery.sink import run_sink

    secrets = args.secret or [webhook_secret()]
    print(f"careloop sink listening on http://{args.host}:{args.port}/hooks (GET /received lists calls)", flush=True)
    run_sink(args.host, args.port, secrets)
    return 0


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("sink", help="run a local webhook receiver that verifies signatures")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=9000)
    p.add_argument("--secret", action="append", help="whsec_ secret (repeat for rotation) [CARELOOP_WEBHOOK_SECRET]")
    p.set_defaults(func=cmd_sink)
