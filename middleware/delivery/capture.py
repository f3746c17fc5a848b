"""Capture the exact request bytes a connector sends, for the disclosure audit.

The worker wraps each ``send_batch`` call in :func:`capturing`; an httpx request event
hook (:func:`install`) appends every request made inside it (method, path, body hash,
length — never the body itself once the batch is recorded) to that call's list. A
context variable keeps concurrent batches apart (each runs in its own task).

:func:`attribute` then finds, for one delivery, the request that carried it (the last
non-token request whose body mentions its idempotency key or contact key) and the
dotted leaf paths of *its own part* of that JSON body: the outermost JSON node that
mentions this item and no other item of the batch.
"""
from __future__ import annotations

import contextlib
import contextvars
import hashlib
from dataclasses import dataclass, field
from typing import Any, Iterator

import httpx
import orjson

#: Paths of token endpoints: their bodies carry credentials, not patient data, and are skipped.
TOKEN_PATHS = ("/v2/token", "/oauth/v1/token", "/oauth/token")


@dataclass(frozen=True)
class SentRequest:
    method: str
    path: str
    sha256: str
    length: int
    body: bytes = field(repr=False)  # kept only in memory until the batch is recorded

    @property
    def target(self) -> str:
        return f"{self.method} {self.path}"


_current: contextvars.ContextVar[list[SentRequest] | None] = contextvars.ContextVar("careloop_capture", default=None)


async def _hook(request: httpx.Request) -> None:
    sink = _current.get()
    if sink is None or request.url.path.endswith(TOKEN_PATHS):
        return
    body = request.content  # non-streaming requests: the exact bytes that go on the wire
    sink.append(SentRequest(request.method, request.url.path, hashlib.sha256(body).hexdigest(), len(body), body))


def install(client: httpx.AsyncClient) -> None:
    """Add the capture hook to ``client`` once (idempotent)."""
    hooks = client.event_hooks
    if _hook not in hooks.get("request", []):
        hooks["request"] = [*hooks.get("request", []), _hook]
        client.event_hooks = hooks


@contextlib.contextmanager
def capturing() -> Iterator[list[SentRequest]]:
    """Collect the requests made inside the block (in this task and tasks it starts)."""
    sink: list[SentRequest] = []
    token = _current.set(sink)
    try:
        yield sink
    finally:
        _current.reset(token)


def leaf_paths(value: Any, prefix: str = "") -> set[str]:
    """Dotted paths of every scalar in a JSON value (list indexes omitted); pure."""
    if isinstance(value, dict):
        out: set[str] = set()
        for k, v in value.items():
            out |= leaf_paths(v, f"{prefix}.{k}" if prefix else str(k))
        return out
    if isinstance(value, list):
        out = set()
        for v in value:
            out |= leaf_paths(v, prefix)
        return out
    return {prefix} if prefix else set()


def _mentions(value: Any, markers: set[str]) -> set[str]:
    if isinstance(value, dict):
        return set().union(*(_mentions(v, markers) for v in value.values())) if value else set()
    if isinstance(value, list):
        return set().union(*(_mentions(v, markers) for v in value)) if value else set()
    return {value} & markers if isinstance(value, str) else set()


def _own_part(doc: Any, mine: set[str], others: set[str], path: str = "") -> tuple[Any, str] | None:
    """(the outermost object mentioning one of ``mine`` and none of ``others``, its dotted path)."""
    if not isinstance(doc, (dict, list)):
        return None  # a scalar is never a part: the object holding it is
    found = _mentions(doc, mine | others)
    if found & mine and not found & others:
        return doc, path
    if isinstance(doc, dict):
        children = [(v, f"{path}.{k}" if path else str(k)) for k, v in doc.items()]
    else:
        children = [(v, path) for v in doc]
    for child, cpath in children:
        part = _own_part(child, mine, others, cpath)
        if part is not None:
            return part
    return None


@dataclass(frozen=True)
class Attribution:
    request: SentRequest | None
    fields: list[str]


def attribute(requests: list[SentRequest], markers: list[set[str]], index: int) -> Attribution:
    """Which captured request carried item ``index`` of a batch, and the fields of its part.

    ``markers[i]`` are strings unique to item ``i`` (idempotency key, contact key).
    Returns ``Attribution(None, [])`` when no request mentions the item.
    """
    rest: set[str] = set().union(*(m for i, m in enumerate(markers) if i != index))
    mine = markers[index] - rest or markers[index]
    others = rest - markers[index]  # markers shared with this item (same patient) say nothing
    for req in reversed(requests):
        try:
            doc = orjson.loads(req.body) if req.body else None
        except orjson.JSONDecodeError:
            doc = None
        if doc is None:
            continue
        part = _own_part(doc, mine, others)
        if part is not None:
            return Attribution(req, sorted(leaf_paths(part[0], part[1])))
        if _mentions(doc, markers[index]):  # only shared markers (same patient twice in one batch)
            return Attribution(req, sorted(leaf_paths(doc)))
    if len(requests) == 1 and len(markers) == 1:
        return attribute_single(requests[0])
    return Attribution(None, [])


def attribute_single(req: SentRequest) -> Attribution:
    """:func:`attribute` for a batch of one item that made one request: that request carried it.

    Equal to ``attribute([req], [markers], 0)`` for any markers (with a single item
    there is no other item to tell apart, so its part is the whole body).
    """
    try:
        doc = orjson.loads(req.body)
    except orjson.JSONDecodeError:
        return Attribution(req, [])
    return Attribution(req, sorted(leaf_paths(doc)))
