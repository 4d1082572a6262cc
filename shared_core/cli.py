"""The `omniroute` command: each subcommand lives in shared_core.commands.<name>."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Callable, Sequence

from pydantic import ValidationError

__all__ = ["main", "COMMANDS", "error_message", "whole_number"]

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
        parser.error("a command is required")  # exits 2, after the usage
    try:
        return int(args.run(args) or 0)
    except (ValueError, FileNotFoundError, KeyError, ImportError) as error:
        print(f"omniroute {args.command}: error: {error_message(error, args)}", file=sys.stderr)
        return 2
    except OSError as error:  # the system refused (a directory for a file, a read-only disk): say so in a line
        logger.debug("omniroute %s failed", args.command, exc_info=True)
        print(f"omniroute {args.command}: error: {error}", file=sys.stderr)
        return 1


def whole_number(least: int, most: int | None = None) -> Callable[[str], int]:
    """An argparse `type` for a whole number in [`least`, `most`]: the error names the option and the range."""
    bounds = f">= {least}" if most is None else f"in {least}..{most:,}"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = least - 1
        if value < least or (most is not None and value > most):
            shown = text if len(text) <= 24 else text[:21] + "..."
            raise argparse.ArgumentTypeError(f"must be a whole number {bounds}, got {shown!r}")
        return value

    return parse


def error_message(error: BaseException, args: argparse.Namespace) -> str:
    """`error` as the one line a command prints; a pydantic ValidationError names the option it came from."""
    if isinstance(error, KeyError) and error.args:
        return str(error.args[0])  # KeyError's str() is the repr of its argument
    if not isinstance(error, ValidationError):
        return str(error)
    # A command whose option feeds a field of another name maps it in `field_options`; otherwise an
    # option's dest is the field's name (--horizon-s → horizon_s), and any other field is the model's.
    options = getattr(args, "field_options", {})
    parts = []
    for problem in error.errors(include_url=False):
        field = ".".join(str(part) for part in problem["loc"])
        # An option the user left out did not cause it (a value read from a store did).
        given = field and getattr(args, field, None) is not None
        name = options.get(field) or (f"--{field.replace('_', '-')}" if given else f"{error.title} {field}".rstrip())
        parts.append(f"{name}: {problem['msg'].removeprefix('Value error, ')}")
    return "; ".join(parts)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
