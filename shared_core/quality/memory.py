"""A growable memory of labelled prompt embeddings and its nearest-neighbour label means.

Shared by the k-NN quality predictor and the k-NN half of the output-length predictor: both
remember training prompts with one label per model (NaN = unknown) and average the labels of
each query's k most similar remembered prompts, per model, among those labelled for it.

Cost per query is one similarity pass over the memory, one cut of it down to a few more rows
than the k most similar, and one selection among those per group of models labelled on the same
rows, whatever the number of models: models profiled on the same prompts share their rows
(UniRoute's fixed profile set), and so their group. A memory of many groups (scattered missing
labels, feedback: a group per model) ranks its nearest rows for every model at once instead.
"""

from __future__ import annotations

import hashlib
import math
import threading
import weakref
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .. import native
from .base import l2_normalise

__all__ = ["LabelMemory"]

# The compiled per-group selection and sums (shared_core/_knn.c), or None: the NumPy code below.
_knn = native.kernel("_knn")

# Similarities held at once (queries × rows): bounds the temporaries of a batch (8 MB).
_BLOCK = 1 << 21
# A memory of more groups than _FEW_GROUPS + k·m / _RANKED_ELEMENTS ranks its near rows for every
# model at once instead of selecting per group (_Snapshot.plan). Measured on RouterBench's
# embeddings with k = 200: a group's selection ~11 µs, 55 µs besides; ranking ~95 + 1.55·m µs.
_FEW_GROUPS = 3
_RANKED_ELEMENTS = 1400
# When ranked: rows beyond k taken in similarity order, so that a few missing labels among the
# nearest rows do not widen them; and times they are widened fourfold before a model still short
# of labels is searched among its own rows.
_SLACK = 16
_WIDEN = 2

#: How remembered embeddings are stored and compared: single precision, as vector indexes keep
#: them. The similarity pass reads half the bytes (26 → 12 µs a query at 2,218 × 128 rows), a
#: similarity is off by about 1e-7 (the TF-IDF embedder projects in float32 to begin with), and
#: the rows take half the RAM.
EMBEDDING_DTYPE = np.float32


