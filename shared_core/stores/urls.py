"""Ledger store URLs: which store each scheme names, and the parse every scheme shares.

A store module in this package opens its own URLs: it defines `URL_OPTIONS`, the names its URLs
may give as `?name=value` (passed on to its constructor), and `open_url(url, must_exist,
**options)` (see memory.py). Adding a store takes that module and its line in STORES.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlsplit, urlunsplit

__all__ = ["Store", "STORES", "SCHEMES", "STORE_URLS", "StoreURL"]


@dataclass(frozen=True)
class Store:
    """One kind of ledger store, as open_store finds it from a URL's scheme."""

    module: str  # in this package; imported at the first URL naming it, so its driver stays optional
    schemes: tuple[str, ...]  # the first is how errors name the store's URLs
    form: str  # the URL's form, for help texts and error messages
    needs: str | None = None  # what to install when importing `module` fails (an optional extra)


STORES = (
    Store("memory", ("memory",), "memory://"),
    Store("sqlite", ("sqlite",), "sqlite:///relative/path.db, sqlite:////absolute/path.db"),
    Store("redis", ("redis", "rediss"), "redis://host:6379/0[?prefix=app:]",
          "the redis package: pip install 'omniroute[redis]'"),
    Store("postgres", ("postgresql", "postgres"), "postgresql://user@host:5432/db[?schema=omniroute]",
          "psycopg: pip install 'omniroute[postgres]'"),
)
SCHEMES = {scheme: store for store in STORES for scheme in store.schemes}
#: The accepted URL forms, for help texts and error messages.
STORE_URLS = ", ".join(store.form for store in STORES[:-1]) + " or " + STORES[-1].form


@dataclass(frozen=True)
class StoreURL:
    """A ledger store URL, split, with the checks its store picks from (options, port)."""

    text: str  # as given, for error messages
    scheme: str  # lower case
    netloc: str
    hostname: str | None
    path: str
    options: dict[str, Any]  # text values, passed on to the store's constructor as keyword arguments

    @classmethod
    def parse(cls, text: str) -> StoreURL:
        """The URL split; ValueError for malformed options, an option given twice, or a fragment."""
        try:
            parts = urlsplit(text)
            pairs = parse_qsl(parts.query, keep_blank_values=True, strict_parsing=bool(parts.query))
        except ValueError as e:
            raise malformed(text, str(e)) from e
        options = dict(pairs)
        if len(options) != len(pairs):
            raise malformed(text, "an option is given twice")
        if parts.fragment:
            raise malformed(text, "a URL fragment ('#...') means nothing here")
        return cls(text, parts.scheme, parts.netloc, parts.hostname, parts.path, options)

    def check_options(self, allowed: frozenset[str]) -> None:
        """ValueError when the URL gives an option not `allowed`."""
        unknown = set(self.options) - allowed
        if unknown:
            raise self.malformed(f"unknown option(s) {sorted(unknown)} (allowed: {sorted(allowed) or 'none'})")

    def store_options(self) -> dict[str, Any]:
        """The options as the store's constructor takes them: `unreachable_cooldown_s` a number."""
        options = dict(self.options)
        if "unreachable_cooldown_s" in options:
            try:
                options["unreachable_cooldown_s"] = float(options["unreachable_cooldown_s"])
            except ValueError:
                raise self.malformed(f"unreachable_cooldown_s must be a number of seconds, "
                                     f"got {options['unreachable_cooldown_s']!r}") from None
        return options

    def check_port(self) -> None:
        """ValueError when the port is not a number (urllib checks it only when it is read)."""
        try:
            urlsplit(self.text).port  # noqa: B018
        except ValueError as e:
            raise self.malformed(str(e)) from e

    @property
    def bare(self) -> str:
        """The URL without its options, as a store's own client library takes it."""
        return urlunsplit((self.scheme, self.netloc, self.path, "", ""))

    def malformed(self, why: str) -> ValueError:
        """The error for this URL, saying `why` and the forms that work."""
        return malformed(self.text, why)


def malformed(url: str, why: str) -> ValueError:
    """The error for a ledger store URL that cannot be used as given."""
    return ValueError(f"malformed ledger store URL {url!r}: {why}; use {STORE_URLS}")
