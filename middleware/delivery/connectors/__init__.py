"""Built-in destination connectors; importing this package registers each one (``@register``)."""
from __future__ import annotations

from . import braze, hubspot, iterable, segment, sfmc, webhook  # noqa: F401

__all__ = ["braze", "hubspot", "iterable", "segment", "sfmc", "webhook"]
