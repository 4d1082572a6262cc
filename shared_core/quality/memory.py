"""A growable memory of labelled prompt embeddings and its nearest-neighbour label means.

Shared by the k-NN quality predictor and the k-NN half of the output-length predictor: both
remember training prompts with one label per model (NaN = unknown) and average the labels of
each query's k most similar remembered prompts, per model, among those labelled for it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .base import l2_normalise

__all__ = ["LabelMemory"]

# Rows beyond k scanned before falling back to a per-model search, so a few missing labels
# among the nearest rows do not force the slow path.
_SLACK = 16
# Query rows per similarity block: bounds the (rows × memory × models) temporaries.
_CHUNK = 256


@dataclass(frozen=True)
class _Snapshot:
    X: np.ndarray
    Y: np.ndarray
    n: int
    derived: dict[Any, Any] = field(default_factory=dict)  # arrays computed from X, Y on first use

    def labels(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Which labels are known (bool), the same as float, and the labels with NaN as 0."""
        if "labels" not in self.derived:
            Y = self.Y[: self.n]
            known = ~np.isnan(Y)
            self.derived["labels"] = (known, known.astype(np.float64), np.where(known, Y, 0.0))
        return self.derived["labels"]

    def rows(self, j: int | np.integer) -> np.ndarray:
        """The rows labelled for model j."""
        if ("rows", j) not in self.derived:
            self.derived[("rows", j)] = np.flatnonzero(self.labels()[0][:, j])
        return self.derived[("rows", j)]


class LabelMemory:
    """Unit-length embeddings X (n, d) with labels Y (n, m); appends never disturb readers."""

    def __init__(self, X: np.ndarray, Y: np.ndarray) -> None:
        self._snap = _Snapshot(l2_normalise(X), np.array(Y, dtype=np.float64), len(X))

    @classmethod
    def restore(cls, X: np.ndarray, Y: np.ndarray) -> LabelMemory:
        """A memory from saved (already unit-length) rows, kept bit for bit."""
        memory = cls.__new__(cls)
        memory._snap = _Snapshot(np.array(X, dtype=np.float64), np.array(Y, dtype=np.float64), len(X))
        return memory

    @property
    def X(self) -> np.ndarray:
        """The remembered embeddings (a view: do not modify)."""
        s = self._snap
        return s.X[: s.n]

    @property
    def Y(self) -> np.ndarray:
        """The remembered labels (a view: do not modify)."""
        s = self._snap
        return s.Y[: s.n]

    def append(self, X: np.ndarray, Y: np.ndarray) -> None:
        """Remember more rows (capacity doubles, so appending one row is amortised O(d + m))."""
        s = self._snap
        X, Y = l2_normalise(X), np.asarray(Y, dtype=np.float64)
        need = s.n + len(X)
        Xb, Yb = s.X, s.Y
        if need > len(Xb):
            cap = max(need, 2 * len(Xb))
            Xb = np.concatenate([Xb[: s.n], np.empty((cap - s.n, Xb.shape[1]))])
            Yb = np.concatenate([Yb[: s.n], np.full((cap - s.n, Yb.shape[1]), np.nan)])
        Xb[s.n:need], Yb[s.n:need] = X, Y
        self._snap = _Snapshot(Xb, Yb, need)

    def add_column(self, X: np.ndarray, y: np.ndarray) -> None:
        """A new model labelled only on the new rows X (NaN for every remembered row)."""
        s = self._snap
        Y_old = np.column_stack([s.Y[: s.n], np.full(s.n, np.nan)])
        Y_new = np.full((len(X), Y_old.shape[1]), np.nan)
        Y_new[:, -1] = y
        self._snap = _Snapshot(np.concatenate([s.X[: s.n], l2_normalise(X)]), np.concatenate([Y_old, Y_new]),
                               s.n + len(X))

    def drop_column(self, j: int) -> np.ndarray:
        """Forget model column j, and the rows left without any label; which rows were kept (bool)."""
        s = self._snap
        Y = np.delete(s.Y[: s.n], j, axis=1)
        keep = ~np.isnan(Y).all(axis=1) if Y.shape[1] else np.zeros(s.n, dtype=bool)
        self._snap = _Snapshot(s.X[: s.n][keep], Y[keep], int(keep.sum()))
        return keep

    def forget(self, rows: np.ndarray) -> np.ndarray:
        """Forget the given rows (a new snapshot: readers keep the old one); which rows were kept."""
        s = self._snap
        keep = np.ones(s.n, dtype=bool)
        keep[rows] = False
        self._snap = _Snapshot(s.X[: s.n][keep], s.Y[: s.n][keep], int(keep.sum()))
        return keep

    def neighbour_means(self, Q: np.ndarray, k: int, prior: np.ndarray, shrinkage: float) -> np.ndarray:
        """Per query row and model: (sum of the k_j nearest labelled labels + s·prior) / (count + s).

        k is the neighbour count of the best-labelled model; a model with fewer labels (one
        added from a small profile) uses proportionally fewer, k_j = k·n_j / max n, so every
        model averages over a neighbourhood of about the same size.
        """
        s = self._snap
        X = s.X[: s.n]
        Q = l2_normalise(Q)
        n_labels = s.labels()[1].sum(axis=0)
        ks = np.minimum(n_labels, np.maximum(1, np.round(k * n_labels / max(1, n_labels.max())))).astype(int)
        out = np.empty((len(Q), len(ks)))
        for start in range(0, len(Q), _CHUNK):
            sums, counts = _sums(s, Q[start:start + _CHUNK] @ X.T, ks)
            with np.errstate(invalid="ignore", divide="ignore"):
                est = (sums + shrinkage * prior) / (counts + shrinkage)
            out[start:start + _CHUNK] = np.where(counts + shrinkage > 0, est, prior)
        return out


