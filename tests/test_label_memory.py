"""The k-NN label memory against its definition, computed the slow way."""

from __future__ import annotations

import numpy as np
import pytest

from shared_core.quality import memory as memory_module
from shared_core.quality.memory import EMBEDDING_DTYPE, LabelMemory, _similarities


@pytest.fixture(autouse=True, params=["kernel", "numpy"])
def selection(request, monkeypatch):
    """Every test once with the compiled selection (shared_core/_knn.c) and once with the NumPy code."""
    if request.param == "numpy":
        monkeypatch.setattr(memory_module, "_knn", None)
    elif memory_module._knn is None:
        pytest.skip("the compiled kernel shared_core._knn is not built (tests/test_knn_kernel.py says why)")
    return request.param


def brute_force(X, Y, Q, k, prior, shrinkage):
    """Per query and model: the mean (shrunk toward prior) of the k_j most similar rows labelled for it.

    Similarities are the memory's own (its float32 rows, shared_core's `_similarities`), so that
    rows tied to float32 precision rank here as they do there; what is checked is the selection.
    """
    if X.dtype != EMBEDDING_DTYPE:
        X = (X / np.linalg.norm(X, axis=1, keepdims=True)).astype(EMBEDDING_DTYPE)
    S = _similarities(X, Q / np.linalg.norm(Q, axis=1, keepdims=True))
    n_labels = (~np.isnan(Y)).sum(axis=0)
    ks = np.minimum(n_labels, np.maximum(1, np.round(k * n_labels / n_labels.max()))).astype(int)
    out = np.empty((len(Q), Y.shape[1]))
    for i in range(len(Q)):
        for j in range(Y.shape[1]):
            rows = np.flatnonzero(~np.isnan(Y[:, j]))
            nearest = rows[np.argsort(-S[i, rows], kind="stable")[: ks[j]]]
            total, count = Y[nearest, j].sum() + shrinkage * prior[j], len(nearest) + shrinkage
            out[i, j] = total / count if count > 0 else prior[j]
    return out


def test_similarities_are_cosines_and_the_same_for_a_query_alone_and_in_any_batch():
    rng = np.random.default_rng(11)
    X = rng.normal(size=(2218, 128))
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    Q = rng.normal(size=(70, 128))
    Q /= np.linalg.norm(Q, axis=1, keepdims=True)
    stored = X.astype(EMBEDDING_DTYPE)
    together = _similarities(stored, Q)
    assert together.dtype == EMBEDDING_DTYPE
    np.testing.assert_allclose(together, Q @ X.T, atol=1e-6)
    for size in (1, 2, 3, 17, 64):  # a BLAS matrix product would sum each of these differently
        for start in range(0, len(Q), size):
            np.testing.assert_array_equal(_similarities(stored, Q[start:start + size]), together[start:start + size])


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


@pytest.mark.parametrize("ranked", [False, True])
@pytest.mark.parametrize("layout", ["scattered", "feedback", "profiles"])
def test_both_ways_of_summing_match_the_definition(monkeypatch, ranked, layout):
    # A few groups select per group; many (a group per model) rank the near rows for every model
    # at once, widening them and falling back to a group's own rows when labels are sparse.
    from shared_core.quality import memory as module

    monkeypatch.setattr(module, "_FEW_GROUPS", -1 if ranked else 10**6)
    rng = np.random.default_rng(["scattered", "feedback", "profiles"].index(layout))
    X, Q = rng.normal(size=(600, 8)), rng.normal(size=(30, 8))
    Y = rng.random((600, 6))
    if layout == "scattered":  # a few missing labels per model: a group per model
        Y[rng.random(Y.shape) < 0.02] = np.nan
    elif layout == "feedback":  # a training block labelled for all, then one label per row
        Y[200:] = np.nan
        Y[np.arange(200, 600), rng.integers(0, 6, size=400)] = rng.random(400)
    memory = LabelMemory(X, Y)
    if layout == "profiles":  # models profiled on small, different prompt sets
        for size in (5, 12, 40):
            memory.add_column(rng.normal(size=(size, 8)), rng.random(size))
    plan = memory._snap.plan(60)
    assert plan.ranked == ranked
    prior = np.nanmean(memory.Y, axis=0)
    for k in (1, 9, 60):
        expected = brute_force(memory.X, memory.Y, Q, k, prior, 0.0)
        batch = memory.neighbour_means(Q, k, prior, 0.0)
        np.testing.assert_allclose(batch, expected, atol=1e-12)
        alone = np.vstack([memory.neighbour_means(Q[i:i + 1], k, prior, 0.0) for i in range(len(Q))])
        np.testing.assert_array_equal(alone, batch)


