"""Model artifacts on disk: `models/<version>/`, written atomically, read with checksums.

A version folder holds plain arrays and JSON only (no pickle, loaded with allow_pickle=False).
Every array is its own uncompressed `<group>.<key>.npy` file, so that `load` memory-maps it
read-only: serving processes that load the same version share one copy of it in the page cache,
and loading reads only the headers (the pages come in when first touched).

    factors.{user,item}            user and item factors (float32)
    factors.{item_t,item_unit}     the item factors transposed and scaled to unit length: what
                                   scoring and diversity read, derived at save so that no
                                   process holds a private copy
    users.*, items.*               the vocabularies (features.Vocabulary.to_arrays)
    user_items.*                   the confidence matrix of the final fit (CSR: data, indices,
    negatives.*, consumed.*        indptr), the disliked and the consumed pairs (CSR, bool)
    consumed_by_item.*,            the same two by column (CSC: indices, indptr), for audiences
    negatives_by_item.*
    popularity.{all,recent}        per item
    ann.*                          the item index of a large catalog (ann.py; optional)
    user_weights.*, confidence.*   what fold-in starts from: the final fit's pair weights (CSR)
                                   and its fitted confidence (features.Confidence); absent in
                                   older models, see ModelArtifact.fold_in_basis
    text_index.*, text_terms.json  the item text index (optional, see features.TextIndex)
    segments.*, segments.json      the learner segments: each user row's segment and the
                                   centroids, and their descriptions (optional, segments.py)
    manifest.json                  version, params, sizes, metrics, created_at, code version,
                                   the arrays of each group, and the sha256 of every other file

Format 1 (one .npz file per group, before memory-mapped artifacts) is still read, into memory.

`save` writes into a hidden temporary folder next to the destination, fsyncs, then renames it:
readers see either no folder or a complete one. `load` refuses a folder whose files are
missing, altered or inconsistent with `ArtifactError`, so a serving worker can keep its
previous model. The checksums are computed once per machine: `verify` then records the files'
size, inode and times in `.verified.json` inside the folder, and later loads that find them
unchanged skip the hashing. Exceptions: ArtifactError(Exception), nothing else escapes on bad
input.
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
from recsvc import ann
from recsvc.ann import ItemIndex
from recsvc.config import DEFAULT_CONSUMED_TYPES
from recsvc.features import (
    Confidence,
    Interactions,
    TextIndex,
    Vocabulary,
    load_arrays,
    save_arrays,
)
from recsvc.segments import Segments
from recsvc.training import ALSParams, TrainedModel

FORMAT_VERSION = 2
_READABLE_FORMATS = (1, 2)
MANIFEST = "manifest.json"
VERIFIED = ".verified.json"
# A file must be this old before its verification is remembered: a file changed within the
# same clock tick as its writing could otherwise keep the size and times that were recorded.
_SETTLED_SECONDS = 2.0
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
    # Derived for serving (see `with_serving_arrays`): None until computed or loaded.
    item_factors_t: npt.NDArray[np.float32] | None = None
    unit_item_factors: npt.NDArray[np.float32] | None = None
    consumed_by_item: sp.csc_matrix | None = None
    negatives_by_item: sp.csc_matrix | None = None
    item_index: ItemIndex | None = None  # catalogs of at least ann.MIN_ITEMS courses

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

    def with_serving_arrays(self) -> ModelArtifact:
        """This artifact with the arrays serving derives from it: the item factors transposed
        (users @ items.T is 1.5x faster against a contiguous copy: 0.74 vs 1.12 ms for one
        user on 100k x 64) and at unit length (diversity), the consumed and disliked pairs by
        column (audiences), and for large catalogs the item index (ann.py). Loaded versions
        carry them, mapped from disk; the missing ones are computed here."""
        changes: dict[str, Any] = {}
        item_factors = np.asarray(self.item_factors, dtype=np.float32)
        if self.item_factors_t is None or self.unit_item_factors is None:
            norms = np.linalg.norm(item_factors, axis=1, keepdims=True)
            unit = (item_factors / np.where(norms > 0, norms, 1.0)).astype(np.float32)
            changes["item_factors_t"] = np.ascontiguousarray(item_factors.T)
            changes["unit_item_factors"] = unit
        if self.consumed_by_item is None or self.negatives_by_item is None:
            changes["consumed_by_item"] = _by_column(self.consumed)
            changes["negatives_by_item"] = _by_column(self.negatives)
        if self.item_index is None and self.n_items >= ann.MIN_ITEMS:
            changes["item_index"] = ann.build(item_factors, self.user_factors)
        return replace(self, **changes) if changes else self

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


def canonical_csr(
    matrix: sp.spmatrix | sp.sparray, dtype: Any, copy: bool = False
) -> sp.csr_matrix:
    """`matrix` as CSR of `dtype` with sorted, summed indices. Without `copy`, arrays that are
    already so (a loaded version's, memory-mapped) are used as they are; with it, `matrix` is
    never changed (save writes this form, so serving reads it without copying again)."""
    result = sp.csr_matrix(matrix, dtype=dtype, copy=copy)
    result.sum_duplicates()
    result.sort_indices()
    return result


def _by_column(matrix: sp.spmatrix | sp.sparray) -> sp.csc_matrix:
    result = sp.csc_matrix(matrix, dtype=bool, copy=True)
    result.sum_duplicates()
    result.sort_indices()
    return result


def _sparse_parts(matrix: sp.csr_matrix | sp.csc_matrix) -> dict[str, npt.NDArray[Any]]:
    # The index dtype scipy picks for these sizes, for both arrays: it copies any other.
    fits = max(matrix.nnz, *matrix.shape) < np.iinfo(np.int32).max
    index_dtype = np.int32 if fits else np.int64
    return {
        "data": matrix.data,
        "indices": matrix.indices.astype(index_dtype, copy=False),
        "indptr": matrix.indptr.astype(index_dtype, copy=False),
    }


def _sparse_from(
    parts: Mapping[str, npt.NDArray[Any]], shape: tuple[int, int], kind: str
) -> sp.csr_matrix | sp.csc_matrix:
    """A CSR (or CSC) matrix over the stored parts, without copying them; the part lengths are
    checked here, their contents by the checksums."""
    data, indices, indptr = parts["data"], parts["indices"], parts["indptr"]
    major = shape[0] if kind == "csr" else shape[1]
    if len(indptr) != major + 1 or len(indices) != len(data) or int(indptr[-1]) != len(data):
        raise ArtifactError(f"sparse arrays disagree with the shape {shape}")
    build = sp.csr_matrix if kind == "csr" else sp.csc_matrix
    return build((data, indices, indptr), shape=shape, copy=False)


def _arrays_of(artifact: ModelArtifact) -> dict[str, dict[str, npt.NDArray[Any]]]:
    """The artifact as groups of plain arrays: `<group>.<key>.npy` on disk."""
    full = artifact.with_serving_arrays()
    assert full.item_factors_t is not None and full.unit_item_factors is not None
    assert full.consumed_by_item is not None and full.negatives_by_item is not None
    by_item = {
        "consumed_by_item": full.consumed_by_item,
        "negatives_by_item": full.negatives_by_item,
    }
    groups: dict[str, dict[str, npt.NDArray[Any]]] = {
        "factors": {
            "user": np.ascontiguousarray(full.user_factors, dtype=np.float32),
            "item": np.ascontiguousarray(full.item_factors, dtype=np.float32),
            "item_t": full.item_factors_t,
            "item_unit": full.unit_item_factors,
        },
        "users": full.users.to_arrays(),
        "items": full.items.to_arrays(),
        "user_items": _sparse_parts(canonical_csr(full.user_items, np.float32, copy=True)),
        "negatives": _sparse_parts(canonical_csr(full.negatives, bool, copy=True)),
        "consumed": _sparse_parts(canonical_csr(full.consumed, bool, copy=True)),
        **{name: _sparse_parts(matrix) for name, matrix in by_item.items()},
        "popularity": {
            "all": np.asarray(full.popularity, dtype=np.int64),
            "recent": np.asarray(full.recent_popularity, dtype=np.int64),
        },
    }
    if full.user_weights is not None and full.confidence is not None:
        groups["user_weights"] = _sparse_parts(
            canonical_csr(full.user_weights, np.float32, copy=True)
        )
        groups["confidence"] = full.confidence.to_arrays()
    if full.segments is not None:
        groups["segments"] = full.segments.to_arrays()
    if full.item_index is not None:
        groups["ann"] = full.item_index.to_arrays()
    return groups


def save(artifact: ModelArtifact, models_dir: Path) -> Path:
    """Write `models_dir/<version>/` atomically and return its path."""
    _check_version(artifact.version)
    models_dir.mkdir(parents=True, exist_ok=True)
    destination = models_dir / artifact.version
    if destination.exists():
        raise ArtifactError(f"model version {artifact.version} already exists at {destination}")

    temp = Path(tempfile.mkdtemp(prefix=f"{_TEMP_PREFIX}{artifact.version}-", dir=models_dir))
    try:
        groups = _arrays_of(artifact)
        texts: dict[str, str] = {}
        if artifact.text_index is not None:
            texts["text_terms.json"], groups["text_index"] = artifact.text_index.to_stored()
        if artifact.segments is not None:
            texts["segments.json"] = artifact.segments.info_json()
        written: list[Path] = []
        for group, arrays in groups.items():
            written.extend(save_arrays(temp, group, arrays))
        for name, content in texts.items():
            (temp / name).write_text(content, encoding="utf-8")
            written.append(temp / name)

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
            "arrays": {group: sorted(arrays) for group, arrays in groups.items()},
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
    if manifest.get("format_version") not in _READABLE_FORMATS:
        raise ArtifactError(
            f"{path}: format_version {manifest.get('format_version')!r}, expected one of "
            f"{list(_READABLE_FORMATS)}"
        )
    return manifest


# The groups every version has, and (format 1) the files that held them.
_REQUIRED_GROUPS = frozenset(
    {"factors", "users", "items", "user_items", "negatives", "consumed", "popularity"}
    | {"consumed_by_item", "negatives_by_item"}
)
_REQUIRED_FORMAT1 = frozenset(
    {"factors.npz", "vocabulary.npz", "interactions.npz", "popularity.npz"}
)


def _required_files(manifest: Mapping[str, Any]) -> set[str]:
    if manifest["format_version"] == 1:
        return set(_REQUIRED_FORMAT1)
    arrays = manifest.get("arrays")
    if not isinstance(arrays, dict) or not _REQUIRED_GROUPS <= set(arrays):
        return {f"{group}.*.npy" for group in _REQUIRED_GROUPS}
    return {f"{group}.{key}.npy" for group, keys in arrays.items() for key in keys}


def _file_state(path: Path) -> list[int]:
    """What changes when a file is rewritten or edited in place (times in ns)."""
    status = path.stat()
    return [status.st_size, status.st_ino, status.st_mtime_ns, status.st_ctime_ns]


def _remembered(path: Path, digest: str, states: Mapping[str, list[int]]) -> bool:
    try:
        record = json.loads((path / VERIFIED).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(record, dict) and record == {"manifest": digest, "files": dict(states)}


def _remember(path: Path, digest: str, states: Mapping[str, list[int]]) -> None:
    """Record a successful verification, unless a file is too new to be told apart from a later
    change (see _SETTLED_SECONDS) or the folder is read-only (then every load verifies)."""
    settled = time.time_ns() - int(_SETTLED_SECONDS * 1e9)
    if any(max(state[2], state[3]) > settled for state in states.values()):
        return
    temp = path / f"{VERIFIED}.{secrets.token_hex(4)}.tmp"
    with contextlib.suppress(OSError):
        try:
            temp.write_text(json.dumps({"manifest": digest, "files": dict(states)}), "utf-8")
            os.replace(temp, path / VERIFIED)
        finally:
            temp.unlink(missing_ok=True)


def verify(path: Path) -> dict[str, Any]:
    """Check every file listed in the manifest against its checksum; return the manifest.

    The hashing is skipped when `.verified.json` shows that this machine verified the same
    files before and none has changed since (same size, inode and times)."""
    manifest = read_manifest(path)
    missing_entries = _required_files(manifest) - set(manifest["files"])
    if missing_entries:
        raise ArtifactError(f"{path}: manifest lacks {sorted(missing_entries)}")
    states: dict[str, list[int]] = {}
    for name in manifest["files"]:
        file_path = path / name
        if Path(name).name != name:
            raise ArtifactError(f"{path}: manifest lists a path outside the folder: {name!r}")
        if not file_path.is_file():
            raise ArtifactError(f"{path}: missing file {name}")
        states[name] = _file_state(file_path)
    digest = _sha256(path / MANIFEST)
    if _remembered(path, digest, states):
        return manifest
    for name, expected in manifest["files"].items():
        if _sha256(path / name) != expected:
            raise ArtifactError(f"{path}: checksum mismatch in {name} (corrupt or altered)")
    _remember(path, digest, states)
    return manifest


def _format1_groups(path: Path, manifest: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """A format-1 folder (one .npz per group) read into memory as format-2 groups."""

    def read(name: str) -> dict[str, npt.NDArray[Any]]:
        with np.load(path / name, allow_pickle=False) as npz:
            return {key: npz[key] for key in npz.files}

    def sparse(arrays: Mapping[str, npt.NDArray[Any]], prefix: str) -> dict[str, Any]:
        return {key: arrays[f"{prefix}_{key}"] for key in ("data", "indices", "indptr")}

    factors, vocabulary = read("factors.npz"), read("vocabulary.npz")
    interactions, popularity = read("interactions.npz"), read("popularity.npz")
    groups: dict[str, dict[str, Any]] = {
        "factors": {"user": factors["user_factors"], "item": factors["item_factors"]},
        "users": Vocabulary(vocabulary["user_ids"]).to_arrays(),
        "items": Vocabulary(vocabulary["item_ids"]).to_arrays(),
        **{name: sparse(interactions, name) for name in ("user_items", "negatives", "consumed")},
        "popularity": {"all": popularity["popularity"], "recent": popularity["recent_popularity"]},
    }
    if "confidence.npz" in manifest["files"]:
        stored = read("confidence.npz")
        groups["user_weights"] = sparse(stored, "user_weights")
        groups["confidence"] = {k: v for k, v in stored.items() if not k.startswith("user_")}
    if "segments.npz" in manifest["files"]:
        groups["segments"] = read("segments.npz")
    if manifest.get("has_text_index"):
        groups["text_index"] = read("text_index.npz")
    return groups


def load(path: Path) -> ModelArtifact:
    """Verify a version folder and map its arrays; any defect raises ArtifactError."""
    manifest = verify(path)
    try:
        if manifest["format_version"] == 1:
            groups = _format1_groups(path, manifest)
        else:
            # implicit's fold-in takes the factors as writable buffers (it never writes them).
            groups = {
                group: load_arrays(path, group, keys, writable=group == "factors")
                for group, keys in manifest["arrays"].items()
            }
        users = Vocabulary.from_arrays(groups["users"])
        items = Vocabulary.from_arrays(groups["items"])
        shape = (len(users), len(items))
        factors = groups["factors"]
        user_factors, item_factors = factors["user"], factors["item"]
        user_items = _sparse_from(groups["user_items"], shape, "csr")
        negatives = _sparse_from(groups["negatives"], shape, "csr")
        consumed = _sparse_from(groups["consumed"], shape, "csr")
        by_item = {
            name: _sparse_from(groups[name], shape, "csc")
            for name in ("consumed_by_item", "negatives_by_item")
            if name in groups
        }
        user_weights: sp.csr_matrix | None = None
        confidence: Confidence | None = None
        if "confidence" in groups:
            user_weights = _sparse_from(groups["user_weights"], shape, "csr")
            confidence = Confidence.from_arrays(groups["confidence"])
        segments: Segments | None = None
        if "segments" in groups:
            segments = Segments.from_stored(
                groups["segments"], (path / "segments.json").read_text(encoding="utf-8")
            )
        text_index = None
        if manifest.get("has_text_index"):
            terms = (path / "text_terms.json").read_text(encoding="utf-8")
            text_index = TextIndex.from_stored(terms, groups["text_index"])
        item_index = None
        if "ann" in groups:
            item_index = ItemIndex.from_arrays(groups["ann"], len(items))
        params = ALSParams.from_dict(manifest["params"])
    except ArtifactError as exc:
        raise ArtifactError(f"{path}: inconsistent model: {exc}") from exc
    except (OSError, KeyError, ValueError, TypeError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"{path}: unreadable model files: {exc}") from exc

    n_users, n_items = shape
    problems = []
    if user_factors.ndim != 2 or user_factors.shape[0] != n_users:
        problems.append(f"user_factors {user_factors.shape} vs {n_users} users")
    if item_factors.ndim != 2 or item_factors.shape[0] != n_items:
        problems.append(f"item_factors {item_factors.shape} vs {n_items} items")
    if user_factors.shape[1:] != item_factors.shape[1:]:
        problems.append("user and item factors differ in width")
    for name, derived, expected in (
        ("item_t", factors.get("item_t"), item_factors.shape[::-1]),
        ("item_unit", factors.get("item_unit"), item_factors.shape),
    ):
        if derived is not None and derived.shape != expected:
            problems.append(f"factors.{name} shape {derived.shape} vs {expected}")
    if confidence is not None and confidence.scheme == "bm25":
        norm_shape = confidence.item_length_norm.shape
        if norm_shape != (n_items,):
            problems.append(f"bm25 item_length_norm shape {norm_shape} vs {n_items} items")
    popularity, recent_popularity = groups["popularity"]["all"], groups["popularity"]["recent"]
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
        item_factors_t=factors.get("item_t"),
        unit_item_factors=factors.get("item_unit"),
        consumed_by_item=by_item.get("consumed_by_item"),
        negatives_by_item=by_item.get("negatives_by_item"),
        item_index=item_index,
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
    # The by-column copies are derived again (`with_serving_arrays`); item arrays stay.
    changed |= {"consumed_by_item": None, "negatives_by_item": None}
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
