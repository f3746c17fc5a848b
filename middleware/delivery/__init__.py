"""Delivery: outbound connectors, the PHI policy, the durable delivery worker."""
