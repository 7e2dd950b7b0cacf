"""Course families: many catalog items that are editions/variants of one course.

Online-education catalogs list the same course many times: "Python数据分析实战：pandas入门",
"…（第6期）", "…训练营", "…（2026新版）", "Machine Learning Basics (2026 Edition)",
"… Bootcamp", "… Vol. 3". A chatbot that shows 3–5 courses wastes its slots (and looks broken)
when three of them are the same course, so the recommender shows one edition per family. This
module only *finds* the families; picking the edition to show is the caller's business.

How a family is found (see :func:`detect_families`):

1. An explicit ``family``/``series`` attribute wins (:func:`explicit_family`). Operators set it
   when they know better than any heuristic, so it is never second-guessed or merged.
2. Otherwise the title is normalised (:func:`normalize_title`): NFKC, whitespace collapsed,
   edition markers stripped from the end, lower-cased. Equal normalised titles within the same
   category set are one family.
3. Near-equal normalised titles (character n-gram TF-IDF cosine >= ``FamilyRules.similarity``)
   within the same category set are merged as well, to catch variants no pattern knows.
   Categories bound the comparison: the same title under two subjects is usually a different
   course (and comparing only inside a category keeps the cost near-linear).

numpy/scipy/pandas/scikit-learn only: no web, no database.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components
from sklearn.feature_extraction.text import TfidfVectorizer

__all__ = [
    "DEFAULT_EDITION_PATTERNS",
    "DEFAULT_RULES",
    "FamilyRules",
    "detect_families",
    "explicit_family",
    "normalize_title",
]

# Patterns are matched against the *NFKC-normalised*, whitespace-collapsed title, so fullwidth
# forms are already folded: "（" -> "(", "｜" -> "|", "：" -> ":", "２" -> "2". The defaults use
# the ASCII forms; literal fullwidth characters in custom patterns are folded (`_fold_pattern`).
_SEP_CHARS = " \t|丨·•・‧-–—―~:,/_、"
# One separator character that may precede a marker ("…｜零基础", "…·项目实战", "…: Hands-on").
_SEP = r"[\s|丨·•・‧\-–—―~:,/_、]"
# Optional brackets around a marker ("（精讲）", "【训练营】", "(Bootcamp)").
_OPEN = r"[(\[【〔「『]"
_CLOSE = r"[)\]】〕」』]"
_CN_NUM = r"[0-9零〇一二两三四五六七八九十百]+"
_YEAR = r"(?:19|20)\d{2}"

DEFAULT_EDITION_PATTERNS: tuple[str, ...] = (
    # run / edition number: 第6期, 第二期, 第2版 (brackets are added by the wrapper)
    rf"第\s*{_CN_NUM}\s*[期版]",
    # year / "new" editions: 2026新版, 2026版, 2026年版, 新版, 最新版, 升级版, 修订版
    rf"(?:{_YEAR}\s*年?\s*(?:全新|最新|新|升级|修订)?|全新|最新|新|升级|修订)\s*版",
    # a bare year only when bracketed: "(2026)"; "Office 2019" is a product version, not an edition
    rf"{_OPEN}\s*{_YEAR}\s*年?\s*{_CLOSE}",
    # formats/variants of one course
    r"精讲班?|系统课|系统班|训练营|实战营|特训营|集训营|零基础|项目实战|直播课|录播课",
    # English editions: (2026 Edition), (2nd Edition), Second Edition, 3rd ed.
    rf"\b(?:{_YEAR}|\d+(?:st|nd|rd|th)|first|second|third|fourth|fifth|new|updated|revised)"
    r"\s+(?:edition|ed\.)",
    rf"\b(?:updated\s+(?:for\s+|in\s+)?{_YEAR}|{_YEAR}\s+update)",
    r"\bhands[-\s]?on(?:\s+projects?)?",
    r"\bboot\s?camp",
    r"\bmaster\s?class",
    r"\bcrash\s+course",
    # English runs: "Vol. 3", "Volume III", "Cohort 4" (the demo's English form of 第k期).
    # Deliberately NOT "Part 2", "Level 2", "Book 2", 上册/下册: those are different content.
    r"\bvol(?:ume)?\.?\s*(?:\d+|[ivxlc]+)\b",
    r"\bcohort\s*\d+",
)

# Tokens that tell two otherwise near-identical titles apart as *different courses* (part,
# level, exam grade, volume half). Used only by the similarity step: "新概念英语第一册" and
# "新概念英语第二册", "日语N2冲刺班" and "日语N3冲刺班", "Python初级" and "Python高级" are
# close in n-gram space but are not editions of each other.
_DISTINCT_RE = re.compile(
    r"\d+|[零〇一二两三四五六七八九十百千]+|\b(?:i{1,3}|iv|vi{0,3}|ix|x)\b"
    r"|入门|初级|中级|高级|进阶|基础|提高|精通|[上中下](?:册|篇)?$"
    r"|\b(?:beginners?|intermediate|advanced|basics?|fundamentals|expert)\b",
    re.IGNORECASE,
)


_SEP_RUN = re.compile(rf"{_SEP}+")


_PATTERN_TOKEN = re.compile(r"\\.|.", re.DOTALL)


def _fold_pattern(pattern: str) -> str:
    """The pattern with each literal character that NFKC changes replaced by its folded form,
    escaped: operators writing "（第\\d+期）" or "｜训练营" in configuration then match the
    normalised title ("(第3期)", "|训练营") instead of silently never matching. Escaped
    characters (after a backslash) are left alone."""

    def fold(m: re.Match[str]) -> str:
        tok = m.group(0)
        if len(tok) > 1:
            return tok
        folded = unicodedata.normalize("NFKC", tok)
        return tok if folded == tok else re.escape(folded)

    return _PATTERN_TOKEN.sub(fold, pattern)


def _wrap(pattern: str) -> str:
    # separators, optional brackets, the marker, optional closing bracket, then end of title
    return rf"{_SEP}*(?:{_OPEN}\s*)?(?:{pattern})(?:\s*{_CLOSE})?\s*$"


@dataclass(frozen=True)
class FamilyRules:
    """How editions are recognised. Frozen and hashable, so it can be a default argument.

    ``edition_patterns``: regexes for edition/variant markers. Each is matched at the *end* of
    the NFKC-normalised, whitespace-collapsed title, case-insensitive (fullwidth literals in a
    pattern, "（" "｜" "：" "２", are folded the same way, see `_fold_pattern`),
    wrapped as ``SEP* [open-bracket]? (pattern) [close-bracket]? \\s*$`` so a pattern needs
    neither the separator ("｜", "·", ":", "-", space…) nor the brackets; stripping repeats
    until no pattern matches, so stacked markers ("…训练营（第3期）") all go.

    ``similarity``: title n-gram cosine at or above which two items of the same categories are
    one family. 0.9 keeps "Python入门"/"Java入门" and "机器学习入门"/"深度学习入门" apart while
    still catching small spelling variants.
    """

    edition_patterns: tuple[str, ...] = DEFAULT_EDITION_PATTERNS
    similarity: float = 0.9
    _regex: re.Pattern[str] = field(init=False, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        patterns = self.edition_patterns
        if isinstance(patterns, str):
            raise ValueError("edition_patterns must be a sequence of regexes, not one string")
        patterns = tuple(patterns)
        object.__setattr__(self, "edition_patterns", patterns)
        for p in patterns:
            if not isinstance(p, str):
                raise ValueError(f"edition pattern {p!r} is not a string")
            try:
                compiled = re.compile(_fold_pattern(p), re.IGNORECASE)
            except re.error as exc:
                raise ValueError(f"bad edition pattern {p!r}: {exc}") from exc
            # an empty match would "strip" nothing forever
            if compiled.fullmatch(""):
                raise ValueError(f"edition pattern {p!r} matches the empty string")
        sim = self.similarity
        if isinstance(sim, bool) or not isinstance(sim, int | float) or not 0.0 < sim <= 1.0:
            raise ValueError(f"similarity must be in (0, 1], got {sim!r}")
        # One regex with the wrapper factored out (same language as the union of the wrapped
        # patterns): about 3x faster than N searches, which matters for 100k-item catalogs.
        alternation = "|".join(f"(?:{_fold_pattern(p)})" for p in patterns) or r"(?!)"
        object.__setattr__(self, "_regex", re.compile(_wrap(alternation), re.IGNORECASE))


DEFAULT_RULES = FamilyRules()


def _has_content(text: str) -> bool:
    # brackets alone are not a title: "（第2期）" must not become "("
    return bool(text.strip(_SEP_CHARS + "()[]【】〔〕「」『』"))


def normalize_title(title: str, rules: FamilyRules = DEFAULT_RULES) -> str:
    """The title without edition markers, NFKC-normalised, whitespace collapsed, lower-cased.

    Markers are stripped from the end only, repeatedly, and never when that would leave nothing
    (or only separators): a course called just "训练营" keeps its name, so a non-blank title
    never normalises to "". A blank title gives "".
    """
    text = " ".join(unicodedata.normalize("NFKC", title).split())
    rx = rules._regex
    while text:
        m = rx.search(text)
        # the leftmost match may swallow the whole title ("训练营"); look for a later one
        while m is not None and not _has_content(text[: m.start()]):
            m = rx.search(text, m.start() + 1)
        if m is None or m.start() >= len(text):
            break
        text = text[: m.start()]
    stripped = text.rstrip(_SEP_CHARS)
    return (stripped or text).lower()


def explicit_family(attributes: Mapping[str, Any]) -> str | None:
    """attributes["family"] (else ["series"]) when it is a non-empty string, stripped; else None.

    Non-strings (numbers, lists) are ignored rather than str()-ed: a numeric "series" is more
    likely a sequence number than a family name.
    """
    for key in ("family", "series"):
        value = attributes.get(key)
        if isinstance(value, str) and value.strip():
            return value.strip()
    return None


# Groups up to this size are compared pair by pair, all groups in one vectorised batch (a
# catalog may have thousands of tiny category sets: one sparse product each would dominate).
_SMALL_GROUP = 48
# Bound on the cells of one sparse product / one batch of pairs: memory stays flat.
_CHUNK_CELLS = 4_000_000


def _pair_cosines(x: sp.csr_matrix, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    out = np.empty(a.size, np.float64)
    step = max(1, _CHUNK_CELLS // 16)
    for s in range(0, a.size, step):
        prod = x[a[s : s + step]].multiply(x[b[s : s + step]])
        out[s : s + step] = np.asarray(prod.sum(axis=1)).ravel()
    return out


def _similar_pairs(
    titles: Sequence[str], group: np.ndarray, threshold: float
) -> tuple[np.ndarray, np.ndarray]:
    """Index pairs (i < j) of titles in the same group with TF-IDF cosine >= threshold.

    Vectors: sklearn ``TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 3))`` fitted once on
    all distinct titles. One catalog-wide IDF rather than one per category group: it is a single
    fit (per-group fits cost ~1 ms each, 20 s for 20k tiny groups), and in a group of two titles
    a per-group IDF would *down-weight* exactly the n-grams the two share, pushing real editions
    apart. Only pairs inside one group are ever compared.

    Small groups: all their pairs at once. Large groups: row chunks times the not-yet-compared
    columns (upper triangle), so a 20k-item category costs one pass of bounded products.
    Pairs that differ in a number or level word (`_DISTINCT_RE`) are dropped.
    """
    n = len(titles)
    empty = np.empty(0, np.int64)
    if n < 2:
        return empty, empty
    # Compare titles without whitespace and separators: "pandas 入门", "pandas入门" and
    # "实战——pandas" vs "实战:pandas" differ only in punctuation, which char n-grams would
    # otherwise count as real differences (cosine ~0.77-0.87, under any safe threshold).
    compact = [_SEP_RUN.sub("", t) or t for t in titles]
    codes, uniques = pd.factorize(np.asarray(compact, dtype=object))
    vec = TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 3), lowercase=False, dtype=np.float32)
    x = vec.fit_transform(list(uniques)).tocsr()[codes]
    # float32 products: allow for rounding right at the threshold
    cut = threshold - 1e-6

    order = np.argsort(group, kind="stable")
    bounds = np.flatnonzero(np.diff(group[order])) + 1
    starts = np.concatenate([[0], bounds])
    sizes = np.diff(np.concatenate([starts, [n]]))
    left: list[np.ndarray] = []
    right: list[np.ndarray] = []

    # small groups, batched by size: triu pairs of a k-group, shifted to every k-group
    for k in np.unique(sizes[(sizes >= 2) & (sizes <= _SMALL_GROUP)]).tolist():
        ti, tj = np.triu_indices(k, 1)
        offs = starts[sizes == k]
        a = order[(offs[:, None] + ti[None, :]).ravel()]
        b = order[(offs[:, None] + tj[None, :]).ravel()]
        keep = _pair_cosines(x, a, b) >= cut
        left.append(a[keep])
        right.append(b[keep])

    # large groups: chunked upper-triangle products
    large = sizes > _SMALL_GROUP
    for g0, k in zip(starts[large].tolist(), sizes[large].tolist(), strict=True):
        members = order[g0 : g0 + k]
        xg = x[members]
        xgt = xg.T.tocsc()
        rows = max(1, _CHUNK_CELLS // k)
        for r0 in range(0, k, rows):
            block = (xg[r0 : r0 + rows] @ xgt[:, r0:]).tocoo()
            keep = (block.data >= cut) & (block.col > block.row)
            left.append(members[block.row[keep] + r0])
            right.append(members[block.col[keep] + r0])

    if not left:
        return empty, empty
    i = np.concatenate(left).astype(np.int64)
    j = np.concatenate(right).astype(np.int64)
    if i.size:
        keys: dict[int, tuple[str, ...]] = {}
        for t in np.unique(np.concatenate([i, j])).tolist():
            # "basic"/"basics", "Beginner"/"beginners" are the same word
            found = (tok.lower().removesuffix("s") for tok in _DISTINCT_RE.findall(titles[t]))
            keys[t] = tuple(sorted(found))
        pairs = zip(i.tolist(), j.tolist(), strict=True)
        same = np.fromiter((keys[a] == keys[b] for a, b in pairs), bool, i.size)
        i, j = i[same], j[same]
    return i, j


def detect_families(
    item_ids: Sequence[str],
    titles: Sequence[str],
    categories: Sequence[Sequence[str]],
    explicit: Sequence[str | None],
    rules: FamilyRules = DEFAULT_RULES,
) -> dict[str, str]:
    """item_id -> family id, for every item in a family of two or more, or with an explicit family.

    * An explicit family (the item's ``family``/``series`` attribute, see
      :func:`explicit_family`, passed in ``explicit``) wins: items with the same explicit value
      are one family whose id is that value (even a family of one), and such an item is never
      merged into a detected family.
    * Otherwise items whose normalised titles are equal and whose category sets are equal
      (``frozenset(categories)``, so order and repeats do not matter) are one family; so are
      items of the same category set whose titles are near-equal (TF-IDF cosine >=
      ``rules.similarity``) unless they differ in a number or level word ("第一册"/"第二册",
      "N2"/"N3", "初级"/"高级"), which marks a different course rather than an edition.
      Merging is transitive (connected components, i.e. union-find).
    * A detected family's id is ``"~" + min(member item_ids)`` (string order): stable across
      runs as long as that member exists, and the "~" keeps it apart from explicit values
      (which, by convention, never start with "~"; this function does not rewrite them).
    * Items alone in their family, and items with a blank title, are not in the result.

    Raises ValueError when the sequences differ in length or an item id repeats.
    """
    n = len(item_ids)
    if not (len(titles) == len(categories) == len(explicit) == n):
        raise ValueError("item_ids, titles, categories and explicit must have the same length")
    if len(set(item_ids)) != n:
        raise ValueError("item_ids must be unique")

    result: dict[str, str] = {}
    # (category set, normalised title) -> member indices; insertion order = input order
    exact: dict[tuple[frozenset[str], str], list[int]] = {}
    for k in range(n):
        family = explicit[k]
        if family is not None and family.strip():
            result[item_ids[k]] = family.strip()
            continue
        norm = normalize_title(titles[k], rules)
        if norm:
            exact.setdefault((frozenset(categories[k]), norm), []).append(k)

    # edges of the item graph: each exact group is a star around its first member ...
    src: list[int] = []
    dst: list[int] = []
    for members in exact.values():
        src.extend([members[0]] * (len(members) - 1))
        dst.extend(members[1:])
    # ... and near-equal titles of one category set link their groups' first members
    heads: list[int] = []
    norms: list[str] = []
    group_of: dict[frozenset[str], int] = {}
    group_ids: list[int] = []
    for (cats, norm), members in exact.items():
        heads.append(members[0])
        norms.append(norm)
        group_ids.append(group_of.setdefault(cats, len(group_of)))
    i, j = _similar_pairs(norms, np.asarray(group_ids, np.int64), rules.similarity)
    head_arr = np.asarray(heads, np.int64)

    a = np.concatenate([np.asarray(src, np.int64), head_arr[i]])
    b = np.concatenate([np.asarray(dst, np.int64), head_arr[j]])
    if a.size == 0:
        return result
    graph = sp.coo_matrix((np.ones(a.size, np.int8), (a, b)), shape=(n, n)).tocsr()
    _, labels = connected_components(graph, directed=False)
    linked = np.zeros(n, bool)
    linked[a] = True
    linked[b] = True
    members_of: dict[int, list[int]] = {}
    for k in np.flatnonzero(linked).tolist():
        members_of.setdefault(int(labels[k]), []).append(k)
    for members in members_of.values():
        family_id = "~" + min(item_ids[k] for k in members)
        for k in members:
            result[item_ids[k]] = family_id
    return result
