"""Embedders: the offline TF-IDF default, pretrained functions, LangChain and LlamaIndex adapters."""

from __future__ import annotations

import numpy as np
import pytest
from langchain_core.embeddings import DeterministicFakeEmbedding
from llama_index.core.embeddings import MockEmbedding

from omniroute_lc.embeddings import LangChainEmbedder
from omniroute_li.embeddings import LlamaIndexEmbedder
from shared_core.embed import Embedder, FunctionEmbedder, TfidfSvdEmbedder, l2_normalise, tail_text
from shared_core.fitting import fit_router


@pytest.fixture(scope="session")
def small(train_sample):
    return train_sample(300, seed=1)


@pytest.fixture(scope="session")
def tfidf(small):
    return TfidfSvdEmbedder(dim=48).fit(small.prompts)


def test_tfidf_embeddings_are_unit_vectors_of_the_chosen_size(tfidf, small):
    X = tfidf.transform(small.prompts[:20] + ["a prompt with words the training set never saw: zyxwvut"])
    assert X.shape == (21, 48)
    np.testing.assert_allclose(np.linalg.norm(X, axis=1), 1.0, atol=1e-6)
    assert isinstance(tfidf, Embedder)


def test_tfidf_fit_is_deterministic(small):
    a = TfidfSvdEmbedder(dim=16).fit(small.prompts).transform(small.prompts[:10])
    b = TfidfSvdEmbedder(dim=16).fit(small.prompts).transform(small.prompts[:10])
    np.testing.assert_array_equal(a, b)


def test_similar_prompts_are_closer_than_prompts_of_other_tasks(tfidf, small):
    X = tfidf.transform(small.prompts)
    tasks = np.asarray(small.task)
    S = X @ X.T
    np.fill_diagonal(S, np.nan)
    same = np.nanmean(np.where(tasks[:, None] == tasks[None, :], S, np.nan))
    other = np.nanmean(np.where(tasks[:, None] != tasks[None, :], S, np.nan))
    assert same > other + 0.3


def test_weighting_the_tail_separates_few_shot_prompts_sharing_their_examples(small):
    """Winogrande prompts share five worked examples; only the last question differs."""
    wino = [p for p, t in zip(small.prompts, small.task, strict=False) if t == "winogrande"][:40]
    whole = TfidfSvdEmbedder(dim=32, tail_weight=0.0).fit(small.prompts).transform(wino)
    tailed = TfidfSvdEmbedder(dim=32, tail_weight=0.5).fit(small.prompts).transform(wino)

    def mean_off_diagonal(X):
        S = X @ X.T
        return (S.sum() - np.trace(S)) / (len(S) * (len(S) - 1))

    assert mean_off_diagonal(tailed) < mean_off_diagonal(whole) - 0.05


def test_tail_text_keeps_the_last_paragraphs():
    prompt = "Example one.\nAnswer: A\n\nExample two.\nAnswer: B\n\nThe question we care about?\nAnswer:"
    assert tail_text(prompt, min_chars=10) == "The question we care about?\nAnswer:"
    assert tail_text(prompt, min_chars=50).startswith("Example two.")
    assert tail_text("no paragraphs at all", min_chars=500) == "no paragraphs at all"


def test_tfidf_bad_use_is_reported(small):
    with pytest.raises(RuntimeError, match="not fitted"):
        TfidfSvdEmbedder().transform(["hello"])
    with pytest.raises(TypeError, match=r"texts\[1\] must be str"):
        TfidfSvdEmbedder().fit(["hello", 3])
    with pytest.raises(ValueError, match="at least 2 texts"):
        TfidfSvdEmbedder().fit(["only one"])
    with pytest.raises(ValueError, match="tail_weight"):
        TfidfSvdEmbedder(tail_weight=1.5).fit(small.prompts)
    with pytest.raises(TypeError, match="single str"):
        TfidfSvdEmbedder().fit("a string is not a list of texts")