def test_a_memory_of_many_groups_ranks_its_rows_and_a_fitted_one_selects_per_group():
    rng = np.random.default_rng(8)
    X = rng.normal(size=(2000, 8))
    Y = rng.random((2000, 200))
    assert not LabelMemory(X, Y)._snap.plan(200).ranked  # one group
    Y[rng.random(Y.shape) < 0.01] = np.nan  # a group per model
    assert LabelMemory(X, Y)._snap.plan(200).ranked


def test_a_model_added_from_a_small_profile_averages_proportionally_fewer_neighbours():
    rng = np.random.default_rng(5)
    X, Q = rng.normal(size=(400, 6)), rng.normal(size=(50, 6))
    Y = rng.integers(0, 40, size=(400, 3)).astype(float)  # token counts, not just 0/1
    memory = LabelMemory(X, Y)
    profile_X, profile_y = rng.normal(size=(40, 6)), rng.integers(0, 40, size=40).astype(float)
    memory.add_column(profile_X, profile_y)
    memory.append(rng.normal(size=(3, 6)), np.array([[1.0, np.nan, np.nan, 7.0]] * 3))  # feedback rows
    prior = np.nanmean(memory.Y, axis=0)
    expected = brute_force(memory.X, memory.Y, Q, 50, prior, 0.0)  # its rows: X, the profile's, the feedback's
    np.testing.assert_allclose(memory.neighbour_means(Q, 50, prior, 0.0), expected, atol=1e-12)


def test_a_model_without_labels_gets_its_prior():
    Y = np.array([[1.0, np.nan], [0.0, np.nan], [1.0, np.nan]])
    memory = LabelMemory(np.eye(3), Y)
    queries = np.array([[1.0, 0.5, 0.0], [0.0, 0.5, 1.0]])  # nearest two: rows 0, 1 and rows 2, 1
    out = memory.neighbour_means(queries, 2, np.array([0.5, 0.25]), 0.0)
    np.testing.assert_array_equal(out[:, 1], [0.25, 0.25])
    np.testing.assert_array_equal(out[:, 0], [0.5, 0.5])


def test_models_profiled_on_the_same_prompts_share_rows_and_match_the_definition():
    rng = np.random.default_rng(11)
    X, Q = rng.normal(size=(500, 6)), rng.normal(size=(40, 6))
    Y = rng.integers(0, 2, size=(500, 3)).astype(float)
    memory = LabelMemory(X, Y)
    profile = rng.normal(size=(30, 6))
    labels = [rng.random(30) for _ in range(25)]
    for y in labels:
        memory.add_column(profile, y)
    assert len(memory.X) == 500 + 30  # one set of profile rows, whatever the number of models
    # The definition, with each added model given rows of its own (as if nothing were shared).
    X_all = np.vstack([X] + [profile] * len(labels))
    Y_all = np.full((len(X_all), 3 + len(labels)), np.nan)
    Y_all[:500, :3] = Y
    for j, y in enumerate(labels):
        Y_all[500 + 30 * j: 530 + 30 * j, 3 + j] = y
    prior = np.nanmean(Y_all, axis=0)
    np.testing.assert_allclose(memory.neighbour_means(Q, 60, prior, 0.0),
                               brute_force(X_all, Y_all, Q, 60, prior, 0.0), atol=1e-12)


def test_a_profile_prompt_given_twice_keeps_both_labels():
    memory = LabelMemory(np.eye(3), np.ones((3, 1)))
    memory.add_column(np.array([[0.0, 1.0, 1.0], [0.0, 1.0, 1.0]]), np.array([0.0, 1.0]))
    assert len(memory.X) == 5
    np.testing.assert_array_equal(np.sort(memory.Y[3:, 1]), [0.0, 1.0])


def test_label_sums_kept_up_to_date_equal_a_fresh_count():
    rng = np.random.default_rng(3)
    memory = LabelMemory(rng.normal(size=(50, 4)), rng.random((50, 3)))
    memory.label_sums()  # computed once, then carried along by appends
    for _ in range(40):
        Y = np.full((1, 3), np.nan)
        Y[0, rng.integers(3)] = rng.random()
        memory.append(rng.normal(size=(1, 4)), Y)
    memory.forget(np.arange(10, 30))
    memory.append(rng.normal(size=(2, 4)), rng.random((2, 3)))
    sums, counts = memory.label_sums()
    np.testing.assert_allclose(sums, np.nansum(memory.Y, axis=0), rtol=1e-12)
    np.testing.assert_array_equal(counts, (~np.isnan(memory.Y)).sum(axis=0))


