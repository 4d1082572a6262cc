"""The fast n-gram counters give exactly scikit-learn's counts."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.feature_extraction.text import CountVectorizer

from shared_core.ngrams import TOKEN_PATTERN, AnalyzerCounter, WordNgramCounter


def sklearn_counts(vectorizer, texts):
    return vectorizer.transform(texts).toarray()


def dense(parts, n_rows, n_columns):
    indptr, columns, counts = parts
    assert len(indptr) == n_rows + 1 and indptr[0] == 0 and indptr[-1] == len(columns) == len(counts)
    out = np.zeros((n_rows, n_columns), dtype=np.int64)
    for i in range(n_rows):
        row = columns[indptr[i]:indptr[i + 1]]
        assert (np.diff(row) > 0).all(), "columns must be sorted and distinct within a row"
        out[i, row] = counts[indptr[i]:indptr[i + 1]]
    return out


@pytest.mark.slow
@pytest.mark.parametrize("ngrams", [(1, 1), (1, 2), (2, 3)])
def test_word_ngram_counts_equal_sklearn_on_both_datasets(routerbench, llmrouter, ngrams):
    for data in (routerbench, llmrouter):
        train, test = data.subset("train").prompts, data.subset("test").prompts[:300]
        vectorizer = CountVectorizer(ngram_range=ngrams, token_pattern=TOKEN_PATTERN, min_df=2).fit(train)
        terms = vectorizer.get_feature_names_out().tolist()
        counter = WordNgramCounter(terms, ngrams)
        np.testing.assert_array_equal(dense(counter.count(test), len(test), len(terms)),
                                      sklearn_counts(vectorizer, test))


_TEXT = st.text(
    alphabet=st.sampled_from(list("aAbBzZ09_ .,;:'\"-\t\n\r\x0b\x0c\x1c\x85\u00a0éÉßİΩωσς中文\u0301—’")),
    max_size=60,
)


@settings(max_examples=150, deadline=None)
@given(corpus=st.lists(_TEXT, min_size=1, max_size=8), queries=st.lists(_TEXT, max_size=6))
def test_word_ngram_counts_equal_sklearn_on_any_text(corpus, queries):
    vectorizer = CountVectorizer(ngram_range=(1, 2), token_pattern=TOKEN_PATTERN)
    try:
        vectorizer.fit(corpus)
    except ValueError:  # the corpus has no word of two characters or more
        return
    terms = vectorizer.get_feature_names_out().tolist()
    texts = queries + corpus
    counter = WordNgramCounter(terms, (1, 2))
    expected = sklearn_counts(vectorizer, texts)
    np.testing.assert_array_equal(dense(counter.count(texts), len(texts), len(terms)), expected)
    # One text at a time (its own path), its paragraphs now remembered from the batch above.
    alone = np.vstack([dense(counter.count([t]), 1, len(terms)) for t in texts])
    np.testing.assert_array_equal(alone, expected)


def test_character_ngrams_are_counted_through_the_analyzer(routerbench):
    train, test = routerbench.subset("train").prompts[:200], routerbench.subset("test").prompts[:50]
    vectorizer = CountVectorizer(analyzer="char_wb", ngram_range=(3, 4), min_df=2).fit(train)
    terms = vectorizer.get_feature_names_out().tolist()
    counter = AnalyzerCounter(vectorizer.build_analyzer(), terms)
    np.testing.assert_array_equal(dense(counter.count(test), len(test), len(terms)), sklearn_counts(vectorizer, test))


def test_no_texts_and_no_known_words_give_empty_rows():
    counter = WordNgramCounter(["hello", "hello world", "world"], (1, 2))
    indptr, columns, counts = counter.count([])
    assert indptr.tolist() == [0] and len(columns) == len(counts) == 0
    indptr, columns, counts = counter.count(["", "nothing known", "HELLO, World! hello"])
    assert indptr.tolist() == [0, 0, 0, 3]
    assert dict(zip(columns.tolist(), counts.tolist(), strict=False)) == {0: 2, 1: 1, 2: 1}


@pytest.mark.parametrize("terms", [["a"], ["three word term"], ["has  two spaces"], ["UPPER!"]])
def test_a_vocabulary_the_analyzer_could_not_have_produced_is_refused(terms):
    with pytest.raises(ValueError, match="vocabulary term"):
        WordNgramCounter(terms, (1, 2))


def test_a_bad_ngram_range_is_refused():
    with pytest.raises(ValueError, match="ngram_range"):
        WordNgramCounter(["hello"], (2, 1))


# --- issue 17: repeated paragraphs are split once, in a bounded memo ---


def test_remembered_paragraphs_give_the_same_counts_within_the_memo_bounds(routerbench, monkeypatch):
    from shared_core import ngrams

    train, test = routerbench.subset("train").prompts, routerbench.subset("test").prompts[:200]
    vectorizer = CountVectorizer(ngram_range=(1, 2), token_pattern=TOKEN_PATTERN, min_df=2).fit(train)
    terms = vectorizer.get_feature_names_out().tolist()
    expected = sklearn_counts(vectorizer, test)
    monkeypatch.setattr(ngrams, "_MEMO_CHARS", 20_000)
    monkeypatch.setattr(ngrams, "_MEMO_ENTRIES", 64)
    counter = WordNgramCounter(terms, (1, 2))
    for _ in range(2):  # the second time most few-shot examples come from the memo
        np.testing.assert_array_equal(dense(counter.count(test), len(test), len(terms)), expected)
        alone = np.vstack([dense(counter.count([t]), 1, len(terms)) for t in test])
        np.testing.assert_array_equal(alone, expected)
        assert len(counter._memo) <= 64 and counter._memo_chars <= 20_000
    # RouterBench's 5-shot examples are shared by its prompts: once seen, most paragraphs are
    # found in the memo instead of being split again.
    monkeypatch.undo()
    counter = WordNgramCounter(terms, (1, 2))
    counter.count(test[:100])
    split = []
    monkeypatch.setattr(counter, "_split", lambda paragraphs: split.extend(paragraphs) or
                        WordNgramCounter._split(counter, paragraphs))
    np.testing.assert_array_equal(dense(counter.count(test[100:]), 100, len(terms)), expected[100:])
    assert len(split) < 0.3 * sum(len(t.split("\n\n")) for t in test[100:])


def test_a_paragraph_longer_than_the_memo_is_counted_and_not_remembered(monkeypatch):
    from shared_core import ngrams

    monkeypatch.setattr(ngrams, "_MEMO_CHARS", 100)
    counter = WordNgramCounter(["hello", "hello world", "world"], (1, 2))
    counter.count(["short hello"])
    assert counter._memo_chars == 11 and "short hello" in counter._memo
    for _ in range(2):
        indptr, columns, counts = counter.count(["hello world " * 20 + "\n\nworld"])
        assert dict(zip(columns.tolist(), counts.tolist(), strict=True)) == {0: 20, 1: 20, 2: 21}
        assert counter._memo_chars <= 100 and len(counter._memo) <= 1
