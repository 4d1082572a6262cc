"""The contract every ledger store keeps, and the argument checks they all share.

The public methods that take money, scope names or times check and convert them here, once, then
call the store's hook (`_set_budget`, `_reserve`, `_commit`, `_adjust_lambda`), which receives
valid arguments with money in whole nano-dollars: every store refuses the same input the same way.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from ..budget import (
    Budget,
    ScopeState,
    check_idle_ttl,
    check_reservation,
    check_reservation_id,
    scope_chain,
    to_nanos,
)
from ..errors import BudgetExceeded, LedgerUnavailable, UnknownReservation, UnknownScope

__all__ = [
    "LedgerStore", "Committed", "Hold", "Pace", "Outage", "FailingFast", "DEFAULT_UNREACHABLE_COOLDOWN_S",
    "books_around", "move_lambdas", "paced",
    "no_budget", "id_taken", "unknown_reservation", "refuse", "refusal",
]

logger = logging.getLogger("omniroute")

#: θ, a scope's new dual variable, from its books just before a commit (None: leave it as it is).
Pace = Callable[[ScopeState], "float | None"]

#: One hold for `LedgerStore.reserve_many`: (reservation id, scopes, amount in USD, ttl_s).
Hold = tuple[str, Sequence[str], float, float]

#: Seconds a server ledger (Redis, PostgreSQL) found unreachable is not tried again (see Outage).
DEFAULT_UNREACHABLE_COOLDOWN_S = 1.0
#: The longest cool-down, however often and however slowly the server failed.
MAX_UNREACHABLE_COOLDOWN_S = 30.0


class FailingFast(LedgerUnavailable):
    """LedgerUnavailable raised without trying the ledger, which was found unreachable moments before."""


class Outage:
    """Whether a server ledger was just found unreachable, so that calls fail at once for a while.

    Once a call has spent every retry on an unreachable ledger (a refused or dropped connection, a
    timeout, a busy or read-only server), the calls of the cool-down that follows raise
    FailingFast — a LedgerUnavailable, so commits are kept to retry and decisions refused as
    before — without waiting out the same timeouts and retries one by one. Those waits, in
    routing's two worker threads, would hold every async call in the process behind them, other
    routers' included. After the cool-down one call tries the ledger while the others go on
    failing fast; one that reaches it ends the outage. The cool-down is `cooldown_s`, or as long
    as the failed attempt took if longer (a hung server costs each attempt its timeouts), doubled
    at each failure in a row, at most MAX_UNREACHABLE_COOLDOWN_S. `cooldown_s=0` tries every call.
    A call that began before the latest success or failure says nothing of the ledger now: its
    outcome is ignored.
    """

    def __init__(self, where: str, cooldown_s: float = DEFAULT_UNREACHABLE_COOLDOWN_S) -> None:
        if isinstance(cooldown_s, bool) or not isinstance(cooldown_s, (int, float)) \
                or not 0 <= cooldown_s < math.inf:
            raise ValueError(f"unreachable_cooldown_s must be a number of seconds >= 0, got {cooldown_s!r}")
        self.where = where
        self.cooldown_s = float(cooldown_s)
        self._lock = threading.Lock()
        self._error: LedgerUnavailable | None = None
        self._found = self._until = 0.0  # when the outage was found, and when a call may try again
        self._failures = 0  # failed attempts in a row
        self._trial: object | None = None  # the one call trying the ledger after the cool-down
        self._settled = -math.inf  # when the latest news (a success or a failure) was recorded

    @contextmanager
    def attempt(self, contention: Callable[[LedgerUnavailable], bool] = lambda error: False) -> Iterator[None]:
        """Around one call to the server: FailingFast at once during an outage's cool-down (or while
        another call tries the server after it). A LedgerUnavailable raised inside starts or extends
        the outage — unless `contention(error)` says the server did answer (a lock timed out) — and
        a success or another error ends it (the server answered)."""
        started, call = time.monotonic(), object()
        with self._lock:
            if self._error is not None:
                ago = started - self._found
                if started < self._until:
                    raise FailingFast(f"{self._error} (found {ago:.1f} s ago; not tried again for "
                                      f"{self._until - started:.1f} s: calls meanwhile fail at once)")
                if self._trial is not None:
                    raise FailingFast(f"{self._error} (found {ago:.1f} s ago; another call is trying it now: "
                                      "calls meanwhile fail at once)")
                self._trial = call
        news: LedgerUnavailable | bool | None = True  # True: the server answered; None: no news
        try:
            yield
        except LedgerUnavailable as error:
            news = True if contention(error) else error
            raise
        except Exception:
            raise  # the server answered, with an error of the call's own
        except BaseException:
            news = None  # interrupted (a cancellation): nothing learnt about the server
            raise
        finally:
            self._settle(started, call, news)

    def _settle(self, started: float, call: object, news: LedgerUnavailable | bool | None) -> None:
        now = time.monotonic()
        with self._lock:
            if self._trial is call:
                self._trial = None
            if news is None or started < self._settled:
                return  # nothing learnt, or news from before the latest: stale
            self._settled = now
            if news is True:
                if self._error is not None:
                    logger.info("the ledger at %s answers again", self.where)
                self._error, self._failures = None, 0
                return
            assert isinstance(news, LedgerUnavailable)
            took = now - started
            if self._error is None:
                logger.warning("%s; calls fail at once for the next %.3g s, then it is tried again", news,
                               max(self.cooldown_s, took) if self.cooldown_s else 0)
                self._found = now
            self._failures += 1
            cooldown = max(self.cooldown_s, took) * 2 ** min(self._failures - 1, 16) if self.cooldown_s else 0.0
            self._error, self._until = news, now + min(cooldown, MAX_UNREACHABLE_COOLDOWN_S)


@dataclass(frozen=True)
class Committed:
    """What `LedgerStore.commit_books` did: whether it charged, and the books around the commit.

    `before` and `after` hold the books of the scopes asked about that have a budget, in the order
    asked: just before the commit (rolled into the current period) and just after it, λ moved."""

    charged: bool
    before: list[ScopeState]
    after: list[ScopeState]


class LedgerStore(ABC):
    """Where budgets live. Every method is atomic; reserve checks and charges all scopes together.

    A reservation is open until committed, released, or `ttl_s` has passed; then it lapses and
    its money returns to the budget. Committing a lapsed or released reservation still records
    what was spent, once.

    **Finished reservations, and how long a repeat is recognised.** The ledger remembers each
    finished (committed, released or lapsed) reservation so that a repeated commit charges once —
    a retry after a lost reply, a replay of a kept commit (`shared_core.pending`) — and a late
    commit of a released or lapsed one charges once. It remembers one until `retention_s` seconds
    after its last change (its end, or its late commit), or until `max_finished` reservations that
    finished after it are remembered, whichever comes first: never more than `max_finished`
    (memory:, SQLite and Redis exactly; PostgreSQL give or take the calls running at that moment),
    the oldest forgotten first, so what a ledger keeps does not grow with traffic. A repeat is
    therefore recognised within min(`retention_s`, the time in which `max_finished` later
    reservations finish); with the defaults (a day, 100,000) that is a day below 1.16 finished
    reservations per second, 1,000 s at 100 per second, 100 s at 1,000. All processes sharing
    a ledger should open it with the same two settings. A commit of a forgotten id raises
    UnknownReservation (a KeyError), as for an id never made; `remembered_since` tells which
    of the two it can still be, and `shared_core.pending.record_anew` records such a commit once.

    A store implements the hooks `_set_budget`, `_reserve`, `_commit` and `_adjust_lambda`, which
    get the arguments checked, and `states`, `scopes`, `release`, `open_reservations` and
    `remembered_since`; it may override `_commit_books` to make a commit and the reads around it
    one round trip.
    """

    def set_budget(
        self, scope: str, budget: Budget, *, reset: bool = False, only_if_absent: bool = False,
        idle_ttl_s: float | None = None,
    ) -> bool:
        """Create the scope or change its budget, keeping what it has spent (see the rule below).

        A new scope starts with no spend, its period (when `budget.period_s` is set) starting now.
        For a scope that already has a budget, the rule is, in one atomic step:

        1. The books first roll over under the budget they had: a period that has ended by now
           ends as it would have anyway, and its spend no longer counts.
        2. `reset=True` zeroes the spend of the current period — committed money, request,
           release and lapse counts, spend per model — and starts a new period now.
        3. Otherwise, when the period changes (none → some, some → none, or another length),
           the current period is re-anchored to start now, and what was committed in the period
           that was current stays counted in it: $9.99 spent of $10 stays $9.99 spent when
           `period_s=86400` is added or a day shortened to an hour. Only `reset=True`, or the
           new period's own roll-over (`period_s` after now), zeroes it.
        4. When the period is unchanged, it keeps its start and its spend.

        Money held by open reservations stays held, and λ is kept, whatever is asked.

        `only_if_absent=True` creates the scope only if it has no budget and otherwise changes
        nothing: a default budget set this way never overwrites an explicit one set before it,
        even by another process an instant earlier.

        `idle_ttl_s` (seconds, at least MIN_IDLE_TTL_S) makes the scope forgettable: once no
        reservation, commit, release or budget change has touched it for that long and it holds
        no money, the ledger deletes its books, so scopes made per session do not pile up. A
        forgotten scope is a scope without a budget (its next budget starts with no spend); its
        enclosing scopes keep everything it spent. Commits, releases and lapses of holds that
        named it still go to those enclosing scopes. None (the default) keeps the scope until
        it is deleted; setting a budget replaces the scope's `idle_ttl_s` with the one given.
        Expiry runs inside later ledger operations, at most IDLE_BATCH scopes each.

        Returns True when the budget was set, False when `only_if_absent` found one already.
        ValueError for a malformed scope or `idle_ttl_s`.
        """
        scope_chain(scope)
        return self._set_budget(scope, budget, reset, only_if_absent, check_idle_ttl(idle_ttl_s))

    @abstractmethod
    def _set_budget(
        self, scope: str, budget: Budget, reset: bool, only_if_absent: bool, idle_ttl_s: float | None
    ) -> bool:
        """set_budget, its scope name and `idle_ttl_s` checked."""

    @abstractmethod
    def states(self, scopes: Sequence[str]) -> list[ScopeState | None]:
        """Each scope's books (None for a scope without a budget), read together in one step."""

    def state(self, scope: str) -> ScopeState | None:
        """The scope's books, or None when it has no budget."""
        return self.states([scope])[0]

    @abstractmethod
    def scopes(self) -> list[str]:
        """Every scope that has a budget, sorted."""

    def reserve(self, reservation_id: str, scopes: Sequence[str], amount: float, ttl_s: float) -> None:
        """Hold `amount` in every scope, or raise BudgetExceeded and hold nothing.

        Repeating an open reservation with the same scopes and amount does nothing (a retry
        after a lost reply); reusing its id otherwise raises ValueError.
        """
        nanos = to_nanos(amount, "reservation amount")
        chain = check_reservation(scopes, ttl_s)
        self._reserve(check_reservation_id(reservation_id), chain, nanos, float(ttl_s))

    @abstractmethod
    def _reserve(self, reservation_id: str, chain: tuple[str, ...], nanos: int, ttl_s: float) -> None:
        """reserve, its scopes distinct and non-empty, `nanos` a valid amount, `ttl_s` positive."""

    def reserve_many(self, holds: Sequence[Hold]) -> list[Exception | None]:
        """`reserve` for each hold, in order, each made or refused on its own: per hold None when it
        was made, else the error `reserve` would have raised for it (BudgetExceeded, UnknownScope,
        ValueError for a reused id, LedgerUnavailable, or whatever else the ledger answered for it).

        What a batch of decisions needs (shared_core.offload): Redis sends them all in one pipelined
        round trip instead of one each. Every hold is checked first: a malformed one raises here,
        before any is made. Once the ledger is unreachable the holds not yet sent are not tried
        and get that error too; one whose reply was lost may still hold its money until its TTL,
        as after a lost reply to `reserve`.
        """
        checked = [(check_reservation_id(rid), check_reservation(scopes, ttl_s),
                    to_nanos(amount, "reservation amount"), float(ttl_s)) for rid, scopes, amount, ttl_s in holds]
        return self._reserve_many(checked)

    def _reserve_many(self, holds: list[tuple[str, tuple[str, ...], int, float]]) -> list[Exception | None]:
        """reserve_many, its holds checked (nanos); by default one `_reserve` after another."""
        outcomes: list[Exception | None] = []
        for rid, chain, nanos, ttl_s in holds:
            try:
                self._reserve(rid, chain, nanos, ttl_s)
            except LedgerUnavailable as error:  # the rest would wait out the same timeouts, one by one
                return outcomes + [error] * (len(holds) - len(outcomes))
            except Exception as error:  # this hold's own (even one unforeseen): the holds made stand
                outcomes.append(error)
            else:
                outcomes.append(None)
        return outcomes

    def commit(self, reservation_id: str, actual: float, model: str | None = None) -> bool:
        """Turn a reservation into spend of `actual`; False when that id was already committed."""
        return self._commit(check_reservation_id(reservation_id), to_nanos(actual, "actual cost"), model)

    @abstractmethod
    def _commit(self, reservation_id: str, nanos: int, model: str | None) -> bool:
        """commit, `nanos` a valid amount."""

    def commit_books(
        self, reservation_id: str, actual: float, model: str | None = None, *,
        scopes: Sequence[str], pace: Pace | None = None,
    ) -> Committed:
        """commit(), reading the books of `scopes` just before and just after it, and — when it
        charged — storing `pace(books before)` as each scope's λ (θ; None leaves it).

        What a settled call needs from the ledger in one step: the books before decide the
        overrun and the pacing update, the books after say what is left. Memory and SQLite do it in
        one atomic step, Redis in one script (λ too, when `pace` is a `pacing.PaceUpdate` of a
        DualPacer; another pace's λ in a second), PostgreSQL in one pipelined round trip (λ after
        it); the default makes the four calls one after another. `pace` runs inside
        the step, under the store's lock or transaction: it must not call the ledger. Once the
        money is committed, a λ that cannot be stored (scope forgotten since, ledger unreachable)
        is left as it was, with a WARNING for the latter, never an error. UnknownReservation as
        commit; ValueError for a bad amount or a θ that is not finite (memory and SQLite then
        commit nothing).
        """
        chain = tuple(scopes)
        return self._commit_books(check_reservation_id(reservation_id), to_nanos(actual, "actual cost"), model,
                                  chain, pace)

    def _commit_books(
        self, reservation_id: str, nanos: int, model: str | None, scopes: tuple[str, ...], pace: Pace | None
    ) -> Committed:
        """commit_books, its arguments checked: by default states, commit, adjust_lambda, states."""
        return books_around(self, lambda: self._commit(reservation_id, nanos, model), scopes, pace)

    def release(self, reservation_id: str) -> bool:
        """Drop a reservation without spending; False when it was not open."""
        return self._release(check_reservation_id(reservation_id))

    @abstractmethod
    def _release(self, reservation_id: str) -> bool:
        """release, `reservation_id` a valid id."""

    def adjust_lambda(self, scope: str, value: float) -> None:
        """Store the scope's dual variable."""
        if not math.isfinite(value):
            raise ValueError(f"lambda must be finite, got {value}")
        self._adjust_lambda(scope, float(value))

    @abstractmethod
    def _adjust_lambda(self, scope: str, value: float) -> None:
        """adjust_lambda, `value` finite; UnknownScope when the scope has no budget."""

    @abstractmethod
    def open_reservations(self) -> int:
        """How many reservations are open (after expiring stale ones)."""

    def remembered_since(self) -> float:
        """The time (the ledger's clock, Unix seconds) after which every reservation that finished is still
        remembered: a commit that reached the ledger after it is recognised when repeated, and an id it
        does not know was never committed after it. The oldest remembered end when the ledger remembers
        any, else `retention_s` ago; math.inf from a store that cannot tell (every forgotten id is
        then taken as possibly committed)."""
        return math.inf

    @property
    def url(self) -> str:
        """Which ledger this is, as a URL without credentials (open_store's form where it has one).

        Kept commits name their ledger by it (`shared_core.pending`): two stores with one URL are
        one ledger. A store of your own should return something unique to the ledger it reaches."""
        return f"{type(self).__module__}.{type(self).__qualname__}"

    def report(self, scope: str | None = None) -> list[ScopeState]:
        """The books of `scope` and every scope nested in it (all scopes when None), sorted."""
        if scope is not None:
            scope_chain(scope)
        names = [s for s in self.scopes() if scope is None or s == scope or s.startswith(scope + "/")]
        return [st for st in self.states(names) if st is not None]

    def close(self) -> None:  # noqa: B027 (a no-op default: stores without connections need not override it)
        """Let go of connections and files (the store must not be used afterwards)."""