def test_function_embedder_normalises_and_checks_what_it_gets():
    emb = FunctionEmbedder(lambda texts: [[3.0, 4.0] for _ in texts])
    np.testing.assert_allclose(emb.fit(["x"]).transform(["a", "b"]), [[0.6, 0.8], [0.6, 0.8]])
    with pytest.raises(ValueError, match="returned"):
        FunctionEmbedder(lambda texts: [[1.0, 2.0]]).transform(["a", "b"])
    with pytest.raises(ValueError, match="returned"):
        FunctionEmbedder(lambda texts: [[np.nan, 1.0] for _ in texts]).transform(["a"])


def test_langchain_embeddings_route_prompts(small):
    embedder = LangChainEmbedder(DeterministicFakeEmbedding(size=24))
    X = embedder.transform(small.prompts[:5])
    assert X.shape == (5, 24)
    np.testing.assert_allclose(np.linalg.norm(X, axis=1), 1.0)
    router = fit_router(small, "knn", embedder=embedder)
    decision = router.decide(small.prompts[0])
    assert decision.chosen in small.models
    with pytest.raises(TypeError, match="Embeddings"):
        LangChainEmbedder(object())  # type: ignore[arg-type]


def test_llamaindex_embeddings_route_prompts(small):
    embedder = LlamaIndexEmbedder(MockEmbedding(embed_dim=12))
    X = embedder.transform(small.prompts[:5])
    assert X.shape == (5, 12)
    np.testing.assert_allclose(np.linalg.norm(X, axis=1), 1.0)
    router = fit_router(small, "cluster", embedder=embedder)
    assert router.decide(small.prompts[0]).chosen in small.models
    with pytest.raises(TypeError, match="BaseEmbedding"):
        LlamaIndexEmbedder(object())  # type: ignore[arg-type]


def test_each_request_is_embedded_once(small, tfidf):
    class Counting:
        def __init__(self):
            self.calls = 0

        def fit(self, texts):
            return self

        def transform(self, texts):
            self.calls += len(texts)
            return tfidf.transform(texts)

    counting = Counting()
    router = fit_router(small, "hybrid", embedder=counting)
    assert router.lengths.needs_embedding and router.quality.needs_embedding
    counting.calls = 0
    router.decide(small.prompts[0])
    assert counting.calls == 1


@pytest.mark.parametrize("options", [{}, {"char_ngrams": (3, 5), "tail_weight": 0.5}])
def test_one_prompt_path_gives_the_same_vectors_as_the_batch_path(small, options):
    """A prompt embeds the same alone as inside a batch: no n-gram spans two prompts of a batch."""
    embedder = TfidfSvdEmbedder(dim=32, **options).fit(small.prompts)
    prompts = small.prompts[:12] + ["", "zyxwvut only unseen words"]
    batch = embedder.transform(prompts)  # more than a few: the sparse path
    one_by_one = np.vstack([embedder.transform([p]) for p in prompts])
    np.testing.assert_allclose(one_by_one, batch, atol=1e-5)


def test_one_prompt_embeds_bit_for_bit_as_in_a_batch(test_split, default_tfidf):
    """A routed request (the NumPy path for a few rows) and route_batch (scipy's kernel) give a
    prompt the same vector to the last bit, so a prompt is routed alike in both."""
    prompts = test_split.prompts
    batch = default_tfidf.transform(prompts)
    np.testing.assert_array_equal(np.vstack([default_tfidf.transform([p]) for p in prompts]), batch)


# --- issue 17: the leaner embedding step gives today's vectors ---

# The lean path projects TF-IDF rows before normalising them (the projection is normalised after):
# its float32 sums round differently from scikit-learn's, a few units in the sixth decimal.
LEAN_ATOL = 5e-6


