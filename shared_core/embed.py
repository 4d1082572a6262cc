"""Prompt embedders: texts → float vectors the quality and length predictors compare.

The default, `TfidfSvdEmbedder`, needs no model download: it is fitted on the training prompts.
Any pretrained embedding function plugs in through `FunctionEmbedder` (the LangChain and
LlamaIndex adapters are thin subclasses).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol, cast, runtime_checkable

import numpy as np

from . import native
from .errors import NotFittedError
from .ngrams import TOKEN_PATTERN, AnalyzerCounter, WordNgramCounter
from .quality.base import Estimator, l2_normalise

logger = logging.getLogger("omniroute")

__all__ = ["Embedder", "TfidfSvdEmbedder", "FunctionEmbedder", "tail_text", "check_texts", "l2_normalise"]


@runtime_checkable
class Embedder(Protocol):
    """fit(texts) learns whatever the embedder needs; transform(texts) gives an (n, d) float array."""

    def fit(self, texts: Sequence[str]) -> Embedder: ...

    def transform(self, texts: Sequence[str]) -> np.ndarray: ...


def check_texts(texts: Sequence[str]) -> list[str]:
    """The texts as a list, or TypeError naming the first one that is not a string."""
    if isinstance(texts, str):
        raise TypeError("expected a sequence of texts, got a single str")
    out = list(texts)
    for i, t in enumerate(out):
        if not isinstance(t, str):
            raise TypeError(f"texts[{i}] must be str, got {type(t).__name__}")
    return out


def tail_text(text: str, min_chars: int = 200) -> str:
    """The last paragraphs of `text`, at least `min_chars` long when the text allows.

    In a few-shot prompt the shared examples come first and the question last; in a chat the
    latest turn comes last. Weighting this tail tells apart prompts that share long prefixes.
    """
    parts = text.rstrip().split("\n\n")
    tail = parts[-1]
    i = len(parts) - 2
    while len(tail) < min_chars and i >= 0:
        tail = parts[i] + "\n\n" + tail
        i -= 1
    return tail


class TfidfSvdEmbedder(Estimator):
    """Word (and optionally character) n-gram TF-IDF of the prompt and its tail, reduced by SVD.

    The sparse vector is √(1−w)·tfidf(prompt) + √w·tfidf(tail(prompt)) (each L2-normalised, one
    vocabulary): with w > 0, n-grams of the tail — the question of a few-shot prompt, the last
    chat turn — count extra. It is projected on `dim` SVD directions learned from the training
    prompts and L2-normalised. Works offline; `fit` on a few thousand prompts takes seconds.

    scikit-learn's `TfidfVectorizer` learns the vocabularies and IDF weights; prompts are then
    counted by `shared_core.ngrams` (the same counts, without a Python string per n-gram), and
    weighted and projected with NumPy on the rows' CSR parts, without scipy.sparse objects (whose
    construction cost more than the arithmetic for one prompt). The arithmetic is unchanged:
    the same vectors, bit for bit, for one prompt and for a batch.

    Defaults (word 1–2-grams, no tail weighting): every variant measured in
    benchmarks/predictors.py routes within noise of the others, and this one embeds a prompt
    about ten times faster than with character n-grams.
    """

    def __init__(
        self,
        dim: int = 128,
        tail_weight: float = 0.0,
        tail_chars: int = 200,
        min_df: int = 2,
        char_ngrams: tuple[int, int] | None = None,
        word_ngrams: tuple[int, int] = (1, 2),
        random_state: int = 0,
    ) -> None:
        self.dim = dim
        self.tail_weight = tail_weight
        self.tail_chars = tail_chars
        self.min_df = min_df
        self.char_ngrams = None if char_ngrams is None else tuple(char_ngrams)
        self.word_ngrams: tuple[int, int] = tuple(word_ngrams)  # type: ignore[assignment]  # a pair, as declared
        self.random_state = random_state

    def _check_params(self) -> None:
        if not isinstance(self.dim, int) or self.dim < 1:
            raise ValueError(f"dim must be a positive int, got {self.dim!r}")
        if not 0.0 <= self.tail_weight <= 1.0:
            raise ValueError(f"tail_weight must be in [0, 1], got {self.tail_weight}")

    def _kinds(self) -> list[dict[str, Any]]:
        """TfidfVectorizer settings per n-gram kind: words, then characters unless `char_ngrams` is None."""
        kinds: list[dict[str, Any]] = [dict(ngram_range=self.word_ngrams, token_pattern=TOKEN_PATTERN)]
        if self.char_ngrams is not None:
            kinds.append(dict(analyzer="char_wb", ngram_range=self.char_ngrams))
        return kinds

    def _set_vocabularies(self, vocabularies: list[list[str]], idf: list[np.ndarray]) -> None:
        kinds = self._kinds()
        if len(vocabularies) != len(kinds) or len(idf) != len(kinds):
            raise ValueError(f"{len(vocabularies)} vocabularies for {len(kinds)} n-gram kinds")
        self.vocabularies_ = vocabularies
        self.idf_ = [np.asarray(w) for w in idf]
        self._counters: list[WordNgramCounter | AnalyzerCounter] = [
            WordNgramCounter(vocabularies[0], self.word_ngrams)
        ]
        if self.char_ngrams is not None:
            # Imported here, its one use: scikit-learn (with scipy.stats, pandas) costs a second to load a router.
            from sklearn.feature_extraction.text import TfidfVectorizer

            analyzer = TfidfVectorizer(**kinds[1]).build_analyzer()
            self._counters.append(AnalyzerCounter(analyzer, vocabularies[1]))

    def _sparse(self, texts: list[str]) -> Any:
        """√(1−w)·tfidf(prompt) + √w·tfidf(tail) as a float32 CSR matrix."""
        import scipy.sparse as sp

        indptr, columns, data = self._rows(texts)
        return sp.csr_matrix((data, columns, indptr), shape=(len(texts), self._width()))

    def _width(self) -> int:
        """Columns of the TF-IDF rows: every n-gram kind's vocabulary side by side."""
        return sum(len(w) for w in self.idf_)

    def _rows(self, texts: list[str], unit: bool = True) -> CsrParts:
        """CSR parts (row pointers, columns, float32 weights) of √(1−w)·tfidf(prompt) + √w·tfidf(tail).

        Plain NumPy on the parts, without scipy.sparse objects, whose construction and checks cost
        more than the arithmetic for one prompt. The arithmetic is the scipy expression's: the
        scaled terms in float64, their sum rounded to float32. `unit=False` may leave each row
        scaled by a positive factor instead of unit length, for rows whose direction is all that
        counts (projected, then normalised).
        """
        w = self.tail_weight
        if w == 0.0:  # √1 · x is x: the float64 round trip changes no value
            return self._tfidf(texts, unit)
        tails = self._tfidf([tail_text(t, self.tail_chars) for t in texts])
        if w == 1.0:
            return tails
        whole = self._tfidf(texts)
        return _weighted_sum(whole, tails, float(np.sqrt(1.0 - w)), float(np.sqrt(w)), self._width())

    def _tfidf(self, docs: list[str], unit: bool = True) -> CsrParts:
        """Sublinear TF × IDF per n-gram kind, each kind L2-normalised, then the whole row.

        The arithmetic is TfidfVectorizer's own (float32, in its order, the whole row normalised
        again even for one kind). `unit=False` skips the normalisations that only scale the row:
        the whole row's, and a single kind's (with several, each kind's sets their balance).
        """
        blocks = []
        scale_kinds = unit or len(self.idf_) > 1
        for counter, idf in zip(self._counters, self.idf_, strict=False):
            indptr, columns, counts = counter.count(docs)
            data = np.log(counts, dtype=np.float32)  # the counts made float32, as scikit-learn's matrix holds them
            data += np.float32(1.0)
            data *= idf[columns]
            blocks.append((indptr, columns, _normalise_rows(indptr, data) if scale_kinds else data))
        indptr, columns, data = blocks[0] if len(blocks) == 1 else _hstack(blocks, [len(w) for w in self.idf_])
        return indptr, columns, _normalise_rows(indptr, data) if unit else data

    def fit(self, texts: Sequence[str]) -> TfidfSvdEmbedder:
        """Learn the n-gram vocabularies, IDF weights and SVD directions from training prompts."""
        from sklearn.decomposition import TruncatedSVD
        from sklearn.feature_extraction.text import TfidfVectorizer

        self._check_params()
        texts = check_texts(texts)
        if len(texts) < 2:
            raise ValueError(f"fitting the embedder needs at least 2 texts, got {len(texts)}")
        min_df = min(self.min_df, len(texts))  # sklearn rejects min_df > number of texts
        fitted = [TfidfVectorizer(sublinear_tf=True, min_df=min_df, dtype=np.float32, **kind).fit(texts)
                  for kind in self._kinds()]
        self._set_vocabularies([v.get_feature_names_out().tolist() for v in fitted], [v.idf_ for v in fitted])
        H = self._sparse(texts)
        dim = min(self.dim, H.shape[1] - 1, len(texts) - 1)
        if dim < 1:
            raise ValueError("the training texts share too few n-grams to embed; give more or longer texts")
        # Two power iterations keep 97 % of the variance five capture, in 40 % of the time.
        svd = TruncatedSVD(dim, n_iter=2, random_state=self.random_state).fit(H)
        self._set_components(svd.components_)
        return self

    def _set_components(self, components: np.ndarray) -> None:
        self.components_ = components.astype(np.float32)
        # Row-major (features × dim): a sparse row times it touches one contiguous row per n-gram.
        self._projection = np.ascontiguousarray(self.components_.T)

    def _check_fitted(self) -> None:
        if not hasattr(self, "components_"):
            raise NotFittedError("TfidfSvdEmbedder is not fitted: call fit(training_prompts) first")

    def transform(self, texts: Sequence[str]) -> np.ndarray:
        """Embeddings of `texts`, shape (n, dim), unit length."""
        self._check_fitted()
        texts = check_texts(texts)
        if len(texts) == 1:  # a routed request: its row in one compiled call, where the kernel applies
            row = self._project_one(texts[0])
            if row is not None:
                return _unit_rows(row[None])
        # Each row is normalised after the projection: its TF-IDF row need not be before.
        return _unit_rows(_project(*self._rows(texts, unit=False), self._projection))

    def _project_one(self, text: str) -> np.ndarray | None:
        """`_project(*self._rows([text], unit=False), self._projection)[0]`, the same bits, by the
        compiled kernel; None where it is missing or does not apply (it knows one word n-gram kind,
        float32 IDF weights, no tail weighting) or a count passes its table of log weights."""
        if _tfidf is None:
            native.fallback("_tfidf")
            return None
        if self.tail_weight != 0.0 or len(self.idf_) != 1 or self.idf_[0].dtype != np.float32:
            return None
        counter = cast("WordNgramCounter", self._counters[0])
        ids = counter._word_ids_of([text], lengths=False)[0]
        out = np.empty(self._projection.shape[1], dtype=np.float32)
        lo, hi = counter.ngram_range
        most = _tfidf.project_one(ids, counter._unigram, counter._keys, counter._columns, counter._key_offsets,
                                  lo, hi, self.idf_[0], _LOG_COUNTS, self._projection, out)
        return None if most else out

    def _state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """The vocabularies, plus the IDF weights and SVD directions."""
        arrays = {f"idf_{i}": w for i, w in enumerate(self.idf_)}
        return {"vocabularies": self.vocabularies_}, {**arrays, "components": self.components_}

    def _restore(self, state: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> None:
        vocabularies = state["vocabularies"]
        if not (isinstance(vocabularies, list)
                and all(isinstance(v, list) and all(isinstance(t, str) for t in v) for v in vocabularies)):
            raise ValueError("embedder vocabularies must be lists of strings")
        idf = [arrays.get(f"idf_{i}") for i in range(len(vocabularies))]
        for vocab, weights in zip(vocabularies, idf, strict=False):
            shape = None if weights is None else weights.shape
            if shape != (len(vocab),) or len(set(vocab)) != len(vocab):
                raise ValueError(f"IDF weights of shape {shape} for a vocabulary of {len(vocab)} terms "
                                 "(terms must be unique)")
        self._set_vocabularies(vocabularies, cast("list[np.ndarray]", idf))  # none is None: shapes checked above
        components = arrays["components"]
        width = sum(len(v) for v in vocabularies)
        if components.ndim != 2 or components.shape[1] != width:
            raise ValueError(f"SVD components of shape {components.shape} do not match {width} TF-IDF features")
        self._set_components(components)


#: CSR parts of a (texts × features) matrix: row pointers, columns (sorted per row), values.
CsrParts = tuple[np.ndarray, np.ndarray, np.ndarray]


def _normalise_rows(indptr: np.ndarray, data: np.ndarray) -> np.ndarray:
    """The float32 values of CSR rows, each non-empty row scaled to unit L2 norm.

    sklearn.preprocessing.normalize's arithmetic (float32 squares summed in double, row by row)
    without its per-call validation, which costs more than the work for one prompt.
    """
    if len(indptr) == 2:  # one row: a running sum adds in the same order as the bincount below
        total = float((data * data).astype(np.float64).cumsum()[-1]) if len(data) else 0.0
        # A NumPy float64 divisor (not a Python float) keeps the division in double, as below.
        return (data / np.float64(math.sqrt(total) if total > 0 else 1.0)).astype(np.float32)
    squares = (data * data).astype(np.float64)
    sizes = np.diff(indptr)
    n = len(sizes)
    norms = np.sqrt(np.bincount(np.repeat(np.arange(n), sizes), weights=squares, minlength=n))
    return (data / np.repeat(np.where(norms > 0, norms, 1.0), sizes)).astype(np.float32)


def _unit_rows(Y: np.ndarray) -> np.ndarray:
    """`l2_normalise(Y)` (float64 rows of unit length, zero rows kept), its arithmetic without its call overhead."""
    X = Y.astype(np.float64)
    if len(X) == 1:  # the same pairwise sum over the row as np.linalg.norm's, in fewer calls
        norm = math.sqrt(np.add.reduce(X[0] * X[0]))
        if norm > 0:
            X /= norm
        return X
    norms = np.sqrt(np.add.reduce(X * X, axis=1, keepdims=True))  # what np.linalg.norm(X, axis=1) computes
    X /= np.where(norms > 0, norms, 1.0)
    return X


def _hstack(blocks: list[CsrParts], widths: list[int]) -> CsrParts:
    """Side-by-side CSR blocks of one height (block k's columns shifted by the widths before it)."""
    offsets = np.cumsum([0, *widths[:-1]])
    n = len(blocks[0][0]) - 1
    rows = np.concatenate([np.repeat(np.arange(n), np.diff(p)) for p, _, _ in blocks])
    columns = np.concatenate([c + off for (_, c, _), off in zip(blocks, offsets, strict=True)])
    data = np.concatenate([d for _, _, d in blocks])
    order = np.argsort(rows, kind="stable")  # within a row: block by block, each block's columns in order
    indptr = np.searchsorted(rows[order], np.arange(n + 1))
    return indptr, columns[order], data[order]


def _weighted_sum(a: CsrParts, b: CsrParts, wa: float, wb: float, width: int) -> CsrParts:
    """wa·A + wb·B for CSR parts of one shape: each term in float64, the sum rounded to float32."""
    n = len(a[0]) - 1
    keys = np.concatenate([np.repeat(np.arange(n), np.diff(p)) * width + c for p, c, _ in (a, b)])
    values = np.concatenate([a[2] * np.float64(wa), b[2] * np.float64(wb)])
    order = np.argsort(keys, kind="stable")
    keys, values = keys[order], values[order]
    starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]]) if len(keys) else keys
    summed = np.add.reduceat(values, starts) if len(keys) else values
    unique = keys[starts]
    return np.searchsorted(unique // width, np.arange(n + 1)), unique % width, summed.astype(np.float32)


def _project(indptr: np.ndarray, columns: np.ndarray, data: np.ndarray, projection: np.ndarray) -> np.ndarray:
    """The CSR rows times the (features × dim) float32 projection: (n, dim) float32.

    Each row's sum runs over its entries in column order in float32, as scipy.sparse's product
    does, so the result is that product's to the bit; without scipy objects for one prompt.
    """
    n = len(indptr) - 1
    out = np.zeros((n, projection.shape[1]), dtype=np.float32)
    if n <= _SMALL:  # a few rows: NumPy, so that routing one prompt never imports scipy
        for i in range(n):
            lo, hi = indptr[i], indptr[i + 1]
            # einsum adds the products row after row, in the order the product does (checked to
            # the bit against it in tests/test_embed.py), without a temporary of the products.
            out[i] = np.einsum("i,ij->j", data[lo:hi], projection[columns[lo:hi]])
        return out
    kernel = _kernel()
    if kernel is not None:
        kernel(n, projection.shape[0], projection.shape[1], indptr, columns.astype(indptr.dtype, copy=False),
               data, projection.ravel(), out.ravel())
        return out
    import scipy.sparse as sp

    return np.asarray(sp.csr_matrix((data, columns, indptr), shape=(n, projection.shape[0])) @ projection)


def _kernel() -> Callable[..., None] | None:
    """scipy's CSR kernel (`_load_csr_matvecs`), loaded on the first batch that needs it."""
    global _csr_matvecs
    if _csr_matvecs is _UNLOADED:
        _csr_matvecs = _load_csr_matvecs()
    return cast("Callable[..., None] | None", _csr_matvecs)


def _load_csr_matvecs() -> Callable[..., None] | None:
    """scipy.sparse's C kernel for a CSR matrix times dense vectors, if it is there and right.

    It is what `csr_matrix @ dense` runs, reached without building the matrix object (tens of
    microseconds a prompt); it is private, so it is checked on a small product first and not
    used when missing or different.
    """
    try:
        from scipy.sparse._sparsetools import csr_matvecs
    except ImportError:
        return None
    indptr, columns = np.array([0, 2, 3], dtype=np.int64), np.array([0, 2, 1], dtype=np.int64)
    data = np.array([1.5, -2.0, 4.0], dtype=np.float32)
    dense = np.arange(6, dtype=np.float32).reshape(3, 2)
    out = np.zeros((2, 2), dtype=np.float32)
    try:
        csr_matvecs(2, 3, 2, indptr, columns, data, dense.ravel(), out.ravel())
    except Exception:  # a changed signature: the public product is used instead
        logger.debug("scipy's csr_matvecs is not usable; embedding through scipy.sparse objects", exc_info=True)
        return None
    if not np.array_equal(out, [[-8.0, -8.5], [8.0, 12.0]]):  # 1.5·row 0 − 2·row 2; 4·row 1
        logger.debug("scipy's csr_matvecs gave %s; embedding through scipy.sparse objects", out.tolist())
        return None
    return cast("Callable[..., None]", csr_matvecs)


# Rows projected through NumPy; more go through scipy's kernel, or scipy.sparse without it.
_SMALL = 8
_UNLOADED: Any = object()
_csr_matvecs: Any = _UNLOADED

# The compiled one-prompt path (shared_core/_tfidf.c), or None: the NumPy code, the same bits.
_tfidf = native.kernel("_tfidf")


def _log_counts(n: int) -> np.ndarray:
    """log(c) + 1 in float32 for the counts c < n (0 at c = 0, never looked up), computed as
    TfidfSvdEmbedder._tfidf does: C's logf may differ from NumPy's float32 log in the last bit, so
    the kernel reads these."""
    table = np.zeros(n, dtype=np.float32)
    table[1:] = np.log(np.arange(1, n), dtype=np.float32)
    table[1:] += np.float32(1.0)
    return table


# A count at least this large needs a prompt of thousands of words, where the NumPy path's call
# overhead no longer matters: it takes such prompts rather than a table grown without bound.
_LOG_COUNTS = _log_counts(1 << 12)


class FunctionEmbedder:
    """A pretrained embedding function as an embedder: fit does nothing, vectors are L2-normalised.

    `embed(texts) -> list of vectors`; routed prompts and training prompts go through the same
    function, so both sides of every similarity come from the same space.
    """

    def __init__(self, embed: Callable[[list[str]], Sequence[Sequence[float]]], name: str = "function") -> None:
        if not callable(embed):
            raise TypeError(f"embed must be callable, got {type(embed).__name__}")
        self.embed = embed
        self.name = name

    def fit(self, texts: Sequence[str]) -> FunctionEmbedder:
        """Nothing to learn: the embedding model is pretrained."""
        check_texts(texts)
        return self

    def transform(self, texts: Sequence[str]) -> np.ndarray:
        """Embeddings from the wrapped function, shape (n, d), unit length."""
        texts = check_texts(texts)
        if not texts:
            return np.empty((0, 0))
        X = np.asarray(self.embed(texts), dtype=np.float64)
        if X.ndim != 2 or len(X) != len(texts) or not np.isfinite(X).all():
            raise ValueError(f"{self.name} returned {X.shape} embeddings for {len(texts)} texts (need finite (n, d))")
        return l2_normalise(X)
