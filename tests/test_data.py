"""Dataset loading: RouterBench (Parquet and pickle), LLMRouter with prices, and cost from tokens."""

from __future__ import annotations

import json
import os
import pickle

import numpy as np
import pandas as pd
import pytest

from shared_core.data import DEFAULT_ASSUMED_OUTPUT_TOKENS, ROUTERBENCH_PRICES, load_dataset, load_prices
from shared_core.tokens import count_tokens_batch


def test_routerbench_subset_shape_and_fields(routerbench):
    assert len(routerbench) == 3164
    assert sorted(routerbench.models) == sorted(ROUTERBENCH_PRICES)
    assert routerbench.quality.shape == (3164, 11) and routerbench.cost.shape == (3164, 11)
    assert set(routerbench.task) == {"arc-challenge", "winogrande", "mbpp"}
    assert (routerbench.split == "train").sum() == 2218 and (routerbench.split == "test").sum() == 946
    # Missing labels stay missing; they are not turned into wrong answers.
    assert np.isnan(routerbench.quality).any()
    assert set(np.unique(routerbench.quality[~np.isnan(routerbench.quality)])) == {0.0, 1.0}


def test_list_as_text_prompts_become_plain_text(routerbench, routerbench_path):
    raw = pd.read_parquet(routerbench_path, columns=["prompt"])["prompt"].iloc[0]
    assert raw.startswith("['")
    assert not routerbench.prompts[0].startswith("['")
    assert routerbench.prompts[0].startswith("George wants to warm his hands")
    assert routerbench.responses[0][routerbench.models.index("gpt-4-1106-preview")] == "A"


def test_token_cost_reproduces_recorded_total_cost_for_every_model(routerbench):
    """Issue 2: cost from cl100k_base token counts × prices matches RouterBench's total_cost."""
    inp = routerbench.prompt_tokens()
    out = routerbench.output_tokens()
    for j, model in enumerate(routerbench.models):
        p_in, p_out = ROUTERBENCH_PRICES[model]
        estimate = (inp * p_in + out[:, j] * p_out) / 1e6
        recorded = routerbench.cost[:, j]
        rel = np.abs(estimate - recorded) / recorded
        assert np.median(rel) < 0.005, model
        assert len(rel) == 3164


def test_llmrouter_layout_with_price_table(llmrouter_paths):
    path, prices = llmrouter_paths
    data = load_dataset(path, prices)
    assert len(data) == 6108 and len(data.models) == 9
    assert data.responses is None
    table = json.loads(prices.read_text())
    j = data.models.index("gemma-2-9b-it")
    tokens = count_tokens_batch(data.prompts[:5])
    price = table["gemma-2-9b-it"]["input_per_million"]
    expected = (np.asarray(tokens) + DEFAULT_ASSUMED_OUTPUT_TOKENS) * price / 1e6
    np.testing.assert_allclose(data.cost[:5, j], expected)
    longer = load_dataset(path, prices, assumed_output_tokens=400)
    assert (longer.cost > data.cost).all()
    candidates = data.candidates()
    assert [c.name for c in candidates] == data.models


def test_llmrouter_without_prices_has_no_cost(llmrouter_paths):
    data = load_dataset(llmrouter_paths[0])
    assert data.cost is None
    with pytest.raises(ValueError, match="no price table"):
        data.candidates()


def test_price_table_missing_a_model_is_rejected(llmrouter_paths, tmp_path):
    table = json.loads(llmrouter_paths[1].read_text())
    table["gemma-2-9b"] = table.pop("gemma-2-9b-it")  # a misspelt entry is named beside the missing model
    bad = tmp_path / "prices.json"
    bad.write_text(json.dumps(table))
    with pytest.raises(ValueError, match=r"no entry for models \['gemma-2-9b-it'\] \('gemma-2-9b-it': is its entry "
                                         r"'gemma-2-9b'\?\)"):
        load_dataset(llmrouter_paths[0], bad)