def test_memories_of_the_same_prompts_share_one_search_and_agree_with_separate_ones():
    rng = np.random.default_rng(21)
    X, Q = rng.normal(size=(400, 8)), rng.normal(size=(1, 8))
    quality, lengths = rng.integers(0, 2, size=(400, 3)).astype(float), rng.integers(1, 90, size=(400, 3)).astype(float)
    a, b = LabelMemory(X, quality), LabelMemory(X.copy(), lengths)
    assert a.X.base is b.X.base or a.X is b.X  # one buffer for the same rows
    prior_a, prior_b = quality.mean(axis=0), lengths.mean(axis=0)
    shared = (a.neighbour_means(Q, 50, prior_a, 0.0), b.neighbour_means(Q, 8, prior_b, 0.0))
    np.testing.assert_allclose(shared[0], brute_force(X, quality, Q, 50, prior_a, 0.0), atol=1e-12)
    np.testing.assert_allclose(shared[1], brute_force(X, lengths, Q, 8, prior_b, 0.0), atol=1e-12)
    # After feedback the first memory has rows of its own: each searches its own rows again.
    a.append(Q, np.array([[1.0, np.nan, np.nan]]))
    assert a.X.base is not b.X.base
    np.testing.assert_allclose(b.neighbour_means(Q, 8, prior_b, 0.0), shared[1], atol=1e-12)
    np.testing.assert_allclose(a.neighbour_means(Q, 50, prior_a, 0.0),
                               brute_force(np.vstack([X, Q]), a.Y, Q, 50, prior_a, 0.0), atol=1e-12)


def test_one_query_at_a_time_gives_the_batch_rows_bit_for_bit(routerbench):
    # A decision asks about one prompt (a 1-D fast path), a batch about many: the same numbers.
    from shared_core.embed import TfidfSvdEmbedder

    train, test = routerbench.subset("train"), routerbench.subset("test")
    embedder = TfidfSvdEmbedder().fit(train.prompts)
    memory = LabelMemory(embedder.transform(train.prompts), train.quality)
    Q = embedder.transform(test.prompts[:200])
    prior = np.nanmean(train.quality, axis=0)
    for k in (1, 20, 200):
        batch = memory.neighbour_means(Q, k, prior, 0.0)
        one_by_one = np.vstack([memory.neighbour_means(Q[i:i + 1], k, prior, 0.0) for i in range(len(Q))])
        np.testing.assert_array_equal(one_by_one, batch)


def test_equally_similar_rows_are_taken_lower_row_first_in_a_batch_and_alone():
    # A prompt remembered many times (repeated feedback) is equally similar in every copy: which
    # copies are the k nearest must not depend on the batch a query comes in.
    rng = np.random.default_rng(5)
    base = rng.integers(-3, 4, size=(5, 8)).astype(float)
    X = np.repeat(base, 30, axis=0)
    Y = rng.random((150, 3))
    Y[rng.random(Y.shape) < 0.3] = np.nan
    memory = LabelMemory(X, Y)
    prior = np.nanmean(Y, axis=0)
    Q = np.vstack([base, base[::-1]])
    for k in (1, 3, 7, 40):
        batch = memory.neighbour_means(Q, k, prior, 0.0)
        alone = np.vstack([memory.neighbour_means(Q[i:i + 1], k, prior, 0.0) for i in range(len(Q))])
        np.testing.assert_array_equal(alone, batch)
        np.testing.assert_allclose(batch, brute_force(X, Y, Q, k, prior, 0.0), atol=1e-12)


def nearest_reference(s, c):
    """The c largest entries' indices, equal values lower index first, NaN least; ascending."""
    s = np.where(np.isnan(s), -np.inf, s)
    return np.sort(np.lexsort((np.arange(len(s)), -s))[:c])


