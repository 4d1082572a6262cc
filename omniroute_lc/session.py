"""Which budget scope a call charges: a call's own session, its binding, its run config, a default."""

from __future__ import annotations

from langchain_core.runnables import RunnableConfig

__all__ = ["CONFIGURABLE_KEYS", "METADATA_KEYS", "session_from_config", "resolve_session"]

#: Keys of `config["configurable"]` that name the session, first match wins. `thread_id` is
#: LangGraph's conversation key, so a graph with a checkpointer budgets per thread by default.
CONFIGURABLE_KEYS = ("session_id", "thread_id")

#: Keys of `config["metadata"]` that name the session (checked after the configurable keys).
METADATA_KEYS = ("session_id",)


def session_from_config(config: RunnableConfig | None) -> str | None:
    """The session a run config names: configurable session_id, thread_id, then metadata session_id."""
    if not config:
        return None
    for source, keys in ((config.get("configurable"), CONFIGURABLE_KEYS), (config.get("metadata"), METADATA_KEYS)):
        for key in keys:
            value = (source or {}).get(key)
            if value is not None:
                return str(value)
    return None


def resolve_session(
    call: str | None, pinned: str | None, config: RunnableConfig | None, default: str | None
) -> str | None:
    """The first session named by: the call (or a `.bind`), the model (`for_session`), the config, the default."""
    for session in (call, pinned, session_from_config(config), default):
        if session is not None:
            return session
    return None
