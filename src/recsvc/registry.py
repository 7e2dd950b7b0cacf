"""Model versions and training jobs in the database: the only owner of that SQL.

The `model_versions` table is the truth about which version is active: every serving replica
reads it (never local files alone), so an activation reaches all of them.

Version status: `active` (serving), `inactive` (was active, or passed evaluation and was then
superseded), `rejected` (worse than the model that was active when it was trained; activate it
explicitly to override).
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from recsvc.errors import Conflict, NotFound
from recsvc.ingest import as_utc, utcnow
from recsvc.schemas import JobOut, ModelVersionOut
from recsvc.tables import ModelVersion, TrainingJob

VERSIONS = ModelVersion.__table__
JOBS = TrainingJob.__table__

BUSY = "busy"


def _version_out(row: Any) -> ModelVersionOut:
    return ModelVersionOut(
        version=row.version,
        status=row.status,
        created_at=as_utc(row.created_at),
        activated_at=as_utc(row.activated_at) if row.activated_at is not None else None,
        params=row.params,
        n_users=row.n_users,
        n_items=row.n_items,
        n_events=row.n_events,
        metrics=row.metrics,
        baseline_metrics=row.baseline_metrics,
        artifact_path=row.artifact_path,
    )


# --- versions -----------------------------------------------------------------------------------


async def record_version(
    session: AsyncSession,
    *,
    version: str,
    status: str,
    params: dict[str, Any],
    metrics: dict[str, Any],
    baseline_metrics: dict[str, Any],
    n_users: int,
    n_items: int,
    n_events: int,
    artifact_path: str,
) -> None:
    await session.execute(
        VERSIONS.insert().values(
            version=version,
            status=status,
            params=params,
            metrics=metrics,
            baseline_metrics=baseline_metrics,
            n_users=n_users,
            n_items=n_items,
            n_events=n_events,
            artifact_path=artifact_path,
            created_at=utcnow(),
        )
    )


async def list_versions(session: AsyncSession) -> list[ModelVersionOut]:
    rows = await session.execute(select(VERSIONS).order_by(VERSIONS.c.created_at.desc()))
    return [_version_out(row) for row in rows]


async def get_version(session: AsyncSession, version: str) -> ModelVersionOut:
    row = (await session.execute(select(VERSIONS).where(VERSIONS.c.version == version))).first()
    if row is None:
        raise NotFound(f"no model version {version!r}")
    return _version_out(row)


async def active_version(session: AsyncSession) -> ModelVersionOut | None:
    row = (await session.execute(select(VERSIONS).where(VERSIONS.c.status == "active"))).first()
    return _version_out(row) if row is not None else None


async def activate(session: AsyncSession, version: str) -> ModelVersionOut:
    """Make `version` the one active version (roll back or forward), in one transaction."""
    await get_version(session, version)
    now = utcnow()
    await session.execute(
        update(VERSIONS)
        .where(VERSIONS.c.status == "active", VERSIONS.c.version != version)
        .values(status="inactive")
    )
    await session.execute(
        update(VERSIONS)
        .where(VERSIONS.c.version == version)
        .values(status="active", activated_at=now)
    )
    return await get_version(session, version)


async def all_version_names(session: AsyncSession) -> list[str]:
    return list(await session.scalars(select(VERSIONS.c.version)))


async def forget_versions(session: AsyncSession, versions: list[str]) -> None:
    """Drop the rows of versions whose folders were pruned (never the active one)."""
    if versions:
        await session.execute(
            VERSIONS.delete().where(VERSIONS.c.version.in_(versions), VERSIONS.c.status != "active")
        )


# --- jobs ---------------------------------------------------------------------------------------


def _job_out(row: Any) -> JobOut:
    return JobOut(
        job_id=row.job_id,
        state=row.state,
        force=row.force,
        version=row.version,
        error=row.error,
        created_at=as_utc(row.created_at),
        started_at=as_utc(row.started_at) if row.started_at is not None else None,
        finished_at=as_utc(row.finished_at) if row.finished_at is not None else None,
    )


async def _fail_stale_jobs(session: AsyncSession, stale_after: timedelta) -> None:
    """A running job touches its heartbeat every few seconds; one silent for `stale_after` has
    died (killed process, lost machine) and must not block the next job."""
    cutoff = utcnow() - stale_after
    now = utcnow()
    await session.execute(
        update(JOBS)
        .where(
            JOBS.c.slot == BUSY,
            JOBS.c.heartbeat_at < cutoff,
        )
        .values(
            state="failed",
            slot=None,
            error="the training process stopped without finishing (killed or crashed)",
            finished_at=now,
        )
    )


async def create_job(session: AsyncSession, force: bool, stale_after: timedelta) -> JobOut:
    """A queued job holding the one training slot; Conflict when another job holds it."""
    await _fail_stale_jobs(session, stale_after)
    await session.commit()
    now = utcnow()
    job_id = f"job-{now:%Y%m%dT%H%M%S}-{secrets.token_hex(3)}"
    try:
        await session.execute(
            JOBS.insert().values(
                job_id=job_id,
                state="queued",
                slot=BUSY,
                force=force,
                created_at=now,
                heartbeat_at=now,
            )
        )
        await session.commit()
    except IntegrityError:
        await session.rollback()
        running = await session.scalar(select(JOBS.c.job_id).where(JOBS.c.slot == BUSY))
        raise Conflict(
            f"training job {running} is still queued or running; one job runs at a time",
            extra={"job_id": running},
        ) from None
    return await get_job(session, job_id)


async def get_job(session: AsyncSession, job_id: str) -> JobOut:
    row = (await session.execute(select(JOBS).where(JOBS.c.job_id == job_id))).first()
    if row is None:
        raise NotFound(f"no training job {job_id!r}")
    return _job_out(row)


async def job_started(session: AsyncSession, job_id: str) -> None:
    now = utcnow()
    await session.execute(
        update(JOBS)
        .where(JOBS.c.job_id == job_id)
        .values(state="running", started_at=now, heartbeat_at=now)
    )


async def job_heartbeat(session: AsyncSession, job_id: str, version: str | None = None) -> None:
    values: dict[str, Any] = {"heartbeat_at": utcnow()}
    if version is not None:
        values["version"] = version
    await session.execute(update(JOBS).where(JOBS.c.job_id == job_id).values(**values))


async def job_finished(
    session: AsyncSession, job_id: str, *, version: str | None, error: str | None
) -> None:
    await session.execute(
        update(JOBS)
        .where(JOBS.c.job_id == job_id)
        .values(
            state="failed" if error else "succeeded",
            slot=None,
            version=version,
            error=error,
            finished_at=datetime.now(UTC),
        )
    )