def test_the_nearest_rows_are_an_exact_selection_whatever_was_cut_before():
    # The rows near a query are cut with a strided sample, then the nearest selected among them;
    # a narrower cut is taken from a wider one (the length predictor after the quality predictor).
    from shared_core.quality.memory import _Search, _top

    rng = np.random.default_rng(17)
    for case in range(300):
        n = int(rng.integers(1, 700))
        kind = case % 4
        if kind == 0:  # continuous similarities
            S = rng.uniform(-1, 1, size=(3, n))
        elif kind == 1:  # a few distinct values: ties everywhere, at the c-th place too
            S = rng.integers(-2, 3, size=(3, n)) / 2
        elif kind == 2:  # the largest values all at the end (the sample sees few of them)
            S = np.sort(rng.uniform(-1, 1, size=(3, n)), axis=1)
        else:  # NaN and infinities mixed in
            S = rng.uniform(-1, 1, size=(3, n))
            S[rng.random(S.shape) < 0.2] = np.nan
            S[rng.random(S.shape) < 0.05] = np.inf
            S[rng.random(S.shape) < 0.05] = -np.inf
        search = _Search(S)
        for c in sorted(rng.integers(1, n + 40, size=3).tolist(), reverse=True):
            for i in range(len(S)):
                rows, sims, _ = search.near(i, c)
                assert np.all(np.diff(rows) > 0)
                np.testing.assert_array_equal(_top(rows, sims, c), nearest_reference(S[i], c))


def test_rows_saved_in_double_precision_by_an_older_version_load_as_the_memory_keeps_them():
    rng = np.random.default_rng(3)
    X, Y, Q = rng.normal(size=(200, 8)), rng.integers(0, 2, size=(200, 3)).astype(float), rng.normal(size=(20, 8))
    fitted = LabelMemory(X, Y)
    older = LabelMemory.restore(X / np.linalg.norm(X, axis=1, keepdims=True), Y)  # what a float64 save holds
    assert older.X.dtype == EMBEDDING_DTYPE
    np.testing.assert_array_equal(older.X, fitted.X)
    prior = Y.mean(axis=0)
    np.testing.assert_array_equal(older.neighbour_means(Q, 20, prior, 0.0), fitted.neighbour_means(Q, 20, prior, 0.0))


def test_restoring_copies_the_rows_it_is_given():
    rng = np.random.default_rng(4)
    X = rng.normal(size=(50, 8)).astype(EMBEDDING_DTYPE)
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    memory = LabelMemory.restore(X, rng.integers(0, 2, size=(50, 2)).astype(float))
    assert X.flags.writeable and not np.shares_memory(X, memory.X)
    X[:] = 0.0
    assert np.abs(memory.X).sum() > 0


def test_a_large_memory_compares_a_batch_in_one_matrix_product(monkeypatch):
    from shared_core.quality import memory as module

    rng = np.random.default_rng(12)
    X = rng.normal(size=(300, 16)).astype(EMBEDDING_DTYPE)
    Q = rng.normal(size=(5, 16))
    exact = _similarities(X, Q)
    monkeypatch.setattr(module, "_EXACT_BYTES", 0)  # as if the rows were over the size kept exact
    product = _similarities(X, Q)
    np.testing.assert_array_equal(product, Q.astype(EMBEDDING_DTYPE) @ X.T)
    np.testing.assert_allclose(product, exact, atol=1e-6)
    np.testing.assert_array_equal(_similarities(X, Q[:1]), exact[:1])  # one query: the exact call still


@pytest.mark.parametrize(("d", "n"), [(128, 10_000), (128, 6145), (200, 4000), (500, 12_289), (1000, 3073),
                                    (1536, 1025), (1536, 3073)])
def test_a_memory_past_one_blas_threads_share_is_compared_in_blocks_with_the_same_bits(monkeypatch, d, n):
    """OpenBLAS splits a matrix-vector product of over 460,800 elements across threads, and a
    decision then waits a scheduling slice when other processes hold the cores (p90 12 ms against
    0.09 ms in blocks, 4 busy processes on 2 cores): larger memories are compared in blocks, which
    must give one product's bits (a review found blocks of other sizes, or a lone last row, did not)."""
    from threadpoolctl import threadpool_limits

    from shared_core.quality import memory as module

    rng = np.random.default_rng(n + d)
    X = rng.normal(size=(n, d)).astype(EMBEDDING_DTYPE)
    Q = rng.normal(size=(1, d))  # one query: a memory over _EXACT_BYTES compares a batch in one matrix product
    calls = []
    matmul = np.matmul
    monkeypatch.setattr(module.np, "matmul", lambda a, b, out: calls.append(a.shape[0]) or matmul(a, b, out=out))
    blocked = _similarities(X, Q)
    monkeypatch.setattr(module.np, "matmul", matmul)
    assert len(calls) > 1 and max(calls) * d < 460_800 and min(calls) >= 64
    with threadpool_limits(1):  # the whole product on one thread
        whole = np.stack([X @ q for q in np.ascontiguousarray(Q, dtype=EMBEDDING_DTYPE)])
    np.testing.assert_array_equal(blocked, whole)