def _sums(snap: _Snapshot, S: np.ndarray, ks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Label sums and counts over each query's ks[j] nearest rows labelled for model j.

    One pass serves every model whose k_j is within the slack of k = max ks (a few missing
    labels): the k0 = min of those k_j nearest rows are summed as a set (a 0/1 weight matrix
    times the labels), and only the rows after them are put in order, each model taking the
    first k_j − (its labels among the k0) of them.
    """
    known, known_f, Y0 = snap.labels()
    k = int(ks.max(initial=0))
    if k == 0 or not S.shape[1]:
        return np.zeros((len(S), len(ks))), np.zeros((len(S), len(ks)))
    k0 = max(1, int(ks[ks >= k - _SLACK].min()))
    c = min(S.shape[1], k + _SLACK)
    idx = _nearest(S, c)[:, :c]
    if c > k0:  # the k0 nearest first, unordered (one partition of c columns is cheap)
        idx = np.take_along_axis(idx, _nearest(np.take_along_axis(S, idx, axis=1), k0), axis=1)
    W = np.zeros(S.shape)
    np.put_along_axis(W, idx[:, :k0], 1.0, axis=1)
    sums, counts = W @ Y0, W @ known_f
    if c > k0:
        after = _by_similarity(S, idx[:, k0:])
        lab = known[after]
        use = lab & (np.cumsum(lab, axis=1) <= (ks - counts)[:, None, :])
        sums += np.where(use, Y0[after], 0.0).sum(axis=1)
        counts += use.sum(axis=1)
    # Models with far fewer neighbours (one added from a small profile), or with too few
    # labels among the c nearest rows (sparse feedback), are searched among their own rows.
    for j in np.flatnonzero((counts < ks).any(axis=0) | (ks < k0)):
        rows, kj = snap.rows(j), int(ks[j])
        top = rows[_nearest(S[:, rows], kj)[:, :kj]] if kj < len(rows) else rows[None, :]
        sums[:, j] = Y0[top, j].sum(axis=1)
        counts[:, j] = kj
    return sums, counts


def _nearest(S: np.ndarray, c: int) -> np.ndarray:
    """Column indices of each row's entries, its c largest first (in no particular order)."""
    return np.argpartition(-S, c - 1, axis=1) if c < S.shape[1] else np.broadcast_to(np.arange(S.shape[1]), S.shape)


def _by_similarity(S: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Column indices idx of each row, most similar first."""
    order = np.argsort(-np.take_along_axis(S, idx, axis=1), axis=1, kind="stable")
    return np.take_along_axis(idx, order, axis=1)
