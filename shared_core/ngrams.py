"""Counting a fitted n-gram vocabulary in texts: the counts scikit-learn's analyzer would give, fast.

`TfidfVectorizer` learns the vocabulary and IDF weights when the embedder is fitted. At routing
time its Python analyzer (a regex, then one joined string per n-gram) cost more than the rest of
a batch put together. `WordNgramCounter` makes every word an integer once (ASCII text is split by
a byte translation table, other text by scikit-learn's own regex) and finds n-grams as integer
keys with NumPy. `AnalyzerCounter` serves any other analyzer (character n-grams) term by term.
"""

from __future__ import annotations

import re
import string
from collections.abc import Callable, Sequence
from itertools import chain, repeat

import numpy as np

__all__ = ["TOKEN_PATTERN", "NgramCounts", "WordNgramCounter", "AnalyzerCounter"]

#: Words are runs of two or more word characters, lower-cased (scikit-learn's default tokens).
TOKEN_PATTERN = r"(?u)\b\w\w+\b"
_TOKEN = re.compile(TOKEN_PATTERN)

# For ASCII text, \w is [A-Za-z0-9_]: keep those bytes (upper case lowered), blank every other.
_WORD_BYTES = frozenset((string.ascii_letters + string.digits + "_").encode())
_ASCII_WORDS = bytes.maketrans(
    bytes(range(128)), bytes(b if b in _WORD_BYTES else 0x20 for b in range(128)).lower()
)
# One-character words are dropped before n-grams are formed, as scikit-learn's pattern does.
_SKIP = -2

#: CSR parts of a (texts × vocabulary) count matrix: row pointers, columns (sorted per row), counts.
NgramCounts = tuple[np.ndarray, np.ndarray, np.ndarray]


def _words(text: str) -> list[bytes]:
    if text.isascii():
        return text.encode("ascii").translate(_ASCII_WORDS).split()
    return [w.encode() for w in _TOKEN.findall(text.lower())]


class WordNgramCounter:
    """Counts word n-grams of a fixed vocabulary (term i → column i) in texts, vectorised."""

    def __init__(self, terms: Sequence[str], ngram_range: tuple[int, int]) -> None:
        lo, hi = ngram_range
        if not 1 <= lo <= hi:
            raise ValueError(f"ngram_range must be (min_n, max_n) with 1 <= min_n <= max_n, got {ngram_range}")
        self.ngram_range = (lo, hi)
        self.n_features = len(terms)
        word_ids: dict[bytes, int] = {bytes([b]): _SKIP for b in _WORD_BYTES}
        grams: dict[int, tuple[list[list[int]], list[int]]] = {n: ([], []) for n in range(lo, hi + 1)}
        for column, term in enumerate(terms):
            words = term.split(" ")
            if not lo <= len(words) <= hi or not all(_TOKEN.fullmatch(w) for w in words):
                raise ValueError(f"vocabulary term {term!r} is not a {lo}–{hi}-gram of words")
            term_ids = [word_ids.setdefault(w.encode(), len(word_ids) - len(_WORD_BYTES)) for w in words]
            grams[len(words)][0].append(term_ids)
            grams[len(words)][1].append(column)
        self._word_ids = word_ids
        self._base = max(1, len(word_ids) - len(_WORD_BYTES))
        if self._base ** hi >= 2**63:
            raise ValueError(f"{self._base} distinct words are too many to key {hi}-grams in 64 bits")
        # Unigrams: word id → column (−1 for words seen only inside longer n-grams).
        self._unigram = np.full(self._base, -1, dtype=np.int64)
        if 1 in grams:
            ids, columns = grams.pop(1)
            self._unigram[[i for i, in ids]] = columns
        # n >= 2: the n-grams' integer keys, sorted, and the column of each.
        self._keys: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        for n, (ids, columns) in grams.items():
            keys = self._key(np.array(ids, dtype=np.int64).reshape(len(ids), n).T)
            order = np.argsort(keys)
            self._keys[n] = (keys[order], np.asarray(columns, dtype=np.int64)[order])

    def _key(self, parts: Sequence[np.ndarray]) -> np.ndarray:
        """The n-gram keys Σ id_r · base^(n−1−r) of aligned word-id arrays, one per position r."""
        key = np.asarray(parts[0], dtype=np.int64)
        for ids in parts[1:]:
            key = key * self._base + ids
        return key

    def count(self, texts: Sequence[str]) -> NgramCounts:
        """CSR parts (row pointers, columns, counts) of the n-gram counts of `texts`."""
        words = [_words(t) for t in texts]
        lengths = np.fromiter(map(len, words), dtype=np.int64, count=len(words))
        get = self._word_ids.get
        ids = np.fromiter(chain.from_iterable(map(get, w, repeat(-1)) for w in words),
                          dtype=np.int64, count=int(lengths.sum()))
        row = np.repeat(np.arange(len(words), dtype=np.int64), lengths)
        kept = ids != _SKIP
        ids, row = ids[kept], row[kept]
        rows, columns = [], []
        if self.ngram_range[0] == 1:
            known = ids >= 0
            cols = self._unigram[ids[known]]
            rows.append(row[known][cols >= 0])
            columns.append(cols[cols >= 0])
        for n, (keys, cols) in self._keys.items():
            if len(ids) < n or not len(keys):
                continue
            span = len(ids) - n + 1
            window = [ids[r:r + span] for r in range(n)]
            # An n-gram stays within one text and contains only known words.
            ok = (row[:span] == row[n - 1:]) & (np.minimum.reduce(window) >= 0)
            key = self._key([w[ok] for w in window])
            at = np.minimum(np.searchsorted(keys, key), len(keys) - 1)
            found = keys[at] == key
            rows.append(row[:span][ok][found])
            columns.append(cols[at][found])
        return _tally(np.concatenate(rows) if rows else np.empty(0, np.int64),
                      np.concatenate(columns) if columns else np.empty(0, np.int64),
                      len(texts), self.n_features)


class AnalyzerCounter:
    """Counts the terms any analyzer (text → list of terms) yields, for a fixed vocabulary."""

    def __init__(self, analyzer: Callable[[str], list[str]], terms: Sequence[str]) -> None:
        self._analyze = analyzer
        self._columns = {t: i for i, t in enumerate(terms)}
        self.n_features = len(terms)

    def count(self, texts: Sequence[str]) -> NgramCounts:
        """CSR parts (row pointers, columns, counts) of the term counts of `texts`."""
        get = self._columns.get
        rows, columns = [], []
        for i, text in enumerate(texts):
            found = [c for c in map(get, self._analyze(text)) if c is not None]
            rows.append(np.full(len(found), i, dtype=np.int64))
            columns.append(np.asarray(found, dtype=np.int64))
        return _tally(np.concatenate(rows) if rows else np.empty(0, np.int64),
                      np.concatenate(columns) if columns else np.empty(0, np.int64),
                      len(texts), self.n_features)


def _tally(rows: np.ndarray, columns: np.ndarray, n_rows: int, n_columns: int) -> NgramCounts:
    """Occurrences (row, column) → CSR parts with each distinct pair once and its count."""
    width = max(1, n_columns)
    keys = np.sort(rows * width + columns)
    starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]]) if len(keys) else np.empty(0, np.int64)
    unique = keys[starts]
    counts = np.diff(np.r_[starts, len(keys)])
    return np.searchsorted(unique // width, np.arange(n_rows + 1)), unique % width, counts
