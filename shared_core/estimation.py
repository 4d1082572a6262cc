"""Estimation: what each candidate would do with a prompt — its quality, tokens and cost — before any money moves.

`CandidatePool` owns the candidates and everything that predicts for them: the embedder, the
quality and output-length predictors, and the map from candidates to the predictors' columns.
The Router (decisions: ledger, pacer, reservations) asks it for estimates and never reads a
predictor itself, so a new predictor or embedder touches this module's contract only.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np

from .candidates import Candidate, validate_candidates
from .feasibility import capabilities, output_caps
from .length import LengthPredictor, LengthPrior
from .pricing import price_tokens
from .quality.base import ExtensiblePredictor, OnlinePredictor, QualityPredictor, needs_embedding
from .quality.memory import SHARED_ROWS
from .tokens import count_message_tokens, count_tokens_batch

__all__ = ["CandidatePool", "Estimate", "Lineup"]

logger = logging.getLogger("omniroute")


@dataclass(frozen=True)
class Estimate:
    """Per (prompt, candidate) predictions: quality, input/output tokens and cost in USD.

    Every array is (n prompts, m candidates), columns in `candidates` order.
    """

    candidates: list[str]  # the m candidate names, in column order
    quality: np.ndarray  # predicted quality in [0, 1]
    input_tokens: np.ndarray  # prompt tokens by each candidate's encoding
    output_tokens: np.ndarray  # predicted output tokens, at most the candidate's output limit
    cost: np.ndarray  # predicted USD: input and output tokens at the candidate's prices, plus its per-request price
    output_caps: np.ndarray  # output tokens each candidate may write for the prompt (< 1: it does not fit the window)


def _in_order(predicted: np.ndarray, columns: np.ndarray, whole: bool) -> np.ndarray:
    """The predictions' float64 columns `columns`, in that order; `whole`: they are every column in
    order, and the predictor's new array is returned as it is."""
    if whole:
        return predicted.astype(np.float64, copy=False)
    return predicted[:, columns].astype(np.float64, copy=False)


def _columns(predictor: object) -> list[str]:
    # An unfitted predictor has no columns yet: every candidate then falls back to its prior.
    return list(getattr(predictor, "models_", ()) or ())


