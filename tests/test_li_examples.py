"""The LlamaIndex examples run offline from a checkout and show the routing they claim."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXPENSIVE, CHEAP = "gpt-4-1106-preview", "mistralai/mistral-7b-chat"


def _run(name: str) -> list[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / name)], capture_output=True, text=True, timeout=120, env=env, cwd=ROOT
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


@pytest.mark.slow
def test_query_engine_example_routes_each_session_to_what_it_affords():
    rows = [line.split() for line in _run("li_query_engine.py")[1:]]
    assert {(r[0], r[-3]) for r in rows} == {("premium", EXPENSIVE), ("economy", CHEAP)}
    assert all(float(r[-2]) > 0 for r in rows)


@pytest.mark.slow
def test_router_query_engine_example_selects_by_budget_and_holds_nothing():
    out = _run("li_router_query_engine.py")
    picks = [line for line in out if "routes this query" in line]
    assert len(picks) == 4
    assert all(f"'{EXPENSIVE}' behind 'thorough'" in line for line in picks[:2])
    assert all(f"'{CHEAP}' behind 'brief'" in line for line in picks[2:])
    assert sum("reserved $0.0" in line for line in out) == 2


@pytest.mark.slow
def test_agent_example_calls_tools_through_affordable_tool_capable_models():
    out = _run("li_agent.py")
    for agent, model in (("analyst", "gpt-3.5-turbo-1106"), ("intern", CHEAP)):
        (line,) = [line for line in out if line.startswith(agent)]
        assert "The product is 408." in line and line.endswith(f"via {model}")
    assert any(line.startswith(f"no tools -> {EXPENSIVE}") for line in out)
