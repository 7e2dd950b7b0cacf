"""The schema (docs/design.md section 3) and Alembic's target metadata; the same on PostgreSQL
and SQLite."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    Index,
    Integer,
    String,
    Text,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from recsvc.db import Base

ID_LENGTH = 128
# JSONB on PostgreSQL (compact, indexable), plain JSON text on SQLite.
JSONType = JSON().with_variant(JSONB(), "postgresql")
# SQLite only auto-increments an INTEGER PRIMARY KEY.
BigIntId = BigInteger().with_variant(Integer(), "sqlite")
Timestamp = DateTime(timezone=True)


class User(Base):
    __tablename__ = "users"

    id: Mapped[str] = mapped_column(String(ID_LENGTH), primary_key=True)
    attributes: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    created_at: Mapped[datetime] = mapped_column(Timestamp)
    updated_at: Mapped[datetime] = mapped_column(Timestamp)


class Item(Base):
    __tablename__ = "items"

    id: Mapped[str] = mapped_column(String(ID_LENGTH), primary_key=True)
    title: Mapped[str] = mapped_column(Text, default="")
    description: Mapped[str] = mapped_column(Text, default="")
    categories: Mapped[list[str]] = mapped_column(JSONType, default=list)
    tags: Mapped[list[str]] = mapped_column(JSONType, default=list)
    attributes: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    available: Mapped[bool] = mapped_column(Boolean, default=True)
    # DELETE is soft: the row stays so that models trained earlier know never to recommend it.
    deleted_at: Mapped[datetime | None] = mapped_column(Timestamp, nullable=True)
    created_at: Mapped[datetime] = mapped_column(Timestamp)
    updated_at: Mapped[datetime] = mapped_column(Timestamp)


class Event(Base):
    """The behaviour log. Rows are only ever added, except by erasure (DELETE /v1/users/{id}),
    which deletes all of a learner's events. `event_id` is the client's key; `id` grows with
    insertion and, on SQLite, is never reused (AUTOINCREMENT): it is the SQLite model cutoff.

    `txid` (PostgreSQL; set by a column default, NULL for rows stored before revision 0004) is
    the inserting transaction: a model records the snapshot it read, and serving folds in
    exactly the events whose transaction that snapshot does not see (docs/design.md section 2).
    """

    __tablename__ = "events"

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True, autoincrement=True)
    event_id: Mapped[str | None] = mapped_column(String(ID_LENGTH), unique=True, nullable=True)
    user_id: Mapped[str] = mapped_column(String(ID_LENGTH))
    item_id: Mapped[str] = mapped_column(String(ID_LENGTH))
    type: Mapped[str] = mapped_column(String(32))
    value: Mapped[float | None] = mapped_column(Float, nullable=True)
    occurred_at: Mapped[datetime] = mapped_column(Timestamp)
    received_at: Mapped[datetime] = mapped_column(Timestamp)
    context: Mapped[dict[str, Any] | None] = mapped_column(JSONType, nullable=True)
    txid: Mapped[int | None] = mapped_column(BigInteger, nullable=True)

    __table_args__ = (
        # "a user's events a model does not hold" (fold-in), user erasure, per-user counts
        Index("ix_events_user_id_txid", "user_id", "txid"),
        # "users with events a model does not hold" (freshness.py)
        Index("ix_events_txid", "txid"),
        # "events since T" (popularity windows)
        Index("ix_events_received_at", "received_at"),
        {"sqlite_autoincrement": True},
    )


class EventCountHourly(Base):
    """Stored events per hour of occurrence (`occurred_at` truncated to the UTC hour) and type:
    the dashboard's overview reads its charts and event total here instead of scanning `events`.
    Upserted in the transaction that stores the events (ingest.insert_events; repeats of an
    `event_id` are not counted), decremented in the one that erases a learner's events, and
    backfilled from the events by migration 0005."""

    __tablename__ = "event_counts_hourly"

    hour: Mapped[datetime] = mapped_column(Timestamp, primary_key=True)
    type: Mapped[str] = mapped_column(String(32), primary_key=True)
    count: Mapped[int] = mapped_column(BigInteger)


class EventLearner(Base):
    """Every learner with stored events, once: inserted in the transaction that stores their
    events (ingest.insert_events), deleted in the one that erases them, backfilled by migration
    0005. The dashboard counts learners here instead of COUNT(DISTINCT) over the events."""

    __tablename__ = "event_learners"

    user_id: Mapped[str] = mapped_column(String(ID_LENGTH), primary_key=True)


class ErasedUser(Base):
    """Learners erased since the model artifacts on disk were last rewritten without them.
    `revision` is the `erasure` revision the erasure counted: a model trained from a snapshot
    that saw a lower one may hold the learner's rows, and serving never uses them; training
    rewrites older artifacts and then drops the entries (pipeline.py)."""

    __tablename__ = "erased_users"

    user_id: Mapped[str] = mapped_column(String(ID_LENGTH), primary_key=True)
    erased_at: Mapped[datetime] = mapped_column(Timestamp)
    revision: Mapped[int] = mapped_column(BigInteger)


class Revision(Base):
    """Named counters bumped in the transaction of each change they stand for (`catalog`:
    item writes, `erasure`: user erasures), so a worker sees a change by comparing integers,
    whatever the clocks of the machines that wrote it."""

    __tablename__ = "revisions"

    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    value: Mapped[int] = mapped_column(BigInteger)


class ModelVersion(Base):
    __tablename__ = "model_versions"

    version: Mapped[str] = mapped_column(String(64), primary_key=True)
    status: Mapped[str] = mapped_column(String(16))  # candidate, active, inactive, rejected
    params: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    baseline_metrics: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    n_users: Mapped[int] = mapped_column(Integer, default=0)
    n_items: Mapped[int] = mapped_column(Integer, default=0)
    n_events: Mapped[int] = mapped_column(BigInteger, default=0)
    # The version's folder relative to models_dir (its name); rows written before that hold the
    # path the trainer saw. Each process resolves it under its own models_dir
    # (registry.artifact_dir), so trainers and replicas may mount the volume anywhere.
    artifact_path: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(Timestamp)
    activated_at: Mapped[datetime | None] = mapped_column(Timestamp, nullable=True)

    __table_args__ = (
        # At most one active version, whatever runs concurrently (migration 0003).
        Index(
            "uq_model_versions_one_active",
            "status",
            unique=True,
            postgresql_where=text("status = 'active'"),
            sqlite_where=text("status = 'active'"),
        ),
    )


class TrainingJob(Base):
    __tablename__ = "training_jobs"

    job_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    state: Mapped[str] = mapped_column(String(16))  # queued, running, succeeded, failed
    # "busy" while queued or running, NULL once finished: the unique constraint lets at most one
    # job hold it, so "one job at a time" holds across API workers and CLI runs.
    slot: Mapped[str | None] = mapped_column(String(8), unique=True, nullable=True)
    heartbeat_at: Mapped[datetime | None] = mapped_column(Timestamp, nullable=True)
    force: Mapped[bool] = mapped_column(Boolean, default=False)
    version: Mapped[str | None] = mapped_column(String(64), nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(Timestamp)
    started_at: Mapped[datetime | None] = mapped_column(Timestamp, nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(Timestamp, nullable=True)
