"""A growable memory of labelled prompt embeddings and its nearest-neighbour label means.

Shared by the k-NN quality predictor and the k-NN half of the output-length predictor: both
remember training prompts with one label per model (NaN = unknown) and average the labels of
each query's k most similar remembered prompts, per model, among those labelled for it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..embed import l2_normalise

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
    rows: dict[int, np.ndarray] = field(default_factory=dict)  # labelled rows per model, filled lazily


class LabelMemory:
    """Unit-length embeddings X (n, d) with labels Y (n, m); appends never disturb readers."""

    def __init__(self, X: np.ndarray, Y: np.ndarray) -> None:
        self._snap = _Snapshot(l2_normalise(X), np.array(Y, dtype=np.float64), len(X))

    @classmethod
    def restore(cls, X: np.ndarray, Y: np.ndarray) -> "LabelMemory":
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

    def drop_column(self, j: int) -> None:
        """Forget model column j, and the rows left without any label."""
        s = self._snap
        Y = np.delete(s.Y[: s.n], j, axis=1)
        keep = ~np.isnan(Y).all(axis=1) if Y.shape[1] else np.zeros(s.n, dtype=bool)
        self._snap = _Snapshot(s.X[: s.n][keep], Y[keep], int(keep.sum()))

    def neighbour_means(self, Q: np.ndarray, k: int, prior: np.ndarray, shrinkage: float) -> np.ndarray:
        """Per query row and model: (sum of the k_j nearest labelled labels + s·prior) / (count + s).

        k is the neighbour count of the best-labelled model; a model with fewer labels (one
        added from a small profile) uses proportionally fewer, k_j = k·n_j / max n, so every
        model averages over a neighbourhood of about the same size.
        """
        s = self._snap
        X, Y = s.X[: s.n], s.Y[: s.n]
        Q = l2_normalise(Q)
        labelled = ~np.isnan(Y)
        n_labels = labelled.sum(axis=0)
        ks = np.minimum(n_labels, np.maximum(1, np.round(k * n_labels / max(1, n_labels.max())))).astype(int)
        out = np.empty((len(Q), Y.shape[1]))
        for start in range(0, len(Q), _CHUNK):
            S = Q[start:start + _CHUNK] @ X.T
            sums, counts = _sums(s, S, Y, labelled, ks)
            with np.errstate(invalid="ignore", divide="ignore"):
                est = (sums + shrinkage * prior) / (counts + shrinkage)
            out[start:start + _CHUNK] = np.where(counts + shrinkage > 0, est, prior)
        return out


def _sums(
    snap: _Snapshot, S: np.ndarray, Y: np.ndarray, labelled: np.ndarray, ks: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Label sums and counts over each query's ks[j] nearest rows labelled for model j."""
    c = min(S.shape[1], int(ks.max(initial=0)) + _SLACK)
    idx = _top(S, c)
    lab = labelled[idx]
    use = lab & (np.cumsum(lab, axis=1) <= ks)
    sums = np.where(use, np.nan_to_num(Y[idx]), 0.0).sum(axis=1)
    counts = use.sum(axis=1).astype(np.float64)
    # Models with too few labels among the c nearest rows (an added model, sparse feedback)
    # are searched among their own labelled rows.
    for j in np.flatnonzero((counts < ks).any(axis=0)):
        rows = snap.rows.get(j)
        if rows is None:
            rows = snap.rows[j] = np.flatnonzero(labelled[:, j])
        kj = int(ks[j])
        top = rows[_top(S[:, rows], kj)] if kj < len(rows) else np.broadcast_to(rows, (len(S), len(rows)))
        sums[:, j] = Y[top, j].sum(axis=1)
        counts[:, j] = kj
    return sums, counts


def _top(S: np.ndarray, c: int) -> np.ndarray:
    """Column indices of each row's c largest entries, most similar first."""
    if c >= S.shape[1]:
        return np.argsort(-S, axis=1, kind="stable")
    part = np.argpartition(-S, c - 1, axis=1)[:, :c]
    order = np.argsort(-np.take_along_axis(S, part, axis=1), axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1)