def reference_embedding(embedder, texts):
    """The embedding as it was computed before the lean path: scikit-learn's TfidfVectorizer with the
    fitted vocabulary and IDF (its counts, its TF-IDF arithmetic), each row normalised again, then
    a scipy.sparse product with the SVD directions."""
    import scipy.sparse as sp
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.preprocessing import normalize

    from shared_core.ngrams import TOKEN_PATTERN

    kinds = [dict(ngram_range=embedder.word_ngrams, token_pattern=TOKEN_PATTERN)]
    if embedder.char_ngrams is not None:
        kinds.append(dict(analyzer="char_wb", ngram_range=embedder.char_ngrams))

    def tfidf(docs):
        blocks = []
        for kind, vocabulary, idf in zip(kinds, embedder.vocabularies_, embedder.idf_, strict=True):
            vectorizer = TfidfVectorizer(vocabulary=vocabulary, sublinear_tf=True, dtype=np.float32, **kind)
            vectorizer.idf_ = idf
            blocks.append(vectorizer.transform(docs))
        return normalize(sp.hstack(blocks, format="csr"))

    w = embedder.tail_weight
    H = np.sqrt(1 - w) * tfidf(texts)
    if w > 0:
        H = H + np.sqrt(w) * tfidf([tail_text(t, embedder.tail_chars) for t in texts])
    return l2_normalise(H.tocsr().astype(np.float32) @ embedder.components_.T)


@pytest.fixture(scope="session")
def default_tfidf(train):
    """The default embedder, fitted on RouterBench's training split as fit_router fits it."""
    return TfidfSvdEmbedder().fit(train.prompts)


@pytest.mark.slow
def test_embeddings_equal_the_scipy_path_on_every_prompt_of_both_datasets(default_tfidf, routerbench, llmrouter):
    prompts = list(dict.fromkeys(routerbench.prompts + llmrouter.prompts))
    expected = reference_embedding(default_tfidf, prompts)
    np.testing.assert_allclose(default_tfidf.transform(prompts), expected, atol=LEAN_ATOL)
    # One at a time (a routed request) takes the path without scipy.sparse objects.
    one_by_one = np.vstack([default_tfidf.transform([p]) for p in prompts])
    np.testing.assert_allclose(one_by_one, expected, atol=LEAN_ATOL)


@pytest.mark.slow
def test_tail_weighted_character_embeddings_equal_the_scipy_path(train, routerbench, llmrouter):
    embedder = TfidfSvdEmbedder(dim=64, tail_weight=0.4, char_ngrams=(3, 4)).fit(train.prompts[::3])
    prompts = routerbench.prompts[::13] + llmrouter.prompts[::23]
    expected = reference_embedding(embedder, prompts)
    np.testing.assert_allclose(embedder.transform(prompts), expected, atol=LEAN_ATOL)
    np.testing.assert_allclose(np.vstack([embedder.transform([p]) for p in prompts[:60]]), expected[:60],
                               atol=LEAN_ATOL)


def test_a_saved_router_loads_and_embeds_the_same(default_tfidf, train, test_split, tmp_path):
    from shared_core.candidates import Candidate
    from shared_core.router import Router

    candidate = Candidate(name="only", input_price=1.0, output_price=2.0, prior_quality=0.5)
    Router([candidate], embedder=default_tfidf).save(tmp_path / "router")
    loaded = Router.load(tmp_path / "router").embedder
    prompts = test_split.prompts
    np.testing.assert_array_equal(loaded.transform(prompts), default_tfidf.transform(prompts))
    np.testing.assert_allclose(loaded.transform(prompts[:1]), reference_embedding(default_tfidf, prompts[:1]),
                               atol=LEAN_ATOL)


@pytest.mark.parametrize("rows", [1, 3, 40])
def test_the_projection_without_scipys_kernel_gives_the_same_vectors(default_tfidf, test_split, monkeypatch, rows):
    """scipy's CSR kernel is private: without it, small batches sum in NumPy and large ones build scipy objects."""
    from shared_core import embed

    assert embed._kernel() is not None  # the fast path is in use on this scipy
    prompts = test_split.prompts[:rows]
    fast = default_tfidf.transform(prompts)
    monkeypatch.setattr(embed, "_csr_matvecs", None)
    np.testing.assert_array_equal(default_tfidf.transform(prompts), fast)
