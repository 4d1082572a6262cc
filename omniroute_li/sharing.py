"""How an OmniRouteLLM's router crosses a pickle: the same live router in this process, rebuilt on
the same ledger in another.

A Router holds locks, a ledger connection and the candidates' framework models, so it is never
pickled as it is. It pickles as its identity (a token) and a recipe: its constructor's arguments
(candidates with a copy of their LLMs, fitted predictors, pacer, settings) and how to reopen its
ledger. Unpickling in a process that holds the router by that token returns that live router, so
the copy charges the same ledger. Elsewhere the router is rebuilt once per process and token: a
SQLite file or a Redis server is reopened, so budgets hold across processes; a memory:// ledger
(or any store that cannot be reopened) lives only in the process that made it, so the rebuilt
router's ledger refuses every operation with `LedgerNotShared`, which says how to share it.
Unpickling itself never raises: a worker that fails to unpickle its task hangs a
`multiprocessing.Pool`, so the error waits for the first call.
"""

from __future__ import annotations

import inspect
import os
import threading
import uuid
import weakref
from collections.abc import Sequence
from typing import Any
from urllib.parse import quote

from pydantic import BaseModel

from shared_core.budget import Budget, LedgerStore, MemoryStore, ScopeState
from shared_core.errors import OmniRouteError
from shared_core.router import Router
from shared_core.stores import SQLiteStore

__all__ = ["LedgerNotShared", "RouterRef", "share_router"]

_HOW = (
    "give the OmniRouteLLM a ledger every process shares, store=\"sqlite:///ledger.db\" (one host) or "
    "store=\"redis://host:6379/0\" (many hosts), or build the OmniRouteLLM in each worker"
)


class LedgerNotShared(OmniRouteError):
    """The OmniRouteLLM was unpickled in another process, where its ledger cannot be reached.

    Not a RuntimeError (as LedgerUnavailable is): LlamaIndex's `asyncio_run`, which extractors in
    an IngestionPipeline worker go through, catches RuntimeError and replaces its message.
    """


class _Registry:
    """Live routers by token, in this process only (forgotten in a forked child)."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self._pid = os.getpid()
        self._routers: weakref.WeakValueDictionary[str, Any] = weakref.WeakValueDictionary()
        self._tokens: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()

    def _fresh(self) -> None:
        if self._pid != os.getpid():  # a forked child's copies are not the parent's live routers
            self._routers, self._tokens = weakref.WeakValueDictionary(), weakref.WeakKeyDictionary()
            self._pid = os.getpid()

    def token(self, router: Router) -> str:
        with self.lock:
            self._fresh()
            token = self._tokens.get(router)
            if token is None:
                token = uuid.uuid4().hex
                self._tokens[router] = token
                self._routers[token] = router
            return token

    def get(self, token: str) -> Any:
        with self.lock:
            self._fresh()
            return self._routers.get(token)

    def put(self, token: str, router: Any) -> None:
        with self.lock:
            self._fresh()
            self._routers[token] = router
            self._tokens[router] = token


_REGISTRY = _Registry()


def share_router(router: Router, memo: dict[int, Any]) -> None:
    """Make a deep copy keep `router` (its ledger, models and locks are shared state, not copied)."""
    memo.setdefault(id(router), router)


class RouterRef:
    """Stands for a router in a pickle: unpickles as the live router here, a rebuilt one elsewhere."""

    def __init__(self, router: Router) -> None:
        self.router = router

    def __reduce__(self) -> tuple[Any, tuple[str, dict[str, Any]]]:
        return _router_from, (_REGISTRY.token(self.router), _recipe(self.router))


# ---------------------------------------------------------------------------- pickling
def _portable(value: Any) -> Any:
    """A copy of a framework model to pickle: LlamaIndex's `__getstate__` deletes what it cannot
    pickle from the object's own `__dict__`, so it must be a copy, never the candidate's LLM."""
    return value.model_copy() if isinstance(value, BaseModel) else value


def _recipe(router: Router) -> dict[str, Any]:
    settings: dict[str, Any] = {}
    for name, parameter in inspect.signature(type(router)).parameters.items():
        if name in ("candidates", "store") or parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
            continue
        if not hasattr(router, name):
            raise TypeError(f"cannot pickle the OmniRouteLLM's router: {type(router).__name__} keeps no {name!r}")
        settings[name] = _portable(getattr(router, name))
    candidates = [c.model_copy(update={"model": _portable(c.model)}) for c in router.candidates]
    return {"cls": type(router), "candidates": candidates, "settings": settings, "ledger": _ledger_recipe(router.store)}


def _options(store: Any, *names: str) -> dict[str, Any]:
    """The store's own settings (kept in `_<name>` attributes) that it was opened with, where it has them."""
    return {name: getattr(store, f"_{name}") for name in names if hasattr(store, f"_{name}")}


