"""Counting a fitted n-gram vocabulary in texts: the counts scikit-learn's analyzer would give, fast.

`TfidfVectorizer` learns the vocabulary and IDF weights when the embedder is fitted. At routing
time its Python analyzer (a regex, then one joined string per n-gram) cost more than the rest of
a batch put together. `WordNgramCounter` makes every word an integer once (ASCII text is split by
a byte translation table, other text by scikit-learn's own regex; a paragraph seen before is
not split again) and finds n-grams as integer keys with NumPy. `AnalyzerCounter` serves any other
analyzer (character n-grams) term by term.
"""

from __future__ import annotations

import re
import string
from array import array
from collections.abc import Callable, Sequence
from itertools import chain, repeat
from typing import Any, cast

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
# Bounds of a counter's paragraph memo: past either it starts afresh. About 6 MB at most
# (the paragraphs' text, 8 bytes per word and a dict entry each).
_MEMO_CHARS = 1 << 21
_MEMO_ENTRIES = 1 << 14
# Up to this many new paragraphs are split one by one (array.array, no NumPy call); more at once.
_FEW = 16

#: CSR parts of a (texts × vocabulary) count matrix: row pointers, columns (sorted per row), counts.
NgramCounts = tuple[np.ndarray, np.ndarray, np.ndarray]


def _words(text: str) -> list[bytes]:
    if text.isascii():
        return text.encode("ascii").translate(_ASCII_WORDS).split()
    return [w.encode() for w in _TOKEN.findall(text.lower())]


