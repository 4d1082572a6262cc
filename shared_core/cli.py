"""The `omniroute` command: each subcommand lives in shared_core.commands.<name>."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

__all__ = ["main", "COMMANDS"]

logger = logging.getLogger("omniroute")

#: Subcommand name → module in shared_core.commands defining `add_parser(sub)` and `run(args)`.
COMMANDS = ["demo", "budget", "eval", "fit", "route"]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every available subcommand."""
    parser = argparse.ArgumentParser(
        prog="omniroute", description="Budgeted LLM routing: demo, fit, evaluate, plan batches and inspect budgets."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"shared_core.commands.{name}").add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        return int(args.run(args) or 0)
    except (ValueError, FileNotFoundError, KeyError, ImportError) as error:
        print(f"omniroute {args.command}: error: {error}", file=sys.stderr)
        return 2
    except OSError as error:  # the system refused (a directory for a file, a read-only disk): say so in a line
        logger.debug("omniroute %s failed", args.command, exc_info=True)
        print(f"omniroute {args.command}: error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
