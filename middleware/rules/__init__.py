"""The rule language: spec (pydantic, JSON Schema), loading with positions, evaluation."""
