"""`recsvc export events DIR`: the events table as Parquet, the hand-off to a training cluster.

Owns the database side of an export (the file layout is `export_files`):

* Incremental: each run writes only the events the previous runs did not, and records the
  cutoff it reached in the manifest, with the same rule as a model's cutoff (`ingest.Cutoff`):
  on PostgreSQL the run reads one REPEATABLE READ snapshot and writes the rows whose inserting
  transaction it sees and the previous run's snapshot did not (so a transaction that commits
  late is exported by the next run, never lost); on SQLite the rows with ids above the previous
  run's highest. A model trained on the export records the last cutoff, and serving folds in
  exactly the events after it.
* Erasure: every run appends the database's erased list (read in the same snapshot) to the
  export's erased log; trainings append it too before the database forgets it (see
  `log_erasures`). The Spark engine leaves the logged learners' older events out;
  `--rewrite` (`rewrite`) removes them from the Parquet files.

Reads run in chunks of ids (COPY on PostgreSQL), so memory stays bounded by a chunk.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import Float, cast, extract, func, select, text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from recsvc import export_files, ingest
from recsvc.ingest import EVENTS, Cutoff

log = logging.getLogger("recsvc.export")

CHUNK_ROWS = 1_000_000

_COLUMNS = [
    "id",
    "event_id",
    "user_id",
    "item_id",
    "type",
    "value",
    "occurred_at",
    "received_at",
]
_SELECT_PG = (
    "SELECT id, event_id, user_id, item_id, type, value, "
    "extract(epoch FROM occurred_at)::float8, extract(epoch FROM received_at)::float8 "
    "FROM events WHERE id >= $1 AND id < $2"
)
# Constant statements, values bound: the first run, and the rows a previous snapshot did not see
# (as ingest._OUTSIDE_PG; rows without txid predate revision 0004 and were in every snapshot).
_COPY_PG = {
    "all": _SELECT_PG,
    "after": _SELECT_PG
    + " AND txid >= $3 AND NOT pg_visible_in_snapshot(txid::text::xid8, $4::text::pg_snapshot)",
}


@dataclass(frozen=True)
class ExportReport:
    run: int  # 0: nothing new, no run recorded
    n_events: int
    files: int
    cutoff: dict[str, Any]
    erased_logged: int
    removed_orphans: int


def _dialect(session: AsyncSession) -> str:
    return str(session.bind.dialect.name)


async def _id_range(session: AsyncSession) -> tuple[int, int]:
    low, high = (await session.execute(select(func.min(EVENTS.c.id), func.max(EVENTS.c.id)))).one()
    return int(low or 0), int(high or 0)


async def _chunks_pg(session: AsyncSession, previous: Cutoff | None, chunk_rows: int):
    low, high = await _id_range(session)
    raw = await (await session.connection()).get_raw_connection()
    connection = raw.driver_connection
    start = low
    while high and start <= high:
        stop = start + chunk_rows
        buffer = io.BytesIO()
        if previous is None or previous.snapshot is None:
            await connection.copy_from_query(
                _COPY_PG["all"], start, stop, output=buffer, format="csv"
            )
        else:
            await connection.copy_from_query(
                _COPY_PG["after"],
                start,
                stop,
                previous.snapshot_xmin,
                previous.snapshot,
                output=buffer,
                format="csv",
            )
        start = stop
        if not buffer.getbuffer().nbytes:
            continue
        buffer.seek(0)
        frame = pd.read_csv(
            buffer,
            header=None,
            names=_COLUMNS,
            dtype={"event_id": str, "user_id": str, "item_id": str, "type": str, "value": float},
            keep_default_na=False,  # an id spelled "NA" stays an id
            na_values={"value": [""], "event_id": [""]},
        )
        yield frame


async def _chunks_sqlite(
    session: AsyncSession, previous: Cutoff | None, max_id: int, chunk_rows: int
):
    start = (previous.max_id or 0) if previous is not None else 0
    while start < max_id:
        stop = min(start + chunk_rows, max_id)
        query = (
            select(
                EVENTS.c.id,
                EVENTS.c.event_id,
                EVENTS.c.user_id,
                EVENTS.c.item_id,
                EVENTS.c.type,
                EVENTS.c.value,
                # As ingest.read_events reads them, so features see the same seconds.
                cast(extract("epoch", EVENTS.c.occurred_at), Float),
                cast(extract("epoch", EVENTS.c.received_at), Float),
            )
            .where(EVENTS.c.id > start, EVENTS.c.id <= stop)
            .order_by(EVENTS.c.id)
        )
        rows = (await session.execute(query)).all()
        start = stop
        if rows:
            yield pd.DataFrame(rows, columns=_COLUMNS)


def _previous_cutoff(manifest: dict[str, Any] | None) -> Cutoff | None:
    stored = export_files.last_cutoff(manifest)
    return Cutoff.from_model({"events_cutoff": stored}) if stored else None


async def export_events(
    sessionmaker: async_sessionmaker[AsyncSession],
    directory: Path,
    chunk_rows: int = CHUNK_ROWS,
) -> ExportReport:
    """One export run: the new events, the erased list, then the manifest (last, atomically)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    manifest = export_files.read_manifest(directory)
    orphans = export_files.remove_unlisted(directory, manifest)
    previous = _previous_cutoff(manifest)
    run = export_files.last_run(manifest) + 1
    files: list[str] = []
    n_events = 0
    async with sessionmaker() as session:
        dialect = _dialect(session)
        if manifest is not None and manifest.get("dialect") != dialect:
            raise export_files.ExportError(
                f"{directory} was exported from {manifest.get('dialect')}, not {dialect}: "
                "export into an empty folder"
            )
        await ingest.begin_snapshot(session)
        if dialect == "postgresql":
            snapshot = await session.scalar(text("SELECT pg_current_snapshot()::text"))
            cutoff = Cutoff(snapshot=str(snapshot))
            chunks = _chunks_pg(session, previous, chunk_rows)
        else:
            max_id = int(await session.scalar(select(func.coalesce(func.max(EVENTS.c.id), 0))) or 0)
            cutoff = Cutoff(max_id=max_id)
            chunks = _chunks_sqlite(session, previous, max_id, chunk_rows)
        number = 0
        async for frame in chunks:
            table = export_files.events_table(
                frame["id"],
                frame["event_id"],
                frame["user_id"],
                frame["item_id"],
                frame["type"],
                frame["value"],
                frame["occurred_at"].to_numpy(dtype=np.float64),
                frame["received_at"].to_numpy(dtype=np.float64),
                run,
            )
            files += export_files.write_events(directory, run, number, table)
            n_events += table.num_rows
            number += 1
        erased = await ingest.erased_users(session)
    logged = export_files.log_erased(directory, erased, before_run=run, source="export")
    runs = list((manifest or {}).get("runs") or [])
    runs.append(
        {
            "run": run,
            "cutoff": cutoff.to_dict(),
            "exported_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "n_events": n_events,
            "files": files,
        }
    )
    export_files.write_manifest(
        directory, {"format": export_files.FORMAT, "dialect": dialect, "runs": runs}
    )
    return ExportReport(run, n_events, len(files), cutoff.to_dict(), len(logged), orphans)


def log_erasures(directory: Path, erased: dict[str, int]) -> int:
    """Log erasures the export has not seen (a training's snapshot of the erased list) before
    the database forgets them: they erase everything exported so far. How many were new."""
    manifest = export_files.read_manifest(directory)
    if manifest is None:
        return 0
    before = export_files.last_run(manifest) + 1
    return len(export_files.log_erased(directory, erased, before_run=before, source="training"))


def rewrite(directory: Path) -> tuple[int, int]:
    """`recsvc export events DIR --rewrite`: erased learners' events out of older files."""
    return export_files.rewrite_without_erased(Path(directory))