def _ledger_recipe(store: LedgerStore) -> tuple[Any, ...]:
    """How another process reopens `store`: ("sqlite", path, options), ("redis", url, options), or
    ("local", what, pid) for a ledger that lives in process `pid` only."""
    if isinstance(store, SQLiteStore):  # an absolute path: the worker may run elsewhere
        return ("sqlite", os.path.abspath(store.path),
                _options(store, "synchronous", "busy_timeout_s", "retention_s", "max_finished", "clock"))
    try:
        from shared_core.stores.redis import RedisStore
    except ImportError:  # the redis extra is not installed, so this is no Redis ledger
        RedisStore = None  # noqa: N806
    if RedisStore is not None and isinstance(store, RedisStore):
        options = {"prefix": store.prefix, **_options(store, "clock", "retention_s", "max_finished")}
        if "retention_s" in options:
            options["retention_s"] = float(options["retention_s"])  # kept as its repr for the Lua scripts
        return ("redis", _redis_url(store.client), options)
    if isinstance(store, _UnsharedLedger):  # passed on from a process that could not reach it either
        return ("local", store.what, store.pid)
    what = "memory://" if isinstance(store, MemoryStore) else f"a {type(store).__name__}"
    return ("local", what, os.getpid())


def _redis_url(client: Any) -> str:
    pool = client.connection_pool
    kw = pool.connection_kwargs
    user, password = kw.get("username"), kw.get("password")
    auth = ""
    if user or password:
        auth = quote(user or "", safe="") + (":" + quote(password, safe="") if password else "") + "@"
    if kw.get("path"):
        return f"unix://{auth}{kw['path']}?db={kw.get('db', 0)}"
    import redis

    scheme = "rediss" if issubclass(pool.connection_class, redis.SSLConnection) else "redis"
    return f"{scheme}://{auth}{kw.get('host', 'localhost')}:{kw.get('port', 6379)}/{kw.get('db', 0)}"


# ---------------------------------------------------------------------------- unpickling
def _router_from(token: str, recipe: dict[str, Any]) -> Any:
    """The live router known by `token` in this process, else one rebuilt from `recipe` (never raises)."""
    with _REGISTRY.lock:
        router = _REGISTRY.get(token)
        if router is None:
            try:
                router = _rebuild(recipe)
            except Exception as error:  # noqa: BLE001 - reported at the first call, see the module docstring
                router = _Unreachable(f"the OmniRouteLLM's router could not be rebuilt in process {os.getpid()} "
                                      f"({type(error).__name__}: {error})")
            _REGISTRY.put(token, router)
        return router


def _rebuild(recipe: dict[str, Any]) -> Router:
    kind, *where = recipe["ledger"]
    if kind == "sqlite":
        path, options = where
        store: LedgerStore = SQLiteStore(path, **options)
    elif kind == "redis":
        from shared_core.stores.redis import RedisStore

        url, options = where
        store = RedisStore.from_url(url, **options)
    else:
        what, pid = where
        store = _UnsharedLedger(what, pid)
    return recipe["cls"](recipe["candidates"], store=store, **recipe["settings"])


class _UnsharedLedger(LedgerStore):
    """A ledger left behind in another process: every operation raises LedgerNotShared."""

    def __init__(self, what: str, pid: int) -> None:
        self.what, self.pid = what, pid
        if pid == os.getpid():
            where = f"its router and ledger ({what}) no longer exist in this process"
        else:
            where = f"its ledger ({what}) lives in process {pid} and cannot be reached from process {os.getpid()}"
        self.why = f"this OmniRouteLLM was unpickled, but {where}, so its budgets cannot be kept: {_HOW}"

    def _refuse(self, *args: Any, **kwargs: Any) -> Any:
        raise LedgerNotShared(self.why)

    def _set_budget(  # noqa: D102 - see LedgerStore
        self, scope: str, budget: Budget, reset: bool, only_if_absent: bool, idle_ttl_s: float | None,
    ) -> bool:
        return self._refuse()

    def states(self, scopes: Sequence[str]) -> list[ScopeState | None]:  # noqa: D102
        return self._refuse()

    def scopes(self) -> list[str]:  # noqa: D102
        return self._refuse()

    def _reserve(self, reservation_id: str, chain: Sequence[str], nanos: int, ttl_s: float) -> None:  # noqa: D102
        self._refuse()

    def _commit(self, reservation_id: str, nanos: int, model: str | None) -> bool:  # noqa: D102
        return self._refuse()

    def _release(self, reservation_id: str) -> bool:  # noqa: D102
        return self._refuse()

    def _adjust_lambda(self, scope: str, value: float) -> None:  # noqa: D102
        self._refuse()

    def open_reservations(self) -> int:  # noqa: D102
        return self._refuse()


class _Unreachable:
    """Stands for a router that could not be rebuilt: any use raises LedgerNotShared saying why."""

    def __init__(self, why: str) -> None:
        self._why = why

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):  # copy, pickle and friends probe for these
            raise AttributeError(name)
        raise LedgerNotShared(self._why)

    def __repr__(self) -> str:
        return f"<unreachable router: {self._why}>"

