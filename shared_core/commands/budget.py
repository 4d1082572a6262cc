"""`omniroute budget`: show spend per scope and model in a ledger store, or set a scope's budget."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from ..budget import Budget, LedgerUnavailable, ScopeState
from ..stores import STORE_URLS, open_store


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("budget", help="show or set budgets in a ledger store",
                       description="Inspect and change the budgets kept in a ledger store.")
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)

    show = actions.add_parser("show", help="spend per scope and model",
                              description="Print each scope's budget, spend, held money and spend per model.")
    show.add_argument("scope", nargs="?", help="show this scope and the scopes nested in it (default: all)")
    show.add_argument("--json", action="store_true", help="print JSON instead of a table")

    put = actions.add_parser("set", help="create a scope or change its budget (spend so far is kept)",
                             description="Create a scope or change its budget; what it has spent is kept.")
    put.add_argument("scope", help="the scope, e.g. acme/agent-7")
    put.add_argument("--usd", type=float, required=True, help="the most the scope may spend (per period)")
    put.add_argument("--horizon", type=int, help="requests the budget should last (pacing)")
    put.add_argument("--horizon-s", type=float, help="seconds the budget should last (pacing)")
    put.add_argument("--period-s", type=float, help="seconds after which spend resets (86400: per day)")

    for action in (show, put):
        action.add_argument("--store", required=True, metavar="URL", help=f"the ledger: {STORE_URLS}")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    store = open_store(args.store)
    try:
        if args.action == "set":
            budget = Budget(usd=args.usd, horizon=args.horizon, horizon_s=args.horizon_s, period_s=args.period_s)
            store.set_budget(args.scope, budget)
            _print_table(store.report(args.scope)[:1])
            return 0
        states = store.report(args.scope)
        if args.scope is not None and not states:
            raise ValueError(f"scope {args.scope!r} has no budget in {args.store}")
        if args.json:
            print(json.dumps([_as_dict(s) for s in states], indent=2))
        elif states:
            _print_table(states)
        else:
            print(f"no budgets in {args.store}")
        return 0
    except LedgerUnavailable as error:
        print(f"omniroute budget: error: {error}", file=sys.stderr)
        return 1
    finally:
        store.close()


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
        "lambda": state.lam,
        "period_start": state.period_start,
        "by_model": {
            m: {"usd": usd, "calls": state.calls_by_model.get(m, 0)} for m, usd in sorted(state.by_model.items())
        },
    }


def _print_table(states: list[ScopeState]) -> None:
    width = max(24, *(len(s.scope) for s in states), *(len(m) + 4 for s in states for m in s.by_model))
    print(f"{'scope / model':<{width}} {'budget $':>12} {'period':>8} {'spent $':>12} {'held $':>12} "
          f"{'left $':>12} {'requests':>9} {'released':>9} {'expired':>8}")
    for s in states:
        period = f"{s.budget.period_s:g}s" if s.budget.period_s else "-"
        print(f"{s.scope:<{width}} {s.budget.usd:>12.6f} {period:>8} {s.committed:>12.6f} {s.reserved:>12.6f} "
              f"{s.remaining:>12.6f} {s.requests:>9} {s.released:>9} {s.expired:>8}")
        for model, usd in sorted(s.by_model.items(), key=lambda kv: -kv[1]):
            print(f"{'  ' + model:<{width}} {'':>12} {'':>8} {usd:>12.6f} {'':>12} {'':>12} "
                  f"{s.calls_by_model.get(model, 0):>9}")
