"""The router: predict quality and cost per candidate, price money with λ, reserve, settle."""

from __future__ import annotations

import functools
import logging
import math
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from . import batch
from .budget import (
    NANOS_PER_USD,
    Budget,
    BudgetExceeded,
    LedgerStore,
    LedgerUnavailable,
    ScopeState,
    UnknownScope,
    check_idle_ttl,
    scope_chain,
    to_nanos,
    to_usd,
)
from .candidates import Candidate
from .errors import NoFeasibleCandidate, RoutingError, UnknownReservation
from .estimation import CandidatePool, Estimate, Lineup
from .fallbacks import Attempt, ErrorKind, classify
from .feasibility import Request, describe, feasible, output_caps, reasons
from .length import LengthPredictor
from .pacing import DualPacer, PaceUpdate
from .pending import PendingCommit, PendingCommits, PendingJournal, record_anew
from .pricing import Usage, price
from .quality.base import QualityPredictor
from .solver import BatchRouting, budget_curve
from .stores import open_store
from .stores.base import Committed, FailingFast, Pace, books_around
from .tokens import content_text

__all__ = [
    "Router", "Charge", "Decision", "RoutingError", "NoFeasibleCandidate", "Estimate", "DEFAULT_SCOPE",
    "DEFAULT_SESSION_IDLE_TTL_S", "DEFAULT_CAP_HEADROOM",
]

logger = logging.getLogger("omniroute")

T = TypeVar("T")

#: The shortest hold a router makes: one shorter than a call lapses while the call runs.
MIN_RESERVATION_TTL_S = 0.1

#: The scope of requests that name none.
DEFAULT_SCOPE = "default"

#: How long a session scope made from `default_budget` may sit idle before the ledger forgets it
#: (a week): a long-running service sees sessions come and go, and must not keep them all.
DEFAULT_SESSION_IDLE_TTL_S = 7 * 86_400.0

#: A candidate whose full worst case no longer fits a scope may be reserved with a lower output
#: cap, if that cap is at least this many times its predicted output. Near the end of a budget
#: the full allowance of a dear model (e.g. 1,024 tokens) can exceed what is left while its
#: answer would be a few tokens; without this the last part of every budget goes unspent.
DEFAULT_CAP_HEADROOM = 4.0
#: The lowest cap a router lowers an output cap to, whatever the prediction says.
MIN_LOWERED_CAP = 32


Messages = Sequence[Mapping[str, Any]]


@dataclass(frozen=True)
class _Ask:
    """One decide() call's arguments, checked, with the text its prompt is embedded from."""

    messages: list[Mapping[str, Any]]
    text: str
    session: str | None = None
    tools: Sequence[Mapping[str, Any]] | None = None
    structured_output: bool = False
    max_tokens: int | None = None
    exclude: Sequence[str] = ()
    model: str | None = None
    weights: Mapping[str, float] | None = None
    extra_input_tokens: int = 0
    reservation_ttl_s: float | None = None


@dataclass(frozen=True)
class Deferred:
    """A decision of a batch whose hold is made with the batch's others (`SharedReads(defer_holds=True)`):
    the decision as planned, the scope it was asked for, its hold's TTL, and what makes it again,
    alone, should the books it was planned on have changed."""

    decision: Decision
    scope: str
    ttl_s: float
    redo: Callable[[], Decision]


class _Rebudgeted(Exception):
    """A scope a batch's decision found without a budget has one now: the decision is made again."""


class SharedReads:
    """The budget reads of the decisions made one after another in one batch (shared_core.offload).

    A scope chain whose every scope has a budget is read from the ledger once per batch; each hold
    the batch makes is added to that copy, and books re-read replace it, so a decision sees the
    books its own read would show without a ledger round trip each. The copy serves only while
    every feasible candidate's worst case fits it: nearer a budget's end a decision reads the
    books afresh (money returned meanwhile by a release, a cheaper commit or a new period counts).
    A chain with a scope that has no budget is read afresh for every decision: a budget set there
    meanwhile counts at once. The ledger still checks every hold; money taken meanwhile by other
    workers or processes fails one, which is retried on fresh books as for any decision.

    With `defer_holds`, the batch's decisions plan their holds on these books instead of making
    them (`deferred`), and `Router._hold_deferred` makes them all in one `LedgerStore.reserve_many`
    (one round trip to Redis instead of one per decision); books read meanwhile count the planned
    holds, so each decision is the one it would be were the holds before it made already. Every
    chain is then read once, budgeted or not: before the holds are made, one read checks that the
    scopes found without a budget still have none. A decision whose hold the ledger refuses (money
    others took since), or whose chain has gained a budget, is made again alone, on fresh books.
    """

    def __init__(self, defer_holds: bool = False) -> None:
        self._chains: dict[str, list[ScopeState]] = {}
        self.deferred: list[Deferred] | None = [] if defer_holds else None
        self._planned: dict[str, int] = {}  # nano-dollars the deferred holds will take, per scope
        # Every scope a read of this batch found with a budget: one found later than a decision
        # that saw none there (a session's default budget made by the batch's next decision, a
        # budget set meanwhile) came after that decision, as it would one decision at a time.
        self.seen_budgeted: set[str] = set()

    def chain(self, router: Router, scope: str) -> list[ScopeState]:
        """The books of `scope` and its enclosing scopes (Router._chain_states), shared when all are budgeted."""
        chain = self._chains.get(scope)
        if chain is None:
            chain = self._with_planned(router._chain_states(scope))
            if self.deferred is not None or len(chain) == len(scope_chain(scope)):
                self._chains[scope] = chain
        return chain

    def held(self, decision: Decision) -> None:
        """Add the hold `decision` made to every copy of its scopes (in nanos, as the ledger counts it)."""
        if decision.reserved:
            self._update(decision.scopes, functools.partial(_plus_hold, nanos=to_nanos(decision.reserved)))

    def refreshed(self, states: Sequence[ScopeState]) -> list[ScopeState]:
        """Books re-read from the ledger replace the copies of their scopes; those books, with the
        holds planned but not yet sent added."""
        states = self._with_planned(states)
        fresh = {s.scope: s for s in states}
        self._update(fresh, lambda s: fresh[s.scope])
        return states

    def plan(self, deferred: Deferred) -> None:
        """Queue a decision whose hold the batch makes with its others (`defer_holds`)."""
        assert self.deferred is not None, "holds are deferred only by SharedReads(defer_holds=True)"
        self.deferred.append(deferred)
        if deferred.decision.reserved:
            nanos = to_nanos(deferred.decision.reserved)
            for scope in deferred.decision.scopes:
                self._planned[scope] = self._planned.get(scope, 0) + nanos

    def _with_planned(self, states: Sequence[ScopeState]) -> list[ScopeState]:
        """Books read from the ledger, with the holds this batch planned and has not sent added."""
        self.seen_budgeted.update(s.scope for s in states)
        planned = self._planned
        return [_plus_hold(s, planned[s.scope]) if s.scope in planned else s for s in states]

    def _update(self, scopes: Iterable[str], change: Callable[[ScopeState], ScopeState]) -> None:
        names = set(scopes)
        for scope, chain in self._chains.items():
            if any(s.scope in names for s in chain):
                self._chains[scope] = [change(s) if s.scope in names else s for s in chain]


