"""Process settings from environment (``CARELOOP_*``) and CLI flags.

Nothing is built at import time: call :func:`get_settings` (or construct
:class:`Settings` with overrides) where a value is needed.
"""
from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Runtime settings; every field can be set as ``CARELOOP_<FIELD>``."""

    model_config = SettingsConfigDict(env_prefix="CARELOOP_", extra="ignore")

    database_url: str = "sqlite:///.careloop/careloop.db"
    http_host: str = "127.0.0.1"
    http_port: int = 8080
    mllp_host: str = "127.0.0.1"
    mllp_port: int = 2575
    mappings_dir: Path = Path("mappings")
    api_token: str | None = Field(default=None, description="bearer token for /api and /hl7v2")
    contact_key_secret: str = Field(
        default="careloop-dev-contact-key-secret",
        description="HMAC key for pseudonymous contact keys; set a real secret in production",
    )
    mllp_max_message_bytes: int = 1_048_576
    mllp_idle_timeout_s: float = 600.0
    hl7_max_batch_bytes: int = Field(default=16_777_216, description="largest HL7 batch/file (FHS/BHS), one MLLP frame or /hl7v2 body")
    hl7_max_batch_messages: int = Field(default=10_000, description="most messages in one HL7 batch/file")
    worker_poll_interval_s: float = 0.2
    run_worker: bool = True
    log_level: str = "INFO"
    retention_days: int = 30


def get_settings(**overrides: object) -> Settings:
    """Build settings from the environment, with explicit overrides (CLI flags) winning."""
    clean = {k: v for k, v in overrides.items() if v is not None}
    return Settings(**clean)  # type: ignore[arg-type]