def books_around(store: LedgerStore, commit: Callable[[], bool], scopes: Sequence[str], pace: Pace | None) -> Committed:
    """`commit()` (True when it charged) with the books of `scopes` read before and after it and λ
    moved by `pace`, each a ledger call of its own: commit_books for a store without one step."""
    before = [s for s in store.states(scopes) if s is not None]
    charged = commit()
    if charged:
        move_lambdas(store, before, pace)
    return Committed(charged, before, [s for s in store.states(scopes) if s is not None])


def move_lambdas(
    store: LedgerStore, before: Sequence[ScopeState], pace: Pace | None,
    write: Callable[[dict[str, float]], Sequence[Any]] | None = None,
) -> dict[str, float]:
    """After a commit that charged, store each scope's θ = `pace(its books before)`; the θ stored.

    `write(thetas)` stores them all and gives a truthy flag per scope (False for one forgotten
    since); by default each goes through `adjust_lambda`. The commit has happened by then, so
    nothing here may read as a failed commit — a caller would record the money again, or retry
    and lose the overrun: a scope gone (idle) is skipped, and a ledger unreachable for λ leaves λ
    where it was, with a WARNING. λ is a price, not money; the next commit moves it again."""
    thetas = {state.scope: theta for state, theta in zip(before, paced(before, pace), strict=True)
              if theta is not None}
    if not thetas:
        return {}
    try:
        flags = _adjust_each(store, thetas) if write is None else write(thetas)
    except LedgerUnavailable as error:
        logger.warning("committed, but could not store λ for %s (%s); it keeps its old value until the next commit",
                       ", ".join(repr(s) for s in thetas), error)
        return {}
    return {scope: theta for (scope, theta), ok in zip(thetas.items(), flags, strict=True) if ok}


