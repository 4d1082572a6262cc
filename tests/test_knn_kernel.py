"""The compiled nearest-neighbour selection (shared_core/_knn.c) against the NumPy code it replaces."""

from __future__ import annotations

import os

import numpy as np
import pytest

from shared_core.native import kernel
from shared_core.quality import memory as memory_module
from shared_core.quality.memory import LabelMemory

knn = kernel("_knn")
needs_kernel = pytest.mark.skipif(knn is None, reason="shared_core._knn is not built (no C compiler at install?)")


def test_the_kernels_are_built_where_ci_requires_them():
    if os.environ.get("OMNIROUTE_REQUIRE_KERNELS") != "1":
        pytest.skip("set OMNIROUTE_REQUIRE_KERNELS=1 to require the compiled kernels (CI does)")
    assert knn is not None, "shared_core._knn did not build: pip install -e . needs a C compiler"


def both_ways(monkeypatch, memory: LabelMemory, Q, k, prior, shrinkage=0.0):
    """neighbour_means through the kernel, then through the NumPy code."""
    with_kernel = memory.neighbour_means(Q, k, prior, shrinkage)
    monkeypatch.setattr(memory_module, "_knn", None)
    without = memory.neighbour_means(Q, k, prior, shrinkage)
    monkeypatch.setattr(memory_module, "_knn", knn)
    return with_kernel, without


@needs_kernel
@pytest.mark.parametrize("k", [1, 5, 60, 199, 200, 1000])
@pytest.mark.parametrize("layout", ["full", "scattered", "profile"])
def test_the_kernel_takes_the_rows_the_numpy_code_takes_ties_included(monkeypatch, k, layout):
    rng = np.random.default_rng(k)
    # Templated prompts: many rows repeat exactly, so similarities tie and the lower row must win.
    base = rng.normal(size=(60, 16))
    X = base[rng.integers(0, len(base), 900)]
    Y = rng.integers(0, 2, size=(900, 6)).astype(float)
    if layout == "scattered":
        Y[rng.random(Y.shape) < 0.05] = np.nan
    if layout == "profile":  # two models labelled on a small profile only: their own rows are searched
        Y[rng.random(900) < 0.9, 4:] = np.nan
    memory = LabelMemory(X, Y)
    Q = np.vstack([base[:5], rng.normal(size=(20, 16))])
    prior = np.nanmean(Y, axis=0)
    with_kernel, without = both_ways(monkeypatch, memory, Q, k, prior)
    np.testing.assert_array_equal(with_kernel, without)


@needs_kernel
def test_labels_given_column_major_are_kept_row_major_for_the_kernel(monkeypatch):
    rng = np.random.default_rng(5)
    X = rng.normal(size=(400, 8))
    Y = np.asfortranarray(rng.integers(0, 2, size=(400, 5)).astype(float))  # a column slice of a frame
    Y[rng.random(Y.shape) < 0.1] = np.nan
    memory = LabelMemory(X, Y)
    assert memory._snap.plan(30).native is not None
    with_kernel, without = both_ways(monkeypatch, memory, rng.normal(size=(70, 8)), 30, np.nanmean(Y, axis=0))
    np.testing.assert_array_equal(with_kernel, without)


@needs_kernel
def test_fractional_labels_and_nan_similarities_give_the_same_bits(monkeypatch):
    rng = np.random.default_rng(3)
    X, Y = rng.normal(size=(500, 8)), rng.random((500, 4))
    memory = LabelMemory(X, Y)
    Q = rng.normal(size=(6, 8))
    Q[2, 3] = np.nan  # a NaN query: every similarity NaN, ranked as the least similar (lower rows first)
    with_kernel, without = both_ways(monkeypatch, memory, Q, 40, Y.mean(axis=0), shrinkage=2.0)
    # Both add a neighbourhood's labels row after row: the same bits, not merely close ones (a
    # last-bit difference in a length's mean rounds it up a token, or breaks a price tie).
    np.testing.assert_array_equal(with_kernel, without)


@needs_kernel
def test_the_fitted_routerbench_memory_predicts_the_same_through_both(monkeypatch, train, test_split):
    from shared_core.embed import TfidfSvdEmbedder

    embedder = TfidfSvdEmbedder().fit(train.prompts)
    memory = LabelMemory(embedder.transform(train.prompts), train.quality)
    Q = embedder.transform(test_split.prompts[:300])
    prior = np.nanmean(train.quality, axis=0)
    assert len(memory._snap.plan(200).groups) > 1  # models with missing labels: more than one group
    for k in (20, 200):
        single = np.vstack([memory.neighbour_means(Q[i:i + 1], k, prior, 0.0) for i in range(len(Q))])
        with_kernel, without = both_ways(monkeypatch, memory, Q, k, prior)
        np.testing.assert_array_equal(with_kernel, without)
        np.testing.assert_array_equal(single, with_kernel)


