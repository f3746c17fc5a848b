"""Logging without PHI: one JSON line per record with an ``action`` and ids only.

Records carry ``extra={"action": ..., "<id>": ...}``; message bodies, names, MRNs,
phone numbers, headers and query strings are never logged at INFO. A filter drops any
extra field whose name is not on the allow-list, so a careless ``extra`` cannot leak.
"""
from __future__ import annotations

import logging
import sys
import time

import orjson

ALLOWED_EXTRA = frozenset({
    "action", "source", "port", "inbound_id", "message_id", "event_id", "trigger_id", "delivery_id",
    "destination", "rule_id", "count", "error_type", "status", "duration_ms", "version", "subscription",
    "resource_type", "path", "method", "lag_s", "circuit",
})

_STD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage() if record.levelno >= logging.WARNING or record.args is None else record.msg,
        }
        for k, v in record.__dict__.items():
            if k not in _STD and k in ALLOWED_EXTRA:
                out[k] = v
        if record.exc_info and record.levelno >= logging.ERROR:
            out["exc_type"] = record.exc_info[0].__name__ if record.exc_info[0] else None
        return orjson.dumps(out, default=str).decode()


def configure(level: str = "INFO") -> None:
    """Install the JSON formatter on the root logger (called by the CLI only)."""
    root = logging.getLogger()
    root.handlers.clear()
    h = logging.StreamHandler(sys.stderr)
    h.setFormatter(JsonFormatter())
    root.addHandler(h)
    root.setLevel(level.upper())
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
    logging.Formatter.converter = time.gmtime