def _adjust_each(store: LedgerStore, thetas: dict[str, float]) -> list[bool]:
    flags = []
    for scope, theta in thetas.items():
        try:
            store.adjust_lambda(scope, theta)
        except UnknownScope:
            flags.append(False)
        else:
            flags.append(True)
    return flags


def paced(before: Sequence[ScopeState], pace: Pace | None) -> list[float | None]:
    """Each scope's new λ from its books before a commit (None: unchanged, or the same as before);
    ValueError for a θ that is not finite. Stores that commit in one step call it before they change
    anything."""
    thetas = [None if pace is None else pace(state) for state in before]
    for theta in thetas:
        if theta is not None and not math.isfinite(theta):
            raise ValueError(f"lambda must be finite, got {theta}")
    # A λ the pacer leaves where it was (at 0 while spend runs under budget) is not written again:
    # for Redis and PostgreSQL that is a round trip saved on most commits.
    return [None if t is None or float(t) == s.lam else float(t) for s, t in zip(before, thetas, strict=True)]


def scope_names(scopes: Iterable[str]) -> list[str]:
    """The scope names a `states` call was given, as a list (any iterable is read once); TypeError
    for a single str or bytes, which would otherwise be read as one scope per character (or byte)."""
    if isinstance(scopes, (str, bytes)):
        raise TypeError(f"scopes must be a sequence of scope names, not the {type(scopes).__name__} {scopes!r}; "
                        "wrap a name in a list")
    return list(scopes)


