"""Calling the chosen candidate with fallbacks: the one loop both framework adapters use."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

from .candidates import Candidate
from .router import Decision, Router

__all__ = ["call_with_fallbacks", "acall_with_fallbacks"]

T = TypeVar("T")


def call_with_fallbacks(
    router: Router, decision: Decision, call: Callable[[Candidate, Decision], T]
) -> tuple[T, Decision]:
    """Run `call` on the chosen candidate; on an exception release and retry the next-best.

    Returns the result and the decision that produced it (still reserved: the caller settles it
    with the usage it reads from the result). Re-raises the last real error when out of tries;
    a cancellation or interrupt releases the reservation and propagates at once.
    """
    while True:
        try:
            return call(router.candidate(decision.chosen), decision), decision
        except Exception as error:
            following = router.reroute(decision, error)
            if following is None:
                raise
            decision = following
        except BaseException:
            router.release(decision)
            raise


async def acall_with_fallbacks(
    router: Router, decision: Decision, call: Callable[[Candidate, Decision], Awaitable[T]]
) -> tuple[T, Decision]:
    """The async form of call_with_fallbacks (same decisions, same ledger calls)."""
    while True:
        try:
            return await call(router.candidate(decision.chosen), decision), decision
        except Exception as error:
            following = router.reroute(decision, error)
            if following is None:
                raise
            decision = following
        except BaseException:
            router.release(decision)
            raise
