"""`omniroute route ROUTER PROMPTS`: a batch plan from a saved router, on the real test split."""

from __future__ import annotations

import csv
import json
import os
import re
import stat

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from shared_core.cli import main
from shared_core.evaluate import reference_column
from shared_core.fitting import fit_router


@pytest.fixture(scope="module")
def saved(train, test_split, tmp_path_factory):
    """The default router fitted on RouterBench's training split, saved; the test prompts as Parquet."""
    folder = tmp_path_factory.mktemp("route")
    fit_router(train, "knn", candidates=train.candidates(max_output_tokens=1024)).save(folder / "router")
    pd.DataFrame({"sample_id": test_split.sample_ids, "prompt": test_split.prompts}).to_parquet(folder / "test.parquet")
    return folder


def read_plan(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_a_budget_plan_spends_the_budget_and_buys_the_accuracy_of_the_batch_solver(saved, train, test_split, capsys):
    budget = 0.25 * float(test_split.cost[:, reference_column(train.quality)].sum())
    assert main(["route", str(saved / "router"), str(saved / "test.parquet"), "--budget", str(budget),
                 "--id-column", "sample_id", "--out", str(saved / "plan.csv")]) == 0
    out = capsys.readouterr().out
    assert f"{len(test_split)} prompts routed" in out and "gpt-4-1106-preview" in out
    plan = read_plan(saved / "plan.csv")
    assert [row["id"] for row in plan] == list(test_split.sample_ids)
    estimated = sum(float(row["estimated_cost_usd"]) for row in plan)
    assert 0.99 * budget <= estimated <= budget * (1 + 1e-6)
    chosen = np.array([test_split.models.index(row["model"]) for row in plan])
    rows = np.arange(len(test_split))
    actual_cost = float(test_split.cost[rows, chosen].sum())
    accuracy = float(np.nanmean(test_split.quality[rows, chosen]))
    # docs/benchmarks.md: the batch solver at 25 % spends 100.1 % of the budget at 0.840 accuracy.
    assert actual_cost <= 1.02 * budget and accuracy >= 0.835


def test_a_quality_target_with_a_capacity_from_jsonl(saved, test_split, tmp_path, capsys):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("\n".join(json.dumps(p) for p in test_split.prompts[:300]) + "\n\n")
    out_csv = tmp_path / "plan.csv"
    assert main(["route", str(saved / "router"), str(prompts), "--quality-target", "0.83",
                 "--capacity", "gpt-4-1106-preview=30", "--out", str(out_csv)]) == 0
    plan = read_plan(out_csv)
    assert [row["id"] for row in plan] == [str(i) for i in range(300)]
    assert np.mean([float(row["predicted_quality"]) for row in plan]) >= 0.83 - 1e-9
    assert sum(row["model"] == "gpt-4-1106-preview" for row in plan) <= 30
    assert "mean predicted quality >= 0.83" in capsys.readouterr().out


def test_prompts_from_csv_with_a_capacity_share(saved, test_split, tmp_path):
    path = tmp_path / "prompts.csv"
    pd.DataFrame({"prompt": test_split.prompts[:100]}).to_csv(path, index=False)
    out_csv = tmp_path / "plan.csv"
    assert main(["route", str(saved / "router"), str(path), "--budget", "0.2", "--capacity",
                 "zero-one-ai/Yi-34B-Chat=0.1", "--out", str(out_csv)]) == 0
    plan = read_plan(out_csv)
    assert len(plan) == 100 and sum(row["model"] == "zero-one-ai/Yi-34B-Chat" for row in plan) <= 10


@pytest.mark.parametrize("args, message", [
    (["--budget", "-1"], "--budget must be > 0"),
    (["--budget", "1", "--capacity", "gpt5"], "MODEL=LIMIT"),
    (["--budget", "1", "--capacity", "gpt5=0.1"], "unknown candidates"),
    (["--budget", "1", "--capacity", "gpt-4-1106-preview=lots"], "a share (0.1) or a count"),
    (["--budget", "1", "--prompt-column", "text"], "no prompt text in 'text'"),
    (["--budget", "1e-9"], "budget"),
])
def test_bad_requests_are_refused_with_the_reason(saved, args, message, capsys):
    assert main(["route", str(saved / "router"), str(saved / "test.parquet"), *args]) == 2
    assert message in capsys.readouterr().err


def test_bad_files_are_refused_with_the_reason(saved, tmp_path, capsys):
    router = str(saved / "router")
    assert main(["route", router, str(tmp_path / "missing.jsonl"), "--budget", "1"]) == 2
    assert "prompts file not found" in capsys.readouterr().err
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"prompt": "fine"}\nnot json\n')
    assert main(["route", router, str(broken), "--budget", "1"]) == 2
    assert "broken.jsonl:2: not JSON" in capsys.readouterr().err
    (tmp_path / "empty.jsonl").write_text("\n")
    assert main(["route", router, str(tmp_path / "empty.jsonl"), "--budget", "1"]) == 2
    assert "holds no prompts" in capsys.readouterr().err
    (tmp_path / "prompts.txt").write_text("hello")
    assert main(["route", router, str(tmp_path / "prompts.txt"), "--budget", "1"]) == 2
    assert ".jsonl, .csv or .parquet" in capsys.readouterr().err
    assert main(["route", str(tmp_path), str(saved / "test.parquet"), "--budget", "1"]) == 2
    assert "not a saved router" in capsys.readouterr().err


