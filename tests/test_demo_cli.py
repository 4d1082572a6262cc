"""`omniroute demo` and `omniroute --help` work offline on a fresh install."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from shared_core.cli import COMMANDS, main


def _spend(out: str) -> tuple[float, float]:
    m = re.search(r"budget \$([0-9.]+): spent \$([0-9.]+)", out)
    assert m, out
    return float(m.group(1)), float(m.group(2))


def test_demo_on_bundled_defaults(capsys):
    assert main(["demo", "--requests", "120"]) == 0
    out = capsys.readouterr().out
    budget, spent = _spend(out)
    assert 0 < spent <= budget
    assert "gpt-4-1106-preview" in out and "total" in out


def test_the_demo_reference_is_on_the_same_basis_as_its_spend(capsys):
    # Replies were 64 tokens against a predicted (and referenced) 256, so "25 % of every prompt to the
    # best model" bought nearly every prompt the best model, and a budget of twice it spent an eighth.
    assert main(["demo", "--budget", "2"]) == 0
    out = capsys.readouterr().out
    budget, spent = _spend(out)
    assert 0.85 * budget / 2 <= spent <= 1.05 * budget / 2  # the best model nearly every time: about the reference
    assert main(["demo"]) == 0
    out = capsys.readouterr().out
    best = int(re.search(r"gpt-4-1106-preview\s+(\d+)\s", out).group(1))
    assert best < 100, out  # a quarter of the reference buys the best model for a minority of prompts


@pytest.mark.slow
def test_demo_replays_real_data_within_budget(capsys, routerbench_path):
    assert main(["demo", "--data", str(routerbench_path), "--budget", "0.1"]) == 0
    out = capsys.readouterr().out
    budget, spent = _spend(out)
    assert 0.9 * budget <= spent <= budget
    assert "accuracy" in out and re.search(r"total\s+946\s", out)


def test_bad_arguments_give_a_clear_error(capsys, tmp_path):
    assert main(["demo", "--budget", "-1"]) == 2
    assert "--budget must be > 0" in capsys.readouterr().err
    assert main(["demo", "--data", str(tmp_path / "missing.parquet")]) == 2
    assert "dataset not found" in capsys.readouterr().err


@pytest.mark.parametrize("args, message", [
    (["--requests", "0"], "argument --requests: must be a whole number in 1..1,000,000, got '0'"),
    (["--requests", "-5"], "argument --requests: must be a whole number in 1..1,000,000, got '-5'"),
    (["--seed", "-1"], "argument --seed: must be a whole number >= 0, got '-1'"),
    (["--requests", "10000000001"], "argument --requests: must be a whole number in 1..1,000,000, got '10000000001'"),
    (["--seed", "9" * 5000], "argument --seed: must be a whole number >= 0, got '999999999999999999999...'"),
])
def test_counts_out_of_range_are_refused_naming_the_option(args, message, capsys):
    with pytest.raises(SystemExit) as done:
        main(["demo", *args])
    assert done.value.code == 2
    assert f"omniroute demo: error: {message}" in capsys.readouterr().err


def test_a_budget_the_ledger_cannot_hold_is_one_line_naming_the_option(capsys):
    assert main(["demo", "--requests", "5", "--budget", "1e308"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("omniroute demo: error: --budget: budget usd of ") and "exceeds the largest amount" in err
    assert err.count("\n") == 1 and "pydantic" not in err and "[type=" not in err


def test_no_command_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as done:
        main([])
    assert done.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: omniroute") and "omniroute: error: a command is required" in err


def test_console_script_help_lists_every_command():
    out = subprocess.run(
        [sys.executable, "-m", "shared_core.cli", "--help"], capture_output=True, text=True, check=True
    ).stdout
    for name in COMMANDS:
        assert name in out


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_each_commands_help_prints_its_text_as_written(name, capsys):
    # argparse %-formats argument help but not descriptions: a "%%" there shows as typed.
    with pytest.raises(SystemExit) as done:
        main([name, "--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert f"usage: omniroute {name}" in out and "%%" not in out


def test_a_refusal_of_the_system_is_one_line_and_exit_1(monkeypatch, capsys):
    def refused(args):
        raise PermissionError(13, "Permission denied", "/var/plan.csv")

    monkeypatch.setattr("shared_core.commands.demo.run", refused)
    assert main(["demo"]) == 1
    assert capsys.readouterr().err == "omniroute demo: error: [Errno 13] Permission denied: '/var/plan.csv'\n"
