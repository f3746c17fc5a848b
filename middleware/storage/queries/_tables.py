"""The Core tables of the SQLModel metadata, by short name, for the query modules."""
from __future__ import annotations

from sqlalchemy import Table
from sqlmodel import SQLModel

from .. import tables as _t  # noqa: F401  (registers the tables on the metadata)


def table(name: str) -> Table:
    return SQLModel.metadata.tables[name]


INBOUND = table("inbound_message")
PATIENT = table("patient")
RESOURCE_STATE = table("resource_state")
EVENT = table("event")
TRIGGER = table("trigger")
DELIVERY = table("delivery")
ATTEMPT = table("delivery_attempt")
DISCLOSURE = table("disclosure")
LEDGER = table("send_ledger")
INTENT = table("send_intent")
CONSENT = table("consent")
ALERT = table("delivery_alert")
SUPPRESSION = table("suppression")
AUTHORIZATION = table("authorization")
KV = table("kv")
ADMIN_AUDIT = table("admin_audit")
ROLLUP = table("console_rollup")
