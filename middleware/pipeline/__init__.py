"""Orchestration: stored inbound -> normalized resources -> events -> triggers (one transaction)."""