# The errors every store raises, worded once.
def no_budget(scope: str) -> UnknownScope:
    """The error for a scope named in an operation that has no budget."""
    return UnknownScope(f"scope {scope!r} has no budget")


def id_taken(reservation_id: str) -> ValueError:
    """The error for a reservation id used before, other than by a retry of its open reservation."""
    return ValueError(f"reservation id {reservation_id!r} is already used")


def unknown_reservation(reservation_id: str) -> UnknownReservation:
    """The error for committing an id the ledger never reserved or has forgotten."""
    return UnknownReservation(f"unknown reservation {reservation_id!r} (never made, or forgotten after retention)")


def refuse(reservation_id: str, nanos: int, outcome: Sequence[str]) -> None:
    """Raise what a server-side reserve's reply means; nothing for ['ok'].

    The Redis script and the PostgreSQL function answer alike: ['used'], ['unknown', scope] or
    ['exceeded', scope, nano-dollars left there]."""
    if outcome[0] == "used":
        raise id_taken(reservation_id)
    if outcome[0] == "unknown":
        raise no_budget(outcome[1])
    if outcome[0] == "exceeded":
        raise BudgetExceeded.no_room(outcome[1], nanos, int(outcome[2]))


def refusal(reservation_id: str, nanos: int, outcome: Sequence[str]) -> Exception | None:
    """What `refuse` would raise for a reply (None for ['ok']): one hold's outcome in `reserve_many`."""
    try:
        refuse(reservation_id, nanos, outcome)
    except Exception as error:
        return error
    return None
