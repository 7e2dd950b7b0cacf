"""The on-disk layout of an events export (`recsvc export events DIR`): the hand-off from the
database to a cluster. Files only (pyarrow and JSON): no database, no web, no Spark, so the
Spark engine and a cluster's driver read it with nothing else installed.

    DIR/manifest.json   the export runs: per run its number, the database cutoff it reached
                        (`ingest.Cutoff` as a dict), its files and event count; written last
                        and atomically, so a run that died leaves the previous manifest
    DIR/erased.jsonl    the erased-learners log: one JSON object per line, {"user_id",
                        "revision", "before_run", "logged_at", "source"}; the learner's events
                        exported by runs before `before_run` are erased (run `before_run` and
                        later only hold events stored after the erasure)
    DIR/events/day=YYYY-MM-DD/run-RRRRRR-CCCC.parquet
                        the events, partitioned by the UTC day they occurred on (Hive style);
                        each run adds files, older files change only by `rewrite_without_erased`

Parquet columns: id (int64, the database row id), event_id (string, null when the client gave
none), user_id, item_id, type (string), value (float64, null when none), occurred_at and
received_at (timestamp[us, UTC]), export_run (int32, the run that wrote the row).

Only files listed in the manifest belong to the export: a reader lists them (`event_files`)
instead of globbing, and the next run deletes any other file (left by a run that died).
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

FORMAT = 1
MANIFEST = "manifest.json"
ERASED_LOG = "erased.jsonl"
EVENTS_DIR = "events"

SCHEMA = pa.schema(
    [
        ("id", pa.int64()),
        ("event_id", pa.string()),
        ("user_id", pa.string()),
        ("item_id", pa.string()),
        ("type", pa.string()),
        ("value", pa.float64()),
        ("occurred_at", pa.timestamp("us", tz="UTC")),
        ("received_at", pa.timestamp("us", tz="UTC")),
        ("export_run", pa.int32()),
    ]
)


class ExportError(Exception):
    """The folder holds no usable export, or an export cannot be written there."""


@dataclass(frozen=True)
class ErasedEntry:
    """One learner's erasure as the export knows it (see the module docstring)."""

    user_id: str
    revision: int
    before_run: int
    logged_at: str
    source: str  # "export": seen by an export run; "training": logged by a training

    def to_dict(self) -> dict[str, Any]:
        return {
            "user_id": self.user_id,
            "revision": self.revision,
            "before_run": self.before_run,
            "logged_at": self.logged_at,
            "source": self.source,
        }


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _write_atomic(path: Path, text: str) -> None:
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    with temporary.open("w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    temporary.replace(path)


# --- manifest ------------------------------------------------------------------------------------


def read_manifest(directory: Path) -> dict[str, Any] | None:
    """The export's manifest, None when the folder holds no export yet."""
    path = Path(directory) / MANIFEST
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ExportError(f"{path} cannot be read: {exc}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ExportError(f"{path} is not a recsvc export manifest (format {FORMAT})")
    return manifest


def require_manifest(directory: Path) -> dict[str, Any]:
    """The manifest of an export with at least one run, or ExportError saying what to do."""
    manifest = read_manifest(directory)
    if manifest is None or not manifest.get("runs"):
        raise ExportError(
            f"{directory} holds no events export: run `recsvc export events {directory}` first"
        )
    return manifest


def write_manifest(directory: Path, manifest: Mapping[str, Any]) -> None:
    _write_atomic(Path(directory) / MANIFEST, json.dumps(manifest, indent=2) + "\n")


def last_run(manifest: Mapping[str, Any] | None) -> int:
    runs = (manifest or {}).get("runs") or []
    return int(runs[-1]["run"]) if runs else 0


def last_cutoff(manifest: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The database cutoff the export has reached (`ingest.Cutoff.to_dict`), None: none yet."""
    runs = (manifest or {}).get("runs") or []
    return dict(runs[-1]["cutoff"]) if runs else None


def event_files(directory: Path, manifest: Mapping[str, Any] | None = None) -> list[Path]:
    """Every Parquet file of the export, in run order."""
    manifest = manifest if manifest is not None else require_manifest(directory)
    return [Path(directory) / name for run in manifest["runs"] for name in run["files"]]


def remove_unlisted(directory: Path, manifest: Mapping[str, Any] | None) -> int:
    """Delete Parquet files the manifest does not list (a run that died); their count."""
    root = Path(directory) / EVENTS_DIR
    if not root.is_dir():
        return 0
    listed = {path.resolve() for path in event_files(directory, manifest)} if manifest else set()
    removed = 0
    for path in root.rglob("*"):
        if path.is_file() and path.resolve() not in listed:
            path.unlink()
            removed += 1
    return removed


# --- writing events ------------------------------------------------------------------------------


def write_events(directory: Path, run: int, chunk: int, table: pa.Table) -> list[str]:
    """Write one chunk of a run, one file per day; the file names relative to `directory`."""
    if table.num_rows == 0:
        return []
    table = table.cast(SCHEMA)
    micros = table["occurred_at"].cast(pa.int64()).to_numpy()
    day_numbers = np.floor_divide(micros, 86_400_000_000)
    # One stable sort by day, then a slice per day (not a filter over the chunk per day).
    order = np.argsort(day_numbers, kind="stable")
    table = table.take(pa.array(order))
    day_numbers = day_numbers[order]
    starts = np.flatnonzero(np.r_[True, day_numbers[1:] != day_numbers[:-1]])
    stops = np.r_[starts[1:], len(day_numbers)]
    names: list[str] = []
    for begin, stop in zip(starts.tolist(), stops.tolist(), strict=True):
        day = np.datetime64(int(day_numbers[begin]), "D").astype(str)
        relative = f"{EVENTS_DIR}/day={day}/run-{run:06d}-{chunk:04d}.parquet"
        path = Path(directory) / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.tmp")
        pq.write_table(table.slice(begin, stop - begin), temporary, compression="zstd")
        temporary.replace(path)
        names.append(relative)
    return names


def _array(values: Any, kind: pa.DataType) -> pa.Array:
    """Arrow column from a numpy/pandas column or any iterable; NaN and None are null."""
    if not isinstance(values, np.ndarray | pd.Series):
        values = list(values)
    return pa.array(values, kind, from_pandas=True)


def _timestamps(seconds: Any) -> pa.Array:
    # Microseconds, rounded: the unix seconds the trainer reads back are those of the database
    # to within one float64 rounding.
    micros = np.round(np.asarray(seconds, dtype=np.float64) * 1e6).astype(np.int64)
    return pa.array(micros).cast(pa.timestamp("us", tz="UTC"))


def events_table(
    ids: Iterable[int],
    event_ids: Iterable[str | None],
    user_ids: Iterable[str],
    item_ids: Iterable[str],
    types: Iterable[str],
    values: Iterable[float | None],
    occurred_at: Iterable[float],
    received_at: Iterable[float],
    run: int,
) -> pa.Table:
    """Columns as read from the database (times in unix seconds; numpy arrays, pandas columns
    or any iterables) as an export table."""
    occurred = _timestamps(
        occurred_at if isinstance(occurred_at, np.ndarray) else list(occurred_at)
    )
    return pa.table(
        {
            "id": _array(ids, pa.int64()),
            "event_id": _array(event_ids, pa.string()),
            "user_id": _array(user_ids, pa.string()),
            "item_id": _array(item_ids, pa.string()),
            "type": _array(types, pa.string()),
            "value": _array(values, pa.float64()),
            "occurred_at": occurred,
            "received_at": _timestamps(
                received_at if isinstance(received_at, np.ndarray) else list(received_at)
            ),
            "export_run": pa.array(np.full(len(occurred), run, dtype=np.int32)),
        },
        schema=SCHEMA,
    )


# --- the erased-learners log ---------------------------------------------------------------------


def read_erased(directory: Path) -> list[ErasedEntry]:
    path = Path(directory) / ERASED_LOG
    if not path.is_file():
        return []
    entries = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            row = json.loads(line)
            entries.append(
                ErasedEntry(
                    str(row["user_id"]),
                    int(row["revision"]),
                    int(row["before_run"]),
                    str(row.get("logged_at", "")),
                    str(row.get("source", "export")),
                )
            )
    return entries


def log_erased(
    directory: Path, erased: Mapping[str, int], before_run: int, source: str
) -> list[ErasedEntry]:
    """Append the erasures (user id -> erasure revision) the log does not hold yet; the new
    entries. An erasure already logged keeps its entry (and its `before_run`)."""
    known = {(e.user_id, e.revision) for e in read_erased(directory)}
    stamp = _now()
    new = [
        ErasedEntry(user_id, int(revision), before_run, stamp, source)
        for user_id, revision in sorted(erased.items())
        if (user_id, int(revision)) not in known
    ]
    if new:
        Path(directory).mkdir(parents=True, exist_ok=True)
        with (Path(directory) / ERASED_LOG).open("a", encoding="utf-8") as fh:
            fh.write("".join(json.dumps(e.to_dict()) + "\n" for e in new))
            fh.flush()
            os.fsync(fh.fileno())
    return new


def erased_before(entries: Iterable[ErasedEntry]) -> dict[str, int]:
    """User id -> the export run before which their events are erased (latest erasure wins)."""
    result: dict[str, int] = {}
    for entry in entries:
        result[entry.user_id] = max(result.get(entry.user_id, 0), entry.before_run)
    return result


def rewrite_without_erased(directory: Path) -> tuple[int, int]:
    """Rewrite every listed file holding events of erased learners without them (each file
    replaced atomically); (files rewritten, events removed)."""
    manifest = require_manifest(directory)
    before = erased_before(read_erased(directory))
    if not before:
        return 0, 0
    erased_users = pa.array(sorted(before), pa.string())
    limits = pa.array([before[u] for u in sorted(before)], pa.int32())
    files = removed = 0
    for path in event_files(directory, manifest):
        users = pq.read_table(path, columns=["user_id"])["user_id"]
        if not pc.any(pc.is_in(users, value_set=erased_users)).as_py():
            continue
        table = pq.read_table(path)
        position = pc.index_in(table["user_id"], value_set=erased_users)
        limit = pc.take(limits, pc.fill_null(position, 0))
        erased = pc.and_(pc.is_valid(position), pc.less(table["export_run"], limit))
        n_erased = pc.sum(erased.cast(pa.int64())).as_py() or 0
        if not n_erased:
            continue
        kept = table.filter(pc.invert(erased))
        temporary = path.with_name(f".{path.name}.tmp")
        pq.write_table(kept.cast(SCHEMA), temporary, compression="zstd")
        temporary.replace(path)
        files += 1
        removed += int(n_erased)
    return files, removed
