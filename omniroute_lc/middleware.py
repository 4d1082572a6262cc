"""OmniRouteMiddleware: every model call of a LangChain agent, routed by ChatOmniRoute under a budget."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

try:
    from langchain.agents.middleware import AgentMiddleware, ModelRequest, ModelResponse
except ImportError as error:  # langchain-core, all the rest of the adapter needs, has no agents
    raise ImportError("OmniRouteMiddleware needs the langchain package: pip install 'omniroute[agents]'") from error

from .chat_model import ChatOmniRoute

__all__ = ["OmniRouteMiddleware", "Scope"]

logger = logging.getLogger("omniroute")

#: Picks the budget scope of one model call from the agent's request (its state, its runtime's
#: context); None leaves it to the run config, as for any ChatOmniRoute call.
Scope = Callable[[ModelRequest], str | None]


class OmniRouteMiddleware(AgentMiddleware):
    """An agent middleware that answers each model call of `create_agent` with a ChatOmniRoute.

    Every model call — each step of the tool loop, the structured answer — goes to the candidate
    the router chooses for it, under the budget of the call's scope:

    - `scope(request)`, when given and not None (e.g. the user in the agent's context:
      `scope=lambda r: f"acme/{r.runtime.context.user_id}"`);
    - else the run config, as ChatOmniRoute reads it: `configurable["session_id"]`, then the
      agent's `thread_id`, so an agent with a checkpointer budgets per thread by default.

    The request keeps its tools, tool choice, `response_format` (tool strategy, and provider
    strategy in each candidate's own JSON schema mode) and model settings: the agent binds them
    to the routed model as to any chat model, and `stream_mode="messages"` streams its tokens.
    Whatever model the request carried is replaced, so the agent's `model=` is a placeholder
    (the ChatOmniRoute itself will do) and OmniRoute's fallbacks stand in for ModelFallbackMiddleware.
    Models that other middleware call themselves (a summarizer's, a tool selector's) are theirs:
    give them the ChatOmniRoute too to route and budget those calls.

    A call the scope's budget cannot afford raises ChatOmniRoute's `BudgetExceeded` out of the
    agent's `invoke` / `stream` (nothing is charged for it; a checkpointer keeps the steps before).
    """

    def __init__(self, chat: ChatOmniRoute | None = None, *, scope: Scope | None = None, **options: Any) -> None:
        """Route through `chat`, or a ChatOmniRoute built from `options` (candidates=, router=, budget=, ...)."""
        super().__init__()
        if chat is not None and options:
            raise TypeError(f"give a ChatOmniRoute or its arguments, not both (got {sorted(options)})")
        self.chat = chat if chat is not None else ChatOmniRoute(**options)
        self.scope = scope

    def _routed(self, request: ModelRequest) -> ModelRequest:
        session = self.scope(request) if self.scope is not None else None
        logger.debug("agent model call charged to scope %s", session or "<from the run config>")
        return request.override(model=self.chat if session is None else self.chat.for_session(session))

    def wrap_model_call(
        self, request: ModelRequest, handler: Callable[[ModelRequest], ModelResponse]
    ) -> ModelResponse:
        """The agent's model call, answered by the candidate OmniRoute chooses."""
        return handler(self._routed(request))

    async def awrap_model_call(
        self, request: ModelRequest, handler: Callable[[ModelRequest], Awaitable[ModelResponse]]
    ) -> ModelResponse:
        """The async form of wrap_model_call."""
        return await handler(self._routed(request))
