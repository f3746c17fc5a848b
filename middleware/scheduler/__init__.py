"""Durable scheduler: pending triggers with a due time fire in due order, in batches."""
