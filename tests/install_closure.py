"""The installed distributions a list of requirements pulls in: shared by the import-independence
test and `benchmarks/cold_start.py` (install sizes), which read this environment's package metadata."""

from __future__ import annotations

import importlib.metadata as metadata
from collections.abc import Iterable

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name


def dependency_closure(requirements: Iterable[str]) -> dict[str, metadata.Distribution]:
    """Every installed distribution `requirements` pull in (markers and extras evaluated), by name."""
    found: dict[str, metadata.Distribution] = {}
    extras_seen: dict[str, set[str]] = {}
    todo = [Requirement(r) for r in requirements]
    while todo:
        req = todo.pop()
        name = canonicalize_name(req.name)
        extras = set(req.extras)
        if name in found and extras <= extras_seen[name]:
            continue
        try:
            dist = metadata.distribution(req.name)
        except metadata.PackageNotFoundError:
            continue  # an optional dependency this environment lacks cannot leak in either
        found[name] = dist
        extras_seen[name] = extras_seen.get(name, set()) | extras
        for line in dist.requires or ():
            dep = Requirement(line)
            if dep.marker is None or any(dep.marker.evaluate({"extra": e}) for e in extras_seen[name] or {""}):
                todo.append(dep)
    return found
