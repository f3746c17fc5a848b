"""Delivery tests share the pipeline harness in tests/support."""
