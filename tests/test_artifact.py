"""artifact: atomic save, checksummed and memory-mapped load, clear errors, version names,
pruning (also of a version a process still maps)."""

from __future__ import annotations

import gc
import json
import mmap
import re
import time
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from recsvc import artifact
from recsvc.artifact import (
    ArtifactError,
    ModelArtifact,
    list_versions,
    load,
    new_version,
    newest_versions,
    prune,
    save,
)
from recsvc.features import EventColumns, FeatureConfig, TextIndex, build_interactions
from recsvc.scorer import CatalogView, RecommendRequest, Scorer
from recsvc.segments import segment_learners
from recsvc.training import ALSParams, train_model


@pytest.fixture(scope="module")
def model() -> ModelArtifact:
    users = [f"u{u}" for u in range(12) for _ in range(4)]
    items = [f"c{(u % 2) * 4 + j}" for u in range(12) for j in range(4)]
    ev = EventColumns.from_lists(
        users + ["u0", "u1", "u1"], items + ["c7", "c4", "c5"],
        ["view"] * len(users) + ["dislike", "purchase", "favorite"],
        [float(i) for i in range(len(users) + 3)],
    )  # fmt: skip
    interactions = build_interactions(ev, FeatureConfig())
    trained = train_model(interactions, ALSParams(factors=3, iterations=3), 0.25, seed=0)
    texts = TextIndex().fit(list(interactions.items.ids), [f"课程 {i}" for i in range(8)])
    item_ids = list(interactions.items.ids)
    segments = segment_learners(
        trained.user_factors,
        trained.user_weights,
        item_ids,
        {i: ["偶数" if int(i[1:]) < 4 else "奇数"] for i in item_ids},
        {},
        k=2,
    )
    return ModelArtifact.from_training(
        "20261128T101500-3f2a",
        trained,
        interactions,
        texts,
        extra={"note": "测试"},
        segments=segments,
    )


def test_round_trip_keeps_everything(model: ModelArtifact, tmp_path: Path) -> None:
    path = save(model, tmp_path)
    assert path == tmp_path / model.version
    loaded = load(path)
    assert loaded.version == model.version and loaded.params == model.params
    assert loaded.users == model.users and loaded.items == model.items
    np.testing.assert_array_equal(loaded.user_factors, model.user_factors)
    np.testing.assert_array_equal(loaded.item_factors, model.item_factors)
    assert (loaded.user_items != model.user_items).nnz == 0
    assert (loaded.negatives != model.negatives).nnz == 0 and loaded.negatives.nnz == 1
    assert (loaded.consumed != model.consumed).nnz == 0 and loaded.consumed.shape == (12, 8)
    np.testing.assert_array_equal(loaded.popularity, model.popularity)
    np.testing.assert_array_equal(loaded.recent_popularity, model.recent_popularity)
    assert loaded.metrics == model.metrics and loaded.baseline_metrics == model.baseline_metrics
    assert loaded.n_events == model.n_events and loaded.extra == {"note": "测试"}
    assert loaded.text_index is not None and model.text_index is not None
    np.testing.assert_allclose(loaded.text_index.query("课程 3"), model.text_index.query("课程 3"))
    assert loaded.segments is not None and model.segments is not None
    np.testing.assert_array_equal(loaded.segments.of_user, model.segments.of_user)
    np.testing.assert_array_equal(loaded.segments.centroids, model.segments.centroids)
    assert loaded.segments.info == model.segments.info
    # Two groups of learners with disjoint courses: two segments, each labelled by its own.
    assert {s.label for s in loaded.segments.info} == {"奇数", "偶数"}
    assert sum(s.size for s in loaded.segments.info) == model.n_users


