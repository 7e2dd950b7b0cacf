"""Bulk import of events, items and users from CSV or JSON lines (`recsvc import`).

Every row goes through the same pydantic models and rules as the HTTP API. Valid rows are
written in batches, each batch in its own transaction; invalid rows are reported with their line
numbers and skipped. CSV cells that hold JSON (context, attributes) are parsed; list cells
(categories, tags) take JSON or `a|b|c`; other user/item columns become attributes.
"""

from __future__ import annotations

import csv
import io
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, TextIO

from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from tqdm import tqdm

from recsvc import ingest
from recsvc.errors import dotted, validation_errors
from recsvc.schemas import EventIn, ItemWithId, UserIn, ValidationRules, unstorable

Kind = Literal["events", "items", "users"]

EVENT_COLUMNS = {"event_id", "user_id", "item_id", "type", "value", "timestamp", "context"}
ITEM_COLUMNS = {"item_id", "title", "description", "categories", "tags", "attributes", "available"}


@dataclass
class ImportReport:
    read: int = 0
    stored: int = 0
    duplicates: int = 0
    rejected: list[tuple[int, str]] = field(default_factory=list)  # (line number, reason)


def _open(path: str) -> TextIO:
    if path == "-":
        return io.TextIOWrapper(sys.stdin.buffer, encoding="utf-8")
    return Path(path).open(encoding="utf-8", newline="")


Rows = Iterator[tuple[int, dict[str, Any] | str]]


def read_rows(path: str) -> tuple[bool, Rows]:
    """(is_csv, (line number, row) pairs); a row that cannot be parsed is an error string.
    A file is JSON lines when it ends in .jsonl/.ndjson/.json or starts with `{`."""
    stream = _open(path)
    first = stream.read(1)
    is_csv = not (Path(path).suffix in (".jsonl", ".json", ".ndjson") or first == "{")
    return is_csv, _rows(stream, first, is_csv)


def _rows(stream: TextIO, first: str, is_csv: bool) -> Rows:
    try:
        lines = _prepend(first, stream)
        if is_csv:
            reader = csv.DictReader(lines)
            for row in reader:
                yield reader.line_num, {k: v for k, v in row.items() if k is not None}
            return
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                yield number, f"not valid JSON: {exc.msg}"
                continue
            yield number, row if isinstance(row, dict) else "a line must be a JSON object"
    finally:
        stream.close()


def _prepend(first: str, rest: TextIO) -> Iterator[str]:
    """The stream's lines, with the character already read for sniffing put back."""
    head = next(iter(rest), "")
    if first or head:
        yield first + head
    yield from rest


def _cell_json(value: Any) -> Any:
    if isinstance(value, str):
        value = value.strip()
        if value == "":
            return None
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value  # let validation say what is wrong with it
    return value


def _cell_list(value: Any) -> Any:
    if isinstance(value, str):
        value = value.strip()
        if value.startswith("["):
            return _cell_json(value)
        return [part.strip() for part in value.split("|") if part.strip()]
    return value


def _timestamp(value: Any) -> Any:
    """Unix seconds are accepted in files (many exports use them) and read as UTC."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return datetime.fromtimestamp(value, UTC)
    if isinstance(value, str) and value.strip().replace(".", "", 1).isdigit():
        return datetime.fromtimestamp(float(value), UTC)
    return value


def _blank_to_none(row: dict[str, Any]) -> dict[str, Any]:
    return {k: (None if v == "" else v) for k, v in row.items()}


def prepare_event(row: dict[str, Any]) -> dict[str, Any]:
    row = _blank_to_none(row)
    if "context" in row:
        row["context"] = _cell_json(row["context"])
    if row.get("timestamp") is not None:
        row["timestamp"] = _timestamp(row["timestamp"])
    return row


def prepare_item(row: dict[str, Any], from_csv: bool) -> dict[str, Any]:
    if not from_csv:
        return row
    row = _blank_to_none(row)
    extra = {k: v for k, v in row.items() if k not in ITEM_COLUMNS and v is not None}
    item = {k: v for k, v in row.items() if k in ITEM_COLUMNS and v is not None}
    for key in ("categories", "tags"):
        if key in item:
            item[key] = _cell_list(item[key])
    attributes = _cell_json(item.get("attributes")) or {}
    if isinstance(attributes, dict):
        item["attributes"] = {**extra, **attributes}
    if "available" in item:
        item["available"] = str(item["available"]).strip().lower() in ("1", "true", "yes")
    return item


def prepare_user(row: dict[str, Any], from_csv: bool) -> dict[str, Any]:
    if not from_csv:
        return row
    row = _blank_to_none(row)
    attributes = _cell_json(row.pop("attributes", None)) or {}
    extra = {k: v for k, v in row.items() if k != "user_id" and v is not None}
    return {"user_id": row.get("user_id"), "attributes": {**extra, **attributes}}


async def run_import(
    kind: Kind,
    path: str,
    sessionmaker: async_sessionmaker[AsyncSession],
    rules: ValidationRules,
    batch_size: int = 1000,
    progress: bool = True,
) -> ImportReport:
    report = ImportReport()
    from_csv, rows = read_rows(path)
    pending: list[Any] = []

    async def flush() -> None:
        if not pending:
            return
        async with sessionmaker() as session, session.begin():
            if kind == "events":
                inserted = await ingest.insert_events(session, pending)
                report.stored += inserted.accepted
                report.duplicates += inserted.duplicates
            elif kind == "items":
                report.stored += await ingest.put_items(session, pending)
            else:
                report.stored += await ingest.put_users(session, pending)
        pending.clear()

    # disable=None: a bar on a terminal, nothing in logs or pipes.
    bar = tqdm(
        unit=" rows", disable=None if progress else True, file=sys.stderr, desc=f"import {kind}"
    )
    for number, row in rows:
        report.read += 1
        bar.update(1)
        if isinstance(row, str):
            report.rejected.append((number, row))
            continue
        if problems := unstorable(row):
            reason = "; ".join(f"{dotted(p['loc']) or 'row'}: {p['msg']}" for p in problems)
            report.rejected.append((number, reason))
            continue
        try:
            if kind == "events":
                pending.append(EventIn.model_validate(prepare_event(row), context={"rules": rules}))
            elif kind == "items":
                pending.append(ItemWithId.model_validate(prepare_item(row, from_csv)))
            else:
                data = prepare_user(row, from_csv)
                user_id = data.pop("user_id", None)
                if not isinstance(user_id, str) or not 1 <= len(user_id) <= 128:
                    report.rejected.append((number, "user_id: a string of 1..128 characters"))
                    continue
                pending.append((user_id, UserIn.model_validate(data).attributes))
        except ValidationError as exc:
            errors = validation_errors(exc.errors(include_url=False, include_input=False))
            reason = "; ".join(f"{e['field'] or 'row'}: {e['msg']}" for e in errors)
            report.rejected.append((number, reason))
            continue
        if len(pending) >= batch_size:
            await flush()
    await flush()
    bar.close()
    return report
