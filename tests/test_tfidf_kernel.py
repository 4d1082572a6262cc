"""The compiled one-prompt embedding (shared_core/_tfidf.c) against the NumPy code it replaces: the same bits."""

from __future__ import annotations

import os

import numpy as np
import pytest

from shared_core import embed
from shared_core.embed import TfidfSvdEmbedder
from shared_core.native import kernel
from shared_core.ngrams import WordNgramCounter

tfidf = kernel("_tfidf")
needs_kernel = pytest.mark.skipif(tfidf is None, reason="shared_core._tfidf is not built (no C compiler at install?)")

# Texts at the edges: nothing, nothing known, one word, non-ASCII, only one-character words, counts
# up to the kernel's table of log weights and past it, a megabyte.
WORDS = "the of question answer which sentence option python function returns list".split()
EDGE_TEXTS = [
    "",
    "zyxwvut qqqq wwwwpp",
    "question",
    "Übergrößenträger café naïve: 東京の日本語テキスト, ça va? Ελληνικά κείμενα",
    "a b c d e f g 1 2 3 _ x",
    "the " * (len(embed._LOG_COUNTS) - 1),
    "the " * len(embed._LOG_COUNTS),
    " ".join(["the"] * 100_000),
    " ".join(np.random.default_rng(0).choice(WORDS, 150_000))[:1_000_000],
]


def test_the_kernel_is_built_where_ci_requires_it():
    if os.environ.get("OMNIROUTE_REQUIRE_KERNELS") != "1":
        pytest.skip("set OMNIROUTE_REQUIRE_KERNELS=1 to require the compiled kernels (CI does)")
    assert tfidf is not None, "shared_core._tfidf did not build: pip install -e . needs a C compiler"


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def numpy_row(embedder: TfidfSvdEmbedder, text: str) -> np.ndarray:
    """The projected float32 row of the NumPy path (before the final normalisation)."""
    return embed._project(*embedder._rows([text], unit=False), embedder._projection)[0]


def check_both_ways(monkeypatch, embedder: TfidfSvdEmbedder, texts: list[str]) -> int:
    """Assert that each text embeds to the same bits through the kernel and the NumPy path; the
    number of texts the kernel itself computed (the others exceed its table and take NumPy's path)."""
    computed = 0
    for text in texts:
        row = embedder._project_one(text)
        if row is not None:
            computed += 1
            assert same_bits(row, numpy_row(embedder, text)), text[:80]
        with_kernel = embedder.transform([text])
        monkeypatch.setattr(embed, "_tfidf", None)
        without = embedder.transform([text])
        monkeypatch.setattr(embed, "_tfidf", tfidf)
        assert same_bits(with_kernel, without), text[:80]
    return computed


@pytest.fixture(scope="module")
def default_tfidf(train):
    """The default embedder, fitted on RouterBench's training split as fit_router fits it."""
    return TfidfSvdEmbedder().fit(train.prompts)


@needs_kernel
@pytest.mark.slow
def test_every_prompt_of_both_datasets_embeds_to_the_same_bits(monkeypatch, default_tfidf, routerbench, llmrouter):
    prompts = list(dict.fromkeys(routerbench.prompts + llmrouter.prompts))
    assert check_both_ways(monkeypatch, default_tfidf, prompts) == len(prompts)


@needs_kernel
def test_edge_texts_embed_to_the_same_bits(monkeypatch, default_tfidf):
    assert check_both_ways(monkeypatch, default_tfidf, EDGE_TEXTS) == 6  # the rest: a count past the table
    assert same_bits(default_tfidf.transform([""]), np.zeros((1, 128)))


@needs_kernel
def test_counts_past_the_table_are_reported_and_a_longer_table_gives_the_same_bits(default_tfidf):
    counter = default_tfidf._counters[0]
    lo, hi = counter.ngram_range
    longer = embed._log_counts(1 << 18)
    for text, most in [(EDGE_TEXTS[6], len(embed._LOG_COUNTS)), (EDGE_TEXTS[7], 100_000)]:
        ids = counter._word_ids_of([text], lengths=False)[0]
        out = np.full(128, 7.0, dtype=np.float32)
        args = (ids, counter._unigram, counter._keys, counter._columns, counter._key_offsets, lo, hi,
                default_tfidf.idf_[0])
        assert tfidf.project_one(*args, embed._LOG_COUNTS, default_tfidf._projection, out) == most
        assert (out == 7.0).all()  # untouched
        assert tfidf.project_one(*args, longer, default_tfidf._projection, out) == 0
        assert same_bits(out, numpy_row(default_tfidf, text))


def test_the_table_holds_numpys_float32_log_weights_for_counts_in_any_array():
    """NumPy's float32 log runs SIMD code that C's logf need not match: the table is NumPy's, and an
    entry must not depend on where a count sits in the array _tfidf takes the log of."""
    table = embed._LOG_COUNTS
    rng = np.random.default_rng(5)
    for size in [*range(1, 40), 100, 1000, len(table) - 1]:
        counts = rng.integers(1, len(table), size)
        data = np.log(counts, dtype=np.float32)
        data += np.float32(1.0)
        assert same_bits(data, table[counts])


@needs_kernel
@pytest.mark.parametrize("word_ngrams", [(1, 1), (1, 3), (2, 3), (3, 3)])
def test_other_ngram_ranges_embed_to_the_same_bits(monkeypatch, train_sample, test_split, word_ngrams):
    embedder = TfidfSvdEmbedder(dim=32, word_ngrams=word_ngrams).fit(train_sample(300, seed=2).prompts)
    texts = test_split.prompts[:150] + EDGE_TEXTS[:6]
    assert check_both_ways(monkeypatch, embedder, texts) == len(texts)


