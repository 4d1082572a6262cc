"""Candidate validation and cost arithmetic."""

from __future__ import annotations

import math

import pytest
from pydantic import ValidationError

from shared_core import Candidate, Router
from shared_core.candidates import validate_candidates


def test_cost_is_tokens_times_price_per_million():
    c = Candidate(name="gpt-4-1106-preview", input_price=10, output_price=30)
    assert c.cost(1_000, 200) == pytest.approx(0.01 + 0.006)
    assert c.worst_case_cost(1_000, max_tokens=100) == pytest.approx(0.01 + 0.003)
    # The worst case never exceeds the candidate's own output limit.
    assert c.worst_case_cost(0, max_tokens=10**9) == pytest.approx(c.max_output_tokens * 30 / 1e6)


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"input_price": -1}, "input_price"),
        ({"output_price": math.nan}, "output_price"),
        ({"input_price": math.inf}, "input_price"),
        ({"name": ""}, "name"),
        ({"name": "   "}, "name"),
        ({"context_window": 0}, "context_window"),
        ({"max_output_tokens": -5}, "max_output_tokens"),
        ({"prior_quality": 1.5}, "prior_quality"),
        ({"unknown_field": 1}, "unknown_field"),
    ],
)
def test_bad_candidates_fail_at_construction_naming_the_field(kwargs, field):
    base = {"name": "m", "input_price": 1.0, "output_price": 2.0}
    with pytest.raises(ValidationError, match=field):
        Candidate(**{**base, **kwargs})


def test_duplicate_and_empty_candidate_lists_are_rejected():
    a = Candidate(name="a", input_price=1, output_price=1, prior_quality=0.5)
    with pytest.raises(ValueError, match="duplicate candidate name 'a'"):
        validate_candidates([a, a])
    with pytest.raises(ValueError, match="at least one"):
        Router([])


def test_negative_tokens_are_rejected():
    c = Candidate(name="m", input_price=1, output_price=1)
    with pytest.raises(ValueError, match="token counts"):
        c.cost(-1, 0)


def test_candidate_without_any_quality_estimate_is_rejected_by_the_router():
    with pytest.raises(ValueError, match="no quality estimate for candidate 'm'"):
        Router([Candidate(name="m", input_price=1, output_price=1)])
