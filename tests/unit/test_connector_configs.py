"""The destination settings models live in ``config/connectors.py`` (the mappings loader checks them
without importing delivery); every built-in connector declares exactly that model, and every model
has its connector."""
from __future__ import annotations

from middleware.config.connectors import CONNECTOR_CONFIGS
from middleware.delivery.registry import connector_types


def test_each_connector_uses_the_config_model_the_loader_validates() -> None:
    types = connector_types()
    assert set(types) == set(CONNECTOR_CONFIGS)
    for name, cls in types.items():
        assert cls.Config is CONNECTOR_CONFIGS[name], name