class WordNgramCounter:
    """Counts word n-grams of a fixed vocabulary (term i → column i) in texts, vectorised.

    Words get ids 0..base−1 (an unknown word: base). A word's unigram column is read from a
    table. An n-gram (n ≥ 2) of ids (a₁ … aₙ) has the key Σ aᵣ·(base+1)^(n−r) + offset(n), with
    offset(n) = Σ_{1≤j<n} (base+1)^j, so that keys of different n never meet and one sorted table
    holds them all (in a batch, only n-grams of words that occur in some such term are looked up).
    A counter remembers the word ids of the paragraphs it has seen (bounded; see `_remember`).
    """

    def __init__(self, terms: Sequence[str], ngram_range: tuple[int, int]) -> None:
        lo, hi = ngram_range
        if not 1 <= lo <= hi:
            raise ValueError(f"ngram_range must be (min_n, max_n) with 1 <= min_n <= max_n, got {ngram_range}")
        self.ngram_range = (lo, hi)
        self.n_features = len(terms)
        word_ids: dict[bytes, int] = {bytes([b]): _SKIP for b in _WORD_BYTES}
        grams: list[list[int]] = []
        for term in terms:
            words = term.split(" ")
            if not lo <= len(words) <= hi or not all(_TOKEN.fullmatch(w) for w in words):
                raise ValueError(f"vocabulary term {term!r} is not a {lo}–{hi}-gram of words")
            grams.append([word_ids.setdefault(w.encode(), len(word_ids) - len(_WORD_BYTES)) for w in words])
        self._word_ids = word_ids
        self._unknown = len(word_ids) - len(_WORD_BYTES)  # = base: the id of every word not in the vocabulary
        radix = self._unknown + 1
        offsets = [sum(radix**j for j in range(1, n)) for n in range(hi + 1)]
        if radix**hi + offsets[hi] >= 2**63:
            raise ValueError(f"{self._unknown} distinct words are too many to key {hi}-grams in 64 bits")
        # NumPy scalars: array arithmetic with a Python int costs a microsecond more per call.
        self._radix = np.int64(radix)
        self._offsets = [np.int64(o) for o in offsets]
        self._key_offsets = np.array(offsets, dtype=np.int64)  # one buffer, for the compiled kernel (embed.py)
        # Unigrams: word id → column (−1: the word occurs only inside longer terms, or is unknown).
        self._unigram = np.full(self._radix, -1, dtype=np.int64)
        self._in_gram = np.zeros(self._radix, dtype=bool)  # the word occurs in some n-gram term, n ≥ 2
        keys, columns = [], []
        for column, ids in enumerate(grams):
            if len(ids) == 1:
                self._unigram[ids[0]] = column
            else:
                self._in_gram[ids] = True
                keys.append(self._term_key(ids))
                columns.append(column)
        # For one text: the same table with every other word pointing one past the last column,
        # so that they need no filtering, only dropping once sorted to the end.
        self._unigram_or_past = np.where(self._unigram >= 0, self._unigram, self.n_features)
        order = np.argsort(np.array(keys, dtype=np.int64))
        # A last key above every n-gram's: a search past the real keys lands on it and finds nothing.
        self._keys = np.append(np.array(keys, dtype=np.int64)[order], np.iinfo(np.int64).max)
        self._columns = np.append(np.array(columns, dtype=np.int64)[order], -1)
        # Paragraph → its word ids (int64 bytes), and the characters of the paragraphs it holds.
        self._memo: dict[str, bytes] = {}
        self._memo_chars = 0

    def _term_key(self, ids: list[int]) -> int:
        key = 0
        for i in ids:
            key = key * int(self._radix) + i
        return key + int(self._offsets[len(ids)])

    def _ngram_keys(self, ids: np.ndarray, n: int, at: Any) -> np.ndarray:
        """The keys of the n-grams starting at positions `at` (a slice or indices) of `ids`."""
        key = ids[at] * self._radix
        for r in range(1, n):
            if r > 1:
                key *= self._radix
            key += ids[r:r + len(key)] if isinstance(at, slice) else ids[at + r]
        key += self._offsets[n]
        return key

    def _count_one(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The distinct columns (sorted) of one text's n-grams, from its word ids, and their counts."""
        lo, hi = self.ngram_range
        parts = [self._unigram_or_past[ids]] if lo == 1 else []
        for n in range(max(lo, 2), min(hi, len(ids)) + 1):
            key = self._ngram_keys(ids, n, slice(0, len(ids) - n + 1))
            where = np.searchsorted(self._keys, key)
            parts.append(self._columns[where[self._keys[where] == key]])
        columns, counts = _distinct(np.sort(parts[0] if len(parts) == 1 else np.concatenate([ids[:0], *parts])))
        if len(columns) and columns[-1] == self.n_features:  # the words that are no unigram term
            return columns[:-1], counts[:-1]
        return columns, counts

    def _found(self, ids: np.ndarray, row: np.ndarray) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """The columns of the vocabulary n-grams in the word ids of a batch (per n), and the row (text)
        of each, given each word's row: n-grams do not span rows."""
        lo, hi = self.ngram_range
        columns, rows = [], []
        if lo == 1:
            cols = self._unigram[ids]
            known = cols >= 0
            columns.append(cols[known])
            rows.append(row[known])
        # Only n-grams whose words all occur in some n-gram term (and that stay within one text)
        # are searched for: a few cheap passes spare most of the binary searches.
        usable = self._in_gram[ids]
        for n in range(max(lo, 2), min(hi, len(ids)) + 1):
            span = len(ids) - n + 1
            ok = usable[:span] & usable[1:span + 1]
            for r in range(2, n):
                ok &= usable[r:span + r]
            ok &= row[:span] == row[n - 1:]
            at = ok.nonzero()[0]
            key = self._ngram_keys(ids, n, at)
            where = np.searchsorted(self._keys, key)
            hit = self._keys[where] == key
            columns.append(self._columns[where[hit]])
            rows.append(row[at[hit]])
        return columns, rows

    def count(self, texts: Sequence[str]) -> NgramCounts:
        """CSR parts (row pointers, columns, counts) of the n-gram counts of `texts`."""
        if not texts:
            return np.zeros(1, dtype=np.int64), np.empty(0, np.int64), np.empty(0, np.int64)
        if len(texts) == 1:
            # One text (a routed request): no row bookkeeping, a few dozen NumPy calls in all.
            columns, counts = self._count_one(self._word_ids_of(texts, lengths=False)[0])
            return np.array([0, len(columns)], dtype=np.int64), columns, counts
        ids, lengths = self._word_ids_of(texts)
        cols, rows = self._found(ids, np.repeat(np.arange(len(texts), dtype=np.int64), lengths))
        return _tally(np.concatenate(rows) if rows else np.empty(0, np.int64),
                      np.concatenate(cols) if cols else np.empty(0, np.int64),
                      len(texts), self.n_features)

    def _word_ids_of(self, texts: Sequence[str], lengths: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Word ids of all texts, concatenated (int64; unknown words: base), and each text's number of words.

        Texts are cut into paragraphs (at blank lines), and a paragraph's ids are remembered
        (a bounded memo): few-shot examples, system prompts and chat history repeat from prompt
        to prompt and are split and looked up once. A paragraph break separates words, so a
        text's words are its paragraphs' words in order (its n-grams may span paragraphs, as
        scikit-learn's do). `lengths=False` leaves the second array empty.
        """
        paragraphs = [t.split("\n\n") for t in texts]
        flat = list(chain.from_iterable(paragraphs)) if len(texts) > 1 else paragraphs[0]
        memo = list(map(self._memo.get, flat))
        if None in memo:
            missing = list(dict.fromkeys(p for p, ids in zip(flat, memo, strict=True) if ids is None))
            fresh = dict(zip(missing, self._split(missing), strict=True))
            self._remember(fresh)
            found = [fresh[p] if ids is None else ids for p, ids in zip(flat, memo, strict=True)]
        else:
            found = cast("list[bytes]", memo)
        ids = np.frombuffer(b"".join(found), dtype=np.int64)
        kept = ids != _SKIP  # one-character words, dropped here for the whole call
        if not lengths:
            return ids[kept], ids[:0]
        sizes = np.fromiter(map(len, found), dtype=np.int64, count=len(found)) // 8
        counts = np.fromiter(map(len, paragraphs), dtype=np.int64, count=len(paragraphs))
        text_of_word = np.repeat(np.arange(len(texts)), np.add.reduceat(sizes, np.cumsum(counts) - counts))
        return ids[kept], np.bincount(text_of_word[kept], minlength=len(texts))

    def _split(self, paragraphs: list[str]) -> list[bytes]:
        """Each paragraph's word ids (int64 bytes; one-character words too, as _SKIP)."""
        get, unknown = self._word_ids.get, self._unknown
        if len(paragraphs) <= _FEW:  # a request's paragraphs: no NumPy call at all
            return [array("q", map(get, _words(p), repeat(unknown))).tobytes() for p in paragraphs]
        words = [_words(p) for p in paragraphs]
        ends = np.cumsum(np.fromiter(map(len, words), dtype=np.int64, count=len(words)))
        ids = np.fromiter(chain.from_iterable(map(get, w, repeat(unknown)) for w in words),
                          dtype=np.int64, count=int(ends[-1]))
        return [ids[a:b].tobytes() for a, b in zip([0, *ends[:-1].tolist()], ends.tolist(), strict=True)]

    def _remember(self, fresh: dict[str, bytes]) -> None:
        """Add paragraphs to the memo; past its bounds it starts afresh (a dict swap: readers are safe)."""
        chars = sum(map(len, fresh))
        if self._memo_chars + chars > _MEMO_CHARS or len(self._memo) + len(fresh) > _MEMO_ENTRIES:
            self._memo, self._memo_chars = {}, 0
        if chars <= _MEMO_CHARS and len(fresh) <= _MEMO_ENTRIES:
            self._memo.update(fresh)
            self._memo_chars += chars


def _distinct(sorted_columns: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each distinct value of a sorted array once, and how often it occurs."""
    k = len(sorted_columns)
    change = np.empty(k + 1, dtype=bool)
    change[0] = change[k] = True
    np.not_equal(sorted_columns[1:], sorted_columns[:-1], out=change[1:k])
    bounds = change.nonzero()[0]
    return sorted_columns[bounds[:-1]], bounds[1:] - bounds[:-1]


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