def test_an_output_that_would_destroy_something_is_refused_before_any_work(saved, tmp_path, monkeypatch, capsys):
    router = str(saved / "router")
    prompts = tmp_path / "prompts.csv"
    prompts.write_text("id,prompt\n1,Name a prime number.\n")
    before = prompts.read_bytes()
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    (tmp_path / "adir").mkdir()
    link = tmp_path / "latest.csv"
    link.symlink_to(tmp_path / "plan-1.csv")
    (tmp_path / "plan-1.csv").write_text("an older plan\n")
    refused = [
        (str(prompts), "is the input file"),  # the plan would have replaced the prompts
        (str(saved / "router" / "router.json"), "is the input file"),  # ... or the router
        (str(fifo), "is not a plain file"),  # renamed over, a device or pipe would be replaced
        (str(link), "is not a plain file"),  # ... and a link by a file
        (str(tmp_path / "adir"), "is a directory"),
        (str(tmp_path / "missing" / "plan.csv"), "does not exist"),
        ("", "needs a file name"),
    ]
    monkeypatch.setattr("shared_core.commands.route.Router.load", lambda *_: pytest.fail("work started"))
    for out, message in refused:
        assert main(["route", router, str(prompts), "--budget", "1", "--out", out]) == 2
        err = capsys.readouterr().err
        assert f"--out {out}".rstrip() in err and message in err, err
    assert prompts.read_bytes() == before and stat.S_ISFIFO(fifo.stat().st_mode) and link.is_symlink()


def test_a_stray_quote_in_a_csv_is_an_error_naming_the_line_not_merged_rows(saved, tmp_path, capsys):
    prompts = tmp_path / "stray.csv"
    prompts.write_text('id,prompt\nr1,first\nr2,"a stray quote\nr3,swallowed\nr4,"quoted" tail\nr5,last\n')
    assert main(["route", str(saved / "router"), str(prompts), "--budget", "1", "--out", str(tmp_path / "p.csv")]) == 2
    assert "stray.csv: not a readable CSV after line 2 (" in capsys.readouterr().err  # r2's line is 3
    assert not (tmp_path / "p.csv").exists()


# --- issue 13 item 8: prompt files are read as written, the plan is written all or nothing ---


def test_csv_with_byte_order_mark_keeps_its_first_column(saved, tmp_path):
    path = tmp_path / "excel.csv"
    # Excel's "CSV UTF-8" starts with a BOM; the first column is still called "prompt".
    path.write_text("prompt,id\nWhat is 2 + 2?,007\nNA,008\nName a prime number.,009\n", encoding="utf-8-sig")
    assert path.read_bytes().startswith(b"\xef\xbb\xbfprompt,")
    out_csv = tmp_path / "plan.csv"
    assert main(["route", str(saved / "router"), str(path), "--budget", "1", "--out", str(out_csv)]) == 0
    assert [row["id"] for row in read_plan(out_csv)] == ["007", "008", "009"]


