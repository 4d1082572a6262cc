"""One error base: everything OmniRoute raises on purpose is an OmniRouteError, and keeps the
built-in base it had, so `except ValueError` / `except KeyError` code written earlier still works."""

from __future__ import annotations

import pytest

import omniroute_lc
import omniroute_li
from shared_core import Budget, Candidate, MemoryStore, Router, errors
from shared_core.embed import TfidfSvdEmbedder
from shared_core.quality import KNNQuality

BUILTIN = {
    "RoutingError": ValueError, "NoFeasibleCandidate": ValueError, "BudgetExceeded": RuntimeError,
    "UnknownScope": KeyError, "UnknownReservation": KeyError, "LedgerUnavailable": RuntimeError,
    "PersistError": ValueError, "Infeasible": ValueError, "NotFittedError": RuntimeError,
    "AttemptTimeout": TimeoutError, "AllCandidatesFailed": RuntimeError,
}


def test_every_error_has_the_one_base_and_its_old_builtin_base():
    assert set(errors.__all__) - {"OmniRouteError"} == set(BUILTIN)
    for name, builtin in BUILTIN.items():
        cls = getattr(errors, name)
        assert issubclass(cls, errors.OmniRouteError) and issubclass(cls, builtin), name
    assert issubclass(omniroute_li.LedgerNotShared, errors.OmniRouteError)
    assert omniroute_lc.OmniRouteError is omniroute_li.OmniRouteError is errors.OmniRouteError


def test_old_import_paths_name_the_same_classes():
    from shared_core.budget import BudgetExceeded, LedgerUnavailable, UnknownScope
    from shared_core.calls import AttemptTimeout
    from shared_core.fallbacks import AllCandidatesFailed
    from shared_core.persist import PersistError
    from shared_core.router import NoFeasibleCandidate, RoutingError
    from shared_core.solver import Infeasible

    assert (BudgetExceeded, LedgerUnavailable, UnknownScope, AttemptTimeout, AllCandidatesFailed, PersistError,
            NoFeasibleCandidate, RoutingError, Infeasible) == tuple(getattr(errors, n) for n in (
                "BudgetExceeded", "LedgerUnavailable", "UnknownScope", "AttemptTimeout", "AllCandidatesFailed",
                "PersistError", "NoFeasibleCandidate", "RoutingError", "Infeasible"))


def test_lookups_read_as_sentences_and_unfitted_models_say_so():
    store = MemoryStore()
    with pytest.raises(errors.UnknownReservation, match="^unknown reservation 'nope'"):
        store.commit("nope", 0.0)
    with pytest.raises(errors.NotFittedError, match="not fitted"):
        KNNQuality().predict([[0.0]])
    with pytest.raises(errors.NotFittedError, match="not fitted"):
        TfidfSvdEmbedder().transform(["a prompt"])
    router = Router([Candidate(name="m", input_price=1, output_price=1, prior_quality=0.5)])
    router.set_budget("s", Budget(usd=1e-9))
    with pytest.raises(errors.OmniRouteError):
        router.decide("hello", "s")
