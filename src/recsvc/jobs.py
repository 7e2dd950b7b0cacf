"""Background work inside a serving process: training jobs started over HTTP, and the optional
training schedule (RECSVC_TRAIN_INTERVAL). Both run the same pipeline as `recsvc train`.

Training competes with serving for the CPU; on a busy service run `recsvc train` as its own
process (a cron job or a scheduled container) instead: it needs only the database and the
models folder.
"""

from __future__ import annotations

import asyncio
import ctypes
import gc
import logging

from fastapi import FastAPI

from recsvc import pipeline, registry
from recsvc.config import Settings
from recsvc.errors import Conflict

log = logging.getLogger("recsvc.jobs")


def start(app: FastAPI, job_id: str, force: bool) -> None:
    """Run a queued job in the background of this process."""
    task = asyncio.create_task(
        pipeline.run_job(app.state.settings, app.state.sessionmaker, job_id, force)
    )
    tasks: set[asyncio.Task[object]] = app.state.background
    tasks.add(task)

    def finished(done: asyncio.Task[object]) -> None:
        tasks.discard(done)
        release_memory()
        # The job recorded its error in training_jobs; here it is logged.
        exc = done.exception() if not done.cancelled() else None
        if exc is not None:
            report_failure(job_id, exc)

    task.add_done_callback(finished)


async def schedule(app: FastAPI, interval_seconds: int) -> None:
    """Train every `interval_seconds`; with several workers or replicas the unique job slot
    makes sure only one of them trains at a time."""
    settings: Settings = app.state.settings
    while True:
        await asyncio.sleep(interval_seconds)
        try:
            async with app.state.sessionmaker() as session:
                job = await registry.create_job(session, False, settings.job_stale_after)
        except Conflict:
            log.info("scheduled training skipped: another job is running")
            continue
        except Exception as exc:
            log.error("scheduled training could not start: %s", exc)
            continue
        try:
            await pipeline.run_job(settings, app.state.sessionmaker, job.job_id, False)
        except Exception as exc:
            report_failure(job.job_id, exc)
        finally:
            release_memory()


def release_memory() -> None:
    """Hand the memory a training run used back to the system. glibc keeps freed blocks in the
    arenas of the threads that ran the fit; without this the worker that trained stayed 24%
    larger for good (bench/soak.py), and serving workers must not grow."""
    gc.collect()
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to trim
        pass


def report_failure(job_id: str, exc: BaseException) -> None:
    """A failed job in the log: one line for an expected condition (no events yet), with the
    traceback otherwise."""
    expected = isinstance(exc, pipeline.NoData)
    log.error("training job %s failed: %s", job_id, exc, exc_info=None if expected else exc)


def start_schedule(app: FastAPI, interval_seconds: int) -> None:
    task = asyncio.create_task(schedule(app, interval_seconds))
    app.state.background.add(task)