def test_csv_field_over_128_kib_is_read(saved, tmp_path):
    path = tmp_path / "long.csv"
    long_prompt = "Summarise this log line by line. " + "word " * (200 * 1024 // 5)
    assert len(long_prompt.encode()) > 200 * 1024
    pd.DataFrame({"id": ["long", "short"], "prompt": [long_prompt, "Say hi."]}).to_csv(path, index=False)
    limit = csv.field_size_limit()
    out_csv = tmp_path / "plan.csv"
    assert main(["route", str(saved / "router"), str(path), "--budget", "1", "--out", str(out_csv)]) == 0
    assert [row["id"] for row in read_plan(out_csv)] == ["long", "short"]
    assert csv.field_size_limit() == limit  # the process-wide limit is put back


def test_jsonl_with_line_separators_inside_strings(saved, tmp_path):
    path = tmp_path / "prompts.jsonl"
    records = [{"id": "a", "prompt": "Line one\u2028line two\u2029paragraph\x85next"},
               {"id": "b", "prompt": "Plain prompt."}]
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    assert "\u2028" in path.read_text(encoding="utf-8")
    out_csv = tmp_path / "plan.csv"
    assert main(["route", str(saved / "router"), str(path), "--budget", "1", "--out", str(out_csv)]) == 0
    assert [row["id"] for row in read_plan(out_csv)] == ["a", "b"]


def test_a_route_that_fails_while_writing_leaves_no_plan(saved, tmp_path, capsys):
    path = tmp_path / "prompts.jsonl"
    # "\ud800" is valid JSON but a lone surrogate: it cannot be written as UTF-8.
    path.write_text('{"id": "ok", "prompt": "Say hi."}\n{"id": "\\ud800", "prompt": "Say bye."}\n')
    out_csv = tmp_path / "plans" / "plan.csv"
    out_csv.parent.mkdir()
    assert main(["route", str(saved / "router"), str(path), "--budget", "1", "--out", str(out_csv)]) == 2
    assert "surrogate" in capsys.readouterr().err
    assert list(out_csv.parent.iterdir()) == []  # neither a header-only plan nor a temporary file
    # An earlier plan at that path is left exactly as it was.
    out_csv.write_text("earlier plan\n")
    assert main(["route", str(saved / "router"), str(path), "--budget", "1", "--out", str(out_csv)]) == 2
    assert out_csv.read_text() == "earlier plan\n" and list(out_csv.parent.iterdir()) == [out_csv]


# --- issue 17 item 3: files larger than memory, read in chunks, planned in two passes ---


@pytest.fixture
def test_jsonl(test_split, tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps({"id": i, "prompt": p}) + "\n"
                            for i, p in zip(test_split.sample_ids, test_split.prompts, strict=True)))
    return path


def test_a_plan_read_in_chunks_is_the_plan_of_the_whole_batch(saved, test_split, test_jsonl, tmp_path, monkeypatch):
    from shared_core import batch
    from shared_core.commands import route
    from shared_core.router import Router

    args = ["route", str(saved / "router"), str(test_jsonl), "--budget", "0.5", "--capacity",
            "gpt-4-1106-preview=0.05", "--no-progress"]
    assert main([*args, "--out", str(tmp_path / "whole.csv")]) == 0
    sizes = []
    original = batch.EstimateCollector.add
    monkeypatch.setattr(batch.EstimateCollector, "add",
                        lambda self, prompts, tokens=None: sizes.append(len(prompts)) or original(self, prompts))
    monkeypatch.setattr(route, "CHUNK_SIZE", 100)
    assert main([*args, "--out", str(tmp_path / "chunked.csv")]) == 0
    assert sizes == [100] * 9 + [46]
    chunked = read_plan(tmp_path / "chunked.csv")
    assert chunked == read_plan(tmp_path / "whole.csv")
    expected = batch.route_batch(Router.load(saved / "router"), test_split.prompts, budget=0.5,
                                 capacities={"gpt-4-1106-preview": 0.05})
    rows = np.arange(len(test_split))
    assert [row["id"] for row in chunked] == list(test_split.sample_ids)
    assert [row["model"] for row in chunked] == expected.models
    np.testing.assert_allclose([float(row["estimated_cost_usd"]) for row in chunked],
                               expected.estimate.cost[rows, expected.solution.choice], atol=5e-10)
    np.testing.assert_allclose([float(row["predicted_quality"]) for row in chunked],
                               expected.estimate.quality[rows, expected.solution.choice], atol=5e-7)