@pytest.mark.parametrize("entry", [{"input": -1, "output": 1}, {"input": "x", "output": 1}, [1, 2, 3],
                                   {"in": 0.15, "out": 0.6}])
def test_bad_prices_are_rejected(entry):
    with pytest.raises(ValueError, match="price for 'm'"):
        load_prices({"m": entry})


def test_a_price_in_an_unknown_form_is_told_the_forms_there_are():
    with pytest.raises(ValueError, match=r"must be \[input, output\], \{\"input\": \.\., \"output\": \.\.\} or"):
        load_prices({"m": {"in": 0.15, "out": 0.6}})


def test_the_index_pandas_writes_with_a_frame_is_not_a_model(tmp_path):
    # DataFrame.to_csv writes the index by default; read back, it is a numeric column named "Unnamed: 0".
    path = tmp_path / "d.csv"
    pd.DataFrame({"prompt": ["a b", "c d"], "m1": [1.0, 0.0], "m2": [0.0, 1.0]}).to_csv(path)
    assert load_dataset(path, {"m1": [1, 2], "m2": [1, 2]}).models == ["m1", "m2"]


def test_routerbench_pickle_layout_loads_without_running_code(routerbench_path, tmp_path):
    """A user's full routerbench_*shot.pkl is a pickled DataFrame in the same wide layout."""
    frame = pd.read_parquet(routerbench_path).head(40).drop(columns=["split"])
    # RouterBench's own pickles predate pandas' Arrow-backed strings: text columns are objects.
    text = frame.select_dtypes(exclude="number").columns
    frame[text] = frame[text].astype(object)
    frame.columns = pd.Index(list(frame.columns), dtype=object)
    path = tmp_path / "routerbench_5shot.pkl"
    frame.to_pickle(path)
    data = load_dataset(path)
    assert len(data) == 40 and len(data.models) == 11
    assert set(data.split) == {"train"}
    parquet = load_dataset(routerbench_path).subset(np.arange(3164) < 40)
    np.testing.assert_array_equal(data.cost, parquet.cost)
    assert data.prompts == parquet.prompts


class _Exploit:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_pickle_with_code_is_refused_with_conversion_advice(tmp_path):
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps(_Exploit()))
    with pytest.raises(pickle.UnpicklingError, match="to_parquet"):
        load_dataset(path)


def test_missing_file_and_unknown_format(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_dataset(tmp_path / "nope.parquet")
    odd = tmp_path / "data.xlsx"
    odd.write_text("x")
    with pytest.raises(ValueError, match="unsupported dataset format"):
        load_dataset(odd)


def test_dataset_without_prompt_column_is_rejected(tmp_path):
    path = tmp_path / "d.csv"
    pd.DataFrame({"question": ["q"], "m1": [1.0]}).to_csv(path, index=False)
    with pytest.raises(ValueError, match="no 'prompt' column"):
        load_dataset(path)


def test_subset_by_split_name(routerbench):
    test = routerbench.subset("test")
    assert len(test) == 946 and set(test.split) == {"test"}
    with pytest.raises(ValueError, match="no rows with split"):
        routerbench.subset("validation")


def test_a_dataset_without_a_split_column_is_all_train_and_says_so(tmp_path):
    path = tmp_path / "d.csv"
    pd.DataFrame({"prompt": ["a b", "c d"], "m1": [1.0, 0.0], "m2": [0.0, 1.0]}).to_csv(path, index=False)
    data = load_dataset(path)
    assert data.split_column is None and list(data.split) == ["train", "train"]
    assert data.subset("train").split_column is None
    with pytest.raises(ValueError, match="has no split column, so no rows with split == 'test'"):
        data.subset("test")
    pd.DataFrame({"prompt": ["a b"], "m1": [1.0], "fold": ["test"]}).to_csv(path, index=False)
    assert load_dataset(path, split_column="fold").subset("test").split_column == "fold"