@needs_kernel
@pytest.mark.parametrize("options", [{"tail_weight": 0.3}, {"char_ngrams": (3, 4)}])
def test_embedders_the_kernel_does_not_cover_keep_the_numpy_path(monkeypatch, train_sample, test_split, options):
    embedder = TfidfSvdEmbedder(dim=16, **options).fit(train_sample(200, seed=3).prompts)
    assert embedder._project_one(test_split.prompts[0]) is None
    assert check_both_ways(monkeypatch, embedder, test_split.prompts[:5]) == 0


def tiny_tables():
    """A valid call's arguments: 3 columns (two unigrams, one bigram), dim 4."""
    counter = WordNgramCounter(["ab", "ab cd", "cd"], (1, 2))
    ids = counter._word_ids_of(["ab cd zz ab cd ab"], lengths=False)[0]
    idf = np.array([1.5, 2.0, 1.25], dtype=np.float32)
    projection = np.arange(12, dtype=np.float32).reshape(3, 4) / 7
    return [ids, counter._unigram, counter._keys, counter._columns, counter._key_offsets, 1, 2, idf,
            embed._LOG_COUNTS, projection, np.zeros(4, dtype=np.float32)]


@needs_kernel
def test_a_tiny_vocabulary_gives_the_numpy_arithmetic():
    args = tiny_tables()
    assert tfidf.project_one(*args) == 0
    counts = np.array([3, 2, 2])  # "ab", "ab cd", "cd"
    weights = (np.log(counts, dtype=np.float32) + np.float32(1)) * args[7]
    assert same_bits(args[-1], np.einsum("i,ij->j", weights, args[9]))


@needs_kernel
def test_malformed_calls_raise_instead_of_reading_out_of_bounds():
    def call(**changes):
        args = tiny_tables()
        names = ["ids", "unigram", "keys", "key_columns", "offsets", "lo", "hi", "idf", "log_table",
                 "projection", "out"]
        for name, value in changes.items():
            args[names.index(name)] = value(args[names.index(name)]) if callable(value) else value
        return tfidf.project_one(*args)

    def with_value(i, v):
        def change(a):
            a = a.copy()
            a[i] = v
            return a
        return change

    i64, f32 = np.int64, np.float32
    bad = [
        (dict(ids=with_value(0, 99)), ValueError),  # a word id past the unigram table
        (dict(ids=with_value(0, -1)), ValueError),
        (dict(unigram=with_value(0, 3)), ValueError),  # a column past the IDF weights
        (dict(unigram=with_value(0, -2)), ValueError),
        (dict(key_columns=with_value(0, 5)), ValueError),
        (dict(key_columns=lambda a: a[:-1]), ValueError),  # keys and their columns of different lengths
        (dict(offsets=lambda a: a[:2]), ValueError),  # no offset for bigrams
        (dict(lo=0), ValueError),
        (dict(lo=3, hi=2), ValueError),
        (dict(hi=10**30), ValueError),
        (dict(lo="1"), TypeError),
        (dict(idf=lambda a: a[:2]), ValueError),  # projection rows != IDF weights
        (dict(projection=lambda a: a[:, :3]), TypeError),  # not contiguous
        (dict(projection=lambda a: np.ascontiguousarray(a[:, :3])), ValueError),  # rows of 3, out of 4
        (dict(out=lambda a: np.zeros(5, dtype=f32)), ValueError),
        (dict(ids=lambda a: a.astype(np.int32)), TypeError),  # wrong item types
        (dict(keys=lambda a: a.astype(np.uint64)), TypeError),
        (dict(idf=lambda a: a.astype(np.float64)), TypeError),
        (dict(out=lambda a: np.zeros(4)), TypeError),
        (dict(ids=lambda a: np.repeat(a, 2)[::2]), TypeError),  # not contiguous
        (dict(out=lambda a: np.zeros(8, dtype=f32)[::2]), TypeError),
        (dict(ids=lambda a: a.tolist()), TypeError),  # not a buffer
        (dict(projection=lambda a: np.asfortranarray(a)), TypeError),
    ]
    for changes, error in bad:
        with pytest.raises(error):
            call(**changes)
    with pytest.raises(TypeError):
        tfidf.project_one(*tiny_tables()[:10])  # ten arguments
    read_only = np.zeros(4, dtype=f32)
    read_only.flags.writeable = False
    with pytest.raises(TypeError):
        call(out=read_only)
    # Well-formed but odd: no crash, and a short table reports the largest count.
    assert call(ids=lambda a: a[:0]) == 0
    args = tiny_tables()
    args[0], args[8], args[10][:] = args[0][:0], args[8][:0], np.nan  # no n-gram and no table: still a row
    assert tfidf.project_one(*args) == 0 and not args[10].any()
    assert call(log_table=lambda a: a[:2]) == 3
    assert call(log_table=lambda a: a[:0]) == 3
    assert call(keys=lambda a: a[::-1].copy()) == 0  # unsorted keys: wrong n-grams, no bad reads
    assert call(keys=lambda a: a[:0], key_columns=lambda a: a[:0]) == 0
    assert call(idf=lambda a: a[:0], projection=np.zeros((0, 4), f32), ids=lambda a: a[:0],
                unigram=np.full(5, -1, i64)) == 0
