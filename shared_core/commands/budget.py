"""`omniroute budget`: show spend per scope and model in a ledger store, or set a scope's budget."""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

from ..budget import Budget, LedgerUnavailable, ScopeState, check_idle_ttl
from ..cli import error_message
from ..stores import STORE_URLS, open_store


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("budget", help="show or set budgets in a ledger store",
                       description="Inspect and change the budgets kept in a ledger store.")
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)

    show = actions.add_parser("show", help="spend per scope and model",
                              description="Print each scope's budget, spend, held money and spend per model.")
    show.add_argument("scope", nargs="?", help="show this scope and the scopes nested in it (default: all)")
    show.add_argument("--json", action="store_true", help="print JSON instead of a table")

    put = actions.add_parser(
        "set", help="create a scope or change its budget (spend so far is kept)",
        description="Create a scope or change its budget; what it has spent is kept. For a scope that "
                    "exists, options not given keep their current values ('none' clears one).",
    )
    put.add_argument("scope", help="the scope, e.g. acme/agent-7")
    put.add_argument("--usd", type=float, help="the most the scope may spend (per period); needed for a new scope")
    put.add_argument("--horizon", type=_optional(int), help="requests the budget should last (pacing), or none")
    put.add_argument("--horizon-s", type=_optional(float), help="seconds the budget should last (pacing), or none")
    put.add_argument("--period-s", type=_optional(float),
                     help="seconds after which spend resets (86400: per day), or none")
    put.add_argument("--idle-ttl-s", type=_optional(float),
                     help="seconds without use after which the ledger forgets the scope; default none: "
                          "a budget set here is never forgotten")
    put.set_defaults(usd=_KEEP, horizon=_KEEP, horizon_s=_KEEP, period_s=_KEEP, idle_ttl_s=None)
    put.add_argument("--reset", action="store_true",
                     help="zero the current period's spend (without it, what the scope spent is kept)")
    put.add_argument("--create", action="store_true",
                     help="create the SQLite ledger file or PostgreSQL schema if it does not exist "
                          "(without it, a missing ledger is an error)")

    for action in (show, put):
        action.add_argument("--store", required=True, metavar="URL", help=f"the ledger: {STORE_URLS}")
    p.set_defaults(run=run)


_KEEP = object()  # an option not given: the scope's current value stays


def _optional(kind: type) -> Any:
    def parse(text: str) -> Any:
        return None if text.strip().lower() == "none" else kind(text)

    parse.__name__ = kind.__name__  # argparse names the type in its error messages
    return parse


def run(args: argparse.Namespace) -> int:
    try:
        return _run(args)
    except LedgerUnavailable as error:
        _error(error, args)
        return 1
    except (ValueError, FileNotFoundError, KeyError, ImportError) as error:
        # Handled here, not in shared_core.cli, so the message is redacted and escaped like all others.
        _error(error, args)
        return 2


def _run(args: argparse.Namespace) -> int:
    create = args.action == "set" and args.create
    if args.action == "set":
        check_idle_ttl(args.idle_ttl_s, "--idle-ttl-s")  # the ledger's own check would name idle_ttl_s
    try:
        store = open_store(args.store, must_exist=not create)
    except FileNotFoundError as error:
        if error.filename is None:
            raise
        raise FileNotFoundError(_missing_ledger(args, str(error.filename))) from error
    try:
        if args.action == "set":
            if args.store.strip().lower().startswith("memory:"):
                raise ValueError("a memory:// ledger lives inside one process: setting a budget in it from "
                                 "the command line changes nothing; use sqlite://, redis:// or postgresql://")
            current = store.state(args.scope)
            # A budget an operator sets is theirs: never forgotten unless they say so (a session made
            # from a router's default budget would otherwise come back with the default).
            store.set_budget(args.scope, _new_budget(current, args), reset=args.reset, idle_ttl_s=args.idle_ttl_s)
            _print_table(store.report(args.scope)[:1])
            return 0
        states = store.report(args.scope)
        if args.scope is not None and not states:
            raise ValueError(f"scope '{safe(args.scope)}' has no budget in {_where(args.store)}")
        if args.json:
            # ensure_ascii (the default) writes every control or non-ASCII character as a \uXXXX escape.
            print(json.dumps([_as_dict(s) for s in states], indent=2))
        elif states:
            _print_table(states)
        else:
            print(f"no budgets in {_where(args.store)}")
        return 0
    finally:
        store.close()


def _new_budget(current: ScopeState | None, args: argparse.Namespace) -> Budget:
    """The budget `set` asks for: the options given, the scope's current values for the others."""
    given = {name: getattr(args, name) for name in ("usd", "horizon", "horizon_s", "period_s")
             if getattr(args, name, _KEEP) is not _KEEP}
    if current is None:
        if given.get("usd") is None:
            raise ValueError(f"scope '{safe(args.scope)}' has no budget yet: give --usd")
        return Budget(**given)
    return Budget(**{**current.budget.model_dump(), **given})


def _missing_ledger(args: argparse.Namespace, path: str) -> str:
    if args.store.strip().lower().startswith(("postgresql:", "postgres:")):
        what = f"no OmniRoute ledger at {safe(path)}; check the schema name"
        return (what + ", or pass --create to create a new, empty ledger there" if args.action == "set" else
                what + " (budget show never creates a ledger: create one with `omniroute budget set SCOPE "
                       "--usd AMOUNT --create --store URL`)")
    where = safe(path)
    if not Path(path).is_absolute():
        where += f" (resolved: {safe(str(Path(path).resolve()))})"
    if args.action == "set":
        return f"no SQLite ledger at {where}; check the path, or pass --create to create a new, empty ledger there"
    return (f"no SQLite ledger at {where}; check the path (budget show never creates a ledger: "
            f"create one with `omniroute budget set SCOPE --usd AMOUNT --create --store URL`)")