@dataclass(frozen=True)
class _Snapshot:
    """Rows [0, n) of the buffers; appends write beyond n, so a reader's snapshot never changes."""

    X: np.ndarray  # (capacity, d) unit-length embeddings, in EMBEDDING_DTYPE
    Y0: np.ndarray  # (capacity, m) labels, 0 where unknown
    K: np.ndarray  # (capacity, m) True where the label is known
    n: int
    derived: dict[Any, Any] = field(default_factory=dict)  # computed from rows [0, n) on first use

    def counts(self) -> np.ndarray:
        """Labels known per model, (m,)."""
        if "counts" not in self.derived:
            self.derived["counts"] = self.K[: self.n].sum(axis=0)
        return self.derived["counts"]

    def sums(self) -> np.ndarray:
        """The sum of the known labels per model, (m,)."""
        if "sums" not in self.derived:
            self.derived["sums"] = self.Y0[: self.n].sum(axis=0)
        return self.derived["sums"]

    def carried(self, X: np.ndarray, Y0: np.ndarray, K: np.ndarray, n: int, added: slice) -> _Snapshot:
        """The snapshot of rows [0, n) of these buffers when only the rows `added` are new: the label
        counts and sums carry over in O(rows added) instead of a pass over the memory."""
        derived = {}
        if "counts" in self.derived:
            derived["counts"] = self.derived["counts"] + K[added].sum(axis=0)
        if "sums" in self.derived:
            derived["sums"] = self.derived["sums"] + Y0[added].sum(axis=0)
        return _Snapshot(X, Y0, K, n, derived)

    def plan(self, k: int) -> _Plan:
        """How queries are answered with k neighbours for the best-labelled model (see _Plan)."""
        key = ("plan", k)
        if key not in self.derived:
            k = min(int(k), max(1, self.n))  # more neighbours than rows is all of them
            n_labels = self.counts()
            ks = np.minimum(n_labels, np.maximum(1, np.round(k * n_labels / max(1, n_labels.max())))).astype(np.intp)
            groups = []
            for rows, models in self.groups():
                if ks[models[0]] > 0:  # a model without labels averages nothing: its prior
                    every = len(models) == len(ks)
                    groups.append(_Group.of(None if len(rows) == self.n else rows, slice(None) if every else models,
                                            int(models[0]), int(ks[models[0]]), narrow=16 * len(models) <= len(ks)))
            top = int(ks.max(initial=0))
            # Scattered missing labels or feedback make a group per model: past a few groups,
            # taking every model at once costs less than a selection per group.
            ranked = len(groups) > _FEW_GROUPS + top * len(ks) / _RANKED_ELEMENTS
            native = None
            if self.Y0.flags.c_contiguous and self.K.flags.c_contiguous:  # as every snapshot's are
                native = tuple((None if g.rows is None else g.rows.astype(np.int64),
                                None if isinstance(g.models, slice) else g.models.astype(np.int64), g.first, g.k)
                               for g in groups)
            self.derived[key] = _Plan(ks, top, tuple(groups), ranked, native, bool((ks > 0).all()))
        return self.derived[key]

    def groups(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """The distinct sets of labelled rows, each with the models labelled on exactly those rows."""
        if "groups" not in self.derived:
            # Columns compared by their packed bits: one pass over the labels, not one per model.
            packed = np.packbits(self.K[: self.n], axis=0).T
            found: dict[bytes, list[int]] = {}
            for j, column in enumerate(packed):
                found.setdefault(column.tobytes(), []).append(j)
            self.derived["groups"] = [(np.flatnonzero(self.K[: self.n, models[0]]), np.array(models, dtype=np.intp))
                                      for models in found.values()]
        return self.derived["groups"]

    def row_index(self) -> dict[bytes, int]:
        """Each remembered embedding (its bytes) to its row, for rows shared by models profiled on the same prompts."""
        if "row_index" not in self.derived:
            self.derived["row_index"] = {row.tobytes(): i for i, row in enumerate(self.X[: self.n])}
        return self.derived["row_index"]


def _snapshot(X: np.ndarray, Y: np.ndarray) -> _Snapshot:
    known = np.ascontiguousarray(~np.isnan(Y))  # row-major whatever Y's layout: rows are read whole (and by _knn)
    return _Snapshot(_intern(X), np.ascontiguousarray(np.where(known, Y, 0.0)), known, len(X))


# Embedding buffers by content: memories made from the same prompts (the quality and length
# predictors fitted on one training split, or loaded from one saved router) share one read-only
# buffer, and through it one neighbour search per query (see _search).
_interned: weakref.WeakValueDictionary[tuple[Any, ...], np.ndarray] = weakref.WeakValueDictionary()
_interning = threading.Lock()


def _intern(X: np.ndarray) -> np.ndarray:
    """The one read-only buffer holding exactly these rows (a new one the first time)."""
    X = np.ascontiguousarray(X, dtype=EMBEDDING_DTYPE)
    key = (X.shape, hashlib.blake2b(X.data, digest_size=16).digest())
    with _interning:
        found = _interned.get(key)
        if found is not None and np.array_equal(found, X):
            return found
        X.flags.writeable = False  # exactly full: an append copies it to a larger buffer first
        _interned[key] = X
        return X


class LabelMemory:
    """Unit-length embeddings X (n, d) with labels Y (n, m); appends never disturb readers."""

    def __init__(self, X: np.ndarray, Y: np.ndarray) -> None:
        self._snap = _snapshot(l2_normalise(X), np.array(Y, dtype=np.float64))

    @classmethod
    def restore(cls, X: np.ndarray, Y: np.ndarray) -> LabelMemory:
        """A memory from saved (already unit-length) rows, kept bit for bit (older float64 saves rounded to float32)."""
        memory = cls.__new__(cls)
        # Copied: the memory makes its rows read-only, which must not reach the caller's array.
        memory._snap = _snapshot(np.array(X, dtype=EMBEDDING_DTYPE), np.array(Y, dtype=np.float64))
        return memory

    @property
    def X(self) -> np.ndarray:
        """The remembered embeddings (a view: do not modify)."""
        s = self._snap
        return s.X[: s.n]

    @property
    def Y(self) -> np.ndarray:
        """The remembered labels, NaN where unknown (a new array)."""
        s = self._snap
        return np.where(s.K[: s.n], s.Y0[: s.n], np.nan)

    def label_sums(self) -> tuple[np.ndarray, np.ndarray]:
        """Per model, the sum of its known labels and how many there are, (m,) each."""
        s = self._snap
        return s.sums(), s.counts()

    def append(self, X: np.ndarray, Y: np.ndarray, *, room: int = 0) -> None:
        """Remember more rows; when the buffers must grow, make room for `room` more rows beyond them.

        Growing copies the remembered rows once (readers keep the old buffers), so a caller that
        knows how far the memory may grow (KNNQuality: its feedback bound) passes it as `room`
        and no later append copies; otherwise capacity doubles (amortised O(d + m) per row).
        The new rows are zero pages until written, so unused room costs address space, not memory.
        """
        s = self._snap
        X, Y = l2_normalise(X), np.asarray(Y, dtype=np.float64)
        if not len(X):
            return
        need = s.n + len(X)
        Xb, Yb, Kb = s.X, s.Y0, s.K
        if need > len(Xb):
            cap = max(need + max(0, int(room)), 2 * len(Xb))
            Xb, Yb, Kb = (_grown(b, s.n, cap) for b in (Xb, Yb, Kb))
        known = ~np.isnan(Y)
        Xb[s.n:need], Yb[s.n:need], Kb[s.n:need] = X, np.where(known, Y, 0.0), known
        self._snap = s.carried(Xb, Yb, Kb, need, slice(s.n, need))

    def add_column(self, X: np.ndarray, y: np.ndarray) -> None:
        """A new model labelled only on the rows X (unknown for every other row).

        A profile prompt already remembered (the same embedding, e.g. another model's profile on
        the same prompts) takes the label in its row instead of a new row, so models profiled on
        one profile set share its rows and add no search cost per model.
        """
        s = self._snap
        X, y = l2_normalise(X).astype(EMBEDDING_DTYPE), np.asarray(y, dtype=np.float64)
        index = s.row_index()
        found = np.array([index.get(row.tobytes(), -1) for row in X], dtype=np.intp)
        # A prompt twice in the profile keeps both labels: the second copy gets a row of its own.
        _, first = np.unique(found, return_index=True)
        repeat = np.ones(len(found), dtype=bool)
        repeat[first] = False
        found[repeat] = -1
        new = found < 0
        n_new = int(new.sum())
        m = s.Y0.shape[1]
        Y0 = np.zeros((s.n + n_new, m + 1))
        K = np.zeros((s.n + n_new, m + 1), dtype=bool)
        Y0[: s.n, :m], K[: s.n, :m] = s.Y0[: s.n], s.K[: s.n]
        rows = np.where(new, s.n + np.cumsum(new) - 1, found)
        labelled = ~np.isnan(y)
        Y0[rows, m], K[rows, m] = np.where(labelled, y, 0.0), labelled
        self._snap = _Snapshot(np.concatenate([s.X[: s.n], X[new]]), Y0, K, s.n + n_new)

    def drop_column(self, j: int) -> np.ndarray:
        """Forget model column j, and the rows left without any label; which rows were kept (bool)."""
        s = self._snap
        K = np.delete(s.K[: s.n], j, axis=1)
        keep = np.asarray(K.any(axis=1)) if K.shape[1] else np.zeros(s.n, dtype=bool)
        self._snap = _Snapshot(s.X[: s.n][keep], np.delete(s.Y0[: s.n], j, axis=1)[keep], K[keep], int(keep.sum()))
        return keep

    def forget(self, rows: np.ndarray) -> np.ndarray:
        """Forget the given rows (a new snapshot: readers keep the old one); which rows were kept."""
        s = self._snap
        keep = np.ones(s.n, dtype=bool)
        keep[rows] = False
        self._snap = _Snapshot(s.X[: s.n][keep], s.Y0[: s.n][keep], s.K[: s.n][keep], int(keep.sum()))
        return keep

    def neighbour_means(self, Q: np.ndarray, k: int, prior: np.ndarray, shrinkage: float) -> np.ndarray:
        """Per query row and model: (sum of the k_j nearest labelled labels + s·prior) / (count + s).

        k is the neighbour count of the best-labelled model; a model with fewer labels (one
        added from a small profile) uses proportionally fewer, k_j = k·n_j / max n, so every
        model averages over a neighbourhood of about the same size. Ties in similarity go to the
        lower row. Q is (r, d); the result (r, m), each row the same whatever batch its query is in
        while the memory is at most _EXACT_BYTES (see _similarities).
        """
        s = self._snap
        X = s.X[: s.n]
        Q = np.asarray(Q, dtype=np.float64)
        plan = s.plan(k)
        sums = np.zeros((len(Q), len(plan.ks)))
        if plan.top:
            step = max(1, _BLOCK // max(1, s.n))
            for start in range(0, len(Q), step):
                search = _search(X, Q[start:start + step])
                for i in range(len(search.S)):
                    if _knn is not None and plan.native is not None and not plan.ranked:
                        # The same selection in one compiled call (a few NumPy calls per group cost
                        # more than the work), summing into the row: models of no group stay 0.
                        _knn.label_sums(search.S[i], s.Y0, s.K, len(plan.ks), plan.top, plan.native, sums[start + i])
                    else:
                        if _knn is None:
                            native.fallback("_knn")
                        sums[start + i] = _label_sums(s, search, i, plan)
        if plan.labelled and not shrinkage:  # every model of a fitted memory: the means alone
            return sums / plan.ks
        return _means(sums, plan.ks, prior, shrinkage)


def _means(sums: np.ndarray, counts: np.ndarray, prior: np.ndarray, shrinkage: float) -> np.ndarray:
    """(sums + s·prior) / (counts + s), sums (r, m) and counts (m,); the prior where nothing is counted and s is 0."""
    pseudo = counts + shrinkage
    counted = pseudo > 0
    total = sums + shrinkage * prior if shrinkage else sums  # 0·prior would be NaN for an infinite prior
    if counted.all():  # every decision of a fitted memory
        return total / pseudo
    return np.where(counted, total / np.where(counted, pseudo, 1.0), prior)


def _grown(buffer: np.ndarray, n: int, capacity: int) -> np.ndarray:
    """A buffer of `capacity` rows holding the first n rows of `buffer` (np.zeros: untouched rows stay unmapped)."""
    out = np.zeros((capacity, buffer.shape[1]), dtype=buffer.dtype)
    out[:n] = buffer[:n]
    return out


@dataclass(frozen=True)
class _Group:
    """Models labelled on the same rows, and the neighbours each averages."""

    rows: np.ndarray | None  # the rows they are labelled on (ascending); None: every row
    models: np.ndarray | slice  # their columns (slice(None): every model)
    first: int  # one of their columns
    k: int  # neighbours averaged, ≥ 1
    narrow: bool  # a sixteenth of the models or fewer: only their labels are gathered (else all, then picked)

    @classmethod
    def of(cls, rows: np.ndarray | None, models: np.ndarray | slice, first: int, k: int, narrow: bool) -> _Group:
        return cls(rows, models, first, k, narrow)

    def sums(self, Y0: np.ndarray, nearest: np.ndarray) -> np.ndarray:
        """The sums of the group's labels over rows `nearest` (non-empty), one per model of the group,
        each added row after row as the compiled kernel adds them (shared_core/_knn.c): a cumulative
        sum is sequential by definition, where a BLAS product or a reduction may pair the rows, and
        a last-bit difference in a non-integer label's mean (output lengths priced from costs) can
        round a predicted length up one token or break a tie between equally priced candidates."""
        if self.narrow:
            return np.cumsum(Y0[nearest[:, None], self.models], axis=0)[-1]
        return np.cumsum(Y0.take(nearest, axis=0), axis=0)[-1][self.models]


@dataclass(frozen=True)
class _Plan:
    """Per model its neighbour count k_j (m,), the largest of them, and the groups that have labels."""

    ks: np.ndarray
    top: int
    groups: tuple[_Group, ...]
    ranked: bool  # many groups: every model takes its nearest labelled rows at once (_ranked_sums)
    # The groups as _knn takes them (None: the labels are not row-major, and the NumPy code selects).
    native: tuple[tuple[np.ndarray | None, np.ndarray | None, int, int], ...] | None
    labelled: bool  # every model has labels (k_j ≥ 1)


class _Search:
    """Similarities S (r, n) of queries to a memory's rows, and per query the rows near it."""

    def __init__(self, S: np.ndarray) -> None:
        self.S = S
        self._near: dict[int, tuple[int, np.ndarray, np.ndarray, np.ndarray]] = {}  # i: (c, rows, sims, s)

    def near(self, i: int, c: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Query i's rows that may be among its c most similar (ascending: all of those, and a few
        more; every row left out is less similar than every row in), their similarities, and the
        query's similarities to all rows (NaN counted as the least similar)."""
        held = self._near.get(i)
        if held is not None and held[0] >= c:  # a wider cut holds these nearest rows too
            return held[1:]
        s = self.S[i]
        if math.isnan(np.maximum.reduce(s, initial=-np.inf)):  # the largest is NaN where any is
            s = np.where(np.isnan(s), -np.inf, s)
        rows = _at_least(s, c)
        sims = s[rows]
        self._near[i] = (c, rows, sims, s)
        return rows, sims, s


# The last search of a few queries, per thread: the length predictor, asked right after the
# quality predictor about the same prompts (one for a decision, SHARED_ROWS at a time for a
# batch: see CandidatePool.predict), reuses its similarities and ordering when both remember the
# same buffer. Held by weak reference, so it never keeps an outgrown buffer alive.
_last = threading.local()

#: Queries at most in a search kept for the next predictor (bounds what the memo holds).
SHARED_ROWS = 64


def _search(X: np.ndarray, Q: np.ndarray) -> _Search:
    """The search of queries Q (normalised here) among rows X, shared with the previous one on
    this thread when it is the same."""
    if len(Q) > SHARED_ROWS:
        return _Search(_similarities(X, l2_normalise(Q)))
    key = (id(X.base if X.base is not None else X), X.shape, Q.tobytes())
    last = getattr(_last, "search", None)
    if last is not None and last[0] == key and last[1]() is not None:
        return last[2]
    search = _Search(_similarities(X, l2_normalise(Q)))
    _last.search = (key, weakref.ref(X.base if X.base is not None else X), search)
    return search


# Memories up to this size are compared one query at a time (see _similarities): the TF-IDF
# embedder's 128 dimensions up to about 16,000 rows, its fitted memory plus the default feedback.
_EXACT_BYTES = 8 << 20
# Elements of one matrix-vector product at most: OpenBLAS splits a product of more than 460,800
# (about 3,600 rows of 128) across its threads, and a decision then waits a scheduling slice
# (8-12 ms, against 0.04 ms) whenever another process holds the other core (found by a new user:
# a router grown past 4,000 rows by feedback decided in 8 ms instead of 1). A larger memory is
# compared in blocks below that, one thread each.
_GEMV_ELEMENTS = 3 << 17


def _similarities(X: np.ndarray, Q: np.ndarray) -> np.ndarray:
    """Cosine similarities (r, n) of unit queries Q (r, d) to unit rows X (n, d), in X's dtype.

    Up to _EXACT_BYTES of rows, one matrix-vector product per query: the same BLAS call whether a
    prompt is searched alone or in a batch of any size, so its similarities are the same bit for
    bit. (A matrix product sums in blocks that depend on the batch's shape; a last-bit difference
    reorders neighbours tied that closely — templated prompts are — and a decision would depend on
    what it was batched with.) At 2,218 × 128 rows that is 12 µs a query. A larger memory takes a
    batch in one matrix product, 2.5× faster per query at every size measured, and a prompt's
    similarities there may differ from its own in the last bit.
    """
    Q = np.ascontiguousarray(Q, dtype=X.dtype)
    if len(Q) > 1 and X.nbytes > _EXACT_BYTES:
        return Q @ X.T
    S = np.empty((len(Q), len(X)), dtype=X.dtype)
    bounds = _gemv_bounds(len(X), X.shape[1])
    for i in range(len(Q)):
        for start, stop in zip(bounds[:-1], bounds[1:], strict=True):
            np.matmul(X[start:stop], Q[i], out=S[i, start:stop])
    return S


def _gemv_bounds(n: int, d: int) -> list[int]:
    """Where the matrix-vector products over n rows of d start and stop: one product up to
    _GEMV_ELEMENTS, else blocks of a multiple of 64 rows. BLAS kernels take rows in unrolled
    groups and a product's last few by another path, and NumPy makes a lone row a dot product:
    so each block starts where the whole product's group would, and a tail of under 64 rows joins
    the block before it. The blocks then give one product's bits (tested over many shapes)."""
    most = max(64, _GEMV_ELEMENTS // max(1, d) // 64 * 64)
    bounds = [*range(0, n, most), n]
    if len(bounds) > 2 and n - bounds[-2] < 64:
        del bounds[-2]
    return bounds


def _label_sums(snap: _Snapshot, search: _Search, i: int, plan: _Plan) -> np.ndarray:
    """Per model j, the sum of its labels over query i's k_j most similar rows labelled for it (m,).

    The rows near the query hold the plan's largest k of all rows; a group of models finds its
    k nearest labelled rows among them, unless fewer than k of them are labelled for it (a small
    profile, sparse feedback): then among its own rows. The selected rows are ascending and summed
    by one matrix-vector product. A memory of many groups takes every model at once instead
    (_ranked_sums). Either way a query gives the same sums alone and in a batch.
    """
    if plan.ranked:
        return _ranked_sums(snap, search, i, plan)
    rows, sims, s = search.near(i, plan.top)
    sums = np.zeros(len(plan.ks))
    for group in plan.groups:
        if group.rows is None:
            candidates, similarity = rows, sims
        else:
            labelled = snap.K[rows, group.first]
            candidates, similarity = rows[labelled], sims[labelled]
            if len(candidates) < group.k:
                candidates, similarity = group.rows, s[group.rows]
        total = group.sums(snap.Y0, _top(candidates, similarity, group.k))
        if isinstance(group.models, slice):  # one group, of every model
            return total
        sums[group.models] = total
    return sums


def _ranked_sums(snap: _Snapshot, search: _Search, i: int, plan: _Plan) -> np.ndarray:
    """_label_sums for every model at once: the k + _SLACK nearest rows in similarity order (ties:
    lower row first), each model taking its first k_j labelled ones. While some model finds fewer
    there, they widen fourfold, _WIDEN times at most; a group still short is searched among its
    own rows."""
    ks, width = plan.ks, min(snap.n, plan.top + _SLACK)
    widest = min(snap.n, width * 4**_WIDEN)
    while True:
        rows, sims, s = search.near(i, width)
        nearest = _top(np.arange(len(rows)), sims, width)  # positions of exactly `width` rows
        ranked = rows[nearest[np.argsort(-sims[nearest], kind="stable")]]
        known = snap.K[ranked]  # (rows, m)
        seen = np.cumsum(known, axis=0, dtype=np.intp)
        short = seen[-1] < ks
        if width >= widest or not short.any():
            break
        width = min(widest, 4 * width)
    sums = np.einsum("rm,rm->m", snap.Y0[ranked], known & (seen <= ks))
    if short.any():
        for group in plan.groups:
            if short[group.first] and group.rows is not None:
                sums[group.models] = group.sums(snap.Y0, _top(group.rows, s[group.rows], group.k))
    return sums


# Every _STRIDE-th similarity is a sample whose order statistics bound the c-th largest from below.
_STRIDE = 8


def _at_least(s: np.ndarray, c: int) -> np.ndarray:
    """Indices (ascending) of the entries of `s` at least as large as a bound below its c-th
    largest: all of its c largest, and some more (every index when c ≥ len(s)).

    The bound is a strided sample's ⌈1.5·c/_STRIDE⌉ + 8-th largest, which has about 1.5·c entries
    above it: one partial selection of an eighth of the entries, instead of one of them all.
    Were fewer than c left above it, every index is returned.
    """
    if c >= len(s):
        return np.arange(len(s))
    sample = s[::_STRIDE]
    rank = min(len(sample), -(-3 * c // (2 * _STRIDE)) + 8)
    near = np.flatnonzero(s >= np.partition(sample, len(sample) - rank)[len(sample) - rank])
    return near if len(near) >= c else np.arange(len(s))


def _top(rows: np.ndarray, similarity: np.ndarray, k: int) -> np.ndarray:
    """The k of `rows` (ascending) with the largest similarity, equal ones lower row first; ascending."""
    if k >= len(rows):
        return rows
    v = np.partition(similarity, len(similarity) - k)[len(similarity) - k]  # the k-th largest
    take = similarity >= v
    extra = int(np.count_nonzero(take)) - k
    if extra:  # more rows equal the k-th largest than there is room for: the highest ones go
        tied = np.flatnonzero(similarity == v)
        take[tied[len(tied) - extra:]] = False
    return rows[take]
