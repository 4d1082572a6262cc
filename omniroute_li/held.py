"""A selection's reservation, held until the chosen engine's own LLM call takes over.

RouterQueryEngine asks the selector, then queries the chosen engine in the same thread or task:
the selection's decision waits in a context variable for that engine's first routed call, which
releases it as it reserves its own (the real prompt, retrieved context included). A selection no
call claims is released by the next selection in the same context, or lapses with its TTL.
"""

from __future__ import annotations

from contextvars import ContextVar

from shared_core.router import Decision, Router

__all__ = ["claim", "hold"]

_HELD: ContextVar[tuple[Router, Decision] | None] = ContextVar("omniroute_held_selection", default=None)


def hold(router: Router, decision: Decision) -> None:
    """Keep `decision`'s reservation for the engine call that follows (releasing an unclaimed one)."""
    previous = _HELD.get()
    if previous is not None:
        previous[0].release(previous[1])
    _HELD.set((router, decision))


def claim(router: Router, model: str | None) -> None:
    """Release the held selection if this call (on `router`, pinned to `model`) is the engine's."""
    held = _HELD.get()
    if held is not None and held[0] is router and held[1].chosen == model:
        router.release(held[1])
        _HELD.set(None)