def _error(error: BaseException, args: argparse.Namespace) -> None:
    # Messages already show names as repr()s or through safe(): escape what is left, keep line breaks.
    text = redact(error_message(error, args), args.store)
    print(f"omniroute budget: error: {safe(text, message=True)}", file=sys.stderr)


def _where(store_url: str) -> str:
    return safe(redact_url(store_url))


# --------------------------------------------------------------------- what may reach the terminal
#: scheme://userinfo@ within a text: group 1 is up to the password, group 2 the password itself.
_CREDENTIALS = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*://[^\s/?#:@'\"]*:)([^\s/?#'\"]*)@")
#: Query options that carry a secret: ?password=..., &token=...
_SECRET_OPTIONS = re.compile(r"([?&;](?:password|passwd|pass|pwd|secret|token|auth|key)=)([^&;#\s'\"]*)", re.I)


def redact_url(url: str) -> str:
    """`url` with its password (and any password=/token= option) replaced by ***."""
    netloc_start = url.find("://")
    if netloc_start >= 0:
        start = netloc_start + 3
        end = min((i for i in (url.find(c, start) for c in "/?#") if i >= 0), default=len(url))
        userinfo, at, host = url[start:end].rpartition("@")  # the host follows the last @
        if at and ":" in userinfo:
            user = userinfo.partition(":")[0]
            url = f"{url[:start]}{user}:***@{host}{url[end:]}"
    return _SECRET_OPTIONS.sub(r"\1***", url)


def redact(text: str, url: str | None = None) -> str:
    """`text` with the credentials of `url` (exactly as given, or as its repr) and of any other URL masked."""
    if url:
        clean = redact_url(url)
        if clean != url:
            text = text.replace(repr(url), repr(clean)).replace(url, clean)
    return _SECRET_OPTIONS.sub(r"\1***", _CREDENTIALS.sub(r"\1***@", text))


_ESCAPES = {"\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def safe(text: str, *, message: bool = False) -> str:
    """`text` with each non-printable character (controls, ANSI escapes, bidi overrides, ...) written as
    a backslash escape (\\x1b, \\r, \\u202e), and backslashes doubled so the escapes are unambiguous.

    With `message=True` (a whole error message) line breaks are kept and backslashes left alone.
    """
    if text.isprintable() and "\\" not in text:
        return text
    out = []
    for ch in text:
        if message and ch in "\\\n":
            out.append(ch)
        elif ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif ch.isprintable():
            out.append(ch)
        else:
            code = ord(ch)
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}")
    return "".join(out)


def _as_dict(state: ScopeState) -> dict[str, Any]:
    return {
        "scope": state.scope,
        "budget": state.budget.model_dump(),
        "committed_usd": state.committed,
        "reserved_usd": state.reserved,
        "remaining_usd": state.remaining,
        "requests": state.requests,
        "released": state.released,
        "expired": state.expired,
        # The pacer's stored state, not λ itself: λ = θ / (usd / horizon) for a cold DualPacer, θ times the
        # batch curve's λ for a warm one (a router setting the ledger does not hold). None before pacing.
        "theta": state.lam,
        "period_start": state.period_start,
        "idle_ttl_s": state.idle_ttl_s,
        "by_model": {
            m: {"usd": usd, "calls": state.calls_by_model.get(m, 0)} for m, usd in sorted(state.by_model.items())
        },
    }


def _print_table(states: list[ScopeState]) -> None:
    rows = [
        (safe(s.scope), s, [(safe(m), usd, s.calls_by_model.get(m, 0))
                            for m, usd in sorted(s.by_model.items(), key=lambda kv: -kv[1])])
        for s in states
    ]
    width = max(24, *(len(scope) for scope, _, _ in rows), *(len(m) + 4 for _, _, models in rows for m, _, _ in models))
    print(f"{'scope / model':<{width}} {'budget $':>12} {'period':>8} {'horizon':>11} {'spent $':>12} "
          f"{'held $':>12} {'left $':>12} {'requests':>9} {'released':>9} {'expired':>8} {'idle ttl':>9}")
    for scope, s, models in rows:
        period = f"{s.budget.period_s:g}s" if s.budget.period_s else "-"
        idle = f"{s.idle_ttl_s:g}s" if s.idle_ttl_s else "-"
        print(f"{scope:<{width}} {s.budget.usd:>12.6f} {period:>8} {_horizon(s):>11} {s.committed:>12.6f} "
              f"{s.reserved:>12.6f} {s.remaining:>12.6f} {s.requests:>9} {s.released:>9} {s.expired:>8} {idle:>9}")
        for model, usd, calls in models:
            print(f"{'  ' + model:<{width}} {'':>12} {'':>8} {'':>11} {usd:>12.6f} {'':>12} {'':>12} {calls:>9}")


def _horizon(state: ScopeState) -> str:
    """What the budget is paced over: requests ("1000 req"), seconds ("3600s"), or "-" (not paced)."""
    if state.budget.horizon is not None:
        return f"{state.budget.horizon} req"
    return f"{state.budget.horizon_s:g}s" if state.budget.horizon_s is not None else "-"
