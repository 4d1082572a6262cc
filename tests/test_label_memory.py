"""The k-NN label memory against its definition, computed the slow way."""

from __future__ import annotations

import numpy as np
import pytest

from shared_core.quality.memory import LabelMemory


def brute_force(X, Y, Q, k, prior, shrinkage):
    """Per query and model: the mean (shrunk toward prior) of the k_j most similar rows labelled for it."""
    X = X / np.linalg.norm(X, axis=1, keepdims=True)
    Q = Q / np.linalg.norm(Q, axis=1, keepdims=True)
    n_labels = (~np.isnan(Y)).sum(axis=0)
    ks = np.minimum(n_labels, np.maximum(1, np.round(k * n_labels / n_labels.max()))).astype(int)
    out = np.empty((len(Q), Y.shape[1]))
    for i, q in enumerate(Q):
        for j in range(Y.shape[1]):
            rows = np.flatnonzero(~np.isnan(Y[:, j]))
            nearest = rows[np.argsort(-(X[rows] @ q), kind="stable")[: ks[j]]]
            total, count = Y[nearest, j].sum() + shrinkage * prior[j], len(nearest) + shrinkage
            out[i, j] = total / count if count > 0 else prior[j]
    return out


@pytest.mark.parametrize("missing", [0.0, 0.03, 0.4])
@pytest.mark.parametrize("k", [1, 7, 40, 500])
def test_neighbour_means_match_the_definition(missing, k):
    rng = np.random.default_rng(int(missing * 100) + k)
    X, Q = rng.normal(size=(300, 8)), rng.normal(size=(270, 8))  # 270 queries: two chunks
    Y = rng.integers(0, 2, size=(300, 5)).astype(float)
    Y[rng.random(Y.shape) < missing] = np.nan
    prior = np.nanmean(Y, axis=0)
    memory = LabelMemory(X, Y)
    for shrinkage in (0.0, 3.0):
        np.testing.assert_allclose(memory.neighbour_means(Q, k, prior, shrinkage),
                                   brute_force(X, Y, Q, k, prior, shrinkage), atol=1e-12)


def test_a_model_added_from_a_small_profile_averages_proportionally_fewer_neighbours():
    rng = np.random.default_rng(5)
    X, Q = rng.normal(size=(400, 6)), rng.normal(size=(50, 6))
    Y = rng.integers(0, 40, size=(400, 3)).astype(float)  # token counts, not just 0/1
    memory = LabelMemory(X, Y)
    profile_X, profile_y = rng.normal(size=(40, 6)), rng.integers(0, 40, size=40).astype(float)
    memory.add_column(profile_X, profile_y)
    memory.append(rng.normal(size=(3, 6)), np.array([[1.0, np.nan, np.nan, 7.0]] * 3))  # feedback rows
    prior = np.nanmean(memory.Y, axis=0)
    expected = brute_force(np.vstack([X, profile_X, memory.X[-3:]]), memory.Y, Q, 50, prior, 0.0)
    np.testing.assert_allclose(memory.neighbour_means(Q, 50, prior, 0.0), expected, atol=1e-12)


def test_a_model_without_labels_gets_its_prior():
    Y = np.array([[1.0, np.nan], [0.0, np.nan], [1.0, np.nan]])
    memory = LabelMemory(np.eye(3), Y)
    queries = np.array([[1.0, 0.5, 0.0], [0.0, 0.5, 1.0]])  # nearest two: rows 0, 1 and rows 2, 1
    out = memory.neighbour_means(queries, 2, np.array([0.5, 0.25]), 0.0)
    np.testing.assert_array_equal(out[:, 1], [0.25, 0.25])
    np.testing.assert_array_equal(out[:, 0], [0.5, 0.5])
