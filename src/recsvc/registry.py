"""Model versions and training jobs in the database: the only owner of that SQL.

The `model_versions` table is the truth about which version is active: every serving replica
reads it (never local files alone), so an activation reaches all of them.

Version status: `active` (serving), `inactive` (was active, or passed evaluation and was then
superseded), `rejected` (worse than the model that was active when it was trained; activate it
explicitly to override). A unique partial index (migration 0003) lets at most one row be active.

`artifact_path` holds the version's folder relative to the models directory; every process
resolves it under its own RECSVC_MODELS_DIR (`artifact_dir`).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path, PurePosixPath
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from recsvc.errors import Conflict, NotFound
from recsvc.ingest import as_utc, utcnow
from recsvc.schemas import JobOut, ModelVersionOut
from recsvc.tables import ModelVersion, TrainingJob

VERSIONS = ModelVersion.__table__
JOBS = TrainingJob.__table__

BUSY = "busy"


def artifact_dir(models_dir: Path, stored: str | ModelVersionOut) -> Path:
    """Where a version's folder is on this machine: its name under `models_dir`. `stored` is
    a row's artifact_path, or the row.

    New rows store just that name (the folder is `models_dir/<version>`, artifact.save). Rows
    written by older releases hold the path the trainer saw (`./models/<version>`,
    `/data/models/<version>`): only its last component counts, so a trainer or replica that runs
    elsewhere or mounts the volume at another path still finds the folder.
    """
    artifact_path = stored.artifact_path if isinstance(stored, ModelVersionOut) else stored
    name = PurePosixPath(artifact_path.replace("\\", "/")).name
    return Path(models_dir).absolute() / name


def _version_out(row: Any, models_dir: Path | None = None) -> ModelVersionOut:
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
        artifact_path=(
            str(artifact_dir(models_dir, row.artifact_path))
            if models_dir is not None
            else row.artifact_path
        ),
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


# `models_dir`: report `artifact_path` as resolved under it (API responses); without it the
# stored value is returned, for callers that resolve it themselves with `artifact_dir`.


async def list_versions(
    session: AsyncSession, models_dir: Path | None = None
) -> list[ModelVersionOut]:
    rows = await session.execute(select(VERSIONS).order_by(VERSIONS.c.created_at.desc()))
    return [_version_out(row, models_dir) for row in rows]


async def get_version(
    session: AsyncSession, version: str, models_dir: Path | None = None
) -> ModelVersionOut:
    row = (await session.execute(select(VERSIONS).where(VERSIONS.c.version == version))).first()
    if row is None:
        raise NotFound(f"no model version {version!r}")
    return _version_out(row, models_dir)


async def active_version(
    session: AsyncSession, models_dir: Path | None = None
) -> ModelVersionOut | None:
    # The unique index allows one active row; the order only matters for a database that has
    # not been migrated to 0003 yet (the newest activation wins, as in the migration).
    row = (
        await session.execute(
            select(VERSIONS)
            .where(VERSIONS.c.status == "active")
            .order_by(VERSIONS.c.activated_at.is_(None), VERSIONS.c.activated_at.desc())
            .limit(1)
        )
    ).first()
    return _version_out(row, models_dir) if row is not None else None


async def activate(
    session: AsyncSession, version: str, models_dir: Path | None = None
) -> ModelVersionOut:
    """Make `version` the one active version (roll back or forward), in the caller's transaction.

    Concurrent activations queue instead of deadlocking: the first statement locks every
    model_versions row in primary-key order (SELECT ... FOR UPDATE on PostgreSQL), so two
    activations never hold one row each while waiting for the other's. The locks last until
    the caller commits; under READ COMMITTED the UPDATEs that follow see the rows as the
    previous activation left them. The old row is deactivated before the new one is activated:
    PostgreSQL checks the unique index row by row, so one UPDATE flipping both rows could fail
    depending on the order it visits them. On SQLite FOR UPDATE is not rendered: writers are
    serialised by the database lock, which the first UPDATE takes (waiting up to busy_timeout).
    """
    locked = await session.scalars(
        select(VERSIONS.c.version).order_by(VERSIONS.c.version).with_for_update()
    )
    if version not in set(locked):
        raise NotFound(f"no model version {version!r}")
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
    return await get_version(session, version, models_dir)


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


@dataclass(frozen=True)
class Deployment:
    """What /metrics reports about the whole deployment, read from the database."""

    model_age_seconds: float | None  # since the active version was trained
    model_ndcg: float | None  # its offline ndcg@10
    jobs: dict[str, int]  # training jobs by state
    last_job_seconds: float | None  # how long the newest finished job ran


async def deployment(session: AsyncSession) -> Deployment:
    active = await active_version(session)
    counts = await session.execute(select(JOBS.c.state, func.count()).group_by(JOBS.c.state))
    last = (
        await session.execute(
            select(JOBS.c.started_at, JOBS.c.finished_at)
            .where(JOBS.c.finished_at.is_not(None), JOBS.c.started_at.is_not(None))
            .order_by(JOBS.c.finished_at.desc())
            .limit(1)
        )
    ).first()
    age = ndcg = None
    if active is not None:
        age = (utcnow() - as_utc(active.created_at)).total_seconds()
        ndcg = active.metrics.get("ndcg@10")
    seconds = None
    if last is not None:
        seconds = (as_utc(last.finished_at) - as_utc(last.started_at)).total_seconds()
    return Deployment(age, ndcg, {state: n for state, n in counts}, seconds)
