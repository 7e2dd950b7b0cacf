"""Settings: every knob of the service, read from `RECSVC_*` environment variables.

Nothing runs at import: call `get_settings()` (cached) or build `Settings(...)` in tests.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

Scope = Literal["ingest", "read", "admin"]

# DESIGN.md section 4. `rate` uses the event's value (1..5) as its weight; `dislike` is an explicit
# negative (never recommend that item to that user) and carries no positive weight.
DEFAULT_EVENT_WEIGHTS: dict[str, float] = {
    "view": 1.0,
    "click": 1.0,
    "search_click": 2.0,
    "favorite": 3.0,
    "add_to_cart": 3.0,
    "review": 3.0,
    "enroll": 4.0,
    "purchase": 5.0,
    "complete": 5.0,
    "rate": 1.0,
    "dislike": 0.0,
}


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RECSVC_", extra="ignore", frozen=True)

    # Storage
    database_url: str = Field(
        "sqlite+aiosqlite:///./recsvc.db",
        description="SQLAlchemy async URL; production: postgresql+asyncpg://user@host/db",
    )
    models_dir: Path = Field(Path("./models"), description="where model versions are stored")

    # Security
    api_keys: dict[str, list[Scope]] = Field(
        default_factory=dict,
        description='JSON object key -> scopes, e.g. {"k-ops": ["admin", "read", "ingest"]}',
    )
    auth_disabled: bool = Field(False, description="serve without API keys (local use only)")
    metrics_require_key: bool = Field(False, description="/metrics needs an admin key")

    # Limits
    max_body_bytes: int = Field(2 * 1024 * 1024, ge=1024, description="request body limit")
    max_batch_size: int = Field(1000, ge=1, le=10000, description="events/items per batch")
    max_context_bytes: int = Field(4096, ge=0, description="JSON size of an event's context")
    max_future_seconds: int = Field(
        300, ge=0, description="how far in the future a timestamp may be"
    )

    # Events and features (DESIGN.md section 4)
    event_weights: dict[str, float] = Field(
        default_factory=lambda: dict(DEFAULT_EVENT_WEIGHTS),
        description="event type -> weight; the keys are the allowed event types",
    )
    rating_event_type: str = Field("rate", description="type whose value (1..5) is the weight")
    negative_event_types: list[str] = Field(
        default_factory=lambda: ["dislike"], description="never recommend these items to the user"
    )
    rating_negative_below: float | None = Field(
        None, description="ratings below this count as negative (off by default)"
    )

    # Operations
    db_retry_after_seconds: int = Field(5, ge=1, description="Retry-After sent with 503")

    @field_validator("api_keys")
    @classmethod
    def _keys_are_real(cls, keys: dict[str, list[Scope]]) -> dict[str, list[Scope]]:
        for key in keys:
            if len(key) < 8:
                raise ValueError("each API key must be at least 8 characters long")
        return keys

    @model_validator(mode="after")
    def _rating_and_negative_types_are_known(self) -> Settings:
        unknown = {self.rating_event_type, *self.negative_event_types} - set(self.event_weights)
        if unknown:
            raise ValueError(f"event types missing from event_weights: {sorted(unknown)}")
        return self

    @property
    def event_types(self) -> list[str]:
        return sorted(self.event_weights)

    def require_auth_configured(self) -> None:
        """Refuse to serve an API nobody can call safely (DESIGN.md section 7)."""
        if not self.api_keys and not self.auth_disabled:
            raise ValueError(
                "no API keys configured: set RECSVC_API_KEYS, e.g. "
                '\'{"my-secret-key": ["admin", "read", "ingest"]}\', '
                "or RECSVC_AUTH_DISABLED=true for local experiments"
            )


@functools.cache
def get_settings() -> Settings:
    return Settings()