@needs_kernel
def test_malformed_calls_raise_instead_of_reading_out_of_bounds():
    n, m = 50, 3
    s = np.linspace(0, 1, n, dtype=np.float32)
    Y0, K, out = np.zeros((n, m)), np.ones((n, m), dtype=bool), np.zeros(m)
    rows = np.arange(10, dtype=np.int64)
    assert knn.label_sums(s, Y0, K, m, 5, ((rows, None, 0, 5),), out) is None
    bad = [
        ((s, Y0, K, m, 5, ((None, None, 0, 5),)), TypeError),  # six arguments
        ((s, Y0[:10], K, m, 5, ((None, None, 0, 5),), out), ValueError),  # fewer label rows than similarities
        ((s, Y0, K[:10], m, 5, ((None, None, 0, 5),), out), ValueError),
        ((s, Y0, K, m, 5, ((None, None, 0, 5),), out[:2]), ValueError),  # out shorter than m
        ((s, Y0, K, m, 5, ((np.array([3, 2], dtype=np.int64), None, 0, 1),), out), ValueError),  # not ascending
        ((s, Y0, K, m, 5, ((np.array([0, n], dtype=np.int64), None, 0, 1),), out), ValueError),  # past the rows
        ((s, Y0, K, m, 5, ((None, np.array([m], dtype=np.int64), 0, 1),), out), ValueError),  # no such model
        ((s, Y0, K, m, 5, ((None, None, m, 1),), out), ValueError),  # first not a column
        ((s, Y0, K, m, 5, ((None, None, 0, 6),), out), ValueError),  # k above top
        ((s, Y0, K, m, 5, ((None, None, 0, 0),), out), ValueError),
        ((s, Y0, K, m, 0, (), out), ValueError),
        ((s, Y0, K, -1, 5, (), out), ValueError),
        ((s, Y0, K, m, 5, [(None, None, 0, 5)], out), TypeError),  # groups not a tuple
        ((s, Y0, K, m, 5, ((None, None, 5),), out), TypeError),  # a group of three
        ((s[::2], Y0, K, m, 5, (), out), TypeError),  # not contiguous
        ((s.astype(np.float64), Y0, K, m, 5, (), out), TypeError),  # float64 similarities
        ((s, Y0.astype(np.float32), K, m, 5, (), out), TypeError),
        ((s, Y0, K.astype(np.int64), m, 5, (), out), TypeError),
        ((s, Y0, K, m, 5, ((rows.astype(np.int32), None, 0, 5),), out), TypeError),
        ((s, Y0, K, m, 5, (), out.astype(np.float32)), TypeError),
        ((s.tolist(), Y0, K, m, 5, (), out), TypeError),  # no buffer at all
    ]
    for args, error in bad:
        with pytest.raises(error):
            knn.label_sums(*args)
    read_only = np.zeros(m)
    read_only.flags.writeable = False
    with pytest.raises(TypeError):
        knn.label_sums(s, Y0, K, m, 5, (), read_only)


@needs_kernel
@pytest.mark.slow
def test_routing_llmrouter_decides_the_same_with_and_without_the_kernels(monkeypatch, llmrouter):
    """Output lengths priced from LLMRouter's costs are not whole numbers, and several of its models
    share a price: a decision hangs on the last bit of a length's mean (found by a review, where
    the NumPy path summed with a BLAS product and chose another model in 1 of 73,296 decisions)."""
    from shared_core import embed
    from shared_core.fitting import fit_router
    from shared_core.selection import PredictorSpec

    train, test = llmrouter.subset("train"), llmrouter.subset("test")
    first = np.zeros(len(train), dtype=bool)
    first[:1500] = True  # enough to find the case: the BLAS sums changed 38 of the 500 test decisions
    router = fit_router(train.subset(first), PredictorSpec.of("knn", k=5))
    assert (router.lengths.memory_.Y % 1 != 0).any()  # the case: fractional length labels
    router.cost_weight = 2000.0  # λ where price ties decide
    prompts = test.prompts

    def decisions():
        out = []
        for p in prompts:
            d = router.decide(p)
            out.append((d.chosen, d.ranking, d.output_tokens, d.cost))
        return out

    with_kernels = decisions()
    monkeypatch.setattr(memory_module, "_knn", None)
    monkeypatch.setattr(embed, "_tfidf", None)
    assert decisions() == with_kernels