@dataclass(frozen=True, eq=False)
class Lineup:
    """An immutable snapshot of the candidates and their per-candidate arrays, in column order.

    A request reads one lineup from start to end, so a candidate added or removed meanwhile
    cannot misalign its arrays. Prices are USD per million tokens; token limits are tokens.
    """

    candidates: tuple[Candidate, ...]
    names: tuple[str, ...]
    index: Mapping[str, int]
    q_cols: np.ndarray  # each candidate's column in the quality predictor (-1: none, use its prior)
    l_cols: np.ndarray  # each candidate's column in the length predictor (-1: none)
    priors: np.ndarray  # prior_quality, NaN where absent
    input_price: np.ndarray
    output_price: np.ndarray
    request_price: np.ndarray  # USD per call
    worst_input_price: np.ndarray  # the dearest input rate (e.g. a cache write)
    max_output: np.ndarray
    uncapped: np.ndarray  # True: the client cannot be sent an output cap
    window: np.ndarray
    count_keys: tuple[tuple[str, str], ...]  # distinct (encoding, provider): messages are counted once per key
    count_rules: tuple[Any, ...]  # each key's image rule (the provider's), for count_message_tokens
    count_cols: np.ndarray  # each candidate's index in count_keys
    capabilities: Mapping[str, np.ndarray]  # feasibility.CAPABILITIES' Candidate fields: which candidates have each
    # Which candidates the predictors know (q_cols / l_cols ≥ 0), and whether some or all do.
    has_q: np.ndarray
    has_l: np.ndarray
    some_q: bool
    all_q: bool
    some_l: bool
    all_l: bool
    # The candidates are exactly the predictor's columns, in its order (no reordering needed).
    q_whole: bool
    l_whole: bool

    @classmethod
    def of(cls, candidates: tuple[Candidate, ...], known_q: Sequence[str], known_l: Sequence[str]) -> Lineup:
        """The lineup of `candidates` against predictors whose columns are `known_q` and `known_l`."""
        keys = tuple(sorted({(c.encoding, c.provider or "") for c in candidates}))

        def column(known: Sequence[str]) -> np.ndarray:
            return np.array([known.index(c.name) if c.name in known else -1 for c in candidates], dtype=np.intp)

        q_cols, l_cols = column(known_q), column(known_l)
        has_q, has_l = q_cols >= 0, l_cols >= 0
        return cls(
            candidates=candidates,
            names=tuple(c.name for c in candidates),
            index={c.name: i for i, c in enumerate(candidates)},
            q_cols=q_cols,
            l_cols=l_cols,
            priors=np.array([c.prior_quality if c.prior_quality is not None else np.nan for c in candidates]),
            input_price=np.array([c.input_price for c in candidates]),
            output_price=np.array([c.output_price for c in candidates]),
            request_price=np.array([c.request_price for c in candidates]),
            worst_input_price=np.array([c.dearest_input_price for c in candidates]),
            max_output=np.array([c.max_output_tokens for c in candidates], dtype=np.float64),
            uncapped=np.array([not c.accepts_output_cap for c in candidates], dtype=bool),
            window=np.array([c.context_window for c in candidates], dtype=np.float64),
            count_keys=keys,
            count_rules=tuple({(c.encoding, c.provider or ""): c.image_rule for c in candidates}[k] for k in keys),
            count_cols=np.array([keys.index((c.encoding, c.provider or "")) for c in candidates], dtype=np.intp),
            capabilities=capabilities(candidates),
            has_q=has_q, has_l=has_l, some_q=bool(has_q.any()), all_q=bool(has_q.all()),
            some_l=bool(has_l.any()), all_l=bool(has_l.all()),
            q_whole=q_cols.tolist() == list(range(len(known_q))),
            l_whole=l_cols.tolist() == list(range(len(known_l))),
        )

    def candidate(self, name: str) -> Candidate:
        """The candidate called `name` (KeyError naming the known ones otherwise)."""
        try:
            return self.candidates[self.index[name]]
        except KeyError:
            raise KeyError(f"unknown candidate {name!r}; candidates are {list(self.names)}") from None

    def cost(self, input_tokens: np.ndarray, output_tokens: np.ndarray) -> np.ndarray:
        """Predicted USD per candidate (last axis) of calls with these token counts, per-request price included."""
        return price_tokens(input_tokens, output_tokens, self.input_price, self.output_price) + self.request_price

    def worst_cost(self, input_tokens: np.ndarray, caps: np.ndarray) -> np.ndarray:
        """The most each candidate's call can cost (USD): input at its dearest input rate, output at its cap."""
        return price_tokens(input_tokens, caps, self.worst_input_price, self.output_price) + self.request_price

    def count_prompt_tokens(self, prompts: Sequence[str]) -> np.ndarray:
        """Input tokens of each prompt for each candidate (n, m), counting once per encoding."""
        by_enc: dict[str, np.ndarray] = {}
        for c in self.candidates:
            if c.encoding not in by_enc:
                by_enc[c.encoding] = np.asarray(count_tokens_batch(list(prompts), c.encoding), dtype=np.float64)
        return np.stack([by_enc[c.encoding] for c in self.candidates], axis=1)

    def count_request_tokens(
        self, messages: Sequence[Mapping[str, Any]], tools: Sequence[Mapping[str, Any]], extra: int = 0
    ) -> np.ndarray:
        """Input tokens (m,) of one chat request for each candidate: messages and tools as its provider
        bills them, counted once per (encoding, provider), plus `extra` (e.g. retrieved context)."""
        counts = np.array([count_message_tokens(messages, enc, tools=tools, image_rule=rule)
                           for (enc, _), rule in zip(self.count_keys, self.count_rules, strict=True)],
                          dtype=np.float64)
        return counts[self.count_cols] + extra