def test_manifest_describes_the_model_and_checksums_every_file(
    model: ModelArtifact, tmp_path: Path
) -> None:
    path = save(model, tmp_path)
    manifest = json.loads((path / "manifest.json").read_text(encoding="utf-8"))
    for key in ("version", "params", "n_users", "n_items", "n_events", "metrics",
                "baseline_metrics", "created_at", "code_version"):  # fmt: skip
        assert key in manifest
    assert manifest["params"]["factors"] == 3
    assert manifest["n_users"] == model.n_users and manifest["n_items"] == model.n_items
    files = {p.name for p in path.iterdir()} - {"manifest.json"}
    assert set(manifest["files"]) == files
    assert all(re.fullmatch(r"[0-9a-f]{64}", digest) for digest in manifest["files"].values())


def test_saves_leave_no_temporary_folders_and_never_overwrite(
    model: ModelArtifact, tmp_path: Path
) -> None:
    save(model, tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == [model.version]
    with pytest.raises(ArtifactError, match="already exists"):
        save(model, tmp_path)


def test_a_failed_save_leaves_nothing_behind(
    model: ModelArtifact, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def disk_full(*args: object, **kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(artifact, "_fsync_path", disk_full)
    with pytest.raises(ArtifactError, match="could not write"):
        save(model, tmp_path)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "victim",
    [
        "factors.user.npy",
        "users.text.npy",
        "consumed_by_item.indices.npy",
        "text_index.data.npy",
        "confidence.item_length_norm.npy",
        "segments.of_user.npy",
        "segments.json",
    ],
)
def test_a_corrupt_file_is_refused(model: ModelArtifact, tmp_path: Path, victim: str) -> None:
    path = save(model, tmp_path)
    data = bytearray((path / victim).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (path / victim).write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match=f"checksum mismatch in {victim}"):
        load(path)


def test_missing_files_and_manifests_are_refused(model: ModelArtifact, tmp_path: Path) -> None:
    path = save(model, tmp_path)
    (path / "popularity.all.npy").unlink()
    with pytest.raises(ArtifactError, match="missing file popularity.all.npy"):
        load(path)
    (path / "manifest.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(ArtifactError, match="unreadable manifest"):
        load(path)
    (path / "manifest.json").unlink()
    with pytest.raises(ArtifactError, match="no manifest"):
        load(path)
    with pytest.raises(ArtifactError):
        load(tmp_path / "does-not-exist")


def test_inconsistent_arrays_are_refused_even_with_matching_checksums(
    model: ModelArtifact, tmp_path: Path
) -> None:
    path = save(model, tmp_path)
    np.save(path / "factors.user.npy", model.user_factors[:-1])
    manifest = json.loads((path / "manifest.json").read_text(encoding="utf-8"))
    manifest["files"]["factors.user.npy"] = artifact._sha256(path / "factors.user.npy")
    (path / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    with pytest.raises(ArtifactError, match="inconsistent model"):
        load(path)


def test_invalid_version_names_are_refused(model: ModelArtifact, tmp_path: Path) -> None:
    from dataclasses import replace

    with pytest.raises(ArtifactError, match="invalid model version"):
        save(replace(model, version="../escape"), tmp_path)


def test_new_version_is_a_sortable_utc_timestamp_with_random_suffix() -> None:
    when = datetime(2026, 11, 28, 10, 15, 0, tzinfo=UTC)
    version = new_version(when)
    assert re.fullmatch(r"20261128T101500-[0-9a-f]{4}", version)
    assert new_version(when.replace(second=1)) > version
    assert len({new_version(when) for _ in range(50)}) > 1


def test_prune_keeps_only_the_requested_versions(model: ModelArtifact, tmp_path: Path) -> None:
    from dataclasses import replace

    names = [f"2026112{d}T000000-000{d}" for d in range(5)]
    for name in names:
        save(replace(model, version=name), tmp_path)
    (tmp_path / ".tmp-crashed").mkdir()  # a fresh temp folder may be a save in progress
    assert list_versions(tmp_path) == names
    keep = newest_versions(list_versions(tmp_path), 2, always=[names[0]])
    assert keep == {names[0], names[3], names[4]}
    removed = prune(tmp_path, keep)
    assert sorted(removed) == names[1:3]
    assert list_versions(tmp_path) == [names[0], names[3], names[4]]
    assert (tmp_path / ".tmp-crashed").exists()
    prune(tmp_path, keep, stale_temp_seconds=-1)
    assert not (tmp_path / ".tmp-crashed").exists()
    load(tmp_path / names[4])  # survivors still load


def test_consumed_marks_the_pairs_with_a_consumed_event_type(model: ModelArtifact) -> None:
    u1 = model.users.index_of("u1")
    c4, c5 = model.items.index_of("c4"), model.items.index_of("c5")
    assert model.consumed.nnz == 1 and model.consumed[u1, c4]  # purchase: consumed by default
    assert not model.consumed[u1, c5]  # favorite: not a consumed type


def test_consumed_types_are_configurable() -> None:
    ev = EventColumns.from_lists(
        ["u0", "u0", "u1", "u1"], ["c0", "c1", "c0", "c1"],
        ["purchase", "favorite", "view", "view"], [1.0, 2.0, 3.0, 4.0],
    )  # fmt: skip
    interactions = build_interactions(ev, FeatureConfig())
    trained = train_model(interactions, ALSParams(factors=2, iterations=2), 0.25, seed=0)
    chosen = ModelArtifact.from_training("v1", trained, interactions, consumed_types=("favorite",))
    assert chosen.consumed.toarray().tolist() == [[False, True], [False, False]]


def test_fold_in_weights_and_fitted_confidence_round_trip(
    model: ModelArtifact, tmp_path: Path
) -> None:
    assert model.user_weights is not None and model.confidence is not None
    loaded = load(save(model, tmp_path))
    assert loaded.user_weights is not None and loaded.confidence is not None
    assert (loaded.user_weights != model.user_weights).nnz == 0
    assert loaded.confidence.to_arrays().keys() == model.confidence.to_arrays().keys()
    assert (loaded.confidence.transform(loaded.user_weights) != model.user_items).nnz == 0


def test_models_saved_without_fold_in_weights_still_load(
    model: ModelArtifact, tmp_path: Path
) -> None:
    """Older artifacts have no confidence arrays: fold-in falls back to a log1p confidence and
    the weights recovered with its inverse, exact for a log1p model like this one."""
    path = save(replace(model, user_weights=None, confidence=None), tmp_path)
    assert not list(path.glob("confidence.*"))
    older = load(path)
    assert older.user_weights is None and older.confidence is None
    weights, confidence = older.fold_in_basis()
    assert confidence.scheme == "log1p" and confidence.alpha == model.params.alpha
    assert model.user_weights is not None
    np.testing.assert_array_equal(weights.indices, model.user_weights.indices)
    np.testing.assert_allclose(weights.data, model.user_weights.data, rtol=1e-5)
    np.testing.assert_allclose(confidence.transform(weights).data, older.user_items.data, rtol=1e-6)


def test_erasing_a_user_removes_their_fold_in_weights(model: ModelArtifact, tmp_path: Path) -> None:
    smaller = artifact.without_users(model, ["u3"])
    assert smaller is not None and smaller.user_weights is not None
    assert smaller.user_weights.shape == (model.n_users - 1, model.n_items)
    loaded = load(save(smaller, tmp_path))
    assert "u3" not in loaded.users and loaded.user_weights is not None
    assert (loaded.user_weights != smaller.user_weights).nnz == 0
    assert loaded.segments is not None and model.segments is not None
    keep = np.asarray(model.users.ids) != "u3"
    np.testing.assert_array_equal(loaded.segments.of_user, model.segments.of_user[keep])


# --------------------------------------------------------------------------------------------
# Memory-mapped loading, verification once per machine, pruning under a mapping
# --------------------------------------------------------------------------------------------


def _mapped(array: object) -> bool:
    """Whether `array` is a view of a memory-mapped file (not a copy in this process)."""
    while array is not None:
        if isinstance(array, np.memmap | mmap.mmap):
            return True
        array = getattr(array, "base", None)
    return False


def test_a_loaded_version_maps_its_arrays_and_the_scorer_copies_none(
    model: ModelArtifact, tmp_path: Path
) -> None:
    loaded = load(save(model, tmp_path))
    assert loaded.user_weights is not None and loaded.segments is not None
    assert loaded.consumed_by_item is not None and loaded.text_index is not None
    for array in (
        loaded.user_factors,
        loaded.item_factors,
        loaded.item_factors_t,
        loaded.unit_item_factors,
        loaded.user_weights.data,
        loaded.user_weights.indices,
        loaded.consumed.indptr,
        loaded.consumed_by_item.indices,
        loaded.popularity,
        loaded.segments.of_user,
        *loaded.users.to_arrays().values(),
        *loaded.text_index.items.to_arrays().values(),
    ):
        assert _mapped(array)
    scorer = Scorer(loaded, FeatureConfig())
    audiences = scorer.audiences
    for array in (
        scorer._user_factors,
        scorer._item_factors,
        scorer._item_factors_t,
        scorer._unit_item_factors,
        scorer._user_weights.data,
        scorer._user_weights.indices,
        scorer._consumed.indices,
        scorer._negatives.indptr,
        audiences._consumed.indices,
        audiences._user_factors,
    ):
        assert _mapped(array)
    # The derived arrays are what the scorer computes for a model it did not load.
    computed = model.with_serving_arrays()
    assert computed.item_factors_t is not None and computed.unit_item_factors is not None
    np.testing.assert_array_equal(loaded.item_factors_t, computed.item_factors_t)
    np.testing.assert_array_equal(loaded.unit_item_factors, computed.unit_item_factors)
    assert computed.consumed_by_item is not None
    assert (loaded.consumed_by_item != computed.consumed_by_item).nnz == 0


def _count_hashing(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    hashed: list[str] = []
    original = artifact._sha256

    def counting(path: Path) -> str:
        hashed.append(path.name)
        return original(path)

    monkeypatch.setattr(artifact, "_sha256", counting)
    return hashed


def test_a_verification_is_remembered_until_a_file_changes(
    model: ModelArtifact, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = save(model, tmp_path)
    files = set(json.loads((path / "manifest.json").read_text())["files"])
    monkeypatch.setattr(artifact, "_SETTLED_SECONDS", 0.0)  # these files are a moment old
    hashed = _count_hashing(monkeypatch)
    load(path)
    assert set(hashed) - {"manifest.json"} == files and (path / artifact.VERIFIED).is_file()
    hashed.clear()
    load(path)  # the same files: only the manifest is hashed
    assert hashed == ["manifest.json"]
    time.sleep(0.05)
    victim = path / "factors.item.npy"
    data = bytearray(victim.read_bytes())
    data[-1] ^= 0xFF  # same size, in place
    with victim.open("r+b") as fh:
        fh.write(bytes(data))
    with pytest.raises(ArtifactError, match="checksum mismatch in factors.item.npy"):
        load(path)


def test_files_younger_than_the_settling_time_are_verified_every_time(
    model: ModelArtifact, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = save(model, tmp_path)
    hashed = _count_hashing(monkeypatch)
    load(path)
    load(path)
    assert hashed.count("factors.user.npy") == 2
    assert not (path / artifact.VERIFIED).exists()


def test_pruning_a_version_that_a_process_still_maps_does_not_break_it(
    model: ModelArtifact, tmp_path: Path
) -> None:
    """Pruning unlinks the files; the mappings keep their pages until the scorer is dropped."""
    path = save(model, tmp_path)
    scorer = Scorer(load(path), FeatureConfig())
    requests = [RecommendRequest(user_id=u, n=4) for u in ("u0", "u5", "u11")]
    before = [
        [r.item_id for r in result.items] for result in scorer.recommend(requests, CatalogView())
    ]
    assert prune(tmp_path, keep=[]) == [model.version] and not path.exists()
    gc.collect()
    after = [
        [r.item_id for r in result.items] for result in scorer.recommend(requests, CatalogView())
    ]
    assert after == before and all(after)
    assert scorer.audiences.for_vector(
        scorer._item_factors[0], 3, np.zeros(0, np.int64), frozenset()
    )
