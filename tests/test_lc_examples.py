"""The LangChain examples run offline from a checkout and show the routing they claim."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(name: str, *args: str) -> list[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, str(ROOT / "examples" / name), *args],
                          capture_output=True, text=True, timeout=120, env=env, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


@pytest.mark.slow
def test_chain_example_routes_each_session_to_what_it_affords():
    rows = [line.split() for line in _run("lc_chain.py") if line.startswith(("premium ", "economy "))]
    answers = [r for r in rows if r[1] != "structured"]
    expected = {"premium": "gpt-4-1106-preview", "economy": "mistralai/mistral-7b-chat"}
    assert {(r[0], r[-3]) for r in answers} == set(expected.items())
    assert all(float(r[-2]) > 0 for r in answers)
    assert {r[0]: r[4].rstrip(":") for r in rows if r[1] == "structured"} == expected


@pytest.mark.slow
def test_agents_example_keeps_every_agent_within_its_budget():
    out = _run("lc_agents_budgets.py")
    briefs = [line.split()[1] for line in out if line.strip().startswith("brief:")]
    assert briefs == ["gpt-4-1106-preview", "gpt-3.5-turbo-1106", "gpt-3.5-turbo-1106"]
    reviews = [line for line in out if line.strip().startswith("review:")]
    assert [("skipped" in r) for r in reviews] == [False, False, True]
    table = {r[0]: [float(x) for x in r[1:4]] for r in (line.split() for line in out) if r and r[0].startswith("acme")}
    assert all(spent <= budget for budget, spent, _ in table.values())
    agents = sum(spent for scope, (_, spent, _) in table.items() if "/" in scope)
    assert abs(table["acme"][1] - agents) < 1e-5


@pytest.mark.slow
def test_fitted_router_example_spends_within_budget_for_more_accuracy_than_the_cheapest():
    out = "\n".join(_run("lc_fitted_router.py", str(ROOT.parent / "shared" / "data" / "routerbench_subset.parquet"),
                         "--requests", "150", "--predictor", "knn"))
    routed = re.search(r"OmniRoute, budget ([\d.]+) USD\s+([\d.]+)\s+([\d.]+)\s+\((\d+) refused, ([\d.]+) USD", out)
    budget, accuracy, cost, _, reserved = (float(x) for x in routed.groups())
    best = re.search(r"always gpt-4-1106-preview\s+([\d.]+)\s+([\d.]+)", out)
    cheapest = re.search(r"always mistralai/mistral-7b-chat\s+([\d.]+)\s+([\d.]+)", out)
    assert cost <= budget < float(best.group(2))
    assert reserved == 0
    assert accuracy > float(cheapest.group(1))
    recorded, charged = re.search(r"chose: ([\d.]+) USD \(the router charged ([\d.]+) USD", out).groups()
    assert recorded == charged


@pytest.mark.slow
def test_agent_middleware_example_routes_every_step_within_each_users_budget():
    out = _run("lc_agent_middleware.py")
    steps = [line.split() for line in out if line.startswith(("  ada ", "  bob ")) and line.endswith(" USD")]
    assert {r[1] for r in steps if r[0] == "ada"} == {"gpt-4-1106-preview"}
    bob = [r[1] for r in steps if r[0] == "bob"]
    assert bob[0] == "gpt-3.5-turbo-1106" and bob[-1] == "mistralai/mistral-7b-chat"
    assert any(line.startswith("  bob    refused: no candidate fits the budget of scope 'acme/bob'") for line in out)
    assert any(line.startswith("streamed:   The tool returned:") for line in out)
    assert sum(line.startswith("structured: Verdict(") for line in out) == 2
    table = {r[0]: [float(x) for x in r[1:5]] for r in (line.split() for line in out)
             if r and r[0].startswith(("acme", "review-"))}
    assert all(spent <= budget for budget, spent, _, _ in table.values())
    # Every call a user's agent made, shown or streamed, was charged to that user and to the team.
    assert len(bob) == table["acme/bob"][3]
    assert table["acme"][3] == table["acme/ada"][3] + table["acme/bob"][3]
    assert abs(table["acme"][1] - table["acme/ada"][1] - table["acme/bob"][1]) < 1e-5
