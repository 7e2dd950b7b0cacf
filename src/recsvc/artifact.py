"""Model artifacts on disk: `models/<version>/`, written atomically, read with checksums.

A version folder holds plain arrays and JSON only (no pickle, loaded with allow_pickle=False):

    factors.npz        user_factors, item_factors (float32)
    vocabulary.npz     user_ids, item_ids (the rows/columns of the factors)
    interactions.npz   the confidence matrix of the final fit, the negatives and the consumed
                       pairs (CSR parts)
    popularity.npz     popularity, recent_popularity (per item)
    confidence.npz     what fold-in starts from: the final fit's pair weights (CSR parts) and
                       its fitted confidence (features.Confidence); absent in older models,
                       see ModelArtifact.fold_in_basis
    text_terms.json,   the item text index (optional, see features.TextIndex)
    text_index.npz
    segments.npz,      the learner segments: each user row's segment and the centroids, and
    segments.json      their descriptions (optional, see segments.Segments)
    manifest.json      version, params, sizes, metrics, created_at, code version, and the
                       sha256 of every other file

`save` writes into a hidden temporary folder next to the destination, fsyncs, then renames it:
readers see either no folder or a complete one. `load` refuses a folder whose files are
missing, altered or inconsistent with `ArtifactError`, so a serving worker can keep its
previous model. Exceptions: ArtifactError(Exception), nothing else escapes on bad input.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import secrets
import shutil
import tempfile
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp

from recsvc import __version__ as code_version
from recsvc.config import DEFAULT_CONSUMED_TYPES
from recsvc.features import Confidence, Interactions, TextIndex, Vocabulary
from recsvc.segments import Segments
from recsvc.training import ALSParams, TrainedModel

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
_TEMP_PREFIX = ".tmp-"
_TRASH_PREFIX = ".trash-"
# Versions are folder names: refuse anything that could escape models_dir or hide itself.
_VERSION_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class ArtifactError(Exception):
    """A model folder is missing, incomplete, corrupt, or cannot be written."""


@dataclass(frozen=True, eq=False)
class ModelArtifact:
    """Everything serving needs from one trained version."""

    version: str
    params: ALSParams
    users: Vocabulary
    items: Vocabulary
    user_factors: npt.NDArray[np.float32]
    item_factors: npt.NDArray[np.float32]
    user_items: sp.csr_matrix
    negatives: sp.csr_matrix
    # Pairs with an event of a "consumed" type (enrolled, bought, ...): never recommended again.
    consumed: sp.csr_matrix
    popularity: npt.NDArray[np.int64]
    recent_popularity: npt.NDArray[np.int64]
    metrics: Mapping[str, float]
    baseline_metrics: Mapping[str, float]
    n_events: int
    created_at: str
    code_version: str = code_version
    text_index: TextIndex | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)
    # The final fit's pair weights (user_items before the confidence) and its fitted confidence;
    # None in models saved before they were stored: use `fold_in_basis`.
    user_weights: sp.csr_matrix | None = None
    confidence: Confidence | None = None
    segments: Segments | None = None

    @property
    def n_users(self) -> int:
        return len(self.users)

    @property
    def n_items(self) -> int:
        return len(self.items)

    def fold_in_basis(self) -> tuple[sp.csr_matrix, Confidence]:
        """The stored pair weights and the confidence fitted at training: fold-in adds a user's
        new weights to their stored ones and applies that confidence, as training would.

        Models saved without them fall back to a log1p confidence at the model's alpha and to
        weights recovered from `user_items` with its inverse, w = expm1((c - 1) / alpha) (all 1
        when alpha is 0). That is exact for log1p models. For older bm25 models a user's stored
        row still folds in unchanged, but new events are weighted on the log1p scale rather
        than the training one, until the next training writes a complete artifact.
        """
        if self.user_weights is not None and self.confidence is not None:
            return self.user_weights, self.confidence
        legacy = Confidence("log1p", self.params.alpha)
        weights = sp.csr_matrix(self.user_items, dtype=np.float32, copy=True)
        if legacy.alpha > 0:
            recovered = np.expm1((weights.data.astype(np.float64) - 1.0) / legacy.alpha)
            weights.data = recovered.astype(np.float32)
        else:
            weights.data[:] = 1.0
        return weights, legacy

    @classmethod
    def from_training(
        cls,
        version: str,
        trained: TrainedModel,
        interactions: Interactions,
        text_index: TextIndex | None = None,
        extra: Mapping[str, Any] | None = None,
        consumed_types: Iterable[str] = DEFAULT_CONSUMED_TYPES,
        segments: Segments | None = None,
    ) -> ModelArtifact:
        return cls(
            version=version,
            params=trained.params,
            users=trained.users,
            items=trained.items,
            user_factors=trained.user_factors,
            item_factors=trained.item_factors,
            user_items=trained.user_items,
            negatives=interactions.negatives,
            consumed=interactions.consumed(consumed_types),
            popularity=interactions.popularity,
            recent_popularity=interactions.recent_popularity,
            metrics=dict(trained.metrics),
            baseline_metrics=dict(trained.baseline_metrics),
            n_events=trained.n_events,
            created_at=_utc_now_iso(),
            text_index=text_index,
            extra=dict(extra or {}),
            user_weights=trained.user_weights,
            confidence=trained.confidence,
            segments=segments,
        )


def _utc_now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def new_version(now: datetime | None = None) -> str:
    """UTC timestamp + 4 random hex digits, e.g. "20261128T101500-3f2a": sorts by time, and two
    trainers starting in the same second do not collide."""
    moment = (now or datetime.now(UTC)).astimezone(UTC)
    return f"{moment:%Y%m%dT%H%M%S}-{secrets.token_hex(2)}"


def _check_version(version: str) -> None:
    if not _VERSION_PATTERN.match(version):
        raise ArtifactError(f"invalid model version name {version!r}")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _fsync_path(path: Path) -> None:
    # Directories need fsync too, or a rename can be lost on power failure.
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _csr_arrays(prefix: str, matrix: sp.csr_matrix) -> dict[str, npt.NDArray[Any]]:
    return {
        f"{prefix}_data": matrix.data,
        f"{prefix}_indices": matrix.indices,
        f"{prefix}_indptr": matrix.indptr,
        f"{prefix}_shape": np.asarray(matrix.shape, dtype=np.int64),
    }


def _csr_from(arrays: Mapping[str, npt.NDArray[Any]], prefix: str) -> sp.csr_matrix:
    shape = tuple(int(v) for v in arrays[f"{prefix}_shape"])
    return sp.csr_matrix(
        (arrays[f"{prefix}_data"], arrays[f"{prefix}_indices"], arrays[f"{prefix}_indptr"]),
        shape=(shape[0], shape[1]),
    )


def save(artifact: ModelArtifact, models_dir: Path) -> Path:
    """Write `models_dir/<version>/` atomically and return its path."""
    _check_version(artifact.version)
    models_dir.mkdir(parents=True, exist_ok=True)
    destination = models_dir / artifact.version
    if destination.exists():
        raise ArtifactError(f"model version {artifact.version} already exists at {destination}")

    temp = Path(tempfile.mkdtemp(prefix=f"{_TEMP_PREFIX}{artifact.version}-", dir=models_dir))
    try:
        arrays: dict[str, dict[str, npt.NDArray[Any]]] = {
            "factors.npz": {
                "user_factors": np.asarray(artifact.user_factors, dtype=np.float32),
                "item_factors": np.asarray(artifact.item_factors, dtype=np.float32),
            },
            # Vocabulary ids are object arrays: fixed-width unicode to save them without pickle.
            "vocabulary.npz": {
                "user_ids": artifact.users.ids.astype(str),
                "item_ids": artifact.items.ids.astype(str),
            },
            "interactions.npz": {
                **_csr_arrays("user_items", sp.csr_matrix(artifact.user_items)),
                **_csr_arrays("negatives", sp.csr_matrix(artifact.negatives)),
                **_csr_arrays("consumed", sp.csr_matrix(artifact.consumed)),
            },
            "popularity.npz": {
                "popularity": np.asarray(artifact.popularity, dtype=np.int64),
                "recent_popularity": np.asarray(artifact.recent_popularity, dtype=np.int64),
            },
        }
        if artifact.user_weights is not None and artifact.confidence is not None:
            arrays["confidence.npz"] = {
                **_csr_arrays("user_weights", sp.csr_matrix(artifact.user_weights)),
                **artifact.confidence.to_arrays(),
            }
        if artifact.segments is not None:
            arrays["segments.npz"] = artifact.segments.to_arrays()
        written: list[Path] = []
        for name, content in arrays.items():
            with (temp / name).open("wb") as fh:
                np.savez(fh, allow_pickle=False, **content)
            written.append(temp / name)
        if artifact.text_index is not None:
            written.extend(artifact.text_index.save(temp))
        if artifact.segments is not None:
            (temp / "segments.json").write_text(artifact.segments.info_json(), encoding="utf-8")
            written.append(temp / "segments.json")

        manifest = {
            "format_version": FORMAT_VERSION,
            "version": artifact.version,
            "created_at": artifact.created_at,
            "code_version": artifact.code_version,
            "params": artifact.params.to_dict(),
            "n_users": artifact.n_users,
            "n_items": artifact.n_items,
            "n_events": artifact.n_events,
            "metrics": dict(artifact.metrics),
            "baseline_metrics": dict(artifact.baseline_metrics),
            "has_text_index": artifact.text_index is not None,
            "extra": dict(artifact.extra),
            "files": {path.name: _sha256(path) for path in sorted(written)},
        }
        (temp / MANIFEST).write_text(
            json.dumps(manifest, indent=2, ensure_ascii=False, sort_keys=True), encoding="utf-8"
        )
        for path in [*written, temp / MANIFEST]:
            _fsync_path(path)
        _fsync_path(temp)
        os.rename(temp, destination)
        _fsync_path(models_dir)
    except ArtifactError:
        shutil.rmtree(temp, ignore_errors=True)
        raise
    except (OSError, TypeError, ValueError) as exc:
        shutil.rmtree(temp, ignore_errors=True)
        raise ArtifactError(f"could not write model {artifact.version}: {exc}") from exc
    return destination


def read_manifest(path: Path) -> dict[str, Any]:
    """The manifest of a version folder (not verifying the other files)."""
    try:
        manifest = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ArtifactError(f"{path}: no {MANIFEST}") from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"{path}: unreadable {MANIFEST}: {exc}") from exc
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        raise ArtifactError(f"{path}: {MANIFEST} has no file list")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ArtifactError(
            f"{path}: format_version {manifest.get('format_version')!r}, expected {FORMAT_VERSION}"
        )
    return manifest


def verify(path: Path) -> dict[str, Any]:
    """Check every file listed in the manifest against its checksum; return the manifest."""
    manifest = read_manifest(path)
    required = {"factors.npz", "vocabulary.npz", "interactions.npz", "popularity.npz"}
    missing_entries = required - set(manifest["files"])
    if missing_entries:
        raise ArtifactError(f"{path}: manifest lacks {sorted(missing_entries)}")
    for name, expected in manifest["files"].items():
        file_path = path / name
        if Path(name).name != name:
            raise ArtifactError(f"{path}: manifest lists a path outside the folder: {name!r}")
        if not file_path.is_file():
            raise ArtifactError(f"{path}: missing file {name}")
        if _sha256(file_path) != expected:
            raise ArtifactError(f"{path}: checksum mismatch in {name} (corrupt or altered)")
    return manifest


def load(path: Path) -> ModelArtifact:
    """Load and verify a version folder; any defect raises ArtifactError."""
    manifest = verify(path)
    try:
        with np.load(path / "factors.npz", allow_pickle=False) as npz:
            user_factors = npz["user_factors"]
            item_factors = npz["item_factors"]
        with np.load(path / "vocabulary.npz", allow_pickle=False) as npz:
            users = Vocabulary(npz["user_ids"])
            items = Vocabulary(npz["item_ids"])
        with np.load(path / "interactions.npz", allow_pickle=False) as npz:
            user_items = _csr_from(npz, "user_items")
            negatives = _csr_from(npz, "negatives")
            consumed = _csr_from(npz, "consumed")
        with np.load(path / "popularity.npz", allow_pickle=False) as npz:
            popularity = npz["popularity"]
            recent_popularity = npz["recent_popularity"]
        user_weights: sp.csr_matrix | None = None
        confidence: Confidence | None = None
        if "confidence.npz" in manifest["files"]:
            with np.load(path / "confidence.npz", allow_pickle=False) as npz:
                user_weights = _csr_from(npz, "user_weights")
                confidence = Confidence.from_arrays(npz)
        segments: Segments | None = None
        if "segments.npz" in manifest["files"]:
            with np.load(path / "segments.npz", allow_pickle=False) as npz:
                segments = Segments.from_stored(
                    npz, (path / "segments.json").read_text(encoding="utf-8")
                )
        text_index = TextIndex.load(path) if manifest.get("has_text_index") else None
        params = ALSParams.from_dict(manifest["params"])
    except ArtifactError:
        raise
    except (OSError, KeyError, ValueError, TypeError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"{path}: unreadable model files: {exc}") from exc

    n_users, n_items = len(users), len(items)
    problems = []
    if user_factors.ndim != 2 or user_factors.shape[0] != n_users:
        problems.append(f"user_factors {user_factors.shape} vs {n_users} users")
    if item_factors.ndim != 2 or item_factors.shape[0] != n_items:
        problems.append(f"item_factors {item_factors.shape} vs {n_items} items")
    if user_factors.shape[1:] != item_factors.shape[1:]:
        problems.append("user and item factors differ in width")
    for name, matrix in (
        ("user_items", user_items),
        ("negatives", negatives),
        ("consumed", consumed),
        ("user_weights", user_weights),
    ):
        if matrix is not None and matrix.shape != (n_users, n_items):
            problems.append(f"{name} shape {matrix.shape} vs {(n_users, n_items)}")
    if confidence is not None and confidence.scheme == "bm25":
        norm_shape = confidence.item_length_norm.shape
        if norm_shape != (n_items,):
            problems.append(f"bm25 item_length_norm shape {norm_shape} vs {n_items} items")
    for name, array in (("popularity", popularity), ("recent_popularity", recent_popularity)):
        if array.shape != (n_items,):
            problems.append(f"{name} shape {array.shape} vs {n_items} items")
    if segments is not None and segments.of_user.shape != (n_users,):
        problems.append(f"segments of {segments.of_user.shape} users vs {n_users}")
    if (manifest.get("n_users"), manifest.get("n_items")) != (n_users, n_items):
        problems.append("manifest sizes differ from the arrays")
    if problems:
        raise ArtifactError(f"{path}: inconsistent model: {'; '.join(problems)}")

    return ModelArtifact(
        version=str(manifest["version"]),
        params=params,
        users=users,
        items=items,
        user_factors=user_factors,
        item_factors=item_factors,
        user_items=user_items,
        negatives=negatives,
        consumed=consumed,
        popularity=popularity,
        recent_popularity=recent_popularity,
        metrics=dict(manifest.get("metrics", {})),
        baseline_metrics=dict(manifest.get("baseline_metrics", {})),
        n_events=int(manifest.get("n_events", 0)),
        created_at=str(manifest.get("created_at", "")),
        code_version=str(manifest.get("code_version", "")),
        text_index=text_index,
        extra=dict(manifest.get("extra", {})),
        user_weights=user_weights,
        confidence=confidence,
        segments=segments,
    )


def list_versions(models_dir: Path) -> list[str]:
    """Complete version folders (those with a manifest), oldest first by name."""
    if not models_dir.is_dir():
        return []
    return sorted(
        entry.name
        for entry in models_dir.iterdir()
        if entry.is_dir()
        and not entry.name.startswith(".")
        and _VERSION_PATTERN.match(entry.name)
        and (entry / MANIFEST).is_file()
    )


def newest_versions(versions: Iterable[str], count: int, always: Iterable[str] = ()) -> set[str]:
    """The `count` newest versions (names sort by time) plus `always` (e.g. the active one)."""
    ordered = sorted(versions)
    return set(ordered[max(len(ordered) - count, 0) :]) | set(always)


def prune(models_dir: Path, keep: Iterable[str], stale_temp_seconds: float = 3600.0) -> list[str]:
    """Delete every version folder not in `keep`; return the deleted versions.

    A folder is first renamed to a hidden trash name, so a half-deleted folder never looks like
    a version. Temporary folders of saves that crashed are removed once older than
    `stale_temp_seconds` (younger ones may belong to a save still running).
    """
    keep_set = set(keep)
    removed: list[str] = []
    for version in list_versions(models_dir):
        if version in keep_set:
            continue
        trash = models_dir / f"{_TRASH_PREFIX}{version}-{secrets.token_hex(2)}"
        try:
            os.rename(models_dir / version, trash)
        except OSError:
            continue  # someone else removed or is using it; not our job to fight over it
        shutil.rmtree(trash, ignore_errors=True)
        removed.append(version)
    cutoff = time.time() - stale_temp_seconds
    for entry in models_dir.iterdir() if models_dir.is_dir() else []:
        if entry.name.startswith((_TEMP_PREFIX, _TRASH_PREFIX)) and entry.is_dir():
            with contextlib.suppress(OSError):
                if entry.stat().st_mtime < cutoff:
                    shutil.rmtree(entry, ignore_errors=True)
    return removed


# Fields of `ModelArtifact` with one row per user: what erasing a user removes.
_PER_USER_ROWS = ("user_factors", "user_items", "negatives", "consumed", "user_weights")


def without_users(model: ModelArtifact, user_ids: Iterable[str]) -> ModelArtifact | None:
    """`model` without the rows of these users (erasure), or None when it holds none of them.
    Item factors, popularity counts and metrics are aggregates over every learner and stay."""
    rows = model.users.indices_of(user_ids)
    rows = rows[rows >= 0]
    if not len(rows):
        return None
    keep = np.ones(model.n_users, dtype=bool)
    keep[rows] = False
    changed: dict[str, Any] = {
        name: matrix[keep]
        for name in _PER_USER_ROWS
        if (matrix := getattr(model, name)) is not None  # user_weights of older models
    }
    if model.segments is not None:
        changed["segments"] = model.segments.without_rows(keep)
    return replace(model, users=Vocabulary(model.users.ids[keep]), **changed)


def rewrite_without_users(path: Path, user_ids: Iterable[str]) -> bool:
    """Replace the version folder at `path` by one without these users' rows; False when it
    holds none of them. The new folder is written completely first, then swapped in with two
    renames: a worker that loads the version in the instant between them is refused the model
    and keeps serving the one it has."""
    model = load(path)
    smaller = without_users(model, user_ids)
    if smaller is None:
        return False
    staging = Path(tempfile.mkdtemp(prefix=f"{_TEMP_PREFIX}rewrite-", dir=path.parent))
    try:
        written = save(smaller, staging)
        trash = path.parent / f"{_TRASH_PREFIX}{path.name}-{secrets.token_hex(2)}"
        os.rename(path, trash)
        os.rename(written, path)
        _fsync_path(path.parent)
        shutil.rmtree(trash, ignore_errors=True)
    except OSError as exc:
        raise ArtifactError(f"could not rewrite {path}: {exc}") from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return True