def test_a_malformed_line_past_the_first_chunk_is_named(saved, test_jsonl, monkeypatch, capsys):
    from shared_core.commands import route

    monkeypatch.setattr(route, "CHUNK_SIZE", 100)
    lines = test_jsonl.read_text().split("\n")
    lines[250] = '{"id": "x" "prompt": "a comma is missing"}'
    test_jsonl.write_text("\n".join(lines))
    assert main(["route", str(saved / "router"), str(test_jsonl), "--budget", "1"]) == 2
    assert "prompts.jsonl:251: not JSON (Expecting ',' delimiter, column 12)" in capsys.readouterr().err
    lines[250] = '{"id": "x", "text": "no prompt field"}'
    test_jsonl.write_text("\n".join(lines))
    assert main(["route", str(saved / "router"), str(test_jsonl), "--budget", "1"]) == 2
    assert ("prompts.jsonl:251: row 250 has no prompt text in 'prompt' (got None); its fields are ['id', 'text']: "
            "name the prompt's with --prompt-column") in capsys.readouterr().err
    lines[250] = '{"id": "x", "prompt": "  "}'  # the field is there, its text is not: no advice about the name
    test_jsonl.write_text("\n".join(lines))
    assert main(["route", str(saved / "router"), str(test_jsonl), "--budget", "1"]) == 2
    assert capsys.readouterr().err.rstrip().endswith("row 250 has no prompt text in 'prompt' (got '  ')")


def test_a_file_that_changes_between_the_two_passes_leaves_no_plan(saved, test_jsonl, tmp_path, monkeypatch, capsys):
    from shared_core.commands import route

    original = route.solve_collected

    def solve_while_someone_appends(*args, **kwargs):
        with open(test_jsonl, "a") as f:
            f.write(json.dumps({"id": "late", "prompt": "A prompt added during the solve."}) + "\n")
        return original(*args, **kwargs)

    monkeypatch.setattr(route, "solve_collected", solve_while_someone_appends)
    out_csv = tmp_path / "plan.csv"
    assert main(["route", str(saved / "router"), str(test_jsonl), "--budget", "1", "--out", str(out_csv)]) == 2
    assert "changed while it was being routed (946 prompts at first)" in capsys.readouterr().err
    assert not out_csv.exists() and not list(tmp_path.glob(".plan.csv.*"))


def test_long_work_reports_progress_on_stderr(saved, test_jsonl, tmp_path, monkeypatch, capsys):
    from shared_core.commands import route

    ticks = iter(range(0, 10_000, 3))  # every look at the clock is three seconds later

    class SlowProgress(route.Progress):
        def __init__(self, enabled=True):
            super().__init__(enabled, clock=lambda: float(next(ticks)))

    monkeypatch.setattr(route, "Progress", SlowProgress)
    monkeypatch.setattr(route, "CHUNK_SIZE", 400)
    args = ["route", str(saved / "router"), str(test_jsonl), "--budget", "1", "--out", str(tmp_path / "plan.csv")]
    assert main(args) == 0
    err = capsys.readouterr().err.splitlines()
    # A line at most every 5 s off a terminal; each look at this clock is 3 s later.
    read = [re.fullmatch(r"omniroute route: estimated (\d+) prompts \((\d+)% of the file\), [\d,]+ prompts/s "
                         r"\[(\d+) s\]", line) for line in err[:2]]
    assert [(int(m[1]), int(m[3])) for m in read] == [(400, 3), (946, 9)]
    assert 42 < int(read[0][2]) < int(read[1][2]) == 100  # of the bytes: the long ARC prompts come first
    assert err[2:] == ["omniroute route: solving for 946 prompts × 11 candidates [12 s]",
                       "omniroute route: wrote 800 of 946 plan rows [18 s]"]
    assert main([*args, "--no-progress"]) == 0
    assert capsys.readouterr().err == ""


