"""Audiences and segment pages: from a course (or some categories and tags) to learners.

Owned here, for one model version (`Audiences`, built by scorer.Scorer on first use):

* `for_vector`: the learners whose factors score highest against a course vector, leaving out
  excluded rows (those who consumed or disliked the course, erased learners, and learners the
  caller names, e.g. who consumed it after the model was trained).
* The course vector: the course's own factors; for a course newer than the model, the mean of
  its most text-similar model courses' factors weighted by similarity (`content`); for
  categories and tags, the popularity-weighted mean of their courses' factors (`topic`).
* Segment pages: a segment's learners in row order (ids sorted), after a row, without erased
  learners; and segment sizes without them.

numpy/scipy only: no web, no database.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp

from recsvc.features import Vocabulary
from recsvc.lists import top_n
from recsvc.segments import Segments

IndexArray = npt.NDArray[np.int64]
# Model courses whose factors stand in for a course newer than the model.
CONTENT_NEIGHBOURS = 10
# Scores the second half of the learners of an audience (see Audiences._scores).
_HALF = ThreadPoolExecutor(max_workers=1, thread_name_prefix="audience-half")


@dataclass(frozen=True)
class AudienceResult:
    strategy: str  # als: the course's factors; content: similar courses'; topic: categories/tags
    users: list[tuple[str, float]]
    basis: int  # model courses whose factors made the vector


class Audiences:
    def __init__(
        self,
        users: Vocabulary,
        user_factors: npt.NDArray[np.float32],
        consumed: sp.csc_matrix,
        negatives: sp.csc_matrix,
        segments: Segments | None,
    ) -> None:
        self.users = users
        self._user_factors = user_factors
        # Column access (who consumed course j): the artifact stores them by column.
        self._consumed = sp.csc_matrix(consumed)
        self._negatives = sp.csc_matrix(negatives)
        self.segments = segments
        self._members: list[IndexArray] | None = None
        self._lock = threading.Lock()
        self._forgotten_key: frozenset[str] | None = None
        self._forgotten_rows: IndexArray = np.zeros(0, dtype=np.int64)

    # --- exclusions -----------------------------------------------------------------------------

    def forgotten_rows(self, forgotten: frozenset[str]) -> IndexArray:
        """Rows of erased learners (cached per erased set: the set is replaced, never mutated)."""
        with self._lock:
            if self._forgotten_key is not forgotten:
                rows = self.users.indices_of(forgotten)
                self._forgotten_rows = np.sort(rows[rows >= 0])
                self._forgotten_key = forgotten
            return self._forgotten_rows

    def _excluded(
        self, items: IndexArray, forgotten: frozenset[str], also: Iterable[str], pairs: bool
    ) -> list[IndexArray]:
        """Rows to leave out: erased learners, `also`, and with `pairs` those who consumed or
        disliked one of `items` (the columns of the by-column pairs)."""
        rows = self.users.indices_of(also)
        excluded = [self.forgotten_rows(forgotten), rows[rows >= 0]]
        for matrix in (self._consumed, self._negatives) if pairs and len(items) else ():
            if matrix.shape[1]:
                excluded.append(matrix[:, items].indices)
        return excluded

    # --- audiences ------------------------------------------------------------------------------

    def for_vector(
        self,
        vector: npt.NDArray[np.float32],
        n: int,
        items: IndexArray,
        forgotten: frozenset[str],
        also_excluded: Iterable[str] = (),
        exclude_consumed: bool = True,
    ) -> list[tuple[str, float]]:
        """The top-n learners by factor score against `vector`, without the excluded ones:
        erased learners and `also_excluded` always; those who consumed or disliked one of
        `items` when `exclude_consumed`."""
        if not len(self.users):
            return []
        scores = self._scores(vector.astype(np.float32, copy=False))
        for rows in self._excluded(items, forgotten, also_excluded, exclude_consumed):
            scores[rows] = -np.inf
        top = top_n(scores, n)
        return list(zip(self.users.ids_of(top), scores[top].astype(float).tolist(), strict=True))

    def _scores(self, vector: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """Every learner's factors . vector. Bound by memory bandwidth (256 MB at 1M x 64), so
        the two halves of the learners are scored in two threads (matmul releases the GIL)."""
        scores = np.empty(len(self._user_factors), dtype=np.float32)
        middle = len(scores) // 2
        half = _HALF.submit(np.matmul, self._user_factors[middle:], vector, out=scores[middle:])
        np.matmul(self._user_factors[:middle], vector, out=scores[:middle])
        half.result()
        return scores

    # --- segments -------------------------------------------------------------------------------

    def _segment_members(self) -> list[IndexArray]:
        with self._lock:
            if self._members is None:
                assert self.segments is not None
                order = np.argsort(self.segments.of_user, kind="stable")
                bounds = np.searchsorted(
                    self.segments.of_user[order], np.arange(self.segments.k + 1)
                )
                self._members = [
                    order[bounds[s] : bounds[s + 1]].astype(np.int64)
                    for s in range(self.segments.k)
                ]
            return self._members

    def segment_sizes(self, forgotten: frozenset[str]) -> list[int]:
        """Learners per segment now: erased learners no longer count."""
        if self.segments is None:
            return []
        of_user = self.segments.of_user
        counts = np.bincount(of_user, minlength=self.segments.k)
        rows = self.forgotten_rows(forgotten)
        if len(rows):
            counts = counts - np.bincount(of_user[rows], minlength=self.segments.k)
        return [int(c) for c in counts]

    def segment_page(
        self, segment: int, after_row: int, limit: int, forgotten: frozenset[str]
    ) -> tuple[list[str], int | None]:
        """Up to `limit` learners of `segment` with a row above `after_row`, and the last row
        returned when more may follow (the next page's `after_row`), else None."""
        members = self._segment_members()[segment]
        start = int(np.searchsorted(members, after_row, side="right"))
        gone = self.forgotten_rows(forgotten)
        rows: list[int] = []
        position = start
        while position < len(members) and len(rows) < limit:
            chunk = members[position : position + 2 * limit]
            chunk = chunk[~np.isin(chunk, gone)] if len(gone) else chunk
            rows.extend(chunk.tolist()[: limit - len(rows)])
            position += 2 * limit
        row = rows[-1] if rows else after_row
        more = bool(len(rows) == limit and members[-1] > row) if len(members) else False
        return self.users.ids_of(rows), (row if more else None)