class CandidatePool:
    """The candidates with their predictors: per-candidate quality, tokens and cost for prompts.

    Parameters:
        candidates: the models to route among (at least one; names unique, printable).
        quality: a fitted quality predictor whose columns are named by candidate; None: each
            candidate's `prior_quality` (a candidate the predictor does not know needs one).
        lengths: a fitted output-length predictor; None: `LengthPrior()` (256 tokens each).
        embedder: turns prompts into the (n, d) features the predictors read; None when neither needs it.

    Thread-safe: adding or removing a candidate changes the predictors' columns and the lineup
    together, under one lock a prediction also takes; each prediction returns the lineup it used.
    Raises ValueError for a candidate with neither a predictor column nor a prior.
    """

    def __init__(
        self,
        candidates: Sequence[Candidate],
        *,
        quality: QualityPredictor | None = None,
        lengths: LengthPredictor | None = None,
        embedder: Any = None,
    ) -> None:
        # Held by predictions and by changes of the columns (re-entrant: add/remove hold it while
        # they call _set_candidates); learning takes _learn_lock instead, so that a slow observe
        # (a memory growing its buffers) delays other learning but never a decision.
        self._lock = threading.RLock()
        self._learn_lock = threading.Lock()
        self.quality = quality
        self.lengths: LengthPredictor = lengths if lengths is not None else LengthPrior()
        self.embedder = embedder
        self._set_candidates(candidates)

    # ----------------------------------------------------------------- candidates
    def _set_candidates(self, candidates: Sequence[Candidate]) -> None:
        cands = validate_candidates(candidates)
        known_q = _columns(self.quality)
        for c in cands:
            if c.name not in known_q and c.prior_quality is None:
                raise ValueError(
                    f"no quality estimate for candidate {c.name!r}: give it prior_quality= or a "
                    "quality predictor fitted on data that includes it"
                )
        self.lineup = Lineup.of(cands, known_q, _columns(self.lengths))

    @property
    def candidates(self) -> tuple[Candidate, ...]:
        """The candidates, in column order."""
        return self.lineup.candidates

    def replace(self, candidate: Candidate) -> None:
        """Swap in a candidate of a known name (new prices, limits or model), keeping its predictions."""
        with self._lock:
            self.lineup.candidate(candidate.name)
            self._set_candidates([candidate if c.name == candidate.name else c for c in self.candidates])

    def add(
        self, candidate: Candidate, X: np.ndarray, quality: np.ndarray, output_tokens: np.ndarray | None = None
    ) -> None:
        """A new candidate described by its labels on profile embeddings X (UniRoute): no refit.

        TypeError when a predictor cannot take in models; nothing changes when any step fails.
        """
        if not isinstance(self.quality, ExtensiblePredictor):
            raise TypeError(f"the quality predictor {type(self.quality).__name__} cannot take in new models")
        if output_tokens is not None and not isinstance(self.lengths, ExtensiblePredictor):
            raise TypeError(f"the length predictor {type(self.lengths).__name__} cannot take in new models")
        with self._learn_lock, self._lock:
            if candidate.name in self.lineup.index:
                raise ValueError(f"candidate {candidate.name!r} is already routed; remove it first")
            self.quality.add_model(candidate.name, X, quality)
            try:
                if output_tokens is not None:
                    self.lengths.add_model(candidate.name, X, output_tokens)  # type: ignore[attr-defined]
                self._set_candidates([*self.candidates, candidate])
            except Exception:
                for predictor in (self.quality, self.lengths):
                    if candidate.name in _columns(predictor) and isinstance(predictor, ExtensiblePredictor):
                        predictor.remove_model(candidate.name)
                raise

    def remove(self, name: str) -> Candidate:
        """Stop estimating for `name` and drop it from the predictors that can forget models; the candidate."""
        with self._learn_lock, self._lock:
            removed = self.lineup.candidate(name)
            remaining = [c for c in self.candidates if c.name != name]
            if not remaining:
                raise ValueError(f"cannot remove {name!r}: it is the only candidate")
            for predictor in (self.quality, self.lengths):
                if name in _columns(predictor) and isinstance(predictor, ExtensiblePredictor):
                    predictor.remove_model(name)
            self._set_candidates(remaining)
            return removed

    def observe(self, text: str, model: str, quality: float) -> None:
        """Teach the quality predictor that `model` reached `quality` on `text` (TypeError if it cannot learn)."""
        if not isinstance(self.quality, OnlinePredictor):
            raise TypeError(f"the quality predictor {type(self.quality).__name__} does not learn online")
        X = self.features([text])
        with self._learn_lock:
            self.quality.observe(X, model, np.array([quality]))

    @contextmanager
    def frozen(self) -> Iterator[None]:
        """Hold every change — candidates, columns, learning — while the predictors are read whole (e.g. saved)."""
        with self._learn_lock, self._lock:
            yield

    # ----------------------------------------------------------------- estimation
    def features(self, texts: Sequence[str]) -> np.ndarray:
        """The prompts' embeddings (n, d), computed once and shared by both predictors; (n, 0) when none reads them."""
        needs = (self.quality is not None and needs_embedding(self.quality)) or needs_embedding(self.lengths)
        if self.embedder is None or not needs:
            return np.empty((len(texts), 0))
        return np.asarray(self.embedder.transform(list(texts)), dtype=np.float64)

    def predict(self, X: np.ndarray) -> tuple[Lineup, np.ndarray, np.ndarray]:
        """The lineup predicted for, and per prompt and candidate the quality in [0, 1] and the output
        tokens (≥ 0, at most the output limit), each (len(X), m)."""
        n = len(X)
        # Adding or removing a candidate changes predictor columns and the lineup together:
        # a prediction must see both before or both after.
        with self._lock:
            lineup = self.lineup
            some_q = self.quality is not None and lineup.some_q
            has_q, has_l = lineup.has_q, lineup.has_l
            if 0 < n <= SHARED_ROWS and (not some_q or lineup.all_q) and lineup.all_l:
                # One block and every column known (every decision): no buffers to fill, and no
                # reordering when the candidates are the predictors' columns in order.
                q = (_in_order(self.quality.predict(X), lineup.q_cols, lineup.q_whole)  # type: ignore[union-attr]
                     if some_q else np.tile(lineup.priors, (n, 1)))
                lengths = _in_order(self.lengths.predict(X), lineup.l_cols, lineup.l_whole)
            else:
                q = np.empty((n, len(lineup.names))) if some_q and lineup.all_q else np.tile(lineup.priors, (n, 1))
                lengths = np.full((n, len(lineup.names)), float(getattr(self.lengths, "default", 256.0)))
                # Both predictors asked about the same rows in turn: k-NN ones share one neighbour search.
                for start in range(0, n, SHARED_ROWS):
                    rows = slice(start, start + SHARED_ROWS)
                    if some_q:
                        q[rows, has_q] = self.quality.predict(X[rows])[:, lineup.q_cols[has_q]]  # type: ignore[union-attr]
                    if lineup.some_l:
                        lengths[rows, has_l] = self.lengths.predict(X[rows])[:, lineup.l_cols[has_l]]
                if lineup.some_l and not lineup.all_l:
                    # A candidate without length data (added without profile answers) is expected
                    # to answer like the others do for this prompt.
                    lengths[:, ~has_l] = lengths[:, has_l].mean(axis=1, keepdims=True)
        lo, hi = lengths.min(initial=0.0), lengths.max(initial=0.0)
        if not (lo >= 0 and hi < np.inf):  # NaN fails both
            # A length predictor's bug must not price calls at NaN: the output limit is what a call can cost.
            bad = ~(np.isfinite(lengths) & (lengths >= 0))
            logger.warning("the length predictor gave %d invalid predictions (NaN, infinite or negative); "
                           "counting the candidates' output limits for them", int(bad.sum()))
            lengths = np.where(bad, lineup.max_output, lengths)
        return lineup, q, np.minimum(lengths, lineup.max_output)

    def estimate(self, prompts: Sequence[str], input_tokens: np.ndarray | None = None) -> Estimate:
        """Predicted quality, tokens and cost for many prompts at once (arrays (n, m)).

        `input_tokens` ((n,) or (n, m)) replaces counting the prompts with each candidate's encoding.
        """
        lineup, q, out = self.predict(self.features(prompts))
        if input_tokens is None:
            input_tokens = lineup.count_prompt_tokens(prompts)
        else:
            input_tokens = np.asarray(input_tokens, dtype=np.float64)
            if input_tokens.ndim == 1:
                input_tokens = np.tile(input_tokens[:, None], (1, len(lineup.names)))
        caps = output_caps(input_tokens, lineup.max_output, lineup.window, None)
        return Estimate(list(lineup.names), q, input_tokens, out, lineup.cost(input_tokens, out), caps)
