"""`omniroute eval DATA`: its JSON, decisions CSV, plot and table, checked against a recomputation."""

from __future__ import annotations

import csv
import json
import sys
from collections import defaultdict

import numpy as np
import pytest

from shared_core.cli import main
from shared_core.evaluate import Curve


@pytest.fixture(scope="module")
def report(routerbench_path, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval")
    argv = ["eval", str(routerbench_path), "--predictor", "prior", "--budgets", "0.1,0.5", "--order", "grouped",
            "--json", str(out / "eval.json"), "--decisions", str(out / "decisions.csv"),
            "--plot", str(out / "curves.png"), "--no-progress"]
    assert main(argv) == 0
    return out


@pytest.fixture(scope="module")
def decisions(report):
    runs: dict[str, dict[str, str]] = defaultdict(dict)
    with (report / "decisions.csv").open() as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == ["sample_id", "run", "model"]
        for row in reader:
            runs[row["run"]][row["sample_id"]] = row["model"]
    return runs


@pytest.mark.slow
def test_json_has_the_contracted_fields(report):
    data = json.loads((report / "eval.json").read_text())
    assert (data["n_train"], data["n_test"], data["reference_model"]) == (2218, 946, "gpt-4-1106-preview")
    assert len(data["models"]) == 11 and set(data["baselines"]) == {"oracle", "prior", "reference"}
    assert data["baselines"]["reference"]["accuracy"] == pytest.approx(0.879, abs=1e-3)
    prior = data["predictors"]["prior"]
    assert set(prior) == {"audc", "audc50", "qnc", "accuracy_at", "curve"}
    assert set(prior["accuracy_at"]) == {"0.1", "0.5"}
    runs = {(r["mode"], r["budget_fraction"]): r for r in data["budget_runs"]}
    assert set(runs) == {("batch", 0.1), ("online", 0.1), ("batch", 0.5), ("online", 0.5)}
    for r in data["budget_runs"]:
        assert {"predictor", "mode", "budget_fraction", "budget_usd", "spent_usd", "accuracy"} <= set(r)
        assert r["budget_usd"] == pytest.approx(r["budget_fraction"] * data["baselines"]["reference"]["cost_usd"])
    for mode_fraction, r in runs.items():
        if mode_fraction[0] == "online":  # worst-case reservations keep the hard cap on the budget
            assert 0.9 * r["budget_usd"] <= r["spent_usd"] <= r["budget_usd"]


def test_every_figure_can_be_recomputed_from_the_decisions(report, decisions, routerbench):
    data = json.loads((report / "eval.json").read_text())
    test = routerbench.subset("test")
    col = {m: j for j, m in enumerate(test.models)}
    ref_cost = data["baselines"]["reference"]["cost_usd"]

    def measure(run: str) -> tuple[float, float]:
        chosen = decisions[run]
        cost, correct = 0.0, []
        for i, sid in enumerate(test.sample_ids):
            model = chosen[sid]
            if not model:  # refused: no cost, counted wrong
                correct.append(0.0)
                continue
            cost += test.cost[i, col[model]]
            correct.append(test.quality[i, col[model]])
        return cost, float(np.nanmean(correct))

    points = sorted(measure(run) for run in decisions if run.startswith("curve@"))
    assert len(points) == len(data["predictors"]["prior"]["curve"])
    curve = Curve(np.array([p[0] for p in points]) / ref_cost, np.array([p[1] for p in points]), np.zeros(len(points)))
    assert curve.area() == pytest.approx(data["predictors"]["prior"]["audc"], abs=1e-9)
    assert curve.area(0.5) == pytest.approx(data["predictors"]["prior"]["audc50"], abs=1e-9)
    for r in data["budget_runs"]:
        spent, acc = measure(f"{r['mode']}@{r['budget_fraction']:g}")
        assert (spent, acc) == pytest.approx((r["spent_usd"], r["accuracy"]))
    assert all(len(chosen) == len(test) for chosen in decisions.values())


def test_plot_is_a_png(report):
    assert (report / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_table_is_printed(routerbench_path, capsys):
    assert main(["eval", str(routerbench_path), "--predictor", "prior", "--budgets", "0.25", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "reference: gpt-4-1106-preview" in out and "AUDC" in out and "online %" in out
    assert "prompt-blind prior" in out and out.count("\nprior ") >= 2  # the curve row and the budget row


def test_split_column_and_prices_for_a_dataset_without_costs(llmrouter_paths, tmp_path, capsys):
    import pandas as pd

    data_path, prices = llmrouter_paths
    frame = pd.read_parquet(data_path)
    frame = pd.concat([frame[frame.split == "train"].iloc[:600], frame[frame.split == "test"].iloc[:150]])
    frame = frame.rename(columns={"split": "fold"})
    path = tmp_path / "small.parquet"
    frame.to_parquet(path)
    out = tmp_path / "eval.json"
    argv = ["eval", str(path), "--split-column", "fold", "--prices", str(prices), "--predictor", "prior",
            "--budgets", "0.5", "--order", "random", "--json", str(out), "--no-progress"]
    assert main(argv) == 0
    data = json.loads(out.read_text())
    assert (data["n_train"], data["n_test"]) == (600, 150)
    assert {r["mode"] for r in data["budget_runs"]} == {"batch", "online"}


@pytest.mark.parametrize("args, message", [
    (["--predictor", "nope"], "unknown predictor 'nope'"),
    (["--budgets", "0.1,two"], "comma-separated numbers"),
    (["--budgets", "1.5"], "fractions in (0, 1]"),
])
def test_bad_arguments_exit_2_with_a_message(routerbench_path, capsys, args, message):
    assert main(["eval", str(routerbench_path), *args, "--no-progress"]) == 2
    assert message in capsys.readouterr().err


def test_a_negative_seed_is_refused_naming_the_option(routerbench_path, capsys):
    with pytest.raises(SystemExit) as done:
        main(["eval", str(routerbench_path), "--seed", "-1"])
    assert done.value.code == 2
    assert "argument --seed: must be a whole number >= 0, got '-1'" in capsys.readouterr().err


def test_dataset_without_costs_or_prices_is_refused(llmrouter_paths, capsys):
    assert main(["eval", str(llmrouter_paths[0]), "--no-progress"]) == 2
    assert "no per-query costs: pass --prices FILE" in capsys.readouterr().err


def test_plot_without_matplotlib_names_the_extra(routerbench_path, monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert main(["eval", str(routerbench_path), "--plot", str(tmp_path / "x.png"), "--no-progress"]) == 2
    assert "pip install 'omniroute[plot]'" in capsys.readouterr().err


def test_an_output_in_a_missing_folder_is_refused_before_the_evaluation(routerbench_path, tmp_path, capsys,
                                                                        monkeypatch):
    monkeypatch.setattr("shared_core.commands.eval.load_dataset", lambda *a, **k: pytest.fail("the evaluation started"))
    for option in ("--json", "--decisions", "--plot"):
        out = tmp_path / "missing" / "out"
        assert main(["eval", str(routerbench_path), option, str(out), "--no-progress"]) == 2
        assert f"{option} {out}: the directory" in capsys.readouterr().err
    assert main(["eval", str(routerbench_path), "--json", str(tmp_path), "--no-progress"]) == 2
    assert "is a directory" in capsys.readouterr().err
    same = str(tmp_path / "out")
    assert main(["eval", str(routerbench_path), "--json", same, "--decisions", same, "--no-progress"]) == 2
    assert "--decisions and --json name the same file" in capsys.readouterr().err


def test_a_bad_candidate_setting_is_one_line_naming_the_option(routerbench_path, capsys):
    assert main(["eval", str(routerbench_path), "--max-output-tokens", "0", "--no-progress"]) == 2
    assert capsys.readouterr().err == "omniroute eval: error: --max-output-tokens: must be > 0, got 0\n"
