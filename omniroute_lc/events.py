"""Failed attempts as LangChain callback events, so handlers and `astream_events` see every fallback."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.callbacks.manager import ahandle_event, handle_event
from langchain_core.runnables import RunnableConfig
from langchain_core.runnables.config import get_async_callback_manager_for_config, get_callback_manager_for_config

from shared_core.fallbacks import Attempt

__all__ = ["FALLBACK_EVENT", "REPORTER_KWARG", "config_reporter", "failure_reporter"]

#: The hook keyword that carries a stream's reporter: LangChain does not hand `_stream` its run manager.
REPORTER_KWARG = "omniroute_on_failure"

#: The custom event each failed attempt dispatches: `on_custom_event(FALLBACK_EVENT, data, run_id=...)`
#: with data {"model", "kind", "error", "message", "charged_usd"} (see shared_core.fallbacks.Attempt.to_dict).
FALLBACK_EVENT = "omniroute_fallback"


def failure_reporter(
    run_manager: CallbackManagerForLLMRun | AsyncCallbackManagerForLLMRun | None,
) -> Callable[[Attempt], Any] | None:
    """The fallback loop's `on_failure` for a LangChain run: a custom event on the router's run."""
    if run_manager is None:
        return None

    def kwargs() -> dict[str, Any]:
        return {"run_id": run_manager.run_id, "tags": run_manager.tags, "metadata": run_manager.metadata}

    if isinstance(run_manager, AsyncCallbackManagerForLLMRun):
        def areport(attempt: Attempt) -> Awaitable[None]:
            return ahandle_event(run_manager.handlers, "on_custom_event", "ignore_custom_event",
                                 FALLBACK_EVENT, attempt.to_dict(), **kwargs())
        return areport

    def report(attempt: Attempt) -> None:
        handle_event(run_manager.handlers, "on_custom_event", "ignore_custom_event",
                     FALLBACK_EVENT, attempt.to_dict(), **kwargs())
    return report


def config_reporter(config: RunnableConfig, run_id: Any, *, asynchronous: bool) -> Callable[[Attempt], Any]:
    """The fallback loop's `on_failure` for a stream whose run will have `run_id`, from its config.

    The callback manager is built only when an attempt fails: most calls never need it.
    """
    if asynchronous:
        def areport(attempt: Attempt) -> Awaitable[None]:
            manager = get_async_callback_manager_for_config(config)
            return ahandle_event(manager.handlers, "on_custom_event", "ignore_custom_event", FALLBACK_EVENT,
                                 attempt.to_dict(), run_id=run_id, tags=manager.tags, metadata=manager.metadata)
        return areport

    def report(attempt: Attempt) -> None:
        manager = get_callback_manager_for_config(config)
        handle_event(manager.handlers, "on_custom_event", "ignore_custom_event", FALLBACK_EVENT,
                     attempt.to_dict(), run_id=run_id, tags=manager.tags, metadata=manager.metadata)
    return report