def _plus_hold(state: ScopeState, nanos: int) -> ScopeState:
    """The books with a hold of `nanos` added (in nanos, as the ledger counts it)."""
    return replace(state, reserved=to_usd(round(state.reserved * NANOS_PER_USD) + nanos))


@dataclass(frozen=True)
class Charge:
    """What committing a call cost (USD), how much of it no reservation covered (`overrun_usd`), and
    the money left after it in the tightest of its scopes (`remaining_usd`; None without a budget,
    or when the commit did not reach the ledger)."""

    cost_usd: float
    overrun_usd: float
    remaining_usd: float | None = None


@dataclass(frozen=True)
class Decision:
    """What the router chose for one request, why, and the money it holds for it.

    Per-candidate dicts are keyed by candidate name; `output_caps` and `output_tokens` hold only
    the candidates that could serve the request.
    """

    id: str  # the decision's id, which its reservation (when a budget applies) and settle name
    chosen: str  # the candidate to call
    scopes: tuple[str, ...]  # the scopes charged, outermost first (empty: no budget applies)
    lam: float  # λ, the price of money, in quality per USD (the largest of the scopes' and cost_weight)
    reserved: float  # USD held in every scope: the chosen candidate's worst case at its cap
    quality: dict[str, float]  # predicted quality in [0, 1]
    cost: dict[str, float]  # predicted USD of the call
    input_tokens: dict[str, int]  # prompt tokens by each candidate's encoding
    ranking: tuple[str, ...]  # the candidates that could serve it, best score (quality − λ·cost) first
    max_tokens: int | None = None  # the output cap the caller asked for
    output_caps: dict[str, int] = field(default_factory=dict)  # output tokens each may write: reserved and sent
    output_tokens: dict[str, int] = field(default_factory=dict)  # predicted output tokens
    cap_lowered: bool = False  # the chosen cap was lowered to fit what the budget had left
    attempt: int = 0  # 0 for the first choice, n after n fallbacks
    failed: tuple[str, ...] = ()  # candidates tried before that failed
    failures: tuple[dict[str, Any], ...] = ()  # their errors (model, kind, error type, message) and charged_usd
    text: str = field(default="", repr=False)
    #: The call's OpenTelemetry span (a telemetry.CallSpan) from its first attempt to its settlement; None untraced.
    trace: Any = field(default=None, repr=False, compare=False)

    @property
    def scope(self) -> str | None:
        """The innermost scope charged, or None when no budget applies."""
        return self.scopes[-1] if self.scopes else None

    @property
    def output_cap(self) -> int | None:
        """Output tokens the chosen candidate may write: reserved as the worst case, sent as its cap."""
        return self.output_caps.get(self.chosen)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able summary for response metadata and logs."""
        return {
            "decision_id": self.id,
            "model": self.chosen,
            "scope": self.scope,
            "lambda": self.lam,
            "estimated_cost_usd": self.cost[self.chosen],
            "predicted_quality": self.quality[self.chosen],
            "reserved_usd": self.reserved,
            "max_output_tokens": self.output_cap,
            "cap_lowered": self.cap_lowered,
            "attempt": self.attempt,
            "failed": list(self.failed),
            "failures": [dict(f) for f in self.failures],
        }


class Router:
    """Routes each request to the candidate maximising predicted quality − λ·cost, under budgets.

    The per-request rule is OmniRouter's (Mei et al., 2025, "OmniRouter: Budget and Performance
    Controllable Multi-LLM Routing"): argmaxⱼ q̂ⱼ − λ·ĉⱼ, with λ the Lagrange multiplier of the
    budget constraint; candidates described only by profile answers are UniRoute's (Jitkrittum
    et al., 2025, "Universal Model Routing for Efficient LLM Inference").

    Parameters:
        candidates: the models to route among (at least one; names unique).
        quality: a fitted quality predictor (`shared_core.quality`), columns named by candidate;
            None: each candidate's `prior_quality`.
        lengths: a fitted output-length predictor (`shared_core.length`); None: `LengthPrior()`.
        embedder: turns prompts into the (n, d) features the predictors read; None when neither needs it.
        store: the ledger, a LedgerStore or a URL (`memory://`, `sqlite:///…`, `redis://…`,
            `postgresql://…`); None: a new in-process memory ledger.
        default_budget: the Budget every new session scope starts with; None: sessions are unbudgeted.
        pacer: the online DualPacer that prices money per scope (`fit_router` warm-starts it).
        cost_weight: a floor under λ, in quality per USD: 0 routes on quality alone when no budget
            binds; 50 gives up 0.01 quality to save $0.0002.
        strict_scopes: raise UnknownScope for a session without a budget instead of routing it unbudgeted.
        max_fallbacks: further candidates tried after a failed call (0: none).
        reservation_ttl_s: seconds a hold lives before its money returns (≥ 0.1).
        attempt_timeout_s, deadline_s: seconds one attempt, and all attempts of a request, may take.
        scope_prefix: a tenant every session is nested in (callers cannot charge another tenant).
        session_idle_ttl_s: seconds after which an idle default-budget session is forgotten (None: never).
        pending_journal: a file that keeps settles the ledger could not take across a crash.
        cap_headroom: lower a candidate's output cap to fit what a budget has left when the cap
            stays ≥ this many times its predicted output (None: never lower one).

    Raises ValueError (or pydantic's ValidationError) naming the parameter for a bad value.
    """

    def __init__(
        self,
        candidates: Sequence[Candidate],
        *,
        quality: QualityPredictor | None = None,
        lengths: LengthPredictor | None = None,
        embedder: Any = None,
        store: LedgerStore | str | None = None,
        default_budget: Budget | None = None,
        pacer: DualPacer | None = None,
        cost_weight: float = 0.0,
        strict_scopes: bool = False,
        max_fallbacks: int = 2,
        reservation_ttl_s: float = 600.0,
        attempt_timeout_s: float | None = None,
        deadline_s: float | None = None,
        scope_prefix: str | None = None,
        session_idle_ttl_s: float | None = DEFAULT_SESSION_IDLE_TTL_S,
        pending_journal: str | os.PathLike[str] | None = None,
        cap_headroom: float | None = DEFAULT_CAP_HEADROOM,
    ) -> None:
        # Estimation (candidates, embedder, predictors) is the pool's; this class decides and keeps books.
        self.pool = CandidatePool(candidates, quality=quality, lengths=lengths, embedder=embedder)
        if default_budget is not None and not isinstance(default_budget, Budget):
            # A bare number (budget=5.0) would pass here and fail at the first call, deep in the ledger.
            raise TypeError(f"default_budget must be a Budget (e.g. Budget(usd=5.0)) or None, "
                            f"got {type(default_budget).__name__}: {default_budget!r}")
        if pacer is not None and not isinstance(pacer, DualPacer):
            raise TypeError(f"pacer must be a DualPacer or None, got {type(pacer).__name__}")
        self.store = open_store(store)
        self.default_budget = default_budget
        self.pacer = pacer if pacer is not None else DualPacer()
        if isinstance(cost_weight, bool) or not isinstance(cost_weight, (int, float)) \
                or not math.isfinite(cost_weight) or cost_weight < 0:
            raise ValueError(f"cost_weight must be a finite number >= 0 (quality per USD), got {cost_weight!r}")
        self.cost_weight = float(cost_weight)
        self.strict_scopes = strict_scopes
        if max_fallbacks < 0:
            raise ValueError(f"max_fallbacks must be >= 0, got {max_fallbacks}")
        self.max_fallbacks = max_fallbacks
        _check_ttl(reservation_ttl_s, "reservation_ttl_s", ValueError)
        self.reservation_ttl_s = float(reservation_ttl_s)
        if scope_prefix is not None:
            scope_chain(scope_prefix)
        # Every session a caller names is nested in it: a tenant's router cannot charge another's.
        self.scope_prefix = scope_prefix
        self.session_idle_ttl_s = check_idle_ttl(session_idle_ttl_s, "session_idle_ttl_s")
        if cap_headroom is not None and (isinstance(cap_headroom, bool) or not isinstance(cap_headroom, (int, float))
                                         or not 1 <= cap_headroom < float("inf")):
            raise ValueError(
                f"cap_headroom must be a number >= 1 (times the predicted output) or None, got {cap_headroom!r}"
            )
        self.cap_headroom = None if cap_headroom is None else float(cap_headroom)
        # Budgets set through this router (set_budget): the truth a lost ledger entry is restored from.
        self._declared: dict[str, Budget] = {}
        # Candidates removed while their calls were in flight, so those calls can still be priced.
        self._retired: dict[str, Candidate] = {}
        # Commits the ledger could not take (it was unreachable), retried on later commits; in a
        # file when one is given, so that a process dying before the ledger is back loses nothing.
        self.pending_journal = pending_journal
        self._kept = PendingCommits() if pending_journal is None else PendingJournal(pending_journal)
        for name, value in (("attempt_timeout_s", attempt_timeout_s), ("deadline_s", deadline_s)):
            if value is not None and not (isinstance(value, (int, float)) and 0 < value < float("inf")):
                raise ValueError(f"{name} must be a positive number of seconds or None, got {value!r}")
        # Bounds on the calls made with shared_core.calls' fallback loop: each attempt (to its
        # answer, or a stream's first chunk) and all attempts of one request together.
        self.attempt_timeout_s = attempt_timeout_s
        self.deadline_s = deadline_s
        if pending_journal is not None:  # commits a crashed run kept: recorded now, not at the first commit
            try:
                self.retry_pending()
            except Exception:  # the router must still be made: its commits retry the replay
                logger.exception("could not replay the commits kept in %s", pending_journal)

    # ----------------------------------------------------------------- candidates
    @property
    def candidates(self) -> tuple[Candidate, ...]:
        """The candidates, in routing-column order."""
        return self.pool.candidates

    @property
    def quality(self) -> Any:
        """The quality predictor (None: the candidates' priors)."""
        return self.pool.quality

    @property
    def lengths(self) -> LengthPredictor:
        """The output-length predictor."""
        return self.pool.lengths

    @property
    def embedder(self) -> Any:
        """The embedder both predictors read (None when neither needs one)."""
        return self.pool.embedder

    def update_candidate(self, candidate: Candidate) -> None:
        """Replace the routed candidate of the same name (new prices, limits or model), keeping its predictions."""
        self.pool.replace(candidate)

    def priced(self, decision: Decision) -> Candidate:
        """The candidate a decision chose, even if it was removed since (its calls still cost money)."""
        retired = self._retired.get(decision.chosen)
        return self.candidate(decision.chosen) if retired is None or decision.chosen in self.pool.lineup.index \
            else retired

    def candidate(self, name: str) -> Candidate:
        """The candidate called `name` (KeyError naming the known ones otherwise)."""
        return self.pool.lineup.candidate(name)

    # ----------------------------------------------------------------- budgets
    def set_budget(self, scope: str, budget: Budget, *, reset: bool = False) -> None:
        """Give `scope` (e.g. "acme/agent-7") a budget, keeping what it has already spent.

        A changed period restarts now and keeps the current period's spend; `reset=True` zeroes
        it (the rule is LedgerStore.set_budget's). The router remembers the budget: should the
        ledger lose the scope (a Redis restarted without persistence, or evicting keys), the next
        request re-establishes it from here, with an ERROR log, instead of running unbudgeted.
        """
        scope_chain(scope)
        if not isinstance(budget, Budget):
            raise TypeError(f"budget must be a Budget, got {type(budget).__name__}")
        self.store.set_budget(scope, budget, reset=reset)
        self._declared[scope] = budget

    def budget_state(self, scope: str) -> ScopeState | None:
        """The scope's books (budget, committed, reserved, λ), or None when it has no budget."""
        return self.store.state(scope)

    def remaining(self, scope: str | None) -> float | None:
        """Money left in the tightest budget enclosing `scope`, or None when none applies."""
        states = [s for s in self.store.states(scope_chain(scope or DEFAULT_SCOPE)) if s]
        return min((s.remaining for s in states), default=None)

    def scope_of(self, session: str | None) -> str:
        """The scope a request naming `session` charges: the session (or DEFAULT_SCOPE), nested in
        `scope_prefix` when the router has one. ValueError for a malformed session name."""
        scope = session if session is not None else DEFAULT_SCOPE
        if self.scope_prefix is not None:
            scope = f"{self.scope_prefix}/{scope}"
        scope_chain(scope)
        return scope

    def _chain_states(self, scope: str) -> list[ScopeState]:
        """The books of `scope` and its enclosing scopes, re-establishing lost declared budgets and
        creating the session's default budget; LedgerUnavailable if a scope keeps vanishing."""
        for _ in range(3):
            states = self._chain_states_once(scope)
            if self.default_budget is None or (states and states[-1].scope == scope):
                return states
            # Created, then forgotten before it could be read (a stall longer than its idle time).
        raise LedgerUnavailable(f"the budget of scope {scope!r} vanished three times as it was created; "
                                "is session_idle_ttl_s shorter than the ledger's response time?")

    def _chain_states_once(self, scope: str) -> list[ScopeState]:
        chain = scope_chain(scope)
        states = self.store.states(chain)
        for i, name in enumerate(chain):
            if states[i] is None and name in self._declared:
                # Budgets set in code are the truth the ledger is checked against: a lost one is
                # re-established (its spend so far is gone with the ledger's copy), never dropped.
                self.store.set_budget(name, self._declared[name], only_if_absent=True)
                states[i] = self.store.state(name)
                logger.error("the ledger had lost the budget of scope %r (a Redis restart without persistence, or "
                             "evicted keys?); re-established it from the one set in code, without its past spend",
                             name)
        if states[-1] is None and self.default_budget is not None:
            self.store.set_budget(scope, self.default_budget, only_if_absent=True, idle_ttl_s=self.session_idle_ttl_s)
            states[-1] = self.store.state(scope)
        if states[-1] is None and self.strict_scopes:
            raise UnknownScope(f"scope {scope!r} has no budget and the router is strict")
        return [s for s in states if s is not None]

    # ----------------------------------------------------------------- estimation
    def estimate(self, prompts: Sequence[str], input_tokens: np.ndarray | None = None) -> Estimate:
        """Predicted quality, tokens and cost (arrays (n, m)) for many prompts at once; no budget involved.

        `input_tokens` ((n,) or (n, m)) replaces counting the prompts. RoutingError for a prompt that is not a str.
        """
        return self.pool.estimate([_check_text(p, i) for i, p in enumerate(prompts)], input_tokens)

    # ----------------------------------------------------------------- decisions
    def decide(
        self,
        request: str | Messages,
        session: str | None = None,
        *,
        tools: Sequence[Mapping[str, Any]] | None = None,
        structured_output: bool = False,
        max_tokens: int | None = None,
        exclude: Sequence[str] = (),
        model: str | None = None,
        weights: Mapping[str, float] | None = None,
        extra_input_tokens: int = 0,
        reservation_ttl_s: float | None = None,
    ) -> Decision:
        """Choose a candidate for one request and reserve its worst-case cost in every scope.

        `max_tokens` is the output cap asked for; each candidate's cap (`Decision.output_caps`)
        is it lowered to the candidate's `max_output_tokens`, or without it that limit shortened
        to the room the prompt leaves in the context window. The worst case reserved is the input
        at the candidate's dearest input rate plus its cap; the caller must send that cap.
        `weights` (candidate → a factor in [0, 1], 1 when absent) scale the predicted quality of
        this request — e.g. how relevant the engine behind a candidate is to it; 0 rules a
        candidate out. `extra_input_tokens` are prompt tokens the call will carry beyond `request`
        (e.g. the context a query engine retrieves), counted in its cost and worst case.
        `reservation_ttl_s` overrides the router's for this decision's hold (seconds, at least
        MIN_RESERVATION_TTL_S). Raises RoutingError for malformed requests (and weights, and a
        hold's lifetime), NoFeasibleCandidate when no candidate can
        serve it (input + cap over its window, tools, structured output, exclusions), and
        BudgetExceeded (naming the exhausted scope and the worst case) when none of those that
        can fits what is left.
        """
        ask = self._ask(request, session, tools=tools, structured_output=structured_output, max_tokens=max_tokens,
                        exclude=exclude, model=model, weights=weights, extra_input_tokens=extra_input_tokens,
                        reservation_ttl_s=reservation_ttl_s)
        lineup, q, out = self.pool.predict(self.pool.features([ask.text]))
        return self._decide_predicted(ask, lineup, q[0], out[0])

    # decide() in three steps, so that concurrent decisions (shared_core.offload) can check each
    # request, predict for all of them at once, and finish each on its own: the same decisions.
    def _ask(self, request: str | Messages, session: str | None = None, **options: Any) -> _Ask:
        """decide()'s arguments (`options`: its keyword arguments) checked, with the text to embed;
        RoutingError for a malformed request, TypeError for an unknown keyword."""
        messages, text = _normalise(request)
        ask = _Ask(messages, text, session, **options)
        _check_request(ask.max_tokens, ask.extra_input_tokens, ask.reservation_ttl_s)
        if ask.model is not None:
            self.candidate(ask.model)
        return ask

    def _decide_predicted(
        self, ask: _Ask, lineup: Lineup, q: np.ndarray, out: np.ndarray, reads: SharedReads | None = None,
    ) -> Decision:
        """decide() for a checked request, given the (m,) quality and output tokens predicted for its
        text; `reads` shares the budget reads of the decisions made with it (one batch)."""
        deferring = reads is not None and reads.deferred is not None
        # What makes this decision again alone, should its deferred hold be refused (q and out change below).
        redo = functools.partial(self._decide_predicted, ask, lineup, q, out) if deferring else None
        scope = self.scope_of(ask.session)
        states = self._chain_states(scope) if reads is None else reads.chain(self, scope)
        messages, tool_list, max_tokens = ask.messages, list(ask.tools or []), ask.max_tokens
        input_tokens = lineup.count_request_tokens(messages, tool_list, ask.extra_input_tokens)
        caps = output_caps(input_tokens, lineup.max_output, lineup.window, max_tokens, uncapped=lineup.uncapped)
        out = np.minimum(out, caps)
        cost, worst = lineup.cost(input_tokens, out), lineup.worst_cost(input_tokens, caps)

        asked = Request(max_tokens=max_tokens, tools=bool(tool_list), structured_output=ask.structured_output,
                        exclude=ask.exclude, model=ask.model)
        can = feasible(lineup, input_tokens, caps, asked)
        if not can.any():
            raise NoFeasibleCandidate(describe(lineup, reasons(lineup, input_tokens, caps, asked), asked))
        if ask.weights:
            q = q * _weights(ask.weights, lineup.names)
            can &= q > 0
            if not can.any():
                raise NoFeasibleCandidate("no candidate can serve this request: every feasible one has weight 0")
        if reads is not None and states and float(worst[can].max()) > min(s.remaining for s in states):
            # Near a budget's end the books decide: a shared copy misses money others returned
            # since it was read (a release, a cheaper commit, a new period), so they are read now.
            states = reads.refreshed(self._chain_states(scope))
        lam = max([self.cost_weight] + [self.pacer.price(s) for s in states])
        # Best score q − λ·cost first (ties: candidate order); those that cannot serve it are left out.
        order = np.argsort(np.where(can, lam * cost - q, np.inf), kind="stable")
        names = lineup.names
        ranked = order[can[order]].tolist()
        ranking = tuple(map(names.__getitem__, ranked))
        served = sorted(ranked)
        # Caps are whole token counts; predicted outputs are rounded up.
        caps_of, out_of = caps.tolist(), out.tolist()
        base = Decision(
            id="", chosen="", scopes=tuple(s.scope for s in states), lam=lam, reserved=0.0,
            quality=dict(zip(names, q.tolist(), strict=True)),
            cost=dict(zip(names, cost.tolist(), strict=True)),
            input_tokens=dict(zip(names, input_tokens.astype(np.int64).tolist(), strict=True)),
            ranking=ranking, max_tokens=max_tokens, text=ask.text,
            output_caps={names[j]: int(caps_of[j]) for j in served},
            output_tokens={names[j]: math.ceil(out_of[j]) for j in served},
        )
        decision = self._reserve_first(lineup, base, list(ranking), dict(zip(names, worst.tolist(), strict=True)),
                                       states, ask.reservation_ttl_s, scope=scope, reads=reads)
        if reads is not None:
            if redo is not None:
                reads.plan(Deferred(decision, scope, ask.reservation_ttl_s or self.reservation_ttl_s, redo))
            reads.held(decision)
        return decision

    def _reserve_first(
        self, lineup: Lineup, base: Decision, order: list[str], worst: Mapping[str, float],
        states: list[ScopeState], ttl_s: float | None = None, *, scope: str | None, reads: SharedReads | None = None,
    ) -> Decision:
        """Reserve for the best-ranked candidate that fits every scope; BudgetExceeded if none.

        `lineup` is the one the request was priced with: a candidate changed meanwhile does not
        change this request. A scope forgotten (idle) or lost between the read and the hold is
        re-established once, as for any request that finds it missing.

        In a batch that defers its holds (`reads.deferred`), the hold is only planned, on the
        shared books: no ledger call, so no scope found missing here."""
        if reads is not None and reads.deferred is not None:
            return self._reserve_ranked(lineup, base, order, worst, states, ttl_s, reads)
        try:
            return self._reserve_ranked(lineup, base, order, worst, states, ttl_s, reads)
        except UnknownScope:
            if scope is None:
                raise
            states = self._chain_states(scope)
            base = replace(base, scopes=tuple(s.scope for s in states))
            if reads is not None:
                states = reads.refreshed(states)
        try:
            return self._reserve_ranked(lineup, base, order, worst, states, ttl_s, reads)
        except UnknownScope as error:
            raise LedgerUnavailable(
                f"the budget of scope {scope!r} vanished twice between reading and holding it ({error}); "
                "is session_idle_ttl_s shorter than the ledger's response time?"
            ) from error

    def _reserve_ranked(
        self, lineup: Lineup, base: Decision, order: list[str], worst: Mapping[str, float],
        states: list[ScopeState], ttl_s: float | None = None, reads: SharedReads | None = None,
    ) -> Decision:
        if not base.scopes:
            unheld = _held(base, id=_new_id(), chosen=order[0])
            return unheld if reads is not None and reads.deferred is not None else _routed(unheld)
        last: BudgetExceeded | None = None
        for name in order:
            # A hold refused on books others changed since they were read is tried once more on
            # fresh books (perhaps with a lowered cap), as a decision reading them now would.
            for retry in (False, True):
                left = min(s.remaining for s in states)
                hold, caps, lowered = worst[name], base.output_caps, False
                if hold > left:
                    candidate = lineup.candidate(name)
                    cap = self._cap_within(base, candidate, left)
                    if cap is None:
                        break
                    hold, caps, lowered = (
                        candidate.worst_case_cost(base.input_tokens[name], cap),
                        {**caps, name: cap},
                        True,
                    )
                held = _held(base, id=_new_id(), chosen=name, reserved=hold, output_caps=caps, cap_lowered=lowered)
                if reads is not None and reads.deferred is not None:
                    return held  # planned: the batch makes it with its others (_reserve_first)
                try:
                    self.store.reserve(held.id, base.scopes, hold, ttl_s or self.reservation_ttl_s)
                except BudgetExceeded as e:  # another request took the money since our read
                    last = e
                    states = [s or st for s, st in zip(self.store.states(base.scopes), states, strict=False)]
                    if reads is not None:
                        states = reads.refreshed(states)
                    if retry:
                        break
                    continue
                return _routed(held)
        raise _refusal(base, order, worst, states) from last

    def _hold_deferred(self, reads: SharedReads) -> list[Exception | None]:
        """Make the holds a batch planned (`reads.deferred`) in one ledger call: per decision None
        when its hold is made (or it holds nothing), else why it must be made again or fail — the
        ledger's error for its hold (see `LedgerStore.reserve_many`), or a scope of its chain that
        no read of the batch found with a budget and that has one now (read here, first, in one call)."""
        deferred = reads.deferred or []
        outcomes: list[Exception | None] = [None] * len(deferred)
        unbudgeted = [[s for s in scope_chain(d.scope) if s not in d.decision.scopes and s not in reads.seen_budgeted]
                      for d in deferred]
        names = sorted({s for missing in unbudgeted for s in missing})
        if names:
            budgeted = {name for name, state in zip(names, self.store.states(names), strict=True) if state is not None}
            for i, missing in enumerate(unbudgeted):
                if budgeted.intersection(missing):
                    outcomes[i] = _Rebudgeted(f"scope {sorted(budgeted.intersection(missing))[0]!r} has a budget now")
        send = [i for i, d in enumerate(deferred) if outcomes[i] is None and d.decision.scopes]
        made = self.store.reserve_many([(deferred[i].decision.id, deferred[i].decision.scopes,
                                         deferred[i].decision.reserved, deferred[i].ttl_s) for i in send])
        for i, outcome in zip(send, made, strict=True):
            outcomes[i] = outcome
        return outcomes

    def _confirm(self, deferred: Deferred, error: Exception | None) -> Decision:
        """A planned decision once its hold was answered (`_hold_deferred`): itself when made; made
        again alone, on fresh books, when the ledger refused its hold (money others took since the
        batch read the books), its scope had gone or its chain gained a budget; else the ledger's error."""
        if error is None:
            return _routed(deferred.decision)
        if isinstance(error, (BudgetExceeded, UnknownScope, _Rebudgeted)):
            return deferred.redo()
        raise error

    def _cap_within(self, base: Decision, candidate: Candidate, left: float) -> int | None:
        """The largest output cap whose worst case fits `left` USD, or None when it would fall below
        `cap_headroom` × the predicted output (or MIN_LOWERED_CAP): an answer that long is unlikely to be cut."""
        name = candidate.name
        predicted = base.output_tokens.get(name)
        if self.cap_headroom is None or predicted is None or not candidate.accepts_output_cap:
            return None  # a cap that cannot be sent cannot be lowered
        tokens = base.input_tokens[name]
        floor = max(MIN_LOWERED_CAP, math.ceil(self.cap_headroom * predicted))
        per_token = candidate.output_price / 1e6
        if per_token <= 0 or floor >= base.output_caps[name]:
            return None
        cap = min(base.output_caps[name] - 1, int((left - candidate.worst_case_cost(tokens, 0)) / per_token))
        while cap >= floor and candidate.worst_case_cost(tokens, cap) > left:  # float rounding at the edge
            cap -= 1
        return cap if cap >= floor else None

    def reroute(
        self, decision: Decision, error: BaseException | None = None, *, attempt: Attempt | None = None,
    ) -> Decision | None:
        """Release a failed decision and reserve for the next-best candidate; None when out of tries.

        The new decision records the failure (`failed`, and `failures` with the error's kind,
        message and `charged_usd`): `attempt` as the fallback loop recorded it, else made from
        `error` (charged nothing). Whether an error should fall back at all is
        `fallbacks.classify`'s business; `calls.call_with_fallbacks` asks it before calling this.
        """
        self.release(decision)
        failed = decision.failed + (decision.chosen,)
        if attempt is None:
            attempt = Attempt(decision.chosen, classify(error) if error is not None else ErrorKind.UNKNOWN,
                              error if error is not None else RuntimeError("failed"))
        record = attempt.to_dict()
        # Candidates removed since the decision are skipped; the others are priced as they are now.
        lineup = self.pool.lineup
        order = [n for n in decision.ranking if n not in failed and n in lineup.index]
        if decision.attempt >= self.max_fallbacks or not order:
            return None
        states = [s for s in self.store.states(decision.scopes) if s]
        worst = {n: lineup.candidate(n).worst_case_cost(decision.input_tokens[n], decision.output_caps[n])
                 for n in order}
        following = replace(
            decision, failed=failed, failures=decision.failures + (record,), attempt=decision.attempt + 1
        )
        if decision.scope is not None and len(states) != len(decision.scopes):  # idled out while the call ran
            states = self._chain_states(decision.scope)
            following = replace(following, scopes=tuple(s.scope for s in states))
        try:
            return self._reserve_first(lineup, following, order, worst, states, scope=decision.scope)
        except BudgetExceeded:
            return None

    def settle(
        self,
        decision: Decision,
        input_tokens: int | None = None,
        output_tokens: int | None = None,
        *,
        usage: Usage | None = None,
        cost: float | None = None,
    ) -> float:
        """Commit the call's actual cost and update λ; returns it in USD (`commit` also gives the overrun).

        The cost is `usage` priced for the chosen candidate (cache reads and writes at its cache
        prices), or `input_tokens` / `output_tokens` (input defaults to the router's own count),
        or `cost` in USD. For a reply without reported usage use `shared_core.calls.settle_usage`,
        which counts its text. Settling twice charges once.
        """
        if cost is None and usage is None:
            if output_tokens is None:
                raise ValueError("settle needs output_tokens (or usage=, or cost=)")
            inp = decision.input_tokens[decision.chosen] if input_tokens is None else input_tokens
            usage = Usage(input_tokens=inp, output_tokens=output_tokens)
        return self.commit(decision, usage, cost=cost).cost_usd

    def commit(self, decision: Decision, usage: Usage | None = None, *, cost: float | None = None) -> Charge:
        """Commit `usage` (priced for the chosen candidate) or `cost` USD for a decision; the Charge.

        Money beyond the decision's reservation — or, when its hold had lapsed, money that takes a
        scope over its budget — is committed all the same (it was spent) and reported as the
        charge's `overrun_usd`, with a warning; an overdrawn scope refuses paid calls until it is
        within budget. Committing twice charges once (the second Charge has no overrun).
        """
        if cost is None:
            if usage is None:
                raise ValueError("commit needs usage= or cost=")
            cost = price(self.priced(decision), usage)
        cost = float(cost)
        if not np.isfinite(cost) or cost < 0:
            raise ValueError(f"cost must be finite and >= 0, got {cost}")
        if not decision.scopes:
            return Charge(cost, 0.0)
        try:
            self.retry_pending()
        except Exception:  # an unreadable journal must not keep this call's money from the ledger
            logger.exception("could not replay the commits kept in %s", self.pending_journal)
        entry = PendingCommit(decision.id, decision.scopes, decision.chosen, cost, time.time(), self.store.url)
        charged = frozenset(decision.scopes)
        pace = PaceUpdate(self.pacer, cost, charged)
        # The whole chain's books: a scope given a budget while the call ran counts in what is left.
        chain = scope_chain(decision.scopes[-1])
        try:
            books = _with_retries(lambda: self._store_commit(entry, pace, chain))
        except LedgerUnavailable as error:
            # The call was made and its answer is the caller's: keep the money to commit later.
            self._keep(entry, error)
            return Charge(cost, 0.0)
        except KeyError as error:  # the ledger lost the scope itself while the call ran
            logger.error("the ledger lost scope %r while %s answered; %.9g USD could not be recorded (%s)",
                         decision.scope, decision.chosen, cost, error)
            return Charge(cost, 0.0)
        remaining = min((s.remaining for s in books.after), default=None)
        overrun = _overrun(decision, cost, [s for s in books.before if s.scope in charged]) if books.charged else 0.0
        if overrun:
            after = [s for s in books.after if s.scope in charged and s.overdrawn > 0]
            consequence = (
                "; ".join(f"scope {s.scope!r} is overdrawn by {s.overdrawn:.9g} USD" for s in after)
                + " and refuses paid calls until it is within budget" if after
                else "every scope is still within its budget"
            )
            logger.warning(
                "overrun: %s cost %.9g USD, %.9g USD beyond what its reservation of %.9g USD covered (cap %s "
                "output tokens) in scope %r; recorded: %s",
                decision.chosen, cost, overrun, decision.reserved, decision.output_cap, decision.scope, consequence,
            )
        return Charge(cost, overrun, remaining)

    def _keep(self, entry: PendingCommit, error: Exception) -> None:
        where = "in memory" if self.pending_journal is None else f"in {self.pending_journal}"
        try:
            self._kept.keep(entry)
        except OSError as e:
            logger.error("the ledger could not record %.9g USD for %s in scope %r (%s), and keeping it %s failed "
                         "too (%s): the money is NOT recorded", entry.cost_usd, entry.model, entry.scopes[-1],
                         error, where, e)
            return
        logger.error("the ledger could not record %.9g USD for %s in scope %r (%s); kept %s to retry on the next "
                     "commit (Router.retry_pending)", entry.cost_usd, entry.model, entry.scopes[-1], error, where)

    def _store_commit(
        self, entry: PendingCommit, pace: Pace | None = None, scopes: Sequence[str] | None = None
    ) -> Committed:
        """The ledger's commit, with the books of `scopes` (the entry's own by default) around it and λ
        moved by `pace`; for a reservation it no longer knows (forgotten after its retention, or lost
        with the ledger), `pending.record_anew` records the money once under a new hold."""
        scopes = entry.scopes if scopes is None else scopes
        try:
            return self.store.commit_books(entry.reservation_id, entry.cost_usd, model=entry.model,
                                           scopes=scopes, pace=pace)
        except UnknownReservation:
            return books_around(self.store, lambda: record_anew(self.store, entry, self.reservation_ttl_s),
                                scopes, pace)

    def retry_pending(self) -> int:
        """Commit what the ledger could not take before (see `commit`); how many are still kept."""

        def record(entry: PendingCommit) -> None:
            if self._store_commit(entry).charged:
                logger.info("recorded %.9g USD for %s in scope %r, kept while the ledger was unreachable",
                            entry.cost_usd, entry.model, entry.scopes[-1])

        return self._kept.replay(record, self.store.url)

    def release(self, decision: Decision) -> None:
        """Return a decision's reservation unspent (a failed or cancelled call); nothing once committed.

        When the ledger cannot be reached the hold is left to lapse by itself (within
        `reservation_ttl_s`), with a WARNING: a release runs in cleanup paths, after an answer
        that may have been paid for, and must not turn that answer into an error.
        """
        if not decision.scopes:
            return
        try:
            self.store.release(decision.id)
        except LedgerUnavailable as error:
            logger.warning("could not release the hold of %.9g USD for %s in scope %r (%s); it lapses by itself "
                           "within %g s", decision.reserved, decision.chosen, decision.scope, error,
                           self.reservation_ttl_s)

    # ----------------------------------------------------------------- batches
    def route_batch(
        self,
        prompts: Sequence[str],
        *,
        budget: float | None = None,
        quality_target: float | None = None,
        capacities: Mapping[str, float | int] | None = None,
        input_tokens: np.ndarray | None = None,
    ) -> BatchRouting:
        """Route many prompts together: best total predicted quality within `budget` USD, or the
        least predicted cost with mean predicted quality ≥ `quality_target` (exactly one of them).

        `capacities` caps a candidate's prompts by share (float in [0, 1]) or count (int). No
        ledger is touched: the plan is for callers that run the calls themselves. Prompts are
        estimated `batch.CHUNK_SIZE` at a time, so memory stays bounded at any batch size.
        ValueError for no prompts.
        """
        return batch.route_batch(self, prompts, budget=budget, quality_target=quality_target,
                                 capacities=capacities, input_tokens=input_tokens)

    def warm_start(self, prompts: Sequence[str], *, quality: np.ndarray | None = None) -> DualPacer:
        """Price every scope from the batch solution on `prompts` (e.g. the training split): the λ
        it needs for the scope's remaining money per remaining request. Call before serving
        traffic (a θ paced without the curve means something else); returns the new pacer.

        `quality` ((len(prompts), len(candidates)), routing-column order) replaces the router's
        own quality estimates of the prompts — e.g. out-of-fold ones for its training prompts."""
        if not prompts:
            raise ValueError("warm_start needs at least one prompt")
        est = self.estimate(prompts)
        q = est.quality
        if quality is not None:
            q = np.asarray(quality, dtype=np.float64)
            if q.shape != est.quality.shape:
                raise ValueError(f"quality must have shape {est.quality.shape} (prompts × candidates), got {q.shape}")
            if not (np.isfinite(q).all() and ((q >= 0) & (q <= 1)).all()):
                raise ValueError("quality must hold finite values in [0, 1]")
        spend, lambdas = budget_curve(q, est.cost)
        self.pacer = self.pacer.warm(spend / len(prompts), lambdas)
        return self.pacer

    # ----------------------------------------------------------------- models, learning, saving
    def add_candidate(
        self,
        candidate: Candidate,
        profile_prompts: Sequence[str],
        profile_quality: Sequence[float] | np.ndarray,
        *,
        profile_output_tokens: Sequence[float] | np.ndarray | None = None,
    ) -> None:
        """Add a model known only by its results on a small profile set (UniRoute), without refitting.

        The profile prompts are embedded with the fitted embedder and handed to the quality
        predictor (and, with `profile_output_tokens`, to the length predictor); without them the
        new model is expected to answer as long as the others.
        """
        if not isinstance(candidate, Candidate):
            raise TypeError(f"candidate must be a Candidate, got {type(candidate).__name__}")
        prompts = [_check_text(p, i) for i, p in enumerate(profile_prompts)]
        if not prompts:
            raise ValueError("add_candidate needs at least one profile prompt")
        self.pool.add(candidate, self.pool.features(prompts), np.asarray(profile_quality, dtype=np.float64),
                      None if profile_output_tokens is None else np.asarray(profile_output_tokens, dtype=np.float64))

    def remove_candidate(self, name: str) -> None:
        """Stop routing to `name` at once, and drop it from the predictors that can forget models."""
        # Kept before removal: calls in flight to it must still be priced when they settle.
        self._retired[name] = self.pool.remove(name)

    def feedback(self, decision: Decision, quality: float) -> None:
        """Teach the quality predictor how the chosen model did on this request (online learning)."""
        if not isinstance(decision, Decision):
            raise TypeError(f"decision must be a Decision, got {type(decision).__name__}")
        quality = float(quality)
        if not 0.0 <= quality <= 1.0:
            raise ValueError(f"quality must be in [0, 1], got {quality}")
        if not decision.text:
            raise ValueError("the decision carries no prompt text to learn from")
        self.pool.observe(decision.text, decision.chosen, quality)

    def save(self, directory: str | Path) -> Path:
        """Write the fitted router (candidates, settings, predictors) as JSON + .npz; returns the manifest path.

        Budgets and ledgers are not saved, nor the candidates' framework models.
        """
        from .persist import save_router

        with self.pool.frozen():
            return save_router(self, directory)

    @classmethod
    def load(cls, directory: str | Path, *, models: Mapping[str, Any] | None = None, **kwargs: Any) -> Router:
        """A router saved by `save`; `models` = {candidate name: framework model} to reattach.

        `store=` is the ledger (default: a new in-memory one); a saved router never chooses it,
        and a manifest naming one is refused. `max_array_bytes=` (default
        persist.MAX_ARRAY_BYTES, 1 GiB) bounds the arrays' total declared size, checked before
        any is read. Loading writes nothing to the directory, so read-only ones work. Other
        keywords (`embedder=`, `cost_weight=`, ...) override what was saved. Raises
        persist.PersistError when the directory is missing, truncated, tampered with, too large or foreign.
        """
        from .persist import load_router

        return load_router(directory, models=models, **kwargs)


def _check_text(p: Any, i: int) -> str:
    if not isinstance(p, str):
        raise RoutingError(f"prompts[{i}] must be str, got {type(p).__name__}")
    return p


def _normalise(request: str | Messages) -> tuple[list[Mapping[str, Any]], str]:
    """Messages and the text to embed, from a prompt string or a list of role/content mappings."""
    if isinstance(request, str):
        if not request.strip():
            raise RoutingError("the prompt is empty")
        return [{"role": "user", "content": request}], request
    if not isinstance(request, Sequence) or not request:
        raise RoutingError("a request must be a non-empty prompt string or a non-empty list of messages")
    messages: list[Mapping[str, Any]] = []
    for i, m in enumerate(request):
        if not isinstance(m, Mapping) or "role" not in m:
            raise RoutingError(f"messages[{i}] must be a mapping with 'role' and 'content', got {m!r}")
        content = m.get("content")
        checked = _check_content(i, content)
        messages.append(m if checked is content else {**m, "content": checked})
    text = "\n".join(t for t in (content_text(m.get("content")) for m in messages) if t)
    return messages, text


def _check_content(i: int, content: Any) -> Any:
    """A message's content if it is None, a str or a list of blocks (str or mapping); other
    iterables of blocks as a list; RoutingError for anything else — bytes, a lone mapping, nested
    lists would otherwise count as a few tokens and slip past the window check and the hard cap."""
    if content is None or isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(block, (str, Mapping)) for block in content):
        return content
    if isinstance(content, (bytes, bytearray, Mapping)) or not isinstance(content, Iterable):
        raise RoutingError(f"messages[{i}] content must be a str or a list of content blocks, "
                           f"got {type(content).__name__}")
    blocks = list(content)
    for j, block in enumerate(blocks):
        if not isinstance(block, (str, Mapping)):
            raise RoutingError(f"messages[{i}] content[{j}] must be a str or a mapping (a content block), "
                               f"got {type(block).__name__}")
    return blocks


def _check_ttl(ttl_s: Any, what: str, error: type[ValueError]) -> None:
    """`error` naming a hold's lifetime that is not a finite number of seconds >= MIN_RESERVATION_TTL_S."""
    if isinstance(ttl_s, bool) or not isinstance(ttl_s, (int, float, np.integer, np.floating)) \
            or not MIN_RESERVATION_TTL_S <= ttl_s < float("inf"):
        # A hold shorter than a call lapses while the call runs, and the budget stops holding.
        raise error(f"{what} must be a number of seconds >= {MIN_RESERVATION_TTL_S}, got {ttl_s!r}")


def _check_request(max_tokens: Any, extra_input_tokens: Any, reservation_ttl_s: Any = None) -> None:
    """RoutingError naming a malformed output cap, extra input token count or hold lifetime."""
    if reservation_ttl_s is not None:
        _check_ttl(reservation_ttl_s, "reservation_ttl_s", RoutingError)
    if max_tokens is not None and (
        isinstance(max_tokens, bool) or not isinstance(max_tokens, (int, np.integer)) or max_tokens <= 0
    ):
        raise RoutingError(f"max_tokens must be a whole number of tokens > 0, got {max_tokens!r}")
    if isinstance(extra_input_tokens, bool) or not isinstance(extra_input_tokens, (int, np.integer)) \
            or extra_input_tokens < 0:
        raise RoutingError(f"extra_input_tokens must be a whole number >= 0, got {extra_input_tokens!r}")


def _weights(weights: Mapping[str, float], names: Sequence[str]) -> np.ndarray:
    """The weights as an array in candidate order (1.0 where absent), after checking them."""
    unknown = sorted(set(weights) - set(names))
    if unknown:
        raise RoutingError(f"weights name unknown candidates {unknown}; candidates are {list(names)}")
    values = np.array([weights.get(n, 1.0) for n in names], dtype=np.float64)
    if not np.all(np.isfinite(values)) or (values < 0).any() or (values > 1).any():
        raise RoutingError(f"weights must be numbers in [0, 1], got {dict(weights)}")
    return values


def _with_retries(operation: Callable[[], T], attempts: int = 3, first_wait_s: float = 0.05) -> T:
    """operation(), retried on LedgerUnavailable with growing waits (ledger operations are idempotent);
    not when the store failed it untried, in an outage's cool-down (FailingFast)."""
    for attempt in range(attempts):
        try:
            return operation()
        except FailingFast:
            raise
        except LedgerUnavailable:
            if attempt == attempts - 1:
                raise
            time.sleep(first_wait_s * 3**attempt)
    raise AssertionError("unreachable")


def _new_id() -> str:
    """A decision's id: 128 random bits as 32 hex digits (uuid4's own source, without building a UUID)."""
    return os.urandom(16).hex()


def _held(base: Decision, **changes: Any) -> Decision:
    """`base` with `changes` (fields of Decision): dataclasses.replace without its walk over the
    fields nor a second run of the frozen __init__, which cost 4× the copy for a record made on
    every decision. Decision has no __post_init__ to skip."""
    held = object.__new__(Decision)
    held.__dict__.update(base.__dict__)
    held.__dict__.update(changes)
    return held


def _routed(decision: Decision) -> Decision:
    """The decision, logged at DEBUG (the `omniroute` logger)."""
    if logger.isEnabledFor(logging.DEBUG):
        name = decision.chosen
        logger.debug(
            "routed to %s in scope %r: λ %.4g, predicted quality %.3f, estimated %.6g USD, reserved %.6g USD "
            "(cap %d output tokens), attempt %d", name, decision.scope, decision.lam, decision.quality[name],
            decision.cost[name], decision.reserved, decision.output_cap or 0, decision.attempt,
        )
    return decision


def _overrun(decision: Decision, cost: float, before: Sequence[ScopeState]) -> float:
    """USD of a committed cost that no reservation covered: beyond the decision's own hold, or —
    when the hold had lapsed before the commit — what took a scope (in `before`, its books just
    before the commit) over its budget. Exact in nano-dollars."""
    spent = to_nanos(cost)
    over = spent - to_nanos(decision.reserved)
    for state in before:
        budget, committed = to_nanos(state.budget.usd), to_nanos(state.committed)
        over = max(over, max(0, committed + spent - budget) - max(0, committed - budget))
    return to_usd(max(0, over))


def _refusal(
    base: Decision, order: Sequence[str], worst: Mapping[str, float], states: Sequence[ScopeState]
) -> BudgetExceeded:
    """The BudgetExceeded for a request none of whose feasible candidates fits: which scope, why, what to do."""
    cheapest = min(order, key=lambda n: worst[n])
    tight = min(states, key=lambda s: (s.remaining, -s.overdrawn))
    cap = base.output_caps[cheapest]
    overdrawn = tight.overdrawn
    if overdrawn > 0:
        state = f"is overdrawn by {overdrawn:.6g} USD"
        hint = (f" It refuses paid calls until it is within budget again: raise the budget of {tight.scope!r}"
                " or wait for its next period.")
    else:
        state = f"has {tight.remaining:.6g} USD left"
        if tight.reserved > 0:  # concurrent calls hold it: not spent, and back when they settle
            state += f" besides {tight.reserved:.6g} USD held for calls in flight until they settle"
        hint = (f" Pass a smaller max_tokens= to lower the worst case, or raise the budget of {tight.scope!r}."
                if cap > 1 else f" Raise the budget of {tight.scope!r}.")
    return BudgetExceeded(
        f"no candidate fits the budget of scope {tight.scope!r}, which {state}: the cheapest feasible call "
        f"({cheapest}) may cost up to {worst[cheapest]:.6g} USD — {base.input_tokens[cheapest]} input tokens "
        f"plus its full output allowance of {cap} tokens, reserved before the call.{hint}",
        scope=tight.scope, remaining=tight.remaining, worst_case_usd=worst[cheapest], output_tokens=cap,
        model=cheapest,
    )