def test_progress_is_quiet_for_short_work_and_paced_for_long_work():
    import io

    from shared_core.commands.route import Progress

    now = [0.0]
    stream = io.StringIO()
    progress = Progress(stream=stream, clock=lambda: now[0])
    progress.update("early")  # under a second in: nothing
    for t in (1.5, 2.0, 6.4, 6.6):
        now[0] = t
        progress.update(f"at {t}")
    now[0] = 6.7
    progress.update("forced", force=True)
    assert stream.getvalue().splitlines() == ["omniroute route: at 1.5 [2 s]", "omniroute route: at 6.6 [7 s]",
                                              "omniroute route: forced [7 s]"]


def test_a_prompt_too_long_for_every_model_is_named_with_the_reason(saved, tmp_path, capsys):
    prompts = tmp_path / "long.jsonl"
    rows = [{"id": f"q{i}", "prompt": "What is 2 + 2?"} for i in range(5)]
    rows[3]["prompt"] = "hello " * 180_000  # ~180k tokens: past every candidate's 128k-token window
    prompts.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["route", str(saved / "router"), str(prompts), "--budget", "1", "--no-progress"]) == 2
    assert ("1 of the 5 prompts leaves no room in any candidate's context window (rows [3], counted from 0)"
            in capsys.readouterr().err)


def test_a_huge_budget_is_printed_in_a_few_characters(saved, tmp_path, capsys):
    prompts = tmp_path / "prompts.csv"
    prompts.write_text("id,prompt\na,What is 2 + 2?\nb,Name a prime number.\n")
    assert main(["route", str(saved / "router"), str(prompts), "--budget", "1e308", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "budget $1e+308: estimated spend $0.0" in out and max(len(line) for line in out.splitlines()) < 200
    assert main(["route", str(saved / "router"), str(prompts), "--budget", "1", "--no-progress"]) == 0
    assert "budget $1.0000: estimated spend $0.0" in capsys.readouterr().out  # everyday amounts as before


def test_a_prompt_or_id_column_named_twice_is_an_error_naming_it(saved, tmp_path, capsys):
    csv_path = tmp_path / "twice.csv"
    csv_path.write_text("id,prompt,id\na,What is 2 + 2?,x\nb,Name a prime number.,y\n")
    parquet_path = tmp_path / "twice.parquet"
    # pandas will not write two columns of one name to Parquet; pyarrow (and other writers) will.
    columns = [pa.array(["a"]), pa.array(["What is 2 + 2?"]), pa.array(["What is 3 + 3?"])]
    pq.write_table(pa.table(columns, names=["id", "prompt", "prompt"]), parquet_path)
    for path, column in [(csv_path, "id"), (parquet_path, "prompt")]:
        out_csv = tmp_path / "plan.csv"
        assert main(["route", str(saved / "router"), str(path), "--budget", "1", "--out", str(out_csv)]) == 2
        assert f"{path.name}: the column {column!r} appears 2 times" in capsys.readouterr().err
        assert not out_csv.exists()
    # A repeated column the command does not read is no ambiguity.
    other = tmp_path / "notes.csv"
    other.write_text("id,prompt,note,note\na,What is 2 + 2?,x,y\n")
    assert main(["route", str(saved / "router"), str(other), "--budget", "1", "--no-progress"]) == 0


def test_a_prompt_with_a_null_or_empty_id_is_named_by_its_row_number(saved, tmp_path):
    jsonl = tmp_path / "prompts.jsonl"
    jsonl.write_text('{"id": null, "prompt": "What is 2 + 2?"}\n{"id": "b", "prompt": "Name a prime number."}\n'
                     '{"prompt": "Say hi."}\n{"id": "", "prompt": "Say bye."}\n')
    csv_path = tmp_path / "prompts.csv"
    csv_path.write_text("id,prompt\n,What is 2 + 2?\nb,Name a prime number.\n")
    parquet_path = tmp_path / "prompts.parquet"
    pd.DataFrame({"id": [None, "b"], "prompt": ["What is 2 + 2?", "Name a prime number."]}).to_parquet(parquet_path)
    for path, ids in [(jsonl, ["0", "b", "2", "3"]), (csv_path, ["0", "b"]), (parquet_path, ["0", "b"])]:
        out_csv = tmp_path / f"plan-{path.suffix[1:]}.csv"
        assert main(["route", str(saved / "router"), str(path), "--budget", "1", "--out", str(out_csv),
                     "--no-progress"]) == 0
        assert [row["id"] for row in read_plan(out_csv)] == ids
