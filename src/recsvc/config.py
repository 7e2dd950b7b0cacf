"""Settings: every knob of the service, read from `RECSVC_*` environment variables.

Nothing runs at import: call `get_settings()` (cached) or build `Settings(...)` in tests.
"""

from __future__ import annotations

import functools
import re
from datetime import timedelta
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from recsvc.db import DEFAULT_CONNECTIONS_PER_WORKER, MIN_CONNECTIONS_PER_WORKER

Scope = Literal["ingest", "read", "admin"]

# docs/design.md section 4. `rate` uses the event's value (1..5) as its weight; `dislike` is an
# explicit negative (never recommend that item to that user) and carries no positive weight.
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
# A user's items with these events are never recommended to that user again (docs/design.md 2).
DEFAULT_CONSUMED_TYPES: tuple[str, ...] = ("enroll", "purchase", "complete", "rate", "review")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="RECSVC_", extra="ignore", frozen=True, populate_by_name=True
    )

    # Storage
    database_url: str = Field(
        "sqlite+aiosqlite:///./recsvc.db",
        description="SQLAlchemy async URL; production: postgresql+asyncpg://user@host/db",
    )
    models_dir: Path = Field(Path("./models"), description="where model versions are stored")
    export_dir: Path | None = Field(
        None,
        description="the events export (`recsvc export events`): its default folder, and where "
        "trainings log erasures before the database forgets them; unset: no export",
    )
    db_connections_per_worker: int = Field(
        DEFAULT_CONNECTIONS_PER_WORKER,
        ge=MIN_CONNECTIONS_PER_WORKER,
        le=10_000,
        description="PostgreSQL connections one serving worker may hold at once, all of its pools "
        "together (SQLAlchemy's, the recent-events read pool, the LISTEN connection; split in "
        "db.ConnectionBudget: 20 gives 9+3 overflow, 7 and 1). A server must accept workers x "
        "this, plus 3 per `recsvc train` or other CLI process; `recsvc serve --workers N` checks "
        "that against PostgreSQL's max_connections and refuses to start when it does not fit",
    )

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

    # Events and features (docs/design.md section 4)
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

    # Features (docs/design.md section 4)
    half_life_days: float | None = Field(
        None, gt=0, description="exponential decay of event weights with age; unset: no decay"
    )
    weight_cap: float | None = Field(20.0, gt=0, description="cap of a (user, item) weight sum")
    min_user_interactions: int = Field(1, ge=0, description="users with fewer items: cold start")
    min_item_interactions: int = Field(1, ge=0, description="items with fewer users: not in ALS")
    popularity_window_days: float = Field(30.0, gt=0, description="window of recent popularity")

    # Training (docs/design.md section 5); defaults measured on MovieLens-100k, see README
    als_factors: int = Field(64, ge=1, le=1024)
    als_regularization: float = Field(30.0, ge=0)
    als_alpha: float = Field(2.0, ge=0, description="confidence = 1 + alpha * f(weight)")
    als_iterations: int = Field(15, ge=1, le=200)
    als_confidence: Literal["log1p", "bm25"] = Field("log1p", description="f in the confidence")
    als_threads: int = Field(1, ge=1, description="implicit's num_threads during fit")
    random_seed: int = Field(42, description="seeds the holdout split and ALS")
    holdout_fraction: float = Field(0.2, gt=0, lt=1, description="newest share of each user")
    eval_max_users: int | None = Field(50_000, ge=1, description="users sampled for metrics")
    keep_versions: int = Field(5, ge=1, description="model versions kept on disk")
    job_stale_seconds: float = Field(
        120, ge=1, description="a job silent this long (killed process) no longer blocks training"
    )
    train_interval_seconds: int | None = Field(
        None,
        ge=60,
        validation_alias=AliasChoices("RECSVC_TRAIN_INTERVAL", "RECSVC_TRAIN_INTERVAL_SECONDS"),
        description="seconds between scheduled trainings (RECSVC_TRAIN_INTERVAL); unset: off",
    )

    # Serving (docs/design.md sections 2 and 5)
    consumed_event_types: list[str] = Field(
        default_factory=lambda: list(DEFAULT_CONSUMED_TYPES),
        description="a user's items with these events are never recommended to them again",
    )
    max_per_family: int = Field(
        1,
        ge=1,
        le=100,
        description="editions of one course family in a list (request parameter max_per_family)",
    )
    diversity: float = Field(
        0.1,
        ge=0,
        le=1,
        description="how much score a personal or query list trades for courses unlike the ones "
        "above them (item factors and categories; request parameter diversity); 0: none. 0.1 "
        "was measured on the demo holdout (bench/diversity.py --tune)",
    )
    ann_probes: int | None = Field(
        None,
        ge=0,
        le=100_000,
        description="for catalogs of 200,000 courses or more: clusters of the item index scored "
        "per personal list; unset: the model's own, calibrated at training to find 95% of the "
        "exact top 10; 0: score every course exactly",
    )
    family_edition_patterns: list[str] | None = Field(
        None,
        description="JSON list of regexes of edition markers removed from the end of titles "
        "before course families are detected; unset: the built-in list",
    )
    family_similarity: float = Field(
        0.9,
        gt=0,
        le=1,
        description="title n-gram cosine from which two courses of the same categories are "
        "editions of one family",
    )
    fresh_users_max: int = Field(
        500_000,
        ge=0,
        description="users with events newer than the model that a worker remembers (PostgreSQL; "
        "about 100 bytes each); past it every recommendation request queries for the learner's "
        "newest events until the next model",
    )
    max_pending_requests: int = Field(
        1000,
        ge=1,
        description="recommendation requests a worker lets wait for scoring; past it they get "
        "503 with Retry-After",
    )
    model_poll_seconds: float = Field(
        2.0, gt=0, le=5, description="how often a worker checks for a newly activated model"
    )

    # Learner portraits, segments and audiences (docs/design.md section 10)
    profile_half_life_days: float | None = Field(
        30.0,
        gt=0,
        description="how fast a learner's interests in GET /v1/users/{id}/profile fade: an "
        "event this many days old counts half (unset: no fading, like training by default)",
    )
    profile_max_events: int = Field(
        10_000, ge=100, description="newest events of a learner a profile reads"
    )
    segments: int | None = Field(
        None,
        ge=2,
        le=100,
        description="learner segments (k-means clusters) made at training; unset: chosen "
        "between 4 and 12 by silhouette on a sample",
    )
    label_new_days: float = Field(
        14, gt=0, description="label `new`: first seen fewer than this many days ago"
    )
    label_at_risk_gap_factor: float = Field(
        2.0,
        gt=0,
        description="label `at_risk`: silent for more than this many times the learner's usual "
        "gap between active days ...",
    )
    label_at_risk_min_days: float = Field(
        14, gt=0, description="... and for at least this many days"
    )
    label_high_intent_days: float = Field(
        7,
        ge=0,
        description="label `high_intent`: a favourite or cart item unbought for this many days",
    )
    label_completer_min_courses: int = Field(
        2, ge=1, description="label `completer`: at least this many courses completed ..."
    )
    label_completer_min_ratio: float = Field(
        0.5,
        ge=0,
        le=1,
        description="... and at least this share of the courses they enrolled in or bought",
    )
    label_price_sensitive_ratio: float = Field(
        0.6,
        gt=0,
        description="label `price_sensitive`: the median price of the courses they consumed is "
        "below this share of the median price of the courses they only looked at",
    )

    # Operations
    db_retry_after_seconds: int = Field(5, ge=1, description="Retry-After sent with 503")
    log_format: Literal["json", "text"] | None = Field(
        None,
        description="json: one JSON object per log line; text: for people. Unset: json for "
        "`recsvc serve`, text for the other commands",
    )
    shutdown_grace_seconds: float = Field(
        10,
        ge=0,
        le=600,
        description="after SIGTERM, how long in-flight requests may take before connections "
        "are closed anyway",
    )

    @field_validator("api_keys")
    @classmethod
    def _keys_are_real(cls, keys: dict[str, list[Scope]]) -> dict[str, list[Scope]]:
        for key in keys:
            if len(key) < 8:
                raise ValueError("each API key must be at least 8 characters long")
        return keys

    @field_validator("family_edition_patterns")
    @classmethod
    def _patterns_compile(cls, patterns: list[str] | None) -> list[str] | None:
        for pattern in patterns or []:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"bad edition pattern {pattern!r}: {exc}") from None
        return patterns

    @model_validator(mode="after")
    def _rating_and_negative_types_are_known(self) -> Settings:
        unknown = {self.rating_event_type, *self.negative_event_types} - set(self.event_weights)
        if unknown:
            raise ValueError(f"event types missing from event_weights: {sorted(unknown)}")
        return self

    @property
    def job_stale_after(self) -> timedelta:
        return timedelta(seconds=self.job_stale_seconds)

    @property
    def event_types(self) -> list[str]:
        return sorted(self.event_weights)

    def require_auth_configured(self) -> None:
        """Refuse to serve an API nobody can call safely (docs/design.md section 7)."""
        if not self.api_keys and not self.auth_disabled:
            raise ValueError(
                "no API keys configured: set RECSVC_API_KEYS, e.g. "
                '\'{"my-secret-key": ["admin", "read", "ingest"]}\', '
                "or RECSVC_AUTH_DISABLED=true for local experiments"
            )


@functools.cache
def get_settings() -> Settings:
    return Settings()
